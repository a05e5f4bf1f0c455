"""Fuzzed shard files through the CLI: a clear one-line error (exit 2) or a correct result.

A small valid dump (B=2 sequences x S=4 steps, top-6 of 64 experts, MoE layers 2 and 3, shards
0-0 and 0-1, no trace.yaml) is written once. Each hypothesis example copies it, breaks ONE file
(samples or actives) in one of many ways -- truncation, random bytes, flipped bytes in the file
or inside its zip members, wrong dtypes and shapes, NaN/inf, expert ids out of range, duplicate
ids, empty tensors, other Python objects, pickles carrying code, a directory, a FIFO or a missing
file, legacy serialisation, sparse/strided/Parameter tensors -- and runs ``moesim trace stats``
in this process (``sim.cli.main``) under a timeout.

The expected outcome is decided independently of the loader, from the documented format
(docs/trace-format.md): the test loads the broken file itself with ``torch.load(weights_only=
True)`` and checks types, dtypes, shapes, id range, distinct ids and finite scores.

* invalid -> exit 2, exactly one stderr line ``moesim: error: ...`` naming the broken file, no
  warnings, nothing on stdout, no output directory;
* valid -> exit 0 and gating.csv/counts.csv byte-identical to those of the same values written
  in the plain form (float32 scores, int64 ids, a tuple, zip serialisation);
* never a traceback, a hang, or a partial output; a code-carrying pickle never runs.

Case counts per mutation kind are kept in ``FUZZ_COUNTS``; set ``MOESIM_FUZZ_STATS=FILE`` to
have them written as JSON at the end (docs/reliability.md reports a long run:
``pytest -m slow tests/test_fuzz_shards.py``).
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from sim.atomic import write_json
from sim.cli import main
from sim.topk import select_topk

MODEL, RUN, EPOCH = "flame-moe-290m", "31066", "5473"
B, S, K, E = 2, 4, 6, 64
T = B * S
SHARDS = ("0-0", "0-1")
LAYERS = (2, 3)
TIMEOUT_S = 30.0
OUTPUTS = ("gating.csv", "counts.csv")

SCORE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int64, torch.int32, torch.int16)
TOKEN_DTYPES = (torch.int64, torch.int32)
ALL_DTYPES = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
)
FUZZ_COUNTS: Counter[str] = Counter()


# -- running the CLI in this process ----------------------------------------------------------------
@dataclass(frozen=True)
class CliOutcome:
    """What a user would see: exit code, stdout, stderr (warnings included, as a process has)."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.strip().splitlines()


