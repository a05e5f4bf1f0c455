"""Running a search on the sweep machinery: every policy's search in lockstep rounds, each
round's simulations in parallel, every finished simulation on disk at once.

Results directory::

    DIR/search.resolved.yaml     the base scenario (every default filled), the question, tool
                                 versions and the base's fingerprint (the resume check)
    DIR/points/<point-id>.json   one file per simulation, written atomically (as a sweep's)
    DIR/search.csv               every evaluated point: policy, the varied fields (SI), metrics
    DIR/search.json              the answer per policy: boundary, wrong side, simulations, ...

A point is the base scenario with the varied fields set and one policy (its own baseline), so
its id is the sweep's point id of those overrides: ``--resume DIR`` replays the (deterministic)
search and reads every point that has a file instead of simulating it again.

Inputs are pinned by content as a sweep's are: every point file records the checksums of the
trace (and cost tables) it ran on; a resumed point whose inputs now differ is refused before
anything runs (`check_resumed_inputs`), and so is a worker that finds them changed. A worker
killed from outside is one line naming the point it ran (`worker_died`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import sim
from sim.atomic import write_text
from sim.errors import UserError
from sim.search.algorithm import Answer, Point, Search, frontier_search, line_search, spread
from sim.search.question import Question, known_metric
from sim.sweep import (
    PointOutcome,
    PointTask,
    Session,
    SweepPoint,
    SweepSpec,
    cached_trace,
    point_document,
    point_id,
    prepare_dir,
    read_rows,
    run_point,
    write_point,
)
from sim.sweep.executors import WorkerDied
from sim.sweep.run import (
    check_resumed_inputs,
    forget_inputs,
    plain,
    progress_bar,
    scenario_inputs,
    worker_died,
)

MANIFEST = "search.resolved.yaml"
POINTS_DIR = "points"


@dataclass(frozen=True)
class PolicyResult:
    label: str
    answer: Answer
    simulations: int  # distinct points its search evaluated
    grid: int  # points of the grid at the same resolution


@dataclass(frozen=True)
class SearchReport:
    out_dir: Path
    question: Question
    results: tuple[PolicyResult, ...]
    rows: dict[tuple[str, Point], dict[str, Any]]  # (label, point) -> the point's summary row
    ran: int  # simulations run in this call
    reused: int  # points read back from DIR (resume)
    elapsed: float

    def metric(self, label: str, point: Point | None) -> float | None:
        if point is None or (label, point) not in self.rows:
            return None
        return metric_of(self.rows[label, point], self.question.goal.metric)


@dataclass
class _State:
    """The driver's bookkeeping over all policies."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # point id -> rows
    ran: int = 0
    reused: int = 0
    manifest_written: bool = False


def run_search(
    question: Question,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    executor: str = "local",
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    point_fn: Callable[[PointTask], PointOutcome] = run_point,
) -> SearchReport:
    """Answer ``question`` for every policy; see the module doc."""
    start = time.perf_counter()
    session = Session(executor=executor, jobs=jobs, scheduler=scheduler)  # checks the flags
    spec = _sweep_spec(question)
    forget_inputs()  # the trace files are read afresh (a resume checks them against the points)
    _validate_ends(question, spec)
    out = Path(out_dir)
    prepare_dir(out, spec, resume, MANIFEST, "search")
    if resume:
        _check_same_fields(out, question)
    state = _State()
    manifest = _manifest(question, spec)
    _probe(question, spec, out, resume, state, point_fn)
    searches = {p.label: _search(question) for p in question.policies}
    asked: dict[str, set[Point]] = {p.label: set() for p in question.policies}
    answers: dict[str, Answer] = {}
    requests: dict[str, list[Point]] = {}
    for label, search in searches.items():
        requests[label] = next(search)
    with session, progress_bar(None, 0, progress, unit="sim", desc="search") as bar:
        while requests:
            wanted = [(label, pt) for label, points in requests.items() for pt in points]
            _evaluate(question, spec, out, resume, wanted, state, session, point_fn, manifest, bar)
            following: dict[str, list[Point]] = {}
            for label, points in requests.items():
                asked[label].update(points)
                reply = {
                    pt: metric_of(_row(question, spec, state, label, pt), question.goal.metric)
                    for pt in points
                }
                try:
                    following[label] = searches[label].send(reply)
                except StopIteration as done:
                    answers[label] = done.value
            requests = following
    if not state.manifest_written:
        write_text(out / MANIFEST, manifest)
    rows = {
        (label, pt): _row(question, spec, state, label, pt)
        for label in searches
        for pt in sorted(asked[label])
    }
    results = tuple(
        PolicyResult(p.label, answers[p.label], len(asked[p.label]), grid_size(question))
        for p in question.policies
    )
    report = SearchReport(
        out, question, results, rows, state.ran, state.reused, time.perf_counter() - start
    )
    from sim.search.output import write_outputs

    write_outputs(report)
    return report


