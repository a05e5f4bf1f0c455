"""``moesim schema --markdown``: the scenario file reference (docs/scenarios.md) from the schema."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sim.errors import UserError

EXAMPLE = Path(__file__).resolve().parents[2] / "scenarios" / "default.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "schema", help="print the scenario file reference (Markdown) generated from the schema"
    )
    p.add_argument("--markdown", action="store_true", help="Markdown (the only format; default)")
    p.add_argument("--out", metavar="FILE", help="write to FILE (atomically) instead of stdout")
    p.set_defaults(func=schema_command)


def schema_command(args: argparse.Namespace) -> int:
    from sim.atomic import write_text
    from sim.scenario.schema_docs import schema_markdown

    example = EXAMPLE.read_text(encoding="utf-8") if EXAMPLE.is_file() else ""
    text = schema_markdown(example)
    if args.out:
        if not Path(args.out).parent.is_dir():
            raise UserError(f"--out: expected a file in an existing directory, got {args.out!r}")
        write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0
