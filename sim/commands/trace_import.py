"""``moesim trace import FORMAT SRC --out ROOT``: convert other routing dumps to a trace directory.

FORMAT is ``parquet`` (the FLAME-MoE-Traces release: SRC is a model directory such as
``flame-moe-290m/`` holding ``samples/`` and ``actives/iter_NNNN/``), ``numpy`` (a ``.npy`` /
``.npz`` array ``[tokens, layers, k]`` of expert ids) or ``jsonl`` (one JSON object per layer and
token). The result is the FLAME-MoE dump layout plus ``trace.yaml``, readable by every command.
See ``docs/trace-import.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.commands._options import int_range
from sim.commands._trace_args import non_negative_int, positive_int, require_new_output_dir
from sim.commands.trace_group import trace_subparsers
from sim.errors import UserError
from sim.limits import MAX_BATCH, MAX_EXPERTS, MAX_SEQ_LEN
from sim.ranges import parse_int_selection
from sim.trace.importers import (
    ORDERS,
    ImportLabels,
    read_flame_parquet,
    read_jsonl,
    read_numpy,
    trace_from_rows,
)
from sim.trace.routing import RoutingTrace

FORMATS = ("parquet", "numpy", "jsonl")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = trace_subparsers(subparsers).add_parser(
        "import",
        help="convert parquet / numpy / JSON-lines routing into a trace directory",
        description=__doc__,
    )
    parser.add_argument("format", choices=FORMATS, metavar="FORMAT", help=", ".join(FORMATS))
    parser.add_argument("src", type=Path, metavar="SRC", help="file or directory to import")
    parser.add_argument("--out", type=Path, required=True, help="new or empty output directory")
    parser.add_argument("--force", action="store_true", help="allow a non-empty --out")
    parser.add_argument("--model", help="model name (default: SRC's name)")
    parser.add_argument("--runid", default=None, help="run id (default: 'parquet' / 'imported')")
    parser.add_argument("--epoch", default=None, help="epoch (parquet: the iteration)")
    parser.add_argument(
        "--layers",
        help="parquet: layer ids to import (default all); numpy: the ids of the array's layer "
        "axis (default 0..L-1)",
    )
    parser.add_argument(
        "--num-experts",
        type=int_range(1, MAX_EXPERTS),
        help="routed experts (default: largest id + 1)",
    )
    parser.add_argument(
        "--micro-batch-size",
        type=int_range(1, MAX_BATCH),
        help="sequences per written shard (parquet: the dump's B, default 8; else: all)",
    )
    parser.add_argument(
        "--compact", action="store_true", help="store float16 scores and int16 indices"
    )
    rows = parser.add_argument_group("numpy / jsonl: how token rows map to sequences and steps")
    rows.add_argument(
        "--num-seqs",
        type=int_range(1, MAX_BATCH),
        default=1,
        help="sequences interleaved in the rows",
    )
    rows.add_argument(
        "--order",
        choices=ORDERS,
        default="step-major",
        help="step-major: t = step*seqs + seq (default); seq-major: t = seq*steps + step",
    )
    rows.add_argument("--weights", type=Path, help="numpy: a separate .npy of gate weights")
    pq = parser.add_argument_group("parquet")
    pq.add_argument("--iteration", type=non_negative_int, help="checkpoint (iter_NNNN)")
    pq.add_argument("--first-shard", type=non_negative_int, default=0)
    pq.add_argument("--num-shards", type=positive_int, default=1)
    pq.add_argument("--seq-len", type=int_range(1, MAX_SEQ_LEN), default=2048, help="the dump's S")
    parser.set_defaults(func=_run)


def import_trace(args: argparse.Namespace) -> RoutingTrace:
    src: Path = args.src
    if not src.exists():
        raise UserError(f"{src}: expected a file or directory to import, got nothing (missing)")
    layers = parse_int_selection(args.layers, "--layers") if args.layers else None
    if args.format == "parquet":
        return read_flame_parquet(
            src,
            iteration=args.iteration,
            layers=layers,
            first_shard=args.first_shard,
            num_shards=args.num_shards,
            micro_batch_size=args.micro_batch_size or 8,
            seq_len=args.seq_len,
            model=args.model,
            runid=args.runid or "parquet",
        )
    if args.format == "numpy":
        experts, weights, token_ids = read_numpy(src, args.weights)
        layer_count = experts.shape[1] if experts.ndim == 3 else 0
        layer_ids = tuple(layers) if layers else tuple(range(layer_count))
    else:
        if args.weights is not None:
            raise UserError("--weights: expected only with FORMAT numpy, got jsonl")
        experts, weights, token_ids, layer_ids = read_jsonl(src)
        if layers:
            raise UserError("--layers: expected none for jsonl (the records name their layers)")
    labels = ImportLabels(
        model=args.model or src.stem,
        runid=args.runid or "imported",
        epoch=args.epoch or "0",
        num_seqs=args.num_seqs,
        micro_batch_size=args.micro_batch_size,
        order=args.order,
        num_experts=args.num_experts,
        provenance=f"imported from {args.format} {src} ({args.order}, {args.num_seqs} seqs)",
    )
    return trace_from_rows(str(src), experts, weights, token_ids, layer_ids, labels)


def _run(args: argparse.Namespace) -> int:
    import torch

    from sim.trace.writer import write_dump

    out: Path = args.out
    mode = require_new_output_dir(out, args.force)
    trace = import_trace(args)
    compact = {"score_dtype": torch.float16, "index_dtype": torch.int16} if args.compact else {}
    write_dump(trace, out, mode=mode, **compact)
    print(f"wrote {trace.describe()} to {out}")
    return 0
