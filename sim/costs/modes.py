"""The four execution modes of the NeuPIMs/DynaNDE lineage, computed exactly from the tables.

Per cell (step, layer), in integer cycles, with A = the active experts in routing-file order
(most tokens first, ties by lower id), ``act`` = activation_movement_1 + activation_movement_2
(the README of ``neupims-decoder-bs16``, quoted in docs/cost-tables.md):

* NPU-only: sum of ``param_load`` over every row of the NPU table + ``total compute`` of expert
  63 (0 if absent);
* PIM-only: sum of ``total compute`` over every row of the PIM table + act;
* MoNDE: n = max(1, min(ceil(0.05882 * |A|), |A|)), T = A[:n];
  max(sum of param_load over T + total compute of T's last expert,
      sum of PIM total compute over every PIM row not in T + act);
* DynaNDE: min over k = 0..|A| of max(NPU part of A[:k] (0 when k = 0),
  PIM part of A[k:] + act (0 when k = |A|)).

These are the formulas *as written*: NPU-only, PIM-only and MoNDE's PIM part read the table's
rows, whatever the routing says. A mode skips a cell when a value it needs is not there: a
missing file (the README's rule), or (MoNDE's T, DynaNDE's A) an active expert without a row.
``consistent_only=True`` also skips cells whose tables do not list exactly the active experts
(``NeupimsData.npu_ok`` / ``pim_ok``): the cells where the engine, which reads the routing, can
be compared with the formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sim.costs.neupims import NeupimsData

MODES = ("npu-only", "pim-only", "monde", "dynande")
MONDE_SHARE = 0.05882  # the README's constant: 32 / (32 + 512) = 1/17, to 4 significant digits
LAST_EXPERT = 63  # NPU-only adds the compute of this expert (the last in id order of 64)


@dataclass(frozen=True)
class ModeResult:
    """One mode over every cell: ``cycles[s, l]`` (-1 where skipped), and its total."""

    mode: str
    cycles: np.ndarray  # int64 [steps, layers]
    npu_experts: np.ndarray  # int64 [steps, layers]: experts on the NPU path (-1 where skipped)

    @property
    def computed(self) -> np.ndarray:
        return self.cycles >= 0

    @property
    def total(self) -> int:
        return int(self.cycles[self.computed].sum())

    @property
    def cells(self) -> int:
        return int(self.computed.sum())


def monde_npu_count(active: int, share: float = MONDE_SHARE) -> int:
    """The README's n = max(1, min(ceil(share * |A|), |A|)) (0 for an empty layer)."""
    if active == 0:
        return 0
    return max(1, min(math.ceil(share * active), active))


def compute_modes(
    data: NeupimsData, *, consistent_only: bool = False, monde_share: float = MONDE_SHARE
) -> dict[str, ModeResult]:
    """Every mode's cycles per cell (see the module docstring for the rules). ``monde_share``
    replaces MoNDE's 0.05882 (to ask what another share would have given)."""
    steps, layers = data.shape
    out = {mode: np.full((steps, layers), -1, dtype=np.int64) for mode in MODES}
    npu_n = {mode: np.full((steps, layers), -1, dtype=np.int64) for mode in MODES}
    for s in range(steps):
        for layer in range(layers):
            npu_ok = bool(data.npu_ok[s, layer]) or not consistent_only
            pim_ok = bool(data.pim_ok[s, layer]) or not consistent_only
            has_npu = bool(data.npu_rows[s, layer].any()) and npu_ok
            has_pim = bool(data.pim_rows[s, layer].any()) and pim_ok
            cell = _Cell(data, s, layer)
            if has_npu:
                out["npu-only"][s, layer] = cell.npu_only()
                npu_n["npu-only"][s, layer] = int(data.npu_rows[s, layer].sum())
            if has_pim:
                out["pim-only"][s, layer] = cell.pim_only()
                npu_n["pim-only"][s, layer] = 0
            if has_npu and has_pim:
                monde = cell.monde(monde_share)
                if monde is not None:
                    out["monde"][s, layer], npu_n["monde"][s, layer] = monde
                dyna = cell.dynande()
                if dyna is not None:
                    out["dynande"][s, layer], npu_n["dynande"][s, layer] = dyna
    return {mode: ModeResult(mode, out[mode], npu_n[mode]) for mode in MODES}


class _Cell:
    """One (step, layer): the README's formulas on Python ints."""

    def __init__(self, data: NeupimsData, s: int, layer: int) -> None:
        self.a = data.active_order(s, layer)
        self.npu_rows = data.npu_rows[s, layer]
        self.pim_rows = data.pim_rows[s, layer]
        self.load = data.param_load[s, layer]
        self.npu = data.npu_compute[s, layer]
        self.pim = data.pim_compute[s, layer]
        self.act = int(data.activation_1[s, layer] + data.activation_2[s, layer])

    def npu_only(self) -> int:
        last = int(self.npu[LAST_EXPERT]) if self.npu_rows[LAST_EXPERT] else 0
        return int(self.load[self.npu_rows].sum()) + last

    def pim_only(self) -> int:
        return int(self.pim[self.pim_rows].sum()) + self.act

    def monde(self, share: float) -> tuple[int, int] | None:
        """(cycles, n); None when an expert of T has no NPU row."""
        n = monde_npu_count(self.a.size, share)
        t = self.a[:n]
        if not self.npu_rows[t].all():
            return None
        npu_part = int(self.load[t].sum()) + (int(self.npu[t[-1]]) if n else 0)
        rest = self.pim_rows.copy()
        rest[t] = False
        pim_part = int(self.pim[rest].sum()) + self.act
        return max(npu_part, pim_part), n

    def dynande(self) -> tuple[int, int] | None:
        """(cycles, best k: the fewest NPU experts among the optima); None when an active
        expert lacks a row on either side."""
        a = self.a
        if not (self.npu_rows[a].all() and self.pim_rows[a].all()):
            return None
        n = a.size
        load_cum = np.concatenate([[0], np.cumsum(self.load[a])])
        last = np.concatenate([[0], self.npu[a]])
        npu_part = load_cum + last  # k = 0 .. n (k = 0: 0)
        pim_cum = np.concatenate([[0], np.cumsum(self.pim[a])])
        pim_part = (pim_cum[n] - pim_cum) + np.where(np.arange(n + 1) < n, self.act, 0)
        total = np.maximum(npu_part, pim_part)
        k = int(np.argmin(total))
        return int(total[k]), k
