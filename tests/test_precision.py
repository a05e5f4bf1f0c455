"""Expert precisions (issue 22): copy sizes, where copies live, and the engine moving and caching
copies of different sizes; `quantised-all`.

Hand-computed cases: every number below is worked out from the formulas in docs/engine.md
("Precision") and compared exactly (or to 1e-12 where floats are summed in another order)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from engine_traces import GB, hardware, make_trace, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.contract import GateDecision, Path, PolicyError
from sim.engine import simulate
from sim.engine.cost import RooflineCost
from sim.errors import UserError
from sim.hardware import ModelSpec, Precision
from sim.policies import Policy, make_policy
from sim.precision import copy_sizes, default_copies, expert_bytes_for_cache, tier_copies
from sim.scenario import load_scenario
from sim.scenario.build import scenario_from_dict

# 3 x 1024 x 704 = 2,162,688 weights per expert: 16,896 groups of 128, 33,792 groups of 64
PARAMS = 3 * 1024 * 704
INT4 = Precision("int4", bits=4, group_size=128, scale_bits=16, dequant_ops=2)
INT2 = Precision("int2", bits=2, group_size=64, scale_bits=32)
INT4_BYTES = PARAMS * 4 / 8 + 16_896 * 2  # 1,115,136
INT2_BYTES = PARAMS * 2 / 8 + 33_792 * 4  # 675,840
NATIVE = 2 * PARAMS  # bf16: 4,325,376


def model(num_experts: int = 8, top_k: int = 2) -> ModelSpec:
    return ModelSpec(
        "test",
        num_experts=num_experts,
        top_k=top_k,
        expert_bytes=float(NATIVE),
        precisions=(INT4, INT2),
    )


def copies(**tiers: tuple[str, ...]) -> dict:
    return {"copies": tiers}


def hw(**kwargs):
    tiers = kwargs.pop("copies", {})
    return dataclasses.replace(hardware(**kwargs), copies=tiers)


# -- sizes -----------------------------------------------------------------------------------
def test_copy_bytes_by_hand():
    assert INT4.copy_bytes(PARAMS) == INT4_BYTES == 1_115_136
    assert INT2.copy_bytes(PARAMS) == INT2_BYTES == 675_840
    assert INT4.bits_per_weight() == 4.125
    # a partial last group still stores its metadata
    assert INT4.copy_bytes(129) == 129 * 0.5 + 2 * 2
    np.testing.assert_array_equal(copy_sizes(model()), [NATIVE, INT4_BYTES, INT2_BYTES])


@pytest.mark.parametrize(
    ("name", "bits_per_weight"),
    [
        ("int4", 4.125),
        ("mxfp4", 4.25),  # OCP MX: 32 x 4 bits + one 8-bit scale
        ("hqq-2bit", 2 + 16.25 / 16),  # mixtral-offloading's HQQ experts
        ("gguf-q4_k_m", 4.84375),
        ("fp8", 8 + 32 / 16384),
    ],
)
def test_shipped_formats_bits_per_weight(name, bits_per_weight):
    scenario = load_scenario("scenarios/default.yaml")
    index = scenario.model.precision_index(name)
    precision = scenario.model.precisions[index - 1]
    assert precision.bits_per_weight() == pytest.approx(bits_per_weight, rel=1e-12)


def test_q4_k_is_four_and_a_half_bits():
    """llama.cpp's Q4_K: 256 weights = 128 B of values + 12 B of 6-bit scales and mins + 2 FP16."""
    q4_k = Precision("q4_k", bits=4, group_size=256, scale_bits=12 * 8 + 2 * 16)
    assert q4_k.bits_per_weight() == 4.5


# -- where copies live ----------------------------------------------------------------------
def test_default_copies_are_native_and_a_tier_defaults_to_its_highest():
    m = model()
    assert tier_copies(hw(), m) == {"host": (0,), "md": (0,)}
    assert default_copies(hw(), m) == {"pcie": 0, "md_link": 0}
    h = hw(copies={"host": ("int2", "bf16"), "md": ("int2", "int4")})
    assert tier_copies(h, m) == {"host": (2, 0), "md": (2, 1)}
    assert default_copies(h, m) == {"pcie": 0, "md_link": 1}
    # a cache slot holds the largest default copy of the tiers in use
    assert expert_bytes_for_cache(h, m) == NATIVE
    only_low = hw(copies={"host": ("int4",), "md": ("int2",)})
    assert expert_bytes_for_cache(only_low, m) == INT4_BYTES
    host_only = hw(placement="host", copies={"host": ("int2",)})
    assert expert_bytes_for_cache(host_only, m) == INT2_BYTES


