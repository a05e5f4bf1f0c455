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
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import sim
from sim.atomic import write_bytes, write_csv, write_json, write_text
from sim.errors import UserError
from sim.sweep.executors import execute
from sim.sweep.spec import POLICIES_PATH, SweepPoint, SweepSpec, expand, point_document
from sim.sweep.spec import validate_points as _validate_points

POINTS_DIR = "points"
MANIFEST = "sweep.resolved.yaml"
TABLE_CSV = "sweep.csv"
TABLE_PARQUET = "sweep.parquet"
POINT_COLUMNS = ("point_id", "point", "repeat", "seed")
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
        results = run_scenario(scenario, _cached_trace(scenario), progress=False)
        rows = tuple(summary_rows(scenario, results))
    except UserError as err:
        return PointOutcome(task.point.point_id, (), time.perf_counter() - start, str(err))
    return PointOutcome(
        task.point.point_id, rows, time.perf_counter() - start, cpu=time.process_time() - cpu
    )


def _cached_trace(scenario: Any) -> Any:
    from sim.scenario import load_scenario_trace

    key = _canonical(scenario.trace.to_dict())
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
    base, _ = _validate_points(spec, points, validate, set_dotted)
    out = Path(out_dir)
    _prepare_dir(out, spec, resume)
    manifest = _manifest(spec, base, points)
    if resume:
        write_text(out / MANIFEST, manifest)  # the grid may have grown

    finished = _finished_ids(out, points) if resume else set()
    todo = [p for p in points if p.point_id not in finished]
    tasks = [PointTask(p, point_document(spec, p, set_dotted), spec.source) for p in todo]
    failures: list[tuple[str, str]] = []
    with _progress_bar(len(points), len(points) - len(todo), progress) as bar:
        for outcome in execute(tasks, point_fn, executor=executor, jobs=jobs, scheduler=scheduler):
            if outcome.error is None:
                if not (out / MANIFEST).exists():  # written with the first result, so a sweep
                    write_text(out / MANIFEST, manifest)  # that never started leaves nothing
                _write_point(out, outcome)
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
    rows = write_table(out, spec, points, _baseline_label(spec, base))
    return SweepReport(
        out_dir=out,
        total=len(points),
        skipped=len(points) - len(todo),
        ran=len(todo),
        rows=rows,
        elapsed=time.perf_counter() - start,
    )


def default_out_dir(spec: SweepSpec) -> Path:
    """``results/<name>-sweep-<UTC timestamp>/`` (name from the scenario or the file)."""
    name = spec.base.get("name") or Path(spec.source).stem
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{name}-sweep-{stamp}"


def _prepare_dir(out: Path, spec: SweepSpec, resume: bool) -> None:
    manifest = out / MANIFEST
    if resume:
        if not manifest.is_file():
            raise UserError(
                f"--resume {out}: expected a sweep results directory, got no {MANIFEST}"
            )
        try:
            previous = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise UserError(f"{manifest}: expected a readable sweep manifest, got {err}") from None
        found = previous.get("fingerprint") if isinstance(previous, dict) else None
        if found != spec.fingerprint():
            raise UserError(
                f"--resume {out}: expected a sweep of the same base scenario (fingerprint "
                f"{spec.fingerprint()[:12]}), got {str(found)[:12]}: the scenario outside "
                f"'sweep:' or --set changed"
            )
        return
    if manifest.exists():
        raise UserError(
            f"--out {out}: expected a new or empty directory, got an existing sweep "
            f"(continue it with --resume {out})"
        )
    from sim.scenario.run import check_out_dir

    check_out_dir(out, "--out")


def _finished_ids(out: Path, points: Sequence[SweepPoint]) -> set[str]:
    """Points with a complete result file (atomic writes: a file present is complete)."""
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


def _write_point(out: Path, outcome: PointOutcome) -> None:
    write_json(
        out / POINTS_DIR / f"{outcome.point_id}.json",
        {
            "point_id": outcome.point_id,
            "elapsed_s": outcome.elapsed,
            "cpu_s": outcome.cpu,
            "rows": list(outcome.rows),
        },
    )


def _read_rows(out: Path, point: SweepPoint) -> list[dict[str, Any]]:
    path = out / POINTS_DIR / f"{point.point_id}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: expected a finished sweep point, got {err}") from None
    return list(record["rows"])


