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
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import sim
from sim.atomic import write_json, write_text
from sim.errors import UserError
from sim.sweep.executors import execute
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
    """What a worker needs for one point: the point and its (already validated) scenario."""

    point: SweepPoint
    document: dict[str, Any]
    source: str


@dataclass(frozen=True)
class PointOutcome:
    """A finished point: its result rows, or the one-line error that stopped it."""

    point_id: str
    rows: tuple[dict[str, Any], ...]
    elapsed: float  # wall seconds in the worker
    error: str | None = None
    cpu: float = 0.0  # CPU seconds of the worker process on this point


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
        results = run_scenario(scenario, cached_trace(scenario), progress=False)
        rows = tuple(summary_rows(scenario, results))
    except UserError as err:
        return PointOutcome(task.point.point_id, (), time.perf_counter() - start, str(err))
    return PointOutcome(
        task.point.point_id, rows, time.perf_counter() - start, cpu=time.process_time() - cpu
    )


def cached_trace(scenario: Any) -> Any:
    """The scenario's routing, loaded once per process (a forked worker inherits the
    parent's loaded traces)."""
    from sim.scenario import load_scenario_trace

    # The routing of a cost-table scenario comes from its tables: key on their source too.
    costs = scenario.costs.to_dict() if getattr(scenario, "costs", None) is not None else None
    key = canonical_json({"trace": scenario.trace.to_dict(), "costs": costs})
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
    base, _ = validate_points(spec, points, validate, set_dotted)
    out = Path(out_dir)
    prepare_dir(out, spec, resume)
    manifest = _manifest(spec, base, points)
    if resume:
        write_text(out / MANIFEST, manifest)  # the grid may have grown

    finished = finished_ids(out, points) if resume else set()
    todo = [p for p in points if p.point_id not in finished]
    tasks = [PointTask(p, point_document(spec, p, set_dotted), spec.source) for p in todo]
    failures: list[tuple[str, str]] = []
    with progress_bar(len(points), len(points) - len(todo), progress) as bar:
        for outcome in execute(tasks, point_fn, executor=executor, jobs=jobs, scheduler=scheduler):
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
    rows = write_table(
        out, spec, [(p, read_rows(out, p)) for p in points], _baseline_label(spec, base)
    )
    return SweepReport(
        out_dir=out,
        total=len(points),
        skipped=len(points) - len(todo),
        ran=len(todo),
        rows=rows,
        elapsed=time.perf_counter() - start,
    )


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
        if not manifest.is_file():
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
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
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
            "rows": list(outcome.rows),
        },
    )


def read_rows(out: Path, point: SweepPoint) -> list[dict[str, Any]]:
    """The rows of a finished point's file."""
    path = out / POINTS_DIR / f"{point.point_id}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: expected a finished sweep point, got {err}") from None
    return list(record["rows"])


# --- helpers ----------------------------------------------------------------------------


def _manifest(spec: SweepSpec, base: Any, points: Sequence[SweepPoint]) -> str:
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
