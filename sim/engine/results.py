"""What one engine run returns: columnar per-(step, layer) and per-step records, link use, totals.

Plain numpy columns (one row per (step, layer), step-major) so that CSV/JSON writers, reports
and sweeps read them without knowing the engine. Definitions: docs/engine.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

# per-(step, layer) counts (integers), then bytes and times (floats)
_COUNT_COLUMNS = (
    "gpu",
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
    "reduced",
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
    "gate_mass",
    "degraded_gate_mass",
    "dropped_gate_mass",
)
PER_STEP_COLUMNS = (
    "gpu",
    "step",
    "position",
    "latency",
    "compute_only",
    "non_expert",
    "degraded_gate_mass",
    "dropped_gate_mass",
)
INT_COLUMNS = frozenset(_COUNT_COLUMNS)
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
    "reduced",
    "degraded_gate_mass",
    "dropped_gate_mass",
)


class GateRecord(NamedTuple):
    """What the engine records at one gate (one MoE layer of one iteration of one GPU): the
    per_layer columns (`PER_LAYER_COLUMNS`, same names, same order) and what the per-step
    columns are derived from. Definitions: docs/engine.md."""

    gpu: int
    step: int
    position: int
    layer: int
    layer_id: int
    active: int
    hits: int
    late_prefetches: int
    pcie: int
    md_fetch: int
    md_near: int
    host: int
    prefetch_pcie: int
    prefetch_md: int
    reduced: int
    bytes_pcie: float
    bytes_md: float
    t_start: float
    t_gate: float
    t_end: float
    transfer_window: float
    stall: float
    layer_time: float
    cache_bytes: float
    gate_mass: float
    degraded_gate_mass: float
    dropped_gate_mass: float
    compute_ref: float  # the gate's expert compute with every input in place (`stall_split`), s
    non_expert: float  # the layer's non-expert time, s


assert GateRecord._fields[: len(PER_LAYER_COLUMNS)] == PER_LAYER_COLUMNS


def stall_split(rel_end: Any, compute: Any) -> tuple[Any, Any]:
    """``(compute_ref, stall)`` of gates whose expert phase (gate to layer end) lasted
    ``rel_end`` and whose experts' compute with every input in place takes ``compute``: the
    copies the gate used, where it ran them (the GPU's serial compute, the MD pool's unit and
    the host CPU, each of its own experts, in parallel: the longest of the three). The
    reference is capped at ``rel_end`` (it only exceeds it by rounding), so the stall, the
    time the experts waited for data (transfers, activations, a shared unit, other GPUs), is
    never negative and the two add up to ``rel_end``. Floats or arrays."""
    ref = np.minimum(compute, rel_end)
    return ref, rel_end - ref


class GateBlock(NamedTuple):
    """Consecutive gates' records as columns (`GateRecord`'s fields, one array each): what the
    closed-form path records for a whole iteration at once."""

    gpu: np.ndarray
    step: np.ndarray
    position: np.ndarray
    layer: np.ndarray
    layer_id: np.ndarray
    active: np.ndarray
    hits: np.ndarray
    late_prefetches: np.ndarray
    pcie: np.ndarray
    md_fetch: np.ndarray
    md_near: np.ndarray
    host: np.ndarray
    prefetch_pcie: np.ndarray
    prefetch_md: np.ndarray
    reduced: np.ndarray
    bytes_pcie: np.ndarray
    bytes_md: np.ndarray
    t_start: np.ndarray
    t_gate: np.ndarray
    t_end: np.ndarray
    transfer_window: np.ndarray
    stall: np.ndarray
    layer_time: np.ndarray
    cache_bytes: np.ndarray
    gate_mass: np.ndarray
    degraded_gate_mass: np.ndarray
    dropped_gate_mass: np.ndarray
    compute_ref: np.ndarray
    non_expert: np.ndarray


assert GateBlock._fields == GateRecord._fields


def collect_gates(
    records: list[GateRecord | GateBlock],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The per_layer columns of ``records`` (in their order; single gates and blocks of
    gates) and the ``[rows, 2]`` float table of (compute_ref, non_expert) that per-step
    columns need."""
    chunks: list[list[np.ndarray]] = []
    run: list[GateRecord] = []
    for item in [*records, None]:
        if isinstance(item, GateRecord):
            run.append(item)
            continue
        if run:
            chunks.append([np.asarray(col) for col in zip(*run)])
            run = []
        if item is not None:
            chunks.append(list(item))
    fields = GateRecord._fields
    columns = [
        np.concatenate([chunk[i] for chunk in chunks]) if chunks else np.empty(0)
        for i in range(len(fields))
    ]
    per_layer = {
        name: col.astype(np.int64 if name in INT_COLUMNS else np.float64)
        for name, col in zip(PER_LAYER_COLUMNS, columns)
    }
    extra = np.stack([col.astype(np.float64) for col in columns[len(PER_LAYER_COLUMNS) :]], axis=1)
    return per_layer, extra


