"""Split policies: every active expert is fetched (or run near data) at every layer, no cache.

* ``seed-split``: the seed's bandwidth-proportional rule (MoNDE-style), the baseline.
* ``gpu-only`` / ``md-only``: every active expert on one path.
* ``balanced-split``: the split minimising the layer's finish time (DynaNDE-style).

The path choices are also exposed as functions (`seed_split_paths`, `single_path`,
`balanced_split_paths`) so cache policies can use them as their miss-path rule, and as
whole-trace plans (`*_plan`) for the numpy closed form (`sim.engine.closed_form`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from sim.contract import fifo_arrivals
from sim.engine.cost import is_roofline
from sim.hardware import Hardware
from sim.policies.base import GateDecision, GateView, Path, Policy, PolicyContext, register_policy
from sim.stats.gating import gpu_share

Rounding = Literal["nearest", "ceil", "floor"]
Order = Literal["tokens", "id"]
ORDERS = get_args(Order)


def md_path(hardware: Hardware) -> Path:
    """The MD path of the scenario: run near data in near-data mode, else fetch over md_link."""
    return Path.MD_NEAR if hardware.md_mode == "near-data" else Path.MD_FETCH


# -- seed-split ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedSplitParams:
    """The seed's rule constants (only the ratio of the bandwidths matters; one unit for both)."""

    bw_pcie: float = 32.0
    bw_md: float = 512.0
    alpha: float = 1.0
    rounding: Rounding = "nearest"  # "nearest" (Python round, the seed), "ceil" (MoNDE), "floor"
    order: Order = "tokens"  # which experts take the GPU path: most tokens first, or lowest id
    from_links: bool = False  # take bw_pcie/bw_md from the scenario's link bandwidths instead

    def __post_init__(self) -> None:
        for name in ("bw_pcie", "bw_md", "alpha"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.bw_pcie + self.bw_md <= 0:
            raise ValueError("bw_pcie + bw_md: expected a positive total, got 0")


def seed_h_table(params: SeedSplitParams, hardware: Hardware, max_active: int) -> np.ndarray:
    """``H`` for every possible number of candidate experts 0..max_active (capped at it)."""
    if params.from_links:
        bw_pcie, bw_md = hardware.pcie.bandwidth, hardware.md_link.bandwidth
    else:
        bw_pcie, bw_md = params.bw_pcie, params.bw_md
    n = np.arange(max_active + 1, dtype=np.int64)
    _gpu, _md, h = gpu_share(n, bw_pcie, bw_md, params.alpha, params.rounding)
    return np.minimum(h, n)


def seed_split_paths(
    view: GateView, h_table: np.ndarray, md: Path, order: str = "tokens"
) -> np.ndarray:
    """The seed's split of the gate's *non-cached* experts: ``H = h_table[count]`` of them over
    PCIe (most tokens first, or lowest ids first), the rest on the MD path ``md``."""
    n = view.experts.size
    paths = np.full(n, md, dtype=np.int8)
    if view.cache_bytes == 0:  # nothing cached: every active expert is a candidate
        h = int(h_table[n])
        if order == "tokens":
            paths[:h] = Path.PCIE
            return paths
        misses = np.arange(n)
    else:
        misses = np.flatnonzero(~view.cached)
        h = int(h_table[misses.size])
    if h:
        if order == "id":
            misses = misses[np.argsort(view.experts[misses], kind="stable")]
        paths[misses[:h]] = Path.PCIE
    return paths


@register_policy
class SeedSplit(Policy):
    """The seed's gating rule (MoNDE-style, arXiv 2405.18832): of the layer's ``Expert_Activ``
    active experts, ``H = int(alpha * round(BW_PCIe / (BW_MD + BW_PCIe) * Expert_Activ))``
    (capped at Expert_Activ) take the GPU path over PCIe, the rest the MD path (fetched over
    md_link, or run near data). Most tokens first to the GPU, ties by lower id. No cache."""

    name = "seed-split"
    summary = "the seed's bandwidth-proportional GPU/MD split (MoNDE-style); the baseline"
    Params = SeedSplitParams

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self._h = seed_h_table(self.params, ctx.hardware, ctx.model.num_experts)
        self._md = md_path(ctx.hardware)
        self._columns = np.arange(ctx.model.num_experts)[None, :]

    def decide(self, view: GateView) -> GateDecision:
        return GateDecision(paths=seed_split_paths(view, self._h, self._md, self.params.order))

    def plan_gates(self, experts: np.ndarray, tokens: np.ndarray, active: np.ndarray) -> np.ndarray:
        """`decide` for every gate of an iteration at once (`Policy.plan_gates`, gate order)."""
        h = self._h[active]
        if self.params.order == "tokens":  # gate order is most tokens first
            rank = self._columns
        else:  # lowest ids first among the active ones
            ids = np.where(self._columns < active[:, None], experts, np.iinfo(np.int64).max)
            rank = np.argsort(np.argsort(ids, axis=1, kind="stable"), axis=1, kind="stable")
        return np.where(rank < h[:, None], Path.PCIE, self._md).astype(np.int8)


def seed_split_plan(
    counts: np.ndarray, hardware: Hardware, params: SeedSplitParams | None = None
) -> np.ndarray:
    """Whole-trace seed-split paths, ``[steps, layers, E]`` int8 by expert id (HIT where the
    expert is inactive): the vectorised twin of `SeedSplit.decide` for the closed form."""
    params = params or SeedSplitParams()
    counts = np.asarray(counts)
    active = counts > 0
    h = seed_h_table(params, hardware, counts.shape[2])[active.sum(axis=2)]
    if params.order == "tokens":
        key = -counts.astype(np.int64)
    else:
        key = np.where(active, 0, 1)
    rank_order = np.argsort(key, axis=2, kind="stable")
    rank = np.empty_like(rank_order)
    np.put_along_axis(rank, rank_order, np.arange(counts.shape[2])[None, None, :], axis=2)
    paths = np.where(rank < h[:, :, None], Path.PCIE, md_path(hardware)).astype(np.int8)
    paths[~active] = Path.HIT
    return paths


# -- single path --------------------------------------------------------------------------------
def single_path(view: GateView, path: Path) -> np.ndarray:
    """Every non-cached expert of the gate on ``path`` (cached ones are hits anyway)."""
    return np.full(view.experts.size, path, dtype=np.int8)


@register_policy
class GpuOnly(Policy):
    """Every active expert's weights over PCIe to the GPU (classic host offloading, as
    mixtral-offloading without a cache). No cache."""

    name = "gpu-only"
    summary = "every active expert fetched over PCIe to the GPU; no cache"

    def decide(self, view: GateView) -> GateDecision:
        return GateDecision(paths=single_path(view, Path.PCIE))

    def plan_gates(self, experts: np.ndarray, tokens: np.ndarray, active: np.ndarray) -> np.ndarray:
        """`decide` for every gate of an iteration at once (`Policy.plan_gates`)."""
        return np.full(experts.shape, Path.PCIE, dtype=np.int8)


@register_policy
class MdOnly(Policy):
    """Every active expert on the MD path: fetched over md_link (fetch mode) or computed next
    to the pool (near-data mode, as MoNDE's NDP side). No cache."""

    name = "md-only"
    summary = "every active expert on the MD path (fetch or near-data); no cache"

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self._md = md_path(ctx.hardware)

    def decide(self, view: GateView) -> GateDecision:
        return GateDecision(paths=single_path(view, self._md))

    def plan_gates(self, experts: np.ndarray, tokens: np.ndarray, active: np.ndarray) -> np.ndarray:
        """`decide` for every gate of an iteration at once (`Policy.plan_gates`)."""
        return np.full(experts.shape, self._md, dtype=np.int8)


def single_path_plan(counts: np.ndarray, path: Path) -> np.ndarray:
    """Whole-trace plan with every active expert on ``path`` (HIT where inactive)."""
    return np.where(np.asarray(counts) > 0, path, Path.HIT).astype(np.int8)


# -- balanced-split -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BalancedSplitParams:
    """``exhaustive_limit``: when neither sorted-enumeration argument of `balanced_split_paths`
    holds for a gate (near-data mode with unequal GPU compute; any mode with per-expert costs
    that break the arguments), search all 2^n splits of its n candidates if n <= this."""

    exhaustive_limit: int = 12

    def __post_init__(self) -> None:
        if not 0 <= self.exhaustive_limit <= 20:
            raise ValueError(f"exhaustive_limit: expected 0..20, got {self.exhaustive_limit!r}")


def balanced_split_paths(
    view: GateView, ctx: PolicyContext, exhaustive_limit: int = 12
) -> np.ndarray:
    """The split of the gate's non-cached experts (the candidates) between the GPU path (PCIe)
    and the MD path that minimises the layer's finish time as the engine times it: the run's
    cost model, the links' current queues (``view.link_free_at``) and the hits, which need the
    GPU too (the GPU runs the hits already in HBM first, then every other expert in arrival
    order, hits still in flight included, `GpuProcess._gpu_part`). Every copy is timed at its
    own size, as the engine does: hits in their cached copy's precision (``view.precision_at``),
    misses in the default copy of the tier they come from (or the cost model's one precision,
    under `quantised-all`).

    **Exact** (the minimum over all 2^n splits of the n candidates) when one of the two
    arguments below holds for the gate, or else when ``n <= exhaustive_limit`` (every split is
    evaluated); otherwise it returns the best split of the sorted family the argument would
    search (a heuristic). Under the roofline cost model (`RooflineCost`) the fetch-mode argument
    holds whenever both tiers' default copies are the same precision, the near-data one
    whenever the candidates' GPU compute is equal (memory-bound experts: tokens below the
    roofline ridge, the usual case).

    * fetch mode, when each link has one transfer time for every candidate and GPU compute does
      not increase along the gate order (most tokens first; any roofline) and does not depend
      on the tier the copy comes from: for a given ``k`` (how many go over PCIe) the FIFO
      arrival times on each link are fixed (the j-th transfer of a link arrives at the same
      time whichever expert it carries), so only which expert gets which arrival time
      matters. The GPU runs experts serially in arrival order (hits still in flight among
      them, at their fixed arrival times) and ends at ``max_i(r_i + sum of compute from i
      on)``; swapping two candidates so that the larger compute gets the earlier arrival
      never increases any term, so "the i-th candidate to the i-th earliest of the merged
      arrival times" is optimal for that ``k``, and it is a split the engine realises (each
      link's queue keeps the gate order). Enumerating ``k`` is exact.
    * near-data mode, when PCIe has one transfer time for every candidate, the candidates' GPU
      compute is equal, near-data compute does not increase along the gate order and the
      activations cost the roofline's ``latency + bytes / rate`` each way: the GPU side then
      depends only on ``k`` and the MD side (``2 * activations(tokens) + sum near compute``,
      additive) is smallest when the first ``k`` candidates leave it: a sorted prefix.

    Ties go to fewer PCIe transfers. This is the optimum for a GPU alone on FIFO links (what
    tests/test_split_policies.py checks against brute force); where the engine does what the
    gate cannot see (network routes, several GPUs, transfers added after the split) it is an
    estimate: docs/engine.md, "When balanced-split is exact"."""
    hw, cost = ctx.hardware, ctx.cost
    md = md_path(hw)
    paths = np.full(view.experts.size, md, dtype=np.int8)
    cand = np.flatnonzero(~view.cached) if view.cache_bytes else np.arange(view.experts.size)
    n = cand.size
    if n == 0 or hw.placement == "md":
        return paths
    if hw.placement == "host":
        paths[:] = Path.PCIE
        return paths
    experts, tokens = view.experts[cand], view.tokens[cand]
    c_cost = np.asarray(cost.gpu_compute_time(view.step, view.layer, experts, tokens), float)
    c = _in_copies(ctx, tokens, c_cost, "pcie")  # GPU compute of a copy fetched over PCIe
    r_hit, c_hit, busy = _hit_schedule(view, ctx)
    per_expert = hw.gpu.expert_start == "per-expert"
    d_pcie = _durations(view, ctx, "pcie", experts)
    free_pcie = _free(view, "pcie")
    if md == Path.MD_FETCH:
        d_md = _durations(view, ctx, "md_link", experts)
        free_md = _free(view, "md_link")
        c_md = _in_copies(ctx, tokens, c_cost, "md_link")  # the MD tier's copy
        exact = (
            _uniform(d_pcie)
            and _uniform(d_md)
            and (c_md is c or np.array_equal(c, c_md))
            and (is_roofline(cost, "gpu_compute_time") or not (np.diff(c) > 0).any())
        )
        if not exact and n <= exhaustive_limit:
            subsets = _subsets(n)
            ready = np.where(
                subsets,
                _subset_arrivals(free_pcie, d_pcie, subsets),
                _subset_arrivals(free_md, d_md, ~subsets),
            )
            ends = gpu_end_estimates(ready, np.where(subsets, c, c_md), r_hit, c_hit, per_expert)
            paths[cand[subsets[_fewest_pcie_argmin(ends, subsets)]]] = Path.PCIE
            return paths
        a_pcie = fifo_arrivals(free_pcie, d_pcie, n)
        a_md = fifo_arrivals(free_md, d_md, n)
        if exact and busy is not None:  # ascending arrivals, no hit in flight: no sorting
            ends, rank_pcie = _merged_ends(a_pcie, a_md, c, busy, per_expert)
            k = int(np.argmin(ends))
            paths[cand[rank_pcie[k, :k]]] = Path.PCIE
            return paths
        ks, j = np.arange(n + 1), np.arange(n)
        both = np.concatenate(
            [
                np.where(j[None, :] < ks[:, None], a_pcie[None, :], np.inf),
                np.where(j[None, :] < (n - ks)[:, None], a_md[None, :], np.inf),
            ],
            axis=1,
        )
        source = np.argsort(both, axis=1, kind="stable")[:, :n]
        merged = np.take_along_axis(both, source, axis=1)
        ends = gpu_end_estimates(merged, np.broadcast_to(c, merged.shape), r_hit, c_hit, per_expert)
        k = int(np.argmin(ends))
        paths[cand[source[k] < n]] = Path.PCIE
        return paths

    near_c = _near_times(ctx, view, experts, tokens)
    exact = (
        _uniform(d_pcie)
        and np.ptp(c) == 0
        and (is_roofline(cost, "near_compute_time") or not (np.diff(near_c) > 0).any())
        and is_roofline(cost, "activation_time")
    )
    if not exact and n <= exhaustive_limit:
        subsets = _subsets(n)
        ready = _subset_arrivals(free_pcie, d_pcie, subsets)
        gpu = gpu_end_estimates(ready, np.where(subsets, c, 0.0), r_hit, c_hit, per_expert)
        total = np.maximum(gpu, _near_end_estimates(view, ctx, experts, tokens, near_c, ~subsets))
        paths[cand[subsets[_fewest_pcie_argmin(total, subsets)]]] = Path.PCIE
        return paths
    a_pcie = fifo_arrivals(free_pcie, d_pcie, n)
    take = np.arange(n)[None, :] < np.arange(n + 1)[:, None]  # row k: the first k over PCIe
    if _uniform(d_pcie) and busy is not None:  # ascending arrivals, no hit in flight
        gpu = _prefix_ends(a_pcie, c, busy, per_expert)
    else:
        ready = np.where(take, a_pcie[None, :], np.inf)
        gpu = gpu_end_estimates(ready, np.where(take, c, 0.0), r_hit, c_hit, per_expert)
    total = np.maximum(gpu, _near_end_estimates(view, ctx, experts, tokens, near_c, ~take))
    k = int(np.argmin(total))
    paths[cand[:k]] = Path.PCIE
    return paths


def _hit_schedule(
    view: GateView, ctx: PolicyContext
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """The gate's hits as the GPU meets them: (ready times relative to the gate, compute, busy).
    Hits all in HBM already just keep the GPU busy first: one block of ``busy`` seconds ready
    at 0 (and ``busy``, for the sort-free evaluations); with a hit still in flight every hit is
    listed with its own ready time and ``busy`` is None. No hits: empty arrays, busy 0."""
    none = np.empty(0)
    if not view.cache_bytes:
        return none, none, 0.0
    hit = np.flatnonzero(view.cached)
    if not hit.size:
        return none, none, 0.0
    experts = view.experts[hit]
    r_hit = np.maximum(view.ready_at[view.layer, experts] - view.now, 0.0)
    tokens = view.tokens[hit]
    held = None if view.precision_at is None else view.precision_at[view.layer, experts]
    c_hit = np.asarray(ctx.cost.gpu_compute_time(view.step, view.layer, experts, tokens), float)
    c_hit = _in_copies(ctx, tokens, c_hit, held)
    if r_hit.any():
        return r_hit, c_hit, None
    busy = float(c_hit.sum())
    return np.zeros(1), np.array([busy]), busy


def _in_copies(
    ctx: PolicyContext, tokens: np.ndarray, c: np.ndarray, copies: str | np.ndarray | None
) -> np.ndarray:
    """``c``, the cost model's GPU compute of experts with ``tokens``, for the copies the
    engine computes them from: ``copies`` a route (its default copy, what a fetch over it
    brings), precision indices (cached copies), or None (the copy the cost model assumes). A
    copy other than the one the cost model assumes is timed by the roofline at its own size, as
    the engine does (reduced copies need the roofline: with another cost model all are native)."""
    cost = ctx.cost
    if copies is None or not is_roofline(cost, "gpu_compute_time"):
        return c
    assumed = cost.precision or 0
    if isinstance(copies, str):
        q = cost.route_copy[copies]
        return c if q == assumed else np.asarray(cost.gpu_time_at(tokens, q), np.float64)
    other = copies != assumed
    if not other.any():
        return c
    c = np.array(c, dtype=np.float64)
    for q in np.unique(copies[other]).tolist():
        on = copies == q
        c[on] = cost.gpu_time_at(tokens[on], q)
    return c


def _near_times(
    ctx: PolicyContext, view: GateView, experts: np.ndarray, tokens: np.ndarray
) -> np.ndarray:
    """Near-data compute of ``experts`` in the MD tier's default copy, as the engine times it
    (`_in_copies` for the compute next to the pool)."""
    cost = ctx.cost
    c = np.asarray(cost.near_compute_time(view.step, view.layer, experts, tokens), np.float64)
    if not is_roofline(cost, "near_compute_time"):
        return c
    q = cost.route_copy["md_link"]
    return c if q == (cost.precision or 0) else np.asarray(cost.near_time_at(tokens, q), float)


def _uniform(durations: np.ndarray | float) -> bool:
    """One transfer time for every candidate (always so under the roofline)."""
    return isinstance(durations, float) or bool(np.ptp(durations) == 0)


def _subsets(n: int) -> np.ndarray:
    """Every split of n candidates, one row each (True: over PCIe)."""
    return ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)


def _fewest_pcie_argmin(ends: np.ndarray, subsets: np.ndarray) -> int:
    """The row with the smallest end; among equal ends, the one with fewest PCIe transfers."""
    return int(np.lexsort((subsets.sum(axis=1), ends))[0])


def _subset_arrivals(
    free: np.ndarray, durations: np.ndarray | float, subsets: np.ndarray
) -> np.ndarray:
    """Per row, the arrival time of each candidate the row sends on this link (+inf for the
    others) when the row's candidates are queued FIFO in gate order on slots free at ``free``
    (`sim.contract.fifo_arrivals` for every row at once)."""
    rows, n = subsets.shape
    if isinstance(durations, float):
        a = fifo_arrivals(free, durations, n)
        rank = np.maximum(np.cumsum(subsets, axis=1) - 1, 0)
        return np.where(subsets, a[rank], np.inf)
    slots = np.repeat(free[None, :].astype(np.float64), rows, axis=0)
    out = np.full((rows, n), np.inf)
    row = np.arange(rows)
    for i, d in enumerate(durations.tolist()):
        take = subsets[:, i]
        k = np.argmin(slots, axis=1)  # the slot that frees first (ties: the lower slot)
        end = slots[row, k] + d
        out[take, i] = end[take]
        slots[row[take], k[take]] = end[take]
    return out


def _merged_ends(
    a_pcie: np.ndarray, a_md: np.ndarray, c: np.ndarray, busy: float, per_expert: bool
) -> tuple[np.ndarray, np.ndarray]:
    """GPU end for every k (row k: the first k PCIe and first n - k MD arrivals, merged, the
    i-th earliest computing candidate i), without sorting; and each row's merged position of
    the PCIe arrivals. Both arrival arrays ascend; ties put PCIe first (as a stable merge)."""
    n = c.size
    ce = np.concatenate(([0.0], np.cumsum(c)))  # compute of the candidates before position m
    total = float(ce[n])
    k = np.arange(n + 1)[:, None]
    i = np.arange(n)[None, :]
    rank_pcie = i + np.minimum(np.searchsorted(a_md, a_pcie, side="left")[None, :], n - k)
    if not per_expert:
        last_pcie = np.where(k[:, 0] > 0, a_pcie[k[:, 0] - 1], 0.0)
        last_md = np.where(k[:, 0] < n, a_md[n - k[:, 0] - 1], 0.0)
        return np.maximum(np.maximum(last_pcie, last_md), 0.0) + busy + total, rank_pcie
    rank_md = i + np.minimum(np.searchsorted(a_pcie, a_md, side="right")[None, :], k)
    # (ranks of the masked-out entries may run past n: clipped, then ignored)
    before_pcie = np.take(ce, rank_pcie, mode="clip")
    before_md = np.take(ce, rank_md, mode="clip")
    late_pcie = np.where(i < k, a_pcie[None, :] - before_pcie, -np.inf).max(axis=1)
    late_md = np.where(i < n - k, a_md[None, :] - before_md, -np.inf).max(axis=1)
    return total + np.maximum(np.maximum(late_pcie, late_md), busy), rank_pcie


def _prefix_ends(a_pcie: np.ndarray, c: np.ndarray, busy: float, per_expert: bool) -> np.ndarray:
    """GPU end for every k when the first k candidates (in order) arrive over PCIe (ascending)."""
    ce = np.cumsum(c)
    ends = np.empty(c.size + 1)
    ends[0] = busy
    if per_expert:
        late = np.maximum.accumulate(a_pcie - (ce - c))
        ends[1:] = ce + np.maximum(late, busy)
    else:
        ends[1:] = np.maximum(a_pcie, 0.0) + busy + ce
    return ends


def gpu_end_estimates(
    ready: np.ndarray, compute: np.ndarray, r_hit: np.ndarray, c_hit: np.ndarray, per_expert: bool
) -> np.ndarray:
    """End of the serial GPU compute, one row per candidate schedule (``ready`` = +inf and
    ``compute`` = 0 where an expert is not on the GPU in that row), hits added to every row."""
    rows = ready.shape[0]
    if r_hit.size:
        ready = np.concatenate([ready, np.broadcast_to(r_hit, (rows, r_hit.size))], axis=1)
        compute = np.concatenate([compute, np.broadcast_to(c_hit, (rows, c_hit.size))], axis=1)
    finite = np.isfinite(ready)
    if per_expert:
        order = np.argsort(ready, axis=1, kind="stable")
        r = np.take_along_axis(ready, order, axis=1)
        cc = np.take_along_axis(compute, order, axis=1)
        cum = np.cumsum(cc, axis=1)
        late = np.where(np.isfinite(r), r - (cum - cc), -np.inf).max(axis=1)
        end = cum[:, -1] + np.maximum(late, 0.0)
    else:
        end = np.maximum(np.where(finite, ready, 0.0).max(axis=1), 0.0) + compute.sum(axis=1)
    return np.where(finite.any(axis=1), end, 0.0)


def _free(view: GateView, link: str) -> np.ndarray:
    """When each slot of ``link`` frees, relative to the gate (0 if already free)."""
    return np.maximum(np.asarray(view.link_free_at[link], dtype=np.float64) - view.now, 0.0)


def _durations(
    view: GateView, ctx: PolicyContext, link: str, experts: np.ndarray
) -> np.ndarray | float:
    """Transfer time of each candidate on ``link`` (one float under the roofline)."""
    if is_roofline(ctx.cost, "transfer_time"):
        return float(ctx.cost.uniform_transfer_time(link))
    return np.asarray(ctx.cost.transfer_time(link, view.step, view.layer, experts), float)


def _near_end_estimates(
    view: GateView,
    ctx: PolicyContext,
    experts: np.ndarray,
    tokens: np.ndarray,
    near_c: np.ndarray,
    on_md: np.ndarray,
) -> np.ndarray:
    """End of the near-data part per row of ``on_md`` (bool, which candidates run near data):
    activations out, serial compute next to the pool, activations back."""
    free = _free(view, "md_link").min()
    total_tokens = on_md @ tokens.astype(np.float64)
    if is_roofline(ctx.cost, "activation_time"):
        half = np.asarray(ctx.cost.activation_one_way("md_link", total_tokens), dtype=np.float64)
    else:
        half = np.array(
            [
                0.5
                * ctx.cost.activation_time("md_link", view.step, view.layer, experts[m], tokens[m])
                for m in on_md
            ]
        )
    end = (free + half + on_md @ near_c) + half
    return np.where(on_md.any(axis=1), end, 0.0)


@register_policy
class BalancedSplit(Policy):
    """DynaNDE-style split: per gate, the assignment of the active experts to the GPU path
    (PCIe) or the MD path that minimises the layer's finish time under the run's cost model:
    each path's latency, bandwidth, channels and queue, GPU/near-data compute, and the cached
    experts (in HBM or still in flight). The exact optimum of what the seed's rule
    approximates, with the conditions under which it is exact in `balanced_split_paths`
    (under the roofline: in fetch mode when both tiers' default copies are the same precision,
    in near-data mode when GPU compute is equal across the candidates; or when they are at
    most ``exhaustive_limit``). No cache of its own."""

    name = "balanced-split"
    summary = "the GPU/MD split minimising each layer's finish time (DynaNDE-style)"
    Params = BalancedSplitParams

    def decide(self, view: GateView) -> GateDecision:
        assert self.ctx is not None
        return GateDecision(
            paths=balanced_split_paths(view, self.ctx, self.params.exhaustive_limit)
        )
