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
    CachePlan,
    GateDecision,
    GateView,
    Path,
    Policy,
    PolicyContext,
    register_policy,
)
from sim.policies.compute_placement import ComputePlacement
from sim.policies.miss_path import MissPath, MissPathRule
from sim.policies.split import md_path

Scope = Literal["layer", "global"]
_GPU_FETCH = np.zeros(len(Path), dtype=bool)  # by Path value: fetched to the GPU
_GPU_FETCH[list(GPU_FETCH_PATHS)] = True
_NONE = np.zeros(0, dtype=np.intp)
_NONE.flags.writeable = False
_NO_CACHE = np.full((0, 0), np.inf)
_NO_CACHE.flags.writeable = False


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
        # decisions that do not depend on time may be planned many gates at once
        self.plan_cache = self._plan_cache if self._plannable(ctx) else None

    def _plannable(self, ctx: PolicyContext) -> bool:
        """Whether `plan_cache` applies: one of the plain caches (`PLANNED_CACHES`: each ranks
        a partition by that partition's own history), misses by a rule that reads no link
        queue and all fetched to the GPU, nothing computed in place, no writeback."""
        p = self.params
        return (
            type(self) in PLANNED_CACHES
            and not self.miss_rule.reads_time
            and self.placement is None
            and not p.writeback
            and (p.miss_path == "pcie" or md_path(ctx.hardware) == Path.MD_FETCH)
        )

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
        view = ranking_view(step, self.num_layers - 1, ready_at)
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

    def admissible(self, layer: int | np.ndarray, experts: np.ndarray) -> np.ndarray | None:
        """bool per ``experts`` of ``layer`` (or of each row's layer): may this fetched miss
        be kept? (None: all may)"""
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
        allowed = self.admissible(view.layer, view.experts)
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
        flat = lowest(np.where(evictable, keys, np.inf).ravel(), n)
        rows_idx, experts = np.divmod(flat, self.num_experts)
        rows_idx += first_row
        resident[rows_idx, experts] = False
        return list(zip(rows_idx.tolist(), experts.tolist()))

    def record_use(self, view: GateView) -> None:
        self.last_use[view.layer, view.experts] = self.gate
        if self.count_uses:
            self.uses[view.layer, view.experts] += 1
        self.gate += 1

    # -- many gates at once -----------------------------------------------------------------
    def _plan_cache(
        self,
        step: int,
        experts: np.ndarray,
        tokens: np.ndarray,
        active: np.ndarray,
        resident: np.ndarray,
    ) -> CachePlan:
        """``decide`` at consecutive gates (`Policy.plan_cache`; row r is layer r % L of
        iteration step + r // L).

        Each decision depends only on what is cached and on the ranking state, never on time,
        so the gates are decided here in a row, a *wave* of gates at a time, each gate of a
        wave on its own partition: with per-layer partitions an iteration's gates form one
        wave (gate l on layer l's partition); one global pool takes its gates one by one. Sets
        are kept by expert id (bool rows); only the admissions need the gate order. A gate
        that evicts every cached expert it does not use (of finite rank) needs no ranking;
        one that evicts fewer ranks them with its own keys (`_PlanState.keys`: the ranking
        state as at that gate; `record_use` of all gates is applied at the end) and `lowest`
        picks them, exactly as `make_room` does, ties included. The misses' paths follow from
        each gate's hits (`MissPathRule.plan`)."""
        layers, num_experts = self.num_layers, self.num_experts
        rows = active.size
        every_row = np.arange(rows)[:, None]
        act = np.arange(num_experts)[None, :] < active[:, None]  # gate order
        used = np.zeros((rows, num_experts), dtype=bool)  # the same, by expert id
        used[every_row, experts] = act
        allowed = self.admissible(every_row % layers, np.arange(num_experts)[None, :])
        res = np.array(resident, dtype=bool)  # the cache, updated gate by gate
        hit = np.zeros((rows, num_experts), dtype=bool)  # by expert id
        admit = np.zeros((rows, num_experts), dtype=bool)  # by expert id
        evicted = np.zeros(rows, dtype=np.int64)
        state = _PlanState(self, step, used)
        # entries ranked +inf are never evicted: the plain caches rank so only what they pin
        # for the whole run (static-popular's experts), so the first gate's say holds for all
        finite = np.isfinite(self.keep_key(ranking_view(step, 0)))
        finite = None if finite.all() else finite
        slots = self.partition_slots
        size = 1 if self.global_scope else layers
        # a wave's experts in gate order, as flat indices into its rows by expert id
        order = (every_row % size) * num_experts + experts
        # the cached experts of each partition (rows: the layers, or the one global pool)
        occupied = (res.reshape(1, -1) if self.global_scope else res).sum(axis=1)
        for lo in range(0, rows, size):
            w = slice(lo, lo + size)
            first = lo % layers
            mine = res[first : first + size]  # the wave's layers (a view)
            u = used[w]
            hit[w] = mine & u
            if slots <= 0:
                continue
            want = u > mine  # the misses: every one is fetched to the GPU (`_plannable`)
            n_miss = want.sum(axis=1)
            if allowed is not None:
                want &= allowed[w]
                n_want = want.sum(axis=1)
            else:
                n_want = n_miss
            free = slots - occupied
            missing = n_want - free
            need = (missing > 0) & (n_want > 0)
            if need.any():  # make_room: evict n of the cached experts the gate does not use
                if self.global_scope:
                    part, spare = res.reshape(1, -1), res.copy()
                    spare[first] &= ~u[0]
                    spare = spare.reshape(1, -1)
                else:
                    part, spare = mine, mine > u
                if finite is None:
                    ranked = spare
                    count = occupied - (active[w] - n_miss)  # all but the hits
                else:  # at most the ones of finite rank
                    ranked = spare & (finite.reshape(1, -1) if self.global_scope else finite[w])
                    count = ranked.sum(axis=1)
                n = np.where(need, np.minimum(missing, count), 0)
                victims = ranked & (n >= count)[:, None]  # all of them
                fewer = (n > 0) & (n < count)
                if fewer.any():  # the n lowest: ranked with the gate's own keys
                    for t in np.flatnonzero(fewer).tolist():
                        keys = state.keys(lo + t)
                        row = keys.ravel() if self.global_scope else keys[first + t]
                        victims[t, lowest(np.where(spare[t], row, np.inf), int(n[t]))] = True
                    n = victims.sum(axis=1)
                part &= ~victims
                evicted[w] = n
                occupied = occupied - n
                free = free + n
            admitted = np.minimum(n_want, np.maximum(free, 0))
            if (admitted < n_want).any():  # only the first `free` wants, in gate order
                ranked = want.take(order[w])
                admit[w].put(order[w], ranked & (ranked.cumsum(axis=1) <= free[:, None]))
            else:
                admit[w] = want
            mine |= admit[w]
            occupied = occupied + admitted
        state.finish()
        hit = hit[every_row, experts]  # gate order
        return CachePlan(self.miss_rule.plan(act & ~hit), admit[every_row, experts], evicted, res)


