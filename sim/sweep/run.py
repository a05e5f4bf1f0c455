"""Running a sweep: points to workers, each finished point to disk at once, then one table.

Results directory::

    DIR/sweep.resolved.yaml     the base scenario (every default filled), the sweep block,
                                every point (id, overrides, seed) and the base fingerprint
    DIR/points/<point-id>.json  one file per finished point, written atomically
    DIR/sweep.csv               one row per (point, policy, topk), every swept field a column
    DIR/sweep.parquet           the same table, when pyarrow is installed

``--resume DIR`` reads which points have a file and runs only the others, so a killed sweep
never repeats or loses a finished point. The table is built from the point files, so a
resumed sweep gives the same table as an uninterrupted one.

Inputs are pinned by content: before anything runs, every distinct trace (and cost-table
directory) of the sweep is loaded once and its checksum recorded in the manifest and in every
point file. A resume whose trace or tables no longer have the recorded checksum (the same
relative ``trace:`` path now holding another trace, say) is refused, naming what changed, so
one sweep.csv never mixes two inputs; so is a worker that finds its input changed mid-sweep.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import sim
from sim import opener
from sim.atomic import WriteError, write_json, write_text
from sim.errors import UserError
from sim.sweep.executors import WorkerDied, execute
from sim.sweep.spec import (
    SweepPoint,
    SweepSpec,
    canonical_json,
    expand,
    point_document,
    validate_points,
)
from sim.sweep.table import write_table
from sim.yamlio import read_yaml

POINTS_DIR = "points"
MANIFEST = "sweep.resolved.yaml"
_TRACE_CACHE_SIZE = 4


@dataclass(frozen=True)
class PointTask:
    """What a worker needs for one point: the point, its (already validated) scenario, and
    the checksums of its inputs as the driver found them (``{}``: not pinned)."""

    point: SweepPoint
    document: dict[str, Any]
    source: str
    inputs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PointOutcome:
    """A finished point: its result rows, or the one-line error that stopped it."""

    point_id: str
    rows: tuple[dict[str, Any], ...]
    elapsed: float  # wall seconds in the worker
    error: str | None = None
    cpu: float = 0.0  # CPU seconds of the worker process on this point
    inputs: dict[str, str] = field(default_factory=dict)  # checksums of the inputs it ran on


@dataclass(frozen=True)
class SweepReport:
    out_dir: Path
    total: int  # points in the sweep
    skipped: int  # already finished (resume)
    ran: int  # run in this call
    rows: int  # rows of the table
    elapsed: float


# --- the point function (runs in workers) -------------------------------------------------

_TRACES: dict[str, Any] = {}  # per process: trace spec -> RoutingTrace, loaded once per worker


def run_point(task: PointTask) -> PointOutcome:
    """Run one point's scenario; a UserError (bad input at run time) becomes ``error``."""
    from sim.scenario import run_scenario, scenario_from_dict
    from sim.scenario.run import summary_rows

    start, cpu = time.perf_counter(), time.process_time()
    try:
        scenario = scenario_from_dict(task.document, task.source)
        inputs = scenario_inputs(scenario)
        if task.inputs and inputs != task.inputs:
            raise UserError(
                f"{changed_inputs(task.inputs, inputs)} changed after it started; rerun it"
            )
        results = run_scenario(scenario, cached_trace(scenario), progress=False)
        rows = tuple(summary_rows(scenario, results))
    except UserError as err:
        return PointOutcome(task.point.point_id, (), time.perf_counter() - start, str(err))
    return PointOutcome(
        task.point.point_id,
        rows,
        time.perf_counter() - start,
        cpu=time.process_time() - cpu,
        inputs=inputs,
    )


_INPUTS: dict[str, dict[str, str]] = {}  # per process: trace key -> checksums of its inputs


def scenario_inputs(scenario: Any) -> dict[str, str]:
    """``{"trace": sha256, "costs": sha256}`` of a scenario's inputs (loaded once per process;
    ``{}`` for objects that are not scenarios, as test doubles are)."""
    if not hasattr(getattr(scenario, "trace", None), "to_dict"):
        return {}
    key = _trace_key(scenario)
    found = _INPUTS.get(key)
    if found is None:
        from sim.scenario.run import trace_checksum

        found = {"trace": trace_checksum(cached_trace(scenario))}
        if getattr(scenario, "costs", None) is not None:
            found["costs"] = scenario.costs.checksum()
        _INPUTS[key] = found
    return dict(found)


