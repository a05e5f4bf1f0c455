"""Write a `RoutingTrace` as a FLAME-MoE dump plus ``trace.yaml``.

The output is exactly what `sim.trace.dump.load_trace` reads back (Megatron row order), so
embedded, synthetic and imported traces share one on-disk format with real dumps.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from sim.atomic import DirMode, staged_dir, write_bytes
from sim.errors import UserError
from sim.trace.dump import INDEX_DTYPES, SCORE_DTYPES, epoch_dir, samples_dir
from sim.trace.routing import RoutingTrace
from sim.trace.tracefile import TraceFile, write_trace_yaml


def write_dump(
    trace: RoutingTrace,
    root: Path,
    *,
    shard_prefix: str = "0",
    score_dtype: torch.dtype = torch.float32,
    index_dtype: torch.dtype = torch.int64,
    mode: DirMode = "new",
) -> Path:
    """Write ``trace`` under ``root`` as shards ``{prefix}-0, {prefix}-1, ...`` of B sequences.

    B is ``trace.meta.micro_batch_size`` (all sequences when unset) and S the number of steps;
    the trace's positions must be ``0..S-1``. The directory is built aside and renamed into
    place (`sim.atomic.staged_dir`): ``mode="replace"`` swaps it with an older one (``--force``),
    so no file of the older trace survives. Returns ``root``.
    """
    root = Path(root)
    if trace.meta.layout != "megatron":
        raise UserError(
            f"{root}: write_dump expected a megatron-layout trace, got {trace.meta.layout!r}"
        )
    if score_dtype not in SCORE_DTYPES or index_dtype not in INDEX_DTYPES:
        raise UserError(f"{root}: unsupported dump dtypes {score_dtype}, {index_dtype}")
    seq_len = trace.num_steps
    if trace.positions != tuple(range(seq_len)):
        raise UserError(
            f"{root}: write_dump expected positions 0..{seq_len - 1} (whole sequences), got "
            f"{list(trace.positions[:5])}{'...' if seq_len > 5 else ''}"
        )
    batch = trace.meta.micro_batch_size or trace.num_seqs
    if trace.num_seqs % batch:
        raise UserError(
            f"{root}: expected the number of sequences ({trace.num_seqs}) to be a multiple of "
            f"the micro-batch size {batch}"
        )
    with staged_dir(root, mode) as staging:
        _write_files(trace, staging, shard_prefix, score_dtype, index_dtype, seq_len, batch)
    return root


def _write_files(
    trace: RoutingTrace,
    root: Path,
    shard_prefix: str,
    score_dtype: torch.dtype,
    index_dtype: torch.dtype,
    seq_len: int,
    batch: int,
) -> None:
    model, runid, epoch = trace.meta.model, str(trace.meta.runid), str(trace.meta.epoch)
    sdir = samples_dir(root, model, runid)
    edir = epoch_dir(root, model, runid, epoch)
    for i in range(trace.num_seqs // batch):
        shard = f"{shard_prefix}-{i}"
        seqs = slice(i * batch, (i + 1) * batch)
        # samples row b*S + s: sequence-major.
        tokens = np.ascontiguousarray(trace.tokens[:, seqs].T).reshape(-1)
        _save(sdir / f"{shard}.pt", torch.from_numpy(tokens.astype(np.int64)))
        for li, layer in enumerate(trace.layer_ids):
            # actives row s*B + b: position-major, exactly the [steps, seqs] order of the trace.
            experts = trace.experts[:, li, seqs, :].reshape(seq_len * batch, trace.k)
            scores = trace.scores[:, li, seqs, :].reshape(seq_len * batch, trace.k)
            pair = (
                torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)).to(score_dtype),
                torch.from_numpy(np.ascontiguousarray(experts, dtype=np.int64)).to(index_dtype),
            )
            _save(edir / str(layer) / f"{shard}.pt", pair)
    shards = tuple(f"{shard_prefix}-{i}" for i in range(trace.num_seqs // batch))
    facts = trace_file_for(trace, seq_len=seq_len, micro_batch_size=batch)
    write_trace_yaml(root, replace(facts, layers=tuple(trace.layer_ids), shards=shards))


def trace_file_for(trace: RoutingTrace, *, seq_len: int, micro_batch_size: int) -> TraceFile:
    """The ``trace.yaml`` facts of ``trace`` written as a dump with S and B."""
    m = trace.meta
    notes = m.extra.get("notes", "")
    return TraceFile(
        model=m.model,
        runid=str(m.runid),
        epoch=str(m.epoch),
        layout="megatron",
        seq_len=seq_len,
        micro_batch_size=micro_batch_size,
        num_experts=trace.num_experts,
        k=trace.k,
        provenance=m.provenance,
        synthetic=m.synthetic,
        synthetic_layers=tuple(m.synthetic_layers),
        tokens_known=tokens_known(trace.tokens),
        notes=str(notes),
    )


def tokens_known(tokens: np.ndarray) -> str:
    """Which token ids are known: "all", "none", "sequence 0 only", or "partial"."""
    known = tokens >= 0
    if known.all():
        return "all"
    if not known.any():
        return "none"
    per_seq = known.all(axis=0)
    if per_seq[0] and not known[:, 1:].any():
        return "sequence 0 only"
    return "partial"


def _save(path: Path, obj: object) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())
