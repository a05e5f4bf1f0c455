"""`moesim search` on the sweep's reliability machinery: a resume over changed inputs is
refused (`check_resumed_inputs`, as for sweeps: tests/test_sweep_inputs.py), and a worker
killed from outside is one line naming the search point it ran (`worker_died`, as for
sweeps: tests/test_worker_death.py); the finished points are kept and ``--resume`` completes
the search to the files of an uninterrupted one."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest
from attack_world import assert_refused, world_copy
from test_fuzz_shards import run_cli

from sim.errors import UserError
from sim.search.question import load_question
from sim.search.run import run_search
from sim.sweep import PointOutcome, PointTask, run_point

SEARCH = [
    *("--policy", "lru", "--vary", "hardware.links.pcie.bandwidth"),
    *("--range", "16 GB/s:64 GB/s", "--target", "mean_step <= 1 s", "--tolerance", "20%"),
    *("--jobs", "1", "--no-progress", "--no-report"),
]


def search(work: Path, *flags: str) -> Any:
    return run_cli(["search", str(work / "scenario.yaml"), *SEARCH, *flags])


def synth(dump: Path, seed: int) -> None:
    argv = ["trace", "synth", "--out", str(dump), "--force", "--seed", str(seed)]
    argv += ["--layers", "2-3", "--num-shards", "1", "--micro-batch-size", "2"]
    argv += ["--seq-len", "4", "--experts", "8", "--topk", "2"]
    assert run_cli(argv).code == 0


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_resumed_search_over_another_trace_at_the_same_path_is_refused(world: Path) -> None:
    with world_copy(world, "scenario.yaml", "dump") as work:
        out = work / "search-out"
        assert search(work, "--out", str(out)).code == 0
        before = files(out)
        assert search(work, "--resume", str(out)).code == 0  # same trace: resumes, reruns none
        assert files(out) == before
        synth(work / "dump", seed=7)
        line = assert_refused(search(work, "--resume", str(out)), naming="the trace (sha256:")
        assert re.search(r"search point \(hardware\.links\.pcie\.bandwidth=[^)]*policy lru\)", line)
        assert "new --out" in line, line
        assert files(out) == before  # nothing written


def dying_point(task: PointTask) -> PointOutcome:
    """A point function whose worker (any process but the driver's) SIGKILLs itself, as the
    OOM killer would, when $SEARCH_TEST_DRIVER names the driver."""
    driver = os.environ.get("SEARCH_TEST_DRIVER")
    if driver and os.getpid() != int(driver):
        os.kill(os.getpid(), signal.SIGKILL)
    return run_point(task)


def test_a_killed_worker_names_its_search_point_and_resume_completes(
    world: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with world_copy(world, "scenario.yaml", "dump") as work:
        question = load_question(
            work / "scenario.yaml",
            ["hardware.links.pcie.bandwidth"],
            ["16 GB/s:64 GB/s"],
            "mean_step <= 1 s",
            tolerance="20%",
            policies=["lru", "seed-split"],
        )
        run_search(question, work / "ref", jobs=1)
        out = work / "out"
        monkeypatch.setenv("SEARCH_TEST_DRIVER", str(os.getpid()))
        with pytest.raises(UserError) as err:
            run_search(question, out, jobs=2, point_fn=dying_point)
        message = str(err.value)
        assert "\n" not in message, message
        assert re.search(
            r"a worker process died while running search point "
            r"\(hardware\.links\.pcie\.bandwidth=[\d.]+ GB/s, policy (lru|seed-split)\)",
            message,
        ), message
        assert "were running too" in message and f"--resume {out}" in message, message
        monkeypatch.delenv("SEARCH_TEST_DRIVER")
        report = run_search(question, out, resume=True, jobs=2)
        assert report.ran > 0
        for name in ("search.csv", "search.json"):
            assert (out / name).read_bytes() == (work / "ref" / name).read_bytes()
