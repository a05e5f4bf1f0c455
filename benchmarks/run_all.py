"""Run every benchmark once and rewrite benchmarks/RESULTS.md from that one run.

Not part of the test suite. In order, each as its own process (each records its own section):

1. ``bench_stats.py``   ``moesim trace stats`` vs the seed notebook's method (cells/s ratio)
2. ``bench_engine.py``  the discrete-event engine vs its numpy closed form
3. ``bench_sweep.py``   sweep points/s (``--jobs 1``, ``--jobs 2``, Dask; the 1000-point target)
4. ``bench_memory.py``  peak RSS of ``moesim run`` / ``trace stats`` over two large dumps
5. ``published/run.py`` the validation cases against published measurements (docs/validation.md)
6. ``bench_search.py``  ``moesim search`` vs the sweep of the same lattice (simulations, time)
7. ``bench_docs.py``    the time figures README.md and docs/ quote (set-up, commands, sweeps)
8. ``bench_serving.py`` a serving run vs the lockstep engine, CPU time per gate

and, in this process, a full-trace replay of the embedded real trace (256 steps x 8 layers x 8
sequences, top-6) under every registered policy with its default parameters on the default
scenario's hardware: wall and CPU seconds per policy (the fastest of ``--repeat``).

RESULTS.md is started afresh, except that every section this run does not write (``--skip``-ped
benchmarks, benchmarks run on their own) is kept as it was: a header naming the machine (date, ``uname -m``, CPU model from
/proc/cpuinfo, cores, memory, Python/numpy/torch versions, load average before and after), a
summary with each benchmark's headline line, exit code and wall time, then the sections.

    .venv/bin/pip install -e '.[bench]' -c constraints.txt   # pandas: bench_stats' baseline
    .venv/bin/python benchmarks/run_all.py            # everything (about 30 minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # fewer repeats, no 1000-point sweep target,
                                                      # no grid runs of the search benchmark, no
                                                      # fresh-clone set-up or MILP timings
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from results_md import cpu_model

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "RESULTS.md"
REPLAY_SECTION = "## replay per policy (issue 11)"
SKIPPED_POLICIES = {
    "optimal": "its MILP is far beyond its size limit on 256 steps x 8 layers",
    "static-layers": "needs a host CPU (hardware.host_compute), which the default scenario has not",
}


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script, its arguments (full and --quick) and its headline in RESULTS.md."""

    script: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    section: str
    headline: str  # regex of the line(s) of its section that carry its result


BENCHMARKS = (
    Benchmark("bench_stats.py", (), ("--repeat", "1"), "## stats", r"^- ratio .*"),
    Benchmark("bench_engine.py", (), ("--repeat", "1"), "## engine", r"^Targets: .*"),
    Benchmark(
        "bench_sweep.py",
        ("--record",),
        ("--record", "--target", "0", "--no-dask"),
        "## sweep",
        r"^Target \(.*",
    ),
    Benchmark("bench_memory.py", (), (), "## memory", r"^- highest peak.*"),
    Benchmark(
        "published/run.py",
        ("--check", "--record"),
        ("--check", "--record"),
        "## published validation (issue 18)",
        r"^- median absolute error .*",
    ),
    Benchmark(
        "bench_search.py",
        ("--record",),
        ("--record", "--no-grid"),
        "## search vs grid",
        r"^\| MD bandwidth, 5 policies .*",
    ),
    Benchmark(
        "bench_docs.py",
        (),
        ("--no-setup", "--no-optimal"),
        "## docs figures",
        r"^- `moesim run scenarios/default\.yaml` printed.*",
    ),
    Benchmark("bench_serving.py", (), ("--repeat", "1"), "## serving", r"^Target: .*"),
)


@dataclass(frozen=True)
class Ran:
    script: str
    code: int
    wall_s: float
    tail: str


# -- the machine --------------------------------------------------------------------------------
def memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def versions() -> str:
    import numpy
    import torch

    return (
        f"Python {platform.python_version()}, numpy {numpy.__version__}, torch {torch.__version__}"
    )


