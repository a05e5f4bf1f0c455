"""``moesim trace info ROOT``: what a trace directory holds, and what is wrong with it.

For a dump it lists models, runs, epochs, layers and shards, the row count T, k, expert count,
dtypes and the layout facts (B, S), reading file headers only (tensors are memory-mapped, not
loaded), and every inconsistency found (missing layer files, T mismatches, unreadable files).
With ``--check`` it also loads the selection (the trace selection options; all by default) and
validates every value.
For notebook cuts it loads them and describes the trace.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sim.commands._trace_args import add_trace_selection_args, trace_from_args
from sim.commands.trace_group import trace_subparsers
from sim.errors import UserError
from sim.trace.dump import DumpInventory, EpochInventory, missing_or_file, scan_dump
from sim.trace.routing import RoutingTrace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = trace_subparsers(subparsers).add_parser(
        "info", help="list what a trace directory holds and any inconsistency", description=__doc__
    )
    add_trace_selection_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--check",
        action="store_true",
        help="also load the selection (everything by default) and validate every value: "
        "expert ids, duplicate ids, finite scores, shapes",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from sim.trace.open import EMBEDDED_PREFIX, embedded_root, is_dump_root  # loads torch

    text = str(args.root)
    is_embedded = text == EMBEDDED_PREFIX or text.startswith(EMBEDDED_PREFIX + ":")
    root = embedded_root(text) if is_embedded else Path(text)
    console = Console(highlight=False, soft_wrap=True, markup=False)
    if not root.is_dir():
        raise UserError(f"{root}: expected a trace directory, got {missing_or_file(root)}")
    if not is_dump_root(root):
        return _print_cuts(console, root, trace_from_args(args), args.json)
    inv = scan_dump(
        root,
        model=args.model,
        runid=args.runid,
        epoch=args.epoch,
        seq_len=args.seq_len,
        micro_batch_size=args.micro_batch_size,
    )
    checked = trace_from_args(args) if args.check else None
    if args.json:
        extra = {"checked": checked.describe()} if checked else {}
        print(json.dumps({"kind": "dump", **inv.to_dict(), **extra}, indent=2))
        return 0
    _print_inventory(console, inv)
    if checked:
        console.print(f"checked {checked.describe()}: all values valid")
    return 0


def _print_cuts(console: Console, root: Path, trace: RoutingTrace, as_json: bool) -> int:
    """Notebook cuts have no headers to scan: describe the loaded (and validated) trace."""
    if as_json:
        info = {
            "kind": "notebook cuts",
            "root": str(root),
            "describe": trace.describe(),
            "positions": list(trace.positions),
            "layers": list(trace.layer_ids),
            "seqs": trace.num_seqs,
            "k": trace.k,
            "num_experts": trace.num_experts,
            "meta": trace.meta.to_dict(),
        }
        print(json.dumps(info, indent=2))
    else:
        console.print(f"{root}: notebook cuts", style="bold")
        console.print(f"  {trace.describe()}")
        console.print(f"  provenance: {trace.meta.provenance}")
    return 0


def _print_inventory(console: Console, inv: DumpInventory) -> None:
    tf = inv.trace_file
    console.print(
        f"{inv.root}: FLAME-MoE dump layout"
        + (" with trace.yaml" if tf else " (raw, no trace.yaml)")
    )
    source = (
        "trace.yaml"
        if tf and tf.seq_len
        else "defaults; override with --seq-len/--micro-batch-size"
    )
    console.print(
        f"  megatron layout: B={inv.micro_batch_size} sequences/shard x S={inv.seq_len} steps = "
        f"T {inv.micro_batch_size * inv.seq_len} rows per shard (from {source})"
    )
    console.print(
        f"  experts: {_or_unknown(inv.num_experts)}   dense-format k: {_or_unknown(inv.k_dense)}"
    )
    if tf:
        console.print(f"  provenance: {tf.provenance or '-'}")
        console.print(
            f"  tokens known: {tf.tokens_known}   synthetic: {tf.synthetic}"
            + (f" (layers {list(tf.synthetic_layers)})" if tf.synthetic_layers else "")
        )
    for run in inv.runs:
        console.print(
            f"\nmodel {run.model}  run {run.runid}: {len(run.shards)} shard(s) "
            f"{_shards(run.shards)}; samples T={_join(run.rows)} ({_join(run.sample_dtypes)})"
        )
        if not run.epochs:
            continue
        table = Table(show_edge=False, pad_edge=False, box=None)
        for col in ("epoch", "layers", "format", "k", "scores", "ids", "T", "shards/layer"):
            table.add_column(col, no_wrap=True)
        for ep in run.epochs:
            table.add_row(
                ep.epoch,
                _span(ep.layers),
                _formats(ep),
                _join(ep.k),
                _join(ep.score_dtypes),
                _join(ep.index_dtypes),
                _join(ep.rows),
                _join(sorted(set(ep.shards_per_layer.values()))),
            )
        console.print(table)
    if inv.problems:
        console.print(f"{len(inv.problems)} inconsistencies:", style="bold red")
        for problem in inv.problems:
            console.print(f"  - {problem}")
    else:
        console.print("no inconsistencies found")


def _formats(ep: EpochInventory) -> str:
    names = [
        f"dense[T,{_join(ep.dense_width)}]" if f == "dense" else "(scores, ids)" for f in ep.formats
    ]
    return " + ".join(names) or "-"


def _or_unknown(value: Any) -> str:
    return "unknown (pass --num-experts/--k when loading)" if value is None else str(value)


def _join(values: Any) -> str:
    values = list(values or ())
    return ",".join(str(v) for v in values) if values else "-"


def _span(values: tuple[int, ...]) -> str:
    if not values:
        return "-"
    if list(values) == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]} ({len(values)})"
    return ",".join(map(str, values))


def _shards(shards: tuple[str, ...]) -> str:
    if not shards:
        return "-"
    if len(shards) <= 3:
        return ",".join(shards)
    return f"{shards[0]} .. {shards[-1]} ({len(shards)})"
