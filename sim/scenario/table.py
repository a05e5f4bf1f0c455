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

BOUND_METRICS = {  # what each offline bound bounds (docs/policies.md): never latency
    "belady": "belady bounds demand misses, not latency",
    "optimal": "optimal bounds link busy time, not latency",
}


SERVING_HEADERS = (
    "policy",
    "TTFT p50",
    "TTFT p99",
    "TPOT p50",
    "TPOT p99",
    "e2e p99",
    "tokens/s",
    "goodput",
    "SLO met",
    "preempt",
    "MD util",
    "hit rate",
)


def comparison_tables(scenario: Scenario, results: Sequence[RunResult]) -> list[Table]:
    rows = summary_rows(scenario, results)
    if scenario.serving:
        return serving_tables(scenario, rows)
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


def serving_tables(scenario: Scenario, rows: list[dict[str, Any]]) -> list[Table]:
    """One table per top-k of a serving scenario: request latencies, throughput, goodput."""
    assert scenario.workload is not None
    slo = scenario.workload.slo
    tables = []
    for k in scenario.topk:
        table = Table(
            title=f"{scenario.name}: top-{k}, serving, baseline {scenario.baseline}"
            + (f", SLO {_slo_text(slo)}" if slo.ttft is not None or slo.tpot is not None else "")
        )
        for name in SERVING_HEADERS:
            if name == "policy":
                table.add_column(name, no_wrap=True, min_width=_label_width(rows))
            else:
                table.add_column(name, justify="right")
        for row in (r for r in rows if r["topk"] == k):
            table.add_row(*(Text(cell) for cell in _serving_cells(row)))
        tables.append(table)
    return tables


def _slo_text(slo: Any) -> str:
    parts = []
    if slo.ttft is not None:
        parts.append(f"TTFT <= {format_duration(slo.ttft)}")
    if slo.tpot is not None:
        parts.append(f"TPOT <= {format_duration(slo.tpot)}")
    return " and ".join(parts)


def _serving_cells(row: dict[str, Any]) -> list[str]:
    def seconds(key: str) -> str:
        value = row.get(key)
        return "" if value is None or value != value else format_duration(value)

    def number(key: str, fmt: str) -> str:
        value = row.get(key)
        return "" if value is None or value != value else fmt.format(value)

    return [
        _cells(row)[0],
        seconds("ttft_p50"),
        seconds("ttft_p99"),
        seconds("tpot_p50"),
        seconds("tpot_p99"),
        seconds("e2e_p99"),
        number("output_tokens_per_s", "{:,.0f}"),
        number("goodput", "{:.2f}/s"),
        number("slo_attainment", "{:.1%}"),
        number("preemptions", "{:.0f}"),
        number("util_md_link", "{:.0%}"),
        f"{100 * row['hit_rate']:.1f}%",
    ]


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
    """One line per group of runs (per top-k) identical in every per-layer number: a reader
    should not take that for a bug. The cache reason is given only when it is the reason:
    every member is a cache policy whose cache holds fewer experts than one gate's active set,
    so every gate evicts every other cached expert and the eviction order never matters."""
    groups: dict[tuple[Any, bytes], list[RunResult]] = {}
    for result in results:
        key = (
            getattr(result, "topk", None),
            b"".join(
                np.ascontiguousarray(v).tobytes() for _, v in sorted(result.per_layer.items())
            ),
        )
        groups.setdefault(key, []).append(result)
    notes = []
    for (topk, _), group in groups.items():
        if len(group) < 2:
            continue
        labels = " = ".join(sorted(r.label for r in group))
        note = f"{_topk_prefix(topk)}{labels}: identical in every step and layer"
        if all(_cache_smaller_than_gate(r) for r in group):
            note += (
                " (each cache is smaller than a gate's active set: every gate evicts every "
                "other cached expert, so the eviction order never matters)"
            )
        notes.append(note)
    return notes


def no_hit_notes(results: Sequence[RunResult]) -> list[str]:
    """A caching policy that never hits runs like a cacheless one: say so, and why when the
    cause is a cache smaller than one gate's active set."""
    notes = []
    for result in results:
        if not _is_cache_policy(result) or float(np.sum(result.per_layer["hits"])) > 0:
            continue
        note = f"{_topk_prefix(getattr(result, 'topk', None))}{result.label}: no hits"
        if _cache_smaller_than_gate(result):
            note += (
                f": its cache ({_cache_size(result)}) is smaller than one gate's active set "
                f"(~{_mean_active(result):.0f})"
            )
        notes.append(note)
    return notes


