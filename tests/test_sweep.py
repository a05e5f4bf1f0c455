"""Sweeps: grid/zip expansion, validation before running, resume, executors, the table."""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import UserError
from sim.sweep import (
    PointOutcome,
    PointTask,
    execute,
    expand,
    load_sweep,
    point_document,
    run_sweep,
    sweep_from_dict,
    validate_points,
)

# --- fakes: a point function that counts its executions across processes ------------------


SPEED = {"seed-split": 1, "lru": 2}  # the fake policies' relative speeds


class Crash(Exception):
    """Stands in for the sweep process being killed half-way."""


def _set(doc: dict, dotted: str, value: Any) -> dict:
    out = copy.deepcopy(doc)
    node = out
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


def _accept(doc: dict, source: str) -> dict:
    bandwidth = doc.get("hardware", {}).get("bw")
    if bandwidth is not None and (not isinstance(bandwidth, int) or bandwidth <= 0):
        raise UserError(f"{source}: hardware.bw: expected a positive bandwidth, got {bandwidth!r}")
    return doc


def fake_point(task: PointTask) -> PointOutcome:
    """Deterministic rows from the document; one marker file per execution."""
    doc = task.document
    Path(doc["count_dir"], f"{task.point.point_id}-{uuid.uuid4().hex}").touch()
    crash_file = Path(doc["count_dir"]).parent / "crash_at"
    if crash_file.exists() and task.point.index == int(crash_file.read_text()):
        raise Crash(task.point.point_id)
    bw = doc["hardware"]["bw"]
    rows = tuple(
        {"policy": p, "label": p, "topk": k, "mean_step": 1.0 / (bw * SPEED[p] * k) + doc["seed"]}
        for k in doc["routing"]["topk"]
        for p in doc["policies"]
    )
    return PointOutcome(task.point.point_id, rows, 0.0)


def _doc(count_dir: Path, **sweep: Any) -> dict:
    return {
        "name": "fake",
        "seed": 0,
        "count_dir": str(count_dir),
        "hardware": {"bw": 1},
        "routing": {"topk": [1]},
        "policies": ["seed-split", "lru"],
        "sweep": sweep,
    }


def _executions(count_dir: Path) -> list[str]:
    return sorted(name.split("-")[0] for name in os.listdir(count_dir))


