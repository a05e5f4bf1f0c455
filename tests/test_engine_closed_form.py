"""The engine equals the numpy closed form for stateless policies (rtol 1e-12)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from engine_traces import GB, hardware, model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import simulate
from sim.engine.closed_form import stateless_layer_times
from sim.hardware import ComputeUnit
from sim.policies import GateDecision, GateView, Path, Policy, make_policy
from sim.policies.split import SeedSplitParams, seed_split_plan, single_path_plan

RTOL = 1e-12
COLUMNS = ("t_start", "t_gate", "t_end", "transfer_window", "layer_time", "stall")


@dataclass(frozen=True)
class _PlanParams:
    pass


class PlanPolicy(Policy):
    """Replays a whole-trace plan ``[steps, layers, E]`` of paths by expert id."""

    name = "plan"
    Params = _PlanParams

    def __init__(self, plan: np.ndarray) -> None:
        super().__init__()
        self.plan = plan

    def decide(self, view: GateView) -> GateDecision:
        return GateDecision(paths=self.plan[view.step, view.layer, view.experts])


def assert_matches(result, times) -> None:
    for col in COLUMNS:
        expected = getattr(times, col).ravel()
        # a stall is a difference (layer time minus compute, each summed in its own order
        # here and there): its rounding is relative to the layer, not to itself
        atol = RTOL * float(times.layer_time.max(initial=0.0)) if col == "stall" else 0.0
        np.testing.assert_allclose(
            result.per_layer[col], expected, rtol=RTOL, atol=atol, err_msg=col
        )
    np.testing.assert_array_equal(result.per_layer["bytes_pcie"], times.bytes_pcie.ravel())
    np.testing.assert_allclose(result.per_layer["bytes_md"], times.bytes_md.ravel(), rtol=RTOL)
    np.testing.assert_allclose(result.per_step["latency"], times.latency, rtol=RTOL)
    np.testing.assert_allclose(result.per_step["compute_only"], times.compute_only, rtol=RTOL)


@st.composite
def scenarios(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    num_experts = draw(st.integers(2, 24))
    k = draw(st.integers(1, min(4, num_experts)))
    trace = random_trace(
        rng,
        steps=draw(st.integers(1, 5)),
        layers=draw(st.integers(1, 4)),
        seqs=draw(st.integers(1, 12)),
        k=k,
        num_experts=num_experts,
        skew=draw(st.floats(0.0, 2.0)),
    )
    near = draw(st.booleans())
    bw = st.floats(1.0, 1000.0)
    hw = hardware(
        pcie_bw=draw(bw) * GB,
        md_bw=draw(bw) * GB,
        pcie_latency=draw(st.sampled_from([0.0, 1e-6, 1e-5, 3e-4])),
        md_latency=draw(st.sampled_from([0.0, 2e-6, 5e-5])),
        pcie_channels=draw(st.integers(1, 4)),
        md_channels=draw(st.integers(1, 4)),
        non_expert=draw(st.sampled_from([0.0, 1e-5, 2.5e-4])),
        expert_start=draw(st.sampled_from(["per-expert", "layer"])),
        md_mode="near-data" if near else "fetch",
        md_compute=ComputeUnit(draw(bw) * GB, draw(st.floats(1e11, 1e15))) if near else None,
        hbm_bw=draw(st.floats(50.0, 5000.0)) * GB,
        peak=draw(st.floats(1e12, 1e15)),
    )
    mdl = model(num_experts, k, draw(st.floats(1e5, 5e8)))
    return rng, trace, hw, mdl


@settings(max_examples=60, deadline=None)
@given(scenarios(), st.sampled_from(["seed-split", "gpu-only", "md-only", "random"]))
def test_engine_equals_closed_form(scenario, policy_name):
    rng, trace, hw, mdl = scenario
    counts = trace.expert_token_counts(mdl.top_k)
    md = Path.MD_NEAR if hw.md_mode == "near-data" else Path.MD_FETCH
    if policy_name == "seed-split":
        params = SeedSplitParams(
            alpha=float(rng.choice([0.5, 1.0, 3.0])),
            rounding=str(rng.choice(["nearest", "ceil"])),
            order=str(rng.choice(["tokens", "id"])),
        )
        chosen = {"alpha": params.alpha, "rounding": params.rounding, "order": params.order}
        policy = make_policy("seed-split", chosen)
        plan = seed_split_plan(counts, hw, params)
    elif policy_name == "gpu-only":
        policy, plan = make_policy("gpu-only"), single_path_plan(counts, Path.PCIE)
    elif policy_name == "md-only":
        policy, plan = make_policy("md-only"), single_path_plan(counts, md)
    else:
        plan = np.where(rng.random(counts.shape) < 0.5, Path.PCIE, md).astype(np.int8)
        policy = PlanPolicy(plan)
    result = simulate(trace, hw, mdl, policy)
    assert_matches(result, stateless_layer_times(counts, plan, hw, mdl))


def test_closed_form_of_a_full_size_trace():
    """One capture's worth (2048 steps x 8 layers x 64 seqs, top-6) would be the benchmark;
    here a quarter of it, under the seed split, in both MD modes."""
    rng = np.random.default_rng(7)
    trace = random_trace(rng, steps=96, layers=8, seqs=64, k=6, num_experts=64)
    mdl = model()
    for hw in (
        hardware(pcie_latency=1e-5, md_latency=3e-6, md_channels=2, non_expert=2e-4),
        # a constant non-expert time with gpu.layer_overhead on top (charged in both)
        hardware(non_expert=2e-4, layer_overhead=3e-5),
        hardware(md_mode="near-data", md_compute=ComputeUnit(500 * GB, 50e12), md_latency=2e-6),
    ):
        counts = trace.expert_token_counts(6)
        result = simulate(trace, hw, mdl, make_policy("seed-split"))
        assert_matches(result, stateless_layer_times(counts, seed_split_plan(counts, hw), hw, mdl))


def test_closed_form_rejects_what_it_does_not_model():
    counts = np.ones((1, 1, 4), dtype=np.int32)
    with pytest.raises(ValueError, match="PCIE, MD_FETCH and MD_NEAR"):
        stateless_layer_times(counts, np.full((1, 1, 4), Path.HOST), hardware(), model(4, 1))
