"""``moesim trace info``: inventory of a dump, its inconsistencies, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pt_files import save
from shared_data import CUTS

from sim.cli import main

MODEL, RUN = "flame-moe-290m", "31066"


def make_dump(root: Path, rows: int = 8, epochs=("540", "5473"), shards=("0-0", "0-1", "1-0")):
    for shard in shards:
        save(root / f"samples/{MODEL}/{RUN}/{shard}.pt", torch.arange(rows))
        for epoch in epochs:
            for layer in (2, 3, 4):
                ids = torch.stack([torch.arange(rows) % 64, (torch.arange(rows) + 1) % 64], 1)
                scores = torch.full((rows, 2), 0.3, dtype=torch.bfloat16)
                save(root / f"actives/{MODEL}/{RUN}/{epoch}/{layer}/{shard}.pt", (scores, ids))


def info_json(root: Path, capsys, *extra: str) -> dict:
    assert main(["trace", "info", str(root), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_inventory_lists_runs_epochs_layers_shards(tmp_path: Path, capsys) -> None:
    make_dump(tmp_path)
    info = info_json(tmp_path, capsys, "--seq-len", "4", "--micro-batch-size", "2")
    (run,) = info["runs"]
    assert (run["model"], run["runid"], run["shards"]) == (MODEL, RUN, ["0-0", "0-1", "1-0"])
    assert [e["epoch"] for e in run["epochs"]] == ["540", "5473"]
    epoch = run["epochs"][1]
    assert epoch["layers"] == [2, 3, 4] and epoch["k"] == [2] and epoch["rows"] == [8]
    assert epoch["score_dtypes"] == ["bfloat16"] and epoch["index_dtypes"] == ["int64"]
    assert info["problems"] == [] and info["num_experts"] == 64
    assert (info["seq_len"], info["micro_batch_size"]) == (4, 2)


def test_inventory_reports_each_inconsistency(tmp_path: Path, capsys) -> None:
    make_dump(tmp_path)
    (tmp_path / f"actives/{MODEL}/{RUN}/5473/3/0-1.pt").unlink()
    save(
        tmp_path / f"actives/{MODEL}/{RUN}/5473/4/0-0.pt",
        (torch.zeros(5, 2), torch.zeros(5, 2).long()),
    )
    (tmp_path / f"actives/{MODEL}/{RUN}/5473/2/1-0.pt").write_bytes(b"garbage")
    info = info_json(tmp_path, capsys, "--epoch", "5473")
    problems = "\n".join(info["problems"])
    assert "5473/3: missing shards 0-1" in problems
    assert "5473/4/0-0.pt: T=5 rows but the samples file has 8" in problems
    assert "5473/2/1-0.pt: expected a torch.save file" in problems
    assert "is not B*S=16384" in problems  # 8 rows against the FLAME-MoE default B*S
    assert [e["epoch"] for e in info["runs"][0]["epochs"]] == ["5473"]


def test_table_output_and_check(tmp_path: Path, capsys) -> None:
    make_dump(tmp_path, epochs=("5473",))
    code = main(
        ["trace", "info", str(tmp_path), "--seq-len", "4", "--micro-batch-size", "2", "--check"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "run 31066: 3 shard(s) 0-0,0-1,1-0" in out and "2-4 (3)" in out
    assert "no inconsistencies found" in out and "all values valid" in out


def test_unknown_model_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    make_dump(tmp_path)
    assert main(["trace", "info", str(tmp_path), "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "samples/nope" in err


def test_embedded_trace_info(capsys) -> None:
    info = info_json(Path("embedded"), capsys)
    assert info["trace_yaml"]["tokens_known"] == "sequence 0 only"
    assert info["runs"][0]["epochs"][0]["layers"] == list(range(2, 10))
    assert info["runs"][0]["rows"] == [2048] and info["problems"] == []


@pytest.mark.skipif(not CUTS.is_dir(), reason="cuts not available")
def test_info_on_decoder_cuts(capsys) -> None:
    info = info_json(CUTS / "decoder", capsys)
    assert (
        info["kind"] == "notebook cuts" and info["seqs"] == 64 and info["meta"]["layout"] == "seed"
    )


def test_legacy_torch_save_format_is_scanned_and_loaded(tmp_path: Path, capsys) -> None:
    make_dump(tmp_path, epochs=("5473",), shards=("0-0",))
    path = tmp_path / f"actives/{MODEL}/{RUN}/5473/2/0-0.pt"
    pair = torch.load(path, weights_only=True)
    torch.save(pair, path, _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    info = info_json(tmp_path, capsys, "--seq-len", "4", "--micro-batch-size", "2", "--check")
    assert info["problems"] == [] and "checked" in info
