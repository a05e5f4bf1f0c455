"""The comparison table `moesim run` prints: one rich table per top-k."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sim.engine.results import RunResult
from sim.scenario.build import Scenario
from sim.scenario.run import summary_rows
from sim.trace.routing import RoutingTrace
from sim.units import format_duration, format_size


def comparison_tables(scenario: Scenario, results: Sequence[RunResult]) -> list[Table]:
    rows = summary_rows(scenario, results)
    with_cycles = scenario.clock_hz is not None
    tables = []
    for k in scenario.topk:
        table = Table(title=f"{scenario.name}: top-{k}, baseline {scenario.baseline}")
        for name in (
            "policy",
            *(("cycles",) if with_cycles else ()),
            "mean step",
            "p50",
            "p99",
            "transfer",
            "PCIe bytes",
            "MD bytes",
            "hit rate",
            "speedup",
            "gap closed",
        ):
            if name == "policy":
                table.add_column(name, no_wrap=True, min_width=_label_width(rows))
            else:
                table.add_column(name, justify="right", no_wrap=name == "cycles")
        for row in (r for r in rows if r["topk"] == k):
            table.add_row(*(Text(cell) for cell in _cells(row, with_cycles)))
        tables.append(table)
    return tables


def predictor_notes(results: Sequence[RunResult]) -> list[str]:
    """One footnote per run whose policy reports a predictor's precision and recall."""
    many_k = len({getattr(r, "topk", None) for r in results}) > 1
    notes = []
    for result in results:
        stats = getattr(result, "policy_stats", None) or {}
        if "precision" not in stats or "recall" not in stats:
            continue
        where = f"{result.label} (top-{getattr(result, 'topk', '')})" if many_k else result.label
        notes.append(
            f"{where}: predictor precision {_share(stats['precision'])}, recall "
            f"{_share(stats['recall'])}, {stats.get('prefetched', 0)} prefetches"
        )
    return notes


def identical_run_notes(results: Sequence[RunResult]) -> list[str]:
    """Say so when two policies' runs are identical in every per-layer number: a reader should
    not take that for a bug (typically the cache holds fewer experts than one gate's active
    set, so every gate evicts every other cached expert and the eviction order never matters)."""
    notes = []
    seen: dict[tuple[Any, bytes], str] = {}
    for result in results:
        key = (
            getattr(result, "topk", None),
            b"".join(
                np.ascontiguousarray(v).tobytes() for _, v in sorted(result.per_layer.items())
            ),
        )
        if key in seen:
            notes.append(
                f"{result.label} = {seen[key]}: identical in every step and layer (e.g. a cache "
                "smaller than a gate's active set evicts every other expert at each gate, so the "
                "eviction order never matters)"
            )
        else:
            seen[key] = result.label
    return notes


def _label_width(rows: list[dict[str, Any]]) -> int:
    """Room for the longest label and its marks: labels are never cut."""
    return max((len(_cells(r)[0]) for r in rows), default=6)


def _cycles_cell(value: float | int) -> str:
    """Whole cycles (summary.csv keeps the fraction a roofline-fallback cost may leave)."""
    return f"{round(value):,}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _cells(row: dict[str, Any], with_cycles: bool = False) -> list[str]:
    label = row["label"] + (" (bound)" if row["is_bound"] else "")
    label += " (baseline)" if row["is_baseline"] else ""
    return [
        label,
        *((_cycles_cell(row["cycles"]),) if with_cycles else ()),
        format_duration(row["mean_step"]),
        format_duration(row["p50_step"]),
        format_duration(row["p99_step"]),
        format_duration(row["transfer_time"]),
        format_size(row["bytes_pcie"]),
        format_size(row["bytes_md"]),
        f"{100 * row['hit_rate']:.1f}%",
        "" if row["speedup"] is None else f"{row['speedup']:.2f}x",
        "" if row["gap_closed"] is None else f"{100 * row['gap_closed']:.0f}%",
    ]


def print_comparison(
    scenario: Scenario, results: Sequence[RunResult], trace: RoutingTrace, file: Any = None
) -> None:
    console = Console(file=file or sys.stdout, width=140 if scenario.clock_hz is None else 160)
    console.print(trace.describe(), highlight=False, markup=False)
    for table in comparison_tables(scenario, results):
        console.print(table)
    for note in [*predictor_notes(results), *identical_run_notes(results)]:
        console.print(note, highlight=False, markup=False)
    console.print(
        "(bound) = offline bound (sees the future); speedup = baseline mean step / mean step; "
        "gap closed = share of the baseline-to-best-bound gap",
        highlight=False,
        markup=False,
    )