def _table(out: Path) -> list[dict[str, str]]:
    with open(out / "sweep.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# --- expansion ---------------------------------------------------------------------------


def test_grid_is_cartesian_product_in_file_order() -> None:
    spec = sweep_from_dict(
        {"seed": 3, "sweep": {"grid": {"a.b": [1, 2, 3], "c": ["x", "y"]}}}, "s.yaml"
    )
    points = expand(spec)
    assert [p.overrides for p in points] == [
        (("a.b", a), ("c", c)) for a in (1, 2, 3) for c in ("x", "y")
    ]
    assert [p.index for p in points] == list(range(6))
    assert {p.seed for p in points} == {3}
    assert len({p.point_id for p in points}) == 6


def test_zip_advances_together_and_combines_with_grid_and_repeats() -> None:
    spec = sweep_from_dict(
        {
            "sweep": {
                "grid": {"policies": ["lru", "lfu"]},
                "zip": {"x.bw": [1, 2, 3], "x.lat": [10, 20, 30]},
                "repeats": 2,
            }
        },
        "s.yaml",
    )
    points = expand(spec)
    assert len(points) == 2 * 3 * 2
    assert points[0].overrides == (("policies", "lru"), ("x.bw", 1), ("x.lat", 10))
    assert points[2].overrides == (("policies", "lru"), ("x.bw", 2), ("x.lat", 20))
    assert [p.seed for p in points[:4]] == [0, 1, 0, 1]
    assert spec.swept_paths == ("policies", "x.bw", "x.lat")


def test_several_zip_groups_are_separate_axes() -> None:
    spec = sweep_from_dict(
        {"sweep": {"zip": [{"a": [1, 2], "b": [3, 4]}, {"c": [5, 6, 7]}]}}, "s.yaml"
    )
    assert len(expand(spec)) == 6
    assert [axis.where for axis in spec.axes] == ["sweep.zip[0]", "sweep.zip[1]"]


def test_point_id_is_stable_and_independent_of_axis_order() -> None:
    one = expand(sweep_from_dict({"sweep": {"grid": {"a": [1, 2], "b": [3]}}}, "s"))
    two = expand(sweep_from_dict({"sweep": {"grid": {"b": [3], "a": [1, 2]}}}, "t"))
    assert {p.point_id for p in one} == {p.point_id for p in two}
    assert one[0].point_id == "".join(one[0].point_id)  # a plain hex string
    assert len(one[0].point_id) == 16


@settings(deadline=None, max_examples=25)
@given(
    grid=st.dictionaries(
        st.sampled_from(["a", "b.c", "d.e.f"]),
        st.lists(st.integers(-5, 5), min_size=1, max_size=3, unique=True),
        max_size=3,
    ),
    repeats=st.integers(1, 3),
)
def test_expansion_size_and_unique_ids(grid: dict[str, list[int]], repeats: int) -> None:
    spec = sweep_from_dict({"sweep": {"grid": grid, "repeats": repeats}}, "s")
    points = expand(spec)
    size = repeats
    for values in grid.values():
        size *= len(values)
    assert len(points) == size
    assert len({p.point_id for p in points}) == size


def test_policies_axis_runs_one_policy_per_point() -> None:
    spec = sweep_from_dict(
        {"policies": ["x"], "sweep": {"grid": {"policies": ["lru", ["a", "b"]]}}}, "s"
    )
    docs = [point_document(spec, p, _set) for p in expand(spec)]
    assert [d["policies"] for d in docs] == [["lru"], ["a", "b"]]
    # a single swept policy is its point's own baseline (no baseline run added per point)
    assert [d.get("baseline") for d in docs] == ["lru", None]
    assert spec.base["policies"] == ["x"]  # the base is never modified


def test_repeats_set_the_seed_fields() -> None:
    spec = sweep_from_dict(
        {"seed": 7, "sweep": {"repeats": 2, "seed_fields": ["seed", "trace.synthetic.seed"]}},
        "s",
    )
    docs = [point_document(spec, p, _set) for p in expand(spec)]
    assert [(d["seed"], d["trace"]["synthetic"]["seed"]) for d in docs] == [(7, 7), (8, 8)]


# --- shape errors: one line, naming the YAML path ----------------------------------------


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ({"grid": {"a": []}}, "sweep.grid.a: expected a non-empty list of values"),
        ({"grid": {"a": 3}}, "sweep.grid.a: expected a non-empty list of values, got 3"),
        ({"grid": {"a": [1, 1]}}, "sweep.grid.a[1]: expected distinct values"),
        ({"grid": {"a..b": [1]}}, "sweep.grid.a..b: expected a dotted field"),
        ({"grid": {"sweep.x": [1]}}, "expected a scenario field"),
        ({"zip": {"a": [1, 2], "b": [1]}}, "sweep.zip: expected lists of equal length"),
        ({"grid": {"a": [1]}, "zip": {"a": [2]}}, "expected each field swept once"),
        ({"repeats": 0}, "sweep.repeats: expected an integer >= 1, got 0"),
        ({"grids": {}}, "sweep.grids: expected one of grid, zip, repeats"),
        ({"grid": {"seed": [1, 2]}, "repeats": 2}, "expected seed fields (seed) not to be swept"),
    ],
)
def test_sweep_block_errors(sweep: dict, message: str) -> None:
    with pytest.raises(UserError, match=None) as info:
        sweep_from_dict({"sweep": sweep}, "s.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("s.yaml: ")
    assert "\n" not in str(info.value)


def test_validation_names_the_bad_value_before_anything_runs(tmp_path: Path) -> None:
    spec = sweep_from_dict(_doc(tmp_path, grid={"hardware.bw": [1, 2, "fast"]}), "s.yaml")
    with pytest.raises(UserError) as info:
        validate_points(spec, expand(spec), _accept, _set)
    assert str(info.value) == (
        "s.yaml: sweep.grid.hardware.bw[2] (fast): hardware.bw: expected a positive "
        "bandwidth, got 'fast'"
    )


def test_bad_value_stops_the_sweep_before_any_point_runs(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.mkdir()
    spec = sweep_from_dict(_doc(count, grid={"hardware.bw": [1, -1]}), "s.yaml")
    with pytest.raises(UserError, match=r"sweep.grid.hardware.bw\[1\]"):
        run_sweep(
            spec, tmp_path / "out", jobs=1, progress=False, point_fn=fake_point,
            validate=_accept, set_dotted=_set,
        )  # fmt: skip
    assert _executions(count) == []
    assert not (tmp_path / "out").exists()


def test_load_sweep_applies_set_and_reports_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("seed: 1\nsweep:\n  grid:\n    a: [1, 2]\n")
    spec = load_sweep(path, ["seed=5", "sweep.repeats=2"], set_dotted=_set)
    assert (spec.base_seed, spec.repeats) == (5, 2)
    with pytest.raises(UserError, match="expected a sweep YAML file"):
        load_sweep(tmp_path / "nope.yaml")
    path.write_text("seed: 1\n")
    with pytest.raises(UserError, match="sweep: expected a 'sweep:' block"):
        load_sweep(path)


# --- running, resume, the table ----------------------------------------------------------


def _run(spec, out: Path, **kwargs: Any):
    return run_sweep(
        spec, out, progress=False, point_fn=fake_point, validate=_accept, set_dotted=_set,
        **kwargs,
    )  # fmt: skip


def test_table_has_one_row_per_point_policy_topk_and_swept_columns(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.mkdir()
    sweep = {"grid": {"hardware.bw": [1, 2], "routing.topk": [[1, 2]]}, "repeats": 2}
    spec = sweep_from_dict(_doc(count, **sweep), "s.yaml")
    report = _run(spec, tmp_path / "out", jobs=1)
    rows = _table(tmp_path / "out")
    assert report.rows == len(rows) == 2 * 2 * 2 * 2
    assert list(rows[0])[:6] == [
        "point_id",
        "point",
        "repeat",
        "seed",
        "hardware.bw",
        "routing.topk",
    ]
    assert {r["hardware.bw"] for r in rows} == {"1", "2"}
    split = [r for r in rows if r["label"] == "seed-split"]
    assert all(float(r["speedup"]) == 1.0 for r in split)
    lru = next(
        r for r in rows if r["label"] == "lru" and r["seed"] == "0" and r["hardware.bw"] == "1"
    )
    assert float(lru["speedup"]) == pytest.approx(1.0 / 0.5)
    manifest = (tmp_path / "out" / "sweep.resolved.yaml").read_text()
    assert "fingerprint:" in manifest and "hardware.bw" in manifest


def test_speedup_uses_the_sibling_point_when_policies_are_swept(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.mkdir()
    spec = sweep_from_dict(
        _doc(count, grid={"hardware.bw": [1, 4], "policies": ["seed-split", "lru"]}), "s.yaml"
    )
    _run(spec, tmp_path / "out", jobs=1)
    rows = _table(tmp_path / "out")
    assert len(rows) == 4
    assert [r["policies"] for r in rows] == ["seed-split", "lru"] * 2
    assert [r["label"] for r in rows] == ["seed-split", "lru"] * 2
    assert [float(r["speedup"]) for r in rows] == [1.0, 2.0, 1.0, 2.0]
    assert [r["is_baseline"] for r in rows] == ["True", "False"] * 2


def test_resume_after_a_kill_finishes_without_repeating_a_point(tmp_path: Path) -> None:
    sweep = {"grid": {"hardware.bw": [1, 2, 3, 4, 5, 6]}, "repeats": 2}
    count_a, count_b = tmp_path / "a", tmp_path / "b"
    count_a.mkdir()
    count_b.mkdir()
    # uninterrupted reference run
    reference = sweep_from_dict(_doc(count_a, **sweep), "s.yaml")
    _run(reference, tmp_path / "ref", jobs=1)

    (tmp_path / "crash_at").write_text("5")
    with pytest.raises(Crash):
        _run(sweep_from_dict(_doc(count_b, **sweep), "s.yaml"), tmp_path / "out", jobs=1)
    (tmp_path / "crash_at").unlink()
    assert len(os.listdir(tmp_path / "out" / "points")) == 5
    assert not (tmp_path / "out" / "sweep.csv").exists()

    with pytest.raises(UserError, match="--resume"):
        _run(sweep_from_dict(_doc(count_b, **sweep), "s.yaml"), tmp_path / "out", jobs=1)
    resumed = _run(
        sweep_from_dict(_doc(count_b, **sweep), "s.yaml"), tmp_path / "out", resume=True, jobs=2
    )
    assert (resumed.skipped, resumed.ran) == (5, 7)
    runs = _executions(count_b)
    # the crashed point ran twice (it never finished); every other point exactly once
    assert len(runs) == 13 and len(set(runs)) == 12
    assert _table(tmp_path / "out") == _table(tmp_path / "ref")
    assert (tmp_path / "out" / "sweep.csv").read_bytes() == (
        tmp_path / "ref" / "sweep.csv"
    ).read_bytes()

    again = _run(sweep_from_dict(_doc(count_b, **sweep), "s.yaml"), tmp_path / "out", resume=True)
    assert (again.skipped, again.ran) == (12, 0)
    assert len(_executions(count_b)) == 13


def test_resume_refuses_a_changed_base_scenario(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.mkdir()
    _run(sweep_from_dict(_doc(count, grid={"hardware.bw": [1]}), "s.yaml"), tmp_path / "out")
    changed = _doc(count, grid={"hardware.bw": [1]})
    changed["routing"] = {"topk": [2]}
    with pytest.raises(UserError, match="same base scenario"):
        _run(sweep_from_dict(changed, "s.yaml"), tmp_path / "out", resume=True)
    with pytest.raises(UserError, match="expected a sweep results directory"):
        _run(sweep_from_dict(changed, "s.yaml"), tmp_path / "nothing", resume=True)


def test_resume_extends_a_grown_grid(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.mkdir()
    _run(sweep_from_dict(_doc(count, grid={"hardware.bw": [1, 2]}), "s.yaml"), tmp_path / "out")
    grown = _run(
        sweep_from_dict(_doc(count, grid={"hardware.bw": [1, 2, 3]}), "s.yaml"),
        tmp_path / "out",
        resume=True,
    )
    assert (grown.skipped, grown.ran) == (2, 1)
    assert len(_table(tmp_path / "out")) == 3 * 2


def test_parquet_matches_csv(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    count = tmp_path / "count"
    count.mkdir()
    _run(sweep_from_dict(_doc(count, grid={"hardware.bw": [1, 2]}), "s.yaml"), tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / "sweep.parquet").to_pylist()
    rows = _table(tmp_path / "out")
    assert [r["point_id"] for r in table] == [r["point_id"] for r in rows]
    assert [r["hardware.bw"] for r in table] == [1, 1, 2, 2]


# --- executors ---------------------------------------------------------------------------


def _square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_executor_returns_every_result(jobs: int) -> None:
    assert sorted(execute(list(range(7)), _square, jobs=jobs)) == [x * x for x in range(7)]


def _pid(_: int) -> int:
    import time

    time.sleep(0.05)  # long enough that both workers take tasks
    return os.getpid()


def test_a_session_keeps_its_workers_across_batches() -> None:
    from sim.sweep import Session

    with Session(jobs=2) as session:
        first = set(session.run(list(range(4)), _pid))
        second = set(session.run(list(range(4)), _pid))
        assert session.run([], _pid) is not None and list(session.run([], _pid)) == []
    assert os.getpid() not in first
    assert len(first) == 2 and second == first  # the same two processes, not a new pool
    with Session(jobs=2) as session:
        assert set(session.run([1], _pid)) == {os.getpid()}  # one task: in this process


def test_executor_argument_errors() -> None:
    with pytest.raises(UserError, match="--executor"):
        execute([1], _square, executor="ray")
    with pytest.raises(UserError, match="--jobs"):
        execute([1], _square, jobs=0)
    with pytest.raises(UserError, match="--scheduler"):
        execute([1], _square, scheduler="tcp://x:1")


def test_a_failing_point_is_reported_and_the_others_are_kept(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.mkdir()

    spec = sweep_from_dict(_doc(count, grid={"hardware.bw": [1, 2, 3]}), "s.yaml")
    with pytest.raises(UserError, match=r"1 of 3 points failed, first point 1 .*--resume"):
        run_sweep(
            spec, tmp_path / "out", jobs=1, progress=False, point_fn=failing_point,
            validate=_accept, set_dotted=_set,
        )  # fmt: skip
    assert len(os.listdir(tmp_path / "out" / "points")) == 2


def failing_point(task: PointTask) -> PointOutcome:
    if task.point.index == 1:
        return PointOutcome(task.point.point_id, (), 0.0, "policy lru: expected x, got y")
    return fake_point(task)


def test_point_files_are_complete_json(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.mkdir()
    spec = sweep_from_dict(_doc(count, grid={"hardware.bw": [1, 2]}), "s.yaml")
    _run(spec, tmp_path / "out", jobs=2)
    files = sorted((tmp_path / "out" / "points").iterdir())
    assert len(files) == 2
    for file in files:
        record = json.loads(file.read_text())
        assert record["point_id"] == file.stem and len(record["rows"]) == 2


# --- the real pipeline: scenario validation, run_scenario, the embedded trace ----------------

FAST_TRACE = {"path": "embedded", "positions": "0-15"}  # 16 decode steps keep points ~10 ms


def _real_doc(**sweep: Any) -> dict:
    return {
        "name": "t",
        "trace": dict(FAST_TRACE),
        "routing": {"topk": 6},
        "hardware": {"preset": "notebook-gbytes", "hbm": {"capacity": "16 experts"}},
        "policies": ["seed-split"],
        "sweep": sweep,
    }


def _write_yaml(path: Path, doc: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_sweep_rows_equal_one_scenario_run_of_the_same_policies(tmp_path: Path) -> None:
    from sim.scenario import run_scenario, scenario_from_dict
    from sim.scenario.run import summary_rows

    bandwidths = ["64 GB/s", "512 GB/s"]
    policies = ["seed-split", "lru", "gpu-only"]
    spec = sweep_from_dict(
        _real_doc(grid={"hardware.links.md_link.bandwidth": bandwidths, "policies": policies}),
        str(tmp_path / "s.yaml"),
    )
    run_sweep(spec, tmp_path / "out", jobs=1, progress=False)
    rows = _table(tmp_path / "out")
    assert len(rows) == 6
    for bandwidth in bandwidths:
        doc = _real_doc()
        del doc["sweep"]
        doc["hardware"]["links"] = {"md_link": {"bandwidth": bandwidth}}
        doc["policies"] = policies
        scenario = scenario_from_dict(doc, "one.yaml")
        expected = summary_rows(scenario, run_scenario(scenario, progress=False))
        got = [r for r in rows if r["hardware.links.md_link.bandwidth"] == bandwidth]
        assert [r["label"] for r in got] == [e["label"] for e in expected]
        for row, want in zip(got, expected):
            for column in ("mean_step", "p99_step", "bytes_pcie", "hits", "speedup"):
                assert float(row[column]) == pytest.approx(want[column], rel=1e-12), column
            assert row["is_baseline"] == str(want["is_baseline"])


def test_real_validation_error_names_the_yaml_path_and_writes_nothing(tmp_path: Path) -> None:
    from sim.cli import main

    doc = _real_doc(grid={"hardware.hbm.capacity": ["0 B", "1 KiB"]})
    path = _write_yaml(tmp_path / "s.yaml", doc)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match=r"sweep\.grid\.hardware\.hbm\.capacity\[1\] \(1 KiB\): "):
        validate_points(spec := load_sweep(path), expand(spec))


def counting_run_point(task: PointTask) -> PointOutcome:
    """run_point, leaving one marker file per execution; crashes on the chosen point."""
    from sim.sweep.run import run_point

    Path(os.environ["SWEEP_TEST_COUNT"], f"{task.point.point_id}-{uuid.uuid4().hex}").touch()
    if str(task.point.index) == os.environ.get("SWEEP_TEST_CRASH_AT"):
        raise Crash(task.point.point_id)
    return run_point(task)


def test_real_resume_after_a_kill_matches_an_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sweep = {"grid": {"hardware.links.md_link.bandwidth": ["32 GB/s", "64 GB/s", "128 GB/s"]}}
    sweep["grid"]["policies"] = ["seed-split", "lru"]
    spec = sweep_from_dict(_real_doc(**sweep), str(tmp_path / "s.yaml"))
    count = tmp_path / "count"
    count.mkdir()
    monkeypatch.setenv("SWEEP_TEST_COUNT", str(count))
    run_sweep(spec, tmp_path / "ref", jobs=1, progress=False)

    monkeypatch.setenv("SWEEP_TEST_CRASH_AT", "3")
    with pytest.raises(Crash):
        run_sweep(spec, tmp_path / "out", jobs=1, progress=False, point_fn=counting_run_point)
    monkeypatch.delenv("SWEEP_TEST_CRASH_AT")
    report = run_sweep(
        spec, tmp_path / "out", resume=True, jobs=2, progress=False, point_fn=counting_run_point
    )
    assert (report.skipped, report.ran) == (3, 3)
    runs = _executions(count)
    assert len(runs) == 7 and len(set(runs)) == 6  # only the killed point ran twice
    assert (tmp_path / "out" / "sweep.csv").read_bytes() == (
        tmp_path / "ref" / "sweep.csv"
    ).read_bytes()


def test_trace_is_loaded_once_per_worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sim.scenario
    from sim.sweep import run as sweep_run

    calls: list[int] = []
    real = sim.scenario.load_scenario_trace

    def counting(scenario: Any) -> Any:
        calls.append(1)
        return real(scenario)

    monkeypatch.setattr(sim.scenario, "load_scenario_trace", counting)
    monkeypatch.setattr(sweep_run, "_TRACES", {})
    grid = {"trace.seqs": ["0-3", "0-7"], "policies": ["seed-split", "gpu-only", "md-only"]}
    spec = sweep_from_dict(_real_doc(grid=grid), "s.yaml")
    run_sweep(spec, tmp_path / "out", jobs=1, progress=False)
    assert len(calls) == 2  # once per distinct trace (batch of 4, batch of 8), not per point
    rows = _table(tmp_path / "out")
    four = [float(r["bytes_md"]) for r in rows if r["trace.seqs"] == "0-3"]
    eight = [float(r["bytes_md"]) for r in rows if r["trace.seqs"] == "0-7"]
    assert len(four) == len(eight) == 3
    assert four[0] < eight[0]  # a larger batch activates more experts


def test_cli_sweep_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sim.cli import main

    doc = _real_doc(grid={"routing.topk": [1, 2]}, repeats=2)
    path = _write_yaml(tmp_path / "s.yaml", doc)
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--jobs", "1"]) == 0
    assert "4 points (0 already finished, 4 run)" in capsys.readouterr().out
    rows = _table(out)
    assert [(r["routing.topk"], r["topk"], r["seed"]) for r in rows] == [
        ("1", "1", "0"), ("1", "1", "1"), ("2", "2", "0"), ("2", "2", "1"),
    ]  # fmt: skip
    assert main(["sweep", str(path), "--resume", str(out)]) == 0
    assert "4 points (4 already finished, 0 run)" in capsys.readouterr().out
    assert main(["sweep", str(path), "--out", str(out)]) == 2  # never mixes two sweeps
    assert main(["sweep", str(path), "--resume", str(out), "--set", "seed=3"]) == 2


def test_dask_local_cluster_gives_the_same_table(tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed")
    spec = sweep_from_dict(
        _real_doc(grid={"hardware.links.md_link.bandwidth": ["64 GB/s", "512 GB/s"]}),
        str(tmp_path / "s.yaml"),
    )
    run_sweep(spec, tmp_path / "local", jobs=1, progress=False)
    report = run_sweep(spec, tmp_path / "dask", executor="dask", jobs=2, progress=False)
    assert report.ran == 2
    assert (tmp_path / "dask" / "sweep.csv").read_bytes() == (
        tmp_path / "local" / "sweep.csv"
    ).read_bytes()


@pytest.mark.parametrize("name", ["sweep-bandwidth.yaml", "sweep-hbm.yaml"])
def test_shipped_sweeps_validate(name: str) -> None:
    spec = load_sweep(Path(__file__).parents[1] / "scenarios" / name)
    points = expand(spec)
    base, scenarios = validate_points(spec, points)
    assert len(scenarios) == len(points) > 20
    assert "policies" in spec.swept_paths and base.baseline == "seed-split"
    assert all(len(s.policies) == 1 for s in scenarios)  # one simulation per point


def test_validate_checks_every_point_of_a_sweep_file(tmp_path: Path, capsys) -> None:
    from sim.cli import main

    shipped = Path(__file__).resolve().parents[1] / "scenarios" / "sweep-hbm.yaml"
    assert main(["validate", "--no-trace", str(shipped)]) == 0
    assert "ok (sweep: 42 points" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    text = shipped.read_text().replace("[8 experts, 16 experts", "[8 experts, lots")
    bad.write_text(text)
    assert main(["validate", "--no-trace", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep.grid.hardware.hbm.capacity[1]" in err[0]


def test_default_directory_is_named_like_a_run_and_report_is_written(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    from sim.cli import main

    shipped = Path(__file__).resolve().parents[1] / "scenarios" / "sweep-hbm.yaml"
    monkeypatch.chdir(tmp_path)
    args = ["sweep", str(shipped), "--jobs", "1", "--no-progress", "--report"]
    sets = ["--set", "trace.positions=0-1", "--set", "sweep.grid.policies=[seed-split, lru]"]
    assert main(args + sets) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "results").iterdir()
    assert re.fullmatch(r"sweep-hbm-\d{8}T\d{6}Z", run_dir.name)  # no doubled "-sweep"
    assert f"report: {Path('results') / run_dir.name / 'report.html'}" in out
    assert (run_dir / "report.html").is_file()