def changed_inputs(before: dict[str, str], now: dict[str, str]) -> str:
    """Which input differs, for messages: ``the trace (sha256:1a2b3c4d... -> sha256:...)``."""
    names = [k for k in sorted({*before, *now}) if before.get(k) != now.get(k)]
    return ", ".join(
        f"the {'cost tables' if n == 'costs' else n} ({_short(before.get(n))} -> "
        f"{_short(now.get(n))})"
        for n in names
    )


def _short(checksum: str | None) -> str:
    return "not recorded" if checksum is None else checksum[:19] + "..."


def _trace_key(scenario: Any) -> str:
    # The routing of a cost-table scenario comes from its tables: key on their source too.
    costs = scenario.costs.to_dict() if getattr(scenario, "costs", None) is not None else None
    return canonical_json({"trace": scenario.trace.to_dict(), "costs": costs})


def forget_inputs() -> None:
    """Drop this process's loaded traces and their checksums: a sweep or search loads its
    inputs afresh, never from an earlier one of this process, whose files may have changed
    since (forked workers then inherit what it loads)."""
    _TRACES.clear()
    _INPUTS.clear()


def cached_trace(scenario: Any) -> Any:
    """The scenario's routing, loaded once per process (a forked worker inherits the
    parent's loaded traces)."""
    from sim.scenario import load_scenario_trace

    key = _trace_key(scenario)
    trace = _TRACES.get(key)
    if trace is None:
        if len(_TRACES) >= _TRACE_CACHE_SIZE:
            _TRACES.pop(next(iter(_TRACES)))
        trace = _TRACES[key] = load_scenario_trace(scenario)
    return trace


# --- the driver -------------------------------------------------------------------------


def run_sweep(
    spec: SweepSpec,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    executor: str = "local",
    jobs: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    point_fn: Callable[[PointTask], PointOutcome] = run_point,
    validate: Callable[[dict, str], Any] | None = None,
    set_dotted: Callable[[dict, str, Any], dict] | None = None,
) -> SweepReport:
    """Validate every point, run the unfinished ones, write the table; see the module doc."""
    start = time.perf_counter()
    points = expand(spec)
    base, scenarios = validate_points(spec, points, validate, set_dotted)
    out = Path(out_dir)
    prepare_dir(out, spec, resume)
    # every distinct input loaded once, here, before anything is written: a trace that
    # cannot be read is one line now, not N failed points (forked workers inherit it)
    forget_inputs()
    inputs = [scenario_inputs(s) for s in scenarios]
    manifest = _manifest(spec, base, points, inputs)
    finished = finished_ids(out, points) if resume else set()
    if resume:
        check_resumed_inputs(out, points, finished, inputs)
        write_text(out / MANIFEST, manifest)  # the grid may have grown

    todo = [p for p in points if p.point_id not in finished]
    tasks = [
        PointTask(p, point_document(spec, p, set_dotted), spec.source, inputs[p.index])
        for p in todo
    ]
    try:
        rows = _run_and_tabulate(
            spec,
            base,
            points,
            todo,
            tasks,
            out,
            manifest,
            progress,
            lambda batch: execute(
                batch, point_fn, executor=executor, jobs=jobs, scheduler=scheduler
            ),
        )
    except WriteError as err:
        if not opener.exists(out / MANIFEST):
            raise
        raise WriteError(
            f"{err}; finished points are kept in {out}, continue with --resume {out}"
        ) from None
    except WorkerDied as err:
        if not opener.exists(out / MANIFEST):  # nothing finished yet: --resume needs it
            write_text(out / MANIFEST, manifest)
        raise sweep_worker_died(spec, out, points, err) from None
    return SweepReport(
        out_dir=out,
        total=len(points),
        skipped=len(points) - len(todo),
        ran=len(todo),
        rows=rows,
        elapsed=time.perf_counter() - start,
    )


