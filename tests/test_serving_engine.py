"""Serving runs on the engine: parity with lockstep, a request alone against an independent
computation, M/D/1 in closed form, Little's law, saturation at the bottleneck's rate, KV within
its budget, determinism, the policies, and the results files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.cli import main
from sim.engine.closed_form import stateless_layer_times
from sim.errors import UserError
from sim.policies.split import seed_split_plan
from sim.roofline import non_expert_time
from sim.scenario import load_scenario_trace, run_scenario, scenario_from_dict
from sim.serving.metrics import REQUEST_COLUMNS, latencies, time_average_in_system
from sim.serving.run import PER_ITERATION_COLUMNS

ROOT = Path(__file__).resolve().parents[1]


def _csv(tmp_path: Path, rows: list[tuple[float, int, int]], name: str = "r.csv") -> str:
    path = tmp_path / name
    body = "".join(f"{a!r},{p},{o}\n" for a, p, o in rows)
    path.write_text("arrival,prompt_tokens,output_tokens\n" + body)
    return str(path)


def _doc(**changes) -> dict:
    doc = {
        "name": "s",
        "trace": {"path": "embedded", "positions": "0-23"},
        "hardware": {"preset": "notebook-gbps", "hbm": {"capacity": "64 experts"}},
        "policies": ["seed-split"],
    }
    doc.update(changes)
    return doc


def _run(doc: dict, base: Path | None = None):
    scenario = scenario_from_dict(doc, "s.yaml", base_dir=base)
    return scenario, run_scenario(scenario, progress=False)


POLICIES = [
    "seed-split",
    "balanced-split",
    "lru",
    {"name": "least-stale", "params": {"slots": 40}},
    {"name": "prefetch-predicted", "params": {"train_steps": 6, "slots": 48, "scope": "global"}},
]


# the roofline's non-expert time, and a constant one with a per-layer overhead on top (both
# kinds of run charge gpu.layer_overhead to each MoE layer, constant or not)
GPUS = [None, {"non_expert_time": "50 us", "layer_overhead": "20 us"}]


@pytest.mark.parametrize("gpu", GPUS, ids=["roofline", "constant+overhead"])
def test_lockstep_and_serving_give_identical_iterations(tmp_path, gpu):
    """B sequences x S steps in lockstep = B requests at t=0 with prompt 1 and output S: the
    same gates in the same order, the same non-expert time (the roofline gives a one-token
    prefill at position 0 what the decode step at position 0 costs), so the same latencies."""
    steps, seqs = 24, 8
    hardware = {"preset": "notebook-gbps", "hbm": {"capacity": "64 experts"}}
    if gpu is not None:
        hardware["gpu"] = gpu
    _, lockstep = _run(_doc(policies=POLICIES, hardware=hardware))
    workload = {
        "kind": "serving",
        "arrivals": {"process": "csv", "path": _csv(tmp_path, [(0.0, 1, steps)] * seqs)},
    }
    _, serving = _run(_doc(policies=POLICIES, hardware=hardware, workload=workload))
    assert len(lockstep) == len(serving) == len(POLICIES)
    for a, b in zip(lockstep, serving, strict=True):
        assert a.label == b.label
        assert np.array_equal(a.per_step["latency"], b.per_step["latency"]), a.label
        for column in (
            "t_start",
            "t_gate",
            "t_end",
            "hits",
            "pcie",
            "md_fetch",
            "active",
            "gate_mass",
        ):
            assert np.array_equal(a.per_layer[column], b.per_layer[column]), (a.label, column)
        req = b.serving.requests
        assert np.array_equal(req["finish"], np.full(seqs, a.per_layer["t_end"][-1]))
        first_end = a.per_layer["t_end"][len(a.per_layer["t_end"]) // steps - 1]
        assert np.array_equal(req["first_token"], np.full(seqs, first_end))
        assert b.serving.iterations["requests"].tolist() == [seqs] * steps
    predicted = serving[-1].policy_stats
    assert predicted["prefetched"] > 0 and predicted["train_steps"] == 6


def test_one_request_alone_is_the_sum_of_its_iterations(tmp_path):
    """TTFT and end-to-end time of a lone request equal its iterations' latencies computed
    here: the request's routing per iteration, the stateless closed form of the seed split,
    and the roofline's non-expert time."""
    arrival, prompt, output = 0.25, 5, 4
    workload = {
        "kind": "serving",
        "arrivals": {"process": "csv", "path": _csv(tmp_path, [(arrival, prompt, output)])},
    }
    # a preset whose routes are one fifo link each: the closed form applies (the rdma presets
    # put the NIC behind the PCIe port, with fair sharing, since issue 21)
    doc = _doc(workload=workload, hardware="h100-pcie5-cxl")
    scenario, (result,) = _run(doc)
    trace = load_scenario_trace(scenario)
    sel = trace.topk(6)[:, :, 0, :]  # sequence 0: [positions, layers, k]
    iterations = [range(0, prompt)] + [[prompt + j - 1] for j in range(1, output)]
    counts = np.zeros((len(iterations), trace.num_layers, trace.num_experts), dtype=np.int64)
    for i, positions in enumerate(iterations):
        for p in positions:
            for layer in range(trace.num_layers):
                np.add.at(counts[i, layer], sel[p, layer], 1)
    hw, model = scenario.hardware, scenario.model
    non_expert = [non_expert_time(hw, model, [prompt], [prompt])] + [
        non_expert_time(hw, model, [1], [prompt + j]) for j in range(1, output)
    ]
    times = stateless_layer_times(counts, seed_split_plan(counts, hw), hw, model, None, non_expert)
    req = result.serving.requests
    assert req["admitted"][0] == arrival
    assert req["first_token"][0] - arrival == pytest.approx(times.latency[0], rel=1e-12)
    assert req["finish"][0] - arrival == pytest.approx(times.latency.sum(), rel=1e-12)
    assert np.allclose(result.per_step["latency"], times.latency, rtol=1e-12, atol=0)


