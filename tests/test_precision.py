"""Expert precisions (issue 22): copy sizes, where copies live, and the engine moving and caching
copies of different sizes; `quantised-all`.

Hand-computed cases: every number below is worked out from the formulas in docs/engine.md
("Precision") and compared exactly (or to 1e-12 where floats are summed in another order)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from engine_traces import GB, hardware, make_trace, random_trace

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