# --- the tidy table ---------------------------------------------------------------------


def write_table(out: Path, spec: SweepSpec, points: Sequence[SweepPoint], baseline: str) -> int:
    """sweep.csv (and sweep.parquet) from the point files, in point order; returns #rows."""
    swept = list(spec.swept_paths)
    rows: list[dict[str, Any]] = []
    for point in points:
        values = point.swept()
        for row in _read_rows(out, point):
            record: dict[str, Any] = {
                "point_id": point.point_id,
                "point": point.index,
                "repeat": point.repeat,
                "seed": point.seed,
            }
            record.update({path: _cell(values[path]) for path in swept})
            record.update(row)
            rows.append(record)
    _add_relative(rows, swept, baseline)
    columns = _columns(rows, swept)
    write_csv(out / TABLE_CSV, columns, ([_csv_cell(row.get(c)) for c in columns] for row in rows))
    _write_parquet(out / TABLE_PARQUET, columns, rows)
    return len(rows)


def _add_relative(rows: list[dict[str, Any]], swept: list[str], baseline: str) -> None:
    """``is_baseline``, ``speedup`` and ``gap_closed`` within each sweep cell, as summary.csv.

    A cell is one combination of every swept field except ``policies``, one seed and one top-k.
    Without a ``policies`` axis a cell is one point's top-k (exactly summary.csv's numbers);
    with one, each policy is compared with the baseline and bounds of its sibling points.
    """
    from sim.scenario.run import gap_closed

    others = [p for p in swept if p != POLICIES_PATH]
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        row["is_baseline"] = row.get("label") == baseline
        cells.setdefault(_cell_key(row, others), []).append(row)
    for cell in cells.values():
        base = next((r["mean_step"] for r in cell if r["is_baseline"]), None)
        bounds = [r["mean_step"] for r in cell if r.get("is_bound")]
        for row in cell:
            mean = row.get("mean_step")
            row["speedup"] = base / mean if base is not None and mean else None
            row["gap_closed"] = (
                gap_closed(base, mean, min(bounds)) if base is not None and bounds else None
            )


def _cell_key(row: dict[str, Any], others: list[str]) -> tuple[Any, ...]:
    return (*(json.dumps(row[p], sort_keys=True) for p in others), row["seed"], row.get("topk"))


def _columns(rows: list[dict[str, Any]], swept: list[str]) -> list[str]:
    """Point columns, swept fields, then summary.csv's columns in its order, then the rest."""
    from sim.scenario.run import SUMMARY_COLUMNS

    present = {c for row in rows for c in row}
    known = [c for c in SUMMARY_COLUMNS if c in present]
    rest = sorted(present - set(known) - set(POINT_COLUMNS) - set(swept))
    return list(dict.fromkeys([*POINT_COLUMNS, *swept, *known, *rest]))


def _write_parquet(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> bool:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return False
    arrays = {c: pa.array(_arrow_column([row.get(c) for row in rows])) for c in columns}
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), sink)
    write_bytes(path, sink.getvalue().to_pybytes())
    return True


def _arrow_column(values: list[Any]) -> list[Any]:
    """One type per column: numbers stay numbers, anything mixed becomes text."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present):
        return values
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        if any(isinstance(v, float) for v in present):
            return [None if v is None else float(v) for v in values]
        return values
    return [None if v is None else (v if isinstance(v, str) else _canonical(v)) for v in values]


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
    return yaml.safe_dump(_plain(document), sort_keys=False, allow_unicode=True)


def _baseline_label(spec: SweepSpec, base: Any) -> str:
    """The base scenario's baseline (points sweeping ``policies`` each name their own)."""
    if base is not None and hasattr(base, "baseline"):
        return str(base.baseline)
    from sim.scenario.build import DEFAULT_BASELINE

    return str(spec.base.get("baseline", DEFAULT_BASELINE))


def _cell(value: Any) -> Any:
    """A swept value as a table cell: scalars as written, structures as compact JSON."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return _canonical(value)


def _csv_cell(value: Any) -> Any:
    """As summary.csv: blank for None/NaN, repr for floats (exact and deterministic)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else value


def _plain(obj: Any) -> Any:
    """Dataclasses, tuples, numpy scalars and Paths to plain YAML/JSON-safe values."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="point", desc="sweep", dynamic_ncols=True)
