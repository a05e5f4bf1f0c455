"""Synthetic traces: determinism, format, and each knob moving its statistic the right way."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from sim.cli import main
from sim.errors import UserError
from sim.trace.open import open_trace
from sim.trace.profile import profile_trace
from sim.trace.synth import PerLayer, SynthConfig, generate, zipf_tokens

SMALL = SynthConfig(num_seqs=16, seq_len=96, layer_ids=(2, 3, 4), vocab=2000)


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert np.array_equal(a.experts, b.experts) and np.array_equal(a.scores, b.scores)
    assert np.array_equal(a.tokens, b.tokens)
    c = generate(replace(SMALL, seed=1))
    assert not np.array_equal(a.experts, c.experts)


def test_format_matches_the_real_dump() -> None:
    t = generate(SMALL)
    assert t.experts.shape == (96, 3, 16, 6) and t.experts.dtype == np.int16
    assert t.scores.dtype == np.float32 and t.tokens.dtype == np.int64
    assert t.experts.min() >= 0 and t.experts.max() < 64
    ordered = np.sort(t.experts, axis=-1)
    assert not (ordered[..., 1:] == ordered[..., :-1]).any()  # distinct experts per token
    assert np.all(np.diff(t.scores, axis=-1) <= 0)  # descending
    assert np.all(t.scores.sum(axis=-1) < 1.0)  # softmax over all experts, not renormalised
    assert t.meta.synthetic and t.meta.layout == "megatron"
    assert json.loads(t.meta.provenance.split(": ", 1)[1])["seed"] == 0


def test_zipf_tokens_are_skewed() -> None:
    tokens = zipf_tokens(np.random.default_rng(0), 1000, 1.1, (20000,))
    counts = np.bincount(tokens, minlength=1000)
    assert counts[0] > counts[9] > counts[99] and tokens.max() < 1000


def _stat(cfg: SynthConfig, what: str) -> float:
    p = profile_trace(generate(cfg))
    if what == "entropy":
        return float(np.mean([lp.entropy_bits for lp in p.layers]))
    if what == "overlap":
        return float(np.mean([lp.overlap_by_lag[1] for lp in p.layers]))
    if what == "overlap8":
        return float(np.mean([lp.overlap_by_lag[8] for lp in p.layers]))
    if what == "overlap16":
        return float(np.mean([lp.overlap_by_lag[16] for lp in p.layers]))
    if what == "mi":
        return float(np.mean([c.excess_mutual_info_bits for c in p.coactivation]))
    if what == "same_token":
        return float(np.mean([lp.same_token_shared for lp in p.layers]))
    raise ValueError(what)


@pytest.mark.parametrize(
    ("knob", "low", "high", "stat", "direction"),
    [
        ("popularity_skew", "0", "1.0", "entropy", -1),  # (a) more skew, less entropy
        ("context_weight", "0", "2", "overlap", +1),  # (b) more step-to-step overlap
        ("temporal_locality", "0", "0.9", "overlap8", +1),  # (b) overlap lasting more steps
        ("topic_weight", "0", "2", "overlap16", +1),  # (b) document-level locality
        ("layer_correlation", "0", "0.95", "mi", +1),  # (c) more inter-layer information
        ("router_affinity", "0", "0.9", "mi", +1),  # (c) likewise, through the routers
        ("token_weight", "0.5", "4", "same_token", +1),  # (d) same id, more shared experts
    ],
)
def test_each_knob_moves_its_statistic(knob, low, high, stat, direction) -> None:
    lo = _stat(replace(SMALL, **{knob: PerLayer(low)}), stat)
    hi = _stat(replace(SMALL, **{knob: PerLayer(high)}), stat)
    assert direction * (hi - lo) > 0, (knob, lo, hi)


def test_sharpness_changes_scores_not_choices() -> None:
    soft = generate(replace(SMALL, sharpness=PerLayer("0.5")))
    sharp = generate(replace(SMALL, sharpness=PerLayer("3")))
    assert np.array_equal(soft.experts, sharp.experts)
    assert sharp.scores[..., 0].mean() > soft.scores[..., 0].mean()


def test_per_layer_knob_forms() -> None:
    assert PerLayer.of(0.5).resolve(3).tolist() == [0.5, 0.5, 0.5]
    assert PerLayer("1:3").resolve(3).tolist() == [1.0, 2.0, 3.0]
    assert PerLayer("1,2,4").resolve(3).tolist() == [1.0, 2.0, 4.0]
    assert PerLayer("1,3").resolve(3).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(UserError, match="expected a number"):
        PerLayer.of("fast")
    with pytest.raises(UserError, match="ramp"):
        PerLayer.of("1:2:3")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"topk": 65}, "at most 64"),
        ({"temporal_locality": PerLayer("1.5")}, r"values in \[0, 1\]"),
        ({"token_weight": PerLayer("-1")}, r"values in \[0, 1e6\]"),
        ({"seq_len": 0}, "positive integer"),
    ],
)
def test_bad_settings_are_user_errors(change, message) -> None:
    with pytest.raises(UserError, match=message):
        generate(replace(SMALL, **change))


def test_cli_writes_a_readable_deterministic_dump(tmp_path: Path) -> None:
    args = [
        "trace",
        "synth",
        "--num-shards",
        "2",
        "--micro-batch-size",
        "4",
        "--seq-len",
        "32",
        "--layers",
        "2-4",
        "--seed",
        "3",
        "--vocab",
        "500",
        "--token-weight",
        "1:2",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--compact"]) == 0
    a, b = open_trace(tmp_path / "a"), open_trace(tmp_path / "b")
    want = generate(
        SynthConfig(
            num_seqs=8,
            seq_len=32,
            layer_ids=(2, 3, 4),
            seed=3,
            vocab=500,
            token_weight=PerLayer("1:2"),
        )
    )
    assert np.array_equal(a.experts, want.experts) and np.array_equal(a.tokens, want.tokens)
    np.testing.assert_array_equal(a.scores, want.scores)
    assert np.array_equal(b.experts, want.experts)  # float16 scores keep the choices
    facts = yaml.safe_load((tmp_path / "a" / "trace.yaml").read_text())
    assert facts["synthetic"] is True and facts["micro_batch_size"] == 4
    assert '"token_weight": "1:2"' in facts["provenance"]
    shards = sorted(p.name for p in (tmp_path / "a" / "samples").rglob("*.pt"))
    assert shards == ["0-0.pt", "0-1.pt"]


def test_cli_refuses_a_non_empty_out(tmp_path: Path, capsys) -> None:
    (tmp_path / "x").write_text("keep me")
    assert main(["trace", "synth", "--out", str(tmp_path), "--seq-len", "4"]) == 2
    assert "expected an empty or new directory" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_generation_takes_seconds() -> None:
    start = time.perf_counter()
    t = generate(SynthConfig(num_seqs=64, seq_len=2048))
    assert t.experts.shape == (2048, 8, 64, 6)
    assert time.perf_counter() - start < 60


def test_synth_warns_when_the_8_layer_calibration_is_stretched(tmp_path, capsys) -> None:
    base = ["trace", "synth", "--num-shards", "1", "--seq-len", "2", "--micro-batch-size", "2"]
    assert main([*base, "--out", str(tmp_path / "deep"), "--layers", "1-16"]) == 0
    err = capsys.readouterr().err
    assert "warning: the default per-layer knobs (layer_correlation, token_weight" in err
    assert "over 16 layers their 8 points are stretched" in err
    assert main([*base, "--out", str(tmp_path / "same"), "--layers", "2-9"]) == 0
    assert "warning" not in capsys.readouterr().err
    knobs = ["--layer-correlation", "0.5", "--token-weight", "2", "--context-weight", "1"]
    knobs += ["--topic-weight", "1", "--sharpness", "1"]
    assert main([*base, "--out", str(tmp_path / "own"), "--layers", "1-16", *knobs]) == 0
    assert "warning" not in capsys.readouterr().err  # the user chose every profile
