"""Hand-computed engine cases: link FIFO, channels, latency, expert start, near data, cache rules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from engine_traces import GB, hardware, make_trace, model

from sim.engine import RooflineCost, simulate
from sim.engine.timeline import trace_events, write_chrome_trace
from sim.errors import UserError
from sim.hardware import ComputeUnit, LinkConfig
from sim.policies import GateDecision, GateView, Path, Policy, PolicyError, make_policy

# One step, one layer, 4 sequences each routed (top-1) to its own expert: 4 active experts.
FOUR = make_trace([[[[0], [1], [2], [3]]]], num_experts=8)
ONE_GB = model(num_experts=8, top_k=1, expert_bytes=1 * GB)


def run(policy: str | Policy, hw, trace=FOUR, mdl=ONE_GB, **kw):
    pol = make_policy(policy) if isinstance(policy, str) else policy
    return simulate(trace, hw, mdl, pol, **kw)


def test_four_1gb_experts_over_32gbps_take_an_eighth_of_a_second():
    r = run("gpu-only", hardware(pcie_bw=32 * GB))
    assert r.per_layer["transfer_window"][0] == pytest.approx(0.125, rel=1e-15)
    assert r.per_layer["pcie"][0] == 4
    assert r.per_layer["bytes_pcie"][0] == 4 * GB
    compute = 1 * GB / 3.35e12  # memory-bound roofline of one expert
    assert r.per_layer["t_end"][0] == pytest.approx(0.125 + compute, rel=1e-12)
    assert r.links["pcie"]["busy"] == pytest.approx(0.125)
    assert r.links["pcie"]["transfers"] == 4


def test_two_channels_share_the_bandwidth():
    three = make_trace([[[[0], [1], [2]]]], num_experts=8)
    r = run("gpu-only", hardware(pcie_bw=32 * GB, pcie_channels=2), trace=three)
    # each slot runs at 16 GB/s: two transfers end at 1/16 s, the third at 2/16 s
    assert r.per_layer["transfer_window"][0] == pytest.approx(0.125, rel=1e-15)
    # link busy time counts slot-seconds / channels
    assert r.links["pcie"]["busy"] == pytest.approx(3 / 16 / 2)


def test_channel_bandwidth_cap():
    capped = LinkConfig("pcie", 32 * GB, latency=0.0, channels=4, channel_bandwidth=4 * GB)
    r = run("gpu-only", hardware().with_links(pcie=capped))
    assert r.per_layer["transfer_window"][0] == pytest.approx(0.25, rel=1e-15)


def test_latency_is_paid_per_transfer():
    r = run("gpu-only", hardware(pcie_bw=32 * GB, pcie_latency=1e-3))
    assert r.per_layer["transfer_window"][0] == pytest.approx(4 * (1e-3 + 1 / 32), rel=1e-14)


def test_per_expert_start_overlaps_compute_layer_start_waits():
    slow_hbm = dict(pcie_bw=32 * GB, hbm_bw=100 * GB)  # 10 ms per expert
    per_expert = run("gpu-only", hardware(**slow_hbm))
    layer = run("gpu-only", hardware(**slow_hbm, expert_start="layer"))
    assert per_expert.per_layer["t_end"][0] == pytest.approx(0.125 + 0.01, rel=1e-12)
    assert layer.per_layer["t_end"][0] == pytest.approx(0.125 + 0.04, rel=1e-12)
    # stall: time beyond the all-in-HBM compute (4 x 10 ms)
    assert per_expert.per_layer["stall"][0] == pytest.approx(0.135 - 0.04, rel=1e-12)
    assert per_expert.per_step["compute_only"][0] == pytest.approx(0.04, rel=1e-12)


def test_compute_bound_experts_queue_on_the_gpu():
    # compute longer than the gaps between arrivals: the GPU is the bottleneck
    r = run("gpu-only", hardware(pcie_bw=32 * GB, hbm_bw=10 * GB))  # 0.1 s per expert
    assert r.per_layer["t_end"][0] == pytest.approx(1 / 32 + 0.4, rel=1e-12)


def test_non_expert_time_comes_before_the_gate():
    r = run("gpu-only", hardware(pcie_bw=32 * GB, non_expert=0.5))
    assert r.per_layer["t_gate"][0] == 0.5
    assert r.per_layer["layer_time"][0] == pytest.approx(0.5 + 0.125 + 1 * GB / 3.35e12)


def test_near_data_moves_activations_both_ways():
    mdl = model(num_experts=8, top_k=1, expert_bytes=1 * GB)  # hidden 1024 x 2 B = 2048 B/token
    hw = hardware(
        md_bw=1 * GB,
        md_latency=1e-3,
        md_mode="near-data",
        md_compute=ComputeUnit(memory_bandwidth=100 * GB, peak_flops=1e15),
    )
    r = run("md-only", hw, mdl=mdl)
    one_way = 1e-3 + 4 * 2048 / GB
    expected = one_way + 4 * 0.01 + one_way
    assert r.per_layer["md_near"][0] == 4
    assert r.per_layer["t_end"][0] == pytest.approx(expected, rel=1e-12)
    assert r.per_layer["bytes_md"][0] == 2 * 4 * 2048
    assert r.per_layer["transfer_window"][0] == pytest.approx(expected, rel=1e-12)
    assert r.links["md_link"]["transfers"] == 2


def test_seed_split_sends_one_of_seventeen_over_pcie():
    trace = make_trace([[[[e] for e in range(17)]]], num_experts=32)
    r = run("seed-split", hardware(), trace=trace, mdl=model(32, 1, 1 * GB))
    assert (r.per_layer["pcie"][0], r.per_layer["md_fetch"][0]) == (1, 16)
    # both links in parallel: PCIe 1/32 s, MD 16/512 s
    assert r.per_layer["transfer_window"][0] == pytest.approx(1 / 32, rel=1e-14)


def test_layers_and_steps_follow_each_other():
    trace = make_trace(np.zeros((3, 2, 1, 1), dtype=int), num_experts=4)
    r = run("gpu-only", hardware(non_expert=0.1), trace=trace, mdl=model(4, 1, 1 * GB))
    t_start, t_end = r.per_layer["t_start"], r.per_layer["t_end"]
    assert np.array_equal(t_start[1:], t_end[:-1])
    assert r.per_step["latency"] == pytest.approx(t_end[1::2] - t_start[0::2])
    assert r.totals["total_time"] == t_end[-1]
    assert list(r.per_layer["layer_id"]) == [2, 3] * 3


def test_topk_cut_and_model_mismatch():
    trace = make_trace([[[[0, 1, 2]]]], num_experts=4)
    r = run("gpu-only", hardware(), trace=trace, mdl=model(4, 3, 1 * GB), topk=1)
    assert r.per_layer["active"][0] == 1
    with pytest.raises(UserError, match="num_experts"):
        run("gpu-only", hardware(), trace=trace, mdl=model(8, 3, 1 * GB))
    with pytest.raises(UserError, match="topk"):
        run("gpu-only", hardware(), trace=trace, mdl=model(4, 3, 1 * GB), topk=9)


# -- cache and prefetch rules, with small scripted policies ------------------------------------
@dataclass(frozen=True)
class _NoParams:
    pass


class Scripted(Policy):
    """Fetch over PCIe; per gate, admit/evict/prefetch as scripted by (step, layer)."""

    name = "scripted"
    Params = _NoParams

    def __init__(self, admit=True, evict=None, prefetch=None, paths=None):
        super().__init__()
        self.admit, self.evict, self.prefetch, self.paths = (
            admit,
            evict or {},
            prefetch or {},
            paths,
        )

    def decide(self, view: GateView) -> GateDecision:
        key = (view.step, view.layer)
        paths = np.full(view.experts.size, Path.PCIE if self.paths is None else self.paths, np.int8)
        return GateDecision(
            paths=paths,
            admit=np.full(view.experts.size, self.admit),
            evict=self.evict.get(key, []),
            prefetch=self.prefetch.get(key, []),
        )


TWO_STEPS = make_trace([[[[0], [1]]], [[[0], [2]]]], num_experts=4)  # steps: {0,1} then {0,2}
M4 = model(4, 1, 1 * GB)


def test_admitted_experts_hit_in_the_next_step():
    r = run(Scripted(), hardware(capacity=3 * GB), trace=TWO_STEPS, mdl=M4)
    assert list(r.per_layer["hits"]) == [0, 1]
    assert list(r.per_layer["pcie"]) == [2, 1]
    assert list(r.per_layer["cache_bytes"]) == [2 * GB, 3 * GB]
    assert r.totals["hit_rate"] == pytest.approx(1 / 4)
    assert r.totals["bytes_pcie"] == 3 * GB


def test_over_capacity_is_a_policy_error():
    with pytest.raises(PolicyError, match="capacity"):
        run(Scripted(), hardware(capacity=1 * GB), trace=TWO_STEPS, mdl=M4)


def test_evictions_free_space_first():
    r = run(Scripted(evict={(1, 0): [(0, 1)]}), hardware(capacity=2 * GB), trace=TWO_STEPS, mdl=M4)
    assert list(r.per_layer["cache_bytes"]) == [2 * GB, 2 * GB]


def test_evicting_an_expert_in_use_or_not_cached_is_an_error():
    with pytest.raises(PolicyError, match="using"):
        run(Scripted(evict={(1, 0): [(0, 0)]}), hardware(capacity=4 * GB), trace=TWO_STEPS, mdl=M4)
    with pytest.raises(PolicyError, match="not cached"):
        run(Scripted(evict={(0, 0): [(0, 3)]}), hardware(capacity=4 * GB), trace=TWO_STEPS, mdl=M4)


@pytest.mark.parametrize(
    ("path", "hw", "match"),
    [
        (Path.MD_FETCH, hardware(placement="host"), "placement"),
        (Path.PCIE, hardware(placement="md"), "placement"),
        (Path.MD_NEAR, hardware(md_mode="fetch"), "md_mode"),
        (Path.MD_FETCH, hardware(md_mode="near-data"), "md_mode"),
        (Path.HOST, hardware(), "host_compute"),
        (Path.HIT, hardware(), "not cached"),
    ],
)
def test_impossible_paths_are_policy_errors(path, hw, match):
    with pytest.raises(PolicyError, match=match):
        run(Scripted(admit=False, paths=path), hw, trace=TWO_STEPS, mdl=M4)


def test_prefetch_arrives_behind_demand_and_counts_as_a_late_prefetch():
    # step 0 fetches {0, 1} (1/32 s each over PCIe) and prefetches expert 2 for step 1
    hw = hardware(capacity=4 * GB, pcie_bw=32 * GB, hbm_bw=1e18, non_expert=0.01)
    pol = Scripted(admit=False, prefetch={(0, 0): [(0, 2, "pcie")]})
    r = run(pol, hw, trace=TWO_STEPS, mdl=M4)
    assert list(r.per_layer["prefetch_pcie"]) == [1, 0]
    # still in flight at step 1's gate: served without a transfer, but not a hit (not in HBM)
    assert list(r.per_layer["hits"]) == [0, 0]
    assert list(r.per_layer["late_prefetches"]) == [0, 1]
    assert (r.totals["hits"], r.totals["late_prefetches"], r.totals["misses"]) == (0, 1, 3)
    assert r.per_layer["bytes_pcie"][0] == 3 * GB
    # the prefetch ends at 0.01 + 3/32 s, after step 1's gate: the hit waits for it, and
    # expert 0 (not admitted, fetched again) queues FIFO behind it on the one PCIe slot
    assert r.per_layer["t_gate"][1] < 0.01 + 3 / 32
    compute = max(GB / 1e18, M4.flops_per_token / 989e12)  # one token, compute-bound here
    assert r.per_layer["t_end"][1] == pytest.approx(0.01 + 4 / 32 + compute, rel=1e-12)
    with pytest.raises(PolicyError, match="placement"):
        run(
            Scripted(admit=False, prefetch={(0, 0): [(0, 2, "md_link")]}),
            hardware(capacity=4 * GB, placement="host"),
            trace=TWO_STEPS,
            mdl=M4,
        )


def test_host_path_computes_on_the_cpu_with_activations_over_pcie():
    hw = hardware(
        pcie_bw=1 * GB,
        pcie_latency=1e-3,
        host_compute=ComputeUnit(memory_bandwidth=50 * GB, peak_flops=1e12),
    )
    r = run(Scripted(admit=False, paths=Path.HOST), hw, trace=TWO_STEPS, mdl=M4)
    one_way = 1e-3 + 2 * 2048 / GB
    assert r.per_layer["host"][0] == 2
    assert r.per_layer["t_end"][0] == pytest.approx(2 * one_way + 2 * 0.02, rel=1e-12)
    assert r.per_layer["bytes_pcie"][0] == 2 * 2 * 2048


def test_timeline_export_is_chrome_trace(tmp_path):
    r = run("seed-split", hardware(non_expert=1e-3), trace=TWO_STEPS, mdl=M4, timeline=True)
    kinds = {(ev.resource.split("[")[0], ev.kind) for ev in r.timeline}
    assert {("gpu", "non_expert"), ("gpu", "compute"), ("md_link", "fetch")} <= kinds
    assert all(ev.end >= ev.start for ev in r.timeline)
    events = trace_events([r])
    complete = [e for e in events if e["ph"] == "X"]
    assert len(complete) == len(r.timeline)
    assert all(e["dur"] >= 0 and e["pid"] == 1 for e in complete)
    path = write_chrome_trace(tmp_path / "timeline.json", [r])
    assert path.read_text().startswith("{")
    assert run("seed-split", hardware(), trace=TWO_STEPS, mdl=M4).timeline is None


def test_progress_reports_every_step():
    seen: list[int] = []
    run("gpu-only", hardware(), trace=TWO_STEPS, mdl=M4, progress=seen.append)
    assert sum(seen) == 2


def test_hits_in_flight_compute_in_arrival_order_not_gate_order():
    # step 0 uses expert 0 and prefetches 3 then 2; step 1 uses 2 (2 tokens) and 3 (1 token):
    # gate order is [2, 3], arrival order [3, 2]
    trace = make_trace([[[[0], [0], [0]]], [[[2], [2], [3]]]], num_experts=4)
    hw = hardware(capacity=4 * GB, pcie_bw=32 * GB, hbm_bw=1000 * GB)  # 1 ms per expert
    pol = Scripted(admit=False, prefetch={(0, 0): [(0, 3, "pcie"), (0, 2, "pcie")]})
    r = run(pol, hw, trace=trace, mdl=M4)
    assert list(r.per_layer["late_prefetches"]) == [0, 2]  # both still in flight at the gate
    assert list(r.per_layer["hits"]) == [0, 0]
    assert r.per_layer["t_end"][0] == pytest.approx(1 / 32 + 1e-3, rel=1e-12)
    # expert 3 (ready 2/32) runs while expert 2 is still arriving (3/32)
    assert r.per_layer["t_end"][1] == pytest.approx(3 / 32 + 1e-3, rel=1e-12)
    with_timeline = run(pol, hw, trace=trace, mdl=M4, timeline=True)
    assert with_timeline.per_layer["t_end"][1] == r.per_layer["t_end"][1]


def test_hits_already_in_hbm_run_first():
    # step 0 admits both experts; step 1 hits them (ready) and fetches expert 2
    hw = hardware(capacity=4 * GB, pcie_bw=32 * GB, hbm_bw=10 * GB)  # 0.1 s per expert
    r = run(Scripted(), hw, trace=TWO_STEPS, mdl=M4)
    gate1 = r.per_layer["t_gate"][1]
    # hit expert 0 runs 0.1 s from the gate; expert 2 arrives at 1/32 and runs after it
    assert r.per_layer["t_end"][1] - gate1 == pytest.approx(0.2, rel=1e-12)
    timed = run(Scripted(), hw, trace=TWO_STEPS, mdl=M4, timeline=True)
    assert timed.per_layer["t_end"][1] == pytest.approx(r.per_layer["t_end"][1], rel=1e-15)


class _SlowerById(RooflineCost):
    """A cost table in miniature: expert e's transfer takes (e + 1) times the roofline one."""

    def transfer_time(self, link, step, layer, experts):
        return super().transfer_time(link, step, layer, experts) * (np.asarray(experts) + 1)


