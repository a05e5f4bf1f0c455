"""The latency-quality frontier: mean step latency against the gate mass a policy gives up.

Each run (a policy at one threshold or precision) is a point: x = ``degraded_gate_mass +
dropped_gate_mass`` (the quality PROXY: the share of the router's gate mass served below
native precision or skipped, docs/policies.md), y = mean step latency. A point is
**Pareto-optimal** when no other point is at least as good in both and better in one
(`pareto_mask`). Only online runs compete: oracles and offline bounds read routing an online
policy cannot know, so they are drawn hollow and never marked. Full-precision policies (proxy
0: the baseline and every cache, split and prefetcher) are the reference points.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sim.report import figures as F
from sim.report.load import Table, label_kinds, plain_value

FAMILIES = ("quantised-all", "low-precision-on-miss", "skip-low-score")  # the trade-off policies
REFERENCE = "full precision"  # the family of every other policy
PROXY_COLUMNS = ("degraded_gate_mass", "dropped_gate_mass")
MAX_PANELS = 6


def pareto_mask(latency: Sequence[float], proxy: Sequence[float]) -> np.ndarray:
    """True where a point is not dominated (lower is better in both): no other point has
    ``latency <= `` and ``proxy <=`` with one of them strictly lower. Equal points are both
    on the front; a point with a NaN coordinate is never on it (nor dominates)."""
    x = np.asarray(proxy, dtype=np.float64)
    y = np.asarray(latency, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    le = (x[None, :] <= x[:, None]) & (y[None, :] <= y[:, None])  # [i, j]: j as good as i
    lt = (x[None, :] < x[:, None]) | (y[None, :] < y[:, None])
    dominated = (le & lt & ok[None, :]).any(axis=1)
    return ok & ~dominated


def has_proxies(table: Table) -> bool:
    """Whether the results carry the proxies and some run gave up gate mass."""
    if not all(c in table for c in PROXY_COLUMNS):
        return False
    values = np.concatenate([np.asarray(table[c], dtype=np.float64) for c in PROXY_COLUMNS])
    return bool(np.any(np.nan_to_num(values, nan=1.0) != 0.0))


def family_of(policy: str) -> str:
    """A trade-off policy's family is its name; everything else is a full-precision reference."""
    return policy if policy in FAMILIES else REFERENCE


def frontier_table(table: Table, group_fields: Sequence[str] = ()) -> Table:
    """One row per (group, top-k, label): mean step and proxies (means over repeats/seeds),
    family, kind, and whether it is Pareto-optimal among the online runs of its group and
    top-k. ``group_fields``: swept fields other than the policy (each combination is its own
    frontier)."""
    kinds = label_kinds(table)
    keys: dict[tuple[Any, ...], list[int]] = {}
    for i in range(len(table)):
        key = (
            *(plain_value(table[f][i]) for f in group_fields),
            plain_value(table["topk"][i]),
            str(table["label"][i]),
        )
        keys.setdefault(key, []).append(i)
    rows: list[dict[str, Any]] = []
    for key, idx in keys.items():
        first = idx[0]
        latency = float(np.mean(np.asarray(table["mean_step"], dtype=np.float64)[idx]))
        parts = [float(np.mean(np.asarray(table[c], dtype=np.float64)[idx])) for c in PROXY_COLUMNS]
        policy = str(table["policy"][first])
        rows.append(
            {
                "group": ", ".join(
                    f"{f.rsplit('.', 1)[-1]}={v}" for f, v in zip(group_fields, key[:-2])
                ),
                "topk": key[-2],
                "label": key[-1],
                "policy": policy,
                "family": family_of(policy),
                "kind": kinds.get(key[-1], "online"),
                "mean_step": latency,
                "tokens_per_s": float(np.mean(np.asarray(table["tokens_per_s"], float)[idx]))
                if "tokens_per_s" in table
                else float("nan"),
                "degraded": parts[0],
                "dropped": parts[1],
                "proxy": parts[0] + parts[1],
            }
        )
    pareto = np.zeros(len(rows), dtype=bool)
    rank = np.full(len(rows), np.nan)
    for group in {(r["group"], r["topk"]) for r in rows}:
        members = [
            i
            for i, r in enumerate(rows)
            if (r["group"], r["topk"]) == group and r["kind"] == "online"
        ]
        mask = pareto_mask(
            [rows[i]["mean_step"] for i in members], [rows[i]["proxy"] for i in members]
        )
        on = [m for m, yes in zip(members, mask) if yes]
        pareto[on] = True
        # number the front from the least mass given up (ties: the faster first)
        for n, i in enumerate(sorted(on, key=lambda i: (rows[i]["proxy"], rows[i]["mean_step"]))):
            rank[i] = n + 1
    columns: dict[str, np.ndarray] = {}
    for name in ("group", "label", "policy", "family", "kind"):
        columns[name] = np.array([r[name] for r in rows], dtype=object)
    for name in ("topk", "mean_step", "tokens_per_s", "degraded", "dropped", "proxy"):
        columns[name] = np.array([r[name] for r in rows], dtype=np.float64)
    columns["pareto"] = pareto
    columns["rank"] = rank  # 1, 2, ... along the front (NaN: not on it)
    return Table(columns, "frontier")


