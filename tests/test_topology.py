"""Topology and contention (issue 21): several GPUs, shared path segments, fair sharing.

Exact cases computed by hand (dyadic numbers, so every float operation is exact) and
invariants on random traces, topologies and stateless policies."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from engine_traces import make_trace, model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import simulate
from sim.errors import UserError
from sim.hardware import GpuConfig, Hardware, HbmConfig, LinkConfig, Topology
from sim.policies import make_policy
from sim.scenario import load_scenario_trace, scenario_from_dict

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
    hbm_bw: float = 2.0**41,
    expert_start: str = "per-expert",
) -> Hardware:
    links = (
        LinkConfig("pcie", pcie_bw, pcie_latency, pcie_channels, sharing=pcie_sharing),
        LinkConfig("md_link", md_bw, md_latency, md_channels, sharing=md_sharing),
    )
    paths = {"host": ("pcie",), "md": ("md_link", "pcie") if via_pcie else ("md_link",)}
    return Hardware(
        HbmConfig(capacity=capacity, bandwidth=hbm_bw),  # dyadic figures: exact arithmetic
        links,
        gpu=GpuConfig(peak_flops=2.0**50, non_expert_time=non_expert, expert_start=expert_start),
        topology=Topology(num_gpus, paths, data_parallel=parallel),
    )


def trace(seed: int = 1, steps: int = 4, layers: int = 2, seqs: int = 8):
    return random_trace(np.random.default_rng(seed), steps, layers, seqs, 2, 16)


MODEL = model(16, 2, EB)
SPLIT_1_2 = {"bw_pcie": 1.0, "bw_md": 2.0}  # seed-split: a third of the experts over PCIe


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


@st.composite
def closed_form_setups(draw):
    """One GPU whose routes are one ``fifo`` link each (the closed form): where more bandwidth
    provably never slows a stateless policy (docs/engine.md, "Scheduling anomalies"). Compute
    from negligible to longer than a transfer (``hbm_bw``), both expert-start rules."""
    gb = st.floats(2.0, 200.0)
    hw = machine(
        1,
        md_sharing="fifo",
        md_channels=draw(st.integers(1, 4)),
        pcie_channels=draw(st.integers(1, 3)),
        md_latency=draw(st.sampled_from([0.0, 3e-6, 2e-5])),
        pcie_latency=draw(st.sampled_from([0.0, 1e-5])),
        md_bw=draw(gb) * 1e9,
        pcie_bw=draw(gb) * 1e9,
        non_expert=draw(st.sampled_from([0.0, 2e-5])),
        hbm_bw=draw(st.sampled_from([2.0**41, 2.0**34, 2.0**31])),
        expert_start=draw(st.sampled_from(["per-expert", "layer"])),
    )
    seed = draw(st.integers(0, 2**16))
    tr = random_trace(np.random.default_rng(seed), draw(st.integers(1, 3)), 2, 6, 2, 16)
    policy = draw(st.sampled_from(["seed-split", "gpu-only", "md-only"]))
    return tr, hw, policy


@settings(max_examples=30, deadline=None)
@given(closed_form_setups(), st.sampled_from(["pcie", "md_link"]), st.floats(1.0, 8.0))
def test_more_bandwidth_never_slows_a_stateless_policy_on_a_closed_form_gpu(setup, link, factor):
    tr, hw, policy = setup
    faster = hw.with_links(
        **{link: dataclasses.replace(hw.links[link], bandwidth=hw.links[link].bandwidth * factor)}
    )
    base = simulate(tr, hw, MODEL, make_policy(policy))
    fast = simulate(tr, faster, MODEL, make_policy(policy))
    durations = [r.per_layer["t_end"] - r.per_layer["t_start"] for r in (base, fast)]
    assert np.all(durations[1] <= durations[0] * (1 + 1e-12))
    assert np.all(_steps(fast, 0) <= _steps(base, 0) * (1 + 1e-12))


def test_faster_md_link_slows_one_gpu_when_fair_sharing_bunches_its_arrivals():
    """A scheduling anomaly of fair sharing ahead of a serial GPU, computed by hand (time unit
    EB / B, every figure dyadic). seed-split (bw_pcie:bw_md = 1:2) sends expert 0 over PCIe
    and experts 1, 2 over md_link (fifo, 2 slots) and on through the GPU's fair PCIe port
    (bandwidth B); each expert computes for 2 (HBM at B / 2).

    * md_link at B / 2: each slot moves B / 4, so expert 0 gets the port's other B / 2 and
      arrives at 2, experts 1 and 2 at 4: compute 2-4, 4-6, 6-8: the step is 8.
    * md_link at B: slots of B / 2, so the three flows share the port at B / 3 each and all
      arrive at 3: compute 3-5, 5-7, 7-9: the step is 9, one unit longer with twice the
      bandwidth. The same bytes arrive no later in total, but together instead of staggered,
      and the GPU cannot overlap compute with the later arrivals."""
    one_token_each = make_trace([[[[0], [1], [2]]]], 16)
    hw = machine(
        md_sharing="fifo",
        pcie_sharing="fair",
        md_channels=2,
        via_pcie=True,
        md_bw=B / 2,
        pcie_bw=B,
        non_expert=0.0,
        hbm_bw=B / 2,
    )
    faster = hw.with_links(md_link=dataclasses.replace(hw.links["md_link"], bandwidth=B))
    steps = [
        simulate(one_token_each, h, model(16, 1, EB), make_policy("seed-split", SPLIT_1_2))
        .per_step["latency"]
        .tolist()
        for h in (hw, faster)
    ]
    assert steps == [[8 * EB / B], [9 * EB / B]]


def test_faster_md_link_lets_one_gpu_hold_the_shared_slots_and_slow_the_other():
    """The anomaly behind the property test's counterexample (issue 21): two md-only replicas,
    md_link fifo with 3 slots shared by both GPUs, each GPU's fair PCIe port (B) behind it.
    Layer 0 needs experts 4, 2; layer 1 needs 4, 0, 3. Time unit EB / B; one expert computes
    for c = 2**-7.

    * md_link at 1.5 B (slots of B / 2): GPU 0 queues first, GPU 1's second transfer waits
      for a slot, so GPU 0 finishes layer 0 at 2 + 2c and GPU 1 at 4 + c; GPU 1's layer-1
      transfers queue behind GPU 0's: the steps are 6 + 2c and 8 + 3c.
    * md_link at 3 B (slots of B): GPU 1's lone first flow runs at B, so GPU 1 finishes layer
      0 at 2 + c, before GPU 0 (2 + 2c), and takes all three slots. Its three flows share its
      port at B / 3 and hold the slots until 5 + c; GPU 0's layer 1 then takes 3 more: 8 + c,
      plus compute 3c: GPU 0's step is 8 + 4c, longer than before."""
    c = 2.0**-7
    tr = make_trace([[[[4, 2], [4, 2]], [[4, 0], [3, 0]]]], 16)
    hw = machine(
        2,
        md_sharing="fifo",
        pcie_sharing="fair",
        md_channels=3,
        via_pcie=True,
        md_bw=1.5 * B,
        pcie_bw=B,
        non_expert=0.0,
    )
    faster = hw.with_links(md_link=dataclasses.replace(hw.links["md_link"], bandwidth=3 * B))
    base, fast = (simulate(tr, h, model(16, 2, EB), make_policy("md-only")) for h in (hw, faster))
    unit = EB / B
    assert [_steps(base, g)[0] / unit for g in (0, 1)] == [6 + 2 * c, 8 + 3 * c]
    assert [_steps(fast, g)[0] / unit for g in (0, 1)] == [8 + 4 * c, 5 + 4 * c]
    assert fast.totals["mean_step"] > base.totals["mean_step"]


