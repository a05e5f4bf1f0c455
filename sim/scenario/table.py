"""The comparison table `moesim run` prints: one rich table per top-k."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

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
    tables = []
    for k in scenario.topk:
        table = Table(title=f"{scenario.name}: top-{k}, baseline {scenario.baseline}")
        for name in (
            "policy",
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
            table.add_column(name, justify="left" if name == "policy" else "right")
        for row in (r for r in rows if r["topk"] == k):
            table.add_row(*(Text(cell) for cell in _cells(row)))
        tables.append(table)
    return tables


def _cells(row: dict[str, Any]) -> list[str]:
    label = row["label"] + (" (bound)" if row["is_bound"] else "")
    label += " (baseline)" if row["is_baseline"] else ""
    return [
        label,
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
    console = Console(file=file or sys.stdout, width=140)
    console.print(trace.describe(), highlight=False, markup=False)
    for table in comparison_tables(scenario, results):
        console.print(table)
    console.print(
        "(bound) = offline bound (sees the future); speedup = baseline mean step / mean step; "
        "gap closed = share of the baseline-to-best-bound gap",
        highlight=False,
        markup=False,
    )
