"""Read a FLAME-MoE routing dump into a `RoutingTrace`, validating every file it touches.

Dump layout (``docs/trace-format.md``)::

    samples/{model}/{runid}/{c}-{r}.pt                  1-D token ids, length T
    actives/{model}/{runid}/{epoch}/{layer}/{c}-{r}.pt  (scores [T, k], indices [T, k])
                                                        or a dense [T, num_experts] tensor

Two row layouts map file rows to (step, sequence):

* ``megatron`` (the truth): actives row ``s*B + b``, samples row ``b*S + s``; a shard is a
  micro-batch of B sequences of length S, shard i's sequences follow shard i-1's.
* ``seed`` (the notebook's reading): both files at ``seq*L + pos``, 32 sequences of L = 512 per
  shard.

Files are read shard by shard and only the selected rows are kept, so a selection from a dump of
tens of GB costs the memory of the selection.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sim import opener
from sim.errors import SelectionError, UserError
from sim.limits import MAX_BATCH, MAX_SEQ_LEN, MAX_TRACE_ENTRIES, check_count
from sim.presets import presets
from sim.ranges import format_int_selection
from sim.topk import select_topk
from sim.trace.routing import LAYOUTS, RoutingTrace, TraceMeta
from sim.trace.tracefile import TraceFile, read_trace_yaml

if TYPE_CHECKING:
    import torch

MEGATRON_SEQ_LEN = 2048  # S of the FLAME-MoE evaluation dumps
MEGATRON_MICRO_BATCH = 8  # B of the FLAME-MoE evaluation dumps
SEED_SEQ_LEN = 512  # the notebook's L
SEED_SEQS_PER_SHARD = 32  # the notebook's sequences per shard

_DTYPE_NAMES = {
    "SCORE_DTYPES": ("float32", "bfloat16", "float16"),
    "INDEX_DTYPES": ("int64", "int32", "int16"),
    "TOKEN_DTYPES": ("int64", "int32"),
}


def _torch() -> Any:
    """torch, imported on first use: building the CLI parser must not pay for it (~1 s)."""
    import torch

    return torch


def _dtypes(kind: str) -> tuple[Any, ...]:
    torch = _torch()
    return tuple(getattr(torch, name) for name in _DTYPE_NAMES[kind])


def __getattr__(name: str) -> Any:
    """``SCORE_DTYPES``, ``INDEX_DTYPES``, ``TOKEN_DTYPES``: torch dtypes, built on first use."""
    if name in _DTYPE_NAMES:
        return _dtypes(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_SHARD_RE = re.compile(r"^(\d+)-(\d+)$")
_MAX_EXPERTS = int(np.iinfo(np.int16).max)


@dataclass(frozen=True)
class ModelPreset:
    """What a model's dumps cannot tell reliably: expert count and (dense format) k."""

    num_experts: int
    k: int


# Model families whose sizes are not all in sim/presets/models.yaml: every FLAME-MoE dump
# has 64 routed experts; k = 6 is the 290m router's top-k (only the dense format needs it).
_FAMILY_PRESETS: dict[str, ModelPreset] = {"flame-moe-": ModelPreset(num_experts=64, k=6)}


def model_preset(model: str) -> ModelPreset | None:
    """Experts and top-k of ``model``: its entry in the model presets, else its family's."""
    entry = presets("models").get(model)
    if entry is not None:
        return ModelPreset(num_experts=int(entry["num_experts"]), k=int(entry["top_k"]))
    for prefix, preset in _FAMILY_PRESETS.items():
        if model.startswith(prefix):
            return preset
    return None


@dataclass(frozen=True)
class DumpSelection:
    """Which part of a dump to load, and the layout facts needed to read its rows."""

    root: Path  # dump root holding samples/ and actives/
    model: str = "flame-moe-290m"
    runid: str = "31066"
    epoch: str = "5473"
    shards: tuple[str, ...] | None = None  # shard stems ("1-2", "1-3"); None = all, by (c, r)
    layers: tuple[int, ...] | None = None  # layer ids; None = all layer dirs present
    positions: tuple[int, ...] | None = None  # steps/positions; None = all
    layout: str = "megatron"  # or "seed"
    num_experts: int | None = None  # None -> trace.yaml or model preset
    k: int | None = None  # dense [T, E] format only (top-k files say); None -> trace.yaml/preset
    seq_len: int | None = None  # megatron S (2048 or trace.yaml); seed L (512)
    micro_batch_size: int | None = None  # megatron B (8 or trace.yaml)
    seed_seqs_per_shard: int = SEED_SEQS_PER_SHARD


# -- names and paths ------------------------------------------------------------------------------
def shard_range(prefix: int | str, first: int, num: int) -> tuple[str, ...]:
    """The seed's shard selection: ``shard_range(1, 2, 2) == ("1-2", "1-3")``."""
    if num < 1 or first < 0:
        raise UserError(
            f"shards: expected --first-shard >= 0 and --num-shards >= 1, got {first}, {num}"
        )
    return tuple(f"{prefix}-{first + i}" for i in range(num))


def shard_key(stem: str) -> tuple[int, int]:
    """Sort key ``(c, r)`` of a shard stem ``c-r``; UserError when it is not one."""
    match = _SHARD_RE.match(stem)
    if not match:
        raise UserError(f"shards: expected names like '1-2' (micro-batch-rank), got {stem!r}")
    return int(match.group(1)), int(match.group(2))