def _doc(**hardware_fields):
    return {
        "trace": "embedded",
        "hardware": {"preset": "notebook-gbps", **hardware_fields},
        "policies": ["seed-split"],
    }


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"copies": {"md": ["int5"]}},
            "hardware.copies.md[0]: expected one of the model's precisions (bf16, fp8",
        ),
        (
            {"placement": "host", "copies": {"md": "int4"}},
            "hardware.copies.md: expected a tier of placement 'host' (host), got 'md'",
        ),
        (
            {"copies": {"md": ["int4", "int4"]}},
            "hardware.copies.md[1]: expected distinct precisions, got 'int4' again",
        ),
        ({"copies": {"gpu": "int4"}}, "hardware.copies.gpu"),
    ],
)
def test_bad_copies_are_one_line_errors(fields, message):
    with pytest.raises(UserError, match=None) as caught:
        scenario_from_dict(_doc(**fields), "s.yaml")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("model_fields", "message"),
    [
        ({"precisions": ["int9"]}, "model.precisions[0]: expected one of fp8, int8"),
        ({"precisions": [{"bits": 4}]}, "model.precisions[0].name: required, missing"),
        (
            {"precisions": [{"name": "bf16", "bits": 4}]},
            "model.precisions[0]: expected a name other than the native precision 'bf16'",
        ),
        (
            {"precisions": [{"name": "wide", "bits": 16}]},
            "model.precisions[0] (wide): expected fewer bits per weight than the native bf16 "
            "(16), got 16",
        ),
        ({"precisions": ["int4", "int4"]}, "model.precisions[1]: expected distinct names"),
        ({"precisions": [{"name": "x", "bits": -1}]}, "bits: expected a value > 0"),
    ],
)
def test_bad_precisions_are_one_line_errors(model_fields, message):
    doc = {**_doc(), "model": {"preset": "flame-moe-290m", **model_fields}}
    with pytest.raises(UserError) as caught:
        scenario_from_dict(doc, "s.yaml")
    assert message in str(caught.value)


def test_a_scenario_lists_precisions_and_places_copies():
    doc = {
        **_doc(copies={"host": "bf16", "md": ["bf16", "hqq"]}, hbm={"capacity": "10 experts"}),
        "model": {
            "preset": "flame-moe-290m",
            "precisions": [
                "int4",
                {"name": "hqq", "bits": 2, "group_size": 16, "scale_bits": 16.25},
            ],
        },
    }
    scenario = scenario_from_dict(doc, "s.yaml")
    assert scenario.model.precision_names == ("bf16", "int4", "hqq")
    assert scenario.hardware.copies == {"host": ("bf16",), "md": ("bf16", "hqq")}
    assert scenario.hardware.hbm.capacity == 10 * scenario.model.expert_bytes
    # the resolved document reproduces it
    again = scenario_from_dict(scenario.resolved_dict(), "again.yaml")
    assert again.model == scenario.model and again.hardware == scenario.hardware
    # "N experts" counts the copies the tiers hold when every one is smaller than native
    low = scenario_from_dict(
        {**doc, "hardware": {**doc["hardware"], "copies": {"host": "int4", "md": "int4"}}}, "s"
    )
    assert low.hardware.hbm.capacity == 10 * low.model.copy_bytes(1)


# -- the engine moves and caches copies of different sizes -------------------------------------
class AskFor(Policy):
    """Every expert over one path, each in the precision ``ask[expert id]`` (-1: default)."""

    name = "test-ask-for"

    def __init__(self, path: Path, ask: dict[int, int], prefetch=(), prefetch_precision=None):
        super().__init__()
        self.path, self.ask = path, ask
        self.prefetch, self.prefetch_precision = list(prefetch), prefetch_precision

    def decide(self, view):
        precision = np.array([self.ask.get(int(e), -1) for e in view.experts], dtype=np.int64)
        prefetch = self.prefetch if view.step == 0 and view.layer == 0 else []
        return GateDecision(
            paths=np.full(view.experts.size, self.path, dtype=np.int8),
            precision=precision,
            prefetch=prefetch,
            prefetch_precision=self.prefetch_precision if prefetch else None,
        )


