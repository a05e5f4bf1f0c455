"""Killed runs and sweeps leave only complete files, and ``--resume`` finishes a sweep exactly.

The tests start ``python -m sim run ...`` and ``python -m sim sweep ...`` as subprocesses on a
small synthetic dump, kill them (SIGKILL or SIGTERM) at random moments, and then check:

* every visible file under the results directory is complete: each CSV parses with its full
  header and rows of that width and ends in a newline, each JSON/YAML parses, each Parquet file
  reads; hidden temporary files of the atomic writes (``.NAME.*.tmp``, ``.NAME.*.partial``) are
  the only other thing a SIGKILL may leave, and they are counted;
* ``moesim run`` leaves either no results directory or a complete one, and running it again
  gives files byte-identical to an uninterrupted run;
* ``moesim sweep FILE --resume DIR`` completes a killed sweep with a sweep.csv byte-identical to
  the uninterrupted sweep's (and the same Parquet table).

The default run kills once per command (the moment is drawn after the work has begun); the
``slow`` tests kill many times at uniformly random moments with both signals.
``MOESIM_CRASH_SEED`` fixes the random moments.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_fuzz_shards import run_cli

from sim.atomic import write_json

REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("MOESIM_CRASH_SEED", str(time.time_ns() % 1_000_000)))
CRASH_COUNTS: Counter[str] = Counter()
PROCESS_TIMEOUT_S = 300


# -- inputs -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    dump: Path
    scenario: Path
    sweep: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    """A synthetic dump (8 sequences x 256 steps x 4 layers, top-6 of 64), a scenario of five
    policies over it and a 12-point sweep (HBM budget x policy)."""
    base = tmp_path_factory.mktemp("crash-inputs")
    dump = base / "dump"
    argv = ["trace", "synth", "--out", str(dump), "--layers", "2-5", "--num-shards", "1"]
    argv += ["--micro-batch-size", "8", "--seq-len", "256", "--experts", "64", "--topk", "6"]
    assert run_cli(argv).code == 0
    document = {
        "name": "crash",
        "trace": str(dump),
        "routing": {"topk": 6},
        "hardware": {"preset": "notebook-gbytes", "hbm": {"capacity": "32 experts"}},
        "policies": ["seed-split", "gpu-only", "lru", "lfu", "belady"],
        "baseline": "seed-split",
    }
    scenario = base / "crash.yaml"
    scenario.write_text(yaml.safe_dump(document), encoding="utf-8")
    sweep_doc = {
        **document,
        "name": "crash-sweep",
        "policies": ["seed-split"],
        "sweep": {
            "grid": {
                "hardware.hbm.capacity": ["8 experts", "16 experts", "32 experts", "64 experts"],
                "policies": ["seed-split", "lru", "belady"],
            }
        },
    }
    sweep = base / "crash-sweep.yaml"
    sweep.write_text(yaml.safe_dump(sweep_doc), encoding="utf-8")
    return Inputs(dump=dump, scenario=scenario, sweep=sweep)


# -- subprocesses -----------------------------------------------------------------------------------
def moesim(*args: str) -> list[str]:
    return [sys.executable, "-m", "sim", *args]


def run_to_end(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def kill_when(
    argv: list[str],
    cwd: Path,
    sig: signal.Signals,
    delay: float,
    started: Callable[[], bool] | None = None,
) -> bool:
    """Start ``argv``; once ``started()`` is true (if given) wait ``delay`` s and send ``sig``.

    Returns whether the signal ended the process (False: it had finished first). Waits until
    every process of its session is gone (sweep workers must not outlive their parent)."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while started is not None and not started() and proc.poll() is None:
        assert time.monotonic() < deadline, "the command never started its work"
        time.sleep(0.02)
    time.sleep(delay)
    finished_first = proc.poll() is not None
    if not finished_first:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=PROCESS_TIMEOUT_S)
    _wait_for_session_end(proc.pid)
    if finished_first or proc.returncode == 0:  # it may end just before the signal lands
        assert proc.returncode == 0, err
        CRASH_COUNTS["finished before the signal"] += 1
        return False
    assert "Traceback" not in err, err
    CRASH_COUNTS[f"killed by {sig.name}"] += 1
    return True