def test_a_custom_cost_model_is_used_not_the_roofline_fast_path():
    hw = hardware(pcie_bw=32 * GB, pcie_channels=2)  # 1/16 s per 1 GB slot transfer
    r = run("gpu-only", hw, cost=_SlowerById(hw, ONE_GB))
    # FIFO on 2 slots, durations 1, 2, 3, 4 sixteenths: slot 0 runs e0 then e2 (ends 4/16),
    # slot 1 runs e1 then e3 (ends 2/16 + 4/16)
    assert r.per_layer["transfer_window"][0] == pytest.approx(6 / 16, rel=1e-15)
    assert r.links["pcie"]["busy"] == pytest.approx(10 / 16 / 2)


class _FasterById(RooflineCost):
    """Expert e's transfer takes (4 - e) times the roofline one: the first in gate order is
    the slowest, so on several slots later transfers overtake it."""

    def transfer_time(self, link, step, layer, experts):
        return super().transfer_time(link, step, layer, experts) * (4 - np.asarray(experts))


def test_the_gpu_takes_one_batch_in_arrival_order_when_transfers_overtake():
    """Durations 4, 3, 2, 1 sixteenths on 2 slots: e0 ends at 4/16 (slot 0), e1 at 3/16
    (slot 1), e2 at 3/16 + 2/16 = 5/16 (slot 1), e3 at 4/16 + 1/16 = 5/16 (slot 0). The GPU
    (1/16 s per expert) runs them as they arrive: e1 3-4, e0 4-5, e2 5-6, e3 6-7 sixteenths;
    in gate order it would end at 8/16."""
    hw = hardware(pcie_bw=32 * GB, pcie_channels=2, hbm_bw=16 * GB)
    r = run("gpu-only", hw, cost=_FasterById(hw, ONE_GB), timeline=True)
    assert r.per_layer["t_end"][0] == pytest.approx(7 / 16, rel=1e-15)
    gpu = [e for e in r.timeline if e.resource == "gpu" and e.kind == "compute"]
    assert [e.expert for e in gpu] == [1, 0, 2, 3]
    untimed = run("gpu-only", hw, cost=_FasterById(hw, ONE_GB))
    assert untimed.per_layer["t_end"][0] == r.per_layer["t_end"][0]


