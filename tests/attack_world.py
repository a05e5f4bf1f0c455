"""A small world of every input moesim reads, and the commands that read them, for the
reliability tests (docs/reliability.md, "Second round"): the attacks replace a file of the
world, inject an operating-system error into the writes, or edit a number, and the command
must end in one line (exit 2) or a complete, correct result (exit 0).

The world (built once per test process, copied per case):

* ``dump/``: a synthetic trace directory (2 sequences x 4 steps, layers 2-3, top-2 of 8);
* ``scenario.yaml``: two policies over the dump; ``sweep.yaml``: 2 points over it;
* ``costs/``: the shipped NeuPIMs cost tables (10 steps x 8 layers);
* ``ids.npz``, ``rows.jsonl``, ``pq/``: the same routing for the three importers;
* ``run/``: the results of ``moesim run scenario.yaml --timeline`` (every step's events);
* ``sweep-out/``: the results of ``moesim sweep sweep.yaml``;
* ``stats/``: ``moesim trace stats --notebook-tree`` of the dump (gating.csv and the tree).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck
from test_fuzz_shards import CliOutcome, assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]
COSTS_SRC = REPO / "traces" / "neupims-decoder-bs16"
STEPS, SEQS, K, EXPERTS = 4, 2, 2, 8
LAYERS = (2, 3)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world, built once per test process (import this fixture into a test module)."""
    return build_world(tmp_path_factory.mktemp("world"))


def build_world(root: Path) -> Path:
    """Write the world under ``root`` (see the module docstring); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    dump = root / "dump"
    argv = ["trace", "synth", "--out", str(dump), "--layers", "2-3", "--num-shards", "1"]
    argv += ["--micro-batch-size", str(SEQS), "--seq-len", str(STEPS)]
    argv += ["--experts", str(EXPERTS), "--topk", str(K)]
    assert run_cli(argv).code == 0
    scenario = {
        "name": "world",
        "trace": "dump",
        "routing": {"topk": K},
        "model": {"preset": "flame-moe-290m", "num_experts": EXPERTS, "top_k": K},
        "hardware": {"preset": "notebook-gbytes", "hbm": {"capacity": "2 experts"}},
        "policies": ["seed-split", "lru"],
        "baseline": "seed-split",
    }
    (root / "scenario.yaml").write_text(yaml.safe_dump(scenario), encoding="utf-8")
    sweep = {
        **scenario,
        "name": "world-sweep",
        "policies": ["seed-split"],
        "sweep": {"grid": {"hardware.links.pcie.bandwidth": ["16 GB/s", "32 GB/s"]}},
    }
    (root / "sweep.yaml").write_text(yaml.safe_dump(sweep), encoding="utf-8")
    shutil.copytree(COSTS_SRC, root / "costs")
    rng = np.random.default_rng(0)
    ids = np.stack(
        [np.stack([rng.permutation(EXPERTS)[:K] for _ in LAYERS]) for _ in range(STEPS * SEQS)]
    )
    weights = np.sort(rng.random(ids.shape), axis=-1)[..., ::-1].astype(np.float32)
    np.savez(root / "ids.npz", expert_ids=ids, gate_weights=weights)
    with open(root / "rows.jsonl", "w", encoding="utf-8") as handle:
        for t in range(ids.shape[0]):
            for li, layer in enumerate(LAYERS):
                record = {
                    "layer": layer,
                    "token": t,
                    "expert_ids": ids[t, li].tolist(),
                    "gate_weights": weights[t, li].tolist(),
                }
                handle.write(json.dumps(record) + "\n")
    write_parquet(root / "pq", ids, weights)
    ran = run_cli(
        [
            *["run", str(root / "scenario.yaml"), "--out", str(root / "run"), "--quiet"],
            "--timeline",
        ]
    )
    assert ran.code == 0, ran
    swept = run_cli(["sweep", str(root / "sweep.yaml"), "--out", str(root / "sweep-out"), *QUIET])
    assert swept.code == 0, swept
    stats = ["trace", "stats", str(dump), "--layers", "all", "--positions", "all", "--topk", "1,2"]
    assert run_cli([*stats, "--notebook-tree", "--out", str(root / "stats")]).code == 0
    return root


def write_parquet(root: Path, ids: np.ndarray, weights: np.ndarray) -> None:
    """The FLAME-MoE-Traces layout: rows of one shard of B=SEQS x S=STEPS (step-major rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "samples").mkdir(parents=True)
    it = root / "actives" / "iter_0001"
    it.mkdir(parents=True)
    pq.write_table(
        pa.table({"token_id": np.arange(STEPS * SEQS, dtype=np.int32)}),
        root / "samples" / "000.parquet",
    )
    for li, layer in enumerate(LAYERS):
        table = pa.table(
            {
                "scores": pa.array(list(weights[:, li]), type=pa.list_(pa.float32())),
                "indices": pa.array(list(ids[:, li].astype(np.int16)), type=pa.list_(pa.int16())),
            }
        )
        pq.write_table(table, it / f"layer_{layer:02d}.parquet")


