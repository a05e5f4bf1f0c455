"""Write the results of `moesim trace stats`: gating.csv, counts.csv, meta.json (all atomic)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sim
from sim.atomic import staged_dir, write_json, write_text
from sim.stats.counts import (
    COUNT_COLUMNS,
    GATING_COLUMNS,
    CellCounts,
    count_rows,
    gating_table,
)
from sim.stats.gating import GatingRule
from sim.stats.notebook_tree import write_notebook_tree
from sim.trace.routing import RoutingTrace

GATING_CSV = "gating.csv"
COUNTS_CSV = "counts.csv"
META_JSON = "meta.json"
LAYOUT_NOTES = {
    "megatron": "positions are true decode steps of the batch (docs/trace-format.md, Row layouts)",
    "seed": "the notebook's reading (rows seq*L+pos, L=512): reproduces its numbers; "
    "positions are not decode steps",
}


@dataclass(frozen=True)
class StatsResult:
    """What was written, for the command's summary."""

    gating_rows: int
    count_rows: int
    tree_files: int
    mean_activ: dict[int, float]  # top-k -> mean Expert_Activ over cells


def int_csv_text(header: tuple[str, ...], rows: np.ndarray) -> str:
    """CSV text of an integer table, identical to ``csv.writer`` (``\\n`` lines), formatted by
    one ``%`` call instead of a Python loop per row (counts.csv has up to ~10^6 rows)."""
    ncol = len(header)
    if rows.ndim != 2 or rows.shape[1] != ncol:
        raise ValueError(f"rows {rows.shape} do not match {ncol} columns")
    line = ",".join(["%d"] * ncol) + "\n"
    return ",".join(header) + "\n" + (line * rows.shape[0]) % tuple(rows.ravel().tolist())


def write_stats(
    out_dir: str | Path,
    trace: RoutingTrace,
    cells: CellCounts,
    rule: GatingRule,
    *,
    notebook_tree: bool = False,
    command: str = "",
) -> StatsResult:
    """Write gating.csv, counts.csv, meta.json (and the notebook tree) under ``out_dir``."""
    with staged_dir(out_dir, "merge") as staging:  # every file appears, or none
        return _write_stats(staging, trace, cells, rule, notebook_tree, command)


def _write_stats(
    out: Path,
    trace: RoutingTrace,
    cells: CellCounts,
    rule: GatingRule,
    notebook_tree: bool,
    command: str,
) -> StatsResult:
    gating = gating_table(cells, rule).rows()
    counts = count_rows(cells)
    tree_files = write_notebook_tree(trace, cells, rule, out) if notebook_tree else 0
    write_text(out / GATING_CSV, int_csv_text(GATING_COLUMNS, gating))
    write_text(out / COUNTS_CSV, int_csv_text(COUNT_COLUMNS, counts))
    activ = cells.expert_activ
    mean_activ = {k: float(activ[i].mean()) for i, k in enumerate(cells.topks)}
    result = StatsResult(
        gating_rows=int(gating.shape[0]),
        count_rows=int(counts.shape[0]),
        tree_files=tree_files,
        mean_activ=mean_activ,
    )
    write_json(out / META_JSON, stats_meta(trace, cells, rule, result, command))
    return result


def stats_meta(
    trace: RoutingTrace,
    cells: CellCounts,
    rule: GatingRule,
    result: StatsResult,
    command: str,
) -> dict[str, Any]:
    """meta.json: enough to say exactly what the numbers were computed on and with what."""
    m = trace.meta
    return {
        "tool": {"name": "moesim", "version": sim.__version__, "command": command},
        "layout": m.layout,
        "layout_note": LAYOUT_NOTES[m.layout],
        "trace": m.to_dict(),
        "describe": trace.describe(),
        "shards": list(m.shards),
        "selection": {
            "positions": list(cells.positions),
            "layers": list(cells.layers),
            "topk": list(cells.topks),
            "tokens_per_cell": cells.num_tokens,
            "cells": cells.num_cells,
        },
        "constants": rule.to_dict(),
        "synthetic_layers": list(m.synthetic_layers),
        "layer_copies": {str(k): v for k, v in m.extra.get("layer_copies", {}).items()},
        "numpy_version": np.__version__,
        "torch_version": torch.__version__,
        "tie_order_note": "top-k ties follow numpy's default argsort on the notebook's '%.6f' "
        "rows; its order for equal values may differ between numpy builds",
        "outputs": {
            "gating.csv": result.gating_rows,
            "counts.csv": result.count_rows,
            "notebook_tree_files": result.tree_files,
        },
        "mean_expert_activ": {str(k): v for k, v in result.mean_activ.items()},
    }
