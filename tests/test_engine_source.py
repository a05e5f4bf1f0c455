"""Iteration sources: the engine's extension point (docs/engine.md, "Iteration sources")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from engine_traces import hardware, model, random_trace
from test_engine_oracle import assert_identical

from sim.engine import Idle, Iteration, LockstepSource, run_engine, simulate
from sim.policies import make_policy

ROOT = Path(__file__).resolve().parents[1]


class StepByStep:
    """Lockstep replayed through the plain interface: one step per call, not time-independent
    (so never taken in blocks), with the start and end of every iteration recorded."""

    def __init__(self, counts, non_expert, idle_first: float = 0.0):
        self.counts, self.non_expert, self.idle_first = counts, non_expert, idle_first
        self.next, self.ends = 0, []

    def planned_counts(self, gpu):
        return self.counts

    def next_iteration(self, gpu, now):
        if self.next == len(self.counts):
            return None
        if now < self.idle_first:
            return Idle(self.idle_first)
        s, self.next = self.next, self.next + 1
        return Iteration(self.counts[s], [self.non_expert] * self.counts.shape[1], position=s)

    def iteration_end(self, gpu, iteration, start, end):
        self.ends.append((gpu, iteration.position, start, end))


@pytest.mark.parametrize("name", ["seed-split", "lru", "prefetch-oracle", "balanced-split"])
def test_a_plain_source_gives_the_lockstep_results(name):
    trace = random_trace(np.random.default_rng(5), steps=12, layers=3, seqs=6, k=2, num_experts=10)
    hw, mdl = hardware(capacity=6 * 4.33e6, non_expert=3e-5, md_channels=2), model(10, 2)
    counts = trace.expert_token_counts(2)
    source = StepByStep(counts, 3e-5)
    result = run_engine(
        source,
        hw,
        mdl,
        [make_policy(name)],
        layer_ids=tuple(trace.layer_ids),
        topk=2,
        tokens_per_iteration=trace.num_seqs,
    )
    assert_identical(result, simulate(trace, hw, mdl, make_policy(name)))
    # the engine tells the source when each iteration ran: back to back, as per_step says
    assert [e[1] for e in source.ends] == list(range(12))
    starts = [e[2] for e in source.ends]
    ends = [e[3] for e in source.ends]
    assert starts[0] == 0.0 and starts[1:] == ends[:-1]
    np.testing.assert_allclose(np.diff([0.0, *ends]), result.per_step["latency"], rtol=1e-12)


def test_idle_delays_the_first_iteration_exactly():
    trace = random_trace(np.random.default_rng(6), steps=3, layers=2, seqs=4, k=2, num_experts=8)
    counts = trace.expert_token_counts(2)
    hw, mdl = hardware(), model(8, 2)
    source = StepByStep(counts, 0.0, idle_first=0.25)
    result = run_engine(
        source, hw, mdl, [make_policy("gpu-only")], layer_ids=tuple(trace.layer_ids), topk=2
    )
    assert source.ends[0][2] == 0.25 and result.per_layer["t_start"][0] == 0.25
    base = simulate(trace, hw, mdl, make_policy("gpu-only"))
    np.testing.assert_array_equal(result.per_step["latency"], base.per_step["latency"])


def test_idle_must_move_time_forward():
    counts = np.ones((1, 1, 4), dtype=np.int64)

    class Stuck(StepByStep):
        def next_iteration(self, gpu, now):
            return Idle(now)

    with pytest.raises(ValueError, match="must wait for a later time"):
        run_engine(
            Stuck(counts, 0.0),
            hardware(),
            model(4, 1),
            [make_policy("gpu-only")],
            layer_ids=(2,),
            topk=1,
        )


def test_lockstep_source_blocks_and_steps_agree():
    """The lockstep source taken in blocks (time-independent) and step by step give the same
    numbers: the block is only a way of computing them."""
    trace = random_trace(np.random.default_rng(7), steps=400, layers=4, seqs=8, k=3, num_experts=16)
    counts = trace.expert_token_counts(3)
    hw, mdl = hardware(pcie_channels=2, md_latency=1e-6, non_expert=2e-5), model(16, 3)
    blocks = run_engine(
        LockstepSource(counts, trace.positions, 2e-5),
        hw,
        mdl,
        [make_policy("seed-split")],
        layer_ids=tuple(trace.layer_ids),
        topk=3,
    )
    steps = run_engine(
        StepByStep(counts, 2e-5),
        hw,
        mdl,
        [make_policy("seed-split")],
        layer_ids=tuple(trace.layer_ids),
        topk=3,
    )
    assert_identical(blocks, steps)


def test_the_docs_example_runs():
    text = (ROOT / "docs" / "engine.md").read_text(encoding="utf-8")
    block = re.search(
        r"A source that serves one trace step every 50 ms.*?```python\n(.*?)```", text, re.S
    )
    assert block is not None
    namespace: dict = {}
    exec(compile(block.group(1), "docs/engine.md", "exec"), namespace)
    ends = namespace["source"].ends
    assert [start for _, start, _ in ends] == pytest.approx([0.05 * s for s in range(len(ends))])


def test_engine_and_policies_do_not_import_each_other():
    code = (
        "import sys, sim.contract; assert not any(m.startswith(('sim.engine', 'sim.policies')) "
        "for m in sys.modules), 'contract'; import sim.engine; "
        "assert not any(m.startswith('sim.policies') for m in sys.modules), 'engine'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
