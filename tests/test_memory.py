"""Peak memory of ``moesim run`` / ``moesim trace stats`` over large dumps stays under 4 GiB.

The slow test generates the two dumps of benchmarks/bench_memory.py under pytest's temporary
directory (in /tmp): 128 sequences x 2048 steps x 8 layers (FLAME-MoE-290M's shape) and x 17
layers (FLAME-MoE-1.7B's), and measures each process's own peak RSS. The fast test checks the
measuring itself: a child that touches 300 MB must report at least that much, and the figure
must be that child's own, not the largest of all children so far.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench_memory() -> ModuleType:
    benchmarks = str(REPO / "benchmarks")
    if benchmarks not in sys.path:  # its sibling results_md, as when run as a script
        sys.path.insert(0, benchmarks)
    spec = importlib.util.spec_from_file_location(
        "bench_memory", REPO / "benchmarks/bench_memory.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_peak_rss_is_the_childs_own(tmp_path: Path) -> None:
    bench = bench_memory()
    touch = "import numpy as np; a = np.ones({n}, dtype=np.uint8); print(a.sum())"
    big = bench.measure("big", [sys.executable, "-c", touch.format(n=300_000_000)], tmp_path)
    small = bench.measure("small", [sys.executable, "-c", touch.format(n=1_000)], tmp_path)
    assert big.code == small.code == 0
    assert big.peak_rss >= 300e6
    assert small.peak_rss < 200e6  # not the earlier child's 300 MB


@pytest.mark.slow
@pytest.mark.parametrize("case", ["290m", "1.7b"])
def test_large_dump_stays_under_4_gib(tmp_path: Path, case: str) -> None:
    bench = bench_memory()
    measured = bench.run_case(bench.CASES[case], tmp_path, bench.POLICIES)
    for m in measured:
        assert m.code == 0, m.stderr[-500:]
        assert m.peak_rss < bench.LIMIT_BYTES, f"{m.label}: {m.peak_gib:.2f} GiB"
    files, size = bench.dump_size(tmp_path / f"dump-{case}")
    assert files == 16 * (1 + bench.CASES[case].num_layers)
    assert size > 100e6