def test_a_shared_fifo_link_serves_the_gpus_in_issue_order():
    """fifo slots are the link's: at the first gate both GPUs issue at the same time, GPU 0's
    transfers queue first, GPU 1's behind them (one slot, equal transfers)."""
    one = simulate(
        trace(), machine(1, md_sharing="fifo", md_channels=1), MODEL, make_policy("md-only")
    )
    two = simulate(
        trace(), machine(2, md_sharing="fifo", md_channels=1), MODEL, make_policy("md-only")
    )
    first = one.per_layer["transfer_window"][0]
    assert gpu_rows(two, 0, "transfer_window")[0] == first
    assert gpu_rows(two, 1, "transfer_window")[0] == 2 * first
    assert not two.rates  # fifo one-link paths keep the closed form: no flows


def test_split_divides_the_batch():
    tr = trace(seqs=8)
    two = simulate(tr, machine(2, parallel="split"), MODEL, make_policy("gpu-only"))
    for gpu, seqs in ((0, [0, 1, 2, 3]), (1, [4, 5, 6, 7])):
        alone = simulate(tr.select(seqs=seqs), machine(1), MODEL, make_policy("gpu-only"))
        np.testing.assert_array_equal(gpu_rows(two, gpu, "t_end"), alone.per_layer["t_end"])
    assert two.totals["tokens_per_s"] == 8 / two.totals["mean_step"]
    with pytest.raises(UserError, match="num_gpus: expected at most the batch's 8 sequences"):
        simulate(tr, machine(9, parallel="split"), MODEL, make_policy("gpu-only"))


