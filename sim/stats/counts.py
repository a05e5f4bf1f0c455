"""Per (position, layer, top-k) expert token counts and the seed's gating numbers.

Everything comes from `RoutingTrace.expert_token_counts(k)`, which applies the project's one
top-k' selection (`sim.topk.select_topk`, the notebook's tie order): stats, engine and policies
therefore always count the same experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.errors import fail
from sim.stats.gating import GatingRule
from sim.trace.routing import RoutingTrace

GATING_COLUMNS = ("position", "layer", "topk", "expert_activ", "expert_gpu", "expert_md", "h")
COUNT_COLUMNS = ("position", "layer", "topk", "expert", "tokens")


@dataclass(frozen=True, eq=False)
class CellCounts:
    """Token counts of every cell: ``counts[topk_index, step, layer_index, expert]`` (int32)."""

    positions: tuple[int, ...]
    layers: tuple[int, ...]
    topks: tuple[int, ...]
    num_tokens: int  # tokens per cell (sequences of the batch)
    counts: np.ndarray

    @property
    def expert_activ(self) -> np.ndarray:
        """``[topk_index, step, layer_index]``: distinct experts with at least one token."""
        return (self.counts > 0).sum(axis=3).astype(np.int64)

    @property
    def num_cells(self) -> int:
        """(position, layer) cells; each has one row per top-k in the gating table."""
        return len(self.positions) * len(self.layers)


@dataclass(frozen=True, eq=False)
class GatingTable:
    """The gating numbers of every cell, as flat columns in (position, layer, topk) order."""

    columns: dict[str, np.ndarray]

    def rows(self) -> np.ndarray:
        """``[n, 7]`` int64, columns in `GATING_COLUMNS` order."""
        return np.stack([self.columns[c] for c in GATING_COLUMNS], axis=1)


def count_cells(trace: RoutingTrace, topks: tuple[int, ...] | list[int]) -> CellCounts:
    """Count tokens per expert in every (position, layer) cell of ``trace`` for each top-k."""
    topks = tuple(int(k) for k in topks)
    if not topks:
        raise fail("--topk", "at least one k", "an empty list")
    for k in topks:
        if not 1 <= k <= trace.num_experts:
            raise fail("--topk", f"values in 1..{trace.num_experts} (the trace's experts)", k)
    counts = np.stack([trace.expert_token_counts(k) for k in topks], axis=0)
    return CellCounts(
        positions=tuple(int(p) for p in trace.positions),
        layers=tuple(int(lid) for lid in trace.layer_ids),
        topks=topks,
        num_tokens=trace.num_seqs,
        counts=counts,
    )


def gating_table(cells: CellCounts, rule: GatingRule) -> GatingTable:
    """The seed's Expert_Activ, Expert_GPU, Expert_MD and H for every (position, layer, topk)."""
    activ = np.moveaxis(cells.expert_activ, 0, -1)  # [step, layer, topk]
    gpu, md, h = rule.split(activ)
    pos, lay, top = _cell_index(cells, activ.shape)
    return GatingTable(
        columns={
            "position": pos.ravel(),
            "layer": lay.ravel(),
            "topk": top.ravel(),
            "expert_activ": activ.ravel(),
            "expert_gpu": gpu.ravel(),
            "expert_md": md.ravel(),
            "h": h.ravel(),
        }
    )


def count_rows(cells: CellCounts) -> np.ndarray:
    """``[n, 5]`` int64 rows ``position, layer, topk, expert, tokens`` for experts with tokens.

    Ordered by position, layer, topk, then expert id.
    """
    counts = np.moveaxis(cells.counts, 0, 2)  # [step, layer, topk, expert]
    step_i, layer_i, topk_i, expert = np.nonzero(counts)
    return np.stack(
        [
            np.asarray(cells.positions, dtype=np.int64)[step_i],
            np.asarray(cells.layers, dtype=np.int64)[layer_i],
            np.asarray(cells.topks, dtype=np.int64)[topk_i],
            expert.astype(np.int64),
            counts[step_i, layer_i, topk_i, expert].astype(np.int64),
        ],
        axis=1,
    )


def _cell_index(
    cells: CellCounts, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pos = np.asarray(cells.positions, dtype=np.int64)[:, None, None]
    lay = np.asarray(cells.layers, dtype=np.int64)[None, :, None]
    top = np.asarray(cells.topks, dtype=np.int64)[None, None, :]
    return (
        np.broadcast_to(pos, shape),
        np.broadcast_to(lay, shape),
        np.broadcast_to(top, shape),
    )
