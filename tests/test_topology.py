"""Topology and contention (issue 21): several GPUs, shared path segments, fair sharing.

Exact cases computed by hand (dyadic numbers, so every float operation is exact) and
invariants on random traces, topologies and stateless policies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from engine_traces import model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import simulate
from sim.hardware import GpuConfig, Hardware, HbmConfig, LinkConfig, Topology
from sim.policies import make_policy

EB = 2.0**22  # expert bytes
B = 2.0**34  # bytes/s


def machine(
    num_gpus: int = 1,
    *,
    md_sharing: str = "fair",
    pcie_sharing: str = "fifo",
    md_channels: int = 2,
    pcie_channels: int = 1,
    md_latency: float = 0.0,
    pcie_latency: float = 0.0,
    via_pcie: bool = False,
    md_bw: float = 2 * B,
    pcie_bw: float = B,
    parallel: str = "replicas",
    non_expert: float = 2.0**-12,
    capacity: float = 0.0,
) -> Hardware:
    links = (
        LinkConfig("pcie", pcie_bw, pcie_latency, pcie_channels, sharing=pcie_sharing),
        LinkConfig("md_link", md_bw, md_latency, md_channels, sharing=md_sharing),
    )
    paths = {"host": ("pcie",), "md": ("md_link", "pcie") if via_pcie else ("md_link",)}
    return Hardware(
        HbmConfig(capacity=capacity, bandwidth=2.0**41),  # dyadic figures: exact arithmetic
        links,
        gpu=GpuConfig(peak_flops=2.0**50, non_expert_time=non_expert),
        topology=Topology(num_gpus, paths, data_parallel=parallel),
    )


def trace(seed: int = 1, steps: int = 4, layers: int = 2, seqs: int = 8):
    return random_trace(np.random.default_rng(seed), steps, layers, seqs, 2, 16)


MODEL = model(16, 2, EB)


def gpu_rows(result, gpu: int, column: str, table: str = "per_layer") -> np.ndarray:
    rows = getattr(result, table)
    return rows[column][rows["gpu"] == gpu]


# -- exact cases -----------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 2, 4])
def test_two_gpus_md_only_on_one_fair_link_take_exactly_twice_the_transfer_time(channels):
    one = simulate(trace(), machine(1, md_channels=channels), MODEL, make_policy("md-only"))
    two = simulate(trace(), machine(2, md_channels=channels), MODEL, make_policy("md-only"))
    for gpu in (0, 1):
        np.testing.assert_array_equal(
            gpu_rows(two, gpu, "transfer_window"), 2 * one.per_layer["transfer_window"]
        )
    # the link moved both GPUs' bytes, at its full bandwidth whenever anything was moving
    assert two.links["md_link"]["bytes"] == 2 * one.links["md_link"]["bytes"]


@pytest.mark.parametrize("pcie_sharing", ["fifo", "fair"])
@pytest.mark.parametrize("num_gpus", [2, 3, 4])
def test_gpu_only_is_unchanged_by_adding_gpus(num_gpus, pcie_sharing):
    """Each GPU has its own PCIe: nothing it does goes through a shared link."""
    hw1 = machine(1, pcie_sharing=pcie_sharing, pcie_channels=2, pcie_latency=2.0**-17)
    hwn = dataclasses.replace(hw1, topology=dataclasses.replace(hw1.topology, num_gpus=num_gpus))
    one = simulate(trace(), hw1, MODEL, make_policy("gpu-only"))
    many = simulate(trace(), hwn, MODEL, make_policy("gpu-only"))
    for gpu in range(num_gpus):
        for column in ("t_start", "t_gate", "t_end", "transfer_window", "stall", "bytes_pcie"):
            np.testing.assert_array_equal(gpu_rows(many, gpu, column), one.per_layer[column])
        assert many.per_gpu[gpu]["mean_step"] == one.totals["mean_step"]
    assert many.totals["mean_step"] == one.totals["mean_step"]
    assert set(many.links) == {"md_link", *(f"pcie@gpu{g}" for g in range(num_gpus))}


def test_a_fair_link_with_four_channels_gives_two_flows_half_each():
    """Two experts over a fair 4-channel link: both move at B/2 and arrive at 2 EB / B (a
    fifo link gives each a static quarter: 4 EB / B, the complaint of issue 21)."""
    two_experts = random_trace(np.random.default_rng(0), 1, 1, 1, 2, 16)
    fair = machine(pcie_sharing="fair", pcie_channels=4, non_expert=0.0)
    fifo = machine(pcie_sharing="fifo", pcie_channels=4, non_expert=0.0)
    r_fair = simulate(two_experts, fair, MODEL, make_policy("gpu-only"), record_rates=True)
    r_fifo = simulate(two_experts, fifo, MODEL, make_policy("gpu-only"))
    assert r_fair.per_layer["transfer_window"][0] == 2 * EB / B
    assert r_fifo.per_layer["transfer_window"][0] == 4 * EB / B
    assert r_fair.rates["pcie"][:1] == ((0.0, B),)  # both flows together: the whole link


def test_md_behind_pcie_shares_the_port():
    """md_via_pcie: MD and host transfers share each GPU's PCIe port (fair), so balanced
    traffic cannot exceed it: with the port at B the layer moves its bytes at B at most."""
    hw = machine(via_pcie=True, pcie_sharing="fair", md_bw=4 * B, non_expert=0.0)
    result = simulate(trace(), hw, MODEL, make_policy("seed-split"), record_rates=True)
    moved = result.per_layer["bytes_pcie"] + result.per_layer["bytes_md"]
    assert np.all(result.per_layer["transfer_window"] >= moved / B * (1 - 1e-12))
    assert max(rate for _, rate in result.rates["pcie"]) <= B * (1 + 1e-12)


# -- invariants ------------------------------------------------------------------------------------
@st.composite
def setups(draw):
    num_gpus = draw(st.integers(1, 3))
    via_pcie = draw(st.booleans())
    pcie_sharing = "fair" if via_pcie else draw(st.sampled_from(["fifo", "fair"]))
    gb = st.floats(2.0, 200.0)
    hw = machine(
        num_gpus,
        md_sharing=draw(st.sampled_from(["fifo", "fair"])),
        pcie_sharing=pcie_sharing,
        md_channels=draw(st.integers(1, 4)),
        pcie_channels=draw(st.integers(1, 3)),
        md_latency=draw(st.sampled_from([0.0, 3e-6, 2e-5])),
        pcie_latency=draw(st.sampled_from([0.0, 1e-5])),
        via_pcie=via_pcie,
        md_bw=draw(gb) * 1e9,
        pcie_bw=draw(gb) * 1e9,
        parallel=draw(st.sampled_from(["replicas", "split"])),
        non_expert=draw(st.sampled_from([0.0, 2e-5])),
    )
    seed = draw(st.integers(0, 2**16))
    tr = random_trace(np.random.default_rng(seed), draw(st.integers(1, 3)), 2, 6, 2, 16)
    policy = draw(st.sampled_from(["seed-split", "gpu-only", "md-only"]))
    return tr, hw, policy


def _steps(result, gpu: int) -> np.ndarray:
    return gpu_rows(result, gpu, "latency", "per_step")


@settings(max_examples=40, deadline=None)
@given(setups())
def test_no_link_above_its_bandwidth_and_bytes_conserved(setup):
    tr, hw, policy = setup
    result = simulate(tr, hw, MODEL, make_policy(policy), record_rates=True)
    for name, history in result.rates.items():
        bandwidth = hw.links[name.split("@")[0]].bandwidth
        rates = np.array([rate for _, rate in history])
        assert np.all(rates <= bandwidth * (1 + 1e-9)), name
        # integrated over time, the rates moved exactly the bytes issued on the link
        times = np.array([t for t, _ in history])
        moved = float(np.sum(rates[:-1] * np.diff(times)))
        assert moved == pytest.approx(result.links[name]["bytes"], rel=1e-9, abs=1e-3), name
        assert result.links[name]["utilisation"] <= 1 + 1e-9


@settings(max_examples=30, deadline=None)
@given(setups())
def test_adding_gpus_never_makes_a_gpu_faster(setup):
    tr, hw, policy = setup
    if hw.topology.data_parallel == "split":
        hw = dataclasses.replace(
            hw, topology=dataclasses.replace(hw.topology, data_parallel="replicas")
        )
    more = dataclasses.replace(
        hw, topology=dataclasses.replace(hw.topology, num_gpus=hw.topology.num_gpus + 1)
    )
    base = simulate(tr, hw, MODEL, make_policy(policy))
    bigger = simulate(tr, more, MODEL, make_policy(policy))
    for gpu in range(hw.topology.num_gpus):
        assert np.all(_steps(bigger, gpu) >= _steps(base, gpu) * (1 - 1e-12))


@settings(max_examples=30, deadline=None)
@given(setups(), st.sampled_from(["pcie", "md_link"]), st.floats(1.0, 8.0))
def test_more_bandwidth_on_any_link_never_makes_a_stateless_policy_slower(setup, link, factor):
    tr, hw, policy = setup
    faster = hw.with_links(
        **{link: dataclasses.replace(hw.links[link], bandwidth=hw.links[link].bandwidth * factor)}
    )
    base = simulate(tr, hw, MODEL, make_policy(policy))
    fast = simulate(tr, faster, MODEL, make_policy(policy))
    # the run's step (the slowest GPU's) never gets longer; one GPU of several may: with fair
    # sharing, another GPU's transfers finishing sooner can crowd a shared link at a worse
    # moment (max-min rates are not monotone in capacity flow by flow; docs/engine.md)
    slowest = [
        np.max([_steps(r, g) for g in range(hw.topology.num_gpus)], axis=0) for r in (base, fast)
    ]
    assert np.all(slowest[1] <= slowest[0] * (1 + 1e-12))
    assert fast.totals["mean_step"] <= base.totals["mean_step"] * (1 + 1e-12)
    if hw.topology.num_gpus == 1:
        assert np.all(_steps(fast, 0) <= _steps(base, 0) * (1 + 1e-12))
