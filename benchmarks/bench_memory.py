"""Peak memory of whole ``moesim`` processes over large dumps (issue 11; target < 4 GB).

Generates, under a temporary directory in /tmp (never in the repository), two synthetic dumps
in the FLAME-MoE layout with ``moesim trace synth``:

* ``290m``: 16 shards x 8 sequences = 128 sequences x 2048 decode steps x 8 MoE layers (2-9),
  top-6 of 64 experts: FLAME-MoE-290M's shape;
* ``1.7b``: the same batch over 17 MoE layers (2-18), top-8 of 64 experts: FLAME-MoE-1.7B-10.3B's
  shape (18 layers, the first dense; hidden 2048, expert FFN 1408; see docs/reliability.md),

then runs, each as its own process, ``moesim run`` (a scenario of stateless, cache, prefetch and
offline-bound policies over the whole dump) and ``moesim trace stats`` (every position and
layer, top-1/2/6) and reads each process's own peak resident set size from ``os.wait4``.
Prints a table and records it in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_memory.py [--cases 290m,1.7b] [--keep DIR] [--no-record]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from results_md import cpu_model, record_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## memory (issue 11)"
LIMIT_BYTES = 4 * 1024**3
POLICIES = ("seed-split", "balanced-split", "lru", "prefetch-predicted", "belady")


@dataclass(frozen=True)
class DumpCase:
    """One large dump: its shape and the model figures a scenario needs."""

    name: str
    model: str
    layers: str
    num_layers: int
    topk: int
    model_section: dict[str, object]
    shards: int = 16
    micro_batch: int = 8
    seq_len: int = 2048
    experts: int = 64

    @property
    def sequences(self) -> int:
        return self.shards * self.micro_batch

    def describe(self) -> str:
        return (
            f"{self.sequences} seqs x {self.seq_len} steps x {self.num_layers} layers, "
            f"top-{self.topk} of {self.experts} ({self.shards} shards)"
        )


CASES = {
    "290m": DumpCase(
        name="290m",
        model="flame-moe-290m",
        layers="2-9",
        num_layers=8,
        topk=6,
        model_section={"preset": "flame-moe-290m"},
    ),
    "1.7b": DumpCase(
        name="1.7b",
        model="flame-moe-1.7b",
        layers="2-18",
        num_layers=17,
        topk=8,
        model_section={
            "name": "flame-moe-1.7b",
            "num_experts": 64,
            "top_k": 8,
            "hidden_size": 2048,
            "expert_ffn_size": 1408,
            "gated": True,
            "bytes_per_param": 2,
            "moe_layers": 17,
            "num_layers": 18,
            # the non-expert roofline's attention shape: 16 heads as configs/model/flame-moe.sh
            # sets for the 290M model (assumed the same here), head_dim = 2048 / 16
            "attention_heads": 16,
            "kv_heads": 16,
            "head_dim": 128,
            "source": "FLAME-MoE-1.7B-10.3B release script: NUM_LAYERS=18, HIDDEN_SIZE=2048, "
            "MOE_FFN_HIDDEN_SIZE=1408, MOE_LAYER_FREQ [0]*1+[1]*17; 64 experts, top-8; "
            "attention heads assumed as the 290M model's (16)",
        },
    ),
}


@dataclass(frozen=True)
class Measured:
    """One finished process: wall seconds, peak RSS in bytes, exit code."""

    label: str
    wall_s: float
    peak_rss: int
    code: int
    stderr: str = ""

    @property
    def peak_gib(self) -> float:
        return self.peak_rss / 1024**3


# Linux counts the RSS a process had before exec in ru_maxrss, so a child forked from a big
# parent (a test process with torch loaded) reports at least the parent's size. A small
# launcher process starts the command and reports that grandchild's own figure.
_LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as handle:
    handle.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(label: str, argv: Sequence[str], cwd: Path) -> Measured:
    """Run ``argv`` and read its own peak RSS (``ru_maxrss`` of that process only)."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "maxrss"
        err_path = Path(tmp) / "stderr"
        with err_path.open("wb") as err:
            proc = subprocess.run(
                [sys.executable, "-c", _LAUNCHER, str(report), *argv],
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=err,
                check=False,
            )
        wall = time.perf_counter() - start
        peak_kib = int(report.read_text()) if report.exists() else 0
        text = err_path.read_text(encoding="utf-8", errors="replace")
    return Measured(label, wall, peak_kib * 1024, proc.returncode, text)


def moesim(*args: str) -> list[str]:
    return [sys.executable, "-m", "sim", *args]