class CliTimeout(BaseException):
    """The command ran past its time limit (a hang); a BaseException, so that no ``except
    Exception`` in the code under test can turn it into an ordinary error."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise `CliTimeout` when the block runs past ``seconds``. The alarm's exception can land
    where it is swallowed (a gc callback reports it as unraisable and carries on), so the handler
    also records that it fired and the timeout is raised when the block ends, whatever it did."""
    fired: list[float] = []

    def expire(_signum: int, _frame: object) -> None:
        fired.append(seconds)
        raise CliTimeout(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except CliTimeout:
        raise
    except BaseException as err:
        if fired:  # the alarm's exception was swallowed and another one came out instead
            raise CliTimeout(f"ran past {seconds} s (the alarm was swallowed)") from err
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    if fired:
        raise CliTimeout(f"ran past {seconds} s (the alarm was swallowed)")


def run_cli(argv: Sequence[str], timeout: float | None = None) -> CliOutcome:
    """``moesim ARGV`` as ``python -m sim`` runs it; a traceback or a hang fails the test (a
    hang as a test failure naming the command, so that hypothesis shows its example)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            time_limit(timeout or TIMEOUT_S),
        ):
            warnings.simplefilter("always")
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse errors exit like the process would
                code = exc.code if isinstance(exc.code, int) else 2
    except CliTimeout as timeout_err:  # the command under test is over: fail like an assert
        pytest.fail(f"moesim {' '.join(argv)}: {timeout_err}", pytrace=False)
    shown = "".join(f"{w.category.__name__}: {w.message}\n" for w in caught)
    return CliOutcome(int(code), out.getvalue(), err.getvalue() + shown)


def record_event(text: str) -> None:
    """hypothesis.event(), which refuses to run outside a hypothesis test (explicit cases)."""
    with contextlib.suppress(InvalidArgument):
        event(text)


def assert_one_line_error(outcome: CliOutcome, *, naming: str | None = None) -> str:
    """Exit 2, exactly one stderr line in the CLI's format, nothing on stdout."""
    assert outcome.code == 2, outcome
    lines = outcome.err_lines
    assert len(lines) == 1, outcome.err
    assert lines[0].startswith("moesim: error: ") or lines[0].startswith("moesim "), lines[0]
    assert "Traceback" not in outcome.err
    assert outcome.out == "", outcome.out
    if naming is not None:
        assert naming in lines[0], f"{naming!r} not named in: {lines[0]}"
    return lines[0]


def _busy(seconds: float) -> None:
    """Spin (no sleep) so that the alarm lands in whatever Python code runs now."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_time_limit_fails_when_the_alarm_lands_in_a_gc_callback(monkeypatch) -> None:
    """The long fuzzer once lost a timeout this way: SIGALRM landed in hypothesis's gc callback,
    whose exception Python only reports as unraisable, and the run carried on."""
    unraisable: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: unraisable.append(info.exc_value))
    callback = lambda _phase, _info: _busy(0.3)  # noqa: E731
    gc.callbacks.append(callback)
    try:
        with pytest.raises(CliTimeout, match="swallowed"), time_limit(0.05):
            gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert any(isinstance(exc, CliTimeout) for exc in unraisable)


def test_time_limit_names_a_swallowed_alarm_that_became_another_error() -> None:
    with pytest.raises(CliTimeout, match="swallowed") as info, time_limit(0.05):
        try:
            _busy(1)
        except CliTimeout:
            raise ValueError("the code under test turned the alarm into this") from None
    assert isinstance(info.value.__cause__, ValueError)


def test_time_limit_passes_a_block_that_ends_in_time() -> None:
    with time_limit(5):
        _busy(0.01)


def test_run_cli_fails_the_test_naming_the_command_on_a_hang(monkeypatch) -> None:
    """A failure (not a BaseException hypothesis lets through) so the fuzzers show the case."""

    def swallowing(_argv: list[str]) -> int:
        with contextlib.suppress(CliTimeout):
            _busy(1)
        return 0

    monkeypatch.setattr(f"{__name__}.main", swallowing)
    with pytest.raises(pytest.fail.Exception, match=r"moesim run s\.yaml: ran past 0\.05 s"):
        run_cli(["run", "s.yaml"], timeout=0.05)


# -- the dump -------------------------------------------------------------------------------------
def save(path: Path, obj: object, **kwargs: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def samples_file(root: Path, shard: str) -> Path:
    return root / "samples" / MODEL / RUN / f"{shard}.pt"


def actives_file(root: Path, layer: int, shard: str) -> Path:
    return root / "actives" / MODEL / RUN / EPOCH / str(layer) / f"{shard}.pt"


def pristine_objects(seed: int = 0) -> dict[str, Any]:
    """Relative path -> object of a valid dump: distinct ids, descending distinct scores."""
    gen = torch.Generator().manual_seed(seed)
    objects: dict[str, Any] = {}
    for shard in SHARDS:
        objects[f"samples/{MODEL}/{RUN}/{shard}.pt"] = torch.randint(0, 50_000, (T,), generator=gen)
        for layer in LAYERS:
            ids = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(T)])
            scores = torch.sort(torch.rand(T, K, generator=gen), dim=1, descending=True).values
            objects[f"actives/{MODEL}/{RUN}/{EPOCH}/{layer}/{shard}.pt"] = (scores, ids)
    return objects


def stats_argv(root: Path, out: Path) -> list[str]:
    return [
        "trace",
        "stats",
        str(root),
        "--shards",
        ",".join(SHARDS),
        "--positions",
        "all",
        "--layers",
        "all",
        "--seq-len",
        str(S),
        "--micro-batch-size",
        str(B),
        "--topk",
        "1,2,6",
        "--out",
        str(out),
    ]


@dataclass(frozen=True)
class Pristine:
    root: Path
    objects: dict[str, Any]

    def __repr__(self) -> str:
        return f"Pristine({self.root})"


def write_pristine(root: Path) -> Pristine:
    """The valid raw dump (no trace.yaml) under ``root``."""
    objects = pristine_objects()
    for rel, obj in objects.items():
        save(root / rel, obj)
    return Pristine(root=root, objects=objects)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return write_pristine(tmp_path_factory.mktemp("pristine"))


def stats_outputs(root: Path, work: Path, name: str) -> dict[str, bytes]:
    out = work / name
    outcome = run_cli(stats_argv(root, out))
    assert outcome.code == 0, outcome
    return {f: (out / f).read_bytes() for f in OUTPUTS}


# -- the independent verdict -----------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """``reject``, ``accept`` (with the plain-form object) or ``either`` (accept or reject)."""

    kind: str
    plain: Any = None
    why: str = ""


def _plain_tensor(t: torch.Tensor) -> torch.Tensor | None:
    """Strided CPU values of ``t``; None where there are none (meta)."""
    if t.device.type == "meta":
        return None
    if t.layout != torch.strided:
        t = t.to_dense()
    return t.detach().resolve_conj().resolve_neg().contiguous().clone()


def _is_exotic(t: torch.Tensor) -> bool:
    return type(t) is not torch.Tensor or t.layout != torch.strided or t.device.type == "meta"


def judge(kind: str, path: Path) -> Verdict:
    """What the format documentation says about the file now at ``path``."""
    if path.is_symlink() and not path.exists():
        return Verdict("reject", why="dangling link")
    if not path.is_file():
        return Verdict("reject", why="not a regular file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's protocol notice is not a verdict
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception:
        return Verdict("reject", why="torch.load fails")
    return judge_samples(obj) if kind == "samples" else judge_actives(obj)


def judge_samples(obj: Any) -> Verdict:
    if not isinstance(obj, torch.Tensor):
        return Verdict("reject", why="not a tensor")
    plain = _plain_tensor(obj)
    if plain is None or plain.ndim != 1 or plain.dtype not in TOKEN_DTYPES or len(plain) != T:
        return Verdict("reject", why="not 1-D int64/int32 of length T")
    return Verdict("either" if _is_exotic(obj) else "accept", plain.to(torch.int64))


def judge_actives(obj: Any) -> Verdict:
    if isinstance(obj, torch.Tensor):
        return _judge_dense(obj)
    if not (
        isinstance(obj, tuple | list)
        and len(obj) == 2
        and all(isinstance(t, torch.Tensor) for t in obj)
    ):
        return Verdict("reject", why="not a (scores, indices) pair")
    scores, ids = (_plain_tensor(t) for t in obj)
    if scores is None or ids is None:
        return Verdict("reject", why="no values (meta)")
    if scores.dtype not in SCORE_DTYPES or ids.dtype not in INDEX_DTYPES:
        return Verdict("reject", why="dtype")
    if scores.shape != (T, K) or ids.shape != (T, K):
        return Verdict("reject", why="shape")
    ids64, scores32 = ids.to(torch.int64), scores.to(torch.float32)
    if ids64.min() < 0 or ids64.max() >= E:
        return Verdict("reject", why="id out of range")
    ordered = torch.sort(ids64, dim=1).values
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        return Verdict("reject", why="duplicate id")
    if not torch.isfinite(scores32).all():
        return Verdict("reject", why="non-finite score")
    kind = "either" if any(_is_exotic(t) for t in obj) else "accept"
    return Verdict(kind, (scores32, ids64))


def _judge_dense(obj: torch.Tensor) -> Verdict:
    dense = _plain_tensor(obj)
    if dense is None or dense.dtype not in SCORE_DTYPES or dense.shape != (T, E):
        return Verdict("reject", why="not a dense [T, 64] float tensor")
    values = dense.to(torch.float32).numpy()
    if not np.isfinite(values).all():
        return Verdict("reject", why="non-finite score")
    ids = np.broadcast_to(np.arange(E, dtype=np.int16), values.shape)
    chosen = select_topk(ids, values, K, E).astype(np.int64)
    picked = np.take_along_axis(values, chosen, axis=1)
    kind = "either" if _is_exotic(obj) else "accept"
    return Verdict(kind, (torch.from_numpy(picked.copy()), torch.from_numpy(chosen)))


# -- mutations ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mutation:
    """One way to break (or re-encode) the file at a path; ``original`` is its pristine object."""

    name: str
    apply: Callable[[Path, Any], None]

    def __repr__(self) -> str:  # hypothesis prints this for a failing example
        return f"Mutation({self.name})"


SENTINEL_ENV = "MOESIM_FUZZ_SENTINEL"


class _RunsCode:
    """Unpickling this would create the sentinel file: proof that code ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.target}",))


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def truncate(fraction: float) -> Mutation:
    def apply(path: Path, _orig: Any) -> None:
        data = path.read_bytes()
        _write(path, data[: int(fraction * len(data))])

    return Mutation(f"truncate({fraction:.3f})", apply)


