"""The fidelity harness: replay a short trace for real and compare with the simulator.

For each policy (by default the baseline and ``lru``):

1. The simulator runs the scenario on the first ``steps`` decode steps, with the calibrated
   preset merged onto the scenario's hardware and a timeline recorded. Its per-step latency is
   the prediction.
2. The timeline says exactly what to replay: per step and layer, which experts cross PCIe (in
   which order, on which copy slot) and the order the GPU computes the layer's experts in.
   That becomes a `ReplayPlan`.
3. A `Backend` runs the plan (`CudaBackend`: pinned host memory -> HBM copies on
   ``channels`` streams, real SwiGLU matmuls, CUDA events per step) and the measured per-step
   times are compared with the prediction.

What one GPU cannot replay is left out on both sides, so the comparison stays like for like:
there is no memory pool, so the MD path's experts are already in HBM at the gate (the simulator
gets an ideal ``md_link``: infinite bandwidth, no latency); non-expert work (attention, router)
is not run (`replay_hardware` sets ``non_expert_time`` to 0 for the prediction). Policies that prefetch, run
near data or on the host are refused. See docs/fidelity.md.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.calibrate.backend import Backend, FakeMachine, LayerPlan, ReplayPlan
from sim.calibrate.measure import ExpertShape
from sim.errors import UserError
from sim.hardware import Hardware, LinkConfig, ModelSpec
from sim.trace.routing import RoutingTrace
from sim.yamlio import read_yaml

TARGET_ERROR_PCT = 10.0  # the target: within 10% per step on average
DEFAULT_POLICIES = ("seed-split", "lru")
CSV_COLUMNS = (
    "label",
    "policy",
    "topk",
    "step",
    "position",
    "predicted_s",
    "measured_s",
    "error_pct",
)
SUMMARY_COLUMNS = (
    "label", "policy", "topk", "steps", "predicted_mean_s", "measured_mean_s",
    "mean_abs_error_pct", "max_abs_error_pct", "error_of_means_pct", "within_target", "measured",
)  # fmt: skip
DRY_RUN_TITLE = (
    "**DRY RUN on a synthetic machine (FakeBackend): not measurements. Do not paste into "
    "docs/fidelity.md.**"
)


# -- the calibrated preset -----------------------------------------------------------------------
def load_preset(path: str | Path) -> dict[str, Any]:
    """A preset written by `moesim calibrate`; it must hold a ``hardware`` mapping."""
    file = Path(path)
    data = read_yaml(file, "a calibrated preset YAML")
    if not isinstance(data, dict) or not isinstance(data.get("hardware"), dict):
        raise UserError(
            f"{file}: expected a calibrated preset with a 'hardware' mapping (written by "
            f"moesim calibrate --out), got {'a mapping without it' if isinstance(data, dict) else type(data).__name__}"
        )
    return data


def merge_hardware(raw: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A copy of the scenario document ``raw`` with ``overlay`` deep-merged onto its hardware
    (a preset shorthand such as ``pcie: pcie4-x16`` becomes ``{preset: pcie4-x16}`` first)."""
    data = copy.deepcopy(raw)
    data["hardware"] = _deep_merge(data.get("hardware") or {}, overlay)
    return data