def one_gate(experts_per_token, num_experts=8):
    """One step, one layer, one token per row of ``experts_per_token``."""
    return make_trace([[experts_per_token]], num_experts)


def test_bytes_moved_are_the_sum_of_each_copys_size():
    """Six experts over PCIe: two native, two int4, two int2 (one token each)."""
    trace = one_gate([[0, 1], [2, 3], [4, 5]])
    h = hw(pcie_bw=10 * GB, copies={"host": ("bf16", "int4", "int2")})
    policy = AskFor(Path.PCIE, {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2})
    run = simulate(trace, h, model(), policy)
    expected = 2 * NATIVE + 2 * INT4_BYTES + 2 * INT2_BYTES
    assert run.per_layer["bytes_pcie"][0] == expected
    assert run.links["pcie"]["bytes"] == expected
    assert run.totals["bytes_pcie"] == expected
    assert run.per_layer["reduced"][0] == 4
    # one slot, no latency: the transfers take the bytes over the bandwidth, back to back
    assert run.per_layer["transfer_window"][0] == pytest.approx(expected / (10 * GB), rel=1e-12)
    assert run.links["pcie"]["busy"] == pytest.approx(expected / (10 * GB), rel=1e-12)


def test_a_tier_with_only_reduced_copies_moves_them_by_default():
    trace = one_gate([[0, 1], [2, 3]])
    h = hw(copies={"host": ("int4",), "md": ("int2",)})
    run = simulate(trace, h, model(), make_policy("gpu-only"))
    assert run.per_layer["bytes_pcie"][0] == 4 * INT4_BYTES
    assert run.per_layer["reduced"][0] == 4
    run = simulate(trace, h, model(), make_policy("md-only"))
    assert run.per_layer["bytes_md"][0] == 4 * INT2_BYTES


def test_reduced_copies_compute_at_their_own_size_with_dequantisation():
    m = model()
    base = hw(hbm_bw=1e12)
    h = dataclasses.replace(base, gpu=dataclasses.replace(base.gpu, vector_flops=1e12))
    cost = RooflineCost(h, m)
    tokens = np.array([1.0, 1000.0])
    flops = m.flops_per_token
    # native: max(bytes / bw, tokens x flops / peak)
    np.testing.assert_array_equal(
        cost.gpu_time_at(tokens, 0), np.maximum(NATIVE / 1e12, tokens * (flops / h.gpu.peak_flops))
    )
    # int4: its own bytes, and a third roof, params x dequant_ops / vector_flops
    expected = np.maximum(
        np.maximum(INT4_BYTES / 1e12, tokens * (flops / h.gpu.peak_flops)), PARAMS * 2 / 1e12
    )
    np.testing.assert_array_equal(cost.gpu_time_at(tokens, 1), expected)
    # int2 has no dequant_ops: only the smaller read
    np.testing.assert_array_equal(
        cost.gpu_time_at(tokens, 2),
        np.maximum(INT2_BYTES / 1e12, tokens * (flops / h.gpu.peak_flops)),
    )


def test_a_precision_the_tier_lacks_is_a_policy_error():
    trace = one_gate([[0, 1]])
    with pytest.raises(PolicyError, match="chose precision int2 on the PCIE path, but tier host"):
        simulate(trace, hw(copies={"host": ("bf16", "int4")}), model(), AskFor(Path.PCIE, {0: 2}))
    with pytest.raises(PolicyError, match="prefetches in precision int4 over pcie"):
        simulate(
            trace,
            hw(capacity=4 * NATIVE),
            model(),
            AskFor(Path.PCIE, {}, prefetch=[(0, 3, "pcie")], prefetch_precision=1),
        )


def test_the_cache_counts_each_copy_at_its_size():
    """Prefetches of three experts: native, int4, int2; the cache holds their bytes."""
    trace = make_trace([[[[0]]], [[[1]]]], 8)  # two steps, one layer
    h = hw(capacity=NATIVE + INT4_BYTES + INT2_BYTES, copies={"host": ("bf16", "int4", "int2")})
    policy = AskFor(
        Path.PCIE,
        {},
        prefetch=[(0, 5, "pcie"), (0, 6, "pcie"), (0, 7, "pcie")],
        prefetch_precision=np.array([0, 1, 2]),
    )
    run = simulate(trace, h, model(), policy, topk=1)
    assert run.per_layer["cache_bytes"].tolist() == [NATIVE + INT4_BYTES + INT2_BYTES] * 2
    assert run.per_layer["bytes_pcie"][0] == NATIVE + NATIVE + INT4_BYTES + INT2_BYTES
    # one byte less and the same prefetches overflow the cache
    tight = dataclasses.replace(h, hbm=dataclasses.replace(h.hbm, capacity=h.hbm.capacity - 1))
    with pytest.raises(PolicyError, match=r"above hbm\.capacity"):
        simulate(trace, tight, model(), policy, topk=1)


