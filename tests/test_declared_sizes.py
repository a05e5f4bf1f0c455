"""Family 4: sizes an input declares are counted before anything is expanded, allocated or read.

* a sweep's points (the product of its axes and repeats): at most 100,000, refused with the
  count, before one point is built (a 12-line file declared 10^12 and grew memory until killed);
* YAML alias expansion (in test_yaml_loader.py): at most 100,000 added nodes, anywhere;
* a shard's zip records against the file's size: a compressed record (a 2 MB file inflating to
  2 GiB) is refused before torch reads it;
* a synthetic trace's shape, a trace.yaml's S and B, a dump selection, a JSON-lines file's
  token index: refused with the count and the limit before an array is allocated.

The fuzzers draw random declared sizes on both sides of each limit and check the refusal
happens exactly beyond it, quickly.
"""

from __future__ import annotations

import io
import math
import resource
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from attack_world import assert_refused, world_copy
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fuzz_shards import run_cli

from sim.errors import UserError
from sim.limits import MAX_SWEEP_POINTS, MAX_TRACE_ENTRIES
from sim.sweep.spec import count_points, expand, sweep_from_dict
from sim.trace.dump import check_declared_storage
from sim.trace.synth import SynthConfig, check_synth_size


# -- sweep points --------------------------------------------------------------------------------
def test_a_short_sweep_file_declaring_a_trillion_points_is_refused_at_once(world: Path) -> None:
    with world_copy(world, "sweep.yaml", "dump") as work:
        path = work / "sweep.yaml"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc["sweep"] = {
            "grid": {
                f"hardware.links.{link}.latency": [f"{i} us" for i in range(1000)]
                for link in ("pcie", "md_link")
            },
            "repeats": 10**6,
        }
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        start = time.perf_counter()
        for argv in (["validate", str(path)], ["sweep", str(path), "--out", str(work / "o")]):
            line = assert_refused(run_cli(argv), naming="1,000,000,000,000 (")
            assert f"at most {MAX_SWEEP_POINTS:,} points" in line
        assert time.perf_counter() - start < 10
        assert not (work / "o").exists()


@settings(max_examples=60, deadline=None, database=None)
@given(
    lengths=st.lists(st.integers(1, 400), min_size=1, max_size=4),
    repeats=st.one_of(st.integers(1, 50), st.integers(1, 10**15)),
)
def test_fuzzed_sweep_shapes(lengths: list[int], repeats: int) -> None:
    doc = {
        "hardware": "notebook-gbps",
        "sweep": {
            "grid": {f"f{i}.x": list(range(n)) for i, n in enumerate(lengths)},
            "repeats": repeats,
        },
    }
    spec = sweep_from_dict(doc, "s.yaml")
    declared = math.prod(lengths) * repeats
    assert count_points(spec) == declared
    if declared > MAX_SWEEP_POINTS:
        start = time.perf_counter()
        with pytest.raises(UserError, match=f"got {declared:,}"):
            expand(spec)
        assert time.perf_counter() - start < 1.0
    elif declared <= 2000:  # small enough to expand here
        assert len(expand(spec)) == declared


# -- a shard's declared storage ----------------------------------------------------------------------
def compressed_shard(floats: int) -> bytes:
    """A torch.save file whose data record is deflated: ``floats`` zeros in a few kB."""
    buf = io.BytesIO()
    torch.save(torch.zeros(floats), buf)
    stored = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in stored.infolist():
            data = stored.read(info.filename)
            deflate = info.filename.endswith("/data/0")
            z.writestr(info.filename, data, zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED)
    return out.getvalue()


def test_a_small_shard_declaring_a_big_storage_is_refused_before_reading(world: Path) -> None:
    """2 MB that would inflate to 2 GiB took 15 s and 2.3 GB before the error."""
    with world_copy(world, "dump") as work:
        shard = next((work / "dump" / "samples").rglob("0-0.pt"))
        shard.write_bytes(compressed_shard(2**24))  # 64 MB inflated, ~65 kB on disk
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        argv = ["trace", "stats", str(work / "dump"), "--layers", "all", "--positions", "all"]
        line = assert_refused(run_cli([*argv, "--out", str(work / "o")]), naming="0-0.pt")
        assert "compressed" in line and "67,108,864 bytes" in line
        assert time.perf_counter() - start < 5
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        assert grown_kib < 30_000  # far below the 64 MB a read would take


