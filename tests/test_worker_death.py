"""Family 10: a worker process killed from outside (the OOM killer, a signal).

In the local process pool that was a BrokenProcessPool traceback. Now it is one line naming the
point the dead worker ran (and the others then running), the finished points are kept, and
``--resume`` completes the sweep to the same table as an uninterrupted one. Dask's
``KilledWorker`` reads the same. The multiprocessing resource tracker (a separate process on our
stderr) is started with its leaked-semaphore warning filtered, so a successful run prints
nothing there.

The property test kills the workers of random sets of points (SIGKILL from inside the point,
as the OOM killer would); the CLI test kills a real worker of ``moesim sweep --jobs 2``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from attack_world import FUZZ
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_shards import run_cli
from test_sweep import _set, _table

from sim.errors import UserError
from sim.sweep import PointOutcome, PointTask, run_sweep, sweep_from_dict
from sim.sweep.executors import quiet_resource_tracker

DIE_ENV = "MOESIM_TEST_DIE"  # points whose worker kills itself (read in the forked worker)


def dying_point(task: PointTask) -> PointOutcome:
    """A point function whose worker is SIGKILLed for the points listed in $MOESIM_TEST_DIE."""
    doomed = {int(x) for x in os.environ.get(DIE_ENV, "").split(",") if x}
    if task.point.index in doomed and os.getpid() != task.document["driver_pid"]:
        os.kill(os.getpid(), signal.SIGKILL)
    bw = task.document["hardware"]["bw"]
    rows = ({"policy": "seed-split", "label": "seed-split", "topk": 1, "mean_step": 1.0 / bw},)
    return PointOutcome(task.point.point_id, rows, 0.0)


def _doc(points: int) -> dict[str, Any]:
    return {
        "name": "death",
        "seed": 0,
        "driver_pid": os.getpid(),
        "hardware": {"bw": 1},
        "routing": {"topk": [1]},
        "policies": ["seed-split"],
        "sweep": {"grid": {"hardware.bw": list(range(1, points + 1))}},
    }


def _run(out: Path, points: int, **kwargs: Any) -> Any:
    spec = sweep_from_dict(_doc(points), "s.yaml")
    return run_sweep(
        spec, out, progress=False, point_fn=dying_point, validate=lambda d, s: d,
        set_dotted=_set, **kwargs,
    )  # fmt: skip


@settings(max_examples=8, **FUZZ)
@given(points=st.integers(2, 8), doomed=st.sets(st.integers(0, 7), min_size=1, max_size=3))
def test_killed_workers_are_one_line_and_resume_completes(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    points: int,
    doomed: set[int],
) -> None:
    base = tmp_path_factory.mktemp("death")
    _run(base / "ref", points, jobs=1)  # the uninterrupted reference (in this process)
    out = base / "out"
    doomed = {d % points for d in doomed}
    monkeypatch.setenv(DIE_ENV, ",".join(map(str, sorted(doomed))))
    with pytest.raises(UserError) as err:
        _run(out, points, jobs=2)
    message = str(err.value)
    assert "\n" not in message and "a worker process died while running sweep point" in message
    named = {int(x) for x in message.split("sweep point ")[1].split(" (")[0].split(",")}
    assert named & doomed or "were running too" in message, message
    assert f"--resume {out}" in message
    for path in (out / "points").glob("*.json") if (out / "points").is_dir() else ():
        assert json.loads(path.read_text())["rows"]  # every kept point is complete
    monkeypatch.delenv(DIE_ENV)
    report = _run(out, points, jobs=2, resume=True)
    assert report.total == points
    assert _table(out) == _table(base / "ref")


def test_a_worker_killed_under_a_real_sweep(tmp_path: Path) -> None:
    """``moesim sweep --jobs 2``: SIGKILL one of its workers while the sweep runs."""
    dump = tmp_path / "dump"
    argv = ["trace", "synth", "--out", str(dump), "--layers", "2-3", "--num-shards", "1"]
    assert run_cli([*argv, "--micro-batch-size", "4", "--seq-len", "64"]).code == 0
    doc = {
        "name": "death",
        "trace": str(dump),
        "hardware": {"preset": "notebook-gbytes", "hbm": {"capacity": "8 experts"}},
        "policies": ["seed-split"],
        "sweep": {"grid": {"policies": ["lru", "seed-split"], "seed": [0, 1]}},
    }
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump(doc), encoding="utf-8")
    for attempt in range(3):  # the kill may land after the last point: try again
        out = tmp_path / f"out{attempt}"
        code, err = _sweep_and_kill_a_worker(sweep, out)
        if code == 2:
            break
    else:
        pytest.fail("three sweeps finished before a worker could be killed")
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "a worker process died while running sweep point" in lines[0]
    assert f"--resume {out}" in lines[0]
    resumed = run_cli(["sweep", str(sweep), "--resume", str(out), "--jobs", "1"])
    assert resumed.code == 0 and resumed.err == "", resumed
    assert (out / "sweep.csv").is_file()


def _sweep_and_kill_a_worker(sweep: Path, out: Path) -> tuple[int, str]:
    """``moesim sweep --jobs 2`` run as the CLI runs it (in this process, its pool workers
    forked from it), while a thread SIGKILLs its first pool worker: (exit code, stderr)."""
    quiet_resource_tracker()  # started now, so that the thread below never takes it for a
    before = set(_children(os.getpid()))  # worker (a fresh fork still has our cmdline)
    stop = threading.Event()

    def killer() -> None:
        while not stop.is_set():
            new = [c for c in _children(os.getpid()) if c not in before]
            if new:
                os.kill(new[0], signal.SIGKILL)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        outcome = run_cli(["sweep", str(sweep), "--out", str(out), "--jobs", "2"], timeout=120)
    finally:
        stop.set()
        thread.join()
    return outcome.code, outcome.err


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
            continue
        with open(entry / "cmdline", "rb") as handle:
            if b"resource_tracker" not in handle.read():  # a pool worker, not the tracker
                found.append(int(entry.name))
    return found


def test_the_resource_tracker_warning_is_filtered() -> None:
    """A leaked semaphore makes the tracker warn at exit; started by moesim, it stays quiet."""
    code = (
        "import os, multiprocessing as mp\n"
        "from sim.sweep.executors import quiet_resource_tracker\n"
        "quiet_resource_tracker()\n"
        "s = mp.get_context('spawn').Semaphore(1)\n"
        "os._exit(0)\n"
    )
    # the tracker holds our stderr pipe: run() returns once it has exited and written
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    plain = code.replace("quiet_resource_tracker()\n", "")
    loud = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, timeout=60)
    assert "leaked semaphore" in loud.stderr  # what the filter keeps from the user
