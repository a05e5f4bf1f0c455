"""The engine's HBM cache (`HbmCache`) applies a gate's evictions and reserves its prefetches
at once (numpy) when all are valid, and item by item otherwise: both ways must give the same
cache state, results and error messages."""

from __future__ import annotations

import numpy as np
import pytest
from engine_traces import GB, hardware, make_trace, model
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import simulate
from sim.engine.cache import HbmCache
from sim.policies import GateDecision, GateView, Path, Policy, PolicyError

# 2 layers x 3 steps, 2 sequences top-1, 4 experts: (step, layer) -> experts in use
TRACE = make_trace(
    [
        [[[0], [1]], [[2], [3]]],
        [[[2], [2]], [[0], [0]]],
        [[[0], [3]], [[1], [2]]],
    ],
    num_experts=4,
)
M4 = model(4, 1, 1 * GB)
HW = hardware(capacity=8 * GB)


class _NoParams:
    pass


class EvictScripted(Policy):
    """Fetch over PCIe and admit everything; evict what the script says at (step, layer)."""

    name = "evict-scripted"
    Params = _NoParams

    def __init__(self, evict: dict, prefetch: dict | None = None) -> None:
        super().__init__()
        self.evict, self.prefetch = evict, prefetch or {}

    def decide(self, view: GateView) -> GateDecision:
        n = view.experts.size
        return GateDecision(
            paths=np.full(n, Path.PCIE, np.int8),
            admit=np.ones(n, dtype=bool),
            evict=self.evict.get((view.step, view.layer), []),
            prefetch=self.prefetch.get((view.step, view.layer), []),
        )


def outcome(evict: dict, *, one_by_one: bool, monkeypatch, prefetch=None, hw=HW) -> tuple:
    """Per-layer cache bytes, hits, prefetches and timings, or the PolicyError message."""
    with monkeypatch.context() as patch:
        if one_by_one:
            patch.setattr(HbmCache, "_eviction_keys", lambda self, *a: None)
            patch.setattr(HbmCache, "_reserve_all", lambda self, *a: None)
        try:
            r = simulate(TRACE, hw, M4, EvictScripted(evict, prefetch), timeline=True)
        except PolicyError as err:
            return ("error", str(err))
    columns = ("cache_bytes", "hits", "prefetch_pcie", "prefetch_md", "t_end")
    return ("ok", *(r.per_layer[c].tolist() for c in columns), r.timeline)


def test_valid_evictions_free_their_slots(monkeypatch):
    # after step 0 the cache holds (0,0) (0,1) (1,2) (1,3); step 1 layer 0 evicts three of them
    evict = {(1, 0): [(0, 0), (0, 1), (1, 3)]}
    result = outcome(evict, one_by_one=False, monkeypatch=monkeypatch)
    assert result[1][:3] == [2 * GB, 4 * GB, 1 * GB + 1 * GB]
    assert result == outcome(evict, one_by_one=True, monkeypatch=monkeypatch)


def test_numpy_integer_keys_are_read_like_ints(monkeypatch):
    keys = [(np.int64(0), np.int16(0)), (np.intp(1), np.uint8(3))]
    as_numpy = outcome({(1, 0): keys}, one_by_one=False, monkeypatch=monkeypatch)
    assert as_numpy == outcome({(1, 0): [(0, 0), (1, 3)]}, one_by_one=True, monkeypatch=monkeypatch)
    assert as_numpy[0] == "ok"


