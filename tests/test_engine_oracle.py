"""The engine equals the pre-rewrite engine (tests/oracle_engine) bit for bit.

Random traces, hardware (links, latencies, channels, MD modes, near-data and host compute,
non-expert time, expert start rules, cache sizes) and policies (every registered online
policy with random parameters, the offline bounds, and a chaos policy that exercises every
cache rule): every per-layer and per-step column, the link figures and the totals must be
identical floats, not merely close.
"""

from __future__ import annotations

import re

import numpy as np
import oracle_engine
import pytest
from engine_traces import GB, hardware, model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_properties import ChaosCache

from sim.engine import simulate
from sim.hardware import ComputeUnit
from sim.policies import make_policy
from sim.policies.split import SeedSplit

POLICIES = (
    ("seed-split", {}),
    ("seed-split", {"order": "id", "rounding": "ceil", "alpha": 0.5}),
    ("gpu-only", {}),
    ("md-only", {}),
    ("balanced-split", {}),
    ("lru", {}),
    ("lru", {"scope": "global", "miss_path": "balanced"}),
    ("lfu", {"compute_near": True}),
    ("least-stale", {}),
    ("static-popular", {}),
    ("prefetch-oracle", {}),
    ("prefetch-oracle", {"eviction": "least-stale", "scope": "global", "lookahead": 2}),
    ("prefetch-predicted", {"train_steps": 1}),
    ("prefetch-synthetic", {"precision": 0.7, "recall": 0.6}),
    ("belady", {}),
    ("chaos", {}),
)


# Columns and totals the pre-rewrite engine did not have: the precision proxies (issue 22).
# With every copy native they must say "nothing reduced, nothing degraded, nothing dropped".
PRECISION_COLUMNS = ("reduced", "gate_mass", "degraded_gate_mass", "dropped_gate_mass")
PRECISION_STEP_COLUMNS = ("degraded_gate_mass", "dropped_gate_mass")
PRECISION_TOTALS = ("reduced", "degraded_gate_mass", "dropped_gate_mass")


def assert_identical(new, old, tokens: int | None = None) -> None:
    """Every column, link figure and total of the old engine, bit for bit; the new engine's
    ``gpu`` columns are all 0 (one GPU) and its precision proxies all nothing."""
    assert set(new.per_layer) == set(old.per_layer) | set(PRECISION_COLUMNS) | {"gpu"}
    assert not new.per_layer["gpu"].any() and not new.per_step["gpu"].any()
    for name, column in old.per_layer.items():
        if name == "gate_mass":  # NaN from a source without router scores: checked below
            continue
        np.testing.assert_array_equal(new.per_layer[name], column, err_msg=name)
        assert new.per_layer[name].dtype == column.dtype, name
    for name in PRECISION_COLUMNS:
        if name != "gate_mass":
            assert not new.per_layer[name].any(), name
    if tokens is not None:  # a gate's router mass is its tokens (each token's top-k sum to 1)
        np.testing.assert_allclose(new.per_layer["gate_mass"], tokens, rtol=1e-12)
    assert set(new.per_step) == set(old.per_step) | set(PRECISION_STEP_COLUMNS) | {"gpu"}
    for name, column in old.per_step.items():
        np.testing.assert_array_equal(new.per_step[name], column, err_msg=name)
    for name in PRECISION_STEP_COLUMNS:
        assert not new.per_step[name].any(), name
    assert set(new.links) == set(old.links)
    for name, figures in old.links.items():  # the new engine also reports delays, saturation
        assert {k: new.links[name][k] for k in figures} == figures
    drop = set(PRECISION_TOTALS)
    assert {k: v for k, v in new.totals.items() if k not in drop} == {
        k: v for k, v in old.totals.items() if k not in drop
    }
    assert all(new.totals[k] == 0.0 for k in PRECISION_TOTALS)
    assert new.params == old.params
    if old.timeline is None:
        assert new.timeline is None
    else:
        assert [tuple(e.__dict__.values()) for e in new.timeline] == [
            tuple(e.__dict__.values()) for e in old.timeline
        ]