# -- quantised-all ---------------------------------------------------------------------------
def test_quantised_all_moves_every_expert_in_its_precision():
    trace = random_trace(np.random.default_rng(1), steps=5, layers=3, seqs=4, k=2, num_experts=8)
    h = hw(copies={"host": ("bf16", "int4"), "md": ("bf16", "int4")})
    run = simulate(trace, h, model(), make_policy("quantised-all", {"precision": "int4"}))
    base = simulate(trace, h, model(), make_policy("seed-split"))
    # the same split (seed-split underneath), every copy int4
    np.testing.assert_array_equal(run.per_layer["pcie"], base.per_layer["pcie"])
    np.testing.assert_array_equal(run.per_layer["bytes_pcie"], base.per_layer["pcie"] * INT4_BYTES)
    np.testing.assert_array_equal(
        run.per_layer["bytes_md"], base.per_layer["md_fetch"] * INT4_BYTES
    )
    np.testing.assert_array_equal(run.per_layer["reduced"], run.per_layer["active"])
    assert run.totals["mean_step"] < base.totals["mean_step"]


def test_quantised_all_caches_hold_more_experts():
    trace = random_trace(np.random.default_rng(2), steps=8, layers=2, seqs=4, k=2, num_experts=8)
    h = hw(capacity=4 * NATIVE, copies={"host": ("bf16", "int4"), "md": ("bf16", "int4")})
    params = {"policy": "lru", "policy_params": {"scope": "global"}, "precision": "int4"}
    policy = make_policy("quantised-all", params)
    run = simulate(trace, h, model(), policy)
    slots = int(4 * NATIVE // INT4_BYTES)  # 15 int4 experts in the bytes of 4 native ones
    assert policy.partition_slots == slots
    assert run.per_layer["cache_bytes"].max() <= 4 * NATIVE
    assert set(np.unique(run.per_layer["cache_bytes"] / INT4_BYTES)) <= set(range(slots + 1))
    native = simulate(trace, h, model(), make_policy("lru", {"scope": "global"}))
    assert run.totals["hits"] > native.totals["hits"]


def test_quantised_all_in_the_native_precision_is_its_policy():
    trace = random_trace(np.random.default_rng(3), steps=6, layers=3, seqs=5, k=2, num_experts=8)
    h = hw(capacity=6 * NATIVE, md_channels=2)
    for name, params in (("lru", {}), ("balanced-split", {}), ("prefetch-oracle", {})):
        wrapped = make_policy(
            "quantised-all", {"policy": name, "policy_params": params, "precision": "bf16"}
        )
        a = simulate(trace, h, model(), wrapped)
        b = simulate(trace, h, model(), make_policy(name, params))
        for column, values in b.per_layer.items():
            np.testing.assert_array_equal(a.per_layer[column], values, err_msg=column)
        assert a.totals == b.totals


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"policy": "nope"}, "policy: expected one of"),
        (
            {"policy": "lru", "policy_params": {"slotz": 3}},
            "policy_params.slotz: unknown parameter",
        ),
        ({"policy": "belady"}, "expected an online or oracle policy, got the offline bound"),
    ],
)
def test_quantised_all_checks_its_underlying_policy(params, message):
    with pytest.raises(UserError) as caught:
        make_policy("quantised-all", params, "policies[1].params")
    assert message in str(caught.value)
    assert str(caught.value).startswith("policies[1].params")


def test_quantised_all_names_the_copy_the_scenario_lacks():
    doc = {**_doc(), "policies": [{"name": "quantised-all", "params": {"precision": "int4"}}]}
    with pytest.raises(UserError) as caught:
        scenario_from_dict(doc, "s.yaml")
    assert "policies[0].params.precision: expected a precision every tier holds, got 'int4'" in str(
        caught.value
    )
    assert "hardware.copies.host" in str(caught.value)


