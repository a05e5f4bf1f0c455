"""The ``moesim`` command line.

Each command lives in its own module under ``sim/commands/`` and exposes
``register(subparsers)``; it adds one sub-command (or a group) whose handler is stored as
``func`` in the parsed arguments. Handlers return an exit code. A ``UserError`` anywhere is
printed as one line on stderr with exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import signal
import sys
import threading
from collections.abc import Sequence

import sim
import sim.commands
from sim.errors import EXIT_USER_ERROR, UserError, os_error_line


class _Parser(argparse.ArgumentParser):
    """argparse exits with 2 on bad flags already; make its message one line like ours."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moesim", description=sim.__doc__)
    parser.add_argument("--version", action="version", version=f"moesim {sim.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for info in sorted(pkgutil.iter_modules(sim.commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue  # shared helpers, not commands
        module = importlib.import_module(f"sim.commands.{info.name}")
        module.register(subparsers)
    return parser


def _exit_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so the cleanups of partial outputs run
    (temporary result directories and files are removed, never left half-written)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))


def main(argv: Sequence[str] | None = None) -> int:
    _exit_on_sigterm()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"moesim: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:  # the environment (disk full, I/O error) where no guard names it
        print(f"moesim: error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return 130