def random_bytes(data: bytes) -> Mutation:
    return Mutation(f"random-bytes({len(data)})", lambda path, _o: _write(path, data))


def flip_bytes(flips: list[tuple[float, int]]) -> Mutation:
    def apply(path: Path, _orig: Any) -> None:
        data = bytearray(path.read_bytes())
        for fraction, xor in flips:
            data[int(fraction * len(data)) % len(data)] ^= xor
        _write(path, bytes(data))

    return Mutation(f"flip-bytes({len(flips)})", apply)


def flip_member(member_kind: str, flips: list[tuple[float, int]]) -> Mutation:
    """Flip bytes inside the pickle or a tensor storage of the zip archive, keeping it a valid zip:
    the damage reaches the unpickler or the tensor values instead of the zip reader."""

    def apply(path: Path, _orig: Any) -> None:
        with zipfile.ZipFile(path) as archive:
            members = [(info, archive.read(info)) for info in archive.infolist()]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
            for info, data in members:
                is_pickle = info.filename.endswith("data.pkl")
                is_storage = "/data/" in info.filename
                hit = is_pickle if member_kind == "pickle" else is_storage
                if hit and data:
                    edited = bytearray(data)
                    for fraction, xor in flips:
                        edited[int(fraction * len(edited)) % len(edited)] ^= xor
                    data = bytes(edited)
                archive.writestr(info, data)
        _write(path, buf.getvalue())

    return Mutation(f"flip-{member_kind}({len(flips)})", apply)


