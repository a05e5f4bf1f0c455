"""Static placement (`static-layers`, `Policy.initial_cache`), exclusive caching (`writeback`),
CPU presets for the host path and the per-layer software overhead: hand-computed cases, the
bytes each moves, and the one-line errors of bad settings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from engine_traces import hardware, make_trace

from sim.engine import simulate
from sim.errors import UserError
from sim.hardware import ComputeUnit, GpuConfig, ModelSpec
from sim.policies import make_policy
from sim.policies.base import PolicyError
from sim.roofline import lockstep_non_expert_times, non_expert_time
from sim.scenario import scenario_from_dict

# 4 experts of 3 MB (1000 x 1000 x 3 matrices, 1 byte per parameter), top-1
MODEL = ModelSpec(
    "tiny",
    num_experts=4,
    top_k=1,
    expert_bytes=3e6,
    hidden_size=1000,
    expert_ffn_size=1000,
    bytes_per_param=1.0,
)
CPU = ComputeUnit(memory_bandwidth=1e9, peak_flops=1e15)  # 3 ms per expert


def host_hw(capacity: float = 12e6, **kw):
    return hardware(
        pcie_bw=1e9,
        pcie_latency=10e-6,
        capacity=capacity,
        placement="host",
        host_compute=CPU,
        hbm_bw=1e12,
        **kw,
    )


def test_static_layers_closed_form() -> None:
    """Layer id 2 on the host: activations out (10 us + 2000 B / 1 GB/s), 3 ms of CPU, back;
    layer id 3 resident: a hit, 3 MB / 1 TB/s on the GPU. Nothing else moves."""
    trace = make_trace([[[[1]], [[2]]], [[[3]], [[2]]]], 4)  # 2 steps, 2 layers, 1 seq
    result = simulate(trace, host_hw(), MODEL, make_policy("static-layers", {"host_layers": [2]}))
    one_way = 10e-6 + 2000 / 1e9
    expected = (one_way + 3e-3 + one_way) + 3e6 / 1e12
    np.testing.assert_allclose(result.per_step["latency"], [expected, expected], rtol=1e-12)
    assert result.per_layer["host"].tolist() == [1, 0, 1, 0]
    assert result.per_layer["hits"].tolist() == [0, 1, 0, 1]
    assert result.per_layer["pcie"].sum() == 0
    assert result.links["pcie"]["bytes"] == pytest.approx(4 * 2000.0)  # activations only


def test_static_layers_all_on_gpu_and_all_on_host() -> None:
    trace = make_trace([[[[0]], [[1]]]], 4)
    none = simulate(
        trace, host_hw(capacity=24e6), MODEL, make_policy("static-layers", {"host_layers": "none"})
    )
    assert none.totals["hit_rate"] == 1.0 and none.links["pcie"]["bytes"] == 0.0
    every = simulate(trace, host_hw(capacity=0.0), MODEL, make_policy("static-layers"))
    assert every.per_layer["host"].tolist() == [1, 1] and every.totals["hits"] == 0


def test_static_layers_refuses_what_does_not_fit() -> None:
    trace = make_trace([[[[0]], [[1]]]], 4)
    with pytest.raises(UserError, match=r"hbm.capacity: expected room for the 4 experts"):
        simulate(
            trace, host_hw(capacity=6e6), MODEL, make_policy("static-layers", {"host_layers": [2]})
        )
    no_cpu = dataclasses.replace(host_hw(), host_compute=None)
    with pytest.raises(UserError, match=r"host_layers: expected a scenario whose host CPU"):
        simulate(trace, no_cpu, MODEL, make_policy("static-layers", {"host_layers": [2]}))
    with pytest.raises(UserError, match=r"host_layers"):
        make_policy("static-layers", {"host_layers": "3-1"})


def test_initial_cache_is_checked_by_the_engine() -> None:
    trace = make_trace([[[[0]]]], 4)

    class Bad(type(make_policy("static-layers"))):
        def initial_cache(self):
            return np.ones((3, 3), dtype=bool)

    with pytest.raises(PolicyError, match="initial_cache must be a bool array of shape"):
        simulate(trace, host_hw(), MODEL, Bad(Bad.Params(host_layers="none")))

    class TooMany(type(make_policy("static-layers"))):
        def initial_cache(self):
            return np.ones((1, 4), dtype=bool)

    with pytest.raises(PolicyError, match=r"above hbm\.capacity"):
        simulate(trace, host_hw(capacity=6e6), MODEL, TooMany(TooMany.Params(host_layers="all")))


def test_writeback_moves_each_evicted_expert_back() -> None:
    """One layer, one slot, experts 0, 1, 0: three misses, two evictions. With writeback each
    eviction is one more 3 MB transfer on the host link, queued after the demand fetch."""
    trace = make_trace([[[[0]]], [[[1]]], [[[0]]]], 4)
    hw = hardware(pcie_bw=1e9, capacity=3e6, placement="host", hbm_bw=1e12)
    plain = simulate(trace, hw, MODEL, make_policy("lru", {"slots": 1, "miss_path": "pcie"}))
    swap = simulate(
        trace, hw, MODEL, make_policy("lru", {"slots": 1, "miss_path": "pcie", "writeback": True})
    )
    assert plain.links["pcie"]["bytes"] == 3 * 3e6
    assert swap.links["pcie"]["bytes"] == 5 * 3e6
    assert swap.per_layer["bytes_pcie"].tolist() == [3e6, 6e6, 6e6]
    # the write-back of step 1 delays step 2's fetch by one transfer (3 ms)
    fetch, gpu = 3e-3, 3e6 / 1e12
    np.testing.assert_allclose(plain.per_step["latency"], [fetch + gpu] * 3, rtol=1e-12)
    np.testing.assert_allclose(
        swap.per_step["latency"], [fetch + gpu, fetch + gpu, fetch + gpu + (fetch - gpu)], rtol=1e-9
    )


def test_layer_overhead_adds_per_transformer_layer() -> None:
    model = ModelSpec(
        "m",
        num_experts=4,
        top_k=1,
        expert_bytes=3e6,
        hidden_size=256,
        expert_ffn_size=256,
        num_layers=6,
        moe_layers=4,
        attention_heads=4,
        kv_heads=4,
        head_dim=64,
        dense_ffn_size=512,
        vocab_size=1000,
    )
    hw = hardware(non_expert=None)
    loaded = dataclasses.replace(hw, gpu=GpuConfig(non_expert_time=None, layer_overhead=1e-4))
    base = non_expert_time(hw, model, [1, 1], [5, 9])
    assert non_expert_time(loaded, model, [1, 1], [5, 9]) == pytest.approx(base + 1e-4 * 6 / 4)
    assert non_expert_time(loaded, model, [0], [0]) == 0.0  # an empty iteration costs nothing
    steps = lockstep_non_expert_times(loaded, model, 2, [0, 7])
    np.testing.assert_allclose(steps - lockstep_non_expert_times(hw, model, 2, [0, 7]), 1.5e-4)


def _scenario(host: object) -> dict:
    return {
        "model": {"preset": "qwen3-30b-a3b"},
        "hardware": {
            "gpu": "rtx-2080",
            "links": {"pcie": "pcie3-x16", "md_link": "pcie3-x16"},
            "placement": "host",
            "host_compute": host,
        },
        "policies": ["gpu-only"],
        "baseline": "gpu-only",
    }


def test_cpu_presets_in_scenarios() -> None:
    named = scenario_from_dict(_scenario("xeon-gold-6454s-1s"))
    assert named.hardware.host_compute == ComputeUnit(307.2e9, 4.5e12)
    assert named.hardware_doc["host_compute"]["preset"] == "xeon-gold-6454s-1s"
    tuned = scenario_from_dict(
        _scenario({"preset": "i9-10900x-ddr4-3200", "memory_bandwidth": "45 GB/s"})
    )
    assert tuned.hardware.host_compute == ComputeUnit(45e9, 1.9e12)
    with pytest.raises(UserError, match=r"hardware.host_compute.peak_flops: required, missing"):
        scenario_from_dict(_scenario({"memory_bandwidth": "45 GB/s"}))
    with pytest.raises(UserError, match=r"hardware.host_compute.preset: expected one of"):
        scenario_from_dict(_scenario("no-such-cpu"))
