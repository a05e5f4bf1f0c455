"""`moesim run`: results directory with the contract's files and columns, byte-identical
reruns, no partial directories, and `--out` never mixes runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.engine.results import PER_LAYER_COLUMNS, PER_STEP_COLUMNS
from sim.scenario import load_scenario, load_scenario_trace, run_scenario, write_results
from sim.scenario.run import RESULT_FILES, SUMMARY_COLUMNS

SCENARIO = {
    "name": "tiny",
    "trace": {
        "synthetic": {
            "num_seqs": 4,
            "seq_len": 12,
            "layer_ids": "2-4",
            "num_experts": 16,
            "topk": 4,
            "seed": 3,
        },
    },
    "routing": {"topk": [1, 4]},
    "model": {"preset": "flame-moe-290m", "num_experts": 16, "top_k": 4},
    "hardware": {"preset": "notebook-gbps", "hbm": {"capacity": "6 experts"}},
    "policies": ["seed-split", "gpu-only", "md-only", {"name": "lru", "label": "lru-all"}],
}


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    return path


def _header(path: Path) -> list[str]:
    with path.open(newline="") as handle:
        return next(csv.reader(handle))


def test_run_writes_contract_files_and_prints_path(scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "r1"
    assert main(["run", str(scenario_file), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().splitlines()[-1] == f"results: {out}"
    assert "tiny: top-4, baseline seed-split" in printed
    # timeline.json: moesim run records a short window by default (for the report's Gantt)
    assert {p.name for p in out.iterdir()} == {*RESULT_FILES, "timeline.json"}
    assert tuple(_header(out / "summary.csv"))[: len(SUMMARY_COLUMNS)] == SUMMARY_COLUMNS
    assert tuple(_header(out / "per_layer.csv")) == ("label", "policy", "topk", *PER_LAYER_COLUMNS)
    assert tuple(_header(out / "per_step.csv")) == ("label", "policy", "topk", *PER_STEP_COLUMNS)
    rows = json.loads((out / "summary.json").read_text())
    assert [(r["topk"], r["label"]) for r in rows] == [
        (k, label) for k in (1, 4) for label in ("seed-split", "gpu-only", "md-only", "lru-all")
    ]
    base = [r for r in rows if r["is_baseline"]]
    assert len(base) == 2 and all(r["speedup"] == 1.0 for r in base)
    assert all(r["gap_closed"] is None for r in rows)  # no bound ran
    lru = next(r for r in rows if r["label"] == "lru-all" and r["topk"] == 4)
    assert lru["policy"] == "lru" and 0 < lru["hit_rate"] <= 1
    with (out / "per_step.csv").open(newline="") as handle:
        assert sum(1 for _ in handle) == 1 + 2 * 4 * 12
    resolved = yaml.safe_load((out / "scenario.resolved.yaml").read_text())
    assert resolved["provenance"]["trace_checksum"].startswith("sha256:")
    assert resolved["hardware"]["links"]["pcie"]["bandwidth"] == "4 GB/s"
    assert json.loads((out / "trace.json").read_text())["synthetic"] is True


def test_same_scenario_and_seed_are_byte_identical(scenario_file, tmp_path) -> None:
    for name in ("a", "b"):
        assert main(["run", str(scenario_file), "--out", str(tmp_path / name), "--quiet"]) == 0
    for file in (*RESULT_FILES, "timeline.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


def test_out_must_be_new_or_empty(scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["run", str(scenario_file), "--out", str(out), "--quiet"]) == 2
    assert "--out: expected a new or empty directory" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", str(scenario_file), "--out", str(empty), "--quiet"]) == 0
    assert (empty / "summary.csv").is_file()


def test_default_out_dir_and_set(scenario_file, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["run", str(scenario_file), "--quiet", "--set", "routing.topk=[2]"]
    assert main(args) == 0
    (path,) = (tmp_path / "results").iterdir()
    assert path.name.startswith("tiny-") and path.name.endswith("Z")
    assert capsys.readouterr().out.strip() == f"results: {Path('results') / path.name}"
    rows = json.loads((path / "summary.json").read_text())
    assert {r["topk"] for r in rows} == {2}


def test_a_failed_write_leaves_nothing(scenario_file, tmp_path, monkeypatch) -> None:
    scenario = load_scenario(scenario_file)
    trace = load_scenario_trace(scenario)
    results = run_scenario(scenario, trace, progress=False)

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("sim.scenario.run.trace_record", boom)
    with pytest.raises(OSError):
        write_results(tmp_path / "out", scenario, trace, results)
    assert list(tmp_path.iterdir()) == [scenario_file]


def test_embedded_trace_window_runs(tmp_path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "trace": {"path": "embedded", "positions": "0-7", "seqs": "0-3"},
                "hardware": "notebook-gbytes",
                "policies": ["seed-split", "md-only"],
            }
        ),
        encoding="utf-8",
    )
    scenario = load_scenario(path)
    trace = load_scenario_trace(scenario)
    assert (trace.num_steps, trace.num_seqs) == (8, 4)
    results = run_scenario(scenario, trace, progress=False)
    assert [r.label for r in results] == ["seed-split", "md-only"]
    assert all(r.per_step["latency"].shape == (8,) for r in results)


def _timeline(out: Path) -> tuple[set[str], set[int]]:
    events = json.loads((out / "timeline.json").read_text())["traceEvents"]
    names = [e["args"] for e in events if e["name"] == "process_name"]
    assert {a["name"] for a in names} == {f"{a['label']} top-4" for a in names}
    steps = {e["args"]["step"] for e in events if e.get("ph") == "X"}
    return {a["label"] for a in names}, steps


def test_timeline_is_written_once_to_the_results(scenario_file, tmp_path) -> None:
    out = tmp_path / "t"
    args = ["run", str(scenario_file), "--quiet", "--set", "routing.topk=4"]
    assert main([*args, "--out", str(out), "--timeline"]) == 0
    labels, steps = _timeline(out)
    assert labels == {"seed-split", "gpu-only", "md-only", "lru-all"}
    assert steps == set(range(12))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t", "tiny.yaml"]  # no second copy
    assert main([*args, "--out", str(tmp_path / "w"), "--timeline", "3:5"]) == 0
    assert _timeline(tmp_path / "w") == (labels, {3, 4})
    assert main([*args, "--out", str(tmp_path / "bad"), "--timeline", "12:14"]) == 2
    assert main([*args, "--out", str(tmp_path / "bad"), "--timeline", "x.json"]) == 2


def test_default_run_records_a_short_window_of_baseline_and_best_online(
    scenario_file, tmp_path
) -> None:
    out = tmp_path / "d"
    assert main(["run", str(scenario_file), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    best = {}
    for r in rows:
        if r["kind"] == "online" and r["is_baseline"] == "False":
            k = int(r["topk"])
            if k not in best or float(r["mean_step"]) < float(best[k]["mean_step"]):
                best[k] = r
    events = json.loads((out / "timeline.json").read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names == {f"seed-split top-{k}" for k in (1, 4)} | {
        f"{r['label']} top-{k}" for k, r in best.items()
    }
    assert {e["args"]["step"] for e in events if e.get("ph") == "X"} == {6, 7}  # 12 steps


def test_trace_mismatch_is_a_user_error(tmp_path, capsys) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"hardware": "notebook-gbps", "model": "mixtral-8x7b"}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "moesim: error: model.num_experts: expected 64 (the trace's expert count)"
    )
    assert not (tmp_path / "results").exists()


def test_report_is_written_last(scenario_file, tmp_path, monkeypatch, capsys) -> None:
    calls = []

    def fake_report(results_dir):
        calls.append(Path(results_dir))
        return Path(results_dir) / "report.html"

    monkeypatch.setattr("sim.report.write_report", fake_report)
    out = tmp_path / "rep"
    assert main(["run", str(scenario_file), "--out", str(out), "--quiet", "--report"]) == 0
    assert calls == [out]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2:] == [f"results: {out}", f"report: {out / 'report.html'}"]


def test_make_runs_report_has_the_link_timeline_among_its_figures(tmp_path) -> None:
    """`make run` is `moesim run scenarios/default.yaml --report`: its report shows at least
    five figures, the link timeline (recorded by default) among them."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "default"
    argv = ["run", str(root / "scenarios" / "default.yaml"), "--out", str(out), "--quiet"]
    assert main([*argv, "--set", "trace.positions=0-3", "--report"]) == 0
    html = (out / "report.html").read_text()
    assert html.count("<figure") >= 5
    assert "Link timeline" in html and "Not drawn: Link timeline" not in html
