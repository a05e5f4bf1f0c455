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

from sim import atomic
from sim.errors import UserError
from sim.report import figures as F
from sim.report import html as H
from sim.report.load import (
    Results,
    RunResults,
    SearchResults,
    StatsResults,
    SweepResults,
    Table,
    bound_labels,
    find_key,
    load_results,
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
    if "png" in chosen:
        for fig, png in zip(content.figures, pngs):
            atomic.write_bytes(out / "figures" / f"{fig.name}.png", png)
        written["png"] = out / "figures"
    if "pdf" in chosen:
        written["pdf"] = atomic.write_bytes(out / "report.pdf", _pdf(content.figures))
    if "html" in chosen:
        blocks = [H.FigureBlock(f.title, f.caption, png) for f, png in zip(content.figures, pngs)]
        html_text = render_html(content, blocks).encode("utf-8")
        written["html"] = atomic.write_bytes(out / "report.html", html_text)
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
            "policy (lowest mean step latency) over the chosen steps.",
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
            "Per decode step, experts found in HBM over active experts, for policies that "
            "cache; offline bounds dashed.",
            lambda k=k: F.hit_rate_over_steps(run, colours, k),
        )
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
    )
    subtitle = f"Results: {run.path}"
    return ReportContent(
        f"moesim report: {name}", subtitle, sections, tuple(out.figures), tuple(out.skipped)
    )


SUMMARY_COLUMNS = (
    H.Column("label", "label"),
    H.Column("policy", "policy"),
    H.Column("topk", "top-k"),
    H.Column("mean_step", "mean step (ms)", 1e3),
    H.Column("p50_step", "p50 step (ms)", 1e3),
    H.Column("p99_step", "p99 step (ms)", 1e3),
    H.Column("total_time", "total (ms)", 1e3),
    H.Column("transfer_time", "transfer (ms)", 1e3),
    H.Column("stall", "stall (ms)", 1e3),
    H.Column("bytes_pcie", "PCIe (MB)", 1e-6),
    H.Column("bytes_md", "MD link (MB)", 1e-6),
    H.Column("hit_rate", "hit rate (%)", 100.0, "{:.1f}"),
    H.Column("speedup", "speedup (×)", 1.0, "{:.3f}"),
    H.Column("gap_closed", "gap closed (%)", 100.0, "{:.1f}"),
    H.Column("is_bound", "bound"),
)


def _summary_table(run: RunResults) -> str:
    summary = run.summary
    bounds, baseline = run.bound_labels(), run.baseline
    best = {
        k: F.best_label(summary, baseline, int(k)) for k in (int(x) for x in summary.unique("topk"))
    }
    classes = []
    for label, k in zip(summary["label"], summary["topk"]):
        label = str(label)
        if label == baseline:
            classes.append("baseline")
        elif label in bounds:
            classes.append("bound")
        else:
            classes.append("best" if best.get(int(k)) == label else "")
    return H.data_table(summary, SUMMARY_COLUMNS, classes)


def _comparison_note(run: RunResults) -> str:
    notes_file = run.path / "notes.txt"
    notes = notes_file.read_text(encoding="utf-8").splitlines() if notes_file.is_file() else []
    return H.note(
        f"One row per (top-k, policy) from summary.csv. Baseline: {run.baseline or 'unknown'} "
        "(bold); best online policy per top-k shaded green; offline bounds in italics. "
        "Speedup = baseline mean step / this mean step."
    ) + "".join(H.note(line) for line in notes if line.strip())


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
    if len(sweep.axes) >= 2:
        x_field, y_field = sweep.axes[:2]
        for k in [None] if len(topks) == 1 else topks:
            sfx, top = ("", "") if k is None else (f"_top{k}", f" (top-{k})")
            out.add(
                f"speedup_heatmap{sfx}",
                f"Speedup over {x_field} × {y_field}{top}",
                "Speedup over the baseline of the best online policy in each cell (its "
                "label written in the cell), mean over any other swept fields.",
                lambda k=k: F.speedup_heatmap(sweep, x_field, y_field, k),
            )
    elif not sweep.axes:
        out.skipped.append("Sweep figures: sweep.csv names no swept field (no dotted column).")
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
                "rows, and in how many sweep cells it was the fastest online policy."
            ),
            H.data_table(sweep_summary(sweep), SWEEP_SUMMARY_COLUMNS),
        ),
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
    H.Column("rows", "rows"),
    H.Column("mean", "mean speedup (×)", 1.0, "{:.3f}"),
    H.Column("min", "min (×)", 1.0, "{:.3f}"),
    H.Column("max", "max (×)", 1.0, "{:.3f}"),
    H.Column("wins", "fastest online in cells"),
)


def sweep_summary(sweep: SweepResults) -> Table:
    """Per (top-k, label): rows, mean/min/max speedup, and wins: in how many sweep cells (one
    value of every swept field but ``policies``, one seed, one top-k) it was the fastest online
    policy."""
    table = sweep.table
    stats = F.grouped_speedup(table, ("topk", "label"))
    keys = sorted(stats, key=lambda kl: (kl[0], kl[1] != sweep.baseline, str(kl[1])))
    excluded = {sweep.baseline} | {str(x) for x in bound_labels(table)}
    cell_columns = [c for c in (*sweep.axes, "seed", "topk") if c in table]
    best: dict[tuple[Any, ...], tuple[float, str]] = {}
    for i, (label, speedup) in enumerate(zip(table["label"], table["speedup"])):
        if str(label) not in excluded and np.isfinite(speedup):
            cell = tuple(plain_value(table[c][i]) for c in cell_columns)
            if cell not in best or speedup > best[cell][0]:
                best[cell] = (float(speedup), str(label))
    topk_at = cell_columns.index("topk")
    wins = Counter((cell[topk_at], label) for cell, (_, label) in best.items())
    return Table(
        {
            "topk": np.array([k for k, _ in keys], dtype=np.float64),
            "label": np.array([str(lb) for _, lb in keys], dtype=object),
            "rows": np.array([stats[key][3] for key in keys], dtype=np.float64),
            "mean": np.array([stats[key][0] for key in keys]),
            "min": np.array([stats[key][1] for key in keys]),
            "max": np.array([stats[key][2] for key in keys]),
            "wins": np.array([wins[k, str(lb)] for k, lb in keys], dtype=np.float64),
        },
        "sweep summary",
    )


def _same_as_topk(table: Table, field: str) -> bool:
    column = table[field]
    return column.dtype.kind == "f" and bool(np.array_equal(column, table["topk"]))


def _stem(field: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in field).strip("_")


def _maybe_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
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
    if swept:
        facts = _with_swept(facts, swept)
    return H.section(
        "Scenario", H.key_values(facts), H.yaml_block(scenario, f"Full {source} (every default)")
    )


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