def samples_dir(root: Path, model: str, runid: str) -> Path:
    return Path(root) / "samples" / model / str(runid)


def epoch_dir(root: Path, model: str, runid: str, epoch: str) -> Path:
    return Path(root) / "actives" / model / str(runid) / str(epoch)


def list_shards(directory: Path) -> tuple[str, ...]:
    """Shard stems of the ``{c}-{r}.pt`` files in ``directory``, sorted by (c, r)."""
    stems = [p.stem for p in directory.glob("*.pt") if _SHARD_RE.match(p.stem)]
    return tuple(sorted(stems, key=shard_key))


def list_layers(directory: Path) -> tuple[int, ...]:
    """Integer-named layer directories under an epoch directory, sorted."""
    if not directory.is_dir():
        return ()
    return tuple(
        sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())
    )


def list_subdirs(directory: Path) -> tuple[str, ...]:
    if not directory.is_dir():
        return ()
    return tuple(
        sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    )


# -- safe loading ---------------------------------------------------------------------------------
def load_pt(path: Path, *, mmap: bool = False) -> Any:
    """``torch.load`` restricted to tensors and plain containers; every failure is a UserError."""
    torch = _torch()
    _require_regular_file(path)
    check_declared_storage(path)
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the result is validated
            warnings.simplefilter("ignore")
            if mmap:  # torch maps the file by name: check_file has just seen a regular file
                obj = torch.load(path, weights_only=True, map_location="cpu", mmap=True)
            else:
                with opener.open_file(path, "a .pt file") as handle:
                    obj = torch.load(handle, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        text = str(err)
        named = _unsupported_global(text)
        if named:  # the pickle names a callable or class: code would run on a full load
            raise UserError(
                f"{path}: refusing to unpickle: it references {named}, not only tensors"
            ) from None
        raise UserError(
            f"{path}: expected a torch.save file, got corrupt data ({_weights_only_reason(text)})"
        ) from None
    except Exception as err:  # torch raises many types for bad files; all mean the same
        if mmap and "mmap" in str(err):
            return load_pt(path, mmap=False)  # legacy (non-zip) files cannot be memory-mapped
        raise UserError(
            f"{path}: expected a torch.save file, got unreadable data ({_first_sentence(err)})"
        ) from None
    _require_dense_cpu(path, obj)
    return obj


def _require_regular_file(path: Path) -> None:
    """Only regular files are opened: a FIFO or device would block ``open`` forever."""
    opener.check_file(path, "a .pt file")


def check_declared_storage(path: Path) -> None:
    """Compare what a zip-format shard declares with what the file holds, before torch reads
    it: ``torch.save`` stores records uncompressed, so their declared sizes add up to at most
    the file's size. A compressed record (a 2 MB file inflating to 2 GiB) is refused here,
    naming the record, its declared size and the file size. Legacy (non-zip) files and
    damaged archives are left to ``torch.load``, which checks sizes before allocating."""
    with opener.open_file(path, "a .pt file") as handle:
        size = os.fstat(handle.fileno()).st_size
        if handle.read(4) != b"PK\x03\x04":
            return
        handle.seek(0)
        try:
            records = zipfile.ZipFile(handle).infolist()
        except Exception:  # any damage (a flipped byte can even claim zip version 9.9):
            return  # torch.load says what is wrong with it
    declared = 0
    for info in records:
        if info.compress_type != zipfile.ZIP_STORED:
            raise UserError(
                f"{path}: expected uncompressed records (as torch.save writes), got "
                f"{info.filename} compressed, declaring {info.file_size:,} bytes in a "
                f"{size:,}-byte file"
            )
        declared += info.file_size
    if declared > size:
        raise UserError(
            f"{path}: expected records of at most the file's {size:,} bytes, got "
            f"{declared:,} bytes declared"
        )


def _require_dense_cpu(path: Path, obj: Any) -> None:
    """Sparse, quantised or meta tensors load but cannot become numpy arrays: refuse them."""
    torch = _torch()
    items = (
        obj if isinstance(obj, list | tuple) else obj.values() if isinstance(obj, dict) else [obj]
    )
    for item in items:
        if isinstance(item, torch.Tensor) and (
            item.layout != torch.strided or item.device.type != "cpu" or item.is_quantized
        ):
            where = item.device.type if item.device.type != "cpu" else str(item.layout)
            raise UserError(f"{path}: expected dense CPU tensors, got a {where} tensor")


def _first_sentence(err: BaseException) -> str:
    """Torch's first sentence only: the rest is advice about checkpoints, cut mid-word at 160."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    sentence = re.split(r"(?<=\S)\.(?:\s|$)", text.splitlines()[0], maxsplit=1)[0]
    return f"{type(err).__name__}: {sentence[:160]}"


def _unsupported_global(text: str) -> str | None:
    """The global a weights-only load refused (``posix.system``, ``__main__.Foo``), if any."""
    match = re.search(r"GLOBAL ([\w.]+)", text)
    return f"global {match.group(1)}" if match else None


def _weights_only_reason(text: str) -> str:
    match = re.search(r"Unsupported operand[^\n]*|Unsupported class[^\n]*", text)
    return match.group(0)[:120] if match else "not a pickle torch.load accepts"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy view/copy; half-precision floats become float32 (numpy has no bfloat16)."""
    torch = _torch()
    if tensor.dtype in (torch.bfloat16, torch.float16):
        tensor = tensor.to(torch.float32)
    return tensor.detach().cpu().numpy()


def _describe(obj: Any) -> str:
    torch = _torch()
    if isinstance(obj, torch.Tensor):
        return f"a {_dtype_name(obj.dtype)} tensor of shape {list(obj.shape)}"
    if isinstance(obj, tuple | list):
        kinds = ", ".join(type(v).__name__ for v in obj[:4])
        return f"a {type(obj).__name__} of {len(obj)} ({kinds}{', ...' if len(obj) > 4 else ''})"
    return f"a {type(obj).__name__}"


# -- one file -------------------------------------------------------------------------------------
def read_samples(path: Path) -> np.ndarray:
    """Token ids of a samples file: 1-D int64 (int32 accepted)."""
    torch = _torch()
    obj = load_pt(path)
    if not isinstance(obj, torch.Tensor):
        raise UserError(f"{path}: expected a 1-D tensor of token ids, got {_describe(obj)}")
    if obj.ndim != 1 or obj.dtype not in _dtypes("TOKEN_DTYPES"):
        raise UserError(f"{path}: expected a 1-D int64 tensor of token ids, got {_describe(obj)}")
    return obj.numpy().astype(np.int64, copy=False)


@dataclass(frozen=True)
class Actives:
    """One actives file: top-k ``experts``/``scores`` ``[T, k]``, or ``dense`` ``[T, E]``."""

    path: Path
    experts: np.ndarray | None
    scores: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.scores.shape[0])

    @property
    def is_dense(self) -> bool:
        return self.experts is None

    def take(self, rows: np.ndarray, k: int, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
        """``(experts int16, scores float32)`` of ``rows``; the dense format via `select_topk`."""
        if self.experts is not None:
            return self.experts[rows], self.scores[rows].astype(np.float32, copy=False)
        dense = self.scores[rows]
        ids = np.broadcast_to(np.arange(num_experts, dtype=np.int16), dense.shape)
        chosen = select_topk(ids, dense, k, num_experts)
        picked = np.take_along_axis(dense, chosen.astype(np.intp), axis=1)
        return chosen, picked.astype(np.float32, copy=False)


def read_actives(path: Path, num_experts: int) -> Actives:
    """Load and validate one actives file (both formats), vectorised over all its rows."""
    torch = _torch()
    obj = load_pt(path)
    if isinstance(obj, torch.Tensor):
        return _dense_actives(path, obj, num_experts)
    if not (
        isinstance(obj, tuple | list)
        and len(obj) == 2
        and all(isinstance(t, torch.Tensor) for t in obj)
    ):
        raise UserError(
            f"{path}: expected a (scores, indices) tuple of tensors or a dense [T, experts] "
            f"tensor, got {_describe(obj)}"
        )
    scores_t, ids_t = obj
    if scores_t.dtype not in _dtypes("SCORE_DTYPES"):
        raise UserError(
            f"{path}: expected scores of dtype float32/bfloat16/float16, "
            f"got {_dtype_name(scores_t.dtype)}"
        )
    if ids_t.dtype not in _dtypes("INDEX_DTYPES"):
        raise UserError(
            f"{path}: expected indices of dtype int64/int32/int16, got {_dtype_name(ids_t.dtype)}"
        )
    if scores_t.ndim != 2 or scores_t.shape != ids_t.shape or scores_t.shape[1] < 1:
        raise UserError(
            f"{path}: expected scores and indices of the same shape [T, k], got "
            f"{list(scores_t.shape)} and {list(ids_t.shape)}"
        )
    ids = ids_t.numpy()
    scores = tensor_numpy(scores_t)
    check_routing(path, ids, scores, num_experts)
    return Actives(path=path, experts=ids.astype(np.int16, copy=False), scores=scores)


def check_routing(where: object, ids: np.ndarray, scores: np.ndarray, num_experts: int) -> None:
    """Expert ids in range, no duplicate within a row, finite scores (all vectorised)."""
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= num_experts:
        bad = int(np.flatnonzero(((ids < 0) | (ids >= num_experts)).any(axis=1))[0])
        raise UserError(
            f"{where}: expected expert ids in [0, {num_experts}), "
            f"got {ids[bad].tolist()} in row {bad}"
        )
    ordered = np.sort(ids, axis=1)
    dup_rows = np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))
    if dup_rows.size:
        row = int(dup_rows[0])
        raise UserError(
            f"{where}: expected distinct expert ids in each token's top-k, got {ids[row].tolist()} "
            f"in row {row} ({dup_rows.size} rows with duplicates)"
        )
    _check_finite(where, scores)


