"""``moesim run FILE``: run a scenario, print the comparison, save a results directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sim.commands._options import add_set_option


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="run a scenario YAML: every policy x top-k, comparison table, results directory",
        description="Run a scenario (docs/scenarios.md) and write its results directory.",
    )
    p.add_argument("file", help="scenario YAML file (e.g. scenarios/default.yaml)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="results directory (must be new or empty); default <output.dir>/<name>-<UTC time>",
    )
    add_set_option(p)
    p.add_argument(
        "--timeline",
        metavar="FILE.json",
        help="also record a Chrome/Perfetto timeline: timeline.json in the results and FILE.json",
    )
    p.add_argument("--report", action="store_true", help="write the HTML report afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from sim.scenario import load_scenario, load_scenario_trace, run_scenario, write_results
    from sim.scenario.run import check_out_dir, check_timeline_file, new_results_dir
    from sim.scenario.table import print_comparison

    scenario = load_scenario(args.file, args.overrides)
    out = Path(args.out) if args.out else new_results_dir(scenario.output.dir, scenario.name)
    check_out_dir(out)
    if args.timeline:
        check_timeline_file(args.timeline)
    trace = load_scenario_trace(scenario)  # everything is validated before anything is written
    start = time.perf_counter()
    results = run_scenario(scenario, trace, progress=not args.quiet, timeline=bool(args.timeline))
    elapsed = time.perf_counter() - start
    path = write_results(out, scenario, trace, results, timeline_file=args.timeline)
    if not args.quiet:
        print_comparison(scenario, results, trace)
        print(f"{len(results)} runs in {elapsed:.2f} s wall time")
    print(f"results: {path}")
    if args.report:
        from sim.report import write_report

        print(f"report: {write_report(path)}")
    return 0