def _single_sequence(workload: dict, policies=("seed-split",), layers="2-3", positions="0-7"):
    return _doc(
        trace={"path": "embedded", "positions": positions, "layers": layers, "seqs": [0]},
        hardware={"preset": "notebook-gbps"},
        policies=list(policies),
        baseline=policies[0],
        workload=workload,
    )


def _service_time(
    tmp_path: Path, prompt: int, output: int, policy: str = "seed-split", layers: str = "2-3"
) -> float:
    rows = [(0.0, prompt, output)]
    workload = {"kind": "serving", "arrivals": {"process": "csv", "path": _csv(tmp_path, rows)}}
    _, (alone,) = _run(_single_sequence(workload, [policy], layers=layers))
    return float(alone.serving.requests["finish"][0])


def _md1(tmp_path: Path, rho: float, n: int, layers: str, prompt: int, output: int, seed: int):
    """One request at a time, Poisson arrivals, fixed lengths, a stateless policy and one
    trace sequence: every request takes the same service time S (an M/D/1 queue)."""
    service = _service_time(tmp_path, prompt, output, layers=layers)
    workload = {
        "kind": "serving",
        "arrivals": {"process": "poisson", "rate": rho / service},
        "prompt": prompt,
        "output": output,
        "requests": n,
        "warmup": n // 50,
        "seed": seed,
        "scheduler": {"max_running": 1},
    }
    _, (result,) = _run(_single_sequence(workload, layers=layers))
    return service, result.serving


def test_md1_waits_follow_lindleys_recursion(tmp_path):
    """The waits of the M/D/1 case are exactly those of Lindley's recursion on the same
    arrival times: W[i] = max(0, W[i-1] + S - (a[i] - a[i-1]))."""
    service, served = _md1(tmp_path, 0.6, 2000, "2-3", 2, 3, seed=11)
    req = served.requests
    assert np.allclose(req["finish"] - req["admitted"], service, rtol=1e-9)  # deterministic S
    arrival, wait = req["arrival"], req["admitted"] - req["arrival"]
    lindley = np.zeros_like(wait)
    for i in range(1, len(wait)):
        lindley[i] = max(0.0, lindley[i - 1] + service - (arrival[i] - arrival[i - 1]))
    assert np.allclose(wait, lindley, rtol=1e-9, atol=1e-12)
    assert served.summary["queue_mean"] == pytest.approx(wait[req["measured"]].mean())


