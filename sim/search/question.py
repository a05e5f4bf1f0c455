"""What a search asks, parsed from the command line: the scenario, the varied fields and their
ranges, the target, the tolerance and the policies. Every problem is one `UserError` line."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import UserError
from sim.search.algorithm import OPERATORS, Goal
from sim.search.fields import Field, field_kind, parse_range
from sim.units import DURATION, QUANTITIES, SIZE, format_duration, format_size
from sim.yamlio import read_yaml

DEFAULT_TOLERANCE = 0.01
MIN_TOLERANCE = 1e-6
MAX_TOLERANCE = 0.5
DEFAULT_GRID = 17
MAX_FIELDS = 2

# Summary columns by what they hold (docs/engine.md); a column not listed here is accepted if
# the first simulation has it (serving metrics, tokens/s, ...), its value a number or quantity.
DURATION_METRICS = frozenset(
    {
        "total_time",
        "mean_step",
        "p50_step",
        "p99_step",
        "transfer_time",
        "stall",
        "compute_only",
        "non_expert_time",
    }
)
SIZE_PREFIX = "bytes_"
SHARE_METRICS = frozenset({"hit_rate"})  # shares: a number, or a percentage
SHARE_PREFIX = "util_"
NOT_METRICS = frozenset({"policy", "label", "kind", "topk", "is_bound", "is_baseline"})
COMPARISONS = frozenset({"speedup", "gap_closed"})  # relative to a baseline within one run
ALIASES = {"tokens/s": "tokens_per_s"}
UNIT_SUFFIXES = {"tokens_per_s": "tokens/s"}
_TARGET_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_./]*)\s*(<=|>=|<|>)\s*(\S.*?)\s*$")
_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?$")


@dataclass(frozen=True)
class PolicyChoice:
    """One policy searched: its label (the table's row) and its scenario entry."""

    label: str
    entry: dict[str, Any]  # {name, label, params}: the point's `policies: [entry]`


@dataclass(frozen=True)
class Question:
    source: str  # the scenario file, for messages
    base: dict[str, Any]  # the scenario document with --set applied
    fields: tuple[Field, ...]  # one or two varied fields
    goal: Goal
    target: str  # the target as written
    tolerance: float
    policies: tuple[PolicyChoice, ...]
    grid: int  # values of the fallback grid / of the first field on a two-field frontier

    def to_dict(self) -> dict[str, Any]:
        """The question as search.resolved.yaml and search.json record it."""
        return {
            "fields": [
                {
                    "path": f.path,
                    "kind": f.kind,
                    "lo": f.yaml_value(0),
                    "hi": f.yaml_value(f.size - 1),
                    "values": f.size,
                    **({"expert_bytes": f.expert_bytes} if f.kind == "experts" else {}),
                }
                for f in self.fields
            ],
            "target": {"metric": self.goal.metric, "op": self.goal.op, "value": self.goal.value},
            "target_text": self.target,
            "tolerance": self.tolerance,
            "policies": [p.label for p in self.policies],
            "grid": self.grid,
        }


def load_question(
    file: str | Path,
    vary: Sequence[str],
    ranges: Sequence[str],
    target: str,
    *,
    policies: Sequence[str] = (),
    tolerance: str | float | None = None,
    grid: int = DEFAULT_GRID,
    sets: Sequence[str] = (),
) -> Question:
    """Read the scenario and check every part of the question (nothing runs)."""
    from sim.scenario import scenario_from_dict
    from sim.scenario.build import parse_override, set_dotted

    path = Path(file)
    doc = read_yaml(path, "a scenario YAML file")
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a scenario mapping, got {type(doc).__name__}")
    if "sweep" in doc:
        raise UserError(
            f"{path}: sweep: expected a scenario without a sweep: block (moesim search varies "
            "its own fields), got one; run it with moesim sweep, or remove the block"
        )
    for item in sets:
        doc = set_dotted(doc, *parse_override(item))
    if not vary:
        raise UserError("--vary: expected a dotted scenario field, got none")
    if len(vary) > MAX_FIELDS:
        raise UserError(f"--vary: expected one or two fields, got {len(vary)}")
    if len(ranges) != len(vary):
        raise UserError(f"--range: expected one LO:HI per --vary ({len(vary)}), got {len(ranges)}")
    if len(set(vary)) != len(vary):
        raise UserError(f"--vary: expected two different fields, got {vary[0]} twice")
    tol = parse_tolerance(tolerance)
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 3:
        raise UserError(f"--grid: expected an integer >= 3, got {grid!r}")
    kinds = [field_kind(v, "--vary") for v in vary]
    fields = [parse_range(r, k, tol, "--range") for r, k in zip(ranges, kinds)]
    goal = parse_target(target)
    scenario = scenario_from_dict(doc, str(path), base_dir=path.parent)
    expert_bytes = float(scenario.model.expert_bytes)
    fields = [_with_expert_bytes(f, expert_bytes) for f in fields]
    chosen = choose_policies(scenario, policies)
    if len(scenario.topk) != 1:
        raise UserError(
            f"{path}: routing.topk: expected one top-k for a search, got {scenario.topk}; pick "
            f"one with --set routing.topk={scenario.topk[-1]}"
        )
    return Question(
        source=str(path),
        base=doc,
        fields=tuple(fields),
        goal=goal,
        target=" ".join(target.split()),
        tolerance=tol,
        policies=chosen,
        grid=grid,
    )


def _with_expert_bytes(field: Field, expert_bytes: float) -> Field:
    from dataclasses import replace

    return replace(field, expert_bytes=expert_bytes)


def parse_tolerance(value: str | float | None) -> float:
    """``1%``, ``0.01`` or None (1 %)."""
    if value is None:
        return DEFAULT_TOLERANCE
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        number = math.nan
    if not MIN_TOLERANCE <= number <= MAX_TOLERANCE:  # also false for NaN
        raise UserError(
            f"--tolerance: expected a relative step from {MIN_TOLERANCE:g} to {MAX_TOLERANCE:g} "
            f"like 1% or 0.01, got {value!r}"
        )
    return number


def parse_target(text: str) -> Goal:
    """``METRIC OP VALUE`` (``mean_step <= 10 ms``, ``hit_rate >= 0.5``, ``tokens/s > 5000``)."""
    match = _TARGET_RE.match(text or "")
    if match is None:
        raise UserError(
            f"--target: expected 'METRIC OP VALUE' like 'mean_step <= 10 ms' (OP one of "
            f"{', '.join(OPERATORS)}), got {text!r}"
        )
    metric, op, value = match.groups()
    metric = ALIASES.get(metric, metric)
    if metric in NOT_METRICS:
        raise UserError(f"--target: expected a numeric summary column, got {metric!r}")
    if metric in COMPARISONS:
        raise UserError(
            f"--target: expected a metric of one run, got {metric!r} (it compares policies "
            "within a run; a search point runs one policy)"
        )
    return Goal(metric, op, metric_value(metric, value))


def metric_value(metric: str, text: str) -> float:
    """The target's VALUE in the metric's SI units: a duration for times, a size for bytes,
    a number (or percentage) for shares and counts."""
    where = f"--target ({metric})"
    if metric in DURATION_METRICS:
        return DURATION.parse(text, where)
    if metric.startswith(SIZE_PREFIX):
        return SIZE.parse(text, where)
    suffix = UNIT_SUFFIXES.get(metric)
    if suffix and text.endswith(suffix):
        text = text[: -len(suffix)].strip()
    share = metric in SHARE_METRICS or metric.startswith(SHARE_PREFIX)
    if share and text.endswith("%") and _NUMBER_RE.match(text[:-1].strip()):
        return float(text[:-1]) / 100
    if _NUMBER_RE.match(text):
        return float(text)
    if metric in KNOWN_PLAIN or share:
        raise UserError(f"{where}: expected a number, got {text!r}")
    for quantity in QUANTITIES.values():  # a metric this version does not know: any unit
        try:
            return quantity.check(text)
        except ValueError:
            continue
    raise UserError(f"{where}: expected a number or a quantity like '10 ms', got {text!r}")


KNOWN_PLAIN = frozenset(
    {"hits", "misses", "late_prefetches", "cycles", "tokens_per_s", "ms_per_token"}
)


def known_metric(metric: str) -> bool:
    """Whether every summary row has ``metric`` (so no simulation is needed to check it)."""
    from sim.scenario.run import SUMMARY_COLUMNS

    return metric in SUMMARY_COLUMNS or metric in DURATION_METRICS


def format_metric(metric: str, value: float | None) -> str:
    """A metric value for the table: times and sizes with units, the rest 4 digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric in DURATION_METRICS:
        return format_duration(value)
    if metric.startswith(SIZE_PREFIX):
        return format_size(value)
    return f"{value:.4g}"


def choose_policies(scenario: Any, names: Sequence[str]) -> tuple[PolicyChoice, ...]:
    """``--policy`` names: labels of the scenario's policies or registered policy names
    (default parameters); without any, every policy the scenario compares."""
    from sim.policies.base import available_policies

    def entry(spec: Any) -> PolicyChoice:
        item: dict[str, Any] = {"name": spec.name, "label": spec.label}
        if spec.params:
            item["params"] = dict(spec.params)
        return PolicyChoice(spec.label, item)

    if not names:
        return tuple(entry(p) for p in scenario.policies)
    by_label = {p.label: p for p in scenario.policies}
    registry = available_policies()
    chosen: list[PolicyChoice] = []
    for name in names:
        if name in by_label:
            choice = entry(by_label[name])
        elif name in registry:
            choice = PolicyChoice(name, {"name": name, "label": name})
        else:
            raise UserError(
                f"--policy: expected a policy of {scenario.source or 'the scenario'} "
                f"({', '.join(by_label)}) or a registered policy ({', '.join(registry)}), "
                f"got {name!r}"
            )
        if any(c.label == choice.label for c in chosen):
            raise UserError(f"--policy: expected each policy once, got {name!r} twice")
        chosen.append(choice)
    return tuple(chosen)
