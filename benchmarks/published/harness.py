"""The validation harness: one published measured figure per case, predicted by the simulator.

A case file (``cases/*.yaml``) holds the source (publication, table/figure/section, the quoted
figure, in comments and in ``case:``) and a ``scenario:`` in the usual scenario form
(docs/scenarios.md) whose ``hardware`` starts from a machine of ``machines.yaml``. The workload
is the source's: ``requests`` single-sequence requests run one after another on the GPU (the
expert cache stays warm between them), each a prefill of ``prompt_tokens`` then
``output_tokens`` decode steps, batch 1. Routing comes from the scenario's synthetic trace (one
trace sequence per request); the Mixtral cases take the locality fitted in ``locality.yaml``.
The first request warms the system up and is not measured (published figures are warmed), and
the metric is:

* ``decode``: output tokens / decode time (tokens/s) or decode time per token (ms/token);
* ``end-to-end``: output tokens / (prefill + decode time): llmfit's avgTps.

Each iteration's non-expert time is `sim.roofline.non_expert_time` (prefill: P tokens over a
P-token cache; decode token i: one token over P + i + 1).
"""

from __future__ import annotations

import copy
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sim.engine import Iteration, run_engine
from sim.errors import UserError
from sim.roofline import layer_shape, non_expert_time
from sim.scenario import Scenario, load_scenario_trace, scenario_from_dict
from sim.units import parse_size

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases"
MACHINES = HERE / "machines.yaml"
LOCALITY = HERE / "locality.yaml"
CSV_PATH = HERE / "published.csv"
COLUMNS = (
    "case",
    "publication",
    "where",
    "system",
    "model",
    "gpu",
    "metric",
    "unit",
    "published",
    "predicted",
    "error_pct",
)
UNITS = {"tokens/s", "ms/token"}
MEASURES = {"decode", "end-to-end"}


@dataclass(frozen=True)
class Case:
    """One published figure and the scenario that predicts it."""

    id: str
    publication: str
    where: str
    system: str
    model: str
    gpu: str
    metric: str
    unit: str
    published: float
    measure: str
    prompt_tokens: int
    output_tokens: int
    requests: int
    scenario: dict[str, Any]
    path: Path
    fast: bool  # part of the test suite's subset
    # the expert cache is this share of the GPU's memory minus every non-expert weight (as
    # MoE-Infinity's device_memory_ratio); None: the scenario's hbm.capacity
    cache_ratio: float | None = None

    @classmethod
    def load(cls, path: Path) -> Case:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        meta, scenario = doc.get("case"), doc.get("scenario")
        if not isinstance(meta, dict) or not isinstance(scenario, dict):
            raise UserError(f"{path}: expected 'case' and 'scenario' mappings")
        where = f"{path.name}: case"
        unit = meta.get("unit")
        if unit not in UNITS:
            raise UserError(f"{where}.unit: expected one of {sorted(UNITS)}, got {unit!r}")
        measure = meta.get("measure")
        if measure not in MEASURES:
            raise UserError(f"{where}.measure: expected one of {sorted(MEASURES)}, got {measure!r}")
        requests = int(meta.get("requests", 3))
        if requests < 2:
            raise UserError(f"{where}.requests: expected at least 2 (one warms up), got {requests}")
        return cls(
            id=path.stem,
            publication=str(meta["publication"]),
            where=str(meta["where"]),
            system=str(meta["system"]),
            model=str(meta["model"]),
            gpu=str(meta["gpu"]),
            metric=str(meta["metric"]),
            unit=unit,
            published=float(meta["published"]),
            measure=measure,
            prompt_tokens=int(meta["prompt_tokens"]),
            output_tokens=int(meta["output_tokens"]),
            requests=requests,
            scenario=scenario,
            path=path,
            fast=bool(meta.get("fast", False)),
            cache_ratio=None if meta.get("cache_ratio") is None else float(meta["cache_ratio"]),
        )


def load_cases(ids: list[str] | None = None) -> list[Case]:
    cases = [Case.load(p) for p in sorted(CASES.glob("*.yaml"))]
    if ids:
        known = {c.id: c for c in cases}
        missing = [i for i in ids if i not in known]
        if missing:
            raise UserError(f"--cases: unknown case(s) {', '.join(missing)}")
        cases = [known[i] for i in ids]
    return cases


