"""Engine invariants on random small traces, hardware and (caching, prefetching) policies."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from engine_traces import GB, hardware, model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import RooflineCost, simulate
from sim.hardware import ComputeUnit
from sim.policies import GateDecision, GateView, Path, Policy, PolicyContext, make_policy


@dataclass(frozen=True)
class _ChaosParams:
    seed: int = 0


class ChaosCache(Policy):
    """Random paths, admissions, evictions and prefetches, always within the cache capacity:
    exercises every cache rule of the engine."""

    name = "chaos-cache"
    Params = _ChaosParams

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self.rng = np.random.default_rng(self.params.seed)

    def decide(self, view: GateView) -> GateDecision:
        ctx, rng = self.ctx, self.rng
        n = view.experts.size
        hw = ctx.hardware
        choices = [Path.PCIE, Path.MD_NEAR if hw.md_mode == "near-data" else Path.MD_FETCH]
        if hw.host_compute is not None:
            choices.append(Path.HOST)
        paths = rng.choice(choices, size=n).astype(np.int8)
        cached_keys = np.argwhere(np.isfinite(view.ready_at))
        in_use = {int(e) for e in view.experts}
        evictable = [
            (int(lyr), int(e))
            for lyr, e in cached_keys
            if not (lyr == view.layer and int(e) in in_use)
        ]
        evict = [evictable[i] for i in np.flatnonzero(rng.random(len(evictable)) < 0.3)]
        free = ctx.cache_slots - len(cached_keys) + len(evict)
        admit = np.zeros(n, dtype=bool)
        for i in rng.permutation(np.flatnonzero(~view.cached)):
            if free > 0 and rng.random() < 0.5:
                admit[i] = True
                free -= 1
        prefetch = []
        taken = {(view.layer, int(e)) for e in view.experts[admit]}
        for _ in range(int(rng.integers(0, 4))):
            key = (int(rng.integers(ctx.num_layers)), int(rng.integers(ctx.model.num_experts)))
            cached_now = np.isfinite(view.ready_at[key]) and key not in evict
            if free > 0 and not cached_now and key not in taken:
                links = ["pcie"] if hw.md_mode == "near-data" else ["pcie", "md_link"]
                prefetch.append((*key, str(rng.choice(links))))
                taken.add(key)
                free -= 1
        return GateDecision(paths=paths, admit=admit, evict=evict, prefetch=prefetch)


@st.composite
def setups(draw, near_allowed: bool = True):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num_experts = draw(st.integers(2, 16))
    k = draw(st.integers(1, min(3, num_experts)))
    trace = random_trace(
        rng,
        steps=draw(st.integers(1, 6)),
        layers=draw(st.integers(1, 3)),
        seqs=draw(st.integers(1, 8)),
        k=k,
        num_experts=num_experts,
        skew=1.0,
    )
    mdl = model(num_experts, k, draw(st.floats(1e6, 2e8)))
    near = near_allowed and draw(st.booleans())
    hw = hardware(
        pcie_bw=draw(st.floats(1.0, 100.0)) * GB,
        md_bw=draw(st.floats(1.0, 600.0)) * GB,
        pcie_latency=draw(st.sampled_from([0.0, 1e-5])),
        md_latency=draw(st.sampled_from([0.0, 3e-6])),
        pcie_channels=draw(st.integers(1, 3)),
        md_channels=draw(st.integers(1, 3)),
        capacity=draw(st.integers(0, 12)) * mdl.expert_bytes,
        non_expert=draw(st.sampled_from([0.0, 1e-4])),
        expert_start=draw(st.sampled_from(["per-expert", "layer"])),
        md_mode="near-data" if near else "fetch",
        md_compute=ComputeUnit(200 * GB, 1e13) if near else None,
        host_compute=ComputeUnit(100 * GB, 2e12) if draw(st.booleans()) else None,
    )
    return trace, hw, mdl


def check_invariants(result, hw, mdl) -> None:
    pl = result.per_layer
    eb = mdl.expert_bytes
    # every active expert is served exactly once
    served = pl["hits"] + pl["late_prefetches"] + pl["pcie"] + pl["md_fetch"] + pl["md_near"]
    served = served + pl["host"]
    np.testing.assert_array_equal(served, pl["active"])
    # time never decreases, layers follow each other
    assert np.all(pl["t_start"] <= pl["t_gate"]) and np.all(pl["t_gate"] <= pl["t_end"])
    np.testing.assert_array_equal(pl["t_start"][1:], pl["t_end"][:-1])
    # the cache never exceeds HBM capacity
    assert np.all(pl["cache_bytes"] <= hw.hbm.capacity * (1 + 1e-12))
    # bytes moved = weights fetched (demand + prefetch) + activations both ways
    for col, weights, remote in (
        ("bytes_pcie", (pl["pcie"] + pl["prefetch_pcie"]) * eb, pl["host"] > 0),
        ("bytes_md", (pl["md_fetch"] + pl["prefetch_md"]) * eb, pl["md_near"] > 0),
    ):
        np.testing.assert_allclose(pl[col][~remote], weights[~remote], rtol=1e-12)
        # with remote compute, at least one token's hidden state goes out and back
        activation = 2 * mdl.activation_bytes_per_token
        # (relative float tolerance on the whole sum: the engine adds the terms in another order)
        assert np.all(pl[col][remote] >= (weights[remote] + activation) * (1 - 1e-12))
    for name, col in (("pcie", "bytes_pcie"), ("md_link", "bytes_md")):
        np.testing.assert_allclose(result.links[name]["bytes"], pl[col].sum(), rtol=1e-12)
        assert 0.0 <= result.links[name]["utilisation"] <= 1.0 + 1e-9
    # totals agree with the columns
    assert result.totals["hits"] == pl["hits"].sum()
    assert result.totals["late_prefetches"] == pl["late_prefetches"].sum()
    assert pl["late_prefetches"][0] == 0  # nothing can be in flight at the first gate
    assert result.totals["total_time"] == pl["t_end"][-1]
    # a step never beats the compute of what it ran, where it ran it; no layer stalls < 0
    lat, ref = result.per_step["latency"], result.per_step["compute_only"]
    assert np.all(lat >= ref * (1 - 1e-12))
    assert np.all(pl["stall"] >= 0.0)


@settings(max_examples=50, deadline=None)
@given(setups(), st.integers(0, 1000))
def test_invariants_under_a_random_caching_prefetching_policy(setup, seed):
    trace, hw, mdl = setup
    policy = Recorder(ChaosCache(ChaosCache.Params(seed=seed)))
    result = simulate(trace, hw, mdl, policy)
    check_invariants(result, hw, mdl)
    # the engine's vectorised schedule equals a plain event-by-event replay of the decisions
    expected = reference_replay(trace, hw, mdl, policy.log)
    np.testing.assert_allclose(result.per_layer["t_end"], expected, rtol=1e-9, atol=0)


class Recorder(Policy):
    """Wraps a policy and logs (gate experts, tokens, decision) for the reference replay."""

    name = "recorder"

    def __init__(self, inner: Policy) -> None:
        super().__init__(inner.params)
        self.inner = inner
        self.log: list[tuple[np.ndarray, np.ndarray, GateDecision]] = []

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self.inner.bind(ctx)

    def decide(self, view: GateView) -> GateDecision:
        decision = self.inner.decide(view)
        self.log.append((view.experts.copy(), view.tokens.copy(), decision))
        return decision


def reference_replay(trace, hw, mdl, log) -> np.ndarray:
    """The model of docs/engine.md written as plainly as possible: absolute times, one Python
    step per transfer and per expert. Returns t_end per gate."""
    cost = RooflineCost(hw, mdl)
    free = {"pcie": [0.0] * hw.pcie.channels, "md_link": [0.0] * hw.md_link.channels}

    def send(link: str, t: float, duration: float) -> float:
        slots = free[link]
        k = min(range(len(slots)), key=lambda i: (slots[i], i))
        end = max(slots[k], t) + duration
        slots[k] = end
        return end

    cache: dict[tuple[int, int], float] = {}
    now, ends = 0.0, []
    for i, (experts, tokens, dec) in enumerate(log):
        layer = i % trace.num_layers
        now += hw.gpu.non_expert_time
        gate = now
        hit = np.array([(layer, int(e)) in cache for e in experts], dtype=bool)
        paths = np.where(hit, Path.HIT, np.asarray(dec.paths))
        for key in dec.evict:
            del cache[(int(key[0]), int(key[1]))]
        out: dict[int, float] = {}
        for path, link in ((Path.HOST, "pcie"), (Path.MD_NEAR, "md_link")):
            sel = paths == path
            if sel.any():
                half = float(cost.activation_one_way(link, float(tokens[sel].sum())))
                out[path] = (send(link, gate, half), half)
        jobs = [(max(cache[(layer, int(e))], gate), j) for j, e in enumerate(experts) if hit[j]]
        for path, link in ((Path.PCIE, "pcie"), (Path.MD_FETCH, "md_link")):
            for j in np.flatnonzero(paths == path):
                arrival = send(link, gate, cost.uniform_transfer_time(link))
                jobs.append((arrival, j))
                if dec.admit is not None and dec.admit[j]:
                    cache[(layer, int(experts[j]))] = arrival
        for lyr, e, link in dec.prefetch:
            if (lyr, e) not in cache:
                cache[(lyr, e)] = send(link, gate, cost.uniform_transfer_time(link))
        c = cost.gpu_time_from_tokens(tokens.astype(float))
        jobs.sort(key=lambda job: job[0])  # stable: hits first on ties
        end = gate
        if hw.gpu.expert_start == "per-expert":
            for ready, j in jobs:
                end = max(end, ready) + c[j]
        elif jobs:
            end = max([gate] + [ready for ready, _ in jobs]) + sum(c[j] for _, j in jobs)
        for path, link in ((Path.HOST, "pcie"), (Path.MD_NEAR, "md_link")):
            if path in out:
                arrived, half = out[path]
                sel = paths == path
                unit = (
                    cost.host_time_from_tokens if path == Path.HOST else cost.near_time_from_tokens
                )
                done = arrived + float(unit(tokens[sel].astype(float)).sum())
                end = max(end, send(link, done, half))
        now = end
        ends.append(end)
    return np.asarray(ends)


@settings(max_examples=40, deadline=None)
@given(setups(), st.sampled_from(["seed-split", "gpu-only", "md-only"]))
def test_invariants_of_stateless_policies(setup, name):
    trace, hw, mdl = setup
    result = simulate(trace, hw, mdl, make_policy(name))
    check_invariants(result, hw, mdl)
    assert result.totals["hits"] == 0


@settings(max_examples=40, deadline=None)
@given(
    setups(),
    st.sampled_from(["seed-split", "gpu-only", "md-only"]),
    st.floats(1.0, 8.0),
    st.floats(1.0, 8.0),
)
def test_more_bandwidth_never_makes_a_stateless_policy_slower(setup, name, f_pcie, f_md):
    trace, hw, mdl = setup
    faster = hw.with_links(
        pcie=dataclasses.replace(hw.pcie, bandwidth=hw.pcie.bandwidth * f_pcie),
        md_link=dataclasses.replace(hw.md_link, bandwidth=hw.md_link.bandwidth * f_md),
    )
    base = simulate(trace, hw, mdl, make_policy(name))
    fast = simulate(trace, faster, mdl, make_policy(name))
    assert fast.totals["total_time"] <= base.totals["total_time"] * (1 + 1e-12)
    assert np.all(fast.per_step["latency"] <= base.per_step["latency"] * (1 + 1e-12))
