"""The time figures that README.md and docs/ quote, measured (issue 15).

Every command runs as its own process, as a user would run it, in a temporary working
directory (never the repository's ``results/``): wall seconds, and the CPU seconds of the
process and its children (``os.wait4``; the steadier measure on a shared machine), plus peak
RSS where a document quotes memory. Sections:

* **set-up**: a fresh clone of this commit (``git clone``), then ``make run``; another fresh
  clone, then ``make test`` (``--no-setup`` skips both: they install the environment);
* **README's first 5 minutes**: ``moesim run scenarios/default.yaml --report`` (and the
  simulation's own time, as the command prints it), ``trace info``, ``trace profile``, the
  hbm-tight run and its report, the sweep-bandwidth sweep (``--jobs 2``) and its report;
* **sweeps**: sweep-hbm (``--jobs 2``) and sweep-batch (``--jobs 1``), as docs/sweeps.md says;
* **traces**: ``trace synth`` of 64 x 2048 and 64 x 512 (wall, CPU, peak RSS), loading two
  full-size shards, ``trace profile`` of the real and of the 64-sequence synthetic trace;
* **optimal**: the MILP bound on the embedded trace's first 16, 32 and 64 steps, fetch and
  near-data (``--no-optimal`` skips it; near-data at 64 steps runs into its 120 s limit).

Records the section "docs figures (issue 15)" in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_docs.py [--no-setup] [--no-optimal] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from results_md import cpu_model, record_section

REPO = Path(__file__).resolve().parents[1]
SECTION = "## docs figures (issue 15)"

# a small launcher: the command's own wall time, CPU time (user + system, children included)
# and peak RSS, from os.wait4 (not counting this Python process)
_LAUNCHER = """
import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
out = proc.stdout.read()
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - start
own = usage.ru_utime + usage.ru_stime
import resource
kids = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(sys.argv[1], "w") as handle:
    json.dump({"wall": wall, "cpu": kids.ru_utime + kids.ru_stime, "rss_kib": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, handle)
sys.stdout.buffer.write(out)
"""


@dataclass(frozen=True)
class Measured:
    label: str
    wall: float
    cpu: float
    rss_gib: float
    code: int
    output: str


def measure(label: str, argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None):
    """Run ``argv`` in ``cwd``; its wall and CPU seconds (children included) and peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(report), *argv],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        import json

        usage = json.loads(report.read_text()) if report.exists() else {}
    result = Measured(
        label,
        usage.get("wall", float("nan")),
        usage.get("cpu", float("nan")),
        usage.get("rss_kib", 0) / 1024**2,
        usage.get("code", proc.returncode),
        proc.stdout,
    )
    state = "ok" if result.code == 0 else f"EXIT {result.code}: {proc.stdout[-600:]}"
    print(f"{label}: wall {result.wall:.1f} s, CPU {result.cpu:.1f} s ({state})", flush=True)
    return result


def moesim(*args: str) -> list[str]:
    return [sys.executable, "-m", "sim", *args]


def workdir(root: Path) -> Path:
    """A working directory where the docs' relative paths work (scenarios/, traces/)."""
    root.mkdir(parents=True)
    for name in ("scenarios", "traces", "docs"):
        (root / name).symlink_to(REPO / name)
    return root


def latest(root: Path, prefix: str) -> str:
    found = sorted(p for p in (root / "results").iterdir() if p.name.startswith(prefix))
    return str(found[-1])


# -- sections ---------------------------------------------------------------------------------------
def setup(tmp: Path) -> list[Measured]:
    """Two fresh clones of this commit: ``make run`` in one, ``make test`` in the other."""
    out = []
    for target in ("run", "test"):
        clone = tmp / f"clone-{target}"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        out.append(measure(f"fresh clone: make {target}", ["make", target], clone))
    return out


