"""Run the engine on NeuPIMs tables and check it against the four modes' formulas, cell by cell.

Each policy of a scenario runs on the tables' routing with a fresh `TableCost` (the tables,
roofline fallback). Its per-layer times, converted to cycles (``round(seconds * clock)``), are
compared with the mode the policy implements, on the cells where both are defined and the
tables list exactly the cell's active experts (``compute_modes(consistent_only=True)``):

* ``gpu-only`` -> NPU-only, ``md-only`` (near-data mode) -> PIM-only,
* ``seed-split`` with the README's constants (32 / 512, alpha 1, rounding ``ceil``, most tokens
  first) -> MoNDE, ``balanced-split`` -> DynaNDE.

For NPU-only the engine and the README differ by construction (see `npu_only_schedule`); the
difference is computed from the tables and checked to account for every cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.costs.modes import LAST_EXPERT, ModeResult
from sim.costs.neupims import NeupimsData
from sim.costs.table import TableCost
from sim.engine.cost import RooflineCost
from sim.engine.results import RunResult
from sim.hardware import Hardware

POLICY_MODES = {
    "gpu-only": "npu-only",
    "md-only": "pim-only",
    "seed-split": "monde",
    "balanced-split": "dynande",
}
MONDE_PARAMS = {"alpha": 1.0, "rounding": "ceil", "order": "tokens", "from_links": False}


@dataclass(frozen=True)
class PolicyRun:
    """One engine run on the tables: the result, its layer times in cycles, cost provenance."""

    label: str
    policy: str
    result: RunResult
    cycles: np.ndarray  # int64 [steps, layers]: round(layer_time * clock)
    mode: str | None  # the README mode it implements, if any
    mode_note: str  # why it is not compared, when mode is None
    costs: dict[str, Any] = field(default_factory=dict)  # TableCost.describe()

    @property
    def total(self) -> int:
        return int(self.cycles.sum())


@dataclass(frozen=True)
class ModeCheck:
    """Engine vs formula for one mode on the cells both can compute."""

    mode: str
    label: str
    cells: int
    formula_total: int
    engine_total: int
    cells_differing: int
    split_differing: int  # cells where the engine put another number of experts on the NPU
    explained: int | None = None  # NPU-only: the difference the schedules predict

    @property
    def exact(self) -> bool:
        return self.cells_differing == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "label": self.label,
            "cells": self.cells,
            "formula_total": self.formula_total,
            "engine_total": self.engine_total,
            "difference": self.engine_total - self.formula_total,
            "cells_differing": self.cells_differing,
            "split_differing": self.split_differing,
            "exact": self.exact,
            "explained_difference": self.explained,
        }


def policy_mode(name: str, params: dict[str, Any], hardware: Hardware) -> tuple[str | None, str]:
    """(the README mode a policy implements, '') or (None, why it implements none)."""
    mode = POLICY_MODES.get(name)
    if mode is None:
        return None, "not one of the four modes"
    if mode in ("pim-only", "monde", "dynande") and hardware.md_mode != "near-data":
        return None, "the MD path is not near-data (md_mode fetch)"
    if mode == "monde":
        bw_pcie, bw_md = params.get("bw_pcie", 32.0), params.get("bw_md", 512.0)
        differs = [k for k, v in MONDE_PARAMS.items() if params.get(k, v) != v]
        if not math.isclose(bw_pcie / (bw_pcie + bw_md), 1 / 17) or differs:
            return None, "seed-split without MoNDE's constants (32/512, alpha 1, ceil, tokens)"
    return mode, ""


def run_policies(
    data: NeupimsData,
    scenario: Any,
    clock_hz: float,
    *,
    progress: Any = None,
) -> list[PolicyRun]:
    """Every policy of ``scenario`` (a `sim.scenario.Scenario`) on the tables' routing, top-k =
    the tables' k, with a fresh `TableCost` each."""
    from sim.engine.simulate import simulate

    trace = data.routing_trace()
    table = data.cost_table(clock_hz)
    steps, layers = data.shape
    runs = []
    for spec in scenario.policies:
        cost = TableCost(table, RooflineCost(scenario.hardware, scenario.model))
        result = simulate(
            trace,
            scenario.hardware,
            scenario.model,
            spec.build(),
            topk=data.topk,
            cost=cost,
            seed=scenario.seed,
            label=spec.label,
        )
        cycles = np.rint(result.per_layer["layer_time"] * clock_hz).astype(np.int64)
        mode, note = policy_mode(spec.name, spec.resolved_params, scenario.hardware)
        runs.append(
            PolicyRun(
                label=spec.label,
                policy=spec.name,
                result=result,
                cycles=cycles.reshape(steps, layers),
                mode=mode,
                mode_note=note,
                costs=cost.describe(),
            )
        )
        if progress is not None:
            progress(spec.label)
    return runs


