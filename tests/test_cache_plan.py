"""Caches planned many gates at once (`Policy.plan_cache`) equal the same caches gate by gate.

`CachePolicy.plan_cache` repeats ``decide`` for whole blocks of gates and the engine times them
in closed form; ``decide`` at every gate stays the reference. A subclass of a planned cache is
never planned (`PLANNED_CACHES` lists the classes themselves), which gives the gate-by-gate run
of the very same rules to compare with: every column, link figure and total must be the same
float, and the policy must end in the same state.
"""

from __future__ import annotations

import numpy as np
import pytest
from engine_traces import GB, hardware, model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import simulate
from sim.hardware import ComputeUnit
from sim.policies import make_policy
from sim.policies.cache import PLANNED_CACHES, CachePolicy, _PlanState

PLANNED = ("lru", "lfu", "least-stale", "static-popular")


def gate_by_gate(policy: CachePolicy) -> CachePolicy:
    """The same policy, never planned: a subclass is not in `PLANNED_CACHES`."""
    slow = type(f"GateByGate{type(policy).__name__}", (type(policy),), {})(policy.params)
    assert type(slow) not in PLANNED_CACHES
    return slow


def assert_same_run(fast, slow) -> None:
    for table in ("per_layer", "per_step"):
        a, b = getattr(fast, table), getattr(slow, table)
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{table}.{name}")
            assert a[name].dtype == b[name].dtype, name
    assert fast.links == slow.links
    assert fast.link_usage.keys() == slow.link_usage.keys()
    for name, rows in fast.link_usage.items():
        np.testing.assert_array_equal(rows, slow.link_usage[name], err_msg=name)
    assert fast.totals.keys() == slow.totals.keys()
    for key, value in fast.totals.items():
        assert value == slow.totals[key] or (
            value != value and slow.totals[key] != slow.totals[key]
        ), key


def assert_same_state(fast: CachePolicy, slow: CachePolicy) -> None:
    np.testing.assert_array_equal(fast.last_use, slow.last_use)
    np.testing.assert_array_equal(fast.uses, slow.uses)
    assert fast.gate == slow.gate


def planned_calls(monkeypatch) -> dict[str, int]:
    """Counts plan_cache calls and gates that ranked with their own keys (ties included)."""
    calls = {"plans": 0, "ranked": 0}
    plan, keys = CachePolicy._plan_cache, _PlanState.keys

    def counting_plan(self, *args):
        calls["plans"] += 1
        return plan(self, *args)

    def counting_keys(self, row):
        calls["ranked"] += 1
        return keys(self, row)

    monkeypatch.setattr(CachePolicy, "_plan_cache", counting_plan)
    monkeypatch.setattr(_PlanState, "keys", counting_keys)
    return calls


