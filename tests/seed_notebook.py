"""An independent, deliberately straightforward re-implementation of the seed notebook.

Used only by the tests as the parity reference for `moesim trace stats` and
`moesim trace extend-layers`. It follows the notebook's code line by line (cell 1: statistics,
cell 2: layer extension), with two substitutions: pandas is not installed, so the CSV is read
back with the ``csv`` module (``float()`` of each cell, like pandas' parser for '%.6f' text), and
``iterrows`` becomes a loop over those rows. The ``layer_id`` column is a parameter (the notebook
wrote 0; the project writes the real layer). Nothing here imports the ``sim`` package.
"""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import torch

NUM_EXPERTS = 64


def position_name(pos: int) -> str:
    n = pos + 1
    if n % 100 in (11, 12, 13):
        return f"{n}th"
    return f"{n}" + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def notebook_counts(csv_filename: str | Path, k: int) -> dict[int, int]:
    """The notebook's per-row loop for one top-k over its own CSV file."""
    with open(csv_filename, newline="") as handle:
        rows = list(csv.DictReader(handle))
    expert_columns = [f"expert_{i}" for i in range(NUM_EXPERTS)]
    counts = {i: 0 for i in range(NUM_EXPERTS)}
    for row in rows:
        expert_scores = np.array([float(row[c]) for c in expert_columns], dtype=float)
        for expert_id in np.argsort(expert_scores)[-k:][::-1]:
            counts[int(expert_id)] += 1
    return counts


def run_cell1(
    root: Path,
    out_dir: Path,
    *,
    model: str = "flame-moe-290m",
    runid: int = 31066,
    epoch: int = 5473,
    shard_prefix: int = 1,
    start_shard_idx: int = 2,
    num_shards: int = 2,
    positions: range = range(10),
    layers: range = range(2, 10),
    sequence_length: int = 512,
    num_sequences_per_shard: int = 32,
    topks: tuple[int, ...] = (1, 2, 6),
    bw_pcie: float = 32,
    bw_md: float = 512,
    alpha: float = 1.0,
    real_layer_id: bool = True,
    write_tree: bool = True,
) -> dict[tuple[int, int, int], tuple[dict[int, int], int, int, int, int]]:
    """The notebook's cell 1. Returns ``{(pos, layer, k): (counts, activ, gpu, md, h)}``."""
    results = {}
    torch.set_printoptions(threshold=float("inf"))
    try:
        for token_pos in positions:
            token_pos_name = position_name(token_pos)
            token_dir = out_dir / token_pos_name
            token_dir.mkdir(parents=True, exist_ok=True)
            for layer in layers:
                layer_dir = token_dir / f"Layer_{layer}"
                layer_dir.mkdir(parents=True, exist_ok=True)
                all_s, all_sc, all_i, shard_list = [], [], [], []
                for shard_idx in range(start_shard_idx, start_shard_idx + num_shards):
                    shard = f"{shard_prefix}-{shard_idx}.pt"
                    shard_list.append(shard)
                    samples = torch.load(
                        Path(root, f"samples/{model}/{runid}", shard), map_location="cpu"
                    )
                    actives = torch.load(
                        Path(root, f"actives/{model}/{runid}/{epoch}/{layer}", shard),
                        map_location="cpu",
                    )
                    scores, indices = actives
                    token_indices = torch.arange(
                        token_pos, num_sequences_per_shard * sequence_length, sequence_length
                    )
                    all_s.append(samples[token_indices])
                    all_sc.append(scores[token_indices])
                    all_i.append(indices[token_indices])
                samples_all = torch.cat(all_s, dim=0)
                scores_all = torch.cat(all_sc, dim=0)
                indices_all = torch.cat(all_i, dim=0)
                n = len(samples_all)
                first, last = shard_list[0].replace(".pt", ""), shard_list[-1].replace(".pt", "")
                base = layer_dir / (
                    f"{model}_runid{runid}_epoch{epoch}_layer{layer}_shard{first}_to_{last}"
                    f"_firstTokens_{n}x{sequence_length}"
                )
                if write_tree:
                    torch.save(
                        {
                            "model": model,
                            "runid": runid,
                            "epoch": epoch,
                            "layer": layer,
                            "token_position": token_pos,
                            "shards": shard_list,
                            "samples": samples_all,
                            "scores": scores_all,
                            "indices": indices_all,
                        },
                        f"{base}.pt",
                    )
                    with open(f"{base}.txt", "w") as f:
                        f.write("=" * 60 + "\n")
                        f.write(f"METADATA ({token_pos_name.title()} token of each sequence)\n")
                        f.write("=" * 60 + "\n")
                        f.write(f"Model: {model}\n")
                        f.write(f"Run ID: {runid}\n")
                        f.write(f"Epoch: {epoch}\n")
                        f.write(f"Layer: {layer}\n")
                        f.write(f"Token Position: {token_pos} ({token_pos_name})\n")
                        f.write(f"Shards processed: {', '.join(shard_list)}\n")
                        f.write(f"Total sequences: {n}\n")
                        f.write(f"Sequence length: {sequence_length}\n")
                        f.write("=" * 60 + "\n\n")
                        f.write("samples".center(40, "-") + "\n")
                        f.write(f"{samples_all.shape}\n")
                        f.write(f"{samples_all}\n\n")
                        f.write("scores".center(40, "-") + "\n")
                        f.write(f"{scores_all.shape}\n")
                        f.write(f"{scores_all}\n\n")
                        f.write("indices".center(40, "-") + "\n")
                        f.write(f"{indices_all.shape}\n")
                        f.write(f"{indices_all}\n")
                csv_filename = f"{base}.csv"
                with open(csv_filename, "w", newline="") as csvfile:
                    writer = csv.writer(csvfile)
                    writer.writerow(
                        ["layer_id", "token_id"] + [f"expert_{i}" for i in range(NUM_EXPERTS)]
                    )
                    for token_idx in range(n):
                        row = [layer if real_layer_id else 0, token_idx]
                        expert_scores = [0.0] * NUM_EXPERTS
                        for i in range(len(indices_all[token_idx])):
                            expert_id = int(indices_all[token_idx][i].item())
                            expert_scores[expert_id] = float(scores_all[token_idx][i].item())
                        row.extend(f"{s:.6f}" for s in expert_scores)
                        writer.writerow(row)
                for k in topks:
                    counts = notebook_counts(csv_filename, k)
                    ranked = sorted(counts.items(), key=lambda x: x[1], reverse=True)
                    total = sum(counts.values())
                    activ = sum(1 for c in counts.values() if c > 0)
                    gpu = round((bw_pcie / (bw_md + bw_pcie)) * activ)
                    md = activ - gpu
                    h = int(alpha * gpu)
                    results[(token_pos, layer, k)] = (counts, activ, gpu, md, h)
                    if write_tree:
                        _write_topk_files(
                            base, token_pos_name, k, n, ranked, total, activ, gpu, md, h,
                            bw_pcie, bw_md, alpha,
                        )  # fmt: skip
    finally:
        torch.set_printoptions(profile="default")
    return results


