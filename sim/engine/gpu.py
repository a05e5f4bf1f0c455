"""`GpuProcess`: one GPU of a run: its policy, its HBM cache, its routes, its records.

The GPU's simpy process (`GpuProcess.run`) asks its iteration source for work and runs each
iteration layer by layer: one timeout for the layer's non-expert time (the gate is at its end)
and one for the rest of the layer. At the gate the policy decides; everything inside the layer
is computed in closed form with numpy (FIFO route slots with ``free_at`` bookkeeping, serial
compute streams), never with a simpy `Resource` per expert. The full model: docs/engine.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from simpy import Event

from sim.contract import (
    HOST_ROUTE,
    MD_ROUTE,
    CachePlan,
    GateDecision,
    GatePolicy,
    GateView,
    Path,
    PolicyContext,
    PolicyError,
    allowed_paths,
    serial_ends,
)
from sim.engine.cache import HbmCache
from sim.engine.clock import Clock
from sim.engine.cost import RooflineCost, is_roofline
from sim.engine.links import FifoLink, Placed
from sim.engine.network import FlowNetwork, LayerBarrier, Route, SharedUnit, Transfer
from sim.engine.results import GateBlock, GateRecord, TimelineEvent, stall_split
from sim.engine.source import GateOrder, Idle, Iteration, IterationSource
from sim.engine.sums import row_sums
from sim.errors import UserError
from sim.precision import ROUTE_TIER, copy_sizes, tier_copies

# plain ints for the hot loop (enum attribute lookups are slow)
_HIT, _PCIE, _MD_FETCH, _MD_NEAR, _HOST = (int(p) for p in Path)
_NUM_PATHS = len(Path)
PEER_ROUTE = "gpu"  # the route from other GPUs (expert parallelism's activations)
_ROUTE_OF_PATH = {_PCIE: HOST_ROUTE, _HOST: HOST_ROUTE, _MD_FETCH: MD_ROUTE, _MD_NEAR: MD_ROUTE}

IterationEnd = Callable[[int, Iteration, float, float], None]
BLOCK_GATES = 1024  # gates a stateless plan times at once (see GpuProcess.run)


class GpuProcess:
    """One GPU: policy, HBM cache, routes (by route name, `sim.contract.ROUTES`), records."""

    def __init__(
        self,
        index: int,
        ctx: PolicyContext,
        policy: GatePolicy,
        routes: Mapping[str, FifoLink | Route],
        *,
        timeline: bool | tuple[int, int],
        alone: bool = True,
        network: FlowNetwork | None = None,
        near_unit: SharedUnit | None = None,
        barrier: LayerBarrier | None = None,
    ) -> None:
        hw, model = ctx.hardware, ctx.model
        self.index = index
        self.ctx = ctx
        self.policy = policy
        self.cost = ctx.cost
        self.layers, self.num_experts = ctx.num_layers, model.num_experts
        self.per_expert_start = hw.gpu.expert_start == "per-expert"
        self.expert_bytes = float(model.expert_bytes)
        self.act_bytes = float(model.activation_bytes_per_token)
        self.routes = dict(routes)
        self.alone = alone
        # timeline resources: "pcie[0]", or "gpu1/pcie[0]" when there are several GPUs
        self.prefix = f"gpu{index}/" if hw.topology.num_gpus > 1 else ""
        self.network = network
        self.near_unit = near_unit  # the MD pool's compute shared with other GPUs (queued)
        self.barrier = barrier  # expert parallelism: every layer ends on all GPUs at once
        self.public_free_at = {
            name: link.public_free_at for name, link in self.routes.items() if name != PEER_ROUTE
        }
        self.estimated = [route for route in self.routes.values() if isinstance(route, Route)]
        not_allowed = allowed_paths(hw)
        self.blocked = [(path, why) for path, why in not_allowed.items() if why]
        # copies: bytes per precision, what each route's tier holds, the default per route
        self.sizes = copy_sizes(model)
        self.precision_names = model.precision_names
        try:
            held = tier_copies(hw, model)
        except ValueError as err:
            raise UserError(str(err)) from None
        self.held = {route: held.get(tier, ()) for route, tier in ROUTE_TIER.items()}
        self.default = {
            route: min(idx, key=lambda i: (-self.sizes[i], i)) if idx else 0
            for route, idx in self.held.items()
        }
        self.route_bytes = {route: float(self.sizes[p]) for route, p in self.default.items()}
        self.native = not any(self.default.values())  # every default copy native
        self.cache = HbmCache(
            self.layers,
            self.num_experts,
            not_allowed,
            self.sizes,
            float(hw.hbm.capacity),
            f"policy {policy.name!r}",
        )
        initial = getattr(policy, "initial_cache", None)
        resident = initial() if initial is not None else None
        if resident is not None:
            self.cache.preload(resident)
        self.layer_ids = tuple(int(lid) for lid in ctx.layer_ids)
        self.layer_index = np.arange(self.layers)
        self.layer_id_array = np.asarray(self.layer_ids, dtype=np.int64)
        self.arange = np.arange(self.num_experts)
        self.arange.flags.writeable = False
        self.not_cached = np.zeros(self.num_experts, dtype=bool)
        self.not_cached.flags.writeable = False
        self.no_tokens = np.zeros(self.num_experts, dtype=np.int64)  # a resize uses no expert
        self.no_tokens.flags.writeable = False
        # Fast paths for the default cost model: one transfer time per route, a compute table.
        self.transfer_d = None
        if is_roofline(self.cost, "transfer_time"):
            self.transfer_d = {
                name: self.cost.uniform_transfer_time(name)
                for name in self.routes
                if name != PEER_ROUTE  # activations only: no expert weights cross it
            }
        elif not self.native:
            raise UserError(
                "hardware.copies: a tier whose highest copy is not the native precision needs "
                "the roofline cost model (cost tables give native-precision transfer times)"
            )
        for name, route in self.routes.items():
            if isinstance(route, Route) and name in self.route_bytes:
                route.one_transfer = route.latency + self.route_bytes[name] / route.nominal_rate
        self.gpu_table = is_roofline(self.cost, "gpu_compute_time")
        self._tables: dict[int, tuple[GateOrder, np.ndarray, np.ndarray]] = {}
        self.host_blocked = bool(not_allowed[Path.PCIE])
        self.md_blocked = bool(not_allowed[Path.MD_FETCH])
        # the recorded events; `timeline` is that list while a recorded iteration runs
        self.events: list[TimelineEvent] | None = [] if timeline is not False else None
        self.window = (0, math.inf) if timeline is True else timeline or (0, 0)
        self.timeline: list[TimelineEvent] | None = None
        # a plan in closed form (see _planned): FIFO routes, roofline, no timeline; a stateless
        # policy's paths (plan_gates) or a time-independent cache's decisions (plan_cache)
        closed = (
            self.transfer_d is not None
            and timeline is not True
            and alone
            and self.native
            and all(isinstance(r, FifoLink) for r in routes.values())
        )
        self.plan = getattr(policy, "plan_gates", None) if closed else None
        self.cache_plan = (
            getattr(policy, "plan_cache", None) if closed and self.plan is None else None
        )
        self.records: list[GateRecord | GateBlock] = []
        self.iterations = 0  # run so far (GateView.step of the next one)
        self.horizon = 0.0  # end of the last iteration

    def compute_tables(self, order: GateOrder) -> tuple[np.ndarray, np.ndarray]:
        """`roofline_tables` of an iteration's gates; for a row of a larger order (a lockstep
        source's whole trace) computed once for the whole and sliced (the same values)."""
        if order.parent is None:
            return roofline_tables(self.cost, order)
        whole, i = order.parent
        table, ref = _whole_tables(self, whole)
        return table[i], ref[i]

    # -- the simpy process -----------------------------------------------------------------------
    def run(self, env: Clock, source: IterationSource, on_end: IterationEnd) -> Iterator:
        """Ask ``source`` for iterations until it says None; run each, layer by layer.

        A GPU alone on its links has nothing to wait for inside an iteration: it runs the
        iteration's layers in closed form (the same float operations simpy's clock would do:
        ``now + non_expert``, then ``t_gate + rel_end``) and yields once, at its end. With a
        stateless plan and a source whose answers do not depend on time (lockstep), it takes
        several iterations at once (about `BLOCK_GATES` gates) and times them together."""
        planned = self.plan is not None or self.cache_plan is not None
        most = BLOCK_GATES // max(self.layers, 1) if planned and self.alone else 1
        done = False
        while not done:
            # more than one iteration only while the source says its answers do not depend on
            # time (asked before each: a serving source is so only at times)
            its: list[Iteration] = []
            while not its or (len(its) < most and getattr(source, "time_independent", False)):
                it = source.next_iteration(self.index, env.now)
                if it is None:
                    done = True
                    break
                if isinstance(it, Idle):
                    if its:
                        raise ValueError(
                            "iteration source: a time-independent source answered Idle"
                        )
                    if not it.until > env.now:
                        raise ValueError(
                            f"iteration source: Idle(until={it.until!r}) at time {env.now!r} "
                            "must wait for a later time"
                        )
                    yield env.at(it.until)
                    continue
                its.append(it)
            if not its:
                continue
            start = env.now
            for i, it in enumerate(its):
                if it.cache_capacity is not None:
                    if len(its) > 1:
                        raise ValueError(
                            "iteration source: a time-independent source changed the cache capacity"
                        )
                    self._resize_cache(it.cache_capacity, self.iterations + i)
            if not self.alone:
                (it,) = its
                step = self.iterations
                lo, hi = self.window
                self.timeline = self.events if lo <= step < hi else None
                yield from self._layers_events(env, _IterationGates(self, it, step), it.non_expert)
                self.timeline = None
                self.iterations += 1
                self.horizon = env.now
                on_end(self.index, it, start, env.now)
                continue
            ends = self._planned(its, self.iterations, start)
            if ends is None:
                ends = []
                now = start
                lo, hi = self.window
                for it in its:
                    step = self.iterations + len(ends)
                    end = self._planned([it], step, now)
                    if end is None:
                        self.timeline = self.events if lo <= step < hi else None
                        end = [self._layers(_IterationGates(self, it, step), it.non_expert, now)]
                        self.timeline = None
                    ends.append(end[0])
                    now = end[0]
            yield env.at(ends[-1])
            for it, end in zip(its, ends, strict=True):
                self.iterations += 1
                self.horizon = end
                on_end(self.index, it, start, end)
                start = end

    def _resize_cache(self, capacity: float, step: int) -> None:
        """The expert cache may hold ``capacity`` bytes from iteration ``step`` on: the policy
        names what to evict (`Policy.on_cache_resize`), the rest must fit."""
        cache = self.cache
        if capacity == cache.capacity:
            return
        cache.capacity = float(capacity)
        resize = getattr(self.policy, "on_cache_resize", None)
        evict = [] if resize is None else resize(float(capacity), cache.public_ready_at, step)
        if evict:
            cache.evict(evict, step, -1, self.no_tokens)
        cache.check_capacity(step, -1)

    def _layers_events(
        self, env: Clock, g: _IterationGates, non_expert: Sequence[float]
    ) -> Iterator:
        """Run the iteration gate by gate in simulated time: each gate happens at its time
        (shared links see every GPU's transfers in time order) and waits for what the flow
        network delivers."""
        for layer in range(self.layers):
            t_start = env.now
            ne = non_expert[layer]
            if ne > 0.0:
                yield env.at(t_start + ne)
            t_gate = env.now
            view = yield from self._gate_events(env, g, layer, t_start, t_gate, ne)
            if self.barrier is not None:  # expert parallelism: the layer ends for all at once
                yield from self._combine(env, g, layer, t_gate, ne)
            self.policy.on_layer_end(view, env.now)

    def _combine(
        self, env: Clock, g: _IterationGates, layer: int, t_gate: float, ne: float
    ) -> Iterator:
        """Expert parallelism after a gate: wait until every GPU has computed its experts,
        receive the results of this GPU's tokens computed on other GPUs (over the GPU route),
        wait until every GPU has them. The gate's record ends then."""
        assert self.barrier is not None
        yield self.barrier.wait()
        tokens = 0.0 if g.exchange is None else float(g.exchange[layer][1])
        if tokens > 0:
            yield from self._peer_transfer(env, tokens, g.step, layer)
        yield self.barrier.wait()
        last = self.records[-1]
        assert isinstance(last, GateRecord)
        rel = env.now - t_gate
        ref, stall = stall_split(rel, last.compute_ref)
        self.records[-1] = last._replace(
            t_end=env.now, stall=stall, compute_ref=ref, layer_time=ne + rel
        )

    def _peer_transfer(self, env: Clock, tokens: float, s: int, layer: int) -> Iterator:
        """Activations of ``tokens`` tokens into this GPU over the GPU route, issued now;
        returns when they arrive (relative end) and adds their bytes to the route's count."""
        nbytes = tokens * self.act_bytes
        link = self.routes[PEER_ROUTE]
        if isinstance(link, FifoLink):
            now = env.now
            d = link.config.transfer_time(nbytes)
            _start, end, slot = link.place_one(now, d, nbytes)
            if self.timeline is not None:
                self._event(
                    f"{PEER_ROUTE}[{slot}]", "activation", now + _start, now + end, s, layer
                )
            if now + end > env.now:
                yield env.at(now + end)
            return end
        transfer = self._submit(env, PEER_ROUTE, nbytes, env.now, "activation", s, layer)
        assert self.network is not None
        self.network.commit()
        if transfer.done != transfer.done:
            yield _countdown(env, [transfer])
        return transfer.done - transfer.issued

    def _layers(self, g: _IterationGates, non_expert: Sequence[float], now: float) -> float:
        """Run the iteration gate by gate from ``now``; returns its end."""
        for layer in range(self.layers):
            t_start = now
            ne = non_expert[layer]
            if ne > 0.0:
                now = now + ne
            t_gate = now
            view, rel_end = self._gate(g, layer, t_start, t_gate, ne)
            now = t_gate + rel_end
            self.policy.on_layer_end(view, now)
        return now

    # -- plans in closed form ---------------------------------------------------------------------
    def _planned(self, its: list[Iteration], step: int, start: float) -> list[float] | None:
        """Iterations ``its`` at once, for a policy that gives its decisions as a plan: a
        stateless one's paths (`Policy.plan_gates`: every active expert fetched over the host
        or MD route) or a cache's decisions (`Policy.plan_cache`: hits, misses fetched over
        those routes, admissions and evictions, none depending on time), on a GPU alone on idle
        FIFO routes, under the roofline cost model and without a timeline.

        Every gate then starts with its routes idle and every cached expert in HBM (each
        transfer a layer issues ends before the layer does, and rounding is monotonic), so each
        gate is the little schedule `_gate` would compute, evaluated here for all gates with
        numpy and the very same float operations in the same order: the results are
        identical, bit for bit (tests/test_engine_oracle.py). ``step``: the first one's
        iteration index. Returns each iteration's end, or None (not applicable: run them gate
        by gate)."""
        if (self.plan is None and self.cache_plan is None) or not self.gpu_table:
            return None
        lo, hi = self.window
        if lo < step + len(its) and step < hi:
            return None  # a recorded iteration: gate by gate
        host, md = self.routes[HOST_ROUTE], self.routes[MD_ROUTE]
        if host.latest > start or md.latest > start:
            return None
        cache = self.cache
        if self.cache_plan is not None and (
            cache.max_ready > start or cache.pending or cache.reduced
        ):
            return None  # a cached expert still in flight, or of another precision
        g = _Block(self, its)
        cached: CachePlan | None = None
        if self.plan is not None:
            paths = self.plan(g.experts, g.tokens, g.active)
            if paths is None:
                return None
        else:
            resident = np.isfinite(cache.ready_at)
            cached = self.cache_plan(step, g.experts, g.tokens, g.active, resident)
            paths = cached.paths
        layers, rows = self.layers, len(g.active)
        active = self.arange[None, :] < g.active[:, None]
        p = np.asarray(paths)
        on_host = active & (p == _PCIE)
        on_md = active & (p == _MD_FETCH)
        n_host = on_host.sum(axis=1)
        n_md = on_md.sum(axis=1)
        on_hit = n_hit = None
        if cached is not None:
            on_hit = active & (p == _HIT)
            n_hit = on_hit.sum(axis=1)
        fetched = n_host + n_md
        blocked = (self.host_blocked and n_host.any()) or (self.md_blocked and n_md.any())
        if cached is None and (not np.array_equal(fetched, g.active) or blocked):
            return None  # other paths, or the gate-by-gate run raises the policy's error
        if cached is not None and (not np.array_equal(fetched + n_hit, g.active) or blocked):
            raise PolicyError(
                f"policy {self.policy.name!r}: plan_cache gave a path other than HIT, PCIE or "
                "MD_FETCH, or one the scenario does not allow"
            )
        d_host, d_md = self.transfer_d[HOST_ROUTE], self.transfer_d[MD_ROUTE]
        c_host, c_md = host.channels, md.channels
        # FIFO arrivals on idle slots, as FifoLink._place_idle: start (j // c) d, end start + d
        rank_host = np.cumsum(on_host, axis=1) - 1
        rank_md = np.cumsum(on_md, axis=1) - 1
        end_host = (rank_host // c_host).astype(np.float64) * d_host + d_host
        end_md = (rank_md // c_md).astype(np.float64) * d_md + d_md
        ready = np.where(on_host, end_host, np.where(on_md, end_md, np.inf))
        if on_hit is not None:  # the hits (in HBM at their gate) first, in gate order
            ready[on_hit] = -np.inf
        last_host = np.where(on_host, end_host, 0.0).max(axis=1)
        last_md = np.where(on_md, end_md, 0.0).max(axis=1)
        # serial GPU compute: the hits, then the fetches in arrival order; ties: host route
        # first, then gate order (the engine's stable sort of [host batch, MD batch])
        row_index = np.arange(rows)[:, None]
        order = np.lexsort((np.broadcast_to(self.arange, ready.shape), on_md, ready), axis=1)
        r = ready[row_index, order]
        c = g.gpu_table[row_index, order]
        busy = np.zeros(rows)
        if n_hit is not None and n_hit.any():
            # the hits keep the GPU busy first: their compute summed in gate order, as
            # `_gpu_part` sums it; the fetches follow
            busy = row_sums(c, n_hit)
            c = np.where(r == -np.inf, 0.0, c)
        cum = np.cumsum(c, axis=1)
        real = np.isfinite(r)
        total = cum[:, -1]
        if self.per_expert_start:
            late = np.where(real, r - (cum - c), -np.inf).max(axis=1)
            gpu_end = np.where(late > busy, total + late, total + busy)
        else:
            start0 = np.maximum(0.0, np.where(real, r, -np.inf).max(axis=1))
            gpu_end = (start0 + busy) + total
        rel_end = np.where(g.active > 0, gpu_end, 0.0)
        # the clock: now + non_expert, then t_gate + rel_end, layer after layer (a cumulative
        # sum adds in that same order; adding a 0 s non-expert time changes nothing)
        ne = g.non_expert
        ticks = np.empty(2 * rows + 1)
        ticks[0] = start
        ticks[1::2] = ne
        ticks[2::2] = rel_end
        clock = np.cumsum(ticks)
        t_start, t_gate, t_end = clock[0:-1:2], clock[1::2], clock[2::2]
        n_host_f = n_host.astype(np.float64)
        n_md_f = n_md.astype(np.float64)
        bytes_host = n_host_f * self.route_bytes[HOST_ROUTE]
        bytes_md = n_md_f * self.route_bytes[MD_ROUTE]
        _book_idle(host, t_gate, d_host, n_host, bytes_host, last_host)
        _book_idle(md, t_gate, d_md, n_md, bytes_md, last_md)
        count = np.full(rows, cache.count)
        if cached is not None:
            count = self._apply_cache_plan(
                cached,
                step,
                g.experts,
                on_host,
                on_md,
                t_gate,
                (end_host, end_md),
                (last_host, last_md),
            )
        ref, stall = stall_split(rel_end, g.ref_table)  # every expert native on the GPU
        zeros = np.zeros(rows, dtype=np.int64)
        self.records.append(
            GateBlock(
                np.full(rows, self.index),
                np.repeat(np.arange(step, step + len(its)), layers),
                np.repeat(np.array([int(it.position) for it in its], dtype=np.int64), layers),
                np.tile(self.layer_index, len(its)),
                np.tile(self.layer_id_array, len(its)),
                g.active,
                zeros if n_hit is None else n_hit,
                zeros,
                n_host,
                n_md,
                zeros,
                zeros,
                zeros,
                zeros,
                zeros,
                bytes_host,
                bytes_md,
                t_start,
                t_gate,
                t_end,
                np.maximum(last_host, last_md),
                stall,
                ne + rel_end,
                count * cache.expert_bytes,
                g.total,
                np.zeros(rows),
                g.dropped_share,
                ref,
                ne,
            )
        )
        if not layers:
            return [start] * len(its)
        return t_end[layers - 1 :: layers].tolist()

    def _apply_cache_plan(
        self,
        plan: CachePlan,
        step: int,
        experts: np.ndarray,
        on_host: np.ndarray,
        on_md: np.ndarray,
        t_gate: np.ndarray,
        ends: tuple[np.ndarray, np.ndarray],
        lasts: tuple[np.ndarray, np.ndarray],
    ) -> np.ndarray:
        """The cache after a planned block, as gate-by-gate `HbmCache.evict`/`admit` would
        leave it: an admitted expert is ready when its fetch arrives (its last admission's),
        an evicted one is gone; the capacity is checked after every gate. ``ends``: each
        fetch's arrival (relative to its gate) on the host and MD routes, ``lasts``: each
        gate's last one per route. Returns the number of cached experts after each gate."""
        cache = self.cache
        e = on_host.shape[1]
        admit = np.asarray(plan.admit, dtype=bool) & (on_host | on_md)  # fetched ones only
        r, col = np.nonzero(admit)
        count = cache.count + np.cumsum(
            np.bincount(r, minlength=len(t_gate)) - np.asarray(plan.evicted, dtype=np.int64)
        )
        held = np.asarray(plan.resident, dtype=bool).ravel()
        if count.size and int(count[-1]) != int(np.count_nonzero(held)):
            raise PolicyError(
                f"policy {self.policy.name!r}: plan_cache's admissions and evictions do not add "
                "up to what it says is cached"
            )
        over = count * cache.expert_bytes > cache.capacity * (1 + 1e-12)
        if over.any():
            i = int(np.argmax(over))
            cache.count = int(count[i])
            cache.check_capacity(step + i // self.layers, i % self.layers)
        # each admitted expert is ready when its fetch arrives; its last admission counts
        keys = (r % self.layers) * e + experts[r, col]
        last = keys.size - 1 - np.unique(keys[::-1], return_index=True)[1]
        last = last[held[keys[last]]]  # admitted, and still cached at the end
        r, col = r[last], col[last]
        end = np.where(on_host[r, col], ends[0][r, col], ends[1][r, col])
        flat = cache.flat_ready_at
        flat[~held] = np.inf  # evicted
        flat[keys[last]] = t_gate[r] + end
        if not np.isfinite(flat[held]).all():
            raise PolicyError(
                f"policy {self.policy.name!r}: plan_cache says an expert is cached that was "
                "neither cached before nor admitted"
            )
        for on, last_end in zip((on_host, on_md), lasts, strict=True):
            kept = (admit & on).any(axis=1)
            if kept.any():
                cache.max_ready = max(cache.max_ready, float((t_gate + last_end)[kept].max()))
        cache.flat_precision_at[:] = np.where(held, 0, -1)
        cache.count = int(np.count_nonzero(held))
        cache.by_precision[0] = cache.count
        return count

    # -- one gate ----------------------------------------------------------------------------------
    def _gate(
        self, g: _IterationGates, layer: int, t_start: float, t_gate: float, ne: float
    ) -> tuple[GateView, float]:
        """One gate in closed form (routes of FIFO slots, placed at the gate)."""
        s = g.step
        o = self._open(g, layer, t_gate)
        view, decision, experts, tokens, n = o.view, o.decision, o.experts, o.tokens, o.n
        by_path, groups, prec, c_all = o.by_path, o.groups, o.prec, o.c_all
        cache = self.cache

        # Per route at the gate: near-compute activations out first, then the demand fetches,
        # then the prefetches (all FIFO behind whatever the route still carries).
        window = 0.0
        bytes_pcie = bytes_md = 0.0
        host_out = near_out = None
        if by_path[_HOST]:
            host_out = self._activation_out(
                HOST_ROUTE, s, layer, experts, tokens, groups[_HOST], t_gate
            )
            window = host_out[1]
        if by_path[_MD_NEAR]:
            near_out = self._activation_out(
                MD_ROUTE, s, layer, experts, tokens, groups[_MD_NEAR], t_gate
            )
            window = max(window, near_out[1])
        fetched: list[tuple[np.ndarray, Placed, str]] = []
        if by_path[_PCIE]:
            idx = groups[_PCIE]
            placed, bytes_pcie = self._fetch(HOST_ROUTE, s, layer, experts[idx], t_gate, prec, idx)
            fetched.append((idx, placed, HOST_ROUTE))
            window = max(window, placed.last)
        if by_path[_MD_FETCH]:
            idx = groups[_MD_FETCH]
            placed, bytes_md = self._fetch(MD_ROUTE, s, layer, experts[idx], t_gate, prec, idx)
            fetched.append((idx, placed, MD_ROUTE))
            window = max(window, placed.last)
        if fetched and (decision.admit is not None or o.upgrade is not None):
            self._keep_fetched(decision.admit, o.upgrade, experts, n, fetched, layer, t_gate, prec)
        if decision.writeback and decision.evict:
            bytes_pcie += self._writeback(decision, s, layer, t_gate, o.evicted)
        prefetched = (0, 0)
        if decision.prefetch:
            n_host, n_md, b_host, b_md = self._prefetch(decision, s, layer, t_gate, g.steps)
            prefetched = (n_host, n_md)
            bytes_pcie += b_host
            bytes_md += b_md
        cache.check_capacity(s, layer)

        rel_end = self._gpu_part(s, layer, t_gate, experts, c_all, groups[_HIT], fetched)
        if near_out is not None:
            end, nbytes = self._remote_part(
                MD_ROUTE, _MD_NEAR, s, layer, t_gate, experts, tokens, near_out, o.remote[_MD_NEAR]
            )
            bytes_md += nbytes
            rel_end = max(rel_end, end)
            window = max(window, end)
        if host_out is not None:
            end, nbytes = self._remote_part(
                HOST_ROUTE, _HOST, s, layer, t_gate, experts, tokens, host_out, o.remote[_HOST]
            )
            bytes_pcie += nbytes
            rel_end = max(rel_end, end)
            window = max(window, end)

        self._record(g, o, layer, prefetched, bytes_pcie, bytes_md)
        self._record_times(g, layer, t_start, t_gate, t_gate + rel_end, window, rel_end, o.ref, ne)
        return view, rel_end

    def _record(
        self,
        g: _IterationGates,
        o: _Opened,
        layer: int,
        prefetched: tuple[int, int],
        bytes_pcie: float,
        bytes_md: float,
    ) -> None:
        """The gate's counts, kept until `_record_times` completes the record."""
        by_path = o.by_path
        reduced, degraded, dropped = g.quality(layer, o.experts, o.prec)
        self._pending_record = (
            self.index,
            g.step,
            g.position,
            layer,
            self.layer_ids[layer],
            o.n,
            o.hits - o.late,
            o.late,
            by_path[_PCIE],
            by_path[_MD_FETCH],
            by_path[_MD_NEAR],
            by_path[_HOST],
            prefetched[0],
            prefetched[1],
            reduced,
            bytes_pcie,
            bytes_md,
        )
        self._pending_quality = (degraded, dropped)

    def _record_times(
        self,
        g: _IterationGates,
        layer: int,
        t_start: float,
        t_gate: float,
        t_end: float,
        window: float,
        rel_end: float,
        ref: float,
        ne: float,
    ) -> None:
        head = self._pending_record
        degraded, dropped = self._pending_quality
        ref, stall = stall_split(rel_end, ref)
        self.records.append(
            GateRecord(
                *head,
                t_start,
                t_gate,
                t_end,
                window,
                stall,
                ne + rel_end,
                self.cache.used_bytes,
                g.gate_mass(layer),
                degraded,
                dropped,
                ref,
                ne,
            )
        )
        if self.timeline is not None and t_gate > t_start:
            self._event("gpu", "non_expert", t_start, t_gate, head[1], head[3], -1)

    def _open(self, g: _IterationGates, layer: int, t_gate: float) -> _Opened:
        """What every gate does first: show the policy its view, check its decision (paths,
        upgrades, precisions), apply its evictions, group the experts by path."""
        s = g.step
        n = int(g.active[layer])
        for route in self.estimated:  # network routes: what policies see of their queues
            route.estimate_free_at(t_gate)
        experts = g.experts[layer, :n]
        tokens = g.tokens[layer, :n]
        cache = self.cache
        late = 0  # cached experts still in flight at the gate (prefetches not yet arrived)
        ready = None
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
            cache_bytes=cache.used_bytes,
            link_free_at=self.public_free_at,
            precision_at=cache.public_precision_at,
            gate_mass=None if g.mass is None else g.mass[layer],
            top_score=None if g.top is None else g.top[layer],
        )
        decision = self.policy.decide(view)
        upgrade = None
        if decision.upgrade is not None:
            upgrade = self._upgrades(decision, cached, n, view)
            if upgrade is not None:
                cached = cached & ~upgrade
                if late:
                    assert ready is not None
                    late = int(np.count_nonzero(ready[cached] > t_gate))
        eff, by_path, hits = self._effective_paths(decision, cached, n, view)
        prec = self._precisions(decision, eff, experts, layer, n, view)
        if g.gpu_table is not None:
            c_all = g.gpu_table[layer, :n]
            ref = float(g.ref_table[layer])
        else:
            c_all = np.asarray(self.cost.gpu_compute_time(s, layer, experts, tokens), dtype=float)
            ref = float(c_all.sum())
        if prec is not None:
            c_all = self._reduced_gpu_compute(c_all, prec, eff, tokens)
        evicted = None  # the precision of each evicted copy, for writebacks
        if decision.evict:
            if decision.writeback and cache.reduced:
                evicted = cache.precisions_of(decision.evict)
            cache.evict(decision.evict, s, layer, g.counts[layer])
        groups = self._groups(eff, by_path, n)
        remote: dict[int, np.ndarray] = {}
        if prec is not None or by_path[_MD_NEAR] or by_path[_HOST]:
            ref, remote = self._compute_ref(s, layer, experts, tokens, eff, c_all, groups, prec)
        return _Opened(
            view,
            decision,
            experts,
            tokens,
            n,
            by_path,
            hits,
            late,
            c_all,
            ref,
            groups,
            prec,
            upgrade,
            evicted,
            remote,
        )

    def _gate_events(
        self, env: Clock, g: _IterationGates, layer: int, t_start: float, t_gate: float, ne: float
    ) -> Iterator:
        """One gate in simulated time: FIFO routes are placed at issue time (the same closed
        form as `_gate`), network routes become transfers whose arrivals the GPU waits for;
        activations come back when the remote unit is done. Ends at the layer's end."""
        s = g.step
        o = self._open(g, layer, t_gate)
        view, decision, experts, tokens, n = o.view, o.decision, o.experts, o.tokens, o.n
        by_path, groups, prec, c_all = o.by_path, o.groups, o.prec, o.c_all
        cache = self.cache
        window = 0.0
        bytes_pcie = bytes_md = 0.0
        outs = []
        for path, route in ((_HOST, HOST_ROUTE), (_MD_NEAR, MD_ROUTE)):
            if by_path[path]:
                idx = groups[path]
                if isinstance(self.routes[route], FifoLink):
                    out = self._activation_out(route, s, layer, experts, tokens, idx, t_gate)
                    window = max(window, out[1])
                else:
                    nbytes = float(tokens[idx].sum()) * self.act_bytes
                    out = (self._submit(env, route, nbytes, t_gate, "activation", s, layer), idx)
                outs.append((route, path, out))
        fetched: list[tuple[np.ndarray, Placed, str]] = []
        in_flight: list[tuple[np.ndarray, list[Transfer], str]] = []
        for path, route in ((_PCIE, HOST_ROUTE), (_MD_FETCH, MD_ROUTE)):
            if not by_path[path]:
                continue
            idx = groups[path]
            if isinstance(self.routes[route], FifoLink):
                placed, moved = self._fetch(route, s, layer, experts[idx], t_gate, prec, idx)
                fetched.append((idx, placed, route))
                window = max(window, placed.last)
            else:
                sizes = self._copy_bytes(route, prec, idx)
                transfers = [
                    self._submit(env, route, nbytes, t_gate, "fetch", s, layer, int(e))
                    for e, nbytes in zip(experts[idx].tolist(), sizes, strict=True)
                ]
                in_flight.append((idx, transfers, route))
                moved = float(sum(sizes))
            if path == _PCIE:
                bytes_pcie = moved
            else:
                bytes_md = moved
        if fetched and (decision.admit is not None or o.upgrade is not None):
            self._keep_fetched(decision.admit, o.upgrade, experts, n, fetched, layer, t_gate, prec)
        if in_flight and (decision.admit is not None or o.upgrade is not None):
            self._keep_in_flight(decision.admit, o.upgrade, experts, n, in_flight, layer, prec)
        if decision.writeback and decision.evict:
            if isinstance(self.routes[HOST_ROUTE], FifoLink):
                bytes_pcie += self._writeback(decision, s, layer, t_gate, o.evicted)
            else:
                self._check_writeback(s, layer)
                precision = o.evicted if o.evicted is not None else np.zeros(len(decision.evict))
                for (lyr, _e), p in zip(decision.evict, precision.tolist(), strict=True):
                    size = float(self.sizes[max(int(p), 0)])
                    self._submit(env, HOST_ROUTE, size, t_gate, "writeback", s, int(lyr), -1)
                    bytes_pcie += size
        prefetched = (0, 0)
        if decision.prefetch:
            n_host, n_md, b_host, b_md = self._prefetch_events(
                env, decision, s, layer, t_gate, g.steps
            )
            prefetched = (n_host, n_md)
            bytes_pcie += b_host
            bytes_md += b_md
        cache.check_capacity(s, layer)
        if self.network is not None:
            self.network.commit()
        chains = [
            env.process(
                self._remote_events(
                    env, route, path, s, layer, t_gate, experts, tokens, out, o.remote[path]
                )
            )
            for route, path, out in outs
        ]
        dispatch = None  # expert parallelism: other GPUs' tokens for this GPU's experts
        if g.exchange is not None and float(g.exchange[layer][0]) > 0:
            dispatch = env.process(self._peer_transfer(env, float(g.exchange[layer][0]), s, layer))
        # the GPU needs this gate's fetches and its hits still in flight on the network
        waits = [t for _, transfers, _ in in_flight for t in transfers]
        hit_idx = groups[_HIT]
        if hit_idx is not None and cache.pending:
            keys = (layer * self.num_experts + experts[hit_idx]).tolist()
            waits.extend(cache.pending[k] for k in keys if k in cache.pending)
        waits = [t for t in waits if t.done != t.done]  # not arrived yet (done is nan)
        if waits:
            yield _countdown(env, waits)
        for idx, transfers, route in in_flight:
            end = np.array([t.done - t_gate for t in transfers])
            start = np.array([t.started - t_gate for t in transfers])
            slot = np.array([t.slot for t in transfers], dtype=np.intp)
            order = end.argsort(kind="stable")  # the GPU takes them in arrival order
            placed = Placed(start[order], end[order], slot[order], float(end.max()))
            fetched.append((idx[order], placed, route))
            window = max(window, placed.last)
        floor = 0.0
        if dispatch is not None:
            floor = yield dispatch
            window = max(window, floor)
        rel_end = self._gpu_part(s, layer, t_gate, experts, c_all, hit_idx, fetched, floor)
        for chain in chains:
            end, nbytes, route = yield chain
            if route == HOST_ROUTE:
                bytes_pcie += nbytes
            else:
                bytes_md += nbytes
            rel_end = max(rel_end, end)
            window = max(window, end)
        t_end = t_gate + rel_end
        if t_end > env.now:
            yield env.at(t_end)
        elif t_end < env.now:  # an arrival rounded past it: the layer ends on the clock
            t_end = env.now
            rel_end = t_end - t_gate
        self._record(g, o, layer, prefetched, bytes_pcie, bytes_md)
        self._record_times(g, layer, t_start, t_gate, t_end, window, rel_end, o.ref, ne)
        return view

    def _copy_bytes(self, route: str, prec: np.ndarray | None, idx: np.ndarray) -> list[float]:
        """Bytes of each fetched copy (``prec[idx]``; None: the route's default copy)."""
        if prec is None:
            return [self.route_bytes[route]] * idx.size
        return [float(self.sizes[p]) for p in prec[idx].tolist()]

    def _keep_in_flight(
        self,
        admit: object,
        upgrade: np.ndarray | None,
        experts: np.ndarray,
        n: int,
        in_flight: list[tuple[np.ndarray, list[Transfer], str]],
        layer: int,
        prec: np.ndarray | None,
    ) -> None:
        """`_keep_fetched` for transfers the network times: admitted (and upgraded) copies are
        cached now, ready when their transfer arrives."""
        cache = self.cache
        if upgrade is not None:
            assert prec is not None
            for idx, transfers, _route in in_flight:
                for i, transfer in zip(idx.tolist(), transfers, strict=True):
                    if upgrade[i]:
                        e = int(experts[i])
                        cache.replace(layer, np.array([e]), np.array([prec[i]]), np.array([0.0]))
                        cache.track(layer, e, transfer)
            if admit is None:
                return
            admit = np.asarray(admit, dtype=bool)
            if admit.shape == (n,):
                admit = admit & ~upgrade
        precision = prec if prec is not None else np.zeros(n, dtype=np.int64)
        if prec is None:
            for idx, _transfers, route in in_flight:
                precision[idx] = self.default[route]
        cache.admit_pending(admit, experts, n, [(i, t) for i, t, _ in in_flight], layer, precision)

    def _submit(
        self,
        env: Clock,
        route: str,
        nbytes: float,
        now: float,
        kind: str,
        s: int,
        layer: int,
        expert: int = -1,
    ) -> Transfer:
        """Hand one transfer to the flow network (issued now on ``route``)."""
        assert self.network is not None
        key = layer * self.num_experts + expert if expert >= 0 else -1
        timeline = self.timeline is not None and kind != "fetch"  # fetches: _fetch_events
        transfer = Transfer(
            self.routes[route],
            nbytes,
            now,
            self._arrived if key >= 0 or timeline else None,
            key,
            (route, kind, s, layer, expert) if timeline else None,
        )
        self.network.submit(transfer)
        return transfer

    def _arrived(self, t: Transfer) -> None:
        """A network transfer arrived: a cached expert it carries is ready; a timeline shows it."""
        if t.key >= 0:
            self.cache.arrival(t.key, t, t.done)
        if t.info is not None and self.events is not None:
            route, kind, s, layer, expert = t.info
            name = f"{self.prefix}{route}[{t.slot}]"
            self.events.append(TimelineEvent(name, kind, t.started, t.done, s, layer, expert))

    def _remote_events(
        self,
        env: Clock,
        route: str,
        path: int,
        s: int,
        layer: int,
        t_gate: float,
        experts: np.ndarray,
        tokens: np.ndarray,
        out: tuple,
        c: np.ndarray,
    ) -> Iterator:
        """Near-data / host compute of a gate: activations out (already issued), the unit's
        serial compute (``c``: each expert's, `_remote_compute`), activations back when it is
        done. Returns (end relative to the gate, bytes both ways, route)."""
        link = self.routes[route]
        if isinstance(link, FifoLink):  # out placed at the gate; back placed when issued
            _start, arrived, half, idx = out
            done = arrived + float(c.sum())
            if path == _MD_NEAR and self.near_unit is not None:
                done = yield from self._queued(env, t_gate, arrived, float(c.sum()))
            nbytes = float(tokens[idx].sum()) * self.act_bytes
            t_back = t_gate + done
            if t_back > env.now:
                yield env.at(t_back)
            b_start, b_end, slot = link.place_one(t_back, half, nbytes)
            if self.timeline is not None:
                self._remote_events_timeline(
                    path, route, s, layer, t_gate, arrived, c, idx, experts
                )
                self._event(
                    f"{route}[{slot}]", "activation", t_back + b_start, t_back + b_end, s, layer
                )
            return done + b_end, 2.0 * nbytes, route
        transfer, idx = out
        if transfer.done != transfer.done:  # not arrived yet (done is nan)
            yield _countdown(env, [transfer])
        arrived = transfer.done - t_gate
        done = arrived + float(c.sum())
        if path == _MD_NEAR and self.near_unit is not None:
            done = yield from self._queued(env, t_gate, arrived, float(c.sum()))
        if self.timeline is not None:
            self._remote_events_timeline(path, route, s, layer, t_gate, arrived, c, idx, experts)
        t_back = t_gate + done
        if t_back > env.now:
            yield env.at(t_back)
        back = self._submit(env, route, transfer.nbytes, env.now, "activation", s, layer)
        assert self.network is not None
        self.network.commit()
        yield _countdown(env, [back])
        return back.done - t_gate, 2.0 * transfer.nbytes, route

    def _queued(self, env: Clock, t_gate: float, arrived: float, work: float) -> Iterator:
        """The gate's near-data batch (``work`` s alone) on the MD pool's shared unit, handed
        to it when its activations arrive; returns when it is done, relative to the gate."""
        assert self.near_unit is not None
        if t_gate + arrived > env.now:
            yield env.at(t_gate + arrived)
        job = self.near_unit.submit(work)
        if isinstance(job, float):
            return job - t_gate
        if job.done != job.done:  # not done yet (nan)
            yield _countdown(env, [job])
        return job.done - t_gate

    def _compute_ref(
        self,
        s: int,
        layer: int,
        experts: np.ndarray,
        tokens: np.ndarray,
        eff: np.ndarray,
        c_all: np.ndarray,
        groups: list[np.ndarray | None],
        prec: np.ndarray | None,
    ) -> tuple[float, dict[int, np.ndarray]]:
        """The gate's expert compute with every input in place, what its stall is measured
        from (`stall_split`): the copies it used (``c_all`` already in their precisions),
        where it ran them: the GPU's experts one after another, beside the MD pool's and the
        host CPU's (each unit serial, the three in parallel). Also returns the compute times
        of the MD_NEAR and HOST experts (`_remote_compute`), which the gate then runs."""
        on_gpu = (eff == _HIT) | (eff == _PCIE) | (eff == _MD_FETCH)
        ref = float(c_all[on_gpu].sum())
        remote: dict[int, np.ndarray] = {}
        for path in (_MD_NEAR, _HOST):
            idx = groups[path]
            if idx is not None:
                c = self._remote_compute(path, s, layer, experts[idx], tokens[idx], prec, idx)
                remote[path] = c
                ref = max(ref, float(c.sum()))
        return ref, remote

    def _remote_compute(
        self,
        path: int,
        s: int,
        layer: int,
        experts: np.ndarray,
        tokens: np.ndarray,
        prec: np.ndarray | None,
        idx: np.ndarray,
    ) -> np.ndarray:
        """Compute times next to the weights (MD pool or host CPU) of ``experts`` (the gate's
        ``idx``), each read in its copy's precision (``prec[idx]``; None: native)."""
        if path == _MD_NEAR:
            c = self.cost.near_compute_time(s, layer, experts, tokens)
            method, at = "near_compute_time", "near_time_at"
        else:
            c = self.cost.host_compute_time(s, layer, experts, tokens)
            method, at = "host_compute_time", "host_time_at"
        c = np.asarray(c, dtype=float)
        if prec is not None and prec[idx].any():
            if not is_roofline(self.cost, method):
                raise UserError(
                    "a reduced-precision expert copy needs the roofline cost model (cost "
                    "tables give native-precision compute times)"
                )
            p = prec[idx]
            c = np.array(c, dtype=np.float64)
            for q in np.unique(p[p > 0]).tolist():
                c[p == q] = getattr(self.cost, at)(tokens[p == q], q)
        return c

    def _remote_events_timeline(
        self,
        path: int,
        route: str,
        s: int,
        layer: int,
        t_gate: float,
        arrived: float,
        c: np.ndarray,
        idx: np.ndarray,
        experts: np.ndarray,
    ) -> None:
        unit = "md" if path == _MD_NEAR else "host"
        ends = arrived + np.cumsum(c)
        for e, c_start, c_end in zip(experts[idx].tolist(), ends - c, ends, strict=True):
            self._event(unit, "compute", t_gate + c_start, t_gate + c_end, s, layer, e)

    def _prefetch_events(
        self, env: Clock, decision: GateDecision, s: int, layer: int, t_gate: float, steps: int
    ) -> tuple[int, int, float, float]:
        """`_prefetch` with network routes: their prefetches are in flight until the network
        says they arrived. Returns counts and bytes per route, as `_prefetch`."""
        by_route, issued = self.cache.reserve_prefetches(decision.prefetch, s, layer)
        asked = decision.prefetch_precision
        counts, moved = {}, {}
        pos = 0
        for route, arr in by_route.items():
            m = len(arr)
            where, pos = issued[pos : pos + m], pos + m
            counts[route], moved[route] = m, 0.0
            if not m:
                continue
            precs = self._prefetch_precisions(asked, where, route, len(decision.prefetch), s, layer)
            self.cache.set_precision(arr, precs if precs is not None else self.default[route])
            if isinstance(self.routes[route], FifoLink):
                placed, moved[route] = self._fetch_prefetch(
                    route, s, layer, arr, t_gate, steps, precs
                )
                self.cache.arrived(arr, placed, t_gate)
                if self.timeline is not None:
                    for (lyr, e), a, b, k in zip(
                        arr.tolist(), placed.start, placed.end, placed.slot, strict=True
                    ):
                        self._event(f"{route}[{k}]", "prefetch", t_gate + a, t_gate + b, s, lyr, e)
                continue
            sizes = (
                [self.route_bytes[route]] * m
                if precs is None
                else [float(self.sizes[p]) for p in precs.tolist()]
            )
            for (lyr, e), nbytes in zip(arr.tolist(), sizes, strict=True):
                transfer = self._submit(env, route, nbytes, t_gate, "prefetch", s, lyr, e)
                self.cache.track(lyr, e, transfer)
            moved[route] = float(sum(sizes))
        return counts[HOST_ROUTE], counts[MD_ROUTE], moved[HOST_ROUTE], moved[MD_ROUTE]

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

    # -- precisions --------------------------------------------------------------------------------
    def _upgrades(
        self, decision: GateDecision, cached: np.ndarray, n: int, view: GateView
    ) -> np.ndarray | None:
        """The cached experts the policy fetches again (`GateDecision.upgrade`), checked: each
        needs a fetch path and a precision other than its cached copy's. None when none."""
        up = np.asarray(decision.upgrade)
        if up.shape != (n,) or up.dtype != bool:
            raise PolicyError(f"{self._where(view)}: upgrade must be {n} bools, got {up!r}")
        up = up & cached
        if not up.any():
            return None
        paths = np.asarray(decision.paths)
        if paths.shape != (n,) or not np.isin(paths[up], (_PCIE, _MD_FETCH)).all():
            raise PolicyError(
                f"{self._where(view)}: an upgraded expert needs a fetch path (PCIE or MD_FETCH)"
            )
        asked = None if decision.precision is None else np.asarray(decision.precision)
        cached_p = self.cache.precision_at[view.layer, view.experts[up]]
        if (
            asked is None
            or asked.shape != (n,)
            or (asked[up] < 0).any()
            or (asked[up] == cached_p).any()
        ):
            raise PolicyError(
                f"{self._where(view)}: an upgraded expert needs a precision other than its "
                "cached copy's"
            )
        return up

    def _precisions(
        self,
        decision: GateDecision,
        eff: np.ndarray,
        experts: np.ndarray,
        layer: int,
        n: int,
        view: GateView,
    ) -> np.ndarray | None:
        """The precision each active expert is served in: a hit in its cached copy's, anything
        else in the one the policy asks for or the default copy of its path's tier. None when
        every one is native (the engine then takes its native code path)."""
        asked = decision.precision
        if asked is None and self.native and not self.cache.reduced:
            return None
        prec = np.zeros(n, dtype=np.int64)
        if not self.native:
            for path, route in _ROUTE_OF_PATH.items():
                if self.default[route]:
                    prec[eff == path] = self.default[route]
        if asked is not None:
            asked = np.asarray(asked)
            if asked.shape != (n,) or asked.dtype.kind not in "iu":
                raise PolicyError(
                    f"{self._where(view)}: precision must be {n} precision indices, got {asked!r}"
                )
            chosen = (asked >= 0) & (eff != _HIT)
            if chosen.any():
                top = len(self.sizes)
                if (asked[chosen] >= top).any():
                    raise PolicyError(
                        f"{self._where(view)}: precision indices must be below {top} "
                        f"({', '.join(self.precision_names)}), got {asked!r}"
                    )
                for path, route in _ROUTE_OF_PATH.items():
                    on = chosen & (eff == path)
                    if on.any():
                        missing = ~np.isin(asked[on], self.held[route])
                        if missing.any():
                            name = self.precision_names[int(asked[on][missing][0])]
                            tier = ROUTE_TIER[route]
                            have = ", ".join(self.precision_names[i] for i in self.held[route])
                            raise PolicyError(
                                f"{self._where(view)} chose precision {name} on the "
                                f"{Path(path).name} path, but tier {tier} holds only {have}"
                            )
                prec[chosen] = asked[chosen]
        if self.cache.reduced:
            hit = eff == _HIT
            if hit.any():
                prec[hit] = self.cache.precision_at[layer, experts[hit]]
        return prec if prec.any() else None

    def _reduced_gpu_compute(
        self, c_all: np.ndarray, prec: np.ndarray, eff: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        """GPU compute times with reduced-precision copies read at their own size."""
        on_gpu = (prec > 0) & ((eff == _HIT) | (eff == _PCIE) | (eff == _MD_FETCH))
        if not on_gpu.any():
            return c_all
        if not self.gpu_table:
            raise UserError(
                "a reduced-precision expert copy needs the roofline cost model (cost tables "
                "give native-precision compute times)"
            )
        c_all = np.array(c_all, dtype=np.float64)
        for p in np.unique(prec[on_gpu]).tolist():
            m = on_gpu & (prec == p)
            c_all[m] = self.cost.gpu_time_at(tokens[m], p)
        return c_all

    def _keep_fetched(
        self,
        admit: object,
        upgrade: np.ndarray | None,
        experts: np.ndarray,
        n: int,
        fetched: list[tuple[np.ndarray, Placed, str]],
        layer: int,
        t_gate: float,
        prec: np.ndarray | None,
    ) -> None:
        """Admitted fetches enter the cache; upgraded copies replace the cached ones."""
        if upgrade is not None:
            served = prec if prec is not None else np.zeros(n, dtype=np.int64)  # all native
            for idx, placed, _route in fetched:
                mine = upgrade[idx]
                if mine.any():
                    self.cache.replace(
                        layer, experts[idx[mine]], served[idx[mine]], t_gate + placed.end[mine]
                    )
            if admit is None:
                return
            admit = np.asarray(admit, dtype=bool)
            if admit.shape == (n,):
                admit = admit & ~upgrade
        self.cache.admit(
            admit, experts, n, fetched, layer, t_gate, self.default if prec is None else prec
        )

    # -- routes ------------------------------------------------------------------------------------
    def _fetch(
        self,
        route: str,
        s: int,
        layer: int,
        experts: np.ndarray,
        t_gate: float,
        prec: np.ndarray | None = None,
        idx: np.ndarray | None = None,
    ) -> tuple[Placed, float]:
        """Queue weight transfers of ``experts`` on ``route``: the default copy, or each in
        ``prec[idx]`` (the gate's precisions). Returns the placement and the bytes moved."""
        link = self.routes[route]
        n = experts.size
        p = None if prec is None else prec[idx] if idx is not None else prec
        if p is None or not (p != self.default[route]).any():
            nbytes = n * self.route_bytes[route]
            if self.transfer_d is not None:
                return link.place(t_gate, self.transfer_d[route], n, nbytes), nbytes
            durations = np.asarray(self.cost.transfer_time(route, s, layer, experts), dtype=float)
            return link.place(t_gate, durations, n, nbytes), nbytes
        if self.transfer_d is None:
            raise UserError(
                "a reduced-precision expert copy needs the roofline cost model (cost tables "
                "give native-precision transfer times)"
            )
        first = int(p[0])
        if (p == first).all():
            nbytes = n * float(self.sizes[first])
            d = self.cost.copy_transfer_time(route, first)
            return link.place(t_gate, d, n, nbytes), nbytes
        table = [self.cost.copy_transfer_time(route, q) for q in range(len(self.sizes))]
        durations = np.asarray(table)[p]
        nbytes = float(self.sizes[p].sum())
        return link.place(t_gate, durations, n, nbytes), nbytes

    def _activation_out(
        self,
        route: str,
        s: int,
        layer: int,
        experts: np.ndarray,
        tokens: np.ndarray,
        idx: np.ndarray,
        t_gate: float,
    ) -> tuple[float, float, float, np.ndarray]:
        """Send the tokens of the ``idx`` experts out; returns (start, end, half time, idx)."""
        half = 0.5 * float(self.cost.activation_time(route, s, layer, experts[idx], tokens[idx]))
        nbytes = float(tokens[idx].sum()) * self.act_bytes
        start, end, slot = self.routes[route].place_one(t_gate, half, nbytes)
        if self.timeline is not None:
            self._event(f"{route}[{slot}]", "activation", t_gate + start, t_gate + end, s, layer)
        return start, end, half, idx

    def _remote_part(
        self,
        route: str,
        path: int,
        s: int,
        layer: int,
        t_gate: float,
        experts: np.ndarray,
        tokens: np.ndarray,
        out: tuple[float, float, float, np.ndarray],
        c: np.ndarray,
    ) -> tuple[float, float]:
        """Serial compute next to the weights (``c``: each expert's, `_remote_compute`), then
        the results come back on the same route.

        Returns (relative end, bytes moved both ways)."""
        _start, arrived, half, idx = out
        unit = "md" if path == _MD_NEAR else "host"
        done = arrived + float(c.sum())
        nbytes = float(tokens[idx].sum()) * self.act_bytes
        b_start, b_end, slot = self.routes[route].place_one(t_gate + done, half, nbytes)
        if self.timeline is not None:
            ends = arrived + np.cumsum(c)
            for e, c_start, c_end in zip(experts[idx].tolist(), ends - c, ends, strict=True):
                self._event(unit, "compute", t_gate + c_start, t_gate + c_end, s, layer, e)
            t_back = t_gate + done
            self._event(
                f"{route}[{slot}]", "activation", t_back + b_start, t_back + b_end, s, layer
            )
        return done + b_end, 2.0 * nbytes

    def _check_writeback(self, s: int, layer: int) -> None:
        if self.host_blocked:
            raise PolicyError(
                f"policy {self.policy.name!r} at step {s} layer {layer} writes evicted experts "
                "back to host memory, impossible: the scenario keeps no experts there"
            )

    def _writeback(
        self,
        decision: GateDecision,
        s: int,
        layer: int,
        t_gate: float,
        precision: np.ndarray | None = None,
    ) -> float:
        """Copy the gate's evicted experts back to host DRAM (exclusive caching): one
        transfer each on the host route, behind the demand fetches, each the evicted copy's
        size (``precision``: per evicted copy; None: all native). Returns the bytes."""
        self._check_writeback(s, layer)
        victims = np.asarray([int(e) for _lyr, e in decision.evict], dtype=np.intp)
        if precision is None and self.default[HOST_ROUTE]:
            precision = np.zeros(victims.size, dtype=np.int64)  # native copies go back
        placed, nbytes = self._fetch(HOST_ROUTE, s, layer, victims, t_gate, precision)
        if self.timeline is not None:
            for (lyr, e), a, b, k in zip(
                decision.evict, placed.start, placed.end, placed.slot, strict=True
            ):
                self._event(f"{HOST_ROUTE}[{k}]", "writeback", t_gate + a, t_gate + b, s, lyr, e)
        return nbytes

    def _prefetch(
        self, decision: GateDecision, s: int, layer: int, t_gate: float, steps: int
    ) -> tuple[int, int, float, float]:
        """Queue prefetches behind the gate's demand transfers; they enter the cache at once
        (bytes reserved at issue) and are ready when they arrive. Already cached (or listed
        before): ignored. Returns how many were issued on (host route, MD route) and the bytes
        each route moved for them."""
        by_route, issued = self.cache.reserve_prefetches(decision.prefetch, s, layer)
        asked = decision.prefetch_precision
        counts, moved = {}, {}
        pos = 0
        for route, arr in by_route.items():
            m = len(arr)
            where, pos = issued[pos : pos + m], pos + m
            counts[route], moved[route] = m, 0.0
            if not m:
                continue
            precs = self._prefetch_precisions(asked, where, route, len(decision.prefetch), s, layer)
            self.cache.set_precision(arr, precs if precs is not None else self.default[route])
            placed, moved[route] = self._fetch_prefetch(route, s, layer, arr, t_gate, steps, precs)
            self.cache.arrived(arr, placed, t_gate)
            if self.timeline is not None:
                for (lyr, e), a, b, k in zip(
                    arr.tolist(), placed.start, placed.end, placed.slot, strict=True
                ):
                    self._event(f"{route}[{k}]", "prefetch", t_gate + a, t_gate + b, s, lyr, e)
        return counts[HOST_ROUTE], counts[MD_ROUTE], moved[HOST_ROUTE], moved[MD_ROUTE]

    def _prefetch_precisions(
        self, asked: object, where: np.ndarray, route: str, total: int, s: int, layer: int
    ) -> np.ndarray | None:
        """The precision of each issued prefetch on ``route`` (``where``: their positions in
        the decision's list), checked against the copies the route's tier holds; None: the
        default copy."""
        if asked is None:
            return None
        who = f"policy {self.policy.name!r} at step {s} layer {layer}"
        if isinstance(asked, int | np.integer) and not isinstance(asked, bool):
            precs = np.full(where.size, int(asked))
        else:
            arr = np.asarray(asked)
            if arr.shape != (total,) or arr.dtype.kind not in "iu":
                raise PolicyError(
                    f"{who}: prefetch_precision must be one index or {total}, got {asked!r}"
                )
            precs = arr[where].astype(np.int64)
        precs = np.where(precs < 0, self.default[route], precs)
        bad = ~np.isin(precs, self.held[route])
        if bad.any():
            q = int(precs[bad][0])
            name = self.precision_names[q] if 0 <= q < len(self.sizes) else str(q)
            have = ", ".join(self.precision_names[i] for i in self.held[route])
            raise PolicyError(
                f"{who} prefetches in precision {name} over {route}, but tier "
                f"{ROUTE_TIER[route]} holds only {have}"
            )
        return None if (precs == self.default[route]).all() else precs

    def _fetch_prefetch(
        self,
        route: str,
        s: int,
        layer: int,
        keys: np.ndarray,
        t_gate: float,
        steps: int,
        prec: np.ndarray | None = None,
    ) -> tuple[Placed, float]:
        """`_fetch` for prefetches (``keys``: rows of (layer, expert)): with a per-expert cost
        model (a cost table), each transfer is costed at the gate it is for, layer ``lyr`` later
        in this iteration or, for a layer not after this one, in the next (the last of the
        source's planned ``steps`` at most). Returns the placement and the bytes moved."""
        if self.transfer_d is not None or prec is not None:
            return self._fetch(route, s, layer, keys[:, 1], t_gate, prec)
        target = np.where(keys[:, 0] > layer, s, min(s + 1, steps - 1))
        durations = np.empty(len(keys))
        for ts, lyr in sorted(set(zip(target.tolist(), keys[:, 0].tolist(), strict=True))):
            mask = (target == ts) & (keys[:, 0] == lyr)
            durations[mask] = self.cost.transfer_time(route, ts, lyr, keys[mask, 1])
        nbytes = len(keys) * self.expert_bytes
        return self.routes[route].place(t_gate, durations, len(keys), nbytes), nbytes

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
        floor: float = 0.0,
    ) -> float:
        """Serial expert compute on the GPU, hits first then in arrival order; returns its end
        relative to the gate. ``floor``: no expert starts before it (the tokens of other GPUs
        arrive then, expert parallelism)."""
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        busy = 0.0  # compute of the hits already in HBM at the gate: they run first
        if floor > 0.0:  # every expert also waits for the dispatched tokens
            fetched = [
                (idx, placed._replace(end=np.maximum(placed.end, floor)), route)
                for idx, placed, route in fetched
            ]
            if hit_idx is not None:
                ready_hit = self.cache.ready_at[layer, experts[hit_idx]] - t_gate
                parts.append((hit_idx, np.maximum(ready_hit, floor)))
                hit_idx = None
        if hit_idx is not None:
            if self.timeline is None and self.cache.max_ready <= t_gate:  # every one is in
                busy = float(c_all[hit_idx].sum())
            else:
                ready_hit = self.cache.ready_at[layer, experts[hit_idx]] - t_gate
                if self.timeline is None and float(ready_hit.max()) <= 0.0:
                    busy = float(c_all[hit_idx].sum())
                else:
                    parts.append((hit_idx, np.maximum(ready_hit, 0.0)))
        parts.extend((idx, placed.end) for idx, placed, _route in fetched)
        if self.timeline is not None:
            self._fetch_events(s, layer, t_gate, experts, fetched)
        if not parts:
            return busy
        if len(parts) == 1 and parts[0][0] is not hit_idx:
            # one FIFO batch: in arrival order, unless transfers of unequal lengths (a cost
            # table's, copies of several sizes) on several slots overtook each other
            idx, ready = parts[0]
            if ready.size > 1 and (ready[1:] < ready[:-1]).any():
                order = ready.argsort(kind="stable")
                idx, ready = idx[order], ready[order]
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
        for idx, placed, route in fetched:
            for e, a, b, k in zip(
                experts[idx].tolist(), placed.start, placed.end, placed.slot, strict=True
            ):
                self._event(f"{route}[{k}]", "fetch", t_gate + a, t_gate + b, s, layer, e)

    def _event(
        self, resource: str, kind: str, start: float, end: float, s: int, layer: int, e: int = -1
    ) -> None:
        assert self.timeline is not None
        self.timeline.append(
            TimelineEvent(self.prefix + resource, kind, float(start), float(end), s, layer, e)
        )


class _Opened(NamedTuple):
    """A gate after `GpuProcess._open`: the policy's view and checked decision."""

    view: GateView
    decision: GateDecision
    experts: np.ndarray
    tokens: np.ndarray
    n: int
    by_path: list[int]
    hits: int
    late: int
    c_all: np.ndarray
    ref: float
    groups: list[np.ndarray | None]
    prec: np.ndarray | None  # precision of each active expert; None: all native
    upgrade: np.ndarray | None  # cached experts fetched again in another precision
    evicted: np.ndarray | None  # precision of each evicted copy (writebacks)
    remote: dict[int, np.ndarray]  # MD_NEAR / HOST: compute next to the weights of its experts


class _IterationGates:
    """One iteration's gates as the hot loop reads them: gate order, GPU compute table, and
    the router's gate mass (when the source gives it) for the quality proxies."""

    __slots__ = (
        "active",
        "counts",
        "dropped",
        "exchange",
        "experts",
        "gpu_table",
        "mass",
        "position",
        "ref_table",
        "step",
        "steps",
        "tokens",
        "top",
        "total",
    )

    def __init__(self, gpu: GpuProcess, it: Iteration, step: int) -> None:
        order = it.gates()
        self.step = step
        self.steps = gpu.ctx.num_steps
        self.position = int(it.position)
        self.counts = it.counts
        self.experts, self.tokens, self.active = order.experts, order.tokens, order.active
        self.gpu_table = self.ref_table = None
        if gpu.gpu_table:
            self.gpu_table, self.ref_table = gpu.compute_tables(order)
        self.mass, self.top, self.dropped = it.mass, it.top, it.dropped
        self.exchange = it.exchange
        self.total = gate_totals(it, gpu.layers)

    def gate_mass(self, layer: int) -> float:
        """The gate's router mass (its tokens; NaN when the source gives no scores)."""
        return float(self.total[layer])

    def quality(
        self, layer: int, experts: np.ndarray, prec: np.ndarray | None
    ) -> tuple[int, float, float]:
        """Experts served below native precision, and the gate's degraded and dropped shares
        of router mass (NaN when needed but unknown)."""
        total = self.total[layer]
        dropped = 0.0
        if self.dropped is not None and self.dropped[layer] > 0.0:
            dropped = float(self.dropped[layer] / total)
        if prec is None:
            return 0, 0.0, dropped
        low = prec > 0
        reduced = int(np.count_nonzero(low))
        if not reduced:
            return 0, 0.0, dropped
        if self.mass is None:
            return reduced, float("nan"), dropped
        degraded = float(self.mass[layer][experts[low]].sum())
        return reduced, (degraded / float(total) if total > 0 else 0.0), dropped


def gate_totals(it: Iteration, layers: int) -> np.ndarray:
    """Per layer, an iteration's router mass (kept + dropped; NaN when it has no scores)."""
    if it.mass is None:
        return np.full(layers, np.nan)
    total = np.asarray(it.mass, dtype=np.float64).sum(axis=-1)
    if it.dropped is not None:
        total = total + np.asarray(it.dropped, dtype=np.float64)
    return total


class _Block:
    """Several iterations' gates stacked (rows = gates, iteration-major), for `_planned`: views
    of a lockstep source's whole-trace arrays when the iterations are consecutive rows of it."""

    def __init__(self, gpu: GpuProcess, its: list[Iteration]) -> None:
        orders = [it.gates() for it in its]
        first = orders[0].parent
        e = gpu.num_experts
        if first is not None and all(
            o.parent is not None and o.parent[0] is first[0] and o.parent[1] == first[1] + i
            for i, o in enumerate(orders)
        ):
            whole, i0 = first
            rows = slice(i0, i0 + len(orders))
            self.experts = whole.experts[rows].reshape(-1, e)
            self.tokens = whole.tokens[rows].reshape(-1, e)
            self.active = whole.active[rows].reshape(-1)
            table, ref = _whole_tables(gpu, whole)
            self.gpu_table = table[rows].reshape(-1, e)
            self.ref_table = ref[rows].reshape(-1)
        else:
            self.experts = np.concatenate([o.experts for o in orders]).reshape(-1, e)
            self.tokens = np.concatenate([o.tokens for o in orders]).reshape(-1, e)
            self.active = np.concatenate([o.active for o in orders]).reshape(-1)
            tables = [gpu.compute_tables(o) for o in orders]
            self.gpu_table = np.concatenate([t for t, _ in tables]).reshape(-1, e)
            self.ref_table = np.concatenate([r for _, r in tables]).reshape(-1)
        self.non_expert = np.concatenate(
            [np.asarray(it.non_expert, dtype=np.float64) for it in its]
        )
        self.total = np.concatenate([gate_totals(it, gpu.layers) for it in its])
        dropped = [it.dropped for it in its]
        self.dropped_share = np.zeros(len(self.total))
        if any(d is not None for d in dropped):
            parts = np.concatenate(
                [np.zeros(gpu.layers) if d is None else np.asarray(d, float) for d in dropped]
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                self.dropped_share = np.where(parts > 0.0, parts / self.total, 0.0)


def _whole_tables(gpu: GpuProcess, whole: GateOrder) -> tuple[np.ndarray, np.ndarray]:
    tables = gpu._tables.get(id(whole))
    if tables is None or tables[0] is not whole:
        tables = (whole, *roofline_tables(gpu.cost, whole))
        gpu._tables = {id(whole): tables}
    return tables[1], tables[2]


def roofline_tables(cost: RooflineCost, order: GateOrder) -> tuple[np.ndarray, np.ndarray]:
    """GPU compute time of each gate's experts (gate order, 0 past the active ones) and its
    sum per gate: the stall's reference when every expert is native and on the GPU
    (`stall_split`; other gates compute theirs in `GpuProcess._compute_ref`)."""
    table = np.asarray(cost.gpu_time_from_tokens(order.tokens), dtype=np.float64)
    table[order.tokens == 0] = 0.0
    return table, table.sum(axis=-1)


def _book_idle(
    link: FifoLink,
    t_gate: np.ndarray,
    d: float,
    n: np.ndarray,
    nbytes: np.ndarray,
    last: np.ndarray,
) -> None:
    """`FifoLink.place`'s bookkeeping for one batch per gate (``n[l]`` transfers of ``d`` at
    ``t_gate[l]`` on idle slots, last end ``last[l]``): the same sums in the same order (a
    gate without transfers adds exact zeros) and each slot's ``free_at`` as the last batch
    that used it left it (`FifoLink._place_idle`: transfer ``j`` on slot ``j % c`` ends at
    ``(j // c) d + d``)."""
    counts = n.tolist()
    used = [i for i, m in enumerate(counts) if m]
    if not used:
        return
    total_bytes, busy = link.bytes, link.busy
    for add_bytes, add_busy in zip(nbytes[used].tolist(), (d * n[used]).tolist()):
        total_bytes += add_bytes
        busy += add_busy
    link.bytes, link.busy = total_bytes, busy
    link.transfers += sum(counts)
    c = link.channels
    t = t_gate.tolist()
    link.idle_blocks.append((t_gate[used], n[used], d))
    for k in range(c):
        lyr = next((i for i in reversed(used) if counts[i] > k), None)
        if lyr is None:
            continue
        j = counts[lyr] - 1 - ((counts[lyr] - 1 - k) % c)
        end = float(last[lyr]) if c == 1 else float(j // c) * d + d
        link.free_at[k] = t[lyr] + end
    link.latest = t[used[-1]] + float(last[used[-1]])


def _countdown(env: Clock, transfers: list[Transfer]) -> Event:
    """An event that fires when every one of ``transfers`` (none arrived yet) has arrived."""
    event = env.event()
    left = [len(transfers)]

    def tick(_transfer: Transfer) -> None:
        left[0] -= 1
        if left[0] == 0:
            event.succeed()

    for transfer in transfers:
        if transfer.watchers is None:
            transfer.watchers = [tick]
        else:
            transfer.watchers.append(tick)
    return event
