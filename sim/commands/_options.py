"""Options several commands share, defined once so they read and behave the same."""

from __future__ import annotations

import argparse


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``: a scenario field by dotted
    path, the value parsed as YAML, applied before validation."""
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a scenario field by dotted path, e.g. "
        "--set hardware.hbm.capacity='32 experts' (repeatable; the value is YAML)",
    )


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--executor`` and ``--scheduler``: where sweep or search points run."""
    parser.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help="worker processes (default: one per core; 1 runs in this process)",
    )
    parser.add_argument(
        "--executor",
        choices=("local", "dask"),
        default="local",
        help="local process pool (default) or Dask distributed",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster of --jobs workers)",
    )


def add_out_or_resume(parser: argparse.ArgumentParser, what: str, kept: str) -> None:
    """``--out DIR`` or ``--resume DIR`` (one of them): a new results directory, or one to
    continue, keeping its finished ``kept``."""
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--out", metavar="DIR", default=None, help="results directory (default: results/...)"
    )
    target.add_argument(
        "--resume",
        metavar="DIR",
        default=None,
        help=f"continue the {what} in DIR: finished {kept} are kept, the others run",
    )


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value
