"""HBM expert caching: keep fetched experts in HBM across layers and steps.

A cache policy serves each gate's misses by a miss-path rule (`sim.policies.miss_path`), keeps
the experts it fetched to the GPU when there is room, and otherwise evicts by its own rule:

* ``lru``: least recently used (mixtral-offloading, arXiv 2312.17238: k slots per layer);
* ``lfu``: least frequently used so far, ties least recent (LFU for MoE offloading, e.g.
  "In-Depth Analysis on Caching and Pre-fetching in MoE Offloading", arXiv 2511.05814);
* ``least-stale``: largest cyclic distance to reuse first: layers are visited in a fixed order,
  so an expert of the layer just passed is not needed for a whole step while one of the next
  layer is needed at once (SpecMD's Least-Stale, arXiv 2602.03921); ties least recent;
* ``static-popular``: pin the experts most used in a warm-up window; nothing else is kept.

The cache is one global pool of ``slots`` experts or, with ``scope: layer``, ``slots //
num_layers`` per layer. The current layer's active experts are never evicted at their own gate
(they are being computed). The engine's cache state (``GateView.ready_at``) is the truth; the
policy keeps only its ranking keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from sim.errors import UserError
from sim.policies.base import (
    GPU_FETCH_PATHS,
    GateDecision,
    GateView,
    Path,
    Policy,
    PolicyContext,
    register_policy,
)
from sim.policies.compute_placement import ComputePlacement
from sim.policies.miss_path import MissPath, MissPathRule

Scope = Literal["layer", "global"]
_GPU_FETCH = np.zeros(len(Path), dtype=bool)  # by Path value: fetched to the GPU
_GPU_FETCH[list(GPU_FETCH_PATHS)] = True
_NONE = np.zeros(0, dtype=np.intp)
_NONE.flags.writeable = False


@dataclass(frozen=True)
class CacheParams:
    """Parameters every caching policy shares."""

    slots: int | None = None  # experts the cache holds in total (None: all of hbm.capacity)
    capacity_bytes: float | None = None  # or the cache size in bytes (at most one of the two)
    scope: Scope = "layer"  # "layer": slots // num_layers per layer; "global": one pool
    miss_path: MissPath = "seed"  # seed | balanced | pcie | md (sim/policies/miss_path.py)
    compute_near: bool = False  # compute a miss where its weights are when that is sooner
    # exclusive caching: an evicted expert is copied back to host DRAM (mixtral-offloading's
    # swap, which keeps one copy of each expert); False: host memory keeps every expert
    writeback: bool = False

    def __post_init__(self) -> None:
        if self.slots is not None and self.capacity_bytes is not None:
            raise ValueError("slots, capacity_bytes: expected at most one, got both")
        if self.slots is not None and self.slots < 0:
            raise ValueError(f"slots: expected >= 0, got {self.slots}")
        if self.capacity_bytes is not None and self.capacity_bytes < 0:
            raise ValueError(f"capacity_bytes: expected >= 0, got {self.capacity_bytes}")


def cache_slots(params: CacheParams, ctx: PolicyContext, name: str) -> int:
    """Total expert slots of the policy's cache, checked against the HBM capacity."""
    available = ctx.cache_slots
    if params.slots is not None:
        total = params.slots
    elif params.capacity_bytes is not None:
        total = int(params.capacity_bytes // ctx.expert_bytes)
    else:
        total = available
    if total > available:
        raise UserError(
            f"policy {name}: cache size: expected at most {available} experts "
            f"(hbm.capacity / expert_bytes), got {total}"
        )
    return total


class CachePolicy(Policy):
    """Shared machinery: miss paths, admission into a partition, eviction by ``keep_key``.

    Subclasses define ``keep_key`` (higher = keep longer) and may restrict ``admissible``."""

    Params = CacheParams

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        p = self.params
        self.num_layers = ctx.num_layers
        self.num_experts = ctx.model.num_experts
        self.total_slots = cache_slots(p, ctx, self.name)
        self.bound_slots = self.total_slots  # the most a resize (shared HBM) may give back
        self.global_scope = p.scope == "global"
        self.partition_slots = (
            self.total_slots if self.global_scope else self.total_slots // self.num_layers
        )
        self.miss_rule = MissPathRule(p.miss_path)
        self.miss_rule.bind(ctx, f"policy {self.name}")
        self.placement = ComputePlacement(ctx, f"policy {self.name}") if p.compute_near else None
        shape = (self.num_layers, self.num_experts)
        self.last_use = np.full(shape, -1.0)  # gate counter of the last use (or prefetch)
        self.uses = np.zeros(shape)  # gates at which the expert was active (if count_uses)
        self.count_uses = getattr(p, "eviction", None) == "lfu" or isinstance(self, LfuPolicy)
        self.gate = 0  # gates seen so far

    def on_cache_resize(
        self, capacity: float, ready_at: np.ndarray, step: int
    ) -> list[tuple[int, int]]:
        """Fit the cache into ``capacity`` bytes (never more than at bind): the partitions
        shrink (or grow back) and the lowest ``keep_key`` of each over-full partition goes,
        ranked as if at the gate before the next one (the last layer's)."""
        assert self.ctx is not None
        slots = min(int(capacity // self.ctx.model.expert_bytes), self.bound_slots)
        self.total_slots = slots
        self.partition_slots = slots if self.global_scope else slots // self.num_layers
        resident = np.isfinite(ready_at)
        view = GateView(
            step=step,
            layer=self.num_layers - 1,
            now=0.0,
            experts=_NONE,
            tokens=_NONE,
            cached=_NONE.astype(bool),
            ready_at=ready_at,
            cache_bytes=0.0,
            link_free_at={},
        )
        keys = np.where(resident, self.keep_key(view), np.inf)
        rows = [keys.ravel()] if self.global_scope else list(keys)
        held = [resident.ravel()] if self.global_scope else list(resident)
        evict: list[tuple[int, int]] = []
        for row, (key, cached) in enumerate(zip(rows, held, strict=True)):
            over = int(np.count_nonzero(cached)) - self.partition_slots
            if over <= 0:
                continue
            order = np.flatnonzero(cached)[np.argsort(key[cached], kind="stable")[:over]]
            if self.global_scope:
                layers, experts = np.divmod(order, self.num_experts)
            else:
                layers, experts = np.full(order.size, row), order
            evict.extend(zip(layers.tolist(), experts.tolist(), strict=True))
        return evict

    # -- hooks ----------------------------------------------------------------------------------
    def keep_key(self, view: GateView) -> np.ndarray:
        """``[layers, experts]`` ranking: the lowest evictable one goes first."""
        raise NotImplementedError

    def admissible(self, view: GateView) -> np.ndarray | None:
        """bool per ``view.experts``: may this fetched miss be kept? (None: all may)"""
        return None

    # -- the gate -------------------------------------------------------------------------------
    def decide(self, view: GateView) -> GateDecision:
        paths = self.miss_rule.paths(view)
        if self.placement is not None:
            paths = self.placement.reassign(view, paths)
        resident = np.isfinite(view.ready_at)
        admit, evict = self.place(view, paths, resident)
        prefetch, prefetch_evict = self.prefetch(view, paths, resident)
        self.record_use(view)
        if prefetch_evict:
            evict = evict + prefetch_evict
        return GateDecision(
            paths=paths,
            admit=admit,
            evict=evict,
            prefetch=prefetch,
            writeback=self.params.writeback,
        )

    def prefetch(
        self, view: GateView, paths: np.ndarray, resident: np.ndarray
    ) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
        """Prefetches ``(layer, expert, link)`` and the evictions they need (none here)."""
        return [], []

    def place(
        self, view: GateView, paths: np.ndarray, resident: np.ndarray
    ) -> tuple[np.ndarray | None, list[tuple[int, int]]]:
        """Admit this gate's GPU fetches (view order: most tokens first), evicting by key.
        Updates ``resident`` in place to the state after the gate."""
        fetched = _GPU_FETCH[paths]
        fetched &= ~view.cached
        allowed = self.admissible(view)
        if allowed is not None:
            fetched &= allowed
        want = np.flatnonzero(fetched)
        if want.size == 0 or self.partition_slots == 0:
            return None, []
        victims = self.make_room(view, resident, view.layer, want.size, [])
        free = self.partition_slots - self.occupancy(resident, view.layer)
        chosen = want[: max(free, 0)] if free < want.size else want
        admit = np.zeros(view.experts.shape, dtype=bool)
        admit[chosen] = True
        resident[view.layer, view.experts[chosen]] = True
        return admit, victims

    def occupancy(self, resident: np.ndarray, layer: int) -> int:
        return int(np.count_nonzero(resident if self.global_scope else resident[layer]))

    def make_room(
        self,
        view: GateView,
        resident: np.ndarray,
        layer: int,
        needed: int,
        protect: list[tuple[int, np.ndarray]],
    ) -> list[tuple[int, int]]:
        """Evict (lowest ``keep_key`` first) until ``needed`` experts fit in ``layer``'s
        partition or nothing evictable is left. Never evicts the gate's own active experts nor
        the ``protect``-ed (layer, expert ids) pairs. Updates ``resident`` in place."""
        missing = needed - (self.partition_slots - self.occupancy(resident, layer))
        if missing <= 0:
            return []
        if self.global_scope:
            evictable = resident.copy()
            evictable[view.layer, view.experts] = False
            for lyr, experts in protect:
                evictable[lyr, experts] = False
            keys = self.keep_key(view)
            first_row = 0
        else:
            evictable = resident[layer].copy()
            if layer == view.layer:
                evictable[view.experts] = False
            for lyr, experts in protect:
                if lyr == layer:
                    evictable[experts] = False
            keys = self.keep_key(view)[layer]
            first_row = layer
        count = int(np.count_nonzero(evictable))
        if count == 0:
            return []
        n = min(missing, count)
        ranked = np.where(evictable, keys, np.inf).ravel()
        flat = np.argpartition(ranked, n - 1)[:n] if n < ranked.size else np.arange(ranked.size)
        flat = flat[ranked[flat] < np.inf]
        rows_idx, experts = np.divmod(flat, self.num_experts)
        rows_idx += first_row
        resident[rows_idx, experts] = False
        return list(zip(rows_idx.tolist(), experts.tolist()))

    def record_use(self, view: GateView) -> None:
        self.last_use[view.layer, view.experts] = self.gate
        if self.count_uses:
            self.uses[view.layer, view.experts] += 1
        self.gate += 1


def lru_key(policy: CachePolicy, view: GateView) -> np.ndarray:
    """Least recently used goes first."""
    return policy.last_use


def lfu_key(policy: CachePolicy, view: GateView) -> np.ndarray:
    """Least frequently used so far goes first (counts survive eviction), ties least recent."""
    return policy.uses * (policy.gate + 2.0) + policy.last_use


def cyclic_distance(layer: int, num_layers: int) -> np.ndarray:
    """Gates from just after ``layer``'s gate until each layer's next gate (1 .. num_layers)."""
    return (np.arange(num_layers) - layer - 1) % num_layers + 1.0


def least_stale_key(policy: CachePolicy, view: GateView) -> np.ndarray:
    """The layer needed last (the one just passed) goes first, ties least recent."""
    distance = cyclic_distance(view.layer, policy.num_layers)[:, None]
    return -distance * (policy.gate + 2.0) + policy.last_use


EVICTION_KEYS = {"lru": lru_key, "lfu": lfu_key, "least-stale": least_stale_key}


@register_policy
class LruPolicy(CachePolicy):
    """Least recently used (mixtral-offloading)."""

    name: ClassVar[str] = "lru"
    summary: ClassVar[str] = "HBM expert cache, evict least recently used (mixtral-offloading)"

    def keep_key(self, view: GateView) -> np.ndarray:
        return lru_key(self, view)


@register_policy
class LfuPolicy(CachePolicy):
    """Least frequently used so far, ties least recent."""

    name: ClassVar[str] = "lfu"
    summary: ClassVar[str] = "HBM expert cache, evict least frequently used, ties least recent"

    def keep_key(self, view: GateView) -> np.ndarray:
        return lfu_key(self, view)


@register_policy
class LeastStalePolicy(CachePolicy):
    """Evict the expert whose layer comes back last (the layer just passed), ties least recent."""

    name: ClassVar[str] = "least-stale"
    summary: ClassVar[str] = (
        "HBM expert cache, evict the layer whose reuse is cyclically farthest (SpecMD Least-Stale)"
    )

    @dataclass(frozen=True)
    class Params(CacheParams):
        scope: Scope = "global"  # with per-layer pools it is plain LRU

    def keep_key(self, view: GateView) -> np.ndarray:
        return least_stale_key(self, view)


@register_policy
class StaticPopularPolicy(CachePolicy):
    """Pin the experts most active in the first ``warmup_steps`` steps; keep nothing else.

    It reads the warm-up window before running it (so ``uses_future``): on those steps its hit
    rate is optimistic, and the run is labelled ``oracle``. With ``profile`` (another trace,
    e.g. a calibration set, as Fiddler profiles) it chooses the pins there, and a run judged
    on a different trace is ``online``."""

    name: ClassVar[str] = "static-popular"
    summary: ClassVar[str] = "pin the experts most used in a warm-up window (popularity caching)"
    uses_future: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Params(CacheParams):
        warmup_steps: int | None = None  # steps choosing the pins (None: a quarter of the trace)
        # another trace to choose the pins on (embedded:NAME or a trace directory; relative to
        # the working directory); None: the warm-up window of the trace it is judged on
        profile: str | None = None

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.warmup_steps is not None and self.warmup_steps < 1:
                raise ValueError(f"warmup_steps: expected >= 1, got {self.warmup_steps}")

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        counts = ctx.counts if self.params.profile is None else self._profile_counts(ctx)
        warm = self.params.warmup_steps
        if warm is None:  # a quarter of the judged trace, or all of a separate profile
            warm = max(1, ctx.num_steps // 4) if self.params.profile is None else len(counts)
        if warm > len(counts):
            what = "trace's" if self.params.profile is None else "profile trace's"
            raise UserError(
                f"policy {self.name}: warmup_steps: expected at most the {what} "
                f"{len(counts)} steps, got {warm}"
            )
        window = counts[:warm]
        # profiled on the routing it is judged on (a window of it, or the same rows) = oracle
        self.oracle = self.params.profile is None or (
            window.shape[1:] == ctx.counts.shape[1:]
            and len(window) <= ctx.num_steps
            and np.array_equal(window, ctx.counts[: len(window)])
        )
        # most gates active first, then most tokens, then lower layer/expert id
        popularity = (window > 0).sum(axis=0) * (window.sum(axis=0).max() + 1.0) + window.sum(0)
        self.pinned_set = np.zeros_like(popularity, dtype=bool)
        if self.global_scope:
            order = np.argsort(-popularity, axis=None, kind="stable")[: self.partition_slots]
            self.pinned_set.ravel()[order] = True
        else:
            order = np.argsort(-popularity, axis=1, kind="stable")[:, : self.partition_slots]
            np.put_along_axis(self.pinned_set, order, True, axis=1)

    def _profile_counts(self, ctx: PolicyContext) -> np.ndarray:
        """Tokens per expert of the ``profile`` trace under the run's top-k."""
        from sim.trace.open import open_trace

        where = f"policy {self.name}: profile"
        try:
            trace = open_trace(self.params.profile)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        shape = (trace.num_layers, trace.num_experts)
        if shape != (ctx.num_layers, ctx.model.num_experts):
            raise UserError(
                f"{where}: expected a trace of {ctx.num_layers} layers x "
                f"{ctx.model.num_experts} experts (the run's), got {shape[0]} x {shape[1]}"
            )
        if ctx.topk > trace.k:
            raise UserError(f"{where}: expected top-k >= {ctx.topk} (the run's), got {trace.k}")
        return trace.expert_token_counts(ctx.topk)

    def run_kind(self) -> str:
        return "oracle" if getattr(self, "oracle", True) else "online"

    def admissible(self, view: GateView) -> np.ndarray:
        return self.pinned_set[view.layer, view.experts]

    def keep_key(self, view: GateView) -> np.ndarray:
        return np.where(self.pinned_set, np.inf, self.last_use)
