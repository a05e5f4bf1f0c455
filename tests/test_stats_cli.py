"""`moesim trace stats` as a command: layouts, outputs, meta.json, errors, options."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from seed_notebook import dense_rows_counts, tricky_rows, write_raw_shard

from sim.cli import main

B, S = 8, 16  # a small Megatron micro-batch: T = B*S rows per shard


def _write_megatron_shards(root: Path, shards=("1-2", "1-3"), layers=(2, 3)) -> dict:
    rng = np.random.default_rng(7)
    written = {}
    for shard in shards:
        actives = {layer: tricky_rows(rng, B * S, 6) for layer in layers}
        write_raw_shard(root, shard, rng.integers(0, 50_000, B * S), actives)
        written[shard] = actives
    return written


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _stats(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    out = tmp_path / "out"
    args = ["trace", "stats", str(tmp_path / "dump"), "--seq-len", str(S), "--out", str(out)]
    args += ["--layers", "2-3"]  # the notebook's default is 2-9
    try:
        return main([*args, *extra]), out
    except SystemExit as exc:  # a flag out of its range: argparse exits 2 with one line
        return int(exc.code), out


def test_megatron_layout_counts_true_decode_steps(tmp_path, capsys):
    shards = _write_megatron_shards(tmp_path / "dump")
    rc, out = _stats(tmp_path, "--positions", "0-15", "--micro-batch-size", "8")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "layout: megatron" in printed
    assert "docs/trace-format.md" in printed and "DESIGN.md" not in printed  # a shipped page
    gating = _rows(out / "gating.csv")
    assert list(gating[0]) == [
        "position",
        "layer",
        "topk",
        "expert_activ",
        "expert_gpu",
        "expert_md",
        "h",
    ]
    assert len(gating) == 16 * 2 * 3
    counts = _rows(out / "counts.csv")
    assert list(counts[0]) == ["position", "layer", "topk", "expert", "tokens"]
    for p in (0, 7, 15):
        for layer in (2, 3):
            # decode step p of a shard is actives rows p*B .. p*B+B-1 (position-major)
            rows = slice(p * B, (p + 1) * B)
            ids = np.concatenate([shards[s][layer][0][rows] for s in ("1-2", "1-3")])
            sc = np.concatenate([shards[s][layer][1][rows] for s in ("1-2", "1-3")])
            ref = dense_rows_counts(ids, sc, (1, 2, 6))
            for k in (1, 2, 6):
                mine = {
                    int(r["expert"]): int(r["tokens"])
                    for r in counts
                    if (r["position"], r["layer"], r["topk"]) == (str(p), str(layer), str(k))
                }
                assert mine == {e: c for e, c in ref[k].items() if c > 0}


def test_meta_json_records_what_was_computed(tmp_path, capsys):
    _write_megatron_shards(tmp_path / "dump")
    rc, out = _stats(tmp_path, "--layout", "seed", "--positions", "all", "--seq-len", "4")
    assert rc == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["layout"] == "seed"
    assert meta["shards"] == ["1-2", "1-3"]  # the notebook's default selection
    assert meta["selection"]["positions"] == [0, 1, 2, 3]
    assert meta["selection"]["layers"] == [2, 3] and meta["selection"]["topk"] == [1, 2, 6]
    assert meta["selection"]["tokens_per_cell"] == 64
    assert meta["constants"] == {"bw_pcie": 32, "bw_md": 512, "alpha": 1.0, "rounding": "nearest"}
    assert meta["numpy_version"] == np.__version__
    assert meta["synthetic_layers"] == []
    assert meta["outputs"]["gating.csv"] == 4 * 2 * 3
    assert "layout: seed" in capsys.readouterr().out
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic writes leave no temporary files


def test_counts_sum_to_tokens_times_k(tmp_path):
    _write_megatron_shards(tmp_path / "dump")
    rc, out = _stats(tmp_path, "--topk", "1,3,9", "--positions", "0-3")
    assert rc == 0
    totals: dict[tuple[str, str, str], int] = {}
    for r in _rows(out / "counts.csv"):
        key = (r["position"], r["layer"], r["topk"])
        totals[key] = totals.get(key, 0) + int(r["tokens"])
    assert len(totals) == 4 * 2 * 3
    assert all(total == 2 * B * int(k) for (_, _, k), total in totals.items())


def test_constants_and_rounding_options(tmp_path):
    _write_megatron_shards(tmp_path / "dump")
    rc, out = _stats(
        tmp_path, "--positions", "0", "--bw-pcie", "1", "--bw-md", "1", "--alpha", "0.5",
        "--rounding", "ceil",
    )  # fmt: skip
    assert rc == 0
    for r in _rows(out / "gating.csv"):
        activ, gpu = int(r["expert_activ"]), int(r["expert_gpu"])
        assert gpu == -(-activ // 2) and int(r["expert_md"]) == activ - gpu
        assert int(r["h"]) == int(0.5 * gpu)


def test_extend_layers_marks_copies_synthetic(tmp_path, capsys):
    _write_megatron_shards(tmp_path / "dump", layers=(2, 3))
    rc, out = _stats(
        tmp_path, "--positions", "0-1", "--extend-layers", "4-6", "--extend-from", "2-3"
    )
    assert rc == 0
    assert "synthetic (copied) layers: [4, 5, 6]" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["synthetic_layers"] == [4, 5, 6]
    assert meta["layer_copies"] == {"4": 2, "5": 3, "6": 2}
    assert meta["trace"]["synthetic_layers"] == [4, 5, 6]
    gating = {(r["position"], r["layer"], r["topk"]): r for r in _rows(out / "gating.csv")}
    for (pos, layer, k), row in gating.items():
        if layer in ("4", "6"):
            assert row["expert_activ"] == gating[(pos, "2", k)]["expert_activ"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--topk", "0"], "--topk"),
        (["--topk", "65"], "--topk"),
        (["--bw-pcie", "-1"], "--bw-pcie"),
        (["--layers", "2-4"], "4"),
        (["--extend-layers", "3", "--extend-from", "2"], "--to"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, extra, message):
    _write_megatron_shards(tmp_path / "dump")
    rc, out = _stats(tmp_path, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (out / "gating.csv").exists()


def test_missing_shard_is_an_error_not_a_silent_stop(tmp_path, capsys):
    _write_megatron_shards(tmp_path / "dump", shards=("1-2",))
    rc, out = _stats(tmp_path)  # the default selection wants 1-2 and 1-3
    err = capsys.readouterr().err
    assert rc == 2 and "1-3.pt" in err
    assert not out.exists()