def _check_finite(where: object, scores: np.ndarray) -> None:
    finite = np.isfinite(scores)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise UserError(f"{where}: expected finite scores, got {scores[row].tolist()} in row {row}")


def _dense_actives(path: Path, tensor: torch.Tensor, num_experts: int) -> Actives:
    if tensor.dtype not in _dtypes("SCORE_DTYPES") or tensor.ndim != 2:
        raise UserError(
            f"{path}: expected a (scores, indices) tuple or a dense float [T, {num_experts}] "
            f"tensor, got {_describe(tensor)}"
        )
    if tensor.shape[1] != num_experts:
        raise UserError(
            f"{path}: expected a dense [T, {num_experts}] probability tensor ({num_experts} "
            f"experts), got shape {list(tensor.shape)}"
        )
    dense = tensor_numpy(tensor)
    _check_finite(path, dense)
    return Actives(path=path, experts=None, scores=dense)


# -- row layouts ----------------------------------------------------------------------------------
def megatron_rows(
    positions: np.ndarray, micro_batch: int, seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(actives rows, samples rows)``, each ``[P, B]``: step p of sequence b of one shard."""
    pos = np.asarray(positions, dtype=np.int64)[:, None]
    seq = np.arange(micro_batch, dtype=np.int64)[None, :]
    return pos * micro_batch + seq, seq * seq_len + pos


def seed_rows(positions: np.ndarray, seq_len: int, seqs: int) -> np.ndarray:
    """Rows ``seq*L + pos``, ``[P, seqs]``, of both files: ``arange(p, seqs*L, L)`` per p."""
    pos = np.asarray(positions, dtype=np.int64)[:, None]
    return np.arange(seqs, dtype=np.int64)[None, :] * seq_len + pos


@dataclass(frozen=True)
class _LayoutFacts:
    layout: str
    seq_len: int  # megatron S or seed L
    seqs_per_shard: int  # megatron B or seed sequences per shard
    num_experts: int
    k_dense: int
    k_declared: int | None = None  # trace.yaml's k: top-k files must agree with it
    yaml_seq_len: int | None = None
    yaml_micro_batch: int | None = None


def resolve_facts(sel: DumpSelection, tf: TraceFile | None) -> _LayoutFacts:
    """Options first, then trace.yaml, then the model preset, then the FLAME-MoE defaults."""
    if sel.layout not in LAYOUTS:
        raise UserError(f"--layout: expected one of {list(LAYOUTS)}, got {sel.layout!r}")
    preset = model_preset(sel.model)
    same_layout = tf is not None and tf.layout == sel.layout
    num_experts = _first_given(
        sel.num_experts, tf and tf.num_experts, preset and preset.num_experts
    )
    if num_experts is None:
        raise UserError(
            f"{sel.root}: expected --num-experts (no trace.yaml and no preset for model "
            f"{sel.model!r}), got none"
        )
    if not 1 <= num_experts <= _MAX_EXPERTS:
        raise UserError(f"--num-experts: expected 1..{_MAX_EXPERTS}, got {num_experts}")
    k_dense = _first_given(sel.k, tf and tf.k, preset and preset.k) or 0
    yaml_s = tf.seq_len if same_layout and tf else None
    if sel.layout == "megatron":
        seq_len = _first_given(sel.seq_len, yaml_s, MEGATRON_SEQ_LEN)
        yaml_b = tf.micro_batch_size if same_layout and tf else None
        per_shard = _first_given(sel.micro_batch_size, yaml_b, MEGATRON_MICRO_BATCH)
    else:
        seq_len = _first_given(sel.seq_len, yaml_s, SEED_SEQ_LEN)
        per_shard = sel.seed_seqs_per_shard
    for name, value, limit in (
        ("--seq-len", seq_len, MAX_SEQ_LEN),
        ("sequences per shard", per_shard, MAX_BATCH),
    ):
        if not 1 <= value <= limit:
            raise UserError(f"{name}: expected an integer in 1..{limit:,}, got {value}")
    return _LayoutFacts(
        layout=sel.layout,
        seq_len=seq_len,
        seqs_per_shard=per_shard,
        num_experts=num_experts,
        k_dense=k_dense,
        k_declared=tf.k if tf else None,
        yaml_seq_len=tf.seq_len if tf else None,
        yaml_micro_batch=tf.micro_batch_size if tf else None,
    )


def _first_given(*values: int | None) -> Any:
    """The first value that is not None (an option, then trace.yaml, then a default)."""
    return next((v for v in values if v is not None), None)


# -- the loader -----------------------------------------------------------------------------------
def load_trace(sel: DumpSelection) -> RoutingTrace:
    """Load the selected shards x layers x positions of a dump; UserError on any bad input."""
    root = Path(sel.root)
    tf = read_trace_yaml(root)
    facts = resolve_facts(sel, tf)
    sdir = samples_dir(root, sel.model, sel.runid)
    edir = epoch_dir(root, sel.model, sel.runid, sel.epoch)
    declared = tf if tf is not None and _same_run(tf, sel) else None
    shards = _selected_shards(sel, sdir, declared.shards if declared else ())
    layers = _selected_layers(sel, edir, declared.layers if declared else ())
    positions = _selected_positions(sel, facts)
    _check_paths_exist(sdir, edir, shards, layers)
    k_guess = facts.k_declared or facts.k_dense or 1
    entries = len(shards) * facts.seqs_per_shard * len(positions) * len(layers) * k_guess
    check_count(
        entries,
        MAX_TRACE_ENTRIES,
        str(root),
        "routing entries in memory",
        f"{len(shards)} shards x {facts.seqs_per_shard} sequences x {len(positions)} positions "
        f"x {len(layers)} layers x top-{k_guess}; select fewer shards, positions or layers",
    )

    if facts.layout == "megatron":
        act_rows, smp_rows = megatron_rows(positions, facts.seqs_per_shard, facts.seq_len)
    else:
        act_rows = smp_rows = seed_rows(positions, facts.seq_len, facts.seqs_per_shard)

    expert_parts: list[np.ndarray] = []
    score_parts: list[np.ndarray] = []
    token_parts: list[np.ndarray] = []
    k_seen: list[Any] = [None, None]  # k of the first actives file read, and that file
    for shard in shards:
        spath = sdir / f"{shard}.pt"
        tokens = read_samples(spath)
        _check_rows(spath, tokens.shape[0], facts)
        token_parts.append(tokens[smp_rows])
        per_layer_e, per_layer_s = [], []
        for layer in layers:
            apath = edir / str(layer) / f"{shard}.pt"
            experts, scores = _layer_rows(apath, spath, tokens.shape[0], act_rows, facts, k_seen)
            per_layer_e.append(experts)
            per_layer_s.append(scores)
        expert_parts.append(np.stack(per_layer_e, axis=1))
        score_parts.append(np.stack(per_layer_s, axis=1))

    meta = TraceMeta(
        model=sel.model,
        runid=sel.runid,
        epoch=sel.epoch,
        layout=facts.layout,
        shards=shards,
        source=str(root),
        provenance=(tf.provenance if tf and tf.provenance else f"FLAME-MoE routing dump at {root}"),
        synthetic=bool(tf and tf.synthetic),
        synthetic_layers=tuple(x for x in (tf.synthetic_layers if tf else ()) if x in layers),
        seq_len=facts.seq_len if facts.layout == "megatron" else facts.yaml_seq_len,
        micro_batch_size=(
            facts.seqs_per_shard if facts.layout == "megatron" else facts.yaml_micro_batch
        ),
        extra=_extra(tf, facts),
    )
    return RoutingTrace(
        experts=np.ascontiguousarray(np.concatenate(expert_parts, axis=2), dtype=np.int16),
        scores=np.ascontiguousarray(np.concatenate(score_parts, axis=2), dtype=np.float32),
        tokens=np.ascontiguousarray(np.concatenate(token_parts, axis=1), dtype=np.int64),
        num_experts=facts.num_experts,
        layer_ids=layers,
        positions=tuple(int(p) for p in positions),
        meta=meta,
    )


def _extra(tf: TraceFile | None, facts: _LayoutFacts) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if tf is not None:
        extra["tokens_known"] = tf.tokens_known
        if tf.notes:
            extra["notes"] = tf.notes
    if facts.layout == "seed":
        extra["seed_seq_len"] = facts.seq_len
        extra["seed_seqs_per_shard"] = facts.seqs_per_shard
    return extra


def _layer_rows(
    apath: Path,
    spath: Path,
    num_rows: int,
    act_rows: np.ndarray,
    facts: _LayoutFacts,
    k_seen: list[Any],
) -> tuple[np.ndarray, np.ndarray]:
    actives = read_actives(apath, facts.num_experts)
    if actives.rows != num_rows:
        raise UserError(f"{apath}: expected {num_rows} rows like {spath}, got {actives.rows}")
    if actives.is_dense:
        k = facts.k_dense
        if not 1 <= k <= facts.num_experts:
            raise UserError(
                f"{apath}: dense [T, experts] format needs --k in 1..{facts.num_experts}, "
                f"got {k or 'none'}"
            )
    else:
        k = int(actives.scores.shape[1])
        if facts.k_declared is not None and facts.k_declared != k:
            raise UserError(
                f"{apath}: expected top-{facts.k_declared} rows (trace.yaml), got top-{k}"
            )
    if k_seen[0] is None:
        k_seen[0], k_seen[1] = k, apath
    elif k != k_seen[0]:
        raise UserError(f"{apath}: expected top-{k_seen[0]} like {k_seen[1]}, got top-{k}")
    experts, scores = actives.take(act_rows.ravel(), k, facts.num_experts)
    shape = (*act_rows.shape, k)
    return experts.reshape(shape), scores.reshape(shape)


def _check_rows(spath: Path, num_rows: int, facts: _LayoutFacts) -> None:
    if facts.layout == "megatron":
        b, s = facts.seqs_per_shard, facts.seq_len
        if num_rows != b * s:
            raise UserError(
                f"{spath}: expected T = B*S = {b}*{s} = {b * s} rows (micro-batch B={b}, "
                f"sequence length S={s}; see --micro-batch-size/--seq-len), got T={num_rows}"
            )
    else:
        n, length = facts.seqs_per_shard, facts.seq_len
        if num_rows < n * length:
            raise UserError(
                f"{spath}: expected at least {n}*{length} = {n * length} rows for the seed layout "
                f"({n} sequences of L={length}), got T={num_rows}"
            )


def _same_run(tf: TraceFile, sel: DumpSelection) -> bool:
    """trace.yaml describes the selected model/run/epoch (its inventory then applies)."""
    return (tf.model, str(tf.runid), str(tf.epoch)) == (sel.model, str(sel.runid), str(sel.epoch))


def _selected_shards(
    sel: DumpSelection, sdir: Path, declared: tuple[str, ...] = ()
) -> tuple[str, ...]:
    if sel.shards is not None:
        if not sel.shards:
            raise UserError("shards: expected at least one shard, got an empty list")
        for stem in sel.shards:
            shard_key(stem)
        if len(set(sel.shards)) != len(sel.shards):
            raise UserError(f"shards: expected distinct names, got {list(sel.shards)}")
        foreign = [s for s in sel.shards if declared and s not in declared]
        if foreign:
            raise SelectionError(
                "shards",
                f"expected names among {list(declared)} (the trace's shards, trace.yaml), "
                f"got {foreign}",
            )
        return tuple(sel.shards)
    if declared:  # trace.yaml says which shards the trace has: stale extra files never count
        return declared
    if not sdir.is_dir():
        raise UserError(f"{sdir}: expected a samples directory, got {missing_or_file(sdir)}")
    found = list_shards(sdir)
    if not found:
        raise UserError(f"{sdir}: expected shard files like 0-0.pt, got none")
    return found


def _selected_layers(
    sel: DumpSelection, edir: Path, declared: tuple[int, ...] = ()
) -> tuple[int, ...]:
    if not edir.is_dir():
        raise UserError(f"{edir}: expected an actives epoch directory, got {missing_or_file(edir)}")
    if sel.layers is not None:
        if not sel.layers:
            raise SelectionError("layers", "expected at least one layer, got an empty list")
        have = declared or list_layers(edir)
        absent = [int(x) for x in sel.layers if int(x) not in have]
        if absent and have:  # no layer directories at all: _check_paths_exist names the path
            raise SelectionError(
                "layers",
                f"expected ids among {format_int_selection(have)} (the trace's layers), "
                f"got {absent} ({edir / str(absent[0])}: no directory for layer {absent[0]})",
            )
        return tuple(int(x) for x in sel.layers)
    if declared:  # trace.yaml's layers (a missing one's directory is named by the path check)
        return declared
    found = list_layers(edir)
    if not found:
        raise UserError(f"{edir}: expected integer-named layer directories, got none")
    return found


def _selected_positions(sel: DumpSelection, facts: _LayoutFacts) -> np.ndarray:
    if sel.positions is None:
        return np.arange(facts.seq_len, dtype=np.int64)
    if not sel.positions:
        raise SelectionError("positions", "expected at least one position, got an empty list")
    pos = np.asarray(sel.positions, dtype=np.int64)
    bad = pos[(pos < 0) | (pos >= facts.seq_len)]
    if bad.size:
        name = "sequence length S" if facts.layout == "megatron" else "seed sequence length L"
        raise SelectionError(
            "positions",
            f"expected values in 0..{facts.seq_len - 1} ({name}={facts.seq_len}), "
            f"got {bad[:5].tolist()}",
        )
    return pos


def missing_or_file(path: Path) -> str:
    """What stands where a directory was expected: for 'expected ..., got X' messages."""
    return opener.describe(path)


def _check_paths_exist(
    sdir: Path, edir: Path, shards: Iterable[str], layers: Iterable[int]
) -> None:
    """Fail on the first missing file before reading anything (the seed stopped silently)."""
    for layer in layers:
        ldir = edir / str(layer)
        if not ldir.is_dir():
            raise UserError(
                f"{ldir}: expected the directory of layer {layer}, got {missing_or_file(ldir)}"
            )
    for shard in shards:
        paths = [sdir / f"{shard}.pt", *(edir / str(layer) / f"{shard}.pt" for layer in layers)]
        for path in paths:
            opener.check_file(path, f"shard {shard}")


# -- inventory (for `moesim trace info`) ----------------------------------------------------------
@dataclass(frozen=True)
class EpochInventory:
    """One epoch of one run: layers, actives format facts, per-layer shard counts."""

    epoch: str
    layers: tuple[int, ...]
    shards_per_layer: dict[int, int]
    formats: tuple[str, ...]  # "topk" and/or "dense"
    k: tuple[int, ...]  # distinct k of the top-k files
    dense_width: tuple[int, ...]  # distinct E of dense files
    score_dtypes: tuple[str, ...]
    index_dtypes: tuple[str, ...]
    rows: tuple[int, ...]  # distinct T of actives files

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "layers": list(self.layers),
            "shards_per_layer": {str(k): v for k, v in self.shards_per_layer.items()},
            "formats": list(self.formats),
            "k": list(self.k),
            "dense_width": list(self.dense_width),
            "score_dtypes": list(self.score_dtypes),
            "index_dtypes": list(self.index_dtypes),
            "rows": list(self.rows),
        }


@dataclass(frozen=True)
class RunInventory:
    model: str
    runid: str
    shards: tuple[str, ...]
    rows: tuple[int, ...]  # distinct T of samples files
    sample_dtypes: tuple[str, ...]
    epochs: tuple[EpochInventory, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "runid": self.runid,
            "shards": list(self.shards),
            "num_shards": len(self.shards),
            "rows": list(self.rows),
            "sample_dtypes": list(self.sample_dtypes),
            "epochs": [e.to_dict() for e in self.epochs],
        }


@dataclass(frozen=True)
class DumpInventory:
    """What a dump holds, from file headers only (tensors are memory-mapped, not read)."""

    root: Path
    trace_file: TraceFile | None
    runs: tuple[RunInventory, ...]
    problems: tuple[str, ...] = field(default_factory=tuple)
    seq_len: int = MEGATRON_SEQ_LEN  # megatron S in force (trace.yaml or default)
    micro_batch_size: int = MEGATRON_MICRO_BATCH
    num_experts: int | None = None  # trace.yaml or preset of the first model
    k_dense: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "trace_yaml": self.trace_file.to_dict() if self.trace_file else None,
            "seq_len": self.seq_len,
            "micro_batch_size": self.micro_batch_size,
            "num_experts": self.num_experts,
            "k_dense": self.k_dense,
            "runs": [r.to_dict() for r in self.runs],
            "problems": list(self.problems),
        }


def scan_dump(
    root: str | os.PathLike[str],
    model: str | None = None,
    runid: str | None = None,
    epoch: str | None = None,
    *,
    seq_len: int | None = None,
    micro_batch_size: int | None = None,
) -> DumpInventory:
    """Inventory of a dump (optionally one model/run/epoch), listing every inconsistency found."""
    root = Path(root)
    for sub in ("samples", "actives"):
        if not (root / sub).is_dir():
            raise UserError(
                f"{root}: expected a dump root holding samples/ and actives/, got no {sub}/"
            )
    tf = read_trace_yaml(root)
    s = seq_len or (tf.seq_len if tf and tf.layout == "megatron" else None) or MEGATRON_SEQ_LEN
    b = (
        micro_batch_size
        or (tf.micro_batch_size if tf and tf.layout == "megatron" else None)
        or MEGATRON_MICRO_BATCH
    )
    problems: list[str] = []
    models = _pick(root / "samples", model, "model", problems)
    runs: list[RunInventory] = []
    for m in models:
        for r in _pick(root / "samples" / m, runid, "runid", problems):
            runs.append(_scan_run(root, m, r, epoch, b * s, problems))
    if tf is not None:
        problems += trace_yaml_disagreements(root, tf, runs)
    first_model = runs[0].model if runs else (model or "")
    preset = model_preset(first_model)
    return DumpInventory(
        root=root,
        trace_file=tf,
        runs=tuple(runs),
        problems=tuple(problems),
        seq_len=s,
        micro_batch_size=b,
        num_experts=(tf.num_experts if tf and tf.num_experts else None)
        or (preset.num_experts if preset else None),
        k_dense=(tf.k if tf and tf.k else None) or (preset.k if preset else None),
    )


def trace_yaml_disagreements(root: Path, tf: TraceFile, runs: Iterable[RunInventory]) -> list[str]:
    """Where the files disagree with what trace.yaml says about them: its model/run/epoch
    directories, its layers and shards (when declared: leftovers of an older trace, or files
    lost), its k and its synthetic layers."""
    where = f"{root / 'trace.yaml'}"
    run = next((r for r in runs if (r.model, r.runid) == (tf.model, str(tf.runid))), None)
    if run is None:
        return [f"{where}: model {tf.model} run {tf.runid}: no such directory under samples/"]
    epoch = next((e for e in run.epochs if e.epoch == str(tf.epoch)), None)
    if epoch is None:
        return [f"{where}: epoch {tf.epoch}: no such directory under actives/{tf.model}/{tf.runid}"]
    found: list[str] = []
    if tf.layers and set(tf.layers) != set(epoch.layers):
        found.append(
            f"{where}: layers {_diff(tf.layers, epoch.layers)} (trace.yaml lists "
            f"{format_int_selection(tf.layers)}, the directory holds "
            f"{format_int_selection(epoch.layers) if epoch.layers else 'none'})"
        )
    # each layer's files against samples/ is reported by the scan already
    if tf.shards and set(run.shards) != set(tf.shards):
        found.append(
            f"{where}: shards {_diff(tf.shards, run.shards)} (trace.yaml lists "
            f"{len(tf.shards)}, samples/ holds {len(run.shards)})"
        )
    if tf.k and epoch.k and set(epoch.k) != {tf.k}:
        found.append(f"{where}: k is {tf.k}, the actives files hold top-{_join_ints(epoch.k)}")
    stray = [x for x in tf.synthetic_layers if x not in epoch.layers]
    if stray:
        found.append(f"{where}: synthetic_layers {stray} have no layer directory")
    return found


def _diff(declared: Iterable[Any], present: Iterable[Any]) -> str:
    extra = sorted(set(present) - set(declared), key=str)
    missing = sorted(set(declared) - set(present), key=str)
    parts = [f"{_abbrev([str(x) for x in extra])} not in trace.yaml"] if extra else []
    parts += [f"{_abbrev([str(x) for x in missing])} missing"] if missing else []
    return "; ".join(parts)


def _join_ints(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in values)


def _pick(directory: Path, wanted: str | None, what: str, problems: list[str]) -> tuple[str, ...]:
    found = list_subdirs(directory)
    if wanted is None:
        if not found:
            problems.append(f"{directory}: no {what} directories")
        return found
    if wanted not in found:
        raise UserError(
            f"{directory / wanted}: expected a {what} directory, got nothing (have {list(found)})"
        )
    return (wanted,)


def _scan_run(
    root: Path, model: str, runid: str, epoch: str | None, t_expected: int, problems: list[str]
) -> RunInventory:
    torch = _torch()
    sdir = samples_dir(root, model, runid)
    shards = list_shards(sdir)
    if not shards:
        problems.append(f"{sdir}: no shard files")
    rows: set[int] = set()
    dtypes: set[str] = set()
    sample_rows: dict[str, int] = {}
    for shard in shards:
        path = sdir / f"{shard}.pt"
        try:
            obj = load_pt(path, mmap=True)
        except UserError as err:
            problems.append(str(err))
            continue
        if (
            not isinstance(obj, torch.Tensor)
            or obj.ndim != 1
            or obj.dtype not in _dtypes("TOKEN_DTYPES")
        ):
            problems.append(
                f"{path}: expected a 1-D int64 tensor of token ids, got {_describe(obj)}"
            )
            continue
        sample_rows[shard] = int(obj.shape[0])
        rows.add(int(obj.shape[0]))
        dtypes.add(_dtype_name(obj.dtype))
        if obj.shape[0] != t_expected:
            problems.append(f"{path}: T={obj.shape[0]} is not B*S={t_expected} (megatron layout)")
    actives_run = root / "actives" / model / runid
    if not actives_run.is_dir():
        problems.append(f"{actives_run}: missing (samples exist for this run)")
        epochs: tuple[str, ...] = ()
    else:
        epochs = _pick(actives_run, epoch, "epoch", problems)
    inventories = tuple(
        _scan_epoch(actives_run / e, e, shards, sample_rows, problems) for e in epochs
    )
    return RunInventory(
        model=model,
        runid=runid,
        shards=shards,
        rows=tuple(sorted(rows)),
        sample_dtypes=tuple(sorted(dtypes)),
        epochs=inventories,
    )


def _scan_epoch(
    edir: Path,
    epoch: str,
    shards: tuple[str, ...],
    sample_rows: dict[str, int],
    problems: list[str],
) -> EpochInventory:
    layers = list_layers(edir)
    if not layers:
        problems.append(f"{edir}: no integer-named layer directories")
    formats, ks, widths, sdt, idt, rows = set(), set(), set(), set(), set(), set()
    per_layer: dict[int, int] = {}
    for layer in layers:
        ldir = edir / str(layer)
        present = list_shards(ldir)
        per_layer[layer] = len(present)
        missing = sorted(set(shards) - set(present), key=shard_key)
        extra = sorted(set(present) - set(shards), key=shard_key)
        if missing:
            problems.append(f"{ldir}: missing shards {_abbrev(missing)} (present in samples/)")
        if extra:
            problems.append(f"{ldir}: shards {_abbrev(extra)} have no samples file")
        for shard in present:
            path = ldir / f"{shard}.pt"
            try:
                obj = load_pt(path, mmap=True)
            except UserError as err:
                problems.append(str(err))
                continue
            t = _actives_header(path, obj, formats, ks, widths, sdt, idt, problems)
            if t is None:
                continue
            rows.add(t)
            if shard in sample_rows and sample_rows[shard] != t:
                problems.append(f"{path}: T={t} rows but the samples file has {sample_rows[shard]}")
    return EpochInventory(
        epoch=epoch,
        layers=layers,
        shards_per_layer=per_layer,
        formats=tuple(sorted(formats)),
        k=tuple(sorted(ks)),
        dense_width=tuple(sorted(widths)),
        score_dtypes=tuple(sorted(sdt)),
        index_dtypes=tuple(sorted(idt)),
        rows=tuple(sorted(rows)),
    )


def _actives_header(
    path: Path,
    obj: Any,
    formats: set[str],
    ks: set[int],
    widths: set[int],
    sdt: set[str],
    idt: set[str],
    problems: list[str],
) -> int | None:
    """Record format/shape/dtype facts of one actives object; None (and a problem) if malformed."""
    torch = _torch()
    if isinstance(obj, torch.Tensor):
        if obj.ndim != 2 or obj.dtype not in _dtypes("SCORE_DTYPES"):
            problems.append(
                f"{path}: expected a dense float [T, experts] tensor, got {_describe(obj)}"
            )
            return None
        formats.add("dense")
        widths.add(int(obj.shape[1]))
        sdt.add(_dtype_name(obj.dtype))
        return int(obj.shape[0])
    if not (
        isinstance(obj, tuple | list)
        and len(obj) == 2
        and all(isinstance(t, torch.Tensor) for t in obj)
    ):
        problems.append(
            f"{path}: expected a (scores, indices) tuple of tensors, got {_describe(obj)}"
        )
        return None
    scores, ids = obj
    if scores.ndim != 2 or scores.shape != ids.shape:
        problems.append(f"{path}: scores {list(scores.shape)} and indices {list(ids.shape)} differ")
        return None
    if scores.dtype not in _dtypes("SCORE_DTYPES") or ids.dtype not in _dtypes("INDEX_DTYPES"):
        problems.append(
            f"{path}: unsupported dtypes scores={_dtype_name(scores.dtype)} "
            f"indices={_dtype_name(ids.dtype)}"
        )
    formats.add("topk")
    ks.add(int(scores.shape[1]))
    sdt.add(_dtype_name(scores.dtype))
    idt.add(_dtype_name(ids.dtype))
    return int(scores.shape[0])


def _abbrev(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown
