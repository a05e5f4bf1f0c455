"""``moesim run FILE``: run a scenario, print the comparison, save a results directory."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sim.commands._options import add_set_option
from sim.errors import UserError


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
        nargs="?",
        const="all",
        metavar="STEP0:STEP1",
        help="record every policy's timeline (Chrome/Perfetto trace events, timeline.json in the "
        "results directory) of steps STEP0..STEP1-1, or of every step when no window is given; "
        f"without this option the {DEFAULT_TIMELINE_STEPS} steps from the middle of the trace are "
        "recorded for the baseline and the best online policy",
    )
    p.add_argument("--report", action="store_true", help="write the HTML report afterwards")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.set_defaults(func=run_command)


DEFAULT_TIMELINE_STEPS = 2


def timeline_window(text: str | None) -> tuple[int, int] | str | None:
    """``--timeline``: absent (None), every step (``all``) or ``STEP0:STEP1``."""
    if text is None or text == "all":
        return text
    from sim.commands.report import parse_window

    try:
        return parse_window(text)
    except UserError:
        raise UserError(
            f"--timeline: expected STEP0:STEP1 with 0 <= STEP0 < STEP1 (or no value: every "
            f"step), got {text!r}"
        ) from None


def run_command(args: argparse.Namespace) -> int:
    from sim.scenario import load_scenario, load_scenario_trace, run_scenario, write_results
    from sim.scenario.run import check_out_dir, new_results_dir
    from sim.scenario.table import print_comparison

    window = timeline_window(args.timeline)
    scenario = load_scenario(args.file, args.overrides)
    out = Path(args.out) if args.out else new_results_dir(scenario.output.dir, scenario.name)
    check_out_dir(out)
    trace = load_scenario_trace(scenario)  # everything is validated before anything is written
    if window is None:  # the default: a short window in the middle, for the report's Gantt
        first = trace.num_steps // 2
        window = (first, min(trace.num_steps, first + DEFAULT_TIMELINE_STEPS))
    elif window != "all" and window[0] >= trace.num_steps:
        raise UserError(
            f"--timeline: expected steps below the trace's {trace.num_steps}, got {args.timeline!r}"
        )
    start = time.perf_counter()
    record = True if window == "all" else window
    results = run_scenario(scenario, trace, progress=not args.quiet, timeline=record)
    elapsed = time.perf_counter() - start
    chosen = args.timeline is not None or scenario.output.timeline
    path = write_results(
        out, scenario, trace, results, timeline_runs="all" if chosen else "compare"
    )
    if not args.quiet:
        print_comparison(scenario, results, trace)
        print(f"{len(results)} runs in {elapsed:.2f} s wall time")
    print(f"results: {path}")
    if args.report:
        from sim.report import write_report

        print(f"report: {write_report(path)}")
    return 0
