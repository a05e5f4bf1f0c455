"""A scenario's cost-table source: what `moesim run` needs to run on per-expert cost tables.

One object gives the scenario loader both halves of a cost-table run: the routing the tables
were made on (`trace`) and, per policy run, a fresh `TableCost` over the roofline
(`cost_model`), whose ``describe()`` goes into the resolved scenario's provenance. Only the
NeuPIMs layout exists so far (``kind = "neupims"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from sim.costs.neupims import NeupimsData, load_neupims
from sim.costs.table import TableCost
from sim.errors import UserError
from sim.hardware import Hardware, ModelSpec
from sim.trace.routing import RoutingTrace
from sim.units import parse_clock

__all__ = ["KINDS", "CostSource", "parse_clock"]  # parse_clock lives in sim.units

KINDS = ("neupims",)


@dataclass(frozen=True)
class CostSource:
    """Cost tables for a scenario: ``kind`` (``neupims``), the directory, the cycles' clock."""

    path: Path
    clock_hz: float
    kind: str = "neupims"
    num_experts: int = 64

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"costs.kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")

    @cached_property
    def data(self) -> NeupimsData:
        """The imported tables (read once)."""
        return load_neupims(self.path, num_experts=self.num_experts)

    def checksum(self) -> str:
        """The tables' content checksum (`NeupimsData.checksum`)."""
        return self.data.checksum()

    def trace(self, model: str = "flame-moe-290m") -> RoutingTrace:
        """The routing the tables were made on."""
        return self.data.routing_trace(model)

    def cost_model(self, hardware: Hardware, model: ModelSpec) -> TableCost:
        """A fresh cost model for one policy run (its usage record starts empty)."""
        from sim.engine.cost import RooflineCost

        return TableCost(self.data.cost_table(self.clock_hz), RooflineCost(hardware, model))

    def to_dict(self) -> dict[str, Any]:
        """The ``costs:`` section that reproduces this source (absolute path), plus defects."""
        return {
            "kind": self.kind,
            "path": str(self.path),
            "clock_hz": self.clock_hz,
            "defects": list(self.data.defects),
        }