@st.composite
def runs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num_experts = draw(st.integers(2, 16))
    k = draw(st.integers(1, min(4, num_experts)))
    trace = random_trace(
        rng,
        steps=draw(st.integers(1, 6)),
        layers=draw(st.integers(1, 4)),
        seqs=draw(st.integers(1, 10)),
        k=k,
        num_experts=num_experts,
        skew=draw(st.floats(0.0, 2.0)),
    )
    near = draw(st.booleans())
    bw = st.floats(1.0, 1000.0)
    expert_bytes = draw(st.floats(1e5, 5e8))
    hw = hardware(
        pcie_bw=draw(bw) * GB,
        md_bw=draw(bw) * GB,
        pcie_latency=draw(st.sampled_from([0.0, 1e-6, 1e-5, 3e-4])),
        md_latency=draw(st.sampled_from([0.0, 2e-6, 5e-5])),
        pcie_channels=draw(st.integers(1, 4)),
        md_channels=draw(st.integers(1, 4)),
        capacity=draw(st.integers(0, num_experts * 3)) * expert_bytes,
        non_expert=draw(st.sampled_from([0.0, 1e-5, 2.5e-4])),
        expert_start=draw(st.sampled_from(["per-expert", "layer"])),
        md_mode="near-data" if near else "fetch",
        md_compute=ComputeUnit(draw(bw) * GB, draw(st.floats(1e11, 1e15))) if near else None,
        host_compute=ComputeUnit(draw(bw) * GB, draw(st.floats(1e11, 1e14)))
        if draw(st.booleans())
        else None,
        hbm_bw=draw(st.floats(50.0, 5000.0)) * GB,
        peak=draw(st.floats(1e12, 1e15)),
    )
    mdl = model(num_experts, k, expert_bytes)
    name, params = draw(st.sampled_from(POLICIES))
    timeline = draw(st.sampled_from([False, False, True, (0, 1), (1, 3)]))
    return trace, hw, mdl, name, params, timeline


def _policy(name, params):
    return ChaosCache() if name == "chaos" else make_policy(name, params)


@settings(max_examples=150, deadline=None)
@given(runs())
def test_engine_equals_the_pre_rewrite_engine(run):
    trace, hw, mdl, name, params, timeline = run
    try:
        old = oracle_engine.simulate(trace, hw, mdl, _policy(name, params), timeline=timeline)
    except Exception as err:  # the same error, from the same rule
        with pytest.raises(type(err)) as caught:
            simulate(trace, hw, mdl, _policy(name, params), timeline=timeline)
        assert str(caught.value) == str(err)
        return
    new = simulate(trace, hw, mdl, _policy(name, params), timeline=timeline)
    assert_identical(new, old, trace.num_seqs)


@pytest.mark.parametrize(
    ("name", "hw_kwargs"),
    [
        ("seed-split", {"pcie_channels": 2, "md_channels": 3, "md_latency": 2e-6}),
        ("seed-split", {"expert_start": "layer", "non_expert": 1e-5}),
        ("gpu-only", {"pcie_latency": 1e-5, "pcie_channels": 4}),
        ("md-only", {}),
        ("seed-split", {"md_mode": "near-data", "md_compute": ComputeUnit(500 * GB, 5e13)}),
        ("seed-split", {"placement": "host"}),
    ],
)
def test_long_runs_in_blocks_equal_the_pre_rewrite_engine(name, hw_kwargs):
    """Stateless plans are timed many iterations at once (blocks of ~1024 gates): runs long
    enough for several blocks, and cases the plan cannot take (near data, a blocked path)."""
    trace = random_trace(np.random.default_rng(3), steps=300, layers=5, seqs=8, k=3, num_experts=24)
    hw, mdl = hardware(**hw_kwargs), model(24, 3)
    try:
        old = oracle_engine.simulate(trace, hw, mdl, make_policy(name))
    except Exception as err:
        with pytest.raises(type(err), match=re.escape(str(err))):
            simulate(trace, hw, mdl, make_policy(name))
        return
    assert_identical(simulate(trace, hw, mdl, make_policy(name)), old, trace.num_seqs)


class _PlanOnly(SeedSplit):
    """seed-split that must never be asked gate by gate."""

    def decide(self, view):
        raise AssertionError("decide() called: the stateless plan was not used")


def test_a_stateless_plan_replaces_decide_where_it_applies():
    trace = random_trace(np.random.default_rng(4), steps=40, layers=3, seqs=6, k=2, num_experts=12)
    mdl = model(12, 2)
    simulate(trace, hardware(md_channels=2), mdl, _PlanOnly())  # fetch mode: the plan times it
    for hw in (
        hardware(md_mode="near-data", md_compute=ComputeUnit(500 * GB, 5e13)),  # near data
        hardware(md_channels=2),
    ):
        timeline = hw.md_mode == "fetch"  # a timeline needs every transfer: gate by gate
        with pytest.raises(AssertionError, match="decide"):
            simulate(trace, hw, mdl, _PlanOnly(), timeline=timeline)
