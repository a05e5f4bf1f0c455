"""The report's figures: one function per figure, each returning a matplotlib ``Figure``.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global
state, no display needed). Times are plotted in milliseconds, bytes in MB (1e6). Every policy
label keeps one colour in every figure (``policy_colours``); the baseline is always dark grey.
A figure whose input is missing raises ``NoData`` with a sentence the report shows instead.
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ParamSpec

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from sim.errors import UserError
from sim.report.load import (
    RunResults,
    SweepResults,
    Table,
    TimelineEvents,
    find_key,
    label_kinds,
    offline_labels,
    plain_value,
)
from sim.units import parse_bandwidth, parse_duration, parse_size

MS = 1e3  # seconds -> milliseconds
MB = 1e-6  # bytes -> MB
BASELINE_COLOUR = "#4d4d4d"
#: Qualitative palette (tab10 without its grey, then tab20's light shades) for non-baseline labels.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
)
KIND_COLOURS = {
    "fetch": "#1f77b4",
    "prefetch": "#17becf",
    "activation": "#ff7f0e",
    "compute": "#2ca02c",
    "non_expert": "#7f7f7f",
}
SEED_SERIES = (
    ("expert_activ", "Expert_Activ", "#4d4d4d"),
    ("expert_gpu", "Expert_GPU (GPU path)", "#1f77b4"),
    ("expert_md", "Expert_MD (MD path)", "#ff7f0e"),
)
LINKS = (("pcie", "PCIe", "bytes_pcie"), ("md_link", "MD link", "bytes_md"))
STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8,
    "figure.titlesize": 12,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

P = ParamSpec("P")


class NoData(Exception):
    """A figure cannot be drawn from these results; ``str()`` says why and how to get it."""


def _styled(build: Callable[P, Figure]) -> Callable[P, Figure]:
    """Build the figure under the report's rc style (rc values are read at artist creation)."""

    @functools.wraps(build)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with mpl.rc_context(STYLE):
            return build(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render(fig: Figure, fmt: str = "png", dpi: int = 110) -> bytes:
    """The figure as PNG/PDF/SVG bytes."""
    buf = io.BytesIO()
    with mpl.rc_context(STYLE):
        fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


# -- colours -----------------------------------------------------------------------------------
def policy_colours(labels: Iterable[str], baseline: str | None) -> dict[str, str]:
    """One colour per label: baseline dark grey, the others the palette in sorted-label order."""
    others = sorted({str(x) for x in labels} - {baseline})
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(others)}
    if baseline is not None:
        colours[baseline] = BASELINE_COLOUR
    return colours


def _figure_legend(
    fig: Figure, ax: Any, title: str | None, columns: int = 6, *, more: Sequence[Any] = ()
) -> None:
    """One legend for all panels, below them, so that it never hides data. ``more``: other
    panels whose entries ``ax`` may lack (each name listed once, first panel first)."""
    entries: dict[str, Any] = {}
    for panel in (ax, *more):
        for handle, name in zip(*panel.get_legend_handles_labels()):
            entries.setdefault(name, handle)
    handles, names = list(entries.values()), list(entries)
    fig.legend(
        handles, names, title=title, loc="outside lower center", ncols=min(len(names), columns)
    )


def _colour(colours: Mapping[str, str], label: str) -> str:
    return colours.get(label, "#000000")


def _labels(table: Table, topk: int | None) -> list[str]:
    rows = table if topk is None else table.where(topk=topk)
    return [str(x) for x in rows.unique("label")]


def _ordered(labels: Sequence[str], baseline: str | None) -> list[str]:
    """Baseline first, the rest sorted: the legend order of every figure."""
    rest = sorted(x for x in labels if x != baseline)
    return ([baseline] if baseline in labels else []) + rest


def _topk_title(topk: int | None) -> str:
    return "" if topk is None else f", top-{topk}"


# how each run kind is drawn: line style and the legend's word (online runs: plain)
KIND_STYLE = {
    "online": ("-", ""),
    "oracle": ("-.", " (oracle)"),
    "bound": ("--", " (offline bound)"),
}


def _kind_style(kinds: Mapping[str, str], label: str) -> tuple[str, str]:
    return KIND_STYLE.get(kinds.get(label, "online"), KIND_STYLE["online"])


