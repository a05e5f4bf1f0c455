"""The fidelity harness end to end on the synthetic `FakeBackend` (no GPU needed)."""

from __future__ import annotations

import csv
import dataclasses
from functools import cache

import numpy as np
import pytest
import yaml

from sim.calibrate.backend import FakeBackend, FakeMachine
from sim.calibrate.fidelity import (
    merge_hardware,
    replay_hardware,
    replay_plan,
    run_fidelity,
    select_policies,
)
from sim.calibrate.fit import build_preset
from sim.calibrate.measure import ExpertShape, MeasureConfig, measure
from sim.cli import main
from sim.engine.simulate import simulate
from sim.errors import UserError
from sim.scenario import Scenario, load_scenario_trace, scenario_from_dict
from sim.trace.routing import RoutingTrace

TRUE = FakeMachine(latency=9e-6, bandwidth=24e9, memory_bandwidth=1.4e12, peak_flops=280e12)
SCENARIO = {
    "name": "fid",
    "trace": {"path": "embedded", "positions": "0-5"},
    "routing": {"topk": [6]},
    "model": "flame-moe-290m",
    "hardware": {"preset": "notebook-gbps", "hbm": {"capacity": "64 experts"}},
    "policies": ["seed-split", "gpu-only", "lru"],
}


def true_overlay(machine: FakeMachine, channels: int) -> dict:
    """The machine's own parameters as a hardware overlay (exact unit strings)."""
    return {
        "gpu": {"peak_flops": f"{machine.peak_flops!r} FLOP/s", "non_expert_time": "0 s"},
        "hbm": {"bandwidth": f"{machine.memory_bandwidth!r} B/s"},
        "links": {
            "pcie": {
                "bandwidth": f"{machine.bandwidth!r} B/s",
                "latency": f"{machine.latency!r} s",
                "channels": channels,
            }
        },
    }


def scenario_with(overlay: dict, **extra: object) -> Scenario:
    return scenario_from_dict(merge_hardware({**SCENARIO, **extra}, overlay), "fid.yaml")


@cache
def trace() -> RoutingTrace:
    return load_scenario_trace(scenario_from_dict(SCENARIO, "fid.yaml"))


def fidelity(scenario: Scenario, machine: FakeMachine, labels=("seed-split", "gpu-only", "lru")):
    return run_fidelity(
        trace(),
        scenario.hardware,
        scenario.model,
        select_policies(scenario, labels),
        FakeBackend(machine),
        topk=6,
    )


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("start", ["per-expert", "layer"])
def test_simulator_with_true_parameters_predicts_the_fake_machine(
    channels: int, start: str
) -> None:
    overlay = true_overlay(TRUE, channels)
    overlay["gpu"]["expert_start"] = start
    results = fidelity(scenario_with(overlay), TRUE)
    assert [r.label for r in results] == ["seed-split", "gpu-only", "lru"]
    for r in results:
        assert r.predicted.shape == r.measured.shape == (6,)
        assert np.all(np.abs(r.error_pct) < 1.0), (r.label, r.error_pct)
        assert r.summary()["within_target"]
    gpu_only, lru = results[1], results[2]
    assert lru.measured.mean() < gpu_only.measured.mean()  # the cache saves copies


def test_calibrate_then_fidelity_chain_within_one_percent() -> None:
    noisy = dataclasses.replace(TRUE, noise=0.003, seed=7)
    preset = build_preset(measure(FakeBackend(noisy), MeasureConfig(repeats=5), "2026-01-01"))
    preset = yaml.safe_load(yaml.safe_dump(preset))  # as read back from the file
    results = fidelity(scenario_with(preset["hardware"]), noisy)
    for r in results:
        assert r.summary()["mean_abs_error_pct"] < 1.0, r.summary()


def test_a_wrong_preset_is_caught() -> None:
    preset = build_preset(measure(FakeBackend(TRUE), MeasureConfig(repeats=2), "2026-01-01"))
    slower = dataclasses.replace(TRUE, latency=60e-6, bandwidth=12e9)
    results = fidelity(scenario_with(preset["hardware"]), slower, labels=("gpu-only",))
    summary = results[0].summary()
    assert summary["error_of_means_pct"] < -30  # predicts far too fast
    assert not summary["within_target"]


