"""Run a scenario (every top-k x every policy) and save its results directory atomically.

The results directory is assembled in a hidden temporary directory next to the target and
renamed into place at the end, so a killed run leaves no partial results. The files hold no
timestamps or machine paths other than the trace's: the same scenario and seed give
byte-identical files (wall-clock time is only printed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import sim
from sim import atomic, opener
from sim.engine.results import PER_LAYER_COLUMNS, PER_STEP_COLUMNS, TOTAL_KEYS, RunResult
from sim.errors import UserError
from sim.policies.bounds import gap_closed
from sim.scenario.build import Scenario, load_scenario_trace
from sim.trace.routing import RoutingTrace

SUMMARY_COLUMNS = (
    "policy",
    "label",
    "topk",
    "kind",
    "is_bound",
    "is_baseline",
    *TOTAL_KEYS,
    "speedup",
    "gap_closed",
)
KEY_COLUMNS = ("label", "policy", "topk")
LINK_COLUMNS = (
    "link",
    "sharing",
    "bandwidth",
    "bytes",
    "transfers",
    "busy",
    "utilisation",
    "saturated",
    "delay_mean",
    "delay_p99",
)
LINK_USAGE_COLUMNS = ("link", "t_start", "t_end", "utilisation")
RESULT_FILES = (
    "scenario.resolved.yaml",
    "summary.csv",
    "summary.json",
    "per_layer.csv",
    "per_step.csv",
    "links.csv",  # one row per (run, link): use, bytes, queueing delay, time saturated
    "link_usage.csv",  # each link's utilisation over the run, in equal time bins
    "trace.json",
    "notes.txt",  # the hardware line and the notes printed around the comparison table
)
SERVING_FILES = ("requests.csv", "per_iteration.csv")  # serving runs also write these


@dataclass(frozen=True)
class ScenarioRunResult(RunResult):
    """A `RunResult` that also says which top-k it ran and its role in the comparison."""

    topk: int = 0
    kind: str = "online"  # online / oracle / bound: what the run may know (Policy.run_kind)
    is_bound: bool = False
    is_baseline: bool = False
    policy_stats: dict[str, Any] | None = None  # the policy's stats() after the run, if any
    costs: dict[str, Any] | None = None  # TableCost.describe(): where each cost came from
    cache_slots: int | None = None  # a cache policy's slots for one gate's layer (its partition)
    serving: Any = None  # sim.serving.run.ServingRecords of a serving run (None: lockstep)

    def summary_row(self) -> dict[str, Any]:
        row = super().summary_row()
        return {
            "policy": row.pop("policy"),
            "label": row.pop("label"),
            "topk": self.topk,
            "kind": self.kind,
            "is_bound": self.is_bound,
            "is_baseline": self.is_baseline,
            **row,
            **({} if self.serving is None else self.serving.summary),
        }


# -- running -----------------------------------------------------------------------------------
def run_scenario(
    scenario: Scenario,
    trace: RoutingTrace | None = None,
    *,
    progress: bool = True,
    timeline: bool | tuple[int, int] = False,
) -> list[ScenarioRunResult]:
    """One result per (top-k, policy), in scenario order. ``progress``: a tqdm bar over steps
    on stderr (only when stderr is a terminal). ``timeline``: record every run's intervals,
    of every step (True, or ``output.timeline`` in the scenario) or of steps ``[start, stop)``.
    """
    from tqdm import tqdm

    from sim.engine.simulate import simulate

    if trace is None:
        trace = load_scenario_trace(scenario)
    setup = None
    if scenario.serving:
        from sim.serving.run import prepare

        setup = prepare(scenario, trace)
    per_run = trace.num_steps if setup is None else len(setup.requests)
    total = len(scenario.topk) * len(scenario.policies) * per_run
    show = progress and sys.stderr.isatty()
    unit = "step" if setup is None else "request"
    results: list[ScenarioRunResult] = []
    with tqdm(total=total, disable=not show, file=sys.stderr, unit=unit, leave=False) as bar:
        for k in scenario.topk:
            for spec in scenario.policies:
                bar.set_description(f"top-{k} {spec.label}")
                policy = spec.build()
                cost = (
                    None
                    if scenario.costs is None
                    else scenario.costs.cost_model(scenario.hardware, scenario.model)
                )
                serving = None
                run_options = dict(
                    topk=k,
                    cost=cost,
                    timeline=True if scenario.output.timeline else timeline,
                    progress=bar.update,
                    seed=scenario.seed,
                    label=spec.label,
                )
                if setup is None:
                    result = simulate(
                        trace, scenario.hardware, scenario.model, policy, **run_options
                    )
                else:
                    from sim.serving.run import run_serving

                    result, serving = run_serving(
                        setup, trace, scenario.hardware, scenario.model, policy, **run_options
                    )
                values = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
                values["label"] = spec.label
                results.append(
                    ScenarioRunResult(
                        **values,
                        topk=k,
                        kind=policy.run_kind(),
                        is_bound=policy.run_kind() == "bound",
                        is_baseline=spec.label == scenario.baseline,
                        policy_stats=_policy_stats(policy),
                        costs=None if cost is None else cost.describe(),
                        cache_slots=getattr(policy, "partition_slots", None),
                        serving=serving,
                    )
                )
    return results


def _policy_stats(policy: Any) -> dict[str, Any] | None:
    """The policy's ``stats()`` (prefetch predictors, MILP bounds) as plain JSON values."""
    stats = getattr(policy, "stats", None)
    return None if stats is None else _plain(stats())


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return _scalar(value)


