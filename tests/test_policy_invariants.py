"""Invariants every registered policy keeps, and the docs' "add a policy" examples (executed
here so docs/policies.md never rots)."""

from __future__ import annotations

import dataclasses
import re
import sys
import types
from pathlib import Path as FsPath

import numpy as np
import pytest
from engine_traces import hardware, make_trace, model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import simulate
from sim.hardware import ComputeUnit, Precision
from sim.policies import available_policies, make_policy
from sim.policies.base import _REGISTRY

DOC = FsPath(__file__).resolve().parents[1] / "docs" / "policies.md"
MB = 1e6
PATH_COLUMNS = ("hits", "late_prefetches", "pcie", "md_fetch", "md_near", "host")


def doc_examples() -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    return [b for b in blocks if "@register_policy" in b]


@pytest.fixture(scope="module")
def examples() -> dict[str, type]:
    """Execute the docs' examples once (registering their policies), unregister afterwards."""
    before = set(available_policies())  # the built-in ones first
    for i, block in enumerate(doc_examples()):
        assert len(block.strip().splitlines()) < 30, "the doc promises under 30 lines"
        module = types.ModuleType(f"policies_doc_example_{i}")
        sys.modules[module.__name__] = module  # dataclasses look their module up
        exec(compile(block, str(DOC), "exec"), module.__dict__)
    added = {name: _REGISTRY[name] for name in set(_REGISTRY) - before}
    yield added
    for name in added:
        del _REGISTRY[name]


def test_doc_examples_run(examples) -> None:
    assert set(examples) == {"example-fifo", "example-hot-pcie"}
    refs = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]
    trace = make_trace(np.array(refs).reshape(-1, 1, 1, 1), num_experts=8)
    hw = hardware(capacity=3 * MB, placement="host")
    fifo = make_policy("example-fifo", {"miss_path": "pcie"})
    assert simulate(trace, hw, model(8, 1, MB), fifo).totals["misses"] == 15  # textbook FIFO
    trace = make_trace([[[[0], [0], [1]]]], num_experts=4)  # expert 0: 2 tokens, 1: 1 token
    run = simulate(trace, hardware(), model(4, 1, MB), make_policy("example-hot-pcie"))
    assert (run.per_layer["pcie"][0], run.per_layer["md_fetch"][0]) == (1, 1)


def test_every_policy_is_documented_and_described() -> None:
    text = DOC.read_text()
    for name, cls in available_policies().items():
        if name.startswith("example-"):
            continue
        assert f"`{name}`" in text, f"{name} missing from docs/policies.md"
        assert cls.summary, name
        assert dataclasses.is_dataclass(cls.Params), name
        assert cls.Params.__dataclass_params__.frozen, name
        assert not cls.is_bound or cls.uses_future, name


def test_what_policies_know() -> None:
    registry = available_policies()
    online = ("seed-split", "gpu-only", "md-only", "balanced-split", "lru", "lfu", "least-stale")
    assert not any(registry[n].uses_future for n in (*online, "prefetch-predicted"))
    oracles = ("prefetch-oracle", "prefetch-synthetic", "static-popular")
    assert all(registry[n].uses_future and not registry[n].is_bound for n in oracles)
    assert all(registry[n].is_bound for n in ("belady", "optimal"))


NEAR = ComputeUnit(memory_bandwidth=200e9, peak_flops=20e12)
HOST = ComputeUnit(memory_bandwidth=100e9, peak_flops=2e12)
PARAMS = {
    "static-popular": {"warmup_steps": 2},
    "prefetch-predicted": {"train_steps": 2},
    "lru": {"compute_near": True},
    "quantised-all": {"policy": "lru", "precision": "int2"},
    "low-precision-on-miss": {"policy": "lru", "precision": "int2", "upgrade": True},
    "skip-low-score": {"policy": "lru", "threshold": 0.3},
}
# a reduced copy in both tiers, for the policies that move experts in reduced precision
COPIES = {"host": ("bf16", "int2"), "md": ("bf16", "int2")}


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    slots=st.integers(0, 10),
    near=st.booleans(),
    channels=st.integers(1, 3),
)
def test_engine_invariants_for_every_policy(seed, slots, near, channels) -> None:
    rng = np.random.default_rng(seed)
    trace = random_trace(rng, steps=4, layers=3, seqs=3, k=2, num_experts=8)
    hw = hardware(
        capacity=slots * MB,
        md_mode="near-data" if near else "fetch",
        md_compute=NEAR,
        host_compute=HOST,
        pcie_channels=channels,
        pcie_latency=1e-6,
        md_latency=2e-6,
    )
    hw = dataclasses.replace(hw, copies=COPIES)
    m = dataclasses.replace(model(8, 2, MB), precisions=(Precision("int2", bits=2),))
    for name in available_policies():
        if name.startswith("example-"):
            continue
        run = simulate(trace, hw, m, make_policy(name, PARAMS.get(name, {})), seed=seed)
        served = sum(run.per_layer[c] for c in PATH_COLUMNS)
        np.testing.assert_array_equal(served, run.per_layer["active"], err_msg=name)
        assert run.per_layer["cache_bytes"].max() <= slots * MB, name
        assert (run.per_layer["t_end"] >= run.per_layer["t_gate"]).all(), name
        if slots == 0:
            assert run.totals["hits"] == 0, name