def _write_topk_files(
    base, token_pos_name, k, n, ranked, total, activ, gpu, md, h, bw_pcie, bw_md, alpha
) -> None:
    with open(f"{base}_top{k}_stats.txt", "w") as f:
        f.write("=" * 60 + "\n")
        f.write(f"TOP {k} EXPERT TOKEN DISTRIBUTION ({token_pos_name.title()} token)\n")
        f.write("=" * 60 + "\n")
        f.write(f"Total tokens: {n}\n")
        f.write(f"Expected total (tokens × {k}): {n * k}\n")
        f.write("=" * 60 + "\n")
        f.write(f"{'Expert ID':<12} {'Token Count':<15} {'Percentage':<10}\n")
        f.write("-" * 60 + "\n")
        for expert_id, count in ranked:
            percentage = (count / n) * 100 if n > 0 else 0.0
            f.write(f"Expert {expert_id:<5} {count:<15} {percentage:>6.2f}%\n")
        f.write("-" * 60 + "\n")
        f.write(f"Total assignments: {total}\n")
        f.write("\n" + "=" * 60 + "\n")
        f.write("GATING MECHANISM OUTPUT\n")
        f.write("=" * 60 + "\n")
        f.write(f"Expert_Activ (experts with ≥1 token): {activ}\n")
        f.write("\nBandwidth Parameters:\n")
        f.write(f"  BW_PCIe: {bw_pcie} Gbps\n")
        f.write(f"  BW_MD:   {bw_md} Gbps\n")
        f.write(f"  Alpha (α): {alpha}\n")
        f.write("\nCalculated Values:\n")
        f.write(f"  Expert_GPU: {gpu}\n")
        f.write(f"  Expert_MD:  {md}\n")
        f.write(f"  H (Gating Output): {h}\n")
        f.write("\nFormulas Used:\n")
        f.write("  Expert_GPU = (BW_PCIe / (BW_MD + BW_PCIe)) × Expert_Activ\n")
        f.write(f"  Expert_GPU = ({bw_pcie} / ({bw_md} + {bw_pcie})) × {activ}\n")
        f.write("  Expert_MD = Expert_Activ - Expert_GPU\n")
        f.write(f"  H = α × Expert_GPU = {alpha} × {gpu}\n")
    with open(f"{base}_top{k}_stats.csv", "w", newline="") as csvfile:
        writer = csv.writer(csvfile)
        writer.writerow(["Expert_ID", "Token_Count", "Percentage", "Rank"])
        for rank, (expert_id, count) in enumerate(ranked, 1):
            percentage = (count / n) * 100 if n > 0 else 0.0
            writer.writerow([expert_id, count, f"{percentage:.2f}", rank])


