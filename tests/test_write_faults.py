"""Family 2: operating-system errors on write are one line, exit 2, and leave no half-finished
visible output.

The tests run as root, for whom ``chmod`` does not make a directory read-only, so the errors
are injected: `attack_world.write_faults` counts every write operation of a command (temporary
files and directories created, data written, renames, mkdir) and makes the N-th raise EROFS,
ENOSPC, EFBIG, EACCES, EDQUOT or EIO. Whatever N, a command must end in:

* exit 2, one line naming the path and the error (``ENOSPC``), and its output as it was before
  (a new results directory absent, a replaced trace untouched, a report's directory with the
  same files), no hidden temporary file left; a sweep keeps only complete files and says how
  to resume;
* or exit 0 with its complete output (N beyond its last write).
"""

from __future__ import annotations

import csv
import errno
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from attack_world import (
    FUZZ,
    QUIET,
    WRITE_ERRNOS,
    assert_refused,
    hidden_leftovers,
    world_copy,
    write_faults,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_shards import run_cli

SYNTH = ["--layers", "2-3", "--num-shards", "2", "--micro-batch-size", "2", "--seq-len", "4"]
SYNTH += ["--experts", "8", "--topk", "2"]

# writer -> (argv given the world copy W and output O, how its output may look after a failure)
WRITERS: dict[str, tuple[Callable[[Path, Path], list[str]], str]] = {
    "run": (lambda w, o: ["run", str(w / "scenario.yaml"), "--out", str(o), "--quiet"], "new"),
    "run-timeline": (
        lambda w, o: [
            *["run", str(w / "scenario.yaml"), "--out", str(o), "--quiet"],
            "--timeline",
        ],
        "new",
    ),
    "sweep": (lambda w, o: ["sweep", str(w / "sweep.yaml"), "--out", str(o), *QUIET], "sweep"),
    "synth": (lambda w, o: ["trace", "synth", "--out", str(o), *SYNTH], "new"),
    "synth-force": (
        lambda w, o: ["trace", "synth", "--out", str(w / "dump"), "--force", *SYNTH],
        "unchanged",
    ),
    "import": (
        lambda w, o: ["trace", "import", "numpy", str(w / "ids.npz"), "--out", str(o)],
        "new",
    ),
    "stats": (
        lambda w, o: [
            *["trace", "stats", str(w / "dump"), "--out", str(o)],
            *["--layers", "all", "--positions", "all", "--topk", "1,2"],
        ],
        "new",
    ),
    "profile": (lambda w, o: ["trace", "profile", str(w / "dump"), "--out", str(o)], "new"),
    "report": (lambda w, o: ["report", str(w / "run"), "--format", "html,png"], "unchanged"),
    "costs": (
        lambda w, o: ["costs", "neupims", str(w / "costs"), "--no-cells", "--out", str(o)],
        "new",
    ),
    "schema": (lambda w, o: ["schema", "--out", str(o)], "new"),
    "extend": (
        lambda w, o: ["trace", "extend-layers", str(w / "stats"), "--from", "2-3", "--to", "4-5"],
        "unchanged",
    ),
}


# the parts of the world each writer reads (copied per case; "synth" and "schema" read none)
PARTS: dict[str, tuple[str, ...]] = {
    "run": ("scenario.yaml", "dump"),
    "run-timeline": ("scenario.yaml", "dump"),
    "sweep": ("sweep.yaml", "dump"),
    "synth": ("ids.npz",),
    "synth-force": ("dump",),
    "import": ("ids.npz",),
    "stats": ("dump",),
    "profile": ("dump",),
    "report": ("run",),
    "costs": ("costs",),
    "schema": ("ids.npz",),
    "extend": ("stats",),
}


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    if not path.is_dir():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def assert_complete_files(root: Path) -> None:
    for path in root.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        text = path.read_bytes()
        if path.suffix == ".csv":
            rows = list(csv.reader(text.decode().splitlines()))
            assert rows and all(len(r) == len(rows[0]) for r in rows), path
            assert text.endswith(b"\n"), path
        elif path.suffix == ".json":
            json.loads(text)
        elif path.suffix == ".yaml":
            yaml.safe_load(text)


def attack(world: Path, writer: str, code: int, at: int) -> tuple[int, str]:
    argv, kind = WRITERS[writer]
    with world_copy(world, *PARTS[writer]) as work:
        out = work / "out"
        watched = {"report": work / "run", "extend": work / "stats"}.get(writer, work / "dump")
        before = snapshot(watched)
        with write_faults(code, at) as faults:
            outcome = run_cli(argv(work, out))
        assert "Traceback" not in outcome.err, outcome.err
        if not faults.fired:
            assert outcome.code == 0, outcome
            return 0, ""
        assert outcome.code == 2, f"{writer}: the injected {errno.errorcode[code]} was swallowed"
        # warnings about the input (the shipped tables' defects, an uncalibrated synthetic
        # depth) come first; the error is the one other line
        kept = [x for x in outcome.err.splitlines() if not x.startswith("warning: ")]
        outcome = replace(outcome, err="\n".join(kept) + "\n")
        line = assert_refused(outcome, naming=errno.errorcode[code])
        assert hidden_leftovers(work) == [], hidden_leftovers(work)
        if kind == "new":
            assert not out.exists(), f"{writer} left {sorted(snapshot(out))}"
        elif kind == "unchanged":
            assert snapshot(watched) == before, f"{writer} changed {watched}"
        else:  # a sweep keeps its finished points, each complete, and says how to resume
            if out.exists():
                assert_complete_files(out)
                if (out / "points").is_dir() and any((out / "points").iterdir()):
                    assert "--resume" in line, line
        return 2, line


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("code", [errno.EROFS, errno.EFBIG])
def test_the_first_write_fails(world: Path, writer: str, code: int) -> None:
    assert attack(world, writer, code, 1)[0] == 2


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_late_write_fails(world: Path, writer: str) -> None:
    """The fault lands on the command's last write operations (counted first)."""
    argv, _ = WRITERS[writer]
    with world_copy(world, *PARTS[writer]) as work, write_faults(errno.ENOSPC, 10**9) as counter:
        assert run_cli(argv(work, work / "out")).code == 0
    for at in {counter.seen, max(1, counter.seen // 2)}:
        assert attack(world, writer, errno.ENOSPC, at)[0] == 2


@settings(max_examples=25, **FUZZ)
@given(
    writer=st.sampled_from(sorted(WRITERS)),
    code=st.sampled_from(WRITE_ERRNOS),
    at=st.integers(1, 60),
)
def test_fuzzed_write_faults(world: Path, writer: str, code: int, at: int) -> None:
    attack(world, writer, code, at)


@pytest.mark.slow
@settings(max_examples=800, **FUZZ)
@given(
    writer=st.sampled_from(sorted(WRITERS)),
    code=st.sampled_from(WRITE_ERRNOS),
    at=st.integers(1, 200),
)
def test_fuzzed_write_faults_long(world: Path, writer: str, code: int, at: int) -> None:
    attack(world, writer, code, at)


def test_an_output_naming_a_device_is_refused_not_replaced(tmp_path: Path) -> None:
    """``--out /dev/null`` renamed a file over the device node (as root, that replaces it)."""
    import os
    import stat

    device = tmp_path / "null"
    try:
        os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    line = assert_refused(run_cli(["schema", "--out", str(device)]), naming="a device")
    assert str(device) in line
    assert stat.S_ISCHR(os.stat(device).st_mode)  # still the device