def readme_steps(tmp: Path) -> tuple[list[Measured], str]:
    cwd = workdir(tmp / "readme")
    steps = [
        (
            "run scenarios/default.yaml --report",
            moesim("run", "scenarios/default.yaml", "--report"),
        ),
        (
            "trace info traces/flame-moe-290m-real",
            moesim("trace", "info", "traces/flame-moe-290m-real"),
        ),
        (
            "trace profile embedded --out DIR",
            moesim("trace", "profile", "embedded", "--out", str(cwd / "profile")),
        ),
        (
            "run scenarios/hbm-tight.yaml --set capacity",
            moesim("run", "scenarios/hbm-tight.yaml", "--set", "hardware.hbm.capacity=64 MiB"),
        ),
    ]
    done = [measure(label, argv, cwd) for label, argv in steps]
    done.append(
        measure("report (the hbm-tight run)", moesim("report", latest(cwd, "hbm-tight")), cwd)
    )
    done.append(
        measure(
            "sweep scenarios/sweep-bandwidth.yaml --jobs 2 (140 points)",
            moesim("sweep", "scenarios/sweep-bandwidth.yaml", "--jobs", "2", "--no-progress"),
            cwd,
        )
    )
    done.append(
        measure("report (the sweep)", moesim("report", latest(cwd, "sweep-bandwidth")), cwd)
    )
    sim = re.search(r"(\d+) runs in ([\d.]+) s wall time", done[0].output)
    simulated = f"{sim.group(1)} runs in {sim.group(2)} s" if sim else "not printed"
    return done, simulated


def sweeps(tmp: Path) -> list[Measured]:
    cwd = workdir(tmp / "sweeps")
    return [
        measure(
            "sweep scenarios/sweep-hbm.yaml --jobs 2 (42 points)",
            moesim("sweep", "scenarios/sweep-hbm.yaml", "--jobs", "2", "--no-progress"),
            cwd,
        ),
        measure(
            "sweep scenarios/sweep-batch.yaml --jobs 1 (20 points)",
            moesim("sweep", "scenarios/sweep-batch.yaml", "--jobs", "1", "--no-progress"),
            cwd,
        ),
    ]


LOAD = """
import sys, time
from sim.trace.open import open_trace
for positions in (list(range(10)), None):
    c0, w0 = time.process_time(), time.perf_counter()
    trace = open_trace(sys.argv[1], positions=positions)
    print(f"load {trace.num_steps} steps: CPU {time.process_time() - c0:.3f} s, "
          f"wall {time.perf_counter() - w0:.3f} s")
"""

PROFILE = """
import sys, time
from sim.trace.open import open_trace
from sim.trace.profile import profile_trace
trace = open_trace(sys.argv[1])
c0 = time.process_time()
profile_trace(trace)
print(f"profile computation: CPU {time.process_time() - c0:.2f} s")
"""


def traces(tmp: Path) -> tuple[list[Measured], list[str]]:
    cwd = workdir(tmp / "traces")
    synth = ("trace", "synth", "--num-shards", "8", "--micro-batch-size", "8")
    done = [
        measure(
            "trace synth 64 x 2048 x 8 layers",
            moesim(*synth, "--seq-len", "2048", "--out", str(cwd / "s2048")),
            cwd,
        ),
        measure(
            "trace synth 64 x 512 x 8 layers",
            moesim(*synth, "--seq-len", "512", "--out", str(cwd / "s512")),
            cwd,
        ),
        measure(
            "trace synth 2 full-size shards (2 x 8 seqs x 2048)",
            moesim("trace", "synth", "--num-shards", "2", "--out", str(cwd / "two")),
            cwd,
        ),
    ]
    notes = []
    loaded = measure("load 2 full-size shards", [sys.executable, "-c", LOAD, str(cwd / "two")], cwd)
    notes += [f"2 full-size shards x 8 layers, {line}" for line in loaded.output.splitlines()]
    for label, root in (
        ("embedded (8 x 256)", "embedded"),
        ("embedded synthetic (64 x 512)", "embedded:flame-moe-290m-synth"),
    ):
        done.append(
            measure(
                f"trace profile {root} --out DIR",
                moesim("trace", "profile", root, "--out", str(cwd / f"p-{len(done)}")),
                cwd,
            )
        )
        inner = measure(f"profile {label}, in-process", [sys.executable, "-c", PROFILE, root], cwd)
        notes += [f"{label}: {line}" for line in inner.output.splitlines()]
    return done, notes