@pytest.mark.slow
def test_md1_mean_queueing_delay_in_closed_form(tmp_path):
    """Over a long run the mean queueing delay is rho S / (2 (1 - rho)) within 5 % (the
    sample mean's spread is about 1.3 % at this length)."""
    rho = 0.6
    service, served = _md1(tmp_path, rho, 100_000, "2", 1, 1, seed=3)
    wait = served.summary["queue_mean"]
    expected = rho * service / (2.0 * (1.0 - rho))
    assert abs(wait / expected - 1.0) < 0.05, (wait, expected)


def test_littles_law_on_a_drained_run(tmp_path):
    workload = {
        "kind": "serving",
        "arrivals": {"process": "poisson", "rate": 40.0},
        "prompt": {"dist": "uniform", "low": 1, "high": 12},
        "output": {"dist": "uniform", "low": 2, "high": 12},
        "requests": 400,
        "scheduler": {"max_running": 6},
    }
    _, (result,) = _run(_single_sequence(workload, positions="0-23", layers="2-9"))
    req, it = result.serving.requests, result.serving.iterations
    assert np.isfinite(req["finish"]).all()  # drained
    area, _ = time_average_in_system(it)
    span = float(req["finish"].max() - req["arrival"].min())
    e2e = latencies(req)["e2e"]
    little = len(e2e) / span * float(e2e.mean())
    assert little > 0.5 and it["queued"].max() > 0  # requests overlap, some wait
    assert abs(area / span / little - 1.0) < 0.01


def test_throughput_saturates_at_the_md_link_and_the_tail_grows(tmp_path):
    """md-only, one request at a time: the MD link's busy time per request (the trace's active
    experts x one transfer each) predicts the saturation rate. Below it the throughput follows
    the offered rate; past it it flattens at that rate and p99 TTFT grows with the run."""
    prompt, output = 1, 6
    scenario = scenario_from_dict(_single_sequence({}, ["md-only"]))
    trace = load_scenario_trace(scenario)
    counts = trace.expert_token_counts(6)[: prompt + output - 1]
    link = scenario.hardware.link("md_link")
    md_busy = int((counts > 0).sum()) * link.transfer_time(scenario.model.expert_bytes)
    capacity = 1.0 / md_busy  # requests/s the MD link can serve
    service = _service_time(tmp_path, prompt, output, "md-only")
    assert md_busy <= service < 1.1 * md_busy  # the link is the bottleneck

    def run(rate: float, n: int):
        workload = {
            "kind": "serving",
            "arrivals": {"process": "poisson", "rate": rate},
            "prompt": prompt,
            "output": output,
            "requests": n,
            "warmup": n // 10,
            "scheduler": {"max_running": 1},
        }
        _, (result,) = _run(_single_sequence(workload, ["md-only"]))
        return result.serving.summary, result.links["md_link"]["utilisation"]

    served = []
    for share in (0.3, 0.6, 1.5, 3.0):
        summary, util = run(share * capacity, 300)
        served.append(summary["requests_per_s"] / capacity)
        if share < 1:
            assert summary["requests_per_s"] == pytest.approx(share * capacity, rel=0.1)
        else:
            assert 0.9 < served[-1] <= 1.0 and util > 0.9
    assert served[0] < served[1] < min(served[2:])  # grows, then flat at the link's rate
    short, _ = run(3.0 * capacity, 100)
    long, _ = run(3.0 * capacity, 400)
    assert long["ttft_p99"] > 3.0 * short["ttft_p99"]  # no bound past saturation


def _pressure_workload() -> dict:
    return {
        "kind": "serving",
        "arrivals": {"process": "gamma", "rate": 400.0, "cv": 2.0},
        "prompt": {"dist": "uniform", "low": 1, "high": 30},
        "output": {"dist": "uniform", "low": 1, "high": 30},
        "requests": 80,
        "scheduler": {"max_running": 24, "max_batched_tokens": 32, "chunked_prefill": True},
        "memory": {"kv_capacity": "2.5 MB"},  # 4 blocks of flame-moe-290m KV: preemptions
        "slo": {"ttft": "50 ms", "tpot": "20 ms"},
    }


