"""Family 5 (and the YAML half of family 4): the one YAML loader, sim/yamlio.py.

A key given twice in one mapping is refused naming both lines (PyYAML keeps the last one
silently: a second ``hardware:`` block replaced the first); aliases that would expand past the
limit are refused with the count, before anything is built, even under a key the schema ignores
(``provenance:``); every YAML moesim reads goes through this loader (scenario, sweep,
trace.yaml, a sweep manifest, ``--set`` values, presets).

The property tests generate documents, serialise them, duplicate a random key and check that
the loader names exactly the two lines, and that documents without duplicates load exactly as
``yaml.safe_load`` does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from attack_world import assert_refused, world_copy
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_shards import run_cli

from sim.errors import UserError
from sim.limits import MAX_ALIAS_NODES
from sim.yamlio import parse_yaml


# -- the CLI --------------------------------------------------------------------------------------
def test_a_second_hardware_block_is_refused_naming_both_lines(world: Path) -> None:
    with world_copy(world, "scenario.yaml", "dump") as work:
        path = work / "scenario.yaml"
        text = path.read_text(encoding="utf-8")
        first = 1 + next(i for i, line in enumerate(text.splitlines()) if line == "hardware:")
        path.write_text(text + "hardware: notebook-gbps\n", encoding="utf-8")
        last = len(path.read_text(encoding="utf-8").splitlines())
        for argv in (["validate", str(path)], ["run", str(path), "--out", str(work / "o")]):
            line = assert_refused(run_cli(argv), naming="'hardware' again")
            assert f"line {last}" in line and f"first at line {first}" in line, line
        assert not (work / "o").exists()


def test_a_grid_field_twice_in_a_sweep(world: Path) -> None:
    with world_copy(world, "sweep.yaml", "dump") as work:
        path = work / "sweep.yaml"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["sweep"]["grid"]["seed"] = [1, 2]
        text = yaml.safe_dump(doc, sort_keys=False)
        text = text.replace("    seed:", "    hardware.links.pcie.bandwidth:")
        path.write_text(text, encoding="utf-8")
        out = work / "o"
        line = assert_refused(run_cli(["sweep", str(path), "--out", str(out), "--jobs", "1"]))
        assert "hardware.links.pcie.bandwidth" in line and "again" in line
        assert not out.exists()


def test_duplicates_in_trace_yaml_and_in_set_values(world: Path) -> None:
    with world_copy(world, "scenario.yaml", "dump") as work:
        tf = work / "dump" / "trace.yaml"
        tf.write_text(tf.read_text(encoding="utf-8") + "k: 2\n", encoding="utf-8")
        assert_refused(run_cli(["validate", str(work / "scenario.yaml")]), naming="'k' again")
        tf.write_text(tf.read_text(encoding="utf-8").replace("k: 2\n", ""), encoding="utf-8")
        argv = ["validate", str(work / "scenario.yaml"), "--set", "hardware={hbm: 1, hbm: 2}"]
        assert_refused(run_cli(argv), naming="--set hardware")


def test_an_alias_bomb_under_an_ignored_key_is_cheap_and_refused(world: Path) -> None:
    """Nine levels of nine aliases under ``provenance:`` (which run ignores) hung ``sweep``
    while 4.6 GB of copies were made; now every command refuses it with the count."""
    lines = ["provenance:", "  l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\n"
    with world_copy(world, "scenario.yaml", "sweep.yaml", "dump") as work:
        for name in ("scenario.yaml", "sweep.yaml"):
            path = work / name
            path.write_text(path.read_text(encoding="utf-8") + bomb, encoding="utf-8")
        for argv in [
            ["run", str(work / "scenario.yaml"), "--out", str(work / "o")],
            ["sweep", str(work / "sweep.yaml"), "--out", str(work / "o")],
            ["validate", str(work / "sweep.yaml")],
        ]:
            line = assert_refused(run_cli(argv, timeout=10), naming=f"{MAX_ALIAS_NODES:,}")
            assert "aliases to expand" in line
            assert not (work / "o").exists()


# -- the loader ----------------------------------------------------------------------------------
def test_merge_keys_and_ordinary_aliases_still_work() -> None:
    text = "base: &b {a: 1, b: 2}\nc:\n  <<: *b\n  a: 3\nd: *b\n"
    assert parse_yaml(text, "x") == yaml.safe_load(text)
    with pytest.raises(UserError, match="recursive"):
        parse_yaml("a: &a [*a]\n", "x")


KEYS = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)
SCALARS = st.one_of(st.integers(-5, 5), st.booleans(), st.text(alphabet="xyz ", max_size=5))
DOCS = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, min_size=1, max_size=4)
    ),
    max_leaves=12,
).filter(lambda d: isinstance(d, dict))


def _key_lines(text: str) -> list[tuple[int, str, str]]:
    """(line index, indent, key) of every block-style ``key:`` line."""
    found = []
    for i, line in enumerate(text.splitlines()):
        match = re.match(r"^(\s*(?:- )?)([a-j_]+):( |$)", line)
        if match:
            found.append((i, match.group(1), match.group(2)))
    return found


@settings(max_examples=150, deadline=None, database=None)
@given(doc=DOCS, pick=st.floats(0, 1, exclude_max=True))
def test_any_duplicated_key_is_refused_naming_both_lines(doc: dict, pick: float) -> None:
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    assert parse_yaml(text, "doc.yaml") == yaml.safe_load(text)  # no duplicate: the same
    keys = _key_lines(text)
    index, indent, key = keys[int(pick * len(keys))]
    lines = text.splitlines()
    # the duplicate goes right after the key's own block, at the key's column (children are
    # deeper; PyYAML writes a list value at the key's own column, each item starting "- ")
    column = len(indent)
    end = index + 1
    while end < len(lines):
        depth = len(lines[end]) - len(lines[end].lstrip())
        if depth > column or (depth == column and lines[end].lstrip().startswith("- ")):
            end += 1
        else:
            break
    edited = [*lines[:end], f"{' ' * column}{key}: 1", *lines[end:]]
    with pytest.raises(UserError) as err:
        parse_yaml("\n".join(edited) + "\n", "doc.yaml")
    message = str(err.value)
    assert f"line {end + 1}:" in message and f"first at line {index + 1})" in message, (
        message,
        "\n".join(edited),
    )
    assert repr(key) in message