def npu_only_schedule(data: NeupimsData) -> np.ndarray:
    """The engine's NPU-only layer time in closed form, per cell (int64, -1 without NPU table).

    Weights load one after another over the one PCIe slot, most tokens first (the routing
    file's order A); each expert computes as soon as its weights are in, under the next load
    (its compute is far shorter than a load), so the layer ends at
    ``sum(param_load over A) + total compute of A's last expert``. The README instead adds the
    compute of expert 63, 0 when 63 is inactive: loads in expert-id order, with 63 assumed last.
    """
    steps, layers = data.shape
    out = np.full((steps, layers), -1, dtype=np.int64)
    for s in range(steps):
        for layer in range(layers):
            if not data.npu_ok[s, layer]:
                continue
            a = data.active_order(s, layer)
            load = int(data.param_load[s, layer, a].sum())
            out[s, layer] = load + (int(data.npu_compute[s, layer, a[-1]]) if a.size else 0)
    return out


def npu_only_readme_gap(data: NeupimsData) -> dict[str, int]:
    """How the README's NPU-only differs from the engine's schedule: cells without expert 63
    (README adds 0), cells with 63 not loaded last, and the cycles each adds."""
    steps, layers = data.shape
    gap = dict.fromkeys(
        ("cells_without_63", "cycles_without_63", "cells_63_not_last", "cycles_63_not_last"), 0
    )
    for s in range(steps):
        for layer in range(layers):
            if not data.npu_ok[s, layer]:
                continue
            a = data.active_order(s, layer)
            last = int(data.npu_compute[s, layer, a[-1]])
            if not data.npu_rows[s, layer, LAST_EXPERT]:
                gap["cells_without_63"] += 1
                gap["cycles_without_63"] += last
            elif a[-1] != LAST_EXPERT:
                gap["cells_63_not_last"] += 1
                gap["cycles_63_not_last"] += last - int(data.npu_compute[s, layer, LAST_EXPERT])
    return gap


def check_modes(
    data: NeupimsData, consistent: dict[str, ModeResult], runs: list[PolicyRun]
) -> list[ModeCheck]:
    """Engine vs formula per mode policy, on the cells the mode computes from consistent
    tables (``compute_modes(data, consistent_only=True)``)."""
    checks = []
    engine_npu = npu_only_schedule(data)
    for run in runs:
        if run.mode is None:
            continue
        ref = consistent[run.mode]
        cells = ref.computed
        diff = run.cycles[cells] - ref.cycles[cells]
        on_npu = run.result.per_layer["pcie"].reshape(ref.cycles.shape)
        explained = None
        if run.mode == "npu-only":
            explained = int((engine_npu[cells] - ref.cycles[cells]).sum())
        checks.append(
            ModeCheck(
                mode=run.mode,
                label=run.label,
                cells=int(cells.sum()),
                formula_total=int(ref.cycles[cells].sum()),
                engine_total=int(run.cycles[cells].sum()),
                cells_differing=int(np.count_nonzero(diff)),
                split_differing=int(np.count_nonzero(on_npu[cells] != ref.npu_experts[cells])),
                explained=explained,
            )
        )
    return checks
