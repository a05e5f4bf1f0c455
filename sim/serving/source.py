"""`ServingSource`: continuous batching as the engine's iteration source.

The engine's GPU process asks for the next iteration whenever the GPU is free; the source
asks its `Scheduler` (one per GPU), turns the batch into the gate demand the engine needs
(per MoE layer the union of the experts of every token of the iteration, `SequenceRouting`)
and its non-expert time (`sim.roofline.non_expert_time` over the batch's new tokens and KV
lengths, the same function lockstep runs use), and tells the scheduler when the iteration
ended. Nothing here keeps a clock: the engine does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from sim.engine.source import GateOrder, Idle, Iteration
from sim.serving.router import Router
from sim.serving.routing import SequenceRouting
from sim.serving.scheduler import Batch, Scheduler

NonExpert = Callable[[Batch], float]
AHEAD = 128  # iterations planned at once when the scheduler can decide them in advance


class ServingSource:
    """Iterations of one or more GPUs, each with its own scheduler (replica)."""

    def __init__(
        self,
        schedulers: Sequence[Scheduler],
        routing: SequenceRouting,
        non_expert: NonExpert,
        *,
        cache_capacity: Callable[[int], float] | None = None,
        router: Router | None = None,
    ) -> None:
        """``cache_capacity``: bytes the expert cache may hold while the KV cache holds a
        number of blocks (a shared HBM pool); None: the cache keeps its budget (fixed split).
        ``router``: dispatches arriving requests among the schedulers (several GPUs)."""
        self.router = router
        self.schedulers = list(schedulers)
        self.routing = routing
        self.skip_below = routing.skip_below  # its iterations skip what the policy skips
        self.non_expert = non_expert
        self.layers = routing.num_layers
        self.cache_capacity = cache_capacity
        self._ahead: list[deque[Iteration]] = [deque() for _ in self.schedulers]
        self._planned = np.zeros((0, routing.num_layers, routing.num_experts), dtype=np.int64)
        self._planned.flags.writeable = False

    @property
    def time_independent(self) -> bool:
        """Iterations planned ahead are waiting, or every request has arrived: the next
        iterations do not depend on when the previous ones end, and the engine may take
        several at once (a stateless policy's closed form). Never with a shared HBM pool,
        whose cache size changes between iterations."""
        if self.cache_capacity is not None:
            return False
        return all(
            ahead or s.all_arrived for ahead, s in zip(self._ahead, self.schedulers, strict=True)
        )

    def planned_counts(self, gpu: int) -> np.ndarray:
        """Nothing is known ahead: a serving run's iterations depend on arrivals and on the
        run itself (`PolicyContext.counts` has no rows)."""
        return self._planned

    def next_iteration(self, gpu: int, now: float) -> Iteration | Idle | None:
        if self.router is not None:
            self.router.dispatch(now)
        ahead = self._ahead[gpu]
        if not ahead:
            waiting = self._plan(gpu, now)
            if waiting is not None or not ahead:
                return waiting
        return ahead.popleft()

    def _plan(self, gpu: int, now: float) -> Idle | None:
        """The iteration starting ``now`` and, while the scheduler can decide them before they
        are timed (`Scheduler.can_plan_next`), up to `AHEAD` - 1 more, with one routing count
        and one gate order for all (as a lockstep source's whole-trace arrays). Returns Idle or
        None when there is nothing to run."""
        scheduler = self.schedulers[gpu]
        if scheduler.current is not None and not scheduler.can_plan_next():
            raise AssertionError("an iteration asked for before the previous one was timed")
        got = scheduler.poll(now)
        if got is None:
            return None
        if isinstance(got, float):
            if math.isinf(got):  # its next request is not routed yet: wake at the next arrival
                assert self.router is not None
                upcoming = self.router.next_arrival()
                return None if upcoming is None else Idle(upcoming)
            return Idle(got)
        batches = [got]
        capacity = None
        if self.cache_capacity is not None:  # KV of this iteration allocated: what is left
            capacity = self.cache_capacity(scheduler.blocks_held)
        else:
            while len(batches) < AHEAD and scheduler.can_plan_next():
                more = scheduler.poll_ahead(now, AHEAD - len(batches))
                if more is None:
                    break
                batches.extend(more)
        demand = self.routing.demand([(b.ids, b.first_pos, b.new_tokens) for b in batches])
        whole = GateOrder.from_counts(demand.counts) if len(batches) > 1 else None
        for i, batch in enumerate(batches):
            ne = float(self.non_expert(batch))
            self._ahead[gpu].append(
                Iteration(
                    counts=demand.counts[i],
                    non_expert=[ne] * self.layers,
                    position=batch.index,
                    tag=batch,
                    order=None if whole is None else whole.row(i),
                    mass=demand.mass[i],
                    top=demand.top.row(i),  # computed when first read
                    dropped=demand.dropped[i],
                    cache_capacity=capacity,
                )
            )
        return None

    def iteration_end(self, gpu: int, iteration: Iteration, start: float, end: float) -> None:
        if self.router is not None:  # arrivals up to now see the GPUs before this end
            self.router.dispatch(end)
        self.schedulers[gpu].complete(end, start)
