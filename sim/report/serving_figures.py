"""The report's figures of serving runs and of sweeps over the arrival rate.

* `latency_cdfs`: TTFT and TPOT distributions per policy (requests.csv, measured requests);
* `memory_over_time`: KV-cache and expert-cache occupancy of HBM over time per policy
  (per_iteration.csv), with the KV budget;
* `throughput_latency`: per policy, p99 TTFT against the output throughput reached, one point
  per arrival rate of a sweep, and the throughput against the offered rate (sweep.csv).

Same conventions as `sim.report.figures`: one colour per label, the baseline dark grey, a
figure without its input raises `NoData`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sim.report.figures import (
    MS,
    NoData,
    _colour,
    _figure,
    _figure_legend,
    _ordered,
    _styled,
    _topk_title,
)
from sim.report.load import RunResults, SweepResults, Table

GB = 1e-9
RATE_FIELD = "workload.arrivals.rate"


def _rows(table: Table, label: str, topk: int | None) -> Table:
    rows = table.where(label=label)
    return rows if topk is None else rows.where(topk=topk)


def _measured(rows: Table) -> Table:
    if "measured" in rows:
        return rows.rows(rows["measured"].astype(bool))
    return rows


@_styled
def latency_cdfs(run: RunResults, colours: Mapping[str, str], topk: int | None = None) -> Figure:
    """Empirical CDFs of time to first token and time per output token, per policy, over the
    measured requests; p50 (circle) and p99 (triangle) marked."""
    if run.requests is None:
        raise NoData("no requests.csv in the results directory (not a serving run)")
    labels = _ordered([str(x) for x in run.requests.unique("label")], run.baseline)
    fig = _figure(10.0, 4.8)
    axes = fig.subplots(1, 2)
    for ax, metric, title in zip(
        axes, ("ttft", "tpot"), ("time to first token", "time per output token")
    ):
        for label in labels:
            rows = _measured(_rows(run.requests, label, topk))
            if not len(rows):
                continue
            if metric == "ttft":
                values = rows["first_token"] - rows["arrival"]
            else:
                many = rows["output_tokens"] > 1
                values = (rows["finish"][many] - rows["first_token"][many]) / (
                    rows["output_tokens"][many] - 1.0
                )
            values = np.sort(values[np.isfinite(values)]) * MS
            if not values.size:
                continue
            share = np.arange(1, values.size + 1) / values.size
            p50, p99 = np.percentile(values, [50, 99])
            colour = _colour(colours, label)
            ax.step(values, share, where="post", color=colour, linewidth=1.5, label=label)
            ax.plot([p50], [0.5], "o", color=colour, markersize=5)
            ax.plot([p99], [0.99], "^", color=colour, markersize=6)
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylabel("share of requests ≤")
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
    for marker, name in (("o", "p50"), ("^", "p99")):
        axes[0].add_line(Line2D([], [], marker=marker, color="black", linestyle="", label=name))
    _figure_legend(fig, axes[0], "policy", columns=4)
    fig.suptitle(f"Request latency by policy{_topk_title(topk)} (measured requests)")
    return fig


@_styled
def memory_over_time(
    run: RunResults, colours: Mapping[str, str], topk: int | None = None
) -> Figure:
    """HBM held by the KV cache and by the expert cache over time, per policy (one panel
    each), with the KV budget (dashed)."""
    if run.iterations is None:
        raise NoData("no per_iteration.csv in the results directory (not a serving run)")
    labels = _ordered([str(x) for x in run.iterations.unique("label")], run.baseline)
    fig = _figure(10.0, 5.2)
    kv_ax, cache_ax = fig.subplots(2, 1, sharex=True)
    for label in labels:
        rows = _rows(run.iterations, label, topk)
        if not len(rows):
            continue
        colour = _colour(colours, label)
        t = rows["t_start"]
        kv_ax.step(t, rows["kv_bytes"] * GB, where="post", color=colour, linewidth=1.2, label=label)
        if "expert_cache_bytes" in rows:
            cache_ax.step(
                t, rows["expert_cache_bytes"] * GB, where="post", color=colour, linewidth=1.2
            )
        if "kv_budget_bytes" in rows and label == labels[0]:
            kv_ax.axhline(
                float(np.max(rows["kv_budget_bytes"])) * GB,
                color="black",
                linestyle="--",
                linewidth=0.8,
                label="KV budget",
            )
    kv_ax.set_ylabel("KV cache (GB)")
    cache_ax.set_ylabel("expert cache (GB)")
    cache_ax.set_xlabel("simulated time (s)")
    _figure_legend(fig, kv_ax, "policy", columns=5)
    fig.suptitle(f"HBM: KV cache vs expert cache over time{_topk_title(topk)}")
    return fig


@_styled
def throughput_latency(
    sweep: SweepResults, colours: Mapping[str, str], topk: int | None = None
) -> Figure:
    """Per policy, one point per swept arrival rate: p99 TTFT against output tokens/s reached
    (left), and output tokens/s against the offered rate (right). Past saturation the
    throughput flattens and the tail latency climbs."""
    table = sweep.table if topk is None else sweep.table.where(topk=topk)
    if RATE_FIELD not in table or "ttft_p99" not in table:
        raise NoData(f"sweep.csv has no {RATE_FIELD} column and serving summaries")
    if table[RATE_FIELD].dtype.kind not in "fiu":
        raise NoData(f"{RATE_FIELD} is not numeric in sweep.csv")
    fig = _figure(10.0, 4.8)
    lat_ax, thr_ax = fig.subplots(1, 2)
    for label in _ordered([str(x) for x in table.unique("label")], sweep.baseline):
        rows = table.where(label=label)
        rate = np.asarray(rows[RATE_FIELD], dtype=np.float64)
        order = np.argsort(rate, kind="stable")
        rate = rate[order]
        thr = np.asarray(rows["output_tokens_per_s"], dtype=np.float64)[order]
        p99 = np.asarray(rows["ttft_p99"], dtype=np.float64)[order] * MS
        colour = _colour(colours, label)
        lat_ax.plot(thr, p99, marker="o", color=colour, label=label)
        thr_ax.plot(rate, thr, marker="o", color=colour)
    lat_ax.set_xlabel("output tokens/s reached")
    lat_ax.set_ylabel("p99 TTFT (ms)")
    lat_ax.set_yscale("log")
    thr_ax.set_xlabel("arrival rate (requests/s)")
    thr_ax.set_ylabel("output tokens/s reached")
    _figure_legend(fig, lat_ax, "policy", columns=5)
    fig.suptitle(f"Throughput vs latency over the arrival rate{_topk_title(topk)}")
    return fig