# -- the quality proxies, recomputed from the raw scores ----------------------------------------
def scored_trace(rng, steps=4, layers=2, seqs=5, k=3, num_experts=8):
    """Random routing with random softmax-like scores, descending per token (not renormalised:
    they sum to less than 1, as a top-k of a softmax does)."""
    trace = random_trace(rng, steps=steps, layers=layers, seqs=seqs, k=k, num_experts=num_experts)
    raw = np.sort(rng.uniform(0.01, 0.5, size=trace.scores.shape), axis=-1)[..., ::-1]
    return dataclasses.replace(trace, scores=raw.astype(np.float32))


def by_hand(trace, skip_below=0.0, low_below=None):
    """Per (step, layer): tokens, dropped mass and degraded mass, token by token in Python.
    ``low_below``: an expert is degraded at a gate when the largest renormalised score among
    the gate's tokens that keep it is below this (`low-precision-on-miss` over a cacheless
    policy: every active expert is a miss)."""
    steps, layers, seqs, k = trace.experts.shape
    total = np.zeros((steps, layers))
    dropped = np.zeros((steps, layers))
    degraded = np.zeros((steps, layers))
    for s in range(steps):
        for lyr in range(layers):
            kept: dict[int, list[float]] = {}
            for q in range(seqs):
                scores = [float(x) for x in trace.scores[s, lyr, q]]
                norm = [x / sum(scores) for x in scores]
                total[s, lyr] += sum(norm)
                for j in range(k):
                    e = int(trace.experts[s, lyr, q, j])
                    if j > 0 and norm[j] < skip_below:
                        dropped[s, lyr] += norm[j]
                    else:
                        kept.setdefault(e, []).append(norm[j])
            if low_below is not None:
                for values in kept.values():
                    if max(values) < low_below:
                        degraded[s, lyr] += sum(values)
    return total, dropped, degraded


def test_full_precision_policies_report_no_degraded_and_no_dropped_mass():
    from sim.hardware import ComputeUnit
    from sim.policies import available_policies

    trace = scored_trace(np.random.default_rng(7))
    h = hw(
        capacity=6 * NATIVE,
        host_compute=ComputeUnit(100 * GB, 2e12),
        copies={"host": ("bf16", "int4"), "md": ("bf16", "int2")},
    )
    for name in available_policies():
        if name.startswith("example-") or name in PRECISION_POLICIES or name == "optimal":
            continue
        run = simulate(trace, h, model(), make_policy(name), topk=3)
        assert run.totals["degraded_gate_mass"] == 0.0, name
        assert run.totals["dropped_gate_mass"] == 0.0, name
        assert not run.per_layer["degraded_gate_mass"].any(), name
        assert not run.per_layer["reduced"].any(), name
        np.testing.assert_allclose(run.per_layer["gate_mass"], 5.0, rtol=1e-12)


PRECISION_POLICIES = ("quantised-all", "low-precision-on-miss", "skip-low-score")


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.3, 0.45])
def test_dropped_mass_equals_the_raw_scores_by_hand(threshold):
    trace = scored_trace(np.random.default_rng(11))
    run = simulate(
        trace, hw(), model(), make_policy("skip-low-score", {"threshold": threshold}), topk=3
    )
    total, dropped, _ = by_hand(trace, skip_below=threshold)
    np.testing.assert_allclose(run.per_layer["gate_mass"], total.ravel(), rtol=1e-12)
    np.testing.assert_allclose(
        run.per_layer["dropped_gate_mass"], (dropped / total).ravel(), rtol=1e-12, atol=1e-15
    )
    assert run.totals["dropped_gate_mass"] == pytest.approx(dropped.sum() / total.sum(), rel=1e-12)
    assert run.totals["degraded_gate_mass"] == 0.0
    # the demand shrank: every skipped (token, expert) pair is gone from the counts
    base = simulate(trace, hw(), model(), make_policy("seed-split"), topk=3)
    kept = trace.demand(3, threshold).counts.sum(axis=2).ravel()
    assert kept.sum() <= base.per_layer["active"].sum() * 5
    assert (run.per_layer["active"] <= base.per_layer["active"]).all()


