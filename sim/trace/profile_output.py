"""Writing a :class:`TraceProfile`: JSON, CSV tables, PNG figures and a printed summary table.

Every file goes through :mod:`sim.atomic`, figures included (rendered to memory first), so an
interrupted run never leaves a partial result.
"""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table
from rich.text import Text

from sim.atomic import staged_dir, write_bytes, write_csv, write_json
from sim.trace.profile import TraceProfile

# Cache sizes shown in the summary table, as fractions of the expert count.
SUMMARY_CACHE_FRACTIONS = (0.25, 0.5, 0.75)


def _num(x: float) -> float | None:
    """JSON-safe float (NaN -> null)."""
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def summary_cache_sizes(num_experts: int) -> list[int]:
    return sorted({max(1, round(f * num_experts)) for f in SUMMARY_CACHE_FRACTIONS})


def profile_to_dict(p: TraceProfile) -> dict[str, Any]:
    """Everything in the profile as plain JSON-ready values."""
    layers = []
    for lp in p.layers:
        layers.append(
            {
                "layer": lp.layer,
                "entropy_bits": lp.entropy_bits,
                "entropy_max_bits": math.log2(p.num_experts),
                "gini": lp.gini,
                "max_over_mean": lp.max_over_mean,
                "overlap_by_lag": {str(k): v for k, v in lp.overlap_by_lag.items()},
                "cross_seq_overlap": _num(lp.cross_seq_overlap),
                "reuse_gap_mean": _num(lp.reuse_gap_mean),
                "reuse_gap1_share": lp.reuse_gap1_share,
                "active_mean": lp.active_mean,
                "active_min": lp.active_min,
                "active_max": lp.active_max,
                "working_set": {str(k): v for k, v in lp.working_set.items()},
                "requests": lp.requests,
                "lru_misses": lp.lru_misses.tolist(),
                "opt_misses": lp.opt_misses.tolist(),
                "static_misses": lp.static_misses.tolist(),
                "same_token_shared": _num(lp.same_token_shared),
                "diff_token_shared": _num(lp.diff_token_shared),
                "same_token_pairs": lp.same_token_pairs,
                "token_counts": lp.token_counts.tolist(),
            }
        )
    coact = [
        {
            "layer_from": c.layer_from,
            "layer_to": c.layer_to,
            "mutual_info_bits": c.mutual_info_bits,
            "shuffled_mutual_info_bits": c.shuffled_mutual_info_bits,
            "excess_mutual_info_bits": c.excess_mutual_info_bits,
            "max_lift_mean": _num(c.max_lift_mean),
        }
        for c in p.coactivation
    ]
    return {
        "trace": p.description,
        "k": p.k,
        "num_experts": p.num_experts,
        "num_steps": p.num_steps,
        "num_seqs": p.num_seqs,
        "layers": layers,
        "coactivation": coact,
    }


def summary_table(p: TraceProfile) -> Table:
    """One row per layer: the numbers that decide whether caching can help."""
    sizes = summary_cache_sizes(p.num_experts)
    # A Text title: the description's "[megatron layout]" must not be read as rich markup.
    table = Table(title=Text(f"profile (top-{p.k}): {p.description}"), title_justify="left")
    for name in (
        "layer",
        "H bits",
        "gini",
        "max/mean",
        "active",
        "ov t+1",
        "xseq",
        "gap",
        "same tok",
        "diff tok",
        "MI>next",
    ):
        table.add_column(name, justify="right")
    for c in sizes:
        table.add_column(f"miss@{c} LRU/OPT", justify="right")
    coact = {c.layer_from: c for c in p.coactivation}
    for lp in p.layers:
        nxt = coact.get(lp.layer)
        cells = [
            str(lp.layer),
            f"{lp.entropy_bits:.3f}",
            f"{lp.gini:.3f}",
            f"{lp.max_over_mean:.2f}",
            f"{lp.active_mean:.1f}",
            _fmt(lp.overlap_by_lag.get(1, float("nan")), 2),
            _fmt(lp.cross_seq_overlap, 2),
            _fmt(lp.reuse_gap_mean, 2),
            _fmt(lp.same_token_shared, 2),
            _fmt(lp.diff_token_shared, 2),
            f"{nxt.excess_mutual_info_bits:.3f}" if nxt else "-",
        ]
        for c in sizes:
            r = max(lp.requests, 1)
            cells.append(f"{lp.lru_misses[c] / r:.3f}/{lp.opt_misses[c] / r:.3f}")
        table.add_row(*cells)
    return table


