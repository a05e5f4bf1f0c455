"""`RooflineCost`: the default per-expert cost model, built from `Hardware` and `ModelSpec`.

Every expert has the same weight size in a given precision (`sim.precision.copy_sizes`), so a
weight transfer of a route's default copy (`sim.precision.default_copies`: the native
``model.expert_bytes`` unless the tier holds only smaller copies) costs the same whatever the
expert: ``latency + bytes / channel_rate``. Compute follows a roofline per expert:
``max(weight bytes / memory bandwidth, tokens * FLOPs per token / peak)``, on the GPU (HBM
bandwidth, GPU peak), next to the MD pool (``md_compute``) or on the host CPU
(``host_compute``); a reduced-precision copy reads its own bytes and adds a third roof, its
dequantisation (``params * dequant_ops / vector FLOP/s``). Activations cross a link as one
transfer each way per batch: ``latency + tokens * activation bytes per token / channel_rate``.

Besides the `CostModel` protocol (per gate, arrays aligned with ``experts``) it offers the same
numbers for whole arrays of token counts (``*_from_tokens``) and ``uniform_transfer_time``, which
the engine, the closed form and balanced-split use to avoid per-gate calls.
"""

from __future__ import annotations

import numpy as np

from sim.contract import PolicyError
from sim.hardware import ComputeUnit, Hardware, ModelSpec
from sim.precision import copy_sizes, default_copies


class RooflineCost:
    """Roofline compute + latency/bandwidth links. All results in seconds.

    ``precision``: the precision (index into ``model.precision_names``) every transfer and
    every compute estimate assumes, for a policy that moves everything in one precision
    (`quantised-all` gives its underlying policy such a cost); None: each route's default
    copy, compute in the native precision (the engine's own cost)."""

    def __init__(self, hardware: Hardware, model: ModelSpec, precision: int | None = None) -> None:
        self.hardware = hardware
        self.model = model
        self._flops = model.flops_per_token
        self._act_bytes = model.activation_bytes_per_token
        self.sizes = copy_sizes(model)
        self.precision = precision
        if precision is None:
            self.route_copy = default_copies(hardware, model)
        else:
            self.route_copy = {route: precision for route in default_copies(hardware, model)}

    # -- bulk helpers (arrays of token counts; any shape) -------------------------------------
    def uniform_transfer_time(self, link: str) -> float:
        """Slot time of one expert's weight transfer on ``link`` (the same for every expert):
        the route's default copy."""
        return self.hardware.route(link).transfer_time(self.sizes[self.route_copy[link]])

    def copy_transfer_time(self, link: str, precision: int) -> float:
        """Slot time of one expert's copy in ``precision`` on ``link``."""
        return self.hardware.route(link).transfer_time(self.sizes[precision])

    def gpu_time_at(self, tokens: np.ndarray, precision: int) -> np.ndarray:
        """GPU time of experts computed from copies in ``precision`` (0: the native roofline)."""
        if precision == 0:
            return self.gpu_time_from_tokens(tokens)
        gpu = self.hardware.gpu
        return self._reduced(
            tokens, precision, self.hardware.hbm.bandwidth, gpu.peak_flops, gpu.vector_flops
        )

    def near_time_at(self, tokens: np.ndarray, precision: int) -> np.ndarray:
        if precision == 0:
            return self.near_time_from_tokens(tokens)
        unit = _unit(self.hardware.md_compute, "md_compute (near-data MD path)")
        return self._reduced(
            tokens, precision, unit.memory_bandwidth, unit.peak_flops, unit.peak_flops
        )

    def host_time_at(self, tokens: np.ndarray, precision: int) -> np.ndarray:
        if precision == 0:
            return self.host_time_from_tokens(tokens)
        unit = _unit(self.hardware.host_compute, "host_compute (HOST path)")
        return self._reduced(
            tokens, precision, unit.memory_bandwidth, unit.peak_flops, unit.peak_flops
        )

    def _reduced(
        self,
        tokens: np.ndarray,
        precision: int,
        bandwidth: float,
        peak: float,
        vector: float | None,
    ) -> np.ndarray:
        """The roofline of a reduced-precision copy: its bytes, the same FLOPs (computed in
        the native type after dequantisation) and a third roof, dequantising every weight once
        per expert call (``params * dequant_ops / vector``; none when ``vector`` is None)."""
        out = _roofline(tokens, float(self.sizes[precision]), self._flops, bandwidth, peak)
        ops = self.model.precisions[precision - 1].dequant_ops
        if vector and ops:
            out = np.maximum(out, self.model.params_per_expert * ops / vector)
        return out

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
        if self.precision:
            return self.gpu_time_at(tokens, self.precision)
        return self.gpu_time_from_tokens(tokens)

    def near_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        if self.precision:
            return self.near_time_at(tokens, self.precision)
        return self.near_time_from_tokens(tokens)

    def host_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        if self.precision:
            return self.host_time_at(tokens, self.precision)
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