def grid_size(question: Question) -> int:
    """Simulations of the equivalent grid per policy: every lattice value of one field; with
    two, the first field's ``grid`` values times every value of the second."""
    if len(question.fields) == 1:
        return question.fields[0].size
    first, second = question.fields
    return len(spread(first.size, question.grid)) * second.size


def metric_of(row: dict[str, Any], metric: str) -> float:
    """The target metric of a summary row, as a float; UserError when it is missing or blank."""
    if metric not in row:
        from sim.search.question import COMPARISONS, NOT_METRICS

        skip = NOT_METRICS | COMPARISONS
        numeric = [k for k, v in row.items() if _is_number(v) and k not in skip]
        raise UserError(
            f"--target: expected a summary column ({', '.join(numeric)}), got {metric!r}"
        )
    value = row[metric]
    if not _is_number(value) or math.isnan(float(value)):
        raise UserError(
            f"--target: expected a number in column {metric!r}, got {value!r} for policy "
            f"{row.get('label')}"
        )
    return float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _search(question: Question) -> Search:
    sizes = tuple(f.size for f in question.fields)
    if len(sizes) == 1:
        return line_search(sizes[0], question.goal, question.grid)
    return frontier_search((sizes[0], sizes[1]), question.goal, question.grid)


def _sweep_spec(question: Question) -> SweepSpec:
    """The search as a sweep without axes: the base scenario, its seed, its fingerprint."""
    seed = question.base.get("seed", 0)
    return SweepSpec(
        source=question.source,
        base=question.base,
        axes=(),
        repeats=1,
        base_seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
        seed_fields=("seed",),
    )


def _point(question: Question, spec: SweepSpec, label: str, pt: Point) -> SweepPoint:
    policy = next(p for p in question.policies if p.label == label)
    overrides = tuple((f.path, f.yaml_value(i)) for f, i in zip(question.fields, pt))
    overrides += (("policies", policy.entry),)
    return SweepPoint(
        index=0,
        overrides=overrides,
        repeat=0,
        seed=spec.base_seed,
        point_id=point_id(overrides, spec.base_seed),
    )


def _describe(question: Question, label: str, pt: Point) -> str:
    values = ", ".join(f"{f.path}={f.show(i)}" for f, i in zip(question.fields, pt))
    return f"{values}, policy {label}"


def _validate_ends(question: Question, spec: SweepSpec) -> None:
    """Every corner of the range (and the first value above a 0) is a valid scenario for every
    policy, and its trace loads and fits it, before anything runs or is written. The traces
    stay loaded in this process: forked workers inherit them."""
    from sim.scenario import scenario_from_dict

    per_field = []
    for f in question.fields:
        ends = {0, f.size - 1}
        if f.value(0) == 0 and f.size > 2:
            ends.add(1)
        per_field.append(sorted(ends))
    corners = [(a,) for a in per_field[0]]
    if len(per_field) == 2:
        corners = [(a, b) for a in per_field[0] for b in per_field[1]]
    for policy in question.policies:
        for pt in corners:
            doc = point_document(spec, _point(question, spec, policy.label, pt))
            try:
                cached_trace(scenario_from_dict(doc, question.source))  # trace.batch too big...
            except UserError as err:
                message = str(err).removeprefix(f"{question.source}: ")
                message = message.removesuffix(f" ({question.source})")
                raise UserError(
                    f"{question.source}: search point ({_describe(question, policy.label, pt)}): "
                    f"{message}"
                ) from None


def _check_same_fields(out: Path, question: Question) -> None:
    from sim.yamlio import read_yaml

    previous = read_yaml(out / MANIFEST, "a readable search manifest") or {}
    search = previous.get("search") if isinstance(previous, dict) else None
    fields = search.get("fields") if isinstance(search, dict) else None
    paths = [f.get("path") for f in fields if isinstance(f, dict)] if fields else []
    wanted = [f.path for f in question.fields]
    if paths != wanted:
        raise UserError(
            f"--resume {out}: expected a search varying {', '.join(wanted)}, got one varying "
            f"{', '.join(str(p) for p in paths) or 'nothing'}"
        )


def _probe(
    question: Question,
    spec: SweepSpec,
    out: Path,
    resume: bool,
    state: _State,
    point_fn: Callable[[PointTask], PointOutcome],
) -> None:
    """For a metric this version does not list: the first policy's first point, simulated in
    this process before anything is written, says whether its rows have that column."""
    label = question.policies[0].label
    pt = (0,) * len(question.fields)
    point = _point(question, spec, label, pt)
    if resume and _on_disk(out, point):
        _read_back(question, spec, out, label, pt, point, state)
    elif known_metric(question.goal.metric):
        return
    else:
        document = point_document(spec, point)
        outcome = point_fn(PointTask(point, document, spec.source, _inputs(question, document)))
        if outcome.error is not None:
            _raise_failures(question, [(label, pt, outcome)])
        state.rows[point.point_id] = list(outcome.rows)
        state.ran += 1
    metric_of(_row(question, spec, state, label, pt), question.goal.metric)  # missing: error


