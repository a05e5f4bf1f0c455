"""The seed's layer extension (cell 2) on a trace and on a notebook tree."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from seed_notebook import run_cell1, run_cell2, tricky_rows, write_raw_shard

from sim.cli import main
from sim.errors import UserError
from sim.stats.counts import count_cells
from sim.stats.extend import extend_layers, extend_notebook_tree, layer_copies
from sim.trace.routing import RoutingTrace, TraceMeta


def test_layer_copies_follow_the_notebook():
    copies = layer_copies(tuple(range(2, 10)), tuple(range(10, 27)))
    notebook = {t: list(range(2, 10))[(t - 10) % 8] for t in range(10, 27)}
    assert copies == notebook
    assert (copies[10], copies[17], copies[18], copies[26]) == (2, 9, 2, 2)


def _trace(layers=(2, 3, 4)) -> RoutingTrace:
    rng = np.random.default_rng(0)
    ids, sc = tricky_rows(rng, 5 * len(layers) * 12, 6)
    shape = (5, len(layers), 12, 6)
    return RoutingTrace(
        experts=ids.reshape(shape).astype(np.int16),
        scores=sc.reshape(shape),
        tokens=rng.integers(0, 100, (5, 12)),
        num_experts=64,
        layer_ids=tuple(layers),
        positions=tuple(range(5)),
        meta=TraceMeta(model="m", runid=1, epoch=2, layout="seed", provenance="test rows"),
    )


def test_extend_layers_copies_and_marks_synthetic():
    trace = _trace()
    ext = extend_layers(trace, (2, 3, 4), tuple(range(5, 12)))
    assert ext.layer_ids == tuple(range(2, 12))
    assert ext.meta.synthetic_layers == tuple(range(5, 12))
    assert ext.meta.extra["layer_copies"] == {5: 2, 6: 3, 7: 4, 8: 2, 9: 3, 10: 4, 11: 2}
    assert "copied from 2-4" in ext.meta.provenance and "test rows" in ext.meta.provenance
    for target, source in ext.meta.extra["layer_copies"].items():
        t, s = ext.layer_ids.index(target), trace.layer_ids.index(source)
        assert np.array_equal(ext.experts[:, t], trace.experts[:, s])
        assert np.array_equal(ext.scores[:, t], trace.scores[:, s])
    counts = count_cells(ext, (6,)).counts
    assert np.array_equal(counts[0, :, ext.layer_ids.index(8)], counts[0, :, 0])
    assert trace.layer_ids == (2, 3, 4)  # the input is untouched
    assert "extended layers" in ext.describe()
    again = extend_layers(ext, (2,), (12,))
    assert again.meta.synthetic_layers == tuple(range(5, 13))
    assert again.meta.extra["layer_copies"][12] == 2 and again.meta.extra["layer_copies"][5] == 2


@pytest.mark.parametrize(
    ("sources", "targets"),
    [((2, 9), (10,)), ((2, 3), (4,)), ((2, 3), (3, 5)), ((), (5,)), ((2,), ())],
)
def test_extend_layers_rejects_bad_layers(sources, targets):
    with pytest.raises(UserError):
        extend_layers(_trace(), sources, targets)


# -- the tree ---------------------------------------------------------------------------------------
def _notebook_tree(tmp_path: Path) -> Path:
    """The notebook's own tree (re-implemented) for 2 positions x layers 2-3."""
    rng = np.random.default_rng(5)
    for shard in ("1-2", "1-3"):
        actives = {layer: tricky_rows(rng, 32 * 4, 6) for layer in (2, 3)}
        write_raw_shard(tmp_path / "dump", shard, rng.integers(0, 9, 32 * 4), actives)
    tree = tmp_path / "tree"
    run_cell1(tmp_path / "dump", tree, positions=range(2), layers=range(2, 4), sequence_length=4)
    return tree


