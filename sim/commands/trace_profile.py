"""``moesim trace profile ROOT``: the statistics that decide whether expert caching can help.

Per layer: popularity skew and entropy, step-to-step overlap, reuse distances, working set,
miss-ratio curves under LRU / OPT / static pinning, inter-layer co-activation and token-id
consistency (see ``docs/trace-profile.md``). Prints a table; with ``--out DIR`` also writes
profile.json, CSV tables and PNG figures there.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from sim.commands._options import int_range
from sim.commands._trace_args import add_trace_selection_args, trace_from_args
from sim.commands.trace_group import trace_subparsers
from sim.errors import UserError
from sim.limits import MAX_BATCH, MAX_EXPERTS
from sim.trace.profile import profile_trace
from sim.trace.profile_output import column_legend, summary_table, write_profile


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = trace_subparsers(subparsers).add_parser(
        "profile",
        help="popularity, locality, working set and miss-ratio curves of a trace",
        description=__doc__,
    )
    add_trace_selection_args(parser)
    parser.add_argument(
        "--topk",
        type=int_range(1, MAX_EXPERTS),
        help="profile top-K routing (default: the trace's k)",
    )
    parser.add_argument(
        "--seqs",
        type=int_range(1, MAX_BATCH),
        help="use only the first N sequences (the batch size: the working set depends on it)",
    )
    parser.add_argument("--out", type=Path, help="write profile.json, CSVs and PNGs here")
    parser.add_argument("--no-figures", action="store_true", help="with --out: skip the PNGs")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    trace = trace_from_args(args)
    if args.seqs is not None:
        if args.seqs > trace.num_seqs:
            raise UserError(f"--seqs: expected at most {trace.num_seqs} sequences, got {args.seqs}")
        trace = trace.select(seqs=slice(0, args.seqs))
    if args.topk is not None and args.topk > trace.k:
        raise UserError(
            f"--topk: expected at most the trace's k ({trace.k}; more would invent experts), "
            f"got {args.topk}"
        )
    profile = profile_trace(trace, args.topk)
    written = None
    if args.out is not None:  # written before printing: a write error is the only output
        written = write_profile(profile, args.out, figures=not args.no_figures)
    console = Console(highlight=False, soft_wrap=False)
    console.width = max(console.width, 150)  # the table is wide; never squash it into "…"
    console.print(summary_table(profile))
    for line in column_legend(profile):
        console.print(line, markup=False)
    if written is not None:
        console.print(f"wrote {len(written)} files to {args.out}")
    return 0