def _deep_merge(base: Any, overlay: dict[str, Any]) -> dict[str, Any]:
    out = {"preset": base} if isinstance(base, str) else dict(base or {})
    for key, value in overlay.items():
        if isinstance(value, dict):
            out[key] = _deep_merge(out.get(key), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def replay_hardware(hardware: Hardware) -> Hardware:
    """The hardware the prediction uses: the MD path is ideal (its experts are in HBM at the
    gate, as in the replay) and there is no non-expert time (the replay runs none)."""
    ideal = LinkConfig(name="md_link", bandwidth=math.inf, latency=0.0, channels=1)
    gpu = dataclasses.replace(hardware.gpu, non_expert_time=0.0)
    return dataclasses.replace(hardware.with_links(md_link=ideal), gpu=gpu)


def fake_machine(hardware: Hardware, device: str) -> FakeMachine:
    """A `FakeMachine` with exactly the parameters the simulator uses (the dry run)."""
    return FakeMachine(
        latency=hardware.pcie.latency,
        bandwidth=hardware.pcie.bandwidth,
        memory_bandwidth=hardware.hbm.bandwidth,
        peak_flops=hardware.gpu.peak_flops,
        device=device,
    )


# -- from a simulated run to a replay plan --------------------------------------------------------
def expert_shape(model: ModelSpec) -> ExpertShape:
    dtype = {2.0: "bfloat16", 4.0: "float32"}.get(float(model.bytes_per_param))
    if dtype is None:
        raise UserError(
            f"model.bytes_per_param: expected 2 (bf16) or 4 (fp32) to replay, got "
            f"{model.bytes_per_param}"
        )
    bpp = int(model.bytes_per_param)
    shape = ExpertShape(model.hidden_size, model.expert_ffn_size, model.gated, dtype, bpp)
    if not math.isclose(shape.nbytes, model.expert_bytes, rel_tol=1e-3):
        raise UserError(
            f"model.expert_bytes: expected {shape.nbytes} B (the replayed FFN's weights), got "
            f"{model.expert_bytes:.0f} B; leave expert_bytes to be derived"
        )
    return shape


def check_replayable(result: Any) -> None:
    """Refuse what the replay does not model (prefetches, near-data and host compute)."""
    per_layer = result.per_layer
    for column, what in (
        ("prefetch_pcie", "prefetches"), ("prefetch_md", "prefetches"),
        ("md_near", "near-data compute"), ("host", "host compute"),
    ):  # fmt: skip
        if int(np.sum(per_layer[column])):
            raise UserError(
                f"policy {result.label}: expected an on-demand policy (fetch over PCIe or the MD "
                f"link, cache hits), got {what}; the replay cannot reproduce them"
            )


def replay_plan(
    result: Any, counts: np.ndarray, shape: ExpertShape, hardware: Hardware
) -> ReplayPlan:
    """The plan that reproduces ``result`` (a run with ``timeline=True``): its PCIe fetches
    in issue order with their slots, and its GPU compute in execution order."""
    steps, layers, num_experts = counts.shape
    fetch: dict[tuple[int, int], list[tuple[int, int]]] = {}
    compute: dict[tuple[int, int], list[int]] = {}
    for ev in result.timeline:
        key = (ev.step, ev.layer)
        if ev.kind == "fetch" and ev.resource.startswith("pcie["):
            fetch.setdefault(key, []).append((ev.expert, int(ev.resource[5:-1])))
        elif ev.kind == "compute" and ev.resource == "gpu":
            compute.setdefault(key, []).append(ev.expert)
    plan_steps = []
    for s in range(steps):
        row = []
        for layer in range(layers):
            f = np.asarray(fetch.get((s, layer), []), dtype=np.int64).reshape(-1, 2)
            where = {int(e): i for i, e in enumerate(f[:, 0])}
            experts = compute.get((s, layer), [])
            c = np.array(
                [(e, counts[s, layer, e], where.get(e, -1)) for e in experts], dtype=np.int64
            ).reshape(-1, 3)
            row.append(LayerPlan(fetch=f, compute=c))
        plan_steps.append(tuple(row))
    return ReplayPlan(
        label=result.label,
        shape=shape,
        num_layers=layers,
        num_experts=num_experts,
        streams=hardware.pcie.channels,
        per_expert_start=hardware.gpu.expert_start == "per-expert",
        steps=tuple(plan_steps),
    )


# -- the comparison -------------------------------------------------------------------------------
@dataclass(frozen=True)
class PolicyFidelity:
    label: str
    policy: str
    topk: int
    positions: np.ndarray
    predicted: np.ndarray  # s per step
    measured: np.ndarray  # s per step

    @property
    def error_pct(self) -> np.ndarray:
        """(predicted - measured) / measured, in %, per step."""
        return (self.predicted - self.measured) / self.measured * 100.0

    def summary(self) -> dict[str, Any]:
        err = np.abs(self.error_pct)
        mean_abs = float(err.mean())
        return {
            "label": self.label,
            "policy": self.policy,
            "topk": self.topk,
            "steps": int(self.predicted.size),
            "predicted_mean_s": float(self.predicted.mean()),
            "measured_mean_s": float(self.measured.mean()),
            "mean_abs_error_pct": mean_abs,
            "max_abs_error_pct": float(err.max()),
            "error_of_means_pct": float(
                (self.predicted.mean() - self.measured.mean()) / self.measured.mean() * 100.0
            )
            + 0.0,  # never -0.0
            "within_target": mean_abs <= TARGET_ERROR_PCT,
        }


def select_policies(scenario: Any, labels: Sequence[str]) -> list[Any]:
    """The scenario's policies with these labels; a label the scenario lacks that names a
    registered policy is added with default parameters."""
    from sim.policies.base import available_policies
    from sim.scenario import PolicySpec

    known = {p.label: p for p in scenario.policies}
    registry = available_policies()
    out = []
    for label in labels:
        if label in known:
            out.append(known[label])
        elif label in registry:
            out.append(PolicySpec(name=label, label=label, where=f"--policies {label}"))
        else:
            raise UserError(
                f"--policies: expected scenario labels ({', '.join(known)}) or policy names, "
                f"got {label!r}"
            )
    return out


def run_fidelity(
    trace: RoutingTrace,
    hardware: Hardware,
    model: ModelSpec,
    policies: Sequence[Any],
    backend: Backend,
    *,
    topk: int,
    repeats: int = 3,
    seed: int = 0,
    progress: Any = None,
) -> list[PolicyFidelity]:
    """Predict and replay every policy (`PolicySpec`s) on ``trace``; ``hardware`` is the
    calibrated one (`replay_hardware` is applied here)."""
    from sim.engine.simulate import simulate

    hw = replay_hardware(hardware)
    shape = expert_shape(model)
    counts = trace.expert_token_counts(topk)
    out = []
    for spec in policies:
        result = simulate(
            trace, hw, model, spec.build(), topk=topk, timeline=True, seed=seed, label=spec.label
        )
        check_replayable(result)
        plan = replay_plan(result, counts, shape, hw)
        if progress is not None:
            progress(f"replaying {spec.label}: {trace.num_steps} steps x {trace.num_layers} layers")
        measured = np.asarray(backend.replay(plan, repeats), dtype=np.float64)
        out.append(
            PolicyFidelity(
                label=spec.label,
                policy=spec.name,
                topk=topk,
                positions=np.asarray(trace.positions, dtype=np.int64),
                predicted=np.asarray(result.per_step["latency"], dtype=np.float64),
                measured=measured,
            )
        )
    return out


def markdown_table(results: Sequence[PolicyFidelity], measured: bool = True) -> str:
    """The docs/fidelity.md table: one row per policy; a dry run says so in its first line."""
    lines = [] if measured else [DRY_RUN_TITLE, ""]
    lines += [
        "| policy | steps | predicted mean step (ms) | measured mean step (ms) | "
        "mean abs error per step (%) | max abs error (%) | error of the means (%) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        s = r.summary()
        lines.append(
            f"| {s['label']} | {s['steps']} | {s['predicted_mean_s'] * 1e3:.3f} | "
            f"{s['measured_mean_s'] * 1e3:.3f} | {s['mean_abs_error_pct']:.1f} | "
            f"{s['max_abs_error_pct']:.1f} | {_signed(s['error_of_means_pct'])} |"
        )
    return "\n".join(lines) + "\n"


def _signed(pct: float) -> str:
    """``+1.2`` / ``-0.4``, and ``0.0`` rather than ``-0.0`` or ``+0.0``."""
    text = f"{pct:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def write_fidelity(
    out_dir: str | Path, results: Sequence[PolicyFidelity], info: dict[str, Any]
) -> Path:
    """fidelity.csv (per step), summary.csv, table.md and fidelity.json (provenance)."""
    from sim import atomic

    out = Path(out_dir)
    with atomic.staged_dir(out, "merge") as staging:  # the four files appear together
        _write_fidelity_files(staging, results, info)
    return out


def _write_fidelity_files(
    out: Path, results: Sequence[PolicyFidelity], info: dict[str, Any]
) -> None:
    from sim import atomic

    rows = []
    for r in results:
        for i in range(r.predicted.size):
            rows.append(
                (r.label, r.policy, r.topk, i, int(r.positions[i]), f"{r.predicted[i]:.9g}",
                 f"{r.measured[i]:.9g}", f"{r.error_pct[i]:.4f}")
            )  # fmt: skip
    atomic.write_csv(out / "fidelity.csv", CSV_COLUMNS, rows)
    measured = bool(info.get("measured", True))
    summaries = [{**r.summary(), "measured": measured} for r in results]
    atomic.write_csv(
        out / "summary.csv", SUMMARY_COLUMNS, [[s[c] for c in SUMMARY_COLUMNS] for s in summaries]
    )
    atomic.write_text(out / "table.md", markdown_table(results, measured))
    atomic.write_json(out / "fidelity.json", {**info, "summary": summaries})
