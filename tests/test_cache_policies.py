"""HBM caching policies (lru, lfu, least-stale, static-popular): hand-made traces with known
answers, scopes, miss-path rules, compute-near and parameter errors."""

from __future__ import annotations

import numpy as np
import pytest
from engine_traces import hardware, make_trace, model, random_trace

from sim.engine import simulate
from sim.errors import UserError
from sim.hardware import ComputeUnit
from sim.policies import GateView, make_policy
from sim.policies.cache import LruPolicy
from sim.policies.split import SeedSplitParams, seed_h_table

MB = 1e6
TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def one_layer_run(refs: list[int], name: str, slots: int, **params):
    """One layer, one sequence, top-1: the classic paging reference string."""
    trace = make_trace(np.array(refs).reshape(-1, 1, 1, 1), num_experts=max(refs) + 1)
    hw = hardware(capacity=slots * MB, placement="host")
    m = model(max(refs) + 1, 1, MB)
    return simulate(trace, hw, m, make_policy(name, {"miss_path": "pcie", **params}))


def test_lru_hit_sequence_on_the_textbook_string() -> None:
    run = one_layer_run(TEXTBOOK, "lru", slots=3)
    hits = np.flatnonzero(run.per_layer["hits"]) + 1  # 1-based positions, worked by hand
    assert hits.tolist() == [5, 7, 12, 13, 15, 17, 19, 20]
    assert run.totals["misses"] == 12
    assert run.links["pcie"]["transfers"] == 12


def test_lfu_keeps_the_frequent_expert() -> None:
    refs = [0, 0, 0, 1, 2, 1, 2]
    # LFU keeps 0 (3 uses) and thrashes 1/2; LRU drops 0 and keeps 1 and 2
    assert one_layer_run(refs, "lfu", slots=2).per_layer["hits"].tolist() == [0, 1, 1, 0, 0, 0, 0]
    assert one_layer_run(refs, "lru", slots=2).per_layer["hits"].tolist() == [0, 1, 1, 0, 0, 1, 1]


def cyclic_trace(steps: int, layers: int = 3):
    """Every gate uses expert 0 of its layer: a loop over ``layers`` items."""
    return make_trace(np.zeros((steps, layers, 1, 1), dtype=int), num_experts=2)


def test_least_stale_beats_lru_on_the_layer_loop() -> None:
    # 3 items visited cyclically, 2 global slots: LRU always evicts the next one (0 hits);
    # least-stale evicts the layer just passed and hits every other gate; belady, which may also
    # bypass, does better still
    trace, hw, m = cyclic_trace(6), hardware(capacity=2 * MB, placement="host"), model(2, 1, MB)
    params = {"scope": "global", "miss_path": "pcie"}
    lru = simulate(trace, hw, m, make_policy("lru", params))
    stale = simulate(trace, hw, m, make_policy("least-stale", params))
    belady = simulate(trace, hw, m, make_policy("belady", params))
    assert lru.totals["hits"] == 0
    assert stale.per_layer["hits"].tolist() == [0, 0, 0] + [1, 0] * 7 + [1]
    assert stale.totals["misses"] == 10
    assert belady.totals["misses"] == 8


def test_static_popular_pins_the_warmup_favourites() -> None:
    refs = [0, 1, 0, 2, 0, 3, 0, 1]
    run = one_layer_run(refs, "static-popular", slots=1, warmup_steps=3)
    assert run.per_layer["hits"].tolist() == [0, 0, 1, 0, 1, 0, 1, 0]
    assert run.per_layer["cache_bytes"].max() == MB


def test_layer_scope_splits_the_slots_per_layer() -> None:
    occupancy: list[np.ndarray] = []

    class Probe(LruPolicy):
        def decide(self, view: GateView):
            occupancy.append(np.isfinite(view.ready_at).sum(axis=1))
            return super().decide(view)

    trace = random_trace(np.random.default_rng(0), steps=8, layers=2, seqs=4, k=2, num_experts=8)
    probe = Probe(LruPolicy.Params(slots=6, scope="layer", miss_path="pcie"))
    run = simulate(trace, hardware(capacity=6 * MB), model(8, 2, MB), probe)
    assert max(int(o.max()) for o in occupancy) == 3
    assert run.per_layer["cache_bytes"].max() <= 6 * MB
    glob = make_policy("lru", {"slots": 6, "scope": "global", "miss_path": "pcie"})
    assert simulate(trace, hardware(capacity=6 * MB), model(8, 2, MB), glob).totals["hits"] > 0


