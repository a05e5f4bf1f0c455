"""Per-expert cost tables (measured, or from a cycle-accurate simulator) as an engine cost model.

Researchers often have per-expert costs that a roofline cannot give: the cycles a simulator
reports for loading one expert's weights to the accelerator, computing it there, or computing
it next to its memory. `CostTable` holds them per (step, layer, expert), with NaN where the
table has no value; `TableCost` implements the engine's `CostModel` protocol from it, in
seconds, and asks a fallback cost model (the roofline, `sim.engine.cost.RooflineCost`) for
everything the table lacks. Every answer is recorded as coming from the table or the fallback,
per kind of cost and per (step, layer, expert) cell, so the results can show where each number
came from (`TableCost.describe`).

What the table can hold (all optional, NaN = no value):

* ``transfer``: one expert's weight transfer on the GPU path (link ``pcie``), e.g. NeuPIMs'
  ``param_load``;
* ``gpu_compute``: the expert's compute on the GPU/NPU (``total compute`` of the NPU table);
* ``near_compute``: its compute next to the memory pool (``total compute`` of the PIM table);
* ``activation``: per (step, layer), moving the activations to the pool and back (link
  ``md_link``, near-data mode), e.g. NeuPIMs' ``activation_movement_1 + _2``.

Everything else (``md_link`` weight fetches, host compute, host-path activations) always comes
from the fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.errors import UserError
from sim.policies.base import CostModel

UNITS = ("cycles", "seconds")
EXPERT_KINDS = ("transfer", "gpu_compute", "near_compute")
KINDS = (*EXPERT_KINDS, "activation")
TABLE_LINK = {"transfer": "pcie", "activation": "md_link"}  # the link a table value applies to
_MAX_LISTED = 20  # fallback cells listed by describe(); the rest are counted


@dataclass(frozen=True)
class CostTable:
    """Costs per (step, layer, expert) in ``unit`` (cycles at ``clock_hz``, or seconds).

    ``transfer``, ``gpu_compute``, ``near_compute``: ``[steps, layers, num_experts]`` float64;
    ``activation``: ``[steps, layers]``; NaN where the table has no value. ``source`` and
    ``notes`` (defects found, one line each) travel into the results' provenance.
    """

    transfer: np.ndarray
    gpu_compute: np.ndarray
    near_compute: np.ndarray
    activation: np.ndarray
    unit: str = "cycles"
    clock_hz: float | None = None
    source: str = ""
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise UserError(
                f"cost table unit: expected one of {', '.join(UNITS)}, got {self.unit!r}"
            )
        if self.unit == "cycles" and not (self.clock_hz and np.isfinite(self.clock_hz)):
            raise UserError(f"cost table clock: expected a frequency > 0 Hz, got {self.clock_hz!r}")
        if self.clock_hz is not None and not self.clock_hz > 0:
            raise UserError(f"cost table clock: expected a frequency > 0 Hz, got {self.clock_hz!r}")
        shape = self.transfer.shape
        if len(shape) != 3:
            raise UserError(f"cost table transfer: expected [steps, layers, experts], got {shape}")
        for kind in EXPERT_KINDS:
            arr = getattr(self, kind)
            if arr.shape != shape:
                raise UserError(f"cost table {kind}: expected shape {shape}, got {arr.shape}")
            _check_values(arr, kind)
        if self.activation.shape != shape[:2]:
            raise UserError(
                f"cost table activation: expected shape {shape[:2]}, got {self.activation.shape}"
            )
        _check_values(self.activation, "activation")

    @property
    def shape(self) -> tuple[int, int, int]:
        steps, layers, experts = self.transfer.shape
        return int(steps), int(layers), int(experts)

    @property
    def seconds_per_unit(self) -> float:
        return 1.0 / float(self.clock_hz) if self.unit == "cycles" else 1.0

    def coverage(self) -> dict[str, int]:
        """How many values the table holds, per kind."""
        return {kind: int(np.count_nonzero(~np.isnan(getattr(self, kind)))) for kind in KINDS}


def _check_values(arr: np.ndarray, kind: str) -> None:
    values = arr[~np.isnan(arr)]
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0):
        raise UserError(f"cost table {kind}: expected finite values >= 0, got {values.min()!r}")


@dataclass
class _Usage:
    """Which cells each kind of cost was answered for, from the table or the fallback."""

    table: np.ndarray
    fallback: np.ndarray
    fallback_calls: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class TableCost:
    """`CostModel` from a `CostTable`, with ``fallback`` wherever the table has no value.

    Results in seconds (table values times ``table.seconds_per_unit``). Lookups are by the
    (step, layer) the engine passes and the expert ids; a step or layer outside the table, or a
    NaN cell, goes to the fallback. Usage is recorded per kind (`describe`)."""

    def __init__(self, table: CostTable, fallback: CostModel) -> None:
        self.table = table
        self.fallback = fallback
        self._scale = table.seconds_per_unit
        steps, layers, experts = table.shape
        self._usage = {
            kind: _Usage(
                np.zeros((steps, layers, experts), dtype=bool),
                np.zeros((steps, layers, experts), dtype=bool),
            )
            for kind in EXPERT_KINDS
        }
        self._usage["activation"] = _Usage(
            np.zeros((steps, layers), dtype=bool), np.zeros((steps, layers), dtype=bool)
        )

    # -- lookups --------------------------------------------------------------------------------
    def _in_table(self, step: int, layer: int) -> bool:
        steps, layers, _ = self.table.shape
        return 0 <= step < steps and 0 <= layer < layers

    def _per_expert(
        self, kind: str, step: int, layer: int, experts: np.ndarray, fallback: Any
    ) -> np.ndarray:
        """Table values (seconds) where present, ``fallback()`` (seconds, aligned) elsewhere."""
        experts = np.asarray(experts, dtype=np.intp)
        usage = self._usage[kind]
        if not self._in_table(step, layer):
            usage.fallback_calls += 1
            return np.asarray(fallback(), dtype=np.float64)
        values = getattr(self.table, kind)[step, layer, experts]
        have = ~np.isnan(values)
        usage.table[step, layer, experts[have]] = True
        if have.all():
            return values * self._scale
        usage.fallback[step, layer, experts[~have]] = True
        out = np.asarray(fallback(), dtype=np.float64).copy()
        out[have] = values[have] * self._scale
        return out

    # -- CostModel protocol ---------------------------------------------------------------------
    def transfer_time(self, link: str, step: int, layer: int, experts: np.ndarray) -> np.ndarray:
        def fallback() -> np.ndarray:
            return self.fallback.transfer_time(link, step, layer, experts)

        if link != TABLE_LINK["transfer"]:
            self._usage["transfer"].extra[link] = self._usage["transfer"].extra.get(link, 0) + 1
            return np.asarray(fallback(), dtype=np.float64)
        return self._per_expert("transfer", step, layer, experts, fallback)

    def gpu_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        return self._per_expert(
            "gpu_compute",
            step,
            layer,
            experts,
            lambda: self.fallback.gpu_compute_time(step, layer, experts, tokens),
        )

    def near_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        return self._per_expert(
            "near_compute",
            step,
            layer,
            experts,
            lambda: self.fallback.near_compute_time(step, layer, experts, tokens),
        )

    def host_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray:
        return self.fallback.host_compute_time(step, layer, experts, tokens)

    def activation_time(
        self, link: str, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> float:
        """Both directions (the engine charges half out, half back). The table's value is the
        cell's whole activation movement, whichever experts run near data."""
        usage = self._usage["activation"]
        if link == TABLE_LINK["activation"] and self._in_table(step, layer):
            value = float(self.table.activation[step, layer])
            if not np.isnan(value):
                usage.table[step, layer] = True
                return value * self._scale
            usage.fallback[step, layer] = True
        elif link == TABLE_LINK["activation"]:
            usage.fallback_calls += 1
        else:
            usage.extra[link] = usage.extra.get(link, 0) + 1
        return float(self.fallback.activation_time(link, step, layer, experts, tokens))

    # -- provenance -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Where the costs used so far came from: per kind, the cells answered from the table
        and from the fallback (the first few fallback cells listed), and calls the table could
        not answer at all (other links, steps/layers outside it)."""
        kinds: dict[str, Any] = {}
        for kind, usage in self._usage.items():
            fallback_cells = np.argwhere(usage.fallback)
            entry: dict[str, Any] = {
                "table_link": TABLE_LINK.get(kind, "gpu" if kind == "gpu_compute" else "md"),
                "table_cells": int(np.count_nonzero(usage.table)),
                "fallback_cells": len(fallback_cells),
                "fallback_examples": [
                    [int(v) for v in cell] for cell in fallback_cells[:_MAX_LISTED]
                ],
            }
            if usage.fallback_calls:
                entry["fallback_outside_table"] = usage.fallback_calls
            if usage.extra:
                entry["fallback_other_links"] = dict(sorted(usage.extra.items()))
            kinds[kind] = entry
        return {
            "cost_model": "table",
            "source": self.table.source,
            "unit": self.table.unit,
            "clock_hz": self.table.clock_hz,
            "fallback": type(self.fallback).__name__,
            "table_values": self.table.coverage(),
            "notes": list(self.table.notes),
            "used": kinds,
            "cell_index": "[step, layer, expert] (activation: [step, layer]), trace indices",
        }