def resolved_scenario(case: Case) -> dict[str, Any]:
    """The case's scenario with its machine and (for ``locality: NAME``) the fitted synthetic
    knobs filled in: a plain scenario document `moesim run` accepts."""
    doc = copy.deepcopy(case.scenario)
    machine = doc.pop("machine", None)
    if machine is not None:
        machines = yaml.safe_load(MACHINES.read_text(encoding="utf-8"))
        if machine not in machines:
            raise UserError(f"{case.path.name}: scenario.machine: unknown machine {machine!r}")
        doc["hardware"] = _deep_merge(machines[machine], doc.get("hardware") or {})
    trace = doc.get("trace", {})
    synth = trace.get("synthetic") if isinstance(trace, dict) else None
    if isinstance(synth, dict):
        locality = synth.pop("locality", None)
        if locality is not None:
            fitted = yaml.safe_load(LOCALITY.read_text(encoding="utf-8"))
            if fitted.get("model") != locality:
                raise UserError(f"{case.path.name}: no fitted locality for {locality!r}")
            synth.update(fitted["synthetic"])
        synth.setdefault("num_seqs", case.requests)
        synth.setdefault("seq_len", case.prompt_tokens + case.output_tokens)
    doc.setdefault("name", case.id)
    return doc


def build_scenario(case: Case, sharing: str | None = None) -> tuple[Scenario, dict[str, Any]]:
    """The validated scenario of ``case`` and its document (`resolved_scenario`, with the
    cache budget of ``cache_ratio`` filled in). ``sharing``: set every link's sharing rule
    (a sensitivity run; the cases as fixed use the presets' default, ``fifo``)."""
    doc = resolved_scenario(case)
    if sharing is not None:
        links = doc.setdefault("hardware", {}).setdefault("links", {})
        for name, link in list(links.items()):
            spec = {"preset": link} if isinstance(link, str) else dict(link or {})
            links[name] = {**spec, "sharing": sharing}
    source = str(case.path)
    if case.cache_ratio is not None:
        first = scenario_from_dict(doc, source, base_dir=case.path.parent)
        gpu_memory = parse_size(first.hardware_doc["gpu"]["hbm_capacity"], "hbm_capacity")
        weights = non_expert_params(first) * first.model.bytes_per_param
        budget = case.cache_ratio * gpu_memory - weights
        experts = int(budget // first.model.expert_bytes)
        if experts < 1:
            raise UserError(f"{case.path.name}: case.cache_ratio leaves no room for experts")
        doc.setdefault("hardware", {}).setdefault("hbm", {})["capacity"] = f"{experts} experts"
    return scenario_from_dict(doc, source, base_dir=case.path.parent), doc


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def non_expert_params(scenario: Scenario) -> float:
    """Parameters of everything but the routed experts (attention, routers, shared experts,
    dense layers, embedding and LM head): what a GPU keeps resident besides its expert cache."""
    model = scenario.model
    shape = layer_shape(model)
    assert model.num_layers is not None and model.moe_layers is not None
    dense = model.num_layers - model.moe_layers
    return model.moe_layers * shape.moe_params + dense * shape.dense_params + 2 * shape.head_params


class RequestSource:
    """Requests one after another on one GPU: per request a prefill iteration (the union
    demand of its prompt tokens) and one iteration per output token. Its answers depend
    neither on time nor on iteration ends."""

    time_independent = True

    def __init__(self, scenario: Scenario, ids: np.ndarray, prompt: int, output: int) -> None:
        # ids: [positions, layers, requests, k] expert ids of every token (its top-k)
        hw, model = scenario.hardware, scenario.model
        _positions, layers, requests, _k = ids.shape
        experts = model.num_experts
        prefill = non_expert_time(hw, model, [prompt], [prompt])
        decode = [non_expert_time(hw, model, [1], [prompt + i + 1]) for i in range(output)]
        counts = np.zeros((requests * (output + 1), layers, experts), dtype=np.int32)
        layer_index = np.arange(layers)[:, None]
        self.request_of: list[tuple[int, str]] = []
        non_expert: list[list[float]] = []
        positions: list[int] = []
        row = 0
        for r in range(requests):
            for t in range(prompt):  # the prompt's union demand: tokens per expert
                np.add.at(counts[row], (layer_index, ids[t, :, r]), 1)
            self.request_of.append((r, "prefill"))
            non_expert.append([prefill] * layers)
            positions.append(0)
            row += 1
            for i in range(output):
                counts[row][layer_index, ids[prompt + i, :, r]] = 1
                self.request_of.append((r, "decode"))
                non_expert.append([decode[i]] * layers)
                positions.append(prompt + i)
                row += 1
        counts.flags.writeable = False
        self.counts = counts
        self.iterations = [
            Iteration(counts[i], non_expert[i], positions[i]) for i in range(len(counts))
        ]
        self.next = 0
        self.times: list[tuple[float, float]] = []

    def planned_counts(self, gpu: int) -> np.ndarray:
        return self.counts

    def next_iteration(self, gpu: int, now: float) -> Iteration | None:
        if self.next == len(self.iterations):
            return None
        self.next += 1
        return self.iterations[self.next - 1]

    def iteration_end(self, gpu: int, iteration: Iteration, start: float, end: float) -> None:
        self.times.append((start, end))


@dataclass(frozen=True)
class Prediction:
    value: float  # in the case's unit
    decode_s: float  # measured requests' decode time per token
    prefill_s: float  # measured requests' prefill time per request
    hit_rate: float  # over measured decode iterations (hits / active)
    stall_s: float  # measured decode time per token lost to data movement (sum of `stall`)


def predict(case: Case, sharing: str | None = None) -> Prediction:
    """Run the case's workload and return the predicted figure (``sharing``: see
    `build_scenario`)."""
    scenario, _doc = build_scenario(case, sharing)
    if len(scenario.policies) != 1:
        raise UserError(f"{case.path.name}: scenario.policies: expected exactly one policy")
    trace = load_scenario_trace(scenario)
    model = scenario.model
    ids = np.asarray(trace.experts)[..., : model.top_k].astype(np.intp)
    source = RequestSource(scenario, ids, case.prompt_tokens, case.output_tokens)
    policy = scenario.policies[0].build()
    result = run_engine(
        source,
        scenario.hardware,
        model,
        [policy],
        layer_ids=tuple(trace.layer_ids),
        topk=model.top_k,
        seed=scenario.seed,
    )
    durations = np.array([end - start for start, end in source.times])
    measured = np.array([r >= 1 for r, _ in source.request_of])  # request 0 warms up
    is_decode = np.array([kind == "decode" for _, kind in source.request_of])
    n_measured = case.requests - 1
    decode_total = float(durations[measured & is_decode].sum())
    prefill_total = float(durations[measured & ~is_decode].sum())
    tokens = n_measured * case.output_tokens
    if case.measure == "decode":
        seconds_per_token = decode_total / tokens
    else:
        seconds_per_token = (decode_total + prefill_total) / tokens
    value = 1.0 / seconds_per_token if case.unit == "tokens/s" else seconds_per_token * 1e3
    layers = len(trace.layer_ids)
    gate_decode = np.repeat(measured & is_decode, layers)
    active = float(result.per_layer["active"][gate_decode].sum())
    hits = float(result.per_layer["hits"][gate_decode].sum())
    stall = float(result.per_layer["stall"][gate_decode].sum())
    return Prediction(
        value=value,
        decode_s=decode_total / tokens,
        prefill_s=prefill_total / n_measured,
        hit_rate=hits / active if active else math.nan,
        stall_s=stall / tokens,
    )


# -- the table ------------------------------------------------------------------------------------
def fmt(value: float) -> str:
    """4 significant digits, plain notation: the CSV's (and the check's) precision."""
    return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.3e}"


