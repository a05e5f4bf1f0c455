"""Importers: parquet (FLAME-MoE-Traces layout), numpy and JSON lines round-trip via write_dump."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.cli import main
from sim.errors import UserError
from sim.trace.importers import ImportLabels, read_jsonl, trace_from_rows
from sim.trace.open import open_trace
from sim.trace.synth import SynthConfig, generate


def _routing(tokens: int, layers: int, k: int, experts: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.argsort(rng.random((tokens, layers, experts)), axis=-1)[..., :k]
    weights = np.sort(rng.random((tokens, layers, k)).astype(np.float32), axis=-1)[..., ::-1]
    return ids.astype(np.int64), np.ascontiguousarray(weights)


def test_numpy_step_major_round_trip(tmp_path: Path) -> None:
    ids, w = _routing(tokens=12, layers=2, k=3, experts=16)
    tok = np.arange(100, 112)
    np.savez(tmp_path / "r.npz", expert_ids=ids, gate_weights=w, token_ids=tok)
    out = tmp_path / "out"
    rc = main(
        [
            "trace",
            "import",
            "numpy",
            str(tmp_path / "r.npz"),
            "--out",
            str(out),
            "--num-seqs",
            "3",
            "--layers",
            "2-3",
            "--num-experts",
            "16",
        ]
    )
    assert rc == 0
    trace = open_trace(out)
    assert (trace.num_steps, trace.num_layers, trace.num_seqs, trace.k) == (4, 2, 3, 3)
    assert trace.layer_ids == (2, 3) and trace.num_experts == 16
    # token t = step * seqs + seq
    t = 2 * 3 + 1
    assert trace.experts[2, 1, 1].tolist() == ids[t, 1].tolist()
    np.testing.assert_allclose(trace.scores[2, 1, 1], w[t, 1])
    assert trace.tokens[2, 1] == 100 + t


def test_numpy_seq_major_and_unsorted_weights(tmp_path: Path) -> None:
    ids, w = _routing(tokens=8, layers=1, k=2, experts=8, seed=1)
    w = w[..., ::-1].copy()  # ascending: the importer must sort rows by weight, descending
    labels = ImportLabels(model="m", runid="r", epoch="0", num_seqs=2, order="seq-major")
    trace = trace_from_rows("x", ids, w, None, (5,), labels)
    t = 1 * 4 + 3  # seq 1, step 3
    assert trace.experts[3, 0, 1].tolist() == ids[t, 0, ::-1].tolist()
    assert np.all(np.diff(trace.scores, axis=-1) <= 0)
    assert (trace.tokens == -1).all()


def test_numpy_without_weights_keeps_rank_order(tmp_path: Path) -> None:
    ids, _ = _routing(tokens=4, layers=1, k=3, experts=8)
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "o"
    assert main(["trace", "import", "numpy", str(tmp_path / "ids.npy"), "--out", str(out)]) == 0
    trace = open_trace(out)
    assert trace.experts[:, 0, 0].tolist() == ids[:, 0].tolist()
    assert trace.topk(1)[:, 0, 0, 0].tolist() == ids[:, 0, 0].tolist()


def _write_jsonl(path: Path, ids: np.ndarray, w: np.ndarray | None, token_ids=None) -> None:
    lines = []
    for t in range(ids.shape[0]):
        for li in range(ids.shape[1]):
            rec = {"layer": li + 2, "token": t, "expert_ids": ids[t, li].tolist()}
            if w is not None:
                rec["gate_weights"] = w[t, li].tolist()
            if token_ids is not None:
                rec["token_id"] = int(token_ids[t])
            lines.append(json.dumps(rec))
    lines.reverse()  # record order must not matter
    path.write_text("\n".join(lines) + "\n")


def test_jsonl_round_trip(tmp_path: Path) -> None:
    ids, w = _routing(tokens=6, layers=3, k=2, experts=8, seed=3)
    _write_jsonl(tmp_path / "r.jsonl", ids, w, token_ids=np.arange(6) * 7)
    out = tmp_path / "o"
    assert (
        main(
            [
                "trace",
                "import",
                "jsonl",
                str(tmp_path / "r.jsonl"),
                "--out",
                str(out),
                "--num-seqs",
                "2",
                "--num-experts",
                "8",
            ]
        )
        == 0
    )
    trace = open_trace(out)
    assert trace.layer_ids == (2, 3, 4)
    assert trace.experts[1, 2, 0].tolist() == ids[2, 2].tolist()  # t = 1*2 + 0
    assert trace.tokens[1, 1] == 3 * 7


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([{"layer": 2, "token": 0}], "expected field 'expert_ids'"),
        (
            [
                {"layer": 2, "token": 0, "expert_ids": [1, 2]},
                {"layer": 2, "token": 0, "expert_ids": [1, 3]},
            ],
            r"bad\.jsonl:2: .*layer 2 token 0 again \(first on line 1\)",
        ),
        (
            [{"layer": 2, "token": 1, "expert_ids": [1, 2]}],
            r"record for every \(layer, token\) of tokens 0..1",
        ),
        (
            [{"layer": 2, "token": 0, "expert_ids": [1, 2], "gate_weights": [0.5]}],
            r"bad\.jsonl:1: 'gate_weights': expected 2 numbers",
        ),
        ([{"layer": 2, "token": 0, "expert_ids": [1, 1]}], r"bad\.jsonl:1: .*distinct experts"),
        (
            [
                {"layer": 2, "token": 0, "expert_ids": [1, 2]},
                {"layer": 3, "token": 0, "expert_ids": [1, 2, 3]},
            ],
            r"bad\.jsonl:2: expected 2 expert ids \(as on line 1\), got 3",
        ),
        (
            [
                {"layer": 2, "token": 0, "expert_ids": [1, 2], "gate_weights": [0.6, 0.4]},
                {"layer": 3, "token": 0, "expert_ids": [1, 2]},
            ],
            r"bad\.jsonl:2: expected 'gate_weights' on every line or on none, got none here",
        ),
    ],
)
def test_jsonl_bad_input(tmp_path: Path, records, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(UserError, match=message):
        experts, weights, tok, layers = read_jsonl(path)
        trace_from_rows(
            str(path), experts, weights, tok, layers, ImportLabels(model="m", runid="r", epoch="0")
        )


def test_jsonl_not_json_is_one_line_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n")
    rc = main(["trace", "import", "jsonl", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "bad.jsonl:1: expected a JSON object" in err and err.count("\n") == 1


def test_numpy_bad_inputs(tmp_path: Path, capsys) -> None:
    def import_numpy(name: str, *flags: str) -> str:
        """Run `trace import numpy` on tmp_path/name; it must fail with exit 2: its stderr."""
        argv = ["trace", "import", "numpy", str(tmp_path / name), "--out", str(tmp_path / "o")]
        assert main([*argv, *flags]) == 2
        return capsys.readouterr().err

    np.save(tmp_path / "flat.npy", np.zeros((4, 6), dtype=np.int64))
    assert "expected expert ids of shape [tokens, layers, k]" in import_numpy("flat.npy")
    ids, _ = _routing(tokens=5, layers=1, k=2, experts=8)
    np.save(tmp_path / "ids.npy", ids)
    assert "multiple of --num-seqs 2" in import_numpy("ids.npy", "--num-seqs", "2")
    assert "expected expert ids in [0, 4)" in import_numpy("ids.npy", "--num-experts", "4")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    assert "expected a readable .npy/.npz array" in import_numpy("junk.npy")


def _write_flame_parquet(root: Path, trace, b: int, rows_per_group: int) -> None:
    """Write ``trace`` as the release does: Megatron rows of each shard, concatenated."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n_seqs = trace.num_seqs
    shards = n_seqs // b
    samples = np.concatenate(
        [trace.tokens[:, i * b : (i + 1) * b].T.reshape(-1) for i in range(shards)]
    )
    (root / "samples").mkdir(parents=True)
    half = samples.size // 2  # two sample files: their rows concatenate
    for n, part in enumerate((samples[:half], samples[half:])):
        pq.write_table(
            pa.table({"token_id": part.astype(np.int32)}), root / "samples" / f"{n:03d}.parquet"
        )
    it = root / "actives" / "iter_0540"
    it.mkdir(parents=True)
    for li, layer in enumerate(trace.layer_ids):
        ex = np.concatenate(
            [trace.experts[:, li, i * b : (i + 1) * b].reshape(-1, trace.k) for i in range(shards)]
        )
        sc = np.concatenate(
            [trace.scores[:, li, i * b : (i + 1) * b].reshape(-1, trace.k) for i in range(shards)]
        )
        table = pa.table(
            {
                "scores": pa.array(list(sc.astype(np.float32)), type=pa.list_(pa.float32())),
                "indices": pa.array(list(ex.astype(np.int16)), type=pa.list_(pa.int16())),
            }
        )
        pq.write_table(table, it / f"layer_{layer:02d}.parquet", row_group_size=rows_per_group)


