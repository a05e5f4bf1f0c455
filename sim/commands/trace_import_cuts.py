"""``moesim trace import-cuts SRC --out DIR``: turn a notebook prefill cut into a trace directory.

This is how ``traces/flame-moe-290m-real/`` is made (see its README): the prefill cut's rows
are 8 sequences x 256 consecutive decode steps of real routing, written back in the dump
layout with a ``trace.yaml`` so that every command can read it like any other dump.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from sim.commands._options import int_range
from sim.commands._trace_args import require_new_output_dir
from sim.commands.trace_group import trace_subparsers
from sim.errors import UserError
from sim.limits import MAX_BATCH
from sim.trace.routing import RoutingTrace

if TYPE_CHECKING:
    import torch

_INDEX_DTYPES = ("int16", "int32", "int64")  # torch dtype names


def default_provenance(trace: RoutingTrace) -> str:
    """Where the rows of a prefill cut come from, in words."""
    m = trace.meta
    release = (
        "CMU-FLAME FLAME-MoE-Traces (Apache-2.0), " if m.model.startswith("flame-moe-") else ""
    )
    rows = trace.num_steps * trace.num_seqs
    shards = ",".join(m.shards) or "?"
    return (
        f"real {m.model} routing rows (run {m.runid}, iteration {m.epoch}), {release}"
        f"cut by the seed notebook's prefill twin (rows 0..{rows - 1} of shard {shards})"
    )


def import_cuts(
    src: Path,
    out: Path,
    *,
    micro_batch_size: int = 8,
    provenance: str | None = None,
    index_dtype: torch.dtype | None = None,  # default torch.int16
    force: bool = False,
) -> RoutingTrace:
    """Convert the prefill cut at ``src`` into a dump + trace.yaml at ``out``."""
    import torch

    from sim.trace.cuts import is_decoder_dir, is_prefill_dir, load_prefill_cut
    from sim.trace.writer import write_dump

    index_dtype = torch.int16 if index_dtype is None else index_dtype
    if is_decoder_dir(src) and not is_prefill_dir(src):
        raise UserError(
            f"{src}: expected a prefill cut, got decoder cuts (ragged in true order: read them "
            "directly with --layout seed instead of importing)"
        )
    mode = require_new_output_dir(out, force)
    trace = load_prefill_cut(src, micro_batch_size=micro_batch_size)
    notes = (
        "Tokens are known for sequence 0 only (the cut holds samples rows 0..N-1, i.e. sequence "
        "0's tokens); other sequences have token id -1."
    )
    meta = replace(
        trace.meta,
        provenance=provenance or default_provenance(trace),
        extra={**trace.meta.extra, "notes": notes},
    )
    trace = replace(trace, meta=meta)
    write_dump(trace, out, shard_prefix="0", index_dtype=index_dtype, mode=mode)
    return trace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = trace_subparsers(subparsers).add_parser(
        "import-cuts",
        help="convert a notebook prefill cut into a trace directory (dump + trace.yaml)",
        description=__doc__,
    )
    parser.add_argument("src", metavar="SRC", help="prefill cut directory (holding Layer_<n>/)")
    parser.add_argument("--out", required=True, type=Path, help="output trace directory")
    parser.add_argument(
        "--micro-batch-size",
        type=int_range(1, MAX_BATCH),
        default=8,
        help="B of the dump the cut came from (default 8)",
    )
    parser.add_argument("--provenance", help="provenance text for trace.yaml (default: derived)")
    parser.add_argument(
        "--index-dtype", choices=sorted(_INDEX_DTYPES), default="int16", help="expert id dtype"
    )
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import torch

    src = Path(args.src)
    trace = import_cuts(
        src,
        args.out,
        micro_batch_size=args.micro_batch_size,
        provenance=args.provenance,
        index_dtype=getattr(torch, args.index_dtype),
        force=args.force,
    )
    print(f"wrote {args.out}: {trace.describe()}")
    return 0
