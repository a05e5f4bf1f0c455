"""Iteration sources: what each GPU runs next (the engine's extension point).

The engine runs one simpy process per GPU. Each process asks its `IterationSource` for the
GPU's next `Iteration` (one forward pass: per MoE layer, the expert token counts of every token
in it, and the non-expert time of each layer), runs it layer by layer, and tells the source
when it ended. A source may instead answer `Idle` ("nothing now, ask again at time t": waiting
for the next request to arrive) or ``None`` (this GPU is done).

`LockstepSource` is today's workload: every GPU decodes the scenario's B sequences together,
one trace step per iteration. A serving scheduler (continuous batching) is another source: it
builds each iteration from the requests it has admitted, idles until the next arrival when it
has none, and learns from `IterationSource.iteration_end` when a batch finished. The full
interface, with an example: docs/engine.md ("Iteration sources").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class GateOrder:
    """Gates' active experts, most tokens first (ties by lower id), precomputed.

    For counts ``[..., E]``: ``experts[..., :active[...]]`` are the active expert ids of a gate
    in that order and ``tokens[..., :active[...]]`` their token counts. This order is the FIFO
    order in which the engine issues a gate's transfers on each route.
    """

    experts: np.ndarray  # [..., E] intp
    tokens: np.ndarray  # [..., E] int64, 0 past the active ones
    active: np.ndarray  # [...] int64
    parent: tuple[GateOrder, int] | None = None  # (whole, i) when this is whole.row(i)

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> GateOrder:
        counts = np.asarray(counts)
        order = np.argsort(-counts.astype(np.int64), axis=-1, kind="stable")
        tokens = np.take_along_axis(counts, order, axis=-1).astype(np.int64)
        active = (counts > 0).sum(axis=-1).astype(np.int64)
        for arr in (order, tokens, active):
            arr.flags.writeable = False
        return cls(order, tokens, active)

    def row(self, i: int) -> GateOrder:
        """The gates of the ``i``-th entry of the leading axis (views, no copies)."""
        return GateOrder(self.experts[i], self.tokens[i], self.active[i], (self, i))


@dataclass(frozen=True)
class Iteration:
    """One forward pass of one GPU.

    ``counts[layer, expert]``: tokens routed to each expert at each MoE layer, summed over every
    token the iteration processes (the union demand of its sequences). ``non_expert[layer]``:
    seconds of non-expert work before each layer's gate (attention, router, shared experts).
    ``position`` labels the iteration in the results (the token position in lockstep runs).
    ``tag`` is the source's own (e.g. the requests in the batch); the engine hands the
    iteration back to `IterationSource.iteration_end` untouched. ``order`` may carry the gate
    order precomputed (`GateOrder` of ``counts``); the engine computes it when absent.
    ``cache_capacity``: bytes the HBM expert cache may hold from this iteration on (a serving
    workload's shared HBM pool, shrinking as the KV cache grows); the engine tells the policy
    (`Policy.on_cache_resize`), evicts what it names and checks the rest fits. None: unchanged.

    The router's scores, for the quality proxies and for policies that read them (optional;
    `sim.precision.gate_demand` computes all three, and ``counts``, from per-token routing):
    ``mass[layer, expert]`` the summed renormalised scores of the tokens routed there (each
    token's top-k sum to 1), ``top[layer, expert]`` the largest renormalised score among them,
    ``dropped[layer]`` the mass of the (token, expert) pairs skipped (not in ``counts``).
    Without them the per-layer ``gate_mass`` is NaN, and the degraded share is NaN wherever
    an expert is served below native precision.
    """

    counts: np.ndarray  # [layers, E] ints
    non_expert: Sequence[float]  # [layers] s
    position: int = 0
    tag: Any = None
    order: GateOrder | None = None
    mass: np.ndarray | None = None  # [layers, E] router mass per expert
    # [layers, E] largest renormalised score per expert; may be computed when first read (any
    # object indexable by layer: a serving run's `DeferredArray`)
    top: np.ndarray | None = None
    dropped: np.ndarray | None = None  # [layers] router mass skipped
    cache_capacity: float | None = None
    # expert parallelism: per layer, tokens coming into this GPU from other GPUs before its
    # experts compute (dispatch) and after (the combine: its own tokens' results)
    exchange: np.ndarray | None = None  # [layers, 2]

    def gates(self) -> GateOrder:
        return self.order if self.order is not None else GateOrder.from_counts(self.counts)


@dataclass(frozen=True)
class Idle:
    """Nothing to run now: ask again at ``until`` (absolute simulated time, s)."""

    until: float


class IterationSource(Protocol):
    """What a GPU's process asks for its work. Calls for one GPU come in simulated-time order;
    calls for different GPUs interleave in time order (same-time calls in GPU order)."""

    def planned_counts(self, gpu: int) -> np.ndarray:
        """``[iterations, layers, E]``: the demand the source will give ``gpu``, as far as it
        is known before the run (`PolicyContext.counts`: online policies read only the rows
        of iterations already run; oracles and bounds read ahead). Lockstep knows it all."""
        ...

    def next_iteration(self, gpu: int, now: float) -> Iteration | Idle | None:
        """The GPU's next iteration, `Idle` (wait), or None (the GPU is done)."""
        ...

    def iteration_end(self, gpu: int, iteration: Iteration, start: float, end: float) -> None:
        """``iteration`` (as returned by `next_iteration`) ran on ``gpu`` from ``start`` to
        ``end`` (s): its last layer is done."""
        ...


class LockstepSource:
    """Every GPU decodes a fixed batch together, one trace step per iteration (today's model).

    ``counts``: ``[steps, layers, E]`` token counts of the batch (``RoutingTrace.
    expert_token_counts``), the same for every GPU, or a list of one such array per GPU (the
    batch's sequences split over the GPUs). ``non_expert``: seconds per layer, a scalar, a
    ``[steps, layers]`` table (broadcast), or a list of one per GPU. ``positions``: the token
    position of each step. ``demand``: the router's scores as `sim.precision.Demand`
    (``[steps, layers, E]`` mass and top score, ``[steps, layers]`` dropped mass) matching the
    counts, or a list of one per GPU, or None. ``exchange``: expert parallelism's tokens into
    each GPU per step and layer (``[steps, layers, 2]`` per GPU: dispatch, combine), or None.
    """

    def __init__(
        self,
        counts: np.ndarray | Sequence[np.ndarray],
        positions: Sequence[int],
        non_expert: float | np.ndarray | Sequence[float | np.ndarray] = 0.0,
        num_gpus: int = 1,
        demand: Any = None,
        exchange: Sequence[np.ndarray] | None = None,
    ) -> None:
        per_gpu = (
            list(counts) if isinstance(counts, list | tuple) else [np.asarray(counts)] * num_gpus
        )
        num_gpus = len(per_gpu)
        self.counts = per_gpu
        steps, layers = per_gpu[0].shape[:2]
        self.positions = tuple(int(p) for p in positions)
        times = (
            list(non_expert) if isinstance(non_expert, list | tuple) else [non_expert] * num_gpus
        )
        if len(times) != num_gpus:
            raise ValueError(f"expected non-expert times for {num_gpus} GPUs, got {len(times)}")
        tables: dict[int, list] = {}
        self._non_expert = [  # plain floats: the engine's clock adds them
            tables.setdefault(
                id(t), np.broadcast_to(np.asarray(t, dtype=np.float64), (steps, layers)).tolist()
            )
            for t in times
        ]
        orders: dict[int, GateOrder] = {}
        self._orders = [orders.setdefault(id(c), GateOrder.from_counts(c)) for c in per_gpu]
        self._next = [0] * num_gpus
        self.steps = steps
        self.exchange = list(exchange) if exchange is not None else None  # per GPU [steps, L, 2]
        demands = list(demand) if isinstance(demand, list | tuple) else [demand] * num_gpus
        if len(demands) != num_gpus:
            raise ValueError(f"expected router scores for {num_gpus} GPUs, got {len(demands)}")
        self.demand = demands
        self._dropped = [d is not None and bool(np.any(d.dropped)) for d in demands]

    # its answers do not depend on the time asked or on iteration ends, and it never idles: a
    # GPU alone may take several iterations at once (GpuProcess.run)
    time_independent = True
    # the renormalised score below which its tokens skipped their experts (`gate_demand`)
    skip_below = 0.0

    def planned_counts(self, gpu: int) -> np.ndarray:
        return self.counts[gpu]

    def next_iteration(self, gpu: int, now: float) -> Iteration | None:
        s = self._next[gpu]
        if s >= self.steps:
            return None
        self._next[gpu] = s + 1
        d = self.demand[gpu]
        return Iteration(
            counts=self.counts[gpu][s],
            non_expert=self._non_expert[gpu][s],
            position=self.positions[s],
            tag=s,
            order=self._orders[gpu].row(s),
            mass=None if d is None else d.mass[s],
            top=None if d is None else d.top[s],
            dropped=d.dropped[s] if self._dropped[gpu] else None,
            exchange=None if self.exchange is None else self.exchange[gpu][s],
        )

    def iteration_end(self, gpu: int, iteration: Iteration, start: float, end: float) -> None:
        """Lockstep GPUs do not wait for each other: nothing to do."""