def bound_notes(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    """Why ``gap closed`` is blank at a top-k where bounds ran but none beats the baseline."""
    rows = summary_rows(scenario, results)
    notes = []
    for k in scenario.topk:
        same_k = [r for r in rows if r["topk"] == k]
        base = next((r for r in same_k if r["is_baseline"]), None)
        bounds = [r for r in same_k if r["is_bound"]]
        if base is None or not bounds:
            continue
        best = min(bounds, key=lambda r: r["mean_step"])
        if best["mean_step"] < base["mean_step"]:
            continue
        notes.append(
            f"top-{k}: gap closed blank: no bound beats the baseline here ({best['label']} "
            f"{format_duration(best['mean_step'])} vs {base['label']} "
            f"{format_duration(base['mean_step'])} mean step): "
            f"{BOUND_METRICS.get(best['policy'], 'offline bounds do not bound latency')}"
        )
    return notes


def _topk_prefix(topk: Any) -> str:
    return "" if topk is None else f"top-{topk}: "


def _is_cache_policy(result: RunResult) -> bool:
    from sim.policies.base import available_policies
    from sim.policies.cache import CachePolicy

    cls = available_policies().get(getattr(result, "policy", None) or "")
    return cls is not None and issubclass(cls, CachePolicy)


def _mean_active(result: RunResult) -> float:
    active = np.asarray(result.per_layer.get("active", ()), dtype=float)
    return float(active.mean()) if active.size else 0.0


def _cache_smaller_than_gate(result: RunResult) -> bool:
    slots = getattr(result, "cache_slots", None)
    return _is_cache_policy(result) and slots is not None and slots < _mean_active(result)


def _cache_size(result: RunResult) -> str:
    per_layer = (getattr(result, "params", None) or {}).get("scope") == "layer"
    return f"{getattr(result, 'cache_slots', None)} experts{' per layer' if per_layer else ''}"


def _label_width(rows: list[dict[str, Any]]) -> int:
    """Room for the longest label and its marks: labels are never cut."""
    return max((len(_cells(r)[0]) for r in rows), default=6)


def _cycles_cell(value: float | int) -> str:
    """Whole cycles (summary.csv keeps the fraction a roofline-fallback cost may leave)."""
    return f"{round(value):,}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _cells(row: dict[str, Any], with_cycles: bool = False) -> list[str]:
    kind = row.get("kind") or ("bound" if row["is_bound"] else "online")
    label = row["label"] + ("" if kind == "online" else f" ({kind})")
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


def non_expert_notes(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    """A warning when the runs' non-expert time is 0: their step latency is expert work only."""
    if not results or any(r.totals.get("non_expert_time", 0.0) > 0 for r in results):
        return []
    return [
        "warning: non-expert time is 0 s (hardware.gpu.non_expert_time): step latency counts "
        "expert work only, without attention, router, shared experts and dense layers; "
        "remove the setting to use the roofline (docs/engine.md)"
    ]


def comparison_notes(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    """The lines under the comparison table: predictor accuracy, identical runs, caches that
    never hit, and why gap closed is blank. Printed by `moesim run`, written to notes.txt."""
    return [
        *non_expert_notes(scenario, results),
        *predictor_notes(results),
        *identical_run_notes(results),
        *no_hit_notes(results),
        *bound_notes(scenario, results),
    ]


def print_comparison(
    scenario: Scenario, results: Sequence[RunResult], trace: RoutingTrace, file: Any = None
) -> None:
    console = Console(file=file or sys.stdout, width=140 if scenario.clock_hz is None else 160)
    console.print(trace.describe(), highlight=False, markup=False)
    for table in comparison_tables(scenario, results):
        console.print(table)
    for note in comparison_notes(scenario, results):
        console.print(note, highlight=False, markup=False)
    if scenario.serving:
        console.print(
            "TTFT = first token - arrival; TPOT = (finish - first token) / (output tokens - 1); "
            "e2e = finish - arrival (measured requests, after the warm-up); goodput = requests/s "
            "meeting the SLO; MD util = busy share of the MD link",
            highlight=False,
            markup=False,
        )
        return
    console.print(
        "(bound) = offline bound, (oracle) = reads routing an online policy cannot know; speedup = baseline mean step / mean step; "
        "gap closed = share of the baseline-to-best-bound gap",
        highlight=False,
        markup=False,
    )
