"""Family 6: outputs replaced in place.

``trace synth/import --force`` over an older trace left its extra shards and layers behind,
trace.yaml then disagreed with the files, ``trace info`` said nothing and ``run`` used the stale
layers. Now a trace directory is built aside and swapped with the old one in one step
(`sim.atomic.staged_dir`, ``replace``), trace.yaml lists the layers and shards it was written
with (loading "all" takes those), and ``trace info`` compares trace.yaml with the files.

The fuzzer writes a random older trace, replaces it with a random newer one, and checks that
exactly the newer trace's files are there; then it plants a random leftover (a layer directory,
a shard, another k) and checks that ``trace info`` names it and loading ignores it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from attack_world import FUZZ, assert_refused
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_shards import run_cli

from sim.trace.open import open_trace


def synth(out: Path, layers: str, shards: int, *extra: str) -> None:
    argv = ["trace", "synth", "--out", str(out), "--layers", layers, "--num-shards", str(shards)]
    argv += ["--micro-batch-size", "2", "--seq-len", "4", "--experts", "8", "--topk", "2"]
    outcome = run_cli([*argv, *extra])
    assert outcome.code == 0, outcome


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def info(root: Path) -> dict:
    outcome = run_cli(["trace", "info", str(root), "--json"])
    assert outcome.code == 0, outcome
    return json.loads(outcome.out)


def test_force_replaces_the_whole_trace(tmp_path: Path) -> None:
    old, fresh = tmp_path / "t", tmp_path / "fresh"
    synth(old, "2-5", 3)
    synth(old, "2-3", 1, "--seed", "5", "--force")
    synth(fresh, "2-3", 1, "--seed", "5")
    assert files(old) == files(fresh)
    assert info(old)["problems"] == []
    a, b = open_trace(old), open_trace(fresh)
    assert (a.experts == b.experts).all() and a.layer_ids == b.layer_ids == (2, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing set aside


def test_force_never_replaces_a_directory_that_is_not_a_trace(tmp_path: Path) -> None:
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("precious", encoding="utf-8")
    argv = ["trace", "synth", "--out", str(out), "--force", "--seq-len", "4"]
    assert_refused(run_cli(argv), naming="--force over a trace directory")
    assert files(out) == ["thesis.tex"]


def test_trace_info_and_loading_with_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "t"
    synth(root, "2-3", 1)
    edir = root / "actives" / "synthetic" / "synth" / "0"
    (edir / "7").mkdir()
    for f in (edir / "3").iterdir():
        (edir / "7" / f.name).write_bytes(f.read_bytes())
    problems = info(root)["problems"]
    assert any("layers 7 not in trace.yaml" in p for p in problems), problems
    trace = open_trace(root)
    assert trace.layer_ids == (2, 3)  # the declared layers, never the leftover
    stats = ["trace", "stats", str(root), "--layers", "7", "--positions", "all"]
    assert_refused(run_cli([*stats, "--out", str(tmp_path / "o")]), naming="layers")
    (edir / "3" / "0-0.pt").unlink()  # a declared layer's file lost
    stats[4] = "all"
    line = assert_refused(run_cli([*stats, "--out", str(tmp_path / "o")]))
    assert "0-0.pt" in line
    assert not (tmp_path / "o").exists()


# -- the fuzzer --------------------------------------------------------------------------------------
LAYER_SETS = ("2", "2-3", "2-5", "3-4", "5")
LEFTOVERS = ("layer", "shard", "k")


@settings(max_examples=12, **FUZZ)
@given(
    old=st.tuples(st.sampled_from(LAYER_SETS), st.integers(1, 3)),
    new=st.tuples(st.sampled_from(LAYER_SETS), st.integers(1, 3)),
    leftover=st.sampled_from(LEFTOVERS),
)
def test_fuzzed_replacements_and_leftovers(
    tmp_path_factory: pytest.TempPathFactory,
    old: tuple[str, int],
    new: tuple[str, int],
    leftover: str,
) -> None:
    base = tmp_path_factory.mktemp("replace")
    root, fresh = base / "t", base / "fresh"
    synth(root, *old)
    synth(root, *new, "--force")
    synth(fresh, *new)
    assert files(root) == files(fresh)
    assert info(root)["problems"] == []
    expected = open_trace(fresh)
    edir = root / "actives" / "synthetic" / "synth" / "0"
    first = sorted(edir.iterdir(), key=lambda p: int(p.name))[0]
    if leftover == "layer":
        (edir / "99").mkdir()
        for f in first.iterdir():
            (edir / "99" / f.name).write_bytes(f.read_bytes())
        naming = "layers 99 not in trace.yaml"
    elif leftover == "shard":
        sdir = root / "samples" / "synthetic" / "synth"
        (sdir / "0-9.pt").write_bytes((sdir / "0-0.pt").read_bytes())
        naming = "shards 0-9 not in trace.yaml"
    else:
        for f in first.iterdir():
            scores, ids = torch.load(f, weights_only=True)
            torch.save((scores[:, :1].contiguous(), ids[:, :1].contiguous()), f)
        naming = "k is 2, the actives files hold top-1"
    problems = info(root)["problems"]
    assert any(naming in p for p in problems), problems
    if leftover != "k":  # the declared inventory is loaded, the leftover ignored
        got = open_trace(root)
        assert got.layer_ids == expected.layer_ids and (got.experts == expected.experts).all()
