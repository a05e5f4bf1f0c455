"""The continuous-batching state machine on its own, driven by a stand-in iteration time
(the engine gives the real one): invariants (arrival <= admission <= first token <= finish,
every request finishes once with all its tokens, KV within budget, token budget, positions
walked in order), preemption by recompute, chunked prefill, determinism, Little's law."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from sim.errors import UserError
from sim.serving.metrics import latencies, time_average_in_system
from sim.serving.requests import RequestSet
from sim.serving.scheduler import Batch, Scheduler
from sim.serving.spec import SchedulerSpec


def _requests(n: int, gap: float, prompt: tuple[int, int], output: tuple[int, int], seed=0):
    rng = np.random.default_rng(seed)
    return RequestSet(
        np.cumsum(rng.exponential(gap, n)),
        rng.integers(prompt[0], prompt[1] + 1, n),
        rng.integers(output[0], output[1] + 1, n),
    )


def _drive(
    sched: Scheduler,
    time_of: Callable[[Batch], float],
    check: Callable[[Batch], None] | None = None,
    ahead: int = 1,
) -> list[Batch]:
    """Run ``sched`` to the end. ``ahead`` > 1: while it can decide iterations in advance, up
    to that many at once (`Scheduler.poll_ahead`, as `ServingSource` does), timed after."""
    now, batches = 0.0, []
    while True:
        got = sched.poll(now)
        if got is None:
            return batches
        if isinstance(got, float):
            assert got > now
            now = got
            continue
        planned = [got]
        while len(planned) < ahead and sched.can_plan_next():
            more = sched.poll_ahead(now, ahead - len(planned))
            if more is None:
                break
            planned.extend(more)
        for batch in planned:
            if check is not None:
                check(batch)
            batches.append(batch)
            start = now
            now += time_of(batch)
            sched.complete(now, start)


def _linear(batch: Batch) -> float:
    return 1e-3 + 2e-5 * float(batch.new_tokens.sum()) + 1e-6 * float(batch.kv_after.sum())


CASES = [
    # (scheduler, kv blocks, mean gap)
    (SchedulerSpec(max_running=8, max_batched_tokens=256, block_tokens=16), 60, 0.01),
    (SchedulerSpec(max_running=32, max_batched_tokens=128, block_tokens=4), 30, 0.002),
    (SchedulerSpec(32, 64, chunked_prefill=True, block_tokens=16), 12, 0.002),
    (SchedulerSpec(4, 512, chunked_prefill=False, block_tokens=1), 200, 0.005),
]


@pytest.mark.parametrize(("spec", "kv_blocks", "gap"), CASES)
def test_invariants(spec, kv_blocks, gap):
    req = _requests(400, gap, (1, 60), (1, 40))
    sched = Scheduler(req, spec, kv_blocks)
    walked: dict[int, list[int]] = {}

    def check(batch: Batch) -> None:
        assert batch.new_tokens.sum() <= spec.max_batched_tokens
        assert 0 < batch.ids.size <= spec.max_running
        assert len(set(batch.ids.tolist())) == batch.ids.size
        assert (req.arrival[batch.ids] <= batch.start).all()  # nobody runs before arriving
        held = -(-batch.kv_after // spec.block_tokens)
        assert held.sum() <= kv_blocks
        for r, first, n in zip(batch.ids.tolist(), batch.first_pos, batch.new_tokens):
            walked.setdefault(r, []).extend(range(first, first + n))

    _drive(sched, _linear, check)
    table = sched.iteration_table()
    assert (table["kv_blocks"] <= kv_blocks).all()
    assert sched.all_finished
    assert np.array_equal(sched.generated, req.output)  # every token, exactly once
    assert table["finished"].sum() == len(req)  # each request finishes exactly once
    assert (sched.admitted >= req.arrival).all()
    assert (sched.first_token > sched.admitted).all()
    assert (sched.finish >= sched.first_token).all()
    for r, positions in walked.items():
        # each admission walks 0, 1, 2, ... in order; preemption restarts at 0; the last one
        # reaches P+O-2
        starts = [i for i, p in enumerate(positions) if p == 0]
        assert len(starts) == sched.preempted[r] + 1
        runs = [positions[a:b] for a, b in zip(starts, [*starts[1:], len(positions)])]
        assert all(run == list(range(len(run))) for run in runs)
        assert len(runs[-1]) == req.prompt[r] + req.output[r] - 1


def test_preemption_recomputes_and_is_counted():
    spec = SchedulerSpec(max_running=16, max_batched_tokens=256, block_tokens=16)
    req = _requests(300, 0.001, (10, 40), (10, 60), seed=3)
    sched = Scheduler(req, spec, kv_blocks=12)
    batches = _drive(sched, _linear)
    assert sched.preempted.sum() > 0
    assert sched.iteration_table()["preempted"].sum() == sched.preempted.sum()
    assert np.array_equal(sched.generated, req.output)
    # a preempted request re-prefills its prompt plus the tokens it had generated
    r = int(np.flatnonzero(sched.preempted)[0])
    prefills = [
        int(b.new_tokens[i])
        for b in batches
        for i in np.flatnonzero(b.ids == r)
        if b.first_pos[i] == 0
    ]
    assert len(prefills) == sched.preempted[r] + 1 and prefills[0] == req.prompt[r]
    assert all(p > req.prompt[r] for p in prefills[1:])


def test_chunked_prefill_splits_long_prompts_into_the_budget():
    spec = SchedulerSpec(max_running=8, max_batched_tokens=32, chunked_prefill=True)
    req = RequestSet(np.zeros(2), np.array([100, 5]), np.array([3, 3]))
    sched = Scheduler(req, spec, kv_blocks=100)
    batches = _drive(sched, _linear)
    first = [b for b in batches if 0 in b.ids.tolist()]
    chunks = [int(b.new_tokens[b.ids.tolist().index(0)]) for b in first]
    assert chunks[:4] == [32, 32, 32, 4] and chunks[4:] == [1, 1]
    # FCFS: the second request joins only once the first's prefill leaves room
    assert batches[3].ids.tolist() == [0, 1] and batches[3].new_tokens.tolist() == [4, 5]
    assert sched.first_token[0] == batches[3].start + _linear(batches[3])


def test_without_chunking_the_head_of_the_queue_blocks():
    spec = SchedulerSpec(max_running=8, max_batched_tokens=100)
    req = RequestSet(np.zeros(3), np.array([60, 50, 5]), np.array([2, 2, 2]))
    sched = Scheduler(req, spec, kv_blocks=100)
    batches = _drive(sched, _linear)
    assert batches[0].ids.tolist() == [0]  # 50 more do not fit 100 - 60; 5 may not overtake
    assert batches[1].ids.tolist() == [0, 1, 2]


def test_deterministic():
    spec = SchedulerSpec(max_running=16, max_batched_tokens=128, chunked_prefill=True)
    req = _requests(200, 0.003, (1, 90), (1, 30), seed=5)
    runs = []
    for _ in range(2):
        sched = Scheduler(req, spec, 40)
        _drive(sched, _linear)
        runs.append((sched.iteration_table(), sched.finish.copy(), sched.preempted.copy()))
    (t1, f1, p1), (t2, f2, p2) = runs
    assert all(np.array_equal(t1[k], t2[k]) for k in t1)
    assert np.array_equal(f1, f2) and np.array_equal(p1, p2)


def test_littles_law_between_the_two_records():
    spec = SchedulerSpec(max_running=32, max_batched_tokens=512)
    req = _requests(3000, 0.01, (1, 40), (2, 80), seed=7)
    sched = Scheduler(req, spec, 400)
    _drive(sched, _linear)
    area, span = time_average_in_system(sched.iteration_table())
    records = {
        "arrival": req.arrival,
        "admitted": sched.admitted,
        "first_token": sched.first_token,
        "finish": sched.finish,
        "output_tokens": req.output,
    }
    e2e = latencies(records)["e2e"]
    span_all = float(sched.finish.max() - req.arrival.min())
    little = len(req) / span_all * e2e.mean()  # lambda x W
    assert abs(area / span_all / little - 1.0) < 0.01
    assert span <= span_all


def test_idle_until_the_next_arrival():
    req = RequestSet(np.array([1.0, 5.0]), np.array([2, 2]), np.array([1, 1]))
    sched = Scheduler(req, SchedulerSpec(), 10)
    assert sched.poll(0.0) == 1.0
    batch = sched.poll(1.0)
    assert isinstance(batch, Batch) and batch.ids.tolist() == [0]
    sched.complete(1.5)
    assert sched.poll(1.5) == 5.0
    sched.complete(sched.poll(5.0).start + 1.0)
    assert sched.poll(6.0) is None and sched.finish.tolist() == [1.5, 6.0]


def test_requests_that_can_never_run_are_refused():
    req = RequestSet(np.zeros(2), np.array([10, 100]), np.array([5, 30]))
    with pytest.raises(UserError, match=r"request 1 needing 129 tokens \(9 blocks\)"):
        Scheduler(req, SchedulerSpec(block_tokens=16), kv_blocks=8)
    with pytest.raises(UserError, match=r"max_batched_tokens: expected at least 129"):
        Scheduler(req, SchedulerSpec(max_running=4, max_batched_tokens=64), kv_blocks=100)
    Scheduler(req, SchedulerSpec(4, 64, chunked_prefill=True), kv_blocks=100)
    with pytest.raises(UserError, match="expected at least max_running"):
        Scheduler(req, SchedulerSpec(256, 200, chunked_prefill=True), kv_blocks=100)


@pytest.mark.parametrize("seed", range(6))
def test_decode_stretches_decide_what_one_iteration_at_a_time_decides(seed):
    """`poll_ahead` decides stretches of plain decodes at once (`_decode_stretch`): the
    batches, per-iteration records and per-request times equal those of iterations decided
    one by one, through KV growth up to preemptions (a tight budget) and finishes."""
    rng = np.random.default_rng(seed)
    n = 30
    arrival = np.sort(rng.uniform(0.0, 20.0, n)) * (seed % 2)  # even seeds: all at t=0
    req = RequestSet(arrival, rng.integers(1, 40, n), rng.integers(1, 60, n))
    spec = SchedulerSpec(
        max_running=8, max_batched_tokens=100, chunked_prefill=bool(seed % 3), block_tokens=4
    )
    runs = []
    for ahead in (1, 128):
        scheduler = Scheduler(req, spec, kv_blocks=40 + 10 * seed)
        runs.append((scheduler, _drive(scheduler, lambda _: 1.0, ahead=ahead)))
    (one, by_one), (many, at_once) = runs
    assert len(by_one) == len(at_once)
    for a, b in zip(by_one, at_once, strict=True):
        for name in ("index", "decode_tokens", "prefill_tokens"):
            assert getattr(a, name) == getattr(b, name), name
        for name in ("ids", "first_pos", "new_tokens", "kv_after", "emits"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name, column in one.iteration_table().items():
        assert np.array_equal(many.iteration_table()[name], column), name
    for name in ("admitted", "first_token", "finish", "preempted", "blocks", "generated"):
        assert np.array_equal(getattr(one, name), getattr(many, name), equal_nan=True), name
    assert one.preempted.sum() > 0 or seed > 3  # the tight budgets preempt