@st.composite
def cases(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num_experts = draw(st.integers(2, 24))
    k = draw(st.integers(1, min(4, num_experts)))
    layers = draw(st.integers(1, 4))
    trace = random_trace(
        rng,
        steps=draw(st.integers(1, 40)),
        layers=layers,
        seqs=draw(st.integers(1, 8)),
        k=k,
        num_experts=num_experts,
        skew=draw(st.floats(0.0, 2.0)),
    )
    expert_bytes = draw(st.floats(1e5, 5e8))
    placement = draw(st.sampled_from(["both", "both", "host"]))
    hw = hardware(
        pcie_bw=draw(st.floats(1.0, 1000.0)) * GB,
        md_bw=draw(st.floats(1.0, 1000.0)) * GB,
        pcie_latency=draw(st.sampled_from([0.0, 1e-5, 3e-4])),
        md_latency=draw(st.sampled_from([0.0, 2e-6])),
        pcie_channels=draw(st.integers(1, 4)),
        md_channels=draw(st.integers(1, 4)),
        capacity=draw(st.integers(0, num_experts * layers)) * expert_bytes,
        non_expert=draw(st.sampled_from([0.0, 1e-5, 2.5e-4])),
        expert_start=draw(st.sampled_from(["per-expert", "layer"])),
        placement=placement,
    )
    name = draw(st.sampled_from(PLANNED))
    params = {
        "scope": draw(st.sampled_from(["layer", "global"])),
        "miss_path": "pcie"
        if placement == "host"
        else draw(st.sampled_from(["seed", "pcie", "md"])),
    }
    return trace, hw, model(num_experts, k, expert_bytes), name, params


@settings(max_examples=120, deadline=None)
@given(cases())
def test_planned_caches_equal_their_gate_by_gate_runs(case):
    trace, hw, mdl, name, params = case
    fast = make_policy(name, params)
    slow = gate_by_gate(fast)
    assert_same_run(simulate(trace, hw, mdl, fast), simulate(trace, hw, mdl, slow))
    assert fast.plan_cache is not None
    assert_same_state(fast, slow)


@pytest.mark.parametrize("name", PLANNED)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_partial_evictions_with_tied_keys_are_ranked_as_decide_ranks_them(monkeypatch, name, scope):
    """Few active experts and roomy partitions: gates evict fewer than they could, often
    among experts last used at the same gate (tied keys), where `np.argpartition`'s order
    decides; those gates rank with their own keys, as `make_room` does."""
    calls = planned_calls(monkeypatch)
    trace = random_trace(np.random.default_rng(5), steps=300, layers=3, seqs=1, k=2, num_experts=16)
    hw, mdl = hardware(capacity=18 * 1e6, md_channels=2), model(16, 2, 1e6)
    fast = make_policy(name, {"scope": scope})
    slow = gate_by_gate(fast)
    assert_same_run(simulate(trace, hw, mdl, fast), simulate(trace, hw, mdl, slow))
    assert_same_state(fast, slow)
    assert calls["plans"] > 0
    if name != "static-popular":  # it never evicts (it keeps only what it pinned)
        assert calls["ranked"] > 0


def test_the_plan_is_used_and_decide_is_not(monkeypatch):
    """With the plan every gate of a lockstep run is planned: decide is never called."""
    calls = planned_calls(monkeypatch)
    trace = random_trace(np.random.default_rng(2), steps=200, layers=4, seqs=8, k=3, num_experts=16)
    hw, mdl = hardware(capacity=24 * 1e6, md_channels=2), model(16, 3, 1e6)
    policy = make_policy("lru")

    def refuse(view):
        raise AssertionError("decide() called")

    policy.decide = refuse
    simulate(trace, hw, mdl, policy)
    assert calls["plans"] == 1  # 200 iterations of 4 gates: one block (BLOCK_GATES 1024)


@pytest.mark.parametrize(
    ("params", "hw_kwargs"),
    [
        ({"miss_path": "balanced"}, {}),  # reads the links' queues
        ({"compute_near": True}, {"host_compute": ComputeUnit(100 * GB, 1e12)}),  # the clock
        ({"writeback": True}, {}),  # writebacks outlive the layer
        ({}, {"md_mode": "near-data", "md_compute": ComputeUnit(500 * GB, 5e13)}),  # near data
    ],
)
def test_caches_that_read_time_are_not_planned(params, hw_kwargs):
    trace = random_trace(np.random.default_rng(1), steps=20, layers=2, seqs=4, k=2, num_experts=8)
    hw, mdl = hardware(capacity=6 * 1e6, **hw_kwargs), model(8, 2, 1e6)
    policy = make_policy("lru", params)
    simulate(trace, hw, mdl, policy)
    assert policy.plan_cache is None


def test_a_timeline_window_is_run_gate_by_gate_and_the_rest_planned(monkeypatch):
    calls = planned_calls(monkeypatch)
    trace = random_trace(np.random.default_rng(3), steps=60, layers=3, seqs=6, k=2, num_experts=12)
    hw, mdl = hardware(capacity=12 * 1e6, pcie_channels=2), model(12, 2, 1e6)
    fast = make_policy("lfu")
    window = (20, 23)
    run = simulate(trace, hw, mdl, fast, timeline=window)
    slow = simulate(trace, hw, mdl, gate_by_gate(fast), timeline=window)
    assert_same_run(run, slow)
    assert run.timeline == slow.timeline and run.timeline
    # a block holding the window is run iteration by iteration, the others each planned
    assert calls["plans"] == 60 - 3
