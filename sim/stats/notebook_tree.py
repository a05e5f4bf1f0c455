"""The seed notebook's output tree, file for file and byte for byte (`trace stats --notebook-tree`).

Per (position, layer) cell the notebook writes, under ``{ordinal}/Layer_{layer}/`` with base name
``{model}_runid{r}_epoch{e}_layer{l}_shard{first}_to_{last}_firstTokens_{n}x{len}``:

* ``.pt``: a dict (model, runid, epoch, layer, token_position, shards, samples, scores, indices);
* ``.txt``: a metadata block and torch's print of the three tensors (``threshold=inf``);
* ``.csv``: ``layer_id, token_id, expert_0..expert_{E-1}``, scores as ``'%.6f'``, CRLF lines
  (``csv.writer``'s default); ``layer_id`` holds the real layer (the notebook wrote 0);
* ``_top{k}_stats.txt`` / ``_top{k}_stats.csv``: the per-expert distribution and gating output.

Text is produced with one ``%``-format call per file (no per-token Python loops) and is checked
byte for byte against a re-implementation of the notebook in ``tests/test_stats_parity.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sim import opener
from sim.atomic import write_bytes, write_json, write_text
from sim.errors import UserError
from sim.stats import EXTENDED_MANIFEST
from sim.stats.counts import CellCounts
from sim.stats.gating import GatingRule
from sim.trace.dump import SEED_SEQ_LEN
from sim.trace.routing import RoutingTrace

RULE = "=" * 60
DASH = "-" * 60


def ordinal(n: int) -> str:
    """English ordinal: 1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st, 101st, 111th."""
    if n < 1:
        raise ValueError(f"ordinals start at 1, got {n}")
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def position_folder(position: int) -> str:
    """The notebook's folder of a 0-based position: 0 -> ``1st``, 9 -> ``10th``."""
    return ordinal(position + 1)


def shard_file_names(trace: RoutingTrace) -> list[str]:
    """The notebook's ``shard_list`` entries (``1-2.pt``); a synthetic trace has none."""
    return [s if s.endswith(".pt") else f"{s}.pt" for s in trace.meta.shards]


def sequence_length(trace: RoutingTrace) -> int:
    """The ``len`` of ``firstTokens_{n}x{len}``: the layout's sequence length."""
    if trace.meta.layout == "seed":
        # The seed layout's L: recorded by the loader, else the notebook's 512.
        length = trace.meta.extra.get("seed_seq_len") or trace.meta.seq_len or SEED_SEQ_LEN
    else:
        length = trace.meta.seq_len
    if not length:
        raise UserError(
            f"{trace.meta.source or 'trace'}: expected a known sequence length for the notebook "
            "tree's file names (trace.yaml seq_len or --seq-len), got none"
        )
    return int(length)


def cell_basename(trace: RoutingTrace, layer: int) -> str:
    """``{model}_runid{r}_epoch{e}_layer{l}_shard{a}_to_{b}_firstTokens_{n}x{len}``."""
    names = [s.removesuffix(".pt") for s in shard_file_names(trace)] or ["none"]
    m = trace.meta
    return (
        f"{m.model}_runid{m.runid}_epoch{m.epoch}_layer{layer}_shard{names[0]}_to_{names[-1]}"
        f"_firstTokens_{trace.num_seqs}x{sequence_length(trace)}"
    )


# -- the file contents ----------------------------------------------------------------------------
@contextlib.contextmanager
def notebook_printoptions() -> Iterator[None]:
    """torch's default print options with ``threshold=inf``, as the notebook set; restored after."""
    old = torch._tensor_str.get_printoptions()
    torch.set_printoptions(profile="default")
    torch.set_printoptions(threshold=math.inf)
    try:
        yield
    finally:
        torch.set_printoptions(**old)


@dataclass(frozen=True)
class CellTensors:
    """The notebook's three tensors of one cell (its ``*_tokens_all``)."""

    samples: torch.Tensor  # [n] int64
    scores: torch.Tensor  # [n, k] float32
    indices: torch.Tensor  # [n, k] int64


def cell_tensors(trace: RoutingTrace, step: int, layer_index: int) -> CellTensors:
    return CellTensors(
        samples=torch.from_numpy(np.array(trace.tokens[step], dtype=np.int64)),
        scores=torch.from_numpy(np.array(trace.scores[step, layer_index], dtype=np.float32)),
        indices=torch.from_numpy(np.array(trace.experts[step, layer_index], dtype=np.int64)),
    )


