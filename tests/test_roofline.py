"""The non-expert roofline (sim/roofline.py): hand-computed cases, the lockstep helper equal to
the per-iteration function bit for bit, and how scenarios and the engine use it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from engine_traces import hardware, make_trace, model

from sim.engine import simulate
from sim.errors import UserError
from sim.hardware import ModelSpec
from sim.policies import make_policy
from sim.roofline import (
    layer_shape,
    lockstep_non_expert_times,
    missing_dimensions,
    non_expert_time,
    step_non_expert_times,
)
from sim.scenario import load_scenario_trace, run_scenario
from sim.scenario.build import build_model, scenario_from_dict
from sim.scenario.schema import ModelSection
from sim.scenario.table import comparison_notes

# A model small enough to do by hand: attention 2*4*(2+1)*2 = 48 params, router 4*4 = 16,
# one dense layer with FFN 3 (SwiGLU: 3*4*3 = 36), LM head 10*4 = 40, KV 2*1*2 = 4 per token,
# attention FLOPs 4*2*2 = 16 per (token, attended entry).
TINY = ModelSpec(
    "tiny",
    num_experts=4,
    top_k=2,
    expert_bytes=48.0,
    hidden_size=4,
    expert_ffn_size=2,
    num_layers=2,
    moe_layers=1,
    attention_heads=2,
    kv_heads=1,
    head_dim=2,
    dense_ffn_size=3,
    vocab_size=10,
)


def test_layer_shape_by_hand() -> None:
    shape = layer_shape(TINY)
    assert (shape.moe_params, shape.dense_params, shape.head_params) == (64.0, 84.0, 40.0)
    assert (shape.dense_share, shape.head_share) == (1.0, 1.0)
    assert (shape.kv_cache_dim, shape.attention_flops) == (4.0, 16.0)


@pytest.mark.parametrize(
    ("peak", "expected"),
    [
        # memory-bound: attention max(96/8, 11*16/64) = 12; MoE weights max(128/8, 512/64) = 16;
        # dense max(168/8, 672/64) = 21; head max(80/8, 160/64) = 10 -> 28 + 33 + 10
        (64.0, 71.0),
        # compute-bound: attention 176; MoE 512; dense 672; head 160 -> 688 + 848 + 160
        (1.0, 1696.0),
    ],
)
def test_mixed_iteration_by_hand(peak: float, expected: float) -> None:
    # sequence 0 decodes 1 token at KV length 5; sequence 1 prefills 3 tokens (KV 3):
    # 4 tokens, 2 sequences, 1*5 + (3*3 - 3) = 11 attended pairs, 5 + 3 read + 4 written
    # entries = 12 x 4 elements x 2 bytes = 96 bytes of KV
    hw = hardware(hbm_bw=8.0, peak=peak)
    assert non_expert_time(hw, TINY, [1, 3], [5, 3]) == expected
    assert non_expert_time(hw, TINY, [1, 3, 0], [5, 3, 7]) == expected  # idle sequence: free
    assert non_expert_time(hw, TINY, [0, 0], [4, 9]) == 0.0


def test_lockstep_equals_the_iteration_function_bit_for_bit() -> None:
    m, _ = build_model(ModelSection(preset="mixtral-8x7b"))
    hw = hardware(hbm_bw=2.0e12, peak=756e12)
    positions = np.array([0, 1, 7, 255, 2047, 32767])
    for seqs in (1, 8, 64):
        steps = lockstep_non_expert_times(hw, m, seqs, positions)
        for p, value in zip(positions.tolist(), steps.tolist(), strict=True):
            assert value == non_expert_time(hw, m, [1] * seqs, [p + 1] * seqs)
    # a one-token prefill at position 0 costs what the decode step at position 0 costs
    assert non_expert_time(hw, m, [1], [1]) == lockstep_non_expert_times(hw, m, 1, [0])[0]
    # longer contexts read more KV: strictly increasing with the position
    assert np.all(np.diff(lockstep_non_expert_times(hw, m, 8, positions)) > 0)


def test_constant_overrides_the_roofline_and_bad_input_is_refused() -> None:
    m, _ = build_model(ModelSection(preset="flame-moe-290m"))
    assert step_non_expert_times(hardware(non_expert=2e-4), m, 8, [0, 5]).tolist() == [2e-4] * 2
    roof = dataclasses.replace(
        hardware(), gpu=dataclasses.replace(hardware().gpu, non_expert_time=None)
    )
    assert np.all(step_non_expert_times(roof, m, 8, [0, 5]) > 0)
    with pytest.raises(ValueError, match="differ in length"):
        non_expert_time(roof, m, [1, 1], [3])
    with pytest.raises(ValueError, match="new_tokens <= kv_lengths"):
        non_expert_time(roof, m, [4], [3])
    assert missing_dimensions(model()) == (
        "num_layers",
        "moe_layers",
        "attention_heads",
        "kv_heads",
        "head_dim",
        "vocab_size",
    )
    with pytest.raises(UserError, match=r"model\.num_layers: required for the non-expert roofline"):
        step_non_expert_times(roof, model(), 8, [0])


def test_engine_waits_the_per_step_roofline_before_each_gate() -> None:
    trace = make_trace([[[[0], [1]]], [[[2], [3]]]], num_experts=4)
    trace = dataclasses.replace(trace, positions=(10, 500))
    m = dataclasses.replace(TINY, expert_bytes=1e6)
    hw = hardware()
    roof = dataclasses.replace(hw, gpu=dataclasses.replace(hw.gpu, non_expert_time=None))
    r = simulate(trace, roof, m, make_policy("gpu-only"))
    expected = lockstep_non_expert_times(roof, m, 2, [10, 500])
    np.testing.assert_array_equal(r.per_step["non_expert"], expected)
    np.testing.assert_allclose(r.per_layer["t_gate"] - r.per_layer["t_start"], expected)
    assert r.totals["non_expert_time"] == pytest.approx(expected.mean())
    constant = simulate(trace, hw, m, make_policy("gpu-only"))  # 0 s given explicitly
    assert constant.totals["non_expert_time"] == 0.0
    assert r.totals["mean_step"] == pytest.approx(constant.totals["mean_step"] + expected.mean())


SCENARIO = {
    "trace": {
        "synthetic": {"num_seqs": 2, "seq_len": 4, "layer_ids": "2-3", "num_experts": 8, "topk": 2}
    },
    "model": {"preset": "mixtral-8x7b"},
    "hardware": {"preset": "h100-pcie5-cxl"},
    "policies": ["seed-split"],
}


def test_scenarios_default_to_the_roofline_and_warn_at_zero() -> None:
    scenario = scenario_from_dict(SCENARIO)
    assert scenario.hardware.gpu.non_expert_time is None
    assert scenario.resolved_dict()["hardware"]["gpu"]["non_expert_time"] == "roofline"
    trace = load_scenario_trace(scenario)
    (result,) = run_scenario(scenario, trace, progress=False)
    expected = lockstep_non_expert_times(scenario.hardware, scenario.model, 2, trace.positions)
    np.testing.assert_array_equal(result.per_step["non_expert"], expected)
    assert not any("non-expert time is 0" in n for n in comparison_notes(scenario, [result]))

    zero = {**SCENARIO, "hardware": {"preset": "h100-pcie5-cxl", "gpu": {"non_expert_time": 0}}}
    scenario = scenario_from_dict(zero)
    (result,) = run_scenario(scenario, trace, progress=False)
    assert any("warning: non-expert time is 0 s" in n for n in comparison_notes(scenario, [result]))

    constant = {
        **SCENARIO,
        "hardware": {"preset": "h100-pcie5-cxl", "gpu": {"non_expert_time": "200 us"}},
    }
    assert scenario_from_dict(constant).hardware.gpu.non_expert_time == pytest.approx(2e-4)
    bad = {**SCENARIO, "hardware": {"preset": "h100-pcie5-cxl", "gpu": {"non_expert_time": "soon"}}}
    with pytest.raises(UserError, match="non_expert_time: expected 'roofline' or a duration"):
        scenario_from_dict(bad)
    no_dims = {**SCENARIO, "model": {"preset": "mixtral-8x7b", "vocab_size": None}}
    assert scenario_from_dict(no_dims).model.vocab_size == 32000  # null = not given
    too_many = {**SCENARIO, "model": {"preset": "mixtral-8x7b", "moe_layers": 40}}
    with pytest.raises(UserError, match=r"model.moe_layers: expected at most num_layers \(32\)"):
        scenario_from_dict(too_many)
