"""Every kind of bad trace input ends in one line naming the file, and exit code 2.

Each case writes a small valid dump (B=2 sequences x S=4 steps, layers 2 and 3, shards 0-0 and
0-1), breaks one thing, and runs ``moesim trace info ROOT --check`` (which loads and validates
the whole selection).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pt_files import save

from sim.cli import main
from sim.errors import UserError
from sim.trace.cuts import load_decoder_cuts, load_prefill_cut

MODEL, RUN, EPOCH = "flame-moe-290m", "31066", "5473"
B, S, K = 2, 4, 3
T = B * S


def samples_path(root: Path, shard: str = "0-0") -> Path:
    return root / f"samples/{MODEL}/{RUN}/{shard}.pt"


def actives_path(root: Path, layer: int = 2, shard: str = "0-0") -> Path:
    return root / f"actives/{MODEL}/{RUN}/{EPOCH}/{layer}/{shard}.pt"


def good_actives(rows: int = T) -> tuple[torch.Tensor, torch.Tensor]:
    ids = (torch.arange(rows)[:, None] + torch.arange(K)[None, :]) % 64
    scores = torch.tensor([[0.4, 0.2, 0.1]]).repeat(rows, 1)
    return scores, ids


@pytest.fixture
def dump(tmp_path: Path) -> Path:
    for shard in ("0-0", "0-1"):
        save(samples_path(tmp_path, shard), torch.arange(T))
        for layer in (2, 3):
            save(actives_path(tmp_path, layer, shard), good_actives())
    return tmp_path


def check(root: Path, capsys, *extra: str) -> str:
    """Run the validating CLI; assert exit 2 and a single line; return that line."""
    code = main(
        [
            "trace",
            "info",
            str(root),
            "--check",
            "--seq-len",
            str(S),
            "--micro-batch-size",
            str(B),
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_the_fixture_is_valid(dump: Path, capsys) -> None:
    code = main(
        ["trace", "info", str(dump), "--check", "--seq-len", "4", "--micro-batch-size", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "all values valid" in out and "no inconsistencies" in out


# -- missing things -------------------------------------------------------------------------------
def test_missing_shard_file(dump: Path, capsys) -> None:
    line = check(dump, capsys, "--shards", "0-0,0-7")
    assert str(samples_path(dump, "0-7")) in line and "missing" in line


def test_missing_actives_file_for_one_shard(dump: Path, capsys) -> None:
    actives_path(dump, 3, "0-1").unlink()
    line = check(dump, capsys)
    assert str(actives_path(dump, 3, "0-1")) in line and "missing" in line


def test_missing_layer_directory(dump: Path, capsys) -> None:
    line = check(dump, capsys, "--layers", "2,7")
    assert str(actives_path(dump, 7).parent) in line and "layer 7" in line


def test_missing_samples_file(dump: Path, capsys) -> None:
    samples_path(dump, "0-1").unlink()
    line = check(dump, capsys, "--shards", "0-0,0-1")
    assert str(samples_path(dump, "0-1")) in line


def test_directory_where_a_file_should_be(dump: Path, capsys) -> None:
    path = actives_path(dump, 2, "0-1")
    path.unlink()
    path.mkdir()
    line = check(dump, capsys)
    assert str(path) in line and "directory" in line


# -- wrong content --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("target", "obj", "expect"),
    [
        ("samples", {"ids": torch.arange(T)}, "1-D tensor of token ids"),
        ("samples", torch.arange(T).float(), "int64"),
        ("samples", torch.arange(T).reshape(2, 4), "1-D"),
        ("actives", [1, 2], "(scores, indices) tuple"),
        ("actives", (*good_actives(), torch.zeros(T)), "(scores, indices) tuple"),
        ("actives", {"scores": good_actives()[0]}, "(scores, indices) tuple"),
        ("actives", "hello", "(scores, indices) tuple"),
        ("actives", (good_actives()[0].double(), good_actives()[1]), "float32/bfloat16/float16"),
        ("actives", (good_actives()[0], good_actives()[1].float()), "int64/int32/int16"),
        ("actives", (good_actives()[1], good_actives()[0]), "float32/bfloat16/float16"),
        ("actives", torch.zeros(T, 10), "dense [T, 64]"),
        ("actives", torch.zeros(T, 64, dtype=torch.int64), "dense float"),
    ],
)
def test_wrong_object_or_dtype(dump: Path, capsys, target: str, obj, expect: str) -> None:
    path = samples_path(dump) if target == "samples" else actives_path(dump)
    save(path, obj)
    line = check(dump, capsys)
    assert str(path) in line and expect in line


def test_scores_and_indices_disagree_in_shape(dump: Path, capsys) -> None:
    scores, ids = good_actives()
    save(actives_path(dump), (scores[:, :2], ids))
    line = check(dump, capsys)
    assert str(actives_path(dump)) in line and "same shape" in line


def test_samples_and_actives_disagree_in_length(dump: Path, capsys) -> None:
    save(actives_path(dump, 3, "0-1"), good_actives(T + 2))
    line = check(dump, capsys)
    assert str(actives_path(dump, 3, "0-1")) in line and f"expected {T} rows" in line


def test_rows_are_not_b_times_s(dump: Path, capsys) -> None:
    line = check(dump, capsys, "--seq-len", "5")  # 2 * 5 != 8 rows
    assert str(samples_path(dump)) in line and "B*S" in line and "T=8" in line


def test_k_differs_between_files(dump: Path, capsys) -> None:
    scores, ids = good_actives()
    save(actives_path(dump, 3, "0-0"), (scores[:, :2], ids[:, :2]))
    line = check(dump, capsys)
    assert str(actives_path(dump, 3, "0-0")) in line and "top-3" in line


@pytest.mark.parametrize(("bad_id", "what"), [(64, "[0, 64)"), (-1, "[0, 64)")])
def test_expert_id_out_of_range(dump: Path, capsys, bad_id: int, what: str) -> None:
    scores, ids = good_actives()
    ids[5, 1] = bad_id
    save(actives_path(dump, 3, "0-1"), (scores, ids))
    line = check(dump, capsys)
    assert str(actives_path(dump, 3, "0-1")) in line and what in line and "row 5" in line


def test_num_experts_option_narrows_the_range(dump: Path, capsys) -> None:
    line = check(dump, capsys, "--num-experts", "8")
    assert "[0, 8)" in line


def test_duplicate_expert_in_a_tokens_topk(dump: Path, capsys) -> None:
    scores, ids = good_actives()
    ids[3] = torch.tensor([7, 9, 7])
    save(actives_path(dump), (scores, ids))
    line = check(dump, capsys)
    assert str(actives_path(dump)) in line and "distinct" in line and "row 3" in line


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_scores(dump: Path, capsys, value: float) -> None:
    scores, ids = good_actives()
    scores[6, 2] = value
    save(actives_path(dump, 2, "0-1"), (scores.to(torch.bfloat16), ids))
    line = check(dump, capsys)
    assert str(actives_path(dump, 2, "0-1")) in line and "finite" in line


def test_non_finite_dense_scores(dump: Path, capsys) -> None:
    dense = torch.full((T, 64), 1 / 64)
    dense[2, 3] = float("nan")
    save(actives_path(dump), dense)
    line = check(dump, capsys)
    assert str(actives_path(dump)) in line and "finite" in line


# -- files that are not what they claim -----------------------------------------------------------
class _RunsCode:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("target", ["samples", "actives"])
def test_pickle_that_runs_code_is_refused(dump: Path, tmp_path: Path, capsys, target: str) -> None:
    marker = tmp_path / "pwned"
    path = samples_path(dump) if target == "samples" else actives_path(dump)
    save(path, (torch.zeros(T), _RunsCode(marker)))
    line = check(dump, capsys)
    assert str(path) in line and "refusing to unpickle" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "data", [b"", b"not a torch file", "truncated"], ids=["empty", "garbage", "truncated"]
)
def test_corrupt_or_truncated_file(dump: Path, capsys, data) -> None:
    path = actives_path(dump, 3, "0-0")
    truncated = data == "truncated"
    if truncated:
        data = path.read_bytes()[: len(path.read_bytes()) // 2]
    path.write_bytes(data)
    line = check(dump, capsys)
    assert str(path) in line and "torch.save file" in line
    if truncated:  # only torch's first sentence, not its advice cut off mid-sentence
        assert line.endswith("failed finding central directory)"), line


def test_positions_beyond_the_sequence(dump: Path, capsys) -> None:
    line = check(dump, capsys, "--positions", "2-6")
    assert "--positions" in line or "positions" in line
    assert "0..3" in line


def test_bad_trace_yaml(dump: Path, capsys) -> None:
    (dump / "trace.yaml").write_text("model: m\nrunid: 1\nepoch: 2\nseq_len: -4\n")
    line = check(dump, capsys)
    assert str(dump / "trace.yaml") in line and "seq_len" in line


def test_unknown_model_needs_num_experts(tmp_path: Path, capsys) -> None:
    save(tmp_path / "samples/mystery/1/0-0.pt", torch.arange(T))
    save(tmp_path / "actives/mystery/1/2/2/0-0.pt", good_actives())
    line = check(tmp_path, capsys)
    assert "--num-experts" in line
    code = main(
        [
            "trace",
            "info",
            str(tmp_path),
            "--check",
            "--seq-len",
            "4",
            "--micro-batch-size",
            "2",
            "--num-experts",
            "64",
        ]
    )
    assert code == 0


# -- notebook cuts --------------------------------------------------------------------------------
def _cut(layer: int, rows: int = 16) -> dict:
    scores, ids = good_actives(rows)
    return {
        "model": MODEL,
        "runid": 31066,
        "epoch": 5473,
        "layer": layer,
        "shards": ["0-0.pt"],
        "samples": torch.arange(rows),
        "scores": scores,
        "indices": ids,
    }


def test_cut_missing_keys_and_wrong_layer(tmp_path: Path) -> None:
    cut = _cut(2)
    del cut["indices"]
    save(tmp_path / "Layer_2/c.pt", cut)
    with pytest.raises(UserError, match=r"Layer_2/c\.pt: expected cut keys"):
        load_prefill_cut(tmp_path)
    save(tmp_path / "Layer_2/c.pt", _cut(3))
    with pytest.raises(UserError, match=r"expected layer 2 \(from Layer_2\), got 3"):
        load_prefill_cut(tmp_path)


def test_cut_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    save(tmp_path / "1st/Layer_2/c.pt", {"x": _RunsCode(marker)})
    with pytest.raises(UserError, match="refusing to unpickle"):
        load_decoder_cuts(tmp_path)
    assert not marker.exists()


def test_cut_with_bad_routing(tmp_path: Path, capsys) -> None:
    cut = _cut(2)
    cut["indices"][0] = torch.tensor([1, 1, 2])
    save(tmp_path / "Layer_2/c.pt", cut)
    assert main(["trace", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Layer_2/c.pt" in err and "distinct" in err


def test_files_disagree_with_trace_yaml_k(dump: Path, capsys) -> None:
    (dump / "trace.yaml").write_text(f"model: {MODEL}\nrunid: {RUN}\nepoch: {EPOCH}\nk: 2\n")
    line = check(dump, capsys)
    assert str(actives_path(dump)) in line and "top-2" in line and "trace.yaml" in line


def test_dense_format_without_k(tmp_path: Path, capsys) -> None:
    save(tmp_path / "samples/mystery/1/0-0.pt", torch.arange(T))
    save(tmp_path / "actives/mystery/1/2/2/0-0.pt", torch.full((T, 16), 1 / 16))
    line = check(tmp_path, capsys, "--num-experts", "16")
    assert "0-0.pt" in line and "--k" in line