def _wait_for_session_end(pgid: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            pytest.fail("worker processes outlived their killed parent")
        time.sleep(0.05)


# -- completeness -----------------------------------------------------------------------------------
def is_temporary(path: Path) -> bool:
    """A hidden temporary file or directory of sim.atomic / write_results."""
    return path.name.startswith(".") and (path.name.endswith(".tmp") or ".partial" in path.name)


def check_complete(path: Path) -> None:
    """One visible result file is complete and parses."""
    if path.suffix == ".csv":
        text = path.read_text(encoding="utf-8")
        assert text.endswith("\n"), f"{path}: no final newline (cut short)"
        rows = list(csv.reader(text.splitlines()))
        assert len(rows) >= 2, f"{path}: header only"
        width = len(rows[0])
        assert all(len(r) == width for r in rows), f"{path}: a row of the wrong width"
    elif path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    elif path.suffix == ".yaml":
        assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), path
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.read_table(path)


def assert_only_complete_files(root: Path) -> list[Path]:
    """Check every visible file under ``root``; return the hidden temporary leftovers."""
    leftovers: list[Path] = []
    if not root.exists():
        return leftovers
    for path in sorted(root.rglob("*")):
        if any(is_temporary(p) for p in (path, *path.parents) if p != root.parent):
            if is_temporary(path):
                leftovers.append(path)
            continue
        assert not path.name.startswith("."), f"unexpected hidden file {path}"
        if path.is_file():
            check_complete(path)
    return leftovers


