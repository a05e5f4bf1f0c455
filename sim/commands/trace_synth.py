"""``moesim trace synth --out ROOT``: write a synthetic routing trace in the FLAME-MoE dump layout.

The routing comes from :mod:`sim.trace.synth` (token ids + drifting hidden state + per-layer
routers); the same options and seed always give the same files. The output is a dump
(``samples/``, ``actives/``, Megatron row order, ``(scores, indices)`` tuples) plus
``trace.yaml`` with ``synthetic: true`` and every generator setting in its provenance. See
``docs/synthetic-traces.md`` for the knobs and their calibration.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sim.commands._options import float_range, int_range
from sim.commands._trace_args import require_new_output_dir
from sim.commands.trace_group import trace_subparsers
from sim.errors import UserError
from sim.limits import INT64_MAX, MAX_BATCH, MAX_EXPERTS, MAX_SEQ_LEN
from sim.ranges import parse_int_selection
from sim.trace.synth import PerLayer, SynthConfig, calibration_warnings, generate

_KNOB_HELP = {
    "popularity_skew": "(a) std of the per-expert logit bias: higher = more skewed popularity",
    "temporal_locality": "(b) memory of the context along positions, 0..1: higher = overlap "
    "lasts more steps",
    "layer_correlation": "(c) share of the hidden state carried to the next layer, 0..1",
    "router_affinity": "(c) share of an expert's router row inherited by one expert of the "
    "next layer, 0..1",
    "balance": "share of each expert's mean logit removed, 0..1 (load balancing)",
    "token_weight": "(d) weight of the token-id embedding: higher = same id, same experts",
    "context_weight": "(b) weight of the context (noise has weight 1): higher = more "
    "step-to-step overlap",
    "topic_weight": "(b) weight of a slowly drifting per-sequence topic: overlap over many steps",
    "sharpness": "softmax inverse temperature: shapes the scores only",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = trace_subparsers(subparsers).add_parser(
        "synth",
        help="generate a synthetic trace in the FLAME-MoE dump layout",
        description=__doc__,
    )
    defaults = SynthConfig()
    parser.add_argument("--out", type=Path, required=True, help="new or empty output directory")
    parser.add_argument("--model", default="synthetic", help="model directory name")
    parser.add_argument("--runid", default="synth", help="run id directory name")
    parser.add_argument("--epoch", default="0", help="epoch directory name")
    parser.add_argument("--layers", default="2-9", help="MoE layer ids (default 2-9)")
    parser.add_argument(
        "--num-shards", type=int_range(1, 65_536), default=4, help="shards (default 4)"
    )
    parser.add_argument(
        "--micro-batch-size",
        type=int_range(1, MAX_BATCH),
        default=8,
        help="sequences per shard (default 8)",
    )
    parser.add_argument(
        "--seq-len", type=int_range(1, MAX_SEQ_LEN), default=2048, help="decode steps per sequence"
    )
    parser.add_argument("--experts", type=int_range(1, MAX_EXPERTS), default=defaults.num_experts)
    parser.add_argument("--topk", type=int_range(1, MAX_EXPERTS), default=defaults.topk)
    parser.add_argument("--vocab", type=int_range(1, 2**24), default=defaults.vocab)
    parser.add_argument("--seed", type=int_range(0, INT64_MAX), default=0)
    parser.add_argument("--shard-prefix", default="0", help="shards are PREFIX-0, PREFIX-1, ...")
    parser.add_argument(
        "--compact",
        action="store_true",
        help="store float16 scores and int16 indices (a quarter of the size)",
    )
    parser.add_argument("--force", action="store_true", help="allow a non-empty --out")
    knobs = parser.add_argument_group(
        "generator knobs (per-layer ones take 'x', a ramp 'first:last' or 'v1,v2,...')"
    )
    knobs.add_argument("--hidden-dim", type=int_range(1, 4096), default=defaults.hidden_dim)
    knobs.add_argument(
        "--topic-memory",
        type=float_range(0.0, 1.0),
        default=defaults.topic_memory,
        help="per-step memory of the topic, 0..1",
    )
    knobs.add_argument(
        "--zipf-exponent",
        type=float_range(0.0, 100.0),
        default=defaults.zipf_exponent,
        help="token frequency ~ 1/rank^s",
    )
    for name, text in _KNOB_HELP.items():
        knobs.add_argument(
            "--" + name.replace("_", "-"),
            default=str(getattr(defaults, name)),
            help=f"{text} (default {getattr(defaults, name)})",
        )
    parser.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    layers = parse_int_selection(args.layers, "--layers")
    if not layers:
        raise UserError(f"--layers: expected layer ids like 2-9, got {args.layers!r}")
    return SynthConfig(
        num_seqs=args.num_shards * args.micro_batch_size,
        seq_len=args.seq_len,
        layer_ids=tuple(layers),
        num_experts=args.experts,
        topk=args.topk,
        vocab=args.vocab,
        hidden_dim=args.hidden_dim,
        seed=args.seed,
        zipf_exponent=args.zipf_exponent,
        topic_memory=args.topic_memory,
        **{name: PerLayer.of(getattr(args, name), "--" + name) for name in _KNOB_HELP},
    )


def _run(args: argparse.Namespace) -> int:
    import torch

    from sim.trace.writer import write_dump

    out: Path = args.out
    mode = require_new_output_dir(out, args.force)
    cfg = config_from_args(args)
    for line in calibration_warnings(cfg):
        print(line, file=sys.stderr)
    start = time.perf_counter()
    trace = generate(
        cfg,
        model=args.model,
        runid=args.runid,
        epoch=args.epoch,
        micro_batch_size=args.micro_batch_size,
    )
    took = time.perf_counter() - start
    compact = {"score_dtype": torch.float16, "index_dtype": torch.int16} if args.compact else {}
    write_dump(trace, out, shard_prefix=args.shard_prefix, mode=mode, **compact)
    print(f"wrote {trace.describe()} to {out} (generated in {took:.1f} s)")
    return 0
