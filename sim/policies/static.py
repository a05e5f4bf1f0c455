"""Static placement by layer: some layers' experts live on the host CPU, the rest in HBM.

``static-layers`` is the placement of llama.cpp's ``--n-cpu-moe N`` (the expert tensors of
the first N transformer layers stay in host memory and run on the CPU; every other weight is
on the GPU) and of KTransformers (every routed expert on the CPU, attention and shared experts
on the GPU). Nothing moves during the run:

* experts of the chosen ``host_layers`` are computed on the host CPU (`Path.HOST`): only the
  tokens' activations cross the host link, out and back, once per layer;
* every expert of the other layers is in HBM from the start (`Policy.initial_cache`: loaded
  before serving, outside the simulated time), so each of their uses is a hit.

The GPU-resident experts must fit ``hbm.capacity``; the host path needs
``hardware.host_compute`` (a CPU preset or its figures).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from sim.errors import UserError
from sim.policies.base import (
    GateDecision,
    GateView,
    Path,
    Policy,
    PolicyContext,
    allowed_paths,
    register_policy,
)
from sim.ranges import parse_int_selection


@register_policy
class StaticLayersPolicy(Policy):
    """Experts of ``host_layers`` on the host CPU, all others resident in HBM; no transfers."""

    name: ClassVar[str] = "static-layers"
    summary: ClassVar[str] = (
        "static placement by layer: chosen layers' experts computed on the host CPU, the rest "
        "resident in HBM (llama.cpp --n-cpu-moe, KTransformers)"
    )

    @dataclass(frozen=True)
    class Params:
        # MoE layer ids (the trace's) whose experts stay in host memory and run on the CPU:
        # 'all', 'none', a range '0-35' or a list; llama.cpp `--n-cpu-moe N` is '0-(N-1)'
        # (it counts transformer layers from 0, dense ones included)
        host_layers: str | int | list[int] = "all"

        def __post_init__(self) -> None:
            if isinstance(self.host_layers, str) and self.host_layers.strip().lower() == "none":
                return
            chosen = parse_int_selection(self.host_layers, "host_layers")
            if chosen is not None and min(chosen, default=0) < 0:
                raise ValueError(f"host_layers: expected layer ids >= 0, got {self.host_layers!r}")

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        where = f"policy {self.name}"
        spec = self.params.host_layers
        if isinstance(spec, str) and spec.strip().lower() == "none":
            chosen: set[int] | None = set()
        else:
            ids = parse_int_selection(spec, f"{where}: host_layers")
            chosen = None if ids is None else set(ids)
        self.on_host = np.array(
            [chosen is None or int(lid) in chosen for lid in ctx.layer_ids], dtype=bool
        )
        if self.on_host.any():
            reason = allowed_paths(ctx.hardware)[Path.HOST]
            if reason:
                raise UserError(
                    f"{where}: host_layers: expected a scenario whose host CPU can compute "
                    f"experts (hardware.host_compute, placement host or both), got: {reason}"
                )
        resident = int(np.count_nonzero(~self.on_host)) * ctx.model.num_experts
        if resident * ctx.model.expert_bytes > ctx.hardware.hbm.capacity * (1 + 1e-12):
            raise UserError(
                f"{where}: hardware.hbm.capacity: expected room for the {resident} experts of "
                f"the {int(np.count_nonzero(~self.on_host))} GPU layers "
                f"({resident * ctx.model.expert_bytes:.6g} B), got "
                f"{ctx.hardware.hbm.capacity:.6g} B"
            )

    def initial_cache(self) -> np.ndarray:
        assert self.ctx is not None
        resident = np.zeros((self.ctx.num_layers, self.ctx.model.num_experts), dtype=bool)
        resident[~self.on_host] = True
        return resident

    def decide(self, view: GateView) -> GateDecision:
        # experts of GPU layers are all cached (the engine makes them hits); the rest run on
        # the host CPU
        return GateDecision(paths=np.full(view.experts.size, Path.HOST, dtype=np.int8))