def replace_with(name: str, build: Callable[[Any], Any], **save_kwargs: Any) -> Mutation:
    def apply(path: Path, orig: Any) -> None:
        save(path, build(orig), **save_kwargs)

    return Mutation(name, apply)


def to_directory(with_child: bool) -> Mutation:
    def apply(path: Path, _orig: Any) -> None:
        path.unlink()
        path.mkdir()
        if with_child:
            (path / "data.pkl").write_bytes(b"x")

    return Mutation(f"directory(child={with_child})", apply)


def delete() -> Mutation:
    return Mutation("missing", lambda path, _o: path.unlink())


def fifo() -> Mutation:
    def apply(path: Path, _orig: Any) -> None:
        path.unlink()
        os.mkfifo(path)

    return Mutation("fifo", apply)


def symlink(target: str) -> Mutation:
    def apply(path: Path, _orig: Any) -> None:
        path.unlink()
        if target == "self":
            path.symlink_to(path.name)
        elif target == "dangling":
            path.symlink_to(path.name + ".nowhere")
        else:  # the other shard's file in the same directory: valid, other values
            other = SHARDS[1] if path.stem == SHARDS[0] else SHARDS[0]
            path.symlink_to(f"{other}.pt")

    return Mutation(f"symlink({target})", apply)


def code_pickle(style: str) -> Mutation:
    """A pickle whose loading would run ``os.system``; the sentinel proves whether it ran."""

    def apply(path: Path, orig: Any) -> None:
        sentinel = os.environ[SENTINEL_ENV]
        payload: Any = _RunsCode(sentinel)
        if style == "inside-tuple" and isinstance(orig, tuple):
            payload = (orig[0], payload)
        if style == "raw-pickle":
            _write(path, pickle.dumps(payload, protocol=2))
        else:
            save(path, payload)

    return Mutation(f"code-pickle({style})", apply)


# values for pokes into the scores / ids
BAD_SCORES = (float("nan"), float("inf"), float("-inf"))
ODD_SCORES = (0.0, -0.0, -1.0, 1e-30, 3.0e38, 1.0, 0.5)
BAD_IDS = (-1, E, E + 1, 32_767, -32_768, 2**31 - 1, 2**40)


