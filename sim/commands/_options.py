"""Options several commands share, defined once so they read and behave the same."""

from __future__ import annotations

import argparse
import math

from sim.limits import INT32_MAX


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
        type=int_range(1, 1024),
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


class NumberRange:
    """An argparse type for a number in ``[lo, hi]``: every numeric flag has one (a test walks
    every parser and checks it), so no flag takes 0, a negative, an overflowing or a non-finite
    value it cannot use (``report --dpi 0`` crashed the renderer, ``--dpi 100000`` too)."""

    def __init__(self, kind: type | None, lo: float, hi: float, what: str = "") -> None:
        self.kind, self.lo, self.hi = kind, lo, hi
        self.__name__ = what or ("an integer" if kind is int else "a number")

    def _expected(self) -> str:
        if self.kind is int:
            return f"{self.__name__} in {int(self.lo):,}..{int(self.hi):,}"
        return f"{self.__name__} in [{self.lo:g}, {self.hi:g}]"

    def __call__(self, text: str) -> int | float:
        cleaned = text.strip().replace("_", "")
        try:
            if len(cleaned) > 40:  # Python converts up to 4300 digits, then fails
                raise ValueError(text)
            value: int | float = int(cleaned) if self.kind is int else float(cleaned)
            integral = math.isfinite(value) and float(value).is_integer()
            if self.kind is None and integral and cleaned.lstrip("+-").isdigit():
                value = int(cleaned)  # written as an integer: kept one (the notebook's `32`)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {self._expected()}, got {text[:40]!r}"
            ) from None
        if not (math.isfinite(value) and self.lo <= value <= self.hi):
            raise argparse.ArgumentTypeError(f"expected {self._expected()}, got {text[:40]!r}")
        return value


def int_range(lo: int, hi: int, what: str = "an integer") -> NumberRange:
    """``type=`` for an integer flag in ``lo..hi``."""
    return NumberRange(int, lo, hi, what)


def float_range(lo: float, hi: float, what: str = "a number") -> NumberRange:
    """``type=`` for a finite number flag in ``[lo, hi]``."""
    return NumberRange(float, lo, hi, what)


positive_int = int_range(1, INT32_MAX, "a positive integer")
non_negative_int = int_range(0, INT32_MAX, "an integer >= 0")