def test_the_step_is_the_slowest_gpus():
    tr = trace(seqs=8)
    two = simulate(tr, machine(2, parallel="split"), MODEL, make_policy("md-only"))
    slowest = np.maximum(
        gpu_rows(two, 0, "latency", "per_step"), gpu_rows(two, 1, "latency", "per_step")
    )
    assert two.totals["mean_step"] == float(slowest.mean())
    assert [row["gpu"] for row in two.per_gpu] == [0, 1]
    assert two.totals["total_time"] == max(row["total_time"] for row in two.per_gpu)


# -- the scenario file -----------------------------------------------------------------------------
SCENARIO = {
    "trace": {"path": "embedded", "positions": "0-3"},
    "hardware": {"preset": "h100-pcie5-cxl", "num_gpus": 2},
    "policies": ["seed-split"],
}


def test_scenario_topology_fields_resolve_and_round_trip(tmp_path):
    scenario = scenario_from_dict(
        {
            **SCENARIO,
            "hardware": {
                **SCENARIO["hardware"],
                "md_via_pcie": True,
                "links": {"pcie": {"sharing": "fair"}},
            },
        }
    )
    topo = scenario.hardware.topology
    assert (topo.num_gpus, dict(topo.paths)) == (2, {"host": ("pcie",), "md": ("md_link", "pcie")})
    assert topo.per_gpu == {"pcie"}
    doc = scenario.resolved_dict()
    assert doc["hardware"]["paths"] == {"host": ["pcie"], "md": ["md_link", "pcie"]}
    again = scenario_from_dict(doc)
    assert again.hardware == scenario.hardware


@pytest.mark.parametrize(
    ("hardware", "message"),
    [
        ({"md_via_pcie": True}, "hardware.links.pcie.sharing: expected fair"),
        ({"paths": {"md": ["md_link", "nic"]}}, r"hardware.paths.md\[1\]: expected a link of"),
        (
            {"links": {"nic": "rdma-400g-ndr"}},
            "hardware.links.nic: expected only links a path uses",
        ),
        ({"paths": {"md": ["md_link", "md_link"]}}, "hardware.paths.md: expected each link once"),
        ({"num_gpus": 2000}, "hardware.num_gpus: expected a value <= 1024"),
        ({"parallel": "pipeline"}, "hardware.parallel: expected one of"),
        (
            {"links": {"pcie": {"sharing": "lottery"}}},
            "hardware.links.pcie.sharing: expected one of",
        ),
        ({"paths": {"md": []}}, "hardware.paths.md"),
        (
            {
                "md_via_pcie": True,
                "paths": {"md": ["md_link"]},
                "links": {"pcie": {"sharing": "fair"}},
            },
            "hardware.paths.md: expected",
        ),
    ],
)
def test_bad_topologies_are_one_line_errors(hardware, message):
    with pytest.raises(UserError, match=message):
        scenario_from_dict({**SCENARIO, "hardware": {**SCENARIO["hardware"], **hardware}})