def generate(case: DumpCase, root: Path) -> Measured:
    argv = moesim(
        "trace", "synth", "--out", str(root), "--model", case.model,
        "--layers", case.layers, "--num-shards", str(case.shards),
        "--micro-batch-size", str(case.micro_batch), "--seq-len", str(case.seq_len),
        "--experts", str(case.experts), "--topk", str(case.topk), "--seed", "11",
    )  # fmt: skip
    return measure(f"{case.name}: trace synth", argv, root.parent)


def scenario_file(case: DumpCase, root: Path, work: Path, policies: Sequence[str]) -> Path:
    document = {
        "name": f"memory-{case.name}",
        "trace": str(root),
        "routing": {"topk": case.topk},
        "model": case.model_section,
        "hardware": {"preset": "notebook-gbytes", "hbm": {"capacity": "128 experts"}},
        "policies": list(policies),
        "baseline": "seed-split",
    }
    path = work / f"memory-{case.name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def run_case(case: DumpCase, work: Path, policies: Sequence[str]) -> list[Measured]:
    """Generate the dump, then measure ``moesim run`` and ``moesim trace stats`` over it."""
    root = work / f"dump-{case.name}"
    made = generate(case, root)
    if made.code != 0:
        raise SystemExit(f"trace synth failed: {made.stderr.strip()[-400:]}")
    scenario = scenario_file(case, root, work, policies)
    ran = measure(
        f"{case.name}: run ({len(policies)} policies)",
        moesim("run", str(scenario), "--out", str(work / f"run-{case.name}"), "--quiet"),
        work,
    )
    stats = measure(
        f"{case.name}: trace stats (all cells, top-1,2,6)",
        moesim(
            "trace", "stats", str(root), "--positions", "all", "--layers", "all",
            "--topk", "1,2,6", "--out", str(work / f"stats-{case.name}"),
        ),
        work,
    )  # fmt: skip
    return [made, ran, stats]


def dump_size(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*.pt")]
    return len(files), sum(p.stat().st_size for p in files)


def machine() -> str:
    cpu = cpu_model()
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}, {platform.machine()}), Python "
        f"{platform.python_version()}; load average at start {load} (the cores are shared)"
    )


def report_lines(
    cases: Sequence[DumpCase],
    measured: dict[str, list[Measured]],
    sizes: dict[str, tuple[int, int]],
) -> list[str]:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"- date: {stamp}; machine: {machine()}",
        f"- scenario policies: {', '.join(POLICIES)}; HBM cache 128 experts; peak RSS is each "
        "process's own `ru_maxrss` (os.wait4 in a small launcher process); target < 4 GiB",
        "",
        "| dump | files, size on disk | process | wall s | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        files, size = sizes[case.name]
        for m in measured[case.name]:
            ok = "" if m.code == 0 else f" (exit {m.code})"
            lines.append(
                f"| {case.name}: {case.describe()} | {files} files, {size / 1e6:.0f} MB | "
                f"{m.label.split(': ', 1)[1]}{ok} | {m.wall_s:.1f} | {m.peak_gib:.2f} GiB |"
            )
    worst = max(m.peak_rss for ms in measured.values() for m in ms)
    verdict = "under" if worst < LIMIT_BYTES else "OVER"
    lines += ["", f"- highest peak: {worst / 1024**3:.2f} GiB, {verdict} the 4 GiB target"]
    return lines


def record(lines: list[str]) -> None:
    """Replace (or add) this benchmark's section of RESULTS.md, keeping the others."""
    record_section(SECTION, "\n".join(lines), RESULTS)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", default="290m,1.7b", help="which dumps (default 290m,1.7b)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="scenario policies")
    parser.add_argument(
        "--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    names = [c for c in args.cases.split(",") if c]
    unknown = [c for c in names if c not in CASES]
    if unknown:
        parser.error(f"--cases: unknown {unknown}; have {sorted(CASES)}")
    cases = [CASES[c] for c in names]
    policies = [p for p in args.policies.split(",") if p]
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="moesim-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    measured: dict[str, list[Measured]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    try:
        for case in cases:
            measured[case.name] = run_case(case, work, policies)
            sizes[case.name] = dump_size(work / f"dump-{case.name}")
            for m in measured[case.name]:
                print(
                    f"{m.label:55s} wall {m.wall_s:7.1f} s  peak RSS {m.peak_gib:5.2f} GiB"
                    f"{'' if m.code == 0 else f'  EXIT {m.code}: ' + m.stderr.strip()[-300:]}"
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lines = report_lines(cases, measured, sizes)
    print("\n".join(lines))
    if not args.no_record:
        record(lines)
        print(f"recorded in {RESULTS.relative_to(REPO)}")
    failed = any(m.code != 0 for ms in measured.values() for m in ms)
    over = any(m.peak_rss >= LIMIT_BYTES for ms in measured.values() for m in ms)
    return 1 if failed or over else 0


if __name__ == "__main__":
    raise SystemExit(main())