def collect_steps(
    per_layer: dict[str, np.ndarray], extra: np.ndarray, layers: int
) -> dict[str, np.ndarray]:
    """per_step columns from one GPU's per_layer rows (iteration-major, ``layers`` rows each):
    latency = the iteration's layer times summed (time per output token); compute_only = its
    non-expert time + each gate's compute with every input in place (`stall_split`), summed;
    non_expert = its non-expert time per
    layer (the mean over its layers when they differ); degraded/dropped_gate_mass = the
    iteration's shares of gate mass (over all its layers, `sim.precision.mass_shares`)."""
    layer_time = per_layer["layer_time"].reshape(-1, layers)
    ref = extra[:, 0].reshape(-1, layers)
    non_expert = extra[:, 1].reshape(-1, layers)
    mass = per_layer["gate_mass"].reshape(-1, layers)
    shares = [
        _step_shares(per_layer[name].reshape(-1, layers), mass)
        for name in ("degraded_gate_mass", "dropped_gate_mass")
    ]
    return {
        "gpu": per_layer["gpu"][::layers].copy(),
        "step": per_layer["step"][::layers].copy(),
        "position": per_layer["position"][::layers].copy(),
        "latency": layer_time.sum(axis=1),
        "compute_only": (ref + non_expert).sum(axis=1),
        "non_expert": np.where(
            non_expert.min(axis=1) == non_expert.max(axis=1),
            non_expert[:, 0] if layers else 0.0,
            non_expert.mean(axis=1),
        ),
        "degraded_gate_mass": shares[0],
        "dropped_gate_mass": shares[1],
    }


def _step_shares(share: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Per row of gates, the mass-weighted mean of their shares (0 where every share is 0,
    even when the mass is unknown)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        weighted = (share * mass).sum(axis=1) / mass.sum(axis=1)
    return np.where((share == 0).all(axis=1), 0.0, weighted)


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
    per_gpu: list[dict[str, Any]] | None = None  # each GPU's own totals (gpu, then TOTAL_KEYS)
    rates: dict[str, tuple[tuple[float, float], ...]] | None = None  # network link: (t, rate)
    link_usage: dict[str, np.ndarray] | None = None  # link: rows (t0, t1, mean utilisation)
    # how the engine ran: gates, network transfers, network events and re-ratings (benchmarks)
    engine: dict[str, float] | None = None

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
    mass = per_layer.get("gate_mass")
    shares = (0.0, 0.0)
    if mass is not None:
        shares = _run_shares(per_layer, mass)
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
        "reduced": float(per_layer["reduced"].sum()) if "reduced" in per_layer else 0.0,
        "degraded_gate_mass": shares[0],
        "dropped_gate_mass": shares[1],
    }


def combined_totals(
    per_layer: list[dict[str, np.ndarray]], per_step: list[dict[str, np.ndarray]], tokens: int
) -> dict[str, float]:
    """Totals of several GPUs' runs: step ``s`` lasts the longest of the GPUs' step ``s``
    (their shortest common run of steps), the run ends with the last GPU, counts and bytes
    are sums. ``tokens``: output tokens of one step of all the GPUs together."""
    steps = min(len(p["latency"]) for p in per_step)
    step = {
        "latency": np.max([p["latency"][:steps] for p in per_step], axis=0),
        "compute_only": np.max([p["compute_only"][:steps] for p in per_step], axis=0),
        "non_expert": np.max([p["non_expert"][:steps] for p in per_step], axis=0),
    }
    layers = {k: np.concatenate([p[k] for p in per_layer]) for k in per_layer[0]}
    totals = compute_totals(layers, step, tokens)
    totals["total_time"] = max(float(p["t_end"].max(initial=0.0)) for p in per_layer)
    return totals


def _run_shares(per_layer: dict[str, np.ndarray], mass: np.ndarray) -> tuple[float, float]:
    """The run's degraded and dropped shares of gate mass: each gate's share weighted by its
    mass (`sim.precision.mass_shares`)."""
    from sim.precision import mass_shares

    parts = []
    for name in ("degraded_gate_mass", "dropped_gate_mass"):
        share = per_layer[name]
        parts.append(np.where(share == 0, 0.0, share * mass))
    return mass_shares(parts[0], parts[1], mass)