def test_kv_budget_arrivals_completion_and_determinism(tmp_path):
    doc = _doc(
        trace={"path": "embedded", "positions": "0-63", "layers": "2-5"},
        policies=["seed-split", "lru"],
        workload=_pressure_workload(),
    )
    _, first = _run(doc)
    _, second = _run(doc)
    for result, again in zip(first, second, strict=True):
        req, it = result.serving.requests, result.serving.iterations
        assert (it["kv_bytes"] <= it["kv_budget_bytes"]).all()
        assert (it["kv_blocks"] <= it["kv_budget_blocks"]).all()
        assert it["preempted"].sum() == req["preempted"].sum() > 0
        assert (req["admitted"] >= req["arrival"]).all()
        assert (req["first_token"] > req["admitted"]).all()
        assert (req["finish"] >= req["first_token"]).all()
        assert it["finished"].sum() == len(req["request_id"])  # each finishes exactly once
        assert (it["prefill_tokens"] + it["decode_tokens"] <= 32).all()
        s = result.serving.summary
        assert 0.0 <= s["slo_attainment"] <= 1.0 and s["kv_peak_share"] <= 1.0
        for name in req:
            assert np.array_equal(req[name], again.serving.requests[name], equal_nan=True)
        assert result.summary_row() == again.summary_row()


def test_oracles_are_refused_and_profiled_policies_run(tmp_path):
    workload = {
        "kind": "serving",
        "arrivals": {"process": "csv", "path": _csv(tmp_path, [(0.0, 2, 3)])},
    }
    for name in ("belady", "prefetch-oracle", "static-popular"):
        with pytest.raises(
            UserError, match=rf"policies\[1\]\.name: expected an online policy .*'{name}'"
        ):
            _run(_doc(policies=["seed-split", name], workload=workload))
    writeback = {"name": "lru", "params": {"writeback": True}}
    shared = {**workload, "memory": {"mode": "shared"}}
    with pytest.raises(UserError, match=r"policies\[1\]\.params\.writeback: expected false"):
        _run(_doc(policies=["seed-split", writeback], workload=shared))
    profiled = {"name": "static-popular", "params": {"profile": "embedded", "slots": 16}}
    _, results = _run(_doc(policies=["seed-split", profiled], workload=workload))
    assert results[1].kind == "online"


def test_requests_longer_than_the_trace(tmp_path):
    rows = [(0.0, 20, 6), (0.1, 3, 3)]  # 25 positions > 24
    workload = {"kind": "serving", "arrivals": {"process": "csv", "path": _csv(tmp_path, rows)}}
    with pytest.raises(UserError, match=r"got request 0 with prompt 20 \+ output 6 - 1 = 25"):
        _run(_doc(workload=workload))
    _, (result,) = _run(_doc(workload={**workload, "wrap": True}))
    assert result.serving.requests["wrapped"].tolist() == [True, False]
    assert np.isfinite(result.serving.requests["finish"]).all()