def poke(part: str, row: int, col: int, value: float) -> Mutation:
    def build(orig: Any) -> Any:
        if isinstance(orig, torch.Tensor):  # samples: token ids take the value (floats as floats)
            tokens = orig.clone() if part != "scores" else orig.to(torch.float64)
            tokens[row] = value if part == "scores" else int(value)
            return tokens
        scores, ids = (t.clone() for t in orig)
        if part == "scores":
            scores[row, col] = value
        elif part == "ids":
            ids[row, col] = int(value)
        else:  # "dup": repeat another column's id in this row
            ids[row, col] = ids[row, (col + 1) % K]
        return (scores, ids)

    return replace_with(f"poke-{part}({value})", build)


def recast(part: str, dtype: torch.dtype) -> Mutation:
    def build(orig: Any) -> Any:
        if isinstance(orig, torch.Tensor):
            return orig.to(dtype)
        scores, ids = orig
        return (scores.to(dtype), ids) if part == "scores" else (scores, ids.to(dtype))

    return replace_with(f"dtype-{part}({str(dtype).removeprefix('torch.')})", build)


def reshape(part: str, shape_kind: str) -> Mutation:
    def change(t: torch.Tensor) -> torch.Tensor:
        rows = t.shape[0]
        if shape_kind == "transpose":
            return t.T.contiguous() if t.ndim == 2 else t.unsqueeze(0)
        if shape_kind == "drop-row":
            return t[: rows - 1].clone()
        if shape_kind == "add-row":
            return torch.cat([t, t[-1:]])
        if shape_kind == "empty":
            return t[:0].clone()
        if shape_kind == "drop-col":
            return t[:, : t.shape[1] - 1].clone() if t.ndim == 2 else t[:0].clone()
        if shape_kind == "add-dim":
            return t.unsqueeze(-1)
        if shape_kind == "scalar":
            return t.reshape(-1)[0].clone()
        return t.reshape(-1).clone()  # flatten

    def build(orig: Any) -> Any:
        if isinstance(orig, torch.Tensor):
            return change(orig)
        scores, ids = orig
        if part == "scores":
            return (change(scores), ids)
        if part == "ids":
            return (scores, change(ids))
        return (change(scores), change(ids))

    return replace_with(f"shape-{part}({shape_kind})", build)


def other_object(kind: str) -> Mutation:
    def build(orig: Any) -> Any:
        parts = list(orig) if isinstance(orig, tuple) else [orig]
        return {
            "none": None,
            "int": 7,
            "str": "scores",
            "dict": {"scores": parts[0], "indices": parts[-1]},
            "list": list(parts),
            "triple": (*parts, parts[0]),
            "single": (parts[0],),
            "empty-tuple": (),
            "swapped": tuple(reversed(parts)),
            "nested": (tuple(parts),),
            "floats": parts[0].tolist(),
            "dense-2d": _dense_of(orig),
        }[kind]

    return replace_with(f"object({kind})", build)


def _dense_of(orig: Any) -> Any:
    """The dense [T, E] probabilities holding the same top-k (the older dump format)."""
    if isinstance(orig, torch.Tensor):
        return orig.to(torch.float32).reshape(-1, 1).repeat(1, E)
    scores, ids = orig
    dense = torch.zeros(T, E)
    dense.scatter_(1, ids, scores)
    return dense


def exotic(kind: str) -> Mutation:
    def change(t: torch.Tensor) -> torch.Tensor:
        if kind == "legacy":
            return t
        if kind == "view-of-bigger":
            big = torch.cat([t, t, t]) if t.ndim else t.reshape(1)
            return big[t.shape[0] : 2 * t.shape[0]] if t.ndim else big[0]
        if kind == "non-contiguous":
            return t.T.contiguous().T if t.ndim == 2 else t.repeat(2)[::2]
        if kind == "parameter":
            return torch.nn.Parameter(t, requires_grad=t.is_floating_point())
        if kind == "requires-grad":
            return t.clone().requires_grad_(True) if t.is_floating_point() else t
        if kind == "sparse":
            return t.to_sparse()
        if kind == "meta":
            return t.to("meta")
        return t

    def build(orig: Any) -> Any:
        return change(orig) if isinstance(orig, torch.Tensor) else tuple(change(t) for t in orig)

    kwargs: dict[str, Any] = {}
    if kind == "legacy":
        kwargs["_use_new_zipfile_serialization"] = False
    if kind.startswith("protocol-"):
        kwargs["pickle_protocol"] = int(kind.removeprefix("protocol-"))
    return replace_with(f"exotic({kind})", build, **kwargs)