def temporaries_next_to(target: Path) -> list[Path]:
    return sorted(p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


# -- moesim run -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_reference(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of an uninterrupted run (in this process: the same code, byte-identical)."""
    out = tmp_path_factory.mktemp("run-reference") / "ref"
    start = time.perf_counter()
    assert run_cli(["run", str(inputs.scenario), "--out", str(out), "--quiet"]).code == 0
    CRASH_COUNTS["run work s (reference, in-process)"] = round(time.perf_counter() - start, 2)
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.fixture(scope="module")
def run_wall_s(
    inputs: Inputs, run_reference: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> float:
    """Wall seconds of an uninterrupted ``python -m sim run`` (the window of random kills);
    its files are byte-identical to the in-process reference."""
    work = tmp_path_factory.mktemp("run-subprocess")
    start = time.perf_counter()
    proc = run_to_end(
        moesim("run", str(inputs.scenario), "--out", str(work / "o"), "--quiet"), work
    )
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in (work / "o").iterdir()} == run_reference
    CRASH_COUNTS["run wall s (subprocess)"] = round(wall, 2)
    return wall


def kill_run_once(
    inputs: Inputs,
    reference: dict[str, bytes],
    work: Path,
    sig: signal.Signals,
    delay: float,
    *,
    while_writing: bool = False,
    rerun: bool = True,
) -> None:
    """Kill one run ``delay`` s after its start (or after it starts writing its results)."""
    out = work / "out"
    argv = moesim("run", str(inputs.scenario), "--out", str(out), "--quiet")
    writing = (lambda: bool(temporaries_next_to(out))) if while_writing else None
    kill_when(argv, work, sig, delay, writing)
    results_exist = out.exists()
    leftovers = assert_only_complete_files(out) + temporaries_next_to(out)
    CRASH_COUNTS[f"run leftovers after {sig.name}"] += len(leftovers)
    if sig == signal.SIGTERM:  # SIGTERM unwinds and cleans up (BUGS.md J7, fixed)
        assert leftovers == [], leftovers
    if results_exist:  # renamed into place in one step: all files or none
        CRASH_COUNTS["run killed after its results were complete"] += 1
        assert {p.name: p.read_bytes() for p in out.iterdir()} == reference
        return
    if not rerun:
        return
    proc = run_to_end(argv, work)  # the same command again completes normally
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == reference


def test_killed_run_leaves_no_partial_results(
    inputs: Inputs, run_reference: dict[str, bytes], tmp_path: Path
) -> None:
    """SIGKILL while the results are being written: the moment a partial result could exist."""
    kill_run_once(
        inputs, run_reference, tmp_path, signal.SIGKILL, 0.0, while_writing=True, rerun=False
    )
    assert not (tmp_path / "out").exists() or CRASH_COUNTS["finished before the signal"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_run_killed_at_random_moments(
    inputs: Inputs,
    run_reference: dict[str, bytes],
    run_wall_s: float,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    rng = random.Random(SEED + sig.value)
    span = run_wall_s
    for attempt in range(8):
        work = tmp_path / f"attempt-{attempt}"
        work.mkdir()
        kill_run_once(inputs, run_reference, work, sig, rng.uniform(0.0, span))


# -- moesim sweep -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_reference(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted sweep (in this process, one job)."""
    out = tmp_path_factory.mktemp("sweep-reference") / "ref"
    start = time.perf_counter()
    argv = ["sweep", str(inputs.sweep), "--out", str(out), "--jobs", "1", "--no-progress"]
    outcome = run_cli(argv, timeout=PROCESS_TIMEOUT_S)
    assert outcome.code == 0, outcome
    CRASH_COUNTS["sweep work s (reference, in-process)"] = round(time.perf_counter() - start, 2)
    return out


@pytest.fixture(scope="module")
def sweep_wall_s(
    inputs: Inputs, sweep_reference: Path, tmp_path_factory: pytest.TempPathFactory
) -> float:
    """Wall seconds of an uninterrupted ``python -m sim sweep`` (the window of random kills)."""
    work = tmp_path_factory.mktemp("sweep-subprocess")
    argv = moesim("sweep", str(inputs.sweep), "--out", str(work / "o"), "--jobs", "1")
    start = time.perf_counter()
    proc = run_to_end([*argv, "--no-progress"], work)
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert (work / "o" / "sweep.csv").read_bytes() == (sweep_reference / "sweep.csv").read_bytes()
    CRASH_COUNTS["sweep wall s (subprocess)"] = round(wall, 2)
    return wall


def kill_sweep_once(
    inputs: Inputs,
    reference: Path,
    work: Path,
    sig: signal.Signals,
    delay: float,
    *,
    jobs: int = 1,
    after_first_point: bool = True,
) -> None:
    out = work / "out"
    common = ["--jobs", str(jobs), "--no-progress"]
    points = out / "points"
    started = points.exists if after_first_point else None
    kill_when(
        moesim("sweep", str(inputs.sweep), "--out", str(out), *common), work, sig, delay, started
    )
    leftovers = assert_only_complete_files(out) + temporaries_next_to(out)
    CRASH_COUNTS[f"sweep leftovers after {sig.name}"] += len(leftovers)
    if sig == signal.SIGTERM:
        assert leftovers == [], leftovers
    finished = len(list((out / "points").glob("*.json"))) if out.exists() else 0
    CRASH_COUNTS["sweep points finished before the kill"] += finished
    if (out / "sweep.resolved.yaml").exists():
        argv = moesim("sweep", str(inputs.sweep), "--resume", str(out), *common)
    else:  # killed before its first point finished: nothing to resume, start it again
        assert finished == 0
        argv = moesim("sweep", str(inputs.sweep), "--out", str(out), *common)
    proc = run_to_end(argv, work)
    assert proc.returncode == 0, proc.stderr
    assert (out / "sweep.csv").read_bytes() == (reference / "sweep.csv").read_bytes()
    _same_parquet(out / "sweep.parquet", reference / "sweep.parquet")
    after = assert_only_complete_files(out)
    CRASH_COUNTS["sweep leftovers after --resume"] += len(after)


def _same_parquet(got: Path, want: Path) -> None:
    if not want.exists():
        assert not got.exists()
        return
    import pyarrow.parquet as pq

    assert pq.read_table(got).equals(pq.read_table(want))


def test_killed_sweep_resumes_to_the_identical_table(
    inputs: Inputs, sweep_reference: Path, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    span = CRASH_COUNTS["sweep work s (reference, in-process)"]
    kill_sweep_once(inputs, sweep_reference, tmp_path, signal.SIGKILL, rng.uniform(0, 0.6) * span)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_sweep_killed_at_random_moments(
    inputs: Inputs,
    sweep_reference: Path,
    sweep_wall_s: float,
    tmp_path: Path,
    sig: signal.Signals,
    jobs: int,
) -> None:
    rng = random.Random(SEED + 10 * jobs + sig.value)
    span = sweep_wall_s
    for attempt in range(5):
        work = tmp_path / f"attempt-{attempt}"
        work.mkdir()
        delay = rng.uniform(0.0, span)
        kill_sweep_once(
            inputs, sweep_reference, work, sig, delay, jobs=jobs, after_first_point=False
        )


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    target = os.environ.get("MOESIM_CRASH_STATS")
    if target and CRASH_COUNTS:
        write_json(target, {"seed": SEED, **dict(sorted(CRASH_COUNTS.items()))})
