"""`stall`: the time a layer's experts wait for data, measured from the compute of the copies
the gate used, where it ran them (sim.engine.results.stall_split). Never negative, also when
reduced-precision copies or a near-data unit compute faster than the native GPU would.

Before this definition the reference was the native all-in-HBM GPU compute, so these runs
reported negative stalls (issue 22's policies; near-data units faster than the GPU)."""

from __future__ import annotations

import numpy as np
from engine_traces import hardware, make_trace
from hypothesis import given, settings
from hypothesis import strategies as st
from test_precision import INT2_BYTES, NATIVE, hw, model, scored_trace

from sim.engine import simulate
from sim.hardware import ComputeUnit
from sim.policies import make_policy

GB = 1e9
TB = 2.0**40  # bytes/s ("1 TB/s"): a power of two, so the figures below are exact
ONE_TOKEN_TWO_EXPERTS = make_trace([[[[0, 1]]]], 8)


def test_a_quantised_run_stalls_for_what_its_int2_copies_wait_for():
    """Two int2 experts over PCIe at 1 TB/s into HBM read at 1 TB/s, compute memory-bound:
    each copy takes d = INT2_BYTES / 1 TB/s to move and d to compute. Arrivals at d and 2d,
    compute d-2d and 2d-3d: the layer lasts 3d, of which 2d compute and d stall (waiting for
    the first copy). The native all-in-HBM reference, 2 x NATIVE / 1 TB/s = 12.8 d, would
    make it -9.8 d."""
    h = hw(pcie_bw=TB, hbm_bw=TB, copies={"host": ("bf16", "int2"), "md": ("bf16", "int2")})
    policy = make_policy("quantised-all", {"policy": "gpu-only", "precision": "int2"})
    run = simulate(ONE_TOKEN_TWO_EXPERTS, h, model(), policy)
    d = INT2_BYTES / TB
    assert run.per_layer["t_end"][0] == 3 * d
    assert run.per_layer["stall"][0] == d
    assert run.per_step["compute_only"][0] == 2 * d
    assert run.totals["stall"] == d
    assert run.per_layer["t_end"][0] < 2 * NATIVE / TB  # the old reference: longer than the run


def test_a_near_data_unit_faster_than_the_gpu_stalls_only_for_its_activations():
    """md-only in near-data mode on a unit reading at 4 TB/s (the GPU's HBM: 1 TB/s): the two
    experts compute there in 2 x NATIVE / 4 TB/s; the stall is the activations' trip, out
    and back (the token's hidden state once per expert, each way, at 1 TB/s)."""
    h = hardware(md_bw=TB, hbm_bw=TB, md_mode="near-data", md_compute=ComputeUnit(4 * TB, 989e12))
    m = model()
    run = simulate(ONE_TOKEN_TWO_EXPERTS, h, m, make_policy("md-only"))
    compute = 2 * NATIVE / (4 * TB)
    trip = 2 * (2 * m.activation_bytes_per_token / TB)
    assert run.per_step["compute_only"][0] == compute
    np.testing.assert_allclose(run.per_layer["stall"][0], trip, rtol=1e-12)
    np.testing.assert_allclose(run.per_layer["t_end"][0], compute + trip, rtol=1e-12)


@st.composite
def mixed_runs(draw):
    """Issue 22's policies over timing-free underlying ones, copies of every size, HBM from
    slower to faster than the links, sometimes a near-data unit or a host CPU."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    trace = scored_trace(
        rng,
        steps=draw(st.integers(1, 3)),
        layers=draw(st.integers(1, 2)),
        seqs=draw(st.integers(1, 6)),
        k=2,
        num_experts=8,
    )
    near = draw(st.booleans())
    h = hw(
        pcie_bw=draw(st.floats(1.0, 500.0)) * GB,
        md_bw=draw(st.floats(1.0, 500.0)) * GB,
        hbm_bw=draw(st.sampled_from([0.1, 1.0, 3.35])) * TB,
        pcie_channels=draw(st.integers(1, 3)),
        capacity=draw(st.integers(0, 6)) * NATIVE,
        md_mode="near-data" if near else "fetch",
        md_compute=ComputeUnit(draw(st.sampled_from([0.2, 4.0])) * TB, 1e14) if near else None,
        copies={"host": ("bf16", "int4", "int2"), "md": ("bf16", "int4", "int2")},
    )
    inner = draw(st.sampled_from(["seed-split", "gpu-only", "md-only", "lru"]))
    name = draw(st.sampled_from(["quantised-all", "low-precision-on-miss", "skip-low-score"]))
    params: dict = {"policy": inner}
    if name == "quantised-all":
        params["precision"] = draw(st.sampled_from(["int4", "int2"]))
    elif name == "low-precision-on-miss":
        params.update(precision="int2", threshold=draw(st.floats(0.0, 1.0)))
    else:
        params["threshold"] = draw(st.floats(0.0, 0.5))
    return trace, h, make_policy(name, params)


@settings(max_examples=40, deadline=None)
@given(mixed_runs())
def test_stall_is_never_negative_and_adds_up_to_the_layer(case):
    trace, h, policy = case
    run = simulate(trace, h, model(), policy, topk=2)
    pl, ps = run.per_layer, run.per_step
    assert np.all(pl["stall"] >= 0.0)
    assert np.all(ps["latency"] >= ps["compute_only"] * (1 - 1e-12))
    # per step: latency = compute_only + the stalls of its layers
    layers = len(trace.layer_ids)
    stalls = pl["stall"].reshape(-1, layers).sum(axis=1)
    np.testing.assert_allclose(
        ps["compute_only"] + stalls, ps["latency"], rtol=1e-12, atol=1e-12 * ps["latency"].max()
    )