def test_label_params_and_summary_row():
    r = simulate(FOUR, hardware(), ONE_GB, make_policy("seed-split", {"alpha": 0.5}), label="s")
    assert (r.policy, r.label, r.params["alpha"]) == ("seed-split", "s", 0.5)
    row = r.summary_row()
    assert row["label"] == "s" and row["total_time"] == r.totals["total_time"]
    assert {"util_pcie", "util_md_link", "hit_rate", "p99_step"} <= set(row)
    with pytest.raises(UserError, match="expert_bytes"):
        run("gpu-only", hardware(), mdl=model(8, 1, 0.0))


def test_timeline_window_records_only_its_steps_and_changes_no_number():
    trace = make_trace([[[[0], [1], [2]]], [[[2], [2], [3]]], [[[1], [0], [3]]]], num_experts=4)
    hw = hardware(capacity=4 * GB, pcie_bw=32 * GB, hbm_bw=1000 * GB, non_expert=1e-3)
    pol = Scripted(admit=True, prefetch={(0, 0): [(0, 3, "pcie")]})
    plain = run(pol, hw, trace=trace, mdl=M4)
    window = run(pol, hw, trace=trace, mdl=M4, timeline=(1, 2))
    full = run(pol, hw, trace=trace, mdl=M4, timeline=True)
    assert plain.timeline is None
    assert {e.step for e in window.timeline} == {1}
    assert {e.step for e in full.timeline} == {0, 1, 2}
    assert [e for e in full.timeline if e.step == 1] == list(window.timeline)
    for other in (window, full):
        for name, column in plain.per_layer.items():
            np.testing.assert_array_equal(other.per_layer[name], column, err_msg=name)