@pytest.mark.parametrize(
    ("evict", "message"),
    [
        ([(0, 0), (0, 0)], r"evicts \(layer 0, expert 0\), which is not cached"),
        ([(0, 3), (5, 0)], r"evicts \(layer 0, expert 3\), which is not cached"),
        ([(5, 0), (0, 3)], r"evict \(layer 5, expert 0\) out of range"),
        ([(0, -1)], r"evict \(layer 0, expert -1\) out of range"),
        ([(0, 1), (1, 0)], r"evicts \(layer 1, expert 0\), which is not cached"),
    ],
)
def test_invalid_evictions_raise_the_first_error_in_order(monkeypatch, evict, message):
    script = {(1, 0): evict}
    fast = outcome(script, one_by_one=False, monkeypatch=monkeypatch)
    assert fast[0] == "error"
    assert fast == outcome(script, one_by_one=True, monkeypatch=monkeypatch)
    with pytest.raises(PolicyError, match=message):
        simulate(TRACE, HW, M4, EvictScripted(script))


def test_evicting_an_expert_this_gate_uses_is_an_error(monkeypatch):
    script = {(2, 0): [(0, 1), (0, 0)]}  # step 2 layer 0 uses expert 0 (cached since step 0)
    fast = outcome(script, one_by_one=False, monkeypatch=monkeypatch)
    assert fast[0] == "error" and "which this layer is using" in fast[1]
    assert fast == outcome(script, one_by_one=True, monkeypatch=monkeypatch)


@settings(deadline=None, max_examples=60)
@given(
    st.dictionaries(
        st.tuples(st.integers(0, 2), st.integers(0, 1)),
        st.lists(st.tuples(st.integers(-1, 2), st.integers(-1, 4)), max_size=6),
        max_size=4,
    )
)
def test_at_once_equals_one_by_one(evict):
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert outcome(evict, one_by_one=False, monkeypatch=monkeypatch) == outcome(
            evict, one_by_one=True, monkeypatch=monkeypatch
        )


def test_prefetches_reserve_once_in_the_policys_order(monkeypatch):
    # step 0 layer 0 prefetches layer 1's experts 0 and 1 (1 twice: counted once) and 2 on MD
    script = {(0, 0): [(1, 1, "pcie"), (1, 0, "pcie"), (1, 1, "md_link"), (1, 2, "md_link")]}
    fast = outcome({}, one_by_one=False, monkeypatch=monkeypatch, prefetch=script)
    assert fast[0] == "ok" and fast[3][0] == 2 and fast[4][0] == 1
    assert fast == outcome({}, one_by_one=True, monkeypatch=monkeypatch, prefetch=script)


@pytest.mark.parametrize(
    ("prefetch", "message"),
    [
        ([(1, 0, "pcie"), (1, 9, "pcie")], r"prefetch \(layer 1, expert 9\) out of range"),
        ([(1, 0, "nvlink"), (7, 0, "pcie")], r"prefetch link must be 'pcie' or 'md_link'"),
        ([(1, 0, "md_link")], r"prefetches over md_link, impossible"),
    ],
)
def test_invalid_prefetches_raise_the_first_error_in_order(monkeypatch, prefetch, message):
    hw = hardware(capacity=8 * GB, placement="host")  # no MD pool: md_link prefetch impossible
    script = {(0, 0): prefetch}
    fast = outcome({}, one_by_one=False, monkeypatch=monkeypatch, prefetch=script, hw=hw)
    assert fast[0] == "error" and fast == outcome(
        {}, one_by_one=True, monkeypatch=monkeypatch, prefetch=script, hw=hw
    )
    with pytest.raises(PolicyError, match=message):
        simulate(TRACE, hw, M4, EvictScripted({}, script))


@settings(deadline=None, max_examples=60)
@given(
    st.dictionaries(
        st.tuples(st.integers(0, 2), st.integers(0, 1)),
        st.lists(
            st.tuples(st.integers(0, 1), st.integers(0, 4), st.sampled_from(["pcie", "md_link"])),
            max_size=6,
        ),
        max_size=4,
    )
)
def test_prefetch_at_once_equals_one_by_one(prefetch):
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert outcome({}, one_by_one=False, monkeypatch=monkeypatch, prefetch=prefetch) == (
            outcome({}, one_by_one=True, monkeypatch=monkeypatch, prefetch=prefetch)
        )