def cycles(seconds: float, clock_hz: float) -> float | int:
    """``seconds`` in cycles of ``clock_hz``: an integer when within 1e-6 of one (cost tables
    give integer cycles; the engine's sums of them come back as floats)."""
    value = seconds * clock_hz
    nearest = round(value)
    return int(nearest) if abs(value - nearest) <= 1e-6 else value


# -- the comparison ------------------------------------------------------------------------------
def summary_rows(scenario: Scenario, results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """summary_row() of each result plus speedup and gap_closed against its top-k's baseline."""
    rows = [_row(r) for r in results]
    for row in rows:
        same_k = [r for r in rows if r["topk"] == row["topk"]]
        base = next((r for r in same_k if r["label"] == scenario.baseline), None)
        bounds = [r["mean_step"] for r in same_k if r["is_bound"]]
        row["speedup"] = (
            base["mean_step"] / row["mean_step"] if base and row["mean_step"] > 0 else None
        )
        row["gap_closed"] = (
            gap_closed(base["mean_step"], row["mean_step"], min(bounds))
            if base and bounds
            else None
        )
        if scenario.clock_hz is not None:
            row["cycles"] = cycles(row["total_time"], scenario.clock_hz)
    return [{**{c: row.get(c) for c in SUMMARY_COLUMNS}, **_extra(row)} for row in rows]


def best_online_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per top-k, the fastest (lowest mean step) run of kind ``online`` that is not the
    baseline: what "best online policy" means in tables, timelines and reports. Oracles and
    bounds never qualify."""
    best: dict[Any, dict[str, Any]] = {}
    for row in rows:
        if row.get("kind") != "online" or row.get("is_baseline") or row.get("is_bound"):
            continue
        current = best.get(row["topk"])
        if current is None or row["mean_step"] < current["mean_step"]:
            best[row["topk"]] = row
    return list(best.values())


def _row(result: RunResult) -> dict[str, Any]:
    row = dict(result.summary_row())
    row.setdefault("topk", getattr(result, "topk", None))
    row.setdefault("is_bound", getattr(result, "is_bound", False))
    row.setdefault(
        "kind", getattr(result, "kind", None) or ("bound" if row["is_bound"] else "online")
    )
    row.setdefault("is_baseline", getattr(result, "is_baseline", False))
    return {k: _scalar(v) for k, v in row.items()}


def _extra(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in SUMMARY_COLUMNS}


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- writing -----------------------------------------------------------------------------------
def check_out_dir(out_dir: str | os.PathLike[str], where: str = "--out") -> Path:
    """``out_dir`` must be new or an empty directory (never mix two runs' files)."""
    path = Path(out_dir)
    kind = opener.describe(path)
    if kind != "nothing (missing)":
        if kind != "a directory":  # a file, a FIFO, a symlink loop, ...
            raise UserError(f"{where}: expected a new or empty directory, got {kind} {path}")
        if any(path.iterdir()):
            raise UserError(
                f"{where}: expected a new or empty directory, got {path} which holds files"
            )
    return path


def trace_checksum(trace: RoutingTrace) -> str:
    """sha256 of the routing arrays and their labels: names the exact input of a run."""
    digest = hashlib.sha256()
    for array in (trace.experts, trace.scores, trace.tokens):
        digest.update(str((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(str((trace.num_experts, trace.layer_ids, trace.positions)).encode())
    return "sha256:" + digest.hexdigest()


def trace_record(trace: RoutingTrace) -> dict[str, Any]:
    """trace.json: provenance, shape and checksum."""
    return {
        "meta": trace.meta.to_dict(),
        "describe": trace.describe(),
        "checksum": trace_checksum(trace),
        "shape": {
            "steps": trace.num_steps,
            "layers": trace.num_layers,
            "seqs": trace.num_seqs,
            "k": trace.k,
            "num_experts": trace.num_experts,
        },
        "layer_ids": list(trace.layer_ids),
        "positions": list(trace.positions),
        "synthetic": trace.meta.synthetic,
        "synthetic_layers": list(trace.meta.synthetic_layers),
    }


def resolved_document(
    scenario: Scenario, trace: RoutingTrace, results: Sequence[RunResult] = ()
) -> dict[str, Any]:
    """scenario.resolved.yaml: every default filled in, plus what produced the results (with
    cost tables: the source, its defects, and per run which costs came from the table)."""
    doc = scenario.resolved_dict()
    doc["provenance"] = {
        "tool": f"moesim {sim.__version__}",
        "numpy": np.__version__,
        "python": platform.python_version(),
        "scenario_file": scenario.source,
        "trace_checksum": trace_checksum(trace),
        "trace": trace.meta.to_dict(),
    }
    if scenario.costs is not None:
        doc["provenance"]["costs"] = {
            **scenario.costs.to_dict(),
            "runs": [
                {"label": r.label, "topk": getattr(r, "topk", None), **_run_costs(r.costs)}
                for r in results
                if getattr(r, "costs", None) is not None
            ],
        }
    return doc


def _run_costs(describe: dict[str, Any]) -> dict[str, Any]:
    """A run's cost provenance without what the source already says (path, notes)."""
    return {k: v for k, v in describe.items() if k not in ("source", "notes")}


def stat_columns(stats: dict[str, Any] | None) -> dict[str, Any]:
    """summary.csv's flat ``stat_<name>`` cells: the scalar values of a policy's stats()."""
    scalar = (bool, int, float, str, type(None))
    return {f"stat_{k}": v for k, v in (stats or {}).items() if isinstance(v, scalar)}


def write_results(
    out_dir: str | os.PathLike[str],
    scenario: Scenario,
    trace: RoutingTrace,
    results: Sequence[RunResult],
    *,
    timeline_runs: str = "all",
) -> Path:
    """Write the results directory (see CONTRACTS.md) atomically; returns its path.
    ``timeline_runs``: which recorded timelines go into timeline.json: ``all``, or
    ``compare`` (per top-k the baseline and the best online policy, as the report draws)."""
    target = check_out_dir(out_dir)
    with atomic.staged_dir(target, "new") as staging:  # the directory appears complete or not
        _write_files(staging, scenario, trace, results, timeline_runs)
    return target


def _write_files(
    root: Path,
    scenario: Scenario,
    trace: RoutingTrace,
    results: Sequence[RunResult],
    timeline_runs: str = "all",
) -> None:
    header = (
        f"# Resolved scenario written by moesim {sim.__version__}: every default filled in.\n"
        "# `moesim run` accepts this file as it is (the provenance section is ignored).\n"
    )
    body = yaml.safe_dump(
        resolved_document(scenario, trace, results), sort_keys=False, allow_unicode=True, width=100
    )
    resolved_text = header + body
    atomic.write_text(root / "scenario.resolved.yaml", resolved_text)
    rows = summary_rows(scenario, results)
    stats = [getattr(r, "policy_stats", None) for r in results]
    csv_rows = [{**row, **stat_columns(s)} for row, s in zip(rows, stats)]
    extra = {k for r in csv_rows for k in _extra(r)}
    from sim.serving.metrics import SERVING_SUMMARY_KEYS

    serving = [k for k in SERVING_SUMMARY_KEYS if k in extra]  # in their documented order
    columns = list(SUMMARY_COLUMNS) + serving + sorted(extra - set(serving))
    atomic.write_csv(
        root / "summary.csv", columns, ([_cell(r.get(c)) for c in columns] for r in csv_rows)
    )
    per_gpu = [_plain(getattr(r, "per_gpu", None)) for r in results]
    atomic.write_json(
        root / "summary.json",
        [{**row, "policy_stats": s, "per_gpu": g} for row, s, g in zip(rows, stats, per_gpu)],
    )
    atomic.write_csv(root / "links.csv", KEY_COLUMNS + LINK_COLUMNS, _link_rows(scenario, results))
    atomic.write_csv(
        root / "link_usage.csv", KEY_COLUMNS + LINK_USAGE_COLUMNS, _link_usage_rows(results)
    )
    atomic.write_csv(
        root / "per_layer.csv", KEY_COLUMNS + PER_LAYER_COLUMNS, _table(results, "per_layer")
    )
    atomic.write_csv(
        root / "per_step.csv", KEY_COLUMNS + PER_STEP_COLUMNS, _table(results, "per_step")
    )
    if any(getattr(r, "serving", None) is not None for r in results):
        _write_serving(root, results)
    atomic.write_json(root / "trace.json", trace_record(trace))
    from sim.scenario.table import comparison_notes, hardware_header  # table builds on us

    lines = [hardware_header(scenario, results), *comparison_notes(scenario, results)]
    atomic.write_text(root / "notes.txt", "".join(f"{n}\n" for n in lines))
    recorded = [r for r in results if r.timeline]
    if timeline_runs == "compare":
        chosen = [*best_online_rows(rows), *(row for row in rows if row["is_baseline"])]
        keep = {(row["topk"], row["label"]) for row in chosen}
        recorded = [r for r in recorded if (getattr(r, "topk", None), r.label) in keep]
    if recorded:
        from sim.engine.timeline import write_chrome_trace

        fingerprint = timeline_fingerprint(scenario, trace, resolved_text)
        write_chrome_trace(root / "timeline.json", recorded, fingerprint)  # processes "label top-k"
    for path in root.iterdir():
        os.chmod(path, 0o644)  # atomic temp files are private; results are ordinary files


def timeline_fingerprint(
    scenario: Scenario, trace: RoutingTrace, resolved_text: str
) -> dict[str, str]:
    """timeline.json's ``otherData``: which results directory it belongs to. The report refuses
    a timeline whose ``scenario_sha256`` is not that of the directory's scenario.resolved.yaml."""
    return {
        "moesim": sim.__version__,
        "scenario": scenario.name,
        "trace_checksum": trace_checksum(trace),
        "scenario_sha256": resolved_sha256(resolved_text.encode("utf-8")),
    }


def resolved_sha256(data: bytes) -> str:
    """The fingerprint of a scenario.resolved.yaml (the exact bytes written)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _cell(value: Any) -> Any:
    """CSV cell: blank for None/NaN, repr for floats (exact and deterministic)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return repr(value) if isinstance(value, float) else value


def _link_rows(scenario: Scenario, results: Sequence[RunResult]):
    """links.csv: per run, one row per link instance (``pcie@gpu1`` is link ``pcie``)."""
    for result in results:
        key = (result.label, result.policy, getattr(result, "topk", ""))
        for name, figures in result.links.items():
            config = scenario.hardware.links.get(name.split("@", 1)[0])
            described = (config.sharing, config.bandwidth) if config else ("", None)
            values = [figures.get(c) for c in LINK_COLUMNS[3:]]
            yield (*key, name, described[0], *tuple(_cell(v) for v in (described[1], *values)))


def _link_usage_rows(results: Sequence[RunResult]):
    """link_usage.csv: per run and link, its mean utilisation in each time bin."""
    for result in results:
        key = (result.label, result.policy, getattr(result, "topk", ""))
        for name, rows in (getattr(result, "link_usage", None) or {}).items():
            for t0, t1, share in rows.tolist():
                yield (*key, name, _cell(t0), _cell(t1), _cell(share))


def _write_serving(root: Path, results: Sequence[RunResult]) -> None:
    """requests.csv and per_iteration.csv of a serving scenario's runs."""
    from sim.serving.metrics import REQUEST_ARRAYS, REQUEST_COLUMNS
    from sim.serving.run import PER_ITERATION_COLUMNS

    def request_rows():
        for result in results:
            key = {"policy": result.policy, "label": result.label, "topk": result.topk}
            columns = result.serving.requests
            values = [columns[name].tolist() for name in REQUEST_ARRAYS]
            for row in zip(*values):
                cells = {**key, **dict(zip(REQUEST_ARRAYS, row))}
                yield [_cell(cells[c]) for c in REQUEST_COLUMNS]

    def iteration_rows():
        for result in results:
            columns = result.serving.iterations
            values = [columns[name].tolist() for name in PER_ITERATION_COLUMNS]
            key = (result.label, result.policy, result.topk)
            for row in zip(*values):
                yield key + tuple(_cell(v) for v in row)

    atomic.write_csv(root / "requests.csv", REQUEST_COLUMNS, request_rows())
    atomic.write_csv(
        root / "per_iteration.csv", KEY_COLUMNS + PER_ITERATION_COLUMNS, iteration_rows()
    )


def _table(results: Sequence[RunResult], which: str):
    """Rows of per_layer/per_step for every result: key columns, then the engine's columns."""
    names = PER_LAYER_COLUMNS if which == "per_layer" else PER_STEP_COLUMNS
    for result in results:
        columns = getattr(result, which)
        values = [columns[name].tolist() for name in names]
        key = (result.label, result.policy, getattr(result, "topk", ""))
        for row in zip(*values):
            yield key + tuple(_cell(v) for v in row)


def new_results_dir(parent: str | os.PathLike[str], name: str) -> Path:
    """``<parent>/<name>-<UTC time>``, with a counter if that second is taken: the one naming
    rule of results directories (runs and sweeps)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = Path(parent) / f"{name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path