def row(case: Case, predicted: float) -> dict[str, str]:
    error = 100.0 * (predicted - case.published) / case.published
    return {
        "case": case.id,
        "publication": case.publication,
        "where": case.where,
        "system": case.system,
        "model": case.model,
        "gpu": case.gpu,
        "metric": case.metric,
        "unit": case.unit,
        "published": f"{case.published:g}",  # as quoted
        "predicted": fmt(predicted),
        "error_pct": f"{error:+.1f}",
    }


def csv_text(rows: list[dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_csv(path: Path = CSV_PATH) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def summary(rows: list[dict[str, str]]) -> dict[str, float]:
    errors = np.array([abs(float(r["error_pct"])) for r in rows])
    ratios = np.array([float(r["predicted"]) / float(r["published"]) for r in rows])
    off = np.maximum(ratios, 1.0 / ratios)
    return {
        "cases": float(len(rows)),
        "median_abs_error_pct": float(np.median(errors)),
        "max_abs_error_pct": float(errors.max()),
        "worst_factor": float(off.max()),
        "within_25pct": float(np.count_nonzero(errors <= 25.0)),
        "beyond_2x": float(np.count_nonzero(off > 2.0)),
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    head = "| case | publication | where | system | model | GPU | metric | published | predicted | error |"
    lines = [head, "|---|---|---|---|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| `{r['case']}` | {r['publication']} | {r['where']} | {r['system']} | {r['model']} "
            f"| {r['gpu']} | {r['metric']} ({r['unit']}) | {r['published']} | {r['predicted']} "
            f"| {r['error_pct']} % |"
        )
    s = summary(rows)
    lines.append("")
    lines.append(
        f"{int(s['cases'])} cases: median absolute error {s['median_abs_error_pct']:.1f} %, "
        f"largest {s['max_abs_error_pct']:.1f} % (a factor {s['worst_factor']:.2f}); "
        f"{int(s['within_25pct'])} within 25 %, {int(s['beyond_2x'])} off by more than 2x."
    )
    return "\n".join(lines) + "\n"