def test_a_new_link_on_a_path_is_data():
    """A third link is a name in the scenario, not code: an NVMe-oF hop in front of the NIC."""
    scenario = scenario_from_dict(
        {
            **SCENARIO,
            "hardware": {
                "preset": "h100-pcie4-rdma400",
                "links": {"switch": {"bandwidth": "30 GB/s", "sharing": "fair"}},
                "paths": {"md": ["md_link", "switch", "pcie"]},
                "md_via_pcie": False,
            },
        }
    )
    assert scenario.hardware.topology.paths["md"] == ("md_link", "switch", "pcie")
    assert scenario.hardware.md_link.bandwidth == 25e9  # the route's narrowest link


def test_link_figures_queueing_delay_saturation_and_usage_over_time():
    """One fifo slot, gpu-only: the j-th transfer of a gate waits j transfer times; the link is
    saturated exactly while busy; the usage series integrates to the busy time."""
    tr = trace()
    hw = machine(1, pcie_sharing="fifo", pcie_channels=1, non_expert=0.0)
    result = simulate(tr, hw, MODEL, make_policy("gpu-only"))
    d = EB / B
    waits = np.concatenate([np.arange(n) * d for n in result.per_layer["active"]])
    pcie = result.links["pcie"]
    assert pcie["delay_mean"] == pytest.approx(waits.mean(), rel=1e-12)
    assert pcie["delay_p99"] == pytest.approx(np.percentile(waits, 99), rel=1e-12)
    assert pcie["saturated"] == pytest.approx(pcie["busy"], rel=1e-12)
    usage = result.link_usage["pcie"]
    assert float(np.sum((usage[:, 1] - usage[:, 0]) * usage[:, 2])) == pytest.approx(
        pcie["busy"], rel=1e-9
    )
    fair = simulate(tr, machine(2, md_sharing="fair"), MODEL, make_policy("md-only"))
    md = fair.links["md_link"]
    assert md["saturated"] <= md["busy"] * (1 + 1e-12)
    assert md["delay_mean"] > 0  # two GPUs share it: every transfer takes longer than alone


def test_a_scenario_run_writes_link_rows(tmp_path):
    from sim.scenario.run import run_scenario, write_results

    scenario = scenario_from_dict(SCENARIO)
    results = run_scenario(scenario, progress=False)
    out = write_results(tmp_path / "r", scenario, load_scenario_trace(scenario), results)
    rows = (out / "links.csv").read_text().splitlines()
    assert rows[0].startswith("label,policy,topk,link,sharing,bandwidth,bytes")
    assert {r.split(",")[3] for r in rows[1:]} == {"pcie@gpu0", "pcie@gpu1", "md_link"}
    summary = json.loads((out / "summary.json").read_text())
    assert [g["gpu"] for g in summary[0]["per_gpu"]] == [0, 1]
    usage = (out / "link_usage.csv").read_text().splitlines()
    assert usage[0] == "label,policy,topk,link,t_start,t_end,utilisation" and len(usage) > 3


def test_idle_batch_statistics_equal_the_general_sweep():
    """A link whose batches were all placed on idle slots gets its saturation, delays and
    usage from the batches' shapes; they equal the general interval sweep's."""
    from sim.engine.links import FifoLink
    from sim.engine.machine import _binned, _idle_waves, _step_function, _time_at_least

    rng = np.random.default_rng(0)
    link = FifoLink(LinkConfig("x", 1e9, 0.0, 3))
    t = 0.0
    for _ in range(50):
        n, d = int(rng.integers(1, 12)), float(rng.uniform(1e-4, 1e-3))
        placed = link.place(t, d, n, n * 1e6)
        t += placed.last + float(rng.uniform(0.0, 1e-3))
    assert not link.log and len(link.idle) == 50
    times, counts, delays = _idle_waves(link)
    issue, start, stop = link.intervals()
    g_times, g_counts = _step_function(start, stop)
    assert _time_at_least(times, counts, 3) == pytest.approx(_time_at_least(g_times, g_counts, 3))
    np.testing.assert_allclose(np.sort(delays), np.sort(start - issue), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_binned(times, counts, t, 40), _binned(g_times, g_counts, t, 40))


