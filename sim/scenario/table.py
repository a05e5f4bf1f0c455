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
from sim.units import format_bandwidth, format_duration, format_flops, format_size

BOUND_METRICS = {  # what each offline bound bounds (docs/policies.md): never latency
    "belady": "belady bounds demand misses, not latency",
    "optimal": "optimal bounds link busy time, not latency",
}
SEED_RATIO = (32.0, 512.0)  # the seed's BW_PCIe : BW_MD
OVER, UNDER = "*", "!"  # gap closed footnote marks: above 100 %, below 0 %


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
    proxies = has_proxies(rows)
    tables = []
    for k in scenario.topk:
        table = Table(title=f"{scenario.name}: top-{k}, baseline {scenario.baseline}")
        for name in (
            "policy",
            "kind",
            *(("cycles",) if with_cycles else ()),
            "mean step",
            "p50",
            "p99",
            "tokens/s",
            "ms/token",
            "transfer",
            "PCIe bytes",
            "MD bytes",
            "hit rate",
            "late pf",
            "speedup",
            "gap closed",
            *(PROXY_HEADERS if proxies else ()),
        ):
            if name in ("policy", "kind"):
                width = _label_width(rows) if name == "policy" else 6
                table.add_column(name, no_wrap=True, min_width=width)
            else:
                table.add_column(name, justify="right", no_wrap=True)
        for row in (r for r in rows if r["topk"] == k):
            cells = _cells(row, with_cycles) + (_proxy_cells(row) if proxies else [])
            table.add_row(*(Text(cell) for cell in cells))
        tables.append(table)
    return tables


# the quality proxies (docs/policies.md, "Quality proxies"): shown when a run gave any up
PROXY_HEADERS = ("degraded*", "dropped*")
PROXY_NOTE = (
    "* quality PROXIES, not accuracy: degraded = share of the router's gate mass (each "
    "token's top-k scores renormalised to 1) served by reduced-precision expert copies; "
    'dropped = share its tokens skipped (docs/policies.md, "Quality proxies")'
)


def has_proxies(rows: Sequence[dict[str, Any]]) -> bool:
    """Whether any run served experts below native precision or skipped any."""
    return any(
        (row.get("degraded_gate_mass") or 0.0) != 0.0
        or (row.get("dropped_gate_mass") or 0.0) != 0.0
        or (row.get("reduced") or 0.0) != 0.0
        for row in rows
    )


def _proxy_cells(row: dict[str, Any]) -> list[str]:
    def share(key: str) -> str:
        value = row.get(key)
        return "" if value is None else ("n/a" if value != value else f"{100 * value:.1f}%")

    return [share("degraded_gate_mass"), share("dropped_gate_mass")]


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
        same = {(getattr(r, "policy", None), repr(getattr(r, "params", None))) for r in group}
        if len(same) == 1 and getattr(group[0], "policy", None) is not None:
            note += " (the same policy with the same parameters)"
        elif all(_cache_smaller_than_gate(r) for r in group):
            note += (
                " (each cache is smaller than a gate's active set: every gate evicts every "
                "other cached expert, so the eviction order never matters)"
            )
        notes.append(note)
    return notes


def no_hit_notes(results: Sequence[RunResult]) -> list[str]:
    """A caching policy that never hits runs like a cacheless one: say so, with the actual
    cause when one of the known ones holds (checked in this order): a cache of 0 slots per
    layer, misses that never come to the GPU (so nothing can enter the cache), a cache
    smaller than one gate's active set."""
    groups: dict[tuple[Any, str], list[str]] = {}  # runs with the same cause: one line
    for result in results:
        if not _is_cache_policy(result) or float(np.sum(result.per_layer["hits"])) > 0:
            continue
        key = (getattr(result, "topk", None), _no_hit_reason(result))
        groups.setdefault(key, []).append(result.label)
    notes = []
    for (topk, reason), labels in groups.items():
        note = f"{_topk_prefix(topk)}{', '.join(labels)}: no hits"
        notes.append(f"{note}: {reason}" if reason else note)
    return notes


