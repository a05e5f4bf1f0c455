"""`RooflineCost`: the default per-expert cost model, built from `Hardware` and `ModelSpec`.

Every expert has the same weight size (``model.expert_bytes``), so a weight transfer costs the
same on a given link whatever the expert: ``latency + bytes / channel_rate``. Compute follows a
roofline per expert: ``max(weight bytes / memory bandwidth, tokens * FLOPs per token / peak)``,
on the GPU (HBM bandwidth, GPU peak), next to the MD pool (``md_compute``) or on the host CPU
(``host_compute``). Activations cross a link as one transfer each way per batch:
``latency + tokens * activation bytes per token / channel_rate``.

Besides the `CostModel` protocol (per gate, arrays aligned with ``experts``) it offers the same
numbers for whole arrays of token counts (``*_from_tokens``) and ``uniform_transfer_time``, which
the engine, the closed form and balanced-split use to avoid per-gate calls.
"""

from __future__ import annotations

import numpy as np

from sim.contract import PolicyError
from sim.hardware import ComputeUnit, Hardware, ModelSpec


class RooflineCost:
    """Roofline compute + latency/bandwidth links. All results in seconds."""

    def __init__(self, hardware: Hardware, model: ModelSpec) -> None:
        self.hardware = hardware
        self.model = model
        self._flops = model.flops_per_token
        self._act_bytes = model.activation_bytes_per_token

    # -- bulk helpers (arrays of token counts; any shape) -------------------------------------
    def uniform_transfer_time(self, link: str) -> float:
        """Slot time of one expert's weight transfer on ``link`` (the same for every expert)."""
        return self.hardware.route(link).transfer_time(self.model.expert_bytes)

    def gpu_time_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        gpu = self.hardware.gpu
        return _roofline(
            tokens,
            self.model.expert_bytes,
            self._flops,
            self.hardware.hbm.bandwidth,
            gpu.peak_flops,
        )

    def near_time_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        unit = _unit(self.hardware.md_compute, "md_compute (near-data MD path)")
        return _roofline(
            tokens, self.model.expert_bytes, self._flops, unit.memory_bandwidth, unit.peak_flops
        )

    def host_time_from_tokens(self, tokens: np.ndarray) -> np.ndarray:
        unit = _unit(self.hardware.host_compute, "host_compute (HOST path)")
        return _roofline(
            tokens, self.model.expert_bytes, self._flops, unit.memory_bandwidth, unit.peak_flops
        )

    def activation_one_way(self, link: str, total_tokens: np.ndarray | float) -> np.ndarray:
        """One direction of a batch's activations: ``latency + tokens * bytes / channel_rate``."""
        cfg = self.hardware.route(link)
        total = np.asarray(total_tokens, dtype=np.float64)
        return cfg.latency + total * self._act_bytes / cfg.channel_rate

    # -- CostModel protocol ---------------------------------------------------------------------
    def transfer_time(self, link: str, step: int, layer: int, experts: np.ndarray) -> np.ndarray:
        return np.full(len(experts), self.uniform_transfer_time(link))

    def gpu_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        return self.gpu_time_from_tokens(tokens)

    def near_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        return self.near_time_from_tokens(tokens)

    def host_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        return self.host_time_from_tokens(tokens)

    def activation_time(
        self, link: str, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> float:
        """Both directions: the engine charges half on the way out and half on the way back."""
        return 2.0 * float(self.activation_one_way(link, float(np.sum(tokens))))


def _roofline(
    tokens: np.ndarray, nbytes: float, flops_per_token: float, bandwidth: float, peak: float
) -> np.ndarray:
    """max(weight read, arithmetic) per expert: the usual roofline of a memory-bound FFN."""
    if peak <= 0 or bandwidth <= 0:
        return np.full(np.shape(tokens), np.inf)
    t = np.asarray(tokens, dtype=np.float64)
    return np.maximum(nbytes / bandwidth, t * (flops_per_token / peak))


def _unit(unit: ComputeUnit | None, what: str) -> ComputeUnit:
    if unit is None:
        raise PolicyError(f"the scenario has no {what}: this path cannot be used")
    return unit


def is_roofline(cost: object, method: str) -> bool:
    """True when ``cost`` computes ``method`` exactly as `RooflineCost` does (not overridden),
    so its bulk helpers (``uniform_transfer_time``, ``*_from_tokens``, ``activation_one_way``)
    may stand in for per-gate protocol calls."""
    return isinstance(cost, RooflineCost) and getattr(type(cost), method) is getattr(
        RooflineCost, method
    )