def test_seed_miss_path_splits_only_the_misses() -> None:
    trace = random_trace(np.random.default_rng(1), steps=6, layers=2, seqs=16, k=4, num_experts=32)
    hw, m = hardware(capacity=10 * MB), model(32, 4, MB)
    no_cache = simulate(trace, hw, m, make_policy("lru", {"slots": 0}))
    seed = simulate(trace, hw, m, make_policy("seed-split"))
    for col in ("pcie", "md_fetch", "t_end"):
        np.testing.assert_array_equal(no_cache.per_layer[col], seed.per_layer[col])
    cached = simulate(trace, hw, m, make_policy("lru", {"slots": 10}))
    misses = cached.per_layer["active"] - cached.per_layer["hits"]
    h = seed_h_table(SeedSplitParams(), hw, 32)
    np.testing.assert_array_equal(cached.per_layer["pcie"], h[misses])
    np.testing.assert_array_equal(cached.per_layer["md_fetch"], misses - h[misses])
    assert cached.totals["hits"] > 0


def test_compute_near_moves_small_misses_to_the_host() -> None:
    # one token per expert: the host computes it in 1 us, PCIe moves its weights in 1 ms
    trace = make_trace(np.arange(8).reshape(2, 1, 4, 1), num_experts=8)
    fast = ComputeUnit(memory_bandwidth=1e12, peak_flops=1e13)
    hw = hardware(pcie_bw=1e9, placement="host", host_compute=fast, capacity=2 * MB)
    m = model(8, 1, MB)
    params = {"miss_path": "pcie", "compute_near": True}
    near = simulate(trace, hw, m, make_policy("lru", params))
    assert near.per_layer["host"].tolist() == [4, 4]
    assert near.links["pcie"]["bytes"] < MB
    plain = simulate(trace, hw, m, make_policy("lru", {"miss_path": "pcie"}))
    assert plain.per_layer["host"].sum() == 0
    assert near.totals["mean_step"] < plain.totals["mean_step"]
    # near-data mode: a miss the rule sends over PCIe may run next to the MD pool instead
    near_hw = hardware(pcie_bw=1e9, md_mode="near-data", md_compute=fast, capacity=2 * MB)
    md_run = simulate(trace, near_hw, m, make_policy("lru", params))
    assert md_run.per_layer["md_near"].tolist() == [4, 4]
    slow = ComputeUnit(memory_bandwidth=1e6, peak_flops=1e6)  # 1 s per expert: fetch instead
    hw_slow = hardware(pcie_bw=1e9, placement="host", host_compute=slow, capacity=2 * MB)
    assert simulate(trace, hw_slow, m, make_policy("lru", params)).per_layer["host"].sum() == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"scope": "row"},
            r"^policies\[0\]\.params\.scope: expected one of 'layer' or 'global', got 'row'$",
        ),
        ({"miss_path": "x"}, r"miss_path: expected one of 'seed', 'balanced', 'pcie' or 'md'"),
        ({"slots": 2, "capacity_bytes": 1e6}, r"expected at most one, got both"),
        ({"slots": -1}, r"slots: expected >= 0"),
        ({"slots": "4"}, r"slots: expected an integer, got '4'"),
        ({"slots": True}, r"slots: expected an integer, got True"),
        ({"compute_near": 1}, r"compute_near: expected true or false, got 1"),
        ({"colour": 1}, r"colour: unknown parameter"),
    ],
)
def test_bad_parameters_are_one_line_user_errors(params, message) -> None:
    with pytest.raises(UserError, match=message):
        make_policy("lru", params, where="policies[0].params")


def test_bind_checks_capacity_and_paths() -> None:
    trace = make_trace(np.zeros((2, 1, 1, 1), dtype=int), num_experts=2)
    m = model(2, 1, MB)
    with pytest.raises(UserError, match=r"expected at most 2 experts .* got 5"):
        simulate(trace, hardware(capacity=2 * MB), m, make_policy("lru", {"slots": 5}))
    with pytest.raises(UserError, match=r"miss_path: .* got 'seed' \(MD_FETCH impossible"):
        simulate(trace, hardware(placement="host"), m, make_policy("lfu"))
    with pytest.raises(UserError, match=r"compute_near needs"):
        simulate(trace, hardware(), m, make_policy("lru", {"compute_near": True}))
    with pytest.raises(UserError, match=r"warmup_steps: expected at most the trace's 2 steps"):
        simulate(trace, hardware(), m, make_policy("static-popular", {"warmup_steps": 3}))


def test_capacity_in_bytes() -> None:
    trace = make_trace(np.array(TEXTBOOK).reshape(-1, 1, 1, 1), num_experts=8)
    hw, m = hardware(capacity=10 * MB, placement="host"), model(8, 1, MB)
    by_bytes = make_policy("lru", {"capacity_bytes": 3.5 * MB, "miss_path": "pcie"})
    assert simulate(trace, hw, m, by_bytes).totals["misses"] == 12
