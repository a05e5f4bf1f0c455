"""Sweep throughput (issue 8): points/s with --jobs 1, --jobs 2 and a Dask LocalCluster on the
same sweep, and the target: a 1,000-point sweep over the embedded real trace, one online policy
per point (no offline bound), in under 5 minutes on 2 cores.

    .venv/bin/python benchmarks/bench_sweep.py                 # small comparison + target
    .venv/bin/python benchmarks/bench_sweep.py --target 0      # small comparison only
    .venv/bin/python benchmarks/bench_sweep.py --record        # also write benchmarks/RESULTS.md

Every point is a real simulation (run_scenario on the embedded 256-step trace); times include
validation of every point, worker start-up, writing each point file and the final table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results_md import cpu_model, record_section

from sim.policies.base import available_policies
from sim.sweep import SweepSpec, run_sweep, sweep_from_dict

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## sweep (issue 8)"
TARGET_SECONDS = 300.0


# online policies that need hardware this sweep does not have, and why (named in the section)
LEFT_OUT = {"static-layers": "needs a host CPU (hardware.host_compute)"}


def online_policies() -> list[str]:
    """Every registered policy that needs no future knowledge (so no bound, no oracle) and runs
    on this sweep's hardware."""
    return sorted(
        name
        for name, cls in available_policies().items()
        if not cls.uses_future and name not in LEFT_OUT
    )