def test_parquet_release_round_trip(tmp_path: Path) -> None:
    src = generate(
        SynthConfig(num_seqs=6, seq_len=5, layer_ids=(2, 3, 4), num_experts=16, topk=3, vocab=50)
    )
    root = tmp_path / "flame-moe-290m"
    _write_flame_parquet(root, src, b=2, rows_per_group=7)
    out = tmp_path / "o"
    rc = main(
        [
            "trace",
            "import",
            "parquet",
            str(root),
            "--out",
            str(out),
            "--micro-batch-size",
            "2",
            "--seq-len",
            "5",
            "--first-shard",
            "1",
            "--num-shards",
            "2",
            "--layers",
            "2,4",
            "--num-experts",
            "16",
        ]
    )
    assert rc == 0
    trace = open_trace(out)
    assert trace.meta.model == "flame-moe-290m" and str(trace.meta.epoch) == "540"
    assert trace.layer_ids == (2, 4)
    want = src.select(seqs=slice(2, 6), layers=[2, 4])
    assert np.array_equal(trace.experts, want.experts)
    np.testing.assert_allclose(trace.scores, want.scores)
    assert np.array_equal(trace.tokens, want.tokens)


def test_parquet_errors(tmp_path: Path, capsys) -> None:
    src = generate(
        SynthConfig(num_seqs=2, seq_len=4, layer_ids=(2,), num_experts=8, topk=2, vocab=20)
    )
    root = tmp_path / "m"
    _write_flame_parquet(root, src, b=2, rows_per_group=3)
    base = [
        "trace",
        "import",
        "parquet",
        str(root),
        "--out",
        str(tmp_path / "o"),
        "--micro-batch-size",
        "2",
        "--seq-len",
        "4",
    ]
    assert main([*base, "--num-shards", "2"]) == 2
    assert "expected rows 0..15, got only 8 rows" in capsys.readouterr().err
    assert main([*base, "--iteration", "7"]) == 2
    assert "iter_0007: expected an iteration directory" in capsys.readouterr().err
    assert main([*base, "--layers", "3"]) == 2
    assert "expected layer files for layers [3]" in capsys.readouterr().err
    assert main(["trace", "import", "parquet", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "expected a FLAME-MoE-Traces model directory" in capsys.readouterr().err


def test_parquet_without_pyarrow_is_a_user_error(monkeypatch, tmp_path: Path) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    from sim.trace import importers

    with pytest.raises(UserError, match="expected pyarrow to be installed"):
        importers.read_flame_parquet(
            tmp_path,
            iteration=None,
            layers=None,
            first_shard=0,
            num_shards=1,
            micro_batch_size=8,
            seq_len=4,
        )
