"""Offline bounds for a fixed routing: what no policy can beat, on a stated objective.

* ``belady``: MIN with future knowledge (Belady 1966), adapted to gates. After each gate the
  cache keeps, among what it held and what the gate fetched, the experts needed soonest (the
  gate's own active experts stay: the engine never lets a gate evict them); an expert needed
  later than everything kept is not admitted (bypass). Objective: **misses** (active experts not
  served from HBM). It is optimal for that objective among policies without prefetch with the
  same cache size (per layer or global); a policy that prefetches makes at least as many
  transfers (misses + prefetches) as belady has misses. Misses take the miss-path rule, except
  that a miss belady keeps is fetched to the GPU.
* ``optimal``: an exact MILP (scipy.optimize.milp / HiGHS) over the whole (short) trace. It
  chooses, per active expert, hit or path, and which experts stay in HBM between their uses,
  under one global cache of the given size, minimising the **total link busy time**
  ``sum over links of links[L]["busy"]`` (slot-seconds of weight and activation transfers
  divided by the link's channels, as the engine reports it). It is a lower bound on that sum
  for every policy (prefetching or not, any scope) on the same instance: a prefetch can be
  replaced by a fetch at the next use at the same cost and with less cache occupancy. Assumes
  weight transfers cost the same whenever they happen and activation transfers are affine in
  the tokens (true for the default roofline cost model).

`gap_closed` turns a bound into the "share of the gap closed" reported per online policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from sim.errors import UserError
from sim.policies.base import (
    GPU_FETCH_PATHS,
    IN_PLACE_PATHS,
    LINK_OF_PATH,
    GateDecision,
    GateView,
    Path,
    Policy,
    PolicyContext,
    allowed_paths,
    register_policy,
)
from sim.policies.cache import CacheParams, CachePolicy, cache_slots


def gap_closed(baseline: float, policy: float, bound: float) -> float | None:
    """Share of the baseline-to-bound gap a policy closes: 0 = no better than the baseline,
    1 = reaches the bound (above 1 only if the "bound" does not bound this metric; negative
    when worse than the baseline). None when a value is not finite or the bound is not below
    the baseline: belady bounds demand misses, not latency, so it can be the slower one, and a
    "gap" to a slower bound would turn every improvement into a negative share."""
    values = (baseline, policy, bound)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        return None
    gap = baseline - bound
    if gap <= 0:
        return None
    return (baseline - policy) / gap + 0.0  # + 0.0: never -0.0


# -- belady ---------------------------------------------------------------------------------------
MAX_TIE_DEPTH = 64  # later uses looked at to break ties in next use


def next_use_table(counts: np.ndarray) -> np.ndarray:
    """``[steps + 1, layers, E]``: the first step >= s at which each expert of each layer is
    active (``steps`` when never)."""
    steps = counts.shape[0]
    active = counts > 0
    table = np.full((steps + 1, *counts.shape[1:]), steps, dtype=np.int64)
    for s in range(steps - 1, -1, -1):
        table[s] = np.where(active[s], s, table[s + 1])
    return table


@register_policy
class BeladyPolicy(CachePolicy):
    """MIN eviction and bypass with knowledge of every future gate."""

    name: ClassVar[str] = "belady"
    summary: ClassVar[str] = "offline bound: Belady MIN eviction (fewest misses), future known"
    uses_future: ClassVar[bool] = True
    is_bound: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Params(CacheParams):
        # misses take the latency-minimising split by default, so that the bound is run with
        # the best miss path there is (with `seed` ordinary policies beat its latency)
        miss_path: str = "balanced"
        bypass: bool = True  # False: every GPU-fetched miss is admitted (textbook demand paging)

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self.next_step = next_use_table(ctx.counts)
        reasons = allowed_paths(ctx.hardware)
        fetch = [p for p in GPU_FETCH_PATHS if not reasons[p]]
        self.fetch_path = fetch[0] if fetch else None

    def next_use(self, view: GateView) -> np.ndarray:
        """``[layers, E]`` gate index of each expert's next use after this gate (inf: never)."""
        s, layer, num_layers = view.step, view.layer, self.num_layers
        steps = np.where(
            (np.arange(num_layers) > layer)[:, None],
            self.next_step[s],
            self.next_step[min(s + 1, self.next_step.shape[0] - 1)],
        )
        gates = steps * num_layers + np.arange(num_layers)[:, None]
        return np.where(steps >= self.ctx.num_steps, np.inf, gates.astype(np.float64))

    def keep_key(self, view: GateView) -> np.ndarray:
        return -self.next_use(view)

    def rank(
        self, layers: np.ndarray, experts: np.ndarray, next_gate: np.ndarray, room: int
    ) -> np.ndarray:
        """Candidates best first: soonest next use; ties broken by the following uses, in
        turn (a gate using two tied experts keeps the one already there on for free, so the
        one whose later uses come sooner is worth more); then held before missed."""
        levels = [next_gate]
        order = np.lexsort(levels[::-1])
        while 0 < room < order.size and len(levels) < MAX_TIE_DEPTH:
            cut_a, cut_b = order[room - 1], order[room]
            if any(lv[cut_a] != lv[cut_b] for lv in levels) or not np.isfinite(levels[-1][cut_a]):
                break
            levels.append(self.use_after(layers, experts, levels[-1]))
            order = np.lexsort(levels[::-1])
        return order

    def use_after(self, layers: np.ndarray, experts: np.ndarray, gates: np.ndarray) -> np.ndarray:
        """Gate index of each expert's first use after gate ``gates`` (inf: none, or inf in)."""
        num_steps, num_layers = self.ctx.num_steps, self.num_layers
        finite = np.isfinite(gates)
        step = np.where(finite, gates, 0).astype(np.int64) // num_layers
        after = self.next_step[np.minimum(step + 1, num_steps), layers, experts]
        out = (after * num_layers + layers).astype(np.float64)
        return np.where(finite & (after < num_steps), out, np.inf)

    def place(
        self, view: GateView, paths: np.ndarray, resident: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        admit = np.zeros(view.experts.shape, dtype=bool)
        if self.partition_slots == 0 or self.fetch_path is None:
            return admit, []
        layer = view.layer
        nxt = self.next_use(view)
        rows = slice(None) if self.global_scope else slice(layer, layer + 1)
        first_row = 0 if self.global_scope else layer
        pinned = np.zeros_like(resident)
        pinned[layer, view.experts] = True  # the engine never evicts a gate's own experts
        keepable = (resident & ~pinned)[rows]  # held, may go
        room = self.partition_slots - int((resident & pinned)[rows].sum())
        miss = ~view.cached
        # candidates: held experts and this gate's misses, by next use (soonest kept)
        held_r, held_e = np.nonzero(keepable)
        miss_next = nxt[layer, view.experts[miss]]
        if not self.params.bypass:  # demand paging: the misses come in, whatever their future
            miss_next = np.where(paths[miss] != Path.PCIE, miss_next, -np.inf)
            miss_next = np.where(paths[miss] != Path.MD_FETCH, miss_next, -np.inf)
        cand_next = np.concatenate([nxt[rows][held_r, held_e], miss_next])
        cand_layer = np.concatenate([held_r + first_row, np.full(int(miss.sum()), layer)])
        cand_expert = np.concatenate([held_e, view.experts[miss]])
        order = self.rank(cand_layer, cand_expert, cand_next, room)
        kept = order[:room]
        kept = kept[cand_next[kept] < np.inf]
        keep_held = np.zeros(held_r.size, dtype=bool)
        keep_held[kept[kept < held_r.size]] = True
        miss_idx = np.flatnonzero(miss)[kept[kept >= held_r.size] - held_r.size]
        evict_r, evict_e = held_r[~keep_held] + first_row, held_e[~keep_held]
        resident[evict_r, evict_e] = False
        admit[miss_idx] = True
        fetched = (paths[miss_idx] == Path.PCIE) | (paths[miss_idx] == Path.MD_FETCH)
        paths[miss_idx[~fetched]] = self.fetch_path  # kept misses must come to the GPU
        resident[layer, view.experts[miss_idx]] = True
        return admit, [(int(r), int(e)) for r, e in zip(evict_r, evict_e)]


# -- optimal (MILP) ---------------------------------------------------------------------------------
@register_policy
class OptimalPolicy(Policy):
    """Exact minimum total link busy time over the trace (MILP), then replays its plan."""

    name: ClassVar[str] = "optimal"
    summary: ClassVar[str] = "offline bound: MILP minimum total link busy time (small instances)"
    uses_future: ClassVar[bool] = True
    is_bound: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Params:
        slots: int | None = None  # cache size in experts (None: all of hbm.capacity)
        capacity_bytes: float | None = None  # or in bytes
        max_uses: int = 10_000  # refuse instances with more active (step, layer, expert) uses
        time_limit: float = 120.0  # s for HiGHS; not proven optimal in time -> error

        def __post_init__(self) -> None:
            CacheParams(slots=self.slots, capacity_bytes=self.capacity_bytes)  # same checks
            if self.max_uses < 1:
                raise ValueError(f"max_uses: expected >= 1, got {self.max_uses}")
            if not self.time_limit > 0:
                raise ValueError(f"time_limit: expected > 0, got {self.time_limit}")

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        p = self.params
        slots = cache_slots(
            CacheParams(slots=p.slots, capacity_bytes=p.capacity_bytes), ctx, self.name
        )
        self.plan = solve_min_link_time(ctx, slots, p.max_uses, p.time_limit, self.name)
        self.objective = self.plan.objective

    def decide(self, view: GateView) -> GateDecision:
        plan = self.plan
        gate = view.step * self.ctx.num_layers + view.layer  # type: ignore[union-attr]
        paths = plan.paths[view.step, view.layer, view.experts].astype(np.int8)
        admit = plan.keep[view.step, view.layer, view.experts].copy()
        return GateDecision(paths=paths, admit=admit, evict=list(plan.evict.get(gate, ())))

    def stats(self) -> dict[str, Any]:
        """The MILP's result: objective (s of link busy time) and size."""
        return {"objective": self.objective, **self.plan.size}


@dataclass(frozen=True)
class LinkTimePlan:
    """The MILP's solution as per-gate decisions."""

    objective: float  # s: minimum sum over links of busy time
    paths: np.ndarray  # [steps, layers, E] int8 Path per active expert
    keep: np.ndarray  # [steps, layers, E] bool: admit this fetched expert
    evict: dict[int, list[tuple[int, int]]]  # gate index -> evictions issued there
    size: dict[str, int]


def solve_min_link_time(
    ctx: PolicyContext, slots: int, max_uses: int, time_limit: float, name: str
) -> LinkTimePlan:
    """Minimum total link busy time under a global cache of ``slots`` experts (see module doc).

    Variables: per active use u, a binary per allowed non-hit path; per pair of consecutive
    uses of an expert, a binary ``z`` "kept in HBM in between" (then the later use is a hit);
    per gate and in-place path, a binary "the gate sends activations" (one latency per batch);
    per use, ``w`` in [0, 1] = its HBM slot at its own gate (max of the kept flags around it:
    the engine never evicts an expert at the gate that uses it). Capacity: at every gate, kept
    intervals spanning it plus the gate's ``w`` fit in ``slots``."""
    import scipy.optimize  # heavy: only the MILP needs it, not every import of the policies
    import scipy.sparse

    counts, cost = ctx.counts, ctx.cost
    if not hasattr(cost, "uniform_transfer_time"):
        raise UserError(
            f"policy {name}: cost model: expected one whose weight transfers cost the same "
            f"at every gate (the roofline default), got {type(cost).__name__}"
        )
    steps, layers, num_experts = counts.shape
    s_idx, l_idx, e_idx = np.nonzero(counts)  # uses, in gate order (step-major, then layer)
    n_uses = int(s_idx.size)
    if n_uses > max_uses:
        raise UserError(
            f"policy {name}: instance size: expected at most max_uses={max_uses} active "
            f"(step, layer, expert) uses, got {n_uses} ({steps} steps x {layers} layers); "
            "select fewer steps or sequences, or raise max_uses (HiGHS time grows fast)"
        )
    gate = s_idx * layers + l_idx
    tokens = counts[s_idx, l_idx, e_idx].astype(np.float64)
    reasons = allowed_paths(ctx.hardware)
    paths = [p for p in (*GPU_FETCH_PATHS, *IN_PLACE_PATHS) if not reasons[p]]
    if not paths:
        raise UserError(f"policy {name}: hardware: expected at least one allowed path, got none")

    # consecutive uses of the same expert: intervals (prev use -> next use)
    item = l_idx * num_experts + e_idx
    order = np.lexsort((gate, item))
    same = item[order][1:] == item[order][:-1]
    iv_from, iv_to = order[:-1][same], order[1:][same]
    n_iv = int(iv_from.size)

    # variable layout: [x (uses x paths) | z (intervals) | b (gates x in-place paths) | w (uses)]
    n_gates = steps * layers
    near = [p for p in paths if p in IN_PLACE_PATHS]
    n_x = n_uses * len(paths)
    x0, z0, b0 = 0, n_x, n_x + n_iv
    w0 = b0 + n_gates * len(near)
    n_var = w0 + n_uses
    x_of = {p: x0 + np.arange(n_uses) * len(paths) + i for i, p in enumerate(paths)}
    c = np.zeros(n_var)
    for p in paths:
        link = LINK_OF_PATH[p]
        channels = ctx.hardware.route(link).channels
        if p in GPU_FETCH_PATHS:
            c[x_of[p]] = cost.uniform_transfer_time(link) / channels
        else:
            empty = np.zeros(0, dtype=np.int64)
            for u in range(n_uses):
                c[x_of[p][u]] = (
                    cost.activation_time(
                        link, s_idx[u], l_idx[u], e_idx[u : u + 1], tokens[u : u + 1]
                    )
                    - cost.activation_time(link, s_idx[u], l_idx[u], empty, empty[:0].astype(float))
                ) / channels
    for k, p in enumerate(near):
        link = LINK_OF_PATH[p]
        channels = ctx.hardware.route(link).channels
        empty = np.zeros(0, dtype=np.int64)
        for g in range(n_gates):
            s, lyr = divmod(g, layers)
            c[b0 + g * len(near) + k] = (
                cost.activation_time(link, s, lyr, empty, empty.astype(float)) / channels
            )

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lb: list[np.ndarray] = []
    ub: list[np.ndarray] = []
    n_rows = 0

    def add(r: np.ndarray, cc: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        nonlocal n_rows
        rows.append(r + n_rows)
        cols.append(cc)
        vals.append(v)
        n_new = len(lo)
        lb.append(lo)
        ub.append(hi)
        n_rows += n_new

    z_before = np.full(n_uses, -1)  # interval ending at the use (it is a hit if kept)
    z_before[iv_to] = z0 + np.arange(n_iv)
    z_after = np.full(n_uses, -1)
    z_after[iv_from] = z0 + np.arange(n_iv)
    u_all = np.arange(n_uses)
    ones = np.ones(n_uses)
    # (1) every use is a hit or takes exactly one path
    r = [np.repeat(u_all, len(paths))]
    cc = [np.stack([x_of[p] for p in paths], axis=1).ravel()]
    has_b = z_before >= 0
    r.append(u_all[has_b])
    cc.append(z_before[has_b])
    rr, ccc = np.concatenate(r), np.concatenate(cc)
    add(rr, ccc, np.ones(rr.size), ones, ones)
    # (2) kept after a use only if it was a hit or fetched to the GPU: z_after - z_before - x_fetch <= 0
    u_a = u_all[z_after >= 0]
    r = [np.arange(u_a.size)]
    cc = [z_after[u_a]]
    v = [np.ones(u_a.size)]
    hb = z_before[u_a] >= 0
    r.append(np.arange(u_a.size)[hb])
    cc.append(z_before[u_a][hb])
    v.append(-np.ones(int(hb.sum())))
    for p in paths:
        if p in GPU_FETCH_PATHS:
            r.append(np.arange(u_a.size))
            cc.append(x_of[p][u_a])
            v.append(-np.ones(u_a.size))
    add(
        np.concatenate(r),
        np.concatenate(cc),
        np.concatenate(v),
        np.full(u_a.size, -np.inf),
        np.zeros(u_a.size),
    )
    # (3) a gate sends activations if any of its uses takes that in-place path: x - b <= 0
    for k, p in enumerate(near):
        rr = np.repeat(u_all, 2)
        ccc = np.stack([x_of[p], b0 + gate * len(near) + k], axis=1).ravel()
        vv = np.tile([1.0, -1.0], n_uses)
        add(rr, ccc, vv, np.full(n_uses, -np.inf), np.zeros(n_uses))
    # (4) w >= z_before, w >= z_after
    for zs in (z_before, z_after):
        m = zs >= 0
        k = int(m.sum())
        rr = np.repeat(np.arange(k), 2)
        ccc = np.stack([w0 + u_all[m], zs[m]], axis=1).ravel()
        add(rr, ccc, np.tile([1.0, -1.0], k), np.zeros(k), np.full(k, np.inf))
    # (5) adjacent gates (one layer): a hit stays cached into the very next gate (z >= z_before)
    adj = (gate[iv_to] - gate[iv_from] == 1) & (z_before[iv_from] >= 0)
    k = int(adj.sum())
    if k:
        rr = np.repeat(np.arange(k), 2)
        ccc = np.stack([z0 + np.flatnonzero(adj), z_before[iv_from[adj]]], axis=1).ravel()
        add(rr, ccc, np.tile([1.0, -1.0], k), np.zeros(k), np.full(k, np.inf))
    # (6) capacity at every gate
    span_len = np.maximum(gate[iv_to] - gate[iv_from] - 1, 0)
    span_rows = np.concatenate(
        [np.arange(a + 1, b) for a, b in zip(gate[iv_from], gate[iv_to]) if b > a + 1]
        or [np.zeros(0, dtype=np.int64)]
    )
    span_cols = np.repeat(z0 + np.arange(n_iv), span_len)
    rr = np.concatenate([span_rows, gate])
    ccc = np.concatenate([span_cols, w0 + u_all])
    add(rr, ccc, np.ones(rr.size), np.full(n_gates, -np.inf), np.full(n_gates, float(slots)))

    matrix = scipy.sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n_rows, n_var)
    )
    integrality = np.ones(n_var)
    integrality[w0:] = 0
    res = scipy.optimize.milp(
        c,
        constraints=scipy.optimize.LinearConstraint(matrix, np.concatenate(lb), np.concatenate(ub)),
        integrality=integrality,
        bounds=scipy.optimize.Bounds(0, 1),
        options={"time_limit": time_limit, "disp": False},
    )
    if res.status != 0 or res.x is None:
        raise UserError(
            f"policy {name}: MILP ({n_var} variables, {n_rows} constraints): expected a proven "
            f"optimum within time_limit={time_limit} s, got {res.message!r}; use a smaller instance"
        )
    sol = np.rint(res.x[:w0]).astype(np.int64)
    plan_paths = np.full((steps, layers, num_experts), int(Path.HIT), dtype=np.int8)
    keep = np.zeros((steps, layers, num_experts), dtype=bool)
    chosen = np.stack([sol[x_of[p]] for p in paths], axis=1)
    is_miss = chosen.sum(axis=1) == 1
    path_ids = np.array([int(p) for p in paths])
    use_path = np.where(is_miss, path_ids[chosen.argmax(axis=1)], int(Path.HIT))
    plan_paths[s_idx, l_idx, e_idx] = use_path
    kept_after = np.zeros(n_uses, dtype=bool)
    kept_after[z_after >= 0] = sol[z_after[z_after >= 0]] == 1
    keep[s_idx, l_idx, e_idx] = kept_after & is_miss
    evict: dict[int, list[tuple[int, int]]] = {}
    # a hit not kept on is evicted at the next gate (never at its own)
    for u in np.flatnonzero((use_path == int(Path.HIT)) & ~kept_after):
        g = int(gate[u]) + 1
        if g < n_gates:
            evict.setdefault(g, []).append((int(l_idx[u]), int(e_idx[u])))
    size = {"uses": n_uses, "variables": n_var, "constraints": n_rows, "slots": slots}
    return LinkTimePlan(float(res.fun), plan_paths, keep, evict, size)
