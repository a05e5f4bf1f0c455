"""Search vs grid (issue 19): simulations and time of ``moesim search`` against the sweep of
every value of the same lattice (the equivalent grid at the same resolution), on the shipped
scenario scenarios/search.yaml, and a check that both give the same boundary.

    .venv/bin/python benchmarks/bench_search.py              # every case, grids included
    .venv/bin/python benchmarks/bench_search.py --no-grid    # the searches only (counts only)
    .venv/bin/python benchmarks/bench_search.py --record     # also write benchmarks/RESULTS.md

Cases: (1) the MD-link bandwidth each of the scenario's five policies needs for a mean step
<= 8 ms (16-512 GB/s, 1 % tolerance: 350 values); (2) the HBM budget LRU needs with a 32 GB/s
MD link (0-448 experts, every whole expert below 100, then 1 % steps: 251 values); (3) the
Pareto frontier of both for LRU (9 bandwidths x 251 budgets). The grid runs the same values
through ``moesim sweep``'s machinery (one policy per point), so the boundary it implies is
compared with the search's exactly. Times are wall seconds with --jobs 2, and the summed CPU
seconds of the simulations in the workers (steady when other jobs share the cores).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from results_md import cpu_model, record_section

from sim.search.algorithm import spread
from sim.search.question import Question, load_question
from sim.search.run import SearchReport, run_search
from sim.sweep import run_sweep, sweep_from_dict

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "search.yaml"
SECTION = "## search vs grid (issue 19)"
JOBS = 2

CASES = (
    {
        "name": "MD bandwidth, 5 policies",
        "vary": ["hardware.links.md_link.bandwidth"],
        "ranges": ["16 GB/s:512 GB/s"],
        "target": "mean_step <= 8 ms",
        "policies": [],
        "sets": [],
    },
    {
        "name": "HBM budget, lru, 32 GB/s MD link",
        "vary": ["hardware.hbm.capacity"],
        "ranges": ["0 experts:448 experts"],
        "target": "mean_step <= 10 ms",
        "policies": ["lru"],
        "sets": ["hardware.links.md_link.bandwidth=32 GB/s"],
    },
    {
        "name": "MD bandwidth x HBM budget frontier, lru",
        "vary": ["hardware.links.md_link.bandwidth", "hardware.hbm.capacity"],
        "ranges": ["32 GB/s:256 GB/s", "0 experts:448 experts"],
        "target": "mean_step <= 8 ms",
        "policies": ["lru"],
        "sets": [],
    },
)


def point_cpu(out: Path) -> float:
    return sum(json.loads(f.read_text())["cpu_s"] for f in (out / "points").iterdir())


def run_case(case: dict[str, Any], tmp: Path, grid: bool) -> dict[str, Any]:
    question = load_question(
        SCENARIO,
        case["vary"],
        case["ranges"],
        case["target"],
        policies=case["policies"],
        sets=case["sets"],
        grid=9,
    )
    start = time.perf_counter()
    report = run_search(question, tmp / "search", jobs=JOBS)
    search_wall = time.perf_counter() - start
    result = {
        "case": case["name"],
        "policies": len(question.policies),
        "search_sims": report.ran,
        "search_wall_s": search_wall,
        "search_cpu_s": point_cpu(tmp / "search"),
        "grid_sims": sum(r.grid for r in report.results),
        "statuses": sorted({r.answer.status for r in report.results}),
    }
    if grid:
        start = time.perf_counter()
        rows = run_grid(question, tmp / "grid")
        result["grid_wall_s"] = time.perf_counter() - start
        result["grid_cpu_s"] = point_cpu(tmp / "grid")
        result["same_boundary"] = same_boundaries(question, report, rows)
    return result


def run_grid(question: Question, out: Path) -> list[dict[str, str]]:
    """The sweep of every lattice value (the first field at the search's grid values when
    there are two), one policy per point."""
    doc = dict(question.base)
    axes: dict[str, list[Any]] = {}
    first = question.fields[0]
    if len(question.fields) == 1:
        axes[first.path] = [first.yaml_value(i) for i in range(first.size)]
    else:
        second = question.fields[1]
        axes[first.path] = [first.yaml_value(i) for i in spread(first.size, question.grid)]
        axes[second.path] = [second.yaml_value(i) for i in range(second.size)]
    axes["policies"] = [p.entry for p in question.policies]
    doc["sweep"] = {"grid": axes}
    run_sweep(sweep_from_dict(doc, question.source), out, jobs=JOBS, progress=False)
    with open(out / "sweep.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def same_boundaries(question: Question, report: SearchReport, rows: list[dict[str, str]]) -> bool:
    """Whether, per policy (and value of the first field), the least-help value meeting the
    target in the grid is the search's boundary."""
    goal = question.goal
    fields = question.fields
    text = {f.path: {str(f.yaml_value(i)): i for i in range(f.size)} for f in fields}
    ok = True
    for result in report.results:
        mine = [r for r in rows if r["label"] == result.label]
        helps = result.answer.helps[-1] or 1
        groups: dict[int | None, list[tuple[int, float]]] = {}
        for r in mine:
            key = text[fields[0].path][r[fields[0].path]] if len(fields) == 2 else None
            index = text[fields[-1].path][r[fields[-1].path]]
            groups.setdefault(key, []).append((index, float(r[goal.metric])))
        for step in result.answer.steps:
            key = (step.at or step.wrong)[0] if len(fields) == 2 else None
            values = sorted(groups[key], reverse=helps < 0)
            meeting = [i for i, m in values if goal.met(m)]
            if result.answer.status == "whole range":
                continue
            expected = meeting[0] if meeting else None
            found = step.at[-1] if step.at is not None else None
            ok &= expected == found
    return ok


def machine() -> str:
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"{platform.system()}; load average at start {load} (the cores are shared)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-grid", action="store_true", help="skip running the grids")
    parser.add_argument("--record", action="store_true", help="write benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    scenario = yaml.safe_load(SCENARIO.read_text())
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; `--jobs {JOBS}`.",
        f"Scenario `scenarios/search.yaml` ({scenario['description']}): embedded real trace, "
        "first 64 decode steps x 8 layers x 8 sequences, top-6, notebook-gbytes hardware. "
        "Tolerance 1 %; the two-field frontier at 9 values of the first field. The grid is the "
        "sweep of every value the search could have tried (same lattice, same resolution); "
        "'same boundary' says whether the least value meeting the target in that sweep is the "
        "search's boundary for every policy (and frontier step). CPU s: the simulations' CPU "
        "time in the workers, summed.",
        "",
        "| case | policies | search sims | grid sims | grid / search | search wall s "
        "(CPU s) | grid wall s (CPU s) | same boundary |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for case in CASES:
        with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
            result = run_case(case, Path(tmp), not args.no_grid)
        print(json.dumps(result), flush=True)
        grid_time = (
            f"{result['grid_wall_s']:.1f} ({result['grid_cpu_s']:.1f})"
            if "grid_wall_s" in result
            else "not run"
        )
        lines.append(
            f"| {result['case']} | {result['policies']} | {result['search_sims']} | "
            f"{result['grid_sims']} | {result['grid_sims'] / result['search_sims']:.0f}x | "
            f"{result['search_wall_s']:.1f} ({result['search_cpu_s']:.1f}) | {grid_time} | "
            f"{'yes' if result.get('same_boundary') else ('not checked' if args.no_grid else 'NO')} |"
        )
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    lines += ["", f"Load average at the end: {load}."]
    if args.record:
        record_section(SECTION, "\n".join(lines))
        print("recorded in benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