@settings(max_examples=20, deadline=None, database=None)
@given(floats=st.integers(1, 2**22), compress=st.booleans())
def test_fuzzed_shard_storage(
    tmp_path_factory: pytest.TempPathFactory, floats: int, compress: bool
) -> None:
    path = tmp_path_factory.mktemp("shard") / "0-0.pt"
    if compress:
        path.write_bytes(compressed_shard(floats))
        with pytest.raises(UserError, match="compressed"):
            check_declared_storage(path)
    else:
        torch.save(torch.zeros(floats), path)
        check_declared_storage(path)  # what torch.save writes always passes


# -- synthetic traces, trace.yaml, selections, JSON lines ------------------------------------------
def test_synth_declaring_too_many_entries_is_refused(tmp_path: Path) -> None:
    argv = ["trace", "synth", "--out", str(tmp_path / "o"), "--num-shards", "65536"]
    argv += ["--seq-len", "1048576"]
    line = assert_refused(run_cli(argv), naming=f"{MAX_TRACE_ENTRIES:,}")
    assert "routing entries" in line
    assert not (tmp_path / "o").exists()


@settings(max_examples=80, deadline=None, database=None)
@given(
    seqs=st.integers(1, 2**16),
    steps=st.integers(1, 2**20),
    layers=st.integers(1, 64),
    topk=st.integers(1, 16),
    experts=st.integers(16, 4096),
)
def test_fuzzed_synthetic_shapes(
    seqs: int, steps: int, layers: int, topk: int, experts: int
) -> None:
    cfg = SynthConfig(
        num_seqs=seqs,
        seq_len=steps,
        layer_ids=tuple(range(layers)),
        topk=topk,
        num_experts=experts,
    )
    too_big = max(seqs * steps * layers * topk, seqs * steps * experts) > MAX_TRACE_ENTRIES
    if too_big:
        with pytest.raises(UserError, match="expected at most"):
            check_synth_size(cfg)
    else:
        check_synth_size(cfg)


def test_trace_yaml_declaring_a_huge_sequence_length(world: Path) -> None:
    with world_copy(world, "dump") as work:
        tf = work / "dump" / "trace.yaml"
        text = tf.read_text(encoding="utf-8").replace("seq_len: 4", "seq_len: 1000000000000")
        tf.write_text(text, encoding="utf-8")
        assert_refused(run_cli(["trace", "info", str(work / "dump")]), naming="seq_len")


def test_json_lines_declaring_a_huge_token_index(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    rows = [{"layer": 2, "token": t, "expert_ids": [0, 1]} for t in (0, 10**8)]
    path.write_text("\n".join(map(__import__("json").dumps, rows)) + "\n", encoding="utf-8")
    start = time.perf_counter()
    line = assert_refused(
        run_cli(["trace", "import", "jsonl", str(path), "--out", str(tmp_path / "o")])
    )
    assert "100,000,001" in line and "got 2 records" in line
    assert time.perf_counter() - start < 5


def test_an_npz_declaring_a_huge_array_is_refused_before_loading(tmp_path: Path) -> None:
    """A few bytes whose .npy header declares 2^31 entries (np.load would allocate 16 GiB)."""
    header = io.BytesIO()
    import numpy as np

    np.lib.format.write_array_header_1_0(
        header, {"descr": "<i8", "fortran_order": False, "shape": (2**29, 2, 2)}
    )
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("expert_ids.npy", header.getvalue() + b"\0" * 64)
    out = tmp_path / "o"
    line = assert_refused(run_cli(["trace", "import", "numpy", str(path), "--out", str(out)]))
    assert "expert_ids.npy" in line and "2,147,483,648" in line
    assert not out.exists()
