"""Loading traces: dump round trips, both row layouts, dense format, notebook cuts, embedded."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pt_files import save
from shared_data import CUTS

from sim.commands._trace_args import add_trace_selection_args, trace_from_args
from sim.errors import UserError
from sim.topk import select_topk
from sim.trace.dump import DumpSelection, load_trace, megatron_rows, seed_rows, shard_range
from sim.trace.open import open_trace
from sim.trace.routing import RoutingTrace, TraceMeta
from sim.trace.tracefile import TraceFile, read_trace_yaml, write_trace_yaml
from sim.trace.writer import write_dump

needs_cuts = pytest.mark.skipif(not CUTS.is_dir(), reason="notebook cuts not available")

MODEL, RUN, EPOCH = "flame-moe-290m", "31066", "5473"


def random_trace(
    rng: np.random.Generator,
    steps: int,
    layers: tuple[int, ...],
    seqs: int,
    batch: int,
    k: int = 6,
    experts: int = 64,
) -> RoutingTrace:
    ids = np.argsort(rng.random((steps, len(layers), seqs, experts)), axis=-1)[..., :k]
    scores = -np.sort(-rng.random((steps, len(layers), seqs, k)), axis=-1) * 0.25
    tokens = rng.integers(0, 50_000, (steps, seqs))
    meta = TraceMeta(MODEL, RUN, EPOCH, "megatron", micro_batch_size=batch, provenance="test")
    return RoutingTrace(
        experts=ids.astype(np.int16),
        scores=scores.astype(np.float32),
        tokens=tokens.astype(np.int64),
        num_experts=experts,
        layer_ids=layers,
        positions=tuple(range(steps)),
        meta=meta,
    )


def assert_same_routing(got: RoutingTrace, want: RoutingTrace) -> None:
    np.testing.assert_array_equal(got.experts, want.experts)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.tokens, want.tokens)
    assert got.layer_ids == want.layer_ids and got.positions == want.positions


# -- round trips ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("score_dtype", "index_dtype"),
    [(torch.float32, torch.int64), (torch.bfloat16, torch.int16), (torch.float16, torch.int32)],
)
def test_round_trip_dtypes_and_shards(tmp_path: Path, score_dtype, index_dtype) -> None:
    trace = random_trace(np.random.default_rng(0), steps=12, layers=(2, 3, 5), seqs=12, batch=4)
    write_dump(trace, tmp_path, shard_prefix="1", score_dtype=score_dtype, index_dtype=index_dtype)
    got = load_trace(DumpSelection(tmp_path, seq_len=12, micro_batch_size=4))
    assert got.meta.shards == ("1-0", "1-1", "1-2")
    np.testing.assert_array_equal(got.experts, trace.experts)
    np.testing.assert_array_equal(got.tokens, trace.tokens)
    want_scores = torch.from_numpy(trace.scores).to(score_dtype).float().numpy()
    np.testing.assert_array_equal(got.scores, want_scores)
    assert got.experts.dtype == np.int16 and got.scores.dtype == np.float32
    assert got.tokens.dtype == np.int64


def test_trace_yaml_supplies_layout_facts_and_meta(tmp_path: Path) -> None:
    trace = random_trace(np.random.default_rng(1), steps=5, layers=(2, 9), seqs=6, batch=3)
    write_dump(trace, tmp_path)
    tf = read_trace_yaml(tmp_path)
    assert tf is not None and (tf.seq_len, tf.micro_batch_size, tf.k) == (5, 3, 6)
    got = open_trace(tmp_path)  # model/run/epoch/S/B all from trace.yaml
    assert_same_routing(got, trace)
    assert got.meta.seq_len == 5 and got.meta.micro_batch_size == 3
    assert got.meta.provenance == "test" and got.meta.source == str(tmp_path)
    assert got.meta.extra["tokens_known"] == "all"


def test_subsets_of_shards_positions_layers(tmp_path: Path) -> None:
    trace = random_trace(np.random.default_rng(2), steps=10, layers=(2, 3, 4, 5), seqs=9, batch=3)
    write_dump(trace, tmp_path)
    got = open_trace(tmp_path, shards=["0-2", "0-0"], layers=[5, 3], positions=[7, 0, 3])
    want = trace.select(steps=[7, 0, 3], layers=[5, 3], seqs=[6, 7, 8, 0, 1, 2])
    assert_same_routing(got, want)
    assert got.meta.shards == ("0-2", "0-0")


@settings(deadline=None, max_examples=15)
@given(
    batch=st.integers(1, 4),
    steps=st.integers(1, 7),
    num_shards=st.integers(1, 3),
    k=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(tmp_path_factory, batch, steps, num_shards, k, seed) -> None:
    root = tmp_path_factory.mktemp("rt")
    rng = np.random.default_rng(seed)
    trace = random_trace(rng, steps, (2, 4), batch * num_shards, batch, k=k, experts=8)
    write_dump(trace, root)
    positions = sorted(set(rng.integers(0, steps, size=3).tolist()))
    got = open_trace(root, positions=positions)
    assert_same_routing(got, trace.select(steps=positions))


# -- row layouts on hand-made files ----------------------------------------------------------------
def write_indexed_shard(root: Path, shard: str, rows: int, layers=(2,), experts: int = 64) -> None:
    """A shard whose row r has token id r and top-1 expert r % experts: rows are visible."""
    r = torch.arange(rows)
    save(root / f"samples/{MODEL}/{RUN}/{shard}.pt", r.clone())
    ids = torch.stack([r % experts, (r + 1) % experts], dim=1)
    scores = torch.tensor([[0.5, 0.25]]).repeat(rows, 1)
    for layer in layers:
        save(root / f"actives/{MODEL}/{RUN}/{EPOCH}/{layer}/{shard}.pt", (scores, ids))


def test_megatron_row_mapping(tmp_path: Path) -> None:
    batch, seq_len = 4, 6
    for shard in ("0-0", "0-1"):
        write_indexed_shard(tmp_path, shard, batch * seq_len, experts=64)
    got = load_trace(DumpSelection(tmp_path, seq_len=seq_len, micro_batch_size=batch))
    assert got.experts.shape == (seq_len, 1, 2 * batch, 2)
    for p in range(seq_len):
        for q in range(2 * batch):
            b = q % batch  # position within the shard's micro-batch
            assert got.experts[p, 0, q, 0] == p * batch + b  # actives row s*B + b
            assert got.tokens[p, q] == b * seq_len + p  # samples row b*S + s
    act, smp = megatron_rows(np.array([2]), batch, seq_len)
    assert act.tolist() == [[8, 9, 10, 11]] and smp.tolist() == [[2, 8, 14, 20]]


def test_seed_layout_reads_the_notebooks_rows(tmp_path: Path) -> None:
    rows = 32 * 512
    for shard in ("1-2", "1-3"):
        write_indexed_shard(tmp_path, shard, rows, layers=(2, 3), experts=20_000)
    got = load_trace(
        DumpSelection(
            tmp_path,
            shards=shard_range(1, 2, 2),
            positions=tuple(range(10)),
            layout="seed",
            num_experts=20_000,
        )
    )
    assert got.experts.shape == (10, 2, 64, 2) and got.meta.layout == "seed"
    for pos in range(10):
        notebook_rows = np.arange(pos, 32 * 512, 512)  # the notebook's selection, per shard
        want = np.concatenate([notebook_rows, notebook_rows])  # shard 1-2, then 1-3
        np.testing.assert_array_equal(got.tokens[pos], want)
        np.testing.assert_array_equal(got.experts[pos, 1, :, 0], want)
    np.testing.assert_array_equal(seed_rows(np.array([3]), 512, 32)[0], np.arange(3, 16384, 512))


def test_shard_range_matches_the_seed() -> None:
    assert shard_range(1, 2, 2) == ("1-2", "1-3")
    assert shard_range("0", 0, 3) == ("0-0", "0-1", "0-2")


def test_dense_format_goes_through_select_topk(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    batch, seq_len, experts = 2, 5, 16
    dense = torch.softmax(torch.from_numpy(rng.normal(size=(batch * seq_len, experts))), dim=1)
    dense[0, :4] = 0.125  # a tie that the notebook breaks by argsort order
    dense = dense.float()
    save(tmp_path / f"samples/{MODEL}/{RUN}/0-0.pt", torch.arange(batch * seq_len))
    save(tmp_path / f"actives/{MODEL}/{RUN}/{EPOCH}/2/0-0.pt", dense)
    got = open_trace(tmp_path, num_experts=experts, k=3, seq_len=seq_len, micro_batch_size=batch)
    dense_np = dense.numpy()
    ids = np.broadcast_to(np.arange(experts, dtype=np.int16), dense_np.shape)
    want = select_topk(ids, dense_np, 3, experts)
    rows = megatron_rows(np.arange(seq_len), batch, seq_len)[0]
    np.testing.assert_array_equal(got.experts[:, 0], want[rows])
    np.testing.assert_array_equal(
        got.scores[:, 0], np.take_along_axis(dense_np, want.astype(np.intp), axis=1)[rows]
    )
    assert got.k == 3


# -- sources: open_trace, CLI args ----------------------------------------------------------------
def test_open_trace_detects_a_raw_dump_and_its_only_model(tmp_path: Path) -> None:
    write_indexed_shard(tmp_path, "0-0", 8 * 2048)  # FLAME-MoE defaults: B=8, S=2048
    got = open_trace(tmp_path, positions=[0, 1])
    assert (got.meta.model, got.meta.runid, got.meta.epoch) == (MODEL, RUN, EPOCH)
    assert got.num_experts == 64 and got.num_seqs == 8 and got.meta.seq_len == 2048


def test_open_trace_asks_to_choose_between_runs(tmp_path: Path) -> None:
    write_indexed_shard(tmp_path, "0-0", 8 * 2048)
    (tmp_path / f"samples/{MODEL}/99").mkdir()
    with pytest.raises(UserError, match="--runid"):
        open_trace(tmp_path)


def _args(argv: list[str], **kwargs) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_trace_selection_args(parser, **kwargs)
    return parser.parse_args(argv)


def test_trace_args_seed_style_and_notebook_defaults(tmp_path: Path) -> None:
    for shard in ("1-2", "1-3", "1-4"):
        write_indexed_shard(tmp_path, shard, 32 * 512, layers=tuple(range(2, 10)))
    args = _args(
        [str(tmp_path), "--num-experts", "20000"], layout_default="seed", notebook_defaults=True
    )
    got = trace_from_args(args)
    assert got.meta.shards == ("1-2", "1-3") and got.positions == tuple(range(10))
    assert got.meta.layout == "seed" and got.num_seqs == 64 and got.layer_ids == tuple(range(2, 10))
    args = _args(
        [
            str(tmp_path),
            "--layout",
            "seed",
            "--shard-prefix",
            "1",
            "--first-shard",
            "3",
            "--num-shards",
            "2",
            "--positions",
            "5,7",
            "--layers",
            "3",
            "--num-experts",
            "20000",
        ]
    )
    got = trace_from_args(args)
    assert got.meta.shards == ("1-3", "1-4") and got.positions == (5, 7) and got.layer_ids == (3,)
    args = _args([str(tmp_path), "--shards", "1-2", "--first-shard", "2"])
    with pytest.raises(UserError, match="either --shards"):
        trace_from_args(args)


def test_trace_file_round_trip(tmp_path: Path) -> None:
    tf = TraceFile(
        MODEL,
        RUN,
        EPOCH,
        seq_len=4,
        micro_batch_size=2,
        num_experts=64,
        k=6,
        synthetic=True,
        synthetic_layers=(8, 9),
        tokens_known="none",
        notes="n",
    )
    write_trace_yaml(tmp_path, tf)
    assert read_trace_yaml(tmp_path) == tf
    assert read_trace_yaml(tmp_path / "nowhere") is None


# -- real data ------------------------------------------------------------------------------------
@needs_cuts
def test_prefill_cut_is_eight_sequences_in_true_order() -> None:
    trace = open_trace(CUTS / "prefill")
    assert trace.experts.shape == (256, 8, 8, 6) and trace.meta.layout == "megatron"
    raw = torch.load(next((CUTS / "prefill/Layer_4").glob("*.pt")), weights_only=True)
    row = 37 * 8 + 5  # sequence 5 at position 37
    np.testing.assert_array_equal(trace.experts[37, 2, 5], raw["indices"][row].numpy())
    np.testing.assert_array_equal(trace.tokens[:, 0], raw["samples"][:256].numpy())
    assert (trace.tokens[:, 1:] == -1).all()


@needs_cuts
def test_decoder_cuts_are_the_notebooks_seed_rows() -> None:
    trace = open_trace(CUTS / "decoder")
    assert trace.experts.shape == (10, 8, 64, 6) and trace.meta.layout == "seed"
    assert trace.positions == tuple(range(10)) and trace.meta.shards == ("0-0", "0-1")
    raw = torch.load(next((CUTS / "decoder/3rd/Layer_9").glob("*.pt")), weights_only=True)
    np.testing.assert_array_equal(trace.experts[2, 7], raw["indices"].numpy())
    np.testing.assert_array_equal(trace.tokens[2], raw["samples"].numpy())
    sub = open_trace(CUTS / "decoder", positions=[2], layers=[9])
    np.testing.assert_array_equal(sub.experts[0, 0], raw["indices"].numpy())


@needs_cuts
def test_both_row_mappings_agree_on_the_real_rows_they_share() -> None:
    """Decoder rows p + 512 j of shard 0-0 with j < 4 are also prefill rows (0..2047)."""
    decoder = open_trace(CUTS / "decoder")
    prefill = open_trace(CUTS / "prefill")
    rows = seed_rows(np.arange(10), 512, 32)[:, :4]  # [position, j]: raw rows below 2048
    act, _smp = megatron_rows(np.arange(256), 8, 2048)  # [step, seq] -> raw row
    step, seq = np.divmod(rows, 8)  # raw row r is sequence r % 8 at step r // 8
    np.testing.assert_array_equal(act[step, seq], rows)
    for p in range(10):
        np.testing.assert_array_equal(
            decoder.experts[p, :, :4], prefill.experts[step[p], :, seq[p]].transpose(1, 0, 2)
        )
    # The samples row of those rows is the same raw row (the notebook's pairing).
    np.testing.assert_array_equal(decoder.tokens[:, 0], prefill.tokens[:10, 0])


@needs_cuts
def test_embedded_trace_equals_the_prefill_cut() -> None:
    embedded = open_trace("embedded")
    assert embedded.experts.shape == (256, 8, 8, 6) and embedded.num_experts == 64
    assert "FLAME-MoE-Traces" in embedded.meta.provenance
    assert_same_routing(embedded, open_trace(CUTS / "prefill"))


def test_embedded_trace_loads_without_the_cuts() -> None:
    trace = open_trace("embedded:flame-moe-290m-real")
    assert (trace.num_steps, trace.num_layers, trace.num_seqs, trace.k) == (256, 8, 8, 6)
    assert trace.layer_ids == tuple(range(2, 10)) and trace.meta.extra["tokens_known"] == (
        "sequence 0 only"
    )
    with pytest.raises(UserError, match="embedded"):
        open_trace("embedded:no-such-trace")


def test_embedded_names_list_only_routing_traces(tmp_path: Path, monkeypatch) -> None:
    """traces/ also ships cost tables (neupims-decoder-bs16/): errors list only what
    ``embedded:NAME`` can open, and opening a non-trace directory says it is not one."""
    import sim.trace.open as trace_open

    (tmp_path / "with-yaml").mkdir()
    (tmp_path / "with-yaml" / "trace.yaml").write_text("model: m\nrunid: 1\nepoch: 2\n")
    for part in ("samples", "actives"):
        (tmp_path / "dump" / part).mkdir(parents=True)
    (tmp_path / "cost-tables" / "1st").mkdir(parents=True)
    monkeypatch.setattr(trace_open, "traces_dir", lambda: tmp_path)
    assert trace_open.embedded_trace_names() == ("dump", "with-yaml")
    with pytest.raises(UserError, match=r"have \['dump', 'with-yaml'\]\)$"):
        open_trace("embedded:nope")
    with pytest.raises(UserError, match=r"routing trace directory .*cost-tables/ without them"):
        open_trace("embedded:cost-tables")


def test_shipped_cost_tables_are_not_an_embedded_trace() -> None:
    from sim.trace.open import embedded_trace_names

    names = embedded_trace_names()
    assert "flame-moe-290m-real" in names and "neupims-decoder-bs16" not in names
    with pytest.raises(UserError, match=r"traces/README\.md"):
        open_trace("embedded:neupims-decoder-bs16")


# -- import-cuts ----------------------------------------------------------------------------------
def _write_prefill_cut(root: Path, rng: np.random.Generator, rows: int = 32) -> None:
    for layer in (2, 3):
        ids = np.argsort(rng.random((rows, 64)), axis=1)[:, :6]
        scores = -np.sort(-rng.random((rows, 6)), axis=1) * 0.2
        cut = {
            "model": MODEL,
            "runid": 31066,
            "epoch": 5473,
            "layer": layer,
            "shards": ["0-0.pt"],
            "samples": torch.arange(rows) + 100,
            "scores": torch.from_numpy(scores).float(),
            "indices": torch.from_numpy(ids),
        }
        save(root / f"Layer_{layer}/cut_layer{layer}.pt", cut)


def test_import_cuts_writes_a_trace_directory(tmp_path: Path, capsys) -> None:
    from sim.cli import main

    _write_prefill_cut(tmp_path / "cut", np.random.default_rng(5))
    out = tmp_path / "out"
    assert main(["trace", "import-cuts", str(tmp_path / "cut"), "--out", str(out)]) == 0
    got, want = open_trace(out), open_trace(tmp_path / "cut")
    assert_same_routing(got, want)
    assert got.experts.shape == (4, 2, 8, 6) and (got.tokens[:, 0] == np.arange(100, 104)).all()
    assert read_trace_yaml(out).tokens_known == "sequence 0 only"
    capsys.readouterr()
    assert main(["trace", "import-cuts", str(tmp_path / "cut"), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err


@needs_cuts
def test_embedded_trace_is_rebuilt_byte_for_byte(tmp_path: Path) -> None:
    from sim.commands.trace_import_cuts import import_cuts
    from sim.trace.open import embedded_root

    import_cuts(CUTS / "prefill", tmp_path / "rebuilt")
    shipped = embedded_root("embedded")
    files = sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    files.remove(Path("README.md"))
    rebuilt = sorted(
        p.relative_to(tmp_path / "rebuilt")
        for p in (tmp_path / "rebuilt").rglob("*")
        if p.is_file()
    )
    assert files == rebuilt
    for rel in files:
        assert (shipped / rel).read_bytes() == (tmp_path / "rebuilt" / rel).read_bytes(), rel