def _no_hit_reason(result: RunResult) -> str:
    slots = getattr(result, "cache_slots", None)
    params = getattr(result, "params", None) or {}
    if slots == 0:
        if params.get("scope") == "layer":
            layers = result.per_layer.get("layer")
            count = f"{int(np.max(layers)) + 1} " if layers is not None and len(layers) else ""
            return (
                f"0 cache slots per layer (scope: layer divides the cache by the trace's {count}"
                "layers, rounding down): give at least one expert per layer, or scope: global"
            )
        return "its cache has 0 slots (hardware.hbm.capacity or its slots parameter)"
    layer = result.per_layer
    if "pcie" in layer and "md_fetch" in layer:
        fetched = float(np.sum(layer["pcie"]) + np.sum(layer["md_fetch"]))
        if fetched == 0:
            return (
                f"its miss path ({params.get('miss_path', 'its rule')}) never brings an expert's "
                "weights to the GPU (every miss runs near data or on the host), so nothing "
                "enters the cache"
            )
    if _cache_smaller_than_gate(result):
        return (
            f"its cache ({_cache_size(result)}) is smaller than one gate's active set "
            f"(~{_mean_active(result):.0f})"
        )
    return ""


def bound_notes(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    """What the bounds bound, said wherever the table could mislead: a blank gap closed (no
    bound beats the baseline), a run faster than the best bound (gap closed over 100 %, or a
    bound beaten on mean step by any run), a run slower than the baseline (below 0 %)."""
    rows = summary_rows(scenario, results)
    params = {(getattr(r, "topk", None), r.label): getattr(r, "params", None) for r in results}
    notes = []
    for k in scenario.topk:
        same_k = [r for r in rows if r["topk"] == k]
        base = next((r for r in same_k if r["is_baseline"]), None)
        bounds = [r for r in same_k if run_kind(r) == "bound"]
        if base is None or not bounds:
            continue
        best = min(bounds, key=lambda r: r["mean_step"])
        what = BOUND_METRICS.get(best["policy"], "offline bounds do not bound latency")
        if best["mean_step"] >= base["mean_step"]:
            notes.append(
                f"top-{k}: gap closed blank: no bound beats the baseline here ({best['label']} "
                f"{format_duration(best['mean_step'])} vs {base['label']} "
                f"{format_duration(base['mean_step'])} mean step): {what}"
            )
            continue
        for bound in sorted(bounds, key=lambda r: r["mean_step"]):
            faster = [
                r["label"]
                for r in same_k
                if run_kind(r) != "bound" and r["mean_step"] < bound["mean_step"]
            ]
            if not faster:
                continue
            marked = (
                " (gap closed over 100%, marked * in the printed table)" if bound is best else ""
            )
            notes.append(
                f"top-{k}: {', '.join(faster)} beat{'s' if len(faster) == 1 else ''} the bound "
                f"{bound['label']} on mean step ({format_duration(bound['mean_step'])}){marked}: "
                f"{_bounds_what(bound, params.get((k, bound['label'])))}"
            )
        if any((r["gap_closed"] or 0.0) < -1e-9 for r in same_k):
            notes.append(
                f"top-{k}: gap closed below 0% (marked {UNDER} in the printed table): slower than the baseline "
                f"{base['label']}"
            )
    return notes


def _bounds_what(row: dict[str, Any], params: dict[str, Any] | None) -> str:
    """What a bound row bounds, with the parameters that matter (belady: its miss path)."""
    what = BOUND_METRICS.get(row["policy"], "offline bounds do not bound latency")
    miss_path = (params or {}).get("miss_path")
    if row["policy"] == "belady" and miss_path:
        what += f" (for its cache size, with misses served by the {miss_path} rule)"
    return what


def seed_ratio_notes(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    """The seed's rule splits by its constants 32:512, not by the scenario's links: say so when
    the links have another ratio, so a reader knows what the baseline (and the caches'
    ``miss_path: seed``) does here."""
    pcie, md = scenario.hardware.pcie.bandwidth, scenario.hardware.md_link.bandwidth
    links_ratio = md / pcie if pcie > 0 else float("inf")
    notes: list[str] = []
    seen: set[tuple[float, float]] = set()
    for result in results:
        params = getattr(result, "params", None) or {}
        if result.policy == "seed-split":
            if params.get("from_links"):
                continue
            ratio = (float(params.get("bw_pcie", 32.0)), float(params.get("bw_md", 512.0)))
        elif _is_cache_policy(result) and params.get("miss_path") == "seed":
            ratio = SEED_RATIO
        else:
            continue
        if (
            ratio in seen
            or ratio[0] <= 0
            or abs(ratio[1] / ratio[0] - links_ratio) <= 1e-9 * links_ratio
        ):
            continue
        seen.add(ratio)
        notes.append(
            f"seed rule: splits by the constants {ratio[0]:g}:{ratio[1]:g} (PCIe:MD), not by this "
            f"scenario's links {format_bandwidth(pcie)}:{format_bandwidth(md)} (1:{links_ratio:.3g}); "
            "seed-split's from_links: true splits by the links"
        )
    return notes


def seed_md_only_notes(results: Sequence[RunResult]) -> list[str]:
    """Where the seed's rule rounds the GPU share to 0 at every gate, the baseline is md-only."""
    notes = []
    for result in results:
        if result.policy != "seed-split" or "pcie" not in result.per_layer:
            continue
        if float(np.sum(result.per_layer["pcie"])) == 0 and _mean_active(result) > 0:
            params = getattr(result, "params", None) or {}
            share = f"{params.get('bw_pcie', 32.0):g}/({params.get('bw_md', 512.0):g} + {params.get('bw_pcie', 32.0):g})"
            if params.get("from_links"):
                share = "the links' PCIe share"
            notes.append(
                f"{_topk_prefix(getattr(result, 'topk', None))}{result.label} sends 0 experts "
                f"over PCIe (round({share} x ~{_mean_active(result):.1f} active experts) rounds "
                "to 0 at every gate): the baseline is md-only here"
            )
    return notes


def hardware_header(scenario: Scenario, results: Sequence[RunResult]) -> str:
    """The hardware actually simulated, in one line above the tables."""
    hw, doc = scenario.hardware, scenario.hardware_doc
    gpu = (doc.get("gpu") or {}).get("preset") or "custom GPU"
    topo = hw.topology
    gpus = f"{topo.num_gpus} x " if topo.num_gpus > 1 else ""
    parts = [
        f"GPU {gpus}{gpu} ({format_flops(hw.gpu.peak_flops)}, HBM "
        f"{format_bandwidth(hw.hbm.bandwidth)})"
        + (f", {topo.data_parallel}" if topo.num_gpus > 1 else "")
    ]
    for name, link in hw.links.items():
        preset = ((doc.get("links") or {}).get(name) or {}).get("preset")
        own = topo.num_gpus > 1 and name in topo.per_gpu
        parts.append(
            f"{name} {format_bandwidth(link.bandwidth)}"
            + (f" [{preset}]" if preset else "")
            + f", {format_duration(link.latency)} latency, {link.channels} channel"
            + ("s" if link.channels != 1 else "")
            + (f", {link.sharing}" if link.sharing != "fifo" else "")
            + (" (per GPU)" if own else "")
        )
    for tier in ("host", "md"):
        if len(topo.paths[tier]) > 1 or topo.paths[tier][0] != (
            "pcie" if tier == "host" else "md_link"
        ):
            parts.append(f"{tier} path {' -> '.join(topo.paths[tier])}")
    slots = (
        int(hw.hbm.capacity // scenario.model.expert_bytes) if scenario.model.expert_bytes else 0
    )
    parts.append(
        f"HBM expert cache {slots} experts = {format_size(hw.hbm.capacity)}"
        if hw.hbm.capacity
        else "no HBM expert cache"
    )
    parts.append(f"md_mode {hw.md_mode}, experts in {hw.placement}")
    parts.append(_non_expert_text(hw.gpu.non_expert_time, results))
    return "hardware: " + "; ".join(parts)


def _non_expert_text(constant: float | None, results: Sequence[RunResult]) -> str:
    if constant is not None:
        return f"non-expert time {format_duration(constant)} per layer (constant)"
    values = (
        np.concatenate(
            [np.asarray(r.per_step.get("non_expert", ()), dtype=float) for r in results[:1]]
        )
        if results
        else np.zeros(0)
    )
    if not values.size:
        return "non-expert time: roofline"
    low, high, mean = float(values.min()), float(values.max()), float(values.mean())
    spread = (
        format_duration(mean)
        if low == high
        else (f"{format_duration(low)}-{format_duration(high)} (mean {format_duration(mean)})")
    )
    return f"non-expert time: roofline, {spread} per layer"


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
    slots = getattr(result, "cache_slots", None)
    return f"{slots} expert{'' if slots == 1 else 's'}{' per layer' if per_layer else ''}"


def _label_width(rows: list[dict[str, Any]]) -> int:
    """Room for the longest label and its marks: labels are never cut."""
    return max((len(_cells(r)[0]) for r in rows), default=6)


def _cycles_cell(value: float | int) -> str:
    """Whole cycles (summary.csv keeps the fraction a roofline-fallback cost may leave)."""
    return f"{round(value):,}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def run_kind(row: dict[str, Any]) -> str:
    """A summary row's kind (older results without the column: bound or online)."""
    return str(row.get("kind") or ("bound" if row.get("is_bound") else "online"))


def _cells(row: dict[str, Any], with_cycles: bool = False) -> list[str]:
    kind = run_kind(row)
    label = row["label"] + (" (baseline)" if row["is_baseline"] else "")
    active = row.get("hits", 0) + row.get("late_prefetches", 0) + row.get("misses", 0)
    late = row.get("late_prefetches", 0) / active if active else 0.0
    return [
        label,
        kind,
        *((_cycles_cell(row["cycles"]),) if with_cycles else ()),
        format_duration(row["mean_step"]),
        format_duration(row["p50_step"]),
        format_duration(row["p99_step"]),
        f"{row.get('tokens_per_s', 0.0):,.0f}",
        f"{row.get('ms_per_token', 1e3 * row['mean_step']):.3g}",
        format_duration(row["transfer_time"]),
        format_size(row["bytes_pcie"]),
        format_size(row["bytes_md"]),
        f"{100 * row['hit_rate']:.1f}%",
        f"{100 * late:.1f}%",
        "" if row["speedup"] is None else f"{row['speedup']:.2f}x",
        _gap_cell(row["gap_closed"]),
    ]


def _gap_cell(gap: float | None) -> str:
    """Gap closed in %, marked when outside 0-100 % (a footnote under the table says why)."""
    if gap is None:
        return ""
    mark = OVER if gap > 1.0 + 1e-9 else UNDER if gap < -1e-9 else ""
    return f"{100 * gap:.0f}%{mark}"


def _synthetic_notes(scenario: Scenario) -> list[str]:
    """A generated trace whose calibrated per-layer profiles were stretched over its depth."""
    if scenario.trace.kind != "synthetic" or scenario.trace.synthetic is None:
        return []
    from sim.trace.synth import calibration_warnings

    return calibration_warnings(scenario.trace.synthetic)


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
        *_synthetic_notes(scenario),
        *seed_ratio_notes(scenario, results),
        *seed_md_only_notes(results),
        *predictor_notes(results),
        *identical_run_notes(results),
        *no_hit_notes(results),
        *bound_notes(scenario, results),
        *(
            [PROXY_NOTE]
            if not scenario.serving and has_proxies(summary_rows(scenario, results))
            else []
        ),
        *gpu_notes(scenario, results),
    ]


def gpu_notes(scenario: Scenario, results: Sequence[RunResult]) -> list[str]:
    """With several GPUs: the step rule, and the saturated shared links."""
    topo = scenario.hardware.topology
    if topo.num_gpus < 2:
        return []
    notes = [
        f"{topo.num_gpus} GPUs ({topo.data_parallel}): a step lasts as long as the slowest "
        "GPU's (they decode in lockstep); tokens/s counts every GPU's tokens; each GPU's own "
        "figures are in summary.json (per_gpu), each link's in links.csv"
    ]
    shared = [n for n in scenario.hardware.links if n not in topo.per_gpu]
    for result in results:
        busy = [
            f"{name} {result.links[name]['utilisation']:.0%}"
            for name in shared
            if name in result.links and result.links[name]["utilisation"] >= 0.9
        ]
        if busy:
            notes.append(
                f"{_topk_prefix(getattr(result, 'topk', None))}{result.label}: shared link in "
                f"use {', '.join(busy)} of the run (saturated: more GPUs only queue)"
            )
    return notes


def print_comparison(
    scenario: Scenario, results: Sequence[RunResult], trace: RoutingTrace, file: Any = None
) -> None:
    console = Console(file=file or sys.stdout, width=200 if scenario.clock_hz is None else 215)
    console.print(trace.describe(), highlight=False, markup=False)
    console.print(hardware_header(scenario, results), highlight=False, markup=False, soft_wrap=True)
    for table in comparison_tables(scenario, results):
        console.print(table)
    for note in comparison_notes(scenario, results):
        console.print(note, highlight=False, markup=False, soft_wrap=True)
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
        "kind: online (knows the routing up to the gate), oracle (reads routing an online "
        "policy cannot know), bound (offline bound, sees the whole trace); tokens/s = sequences "
        "/ mean step; ms/token = time per output token; hit rate = experts in HBM at the gate; "
        "late pf = cached experts still in flight at the gate; speedup = baseline mean step / "
        "mean step; gap closed = share of the baseline-to-best-bound gap in mean step",
        highlight=False,
        markup=False,
    )
