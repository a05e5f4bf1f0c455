"""``moesim report DIR``: figures and a self-contained HTML report from a results directory."""

from __future__ import annotations

import argparse

from sim.commands._options import int_range
from sim.errors import UserError
from sim.limits import MAX_SEQ_LEN


def parse_window(text: str | None) -> tuple[int, int] | None:
    """``'STEP0:STEP1'`` -> ``(STEP0, STEP1)``: steps STEP0 .. STEP1-1, like a Python slice."""
    if text is None:
        return None
    start, sep, stop = text.partition(":")
    try:
        if max(len(start), len(stop)) > 20:
            raise ValueError(text)
        window = (int(start), int(stop))
    except ValueError:
        window = None
    if (
        not sep
        or window is None
        or window[0] < 0
        or window[1] <= window[0]
        or window[1] > MAX_SEQ_LEN
    ):
        raise UserError(
            f"--window: expected STEP0:STEP1 with 0 <= STEP0 < STEP1 <= {MAX_SEQ_LEN:,}, "
            f"got {text[:40]!r}"
        )
    return window


def run(args: argparse.Namespace) -> int:
    from sim.report import write_report  # matplotlib is imported only when a report is made

    path = write_report(
        args.dir,
        args.format,
        window=parse_window(args.window),
        timeline=args.timeline,
        out_dir=args.out,
        dpi=args.dpi,
    )
    print(f"report: {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="figures and a self-contained report.html from a run, sweep or trace-stats directory",
        description=(
            "Read a results directory (moesim run, moesim sweep or moesim trace stats) and write "
            "report.html (figures embedded, no network needed), figures/*.png and/or report.pdf."
        ),
    )
    parser.add_argument("dir", metavar="DIR", help="results directory")
    parser.add_argument(
        "--format",
        default="html,png",
        help="comma list of html, png, pdf (default: html,png)",
    )
    parser.add_argument(
        "--window",
        metavar="STEP0:STEP1",
        help="steps STEP0..STEP1-1 for the link timeline (default: the first two steps)",
    )
    parser.add_argument(
        "--timeline",
        metavar="FILE",
        help="trace-event JSON from `moesim run --timeline` (default: DIR/timeline.json)",
    )
    parser.add_argument("--out", metavar="OUT", help="write here instead of DIR")
    parser.add_argument(
        "--dpi", type=int_range(20, 600), default=110, help="PNG resolution, 20..600 (default: 110)"
    )
    parser.set_defaults(func=run)
