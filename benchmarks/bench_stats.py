"""Benchmark: `moesim trace stats` against the seed notebook's own method (issue 3).

Writes two real-sized shards (T = 16,384 rows, top-6 of 64 experts, MoE layers 2-9, seeded
routing with a skewed expert popularity) in the FLAME-MoE dump layout under a temporary
directory, then times as whole processes, from the same shards:

(a) the notebook's method on its 80 cells (positions 0-9 x layers 2-9): per cell it loads the
    shards, writes the dense 64-column CSV, reads it back with ``pd.read_csv`` and loops over
    ``df.iterrows()`` once per top-k (1, 2, 6) with ``np.argsort(row[expert_columns].values
    .astype(float))``, then writes its ``_top{k}_stats`` files, exactly as the notebook does.
    Without pandas (not a dependency of moesim: ``pip install -e '.[bench]'``) it falls back to the
    ``csv`` module and a loop over its rows (faster than ``iterrows``, so it favours the
    notebook) and says so. The ``.pt`` and ``.txt`` tensor dumps are left out (they belong to
    ``--notebook-tree``).
(b) ``moesim trace stats ROOT --layout seed --positions all`` on 4,096 cells (512 x 8).

It prints cells/s of each and their ratio (target >= 100x), checks that both give the same
gating numbers on the 80 shared cells, and records the result in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_stats.py [--repeat 3] [--no-record]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

try:  # the notebook's own reader; optional (not a moesim dependency)
    import pandas as pd
except ImportError:
    pd = None

from results_md import record_section

MODEL, RUNID, EPOCH = "flame-moe-290m", 31066, 5473
SHARDS = ("1-2", "1-3")
LAYERS = tuple(range(2, 10))
T, K, E = 16_384, 6, 64
SEQ_LEN, SEQS_PER_SHARD = 512, 32
REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## stats (issue 3)"
METHOD = (
    f"pandas {pd.__version__} read_csv + iterrows (the notebook's own method)"
    if pd is not None
    else "csv module + a loop over its rows (pandas not installed; its iterrows is slower)"
)


# -- input ------------------------------------------------------------------------------------------
def write_shards(root: Path, seed: int = 0) -> None:
    """Two shards with skewed routing: per-layer Dirichlet popularity + Gumbel noise logits."""
    rng = np.random.default_rng(seed)
    sdir = root / "samples" / MODEL / str(RUNID)
    sdir.mkdir(parents=True)
    for shard in SHARDS:
        tokens = rng.zipf(1.3, T).clip(max=50_000).astype(np.int64)
        torch.save(torch.from_numpy(tokens), sdir / f"{shard}.pt")
        for layer in LAYERS:
            popularity = rng.dirichlet(np.full(E, 0.6))
            logits = 0.5 * np.log(popularity)[None, :] + rng.gumbel(size=(T, E))
            # Temperature 0.5: scores like the real router's (top-1 ~0.15, 6th ~0.03).
            probs = np.exp(0.5 * (logits - logits.max(axis=1, keepdims=True)))
            probs /= probs.sum(axis=1, keepdims=True)
            indices = np.argsort(-probs, axis=1)[:, :K]
            scores = np.take_along_axis(probs, indices, axis=1).astype(np.float32)
            ldir = root / "actives" / MODEL / str(RUNID) / str(EPOCH) / str(layer)
            ldir.mkdir(parents=True, exist_ok=True)
            payload = (torch.from_numpy(scores), torch.from_numpy(indices.astype(np.int64)))
            torch.save(payload, ldir / f"{shard}.pt")


# -- (a) the notebook's method (run in its own process) -------------------------------------------
def notebook_method(root: Path, out: Path) -> None:
    """The seed's cell 1 loop for positions 0-9 x layers 2-9, minus the .pt/.txt dumps."""
    bw_pcie, bw_md, alpha = 32, 512, 1.0
    expert_columns = [f"expert_{i}" for i in range(E)]
    for token_pos in range(10):
        for layer in LAYERS:
            layer_dir = out / str(token_pos) / f"Layer_{layer}"
            layer_dir.mkdir(parents=True, exist_ok=True)
            s_parts, sc_parts, i_parts = [], [], []
            for shard in SHARDS:
                samples = torch.load(root / "samples" / MODEL / str(RUNID) / f"{shard}.pt")
                actives = torch.load(
                    root / "actives" / MODEL / str(RUNID) / str(EPOCH) / str(layer) / f"{shard}.pt"
                )
                scores, indices = actives
                rows = torch.arange(token_pos, SEQS_PER_SHARD * SEQ_LEN, SEQ_LEN)
                s_parts.append(samples[rows])
                sc_parts.append(scores[rows])
                i_parts.append(indices[rows])
            scores_all, indices_all = torch.cat(sc_parts), torch.cat(i_parts)
            n = len(torch.cat(s_parts))
            base = layer_dir / f"layer{layer}_pos{token_pos}"
            with open(f"{base}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["layer_id", "token_id", *expert_columns])
                for token_idx in range(n):
                    expert_scores = [0.0] * E
                    for i in range(len(indices_all[token_idx])):
                        expert_id = int(indices_all[token_idx][i].item())
                        expert_scores[expert_id] = float(scores_all[token_idx][i].item())
                    writer.writerow([0, token_idx, *(f"{s:.6f}" for s in expert_scores)])
            df = read_back(f"{base}.csv")
            for k in (1, 2, 6):
                counts = {i: 0 for i in range(E)}
                for expert_scores in row_scores(df, expert_columns):
                    for expert_id in np.argsort(expert_scores)[-k:][::-1]:
                        counts[int(expert_id)] += 1
                ranked = sorted(counts.items(), key=lambda x: x[1], reverse=True)
                activ = sum(1 for c in counts.values() if c > 0)
                gpu = round((bw_pcie / (bw_md + bw_pcie)) * activ)
                md, h = activ - gpu, int(alpha * gpu)
                with open(f"{base}_top{k}_stats.txt", "w") as f:
                    for expert_id, count in ranked:
                        f.write(f"Expert {expert_id:<5} {count:<15} {count / n * 100:>6.2f}%\n")
                    f.write(f"Expert_Activ (experts with ≥1 token): {activ}\n")
                    f.write(f"  Expert_GPU: {gpu}\n  Expert_MD:  {md}\n  H (Gating Output): {h}\n")
                with open(f"{base}_top{k}_stats.csv", "w", newline="") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["Expert_ID", "Token_Count", "Percentage", "Rank"])
                    for rank, (expert_id, count) in enumerate(ranked, 1):
                        writer.writerow([expert_id, count, f"{count / n * 100:.2f}", rank])


