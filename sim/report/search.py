"""The report of a ``moesim search`` directory: the answers table and the frontier figure
(metric against the varied field per policy, the target line, the boundaries marked; with two
fields, each policy's staircase of the least second field per value of the first)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from sim.errors import UserError
from sim.report import ReportContent, _Collector, _scenario_section
from sim.report import figures as F
from sim.report import html as H
from sim.report.load import SearchResults, Table, find_key

STATUSES = ("boundary", "whole range", "not met", "non-monotone")
OPERATORS = ("<=", ">=", "<", ">")
_FIELD_UNITS = {
    "bandwidth": (1e-9, "GB/s"),
    "size": (1e-9, "GB"),
    "duration": (1e6, "µs"),
    "compute": (1e-12, "TFLOP/s"),
}


# -- reading search.json back ------------------------------------------------------------------
def check_answers(path: Path, data: Any) -> dict[str, Any]:
    """search.json as written by `sim.search.output`; a one-line UserError naming the first
    key that is missing or of the wrong type."""
    top = _mapping(path, "search.json", data)
    question = _mapping(path, "question", top.get("question"))
    fields = question.get("fields")
    if not isinstance(fields, list) or not 1 <= len(fields) <= 2:
        raise _bad(path, "question.fields", "a list of one or two fields", fields)
    for i, item in enumerate(fields):
        item = _mapping(path, f"question.fields[{i}]", item)
        for key in ("path", "kind"):
            _typed(path, f"question.fields[{i}].{key}", item.get(key), str)
    target = _mapping(path, "question.target", question.get("target"))
    _typed(path, "question.target.metric", target.get("metric"), str)
    if target.get("op") not in OPERATORS:
        raise _bad(path, "question.target.op", f"one of {', '.join(OPERATORS)}", target.get("op"))
    _number(path, "question.target.value", target.get("value"))
    _typed(path, "question.target_text", question.get("target_text"), str)
    policies = top.get("policies")
    if not isinstance(policies, list):
        raise _bad(path, "policies", "a list", policies)
    paths = [f["path"] for f in fields]
    for i, policy in enumerate(policies):
        where = f"policies[{i}]"
        policy = _mapping(path, where, policy)
        _typed(path, f"{where}.policy", policy.get("policy"), str)
        if policy.get("status") not in STATUSES:
            raise _bad(
                path, f"{where}.status", f"one of {', '.join(STATUSES)}", policy.get("status")
            )
        for key in ("simulations", "grid"):
            _typed(path, f"{where}.{key}", policy.get(key), int)
        steps = policy.get("steps")
        if not isinstance(steps, list):
            raise _bad(path, f"{where}.steps", "a list", steps)
        for j, step in enumerate(steps):
            step = _mapping(path, f"{where}.steps[{j}]", step)
            for key, metric in (("boundary", "metric"), ("wrong_side", "wrong_metric")):
                _point(path, f"{where}.steps[{j}].{key}", step.get(key), paths)
                if step.get(metric) is not None:
                    _number(path, f"{where}.steps[{j}].{metric}", step.get(metric))
        extra = policy.get("non_monotone")
        if extra is not None:
            extra = _mapping(path, f"{where}.non_monotone", extra)
            for key in ("seen", "turning"):
                items = extra.get(key)
                if not isinstance(items, list):
                    raise _bad(path, f"{where}.non_monotone.{key}", "a list", items)
                for k, item in enumerate(items):
                    _point(path, f"{where}.non_monotone.{key}[{k}]", item, paths)
    return top


def _mapping(path: Path, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, where, "a mapping", value)
    return value


def _typed(path: Path, where: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _bad(path, where, f"a {kind.__name__}", value)


def _number(path: Path, where: str, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(path, where, "a number", value)


def _point(path: Path, where: str, value: Any, paths: Sequence[str]) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or any(p not in value for p in paths):
        raise _bad(path, where, f"a mapping with {', '.join(paths)}", value)
    for p in paths:
        _number(path, f"{where}.{p}", value[p])


def _bad(path: Path, where: str, expected: str, found: Any) -> UserError:
    shown = repr(found)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return UserError(f"{path}: {where}: expected {expected}, got {shown}")


# -- the report --------------------------------------------------------------------------------
ANSWER_COLUMNS = (
    H.Column("policy", "policy"),
    H.Column("status", "result"),
    H.Column("at", "boundary"),
    H.Column("metric", "metric at the boundary"),
    H.Column("wrong", "one tolerance step off"),
    H.Column("wrong_metric", "metric there"),
    H.Column("simulations", "simulations"),
    H.Column("grid", "grid at the same resolution"),
)


def search_content(results: SearchResults) -> ReportContent:
    question = results.answers["question"]
    fields = question["fields"]
    out = _Collector()
    title = "Frontier" if len(fields) == 1 else "Pareto frontier"
    caption = (
        f"{question['target']['metric']} against {fields[0]['path']}, one line per policy "
        "through every simulated point; dashed: the target; star: the boundary (meets the "
        "target), cross: one tolerance step the other way (does not); red rings: where a "
        "non-monotone metric turns."
        if len(fields) == 1
        else f"Per policy, the least {fields[1]['path']} that meets the target at each value of "
        f"{fields[0]['path']} (the staircase; large markers: Pareto points), over every "
        "simulated point (filled: meets the target, hollow: does not)."
    )
    draw = frontier_figure if len(fields) == 1 else staircase_figure
    out.add("search_frontier", title, caption, lambda: draw(results))
    scenario = results.resolved.get("scenario") if isinstance(results.resolved, dict) else None
    sections = (
        _scenario_section(scenario if isinstance(scenario, dict) else {}, "search.resolved.yaml"),
        H.section(
            "Answers",
            H.note(
                f"Target: {question['target_text']} over "
                f"{', '.join(f['path'] for f in fields)}, tolerance "
                f"{float(question.get('tolerance', 0)):.4g}. A boundary meets the target and "
                "the value one tolerance step the other way does not; 'grid' is what a sweep "
                "at the same resolution would simulate."
            ),
            H.data_table(answers_table(results), ANSWER_COLUMNS),
        ),
    )
    name = find_key(results.resolved, "name") or results.path.name
    return ReportContent(
        f"moesim search report: {name}",
        f"Results: {results.path}",
        sections,
        tuple(out.figures),
        tuple(out.skipped),
    )


def answers_table(results: SearchResults) -> Table:
    """One row per policy (one field) or per frontier step (two fields)."""
    columns: dict[str, list[Any]] = {c.name: [] for c in ANSWER_COLUMNS}
    metric = results.answers["question"]["target"]["metric"]
    for policy in results.answers["policies"]:
        for step in policy["steps"]:
            columns["policy"].append(policy["policy"])
            columns["status"].append(policy["status"])
            columns["at"].append(step.get("boundary_text") or "-")
            columns["metric"].append(_metric_text(metric, step.get("metric")))
            columns["wrong"].append(step.get("wrong_side_text") or "-")
            columns["wrong_metric"].append(_metric_text(metric, step.get("wrong_metric")))
            columns["simulations"].append(str(policy["simulations"]))
            columns["grid"].append(str(policy["grid"]))
    return Table({k: np.array(v, dtype=object) for k, v in columns.items()}, "search.json")


def _metric_text(metric: str, value: Any) -> str:
    from sim.search.question import format_metric

    return format_metric(metric, None if value is None else float(value))


def _field_scale(field: Mapping[str, Any]) -> tuple[float, str]:
    kind = field["kind"]
    if kind == "experts":
        per = float(field.get("expert_bytes") or 0.0)
        return (
            (1.0 / per, f"{field['path']} (experts)")
            if per > 0
            else (1e-9, f"{field['path']} (GB)")
        )
    scale, unit = _FIELD_UNITS.get(kind, (1.0, ""))
    return scale, f"{field['path']} ({unit})" if unit else field["path"]


def _metric_scale(metric: str) -> tuple[float, str]:
    from sim.search.question import DURATION_METRICS, SIZE_PREFIX

    if metric in DURATION_METRICS:
        return 1e3, f"{metric} (ms)"
    if metric.startswith(SIZE_PREFIX):
        return 1e-6, f"{metric} (MB)"
    return 1.0, metric


def _met(value: np.ndarray, op: str, limit: float) -> np.ndarray:
    return {
        "<=": value <= limit,
        "<": value < limit,
        ">=": value >= limit,
        ">": value > limit,
    }[op]


def _answer_text(policy: Mapping[str, Any], step: Mapping[str, Any]) -> str:
    status = policy["status"]
    if status == "boundary":
        return str(step.get("boundary_text"))
    if status == "non-monotone":
        return f"{step.get('boundary_text') or 'none'} (grid; not monotone)"
    return str(status)


def _start(results: SearchResults, height: float) -> tuple[Table, dict[str, str], Figure, Any]:
    """search.csv (it must have the target's metric), the policies' colours, a new figure."""
    metric = results.answers["question"]["target"]["metric"]
    if metric not in results.table:
        raise F.NoData(f"search.csv has no column {metric!r}")
    labels = [str(p["policy"]) for p in results.answers["policies"]]
    fig = F._figure(7.5, height)
    return results.table, F.policy_colours(labels, None), fig, fig.subplots()


def _log_x(ax: Any, values: Sequence[float]) -> None:
    """A log x axis with plain tick labels when the values span 8x or more."""
    from matplotlib.ticker import FuncFormatter

    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= 8:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(F._minor_log_label))


@F._styled
def frontier_figure(results: SearchResults) -> Figure:
    """Metric against the one varied field, per policy: every simulated point, the target
    line, the boundary (star) and the value one step the other way (cross)."""
    question = results.answers["question"]
    (field,) = question["fields"]
    target = question["target"]
    metric, path = target["metric"], field["path"]
    table, colours, fig, ax = _start(results, 4.8)
    xs, xlabel = _field_scale(field)
    ys, ylabel = _metric_scale(metric)
    every_x: list[float] = []
    for policy in results.answers["policies"]:
        label = str(policy["policy"])
        rows = table.where(policy=label)
        if not len(rows):
            continue
        order = np.argsort(rows[path], kind="stable")
        x, y = rows[path][order] * xs, rows[metric][order] * ys
        every_x.extend(x.tolist())
        colour = F._colour(colours, label)
        step = policy["steps"][0] if policy["steps"] else {}
        shown = f"{label}: {_answer_text(policy, step)}"
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.2, color=colour, label=shown)
        if policy["status"] != "not met":
            if step.get("boundary") is not None and step.get("metric") is not None:
                bx = step["boundary"][path] * xs
                ax.plot(
                    bx,
                    step["metric"] * ys,
                    marker="*",
                    markersize=15,
                    color=colour,
                    markeredgecolor="black",
                    linestyle="none",
                )
                ax.axvline(bx, color=colour, linestyle=":", linewidth=1)
            if step.get("wrong_side") is not None and step.get("wrong_metric") is not None:
                ax.plot(
                    step["wrong_side"][path] * xs,
                    step["wrong_metric"] * ys,
                    marker="X",
                    markersize=9,
                    color=colour,
                    markeredgecolor="black",
                    linestyle="none",
                )
        extra = policy.get("non_monotone") or {}
        turns = [t for t in extra.get("turning", []) if t.get("metric") is not None]
        if turns:
            ax.scatter(
                [t[path] * xs for t in turns],
                [t["metric"] * ys for t in turns],
                s=160,
                facecolors="none",
                edgecolors="#d62728",
                linewidths=1.5,
                zorder=5,
            )
    ax.axhline(
        target["value"] * ys,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"target: {question['target_text']}",
    )
    _log_x(ax, every_x)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{question['target_text']}: the boundary of {path} per policy")
    ax.legend(title="policy", loc="best")
    return fig


@F._styled
def staircase_figure(results: SearchResults) -> Figure:
    """Two fields: per policy, the least second field meeting the target at each value of
    the first (a staircase), over every simulated point (filled: meets, hollow: does not)."""
    question = results.answers["question"]
    first, second = question["fields"]
    target = question["target"]
    metric = target["metric"]
    table, colours, fig, ax = _start(results, 5.0)
    xs, xlabel = _field_scale(first)
    ys, ylabel = _field_scale(second)
    every: list[float] = []
    for policy in results.answers["policies"]:
        label = str(policy["policy"])
        colour = F._colour(colours, label)
        rows = table.where(policy=label)
        if len(rows):
            x, y = rows[first["path"]] * xs, rows[second["path"]] * ys
            met = _met(rows[metric], target["op"], float(target["value"]))
            ax.scatter(x[met], y[met], s=14, color=colour, alpha=0.6, linewidths=0)
            ax.scatter(x[~met], y[~met], s=14, facecolors="none", edgecolors=colour, alpha=0.6)
            every.extend(x.tolist())
        points = [
            (s["boundary"][first["path"]] * xs, s["boundary"][second["path"]] * ys, s["pareto"])
            for s in policy["steps"]
            if s.get("boundary") is not None
        ]
        if not points:
            ax.plot([], [], color=colour, label=f"{label} (not met)")
            continue
        points.sort()
        px, py, on = (np.array(v) for v in zip(*points))
        helps = (policy.get("helps") or {}).get(first["path"], 1)
        ax.step(
            px, py, where="post" if helps >= 0 else "pre", color=colour, linewidth=1.8, label=label
        )
        ax.scatter(
            px[on.astype(bool)],
            py[on.astype(bool)],
            s=70,
            color=colour,
            edgecolors="black",
            zorder=5,
        )
    _log_x(ax, every)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(
        f"{question['target_text']}: Pareto frontier\nof {first['path']} and {second['path']}"
    )
    ax.legend(title="policy", loc="best")
    return fig
