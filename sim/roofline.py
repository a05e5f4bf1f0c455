"""THE non-expert roofline: the time of everything in a MoE layer that is not a routed expert.

One function, `non_expert_time(hardware, model, new_tokens, kv_lengths)`, gives the seconds of
one MoE layer's non-expert work for one iteration (a lockstep decode step, a serving
iteration with prefills and decodes mixed); every part of the project that needs this number
(lockstep runs, serving, validation) calls it, so they cannot disagree. Formula and what it
leaves out: docs/engine.md ("Non-expert time").

Per MoE layer, two kernel groups run one after the other on the GPU's one stream, each at its
own roofline (``max(bytes / HBM bandwidth, FLOPs / peak FLOP/s)``), and their times add:

* **weights**: attention projections, router and shared experts, read once per iteration
  (``params x bytes_per_param``), ``2 x params x tokens`` FLOPs;
* **attention core**: every sequence in the iteration reads its KV cache and writes its new
  tokens' entries (``(kv_length + new_tokens) x kv_cache_dim x bytes_per_activation``); a
  new token at position j attends over j + 1 entries (causal), ``4 x heads x head_dim`` FLOPs
  per (token, attended entry).

The model's dense (non-MoE) transformer layers and its LM head also run every iteration; they
are spread evenly over the MoE layers (each MoE layer is charged ``dense_layers / moe_layers``
of a dense layer and ``1 / moe_layers`` of the LM head), so a step's sum over all MoE layers is
the whole model's non-expert time. The LM head computes one logit row per sequence in the
iteration (its last token), as in generation.

``hardware.gpu.layer_overhead`` (default 0) adds a fixed software time per transformer layer
and iteration (kernel launches, framework dispatch: what a real stack pays at batch 1 and a
roofline does not see), spread over the MoE layers like the dense layers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from sim.errors import UserError
from sim.hardware import Hardware, ModelSpec

# the model dimensions the roofline needs (ModelSpec fields; docs/engine.md)
REQUIRED_FIELDS = (
    "num_layers",
    "moe_layers",
    "attention_heads",
    "kv_heads",
    "head_dim",
    "vocab_size",
)


@dataclass(frozen=True)
class LayerShape:
    """What one MoE layer's non-expert work reads and computes, derived from a `ModelSpec`."""

    moe_params: float  # attention + router + shared experts of one MoE layer
    dense_params: float  # attention + dense FFN of one dense layer
    dense_share: float  # dense layers per MoE layer
    head_params: float  # LM head (vocab x hidden)
    head_share: float  # 1 / moe_layers
    kv_cache_dim: float  # KV-cache elements per token per layer
    attention_flops: float  # FLOPs per (new token, attended KV entry) per layer


def missing_dimensions(model: ModelSpec) -> tuple[str, ...]:
    """The model fields the roofline needs that the model does not give (empty: all there)."""
    missing = [name for name in REQUIRED_FIELDS if getattr(model, name) is None]
    if (
        model.num_layers is not None
        and model.moe_layers is not None
        and model.num_layers > model.moe_layers
        and model.dense_ffn_size is None
    ):
        missing.append("dense_ffn_size")
    return tuple(missing)


@functools.lru_cache(maxsize=64)
def layer_shape(model: ModelSpec) -> LayerShape:
    """The per-layer figures of ``model``; UserError naming the missing model fields."""
    missing = missing_dimensions(model)
    if missing:
        raise UserError(
            f"model.{missing[0]}: required for the non-expert roofline (model {model.name} "
            f"lacks {', '.join(missing)}); give them, or set hardware.gpu.non_expert_time "
            "to a duration"
        )
    assert model.num_layers is not None and model.moe_layers is not None
    if model.moe_layers > model.num_layers:
        raise UserError(
            f"model.moe_layers: expected at most num_layers ({model.num_layers}), "
            f"got {model.moe_layers}"
        )
    hidden = float(model.hidden_size)
    heads, kv_heads, head_dim = model.attention_heads, model.kv_heads, model.head_dim
    assert heads is not None and kv_heads is not None and head_dim is not None
    attention = model.attention_params
    if attention is None:  # q and o: hidden x heads x head_dim; k and v: hidden x kv_heads x ...
        attention = 2.0 * hidden * heads * head_dim + 2.0 * hidden * kv_heads * head_dim
    kv_dim = model.kv_cache_dim if model.kv_cache_dim is not None else 2.0 * kv_heads * head_dim
    shared_ffn = model.shared_expert_ffn_size
    if shared_ffn is None:
        shared_ffn = model.shared_experts * model.expert_ffn_size
    router = hidden * model.num_experts
    dense_layers = model.num_layers - model.moe_layers
    dense_ffn = float(model.dense_ffn_size or 0)
    assert model.vocab_size is not None
    return LayerShape(
        moe_params=float(attention) + router + model.matrices * hidden * shared_ffn,
        dense_params=float(attention) + model.matrices * hidden * dense_ffn,
        dense_share=dense_layers / model.moe_layers,
        head_params=float(model.vocab_size) * hidden,
        head_share=1.0 / model.moe_layers,
        kv_cache_dim=float(kv_dim),
        attention_flops=4.0 * heads * head_dim,
    )