def read_back(path: str) -> object:
    """The notebook's ``pd.read_csv(csv_filename)`` (the csv module without pandas)."""
    if pd is not None:
        return pd.read_csv(path)
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def row_scores(df: object, expert_columns: list[str]):
    """Each row's 64 scores as the notebook gets them: ``for idx, row in df.iterrows():
    expert_scores = row[expert_columns].values.astype(float)``."""
    if pd is not None:
        for _idx, row in df.iterrows():
            yield row[expert_columns].values.astype(float)
    else:
        for row in df:
            yield np.array([row[c] for c in expert_columns]).astype(float)


def notebook_gating(out: Path) -> dict[tuple[int, int, int], tuple[int, int, int, int]]:
    """The gating numbers the notebook method wrote, keyed (position, layer, k)."""
    found = {}
    for path in out.rglob("*_stats.txt"):
        layer, pos, k = map(int, re.match(r"layer(\d+)_pos(\d+)_top(\d+)_", path.name).groups())
        text = path.read_text(encoding="utf-8")
        numbers = [int(x) for x in re.findall(r":\s+(\d+)\n", text)[-4:]]
        found[(pos, layer, k)] = tuple(numbers)
    return found


# -- timing ---------------------------------------------------------------------------------------
def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def in_process(root: Path, work: Path, stats_args: list[str]) -> tuple[float, float]:
    """CPU seconds of (a) and (b) in this process, after their imports: the per-cell work
    without interpreter start-up and module imports (which the whole-process numbers include)."""
    import contextlib
    import io

    from sim.cli import build_parser, main

    build_parser()  # import every command module first
    start = time.process_time()
    notebook_method(root, work / "nb_inner")
    nb = time.process_time() - start
    out = [*stats_args[:-1], str(work / "ours_inner")]
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(out)
    ours = time.process_time() - start
    if rc != 0:
        raise SystemExit(f"moesim {' '.join(out)} failed with {rc}")
    return nb, ours


def machine() -> str:
    return (
        f"{os.cpu_count()}-core {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, torch {torch.__version__}"
    )


