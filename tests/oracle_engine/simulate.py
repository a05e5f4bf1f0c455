"""The discrete-event engine: a `RoutingTrace` drives expert transfers and compute.

simpy keeps the clock: one process walks decode steps and, per step, the trace's MoE layers,
with one timeout for the layer's non-expert time (attention, router: the gate is at its end)
and one for the rest of the layer. Everything inside a layer is computed in closed form with
numpy (FIFO link slots with ``free_at`` bookkeeping, serial compute streams), never with a simpy
`Resource` per expert. The full model, every rule and every metric: docs/engine.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import simpy

from oracle_engine.cache import HbmCache
from oracle_engine.links import FifoLink, Placed
from oracle_engine.results import (
    INT_COLUMNS,
    LINK_NAMES,
    PER_LAYER_COLUMNS,
    RunResult,
    TimelineEvent,
    compute_totals,
)
from sim.engine.cost import RooflineCost, is_roofline
from sim.errors import UserError
from sim.hardware import Hardware, ModelSpec
from sim.policies.base import (
    CostModel,
    GateDecision,
    GateView,
    Path,
    Policy,
    PolicyContext,
    PolicyError,
    allowed_paths,
)
from sim.roofline import step_non_expert_times
from sim.trace.routing import RoutingTrace

_COL = {name: i for i, name in enumerate(PER_LAYER_COLUMNS)}
# plain ints for the hot loop (enum attribute lookups are slow)
_HIT, _PCIE, _MD_FETCH, _MD_NEAR, _HOST = (int(p) for p in Path)
_NUM_PATHS = len(Path)


@dataclass(frozen=True)
class GateOrder:
    """Every gate's active experts, most tokens first (ties by lower id), precomputed.

    ``experts[s, l, :active[s, l]]`` are the active expert ids of gate (s, l) in that order and
    ``tokens[s, l, :active[s, l]]`` their token counts. This order is the FIFO order in which
    the engine issues a gate's transfers on each link.
    """

    experts: np.ndarray  # [steps, layers, E] intp
    tokens: np.ndarray  # [steps, layers, E] int64, 0 past the active ones
    active: np.ndarray  # [steps, layers] int64

    @classmethod
    def from_counts(cls, counts: np.ndarray) -> GateOrder:
        counts = np.asarray(counts)
        order = np.argsort(-counts.astype(np.int64), axis=2, kind="stable")
        tokens = np.take_along_axis(counts, order, axis=2).astype(np.int64)
        active = (counts > 0).sum(axis=2).astype(np.int64)
        for arr in (order, tokens, active):
            arr.flags.writeable = False
        return cls(order, tokens, active)


def simulate(
    trace: RoutingTrace,
    hardware: Hardware,
    model: ModelSpec,
    policy: Policy,
    *,
    topk: int | None = None,
    cost: CostModel | None = None,
    timeline: bool | tuple[int, int] = False,
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
    label: str | None = None,
) -> RunResult:
    """Replay ``trace`` under ``policy`` on ``hardware``; returns per-layer/step metrics.

    ``topk`` cuts the trace's routing to k' experts per token (default ``model.top_k``) with
    the project's one top-k selection. ``progress`` is called with the number of steps newly
    completed (tqdm's ``update``). ``label`` defaults to the policy's name. ``timeline``: True
    records every interval; ``(start, stop)`` only those of steps ``start .. stop-1`` (a window
    costs what the recorded steps cost; the other steps take the fast path).
    """
    k = model.top_k if topk is None else int(topk)
    if trace.num_experts != model.num_experts:
        raise UserError(
            f"model.num_experts: expected the trace's {trace.num_experts} experts, "
            f"got {model.num_experts}"
        )
    if not 1 <= k <= trace.num_experts:
        raise UserError(f"topk: expected 1..{trace.num_experts}, got {k}")
    if not model.expert_bytes > 0:
        raise UserError(f"model.expert_bytes: expected a size > 0, got {model.expert_bytes}")
    counts = trace.expert_token_counts(k)
    cost = cost if cost is not None else RooflineCost(hardware, model)
    ctx = PolicyContext(
        hardware=hardware,
        model=model,
        counts=counts,
        layer_ids=tuple(trace.layer_ids),
        topk=k,
        cost=cost,
        seed=seed,
    )
    policy.bind(ctx)
    engine = _Engine(trace, ctx, policy, timeline=timeline)
    env = simpy.Environment()
    env.process(engine.run(env, progress))
    env.run()
    return engine.result(label or policy.name)


class _Engine:
    """State of one run: the HBM cache (`HbmCache`), link slots, metric rows."""

    def __init__(
        self,
        trace: RoutingTrace,
        ctx: PolicyContext,
        policy: Policy,
        *,
        timeline: bool | tuple[int, int],
    ) -> None:
        hw, model = ctx.hardware, ctx.model
        self.trace = trace
        self.ctx = ctx
        self.policy = policy
        self.cost = ctx.cost
        self.hw = hw
        self.gates = GateOrder.from_counts(ctx.counts)
        steps, layers, num_experts = ctx.counts.shape
        self.steps, self.layers, self.num_experts = steps, layers, num_experts
        # per step: the constant gpu.non_expert_time, or the roofline (sim/roofline.py)
        self.non_expert = step_non_expert_times(hw, model, trace.num_seqs, trace.positions)
        self.non_expert_list = self.non_expert.tolist()
        self.per_expert_start = hw.gpu.expert_start == "per-expert"
        self.expert_bytes = float(model.expert_bytes)
        self.act_bytes = float(model.activation_bytes_per_token)
        self.links = {name: FifoLink(hw.link(name)) for name in LINK_NAMES}
        self.public_free_at = {name: link.public_free_at for name, link in self.links.items()}
        not_allowed = allowed_paths(hw)
        self.blocked = [(path, why) for path, why in not_allowed.items() if why]
        self.cache = HbmCache(
            layers,
            num_experts,
            ctx.counts,
            not_allowed,
            self.expert_bytes,
            float(hw.hbm.capacity),
            f"policy {policy.name!r}",
        )
        self.positions = tuple(int(p) for p in trace.positions)
        self.layer_ids = tuple(int(lid) for lid in trace.layer_ids)
        self.arange = np.arange(num_experts)
        self.arange.flags.writeable = False
        self.not_cached = np.zeros(num_experts, dtype=bool)
        self.not_cached.flags.writeable = False
        # Fast paths for the default cost model: one transfer time per link, a compute table.
        cost = self.cost
        self.transfer_d = None
        if is_roofline(cost, "transfer_time"):
            self.transfer_d = {name: cost.uniform_transfer_time(name) for name in LINK_NAMES}
        self.gpu_table = None
        if is_roofline(cost, "gpu_compute_time"):
            table = np.asarray(cost.gpu_time_from_tokens(self.gates.tokens), dtype=np.float64)
            table[self.gates.tokens == 0] = 0.0
            self.gpu_table = table
            self.ref_table = table.sum(axis=2)
        # one tuple per gate: PER_LAYER_COLUMNS, then the all-in-HBM compute time
        self.rows: list[tuple] = []
        # the recorded events; `timeline` is that list while a recorded step runs, else None
        self.events: list[TimelineEvent] | None = [] if timeline is not False else None
        self.window = (0, self.steps) if timeline is True else timeline or (0, 0)
        self.timeline: list[TimelineEvent] | None = None

    # -- the simpy process -----------------------------------------------------------------------
    def run(self, env: simpy.Environment, progress: Callable[[int], None] | None) -> Iterator:
        report_every = max(1, self.steps // 100)
        done = 0
        lo, hi = self.window
        for s in range(self.steps):
            ne = self.non_expert_list[s]
            self.timeline = self.events if lo <= s < hi else None
            for layer in range(self.layers):
                t_start = env.now
                if ne > 0.0:
                    yield env.timeout(ne)
                t_gate = env.now
                view, rel_end = self._gate(s, layer, t_start, t_gate)
                yield env.timeout(rel_end)
                self.policy.on_layer_end(view, env.now)
            done += 1
            if progress is not None and (done % report_every == 0 or s == self.steps - 1):
                progress(done)
                done = 0

    # -- one gate ----------------------------------------------------------------------------------
    def _gate(self, s: int, layer: int, t_start: float, t_gate: float) -> tuple[GateView, float]:
        g = self.gates
        n = int(g.active[s, layer])
        experts = g.experts[s, layer, :n]
        tokens = g.tokens[s, layer, :n]
        cache = self.cache
        late = 0  # cached experts still in flight at the gate (prefetches not yet arrived)
        if cache.count:
            ready = cache.ready_at[layer, experts]
            cached = np.isfinite(ready)
            cached.flags.writeable = False
            if cache.max_ready > t_gate:
                late = int(np.count_nonzero(ready[cached] > t_gate))
        else:
            cached = self.not_cached[:n]
        view = GateView(
            step=s,
            layer=layer,
            now=t_gate,
            experts=experts,
            tokens=tokens,
            cached=cached,
            ready_at=cache.public_ready_at,
            cache_bytes=cache.count * self.expert_bytes,
            link_free_at=self.public_free_at,
        )
        decision = self.policy.decide(view)
        eff, by_path, hits = self._effective_paths(decision, cached, n, view)
        if self.gpu_table is not None:
            c_all = self.gpu_table[s, layer, :n]
            ref = float(self.ref_table[s, layer])
        else:
            c_all = np.asarray(self.cost.gpu_compute_time(s, layer, experts, tokens), dtype=float)
            ref = float(c_all.sum())
        if decision.evict:
            cache.evict(decision.evict, s, layer)
        groups = self._groups(eff, by_path, n)

        # Per link at the gate: near-compute activations out first, then the demand fetches,
        # then the prefetches (all FIFO behind whatever the link still carries).
        window = 0.0
        bytes_pcie = bytes_md = 0.0
        host_out = near_out = None
        if by_path[_HOST]:
            host_out = self._activation_out(
                "pcie", s, layer, experts, tokens, groups[_HOST], t_gate
            )
            window = host_out[1]
        if by_path[_MD_NEAR]:
            near_out = self._activation_out(
                "md_link", s, layer, experts, tokens, groups[_MD_NEAR], t_gate
            )
            window = max(window, near_out[1])
        fetched: list[tuple[np.ndarray, Placed, str]] = []
        if by_path[_PCIE]:
            idx = groups[_PCIE]
            placed = self._fetch("pcie", s, layer, experts[idx], t_gate)
            fetched.append((idx, placed, "pcie"))
            window = max(window, placed.last)
            bytes_pcie = idx.size * self.expert_bytes
        if by_path[_MD_FETCH]:
            idx = groups[_MD_FETCH]
            placed = self._fetch("md_link", s, layer, experts[idx], t_gate)
            fetched.append((idx, placed, "md_link"))
            window = max(window, placed.last)
            bytes_md = idx.size * self.expert_bytes
        if decision.admit is not None and fetched:
            cache.admit(decision.admit, experts, n, fetched, layer, t_gate)
        prefetched = (0, 0)
        if decision.prefetch:
            prefetched = self._prefetch(decision, s, layer, t_gate)
            bytes_pcie += prefetched[0] * self.expert_bytes
            bytes_md += prefetched[1] * self.expert_bytes
        cache.check_capacity(s, layer)

        rel_end = self._gpu_part(s, layer, t_gate, experts, c_all, groups[_HIT], fetched)
        if near_out is not None:
            end, nbytes = self._remote_part(
                "md_link", _MD_NEAR, s, layer, t_gate, experts, tokens, near_out
            )
            bytes_md += nbytes
            rel_end = max(rel_end, end)
            window = max(window, end)
        if host_out is not None:
            end, nbytes = self._remote_part(
                "pcie", _HOST, s, layer, t_gate, experts, tokens, host_out
            )
            bytes_pcie += nbytes
            rel_end = max(rel_end, end)
            window = max(window, end)
        # stall's reference, as the engine now defines it (sim.engine.results.stall_split): the
        # compute of the GPU's experts beside the remote units', capped at the layer's end
        if near_out is not None or host_out is not None:
            on_gpu = (eff == _HIT) | (eff == _PCIE) | (eff == _MD_FETCH)
            ref = float(c_all[on_gpu].sum())
            for out, path in ((near_out, _MD_NEAR), (host_out, _HOST)):
                if out is not None:
                    ref = max(
                        ref, float(self._remote_compute(path, s, layer, experts, tokens, out))
                    )
        ref = min(ref, rel_end)

        self.rows.append(
            (
                s,
                self.positions[s],
                layer,
                self.layer_ids[layer],
                n,
                hits - late,
                late,
                by_path[_PCIE],
                by_path[_MD_FETCH],
                by_path[_MD_NEAR],
                by_path[_HOST],
                prefetched[0],
                prefetched[1],
                bytes_pcie,
                bytes_md,
                t_start,
                t_gate,
                t_gate + rel_end,
                window,
                rel_end - ref,
                self.non_expert_list[s] + rel_end,
                cache.count * self.expert_bytes,
                ref,
            )
        )
        if self.timeline is not None and t_gate > t_start:
            self._event("gpu", "non_expert", t_start, t_gate, s, layer, -1)
        return view, rel_end

    def _where(self, view: GateView) -> str:
        return f"policy {self.policy.name!r} at step {view.step} layer {view.layer}"

    def _groups(self, eff: np.ndarray, by_path: list[int], n: int) -> list[np.ndarray | None]:
        """Indices (into the gate's experts, in gate order) of each path's experts."""
        groups: list[np.ndarray | None] = [None] * _NUM_PATHS
        used = [p for p in range(_NUM_PATHS) if by_path[p]]
        if len(used) == 1:
            groups[used[0]] = self.arange[:n]
            return groups
        order = np.argsort(eff, kind="stable")
        pos = 0
        for p in used:
            groups[p] = order[pos : pos + by_path[p]]
            pos += by_path[p]
        return groups

    def _effective_paths(
        self, decision: GateDecision, cached: np.ndarray, n: int, view: GateView
    ) -> tuple[np.ndarray, list[int], int]:
        """The decision's paths with cached experts forced to HIT, the count per path, hits."""
        eff = np.asarray(decision.paths)
        if eff.shape != (n,) or eff.dtype.kind not in "iu":
            raise PolicyError(f"{self._where(view)}: paths must be {n} Path values, got {eff!r}")
        hits = 0
        if self.cache.count:
            hits = int(np.count_nonzero(cached))
            if hits:
                eff = np.where(cached, _HIT, eff)
        try:
            by_path = np.bincount(eff, minlength=_NUM_PATHS).tolist()
        except ValueError:  # negative entries
            by_path = [0] * (_NUM_PATHS + 1)
        if len(by_path) > _NUM_PATHS:
            raise PolicyError(f"{self._where(view)}: paths must be Path values, got {eff!r}")
        for path, reason in self.blocked:
            if by_path[path]:
                raise PolicyError(
                    f"{self._where(view)} chose {path.name} for {by_path[path]} expert(s), "
                    f"impossible: {reason}"
                )
        if by_path[_HIT] != hits:
            raise PolicyError(
                f"{self._where(view)} chose HIT for {by_path[_HIT] - hits} expert(s) that are "
                "not cached"
            )
        return eff, by_path, hits

    # -- links -------------------------------------------------------------------------------------
    def _fetch(
        self, link_name: str, s: int, layer: int, experts: np.ndarray, t_gate: float
    ) -> Placed:
        link = self.links[link_name]
        nbytes = experts.size * self.expert_bytes
        if self.transfer_d is not None:
            return link.place(t_gate, self.transfer_d[link_name], experts.size, nbytes)
        durations = np.asarray(self.cost.transfer_time(link_name, s, layer, experts), dtype=float)
        return link.place(t_gate, durations, experts.size, nbytes)

    def _activation_out(
        self,
        link_name: str,
        s: int,
        layer: int,
        experts: np.ndarray,
        tokens: np.ndarray,
        idx: np.ndarray,
        t_gate: float,
    ) -> tuple[float, float, float, np.ndarray]:
        """Send the tokens of the ``idx`` experts out; returns (start, end, half time, idx)."""
        half = 0.5 * float(
            self.cost.activation_time(link_name, s, layer, experts[idx], tokens[idx])
        )
        nbytes = float(tokens[idx].sum()) * self.act_bytes
        start, end, slot = self.links[link_name].place_one(t_gate, half, nbytes)
        if self.timeline is not None:
            self._event(
                f"{link_name}[{slot}]", "activation", t_gate + start, t_gate + end, s, layer
            )
        return start, end, half, idx

    def _unit_compute(
        self, path: int, s: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        if path == Path.MD_NEAR:
            c = self.cost.near_compute_time(s, layer, experts, tokens)
        else:
            c = self.cost.host_compute_time(s, layer, experts, tokens)
        return np.asarray(c, dtype=float)

    def _remote_compute(
        self, path: int, s: int, layer: int, experts: np.ndarray, tokens: np.ndarray, out: tuple
    ) -> float:
        """A remote unit's serial compute of the gate's experts on ``path`` (stall reference)."""
        idx = out[-1]
        return float(self._unit_compute(path, s, layer, experts[idx], tokens[idx]).sum())

    def _remote_part(
        self,
        link_name: str,
        path: Path,
        s: int,
        layer: int,
        t_gate: float,
        experts: np.ndarray,
        tokens: np.ndarray,
        out: tuple[float, float, float, np.ndarray],
    ) -> tuple[float, float]:
        """Serial compute next to the weights, then the results come back on the same link.

        Returns (relative end, bytes moved both ways)."""
        _start, arrived, half, idx = out
        unit = "md" if path == Path.MD_NEAR else "host"
        c = self._unit_compute(path, s, layer, experts[idx], tokens[idx])
        done = arrived + float(c.sum())
        nbytes = float(tokens[idx].sum()) * self.act_bytes
        b_start, b_end, slot = self.links[link_name].place_one(t_gate + done, half, nbytes)
        if self.timeline is not None:
            ends = arrived + np.cumsum(c)
            for e, c_start, c_end in zip(experts[idx].tolist(), ends - c, ends, strict=True):
                self._event(unit, "compute", t_gate + c_start, t_gate + c_end, s, layer, e)
            t_back = t_gate + done
            self._event(
                f"{link_name}[{slot}]", "activation", t_back + b_start, t_back + b_end, s, layer
            )
        return done + b_end, 2.0 * nbytes

    def _prefetch(
        self, decision: GateDecision, s: int, layer: int, t_gate: float
    ) -> tuple[int, int]:
        """Queue prefetches behind the gate's demand transfers; they enter the cache at once
        (bytes reserved at issue) and are ready when they arrive. Already cached (or listed
        before): ignored. Returns how many were issued on (pcie, md_link)."""
        by_link = self.cache.reserve_prefetches(decision.prefetch, s, layer)
        for link_name, arr in by_link.items():
            if not len(arr):
                continue
            placed = self._fetch_prefetch(link_name, s, layer, arr, t_gate)
            self.cache.arrived(arr, placed, t_gate)
            if self.timeline is not None:
                for (lyr, e), a, b, k in zip(
                    arr.tolist(), placed.start, placed.end, placed.slot, strict=True
                ):
                    self._event(f"{link_name}[{k}]", "prefetch", t_gate + a, t_gate + b, s, lyr, e)
        return len(by_link["pcie"]), len(by_link["md_link"])

    def _fetch_prefetch(
        self, link_name: str, s: int, layer: int, keys: np.ndarray, t_gate: float
    ) -> Placed:
        """`_fetch` for prefetches (``keys``: rows of (layer, expert)): with a per-expert cost
        model (a cost table), each transfer is costed at the gate it is for, layer ``lyr`` later
        in this step or, for a layer not after this one, in the next step."""
        if self.transfer_d is not None:
            return self._fetch(link_name, s, layer, keys[:, 1], t_gate)
        target = np.where(keys[:, 0] > layer, s, min(s + 1, self.steps - 1))
        durations = np.empty(len(keys))
        for ts, lyr in sorted(set(zip(target.tolist(), keys[:, 0].tolist(), strict=True))):
            mask = (target == ts) & (keys[:, 0] == lyr)
            durations[mask] = self.cost.transfer_time(link_name, ts, lyr, keys[mask, 1])
        nbytes = len(keys) * self.expert_bytes
        return self.links[link_name].place(t_gate, durations, len(keys), nbytes)

    # -- GPU ---------------------------------------------------------------------------------------
    def _gpu_part(
        self,
        s: int,
        layer: int,
        t_gate: float,
        experts: np.ndarray,
        c_all: np.ndarray,
        hit_idx: np.ndarray | None,
        fetched: list[tuple[np.ndarray, Placed, str]],
    ) -> float:
        """Serial expert compute on the GPU, hits first then in arrival order; returns its end
        relative to the gate."""
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        busy = 0.0  # compute of the hits already in HBM at the gate: they run first
        if hit_idx is not None:
            if self.timeline is None and self.cache.max_ready <= t_gate:  # every one is in
                busy = float(c_all[hit_idx].sum())
            else:
                ready_hit = self.cache.ready_at[layer, experts[hit_idx]] - t_gate
                if self.timeline is None and float(ready_hit.max()) <= 0.0:
                    busy = float(c_all[hit_idx].sum())
                else:
                    parts.append((hit_idx, np.maximum(ready_hit, 0.0)))
        parts.extend((idx, placed.end) for idx, placed, _link in fetched)
        if self.timeline is not None:
            self._fetch_events(s, layer, t_gate, experts, fetched)
        if not parts:
            return busy
        if len(parts) == 1 and parts[0][0] is not hit_idx:
            idx, ready = parts[0]  # one FIFO batch: already in arrival order
        else:
            idx = np.concatenate([part[0] for part in parts])
            ready = np.concatenate([part[1] for part in parts])
            order = ready.argsort(kind="stable")
            idx, ready = idx[order], ready[order]
        c = c_all[idx]
        cum = c.cumsum()
        total = float(cum[-1])
        if self.per_expert_start:
            # f_i = max(f_{i-1}, r_i) + c_i  =>  f_last = C_last + max(0, max_i(r_i - C_{i-1})),
            # and with `busy` s of work ahead of them: C_last + max(busy, max_i(...))
            late = float((ready - (cum - c)).max())
            end = total + (late if late > busy else busy)
        else:
            start0 = max(0.0, float(ready.max()))
            end = start0 + busy + total
        if self.timeline is not None:
            ends = serial_ends(ready, c) if self.per_expert_start else start0 + cum
            for e, a, b in zip(experts[idx].tolist(), ends - c, ends, strict=True):
                self._event("gpu", "compute", t_gate + a, t_gate + b, s, layer, e)
        return end

    def _fetch_events(
        self,
        s: int,
        layer: int,
        t_gate: float,
        experts: np.ndarray,
        fetched: list[tuple[np.ndarray, Placed, str]],
    ) -> None:
        for idx, placed, link_name in fetched:
            for e, a, b, k in zip(
                experts[idx].tolist(), placed.start, placed.end, placed.slot, strict=True
            ):
                self._event(f"{link_name}[{k}]", "fetch", t_gate + a, t_gate + b, s, layer, e)

    def _event(
        self, resource: str, kind: str, start: float, end: float, s: int, layer: int, e: int = -1
    ) -> None:
        assert self.timeline is not None
        self.timeline.append(TimelineEvent(resource, kind, float(start), float(end), s, layer, e))

    # -- results -----------------------------------------------------------------------------------
    def result(self, label: str) -> RunResult:
        table = np.array(self.rows, dtype=np.float64).reshape(-1, len(PER_LAYER_COLUMNS) + 1)
        per_layer = {}
        for name, i in _COL.items():
            col = table[:, i]
            per_layer[name] = col.astype(np.int64) if name in INT_COLUMNS else col.copy()
        layer_time = per_layer["layer_time"].reshape(self.steps, self.layers)
        ref = table[:, -1].reshape(self.steps, self.layers)
        per_step = {
            "step": np.arange(self.steps, dtype=np.int64),
            "position": np.asarray(self.positions, dtype=np.int64),
            "latency": layer_time.sum(axis=1),
            "compute_only": (ref + self.non_expert[:, None]).sum(axis=1),
            "non_expert": self.non_expert.copy(),
        }
        totals = compute_totals(per_layer, per_step, self.trace.num_seqs)
        total_time = totals["total_time"]
        links = {}
        for name, link in self.links.items():
            busy = link.busy / link.channels
            # a prefetch may still be in flight when the last layer ends
            horizon = max(total_time, float(link.free_at.max()))
            links[name] = {
                "busy": busy,
                "bytes": link.bytes,
                "utilisation": busy / horizon if horizon > 0 else 0.0,
                "transfers": float(link.transfers),
            }
        params = self.policy.params
        return RunResult(
            policy=self.policy.name,
            label=label,
            per_layer=per_layer,
            per_step=per_step,
            links=links,
            totals=totals,
            params=dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {},
            timeline=tuple(self.events) if self.events is not None else None,
        )


def serial_ends(ready: np.ndarray, compute: np.ndarray) -> np.ndarray:
    """End times of jobs run one after another from time 0, in the given order, each starting
    when it is ready and the previous one is done: ``f_i = max(f_{i-1}, r_i) + c_i``.

    Closed form: ``f_i = C_i + max(0, max_{j<=i}(r_j - C_{j-1}))`` with ``C`` the cumulative
    compute."""
    cum = np.cumsum(compute)
    lateness = np.maximum.accumulate(np.maximum(ready - (cum - compute), 0.0))
    return cum + lateness