@pytest.mark.parametrize("sharing", ["fifo", "ps"])
def test_gpus_queue_at_the_pools_near_data_unit(sharing):
    """Two GPUs run their experts next to the pool (each with its own MD link, so only the
    unit is shared). FIFO: the second GPU's batch waits for the first's; processor sharing:
    both take twice as long as alone. Either way the first layer's window grows by one batch
    of work for the later one."""
    from sim.hardware import ComputeUnit

    unit = ComputeUnit(2.0**36, 2.0**46, sharing=sharing)
    base = machine(1, non_expert=0.0)
    links = {k: v for k, v in base.links.items()}
    hw1 = dataclasses.replace(base, md_mode="near-data", md_compute=unit, links=links)
    two = dataclasses.replace(
        hw1, topology=Topology(2, hw1.topology.paths, per_gpu={"pcie", "md_link"})
    )
    tr = trace(steps=1, layers=1)
    one = simulate(tr, hw1, MODEL, make_policy("md-only"))
    both = simulate(tr, two, MODEL, make_policy("md-only"))
    counts = tr.expert_token_counts(MODEL.top_k)[0, 0]
    tokens = counts[counts > 0].astype(float)
    work = float(
        np.sum(
            np.maximum(EB / unit.memory_bandwidth, tokens * MODEL.flops_per_token / unit.peak_flops)
        )
    )
    alone = one.per_layer["transfer_window"][0]
    first, second = (gpu_rows(both, g, "transfer_window")[0] for g in (0, 1))
    if sharing == "fifo":
        assert first == pytest.approx(alone, rel=1e-12)
        assert second == pytest.approx(alone + work, rel=1e-12)
    else:
        assert first == pytest.approx(alone + work, rel=1e-12)
        assert second == pytest.approx(alone + work, rel=1e-12)
    assert both.engine["md_compute_busy"] == pytest.approx(2 * work, rel=1e-12)


def _expert_parallel(n: int, nvlink_bw: float = 2.0**38) -> Hardware:
    base = machine(1)
    nvlink = LinkConfig("nvlink", nvlink_bw, 0.0, 1)
    paths = {**base.topology.paths, "gpu": ("nvlink",)}
    return dataclasses.replace(
        base.with_links(nvlink=nvlink),
        topology=Topology(n, paths, per_gpu={"pcie", "nvlink"}, data_parallel="expert"),
    )


@pytest.mark.parametrize("n", [2, 4])
def test_expert_parallelism_fetches_each_expert_once_and_moves_the_crossing_tokens(n):
    """Expert e on GPU e mod n: every active expert is fetched once over all GPUs (md-only:
    the same MD bytes as one GPU), each layer ends on every GPU at once, and the GPU links
    carry each token whose expert is on another GPU there and back."""
    tr = trace(seqs=8, steps=3, layers=2)
    one = simulate(tr, machine(1), MODEL, make_policy("md-only"))
    many = simulate(tr, _expert_parallel(n), MODEL, make_policy("md-only"))
    assert many.totals["bytes_md"] == one.totals["bytes_md"]
    ends = [gpu_rows(many, g, "t_end") for g in range(n)]
    for other in ends[1:]:
        np.testing.assert_array_equal(other, ends[0])
    ids = tr.topk(MODEL.top_k)
    home = np.concatenate(
        [np.full(len(s), g) for g, s in enumerate(np.array_split(np.arange(8), n))]
    )
    crossing = int(((ids % n) != home[None, None, :, None]).sum())
    nvlink = sum(v["bytes"] for k, v in many.links.items() if k.startswith("nvlink"))
    assert nvlink == pytest.approx(2 * crossing * MODEL.activation_bytes_per_token, rel=1e-12)
    # each GPU's demand is its own experts' only
    active = sum(gpu_rows(many, g, "active") for g in range(n))
    np.testing.assert_array_equal(active, one.per_layer["active"])


def test_a_slower_gpu_link_makes_expert_parallelism_slower():
    tr = trace(seqs=8, steps=2, layers=2)
    fast = simulate(tr, _expert_parallel(2, 2.0**38), MODEL, make_policy("seed-split"))
    slow = simulate(tr, _expert_parallel(2, 2.0**26), MODEL, make_policy("seed-split"))
    assert slow.totals["mean_step"] > fast.totals["mean_step"]