@pytest.mark.parametrize(("threshold", "skip"), [(0.2, 0.0), (0.3, 0.0), (0.35, 0.2)])
def test_degraded_mass_equals_the_raw_scores_by_hand(threshold, skip):
    trace = scored_trace(np.random.default_rng(12))
    h = hw(copies={"host": ("bf16", "int4"), "md": ("bf16", "int4")})
    low = {"policy": "gpu-only", "threshold": threshold}
    policy = (
        make_policy("low-precision-on-miss", low)
        if not skip
        else make_policy(
            "skip-low-score",
            {"policy": "low-precision-on-miss", "policy_params": low, "threshold": skip},
        )
    )
    run = simulate(trace, h, model(), policy, topk=3)
    total, dropped, degraded = by_hand(trace, skip_below=skip, low_below=threshold)
    np.testing.assert_allclose(
        run.per_layer["degraded_gate_mass"], (degraded / total).ravel(), rtol=1e-12, atol=1e-15
    )
    assert run.totals["degraded_gate_mass"] == pytest.approx(
        degraded.sum() / total.sum(), rel=1e-12
    )
    assert run.totals["dropped_gate_mass"] == pytest.approx(dropped.sum() / total.sum(), rel=1e-12)
    # per step: the step's shares over its layers
    np.testing.assert_allclose(
        run.per_step["degraded_gate_mass"], degraded.sum(1) / total.sum(1), rtol=1e-12
    )
    assert 0.0 <= run.totals["degraded_gate_mass"] + run.totals["dropped_gate_mass"] <= 1.0


def test_the_lowest_rule_degrades_that_many_misses_per_gate():
    trace = scored_trace(np.random.default_rng(13))
    h = hw(copies={"host": ("bf16", "int4")})
    params = {"policy": "gpu-only", "lowest": 2}
    run = simulate(trace, h, model(), make_policy("low-precision-on-miss", params), topk=3)
    np.testing.assert_array_equal(run.per_layer["reduced"], np.minimum(2, run.per_layer["active"]))
    pcie = run.per_layer["pcie"]
    expected = (pcie - run.per_layer["reduced"]) * NATIVE + run.per_layer["reduced"] * INT4_BYTES
    np.testing.assert_array_equal(run.per_layer["bytes_pcie"], expected)


# -- threshold 0 is the underlying policy ------------------------------------------------------
@pytest.mark.parametrize(
    ("inner", "inner_params"),
    [
        ("seed-split", {}),
        ("balanced-split", {}),
        ("lru", {"miss_path": "balanced"}),
        ("least-stale", {}),
        ("prefetch-oracle", {"scope": "global"}),
        ("prefetch-predicted", {"train_steps": 2}),
        ("static-popular", {}),
    ],
)
def test_threshold_zero_reproduces_the_underlying_policy_exactly(inner, inner_params):
    trace = scored_trace(np.random.default_rng(17), steps=6, layers=3)
    h = hw(
        capacity=6 * NATIVE,
        md_channels=2,
        copies={"host": ("bf16", "int4"), "md": ("int4", "bf16")},
    )
    base = simulate(trace, h, model(), make_policy(inner, inner_params), topk=3)
    wrapped = [
        ("low-precision-on-miss", {"threshold": 0.0}),
        ("low-precision-on-miss", {"lowest": 0, "upgrade": True}),
        ("skip-low-score", {"threshold": 0.0}),
    ]
    for name, params in wrapped:
        policy = make_policy(name, {"policy": inner, "policy_params": inner_params, **params})
        run = simulate(trace, h, model(), policy, topk=3)
        for column, values in base.per_layer.items():
            np.testing.assert_array_equal(run.per_layer[column], values, err_msg=f"{name} {column}")
        for column, values in base.per_step.items():
            np.testing.assert_array_equal(run.per_step[column], values, err_msg=column)
        assert run.totals == base.totals and run.links == base.links, name
        assert policy.run_kind() == make_policy(inner, inner_params).run_kind()


# -- raising the threshold never moves more bytes nor gives up less mass (property) -----------
@st.composite
def threshold_runs(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    num_experts = draw(st.integers(3, 12))
    k = draw(st.integers(1, min(4, num_experts)))
    trace = scored_trace(
        rng,
        steps=draw(st.integers(1, 5)),
        layers=draw(st.integers(1, 3)),
        seqs=draw(st.integers(1, 8)),
        k=k,
        num_experts=num_experts,
    )
    host = draw(st.sampled_from([("bf16", "int4"), ("bf16", "int4", "int2"), ("int4", "bf16")]))
    md = draw(st.sampled_from([("bf16",), ("bf16", "int4"), ("int2", "int4", "bf16")]))
    h = hw(
        pcie_bw=draw(st.floats(1.0, 100.0)) * GB,
        md_bw=draw(st.floats(1.0, 500.0)) * GB,
        pcie_latency=draw(st.sampled_from([0.0, 1e-5])),
        pcie_channels=draw(st.integers(1, 3)),
        md_channels=draw(st.integers(1, 3)),
        capacity=draw(st.integers(0, 3 * num_experts)) * NATIVE,
        copies={"host": host, "md": md},
    )
    lo, hi = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2)))
    return trace, h, k, lo, hi, draw(st.sampled_from(TIMING_FREE))


