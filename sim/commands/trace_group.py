"""The ``moesim trace ...`` command group. Its sub-commands live in their own modules
(``trace_*.py``) and attach themselves with ``trace_subparsers(subparsers)``."""

from __future__ import annotations

import argparse


def trace_subparsers(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-parsers of ``moesim trace``, created on first use for this parser."""
    existing = getattr(subparsers, "_moesim_trace", None)
    if existing is None:
        trace = subparsers.add_parser("trace", help="load, inspect, analyse and generate traces")
        existing = trace.add_subparsers(
            dest="trace_command", metavar="TRACE_COMMAND", parser_class=type(trace)
        )
        trace.set_defaults(func=lambda _args: trace.print_help() or 2)
        subparsers._moesim_trace = existing  # type: ignore[attr-defined]
    return existing


def register(subparsers: argparse._SubParsersAction) -> None:
    trace_subparsers(subparsers)