def test_plan_replays_exactly_what_the_simulator_did() -> None:
    scenario = scenario_with(true_overlay(TRUE, 2))
    hw = replay_hardware(scenario.hardware)
    counts = trace().expert_token_counts(6)
    for spec in select_policies(scenario, ["seed-split", "lru"]):
        result = simulate(trace(), hw, scenario.model, spec.build(), topk=6, timeline=True)
        from sim.calibrate.fidelity import expert_shape

        plan = replay_plan(result, counts, expert_shape(scenario.model), hw)
        pcie = result.per_layer["pcie"].reshape(6, 8)
        for s, layers in enumerate(plan.steps):
            for layer, lp in enumerate(layers):
                assert lp.fetch.shape[0] == pcie[s, layer]
                assert set(lp.fetch[:, 1]) <= {0, 1}
                active = np.flatnonzero(counts[s, layer])
                assert sorted(lp.compute[:, 0]) == sorted(active)  # every active expert, once
                np.testing.assert_array_equal(lp.compute[:, 1], counts[s, layer, lp.compute[:, 0]])
                fetched = lp.compute[lp.compute[:, 2] >= 0]
                np.testing.assert_array_equal(lp.fetch[fetched[:, 2], 0], fetched[:, 0])
        if spec.label == "lru":
            assert result.totals["hits"] > 0


def test_prefetching_policy_is_refused() -> None:
    scenario = scenario_with(true_overlay(TRUE, 1), policies=["prefetch-oracle"])
    with pytest.raises(UserError, match="expected an on-demand policy"):
        fidelity(scenario, TRUE, labels=("prefetch-oracle",))


def test_unknown_policy_label() -> None:
    with pytest.raises(UserError, match="--policies: expected scenario labels"):
        select_policies(scenario_with({}), ["nope"])