# underlying policies whose decisions do not depend on transfer times (the property's scope:
# a timing-dependent rule, such as balanced-split, may choose other paths when copies shrink)
TIMING_FREE = (
    ("seed-split", {}),
    ("gpu-only", {}),
    ("md-only", {}),
    ("lru", {}),
    ("lfu", {"scope": "global"}),
    ("least-stale", {}),
    ("static-popular", {}),
)


def moved(run) -> float:
    return run.totals["bytes_pcie"] + run.totals["bytes_md"]


@settings(max_examples=60, deadline=None)
@given(threshold_runs())
def test_a_higher_threshold_never_moves_more_nor_degrades_less(case):
    trace, h, k, lo, hi, (inner, params) = case
    m = model(trace.num_experts, k)
    runs = [
        simulate(
            trace,
            h,
            m,
            make_policy(
                "low-precision-on-miss",
                {"policy": inner, "policy_params": params, "threshold": t, "precision": "int2"}
                if "int2" in h.copies["host"] + h.copies["md"]
                else {"policy": inner, "policy_params": params, "threshold": t},
            ),
        )
        for t in (lo, hi)
    ]
    assert moved(runs[1]) <= moved(runs[0]) * (1 + 1e-12)
    assert runs[1].totals["degraded_gate_mass"] >= runs[0].totals["degraded_gate_mass"] - 1e-12
    assert runs[1].totals["dropped_gate_mass"] == runs[0].totals["dropped_gate_mass"] == 0.0
    # by count: more of each gate's lowest-scored misses
    counts = sorted({int(lo * 4), int(hi * 4)})
    by_count = [
        simulate(
            trace,
            h,
            m,
            make_policy(
                "low-precision-on-miss", {"policy": inner, "policy_params": params, "lowest": n}
            ),
        )
        for n in counts
    ]
    assert moved(by_count[-1]) <= moved(by_count[0]) * (1 + 1e-12)
    assert by_count[-1].totals["degraded_gate_mass"] >= by_count[0].totals["degraded_gate_mass"]


@settings(max_examples=60, deadline=None)
@given(threshold_runs())
def test_a_higher_skip_threshold_never_moves_more_nor_drops_less(case):
    """Skipping shrinks every gate's demand: over a stateless policy (no cache whose contents
    depend on the demand's history) bytes can only fall."""
    trace, h, k, lo, hi, (inner, params) = case
    if inner not in ("seed-split", "gpu-only", "md-only"):
        inner, params = "seed-split", {}
    m = model(trace.num_experts, k)
    runs = [
        simulate(
            trace,
            h,
            m,
            make_policy(
                "skip-low-score", {"policy": inner, "policy_params": params, "threshold": t}
            ),
        )
        for t in (lo, hi)
    ]
    assert moved(runs[1]) <= moved(runs[0]) * (1 + 1e-12)
    assert runs[1].totals["dropped_gate_mass"] >= runs[0].totals["dropped_gate_mass"] - 1e-12
    assert (runs[1].per_layer["active"] <= runs[0].per_layer["active"]).all()


