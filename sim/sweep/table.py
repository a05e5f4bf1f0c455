"""The tidy sweep table: one row per (point, policy, top-k), every swept field a column.

Rows are the points' summary rows (as in a run's summary.csv) with the point's id, repeat,
seed and swept values in front; ``is_baseline``, ``speedup`` and ``gap_closed`` are recomputed
per *cell* so that policies swept as separate points are still compared with their baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sim.atomic import write_bytes, write_csv
from sim.sweep.spec import POLICIES_PATH, SweepPoint, SweepSpec, canonical_json

TABLE_CSV = "sweep.csv"
TABLE_PARQUET = "sweep.parquet"
POINT_COLUMNS = ("point_id", "point", "repeat", "seed")


def write_table(
    out: Path,
    spec: SweepSpec,
    point_rows: Sequence[tuple[SweepPoint, list[dict[str, Any]]]],
    baseline: str,
) -> int:
    """Write sweep.csv (and sweep.parquet when pyarrow is installed) into ``out`` from each
    point's summary rows, in point order; returns the number of rows."""
    swept = list(spec.swept_paths)
    rows: list[dict[str, Any]] = []
    for point, summary in point_rows:
        values = point.swept()
        for row in summary:
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
    write_csv(out / TABLE_CSV, columns, ([csv_cell(row.get(c)) for c in columns] for row in rows))
    _write_parquet(out / TABLE_PARQUET, columns, rows)
    return len(rows)


def _add_relative(rows: list[dict[str, Any]], swept: list[str], baseline: str) -> None:
    """``is_baseline``, ``speedup`` and ``gap_closed`` within each sweep cell, as summary.csv.

    A cell is one combination of every swept field except ``policies``, one seed and one top-k.
    Without a ``policies`` axis a cell is one point's top-k (exactly summary.csv's numbers);
    with one, each policy is compared with the baseline and bounds of its sibling points.
    """
    from sim.policies.bounds import gap_closed

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
    return (*(canonical_json(row[p]) for p in others), row["seed"], row.get("topk"))


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
    return [None if v is None else (v if isinstance(v, str) else canonical_json(v)) for v in values]


def _cell(value: Any) -> Any:
    """A swept value as a table cell: scalars as written, structures as compact JSON."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return canonical_json(value)


def csv_cell(value: Any) -> Any:
    """As summary.csv: blank for None/NaN, repr for floats (exact and deterministic)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else value
