"""``moesim presets [KIND]``: list the hardware and model presets with their sources."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from sim.errors import UserError
from sim.presets import KINDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "presets",
        help="list link, GPU, model and whole-hardware presets with their sources",
        description="List presets (sim/presets/*.yaml; docs/presets.md explains them).",
    )
    p.add_argument("kind", nargs="?", choices=KINDS, help="only this kind (default: all)")
    p.add_argument("--markdown", action="store_true", help="print docs/presets.md instead")
    p.add_argument("--out", metavar="FILE", help="with --markdown: write FILE (atomically)")
    p.set_defaults(func=presets_command)


def presets_command(args: argparse.Namespace) -> int:
    if args.markdown:
        return _markdown(args.out)
    console = Console(file=sys.stdout, width=160)
    for kind in [args.kind] if args.kind else KINDS:
        console.print(preset_table(kind))
    return 0


def _markdown(out: str | None) -> int:
    from sim.atomic import write_text
    from sim.scenario.presets_view import presets_markdown

    text = presets_markdown()
    if out is None:
        sys.stdout.write(text)
        return 0
    if not Path(out).parent.is_dir():
        raise UserError(f"--out: expected a file in an existing directory, got {out!r}")
    write_text(out, text)
    print(f"wrote {out}")
    return 0


def preset_table(kind: str) -> Table:
    """One table of presets of ``kind``: name, key figures (validated, SI-formatted), source."""
    from sim.presets import presets
    from sim.scenario.presets_view import preset_summary

    table = Table(title=f"{kind} presets", show_lines=False)
    for column in ("name", "figures", "source"):
        table.add_column(column, overflow="fold")
    for name, entry in presets(kind).items():
        table.add_row(
            Text(name), Text(preset_summary(kind, name)), Text(str(entry.get("source", "")))
        )
    return table