def column_legend(p: TraceProfile) -> list[str]:
    """What each column of `summary_table` means (printed under it; docs/trace-profile.md)."""
    return [
        "columns (per MoE layer; docs/trace-profile.md):",
        f"  H bits    entropy of the tokens' expert popularity (uniform over {p.num_experts} "
        f"experts = {math.log2(max(p.num_experts, 1)):.3g} bits)",
        "  gini      Gini coefficient of popularity (0 = every expert equally used)",
        "  max/mean  tokens of the most used expert / the mean expert's",
        "  active    distinct experts the batch routes to per step (the seed's Expert_Activ)",
        f"  ov t+1    experts one sequence shares between consecutive steps (of k = {p.k})",
        "  xseq      experts two different sequences share at the same step (chance baseline)",
        "  gap       mean steps between two steps where an expert is in the batch's active set",
        "  same tok  experts shared by two rows of a sequence with the same token id",
        "  diff tok  ... with different token ids",
        "  MI>next   mutual information (bits) of a token's experts here and at the next layer, "
        "above shuffled tokens",
        "  miss@C LRU/OPT  miss ratio with C experts cached per layer, LRU / optimal (Belady)",
    ]


def _fmt(x: float, digits: int) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def write_profile(p: TraceProfile, out: Path, figures: bool = True) -> list[Path]:
    """profile.json, CSV tables and (optionally) PNG figures under ``out``, written aside
    and moved in together (`sim.atomic.staged_dir`); returns their final paths."""
    out = Path(out)
    with staged_dir(out, "merge") as staging:
        written = _write_profile(p, staging, figures)
    return [out / path.relative_to(staging) for path in written]


def _write_profile(p: TraceProfile, out: Path, figures: bool) -> list[Path]:
    written = [write_json(out / "profile.json", profile_to_dict(p))]
    layer_rows = []
    for lp in p.layers:
        layer_rows.append(
            [
                lp.layer,
                round(lp.entropy_bits, 6),
                round(lp.gini, 6),
                round(lp.max_over_mean, 6),
                round(lp.active_mean, 4),
                lp.active_min,
                lp.active_max,
                round(lp.overlap_by_lag.get(1, float("nan")), 6),
                round(lp.cross_seq_overlap, 6),
                round(lp.reuse_gap_mean, 6),
                round(lp.same_token_shared, 6),
                round(lp.diff_token_shared, 6),
                lp.same_token_pairs,
                lp.requests,
            ]
        )
    written.append(
        write_csv(
            out / "layers.csv",
            [
                "layer",
                "entropy_bits",
                "gini",
                "max_over_mean",
                "active_mean",
                "active_min",
                "active_max",
                "overlap_lag1",
                "cross_seq_overlap",
                "reuse_gap_mean",
                "same_token_shared",
                "diff_token_shared",
                "same_token_pairs",
                "requests",
            ],
            layer_rows,
        )
    )
    written.append(
        write_csv(
            out / "popularity.csv",
            ["layer", "expert", "tokens"],
            [[lp.layer, e, int(c)] for lp in p.layers for e, c in enumerate(lp.token_counts)],
        )
    )
    written.append(
        write_csv(
            out / "reuse_gaps.csv",
            ["layer", "gap_steps", "count"],
            [
                [lp.layer, g, int(c)]
                for lp in p.layers
                for g, c in enumerate(lp.reuse_gaps)
                if c > 0
            ],
        )
    )
    written.append(
        write_csv(
            out / "overlap_by_lag.csv",
            ["layer", "lag", "shared_experts"],
            [[lp.layer, lag, v] for lp in p.layers for lag, v in lp.overlap_by_lag.items()],
        )
    )
    written.append(
        write_csv(
            out / "working_set.csv",
            ["layer", "window_steps", "mean_distinct_experts"],
            [[lp.layer, w, v] for lp in p.layers for w, v in lp.working_set.items()],
        )
    )
    written.append(
        write_csv(
            out / "miss_ratio.csv",
            ["layer", "cache_experts", "requests", "lru_misses", "opt_misses", "static_misses"],
            [
                [
                    lp.layer,
                    c,
                    lp.requests,
                    int(lp.lru_misses[c]),
                    int(lp.opt_misses[c]),
                    int(lp.static_misses[c]),
                ]
                for lp in p.layers
                for c in range(p.num_experts + 1)
            ],
        )
    )
    written.append(
        write_csv(
            out / "coactivation.csv",
            ["layer_from", "layer_to", "mutual_info_bits", "shuffled_mi_bits", "max_lift_mean"],
            [
                [
                    c.layer_from,
                    c.layer_to,
                    c.mutual_info_bits,
                    c.shuffled_mutual_info_bits,
                    c.max_lift_mean,
                ]
                for c in p.coactivation
            ],
        )
    )
    if figures:
        written.extend(write_figures(p, out))
    return written