fractions = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)
flips = st.lists(st.tuples(fractions, st.integers(1, 255)), min_size=1, max_size=8)

MUTATIONS = st.one_of(
    st.builds(truncate, fractions),
    st.builds(random_bytes, st.binary(max_size=2048)),
    st.builds(flip_bytes, flips),
    st.builds(flip_member, st.sampled_from(["pickle", "storage"]), flips),
    st.builds(
        poke,
        st.just("scores"),
        st.integers(0, T - 1),
        st.integers(0, K - 1),
        st.sampled_from(BAD_SCORES + ODD_SCORES),
    ),
    st.builds(
        poke, st.just("ids"), st.integers(0, T - 1), st.integers(0, K - 1), st.sampled_from(BAD_IDS)
    ),
    st.builds(poke, st.just("dup"), st.integers(0, T - 1), st.integers(0, K - 1), st.just(0.0)),
    st.builds(recast, st.sampled_from(["scores", "ids"]), st.sampled_from(ALL_DTYPES)),
    st.builds(
        reshape,
        st.sampled_from(["scores", "ids", "both"]),
        st.sampled_from(
            ["transpose", "drop-row", "add-row", "empty", "drop-col", "add-dim", "scalar", "flat"]
        ),
    ),
    st.builds(
        other_object,
        st.sampled_from(
            [
                "none",
                "int",
                "str",
                "dict",
                "list",
                "triple",
                "single",
                "empty-tuple",
                "swapped",
                "nested",
                "floats",
                "dense-2d",
            ]
        ),
    ),
    st.builds(
        exotic,
        st.sampled_from(
            [
                "legacy",
                "view-of-bigger",
                "non-contiguous",
                "parameter",
                "requires-grad",
                "protocol-2",
                "protocol-4",
                "sparse",
                "meta",
            ]
        ),
    ),
    st.builds(code_pickle, st.sampled_from(["object", "inside-tuple", "raw-pickle"])),
    st.builds(to_directory, st.booleans()),
    st.just(delete()),
    st.just(fifo()),
    st.builds(symlink, st.sampled_from(["self", "dangling", "valid"])),
)
TARGETS = st.sampled_from(
    [f"samples/{MODEL}/{RUN}/{s}.pt" for s in SHARDS]
    + [f"actives/{MODEL}/{RUN}/{EPOCH}/{layer}/{s}.pt" for layer in LAYERS for s in SHARDS]
)


# -- the property -----------------------------------------------------------------------------------
def check_case(pristine: Pristine, rel: str, mutation: Mutation) -> None:
    """Break ``rel`` with ``mutation``, run the CLI, compare with the independent verdict."""
    kind = "samples" if rel.startswith("samples/") else "actives"
    work = Path(tempfile.mkdtemp(prefix="fuzz-shard-"))
    try:
        root = work / "dump"
        shutil.copytree(pristine.root, root, symlinks=True)
        sentinel = work / "code-ran"
        os.environ[SENTINEL_ENV] = str(sentinel)
        path = root / rel
        mutation.apply(path, pristine.objects[rel])
        verdict = judge(kind, path)
        out = work / "out"
        outcome = run_cli(stats_argv(root, out))
        assert not sentinel.exists(), "a pickle ran code while loading"
        assert "Traceback" not in outcome.err, outcome.err
        label = mutation.name.split("(")[0]
        FUZZ_COUNTS[f"{label}:{'exit0' if outcome.code == 0 else 'exit2'}"] += 1
        record_event(f"{label} -> exit {outcome.code}")
        if outcome.code != 0 or verdict.kind == "reject":
            assert verdict.kind in ("reject", "either"), (
                f"valid input rejected: {outcome.err.strip()}"
            )
            # A k that differs from the first file's names both files (BUGS.md J5, fixed).
            assert_one_line_error(outcome, naming=str(path))
            assert not out.exists(), "output written for a rejected input"
            return
        assert outcome.code == 0
        assert outcome.err == "", f"a successful run printed on stderr: {outcome.err}"
        got = {f: (out / f).read_bytes() for f in OUTPUTS}
        assert got == plain_outputs(pristine, work, rel, verdict.plain), "wrong result"
    finally:
        os.environ.pop(SENTINEL_ENV, None)
        shutil.rmtree(work, ignore_errors=True)