def _on_disk(out: Path, point: SweepPoint) -> bool:
    from sim.sweep import finished_ids

    return point.point_id in finished_ids(out, [point])


def _evaluate(
    question: Question,
    spec: SweepSpec,
    out: Path,
    resume: bool,
    wanted: Sequence[tuple[str, Point]],
    state: _State,
    session: Session,
    point_fn: Callable[[PointTask], PointOutcome],
    manifest: str,
    bar: Any,
) -> None:
    """Rows for every wanted point: known, read back (resume), or simulated in parallel."""
    tasks: dict[str, tuple[str, Point, PointTask]] = {}
    for label, pt in wanted:
        point = _point(question, spec, label, pt)
        if point.point_id in state.rows or point.point_id in tasks:
            continue
        if resume and _on_disk(out, point):
            _read_back(question, spec, out, label, pt, point, state)
            continue
        document = point_document(spec, point)
        task = PointTask(point, document, spec.source, _inputs(question, document))
        tasks[point.point_id] = (label, pt, task)
    failures = []
    try:
        for outcome in session.run([t for _, _, t in tasks.values()], point_fn):
            label, pt, _ = tasks[outcome.point_id]
            if outcome.error is not None:
                failures.append((label, pt, outcome))
                continue
            if not state.manifest_written:  # with the first result: a search that never
                write_text(out / MANIFEST, manifest)  # started leaves nothing behind
                state.manifest_written = True
            write_point(out, outcome)
            state.rows[outcome.point_id] = list(outcome.rows)
            state.ran += 1
            bar.update(1)
    except WorkerDied as err:
        if not state.manifest_written:  # --resume needs it, even with nothing finished
            write_text(out / MANIFEST, manifest)
            state.manifest_written = True
        raise _worker_died(question, out, tasks, err) from None
    _raise_failures(question, failures, out)


def _inputs(question: Question, document: dict[str, Any]) -> dict[str, str]:
    """Checksums of the inputs a point runs on (loaded once per process: cheap)."""
    from sim.scenario import scenario_from_dict

    return scenario_inputs(scenario_from_dict(document, question.source))


def _read_back(
    question: Question,
    spec: SweepSpec,
    out: Path,
    label: str,
    pt: Point,
    point: SweepPoint,
    state: _State,
) -> None:
    """A finished point's rows from DIR (resume), refused if it ran on other inputs than the
    point would now: one search's table never mixes two traces."""
    now = _inputs(question, point_document(spec, point))
    check_resumed_inputs(
        out, [point], {point.point_id}, [now], lambda _p: _named(question, label, pt)
    )
    state.rows[point.point_id] = read_rows(out, point)
    state.reused += 1


def _named(question: Question, label: str, pt: Point) -> str:
    return f"search point ({_describe(question, label, pt)})"


def _worker_died(
    question: Question,
    out: Path,
    tasks: dict[str, tuple[str, Point, PointTask]],
    err: WorkerDied,
) -> UserError:
    """`worker_died` for a search: the points named by their field values and policy."""
    points = out / POINTS_DIR
    kept = len([p for p in points.iterdir() if p.suffix == ".json"]) if points.is_dir() else 0
    if err.task is None:
        return worker_died(question.source, out, kept, None, "")
    label, pt, _ = tasks[err.task.point.point_id]
    others = [
        f"({_describe(question, *tasks[t.point.point_id][:2])})"
        for t in err.running
        if t.point.point_id != err.task.point.point_id
    ]
    also = f"search points {', '.join(others[:8])}" if others else ""
    return worker_died(question.source, out, kept, _named(question, label, pt), also)


def _raise_failures(
    question: Question,
    failures: Sequence[tuple[str, Point, PointOutcome]],
    out: Path | None = None,
) -> None:
    if not failures:
        return
    label, pt, outcome = failures[0]
    kept = f"; finished points are kept in {out}, fix and rerun with --resume {out}" if out else ""
    raise UserError(
        f"{question.source}: search point ({_describe(question, label, pt)}) failed: "
        f"{outcome.error}{kept}"
    )


def _row(
    question: Question, spec: SweepSpec, state: _State, label: str, pt: Point
) -> dict[str, Any]:
    point = _point(question, spec, label, pt)
    rows = state.rows[point.point_id]
    if len(rows) != 1:
        raise UserError(
            f"{question.source}: search point ({_describe(question, label, pt)}): expected "
            f"one result row, got {len(rows)}"
        )
    return rows[0]


def _manifest(question: Question, spec: SweepSpec) -> str:
    from sim.scenario import scenario_from_dict

    try:
        resolved = scenario_from_dict(question.base, question.source).resolved_dict()
    except UserError:
        resolved = question.base
    document = {
        "tool": {"moesim": sim.__version__, "numpy": np.__version__},
        "source": question.source,
        "fingerprint": spec.fingerprint(),
        "scenario": resolved,
        "search": question.to_dict(),
    }
    return yaml.safe_dump(plain(document), sort_keys=False, allow_unicode=True)