def _run_and_tabulate(
    spec: SweepSpec,
    base: Any,
    points: Sequence[SweepPoint],
    todo: Sequence[SweepPoint],
    tasks: Sequence[PointTask],
    out: Path,
    manifest: str,
    progress: bool,
    run: Callable[[Sequence[PointTask]], Any],
) -> int:
    """Run the tasks, writing each finished point at once, then the table; returns its rows."""
    failures: list[tuple[str, str]] = []
    with progress_bar(len(points), len(points) - len(todo), progress) as bar:
        for outcome in run(tasks):
            if outcome.error is None:
                if not (out / MANIFEST).exists():  # written with the first result, so a sweep
                    write_text(out / MANIFEST, manifest)  # that never started leaves nothing
                write_point(out, outcome)
            else:
                failures.append((outcome.point_id, outcome.error))
            bar.update(1)
    if not (out / MANIFEST).exists():
        write_text(out / MANIFEST, manifest)
    if failures:
        by_id = {p.point_id: p for p in points}
        point_id, message = failures[0]
        raise UserError(
            f"{spec.source}: {len(failures)} of {len(todo)} points failed, first point "
            f"{by_id[point_id].index} ({point_id}): {message}; finished points are kept in "
            f"{out}, fix and rerun with --resume {out}"
        )
    return write_table(
        out, spec, [(p, read_rows(out, p)) for p in points], _baseline_label(spec, base)
    )


def sweep_worker_died(
    spec: SweepSpec, out: Path, points: Sequence[SweepPoint], err: WorkerDied
) -> UserError:
    """`worker_died` for a sweep: points named by index and id."""
    kept = len(finished_ids(out, points))
    if err.task is None:
        return worker_died(spec.source, out, kept, None, "")
    point: SweepPoint = err.task.point
    others = sorted(t.point.index for t in err.running if t.point.point_id != point.point_id)
    also = f"points {', '.join(map(str, others[:8]))}" if others else ""
    return worker_died(
        spec.source, out, kept, f"sweep point {point.index} ({point.point_id})", also
    )


def worker_died(source: str, out: Path, kept: int, running: str | None, also: str) -> UserError:
    """One line for a worker killed from outside: the point it ran (``running``, as the
    caller names it; None: unknown), the others then running (``also``), the ``kept``
    finished points, and how to continue (sweeps and searches alike)."""
    tail = (
        f"it was killed from outside (out of memory? try fewer --jobs); {kept} finished "
        f"points are kept in {out}, continue with --resume {out}"
    )
    if running is None:
        return UserError(f"{source}: a worker process died: {tail}")
    too = f" ({also} were running too)" if also else ""
    return UserError(f"{source}: a worker process died while running {running}{too}: {tail}")


def default_out_dir(spec: SweepSpec) -> Path:
    """``<output.dir>/<name>[-sweep]-<UTC time>`` named like a run's results directory
    (``-sweep`` added unless the name already says so)."""
    from sim.scenario.run import new_results_dir

    name = str(spec.base.get("name") or Path(spec.source).stem)
    output = spec.base.get("output")
    parent = output.get("dir", "results") if isinstance(output, dict) else "results"
    return new_results_dir(parent, name if "sweep" in name else f"{name}-sweep")


def prepare_dir(
    out: Path, spec: SweepSpec, resume: bool, manifest_name: str = MANIFEST, what: str = "sweep"
) -> None:
    """A new or empty ``out``, or with ``resume`` a ``what`` directory (its ``manifest_name``
    present) of the same base scenario: the one resume check of sweeps and searches."""
    manifest = out / manifest_name
    if resume:
        if not opener.exists(manifest):
            raise UserError(
                f"--resume {out}: expected a {what} results directory, got no {manifest_name}"
            )
        previous = read_yaml(manifest, f"a readable {what} manifest") or {}
        found = previous.get("fingerprint") if isinstance(previous, dict) else None
        if found != spec.fingerprint():
            raise UserError(
                f"--resume {out}: expected a {what} of the same base scenario (fingerprint "
                f"{spec.fingerprint()[:12]}), got {str(found)[:12]}: the scenario outside "
                f"'sweep:' or --set changed"
            )
        return
    if manifest.exists():
        raise UserError(
            f"--out {out}: expected a new or empty directory, got an existing {what} "
            f"(continue it with --resume {out})"
        )
    from sim.scenario.run import check_out_dir

    check_out_dir(out, "--out")