def make_sweep(points: int, policies: list[str]) -> SweepSpec:
    """``points`` points: one policy per point x evenly spaced MD link bandwidths."""
    bandwidths = max(1, points // len(policies))
    values = [f"{float(v):.6g} GB/s" for v in np.linspace(16.0, 512.0, bandwidths)]
    doc = {
        "name": "bench-sweep",
        "trace": "embedded",
        "routing": {"topk": [6]},
        # both tiers also hold int4 copies so that the precision policies (low-precision-on-miss,
        # quantised-all) run with their defaults; the others still move the native bf16 copy
        "hardware": {
            "preset": "notebook-gbytes",
            "hbm": {"capacity": "64 experts"},
            "copies": {"host": ["bf16", "int4"], "md": ["bf16", "int4"]},
        },
        "sweep": {
            "grid": {
                "hardware.links.md_link.bandwidth": values,
                "policies": policies,
            }
        },
    }
    return sweep_from_dict(doc, "bench-sweep.yaml")


def measure(spec: SweepSpec, executor: str, jobs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        start = time.perf_counter()
        report = run_sweep(spec, Path(tmp) / "out", executor=executor, jobs=jobs, progress=False)
        wall = time.perf_counter() - start
        records = [json.loads(f.read_text()) for f in (Path(tmp) / "out" / "points").iterdir()]
    per_point = [r["elapsed_s"] for r in records]
    cpu = sum(r["cpu_s"] for r in records)
    return {
        "points": report.total,
        "rows": report.rows,
        "wall_s": wall,
        "points_per_s": report.total / wall,
        "point_mean_s": statistics.fmean(per_point),
        "point_max_s": max(per_point),
        "point_cpu_s": cpu,  # CPU seconds of all points together (steady under contention)
    }


def breakdown(spec: SweepSpec, per_policy: int = 2) -> dict[str, float]:
    """Where one point's time goes, in this process: the sweep's own work (validating the point
    in the driver, re-validating it in the worker, writing its file) vs the simulation."""
    from sim.atomic import write_json
    from sim.scenario import load_scenario_trace, run_scenario, scenario_from_dict
    from sim.scenario.run import summary_rows
    from sim.sweep import expand, point_document

    points = expand(spec)
    chosen = {}
    for point in points:
        chosen.setdefault(point.swept()["policies"], []).append(point)
    sample = [p for group in chosen.values() for p in group[:per_policy]]
    docs = [point_document(spec, p) for p in sample]
    trace = load_scenario_trace(scenario_from_dict(docs[0], spec.source))
    timings: dict[str, list[float]] = {"validate": [], "simulate": [], "rows+write": []}
    sim_by_policy: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for point, doc in zip(sample, docs):
            t0 = time.perf_counter()
            scenario = scenario_from_dict(doc, spec.source)
            t1 = time.perf_counter()
            results = run_scenario(scenario, trace, progress=False)
            t2 = time.perf_counter()
            write_json(Path(tmp) / f"{point.point_id}.json", summary_rows(scenario, results))
            t3 = time.perf_counter()
            timings["validate"].append(t1 - t0)
            timings["simulate"].append(t2 - t1)
            timings["rows+write"].append(t3 - t2)
            sim_by_policy.setdefault(point.swept()["policies"], []).append(t2 - t1)
    out = {k: statistics.fmean(v) for k, v in timings.items()}
    out.update({f"simulate[{k}]": statistics.fmean(v) for k, v in sim_by_policy.items()})
    return out


def machine() -> str:
    cpu = cpu_model()
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{platform.system()}; load average at start {load} (the cores are shared)"
    )


def record(lines: list[str]) -> None:
    """Replace (or add) this benchmark's section of RESULTS.md, keeping the others."""
    record_section(SECTION, "\n".join(lines), RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=40, help="points of the comparison sweep")
    parser.add_argument(
        "--target", type=int, default=1000, help="points of the target run (0: skip)"
    )
    parser.add_argument("--no-dask", action="store_true", help="skip the Dask LocalCluster run")
    parser.add_argument(
        "--record", action="store_true", help=f"write the numbers to {RESULTS.name}"
    )
    args = parser.parse_args(argv)

    policies = online_policies()
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"Sweep: embedded real trace (256 steps x 8 layers x 8 sequences), top-6, notebook-gbytes "
        f"hardware with a 64-expert HBM cache; grid = MD link bandwidth x one online policy per "
        f"point ({len(policies)} policies: {', '.join(policies)}; left out: "
        f"{'; '.join(f'{k} {v}' for k, v in LEFT_OUT.items())}). Wall time includes validating "
        f"every point, worker start-up, the point files and the final table. CPU s = the "
        f"points' CPU time in the workers, summed (steady when other jobs share the cores).",
        "",
        "| run | points | wall s | points/s | wall s/point in worker | CPU s (all points) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    runs = [("--jobs 1", "local", 1, args.small), ("--jobs 2", "local", 2, args.small)]
    if not args.no_dask:
        runs.append(("Dask LocalCluster (2 workers)", "dask", 2, args.small))
    if args.target:
        runs.append(("target: --jobs 2", "local", 2, args.target))
    results = {}
    for name, executor, jobs, points in runs:
        result = results[name] = measure(make_sweep(points, policies), executor, jobs)
        print(f"{name:32s} {json.dumps(result)}", flush=True)
        lines.append(
            f"| {name} | {result['points']} | {result['wall_s']:.1f} | "
            f"{result['points_per_s']:.2f} | {result['point_mean_s']:.3f} | "
            f"{result['point_cpu_s']:.1f} |"
        )
    split = breakdown(make_sweep(args.small, policies))
    print("per-point breakdown (s):", json.dumps({k: round(v, 4) for k, v in split.items()}))
    overhead = 2 * split["validate"] + split["rows+write"]
    lines += [
        "",
        f"Per point, in one process: the sweep's own work (validate in the driver and again in "
        f"the worker, summary rows, point file) {overhead * 1e3:.1f} ms; the simulation "
        f"(run_scenario) {split['simulate'] * 1e3:.0f} ms on average, by policy: "
        + ", ".join(
            f"{k[9:-1]} {v * 1e3:.0f} ms" for k, v in split.items() if k.startswith("simulate[")
        )
        + ".",
    ]
    if args.target:
        result = results["target: --jobs 2"]
        verdict = "meets" if result["wall_s"] < TARGET_SECONDS else "MISSES"
        print(f"target: {verdict} the {TARGET_SECONDS:.0f} s target")
        lines += [
            "",
            f"Target ({result['points']} points in under {TARGET_SECONDS:.0f} s on 2 cores): "
            f"{verdict} it, {result['wall_s']:.0f} s wall. The points' CPU time, "
            f"{result['point_cpu_s']:.0f} s, spread over 2 otherwise idle cores would take "
            f"about {result['point_cpu_s'] / 2:.0f} s (an estimate, not a measurement).",
        ]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines += ["", f"Load average at the end: {load}."]
    if args.record:
        record(lines)
        print(f"recorded in {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
