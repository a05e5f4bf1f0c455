"""``moesim sweep FILE``: run every point of a scenario's ``sweep:`` block (see docs/sweeps.md)."""

from __future__ import annotations

import argparse
import sys

from sim.commands._options import add_executor_options, add_out_or_resume, add_set_option
from sim.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of scenarios (hardware, HBM budget, routing, policies) and tabulate it",
        description=(
            "Run every point of the scenario's 'sweep:' block (grid, zip, repeats). Each "
            "finished point is written at once; --resume DIR continues a stopped sweep."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="scenario YAML with a 'sweep:' block")
    add_executor_options(parser)
    add_out_or_resume(parser, "sweep", "points")
    add_set_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--report", action="store_true", help="write the HTML report of the sweep afterwards"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sim.sweep import default_out_dir, load_sweep, run_sweep

    if args.scheduler is not None and args.executor != "dask":
        raise UserError("--scheduler: expected --executor dask with it, got --executor local")
    spec = load_sweep(args.file, args.overrides)
    out = args.resume or args.out or default_out_dir(spec)
    report = run_sweep(
        spec,
        out,
        resume=args.resume is not None,
        executor=args.executor,
        jobs=args.jobs,
        scheduler=args.scheduler,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    rate = report.ran / report.elapsed if report.elapsed > 0 else 0.0
    print(
        f"sweep: {report.total} points ({report.skipped} already finished, {report.ran} run) "
        f"in {report.elapsed:.1f} s ({rate:.2f} points/s); {report.rows} rows"
    )
    from sim.report import sweep_summary_lines, write_report
    from sim.report.load import load_results

    for line in sweep_summary_lines(load_results(report.out_dir)):
        print(line)
    print(f"results: {report.out_dir}/sweep.csv")
    if args.report:
        print(f"report: {write_report(report.out_dir)}")
    return 0
