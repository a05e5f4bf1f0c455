"""`ServingSource`: continuous batching as the engine's iteration source.

The engine's GPU process asks for the next iteration whenever the GPU is free; the source
asks its `Scheduler` (one per GPU), turns the batch into the gate demand the engine needs
(per MoE layer the union of the experts of every token of the iteration, `SequenceRouting`)
and its non-expert time (`sim.roofline.non_expert_time` over the batch's new tokens and KV
lengths, the same function lockstep runs use), and tells the scheduler when the iteration
ended. Nothing here keeps a clock: the engine does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sim.engine.source import Idle, Iteration
from sim.serving.routing import SequenceRouting
from sim.serving.scheduler import Batch, Scheduler

NonExpert = Callable[[Batch], float]


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
        self._planned = np.zeros((0, routing.num_layers, routing.num_experts), dtype=np.int64)
        self._planned.flags.writeable = False

    def planned_counts(self, gpu: int) -> np.ndarray:
        """Nothing is known ahead: a serving run's iterations depend on arrivals and on the
        run itself (`PolicyContext.counts` has no rows)."""
        return self._planned

    def next_iteration(self, gpu: int, now: float) -> Iteration | Idle | None:
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

    def iteration_end(self, gpu: int, iteration: Iteration, start: float, end: float) -> None:
        self.schedulers[gpu].complete(end)