def metadata_text(
    trace: RoutingTrace, position: int, layer: int, tensors: CellTensors, seq_len: int
) -> str:
    """The notebook's ``.txt``: a metadata block, then each tensor's shape and print."""
    name = position_folder(position)
    m = trace.meta
    head = (
        f"{RULE}\n"
        f"METADATA ({name.title()} token of each sequence)\n"
        f"{RULE}\n"
        f"Model: {m.model}\n"
        f"Run ID: {m.runid}\n"
        f"Epoch: {m.epoch}\n"
        f"Layer: {layer}\n"
        f"Token Position: {position} ({name})\n"
        f"Shards processed: {', '.join(shard_file_names(trace))}\n"
        f"Total sequences: {len(tensors.samples)}\n"
        f"Sequence length: {seq_len}\n"
        f"{RULE}\n\n"
    )
    with notebook_printoptions():
        body = (
            f"{'samples'.center(40, '-')}\n{tensors.samples.shape}\n{tensors.samples}\n\n"
            f"{'scores'.center(40, '-')}\n{tensors.scores.shape}\n{tensors.scores}\n\n"
            f"{'indices'.center(40, '-')}\n{tensors.indices.shape}\n{tensors.indices}\n"
        )
    return head + body


def dense_csv_text(layer: int, experts: np.ndarray, scores: np.ndarray, num_experts: int) -> str:
    """The notebook's dense ``.csv`` of one cell (``experts``/``scores``: ``[n, k]``)."""
    n = experts.shape[0]
    header = ",".join(["layer_id", "token_id", *(f"expert_{i}" for i in range(num_experts))])
    table = np.zeros((n, 2 + num_experts), dtype=np.float64)
    table[:, 0] = layer
    table[:, 1] = np.arange(n)
    # float32 -> float64 like the notebook's float(tensor.item()); later ids overwrite earlier.
    np.put_along_axis(
        table[:, 2:], experts.astype(np.intp), scores.astype(np.float64, copy=False), axis=1
    )
    line = "%d,%d" + ",%.6f" * num_experts + "\r\n"
    return header + "\r\n" + (line * n) % tuple(table.ravel().tolist())