def same_as(series: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Labels whose data equal an earlier label's (in ``series`` order): label -> that label.
    Their lines lie exactly on top of each other, so the legend must say so."""
    twins: dict[str, str] = {}
    seen: list[tuple[str, np.ndarray]] = []
    for label, values in series.items():
        values = np.asarray(values)
        match = next(
            (
                x
                for x, v in seen
                if v.shape == values.shape and np.array_equal(v, values, equal_nan=True)
            ),
            None,
        )
        if match is None:
            seen.append((label, values))
        else:
            twins[label] = match
    return twins


def _twin_text(twins: Mapping[str, str], label: str) -> str:
    return f" (= {twins[label]}: same line)" if label in twins else ""


# -- per-layer transfer time -------------------------------------------------------------------
def layer_axis(per_layer: Table) -> tuple[np.ndarray, list[str]]:
    """Distinct layer indices (sorted) and their tick text: the real layer id when known."""
    index, first = np.unique(per_layer["layer"], return_index=True)
    ids = per_layer["layer_id"][first] if "layer_id" in per_layer else index
    return index, [str(int(v)) for v in ids]


def link_time_by_layer(
    run: RunResults, label: str, topk: int | None
) -> tuple[np.ndarray, dict[str, np.ndarray], str, str]:
    """Per layer index, the mean per step of each link's transfer time (or bytes) for one label.

    Returns ``(layers, {link: values}, ylabel, source)``. From the timeline when present: the
    time the link's channels were busy with the layer's transfers (union over channels), in ms;
    else bytes / link bandwidth from the scenario (ms); else MB moved when no bandwidth is known.
    """
    per_layer = _per_layer(run, label, topk)
    layers, _ = layer_axis(per_layer)
    num_steps = max(len(np.unique(per_layer["step"])), 1)
    events = _timeline_rows(run.timeline, label, topk) if run.timeline is not None else None
    if events is not None and len(events):
        links = events.link
        values = {
            link: busy_by_layer(events.rows(links == link), layers) / num_steps * MS
            for link, _, _ in LINKS
        }
        return layers, values, "link busy time per step (ms)", "timeline.json"
    bandwidths = link_bandwidths(run.scenario)
    values = {}
    for link, _, column in LINKS:
        if column not in per_layer:
            raise NoData(f"per_layer.csv has no {column} column: cannot split transfers by link")
        mean_bytes = _mean_by(per_layer["layer"], per_layer[column], layers)
        values[link] = mean_bytes / bandwidths[link] * MS if bandwidths else mean_bytes * MB
    if bandwidths:
        return (
            layers,
            values,
            "transfer time per step (ms)",
            "bytes / link bandwidth, without latency or queueing; --timeline gives the engine's",
        )
    return layers, values, "MB moved per step", "per_layer.csv bytes, no link bandwidth known"


def busy_by_layer(events: TimelineEvents, layers: np.ndarray) -> np.ndarray:
    """For each layer index in ``layers``: summed over steps, the length of the union of the
    layer's event intervals in each step (channels of one link overlap in time)."""
    busy = np.zeros(len(layers))
    if not len(events):
        return busy
    _, group = np.unique(np.stack([events.step, events.layer]), axis=1, return_inverse=True)
    group = group.ravel()
    origin = events.start.min()
    span = float(events.end.max() - origin) + 1.0
    # Shift each (step, layer) group into its own time window so that one global sweep merges
    # overlapping intervals inside a group and never across groups.
    start = events.start - origin + group * 2 * span
    end = events.end - origin + group * 2 * span
    order = np.argsort(start, kind="stable")
    start, end, layer = start[order], end[order], events.layer[order]
    reach = np.maximum.accumulate(end)
    opens = start > np.concatenate([[-np.inf], reach[:-1]])
    block = np.cumsum(opens) - 1
    block_end = np.full(int(opens.sum()), -np.inf)
    np.maximum.at(block_end, block, end)
    lengths = block_end - start[opens]
    slot = np.searchsorted(layers, layer[opens])
    known = (slot < len(layers)) & (layers[np.minimum(slot, len(layers) - 1)] == layer[opens])
    return np.bincount(slot[known], weights=lengths[known], minlength=len(layers))


def link_bandwidths(scenario: Mapping[str, Any]) -> dict[str, float]:
    """PCIe and MD-link bandwidths (bytes/s) from a resolved scenario, or {} when absent."""
    hardware = scenario.get("hardware")
    links = find_key(hardware, "links") if isinstance(hardware, Mapping) else None
    if not isinstance(links, Mapping):
        return {}
    result = {}
    for link, _, _ in LINKS:
        cfg = links.get(link)
        value = cfg.get("bandwidth") if isinstance(cfg, Mapping) else None
        if value is None:
            return {}
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            result[link] = float(value)
        else:
            result[link] = parse_bandwidth(value, f"scenario.resolved.yaml hardware.links.{link}")
    return result


def _mean_by(keys: np.ndarray, values: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Mean of ``values`` for each key in ``order`` (NaN where a key has no rows)."""
    slot = np.searchsorted(order, keys)
    sums = np.bincount(slot, weights=values, minlength=len(order))
    counts = np.bincount(slot, minlength=len(order))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts


def _per_layer(run: RunResults, label: str, topk: int | None) -> Table:
    if run.per_layer is None:
        raise NoData("no per_layer.csv in the results directory")
    rows = run.per_layer.where(label=label)
    if topk is not None:
        rows = rows.where(topk=topk)
    if not len(rows):
        raise NoData(f"per_layer.csv has no rows for {label!r}{_topk_title(topk)}")
    return rows


def _timeline_rows(events: TimelineEvents, label: str, topk: int | None) -> TimelineEvents:
    mask = events.label == label
    if topk is not None and (events.topk >= 0).any():
        mask &= events.topk == topk
    return events.rows(mask)


def _grouped_bars(
    ax: Any,
    x: np.ndarray,
    series: Sequence[tuple[str, np.ndarray, str]],
    log_if_wide: bool = False,
) -> None:
    """Bars for each (name, heights, colour) side by side around each x. With ``log_if_wide``,
    when one policy dwarfs the rest (see ``_dwarfs_the_rest``), the y axis (whose label must
    already be set) turns logarithmic so the others stay readable."""
    width = 0.8 / len(series)
    for i, (name, heights, colour) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, color=colour, label=name)
    if not log_if_wide:
        return
    kept = _dwarfs_the_rest([np.asarray(h, dtype=float).ravel() for _, h, _ in series])
    if kept is not None:
        ax.set_yscale("log")
        ax.set_ylim(bottom=kept / 2)  # noise bars (below NOISE_SHARE) do not stretch the axis
        ax.set_ylabel(ax.get_ylabel() + ", log")


NOISE_SHARE = 0.01  # bars below this share of the tallest one are noise for the log rule
WIDE_RATIO = 10.0  # the tallest policy must exceed every other policy's tallest bar this much


def _dwarfs_the_rest(heights: Sequence[np.ndarray]) -> float | None:
    """The smallest bar worth showing when one policy's tallest bar is more than WIDE_RATIO x
    every other policy's tallest (a log axis then keeps the rest readable), else None. Bars
    below NOISE_SHARE of the overall maximum are ignored: a policy that moves next to nothing
    in some layer must not turn the axis logarithmic over noise."""
    finite = [h[np.isfinite(h)] for h in heights]
    top = max((float(h.max()) for h in finite if h.size), default=0.0)
    if top <= 0:
        return None
    kept = [h[h >= NOISE_SHARE * top] for h in finite]
    maxima = sorted((float(h.max()) for h in kept if h.size), reverse=True)
    if len(maxima) < 2 or maxima[0] <= WIDE_RATIO * maxima[1]:
        return None
    return float(min(h.min() for h in kept if h.size))


MAX_BARS = 96  # more (policy, layer) bars per panel than this: a heatmap instead
MAX_TICKS = 16  # at most this many labelled layer ticks on an axis


def thin_ticks(ax: Any, positions: np.ndarray, labels: Sequence[str], axis: str = "x") -> None:
    """Label at most MAX_TICKS evenly spaced ticks (always the first and the last): 24-64 layer
    ids side by side overlap."""
    step = max(1, math.ceil(len(positions) / MAX_TICKS))
    keep = list(range(0, len(positions), step))
    if keep and keep[-1] != len(positions) - 1:
        keep[-1] = len(positions) - 1
    chosen = ([positions[i] for i in keep], [labels[i] for i in keep])
    (ax.set_xticks if axis == "x" else ax.set_yticks)(*chosen)


@_styled
def transfer_time_by_layer(
    run: RunResults, colours: Mapping[str, str], topk: int | None = None
) -> Figure:
    """Per layer and policy, each link's transfer time, and the layer's transfer window (first
    transfer start to last arrival, as the engine measured it): grouped bars, or one heatmap
    per panel (policy x layer) when there are more than MAX_BARS bars per panel."""
    if run.per_layer is None:
        raise NoData("no per_layer.csv in the results directory")
    rows = run.per_layer if topk is None else run.per_layer.where(topk=topk)
    labels = _ordered(_labels(rows, None), run.baseline)
    layers, ticks = layer_axis(rows)
    data = {label: link_time_by_layer(run, label, topk) for label in labels}
    _, _, ylabel, source = data[labels[0]]
    panels = [(name, ylabel, {lb: data[lb][1][link] for lb in labels}) for link, name, _ in LINKS]
    if "transfer_window" in rows:
        window = {}
        for label in labels:
            mine = rows.where(label=label)
            window[label] = _mean_by(mine["layer"], mine["transfer_window"], layers) * MS
        panels.append(
            ("Layer transfer window (both links)", "transfer window per step (ms)", window)
        )
    x = np.arange(len(layers))
    if len(labels) * len(layers) > MAX_BARS:
        fig = _figure(5.2 * len(panels), 1.6 + 0.28 * len(labels))
        axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)[0]
        for ax, (name, unit, values) in zip(axes, panels):
            grid = np.array([values[lb] for lb in labels], dtype=np.float64)
            ax.grid(False)
            image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
            fig.colorbar(image, ax=ax, label=unit, shrink=0.9)
            ax.set_title(name)
            thin_ticks(ax, x, ticks)
            ax.set_xlabel("MoE layer")
        axes[0].set_yticks(range(len(labels)), labels)
        axes[0].set_ylabel("policy")
    else:
        fig = _figure(4.6 * len(panels), 4.4)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (name, unit, values) in zip(axes, panels):
            ax.set_ylabel(unit)
            bars = [(lb, values[lb], _colour(colours, lb)) for lb in labels]
            _grouped_bars(ax, x, bars, log_if_wide=True)
            ax.set_title(name)
            thin_ticks(ax, x, ticks)
            ax.set_xlabel("MoE layer")
        _figure_legend(fig, axes[0], "policy")
    fig.suptitle(f"Per-layer transfer time by policy{_topk_title(topk)}\n(links: {source})")
    return fig


# -- step latency ------------------------------------------------------------------------------
@_styled
def step_latency_cdf(
    run: RunResults, colours: Mapping[str, str], topk: int | None = None
) -> Figure:
    """Empirical CDF of step latency per policy, with p50 (circle) and p99 (triangle) marked."""
    if run.per_step is None:
        raise NoData("no per_step.csv in the results directory")
    labels = _ordered(_labels(run.per_step, topk), run.baseline)
    kinds = run.kinds()
    fig = _figure(7.5, 5.0 + 0.12 * max(0, len(labels) - 8))
    ax = fig.subplots()
    low, high = np.inf, 0.0
    latencies = {}
    for label in labels:
        rows = run.per_step.where(label=label)
        if topk is not None:
            rows = rows.where(topk=topk)
        latencies[label] = np.sort(rows["latency"]) * MS
    twins = same_as(latencies)
    for label, latency in latencies.items():
        share = np.arange(1, len(latency) + 1) / len(latency)
        p50, p99 = np.percentile(latency, [50, 99])
        colour = _colour(colours, label)
        style, word = _kind_style(kinds, label)
        low, high = min(low, latency[0]), max(high, latency[-1])
        ax.step(
            latency,
            share,
            where="post",
            color=colour,
            linewidth=1.6,
            linestyle=style,
            label=f"{label}{word}{_twin_text(twins, label)}: p50 {p50:.3g} ms, p99 {p99:.3g} ms",
        )
        ax.plot([p50], [0.5], "o", color=colour, markersize=6, gid=f"p50:{label}")
        ax.plot([p99], [0.99], "^", color=colour, markersize=7, gid=f"p99:{label}")
    for marker, name in (("o", "p50"), ("^", "p99")):
        ax.add_line(Line2D([], [], marker=marker, color="black", linestyle="", label=name))
    _figure_legend(fig, ax, "policy", columns=2)
    if low > 0 and high / low >= 10:  # policies an order of magnitude apart: log axis
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(_minor_log_label))
        ax.set_xlabel("step latency (ms, log scale)")
    else:
        ax.set_xlabel("step latency (ms)")
    ax.set_ylabel("share of steps ≤ latency")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Step-latency distribution by policy{_topk_title(topk)}")
    return fig


def _minor_log_label(value: float, _: object) -> str:
    """Label only 2x and 5x minor ticks of a log axis: all eight crowd each other."""
    return f"{value:g}" if f"{value:e}"[0] in "25" else ""


# -- link timeline (Gantt) ---------------------------------------------------------------------
def best_label(summary: Table, baseline: str | None, topk: int | None) -> str | None:
    """The best online policy: the label of kind ``online`` (never an oracle or a bound), not
    the baseline, with the lowest mean step latency."""
    rows = summary if topk is None else summary.where(topk=topk)
    offline = offline_labels(summary)
    mask = np.array([str(x) != baseline and str(x) not in offline for x in rows["label"]])
    rows = rows.rows(mask) if len(rows) else rows
    if not len(rows):
        return None
    return str(rows["label"][int(np.argmin(rows["mean_step"]))])


def _resource_order(resource: str) -> tuple[int, int, str]:
    name, _, rest = resource.partition("[")
    rank = {"gpu": 0, "pcie": 1, "md_link": 2, "md": 3, "host": 4}.get(name, 5)
    channel = int(rest.rstrip("]")) if rest.rstrip("]").isdigit() else 0
    return rank, channel, resource


def _bars_collection(rows: np.ndarray, start: np.ndarray, end: np.ndarray, kind: str) -> Any:
    """Rectangles ``[start, end] x [row - 0.35, row + 0.35]`` as one collection: a Gantt chart
    of per-expert events has thousands of bars, too many for one patch each."""
    lo, hi = rows - 0.35, rows + 0.35
    verts = np.stack([np.c_[start, lo], np.c_[start, hi], np.c_[end, hi], np.c_[end, lo]], axis=1)
    face = np.array(to_rgb(KIND_COLOURS.get(kind, "#bcbd22")))
    return PolyCollection(
        verts, facecolors=[face], edgecolors=[face * 0.55], linewidths=0.3, label=kind, gid=kind
    )


@_styled
def link_timeline(
    run: RunResults,
    colours: Mapping[str, str],
    topk: int | None = None,
    window: tuple[int, int] | None = None,
) -> Figure:
    """Gantt chart of link transfers and compute for steps ``[window[0], window[1])``: the
    baseline and the best online policy side by side, time from the window's first event."""
    if run.timeline is None:
        raise NoData(
            "no timeline.json in the results directory: rerun with `moesim run SCENARIO` (it "
            "records a short window by default; `--timeline STEP0:STEP1` chooses the steps), "
            "or point the report at a trace-event file with `moesim report DIR --timeline FILE`"
        )
    baseline = run.baseline
    labels = [x for x in (baseline, best_label(run.summary, baseline, topk)) if x is not None]
    labels = list(dict.fromkeys(labels))
    steps = np.unique(run.timeline.step[run.timeline.step >= 0])
    if window is None:
        window = (int(steps.min()), int(steps.min()) + 2) if len(steps) else (0, 1)
    lo, hi = window
    fig = _figure(6.0 * len(labels), 1.8 + 0.35 * max(4, len(np.unique(run.timeline.resource))))
    axes = fig.subplots(1, len(labels), squeeze=False, sharey=True)[0]
    resources = sorted({str(r) for r in run.timeline.resource}, key=_resource_order)
    row_of = {r: i for i, r in enumerate(resources)}
    drawn = 0
    for ax, label in zip(axes, labels):
        ev = _timeline_rows(run.timeline, label, topk)
        ev = ev.rows((ev.step >= lo) & (ev.step < hi))
        drawn += len(ev)
        origin = ev.start.min() if len(ev) else 0.0
        for kind in sorted(set(ev.kind), key=lambda k: (k not in KIND_COLOURS, k)):
            part = ev.rows(ev.kind == kind)
            rows = np.array([row_of[str(r)] for r in part.resource], dtype=np.float64)
            ax.add_collection(
                _bars_collection(rows, (part.start - origin) * MS, (part.end - origin) * MS, kind)
            )
        role = "baseline" if label == baseline else "best online policy"
        ax.set_title(f"{role}: {label}", color=_colour(colours, label), pad=14)
        ax.set_xlabel(f"time since step {lo} start (ms)")
        for step in np.unique(ev.step):  # the steps present, never range(lo, hi): a
            first = ev.start[ev.step == step]  # window may be wider than the run
            if len(first):
                ax.axvline((first.min() - origin) * MS, color="black", linewidth=0.6, linestyle=":")
                ax.annotate(
                    f"step {step}",
                    ((first.min() - origin) * MS, 1.0),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    va="bottom",
                )
    if not drawn:
        have = f"steps {steps.min()}..{steps.max()}" if len(steps) else "no steps"
        raise NoData(f"the timeline has no events in steps {lo}..{hi - 1} (it has {have})")
    for ax in axes:
        ax.autoscale_view()
    _figure_legend(fig, axes[0], "event", more=axes[1:])  # kinds in either panel
    axes[0].set_yticks(range(len(resources)), resources)
    axes[0].set_ylim(len(resources) - 0.5, -0.5)
    axes[0].set_ylabel("resource")
    steps_text = f"step {lo}" if hi == lo + 1 else f"steps {lo}..{hi - 1}"
    fig.suptitle(f"Link timeline, {steps_text}{_topk_title(topk)}")
    return fig


# -- link utilisation over time -----------------------------------------------------------------
@_styled
def link_usage_over_time(
    run: RunResults, colours: Mapping[str, str], topk: int | None = None
) -> Figure:
    """Each link's utilisation over the run (link_usage.csv: equal time bins), for the baseline
    and the best online policy side by side."""
    usage = run.link_usage
    if usage is None or not len(usage):
        raise NoData("no link_usage.csv in the results directory (a run before issue 21)")
    if topk is not None:
        usage = usage.where(topk=topk)
    baseline = run.baseline
    labels = [x for x in (baseline, best_label(run.summary, baseline, topk)) if x is not None]
    labels = list(dict.fromkeys(labels))
    fig = _figure(6.0 * len(labels), 4.2)
    axes = fig.subplots(1, len(labels), squeeze=False, sharey=True)[0]
    links = sorted({str(x) for x in usage["link"]}, key=_link_order)
    palette = _link_palette(links)
    for ax, label in zip(axes, labels):
        mine = usage.where(label=label)
        for link in links:
            rows = mine.where(link=link)
            if not len(rows):
                continue
            middle = (rows["t_start"].astype(float) + rows["t_end"].astype(float)) / 2
            ax.plot(
                middle, rows["utilisation"].astype(float) * 100, label=link, color=palette[link]
            )
        role = "baseline" if label == baseline else "best policy"
        ax.set_title(f"{role}: {label}", color=_colour(colours, label))
        ax.set_xlabel("simulated time (s)")
        ax.set_ylim(0, 105)
    axes[0].set_ylabel("utilisation (% of bandwidth, per time bin)")
    _figure_legend(fig, axes[0], "link", more=axes[1:])
    fig.suptitle(f"Link utilisation over time{_topk_title(topk)}")
    return fig


def _link_order(name: str) -> tuple[str, int]:
    """``pcie@gpu10`` after ``pcie@gpu9``."""
    base, _, gpu = name.partition("@gpu")
    return (base, int(gpu) if gpu.isdigit() else -1)


def _link_palette(links: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return {link: cmap(i % 20) for i, link in enumerate(links)}


# -- HBM hit rate ------------------------------------------------------------------------------
def step_hit_rate(per_layer: Table) -> tuple[np.ndarray, np.ndarray]:
    """Per step: HBM hits / active experts summed over layers (steps in sorted order)."""
    steps, inverse = np.unique(per_layer["step"], return_inverse=True)
    hits = np.bincount(inverse, weights=per_layer["hits"], minlength=len(steps))
    active = np.bincount(inverse, weights=per_layer["active"], minlength=len(steps))
    with np.errstate(invalid="ignore", divide="ignore"):
        return steps, np.where(active > 0, hits / active, np.nan)


@_styled
def hit_rate_over_steps(
    run: RunResults, colours: Mapping[str, str], topk: int | None = None
) -> Figure:
    """HBM hit rate per step for every policy that hits HBM; oracles dash-dotted, offline
    bounds dashed; lines that coincide are said so in the legend."""
    if run.per_layer is None or "hits" not in run.per_layer:
        raise NoData("no per_layer.csv with a hits column in the results directory")
    kinds = run.kinds()
    bounds = {x for x, kind in kinds.items() if kind == "bound"}
    rows = run.per_layer if topk is None else run.per_layer.where(topk=topk)
    labels = [
        x
        for x in _ordered(_labels(rows, None), run.baseline)
        if x in bounds or rows.where(label=x)["hits"].sum() > 0
    ]
    if not any(x not in bounds for x in labels):
        raise NoData("no caching policy in this run (no policy ever hit HBM)")
    fig = _figure(7.5, 4.2 + 0.12 * max(0, len(labels) - 8))
    ax = fig.subplots()
    curves = {label: step_hit_rate(rows.where(label=label)) for label in labels}
    twins = same_as({label: rate for label, (_, rate) in curves.items()})
    for label, (steps, rate) in curves.items():
        style, word = _kind_style(kinds, label)
        ax.plot(
            steps,
            rate * 100,
            color=_colour(colours, label),
            linewidth=1.2,
            linestyle=style,
            label=f"{label}{word}{_twin_text(twins, label)}",
        )
    ax.set_xlabel("decode step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("HBM hits / active experts (%)")
    ax.set_ylim(0, 102)
    _figure_legend(fig, ax, "policy", columns=4)  # below the axes: never over a curve
    ax.set_title(f"HBM hit rate over steps{_topk_title(topk)}")
    return fig


# -- the seed's view ---------------------------------------------------------------------------
def gating_from_run(run: RunResults) -> Table:
    """The seed's per-layer counts from a run: the seed-split policy's (else the baseline's)
    active experts, GPU path (HBM hits + PCIe fetches) and MD path (fetch + near-data)."""
    if run.per_layer is None:
        raise NoData("no per_layer.csv in the results directory")
    pl = run.per_layer
    rows = pl.where(policy="seed-split")
    if not len(rows) and run.baseline is not None:
        rows = pl.where(label=run.baseline)
    if not len(rows):
        raise NoData("per_layer.csv has no seed-split (or baseline) rows")
    first = str(rows["label"][0])
    rows = rows.where(label=first)
    need = ("hits", "pcie", "md_fetch", "md_near")
    missing = [c for c in need if c not in rows]
    if missing:
        raise NoData(f"per_layer.csv lacks {missing}: cannot split experts by path")
    gpu = rows["hits"] + rows["pcie"]
    if "late_prefetches" in rows:  # served on the GPU too (arriving over a link)
        gpu = gpu + rows["late_prefetches"]
    return Table(
        {
            "position": rows["step"],
            "layer": rows["layer_id"] if "layer_id" in rows else rows["layer"],
            "topk": rows["topk"],
            "expert_activ": rows["active"],
            "expert_gpu": gpu,
            "expert_md": rows["md_fetch"] + rows["md_near"],
            "h": gpu,
        },
        f"{rows.source} (label {first})",
    )


@_styled
def seed_view(gating: Table, source: str) -> Figure:
    """Mean Expert_Activ, Expert_GPU and Expert_MD per layer (bars), one panel per top-k."""
    topks = sorted(int(k) for k in gating.unique("topk"))
    if not topks:
        raise NoData(f"{source} has no rows")
    fig = _figure(max(6.5, 3.2 * len(topks) + 1.5), 4.0)
    axes = fig.subplots(1, len(topks), squeeze=False, sharey=True)[0]
    for ax, k in zip(axes, topks):
        rows = gating.where(topk=k)
        layers = np.unique(rows["layer"])
        x = np.arange(len(layers))
        means = [(n, _mean_by(rows["layer"], rows[c], layers), col) for c, n, col in SEED_SERIES]
        _grouped_bars(ax, x, means)
        positions = len(np.unique(rows["position"]))
        ax.set_title(f"top-{k} ({positions} positions)")
        thin_ticks(ax, x, [str(int(v)) for v in layers])
        ax.set_xlabel("MoE layer")
    axes[0].set_ylabel("experts per step (mean over positions)")
    _figure_legend(fig, axes[0], None)
    fig.suptitle(f"The seed's view: active experts and their split by path\n(source: {source})")
    return fig


# -- sweeps ------------------------------------------------------------------------------------
_FIELD_UNITS = (("bandwidth", 1e-9, "GB/s"), ("capacity", 1e-9, "GB"), ("latency", 1e6, "µs"))
_QUANTITIES = (
    (parse_bandwidth, 1e-9, "GB/s"),
    (parse_size, 1e-9, "GB"),
    (parse_duration, 1e6, "µs"),
)


def field_axis(field: str, values: Sequence[Any]) -> tuple[np.ndarray | None, str]:
    """Numeric axis values in a readable unit and the axis label, or ``None`` for a categorical
    field. Swept values are SI numbers or written with units (``64 GB/s``) as in the YAML."""
    array = np.asarray(values)
    if array.dtype.kind in "fiu":
        for suffix, scale, unit in _FIELD_UNITS:
            if field.endswith(suffix):
                return array * scale, f"{field} ({unit})"
        return array.astype(np.float64), field
    for parse, scale, unit in _QUANTITIES:
        try:
            return np.array([parse(v, field) * scale for v in values]), f"{field} ({unit})"
        except UserError:
            continue
    return None, field


def axis_order(field: str, values: Iterable[Any]) -> list[Any]:
    """Distinct swept values in axis order: by quantity when they are numbers or quantities,
    else by their leading number (``16 experts`` before ``64 experts``), then as text."""
    distinct = list(dict.fromkeys(values))
    numeric, _ = field_axis(field, distinct)
    if numeric is not None:
        return [distinct[i] for i in np.argsort(numeric, kind="stable")]
    return sorted(distinct, key=_natural_key)


def _natural_key(value: Any) -> tuple[float, str]:
    match = re.match(r"\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)", str(value))
    return (float(match.group(1)) if match else math.inf, str(value))


def _sweep_rows(sweep: SweepResults, topk: int | None) -> Table:
    rows = sweep.table if topk is None else sweep.table.where(topk=topk)
    if not len(rows):
        raise NoData(f"sweep.csv has no rows{_topk_title(topk)}")
    return rows


def grouped_speedup(
    rows: Table, by: Sequence[str]
) -> dict[tuple[Any, ...], tuple[float, float, float, int]]:
    """Mean, min and max speedup (NaN cells ignored) and row count for each distinct
    combination of the ``by`` columns."""
    uniques, codes = [], []
    for name in by:
        values, inverse = np.unique(rows[name], return_inverse=True)
        uniques.append(values)
        codes.append(inverse.ravel())
    dims = tuple(len(u) for u in uniques)
    keys, group = np.unique(np.ravel_multi_index(codes, dims), return_inverse=True)
    group = group.ravel()
    speedup = np.asarray(rows["speedup"], dtype=np.float64)
    ok = ~np.isnan(speedup)
    counts = np.bincount(group[ok], minlength=len(keys))
    rows_per_key = np.bincount(group, minlength=len(keys))
    sums = np.bincount(group[ok], weights=speedup[ok], minlength=len(keys))
    low, high = np.full(len(keys), np.inf), np.full(len(keys), -np.inf)
    np.minimum.at(low, group[ok], speedup[ok])
    np.maximum.at(high, group[ok], speedup[ok])
    result = {}
    for g, flat in enumerate(keys):
        key = tuple(plain_value(u[i]) for u, i in zip(uniques, np.unravel_index(flat, dims)))
        mean, lo, hi = (sums[g] / counts[g], low[g], high[g]) if counts[g] else (np.nan,) * 3
        result[key] = (mean, lo, hi, int(rows_per_key[g]))
    return result


@_styled
def speedup_vs_field(
    sweep: SweepResults, field: str, colours: Mapping[str, str], topk: int | None = None
) -> Figure:
    """Speedup over the baseline against one swept field, one line per policy (mean over the
    other swept fields and repeats; the shaded band spans their min..max)."""
    rows = _sweep_rows(sweep, topk)
    if field not in rows:
        raise UserError(f"{sweep.table.source}: expected a swept column {field!r}, got none")
    stats = grouped_speedup(rows, ("label", field))
    kinds = label_kinds(rows)
    xs = axis_order(field, (x for _, x in stats))
    numeric, xlabel = field_axis(field, xs)
    position = dict(zip(xs, numeric if numeric is not None else np.arange(len(xs))))
    fig = _figure(7.5, 4.5)
    ax = fig.subplots()
    lines = {}
    for label in _ordered(sorted({str(lb) for lb, _ in stats}), sweep.baseline):
        mine = [x for x in xs if (label, x) in stats]
        lines[label] = (mine, *(np.array([stats[label, x][i] for x in mine]) for i in range(3)))
    twins = same_as({lb: np.concatenate([[len(v[0])], v[1]]) for lb, v in lines.items()})
    for label, (mine, mean, low, high) in lines.items():
        where = np.array([position[x] for x in mine], dtype=np.float64)
        colour = _colour(colours, label)
        style, word = _kind_style(kinds, label)
        ax.plot(
            where,
            mean,
            marker="o",
            color=colour,
            linestyle=style,
            label=f"{label}{word}{_twin_text(twins, label)}",
        )
        if np.any(high > low):
            ax.fill_between(where, low, high, color=colour, alpha=0.15, linewidth=0)
    if numeric is None:
        ax.set_xticks(range(len(xs)), [str(x) for x in xs])
    elif numeric.min() > 0 and numeric.max() / numeric.min() >= 8:
        ax.set_xscale("log", base=2)
        ax.set_xticks(numeric, [f"{v:.4g}" for v in numeric])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.axhline(1.0, color=BASELINE_COLOUR, linewidth=0.8, linestyle=":")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("speedup over baseline (×, mean step)")
    ax.legend(title="policy", loc="best")
    others = [f for f in sweep.axes if f != field]
    note = f"\n(mean over {', '.join(others)}; band: min..max)" if others else ""
    ax.set_title(f"Speedup vs {field}{_topk_title(topk)}{note}")
    return fig


@_styled
def gpu_scaling(sweep: SweepResults, colours: Mapping[str, str], topk: int | None = None) -> Figure:
    """A sweep over ``hardware.num_gpus``: mean step latency and total tokens/s against the
    GPU count, one line per policy (mean over the other swept fields)."""
    field = "hardware.num_gpus"
    rows = _sweep_rows(sweep, topk)
    if field not in rows or "mean_step" not in rows:
        raise NoData(f"sweep.csv has no {field} and mean_step columns")
    fig = _figure(11.0, 4.5)
    ax_step, ax_rate = fig.subplots(1, 2)
    counts = np.array(sorted({int(float(x)) for x in rows[field]}))
    offline = offline_labels(rows)
    for label in _ordered(sorted({str(x) for x in rows["label"]}), sweep.baseline):
        mine = rows.where(label=label)
        gpus = mine[field].astype(float).astype(int)
        step = np.array([mine["mean_step"][gpus == n].astype(float).mean() for n in counts])
        style = {"color": _colour(colours, label), "marker": "o"}
        style["linestyle"] = "--" if label in offline else "-"
        ax_step.plot(counts, step * MS, label=label, **style)
        if "tokens_per_s" in mine:
            rate = [mine["tokens_per_s"][gpus == n].astype(float).mean() for n in counts]
            ax_rate.plot(counts, rate, label=label, **style)
    for ax in (ax_step, ax_rate):
        ax.set_xlabel("GPUs sharing the pool (hardware.num_gpus)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.xaxis.set_minor_locator(NullLocator())
    ax_step.set_ylabel("mean step latency (ms; slowest GPU per step)")
    ax_rate.set_ylabel("tokens/s (all GPUs)")
    others = [f for f in sweep.axes if f not in (field, "policies")]
    note = f"\n(mean over {', '.join(others)})" if others else ""
    _figure_legend(fig, ax_step, "policy", more=[ax_rate])
    fig.suptitle(f"GPU-count scaling{_topk_title(topk)}{note}")
    return fig


def speedup_grid(
    rows: Table, x_field: str, y_field: str, policy: str | None, exclude: set[str]
) -> tuple[list[Any], list[Any], np.ndarray, list[list[str]]]:
    """Mean speedup per (x, y) cell: of ``policy``, or of the best label per cell (labels in
    ``exclude`` never win) when ``policy`` is None. Returns xs, ys, values[y, x], winners."""
    stats = grouped_speedup(rows, ("label", x_field, y_field))
    xs = axis_order(x_field, (x for _, x, _ in stats))
    ys = axis_order(y_field, (y for _, _, y in stats))
    values = np.full((len(ys), len(xs)), np.nan)
    winners = [["" for _ in xs] for _ in ys]
    col, row = {x: j for j, x in enumerate(xs)}, {y: i for i, y in enumerate(ys)}
    for (label, x, y), (mean, *_) in sorted(stats.items(), key=lambda kv: str(kv[0][0])):
        if (label != policy if policy is not None else str(label) in exclude) or np.isnan(mean):
            continue
        i, j = row[y], col[x]
        if np.isnan(values[i, j]) or mean > values[i, j]:
            values[i, j], winners[i][j] = mean, str(label)
    return xs, ys, values, winners


@_styled
def speedup_heatmap(
    sweep: SweepResults,
    x_field: str,
    y_field: str,
    topk: int | None = None,
    policy: str | None = None,
) -> Figure:
    """Heatmap of speedup over two swept fields: one policy's, or (default) the best online
    policy's in each cell, its name written in the cell."""
    rows = _sweep_rows(sweep, topk)
    for field in (x_field, y_field):
        if field not in rows:
            raise UserError(f"{sweep.table.source}: expected a swept column {field!r}, got none")
    exclude = ({sweep.baseline} if sweep.baseline else set()) | offline_labels(rows)
    xs, ys, values, winners = speedup_grid(rows, x_field, y_field, policy, exclude)
    if not np.isfinite(values).any():
        raise NoData(f"no speedup values for {policy or 'any online policy'} in sweep.csv")
    fig = _figure(max(6.0, 1.3 * len(xs) + 2.5), max(3.5, 0.8 * len(ys) + 1.8))
    ax = fig.subplots()
    ax.grid(False)
    image = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax, label="speedup over baseline (×)")
    x_num, x_label = field_axis(x_field, xs)
    y_num, y_label = field_axis(y_field, ys)
    ax.set_xticks(range(len(xs)), _tick_text(xs, x_num))
    ax.set_yticks(range(len(ys)), _tick_text(ys, y_num))
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2
    for i in range(len(ys)):
        for j in range(len(xs)):
            if np.isfinite(values[i, j]):
                text = f"{values[i, j]:.2f}×" + ("" if policy else f"\n{winners[i][j]}")
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if values[i, j] < middle else "black",
                )
    who = policy if policy else "the best online policy per cell"
    ax.set_title(f"Speedup of {who}{_topk_title(topk)}")
    return fig


def _tick_text(values: list[Any], numeric: np.ndarray | None) -> list[str]:
    if numeric is None:
        return [str(v) for v in values]
    return [f"{v:.4g}" for v in numeric]
