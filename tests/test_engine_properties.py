"""Engine invariants on random small traces, hardware and (caching, prefetching) policies."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from engine_traces import GB, hardware, model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import simulate
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
        paths = rng.choice([Path.PCIE, Path.MD_FETCH], size=n).astype(np.int8)
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
                prefetch.append((*key, str(rng.choice(["pcie", "md_link"]))))
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
    )
    return trace, hw, mdl


def check_invariants(result, hw, mdl) -> None:
    pl = result.per_layer
    eb = mdl.expert_bytes
    # every active expert is served exactly once
    served = pl["hits"] + pl["pcie"] + pl["md_fetch"] + pl["md_near"] + pl["host"]
    np.testing.assert_array_equal(served, pl["active"])
    # time never decreases, layers follow each other
    assert np.all(pl["t_start"] <= pl["t_gate"]) and np.all(pl["t_gate"] <= pl["t_end"])
    np.testing.assert_array_equal(pl["t_start"][1:], pl["t_end"][:-1])
    # the cache never exceeds HBM capacity
    assert np.all(pl["cache_bytes"] <= hw.hbm.capacity * (1 + 1e-12))
    # bytes moved = weights fetched (demand + prefetch) + activations both ways
    np.testing.assert_allclose(
        pl["bytes_pcie"], (pl["pcie"] + pl["prefetch_pcie"]) * eb, rtol=1e-12
    )
    weights_md = (pl["md_fetch"] + pl["prefetch_md"]) * eb
    if hw.md_mode == "fetch":
        np.testing.assert_allclose(pl["bytes_md"], weights_md, rtol=1e-12)
    else:
        assert np.all(pl["bytes_md"] >= weights_md) and np.all(
            (pl["bytes_md"] > 0) >= (pl["md_near"] > 0)
        )
    for name, col in (("pcie", "bytes_pcie"), ("md_link", "bytes_md")):
        np.testing.assert_allclose(result.links[name]["bytes"], pl[col].sum(), rtol=1e-12)
        assert 0.0 <= result.links[name]["utilisation"] <= 1.0 + 1e-9
    # totals agree with the columns
    assert result.totals["hits"] == pl["hits"].sum()
    assert result.totals["total_time"] == pl["t_end"][-1]
    if hw.md_mode == "fetch":
        # all compute on the GPU: a step can never beat the all-in-HBM compute
        lat, ref = result.per_step["latency"], result.per_step["compute_only"]
        assert np.all(lat >= ref * (1 - 1e-12))
        assert np.all(pl["stall"] >= -1e-12 * pl["t_end"].max())


@settings(max_examples=50, deadline=None)
@given(setups(near_allowed=False), st.integers(0, 1000))
def test_invariants_under_a_random_caching_prefetching_policy(setup, seed):
    trace, hw, mdl = setup
    result = simulate(trace, hw, mdl, ChaosCache(ChaosCache.Params(seed=seed)))
    check_invariants(result, hw, mdl)


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
    faster = dataclasses.replace(
        hw,
        pcie=dataclasses.replace(hw.pcie, bandwidth=hw.pcie.bandwidth * f_pcie),
        md_link=dataclasses.replace(hw.md_link, bandwidth=hw.md_link.bandwidth * f_md),
    )
    base = simulate(trace, hw, mdl, make_policy(name))
    fast = simulate(trace, faster, mdl, make_policy(name))
    assert fast.totals["total_time"] <= base.totals["total_time"] * (1 + 1e-12)
    assert np.all(fast.per_step["latency"] <= base.per_step["latency"] * (1 + 1e-12))
