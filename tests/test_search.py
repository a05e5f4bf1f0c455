"""moesim search: the algorithms on plain functions, the parsing of the question, and the
real pipeline (closed form, grid parity, integers, non-monotone, resume, report, CLI)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import shlex
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.errors import UserError
from sim.search.algorithm import (
    BOUNDARY,
    NON_MONOTONE,
    NOT_MET,
    WHOLE_RANGE,
    Answer,
    Goal,
    Point,
    Search,
    frontier_search,
    line_search,
    pareto,
    spread,
)
from sim.search.fields import field_kind, parse_range
from sim.search.question import load_question, parse_target, parse_tolerance
from sim.search.run import grid_size, run_search

# -- driving a search with a plain function ------------------------------------------------------


def drive(search: Search, metric: Callable[[Point], float]) -> tuple[Answer, list[Point]]:
    """Run ``search`` to the end; returns its answer and every point evaluated, in order."""
    seen: list[Point] = []
    request = next(search)
    while True:
        seen.extend(request)
        try:
            request = search.send({p: metric(p) for p in request})
        except StopIteration as done:
            return done.value, seen


def brute_boundary(values: list[float], goal: Goal, helps: int) -> int | None:
    """The least-help index that meets the goal, scanning every value (monotone values)."""
    order = range(len(values)) if helps > 0 else range(len(values) - 1, -1, -1)
    met = [i for i in order if goal.met(values[i])]
    return met[0] if met else None


@pytest.mark.parametrize("op", ["<=", "<", ">=", ">"])
@pytest.mark.parametrize("rising", [True, False])
def test_line_search_finds_the_threshold_in_log2_steps(op: str, rising: bool) -> None:
    n = 350
    values = [float(i // 3) for i in range(n)]  # plateaus of three: ties at the threshold
    if not rising:
        values = values[::-1]
    goal = Goal("m", op, 57.0)
    answer, seen = drive(line_search(n, goal, 17), lambda p: values[p[0]])
    helps = 1 if goal.met(values[-1]) else -1
    expected = brute_boundary(values, goal, helps)
    assert answer.status == BOUNDARY
    (step,) = answer.steps
    assert step.at == (expected,)
    assert step.wrong == (expected - helps,)  # the lattice neighbour one step the other way
    assert goal.met(values[step.at[0]]) and not goal.met(values[step.wrong[0]])
    assert len(seen) == len(set(seen)) <= math.ceil(math.log2(n - 1)) + 2
    assert answer.helps == (helps,)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(st.integers(0, 3), min_size=2, max_size=80),
    threshold=st.integers(-2, 120),
    op=st.sampled_from(["<=", "<", ">=", ">"]),
    flip=st.booleans(),
)
def test_line_search_agrees_with_the_full_grid(
    steps: list[int], threshold: int, op: str, flip: bool
) -> None:
    values = [float(v) for v in np.cumsum(steps)]
    if flip:
        values = values[::-1]
    goal = Goal("m", op, float(threshold))
    answer, seen = drive(line_search(len(values), goal, 9), lambda p: values[p[0]])
    met = [goal.met(v) for v in values]
    if all(met):
        assert answer.status == WHOLE_RANGE
    elif not any(met):
        assert answer.status == NOT_MET and answer.steps[0].at is None
    else:
        helps = 1 if met[-1] else -1
        assert answer.status == BOUNDARY
        assert answer.steps[0].at == (brute_boundary(values, goal, helps),)
    assert len(set(seen)) <= max(2, math.ceil(math.log2(max(len(values) - 1, 1))) + 2)


def test_a_non_monotone_metric_is_detected_and_the_grid_lists_where_it_turns() -> None:
    n = 200
    values = [100.0 - i / 2 for i in range(n)]  # falls (larger values help <=) ...
    for i in range(95, 110):
        values[i] = 120.0  # ... except a bump from 95 to 109, worse than the low end
    goal = Goal("m", "<=", 70.0)
    answer, seen = drive(line_search(n, goal, 17), lambda p: values[p[0]])
    assert answer.status == NON_MONOTONE
    better, worse = answer.seen
    assert better[0] > worse[0] and values[better[0]] > values[worse[0]]  # more help, worse
    turns = {p[0] for p in answer.turning}
    grid = sorted({p[0] for p in seen})
    assert turns and all(p in grid for p in turns)
    assert any(94 <= t <= 110 for t in turns)  # the bump is where it turns
    (step,) = answer.steps
    assert step.at is not None and values[step.at[0]] <= 70.0
    assert all(values[i] <= 70.0 for i in grid if i >= step.at[0])  # safe from there on
    assert step.wrong is not None and values[step.wrong[0]] > 70.0


def test_a_flat_metric_is_whole_range_or_not_met() -> None:
    answer, seen = drive(line_search(50, Goal("m", "<=", 1.0), 9), lambda p: 0.5)
    assert answer.status == WHOLE_RANGE and answer.steps[0].at == (0,) and len(seen) == 2
    answer, _ = drive(line_search(50, Goal("m", "<=", 1.0), 9), lambda p: 2.0)
    assert answer.status == NOT_MET and answer.steps[0].at is None


def _plane(p: Point) -> float:
    """Falls with both fields: a trade-off (less of one needs more of the other)."""
    return 400.0 / (p[0] + 4) + 900.0 / (p[1] + 9)


@pytest.mark.parametrize("flip", [(False, False), (True, False), (False, True), (True, True)])
def test_frontier_staircase_matches_the_full_grid_with_fewer_simulations(
    flip: tuple[bool, bool],
) -> None:
    nx, ny = 120, 300
    mx = (lambda x: nx - 1 - x) if flip[0] else (lambda x: x)
    my = (lambda y: ny - 1 - y) if flip[1] else (lambda y: y)

    def metric(p: Point) -> float:
        return _plane((mx(p[0]), my(p[1])))

    goal = Goal("m", "<=", 45.0)
    answer, seen = drive(frontier_search((nx, ny), goal, 9), metric)
    assert answer.status == BOUNDARY
    assert answer.helps == (-1 if flip[0] else 1, -1 if flip[1] else 1)
    xs = spread(nx, 9)
    assert len(answer.steps) == len(xs)
    for step in answer.steps:
        point = step.at or step.wrong
        x = point[0]
        column = [metric((x, y)) for y in range(ny)]
        expected = brute_boundary(column, goal, answer.helps[1])
        assert (step.at[1] if step.at else None) == expected
        if step.at is not None and step.wrong is not None:
            assert goal.met(metric(step.at)) and not goal.met(metric(step.wrong))
            assert abs(step.at[1] - step.wrong[1]) == 1
    assert len(set(seen)) < len(xs) * ny / 10
    flags = pareto(answer.steps)
    needed = [s.at[1] for s, f in zip(answer.steps, flags) if f]
    assert len(set(needed)) == len(needed)  # no Pareto point dominated by another


def test_frontier_detects_a_metric_that_is_not_monotone() -> None:
    def metric(p: Point) -> float:
        bump = 1000.0 if 140 <= p[1] <= 160 else 0.0  # worse with more of the second field
        return _plane(p) + bump

    answer, seen = drive(frontier_search((60, 300), Goal("m", "<=", 45.0), 7), metric)
    assert answer.status == NON_MONOTONE
    assert any(140 <= y <= 161 or 139 <= y <= 160 for _, y in answer.turning)
    grid = {(x, y) for x in spread(60, 7) for y in spread(300, 7)}
    assert grid <= set(seen)


def test_frontier_corners_that_disagree_fall_back_to_the_grid() -> None:
    def metric(p: Point) -> float:  # x helps at y=0 and hurts at the top of y
        return (10.0 - p[0]) if p[1] == 0 else (p[0] + 0.5 * p[1] / 10)

    answer, _ = drive(frontier_search((11, 11), Goal("m", "<=", 5.0), 5), metric)
    assert answer.status == NON_MONOTONE and answer.seen is not None


# -- fields, ranges, targets ---------------------------------------------------------------------


def test_field_kinds() -> None:
    assert field_kind("hardware.links.md_link.bandwidth").kind == "bandwidth"
    assert field_kind("hardware.links.pcie.latency").kind == "duration"
    capacity = field_kind("hardware.hbm.capacity")
    assert (capacity.kind, capacity.experts) == ("size", True)
    assert field_kind("hardware.links.md_link.channels").kind == "integer"
    assert field_kind("trace.batch").kind == "integer"
    assert field_kind("hardware.gpu.peak_flops").kind == "compute"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        # links are a name-keyed mapping: a new link name is a field (the scenario must use it)
        ("hardware.links.md_link.speed", "no field 'speed' in hardware.links.md_link; allowed"),
        ("hardware.hbm.size", "no field 'size' in hardware.hbm"),
        ("hardware.md_mode", "expected a field with a unit"),
        ("model.bytes_per_param", "expected a field with a unit"),
        ("routing.topk", "expected a field with a unit"),
        ("policies[0].params.slots", "expected a field with a unit"),
        ("seed", "the seed picks random numbers"),
        ("hardware..hbm", "expected a dotted scenario field"),
    ],
)
def test_bad_fields(path: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        field_kind(path)


def test_float_lattice_steps_by_the_tolerance_and_ends_at_the_range() -> None:
    field = parse_range("16 GB/s:512 GB/s", field_kind("hardware.links.md_link.bandwidth"), 0.01)
    values = [field.value(i) for i in range(field.size)]
    assert values[0] == 16e9 and values[-1] == 512e9
    ratios = np.array(values[1:]) / np.array(values[:-1])
    assert np.all(ratios > 1) and np.all(ratios <= 1.01 * (1 + 1e-11))
    assert field.yaml_value(1) == "16.16 GB/s" and field.si(1) == 16.16e9
    zero = parse_range("0 s:50 us", field_kind("hardware.links.md_link.latency"), 0.01)
    assert zero.value(0) == 0.0 and zero.value(1) == 0.5e-6 and zero.value(zero.size - 1) == 50e-6


def test_integer_and_expert_lattices_are_integers() -> None:
    batch = parse_range("1:1000", field_kind("trace.batch"), 0.01)
    values = list(batch.integers)
    assert values[:101] == list(range(1, 102))  # every integer while the step is below one
    assert values[-1] == 1000 and all(b > a for a, b in itertools.pairwise(values))
    assert all(b / a <= 1.01 + 1 / a for a, b in itertools.pairwise(values))
    assert batch.yaml_value(3) == 4 and isinstance(batch.si(3), int)
    experts = parse_range("0 experts:64 experts", field_kind("hardware.hbm.capacity"), 0.01)
    assert experts.integers == tuple(range(65)) and experts.yaml_value(12) == "12 experts"


@pytest.mark.parametrize(
    ("path", "text", "message"),
    [
        ("hardware.links.md_link.bandwidth", "1 us:5 us", "expected a bandwidth"),
        ("hardware.links.md_link.bandwidth", "512 GB/s:16 GB/s", "expected LO < HI"),
        ("hardware.links.md_link.bandwidth", "16 GB/s:16 GB/s", "expected LO < HI"),
        ("hardware.links.md_link.bandwidth", "16 GB/s", "expected LO:HI"),
        ("hardware.links.md_link.bandwidth", "16:512", "with a unit"),
        ("hardware.hbm.capacity", "8 experts:2 GiB", "both ends in experts"),
        ("trace.batch", "1.5:8", "expected integers"),
        ("trace.batch", "1 GB:8 GB", "expected integers"),
    ],
)
def test_bad_ranges(path: str, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_range(text, field_kind(path), 0.01)


def test_targets() -> None:
    assert parse_target("mean_step <= 10 ms") == Goal("mean_step", "<=", 0.01)
    assert parse_target("p99_step<20ms") == Goal("p99_step", "<", 0.02)
    assert parse_target("hit_rate >= 50%") == Goal("hit_rate", ">=", 0.5)
    assert parse_target("bytes_md <= 2 GB") == Goal("bytes_md", "<=", 2e9)
    assert parse_target("tokens/s > 5000 tokens/s") == Goal("tokens_per_s", ">", 5000.0)
    assert parse_target("ttft_p99 <= 200 ms").value == 0.2  # a column this version lacks
    for bad, message in [
        ("mean_step = 10 ms", "expected 'METRIC OP VALUE'"),
        ("<= 10 ms", "expected 'METRIC OP VALUE'"),
        ("mean_step <= 10", "with a unit"),
        ("mean_step <= 10 GB/s", "expected a duration"),
        ("hits >= lots", "expected a number"),
        ("speedup >= 2", "compares policies within a run"),
        ("label <= 2", "expected a numeric summary column"),
    ]:
        with pytest.raises(UserError, match=message):
            parse_target(bad)


def test_tolerances() -> None:
    assert parse_tolerance(None) == 0.01
    assert parse_tolerance("2%") == 0.02 and parse_tolerance("0.005") == 0.005
    for bad in ("0", "-1%", "80%", "lots", "nan", "1e-9"):
        with pytest.raises(UserError, match="--tolerance"):
            parse_tolerance(bad)


# -- the real pipeline ---------------------------------------------------------------------------

FAST_TRACE = {"path": "embedded", "positions": "0-15"}


def _scenario(tmp_path: Path, **extra: Any) -> Path:
    doc = {
        "name": "s",
        "trace": dict(FAST_TRACE),
        "routing": {"topk": 6},
        "hardware": {"preset": "notebook-gbytes", "hbm": {"capacity": "16 experts"}},
        "policies": ["md-only", "lru"],
    }
    doc.update(extra)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _one_run(doc: dict[str, Any], overrides: dict[str, Any], policy: str) -> dict[str, Any]:
    from sim.scenario import run_scenario, scenario_from_dict, set_dotted
    from sim.scenario.run import summary_rows

    for key, value in overrides.items():
        doc = set_dotted(doc, key, value)
    doc = {**doc, "policies": [policy], "baseline": policy}
    scenario = scenario_from_dict(doc, "one.yaml")
    return summary_rows(scenario, run_scenario(scenario, progress=False))[0]


@pytest.mark.parametrize(
    ("policy", "link"), [("md-only", "md_link"), ("gpu-only", "pcie")], ids=["md-only", "gpu-only"]
)
def test_boundary_equals_the_closed_form_of_a_stateless_policy(
    tmp_path: Path, policy: str, link: str
) -> None:
    """With layer-start compute, one channel and a constant non-expert time, a stateless
    policy's mean step is a + b / bandwidth exactly (the closed form, sim.engine.closed_form):
    the bandwidth that just meets T is b / (T - a); the search must land within one tolerance
    step above it."""
    from sim.engine.closed_form import stateless_layer_times
    from sim.policies.base import Path as Route
    from sim.scenario import load_scenario_trace, scenario_from_dict

    field = f"hardware.links.{link}.bandwidth"
    base = {
        "name": "cf",
        "trace": dict(FAST_TRACE),
        "routing": {"topk": 6},
        "hardware": {
            "preset": "notebook-gbytes",
            "gpu": {"expert_start": "layer", "non_expert_time": "20 us"},
            "links": {link: {"latency": "2 us", "channels": 1}},
        },
        "policies": [policy],
        "baseline": policy,
    }
    scenario = scenario_from_dict(base, "cf.yaml")
    trace = load_scenario_trace(scenario)
    counts = trace.expert_token_counts(6)
    route = Route.MD_FETCH if link == "md_link" else Route.PCIE
    paths = np.full(counts.shape, route)

    def closed_mean_step(bandwidth: float) -> float:
        from sim.scenario import set_dotted

        doc = set_dotted(base, field, f"{bandwidth!r} B/s")
        hw = scenario_from_dict(doc, "cf.yaml")
        return float(stateless_layer_times(counts, paths, hw.hardware, hw.model).latency.mean())

    low, high = 20e9, 200e9
    m_low, m_high = closed_mean_step(low), closed_mean_step(high)
    b = (m_low - m_high) / (1 / low - 1 / high)
    a = m_high - b / high
    assert closed_mean_step(77e9) == pytest.approx(a + b / 77e9, rel=1e-12)  # affine in 1/bw
    active = (counts > 0).sum(axis=2)  # one channel: every fetch in series
    assert b == pytest.approx(scenario.model.expert_bytes * active.sum(axis=1).mean(), rel=1e-12)

    target = a + b / 61.3e9  # the exact answer: 61.3 GB/s
    path = tmp_path / "cf.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    tol = 0.01
    question = load_question(
        path, [field], ["16 GB/s:512 GB/s"], f"mean_step <= {target!r} s", tolerance="1%"
    )
    report = run_search(question, tmp_path / "out", jobs=1)
    (result,) = report.results
    (step,) = result.answer.steps
    (f,) = question.fields
    found, below = f.value(step.at[0]), f.value(step.wrong[0])
    exact = b / (target - a)
    assert result.answer.status == BOUNDARY
    assert exact <= found <= exact * (1 + tol)  # within the tolerance, on the meeting side
    assert found / below == pytest.approx(1 + tol, rel=1e-9)
    assert report.metric(policy, step.at) <= target < report.metric(policy, step.wrong)
    # The value one tolerance step beyond (either reading of 'one step') does not meet it.
    for beyond in (found / (1 + tol), found * (1 - tol)):
        row = _one_run(base, {field: f"{beyond!r} B/s"}, policy)
        assert row["mean_step"] > target
    assert result.simulations <= math.ceil(math.log2(f.size - 1)) + 2 < f.size


def test_search_equals_the_full_sweep_of_the_same_values_with_fewer_simulations(
    tmp_path: Path,
) -> None:
    """LRU's hit rate over the HBM budget in whole experts: the search's boundary is the
    least budget meeting the target in a sweep of every value (the equivalent grid)."""
    from sim.sweep import run_sweep, sweep_from_dict

    path = _scenario(tmp_path)
    question = load_question(
        path,
        ["hardware.hbm.capacity"],
        ["1 experts:96 experts"],
        "hit_rate >= 0.15",
        policies=["lru"],
    )
    report = run_search(question, tmp_path / "search", jobs=2)
    (result,) = report.results
    doc = yaml.safe_load(path.read_text())
    doc["policies"], doc["baseline"] = ["lru"], "lru"
    values = [f"{n} experts" for n in range(1, 97)]
    doc["sweep"] = {"grid": {"hardware.hbm.capacity": values}}
    run_sweep(sweep_from_dict(doc, str(path)), tmp_path / "grid", jobs=2, progress=False)
    rows = _csv(tmp_path / "grid" / "sweep.csv")
    rates = [float(r["hit_rate"]) for r in rows]
    assert rates == sorted(rates)  # LRU is a stack algorithm: more cache, no fewer hits
    least = next(i for i, r in enumerate(rates) if r >= 0.15)
    (step,) = result.answer.steps
    assert question.fields[0].value(step.at[0]) == least + 1  # experts 1..96
    assert result.grid == len(values) == 96
    assert result.simulations < 10 < result.grid
    csv_rows = _csv(tmp_path / "search" / "search.csv")
    expert_bytes = question.fields[0].expert_bytes
    for row in csv_rows:  # the SI value (bytes) of whole experts, and the grid's metrics
        experts = float(row["hardware.hbm.capacity"]) / expert_bytes
        assert experts == round(experts)
        assert float(row["hit_rate"]) == rates[round(experts) - 1]


def test_integer_field_is_searched_as_integers(tmp_path: Path) -> None:
    path = _scenario(tmp_path, policies=["lru"])
    rows = {
        n: _one_run(yaml.safe_load(path.read_text()), {"trace.batch": n}, "lru") for n in (1, 8)
    }
    target = (rows[1]["mean_step"] + rows[8]["mean_step"]) / 2
    question = load_question(
        path, ["trace.batch"], ["1:8"], f"mean_step <= {target!r} s", policies=["lru"]
    )
    report = run_search(question, tmp_path / "out", jobs=1)
    (step,) = report.results[0].answer.steps
    assert report.results[0].answer.helps == (-1,)  # a larger batch is slower
    every = [
        _one_run(yaml.safe_load(path.read_text()), {"trace.batch": n}, "lru") for n in range(1, 9)
    ]
    largest = max(n for n, r in zip(range(1, 9), every) if r["mean_step"] <= target)
    assert question.fields[0].value(step.at[0]) == largest  # the largest batch meeting it
    assert question.fields[0].value(step.wrong[0]) == largest + 1
    batches = [r["trace.batch"] for r in _csv(tmp_path / "out" / "search.csv")]
    assert all(b.isdigit() for b in batches)  # integers, not 3.0


NON_MONOTONE_DOC = {
    "trace": {"path": "embedded", "positions": "0-7", "batch": 1},
    "hardware": {"preset": "notebook-gbytes", "hbm": {"capacity": "0 B"}},
    "policies": [{"name": "seed-split", "label": "split-links", "params": {"from_links": True}}],
    "baseline": "split-links",
}


def test_a_real_non_monotone_metric_is_reported(tmp_path: Path) -> None:
    """The seed's split fed the real link bandwidths, one sequence (six experts per gate):
    below ~10.7 GB/s every expert goes over PCIe; just above, one goes to the slower MD link
    and the step gets slower although the MD link got faster."""
    path = _scenario(tmp_path, **NON_MONOTONE_DOC)
    question = load_question(
        path, ["hardware.links.md_link.bandwidth"], ["8 GB/s:16 GB/s"], "mean_step <= 5 ms"
    )
    report = run_search(question, tmp_path / "out", jobs=1)
    (result,) = report.results
    assert result.answer.status == NON_MONOTONE
    field = question.fields[0]
    turns = [field.value(p[0]) for p in result.answer.turning]
    assert any(10.5e9 <= t <= 11.5e9 for t in turns)
    data = json.loads((tmp_path / "out" / "search.json").read_text())
    listed = data["policies"][0]["non_monotone"]["turning"]
    assert [t["hardware.links.md_link.bandwidth"] for t in listed] == turns
    (step,) = result.answer.steps
    assert report.metric("split-links", step.at) <= 0.005 < report.metric("split-links", step.wrong)


class Crash(Exception):
    """Stands in for the search process being killed."""


def counting_point(task: Any) -> Any:
    from sim.sweep import run_point

    count = Path(os.environ["SEARCH_TEST_COUNT"])
    if len(os.listdir(count)) == int(os.environ.get("SEARCH_TEST_CRASH_AFTER", "-1")):
        raise Crash(task.point.point_id)
    (count / f"{task.point.point_id}-{uuid.uuid4().hex}").touch()
    return run_point(task)


def test_resume_after_a_kill_gives_the_same_files_and_reruns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _scenario(tmp_path)
    question = load_question(
        path, ["hardware.links.md_link.bandwidth"], ["16 GB/s:512 GB/s"], "mean_step <= 10 ms"
    )
    run_search(question, tmp_path / "ref", jobs=1)
    count = tmp_path / "count"
    count.mkdir()
    monkeypatch.setenv("SEARCH_TEST_COUNT", str(count))
    monkeypatch.setenv("SEARCH_TEST_CRASH_AFTER", "7")
    with pytest.raises(Crash):
        run_search(question, tmp_path / "out", jobs=1, point_fn=counting_point)
    monkeypatch.delenv("SEARCH_TEST_CRASH_AFTER")
    report = run_search(question, tmp_path / "out", resume=True, jobs=2, point_fn=counting_point)
    assert report.reused == 7
    runs = [name.split("-")[0] for name in os.listdir(count)]
    assert len(runs) == len(set(runs)) == report.ran + report.reused  # nothing ran twice
    for name in ("search.csv", "search.json"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    with pytest.raises(
        UserError,
        match=r"varying hardware\.links\.pcie\.bandwidth, got one varying hardware\.links\.md",
    ):
        other = load_question(
            path, ["hardware.links.pcie.bandwidth"], ["16 GB/s:512 GB/s"], "mean_step <= 10 ms"
        )
        run_search(other, tmp_path / "out", resume=True, jobs=1)
    with pytest.raises(UserError, match="continue it with --resume"):
        run_search(question, tmp_path / "out", jobs=1)


def _frontier_question(tmp_path: Path, **options: Any) -> Any:
    return load_question(
        _scenario(tmp_path),
        ["hardware.links.md_link.bandwidth", "hardware.hbm.capacity"],
        ["16 GB/s:256 GB/s", "0 experts:128 experts"],
        "mean_step <= 12 ms",
        grid=5,
        **options,
    )


def test_results_do_not_depend_on_the_number_of_workers(tmp_path: Path) -> None:
    question = _frontier_question(tmp_path)
    one = run_search(question, tmp_path / "one", jobs=1)
    two = run_search(question, tmp_path / "two", jobs=2)
    for name in ("search.csv", "search.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    for result in one.results:
        assert result.simulations < result.grid == grid_size(question)
        for step in result.answer.steps:  # every frontier point meets, one step off does not
            if step.at is not None and not step.inferred:
                assert one.metric(result.label, step.at) <= 0.012
            if step.at is not None and step.wrong is not None:
                assert one.metric(result.label, step.wrong) > 0.012
    assert two.ran == one.ran


@pytest.mark.slow  # a Dask LocalCluster takes ~10 s to start and stop on 2 cores
def test_dask_executor_gives_the_same_answer(tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed")
    path = _scenario(tmp_path)
    question = load_question(
        path, ["hardware.links.md_link.bandwidth"], ["16 GB/s:512 GB/s"], "mean_step <= 10 ms"
    )
    run_search(question, tmp_path / "local", jobs=1)
    run_search(question, tmp_path / "dask", executor="dask", jobs=2)
    for name in ("search.csv", "search.json"):
        assert (tmp_path / "dask" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()


# -- command line and report ---------------------------------------------------------------------


def test_cli_search_prints_the_table_and_writes_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sim.cli import main

    path = _scenario(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [
        "search", str(path), "--vary", "hardware.links.md_link.bandwidth",
        "--range", "16 GB/s:512 GB/s", "--target", "mean_step <= 10 ms", "--jobs", "1",
        "--no-progress",
    ]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    (run_dir,) = (tmp_path / "results").iterdir()
    assert run_dir.name.startswith("s-search-")
    assert "md-only" in out and "lru" in out and "boundary found" in out
    assert f"results: {Path('results') / run_dir.name / 'search.csv'}" in out
    html = (run_dir / "report.html").read_text()
    assert "Frontier" in html and "Answers" in html
    assert (run_dir / "figures" / "search_frontier.png").stat().st_size > 10_000
    header = _csv(run_dir / "search.csv")[0].keys()
    assert list(header)[:4] == [
        "policy",
        "hardware.links.md_link.bandwidth",
        "total_time",
        "mean_step",
    ]
    assert main(["report", str(run_dir)]) == 0  # moesim report reads a search directory


def test_two_field_report_draws_the_staircase(tmp_path: Path) -> None:
    from sim.report import write_report

    question = _frontier_question(tmp_path, policies=["lru"])
    run_search(question, tmp_path / "out", jobs=1)
    html = write_report(tmp_path / "out").read_text()
    assert "Pareto frontier" in html and "Not drawn" not in html


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--vary": "hardware.links.md_link.speed"}, "no field 'speed'"),
        ({"--vary": "hardware.links.nvlink.bandwidth"}, "got an unused link 'nvlink'"),
        ({"--vary": "hardware.md_mode"}, "expected a field with a unit"),
        ({"--range": "1 us:5 us"}, "expected a bandwidth"),
        ({"--range": "512 GB/s:16 GB/s"}, "expected LO < HI"),
        ({"--target": "mean_step == 10 ms"}, "expected 'METRIC OP VALUE'"),
        ({"--target": "latency_p99 <= 10 ms"}, "expected a summary column"),
        ({"--policy": "fifo"}, "--policy: expected a policy of"),
        ({"--tolerance": "0"}, "--tolerance"),
        ({"--range": "16 GB/s:5 TB/s"}, None),  # valid: a fast link
        ({"--set": "routing.topk=[1, 6]"}, "expected one top-k"),
        ({"--vary": "trace.batch", "--range": "1:64"}, "trace.batch: expected at most 8"),
        (
            {"--range": "0 experts:99999 experts", "--vary": "hardware.hbm.capacity"},
            "at most the GPU",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, str], message: str | None
) -> None:
    from sim.cli import main

    options = {
        "--vary": "hardware.links.md_link.bandwidth",
        "--range": "16 GB/s:512 GB/s",
        "--target": "mean_step <= 10 ms",
        **change,
    }
    args = ["search", str(_scenario(tmp_path)), "--out", str(tmp_path / "out"), "--jobs", "1"]
    for key, value in options.items():
        args += [key, value]
    code = main([*args, "--no-report", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    if message is None:
        assert code == 0
        return
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_cli_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sim.cli import main

    path = str(_scenario(tmp_path))
    base = ["search", path, "--target", "mean_step <= 10 ms", "--no-report"]
    bw = ["--vary", "hardware.links.md_link.bandwidth", "--range", "16 GB/s:512 GB/s"]
    assert main([*base, *bw, "--range", "1:2"]) == 2  # two ranges, one field
    assert "one LO:HI per --vary" in capsys.readouterr().err
    three = ["--vary", "trace.batch", "--range", "1:8", "--vary", "seed", "--range", "1:2"]
    assert main([*base, *bw, *three]) == 2
    assert "one or two fields" in capsys.readouterr().err
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(Path(path).read_text() + "sweep: {grid: {seed: [1, 2]}}\n")
    assert main(["search", str(sweep), "--target", "mean_step <= 10 ms", *bw]) == 2
    assert "without a sweep: block" in capsys.readouterr().err


def test_a_damaged_search_json_is_one_line(tmp_path: Path) -> None:
    from sim.report import write_report

    path = _scenario(tmp_path)
    question = load_question(
        path, ["hardware.links.md_link.bandwidth"], ["16 GB/s:512 GB/s"], "mean_step <= 10 ms"
    )
    run_search(question, tmp_path / "out", jobs=1)
    answers = tmp_path / "out" / "search.json"
    data = json.loads(answers.read_text())
    data["policies"][0]["steps"][0]["boundary"] = {"hardware.links.md_link.bandwidth": "fast"}
    answers.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"policies\[0\]\.steps\[0\]\.boundary\.hardware"):
        write_report(tmp_path / "out")
    answers.write_text("[]")
    with pytest.raises(UserError, match=r"search\.json: expected a mapping"):
        write_report(tmp_path / "out")


def _doc_commands() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "search.md").read_text()
    commands = []
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("moesim search "):
                commands.append(line)
    return commands


def test_every_search_command_in_the_docs_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/search.md's commands as written (in a scratch directory, on 8 decode steps)."""
    from sim.cli import main

    repo = Path(__file__).resolve().parents[1]
    commands = _doc_commands()
    assert len(commands) >= 8
    monkeypatch.chdir(tmp_path)
    for command in commands:
        args = [str(repo / a) if a.startswith("scenarios/") else a for a in shlex.split(command)]
        fast = ["--set", "trace.positions=0-7", "--no-report", "--no-progress", "--jobs", "1"]
        assert main([*args[1:], *fast]) == 0, (command, capsys.readouterr().err)
