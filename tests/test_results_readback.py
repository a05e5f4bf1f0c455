"""Family 8: results directories read back by ``moesim report`` are validated column by column.

Text, NaN, inf or a blank in a number column of summary.csv gave a report in the wrong units
(exit 0); text in sweep.csv's ``speedup`` a traceback. Every column a writer defines has a rule
(`sim.report.load.column_rules`: integers, finite numbers in a range, True/False, text), and the
first bad cell is one line naming the file, the line and the column; nothing is written. A
timeline's events are checked the same way (finite times, integer ids).

The fuzzer replaces a random cell of a random results file: by a value that breaks its column's
rule (the report must refuse it, naming the line and column) or by another row's value of the
same column (reading it back must accept it).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from attack_world import FUZZ, assert_refused, world_copy
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_shards import run_cli

from sim.report.load import column_rules, load_results

BAD_NUMBERS = ("fast", "nan", "NaN", "inf", "-inf", "1e400", "0x10", "1,5")


def rewrite_cell(path: Path, row: int, column: str, value: str) -> None:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    rows[row + 1][rows[0].index(column)] = value
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def report(directory: Path) -> object:
    return run_cli(["report", str(directory), "--format", "html"], timeout=60)


@pytest.mark.parametrize(
    ("file", "column", "value"),
    [
        ("run/summary.csv", "mean_step", "fast"),
        ("run/summary.csv", "mean_step", "nan"),
        ("run/summary.csv", "total_time", "inf"),
        ("run/summary.csv", "mean_step", ""),
        ("run/per_step.csv", "latency", ""),
        ("run/summary.csv", "hit_rate", "1.5"),
        ("run/summary.csv", "is_baseline", "yes"),
        ("run/per_step.csv", "latency", "-0.5"),
        ("run/per_layer.csv", "stall", "-1e-6"),
        ("run/summary.csv", "stall", "-0.001"),
        ("run/per_step.csv", "compute_only", "-0.5"),
        ("run/per_layer.csv", "hits", "2.5"),
        ("sweep-out/sweep.csv", "speedup", "fast"),
        ("sweep-out/sweep.csv", "topk", "0"),
    ],
)
def test_a_bad_cell_is_one_line_naming_file_line_and_column(
    world: Path, file: str, column: str, value: str
) -> None:
    part = file.split("/")[0]
    with world_copy(world, part) as work:
        rewrite_cell(work / file, 1, column, value)
        before = sorted(p.name for p in (work / part).iterdir())
        line = assert_refused(
            report(work / part), naming=f"{Path(file).name}: line 3, column {column}"
        )
        assert "expected" in line
        assert sorted(p.name for p in (work / part).iterdir()) == before  # no report written


def test_a_bad_timeline_event_is_one_line(world: Path) -> None:
    with world_copy(world, "run") as work:
        path = work / "run" / "timeline.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        events = data["traceEvents"] if isinstance(data, dict) else data
        event = next(e for e in events if e.get("ph") == "X")
        event["ts"] = float("nan")
        path.write_text(json.dumps(data), encoding="utf-8")
        assert_refused(report(work / "run"), naming="timeline.json")


def test_gating_csv_of_trace_stats(world: Path) -> None:
    with world_copy(world, "stats") as work:
        out = work / "stats"
        rewrite_cell(out / "gating.csv", 0, "expert_activ", "-3")
        assert_refused(report(out), naming="gating.csv: line 2, column expert_activ")


# -- the fuzzer --------------------------------------------------------------------------------------
FILES = ("run/summary.csv", "run/per_step.csv", "run/per_layer.csv", "sweep-out/sweep.csv")


@st.composite
def cell_edits(draw: st.DrawFn) -> tuple[str, float, float, bool, str]:
    file = draw(st.sampled_from(FILES))
    return (
        file,
        draw(st.floats(0, 1, exclude_max=True)),  # which column (among those with a rule)
        draw(st.floats(0, 1, exclude_max=True)),  # which row
        draw(st.booleans()),  # break the rule, or copy another row's valid value
        draw(st.sampled_from(BAD_NUMBERS)),
    )


def check_edit(world: Path, edit: tuple[str, float, float, bool, str]) -> None:
    file, col_pick, row_pick, bad, bad_value = edit
    part = file.split("/")[0]
    rules = column_rules()
    with world_copy(world, part) as work:
        path = work / file
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        header, body = rows[0], rows[1:]
        ruled = [c for c in header if c in rules and rules[c].kind != "text"]
        column = ruled[int(col_pick * len(ruled))]
        row = int(row_pick * len(body))
        rule = rules[column]
        if bad:
            value = "maybe" if rule.kind == "bool" else bad_value
        else:
            value = body[(row + 1) % len(body)][header.index(column)]
        rewrite_cell(path, row, column, value)
        if bad:
            outcome = report(work / part)
            assert_refused(outcome, naming=f"{path.name}: line {row + 2}, column {column}")
        else:  # accepted: reading back is what is tested (drawing the figures takes seconds)
            load_results(work / part)


@settings(max_examples=15, **FUZZ)
@given(edit=cell_edits())
def test_fuzzed_cells_read_back(world: Path, edit: tuple[str, float, float, bool, str]) -> None:
    check_edit(world, edit)


@pytest.mark.slow
@settings(max_examples=300, **FUZZ)
@given(edit=cell_edits())
def test_fuzzed_cells_read_back_long(
    world: Path, edit: tuple[str, float, float, bool, str]
) -> None:
    check_edit(world, edit)