QUIET = ["--jobs", "1", "--no-progress"]

# The settings of every fuzzer of the reliability tests: no deadline (a command may take a
# second), no example database (every run draws new cases), fixtures shared across examples.
FUZZ: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}

# command -> (argv given the world W and an output path O, the parts of W it reads)
Argv = Callable[[Path, Path], list[str]]
COMMANDS: dict[str, tuple[Argv, tuple[str, ...]]] = {
    "validate": (lambda w, o: ["validate", str(w / "scenario.yaml")], ("scenario.yaml", "dump")),
    "run": (
        lambda w, o: ["run", str(w / "scenario.yaml"), "--out", str(o), "--quiet"],
        ("scenario.yaml", "dump"),
    ),
    "sweep": (
        lambda w, o: ["sweep", str(w / "sweep.yaml"), "--out", str(o), *QUIET],
        ("sweep.yaml", "dump"),
    ),
    "resume": (
        lambda w, o: ["sweep", str(w / "sweep.yaml"), "--resume", str(w / "sweep-out"), *QUIET],
        ("sweep.yaml", "sweep-out", "dump"),
    ),
    "stats": (
        lambda w, o: (
            [
                *["trace", "stats", str(w / "dump"), "--topk", "1,2", "--out", str(o)],
                *["--layers", "all", "--positions", "all"],
            ]
        ),
        ("dump",),
    ),
    "info": (lambda w, o: ["trace", "info", str(w / "dump"), "--check"], ("dump",)),
    "costs": (lambda w, o: ["costs", "neupims", str(w / "costs"), "--no-cells"], ("costs",)),
    "numpy": (
        lambda w, o: ["trace", "import", "numpy", str(w / "ids.npz"), "--out", str(o)],
        ("ids.npz",),
    ),
    "jsonl": (
        lambda w, o: ["trace", "import", "jsonl", str(w / "rows.jsonl"), "--out", str(o)],
        ("rows.jsonl",),
    ),
    "parquet": (
        lambda w, o: (
            [
                *["trace", "import", "parquet", str(w / "pq"), "--out", str(o)],
                *["--micro-batch-size", str(SEQS), "--seq-len", str(STEPS)],
            ]
        ),
        ("pq",),
    ),
    "report": (
        lambda w, o: ["report", str(w / "run"), "--format", "html", "--out", str(o)],
        ("run",),
    ),
    "report-sweep": (
        lambda w, o: ["report", str(w / "sweep-out"), "--format", "html", "--out", str(o)],
        ("sweep-out",),
    ),
}


