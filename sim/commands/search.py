"""``moesim search FILE --vary FIELD --range LO:HI --target 'METRIC <= VALUE'``: the least (or
most) of a field at which each policy still meets a target (see docs/search.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.commands._options import (
    add_executor_options,
    add_out_or_resume,
    add_set_option,
    positive_int,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search",
        help="the least hardware (HBM, link bandwidth, ...) at which a policy meets a target",
        description=(
            "For each policy, find the value of a scenario field at which a target on a "
            "summary metric is just met, by bisection on the simulator (a Pareto frontier "
            "with two --vary). Each simulation is written at once; --resume DIR continues."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="scenario YAML (without a sweep: block)")
    parser.add_argument(
        "--vary",
        metavar="FIELD",
        action="append",
        required=True,
        help="dotted scenario field with a unit or an integer, e.g. "
        "hardware.links.md_link.bandwidth (twice: a two-field Pareto frontier)",
    )
    parser.add_argument(
        "--range",
        metavar="LO:HI",
        dest="ranges",
        action="append",
        required=True,
        help="the field's range with units, e.g. '16 GB/s:512 GB/s', '8 experts:64 experts', "
        "'1:8' (one per --vary, in order)",
    )
    parser.add_argument(
        "--target",
        metavar="'METRIC OP VALUE'",
        required=True,
        help="a summary column, <=, >=, < or >, and a value, e.g. 'mean_step <= 10 ms', "
        "'p99_step < 20 ms', 'hit_rate >= 0.5'",
    )
    parser.add_argument(
        "--policy",
        metavar="NAME",
        dest="policies",
        action="extend",
        nargs="+",
        default=[],
        help="policy labels of the scenario or registered policy names (default: every "
        "policy of the scenario)",
    )
    parser.add_argument(
        "--tolerance",
        metavar="T",
        default=None,
        help="relative resolution of the boundary, e.g. 1%% or 0.01 (default 1%%)",
    )
    parser.add_argument(
        "--grid",
        metavar="N",
        type=positive_int,
        default=None,
        help="values per field of the fallback grid when the metric is not monotone, and of "
        "the first field on a two-field frontier (default 17)",
    )
    add_executor_options(parser)
    add_out_or_resume(parser, "search", "simulations")
    add_set_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress counter")
    parser.add_argument(
        "--no-report", action="store_true", help="do not write report.html (the frontier figure)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from sim.search.output import notes, tables
    from sim.search.question import DEFAULT_GRID, load_question
    from sim.search.run import run_search

    question = load_question(
        args.file,
        args.vary,
        args.ranges,
        args.target,
        policies=args.policies,
        tolerance=args.tolerance,
        grid=DEFAULT_GRID if args.grid is None else args.grid,
        sets=args.overrides,
    )
    out = args.resume or args.out or default_out_dir(question)
    report = run_search(
        question,
        out,
        resume=args.resume is not None,
        executor=args.executor,
        jobs=args.jobs,
        scheduler=args.scheduler,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    console = Console(file=sys.stdout, width=140, highlight=False)
    for table in tables(report):
        console.print(table)
    for line in notes(report):
        print(line)
    print(
        f"search: {report.ran + report.reused} simulations ({report.reused} read back, "
        f"{report.ran} run) in {report.elapsed:.1f} s"
    )
    print(f"results: {report.out_dir}/search.csv")
    if not args.no_report:
        from sim.report import write_report

        print(f"report: {write_report(report.out_dir)}")
    return 0


def default_out_dir(question: object) -> Path:
    """``<output.dir>/<name>-search-<UTC time>``, named like a run's results directory."""
    from sim.scenario.run import new_results_dir

    base = getattr(question, "base", {})
    source = str(getattr(question, "source", "search"))
    name = str(base.get("name") or Path(source).stem)
    output = base.get("output")
    parent = output.get("dir", "results") if isinstance(output, dict) else "results"
    return new_results_dir(parent, f"{name}-search")
