"""The engine equals the pre-rewrite engine (tests/oracle_engine) bit for bit.

Random traces, hardware (links, latencies, channels, MD modes, near-data and host compute,
non-expert time, expert start rules, cache sizes) and policies (every registered online
policy with random parameters, the offline bounds, and a chaos policy that exercises every
cache rule): every per-layer and per-step column, the link figures and the totals must be
identical floats, not merely close.
"""

from __future__ import annotations

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


def assert_identical(new, old) -> None:
    assert set(new.per_layer) == set(old.per_layer)
    for name, column in old.per_layer.items():
        np.testing.assert_array_equal(new.per_layer[name], column, err_msg=name)
        assert new.per_layer[name].dtype == column.dtype, name
    for name, column in old.per_step.items():
        np.testing.assert_array_equal(new.per_step[name], column, err_msg=name)
    assert new.links == old.links
    assert new.totals == old.totals
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
    return trace, hw, mdl, name, params, draw(st.booleans())


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
    assert_identical(new, old)
