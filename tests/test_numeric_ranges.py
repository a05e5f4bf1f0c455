"""Families 3 and 9: every number moesim takes has a checked finite range.

* the scenario schema: a test walks every numeric field (those other branches add too) and
  requires an upper bound; the fuzzer sets a random numeric field to a random edge value (0,
  negative, 2^31, 2^63, 10^30, 1e-300, 1e300, NaN, inf, with and without units) through
  ``--set`` and runs the scenario: a complete result or one line, never a traceback;
* policy parameters: bounded by construction (`sim.policies.base.bounded`), fuzzed the same way;
* arrays read from files: dtype and range checked before use (object arrays in ``.npz``,
  int64 overflow in cost tables and routing counts, huge JSON integers);
* command-line flags: a test walks every parser and requires a range type on every numeric
  flag; the fuzzer feeds each one edge values.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import typing
from pathlib import Path
from typing import Any

import annotated_types
import numpy as np
import pytest
from attack_world import FUZZ, assert_refused, world_copy
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from test_fuzz_scenarios import assert_complete_results
from test_fuzz_shards import run_cli

from sim.cli import build_parser
from sim.commands._options import NumberRange
from sim.policies.base import available_policies, bounded
from sim.scenario.build import unit_of
from sim.scenario.schema import ScenarioSection

REPO = Path(__file__).resolve().parents[1]


# -- the schema's numeric fields ---------------------------------------------------------------------
# Fields whose numbers are parsed by a bounded parser of their own, not by the schema's types.
OWN_PARSERS = {
    "costs.clock": "sim.units.parse_clock: 1 Hz .. 1 THz",
    "trace.runid": "a name in the dump's paths (str or int)",
    "trace.epoch": "a name in the dump's paths (str or int)",
    "trace.layers": "sim.ranges.parse_int_selection: at most 1,000,000 ids below 2^31",
    "trace.positions": "sim.ranges.parse_int_selection",
    "trace.seqs": "sim.ranges.parse_int_selection",
}


def _constraints(annotation: Any, metadata: Any = ()) -> list[Any]:
    found = list(metadata)
    for item in (*metadata, *getattr(annotation, "__metadata__", ())):
        found += list(getattr(item, "metadata", ()) or ())
        found.append(item)
    for arg in typing.get_args(annotation):
        found += _constraints(arg)
    return found


def _leaf_types(annotation: Any) -> set[type]:
    if annotation in (int, float, str, bool):
        return {annotation}
    out: set[type] = set()
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            continue
        out |= _leaf_types(arg)
    return out


def _is_mapping(annotation: Any) -> bool:
    return typing.get_origin(annotation) is dict or any(
        _is_mapping(a) for a in typing.get_args(annotation)
    )


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out = []
    for arg in typing.get_args(annotation):
        out += _models_in(arg)
    return out


def numeric_fields(
    model: type[BaseModel] = ScenarioSection, prefix: str = ""
) -> dict[str, tuple[str, Any, Any]]:
    """Dotted path -> (kind, annotation, metadata) of every numeric field under ``model``
    (kind ``int``, ``float`` or a quantity kind); mappings keyed by name (links) are walked
    with a name that exists."""
    found: dict[str, tuple[str, Any, Any]] = {}
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        annotation = info.annotation
        for sub in _models_in(annotation):
            key = "pcie." if _is_mapping(annotation) else ""
            found.update(numeric_fields(sub, f"{path}.{key}"))
        unit = unit_of(annotation, info.metadata)
        leaves = _leaf_types(annotation) - {str, bool}
        if unit is not None:
            found[path] = (unit.kind, annotation, info.metadata)
        elif int in leaves or float in leaves:
            kind = "float" if float in leaves else "int"
            found[path] = (kind, annotation, info.metadata)
    return found


def test_every_numeric_schema_field_has_an_upper_bound() -> None:
    """A new numeric field without a range fails here (give it ``le=`` or a unit)."""
    fields = numeric_fields()
    assert "model.expert_bytes" in fields and "hardware.links.pcie.bandwidth" in fields
    upper = (annotated_types.Le, annotated_types.Lt)
    unbounded = [
        path
        for path, (kind, annotation, metadata) in fields.items()
        if path not in OWN_PARSERS
        and kind in ("int", "float")
        and not any(isinstance(c, upper) for c in _constraints(annotation, metadata))
    ]
    assert unbounded == [], f"numeric fields without an upper bound: {unbounded}"


def test_every_policy_parameter_is_bounded() -> None:
    import dataclasses

    for name, cls in available_policies().items():
        hints = typing.get_type_hints(cls.Params)
        for field in dataclasses.fields(cls.Params):
            if _leaf_types(hints[field.name]) & {int, float}:
                upper = (annotated_types.Le, annotated_types.Lt)
                found = _constraints(bounded(hints[field.name]))
                assert any(isinstance(c, upper) for c in found), f"{name}.{field.name}"


EDGE_INTS = ("0", "-1", "1", "2", "2147483647", "2147483648", "9223372036854775808", "1e30")
EDGE_FLOATS = ("0.0", "-1.5", "1e-300", "1e300", ".nan", ".inf", "-.inf", "3")
EDGE_NUMBERS = ("0", "1e-30", "0.5", "1", "4", "1e30", "1e400", "-2", "nan")
UNITS = {
    "bandwidth": ("GB/s", "B/s", "Gbps"),
    "size": ("B", "GiB", "MB"),
    "duration": ("s", "us", "ns"),
    "compute": ("TFLOP/s", "FLOP/s"),
}


@st.composite
def numeric_overrides(draw: st.DrawFn) -> str:
    fields = numeric_fields()
    path = draw(st.sampled_from(sorted(fields)))
    kind = fields[path][0]
    if kind == "int":
        value = draw(st.sampled_from(EDGE_INTS))
    elif kind == "float":
        value = draw(st.sampled_from(EDGE_FLOATS))
    else:
        number = draw(st.sampled_from(EDGE_NUMBERS))
        unit = draw(st.sampled_from(UNITS.get(kind, ("",))))
        value = f"{number} {unit}" if draw(st.booleans()) else number
    return f"{path}={value}"


@st.composite
def param_overrides(draw: st.DrawFn) -> tuple[str, str]:
    import dataclasses

    policies = available_policies()
    name = draw(st.sampled_from(sorted(policies)))
    cls = policies[name]
    hints = typing.get_type_hints(cls.Params)
    numeric = [
        f.name for f in dataclasses.fields(cls.Params) if _leaf_types(hints[f.name]) & {int, float}
    ]
    if not numeric:
        return name, ""
    field = draw(st.sampled_from(numeric))
    value = draw(st.sampled_from(EDGE_INTS + EDGE_FLOATS))
    return name, f"policies[1].params.{field}={value}"


def check_run(world: Path, sets: list[str]) -> None:
    with world_copy(world, "scenario.yaml", "dump") as work:
        out = work / "out"
        argv = ["run", str(work / "scenario.yaml"), "--out", str(out), "--quiet"]
        outcome = run_cli([*argv, *(a for s in sets for a in ("--set", s))], timeout=60)
        assert "Traceback" not in outcome.err, outcome.err
        assert outcome.code in (0, 2), outcome
        if outcome.code == 2:
            assert_refused(outcome)
            assert not out.exists()
        else:
            assert_complete_results(out)


@settings(max_examples=25, **FUZZ)
@given(override=numeric_overrides())
def test_fuzzed_schema_numbers(world: Path, override: str) -> None:
    check_run(world, [override])


@settings(max_examples=15, **FUZZ)
@given(case=param_overrides())
def test_fuzzed_policy_parameters(world: Path, case: tuple[str, str]) -> None:
    name, override = case
    check_run(world, [f"policies[1]={{name: {name}}}", *([override] if override else [])])


@pytest.mark.slow
@settings(max_examples=600, **FUZZ)
@given(override=numeric_overrides(), case=param_overrides())
def test_fuzzed_numbers_long(world: Path, override: str, case: tuple[str, str]) -> None:
    check_run(world, [override])
    name, param = case
    check_run(world, [f"policies[1]={{name: {name}}}", *([param] if param else [])])


@pytest.mark.parametrize(
    ("override", "naming"),
    [
        ("model.expert_bytes=0 B", "model.expert_bytes"),  # was ZeroDivisionError
        ("model.bytes_per_param=.inf", "model.bytes_per_param"),  # was ValueError
        ("model.hidden_size=1099511627776", "model.hidden_size"),
        ("hardware.links.pcie.bandwidth=1e-300 GB/s", "hardware.links.pcie.bandwidth"),
        ("hardware.hbm.capacity=99999999999999 experts", "hardware.hbm.capacity"),
        ("policies[1].params.slots=1e30", "policies[1].params.slots"),
        ("seed=9223372036854775808", "seed"),
    ],
)
def test_edge_numbers_in_a_scenario_are_one_line(world: Path, override: str, naming: str) -> None:
    with world_copy(world, "scenario.yaml", "dump") as work:
        for command in ("validate", "run"):
            argv = [command, str(work / "scenario.yaml"), "--set", override]
            if command == "run":
                argv += ["--out", str(work / "out")]
            assert_refused(run_cli(argv), naming=naming)
        assert not (work / "out").exists()


# -- arrays read from files -----------------------------------------------------------------------
def test_an_object_array_in_an_npz_is_refused(tmp_path: Path) -> None:
    ids = np.empty((4, 2, 2), dtype=object)
    ids[...] = 1
    np.savez(tmp_path / "x.npz", expert_ids=ids)
    outcome = run_cli(
        ["trace", "import", "numpy", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")]
    )
    line = assert_refused(outcome, naming="x.npz")
    assert "pickle" in line.lower() or "object" in line.lower()
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("gate_weights", np.full((4, 2, 2), 1 + 2j)),
        ("gate_weights", np.full((4, 2, 2), "a")),
        ("gate_weights", np.full((4, 2, 2), 1e300)),  # inf once float32
        ("token_ids", np.full(4, 2**63 + 5, dtype=np.uint64)),
        ("expert_ids", np.full((4, 2, 2), 2**63 + 5, dtype=np.uint64)),
    ],
)
def test_arrays_are_checked_before_use(tmp_path: Path, name: str, array: np.ndarray) -> None:
    ids = np.tile(np.array([[0, 1], [2, 3]]), (4, 1, 1))
    arrays = {"expert_ids": ids, name: array}
    np.savez(tmp_path / "x.npz", **arrays)
    outcome = run_cli(
        ["trace", "import", "numpy", str(tmp_path / "x.npz"), "--out", str(tmp_path / "o")]
    )
    assert_refused(outcome, naming="x.npz")


def test_huge_integers_in_json_lines_are_one_line(tmp_path: Path) -> None:
    for record in (
        {"layer": 2, "token": 0, "expert_ids": [10**30, 1]},
        {"layer": 2, "token": 0, "expert_ids": [0, 1], "gate_weights": [10**400, 1]},
        {"layer": 2, "token": 0, "expert_ids": [0, 1], "token_id": 10**30},
    ):
        path = tmp_path / "x.jsonl"
        path.write_text(json.dumps(record) + "\n", encoding="utf-8")
        assert_refused(
            run_cli(["trace", "import", "jsonl", str(path), "--out", str(tmp_path / "o")])
        )


def test_cost_table_integers_beyond_int64(world: Path) -> None:
    with world_copy(world, "costs") as work:
        table = work / "costs" / "1st" / "npu" / "2" / "SA_stage_E.txt"
        text = table.read_text(encoding="utf-8")
        row = next(line for line in text.splitlines() if re.match(r"^\s*\d+\s+\d+", line))
        cells = row.split()
        cells[1] = "9" * 25
        table.write_text(text.replace(row, "  ".join(cells)), encoding="utf-8")
        assert_refused(run_cli(["costs", "neupims", str(work / "costs")]), naming="int64")
        routing = work / "costs" / "2nd" / "layer3.txt"
        table.write_text(text, encoding="utf-8")
        lines = routing.read_text(encoding="utf-8").splitlines()
        i = next(i for i, line in enumerate(lines) if re.match(r"^Expert\s+\d+", line))
        lines[i] = re.sub(r"^(Expert\s+\d+\s+)\d+", r"\g<1>" + "9" * 20, lines[i])
        routing.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert_refused(run_cli(["costs", "neupims", str(work / "costs")]), naming="layer3.txt")


# -- command-line flags ------------------------------------------------------------------------------
@functools.cache
def numeric_flags() -> list[tuple[str, argparse.Action]]:
    """(command, action) of every flag whose type converts text to a number."""
    found: list[tuple[str, argparse.Action]] = []

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
            elif action.type is not None and action.type not in (str, Path):
                found.append((prefix, action))

    walk(build_parser(), "")
    return found


def test_every_numeric_flag_has_a_range() -> None:
    flags = numeric_flags()
    assert len(flags) > 20
    loose = [
        f"{command} {action.option_strings}"
        for command, action in flags
        if not isinstance(action.type, NumberRange)
    ]
    assert loose == [], f"numeric flags without a range (use _options.int_range): {loose}"


EDGE_TEXTS = ("0", "-1", "1", "1e3", "2147483648", "9" * 30, "9" * 5000, "nan", "inf", "-inf", "")
EDGE_TEXTS += ("0.5", "1_000", " 7 ", "1e400", "0x10")


@settings(max_examples=200, deadline=None, database=None)
@given(
    pick=st.integers(0, 10_000), text=st.one_of(st.sampled_from(EDGE_TEXTS), st.text(max_size=8))
)
def test_fuzzed_flag_values(pick: int, text: str) -> None:
    flags = numeric_flags()
    _, action = flags[pick % len(flags)]
    kind: NumberRange = action.type  # type: ignore[assignment]
    try:
        value = kind(text)
    except argparse.ArgumentTypeError as err:
        assert "\n" not in str(err) and "expected" in str(err)
        return
    assert math.isfinite(value) and kind.lo <= value <= kind.hi


@pytest.mark.parametrize(
    "flags",
    [["--dpi", "0"], ["--dpi", "100000"], ["--window", "0:99999999999"], ["--window", "5:2"]],
)
def test_report_flags_out_of_range_are_one_line(world: Path, flags: list[str]) -> None:
    with world_copy(world, "run") as work:
        before = sorted(p.name for p in (work / "run").iterdir())
        outcome = run_cli(["report", str(work / "run"), *flags], timeout=20)
        assert_refused(outcome, naming=flags[0])
        assert sorted(p.name for p in (work / "run").iterdir()) == before


def test_a_window_wider_than_the_run_is_drawn_quickly(world: Path) -> None:
    with world_copy(world, "run") as work:
        outcome = run_cli(
            ["report", str(work / "run"), "--format", "html", "--window", "0:1000000"]
        )
        assert outcome.code == 0, outcome
