"""A search's outputs: search.csv (every evaluated point), search.json (the answers), and the
tables and notes the command prints. Both files are written atomically and hold no time or
count of this call only, so a resumed search writes the same bytes as an uninterrupted one."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from sim.atomic import write_csv, write_json
from sim.search.algorithm import (
    BOUNDARY,
    NON_MONOTONE,
    NOT_MET,
    WHOLE_RANGE,
    Answer,
    Point,
    Step,
    pareto,
)
from sim.search.question import COMPARISONS, NOT_METRICS, Question, format_metric
from sim.sweep.table import csv_cell

SEARCH_CSV = "search.csv"
SEARCH_JSON = "search.json"
STATUS_TEXT = {
    BOUNDARY: "boundary found",
    WHOLE_RANGE: "met over the whole range",
    NOT_MET: "not met in the range",
    NON_MONOTONE: "not monotone: grid",
}


def write_outputs(report: Any) -> None:
    """search.csv and search.json of a `SearchReport`."""
    write_search_csv(report)
    write_json(report.out_dir / SEARCH_JSON, search_document(report))


def write_search_csv(report: Any) -> None:
    """``policy``, each varied field's dotted path (SI units, full precision), then the metric
    columns in summary.csv's order; one row per evaluated point, policies in the order asked,
    points by lattice position."""
    from sim.scenario.run import SUMMARY_COLUMNS

    question: Question = report.question
    paths = [f.path for f in question.fields]
    skip = NOT_METRICS | COMPARISONS
    present = {c for row in report.rows.values() for c in row} - skip
    metrics = [c for c in SUMMARY_COLUMNS if c in present]
    metrics += sorted(present - set(metrics))
    columns = ["policy", *paths, *metrics]
    lines = []
    for policy in question.policies:
        for (label, pt), row in report.rows.items():
            if label != policy.label:
                continue
            values = [f.si(i) for f, i in zip(question.fields, pt)]
            lines.append([label, *values, *(row.get(m) for m in metrics)])
    write_csv(report.out_dir / SEARCH_CSV, columns, ([csv_cell(v) for v in line] for line in lines))


def search_document(report: Any) -> dict[str, Any]:
    question: Question = report.question
    return {
        "question": question.to_dict(),
        "policies": [_policy_document(report, r) for r in report.results],
    }


def _policy_document(report: Any, result: Any) -> dict[str, Any]:
    question: Question = report.question
    answer: Answer = result.answer
    flags = (
        pareto(answer.steps)
        if len(question.fields) == 2
        else [s.at is not None for s in answer.steps]
    )
    label = result.label
    return {
        "policy": label,
        "status": answer.status,
        "simulations": result.simulations,
        "grid": result.grid,
        "helps": {f.path: h for f, h in zip(question.fields, answer.helps)},
        "steps": [
            {
                "boundary": _values(question, step.at),
                "boundary_text": _text(question, step.at),
                "metric": report.metric(label, step.at),
                "wrong_side": _values(question, step.wrong),
                "wrong_side_text": _text(question, step.wrong),
                "wrong_metric": report.metric(label, step.wrong),
                "inferred": step.inferred,
                "pareto": flag,
            }
            for step, flag in zip(answer.steps, flags)
        ],
        "non_monotone": None
        if answer.status != NON_MONOTONE
        else {
            "seen": [
                {**_values(question, p), "metric": report.metric(label, p)}
                for p in answer.seen or ()
            ],
            "turning": [
                {**_values(question, p), "metric": report.metric(label, p)} for p in answer.turning
            ],
        },
    }


def _values(question: Question, point: Point | None) -> dict[str, Any] | None:
    if point is None:
        return None
    return {f.path: f.si(i) for f, i in zip(question.fields, point)}


def _text(question: Question, point: Point | None) -> str | None:
    if point is None:
        return None
    return ", ".join(f.show(i) for f, i in zip(question.fields, point))


# -- what the command prints -------------------------------------------------------------------
def tables(report: Any) -> list[Table]:
    """One table (one field: a row per policy) or one per policy (two fields: the frontier)."""
    question: Question = report.question
    metric = question.goal.metric
    if len(question.fields) == 1:
        path = question.fields[0].path
        table = Table(
            title=f"{question.target}: the boundary of {path} in "
            f"[{question.fields[0].show(0)}, {question.fields[0].show(question.fields[0].size - 1)}]"
            f", tolerance {question.tolerance:.4g}"
        )
        for name in ("policy", "result", "boundary", metric, "one step off", metric):
            table.add_column(name, justify="left" if name in ("policy", "result") else "right")
        table.add_column("simulations", justify="right")
        table.add_column("grid", justify="right")
        for result in report.results:
            (step,) = result.answer.steps
            table.add_row(
                Text(result.label),
                Text(STATUS_TEXT[result.answer.status]),
                *_step_cells(report, result.label, step, 0),
                str(result.simulations),
                str(result.grid),
            )
        return [table]
    first, second = question.fields
    out = []
    for result in report.results:
        table = Table(
            title=f"{result.label}: {question.target}, {STATUS_TEXT[result.answer.status]} "
            f"({result.simulations} simulations; the grid: {result.grid})"
        )
        for name in (first.path, second.path, metric, "one step off", metric, "Pareto"):
            table.add_column(name, justify="right")
        flags = pareto(result.answer.steps)
        for step, flag in zip(result.answer.steps, flags):
            point = step.at or step.wrong
            x = first.show(point[0]) if point is not None else "-"
            cells = _step_cells(report, result.label, step, 1)
            table.add_row(x, *cells, "yes" if flag else "")
        out.append(table)
    return out


def _step_cells(report: Any, label: str, step: Step, axis: int) -> list[str]:
    question: Question = report.question
    field = question.fields[axis]
    metric = question.goal.metric
    at = field.show(step.at[axis]) if step.at is not None else "-"
    if step.inferred:
        at += " (inferred)"
    wrong = field.show(step.wrong[axis]) if step.wrong is not None else "-"
    return [
        at,
        format_metric(metric, report.metric(label, step.at)),
        wrong,
        format_metric(metric, report.metric(label, step.wrong)),
    ]


def notes(report: Any) -> list[str]:
    """Lines under the table: what a status means where it is not a boundary."""
    question: Question = report.question
    metric = question.goal.metric
    lines = []
    for result in report.results:
        answer, label = result.answer, result.label
        if answer.status == WHOLE_RANGE:
            lines.append(
                f"{label}: the target is met at both ends of the range; the boundary lies beyond "
                "it (widen --range)"
            )
        elif answer.status == NOT_MET:
            lines.append(
                f"{label}: the target is not met anywhere in the range (one step off: the best "
                "end); widen --range or relax --target"
            )
        elif answer.status == NON_MONOTONE:
            seen = answer.seen or ()
            shown = " but ".join(
                f"{format_metric(metric, report.metric(label, p))} at {_text(question, p)}"
                for p in seen
            )
            turns = (
                "; ".join(_text(question, p) or "" for p in answer.turning) or "none on the grid"
            )
            lines.append(
                f"{label}: {metric} is not monotone in {', '.join(f.path for f in question.fields)}"
                f" ({shown}, the first with more of what helps); evaluated on a grid of "
                f"{question.grid} values per field instead: the boundary shown is where the "
                f"target holds from there on at every grid value, not within the tolerance. "
                f"The metric turns at: {turns}"
            )
    return lines