FAMILY_MARKERS = {
    "quantised-all": "s",
    "low-precision-on-miss": "o",
    "skip-low-score": "^",
    REFERENCE: "D",
}


@F._styled
def frontier_figure(frontier: Table, baseline: str | None, topk: int | None = None) -> Figure:
    """Mean step latency (ms) against degraded + dropped gate mass (%, the quality proxy), one
    colour per family, Pareto-optimal online points ringed and joined by the frontier's
    staircase; one panel per group of the other swept fields."""
    rows = frontier if topk is None else frontier.where(topk=topk)
    if not len(rows):
        raise F.NoData("no runs to place on the frontier")
    if not np.any(np.asarray(rows["proxy"]) > 0):
        raise F.NoData(
            "no run gave up gate mass (add quantised-all, low-precision-on-miss or "
            "skip-low-score runs, e.g. scenarios/mixed-precision.yaml)"
        )
    groups = list(dict.fromkeys(str(g) for g in rows["group"]))
    if len(groups) > MAX_PANELS:
        raise F.NoData(
            f"{len(groups)} combinations of the other swept fields: more than {MAX_PANELS} "
            "panels (sweep the policies alone, or fewer values)"
        )
    fig = F._figure(min(max(7.5, 5.5 * len(groups)), 16.0), 5.0)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    family_colour = dict(zip((*FAMILIES, REFERENCE), (*F.PALETTE[:3], F.BASELINE_COLOUR)))
    for ax, group in zip(axes, groups):
        panel = rows.where(group=group)
        x = 100.0 * np.asarray(panel["proxy"], dtype=np.float64)
        y = F.MS * np.asarray(panel["mean_step"], dtype=np.float64)
        pareto = np.asarray(panel["pareto"], dtype=bool)
        for family in (*FAMILIES, REFERENCE):
            mine = np.asarray([str(f) == family for f in panel["family"]])
            if not mine.any():
                continue
            online = mine & np.asarray([str(k) == "online" for k in panel["kind"]])
            offline = mine & ~online
            colour = family_colour[family]
            marker = FAMILY_MARKERS[family]
            ax.scatter(x[online], y[online], color=colour, marker=marker, s=28, label=family)
            if offline.any():
                ax.scatter(
                    x[offline],
                    y[offline],
                    facecolors="none",
                    edgecolors=colour,
                    marker=marker,
                    s=28,
                    label=f"{family} (oracle, not on the frontier)",
                )
        order = np.flatnonzero(pareto)[np.argsort(x[pareto], kind="stable")]
        if order.size:
            ax.step(x[order], y[order], where="post", color="#000000", lw=1.0, alpha=0.6)
            ax.scatter(
                x[order],
                y[order],
                facecolors="none",
                edgecolors="#000000",
                s=110,
                lw=1.2,
                label="Pareto-optimal (online)",
            )
        rank = np.asarray(panel["rank"], dtype=np.float64)
        for i in order.tolist():  # the front's numbers: the frontier table names them
            ax.annotate(
                str(int(rank[i])),
                (x[i], y[i]),
                textcoords="offset points",
                xytext=(4, 5),
                fontsize=7,
            )
        for i, label in enumerate(panel["label"]):
            if str(label) == baseline:
                ax.annotate(
                    f"{label} (baseline)",
                    (x[i], y[i]),
                    textcoords="offset points",
                    xytext=(5, -9),
                    fontsize=7,
                )
        if y.size and np.nanmax(y) > 20 * max(np.nanmin(y), 1e-12):
            ax.set_yscale("log")
        ax.set_xlabel("degraded + dropped gate mass (quality PROXY, %)")
        ax.set_title(group or "all runs", fontsize=9)
    axes[0].set_ylabel("mean step latency (ms)")
    F._figure_legend(fig, axes[0], None, 4, more=axes[1:])
    fig.suptitle(
        "Latency vs router gate mass given up" + F._topk_title(topk) + "\n(lower left is "
        "better; the gate mass is a quality proxy, not accuracy)"
    )
    return fig


FRONTIER_NOTE = (
    "Each run is one point: its mean step latency against the share of the router's gate mass "
    "it served below native precision (degraded) or skipped (dropped): a quality PROXY, not "
    'accuracy (docs/policies.md, "Quality proxies"). Pareto-optimal: no other online run is '
    "at least as fast with no more mass given up, and better in one; oracles and offline bounds "
    "never count; the numbers along the front are the frontier table's. Full-precision "
    "policies (proxy 0) are the reference points."
)