OPTIMAL = """
import sys, time
from sim.engine.simulate import simulate
from sim.policies import make_policy
from sim.scenario import load_scenario, load_scenario_trace
from sim.errors import UserError
steps, mode = int(sys.argv[1]), sys.argv[2]
sets = [f"trace.positions=0-{steps - 1}"]
if mode == "near-data":
    sets += ["hardware.md_mode=near-data",
             "hardware.md_compute={memory_bandwidth: 512 GB/s, peak_flops: 50 TFLOP/s}"]
scenario = load_scenario("scenarios/default.yaml", sets)
trace = load_scenario_trace(scenario)
policy = make_policy("optimal", {"max_uses": 20000})
w0, c0 = time.perf_counter(), time.process_time()
try:
    simulate(trace, scenario.hardware, scenario.model, policy, topk=6)
    stats = policy.stats()
    size = ", ".join(f"{k} {v}" for k, v in stats.items() if k != "objective")
    print(f"proven optimal: {size}; wall {time.perf_counter() - w0:.1f} s, "
          f"CPU {time.process_time() - c0:.1f} s")
except UserError as err:
    print(f"stopped after wall {time.perf_counter() - w0:.1f} s: {err}")
"""


def optimal(tmp: Path) -> list[str]:
    cwd = workdir(tmp / "optimal")
    rows = []
    for steps in (16, 32, 64):
        for mode in ("fetch", "near-data"):
            done = measure(
                f"optimal {steps} steps {mode}",
                [sys.executable, "-c", OPTIMAL, str(steps), mode],
                cwd,
            )
            rows.append(f"| {steps} | {mode} | {done.output.strip()} |")
    return rows


# -- RESULTS.md ---------------------------------------------------------------------------------------
def table(rows: Sequence[Measured], rss: bool = False) -> list[str]:
    head = "| command | wall s | CPU s |" + (" peak RSS |" if rss else "")
    lines = [head, "|---|---:|---:|" + ("---:|" if rss else "")]
    for m in rows:
        state = "" if m.code == 0 else f" (exit {m.code})"
        extra = f" {m.rss_gib:.2f} GiB |" if rss else ""
        lines.append(f"| `{m.label}`{state} | {m.wall:.1f} | {m.cpu:.1f} |{extra}")
    return lines


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-setup", action="store_true", help="skip the fresh-clone make runs")
    parser.add_argument("--no-optimal", action="store_true", help="skip the MILP timings")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    started = dt.datetime.now(dt.UTC)
    before = load_line()
    lines = [
        f"- date: {started:%Y-%m-%d %H:%M} UTC; commit {commit}; machine: {cpu_model()}, "
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}; {before} at the start",
        "- every command is its own process in a temporary directory; CPU s = user + system "
        "time of the process and its children (the steadier measure when the machine is shared)",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-docs-") as name:
        tmp = Path(name)
        if not args.no_setup:
            lines += ["### set-up from a fresh clone (README)", "", *table(setup(tmp)), ""]
        done, simulated = readme_steps(tmp)
        lines += [
            "### README's first 5 minutes",
            "",
            *table(done),
            "",
            f"- `moesim run scenarios/default.yaml` printed: {simulated} wall time (the "
            "simulation alone, 12 policies x 256 decode steps)",
            "",
        ]
        lines += ["### sweeps (docs/sweeps.md)", "", *table(sweeps(tmp)), ""]
        done, notes = traces(tmp)
        lines += ["### traces", "", *table(done, rss=True), "", *(f"- {n}" for n in notes), ""]
        if not args.no_optimal:
            lines += [
                "### optimal (docs/policies.md): embedded trace, 8 sequences, top-6, 128-expert "
                "cache; near-data: md_compute 512 GB/s, 50 TFLOP/s",
                "",
                "| steps | md_mode | result |",
                "|---|---|---|",
                *optimal(tmp),
                "",
            ]
    lines.append(f"- {load_line()} at the end")
    text = "\n".join(lines)
    print(text)
    if not args.no_record:
        record_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