def _ranked(counts: np.ndarray, num_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Experts by count descending, ties by id (Python's stable sorted(reverse=True))."""
    order = np.argsort(-counts.astype(np.int64), kind="stable")
    ranked = counts[order].astype(np.int64)
    percent = (
        ranked.astype(np.float64) / num_tokens * 100
        if num_tokens > 0
        else np.zeros(ranked.shape, dtype=np.float64)
    )
    return order, ranked, percent


def topk_stats_text(
    position: int,
    k: int,
    counts: np.ndarray,
    num_tokens: int,
    rule: GatingRule,
) -> str:
    """The notebook's ``_top{k}_stats.txt`` for one cell (``counts``: ``[num_experts]``)."""
    order, ranked, percent = _ranked(counts, num_tokens)
    activ = int((counts > 0).sum())
    gpu, md, h = rule.split(activ)
    # ids and counts pass through float64 here: exact for any count below 2**53.
    rows = np.stack([order, ranked, percent], axis=1).ravel().tolist()
    lines = ("Expert %-5d %-15d %6.2f%%\n" * len(order)) % tuple(rows)
    bw_pcie, bw_md, alpha = rule.bw_pcie, rule.bw_md, rule.alpha
    return (
        f"{RULE}\n"
        f"TOP {k} EXPERT TOKEN DISTRIBUTION ({position_folder(position).title()} token)\n"
        f"{RULE}\n"
        f"Total tokens: {num_tokens}\n"
        f"Expected total (tokens × {k}): {num_tokens * k}\n"
        f"{RULE}\n"
        f"{'Expert ID':<12} {'Token Count':<15} {'Percentage':<10}\n"
        f"{DASH}\n"
        f"{lines}"
        f"{DASH}\n"
        f"Total assignments: {int(ranked.sum())}\n"
        f"\n{RULE}\n"
        "GATING MECHANISM OUTPUT\n"
        f"{RULE}\n"
        f"Expert_Activ (experts with ≥1 token): {activ}\n"
        "\nBandwidth Parameters:\n"
        f"  BW_PCIe: {bw_pcie} Gbps\n"
        f"  BW_MD:   {bw_md} Gbps\n"
        f"  Alpha (α): {alpha}\n"
        "\nCalculated Values:\n"
        f"  Expert_GPU: {gpu}\n"
        f"  Expert_MD:  {md}\n"
        f"  H (Gating Output): {h}\n"
        "\nFormulas Used:\n"
        "  Expert_GPU = (BW_PCIe / (BW_MD + BW_PCIe)) × Expert_Activ\n"
        f"  Expert_GPU = ({bw_pcie} / ({bw_md} + {bw_pcie})) × {activ}\n"
        "  Expert_MD = Expert_Activ - Expert_GPU\n"
        f"  H = α × Expert_GPU = {alpha} × {gpu}\n"
    )


def topk_stats_csv_text(counts: np.ndarray, num_tokens: int) -> str:
    """The notebook's ``_top{k}_stats.csv``: ``Expert_ID,Token_Count,Percentage,Rank`` (CRLF)."""
    order, ranked, percent = _ranked(counts, num_tokens)
    rank = np.arange(1, len(order) + 1)
    values = np.stack([order, ranked, percent, rank], axis=1).ravel().tolist()
    return "Expert_ID,Token_Count,Percentage,Rank\r\n" + ("%d,%d,%.2f,%d\r\n" * len(order)) % tuple(
        values
    )


def pt_payload(trace: RoutingTrace, position: int, layer: int, tensors: CellTensors) -> bytes:
    """The notebook's ``.pt`` dict, serialised with ``torch.save``."""
    m = trace.meta
    data: dict[str, Any] = {
        "model": m.model,
        "runid": _notebook_scalar(m.runid),
        "epoch": _notebook_scalar(m.epoch),
        "layer": layer,
        "token_position": position,
        "shards": shard_file_names(trace),
        "samples": tensors.samples,
        "scores": tensors.scores,
        "indices": tensors.indices,
    }
    buf = io.BytesIO()
    torch.save(data, buf)
    return buf.getvalue()


def _notebook_scalar(value: int | str) -> int | str:
    """The notebook stored run id and epoch as ints; the loader keeps directory names."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


# -- the tree -------------------------------------------------------------------------------------
def write_notebook_tree(
    trace: RoutingTrace, cells: CellCounts, rule: GatingRule, out_dir: str | Path
) -> int:
    """Write the notebook's tree for every cell of ``cells`` under ``out_dir``; files written."""
    out = Path(out_dir)
    seq_len = sequence_length(trace)
    written = 0
    for step, position in enumerate(cells.positions):
        for li, layer in enumerate(cells.layers):
            layer_dir = out / position_folder(position) / f"Layer_{layer}"
            base = layer_dir / cell_basename(trace, layer)
            tensors = cell_tensors(trace, step, li)
            write_bytes(f"{base}.pt", pt_payload(trace, position, layer, tensors))
            write_text(f"{base}.txt", metadata_text(trace, position, layer, tensors, seq_len))
            write_text(
                f"{base}.csv",
                dense_csv_text(
                    layer, trace.experts[step, li], trace.scores[step, li], trace.num_experts
                ),
            )
            written += 3
            for ki, k in enumerate(cells.topks):
                counts = cells.counts[ki, step, li]
                write_text(
                    f"{base}_top{k}_stats.txt",
                    topk_stats_text(position, k, counts, cells.num_tokens, rule),
                )
                write_text(
                    f"{base}_top{k}_stats.csv", topk_stats_csv_text(counts, cells.num_tokens)
                )
                written += 2
    if trace.meta.synthetic_layers:
        write_extended_manifest(
            out, trace.meta.synthetic_layers, trace.meta.extra.get("layer_copies", {})
        )
        written += 1
    return written


def write_extended_manifest(
    tree: Path,
    synthetic_layers: tuple[int, ...] | list[int],
    copies: dict[Any, Any],
    out: Path | None = None,
) -> None:
    """Record which layer folders are copies (synthetic), merged with any earlier record of
    ``tree``; written to ``out`` (a staging directory) when given, else to ``tree``."""
    path = Path(tree) / EXTENDED_MANIFEST
    old: dict[str, Any] = {}
    if opener.describe(path) != "nothing (missing)":
        text = opener.read_text(path, "JSON written by moesim")
        try:
            old = json.loads(text)
        except ValueError as err:
            raise UserError(f"{path}: expected JSON written by moesim, got {err}") from None
        if not isinstance(old, dict):
            raise UserError(
                f"{path}: expected a JSON object written by moesim, got {type(old).__name__}"
            )
    merged_copies = {str(k): int(v) for k, v in old.get("copied_from", {}).items()}
    merged_copies.update({str(k): int(v) for k, v in copies.items()})
    layers = sorted({*map(int, old.get("synthetic_layers", [])), *map(int, synthetic_layers)})
    write_json(
        Path(out or tree) / EXTENDED_MANIFEST,
        {
            "synthetic_layers": layers,
            "copied_from": dict(sorted(merged_copies.items(), key=lambda kv: int(kv[0]))),
            "note": "these Layer_* folders are copies of real layers (seed cell 2), not routing",
        },
    )