def machine_lines(load_before: str, load_after: str, started: dt.datetime) -> list[str]:
    cores = os.cpu_count()
    busy = max(os.getloadavg()[0], _load_of(load_before))
    lines = [
        f"- date: {started:%Y-%m-%d %H:%M} UTC (run_all.py started; each section has its own "
        "time stamp)",
        f"- machine: `uname -m` {platform.machine()}, {cpu_model()}, {cores} cores, "
        f"{memory_total()} RAM, {platform.system()} {platform.release()}",
        f"- software: {versions()}",
        f"- `uptime` before: {load_before}",
        f"- `uptime` after: {load_after}",
    ]
    if cores and busy > 0.75 * cores:
        lines.append(
            f"- NOTE: the machine was loaded (load average {busy:.1f} on {cores} cores; other "
            "jobs share it): wall times are pessimistic, CPU seconds are the steadier measure"
        )
    return lines


def _load_of(uptime: str) -> float:
    match = re.search(r"load average[s]?:\s*([\d.]+)", uptime)
    return float(match.group(1)) if match else 0.0


# -- running --------------------------------------------------------------------------------------
def run_benchmark(bench: Benchmark, quick: bool) -> Ran:
    argv = [sys.executable, str(BENCH / bench.script), *(bench.quick_args if quick else bench.args)]
    print(f"== {' '.join(argv[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n", flush=True)
    return Ran(bench.script, proc.returncode, wall, (proc.stderr or proc.stdout)[-400:])