def record(text: str) -> None:
    """Replace (or add) this benchmark's section of RESULTS.md, keeping the others."""
    record_section(SECTION, text, RESULTS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the median counts")
    parser.add_argument("--no-record", action="store_true", help="do not update RESULTS.md")
    parser.add_argument(
        "--notebook-method", nargs=2, metavar=("ROOT", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.notebook_method:
        notebook_method(Path(args.notebook_method[0]), Path(args.notebook_method[1]))
        return 0

    print(f"notebook method: {METHOD}")
    if pd is None:  # the ratio is then against a faster stand-in: say so where it is seen
        print(
            "bench_stats: pandas is not installed, so the notebook's method is timed with a "
            "csv-module stand-in (install it: .venv/bin/pip install -e '.[bench]' -c constraints.txt)",
            file=sys.stderr,
        )
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_stats_") as tmp:
        root, work = Path(tmp) / "dump", Path(tmp)
        write_shards(root)
        nb_cmd = [sys.executable, __file__, "--notebook-method", str(root), str(work / "nb")]
        ours_cmd = [sys.executable, "-m", "sim", "trace", "stats", str(root), "--layout", "seed",
                    "--positions", "all", "--out", str(work / "ours")]  # fmt: skip
        nb_times = [timed(nb_cmd) for _ in range(args.repeat)]
        ours_times = [timed(ours_cmd) for _ in range(args.repeat)]

        ours_rows = {}
        with open(work / "ours" / "gating.csv", newline="") as handle:
            for r in csv.DictReader(handle):
                key = (int(r["position"]), int(r["layer"]), int(r["topk"]))
                ours_rows[key] = tuple(
                    int(r[c]) for c in ("expert_activ", "expert_gpu", "expert_md", "h")
                )
        nb_rows = notebook_gating(work / "nb")
        agree = len(nb_rows) == 240 and all(ours_rows[key] == v for key, v in nb_rows.items())
        nb_inner, ours_inner = in_process(root, work, ours_cmd[3:])

    nb_wall, nb_cpu = (statistics.median(t[i] for t in nb_times) for i in (0, 1))
    ours_wall, ours_cpu = (statistics.median(t[i] for t in ours_times) for i in (0, 1))
    floor_wall, floor_cpu = timed([sys.executable, "-c", "import torch"])
    start_wall, start_cpu = timed([sys.executable, "-m", "sim", "--help"])
    ratio_wall = (4096 / ours_wall) / (80 / nb_wall)
    ratio_cpu = (4096 / ours_cpu) / (80 / nb_cpu)
    lines = [
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; machine: {machine()}; "
        f"load average at start {load:.2f} (the box is shared: CPU time is the steadier measure)",
        f"- input: 2 shards x T={T} rows, top-{K} of {E} experts, layers 2-9 (seeded, skewed)",
        f"- (a) notebook method, 80 cells (positions 0-9 x 8 layers): wall {nb_wall:.2f} s "
        f"({80 / nb_wall:.1f} cells/s), CPU {nb_cpu:.2f} s ({80 / nb_cpu:.1f} cells/s); "
        f"{METHOD}, per-row numpy argsort, .pt/.txt dumps excluded",
        f"- (b) `moesim trace stats --layout seed --positions all`, 4096 cells (512 x 8): wall "
        f"{ours_wall:.2f} s ({4096 / ours_wall:.0f} cells/s), CPU {ours_cpu:.2f} s "
        f"({4096 / ours_cpu:.0f} cells/s)",
        f"- ratio (b)/(a) in cells/s: {ratio_wall:.0f}x by wall time, {ratio_cpu:.0f}x by CPU "
        f"time (target >= 100x); whole processes, median of {args.repeat}",
        f"- both processes start Python and import torch: `python -c 'import torch'` alone "
        f"takes wall {floor_wall:.2f} s, CPU {floor_cpu:.2f} s here, {floor_cpu / ours_cpu:.0%} of "
        f"(b)'s CPU time; `moesim --help` (Python and every command module, imported to build "
        f"the parser; torch only loads when a command reads .pt files) wall {start_wall:.2f} s, "
        f"CPU {start_cpu:.2f} s",
        f"- the same work inside one warm process (imports done, CPU time): (a) {nb_inner:.2f} s "
        f"({80 / nb_inner:.0f} cells/s), (b) {ours_inner:.2f} s ({4096 / ours_inner:.0f} cells/s): "
        f"{(4096 / ours_inner) / (80 / nb_inner):.0f}x",
        f"- same gating numbers on the 80 shared cells x top-1,2,6: {'yes' if agree else 'NO'}",
    ]
    print("\n".join(lines))
    if not args.no_record:
        record("\n".join(lines))
        print(f"recorded in {RESULTS.relative_to(REPO)}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
