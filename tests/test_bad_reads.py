"""Family 1: every file moesim reads goes through one opener (sim/opener.py).

A FIFO, a directory, a symlink loop, a dangling symlink, a device or a file this process may
not read, wherever a file is expected (scenario and sweep YAML, trace.yaml, shards, cost
tables, .npz/.jsonl/.parquet imports, results directories read back, a sweep manifest), is
one line naming that path, exit 2, nothing written: never a hang (a FIFO blocks ``open``), a
RuntimeError (``Path.resolve`` on a loop), or a file silently skipped.

The explicit cases name the file each command must read; the fuzzer replaces a random file of
a command's inputs by a random kind and requires exit 0 or one line (a file a command does not
need may be anything).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from attack_world import (
    COMMANDS,
    FUZZ,
    KINDS,
    assert_refused,
    files_under,
    make_bad,
    run_command,
    unreadable,
    world_copy,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from sim import opener
from sim.errors import UserError

# command -> files (relative to the world) it cannot do without
MUST_READ = {
    "validate": ("scenario.yaml", "dump/trace.yaml"),
    "run": ("scenario.yaml", "dump/trace.yaml", "dump/samples/synthetic/synth/0-0.pt"),
    "sweep": ("sweep.yaml", "dump/actives/synthetic/synth/0/2/0-0.pt"),
    "resume": ("sweep-out/sweep.resolved.yaml",),
    "stats": ("dump/trace.yaml", "dump/actives/synthetic/synth/0/3/0-0.pt"),
    "costs": ("costs/1st/layer2.txt", "costs/3rd/npu/4/SA_stage_E.txt"),
    "numpy": ("ids.npz",),
    "jsonl": ("rows.jsonl",),
    "parquet": ("pq/actives/iter_0001/layer_02.parquet", "pq/samples/000.parquet"),
    "report": ("run/summary.csv", "run/per_step.csv", "run/scenario.resolved.yaml"),
    "report-sweep": ("sweep-out/sweep.csv",),
}
# outputs a command writes and then reads back itself (never unreadable to it in practice)
REWRITTEN = {"resume": ("sweep-out/sweep.csv", "sweep-out/sweep.parquet")}
CASES = [(cmd, rel) for cmd, files in MUST_READ.items() for rel in files]


def attack(world: Path, command: str, rel: str, kind: str) -> tuple[int, str]:
    """Replace ``rel`` by ``kind`` in a copy of the world and run ``command``; returns the
    exit code and the error line (checked to be one line when the code is 2)."""
    _, parts = COMMANDS[command]
    with world_copy(world, *parts) as work:
        target = work / rel
        make_bad(target, kind)
        out = work / "out"
        with unreadable(target if kind == "unreadable" else None):
            outcome = run_command(command, work, out)
        assert "Traceback" not in outcome.err, outcome.err
        assert outcome.code in (0, 2), outcome
        if outcome.code == 2:
            line = assert_refused(outcome)
            assert not out.exists() or command.startswith("report"), "output of a refused run"
            return 2, line
        return 0, ""


@pytest.mark.parametrize(("command", "rel"), CASES)
@pytest.mark.parametrize("kind", ["fifo", "symlink-loop", "unreadable"])
def test_a_needed_file_that_cannot_be_read_is_one_line(
    world: Path, command: str, rel: str, kind: str
) -> None:
    code, line = attack(world, command, rel, kind)
    assert code == 2, f"{command} read past a {kind} at {rel}"
    assert Path(rel).name in line, line


@pytest.mark.parametrize("kind", ["directory", "dangling-symlink", "device"])
def test_other_kinds_where_a_scenario_is_expected(world: Path, kind: str) -> None:
    code, line = attack(world, "run", "scenario.yaml", kind)
    assert code == 2 and "scenario.yaml" in line, line
    expected = {"directory": "a directory", "dangling-symlink": "a dangling symlink"}
    assert expected.get(kind, "a device") in line


def test_a_trace_path_that_is_a_symlink_loop(world: Path) -> None:
    """``trace:`` naming a symlink loop was a RuntimeError from ``Path.resolve``."""
    with world_copy(world, "scenario.yaml", "dump") as work:
        (work / "loop").symlink_to("loop")
        text = (work / "scenario.yaml").read_text(encoding="utf-8")
        (work / "scenario.yaml").write_text(text.replace("trace: dump", "trace: loop"))
        outcome = run_command("validate", work, work / "out")
        line = assert_refused(outcome, naming="trace.path")
        assert "a symlink loop" in line


def test_the_opener_never_blocks_and_says_what_it_found(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path, kind in [
        (fifo, "a FIFO"),
        (tmp_path, "a directory"),
        (tmp_path / "missing", "nothing (missing)"),
        (Path("/dev/null"), "a device"),
    ]:
        with pytest.raises(UserError, match=kind.replace("(", r"\(").replace(")", r"\)")):
            opener.read_bytes(path, "a file")
    big = tmp_path / "big"
    big.write_bytes(b"x" * 100)
    with pytest.raises(UserError, match="at most 10 bytes, got 100 bytes"):
        opener.read_bytes(big, "a file", limit=10)
    assert opener.read_bytes(big, "a file", limit=100) == b"x" * 100


# -- the fuzzer: any input file of any command, replaced by any kind ---------------------------------
@st.composite
def attacks(draw: st.DrawFn) -> tuple[str, float, str]:
    command = draw(st.sampled_from(sorted(COMMANDS)))
    return command, draw(st.floats(0, 1, exclude_max=True)), draw(st.sampled_from(KINDS))


def check_random_attack(world: Path, command: str, pick: float, kind: str) -> None:
    _, parts = COMMANDS[command]
    files = [p.relative_to(world) for p in files_under(world, parts)]
    if kind == "unreadable":  # files the command writes anew can be read back by it
        files = [f for f in files if str(f) not in REWRITTEN.get(command, ())]
    rel = str(files[int(pick * len(files))])
    code, line = attack(world, command, rel, kind)
    if rel in MUST_READ.get(command, ()):
        assert code == 2 and Path(rel).name in line, (command, rel, kind, line)


@settings(max_examples=25, **FUZZ)
@given(case=attacks())
def test_fuzzed_non_regular_inputs(world: Path, case: tuple[str, float, str]) -> None:
    check_random_attack(world, *case)


@pytest.mark.slow
@settings(max_examples=600, **FUZZ)
@given(case=attacks())
def test_fuzzed_non_regular_inputs_long(world: Path, case: tuple[str, float, str]) -> None:
    check_random_attack(world, *case)