def finished_ids(out: Path, points: Sequence[SweepPoint]) -> set[str]:
    """Points with a complete result file under ``out/points`` (atomic writes: a file
    present is complete)."""
    done = set()
    for point in points:
        path = out / POINTS_DIR / f"{point.point_id}.json"
        if opener.is_file(path):
            try:
                record = json.loads(opener.read_text(path, "a sweep point file"))
            except (UserError, ValueError, RecursionError):
                continue  # unreadable: run it again
            if isinstance(record, dict) and record.get("point_id") == point.point_id:
                done.add(point.point_id)
    return done


def write_point(out: Path, outcome: PointOutcome) -> None:
    """``out/points/<id>.json``: a finished point's rows, written atomically."""
    write_json(
        out / POINTS_DIR / f"{outcome.point_id}.json",
        {
            "point_id": outcome.point_id,
            "elapsed_s": outcome.elapsed,
            "cpu_s": outcome.cpu,
            "inputs": outcome.inputs,
            "rows": list(outcome.rows),
        },
    )


def read_rows(out: Path, point: SweepPoint) -> list[dict[str, Any]]:
    """The rows of a finished point's file."""
    path = out / POINTS_DIR / f"{point.point_id}.json"
    text = opener.read_text(path, "a finished sweep point")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise UserError(f"{path}: expected a finished sweep point, got {err}") from None
    rows = record.get("rows") if isinstance(record, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path}: expected a finished sweep point with its rows, got none")
    return rows


def check_resumed_inputs(
    out: Path,
    points: Sequence[SweepPoint],
    finished: set[str],
    inputs: Sequence[dict[str, str]],
    name: Callable[[SweepPoint], str] = lambda point: f"point {point.index}",
) -> None:
    """Refuse to resume when a finished point ran on other inputs than its point would now
    (``inputs`` aligned with ``points``; ``name`` says how the message names a point)."""
    for point, now in zip(points, inputs, strict=True):
        if point.point_id not in finished:
            continue
        path = out / POINTS_DIR / f"{point.point_id}.json"
        try:
            record = json.loads(opener.read_text(path, "a finished sweep point"))
        except (ValueError, RecursionError) as err:
            raise UserError(f"{path}: expected a finished sweep point, got {err}") from None
        found = record.get("inputs") if isinstance(record, dict) else None
        recorded = {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
        if recorded != now:
            raise UserError(
                f"--resume {out}: expected the inputs {name(point)} ran on, got "
                f"{changed_inputs(recorded, now)}: resuming would mix two inputs in one "
                f"table; restore them or run into a new --out"
            )


# --- helpers ----------------------------------------------------------------------------


def _manifest(
    spec: SweepSpec, base: Any, points: Sequence[SweepPoint], inputs: Sequence[dict[str, str]]
) -> str:
    # The base alone may be incomplete (e.g. policies only in the sweep): keep it as written.
    resolved = base.resolved_dict() if hasattr(base, "resolved_dict") else spec.base
    document = {
        "tool": {"moesim": sim.__version__, "numpy": np.__version__},
        "source": spec.source,
        "fingerprint": spec.fingerprint(),
        "scenario": resolved,
        "sweep": spec.to_dict(),
        "points": [
            {
                "id": p.point_id,
                "index": p.index,
                "repeat": p.repeat,
                "seed": p.seed,
                "overrides": dict(p.overrides),
                **({"inputs": inputs[p.index]} if inputs[p.index] else {}),
            }
            for p in points
        ],
    }
    return yaml.safe_dump(plain(document), sort_keys=False, allow_unicode=True)


def _baseline_label(spec: SweepSpec, base: Any) -> str:
    """The base scenario's baseline (points sweeping ``policies`` each name their own)."""
    if base is not None and hasattr(base, "baseline"):
        return str(base.baseline)
    from sim.scenario.build import DEFAULT_BASELINE

    return str(spec.base.get("baseline", DEFAULT_BASELINE))


def plain(obj: Any) -> Any:
    """Dataclasses, tuples, numpy scalars and Paths to plain YAML/JSON-safe values."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(
    total: int | None, initial: int, enabled: bool, unit: str = "point", desc: str = "sweep"
) -> Any:
    """A tqdm bar on stderr (``total`` None: a counter), or a no-op when not ``enabled``."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True)