def plain_outputs(pristine: Pristine, work: Path, rel: str, plain: Any) -> dict[str, bytes]:
    """The stats of the same values written in the plain form (the trusted reading)."""
    root = work / "plain"
    shutil.copytree(pristine.root, root)
    save(root / rel, plain)
    return stats_outputs(root, work, "plain-out")


FUZZ_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "database": None,
    "phases": [Phase.explicit, Phase.generate, Phase.shrink],
}


@settings(max_examples=110, **FUZZ_SETTINGS)
@given(rel=TARGETS, mutation=MUTATIONS)
@example(rel=f"actives/{MODEL}/{RUN}/{EPOCH}/2/0-0.pt", mutation=code_pickle("object"))
@example(rel=f"samples/{MODEL}/{RUN}/0-1.pt", mutation=to_directory(False))
@example(rel=f"actives/{MODEL}/{RUN}/{EPOCH}/3/0-0.pt", mutation=other_object("dense-2d"))
@example(rel=f"actives/{MODEL}/{RUN}/{EPOCH}/2/0-1.pt", mutation=exotic("legacy"))
def test_fuzzed_shard_files(pristine: Pristine, rel: str, mutation: Mutation) -> None:
    check_case(pristine, rel, mutation)


@pytest.mark.slow
@settings(max_examples=3000, **FUZZ_SETTINGS)
@given(rel=TARGETS, mutation=MUTATIONS)
def test_fuzzed_shard_files_long(pristine: Pristine, rel: str, mutation: Mutation) -> None:
    check_case(pristine, rel, mutation)


@pytest.mark.parametrize(
    "rel",
    [f"samples/{MODEL}/{RUN}/0-0.pt", f"actives/{MODEL}/{RUN}/{EPOCH}/3/0-1.pt"],
    ids=["samples", "actives"],
)
@pytest.mark.parametrize(
    "mutation",
    [exotic("sparse"), exotic("meta"), fifo(), exotic("protocol-4")],
    ids=[
        "sparse",  # BUGS.md J1 (fixed): was a TypeError traceback
        "meta",  # J1 (fixed)
        "fifo",  # J2 (fixed): was a hang
        "protocol-4",  # J6 (fixed): torch's UserWarning reached stderr
    ],
)
def test_unusual_files(pristine: Pristine, rel: str, mutation: Mutation, monkeypatch) -> None:
    monkeypatch.setattr(f"{__name__}.TIMEOUT_S", 5.0)
    check_case(pristine, rel, mutation)


def test_the_pristine_dump_is_valid_and_its_own_oracle(pristine: Pristine, tmp_path: Path) -> None:
    for rel in pristine.objects:
        kind = "samples" if rel.startswith("samples/") else "actives"
        assert judge(kind, pristine.root / rel).kind == "accept", rel
    first = stats_outputs(pristine.root, tmp_path, "a")
    assert first["gating.csv"].startswith(b"position,layer,topk,")
    assert first["gating.csv"].count(b"\n") == 1 + S * len(LAYERS) * 3


def test_subprocess_reports_one_line_for_a_bad_shard(pristine: Pristine, tmp_path: Path) -> None:
    """The real process (``python -m sim``): exit 2, one stderr line, no warning printed."""
    import subprocess
    import sys

    root = tmp_path / "dump"
    shutil.copytree(pristine.root, root)
    bad = actives_file(root, 3, "0-1")
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    proc = subprocess.run(
        [sys.executable, "-m", "sim", *stats_argv(root, tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_one_line_error(CliOutcome(proc.returncode, proc.stdout, proc.stderr), naming=str(bad))
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module", autouse=True)
def _report_counts() -> Iterator[None]:
    yield
    target = os.environ.get("MOESIM_FUZZ_STATS")
    if target and FUZZ_COUNTS:
        write_json(target, {"shards": dict(sorted(FUZZ_COUNTS.items()))})