def test_cli_run_writes_the_serving_files_and_the_report(tmp_path, capsys):
    doc = _doc(
        trace={"path": "embedded", "positions": "0-63"},
        policies=["seed-split", "lru"],
        workload={**_pressure_workload(), "requests": 40, "memory": {"mode": "fixed"}},
    )
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 0
    assert "40 requests, KV" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--report"]) == 0
    printed = capsys.readouterr().out
    assert "TTFT p99" in printed and "serving" in printed
    header = (out / "requests.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == REQUEST_COLUMNS
    assert len((out / "requests.csv").read_text().splitlines()) == 1 + 2 * 40
    header = (out / "per_iteration.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == ("label", "policy", "topk", *PER_ITERATION_COLUMNS)
    summary = (out / "summary.csv").read_text().splitlines()[0].split(",")
    for column in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "e2e_p50", "e2e_p99"):
        assert column in summary
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert {"request_latency_cdf_top6", "hbm_over_time_top6"} <= figures
    html = (out / "report.html").read_text()
    assert "Serving" in html and "TTFT p99 (ms)" in html


def test_shared_pool_shrinks_the_expert_cache_as_kv_grows():
    """memory.mode shared: KV and the expert cache share HBM less weights and staging; the
    cache is resized before each iteration and never holds more than what KV leaves."""
    doc = _doc(
        trace="embedded",
        hardware={
            "preset": "notebook-gbps",
            "gpu": {"hbm_capacity": "1.2 GB"},
            "hbm": {"capacity": "96 experts"},
        },
        policies=[
            "seed-split",
            "lru",
            {"name": "lru", "label": "lru-g", "params": {"scope": "global"}},
        ],
        workload={
            "kind": "serving",
            "arrivals": {"rate": 40.0},
            "prompt": {"dist": "uniform", "low": 100, "high": 200},
            "output": {"dist": "uniform", "low": 20, "high": 48},
            "requests": 60,
            "memory": {"mode": "shared"},
        },
    )
    scenario, results = _run(doc)
    from sim.serving.memory import non_expert_weight_bytes

    model = scenario.model
    pool = 1.2e9 - non_expert_weight_bytes(model) - 64 * model.expert_bytes
    for result in results:
        it = result.serving.iterations
        assert (it["kv_budget_bytes"] <= pool).all()
        assert (it["kv_bytes"] + it["expert_capacity_bytes"] <= pool * (1 + 1e-12)).all()
        assert (it["expert_cache_bytes"] <= it["expert_capacity_bytes"] * (1 + 1e-12)).all()
    lru = results[1].serving.iterations
    full = 96 * model.expert_bytes
    assert lru["expert_capacity_bytes"].min() < full  # KV took some of the cache's room
    shrunk = lru["expert_capacity_bytes"] < full
    assert (lru["expert_cache_bytes"][shrunk] < full).all()
    assert results[1].totals["hits"] > 0 and results[2].totals["hits"] > 0


def test_cache_policies_evict_their_lowest_keys_on_a_resize():
    from sim.contract import PolicyContext
    from sim.engine.cost import RooflineCost
    from sim.policies import make_policy

    scenario = scenario_from_dict(_doc())
    hw, model = scenario.hardware, scenario.model
    counts = np.zeros((4, 2, model.num_experts), dtype=np.int64)
    ctx = PolicyContext(hw, model, counts, (2, 3), 6, RooflineCost(hw, model))
    ready = np.full((2, model.num_experts), np.inf)
    ready[0, [1, 2, 3]] = 0.0
    ready[1, [4, 5]] = 0.0
    # 3 slots: global keeps the 3 most recent; per layer 3 // 2 = 1 each, the most recent
    for scope, expected in (("global", {(0, 1), (0, 2)}), ("layer", {(0, 1), (0, 2), (1, 4)})):
        policy = make_policy("lru", {"scope": scope, "slots": 6})
        policy.bind(ctx)
        policy.last_use[0, [1, 2, 3]] = [1.0, 2.0, 9.0]
        policy.last_use[1, [4, 5]] = [5.0, 6.0]
        evict = policy.on_cache_resize(3.2 * model.expert_bytes, ready, step=3)
        assert set(evict) == expected, scope
        assert policy.total_slots == 3
        assert policy.on_cache_resize(1e12, ready, step=4) == [] and policy.total_slots == 6


@pytest.mark.parametrize("policy", ["seed-split", "lru"])
def test_planning_ahead_changes_nothing(tmp_path, monkeypatch, policy):
    """While the scheduler can decide iterations before they are timed (a backlog longer than
    the batch's room, or every request arrived) the source plans them ahead and the engine may
    time a stateless policy's iterations in blocks; the records must equal those of a run
    decided one iteration at a time."""
    from sim.serving.scheduler import Scheduler
    from sim.serving.source import ServingSource

    rows = [(0.0, 1 + i % 7, 2 + i % 11) for i in range(40)] + [(0.05, 3, 4)] * 5
    rows += [(0.3 + 0.01 * i, 2, 3) for i in range(10)]  # later arrivals, some while idle
    workload = {
        "kind": "serving",
        "arrivals": {"process": "csv", "path": _csv(tmp_path, rows)},
        "scheduler": {"max_running": 8, "max_batched_tokens": 16, "chunked_prefill": True},
    }
    doc = _doc(policies=[policy], baseline=policy, workload=workload)
    planned = []
    plan = ServingSource._plan

    def counting(self, gpu, now):
        out = plan(self, gpu, now)
        planned.append(len(self._ahead[gpu]))
        return out

    monkeypatch.setattr(ServingSource, "_plan", counting)
    _, (ahead,) = _run(doc)
    assert max(planned) > 1  # iterations were planned ahead
    monkeypatch.setattr(ServingSource, "time_independent", property(lambda self: False))
    monkeypatch.setattr(Scheduler, "can_plan_next", lambda self: False)
    _, (stepwise,) = _run(doc)
    for name, column in stepwise.serving.requests.items():
        assert np.array_equal(ahead.serving.requests[name], column, equal_nan=True), name
    for name, column in stepwise.serving.iterations.items():
        assert np.array_equal(ahead.serving.iterations[name], column, equal_nan=True), name
    assert np.array_equal(ahead.per_layer["t_end"], stepwise.per_layer["t_end"])


def test_an_iterations_demand_is_the_lockstep_steps_with_skipping_too():
    """Decodes of every sequence at one position are a lockstep step: the same counts, router
    mass, top score and (tokens skipping experts scored below 0.2) dropped mass."""
    from sim.serving.routing import SequenceRouting

    trace = load_scenario_trace(scenario_from_dict(_doc()))
    for skip in (0.0, 0.2):
        routing = SequenceRouting(trace, 6, skip_below=skip)
        seqs = np.arange(trace.num_seqs)
        batches = [
            (seqs, np.full(seqs.size, p), np.ones(seqs.size, dtype=np.int64)) for p in (0, 5)
        ]
        got = routing.demand(batches)
        want = trace.demand(6, skip)
        for i, p in enumerate((0, 5)):
            assert np.array_equal(got.counts[i], want.counts[p])
            assert np.array_equal(got.mass[i], want.mass[p])
            assert np.array_equal(got.top[i], want.top[p])
            assert np.allclose(got.dropped[i], want.dropped[p], rtol=1e-12, atol=1e-15)
        if skip:
            assert got.dropped.sum() > 0


def _two_gpus(workload: dict, policies=("seed-split", "lru")) -> dict:
    return _doc(
        trace={"path": "embedded", "positions": "0-63"},
        hardware={"preset": "notebook-gbps", "num_gpus": 2, "hbm": {"capacity": "64 experts"}},
        policies=list(policies),
        workload=workload,
    )


def test_replicas_serve_each_request_once_and_share_the_md_pool(tmp_path):
    workload = {
        "kind": "serving",
        "arrivals": {"rate": 30.0},
        "prompt": {"dist": "uniform", "low": 4, "high": 32},
        "output": {"dist": "uniform", "low": 2, "high": 30},
        "requests": 80,
        "router": "round-robin",
    }
    _, results = _run(_two_gpus(workload))
    for result in results:
        req, it = result.serving.requests, result.serving.iterations
        assert req["gpu"].tolist() == [i % 2 for i in range(80)]
        assert np.isfinite(req["finish"]).all() and (req["admitted"] >= req["arrival"]).all()
        assert it["finished"].sum() == 80
        for gpu in (0, 1):  # each GPU's iterations follow one another
            mine = it["gpu"] == gpu
            assert (it["t_start"][mine][1:] >= it["t_end"][mine][:-1]).all()
            assert it["finished"][mine].sum() == np.count_nonzero(req["gpu"] == gpu)
        area, _ = time_average_in_system(it)  # the GPUs' integrals add up: Little's law
        span = float(req["finish"].max() - req["arrival"].min())
        e2e = latencies(req)["e2e"]
        assert abs(area / (len(e2e) / span * float(e2e.mean()) * span) - 1.0) < 0.01
        assert set(np.unique(result.per_layer["gpu"]).tolist()) == {0, 1}
    _, again = _run(_two_gpus(workload))
    assert results[1].summary_row() == again[1].summary_row()  # deterministic
    # one GPU serving the same requests alone: the MD link carries less
    _, alone = _run({**_two_gpus(workload), "hardware": {"preset": "notebook-gbps"}})
    assert alone[0].totals["bytes_md"] < results[0].totals["bytes_md"]


def test_least_outstanding_sends_work_to_the_idler_gpu(tmp_path):
    rows = [(0.0, 40, 20), (0.0, 2, 2), (0.0, 2, 2), (0.0, 2, 2)]
    csv = {"kind": "serving", "arrivals": {"process": "csv", "path": _csv(tmp_path, rows)}}
    _, (result,) = _run(_two_gpus({**csv, "router": "least-outstanding"}, ["seed-split"]))
    assert result.serving.requests["gpu"].tolist() == [0, 1, 1, 1]
    _, (result,) = _run(_two_gpus({**csv, "router": "round-robin"}, ["seed-split"]))
    assert result.serving.requests["gpu"].tolist() == [0, 1, 0, 1]
    with pytest.raises(UserError, match=r"hardware\.parallel: expected replicas"):
        doc = _two_gpus(csv, ["seed-split"])
        doc["hardware"]["parallel"] = "split"
        _run(doc)


def test_a_skipping_policy_serves_as_in_lockstep(tmp_path):
    """skip-low-score in serving: the tokens skip what they skip in lockstep (same gates as
    the lockstep run of the same work), and the dropped mass is reported."""
    steps, seqs = 24, 8
    skipping = {"name": "skip-low-score", "params": {"threshold": 0.2}}
    _, lockstep = _run(_doc(policies=[skipping], baseline="skip-low-score"))
    workload = {
        "kind": "serving",
        "arrivals": {"process": "csv", "path": _csv(tmp_path, [(0.0, 1, steps)] * seqs)},
    }
    _, serving = _run(_doc(policies=[skipping], baseline="skip-low-score", workload=workload))
    for column in ("active", "pcie", "md_fetch", "t_end"):  # the same gates, bit for bit
        assert np.array_equal(lockstep[0].per_layer[column], serving[0].per_layer[column]), column
    for column in ("gate_mass", "dropped_gate_mass"):  # summed in another order
        assert np.allclose(lockstep[0].per_layer[column], serving[0].per_layer[column], atol=1e-12)
    assert serving[0].totals["dropped_gate_mass"] > 0


def test_a_policy_reading_top_scores_serves_as_in_lockstep(tmp_path):
    """low-precision-on-miss reads each gate's top scores (`GateView.top_score`), which a
    serving run computes only when first read (`DeferredArray`): the same work gives the
    lockstep run's gates bit for bit, reduced copies and degraded mass included."""
    low = {"name": "low-precision-on-miss", "params": {"threshold": 0.3}}
    hardware = {
        "preset": "notebook-gbps",
        "hbm": {"capacity": "64 experts"},
        "copies": {"host": ["bf16", "int4"], "md": ["bf16", "int4"]},
    }
    doc = _doc(policies=[low], hardware=hardware, baseline="low-precision-on-miss")
    _, lockstep = _run(doc)
    workload = {
        "kind": "serving",
        "arrivals": {"process": "csv", "path": _csv(tmp_path, [(0.0, 1, 24)] * 8)},
    }
    _, serving = _run({**doc, "workload": workload})
    assert lockstep[0].per_layer["reduced"].sum() > 0  # the scores decided something
    for column, values in lockstep[0].per_layer.items():
        assert np.array_equal(values, serving[0].per_layer[column]), column


def test_a_traces_sequence_routing_is_built_once_and_shared_by_runs(tmp_path, monkeypatch):
    """A serving run takes its per-token routing from the trace's cache (as lockstep runs
    take their demand): built once per (top-k, wrap, skip) and read-only, the second run on
    the same trace gives the first run's results without building it again."""
    from sim.serving import routing as routing_module

    trace = load_scenario_trace(scenario_from_dict(_doc()))
    first = trace.sequence_routing(6)
    assert trace.sequence_routing(6) is first
    assert trace.sequence_routing(6, skip_below=0.2) is not first
    assert trace.sequence_routing(6, wrap=True) is not first
    assert trace.sequence_routing(4) is not first
    for array in (first.keys, first.weight, first.dropped):
        assert not array.flags.writeable
    rows = [(0.01 * i, 1 + i % 5, 2 + i % 7) for i in range(30)]
    workload = {"kind": "serving", "arrivals": {"process": "csv", "path": _csv(tmp_path, rows)}}
    scenario = scenario_from_dict(_doc(policies=["seed-split", "lru"], workload=workload))
    fresh = load_scenario_trace(scenario)
    one = run_scenario(scenario, fresh, progress=False)
    built = []
    init = routing_module.SequenceRouting.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(routing_module.SequenceRouting, "__init__", counting)
    two = run_scenario(scenario, fresh, progress=False)
    assert not built  # the first run's, from the trace
    for a, b in zip(one, two, strict=True):
        for name, column in a.per_layer.items():
            assert np.array_equal(column, b.per_layer[name], equal_nan=True), name
        for name, column in a.serving.requests.items():
            assert np.array_equal(column, b.serving.requests[name], equal_nan=True), name
        for name, column in a.serving.iterations.items():
            assert np.array_equal(column, b.serving.iterations[name], equal_nan=True), name