# -- upgrades -------------------------------------------------------------------------------
def test_a_later_hit_upgrades_a_reduced_copy():
    """Expert 0: a weak second choice at step 0 (fetched in int4 and cached), the top choice at
    step 1 (a hit on the int4 copy: degraded without upgrade, refetched in bf16 with it)."""
    experts = [[[[1, 0]]], [[[0, 1]]]]  # [steps, layers, seqs, k]
    trace = make_trace(experts, 8)
    scores = np.array([[[[0.9, 0.1]]], [[[0.9, 0.1]]]], dtype=np.float32)
    trace = dataclasses.replace(trace, scores=scores)
    h = hw(pcie_bw=1 * GB, capacity=4 * NATIVE, placement="host", copies={"host": ("bf16", "int4")})
    params = {"policy": "lru", "policy_params": {"miss_path": "pcie"}, "threshold": 0.5}
    keep = simulate(trace, h, model(), make_policy("low-precision-on-miss", params))
    up = simulate(
        trace, h, model(), make_policy("low-precision-on-miss", {**params, "upgrade": True})
    )
    # step 0: expert 1 (0.9) in bf16, expert 0 (0.1) in int4; both cached
    assert keep.per_layer["bytes_pcie"][0] == up.per_layer["bytes_pcie"][0] == NATIVE + INT4_BYTES
    assert keep.per_layer["degraded_gate_mass"][0] == pytest.approx(0.1, rel=1e-6)
    # step 1: both hits; expert 0 now carries 0.9 of the token's mass, expert 1 0.1
    assert keep.per_layer["hits"][1] == 2 and keep.per_layer["bytes_pcie"][1] == 0.0
    assert keep.per_layer["degraded_gate_mass"][1] == pytest.approx(0.9, rel=1e-6)
    # with upgrade: expert 0 is fetched again in bf16 and served from it
    assert up.per_layer["hits"][1] == 1 and up.per_layer["pcie"][1] == 1
    assert up.per_layer["bytes_pcie"][1] == NATIVE
    assert up.per_layer["degraded_gate_mass"][1] == 0.0
    assert up.per_layer["cache_bytes"][1] == 2 * NATIVE
    assert up.per_layer["transfer_window"][1] == pytest.approx(NATIVE / GB, rel=1e-12)


def test_a_source_without_skipping_refuses_a_skipping_policy():
    from sim.engine import Iteration, run_engine

    trace = scored_trace(np.random.default_rng(19))
    counts = trace.expert_token_counts(3)

    class Plain:
        def planned_counts(self, gpu):
            return counts

        def __init__(self):
            self.s = 0

        def next_iteration(self, gpu, now):
            if self.s == len(counts):
                return None
            self.s += 1
            return Iteration(counts[self.s - 1], [0.0] * counts.shape[1], position=self.s - 1)

        def iteration_end(self, gpu, iteration, start, end):
            pass

    with pytest.raises(UserError, match="expected an iteration source whose tokens skip"):
        run_engine(
            Plain(),
            hw(),
            model(),
            [make_policy("skip-low-score", {"threshold": 0.2})],
            layer_ids=tuple(trace.layer_ids),
            topk=3,
        )
    # without scores, low-precision-on-miss cannot rank its misses: one line, no guess
    h = hw(copies={"host": ("bf16", "int4"), "md": ("bf16", "int4")})
    with pytest.raises(UserError, match="expected the router's scores with each iteration"):
        run_engine(
            Plain(),
            h,
            model(),
            [make_policy("low-precision-on-miss", {"policy": "gpu-only"})],
            layer_ids=tuple(trace.layer_ids),
            topk=3,
        )
    # a plain source's per-layer gate mass is unknown (NaN); nothing is degraded, so 0 shares
    run = run_engine(
        Plain(), h, model(), [make_policy("gpu-only")], layer_ids=tuple(trace.layer_ids), topk=3
    )
    assert np.isnan(run.per_layer["gate_mass"]).all()
    assert run.totals["degraded_gate_mass"] == 0.0 and run.totals["dropped_gate_mass"] == 0.0
    run = run_engine(
        Plain(),
        h,
        model(),
        [make_policy("quantised-all", {"policy": "gpu-only"})],
        layer_ids=tuple(trace.layer_ids),
        topk=3,
    )
    assert np.isnan(run.totals["degraded_gate_mass"])


def test_serving_refuses_a_wrapper_of_an_oracle_and_runs_one_of_an_online_policy():
    from sim.serving.run import check_policies

    doc = {
        "trace": "embedded",
        "hardware": {
            "preset": "notebook-gbps",
            "hbm": {"capacity": "64 experts"},
            "copies": {"host": ["bf16", "int4"], "md": ["bf16", "int4"]},
        },
        "workload": {
            "kind": "serving",
            "arrivals": {"process": "poisson", "rate": 5.0},
            "prompt": 16,
            "output": 8,
            "requests": 4,
        },
        "policies": [{"name": "quantised-all", "params": {"policy": "lru"}}],
    }
    check_policies(scenario_from_dict(doc, "s.yaml"))
    doc["policies"] = [{"name": "quantised-all", "params": {"policy": "prefetch-oracle"}}]
    with pytest.raises(UserError, match="expected an online policy with a serving workload"):
        check_policies(scenario_from_dict(doc, "s.yaml"))
