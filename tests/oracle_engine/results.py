"""What one engine run returns: columnar per-(step, layer) and per-step records, link use, totals.

Plain numpy columns (one row per (step, layer), step-major) so that CSV/JSON writers, reports
and sweeps read them without knowing the engine. Definitions: docs/engine.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# per-(step, layer) counts (integers), then bytes and times (floats)
_COUNT_COLUMNS = (
    "step",
    "position",
    "layer",
    "layer_id",
    "active",
    "hits",
    "late_prefetches",
    "pcie",
    "md_fetch",
    "md_near",
    "host",
    "prefetch_pcie",
    "prefetch_md",
)
PER_LAYER_COLUMNS = (
    *_COUNT_COLUMNS,
    "bytes_pcie",
    "bytes_md",
    "t_start",
    "t_gate",
    "t_end",
    "transfer_window",
    "stall",
    "layer_time",
    "cache_bytes",
)
PER_STEP_COLUMNS = ("step", "position", "latency", "compute_only", "non_expert")
INT_COLUMNS = frozenset(_COUNT_COLUMNS)
LINK_NAMES = ("pcie", "md_link")
TOTAL_KEYS = (
    "total_time",
    "mean_step",
    "p50_step",
    "p99_step",
    "transfer_time",
    "bytes_pcie",
    "bytes_md",
    "hits",
    "late_prefetches",
    "misses",
    "hit_rate",
    "stall",
    "tokens_per_s",
    "ms_per_token",
    "non_expert_time",
)


@dataclass(frozen=True)
class TimelineEvent:
    """One interval on one resource, for the Chrome/Perfetto timeline export."""

    resource: str  # "pcie[0]", "md_link[1]", "gpu", "md", "host"
    kind: str  # "fetch", "prefetch", "activation", "compute", "non_expert"
    start: float  # s
    end: float  # s
    step: int
    layer: int
    expert: int  # -1 for layer-level events


@dataclass(frozen=True)
class RunResult:
    """One policy's run over one trace. Column definitions: docs/engine.md."""

    policy: str  # registry name
    label: str  # display label, unique within a run
    per_layer: dict[str, np.ndarray]  # PER_LAYER_COLUMNS, one row per (step, layer), step-major
    per_step: dict[str, np.ndarray]  # PER_STEP_COLUMNS
    links: dict[str, dict[str, float]]  # link -> busy, bytes, utilisation, transfers
    totals: dict[str, float]  # TOTAL_KEYS (and more)
    params: dict[str, Any]  # the policy's parameters
    timeline: tuple[TimelineEvent, ...] | None = None

    def summary_row(self) -> dict[str, Any]:
        """Flat dict for summary.csv/json: policy, label, totals, link utilisations."""
        row: dict[str, Any] = {"policy": self.policy, "label": self.label}
        row.update(self.totals)
        for name, stats in self.links.items():
            row[f"util_{name}"] = stats["utilisation"]
        return row


def compute_totals(
    per_layer: dict[str, np.ndarray], per_step: dict[str, np.ndarray], num_seqs: int = 1
) -> dict[str, float]:
    """Totals over a run from its columns (so a result can be re-derived from its CSVs).

    ``hits`` counts only experts already in HBM at the gate; ``late_prefetches`` those still in
    flight to it (served without a new transfer, but the GPU waits); ``misses`` the rest.
    ``tokens_per_s``: the batch's ``num_seqs`` tokens per mean step; ``ms_per_token``: the
    mean step in ms (each sequence gets one output token per step)."""
    latency = per_step["latency"]
    active = float(per_layer["active"].sum())
    hits = float(per_layer["hits"].sum())
    late = float(per_layer["late_prefetches"].sum()) if "late_prefetches" in per_layer else 0.0
    t_end = per_layer["t_end"]
    mean_step = float(latency.mean()) if latency.size else 0.0
    non_expert = per_step.get("non_expert")
    return {
        "total_time": float(t_end[-1]) if t_end.size else 0.0,
        "mean_step": mean_step,
        "p50_step": float(np.percentile(latency, 50)) if latency.size else 0.0,
        "p99_step": float(np.percentile(latency, 99)) if latency.size else 0.0,
        "transfer_time": float(per_layer["transfer_window"].sum()),
        "bytes_pcie": float(per_layer["bytes_pcie"].sum()),
        "bytes_md": float(per_layer["bytes_md"].sum()),
        "hits": hits,
        "late_prefetches": late,
        "misses": active - hits - late,
        "hit_rate": hits / active if active else 0.0,
        "stall": float(per_layer["stall"].sum()),
        "tokens_per_s": num_seqs / mean_step if mean_step > 0 else 0.0,
        "ms_per_token": 1e3 * mean_step,
        "non_expert_time": float(non_expert.mean())
        if non_expert is not None and non_expert.size
        else 0.0,
        "compute_only": float(per_step["compute_only"].sum()),
    }
