"""Small hand-made routing traces for the engine and split-policy tests (not a test module)."""

from __future__ import annotations

import numpy as np

from sim.hardware import GpuConfig, Hardware, HbmConfig, LinkConfig, ModelSpec
from sim.trace.routing import RoutingTrace, TraceMeta

GB = 1e9


def make_trace(experts: np.ndarray | list, num_experts: int) -> RoutingTrace:
    """A trace from explicit ``[steps, layers, seqs, k]`` expert ids (scores strictly falling,
    so every top-k' cut keeps the first k' ids)."""
    ids = np.asarray(experts, dtype=np.int16)
    steps, layers, _seqs, k = ids.shape
    scores = np.broadcast_to(np.linspace(0.9, 0.1, k, dtype=np.float32), ids.shape).copy()
    return RoutingTrace(
        experts=ids,
        scores=scores,
        tokens=np.full((steps, ids.shape[2]), -1, dtype=np.int64),
        num_experts=num_experts,
        layer_ids=tuple(range(2, 2 + layers)),
        positions=tuple(range(steps)),
        meta=TraceMeta(model="test", runid=0, epoch=0, layout="megatron", synthetic=True),
    )


def random_trace(
    rng: np.random.Generator,
    steps: int,
    layers: int,
    seqs: int,
    k: int,
    num_experts: int,
    skew: float = 1.0,
) -> RoutingTrace:
    """Random top-k routing with a Zipf-like popularity skew (distinct experts per token)."""
    weights = 1.0 / np.arange(1, num_experts + 1) ** skew
    perm = rng.permutation(num_experts)
    # Gumbel top-k: distinct experts per token, drawn proportionally to ``weights``.
    logits = np.log(weights[perm])[None, :] + rng.gumbel(size=(steps * layers * seqs, num_experts))
    ids = np.argsort(-logits, axis=1)[:, :k].reshape(steps, layers, seqs, k)
    return make_trace(ids, num_experts)


def hardware(
    pcie_bw: float = 32 * GB,
    md_bw: float = 512 * GB,
    *,
    pcie_latency: float = 0.0,
    md_latency: float = 0.0,
    pcie_channels: int = 1,
    md_channels: int = 1,
    capacity: float = 0.0,
    non_expert: float = 0.0,
    layer_overhead: float = 0.0,
    expert_start: str = "per-expert",
    md_mode: str = "fetch",
    placement: str = "both",
    md_compute=None,
    host_compute=None,
    hbm_bw: float = 3.35e12,
    peak: float = 989e12,
) -> Hardware:
    return Hardware(
        hbm=HbmConfig(capacity=capacity, bandwidth=hbm_bw),
        links=(
            LinkConfig("pcie", pcie_bw, pcie_latency, pcie_channels),
            LinkConfig("md_link", md_bw, md_latency, md_channels),
        ),
        gpu=GpuConfig(
            peak_flops=peak,
            non_expert_time=non_expert,
            layer_overhead=layer_overhead,
            expert_start=expert_start,
        ),
        md_mode=md_mode,
        placement=placement,
        md_compute=md_compute,
        host_compute=host_compute,
    )


def model(num_experts: int = 64, top_k: int = 6, expert_bytes: float = 4.33e6) -> ModelSpec:
    return ModelSpec("test", num_experts=num_experts, top_k=top_k, expert_bytes=expert_bytes)
