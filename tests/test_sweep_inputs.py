"""Family 7: a resumed sweep never mixes two inputs in one table.

Every point file and the manifest record the sha256 of the trace (and of the cost tables) the
point ran on; ``--resume`` refuses when the inputs the points would use now differ, naming the
input and both checksums, and writes nothing. The fuzzer edits the world's trace in place
(another seed at the same path, one expert id, one score, one token id, or the same tensors
saved again) and checks that the resume is refused exactly when the tensors changed (decided
by comparing the tensors themselves, not by the checksum under test).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import yaml
from attack_world import FUZZ, QUIET, assert_refused, world_copy
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_shards import run_cli

REPO = Path(__file__).resolve().parents[1]


def resume(work: Path, *extra: str) -> object:
    argv = ["sweep", str(work / "sweep.yaml"), "--resume", str(work / "sweep-out"), *QUIET]
    return run_cli([*argv, *extra])


def tensors(dump: Path) -> dict[str, object]:
    return {
        str(p.relative_to(dump)): torch.load(p, weights_only=True)
        for p in sorted(dump.rglob("*.pt"))
    }


def same(a: dict[str, object], b: dict[str, object]) -> bool:
    def eq(x: object, y: object) -> bool:
        if isinstance(x, tuple | list):
            return isinstance(y, tuple | list) and len(x) == len(y) and all(map(eq, x, y))
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)

    return a.keys() == b.keys() and all(eq(a[k], b[k]) for k in a)


def test_a_resume_over_another_trace_at_the_same_path_is_refused(world: Path) -> None:
    with world_copy(world, "sweep.yaml", "dump", "sweep-out") as work:
        before = sorted(p.name for p in (work / "sweep-out").rglob("*"))
        table = (work / "sweep-out" / "sweep.csv").read_bytes()
        argv = ["trace", "synth", "--out", str(work / "dump"), "--force", "--seed", "7"]
        argv += ["--layers", "2-3", "--num-shards", "1", "--micro-batch-size", "2"]
        argv += ["--seq-len", "4", "--experts", "8", "--topk", "2"]
        assert run_cli(argv).code == 0
        line = assert_refused(resume(work), naming="the trace (sha256:")
        assert re.search(r"point \d+ ran on", line) and "new --out" in line, line
        assert sorted(p.name for p in (work / "sweep-out").rglob("*")) == before
        assert (work / "sweep-out" / "sweep.csv").read_bytes() == table


def test_a_grown_grid_over_a_changed_trace_is_refused_and_an_unchanged_one_runs(
    world: Path,
) -> None:
    with world_copy(world, "sweep.yaml", "dump", "sweep-out") as work:
        path = work / "sweep.yaml"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["sweep"]["grid"]["hardware.links.pcie.bandwidth"].append("64 GB/s")
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        assert resume(work).code == 0  # same trace: the grid grows (documented)
        points = work / "sweep-out" / "points"
        assert len(list(points.iterdir())) == 3
        doc["sweep"]["grid"]["hardware.links.pcie.bandwidth"].append("128 GB/s")
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        shard = next((work / "dump" / "actives").rglob("0-0.pt"))
        scores, ids = torch.load(shard, weights_only=True)
        torch.save((scores, ids.flip(1)), shard)  # the same experts, in another order
        assert_refused(resume(work), naming="the trace")
        assert len(list(points.iterdir())) == 3


def test_changed_cost_tables_are_refused(tmp_path: Path) -> None:
    costs = tmp_path / "costs"
    shutil.copytree(REPO / "traces" / "neupims-decoder-bs16", costs)
    doc = yaml.safe_load((REPO / "scenarios" / "neupims-decoder-bs16.yaml").read_text())
    doc["costs"]["path"] = str(costs)
    doc["policies"] = [{"name": "seed-split", "label": "monde"}]
    doc["sweep"] = {"grid": {"hardware.links.pcie.latency": ["0 s"]}}
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = tmp_path / "out"
    assert run_cli(["sweep", str(sweep), "--out", str(out), *QUIET]).code == 0
    table = costs / "1st" / "npu" / "2" / "SA_stage_E.txt"
    lines = table.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if re.match(r"^\s*\d+\s+\d+", line))
    cells = lines[row].split()
    cells[2], cells[5] = str(int(cells[2]) + 1), str(int(cells[5]) + 1)  # fc1 and its total
    lines[row] = "  ".join(cells)
    table.write_text("\n".join(lines) + "\n")
    outcome = run_cli(["sweep", str(sweep), "--resume", str(out), *QUIET])
    assert_refused(outcome, naming="the cost tables (sha256:")


# -- the fuzzer: edits of the trace in place -------------------------------------------------------
EDITS = ("reseed", "poke-id", "poke-score", "poke-token", "resave")


def edit_trace(dump: Path, edit: str, pick: float, seed: int) -> None:
    files = sorted(dump.rglob("*.pt"))
    if edit == "reseed":
        argv = ["trace", "synth", "--out", str(dump), "--force", "--seed", str(seed)]
        argv += ["--layers", "2-3", "--num-shards", "1", "--micro-batch-size", "2"]
        argv += ["--seq-len", "4", "--experts", "8", "--topk", "2"]
        assert run_cli(argv).code == 0
        return
    actives = [f for f in files if "actives" in f.parts]
    samples = [f for f in files if "samples" in f.parts]
    if edit == "poke-token":
        path = samples[int(pick * len(samples))]
        tokens = torch.load(path, weights_only=True).clone()
        tokens[int(pick * 97) % len(tokens)] += 1 + seed
        torch.save(tokens, path)
        return
    path = actives[int(pick * len(actives))]
    scores, ids = (t.clone() for t in torch.load(path, weights_only=True))
    row = int(pick * 89) % ids.shape[0]
    if edit == "poke-id":
        unused = [e for e in range(8) if e not in ids[row].tolist()]
        ids[row, 0] = unused[seed % len(unused)]
    elif edit == "poke-score":
        scores[row, 0] = scores[row, 0] * 2 + 1
    torch.save((scores, ids), path)  # "resave": the same tensors written again


def check_edit(world: Path, edit: str, pick: float, seed: int) -> None:
    with world_copy(world, "sweep.yaml", "dump", "sweep-out") as work:
        before = tensors(work / "dump")
        edit_trace(work / "dump", edit, pick, seed)
        changed = not same(before, tensors(work / "dump"))
        outcome = resume(work)
        if changed:
            assert_refused(outcome, naming="the trace (sha256:")
        else:
            assert outcome.code == 0, outcome


@settings(max_examples=15, **FUZZ)
@given(edit=st.sampled_from(EDITS), pick=st.floats(0, 1, exclude_max=True), seed=st.integers(1, 9))
def test_fuzzed_trace_edits_between_runs(world: Path, edit: str, pick: float, seed: int) -> None:
    check_edit(world, edit, pick, seed)