def dense_rows_counts(
    experts: np.ndarray, scores: np.ndarray, ks: tuple[int, ...], num_experts: int = NUM_EXPERTS
) -> dict[int, dict[int, int]]:
    """The notebook's counting for one cell from in-memory rows: '%.6f' text, float() back."""
    counts = {k: {i: 0 for i in range(num_experts)} for k in ks}
    for token_experts, token_scores in zip(experts.tolist(), scores.tolist()):
        row = [0.0] * num_experts
        for e, s in zip(token_experts, token_scores):
            row[int(e)] = float(s)
        parsed = np.array([float(f"{v:.6f}") for v in row], dtype=float)
        for k in ks:
            for expert_id in np.argsort(parsed)[-k:][::-1]:
                counts[k][int(expert_id)] += 1
    return counts


def run_cell2(
    base_output_dir: Path,
    source_layers: range = range(2, 10),
    target_layers: range = range(10, 27),
) -> None:
    """The notebook's cell 2 (layer extension), as written (``weights_only`` for safety)."""
    for token_dir in sorted(p for p in base_output_dir.iterdir() if p.is_dir()):
        for target_layer in target_layers:
            source_layer = list(source_layers)[(target_layer - 10) % len(source_layers)]
            source_layer_dir = token_dir / f"Layer_{source_layer}"
            target_layer_dir = token_dir / f"Layer_{target_layer}"
            if not source_layer_dir.exists():
                continue
            target_layer_dir.mkdir(parents=True, exist_ok=True)
            for source_file in list(source_layer_dir.glob("*")):
                new_name = source_file.name.replace(
                    f"_layer{source_layer}_", f"_layer{target_layer}_"
                )
                target_file = target_layer_dir / new_name
                if source_file.suffix == ".pt":
                    data = torch.load(source_file, map_location="cpu", weights_only=True)
                    data["layer"] = target_layer
                    torch.save(data, target_file)
                elif source_file.suffix == ".txt":
                    with open(source_file) as f:
                        content = f.read()
                    content = re.sub(
                        f"Layer: {source_layer}\\n", f"Layer: {target_layer}\\n", content
                    )
                    with open(target_file, "w") as f:
                        f.write(content)
                else:
                    shutil.copy2(source_file, target_file)


# -- inputs for the parity tests ---------------------------------------------------------------
# Scores that stress the notebook's tie-breaking: exact ties, values that differ in float32 but
# print equal with '%.6f', values that print as 0.000000, and zeros.
TRICKY_SCORES = np.array(
    [0.2, 0.1, 0.05, 0.05, 0.0300004, 0.0300001, 0.0299996, 0.01, 4e-7, 1e-7, 0.0, 0.0],
    dtype=np.float32,
)


def tricky_rows(
    rng: np.random.Generator, rows: int, k: int, num_experts: int = NUM_EXPERTS
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices int64 [rows, k], scores float32 [rows, k])``: distinct experts per row, scores
    sorted descending; half the rows from `TRICKY_SCORES`, half continuous."""
    indices = np.argsort(rng.random((rows, num_experts)), axis=1)[:, :k].astype(np.int64)
    tricky = rng.choice(TRICKY_SCORES, size=(rows, k))
    smooth = rng.dirichlet(np.full(num_experts, 0.3), size=rows)[:, :k].astype(np.float32)
    scores = np.where(rng.random((rows, 1)) < 0.5, tricky, smooth).astype(np.float32)
    return indices, -np.sort(-scores, axis=1)


def write_raw_shard(
    root: Path,
    shard: str,
    samples: np.ndarray,
    actives: dict[int, tuple[np.ndarray, np.ndarray]],
    *,
    model: str = "flame-moe-290m",
    runid: int = 31066,
    epoch: int = 5473,
) -> None:
    """One shard in the FLAME-MoE dump layout: samples and per-layer (scores, indices)."""
    sdir = root / "samples" / model / str(runid)
    sdir.mkdir(parents=True, exist_ok=True)
    torch.save(torch.from_numpy(np.asarray(samples, dtype=np.int64)), sdir / f"{shard}.pt")
    for layer, (indices, scores) in actives.items():
        ldir = root / "actives" / model / str(runid) / str(epoch) / str(layer)
        ldir.mkdir(parents=True, exist_ok=True)
        payload = (torch.from_numpy(scores.copy()), torch.from_numpy(indices.copy()))
        torch.save(payload, ldir / f"{shard}.pt")
