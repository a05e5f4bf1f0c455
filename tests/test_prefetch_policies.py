"""Prefetch policies: oracle, co-activation predictor (precision/recall), synthetic predictor."""

from __future__ import annotations

import numpy as np
import pytest
from engine_traces import hardware, make_trace, model, random_trace

from sim.engine import simulate
from sim.errors import UserError
from sim.hardware import ComputeUnit
from sim.policies import make_policy
from sim.policies.prefetch import coactivation_model

MB = 1e6


def prefetched(run) -> int:
    return int(run.per_layer["prefetch_pcie"].sum() + run.per_layer["prefetch_md"].sum())


def small_case(seed: int = 0, steps: int = 12):
    trace = random_trace(np.random.default_rng(seed), steps, layers=3, seqs=2, k=2, num_experts=8)
    return trace, hardware(capacity=24 * MB), model(8, 2, MB)


def test_oracle_makes_every_gate_after_the_first_a_hit() -> None:
    trace, hw, m = small_case()
    policy = make_policy("prefetch-oracle", {"scope": "global"})
    run = simulate(trace, hw, m, policy)
    first = int(run.per_layer["active"][0])
    assert run.totals["misses"] == first
    assert policy.stats()["precision"] == 1.0 and policy.stats()["recall"] == 1.0
    # prefetches only what is not already cached: transfers = distinct experts ever used
    distinct = int((trace.expert_token_counts(2) > 0).any(axis=0).sum())
    assert prefetched(run) + first == distinct


def test_prefetch_overlaps_transfers_with_compute() -> None:
    # slow compute per layer, and no room to keep anything for long: prefetching hides the fetch
    trace, _, m = small_case()
    hw = hardware(capacity=6 * MB, non_expert=2e-3, pcie_bw=1e9, placement="host")
    lru = simulate(trace, hw, m, make_policy("lru", {"scope": "global", "miss_path": "pcie"}))
    oracle = simulate(
        trace, hw, m, make_policy("prefetch-oracle", {"scope": "global", "miss_path": "pcie"})
    )
    assert oracle.totals["mean_step"] < lru.totals["mean_step"]
    assert oracle.per_layer["cache_bytes"].max() <= 6 * MB


def test_synthetic_perfect_predictor_equals_the_oracle() -> None:
    trace, hw, m = small_case(1)
    oracle = simulate(trace, hw, m, make_policy("prefetch-oracle"))
    perfect = make_policy("prefetch-synthetic", {"precision": 1.0, "recall": 1.0})
    run = simulate(trace, hw, m, perfect)
    np.testing.assert_array_equal(run.per_layer["hits"], oracle.per_layer["hits"])
    assert perfect.stats()["precision"] == 1.0


def test_synthetic_predictor_hits_its_accuracy_and_pays_for_mistakes() -> None:
    trace = random_trace(np.random.default_rng(2), 60, layers=4, seqs=4, k=2, num_experts=32)
    hw, m = hardware(capacity=64 * MB), model(32, 2, MB)
    noisy = make_policy("prefetch-synthetic", {"precision": 0.5, "recall": 0.6})
    run = simulate(trace, hw, m, noisy, seed=7)
    stats = noisy.stats()
    assert stats["precision"] == pytest.approx(0.5, abs=0.06)
    assert stats["recall"] == pytest.approx(0.6, abs=0.06)
    good = make_policy("prefetch-synthetic", {"precision": 1.0, "recall": 0.6})
    good_run = simulate(trace, hw, m, good, seed=7)
    # the false positives cost link time and bytes
    assert prefetched(run) > prefetched(good_run)
    assert (
        run.totals["bytes_pcie"] + run.totals["bytes_md"]
        > good_run.totals["bytes_pcie"] + (good_run.totals["bytes_md"])
    )
    again = simulate(trace, hw, m, make_policy("prefetch-synthetic", noisy.params.__dict__), seed=7)
    np.testing.assert_array_equal(again.per_layer["hits"], run.per_layer["hits"])


