"""`ServingSource`: continuous batching as the engine's iteration source.

The engine's GPU process asks for the next iteration whenever the GPU is free; the source
asks its `Scheduler` (one per GPU), turns the batch into the gate demand the engine needs
(per MoE layer the union of the experts of every token of the iteration, `SequenceRouting`)
and its non-expert time (`sim.roofline.non_expert_time` over the batch's new tokens and KV
lengths, the same function lockstep runs use), and tells the scheduler when the iteration
ended. Nothing here keeps a clock: the engine does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from sim.engine.source import GateOrder, Idle, Iteration
from sim.serving.routing import SequenceRouting
from sim.serving.scheduler import Batch, Scheduler

NonExpert = Callable[[Batch], float]
AHEAD = 128  # iterations planned at once once every request has arrived


class ServingSource:
    """Iterations of one or more GPUs, each with its own scheduler (replica)."""

    def __init__(
        self,
        schedulers: Sequence[Scheduler],
        routing: SequenceRouting,
        non_expert: NonExpert,
        *,
        cache_capacity: Callable[[int], float] | None = None,
    ) -> None:
        """``cache_capacity``: bytes the expert cache may hold while the KV cache holds a
        number of blocks (a shared HBM pool); None: the cache keeps its budget (fixed split)."""
        self.schedulers = list(schedulers)
        self.routing = routing
        self.non_expert = non_expert
        self.layers = routing.num_layers
        self.cache_capacity = cache_capacity
        self._ahead: list[deque[Iteration]] = [deque() for _ in self.schedulers]
        self._planned = np.zeros((0, routing.num_layers, routing.num_experts), dtype=np.int64)
        self._planned.flags.writeable = False

    @property
    def time_independent(self) -> bool:
        """Once every request has arrived, the rest of the run depends only on the schedulers'
        state: the engine may take several iterations at once (a stateless policy's closed
        form). Not with a shared HBM pool, whose cache size changes between iterations."""
        return self.cache_capacity is None and all(s.time_independent for s in self.schedulers)

    def planned_counts(self, gpu: int) -> np.ndarray:
        """Nothing is known ahead: a serving run's iterations depend on arrivals and on the
        run itself (`PolicyContext.counts` has no rows)."""
        return self._planned

    def next_iteration(self, gpu: int, now: float) -> Iteration | Idle | None:
        ahead = self._ahead[gpu]
        if ahead:
            return ahead.popleft()
        if self.time_independent:
            self._plan_ahead(gpu, now)
            return ahead.popleft() if ahead else None
        got = self.schedulers[gpu].poll(now)
        if got is None:
            return None
        if isinstance(got, float):
            return Idle(got)
        counts = self.routing.counts(got.ids, got.first_pos, got.new_tokens)
        ne = float(self.non_expert(got))
        capacity = None
        if self.cache_capacity is not None:  # KV for this iteration is allocated: what is left
            capacity = self.cache_capacity(self.schedulers[gpu].blocks_held)
        return Iteration(
            counts=counts,
            non_expert=[ne] * self.layers,
            position=got.index,
            tag=got,
            cache_capacity=capacity,
        )

    def _plan_ahead(self, gpu: int, now: float) -> None:
        """Every request has arrived: the next iterations depend only on the scheduler's state,
        so plan up to `AHEAD` of them at once, with one routing count and one gate order for
        all (as a lockstep source's whole-trace arrays; the engine times them later)."""
        scheduler = self.schedulers[gpu]
        batches: list[Batch] = []
        while len(batches) < AHEAD:
            got = scheduler.poll(now)
            if got is None:
                break
            assert isinstance(got, Batch), "a time-independent scheduler never idles"
            batches.append(got)
        if not batches:
            return
        counts = self.routing.counts_many([(b.ids, b.first_pos, b.new_tokens) for b in batches])
        whole = GateOrder.from_counts(counts)
        for i, batch in enumerate(batches):
            ne = float(self.non_expert(batch))
            self._ahead[gpu].append(
                Iteration(
                    counts=counts[i],
                    non_expert=[ne] * self.layers,
                    position=batch.index,
                    tag=batch,
                    order=whole.row(i),
                )
            )

    def iteration_end(self, gpu: int, iteration: Iteration, start: float, end: float) -> None:
        self.schedulers[gpu].complete(end, start)
