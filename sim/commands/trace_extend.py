"""``moesim trace extend-layers``: the seed notebook's cell 2 on a notebook tree, explicitly.

Adds layers 10-26 (``--to``) to every position folder as cyclic copies of layers 2-9
(``--from``), in place, and records them as synthetic in ``extended_layers.json``. The same
transform on a trace is ``moesim trace stats --extend-layers`` (`sim.stats.extend.extend_layers`).
"""

from __future__ import annotations

import argparse

from sim.commands.trace_group import trace_subparsers
from sim.errors import UserError
from sim.ranges import parse_int_selection
from sim.stats import EXTENDED_MANIFEST


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = trace_subparsers(subparsers).add_parser(
        "extend-layers",
        help="add layers 10-26 to a notebook tree as copies of 2-9 (seed cell 2), marked synthetic",
        description="Copy layers cyclically in a notebook tree (as written by "
        "'moesim trace stats --notebook-tree' or by the seed notebook): target layer t copies "
        "source layer FROM[(t - first target) mod len(FROM)]. The copies are marked synthetic "
        f"in TREE/{EXTENDED_MANIFEST} and in each copied .pt ('copied_from_layer').",
    )
    parser.add_argument("tree", metavar="TREE", help="notebook tree directory (1st/, 2nd/, ...)")
    parser.add_argument("--from", dest="sources", default="2-9", help="source layers (2-9)")
    parser.add_argument("--to", dest="targets", default="10-26", help="new layers (10-26)")
    parser.add_argument(
        "--force", action="store_true", help="overwrite target layer folders that already exist"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sim.stats.extend import extend_notebook_tree  # torch: imported only when used

    sources = parse_int_selection(args.sources, "--from")
    targets = parse_int_selection(args.targets, "--to")
    if sources is None or targets is None:
        raise UserError("--from/--to: expected explicit layers, got 'all'")
    done = extend_notebook_tree(args.tree, tuple(sources), tuple(targets), overwrite=args.force)
    pairs = ", ".join(f"{t}<-{s}" for t, s in done.copies.items())
    print(f"extended {len(done.positions)} position folders ({', '.join(done.positions)})")
    print(f"layers (target<-source): {pairs}")
    print(f"wrote {done.files_written} files; copies recorded as synthetic in {EXTENDED_MANIFEST}")
    return 0