def chain_trace(steps: int):
    """Layer 0 uses expert s % 4, layer 1 expert s % 4 + 4: each gate determines the next."""
    ids = np.zeros((steps, 2, 1, 1), dtype=int)
    ids[:, 0, 0, 0] = np.arange(steps) % 4
    ids[:, 1, 0, 0] = np.arange(steps) % 4 + 4
    return make_trace(ids, num_experts=8)


def test_predicted_learns_a_deterministic_chain() -> None:
    trace = chain_trace(16)
    cond, expected = coactivation_model(trace.expert_token_counts(1)[:8])
    assert cond[0][1, 5] == 1.0 and cond[1][5, 2] == 1.0 and cond[0][1, 6] == 0.0
    assert expected.tolist() == [1, 1]
    policy = make_policy("prefetch-predicted", {"train_steps": 8, "slots": 2, "scope": "global"})
    run = simulate(trace, hardware(capacity=2 * MB), model(8, 1, MB), policy)
    stats = policy.stats()
    assert stats["precision"] == 1.0 and stats["recall"] == 1.0
    assert stats["train_steps"] == 8
    # no prefetching while learning; afterwards every gate but the first is prefetched
    served = run.per_layer["hits"] + run.per_layer["late_prefetches"]  # in HBM or arriving
    assert served.reshape(16, 2)[8:].ravel()[1:].all()
    assert stats["true_positives"] == 2 * 8 - 1


def test_predicted_reports_imperfect_accuracy_on_random_routing() -> None:
    trace = random_trace(np.random.default_rng(4), 40, layers=3, seqs=4, k=2, num_experts=16)
    policy = make_policy("prefetch-predicted", {"train_steps": 20})
    simulate(trace, hardware(capacity=24 * MB), model(16, 2, MB), policy)
    stats = policy.stats()
    assert 0.0 < stats["precision"] < 1.0 and 0.0 < stats["recall"] < 1.0


def test_prefetch_parameter_and_scenario_errors() -> None:
    trace, _, m = small_case()
    with pytest.raises(UserError, match=r"train_steps: expected fewer than the trace's 12 steps"):
        simulate(
            trace,
            hardware(capacity=4 * MB),
            m,
            make_policy("prefetch-predicted", {"train_steps": 12}),
        )
    with pytest.raises(UserError, match=r"lookahead: expected 1 for prefetch-predicted"):
        make_policy("prefetch-predicted", {"lookahead": 2})
    with pytest.raises(UserError, match=r"precision: expected 0 < p <= 1"):
        make_policy("prefetch-synthetic", {"precision": 0.0})
    unit = ComputeUnit(memory_bandwidth=1e11, peak_flops=1e13)
    near = hardware(capacity=4 * MB, md_mode="near-data", placement="md", md_compute=unit)
    with pytest.raises(UserError, match=r"link: expected one of the links .* \(none\)"):
        simulate(trace, near, m, make_policy("prefetch-oracle", {"miss_path": "md"}))
    host = hardware(capacity=4 * MB, placement="host")
    with pytest.raises(UserError, match=r"\(pcie\), got 'md_link'"):
        simulate(
            trace, host, m, make_policy("prefetch-oracle", {"link": "md_link", "miss_path": "pcie"})
        )


def test_lookahead_two_prefetches_two_gates_ahead() -> None:
    trace, hw, m = small_case(3)
    policy = make_policy("prefetch-oracle", {"lookahead": 2, "scope": "global"})
    run = simulate(trace, hw, m, policy)
    active = run.per_layer["active"]
    assert run.totals["misses"] == active[0] + active[1]


def test_predicted_learns_online_exactly_what_the_training_rows_give() -> None:
    """Learned gate by gate as the run goes (never reading ahead), the model equals the one
    `coactivation_model` computes from the training rows at once."""
    trace = random_trace(np.random.default_rng(7), 30, layers=3, seqs=4, k=2, num_experts=16)
    policy = make_policy("prefetch-predicted", {"train_steps": 12})
    simulate(trace, hardware(capacity=24 * MB), model(16, 2, MB), policy)
    cond, expected = coactivation_model(trace.expert_token_counts(2)[:12])
    assert np.array_equal(policy.cond, cond) and np.array_equal(policy.expected, expected)
