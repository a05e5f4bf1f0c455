"""`moesim trace stats` against an independent re-implementation of the seed notebook.

(1) counts and gating numbers on small shards the tests write (ties, k > 6, k < 6, scores equal
at 6 decimals, tokens with fewer than k nonzero scores); (2) the real rows the notebook counted
(decoder cuts); (3) the notebook tree, byte for byte.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from seed_notebook import (
    TRICKY_SCORES,
    dense_rows_counts,
    run_cell1,
    tricky_rows,
    write_raw_shard,
)
from shared_data import CUTS, NEUPIMS

from sim.cli import main
from sim.stats.counts import count_cells, count_rows, gating_table
from sim.stats.gating import GatingRule, gpu_share
from sim.stats.notebook_tree import ordinal
from sim.trace.open import open_trace
from sim.trace.routing import RoutingTrace, TraceMeta

DECODER = CUTS / "decoder"


# -- the gating rule ------------------------------------------------------------------------------
@settings(deadline=None, max_examples=60)
@given(
    activ=st.lists(st.integers(0, 100_000), min_size=1, max_size=40),
    bw_pcie=st.one_of(st.integers(1, 4096), st.floats(0.01, 4096)),
    bw_md=st.one_of(st.integers(0, 4096), st.floats(0, 4096)),
    alpha=st.floats(0, 4),
)
def test_gpu_share_is_the_notebooks_scalar_python(activ, bw_pcie, bw_md, alpha):
    gpu, md, h = gpu_share(np.array(activ), bw_pcie, bw_md, alpha)
    for rounding, fn in (("ceil", math.ceil), ("floor", math.floor)):
        up, _, _ = gpu_share(np.array(activ), bw_pcie, bw_md, alpha, rounding)
        assert up.tolist() == [fn((bw_pcie / (bw_md + bw_pcie)) * a) for a in activ]
    for i, a in enumerate(activ):
        expert_gpu = round((bw_pcie / (bw_md + bw_pcie)) * a)
        assert (gpu[i], md[i], h[i]) == (expert_gpu, a - expert_gpu, int(alpha * expert_gpu))
        assert gpu_share(a, bw_pcie, bw_md, alpha) == (int(gpu[i]), int(md[i]), int(h[i]))


def test_gpu_share_rounds_half_to_even_like_python():
    # ratio 1/2: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4 (Python's round, not half-up)
    gpu, md, _ = gpu_share(np.array([1, 3, 5, 7]), 1, 1)
    assert gpu.tolist() == [round(x / 2) for x in (1, 3, 5, 7)] == [0, 2, 2, 4]
    assert md.tolist() == [1, 1, 3, 3]
    assert gpu_share(51, 32, 512) == (3, 48, 3)  # the neupims 1st/layer2 example
    assert gpu_share(17, 32, 512, rounding="ceil") == (1, 16, 1)


@pytest.mark.parametrize(
    "kwargs",
    [{"bw_pcie": -1}, {"bw_md": math.nan}, {"alpha": -0.5}, {"rounding": "up"}],
)
def test_gpu_share_rejects_bad_constants(kwargs):
    from sim.errors import UserError

    args = {"bw_pcie": 32, "bw_md": 512, "alpha": 1.0, "rounding": "nearest", **kwargs}
    with pytest.raises(UserError):
        gpu_share(np.array([3]), **args)


def test_ordinals():
    names = [ordinal(n) for n in (1, 2, 3, 4, 10, 11, 12, 13, 21, 22, 23, 101, 111, 112, 512)]
    assert names == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "10th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
        "23rd",
        "101st",
        "111th",
        "112th",
        "512th",
    ]


# -- counts on in-memory traces -----------------------------------------------------------------
def _trace(experts: np.ndarray, scores: np.ndarray, layout: str = "seed") -> RoutingTrace:
    steps, layers, seqs, _ = experts.shape
    return RoutingTrace(
        experts=experts.astype(np.int16),
        scores=scores.astype(np.float32),
        tokens=np.full((steps, seqs), -1, dtype=np.int64),
        num_experts=64,
        layer_ids=tuple(range(2, 2 + layers)),
        positions=tuple(range(steps)),
        meta=TraceMeta(model="m", runid=1, epoch=1, layout=layout, seq_len=steps),
    )


@settings(deadline=None, max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    k_trace=st.integers(1, 8),
    seqs=st.integers(1, 24),
    steps=st.integers(1, 3),
)
def test_counts_equal_the_notebooks_loop(seed, k_trace, seqs, steps):
    rng = np.random.default_rng(seed)
    ids, sc = tricky_rows(rng, steps * 2 * seqs, k_trace)
    trace = _trace(ids.reshape(steps, 2, seqs, k_trace), sc.reshape(steps, 2, seqs, k_trace))
    ks = tuple(sorted({1, max(1, k_trace - 1), k_trace, k_trace + 2, 6}))
    cells = count_cells(trace, ks)
    for step in range(steps):
        for li in range(2):
            ref = dense_rows_counts(trace.experts[step, li], trace.scores[step, li], ks)
            for ki, k in enumerate(ks):
                assert cells.counts[ki, step, li].tolist() == [ref[k][e] for e in range(64)]


def test_count_and_gating_rows_are_consistent():
    rng = np.random.default_rng(3)
    ids, sc = tricky_rows(rng, 4 * 2 * 16, 6)
    trace = _trace(ids.reshape(4, 2, 16, 6), sc.reshape(4, 2, 16, 6))
    cells = count_cells(trace, (1, 2, 6))
    gating = gating_table(cells, GatingRule()).rows()
    counts = count_rows(cells)
    assert gating.shape == (4 * 2 * 3, 7)
    for pos, layer, k, activ, gpu, md, h in gating.tolist():
        mine = counts[(counts[:, 0] == pos) & (counts[:, 1] == layer) & (counts[:, 2] == k)]
        assert len(mine) == activ and mine[:, 4].sum() == 16 * k and (mine[:, 4] > 0).all()
        assert (gpu, md, h) == gpu_share(activ, 32, 512)


# -- (1) + (3): the command against the notebook on shards the test writes -----------------------
def _write_seed_shards(root: Path, k_trace: int, seq_len: int, layers: tuple[int, ...]) -> None:
    rng = np.random.default_rng(1000 + k_trace)
    rows = 32 * seq_len
    for shard in ("1-2", "1-3"):
        actives = {layer: tricky_rows(rng, rows, k_trace) for layer in layers}
        write_raw_shard(root, shard, rng.integers(0, 50_000, rows), actives)


def _read_csv(path: Path) -> list[list[int]]:
    with open(path, newline="") as handle:
        return [[int(v) for v in row] for row in list(csv.reader(handle))[1:]]


@pytest.mark.parametrize("k_trace", [4, 6])
def test_command_equals_notebook_on_written_shards(tmp_path, k_trace):
    seq_len, layers, positions, topks = 16, (2, 3), range(12), (1, 2, 6, 8)
    _write_seed_shards(tmp_path / "dump", k_trace, seq_len, layers)
    ref = run_cell1(
        tmp_path / "dump",
        tmp_path / "notebook",
        positions=positions,
        layers=range(2, 4),
        sequence_length=seq_len,
        topks=topks,
    )
    out = tmp_path / "ours"
    rc = main(
        ["trace", "stats", str(tmp_path / "dump"), "--layout", "seed", "--seq-len", str(seq_len),
         "--positions", "0-11", "--layers", "2-3", "--topk", "1,2,6,8", "--out", str(out),
         "--notebook-tree"]
    )  # fmt: skip
    assert rc == 0
    gating = _read_csv(out / "gating.csv")
    expected = [
        [p, layer, k, *ref[(p, layer, k)][1:]] for p in positions for layer in layers for k in topks
    ]
    assert gating == expected
    counts = _read_csv(out / "counts.csv")
    expected_counts = [
        [p, layer, k, e, c]
        for p in positions
        for layer in layers
        for k in topks
        for e, c in sorted(ref[(p, layer, k)][0].items())
        if c > 0
    ]
    assert counts == expected_counts
    _assert_same_tree(tmp_path / "notebook", out)


def _assert_same_tree(notebook: Path, ours: Path) -> None:
    theirs = sorted(p.relative_to(notebook) for p in notebook.rglob("*") if p.is_file())
    mine = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file() and p.parent != ours)
    assert mine == theirs and theirs
    for rel in theirs:
        if rel.suffix == ".pt":
            _assert_same_pt(notebook / rel, ours / rel)
        else:
            assert (ours / rel).read_bytes() == (notebook / rel).read_bytes(), rel


def _assert_same_pt(a: Path, b: Path) -> None:
    da = torch.load(a, weights_only=True)
    db = torch.load(b, weights_only=True)
    assert da.keys() == db.keys()
    for key, value in da.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == db[key].dtype and torch.equal(value, db[key]), key
        else:
            assert type(value) is type(db[key]) and value == db[key], key


def test_print_options_are_restored(tmp_path):
    torch.set_printoptions(precision=2, threshold=7)
    try:
        _write_seed_shards(tmp_path / "dump", 6, 4, (2,))
        rc = main(
            ["trace", "stats", str(tmp_path / "dump"), "--layout", "seed", "--seq-len", "4",
             "--positions", "0", "--layers", "2", "--out", str(tmp_path / "o"), "--notebook-tree"]
        )  # fmt: skip
        assert rc == 0
        opts = torch._tensor_str.get_printoptions()
        assert (opts["precision"], opts["threshold"]) == (2, 7)
        text = next((tmp_path / "o" / "1st" / "Layer_2").glob("*x4.txt")).read_text()
        assert "..." not in text  # the notebook's threshold=inf, not ours
    finally:
        torch.set_printoptions(profile="default")


# -- (2): the real rows the notebook counted ------------------------------------------------------
needs_data = pytest.mark.skipif(not DECODER.is_dir(), reason="shared real-data cuts not present")


@needs_data
def test_real_decoder_rows_match_the_notebook(tmp_path):
    trace = open_trace(DECODER)
    assert trace.meta.layout == "seed" and trace.num_seqs == 64
    cells = count_cells(trace, (1, 2, 6))
    gating = {tuple(r[:3]): r[3:] for r in gating_table(cells, GatingRule()).rows().tolist()}
    for pos_dir in sorted(DECODER.iterdir()):
        position = int(re.match(r"\d+", pos_dir.name).group()) - 1
        for layer_dir in sorted(pos_dir.iterdir()):
            data = torch.load(next(layer_dir.glob("*.pt")), weights_only=True)
            layer = data["layer"]
            ref = dense_rows_counts(data["indices"].numpy(), data["scores"].numpy(), (1, 2, 6))
            step, li = trace.positions.index(position), trace.layer_ids.index(layer)
            for ki, k in enumerate((1, 2, 6)):
                assert cells.counts[ki, step, li].tolist() == [ref[k][e] for e in range(64)]
                activ = sum(1 for c in ref[k].values() if c > 0)
                gpu = round((32 / (512 + 32)) * activ)
                assert gating[(position, layer, k)] == [activ, gpu, activ - gpu, int(1.0 * gpu)]
    assert len(gating) == 80 * 3


def _neupims_cell(path: Path) -> tuple[dict[int, int], list[int]]:
    text = path.read_text(encoding="utf-8")
    counts = {int(e): int(c) for e, c in re.findall(r"^Expert (\d+)\s+(\d+)\s", text, re.M)}
    numbers = [
        int(re.search(pattern, text).group(1))
        for pattern in (
            r"Expert_Activ \(experts with ≥1 token\): (\d+)",
            r"Expert_GPU: (\d+)",
            r"Expert_MD:  (\d+)",
            r"H \(Gating Output\): (\d+)",
        )
    ]
    return counts, numbers


@pytest.mark.skipif(not NEUPIMS.is_dir(), reason="shared neupims tables not present")
def test_neupims_gating_sections_follow_the_rule():
    """All 80 `layer{L}.txt` (the notebook's _top6_stats.txt format, batch 16) obey the rule."""
    files = sorted(NEUPIMS.glob("*/layer*.txt"))
    assert len(files) == 80
    for path in files:
        counts, (activ, gpu, md, h) = _neupims_cell(path)
        assert len(counts) == 64 and sum(counts.values()) == 16 * 6
        assert activ == sum(1 for c in counts.values() if c > 0)
        assert gpu_share(activ, 32, 512, 1.0) == (gpu, md, h), path


@needs_data
@pytest.mark.skipif(not NEUPIMS.is_dir(), reason="shared neupims tables not present")
def test_neupims_batch16_rows_are_not_the_decoder_rows():
    """Finding, not a requirement: the batch-16 tables count other rows than the decoder cuts
    (some expert has more top-6 tokens in 16 rows than in all 64 decoder rows of that cell)."""
    trace = open_trace(DECODER)
    cells = count_cells(trace, (6,))
    not_subset = 0
    for path in sorted(NEUPIMS.glob("*/layer*.txt")):
        position = int(re.match(r"\d+", path.parent.name).group()) - 1
        layer = int(re.search(r"layer(\d+)", path.name).group(1))
        counts, _ = _neupims_cell(path)
        ours = cells.counts[0, trace.positions.index(position), trace.layer_ids.index(layer)]
        not_subset += any(counts[e] > ours[e] for e in range(64))
    assert not_subset >= 70  # 73 of 80 with numpy 2.4


def test_tricky_scores_print_equal_at_six_decimals():
    # Guard on the fixture itself: the ties it is meant to create really occur.
    printed = [f"{float(x):.6f}" for x in TRICKY_SCORES]
    assert printed.count("0.030000") == 3 and printed.count("0.000000") == 4
