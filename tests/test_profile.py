"""Trace profile: hand-computed statistics, textbook cache curves, brute-force oracles."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cli import main
from sim.trace.missratio import (
    lru_misses,
    opt_misses,
    requests_from_string,
    static_misses,
)
from sim.trace.profile import (
    coactivation,
    cross_sequence_overlap,
    entropy_bits,
    gini,
    mutual_information_bits,
    overlap_by_lag,
    profile_trace,
    reuse_gap_histogram,
    token_consistency,
    working_set_sizes,
)
from sim.trace.routing import RoutingTrace, TraceMeta

# Silberschatz's reference string: 3 frames -> LRU 12, OPT 9 faults; 4 frames -> 8 and 8.
TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def test_textbook_reference_string() -> None:
    active = requests_from_string(TEXTBOOK, 8)
    lru, opt = lru_misses(active), opt_misses(active)
    assert (lru[3], opt[3]) == (12, 9)
    assert (lru[4], opt[4]) == (8, 8)
    assert lru[0] == opt[0] == len(TEXTBOOK)
    assert lru[8] == opt[8] == 6  # cold misses only


def _naive_lru(active: np.ndarray, size: int) -> int:
    """Per-step LRU with the documented tie rule (same step: lower id is more recent)."""
    last: dict[int, int] = {}
    cache: set[int] = set()
    misses = 0
    for t, row in enumerate(active):
        need = set(np.flatnonzero(row).tolist())
        misses += len(need - cache)
        for e in need:
            last[e] = t
        ranked = sorted(cache | need, key=lambda e: (-last[e], e))
        cache = set(ranked[:size])
    return misses


def _brute_optimum(active: np.ndarray, size: int) -> int:
    """Exhaustive optimum over every cache content (the active set kept when it fits)."""
    items = active.shape[1]
    best = {frozenset(): 0}
    for row in active:
        need = frozenset(np.flatnonzero(row).tolist())
        nxt: dict[frozenset, int] = {}
        for cache, cost in best.items():
            cost += len(need - cache)
            pool = cache | need
            keep_need = need if len(need) <= size else None
            for n in range(min(size, len(pool)) + 1):
                for kept in itertools.combinations(sorted(pool), n):
                    kept_set = frozenset(kept)
                    if keep_need is not None and not keep_need <= kept_set:
                        continue
                    if cost < nxt.get(kept_set, 1 << 30):
                        nxt[kept_set] = cost
        best = nxt
    del items
    return min(best.values())


requests = st.integers(2, 5).flatmap(
    lambda items: st.lists(
        st.lists(st.booleans(), min_size=items, max_size=items), min_size=1, max_size=7
    )
)


@settings(deadline=None, max_examples=60)
@given(requests)
def test_lru_matches_naive_simulation(rows: list[list[bool]]) -> None:
    active = np.array(rows, dtype=bool)
    got = lru_misses(active)
    for size in range(active.shape[1] + 1):
        assert got[size] == _naive_lru(active, size)


@settings(deadline=None, max_examples=40)
@given(requests)
def test_opt_is_the_optimum_and_bounds_the_others(rows: list[list[bool]]) -> None:
    active = np.array(rows, dtype=bool)
    opt, lru, static = opt_misses(active), lru_misses(active), static_misses(active)
    for size in range(active.shape[1] + 1):
        if size >= active.sum(axis=1).max():  # the model's residency rule applies
            assert opt[size] == _brute_optimum(active, size)
    assert np.all(opt <= lru) and np.all(opt <= static)
    assert np.all(np.diff(opt) <= 0) and np.all(np.diff(lru) <= 0)


def test_popularity_measures_by_hand() -> None:
    assert entropy_bits(np.array([1, 1, 1, 1])) == pytest.approx(2.0)
    assert entropy_bits(np.array([0, 0, 5, 0])) == 0.0
    assert gini(np.array([3, 3, 3, 3])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 4])) == pytest.approx(0.75)


def test_reuse_gaps_and_working_set_by_hand() -> None:
    active = np.zeros((5, 3), dtype=bool)
    active[[0, 1, 4], 0] = True  # expert 0: gaps 1, 3
    active[[1, 3], 1] = True  # expert 1: gap 2
    hist = reuse_gap_histogram(active)
    assert hist.tolist() == [0, 1, 1, 1, 0]
    ws = working_set_sizes(active, (1, 2, 5))
    assert ws[1] == pytest.approx(5 / 5)  # per step: 1, 2, 0, 1, 1 distinct
    assert ws[2] == pytest.approx((2 + 2 + 1 + 2) / 4)  # windows ending at steps 1..4
    assert ws[5] == pytest.approx(2.0)


def test_overlaps_by_hand() -> None:
    member = np.zeros((3, 2, 4), dtype=bool)  # [steps, seqs, experts]
    member[0, 0, [0, 1]] = member[1, 0, [1, 2]] = member[2, 0, [1, 2]] = True
    member[0, 1, [0, 3]] = member[1, 1, [0, 3]] = member[2, 1, [2, 3]] = True
    lag = overlap_by_lag(member, (1, 2, 5))
    assert lag == {1: pytest.approx((1 + 2 + 2 + 1) / 4), 2: pytest.approx((1 + 1) / 2)}
    counts = member.sum(axis=1)  # tokens per expert per step
    assert cross_sequence_overlap(counts, 2) == pytest.approx((1 + 0 + 1) / 3)


def test_token_consistency_by_hand() -> None:
    member = np.zeros((4, 1, 5), dtype=bool)
    member[0, 0, [0, 1, 2]] = True  # token 7
    member[1, 0, [0, 1, 3]] = True  # token 7: shares 2 with step 0
    member[2, 0, [2, 3, 4]] = True  # token 9
    member[3, 0, [0, 1, 2]] = True  # unknown token: left out
    tokens = np.array([[7], [7], [9], [-1]])
    same, diff, pairs = token_consistency(member, tokens)
    assert (same, pairs) == (2.0, 1)
    assert diff == pytest.approx((1 + 1) / 2)  # (0,2) share 1, (1,2) share 1


def test_mutual_information_extremes() -> None:
    assert mutual_information_bits(np.ones((4, 4))) == pytest.approx(0.0)
    assert mutual_information_bits(np.eye(4)) == pytest.approx(2.0)
    a = np.eye(4, dtype=bool)[[0, 1, 2, 3] * 5]
    c = coactivation(a, a[:, ::-1], 2, 3)
    assert c.mutual_info_bits == pytest.approx(2.0)
    assert c.max_lift_mean == pytest.approx(4.0)


def _tiny_trace() -> RoutingTrace:
    rng = np.random.default_rng(0)
    steps, layers, seqs, k, e = 20, 2, 3, 2, 6
    experts = np.argsort(rng.random((steps, layers, seqs, e)), axis=-1)[..., :k].astype(np.int16)
    scores = np.broadcast_to(np.array([0.5, 0.25], dtype=np.float32), experts.shape).copy()
    tokens = rng.integers(0, 4, size=(steps, seqs))
    return RoutingTrace(
        experts, scores, tokens, e, (2, 3), tuple(range(steps)), TraceMeta("m", 1, 1, "megatron")
    )


def test_profile_trace_is_consistent_with_the_trace() -> None:
    trace = _tiny_trace()
    p = profile_trace(trace)
    for li, lp in enumerate(p.layers):
        active = trace.active_experts(2)[:, li]
        assert lp.active_mean == pytest.approx(active.mean())
        assert lp.requests == active.sum()
        assert lp.token_counts.sum() == 20 * 3 * 2
        assert lp.lru_misses[0] == lp.requests
    assert [(c.layer_from, c.layer_to) for c in p.coactivation] == [(2, 3)]
    p1 = profile_trace(trace, k=1)
    assert p1.layers[0].token_counts.sum() == 20 * 3


def test_profile_cli_writes_everything(tmp_path: Path, capsys) -> None:
    out = tmp_path / "prof"
    assert main(["trace", "profile", "embedded", "--out", str(out), "--layers", "2-3"]) == 0
    text = capsys.readouterr().out
    assert "miss@32" in text
    assert "epoch 5473 [megatron layout]: 256 steps" in text  # not read as rich markup
    data = json.loads((out / "profile.json").read_text())
    assert [lp["layer"] for lp in data["layers"]] == [2, 3]
    assert math.isclose(data["layers"][0]["active_mean"], 33.75, abs_tol=0.01)
    for name in (
        "layers.csv",
        "miss_ratio.csv",
        "reuse_gaps.csv",
        "coactivation.csv",
        "working_set.csv",
        "popularity.png",
        "miss_ratio.png",
    ):
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".*tmp"))


def test_every_profile_figure_names_the_trace_and_topk(tmp_path: Path, monkeypatch) -> None:
    import sim.trace.profile_output as output

    titles: dict[str, str] = {}
    save = output._save

    def recording_save(fig, path: Path) -> Path:
        titles[path.name] = fig._suptitle.get_text() if fig._suptitle else ""
        return save(fig, path)

    monkeypatch.setattr(output, "_save", recording_save)
    trace = _tiny_trace()
    written = output.write_figures(profile_trace(trace, k=1), tmp_path)
    assert sorted(titles) == sorted(p.name for p in written) and len(titles) == 5
    for name, title in titles.items():
        assert "profiled at top-1" in title and "m run 1 epoch 1 [megatron layout]" in title, name
    assert titles["miss_ratio.png"].startswith("Miss ratio by cache size")


def test_profile_cli_bad_options(capsys) -> None:
    assert main(["trace", "profile", "embedded", "--seqs", "9"]) == 2
    assert "--seqs: expected at most 8 sequences" in capsys.readouterr().err
    assert main(["trace", "profile", "embedded", "--topk", "7"]) == 2
    assert "--topk: expected at most the trace's k (6" in capsys.readouterr().err


def test_profile_table_columns_have_a_legend(capsys) -> None:
    assert main(["trace", "profile", "embedded", "--positions", "0-3", "--layers", "2-3"]) == 0
    out = capsys.readouterr().out
    legend = out[out.index("columns (per MoE layer") :]
    for column in ("H bits", "gini", "max/mean", "active", "ov t+1", "xseq", "gap", "same tok"):
        assert f"\n  {column} " in legend, column
    assert "diff tok" in legend and "MI>next" in legend and "miss@C LRU/OPT" in legend