MAX_LEGEND_LAYERS = 12  # more layers: colour bars and heatmaps instead of legends and panels


def write_figures(p: TraceProfile, out: Path) -> list[Path]:
    """PNG figures: popularity, reuse gaps, working set, miss-ratio curves, co-activation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    cmap = plt.get_cmap("viridis")
    colours = [cmap(i / max(len(p.layers) - 1, 1)) for i in range(len(p.layers))]
    many = len(p.layers) > MAX_LEGEND_LAYERS  # then colour = layer, read off a colour bar

    def layer_key(fig: Any, ax: Any) -> None:
        """A legend of the layers, or for many layers a colour bar of their ids."""
        if not many:
            ax.legend(fontsize=7, ncol=2)
            return
        ids = [lp.layer for lp in p.layers]
        norm = matplotlib.colors.Normalize(vmin=min(ids), vmax=max(ids))
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="layer")

    fig, ax = plt.subplots(figsize=(7, 4))
    for lp, col in zip(p.layers, colours):
        share = np.sort(lp.token_counts)[::-1] / max(lp.token_counts.sum(), 1)
        ax.plot(np.arange(1, share.size + 1), share, color=col, label=f"layer {lp.layer}")
    ax.axhline(1 / p.num_experts, color="grey", ls=":", label="uniform")
    ax.set(xlabel="expert rank", ylabel="share of tokens", title="Expert popularity")
    if p.num_experts > 64:  # 128-256 experts: the head matters, the tail is flat
        ax.set_xscale("log")
    layer_key(fig, ax)
    _context(fig, p)
    written.append(_save(fig, out / "popularity.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for lp, col in zip(p.layers, colours):
        total = max(lp.reuse_gaps.sum(), 1)
        gaps = np.flatnonzero(lp.reuse_gaps)
        if gaps.size:
            cdf = np.cumsum(lp.reuse_gaps[gaps]) / total
            ax.step(gaps, cdf, where="post", color=col, label=f"layer {lp.layer}")
    ax.set(
        xscale="log",
        xlabel="steps until the expert is active again",
        ylabel="CDF",
        title="Reuse distance (batch-level)",
    )
    layer_key(fig, ax)
    _context(fig, p)
    written.append(_save(fig, out / "reuse_distance.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for lp, col in zip(p.layers, colours):
        ws = sorted(lp.working_set.items())
        ax.plot(
            [w for w, _ in ws], [v for _, v in ws], marker="o", color=col, label=f"layer {lp.layer}"
        )
    ax.axhline(p.num_experts, color="grey", ls=":")
    ax.set(xscale="log", xlabel="window (steps)", ylabel="distinct experts", title="Working set")
    layer_key(fig, ax)
    _context(fig, p)
    written.append(_save(fig, out / "working_set.png"))

    sizes = np.arange(p.num_experts + 1)
    if many:  # one heatmap per rule (layer x cache size) instead of one panel per layer
        fig, axes = plt.subplots(1, 3, figsize=(13, 1.5 + 0.12 * len(p.layers)), sharey=True)
        ids = [lp.layer for lp in p.layers]
        for ax, (name, attr) in zip(
            axes, (("LRU", "lru_misses"), ("OPT", "opt_misses"), ("static", "static_misses"))
        ):
            grid = np.array([getattr(lp, attr) / max(lp.requests, 1) for lp in p.layers])
            image = ax.imshow(
                grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest"
            )
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("cache size (experts per layer)")
            ax.grid(False)
        step = max(1, math.ceil(len(ids) / 16))
        axes[0].set_yticks(range(0, len(ids), step), [str(i) for i in ids[::step]])
        axes[0].set_ylabel("layer")
        fig.colorbar(image, ax=axes, label="miss ratio", shrink=0.9)
        _context(fig, p, "Miss ratio by cache size (per layer)")
        written.append(_save(fig, out / "miss_ratio.png", tight=False))
    else:
        cols = min(4, len(p.layers))
        rows = math.ceil(len(p.layers) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        for ax, lp in zip(axes.ravel(), p.layers):
            r = max(lp.requests, 1)
            ax.plot(sizes, lp.lru_misses / r, label="LRU")
            ax.plot(sizes, lp.opt_misses / r, label="OPT")
            ax.plot(sizes, lp.static_misses / r, label="static", ls="--")
            ax.set_title(f"layer {lp.layer}", fontsize=9)
            ax.set_ylim(0, 1.02)
        for ax in axes.ravel()[len(p.layers) :]:
            ax.axis("off")
        axes[0, 0].legend(fontsize=7)
        fig.supxlabel("cache size (experts per layer)")
        fig.supylabel("miss ratio")
        _context(fig, p, "Miss ratio by cache size (per layer)")
        written.append(_save(fig, out / "miss_ratio.png"))

    if p.coactivation:
        fig, ax = plt.subplots(figsize=(7, 4))
        labels = [f"{c.layer_from}->{c.layer_to}" for c in p.coactivation]
        ax.bar(labels, [c.mutual_info_bits for c in p.coactivation], label="MI")
        ax.bar(
            labels,
            [c.shuffled_mutual_info_bits for c in p.coactivation],
            label="shuffled tokens (noise floor)",
            alpha=0.7,
        )
        ax.set(ylabel="bits", title="Inter-layer co-activation (mutual information)")
        step = max(1, math.ceil(len(labels) / 16))
        ax.set_xticks(range(0, len(labels), step), labels[::step], rotation=45, ha="right")
        ax.legend(fontsize=8)
        _context(fig, p)
        written.append(_save(fig, out / "coactivation.png"))
    return written


def figure_context(p: TraceProfile, what: str | None = None) -> str:
    """The line(s) every profile figure carries, so that two profiles side by side can be told
    apart: which trace, and the top-k it was profiled at (may differ from the trace's own k)."""
    head = f"{what}, profiled at top-{p.k}" if what else f"profiled at top-{p.k}"
    return f"{head}\n{textwrap.fill(p.description, 110)}"


def _context(fig: Any, p: TraceProfile, what: str | None = None) -> None:
    fig.suptitle(figure_context(p, what), fontsize=8)


def _save(fig: Any, path: Path, tight: bool = True) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_bytes(path, buf.getvalue())