def test_tree_extension_equals_the_notebooks_except_marked_fixes(tmp_path):
    tree = _notebook_tree(tmp_path)
    reference = tmp_path / "reference"
    mine = tmp_path / "mine"
    for copy in (reference, mine):
        shutil.copytree(tree, copy)
    run_cell2(reference, source_layers=range(2, 4), target_layers=range(10, 15))
    done = extend_notebook_tree(mine, (2, 3), tuple(range(10, 15)))
    assert done.positions == ("1st", "2nd") and done.copies[14] == 2

    theirs = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    ours = sorted(p.relative_to(mine) for p in mine.rglob("*") if p.is_file())
    assert ours == sorted([*theirs, Path("extended_layers.json")])
    for rel in theirs:
        a, b = reference / rel, mine / rel
        target = int(re.search(r"Layer_(\d+)", str(rel)).group(1))
        if rel.suffix == ".pt":
            da, db = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
            if target >= 10:
                assert db.pop("copied_from_layer") == (2 if target % 2 == 0 else 3)
            assert da.keys() == db.keys() and db["layer"] == da["layer"] == target
            assert all(torch.equal(da[k], db[k]) for k in ("samples", "scores", "indices"))
        elif rel.name.endswith(".csv") and "_stats" not in rel.name and target >= 10:
            # The one intended difference: layer_id holds the real layer (the notebook kept 0/2).
            ta, tb = a.read_bytes().split(b"\r\n"), b.read_bytes().split(b"\r\n")
            assert ta[0] == tb[0] and len(ta) == len(tb)
            for la, lb in zip(ta[1:-1], tb[1:-1]):
                assert lb.split(b",", 1)[1] == la.split(b",", 1)[1]
                assert lb.split(b",", 1)[0] == str(target).encode()
        else:
            assert a.read_bytes() == b.read_bytes(), rel
    manifest = json.loads((mine / "extended_layers.json").read_text())
    assert manifest["synthetic_layers"] == [10, 11, 12, 13, 14]
    assert manifest["copied_from"] == {"10": 2, "11": 3, "12": 2, "13": 3, "14": 2}


def test_tree_extension_refuses_to_overwrite_and_missing_sources(tmp_path):
    tree = _notebook_tree(tmp_path)
    extend_notebook_tree(tree, (2, 3), (10,))
    with pytest.raises(UserError, match="Layer_10"):
        extend_notebook_tree(tree, (2, 3), (10,))
    extend_notebook_tree(tree, (2, 3), (10,), overwrite=True)
    with pytest.raises(UserError, match="Layer_9"):
        extend_notebook_tree(tree, (9,), (20,))
    with pytest.raises(UserError, match="position folders"):
        extend_notebook_tree(tmp_path / "dump", (2,), (20,))


def test_stats_of_an_extended_trace_equal_the_extended_tree(tmp_path, capsys):
    """`trace stats --extend-layers --notebook-tree` and `trace extend-layers` on the plain tree
    write the same text files for the copied layers."""
    rng = np.random.default_rng(9)
    for shard in ("1-2", "1-3"):
        actives = {layer: tricky_rows(rng, 32 * 4, 6) for layer in (2, 3)}
        write_raw_shard(tmp_path / "dump", shard, rng.integers(0, 9, 32 * 4), actives)
    common = ["trace", "stats", str(tmp_path / "dump"), "--layout", "seed", "--seq-len", "4",
              "--layers", "2-3", "--positions", "0-1", "--notebook-tree"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a"), "--extend-layers", "10-12",
                 "--extend-from", "2-3"]) == 0  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    assert (
        main(["trace", "extend-layers", str(tmp_path / "b"), "--from", "2-3", "--to", "10-12"]) == 0
    )
    assert "10<-2, 11<-3, 12<-2" in capsys.readouterr().out
    a_files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*_layer1*"))
    assert len(a_files) == 2 * 3 * 9
    for rel in a_files:
        if rel.suffix != ".pt":
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    for name in ("a", "b"):
        manifest = json.loads((tmp_path / name / "extended_layers.json").read_text())
        assert manifest["copied_from"] == {"10": 2, "11": 3, "12": 2}