def test_cli_dry_run_writes_the_table(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    scenario_file = tmp_path / "fid.yaml"
    scenario_file.write_text(yaml.safe_dump(SCENARIO))
    preset = build_preset(measure(FakeBackend(TRUE), MeasureConfig(repeats=2), "2026-01-01"))
    preset_file = tmp_path / "cal.yaml"
    preset_file.write_text(yaml.safe_dump(preset))
    out = tmp_path / "out"
    argv = ["fidelity", str(scenario_file), "--preset", str(preset_file), "--out", str(out)]
    assert main([*argv, "--steps", "4", "--dry-run"]) == 0
    table = capsys.readouterr().out
    assert "| seed-split | 4 |" in table and "| lru | 4 |" in table
    with open(out / "fidelity.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    assert set(rows[0]) == {
        "label", "policy", "topk", "step", "position", "predicted_s", "measured_s", "error_pct"
    }  # fmt: skip
    assert all(abs(float(r["error_pct"])) < 1e-6 for r in rows)
    info = yaml.safe_load((out / "fidelity.json").read_text())
    assert info["measured"] is False and info["backend"] == "fake"
    # a dry run can never pass for measurements: its table says so first, its summary too
    assert (out / "table.md").read_text().startswith("**DRY RUN on a synthetic machine")
    assert table.startswith("**DRY RUN")
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {r["measured"] for r in summary} == {"False"}
    assert all(r["error_of_means_pct"] != "-0.0" for r in summary)
    assert "-0.0" not in (out / "table.md").read_text()
    # the real thing needs a GPU: one line, exit 2 (and a non-empty --out is refused first)
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert main([*argv[:-1], str(tmp_path / "real"), "--steps", "4"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("moesim: error: no CUDA GPU: ") and err.count("\n") == 1
    assert main([*argv, "--dry-run"]) == 2
    assert "expected a new or empty directory" in capsys.readouterr().err


def test_preset_file_must_hold_a_hardware_mapping(tmp_path) -> None:
    from sim.calibrate.fidelity import load_preset

    bad = tmp_path / "bad.yaml"
    bad.write_text("links: {}\n")
    with pytest.raises(
        UserError, match=r"bad.yaml: expected a calibrated preset with a 'hardware'"
    ):
        load_preset(bad)
    with pytest.raises(UserError, match="expected a calibrated preset YAML"):
        load_preset(tmp_path / "missing.yaml")


def test_replayed_weights_must_match_the_model() -> None:
    from sim.calibrate.fidelity import expert_shape

    scenario = scenario_from_dict(
        {**SCENARIO, "model": {"preset": "flame-moe-290m", "expert_bytes": "5 MB"}}, "x"
    )
    with pytest.raises(UserError, match=r"model\.expert_bytes: expected 4325376 B"):
        expert_shape(scenario.model)


class _EmulatedEvent:
    """A CPU stand-in for torch.cuda.Event: records wall time (the GPU code runs on the CPU)."""

    def __init__(self, enable_timing: bool = False) -> None:
        self.t = 0.0

    def record(self, stream: object = None) -> None:
        import time

        self.t = time.perf_counter()

    def elapsed_time(self, end: _EmulatedEvent) -> float:
        return (end.t - self.t) * 1e3


class _EmulatedStream:
    def __init__(self, device: object = None) -> None:
        pass

    def wait_event(self, event: _EmulatedEvent) -> None:
        pass


def test_cuda_backend_code_runs_on_an_emulated_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: run CudaBackend's own code with torch.cuda's calls stubbed onto the CPU, so
    every torch call it makes (copies, views, the SwiGLU matmuls, the replay loop) executes.
    This checks the code, not any timing."""
    import contextlib

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a real GPU is present: use it instead")
    from sim.calibrate import cuda as cuda_mod

    empty = torch.empty

    def cpu_empty(*args: object, pin_memory: bool = False, device: object = None, **kw: object):
        return empty(*args, **kw)

    cuda = torch.cuda
    for name, value in {
        "is_available": lambda: True,
        "device_count": lambda: 1,
        "set_device": lambda device: None,
        "get_device_name": lambda device=None: "emulated",
        "get_device_properties": lambda device=None: type("P", (), {"total_memory": 2**30}),
        "mem_get_info": lambda device=None: (2**34, 2**34),
        "synchronize": lambda device=None: None,
        "Event": _EmulatedEvent,
        "Stream": _EmulatedStream,
        "current_stream": lambda device=None: _EmulatedStream(),
        "stream": lambda s: contextlib.nullcontext(),
    }.items():
        monkeypatch.setattr(cuda, name, value, raising=False)
    monkeypatch.setattr(torch, "empty", cpu_empty)
    monkeypatch.setattr(torch, "randn", lambda *a, device=None, **kw: torch.ones(*a, **kw))

    backend = cuda_mod.CudaBackend()
    assert backend.device_name() == "emulated"
    copies = backend.copy_seconds("pinned", 4096, 2, repeats=2)
    assert len(copies) == 2 and all(t >= 0 for t in copies)
    shape = ExpertShape(hidden_size=64, ffn_size=32)
    assert len(backend.expert_seconds(shape, 8, repeats=2)) == 2
    x = torch.ones(3, 64, dtype=torch.bfloat16)
    weights = torch.full((shape.params,), 0.01, dtype=torch.bfloat16)
    assert tuple(cuda_mod.expert_ffn(torch, x, weights, shape).shape) == (3, 64)

    scenario = scenario_with(true_overlay(TRUE, 2))
    hw = replay_hardware(scenario.hardware)
    spec = select_policies(scenario, ["lru"])[0]
    small = trace().select(steps=slice(0, 2), layers=[2, 3])
    result = simulate(small, hw, scenario.model, spec.build(), topk=6, timeline=True)
    from sim.calibrate.fidelity import expert_shape

    plan = replay_plan(result, small.expert_token_counts(6), expert_shape(scenario.model), hw)
    times = backend.replay(dataclasses.replace(plan, shape=shape), repeats=1)  # small weights
    assert times.shape == (2,) and np.all(times > 0)
