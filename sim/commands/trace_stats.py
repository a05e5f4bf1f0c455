"""``moesim trace stats``: the seed notebook's statistics (cell 1), exact, for any selection."""

from __future__ import annotations

import argparse
import shlex
import sys

from sim.commands._options import NumberRange, float_range
from sim.commands._trace_args import add_trace_selection_args, trace_from_args
from sim.commands.trace_group import trace_subparsers
from sim.errors import UserError
from sim.limits import MAX_PARAM_FLOAT
from sim.ranges import parse_int_selection
from sim.stats.gating import ROUNDINGS, GatingRule

# BW_PCIe / BW_MD: only their ratio matters; an int when written as one (the notebook printed
# ``32``, not ``32.0``)
number = NumberRange(None, 1e-15, MAX_PARAM_FLOAT, "a positive number")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = trace_subparsers(subparsers).add_parser(
        "stats",
        help="the seed notebook's per-expert counts and gating numbers (exact)",
        description="Count tokens per expert for every (position, layer, top-k) cell and apply "
        "the seed's gating rule. Writes DIR/gating.csv, DIR/counts.csv, DIR/meta.json; with "
        "--notebook-tree also the notebook's own file tree. With --layout seed the numbers are "
        "the notebook's; with --layout megatron (default) positions are true decode steps.",
    )
    add_trace_selection_args(parser, layout_default="megatron", notebook_defaults=True)
    group = parser.add_argument_group("statistics")
    group.add_argument("--topk", default="1,2,6", help="top-k values to count (default 1,2,6)")
    group.add_argument("--bw-pcie", type=number, default=32, help="BW_PCIe (default 32)")
    group.add_argument("--bw-md", type=number, default=512, help="BW_MD (default 512)")
    group.add_argument(
        "--alpha", type=float_range(0.0, 1e6), default=1.0, help="alpha: H = int(alpha*Expert_GPU)"
    )
    group.add_argument(
        "--rounding",
        choices=ROUNDINGS,
        default="nearest",
        help="Expert_GPU rounding (default nearest = Python round, the seed's)",
    )
    group.add_argument(
        "--extend-layers",
        metavar="LAYERS",
        help="add these layers as cyclic copies of --extend-from first (seed cell 2: 10-26); "
        "they are marked synthetic",
    )
    group.add_argument(
        "--extend-from",
        metavar="LAYERS",
        default="2-9",
        help="source layers of --extend-layers (default 2-9)",
    )
    group.add_argument(
        "--notebook-tree",
        action="store_true",
        help="also write the notebook's tree (1st/Layer_2/...pt,.txt,.csv,_top{k}_stats.*)",
    )
    group.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here: the parser of every moesim command is built on each call.
    from sim.stats.counts import count_cells
    from sim.stats.extend import extend_layers
    from sim.stats.outputs import COUNTS_CSV, GATING_CSV, LAYOUT_NOTES, META_JSON, write_stats

    topks = parse_int_selection(args.topk, "--topk")
    if not topks:
        raise UserError(f"--topk: expected values like 1,2,6, got {args.topk!r}")
    rule = GatingRule(args.bw_pcie, args.bw_md, args.alpha, args.rounding)
    rule.split(0)  # validate the constants before loading anything
    trace = trace_from_args(args)
    if args.extend_layers:
        targets = parse_int_selection(args.extend_layers, "--extend-layers")
        sources = parse_int_selection(args.extend_from, "--extend-from")
        if targets is None or sources is None:
            raise UserError("--extend-layers/--extend-from: expected explicit layers, got 'all'")
        trace = extend_layers(trace, tuple(sources), tuple(targets))
    cells = count_cells(trace, topks)
    command = shlex.join(["moesim", *sys.argv[1:]]) if sys.argv else "moesim trace stats"
    result = write_stats(
        args.out, trace, cells, rule, notebook_tree=args.notebook_tree, command=command
    )

    layout = trace.meta.layout
    print(f"trace: {trace.describe()}")
    print(f"layout: {layout} ({LAYOUT_NOTES[layout]})")
    if trace.meta.synthetic_layers:
        print(f"synthetic (copied) layers: {list(trace.meta.synthetic_layers)}")
    print(
        f"cells: {cells.num_cells} ({len(cells.positions)} positions x {len(cells.layers)} "
        f"layers) x top-{','.join(map(str, cells.topks))}; BW_PCIe={rule.bw_pcie} "
        f"BW_MD={rule.bw_md} alpha={rule.alpha} rounding={rule.rounding}"
    )
    means = ", ".join(f"top-{k} {v:.2f}" for k, v in result.mean_activ.items())
    print(f"mean Expert_Activ per cell: {means}")
    out = args.out.rstrip("/")
    print(
        f"wrote {out}/{GATING_CSV} ({result.gating_rows} rows), {out}/{COUNTS_CSV} "
        f"({result.count_rows} rows), {out}/{META_JSON}"
        + (f", notebook tree ({result.tree_files} files)" if args.notebook_tree else "")
    )
    return 0
