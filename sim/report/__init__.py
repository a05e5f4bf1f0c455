"""Latency reports: figures and one self-contained ``report.html`` from a results directory.

``write_report(DIR)`` reads a run (``moesim run``), sweep (``moesim sweep``) or trace-stats
(``moesim trace stats``) directory, draws the figures that its files support, and writes
``DIR/report.html`` (figures embedded), ``DIR/figures/*.png`` and/or ``DIR/report.pdf``.
A figure whose input is missing is replaced by a note saying how to get it.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from sim import atomic, opener
from sim.errors import UserError
from sim.report import figures as F
from sim.report import frontier as FR
from sim.report import html as H
from sim.report import serving_figures as SF
from sim.report.load import (
    Results,
    RunResults,
    SearchResults,
    StatsResults,
    SweepResults,
    Table,
    find_key,
    label_kinds,
    load_results,
    offline_labels,
    plain_value,
    read_json,
)
from sim.units import format_size, parse_size

FORMATS = ("html", "png", "pdf")


@dataclass(frozen=True)
class NamedFigure:
    name: str  # file stem under figures/
    title: str
    caption: str
    figure: Figure


@dataclass(frozen=True)
class ReportContent:
    title: str
    subtitle: str
    sections: tuple[str, ...]  # HTML sections shown before the figures
    figures: tuple[NamedFigure, ...]
    skipped: tuple[str, ...]  # one sentence per figure that could not be drawn


def write_report(
    results_dir: str | Path,
    formats: Sequence[str] = ("html", "png"),
    *,
    window: tuple[int, int] | None = None,
    timeline: str | Path | None = None,
    out_dir: str | Path | None = None,
    dpi: int = 110,
) -> Path:
    """Write the report of ``results_dir`` and return its main file.

    formats: any of ``html`` (``report.html``), ``png`` (``figures/NAME.png``), ``pdf``
    (``report.pdf``, one page per figure). window: steps ``[start, stop)`` for the link
    timeline. timeline: a trace-event file other than ``DIR/timeline.json``. out_dir: where to
    write (default: the results directory). Returns report.html, else report.pdf, else figures/.
    """
    chosen = check_formats(formats)
    results = load_results(results_dir, timeline=timeline)
    content = build_content(results, window)
    out = Path(out_dir) if out_dir is not None else results.path
    needs_png = {"html", "png"} & set(chosen)
    pngs = [F.render(f.figure, "png", dpi) for f in content.figures] if needs_png else []
    written: dict[str, Path] = {}
    with atomic.staged_dir(out, "merge") as staging:  # every file appears, or none
        if "png" in chosen:
            for fig, png in zip(content.figures, pngs):
                atomic.write_bytes(staging / "figures" / f"{fig.name}.png", png)
            written["png"] = out / "figures"
        if "pdf" in chosen:
            atomic.write_bytes(staging / "report.pdf", _pdf(content.figures))
            written["pdf"] = out / "report.pdf"
        if "html" in chosen:
            blocks = [
                H.FigureBlock(f.title, f.caption, png) for f, png in zip(content.figures, pngs)
            ]
            atomic.write_bytes(staging / "report.html", render_html(content, blocks).encode())
            written["html"] = out / "report.html"
    return written.get("html") or written.get("pdf") or written["png"]


def check_formats(formats: Sequence[str] | str) -> tuple[str, ...]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        raise UserError(f"--format: expected a comma list of {', '.join(FORMATS)}, got {formats!r}")
    return chosen


def render_html(content: ReportContent, blocks: Sequence[H.FigureBlock]) -> str:
    parts = [H.note("Not drawn: " + s) for s in content.skipped]
    parts += [H.figure_block(b) for b in blocks]
    if not blocks and not content.skipped:
        parts.append(H.note("No figure applies to this directory."))
    sections = (*content.sections, H.section("Figures", *parts))
    return H.page(content.title, content.subtitle, sections)


def _pdf(figures: Sequence[NamedFigure]) -> bytes:
    buf = io.BytesIO()
    with PdfPages(buf, metadata={"CreationDate": None, "ModDate": None}) as pdf:
        for fig in figures:
            pdf.savefig(fig.figure)
    return buf.getvalue()


def build_content(results: Results, window: tuple[int, int] | None = None) -> ReportContent:
    """Every section and figure the directory supports."""
    if isinstance(results, RunResults):
        return _run_content(results, window)
    if isinstance(results, SweepResults):
        return _sweep_content(results)
    if isinstance(results, SearchResults):
        from sim.report.search import search_content

        return search_content(results)
    return _stats_content(results)


class _Collector:
    """Draws figures, turning ``NoData`` into a skip note."""

    def __init__(self) -> None:
        self.figures: list[NamedFigure] = []
        self.skipped: list[str] = []

    def add(self, name: str, title: str, caption: str, draw: Callable[[], Figure]) -> None:
        try:
            self.figures.append(NamedFigure(name, title, caption, draw()))
        except F.NoData as why:
            self.skipped.append(f"{title}: {why}.")


# -- run ---------------------------------------------------------------------------------------
def _run_content(run: RunResults, window: tuple[int, int] | None) -> ReportContent:
    summary = run.summary
    colours = F.policy_colours((str(x) for x in summary["label"]), run.baseline)
    topks = [int(k) for k in summary.unique("topk")]
    out = _Collector()
    for k in topks:
        sfx, top = f"_top{k}", f" (top-{k})"
        out.add(
            f"transfer_by_layer{sfx}",
            f"Per-layer transfer time by policy{top}",
            "Mean per decode step of each link's transfer time per MoE layer, and the "
            "layer's transfer window (first transfer start to last arrival). The panel "
            "labels say whether link time comes from the timeline (busy time, union over "
            "channels) or from bytes / link bandwidth.",
            lambda k=k: F.transfer_time_by_layer(run, colours, k),
        )
        out.add(
            f"step_latency_cdf{sfx}",
            f"Step-latency distribution{top}",
            "Share of decode steps finishing within a latency; p50 (circle) and p99 "
            "(triangle) marked.",
            lambda k=k: F.step_latency_cdf(run, colours, k),
        )
        out.add(
            f"link_timeline{sfx}",
            f"Link timeline{top}",
            "PCIe and MD-link transfers and compute of the baseline and of the best online "
            "policy (lowest mean step latency among runs of kind online: never an oracle or a "
            "bound) over the recorded steps (moesim run records two steps from the middle of "
            "the trace by default; --timeline STEP0:STEP1 chooses).",
            lambda k=k: F.link_timeline(run, colours, k, window),
        )
        out.add(
            f"link_usage{sfx}",
            f"Link utilisation over time{top}",
            "Each link's utilisation (share of its bandwidth in use, per time bin of "
            "link_usage.csv) over the run, for the baseline and the best online policy: where "
            "a shared link saturates.",
            lambda k=k: F.link_usage_over_time(run, colours, k),
        )
        out.add(
            f"hit_rate{sfx}",
            f"HBM hit rate over steps{top}",
            "Per decode step, experts already in HBM at the gate over active experts (prefetches "
            "still in flight are not hits), for policies that cache; oracles dash-dotted, "
            "offline bounds dashed.",
            lambda k=k: F.hit_rate_over_steps(run, colours, k),
        )
    if run.requests is not None:
        _serving_figures(run, colours, topks, out)
    frontier = FR.frontier_table(summary) if FR.has_proxies(summary) else None
    if frontier is not None:
        _frontier_figures(frontier, run.baseline, topks, out)
    out.add(
        "seed_view",
        "The seed's view",
        "Expert_Activ, Expert_GPU and Expert_MD per layer and top-k from the run's seed-split "
        "policy: active experts, GPU path (HBM hits + PCIe fetches), MD path.",
        lambda: F.seed_view(F.gating_from_run(run), "per_layer.csv, seed-split"),
    )
    name = run.scenario.get("name") or run.path.name
    sections = (
        _scenario_section(run.scenario, "scenario.resolved.yaml"),
        _provenance_section(run.trace, "trace.json"),
        H.section("Comparison", _comparison_note(run), _summary_table(run)),
        *((_serving_section(run),) if "ttft_p50" in run.summary else ()),
        *((_frontier_section(frontier),) if frontier is not None else ()),
    )
    subtitle = f"Results: {run.path}"
    return ReportContent(
        f"moesim report: {name}", subtitle, sections, tuple(out.figures), tuple(out.skipped)
    )


def _serving_figures(
    run: RunResults, colours: Mapping[str, str], topks: list[int], out: _Collector
) -> None:
    for k in topks:
        sfx, top = f"_top{k}", f" (top-{k})"
        out.add(
            f"request_latency_cdf{sfx}",
            f"Request latency distributions{top}",
            "Time to first token and time per output token of the measured requests (after "
            "the warm-up), per policy; p50 (circle) and p99 (triangle) marked.",
            lambda k=k: SF.latency_cdfs(run, colours, k),
        )
        out.add(
            f"hbm_over_time{sfx}",
            f"KV cache vs expert cache over time{top}",
            "HBM held by the KV cache (blocks allocated, at each iteration's start) and by the "
            "expert cache (after the iteration's last gate), per policy; the KV budget dashed.",
            lambda k=k: SF.memory_over_time(run, colours, k),
        )


def _frontier_figures(
    frontier: Table, baseline: str | None, topks: list[int], out: _Collector
) -> None:
    for k in [None] if len(topks) == 1 else topks:
        sfx, top = ("", "") if k is None else (f"_top{k}", f" (top-{k})")
        out.add(
            f"latency_quality_frontier{sfx}",
            f"Latency-quality frontier{top}",
            FR.FRONTIER_NOTE,
            lambda k=k: FR.frontier_figure(frontier, baseline, k),
        )


FRONTIER_COLUMNS = (
    H.Column("group", "other swept fields"),
    H.Column("topk", "top-k"),
    H.Column("label", "label"),
    H.Column("family", "family"),
    H.Column("kind", "kind"),
    H.Column("mean_step", "mean step (ms)", 1e3),
    H.Column("tokens_per_s", "tokens/s", 1.0, "{:,.0f}"),
    H.Column("degraded", "degraded gate mass, proxy (%)", 100.0, "{:.2f}"),
    H.Column("dropped", "dropped gate mass, proxy (%)", 100.0, "{:.2f}"),
    H.Column("pareto", "Pareto-optimal"),
    H.Column("rank", "# on the front", 1.0, "{:.0f}"),
)


def _frontier_section(frontier: Table) -> str:
    columns = FRONTIER_COLUMNS if any(str(g) for g in frontier["group"]) else FRONTIER_COLUMNS[1:]
    order = np.lexsort(
        (
            np.asarray(frontier["proxy"], dtype=np.float64),
            np.asarray(frontier["topk"], dtype=np.float64),
            np.asarray([str(g) for g in frontier["group"]]),
        )
    )
    return H.section(
        "Latency-quality frontier",
        H.note(FR.FRONTIER_NOTE),
        H.data_table(frontier.rows(order), columns),
    )


SERVING_COLUMNS = (
    H.Column("label", "label"),
    H.Column("topk", "top-k"),
    H.Column("ttft_p50", "TTFT p50 (ms)", 1e3),
    H.Column("ttft_p99", "TTFT p99 (ms)", 1e3),
    H.Column("tpot_p50", "TPOT p50 (ms)", 1e3),
    H.Column("tpot_p99", "TPOT p99 (ms)", 1e3),
    H.Column("e2e_p50", "e2e p50 (s)", 1.0, "{:.3f}"),
    H.Column("e2e_p99", "e2e p99 (s)", 1.0, "{:.3f}"),
    H.Column("output_tokens_per_s", "output tokens/s", 1.0, "{:.1f}"),
    H.Column("goodput", "goodput (req/s)", 1.0, "{:.2f}"),
    H.Column("slo_attainment", "SLO met (%)", 100.0, "{:.1f}"),
    H.Column("preemptions", "preemptions", 1.0, "{:.0f}"),
    H.Column("mean_batch", "mean batch", 1.0, "{:.1f}"),
)


def _serving_section(run: RunResults) -> str:
    return H.section(
        "Serving",
        H.note(
            "Per-request latencies of the measured requests (summary.csv): TTFT = first token "
            "- arrival, TPOT = (finish - first token) / (output tokens - 1), e2e = finish - "
            "arrival; goodput counts the requests per second meeting the scenario's SLO."
        ),
        H.data_table(run.summary, SERVING_COLUMNS),
    )


SUMMARY_COLUMNS = (
    H.Column("label", "label"),
    H.Column("kind", "kind"),
    H.Column("policy", "policy"),
    H.Column("topk", "top-k"),
    H.Column("mean_step", "mean step (ms)", 1e3),
    H.Column("p50_step", "p50 step (ms)", 1e3),
    H.Column("p99_step", "p99 step (ms)", 1e3),
    H.Column("tokens_per_s", "tokens/s", 1.0, "{:,.0f}"),
    H.Column("ms_per_token", "ms per output token", 1.0, "{:.4g}"),
    H.Column("total_time", "total (ms)", 1e3),
    H.Column("transfer_time", "transfer (ms)", 1e3),
    H.Column("stall", "stall (ms)", 1e3),
    H.Column("bytes_pcie", "PCIe (MB)", 1e-6),
    H.Column("bytes_md", "MD link (MB)", 1e-6),
    H.Column("hit_rate", "hit rate (%)", 100.0, "{:.1f}"),
    H.Column("late_prefetches", "late prefetches"),
    H.Column("speedup", "speedup (×)", 1.0, "{:.3f}"),
    H.Column("gap_closed", "gap closed (%)", 100.0, "{:.1f}"),
)


def _summary_table(run: RunResults) -> str:
    summary = run.summary
    offline, baseline = offline_labels(summary), run.baseline
    best = {
        k: F.best_label(summary, baseline, int(k)) for k in (int(x) for x in summary.unique("topk"))
    }
    classes = []
    for label, k in zip(summary["label"], summary["topk"]):
        label = str(label)
        if label == baseline:
            classes.append("baseline")
        elif label in offline:
            classes.append("bound")  # oracles and bounds: italics, never shaded
        else:
            classes.append("best" if best.get(int(k)) == label else "")
    return H.data_table(summary, SUMMARY_COLUMNS, classes)


def _comparison_note(run: RunResults) -> str:
    notes_file = run.path / "notes.txt"
    present = opener.exists(notes_file)
    notes = opener.read_text(notes_file, "a notes file").splitlines() if present else []
    header = [line for line in notes if line.startswith("hardware: ")]
    rest = [line for line in notes if line.strip() and not line.startswith("hardware: ")]
    return (
        "".join(H.note(line) for line in header)
        + H.note(
            f"One row per (top-k, policy) from summary.csv. Baseline: {run.baseline or 'unknown'} "
            "(bold); the best online policy per top-k shaded green; oracles (they read routing "
            "an online policy cannot know) and offline bounds in italics and never shaded. "
            "Speedup = baseline mean step / this mean step; gap closed = share of the "
            "baseline-to-best-bound gap in mean step; tokens/s = sequences / mean step; hit "
            "rate = experts already in HBM at the gate (late prefetches: cached but still in "
            "flight)."
        )
        + "".join(H.warning(line) if line.startswith("warning:") else H.note(line) for line in rest)
    )


# -- sweep -------------------------------------------------------------------------------------
def _sweep_content(sweep: SweepResults) -> ReportContent:
    table = sweep.table
    colours = F.policy_colours((str(x) for x in table["label"]), sweep.baseline)
    topks = [int(k) for k in table.unique("topk")]
    out = _Collector()
    for field in sweep.axes:
        # A swept top-k is the x axis itself: do not also split by it.
        per_topk = [None] if _same_as_topk(table, field) or len(topks) == 1 else topks
        for k in per_topk:
            sfx, top = ("", "") if k is None else (f"_top{k}", f" (top-{k})")
            out.add(
                f"speedup_vs_{_stem(field)}{sfx}",
                f"Speedup vs {field}{top}",
                "Mean step-latency speedup over the baseline, one line per policy; where "
                "other fields vary too, the line is their mean and the band their range.",
                lambda f=field, k=k: F.speedup_vs_field(sweep, f, colours, k),
            )
    if "hardware.num_gpus" in sweep.axes:
        for k in [None] if len(topks) == 1 else topks:
            sfx, top = ("", "") if k is None else (f"_top{k}", f" (top-{k})")
            out.add(
                f"gpu_scaling{sfx}",
                f"GPU-count scaling{top}",
                "Mean step latency (the slowest GPU's step) and tokens/s of all GPUs together "
                "against the number of GPUs sharing the pool, one line per policy.",
                lambda k=k: F.gpu_scaling(sweep, colours, k),
            )
    if SF.RATE_FIELD in sweep.axes and "ttft_p99" in table:
        for k in [None] if len(topks) == 1 else topks:
            sfx, top = ("", "") if k is None else (f"_top{k}", f" (top-{k})")
            out.add(
                f"throughput_latency{sfx}",
                f"Throughput vs latency{top}",
                "Per policy, one point per arrival rate: p99 time to first token against the "
                "output throughput reached, and the throughput against the offered rate.",
                lambda k=k: SF.throughput_latency(sweep, colours, k),
            )
    if len(sweep.axes) >= 2:
        x_field, y_field = sweep.axes[:2]
        for k in [None] if len(topks) == 1 else topks:
            sfx, top = ("", "") if k is None else (f"_top{k}", f" (top-{k})")
            out.add(
                f"speedup_heatmap{sfx}",
                f"Speedup over {x_field} × {y_field}{top}",
                "Speedup over the baseline of the best online policy in each cell (its "
                "label written in the cell; oracles and offline bounds never count), mean over "
                "any other swept fields.",
                lambda k=k: F.speedup_heatmap(sweep, x_field, y_field, k),
            )
    elif not sweep.axes:
        out.skipped.append("Sweep figures: sweep.csv names no swept field (no dotted column).")
    frontier = FR.frontier_table(table, sweep.axes) if FR.has_proxies(table) else None
    if frontier is not None:
        _frontier_figures(frontier, sweep.baseline, topks, out)
    trace_path = sweep.path / "trace.json"
    trace = _maybe_json(trace_path)
    sections = (
        _scenario_section(sweep.resolved, "sweep.resolved.yaml", swept_values(sweep)),
        _provenance_section(trace, "trace.json") if trace is not None else "",
        H.section(
            "Comparison",
            H.note(
                f"Swept fields: {', '.join(sweep.fields) or 'none found'}. Per policy and top-k: "
                f"speedup over the baseline ({sweep.baseline or 'unknown'}) across the sweep's "
                "rows (where its minimum and maximum occur), and in how many sweep cells (and "
                "which) it was the fastest online policy; oracles and offline bounds never are."
            ),
            H.data_table(sweep_summary(sweep), SWEEP_SUMMARY_COLUMNS),
        ),
        _frontier_section(frontier) if frontier is not None else "",
    )
    name = find_key(sweep.resolved, "name") or sweep.path.name
    return ReportContent(
        f"moesim sweep report: {name}",
        f"Results: {sweep.path}",
        tuple(s for s in sections if s),
        tuple(out.figures),
        tuple(out.skipped),
    )


SWEEP_SUMMARY_COLUMNS = (
    H.Column("topk", "top-k"),
    H.Column("label", "label"),
    H.Column("kind", "kind"),
    H.Column("rows", "rows"),
    H.Column("mean", "mean speedup (×)", 1.0, "{:.3f}"),
    H.Column("min", "min (×)", 1.0, "{:.3f}"),
    H.Column("min_at", "min at"),
    H.Column("max", "max (×)", 1.0, "{:.3f}"),
    H.Column("max_at", "max at"),
    H.Column("wins", "fastest online in cells"),
    H.Column("wins_at", "fastest online at"),
)


def sweep_summary(sweep: SweepResults) -> Table:
    """Per (top-k, label): its kind, rows, mean/min/max speedup and where (the swept values of
    the row) the min and max occur, and wins: in how many sweep cells (one value of every swept
    field but ``policies``, one seed, one top-k) it was the fastest online policy, and which.
    Oracles and bounds never win."""
    table = sweep.table
    stats = F.grouped_speedup(table, ("topk", "label"))
    keys = sorted(stats, key=lambda kl: (kl[0], kl[1] != sweep.baseline, str(kl[1])))
    kinds = label_kinds(table)
    excluded = {sweep.baseline} | offline_labels(table)
    cell_columns = [c for c in (*sweep.axes, "seed", "topk") if c in table]
    where_columns = [c for c in sweep.axes if c in table]
    best: dict[tuple[Any, ...], tuple[float, list[str], int]] = {}
    low: dict[tuple[Any, str], tuple[float, int]] = {}
    high: dict[tuple[Any, str], tuple[float, int]] = {}
    for i, (label, speedup) in enumerate(zip(table["label"], table["speedup"])):
        if not np.isfinite(speedup):
            continue
        key = (plain_value(table["topk"][i]), str(label))
        if key not in low or speedup < low[key][0]:
            low[key] = (float(speedup), i)
        if key not in high or speedup > high[key][0]:
            high[key] = (float(speedup), i)
        if str(label) not in excluded:  # ties: every label with the cell's best speedup wins
            cell = tuple(plain_value(table[c][i]) for c in cell_columns)
            if cell not in best or speedup > best[cell][0] * (1 + 1e-12):
                best[cell] = (float(speedup), [str(label)], i)
            elif speedup >= best[cell][0] * (1 - 1e-12):
                best[cell][1].append(str(label))
    topk_at = cell_columns.index("topk")
    wins = Counter(
        (cell[topk_at], label) for cell, (_, labels, _) in best.items() for label in labels
    )
    won_at: dict[tuple[Any, str], list[str]] = {}
    for cell, (_, labels, i) in best.items():
        for label in labels:
            won_at.setdefault((cell[topk_at], label), []).append(_where(table, where_columns, i))

    def at(found: dict[tuple[Any, str], tuple[float, int]], key: tuple[Any, str]) -> str:
        return _where(table, where_columns, found[key][1]) if key in found else ""

    return Table(
        {
            "topk": np.array([k for k, _ in keys], dtype=np.float64),
            "label": np.array([str(lb) for _, lb in keys], dtype=object),
            "kind": np.array([kinds.get(str(lb), "online") for _, lb in keys], dtype=object),
            "rows": np.array([stats[key][3] for key in keys], dtype=np.float64),
            "mean": np.array([stats[key][0] for key in keys]),
            "min": np.array([stats[key][1] for key in keys]),
            "min_at": np.array([at(low, (k, str(lb))) for k, lb in keys], dtype=object),
            "max": np.array([stats[key][2] for key in keys]),
            "max_at": np.array([at(high, (k, str(lb))) for k, lb in keys], dtype=object),
            "wins": np.array([wins[k, str(lb)] for k, lb in keys], dtype=np.float64),
            "wins_at": np.array(
                [_where_list(won_at.get((k, str(lb)), [])) for k, lb in keys], dtype=object
            ),
        },
        "sweep summary",
    )


def _where(table: Table, columns: Sequence[str], i: int) -> str:
    """The swept values of row ``i``: ``field=value, ...`` (short field names)."""
    return ", ".join(f"{c.rsplit('.', 1)[-1]}={plain_value(table[c][i])}" for c in columns)


def _where_list(places: Sequence[str], most: int = 4) -> str:
    places = list(dict.fromkeys(places))
    shown = "; ".join(places[:most])
    return shown + (f"; ... ({len(places)} cells)" if len(places) > most else "")


def sweep_summary_lines(sweep: SweepResults) -> list[str]:
    """The per-policy summary `moesim sweep` prints at its end (the report's table, as text)."""
    summary = sweep_summary(sweep)
    many_k = len(set(summary["topk"].tolist())) > 1
    lines = [
        f"per policy (speedup over {sweep.baseline or 'the baseline'} across the sweep; "
        "fastest online = the fastest online policy of a cell, ties shared; never an oracle or "
        "a bound):"
    ]
    for i in range(len(summary)):
        label = str(summary["label"][i])
        top = f"top-{int(summary['topk'][i])} " if many_k else ""
        kind = str(summary["kind"][i])
        text = f"  {top}{label} ({kind}): "
        if not np.isfinite(summary["mean"][i]):
            lines.append(text + "no speedup values")
            continue
        if label == sweep.baseline:
            lines.append(text + "the baseline")
            continue
        text += (
            f"{summary['min'][i]:.2f}x at {summary['min_at'][i] or 'every point'} .. "
            f"{summary['max'][i]:.2f}x at {summary['max_at'][i] or 'every point'}"
        )
        if kind != "online":
            text += f" ({kind}: not counted as fastest online)"
        else:
            wins = int(summary["wins"][i])
            text += f"; fastest online in {wins} cell{'' if wins == 1 else 's'}"
            if wins:
                text += f": {summary['wins_at'][i]}"
        lines.append(text)
    return lines


def _same_as_topk(table: Table, field: str) -> bool:
    column = table[field]
    return column.dtype.kind == "f" and bool(np.array_equal(column, table["topk"]))


def _stem(field: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in field).strip("_")


def _maybe_json(path: Path) -> dict[str, Any] | None:
    if not opener.exists(path):
        return None
    data = read_json(path)
    return data if isinstance(data, dict) else None


# -- trace stats -------------------------------------------------------------------------------
GATING_SUMMARY_COLUMNS = (
    H.Column("topk", "top-k"),
    H.Column("layer", "layer"),
    H.Column("positions", "positions"),
    H.Column("expert_activ", "Expert_Activ (mean)", 1.0, "{:.2f}"),
    H.Column("expert_gpu", "Expert_GPU (mean)", 1.0, "{:.2f}"),
    H.Column("expert_md", "Expert_MD (mean)", 1.0, "{:.2f}"),
    H.Column("h", "H (mean)", 1.0, "{:.2f}"),
)


def gating_summary(gating: Table) -> Table:
    """Per (top-k, layer): position count and mean of each seed count."""
    keys = sorted(
        {(plain_value(k), plain_value(lay)) for k, lay in zip(gating["topk"], gating["layer"])}
    )
    cols: dict[str, list[float]] = {c.name: [] for c in GATING_SUMMARY_COLUMNS}
    for k, layer in keys:
        rows = gating.where(topk=k, layer=layer)
        cols["topk"].append(k)
        cols["layer"].append(layer)
        cols["positions"].append(len(rows))
        for name in ("expert_activ", "expert_gpu", "expert_md", "h"):
            cols[name].append(float(np.mean(rows[name])))
    return Table({k: np.array(v, dtype=np.float64) for k, v in cols.items()}, "gating summary")


def _stats_content(stats: StatsResults) -> ReportContent:
    out = _Collector()
    out.add(
        "seed_view",
        "The seed's view",
        "Mean over positions of Expert_Activ, Expert_GPU and Expert_MD per layer and top-k, "
        "from trace stats (gating.csv).",
        lambda: F.seed_view(stats.gating, "gating.csv"),
    )
    sections = (
        _provenance_section(stats.meta, "meta.json"),
        H.section(
            "Gating counts", H.data_table(gating_summary(stats.gating), GATING_SUMMARY_COLUMNS)
        ),
    )
    return ReportContent(
        "moesim trace-stats report",
        f"Results: {stats.path}",
        sections,
        tuple(out.figures),
        tuple(out.skipped),
    )


# -- shared sections ---------------------------------------------------------------------------
def _scenario_section(
    scenario: dict[str, Any], source: str, swept: Mapping[str, list[Any]] | None = None
) -> str:
    """Key facts of the (base) scenario; a sweep's swept fields show their values instead of
    the base scenario's, which no point of the sweep ran with."""
    if not scenario:
        return H.section("Scenario", H.note(f"No {source} in the results directory."))
    facts: list[tuple[str, Any]] = [
        (key, value)
        for key in ("name", "baseline", "seed", "topk", "layout", "md_mode", "placement")
        if (value := find_key(scenario, key)) is not None and not isinstance(value, dict)
    ]
    policies = find_key(scenario, "policies")
    if isinstance(policies, list):
        facts.append(("policies", [_policy_name(p) for p in policies]))
    hardware = find_key(scenario, "hardware")
    for path in hardware_fact_paths(hardware):
        value = _dotted(hardware, path)
        if path == "hbm.capacity":
            value = _capacity_in_experts(value, _dotted(scenario, "model.expert_bytes"))
        if value is not None and not isinstance(value, dict | list):
            facts.append((f"hardware.{path}", value))
    shown = scenario
    if swept:
        facts = _with_swept(facts, swept)
        shown = _mark_swept(scenario, swept)
    title = f"Full {source} (every default" + ("; swept fields marked)" if swept else ")")
    return H.section("Scenario", H.key_values(facts), H.yaml_block(shown, title))


def _mark_swept(doc: dict[str, Any], swept: Mapping[str, list[Any]]) -> dict[str, Any]:
    """A copy of a sweep's resolved document whose base scenario shows each swept field as
    ``swept: v1, v2, ...`` instead of the base value no point ran with."""
    import copy

    out = copy.deepcopy(doc)
    base = out.get("scenario") if isinstance(out.get("scenario"), dict) else out
    for field, values in swept.items():
        node: Any = base
        parts = field.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[parts[-1]] = _swept_text(values)
    return out


def swept_values(sweep: SweepResults) -> dict[str, list[Any]]:
    """Each swept field's values: as the resolved ``sweep:`` block writes them (``8 experts``),
    else the distinct values of its sweep.csv column."""
    block = sweep.resolved.get("sweep") if isinstance(sweep.resolved, dict) else None
    written: dict[str, list[Any]] = {}
    if isinstance(block, dict):
        zips = block.get("zip")
        for group in [block.get("grid"), *(zips if isinstance(zips, list) else [zips])]:
            if isinstance(group, dict):
                written.update({str(k): list(v) for k, v in group.items() if isinstance(v, list)})
    values = {}
    for field in sweep.fields:
        if field in written:
            values[field] = written[field]
        elif field in sweep.table:
            values[field] = F.axis_order(field, sweep.table.unique(field))
    return values


def _with_swept(
    facts: list[tuple[str, Any]], swept: Mapping[str, list[Any]]
) -> list[tuple[str, Any]]:
    """``facts`` with each swept field's value replaced by ``swept: v1, v2, ... (n values)``
    (``FACT_FIELDS``: the fact ``topk`` is the field ``routing.topk``); swept fields without a
    fact are added at the end."""
    out, done = [], set()
    for key, value in facts:
        field = FACT_FIELDS.get(key, key)
        if field not in swept:
            out.append((key, value))
        else:
            out.append((key, _swept_text(swept[field])))
            done.add(field)
    out += [(f, _swept_text(v)) for f, v in swept.items() if f not in done]
    return out


FACT_FIELDS = {  # key facts found by key name, and the scenario field each one is
    "topk": "routing.topk",
    "layout": "trace.layout",
    "md_mode": "hardware.md_mode",
    "placement": "hardware.placement",
}


def _swept_text(values: Sequence[Any], shown: int = 8) -> str:
    names = [_policy_name(v) if isinstance(v, dict) else str(v) for v in values]
    if len(names) > shown:
        names = [*names[: shown - 1], "...", names[-1]]
    return f"swept: {', '.join(names)} ({len(values)} values)"


LINK_FACTS = ("bandwidth", "latency", "channels", "sharing")


def hardware_fact_paths(hardware: Any) -> list[str]:
    """The hardware facts a report shows: preset, cache budget, and every link's figures (the
    links are a name-keyed mapping: however many the scenario has)."""
    links = hardware.get("links") if isinstance(hardware, dict) else None
    names = list(links) if isinstance(links, dict) else []
    return [
        "preset",
        "hbm.capacity",
        *(f"links.{name}.{fact}" for name in names for fact in LINK_FACTS),
    ]


def _capacity_in_experts(capacity: Any, expert_bytes: Any) -> Any:
    """``16 experts (69.21 MB)``: scenarios give the cache in experts; the resolved file keeps
    only its exact size. Anything that does not divide into whole experts is shown as it is."""
    try:
        nbytes = parse_size(capacity, "hardware.hbm.capacity")
        per_expert = parse_size(expert_bytes, "model.expert_bytes")
    except UserError:
        return capacity
    experts = nbytes / per_expert if per_expert > 0 else 0.0
    if nbytes <= 0 or experts != round(experts):
        return capacity
    return f"{round(experts)} experts ({format_size(nbytes)})"


def _dotted(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict):
            return None
        data = data.get(part)
    return data


def _policy_name(spec: Any) -> str:
    if isinstance(spec, dict):
        return str(spec.get("label") or spec.get("name") or spec)
    return str(spec)


def provenance_warnings(trace: dict[str, Any] | None) -> list[str]:
    """The warnings a reader must not miss: a synthetic trace, synthesised layers, no record."""
    if trace is None:
        return ["No trace provenance was recorded: what these results were computed on is unknown."]
    found = []
    if find_key(trace, "synthetic") is True:
        found.append(
            "SYNTHETIC TRACE: the routing was generated, not captured from a model; latencies "
            "describe the generator's assumptions, not FLAME-MoE's routing."
        )
    layers = find_key(trace, "synthetic_layers")
    if layers:
        shown = ", ".join(str(x) for x in layers) if isinstance(layers, list) else str(layers)
        found.append(
            f"SYNTHESISED LAYERS: layers {shown} were made by extension (copied from other "
            "layers), not captured; results on them repeat the real layers' routing."
        )
    return found


def _provenance_section(trace: dict[str, Any] | None, source: str) -> str:
    parts = [H.warning(w) for w in provenance_warnings(trace)]
    if trace is not None:
        flat: list[tuple[str, Any]] = []
        for key, value in trace.items():
            if isinstance(value, dict):
                flat.extend((f"{key}.{k}", v) for k, v in value.items())
            else:
                flat.append((key, value))
        parts.append(H.key_values(flat))
    else:
        parts.append(H.note(f"No {source} in the results directory."))
    return H.section("Trace provenance", *parts)