def non_expert_time(
    hardware: Hardware,
    model: ModelSpec,
    new_tokens: np.ndarray | list[int],
    kv_lengths: np.ndarray | list[int],
) -> float:
    """Seconds of one MoE layer's non-expert work in one iteration.

    ``new_tokens[i]``: tokens sequence i processes in this iteration (1 for a decode step, P
    for a whole prefill, a chunk for chunked prefill; 0 = not in the iteration);
    ``kv_lengths[i]``: its KV length after the iteration (its last new token attends over
    that many entries), so ``kv_lengths[i] >= new_tokens[i]``. An empty iteration costs 0.
    """
    n = np.asarray(new_tokens, dtype=np.float64).ravel()
    kv = np.asarray(kv_lengths, dtype=np.float64).ravel()
    if n.shape != kv.shape:
        raise ValueError(f"new_tokens and kv_lengths differ in length: {n.size} vs {kv.size}")
    if not (np.all(np.isfinite(n)) and np.all(n >= 0) and np.all(kv >= n)):
        raise ValueError("expected 0 <= new_tokens <= kv_lengths for every sequence")
    running = n > 0
    tokens = n.sum()
    pairs = (n * kv - n * (n - 1.0) / 2.0).sum()  # (token, attended entry) pairs, causal
    kv_entries = kv[running].sum() + tokens  # read the cache, write the new entries
    time = _layer_times(
        hardware, model, tokens, float(np.count_nonzero(running)), kv_entries, pairs
    )
    return float(time)


def lockstep_non_expert_times(
    hardware: Hardware, model: ModelSpec, num_seqs: int, positions: np.ndarray | list[int]
) -> np.ndarray:
    """`non_expert_time` of every step of a lockstep run at once: at trace position ``p``
    each of the ``num_seqs`` sequences decodes one token with KV length ``p + 1``. Equal, step
    by step and bit for bit, to ``non_expert_time(hw, model, [1] * B, [p + 1] * B)``."""
    p = np.asarray(positions, dtype=np.float64)
    b = float(num_seqs)
    kv = p + 1.0
    tokens = np.full(p.shape, b)
    # integer-valued sums, so exact in any order: the same floats as the per-iteration call
    return _layer_times(hardware, model, tokens, tokens, kv * b + b, None)


def step_non_expert_times(
    hardware: Hardware, model: ModelSpec, num_seqs: int, positions: np.ndarray | list[int]
) -> np.ndarray:
    """The non-expert time of each step of a lockstep run, per MoE layer: the constant
    ``hardware.gpu.non_expert_time`` when it is set, else the roofline (None = roofline)."""
    constant = constant_non_expert_time(hardware, model)
    if constant is not None:
        return np.full(len(positions), constant)
    return lockstep_non_expert_times(hardware, model, num_seqs, positions)


def constant_non_expert_time(hardware: Hardware, model: ModelSpec) -> float | None:
    """Per MoE layer and iteration, the GPU's constant ``non_expert_time`` plus
    ``gpu.layer_overhead`` (as the roofline adds it too); None when the roofline applies. The
    one place lockstep and serving runs read the constant from."""
    constant = hardware.gpu.non_expert_time
    if constant is None:
        return None
    return float(constant) + overhead_per_moe_layer(hardware, model)


def overhead_per_moe_layer(hardware: Hardware, model: ModelSpec) -> float:
    """``gpu.layer_overhead`` of every transformer layer, charged to each MoE layer: times
    ``num_layers / moe_layers`` when the model gives both, else once per MoE layer."""
    overhead = float(hardware.gpu.layer_overhead)
    if overhead and model.num_layers is not None and model.moe_layers is not None:
        return overhead * (model.num_layers / model.moe_layers)
    return overhead


def _layer_times(
    hardware: Hardware,
    model: ModelSpec,
    tokens: np.ndarray | float,
    seqs: np.ndarray | float,
    kv_entries: np.ndarray | float,
    pairs: np.ndarray | float | None,
) -> np.ndarray:
    """The formula of the module docstring, element-wise over iterations. ``pairs`` None:
    decode steps, where each token attends over its sequence's whole cache (pairs = reads)."""
    shape = layer_shape(model)
    bw = float(hardware.hbm.bandwidth)
    peak = float(hardware.gpu.peak_flops)
    tokens = np.asarray(tokens, dtype=np.float64)
    if pairs is None:
        pairs = np.asarray(kv_entries, dtype=np.float64) - tokens
    bpp = float(model.bytes_per_param)
    kv_bytes = np.asarray(kv_entries, dtype=np.float64) * shape.kv_cache_dim
    kv_bytes = kv_bytes * float(model.bytes_per_activation)
    attention = np.maximum(kv_bytes / bw, np.asarray(pairs) * shape.attention_flops / peak)

    def weights(params: float, rows: np.ndarray) -> np.ndarray:
        return np.maximum(params * bpp / bw, 2.0 * params * rows / peak)

    moe = weights(shape.moe_params, tokens) + attention
    dense = weights(shape.dense_params, tokens) + attention
    head = weights(shape.head_params, np.asarray(seqs, dtype=np.float64))
    total = moe + shape.dense_share * dense + shape.head_share * head
    overhead = overhead_per_moe_layer(hardware, model)
    if overhead:
        total = total + overhead
    return np.where(tokens > 0, total, 0.0)
