"""Shared command-line options that choose a trace and the part of it to load.

Every command that reads a trace adds these with `add_trace_selection_args` and builds the
trace with `trace_from_args`, so selection means the same thing everywhere.

Defaults that depend on the source: the row layout defaults to the command's own default for a
raw FLAME-MoE dump, and to the directory's own layout for trace directories with ``trace.yaml``
(embedded, synthetic, imported) and for notebook cuts. With ``notebook_defaults`` the shard
selection of a raw dump defaults to the seed's (``1-2,1-3``), positions to 0-9 and layers to 2-9.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sim import opener
from sim.atomic import DirMode
from sim.commands._options import int_range, non_negative_int, positive_int
from sim.errors import UserError
from sim.limits import MAX_BATCH, MAX_EXPERTS, MAX_SEQ_LEN
from sim.ranges import parse_int_selection, parse_name_list
from sim.trace.dump import shard_range
from sim.trace.routing import LAYOUTS, RoutingTrace
from sim.trace.tracefile import trace_yaml_path

NOTEBOOK_SHARDS = (1, 2, 2)  # --shard-prefix, --first-shard, --num-shards of the seed
NOTEBOOK_POSITIONS = "0-9"
NOTEBOOK_LAYERS = "2-9"


def add_trace_selection_args(
    parser: argparse.ArgumentParser,
    *,
    layout_default: str = "megatron",
    notebook_defaults: bool = False,
) -> None:
    """Add ROOT and the trace selection options to ``parser``."""
    if layout_default not in LAYOUTS:
        raise ValueError(f"layout_default must be one of {LAYOUTS}")
    prefix, first, num = NOTEBOOK_SHARDS if notebook_defaults else (0, 0, 1)
    parser.add_argument(
        "root",
        metavar="ROOT",
        help="trace source: a dump root (samples/ + actives/), a notebook prefill or decoder cut "
        "directory, or 'embedded' (the real FLAME-MoE-290M trace shipped in traces/)",
    )
    group = parser.add_argument_group("trace selection")
    group.add_argument(
        "--layout",
        choices=LAYOUTS,
        default=None,
        help=f"row layout (default: {layout_default} for a raw dump; the directory's own for "
        "trace.yaml directories and cuts)",
    )
    group.add_argument("--model", help="model directory (default: trace.yaml, or the only one)")
    group.add_argument("--runid", help="run id directory (default: trace.yaml, or the only one)")
    group.add_argument(
        "--epoch",
        help="epoch (checkpoint iteration) directory (default: trace.yaml, or the only one)",
    )
    group.add_argument(
        "--shards",
        help="shard names, e.g. 0-0,0-1 (default: all shards"
        + (
            f"; for a raw dump the seed's {','.join(shard_range(*NOTEBOOK_SHARDS))}"
            if notebook_defaults
            else ""
        )
        + ")",
    )
    group.add_argument(
        "--shard-prefix",
        help=f"seed-style selection: micro-batch counter c of c-r (default {prefix})",
    )
    group.add_argument(
        "--first-shard",
        type=non_negative_int,
        help=f"seed-style selection: first rank r (default {first})",
    )
    group.add_argument(
        "--num-shards",
        type=positive_int,
        help=f"seed-style selection: number of shards (default {num})",
    )
    positions_default = NOTEBOOK_POSITIONS if notebook_defaults else "all"
    layers_default = NOTEBOOK_LAYERS if notebook_defaults else "all"
    group.add_argument(
        "--positions",
        default=positions_default,
        help=f"steps/positions: range, list or 'all' (default {positions_default})",
    )
    group.add_argument(
        "--layers",
        default=layers_default,
        help=f"layer ids: range, list or 'all' (default {layers_default})",
    )
    group.add_argument(
        "--num-experts",
        type=int_range(1, MAX_EXPERTS),
        help="routed experts (default: trace.yaml or model preset; FLAME-MoE: 64)",
    )
    group.add_argument(
        "--k",
        type=int_range(1, MAX_EXPERTS),
        help="top-k of the dense [T, experts] format (default: trace.yaml or preset; FLAME-MoE: 6)",
    )
    group.add_argument(
        "--seq-len",
        type=int_range(1, MAX_SEQ_LEN),
        help="megatron S (default 2048 or trace.yaml); seed L (default 512)",
    )
    group.add_argument(
        "--micro-batch-size",
        type=int_range(1, MAX_BATCH),
        help="megatron B: sequences per shard (default 8 or trace.yaml)",
    )
    parser.set_defaults(
        _trace_layout_default=layout_default,
        _trace_notebook_defaults=notebook_defaults,
    )


def is_raw_dump(root: str) -> bool:
    """A dump root without ``trace.yaml`` (a FLAME-MoE dump as written by Megatron)."""
    from sim.trace.open import EMBEDDED_PREFIX, is_dump_root  # loads torch: not at --help

    if root == EMBEDDED_PREFIX or root.startswith(EMBEDDED_PREFIX + ":"):
        return False
    path = Path(root)
    return is_dump_root(path) and not trace_yaml_path(path).exists()


def selected_shards(args: argparse.Namespace, raw_dump: bool) -> tuple[str, ...] | None:
    """Shard stems from --shards or the seed-style options; None means all shards."""
    notebook = bool(getattr(args, "_trace_notebook_defaults", False))
    seed_style = (args.shard_prefix, args.first_shard, args.num_shards)
    if args.shards is not None:
        if any(v is not None for v in seed_style):
            raise UserError(
                "--shards: expected either --shards or --shard-prefix/--first-shard/"
                "--num-shards, got both"
            )
        names = parse_name_list(args.shards, "--shards")
        return tuple(names) if names is not None else None
    if all(v is None for v in seed_style):
        return shard_range(*NOTEBOOK_SHARDS) if notebook and raw_dump else None
    prefix, first, num = NOTEBOOK_SHARDS if notebook else (0, 0, 1)
    return shard_range(
        args.shard_prefix if args.shard_prefix is not None else prefix,
        args.first_shard if args.first_shard is not None else first,
        args.num_shards if args.num_shards is not None else num,
    )


def trace_from_args(args: argparse.Namespace) -> RoutingTrace:
    """Open the trace the parsed options describe."""
    from sim.trace.open import EMBEDDED_PREFIX, embedded_root, open_trace

    root = os.fspath(args.root)
    if root == EMBEDDED_PREFIX or root.startswith(EMBEDDED_PREFIX + ":"):
        embedded_root(root)  # a clear error when the trace is not shipped
    raw = is_raw_dump(root)
    layout = args.layout or (getattr(args, "_trace_layout_default", "megatron") if raw else None)
    positions = parse_int_selection(args.positions, "--positions")
    layers = parse_int_selection(args.layers, "--layers")
    return open_trace(
        root,
        layout=layout,
        shards=selected_shards(args, raw),
        layers=layers,
        positions=positions,
        model=args.model,
        runid=args.runid,
        epoch=args.epoch,
        num_experts=args.num_experts,
        k=args.k,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch_size,
    )


def require_new_output_dir(out: Path, force: bool) -> DirMode:
    """How a trace writer may write ``out``: ``new`` (absent or empty), or ``replace`` with
    --force over an older trace directory (swapped whole, so none of its files survive).
    --force never replaces a directory that is not a trace (it would delete other files)."""
    from sim.trace.open import is_routing_trace_dir  # loads torch: not at --help

    kind = opener.describe(out)
    if kind == "nothing (missing)":
        return "new"
    if kind != "a directory":
        raise UserError(f"{out}: expected a new or empty directory, got {kind}")
    if not any(out.iterdir()):
        return "new"
    if not force:
        raise UserError(
            f"{out}: expected an empty or new directory, got existing content "
            "(pass --force to replace the trace in it)"
        )
    if not is_routing_trace_dir(out):
        raise UserError(
            f"{out}: expected --force over a trace directory (trace.yaml, or samples/ and "
            "actives/), got a directory holding other files; choose another --out"
        )
    return "replace"