def lowest(ranked: np.ndarray, n: int) -> np.ndarray:
    """Flat indices of the (at most) ``n`` lowest finite entries of ``ranked``; among equal
    entries, those `np.argpartition` puts first."""
    flat = np.argpartition(ranked, n - 1)[:n] if n < ranked.size else np.arange(ranked.size)
    return flat[ranked[flat] < np.inf]


class _PlanState:
    """A cache policy's ranking state (``last_use``, ``uses``, ``gate``) during a planned
    block: `record_use` of every gate, applied at once by `finish`, and as it stood at any
    gate of the block (`keys`)."""

    def __init__(self, policy: CachePolicy, step: int, used: np.ndarray) -> None:
        self.policy, self.step = policy, step
        self.gate0 = policy.gate
        layers = policy.num_layers
        stamp = np.where(used, policy.gate + np.arange(len(used))[:, None], -np.inf)
        self.stamp = stamp.reshape(-1, layers, used.shape[1])  # [iterations, layers, E]
        self.used = used.reshape(self.stamp.shape)
        self.last_use0, self.uses0 = policy.last_use, policy.uses
        self._seen: tuple[np.ndarray, np.ndarray] | None = None

    def _through(self) -> tuple[np.ndarray, np.ndarray]:
        """Per iteration of the block: last use and use count after it."""
        if self._seen is None:
            last = np.maximum(self.last_use0, np.maximum.accumulate(self.stamp, axis=0))
            uses = self.uses0 + np.cumsum(self.used, axis=0)
            self._seen = (last, uses)
        return self._seen

    def keys(self, row: int) -> np.ndarray:
        """``keep_key`` as the block's gate ``row`` sees it (before its own `record_use`)."""
        policy = self.policy
        k, j = divmod(row, policy.num_layers)
        last_all, uses_all = self._through()
        last = self.last_use0 if k == 0 else last_all[k - 1]
        uses = self.uses0 if k == 0 else uses_all[k - 1]
        last = last.copy()
        last[:j] = np.maximum(last[:j], self.stamp[k, :j])
        uses = uses + np.pad(self.used[k, :j], ((0, policy.num_layers - j), (0, 0)))
        policy.last_use, policy.uses, policy.gate = last, uses, self.gate0 + row
        try:
            return policy.keep_key(ranking_view(self.step + k, j))
        finally:
            policy.last_use, policy.uses, policy.gate = self.last_use0, self.uses0, self.gate0

    def finish(self) -> None:
        """Every gate of the block recorded its use."""
        policy = self.policy
        policy.last_use = np.maximum(self.last_use0, self.stamp.max(axis=0))
        if policy.count_uses:
            policy.uses = self.uses0 + self.used.sum(axis=0)
        policy.gate = self.gate0 + self.stamp.shape[0] * self.stamp.shape[1]


def ranking_view(step: int, layer: int, ready_at: np.ndarray = _NO_CACHE) -> GateView:
    """A view for ranking outside a gate (a cache resize, a planned gate): ``keep_key`` of
    the plain caches reads its layer only."""
    return GateView(
        step=step,
        layer=layer,
        now=0.0,
        experts=_NONE,
        tokens=_NONE,
        cached=_NONE.astype(bool),
        ready_at=ready_at,
        cache_bytes=0.0,
        link_free_at={},
    )


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

    def admissible(self, layer: int | np.ndarray, experts: np.ndarray) -> np.ndarray:
        return self.pinned_set[layer, experts]

    def keep_key(self, view: GateView) -> np.ndarray:
        return np.where(self.pinned_set, np.inf, self.last_use)


# the caches whose decisions `CachePolicy.plan_cache` repeats (subclasses are not included:
# they may rank or admit by other rules)
PLANNED_CACHES = (LruPolicy, LfuPolicy, LeastStalePolicy, StaticPopularPolicy)