def replay_per_policy(repeat: int) -> list[str]:
    """Time a full replay of the embedded trace under every registered policy (in-process)."""
    from sim.engine.simulate import simulate
    from sim.errors import UserError
    from sim.policies.base import available_policies, make_policy
    from sim.scenario import load_scenario, load_scenario_trace

    scenario = load_scenario(REPO / "scenarios" / "default.yaml")
    trace = load_scenario_trace(scenario)
    trace.expert_token_counts(6)  # top-k counting is cached on the trace: time the replays only
    rows: list[str] = []
    for name in available_policies():
        if name in SKIPPED_POLICIES:
            rows.append(
                f"| {name} | {_class_kind(name)} | skipped: {SKIPPED_POLICIES[name]} | | | | |"
            )
            continue
        try:
            make_policy(name, {}, name)
        except UserError as err:
            rows.append(f"| {name} | | skipped: needs parameters ({err}) | | | | |")
            continue
        walls, cpus, decides, result = [], [], [], None
        try:
            for _ in range(repeat):
                policy = make_policy(name, {}, name)
                decide_cpu = _time_decide(policy)
                w0, c0 = time.perf_counter(), time.process_time()
                result = simulate(trace, scenario.hardware, scenario.model, policy, topk=6)
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
                decides.append(decide_cpu[0])
        except UserError as err:  # a policy the default hardware cannot serve as it is
            rows.append(f"| {name} | | skipped on this hardware: {err} | | | | |")
            continue
        assert result is not None
        totals = result.totals
        best = cpus.index(min(cpus))
        rows.append(
            f"| {name} | {policy.run_kind()} | {min(walls):.3f} | {cpus[best]:.3f} | "
            f"{decides[best]:.3f} | {totals['mean_step'] * 1e3:.4f} | {totals['hit_rate']:.3f} |"
        )
        print(rows[-1], flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"{stamp}; `simulate()` in one process, the fastest of {repeat}; trace "
        f"{trace.describe()}; scenarios/default.yaml's hardware and model (notebook-gbps links, "
        "128-expert HBM cache, non-expert time from the roofline), every policy with its "
        "default parameters. decide CPU s: the part spent in the policy's `decide` (the rest "
        "is the engine).",
        "",
        "| policy | kind | wall s | CPU s | decide CPU s | mean step ms | hit rate |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _class_kind(name: str) -> str:
    """The kind a policy's runs have by default (before any run: from its class)."""
    from sim.policies.base import available_policies

    cls = available_policies()[name]
    return "bound" if cls.is_bound else "oracle" if cls.uses_future else "online"


def _time_decide(policy) -> list[float]:
    """Wrap ``policy.decide`` to add up its CPU seconds into the returned one-item list."""
    spent = [0.0]
    inner = policy.decide

    def timed(view):
        start = time.process_time()
        try:
            return inner(view)
        finally:
            spent[0] += time.process_time() - start

    policy.decide = timed
    return spent


# -- RESULTS.md -----------------------------------------------------------------------------------
def sections_of(text: str) -> dict[str, str]:
    """``## title`` -> the section's text (title line included)."""
    parts = re.split(r"(?m)^(?=## )", text)
    return {p.splitlines()[0]: p.rstrip() + "\n" for p in parts if p.startswith("## ")}


def headline(section: str, pattern: str) -> str:
    found = re.findall(pattern, section, re.M)
    return " / ".join(line.strip() for line in found) if found else "(no headline line found)"


def summary_lines(ran: Sequence[Ran], sections: dict[str, str], replay_s: float) -> list[str]:
    lines = ["| benchmark | exit | wall s | headline |", "|---|---:|---:|---|"]
    by_script = {b.script: b for b in BENCHMARKS}
    for r in ran:
        bench = by_script[r.script]
        section = next((s for t, s in sections.items() if t.startswith(bench.section)), "")
        note = headline(section, bench.headline) if r.code == 0 or section else r.tail
        note = note.replace("|", "/").replace("\n", " ")
        lines.append(f"| {r.script} | {r.code} | {r.wall_s:.0f} | {note} |")
    lines.append(f"| replay per policy (run_all.py) | 0 | {replay_s:.0f} | see its section |")
    ran_scripts = {r.script for r in ran}
    for bench in BENCHMARKS:
        if bench.script not in ran_scripts:
            lines.append(
                f"| {bench.script} | - | - | not run this time: its section is kept from its "
                "own earlier run (see the date in it) |"
            )
    return lines


def write_results(header: list[str], summary: list[str]) -> None:
    from sim.atomic import write_text

    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    body = "\n".join(sections_of(text).values())
    doc = "\n".join(
        [
            "# Benchmark results",
            "",
            "Written by `benchmarks/run_all.py` from one run of the benchmarks on one machine "
            "(those left out with --skip keep the section of their own earlier run, dated).",
            "",
            *header,
            "",
            "## summary (run_all)",
            "",
            *summary,
            "",
        ]
    )
    write_text(RESULTS, doc + "\n" + body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no sweep target")
    parser.add_argument("--skip", default="", help="comma-separated scripts to leave out")
    parser.add_argument("--repeat", type=int, default=3, help="replays per policy (fastest)")
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    load_before = uptime_line()
    from sim.atomic import write_text

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    old = sections_of(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    running = [b.section for b in BENCHMARKS if b.script not in skip]
    kept = [  # every section this run does not rewrite stays as its own earlier run wrote it
        text
        for title, text in old.items()
        if not title.startswith(("## summary", REPLAY_SECTION, *running))
    ]
    write_text(RESULTS, "# Benchmark results\n\n" + "\n".join(kept))  # the rest afresh
    ran = [run_benchmark(b, args.quick) for b in BENCHMARKS if b.script not in skip]
    start = time.perf_counter()
    replay = replay_per_policy(1 if args.quick else args.repeat)
    replay_s = time.perf_counter() - start
    text = RESULTS.read_text(encoding="utf-8")
    write_text(RESULTS, text.rstrip() + "\n\n" + REPLAY_SECTION + "\n\n" + "\n".join(replay) + "\n")
    sections = sections_of(RESULTS.read_text(encoding="utf-8"))
    header = machine_lines(load_before, uptime_line(), started)
    write_results(header, summary_lines(ran, sections, replay_s))
    print(f"rewrote {RESULTS.relative_to(REPO)}")
    return 0 if all(r.code == 0 for r in ran) else 1


if __name__ == "__main__":
    raise SystemExit(main())
