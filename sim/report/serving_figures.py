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
from matplotlib.ticker import FuncFormatter

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
        low, high = np.inf, 0.0
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
            low, high = min(low, values[0]), max(high, values[-1])
            colour = _colour(colours, label)
            ax.step(values, share, where="post", color=colour, linewidth=1.5, label=label)
            ax.plot([p50], [0.5], "o", color=colour, markersize=5)
            ax.plot([p99], [0.99], "^", color=colour, markersize=6)
        if low > 0 and high / low >= 10:  # policies an order of magnitude apart: log axis
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.set_xlabel(f"{title} (ms, log scale)")
        else:
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
    """HBM held by the KV cache (blocks allocated) and by the expert cache over time, per
    policy, with the KV budget (dashed, or named in the title when it dwarfs the use) and,
    in shared mode, what the expert cache may hold."""
    if run.iterations is None:
        raise NoData("no per_iteration.csv in the results directory (not a serving run)")
    labels = _ordered([str(x) for x in run.iterations.unique("label")], run.baseline)
    rows_of = {label: _rows(run.iterations, label, topk) for label in labels}
    rows_of = {label: rows for label, rows in rows_of.items() if len(rows)}
    if not rows_of:
        raise NoData(f"per_iteration.csv has no rows{_topk_title(topk)}")
    kv_peak = max(float(np.max(r["kv_bytes"])) for r in rows_of.values())
    budget = max(float(np.max(r["kv_budget_bytes"])) for r in rows_of.values())
    cache_peak = max(
        float(np.max(r["expert_cache_bytes"])) if "expert_cache_bytes" in r else 0.0
        for r in rows_of.values()
    )
    scale, unit = (1e-9, "GB") if max(kv_peak, cache_peak) >= 1e9 else (1e-6, "MB")
    fig = _figure(10.0, 5.2)
    kv_ax, cache_ax = fig.subplots(2, 1, sharex=True)
    for label, rows in rows_of.items():
        colour = _colour(colours, label)
        t = rows["t_start"]
        kv_ax.step(t, rows["kv_bytes"] * scale, where="post", color=colour, lw=1.2, label=label)
        if "expert_cache_bytes" in rows:
            cache_ax.step(t, rows["expert_cache_bytes"] * scale, where="post", color=colour, lw=1.2)
        if "expert_capacity_bytes" in rows and np.ptp(rows["expert_capacity_bytes"]) > 0:
            cache_ax.step(
                t, rows["expert_capacity_bytes"] * scale, where="post", color=colour, ls=":"
            )
    note = ""
    if budget <= 5 * max(kv_peak, 1.0):
        kv_ax.axhline(budget * scale, color="black", ls="--", lw=0.8, label="KV budget")
    else:
        note = f" (KV budget {budget * 1e-9:.3g} GB: peak use {100 * kv_peak / budget:.2g} %)"
    kv_ax.set_ylabel(f"KV cache ({unit})")
    cache_ax.set_ylabel(f"expert cache ({unit})")
    cache_ax.set_xlabel("simulated time (s)")
    _figure_legend(fig, kv_ax, "policy", columns=5)
    fig.suptitle(f"HBM: KV cache vs expert cache over time{_topk_title(topk)}{note}")
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