@contextlib.contextmanager
def world_copy(world: Path, *parts: str) -> Iterator[Path]:
    """A private copy of the world (only ``parts`` of it, when given), removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="attack-"))
    try:
        for part in parts or tuple(p.name for p in world.iterdir()):
            src = world / part
            if src.is_dir():
                shutil.copytree(src, work / part, symlinks=True)
            elif src.exists():
                shutil.copy2(src, work / part)
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def files_under(work: Path, roots: tuple[str, ...]) -> list[Path]:
    """Every regular file under the given parts of a world (or of a copy), sorted."""
    found: list[Path] = []
    for root in roots:
        path = work / root
        found += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return found


def run_command(name: str, work: Path, out: Path) -> CliOutcome:
    argv, _ = COMMANDS[name]
    return run_cli(argv(work, out))


def assert_refused(outcome: CliOutcome, naming: str | None = None) -> str:
    """Exit 2, one line, no traceback; the line names ``naming`` when given."""
    assert "Traceback" not in outcome.err, outcome.err
    return assert_one_line_error(outcome, naming=naming)


def hidden_leftovers(*dirs: Path) -> list[str]:
    """Temporary files and directories of the atomic writers left in (or under) ``dirs``."""
    found = []
    for d in dirs:
        if not d.is_dir():
            continue
        for path in d.rglob(".*"):
            if path.name.endswith((".tmp", ".partial", ".old")):
                found.append(str(path.relative_to(d)))
    return found


# -- turning a file into something else ---------------------------------------------------------
KINDS = ("fifo", "directory", "symlink-loop", "dangling-symlink", "device", "unreadable")


def make_bad(path: Path, kind: str) -> None:
    """Replace the file at ``path`` by ``kind`` (``unreadable`` is done by `unreadable`)."""
    if kind == "unreadable":
        return
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
        (path / "inner").write_text("x", encoding="utf-8")
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "dangling-symlink":
        path.symlink_to(path.name + ".gone")
    elif kind == "device":
        path.symlink_to("/dev/zero")
    else:
        raise ValueError(kind)


@contextlib.contextmanager
def unreadable(path: Path | None) -> Iterator[None]:
    """Make ``os.open`` of ``path`` fail with EACCES, as for a user without permission (these
    tests run as root, for whom permission bits do not stop a read)."""
    if path is None:
        yield
        return
    real_open = os.open
    target = os.path.abspath(path)

    def guarded(file: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if isinstance(file, str | os.PathLike) and os.path.abspath(file) == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(file))
        return real_open(file, flags, *args, **kwargs)

    os.open = guarded  # type: ignore[assignment]
    try:
        yield
    finally:
        os.open = real_open  # type: ignore[assignment]


# -- operating-system errors on write -------------------------------------------------------------
WRITE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EFBIG, errno.EACCES, errno.EDQUOT, errno.EIO)


@dataclass
class WriteFaults:
    """Counts the write operations of a command (temp files and directories created, data
    written, renames, mkdir) and makes the ``at``-th one raise OSError(``code``)."""

    code: int
    at: int
    seen: int = 0
    fired: bool = False

    def hit(self, path: Any) -> None:
        self.seen += 1
        if self.seen == self.at:
            self.fired = True
            raise OSError(self.code, os.strerror(self.code), str(path))


class _FailingFile:
    def __init__(self, handle: Any, faults: WriteFaults) -> None:
        self._handle, self._faults = handle, faults

    def write(self, data: bytes) -> int:
        self._faults.hit(getattr(self._handle, "name", "?"))
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@contextlib.contextmanager
def write_faults(code: int, at: int) -> Iterator[WriteFaults]:
    """Inject ``code`` at the ``at``-th write operation while the block runs."""
    faults = WriteFaults(code, at)
    saved = {
        (os, "fdopen"): os.fdopen,
        (os, "replace"): os.replace,
        (os, "rename"): os.rename,
        (os, "mkdir"): os.mkdir,
        (tempfile, "mkstemp"): tempfile.mkstemp,
        (tempfile, "mkdtemp"): tempfile.mkdtemp,
    }

    def fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = saved[(os, "fdopen")](fd, mode, *args, **kwargs)
        return _FailingFile(handle, faults) if "w" in mode or "a" in mode else handle

    def wrap(func: Any, name: str) -> Any:
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if name == "mkdir" and os.path.lexists(args[0]):
                return func(*args, **kwargs)  # EEXIST comes first, on any file system
            faults.hit(args[-1] if args else kwargs.get("dir", "?"))
            return func(*args, **kwargs)

        return guarded

    os.fdopen = fdopen  # type: ignore[assignment]
    for (module, name), func in saved.items():
        if name != "fdopen":
            setattr(module, name, wrap(func, name))
    try:
        yield faults
    finally:
        for (module, name), func in saved.items():
            setattr(module, name, func)
