"""The latency-quality frontier (issue 22), measured: scenarios/sweep-precision.yaml run through
the sweep machinery, its frontier table (mean step, tokens/s, degraded and dropped gate mass,
Pareto-optimal), and what the router's gate mass costs the engine.

    .venv/bin/python benchmarks/bench_precision.py            # print
    .venv/bin/python benchmarks/bench_precision.py --record   # also write benchmarks/RESULTS.md

The frontier numbers are simulated (deterministic: the same on any machine); the times are
CPU seconds of this process. docs/policies.md quotes the table this prints.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from results_md import cpu_model, record_section

from sim.engine import simulate
from sim.policies import make_policy
from sim.report.frontier import frontier_table
from sim.report.load import load_results
from sim.scenario import load_scenario
from sim.sweep import run_sweep
from sim.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "scenarios" / "sweep-precision.yaml"
SECTION = "## precision and the latency-quality frontier (issue 22)"


def frontier_markdown(out: Path) -> str:
    table = frontier_table(load_results(out).table)
    order = np.argsort(np.asarray(table["proxy"]), kind="stable")
    lines = [
        "| label | family | mean step | tokens/s | degraded (proxy) | dropped (proxy) | Pareto |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in order.tolist():
        rank = table["rank"][i]
        lines.append(
            f"| {table['label'][i]} | {table['family'][i]} | {1e3 * table['mean_step'][i]:.3f} ms "
            f"| {table['tokens_per_s'][i]:,.0f} | {100 * table['degraded'][i]:.2f} % "
            f"| {100 * table['dropped'][i]:.2f} % | {'' if rank != rank else int(rank)} |"
        )
    return "\n".join(lines)


def demand_cost() -> str:
    """CPU seconds of the router-mass bookkeeping against runs that use it: on the embedded
    64-sequence synthetic trace (512 steps), best of three (each run after the first reads the
    trace's cached demand, as every run of a scenario but the first does)."""
    from sim.trace.open import open_trace

    scenario = load_scenario(REPO / "scenarios" / "mixed-precision.yaml", [])

    trace = open_trace("embedded:flame-moe-290m-synth")
    model, hardware = scenario.model, scenario.hardware

    def best(fn) -> float:
        times = []
        for _ in range(3):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return min(times)

    def demand() -> None:
        trace._demand_cache.clear()
        trace._score_cache.clear()
        trace.demand(6)

    def run(name: str, params: dict) -> None:
        simulate(trace, hardware, model, make_policy(name, params))

    t_demand = best(demand)
    t_seed = best(lambda: run("seed-split", {}))
    t_skip = best(lambda: run("skip-low-score", {"threshold": 0.1}))
    t_lowp = best(lambda: run("low-precision-on-miss", {"policy": "lru", "threshold": 0.1}))
    t_lru = best(lambda: run("lru", {}))
    return "\n".join(
        [
            "| on the 64-sequence synthetic trace (512 steps x 8 layers, top-6) | CPU s |",
            "|---|---|",
            f"| router mass of every gate (`RoutingTrace.demand`, once per trace and top-k) "
            f"| {t_demand:.3f} |",
            f"| seed-split run (the demand cached) | {t_seed:.3f} |",
            f"| skip-low-score 0.1 over seed-split (its skipped demand cached) | {t_skip:.3f} |",
            f"| lru run | {t_lru:.3f} |",
            f"| low-precision-on-miss 0.1 over lru | {t_lowp:.3f} |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write benchmarks/RESULTS.md")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sweep"
        report = run_sweep(load_sweep(SWEEP), out, jobs=args.jobs, progress=False)
        frontier = frontier_markdown(out)
    wall = time.perf_counter() - start
    costs = demand_cost()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"{datetime.now(UTC):%Y-%m-%d}, {cpu_model()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average {load:.1f} at the end; "
        f"`benchmarks/bench_precision.py` (the sweep: {report.ran} points, {wall:.0f} s wall "
        f"with --jobs {args.jobs})."
    )
    text = (
        f"{header}\n\nscenarios/sweep-precision.yaml (simulated, deterministic; FLAME-MoE-290M "
        "embedded real routing, H100 PCIe5 + CXL x16, 128-expert cache; every trade-off policy "
        "over lru with balanced misses). Degraded and dropped are the quality PROXIES (shares "
        "of the router's gate mass), not accuracy; Pareto: the run's number along the front "
        "(online runs only).\n\n"
        f"{frontier}\n\nWhat the gate mass costs:\n\n{costs}\n"
    )
    print(text)
    if args.record:
        record_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
