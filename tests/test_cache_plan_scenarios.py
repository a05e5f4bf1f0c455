"""Every shipped scenario (and every sweep point) whose caches are planned gives, planned, the
results of the same caches decided gate by gate: every output column, link figure, total,
serving table and policy statistic is the same float.

`CachePolicy.plan_cache` applies only where decisions do not depend on time (see
`CachePolicy._plannable` and `GpuProcess._planned`); each case says whether the plan was used,
and a case where it should be but is not fails (a fast path silently off is a regression too).
The biggest cases (seconds each) are marked slow; the default run keeps every scenario file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sim.policies import make_policy
from sim.policies.cache import PLANNED_CACHES, CachePolicy
from sim.scenario import load_scenario, run_scenario, scenario_from_dict
from sim.sweep.spec import expand, load_sweep, point_document

ROOT = Path(__file__).resolve().parents[1]
# (file, sweep point or None): planned caches of these take seconds; kept out of the default run
SLOW = {
    ("serving.yaml", None),
    ("rdma-pool.yaml", None),
    ("shared-pool.yaml", "*"),
    ("sweep-load.yaml", "*"),
}
# where every planned cache falls back: fair (max-min) link sharing (a flow network)
NEVER_PLANNED = {"shared-pool.yaml", "rdma-pool.yaml"}


def _cases() -> list[Any]:
    cases = []
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        if path.name == "seed-baseline.yaml":  # needs a trace dump that is not shipped
            continue
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if "sweep" in doc:
            spec = load_sweep(path)
            points = [(p.index, point_document(spec, p)) for p in expand(spec)]
        else:
            points = [(None, doc)]
        for point, point_doc in points:
            if not any(_may_plan(_policy(p)) for p in point_doc["policies"]):
                continue  # no planned cache here
            slow = (path.name, None if point is None else "*") in SLOW
            marks = [pytest.mark.slow] if slow else []
            name = path.name if point is None else f"{path.name}#{point}"
            cases.append(pytest.param(path, point, id=name, marks=marks))
    return cases


def _policy(entry: Any) -> Any:
    """A scenario's policy entry (a name, or name and params) built, unbound."""
    if isinstance(entry, str):
        return make_policy(entry)
    return make_policy(entry["name"], entry.get("params"))


def _scenario(path: Path, point: int | None) -> Any:
    if point is None:
        return load_scenario(path, [])
    spec = load_sweep(path)
    (p,) = [p for p in expand(spec) if p.index == point]
    return scenario_from_dict(point_document(spec, p), path.name)


def _same(a: Any, b: Any, where: str) -> None:
    """Equal, float for float (NaN equal to NaN), through dicts, lists and arrays."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple) and not hasattr(a, "_fields"):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif dataclasses.is_dataclass(a) and not isinstance(a, type):
        _same(dataclasses.asdict(a), dataclasses.asdict(b), where)
    elif hasattr(a, "_fields"):  # NamedTuple (timeline events)
        _same(a._asdict(), b._asdict(), where)
    elif isinstance(a, float) and a != a:
        assert isinstance(b, float) and b != b, where
    else:
        assert a == b and type(a) is type(b), where


def _planned_specs(scenario: Any) -> list[Any]:
    """The scenario's policies that are planned caches when the run allows (those whose
    parameters read time, as ``miss_path: balanced``, never are: tests/test_cache_plan.py)."""
    return [s for s in scenario.policies if _may_plan(s.build())]


def _may_plan(policy: Any) -> bool:
    p = getattr(policy, "params", None)
    return (
        type(policy) in PLANNED_CACHES
        and p.miss_path != "balanced"
        and not p.compute_near
        and not p.writeback
    )


@pytest.mark.parametrize(("path", "point"), _cases())
def test_planned_caches_in_shipped_scenarios_equal_gate_by_gate(path, point, monkeypatch):
    scenario = _scenario(path, point)
    scenario = dataclasses.replace(scenario, policies=_planned_specs(scenario))
    used: list[str] = []
    plannable: list[bool] = []
    plan, may = CachePolicy._plan_cache, CachePolicy._plannable

    def counting(self, *args):
        used.append(self.name)
        return plan(self, *args)

    def asked(self, ctx):
        plannable.append(may(self, ctx))
        return plannable[-1]

    with monkeypatch.context() as m:
        m.setattr(CachePolicy, "_plan_cache", counting)
        m.setattr(CachePolicy, "_plannable", asked)
        fast = run_scenario(scenario, progress=False)
    with monkeypatch.context() as m:
        m.setattr(CachePolicy, "_plannable", lambda self, ctx: False)
        slow = run_scenario(scenario, progress=False)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        for f in dataclasses.fields(a):
            if f.name != "engine":  # how the engine ran (gate counts): not a result
                _same(getattr(a, f.name), getattr(b, f.name), f"{a.label}.{f.name}")
    if path.name in NEVER_PLANNED or not any(plannable):
        assert not used
    else:
        assert used, "no cache of this scenario was planned"
