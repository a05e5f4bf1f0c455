"""Importers: other routing dumps -> :class:`RoutingTrace` (then written with ``write_dump``).

Three sources (details and examples in ``docs/trace-import.md``):

* the public **FLAME-MoE-Traces parquet release**: ``samples/NNN.parquet`` (column
  ``token_id``) and ``actives/iter_NNNN/layer_NN.parquet`` (list columns ``scores``,
  ``indices``). Rows are assumed to be the Megatron dump's rows concatenated shard after shard
  (T = B x S rows per shard; actives position-major ``s*B + b``, samples sequence-major
  ``b*S + s``): the release's first actives row equals the ``.pt`` dump's first row, and it was
  converted from those files. Needs pyarrow (the ``parquet`` extra), imported lazily;
* a **numpy** array ``[tokens, layers, k]`` of expert ids (``.npy``, or ``.npz`` with
  ``expert_ids`` and optional ``gate_weights`` / ``token_ids``), as vLLM returns routed experts;
* **JSON lines**, one object per (layer, token): ``{"layer", "token", "expert_ids",
  "gate_weights"}`` (+ optional ``"token_id"``).

For the last two, token row ``t`` is mapped to (step, sequence) by ``order``: ``step-major``
(default, ``t = step * seqs + seq``, the order a batched decoder emits) or ``seq-major``
(``t = seq * steps + step``). Without gate weights the scores are rank placeholders
(``k, k-1, ..., 1`` over ``k (k + 1) / 2``): the order is kept, the values mean nothing.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim import opener
from sim.errors import UserError
from sim.limits import (
    INT64_MAX,
    INT64_MIN,
    MAX_EXPERTS,
    MAX_TRACE_ENTRIES,
    check_count,
    float_array,
    int_array,
)
from sim.ranges import MAX_INDEX
from sim.trace.routing import RoutingTrace, TraceMeta

ORDERS = ("step-major", "seq-major")


@dataclass(frozen=True)
class ImportLabels:
    """Names of the imported trace (dump paths and provenance), and its batch shape."""

    model: str
    runid: str
    epoch: str
    num_seqs: int = 1  # sequences interleaved in the token rows (numpy / jsonl)
    micro_batch_size: int | None = None  # sequences per written shard (default: all)
    order: str = "step-major"
    num_experts: int | None = None  # default: the largest id + 1
    provenance: str = ""


# -- shared: rows [tokens, layers, k] -> RoutingTrace --------------------------------------------


def trace_from_rows(
    where: str,
    experts: np.ndarray,
    weights: np.ndarray | None,
    token_ids: np.ndarray | None,
    layer_ids: tuple[int, ...],
    labels: ImportLabels,
) -> RoutingTrace:
    """Validate per-token routing rows ``[tokens, layers, k]`` and arrange them by step/seq."""
    experts = np.asarray(experts)
    if experts.ndim != 3 or 0 in experts.shape:
        raise UserError(
            f"{where}: expected expert ids of shape [tokens, layers, k], got {experts.shape}"
        )
    if not np.issubdtype(experts.dtype, np.integer):
        raise UserError(f"{where}: expected integer expert ids, got dtype {experts.dtype}")
    tokens, layers, k = experts.shape
    if len(layer_ids) != layers:
        raise UserError(
            f"{where}: expected {layers} layer ids for {layers} layers, got {list(layer_ids)}"
        )
    if labels.order not in ORDERS:
        raise UserError(f"--order: expected one of {list(ORDERS)}, got {labels.order!r}")
    seqs = labels.num_seqs
    if tokens % seqs:
        raise UserError(
            f"{where}: expected the token count ({tokens}) to be a multiple of --num-seqs {seqs}"
        )
    lo, hi = int(experts.min()), int(experts.max())
    num_experts = labels.num_experts or hi + 1
    if lo < 0 or hi >= num_experts:
        raise UserError(f"{where}: expected expert ids in [0, {num_experts}), got {lo}..{hi}")
    if num_experts > np.iinfo(np.int16).max:
        raise UserError(f"{where}: expected at most 32767 experts, got {num_experts}")
    ordered = np.sort(experts, axis=-1)
    dup = np.flatnonzero((ordered[..., 1:] == ordered[..., :-1]).any(axis=(1, 2)))
    if dup.size:
        raise UserError(
            f"{where}: expected distinct experts per token and layer, got a "
            f"repeat at token {int(dup[0])}"
        )
    if weights is None:
        ranks = np.arange(k, 0, -1, dtype=np.float32) / (k * (k + 1) / 2)
        scores = np.broadcast_to(ranks, experts.shape).astype(np.float32)
        experts_sorted = experts
    else:
        weights = float_array(weights, f"{where}: gate weights", dtype=np.float32)
        if weights.shape != experts.shape:
            raise UserError(
                f"{where}: expected gate weights of shape {experts.shape}, got {weights.shape}"
            )
        order = np.argsort(-weights, axis=-1, kind="stable")  # trace order: score descending
        scores = np.take_along_axis(weights, order, axis=-1)
        experts_sorted = np.take_along_axis(experts, order, axis=-1)
    if token_ids is None:
        token_ids = np.full(tokens, -1, dtype=np.int64)
    token_ids = int_array(token_ids, f"{where}: token ids")
    if token_ids.shape != (tokens,):
        raise UserError(f"{where}: expected {tokens} token ids, got shape {token_ids.shape}")
    steps = tokens // seqs
    if labels.order == "step-major":  # t = step * seqs + seq
        grid = (steps, seqs)
        to_trace = (0, 2, 1, 3)
    else:  # t = seq * steps + step
        grid = (seqs, steps)
        to_trace = (1, 2, 0, 3)
    arr_e = experts_sorted.reshape(*grid, layers, k).transpose(to_trace)
    arr_s = scores.reshape(*grid, layers, k).transpose(to_trace)
    tok = token_ids.astype(np.int64).reshape(grid)
    if labels.order == "seq-major":
        tok = tok.T
    return RoutingTrace(
        experts=np.ascontiguousarray(arr_e, dtype=np.int16),
        scores=np.ascontiguousarray(arr_s, dtype=np.float32),
        tokens=np.ascontiguousarray(tok),
        num_experts=num_experts,
        layer_ids=tuple(layer_ids),
        positions=tuple(range(steps)),
        meta=TraceMeta(
            model=labels.model,
            runid=labels.runid,
            epoch=labels.epoch,
            layout="megatron",
            source=where,
            provenance=labels.provenance or f"imported from {where}",
            seq_len=steps,
            micro_batch_size=labels.micro_batch_size or seqs,
        ),
    )


# -- numpy ------------------------------------------------------------------------------------

_NPZ_IDS = ("expert_ids", "topk_ids", "experts")
_NPZ_WEIGHTS = ("gate_weights", "topk_weights", "weights")
_NPZ_TOKENS = ("token_ids", "tokens")


def read_numpy(
    path: Path, weights_path: Path | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(expert ids, gate weights or None, token ids or None) from ``.npy`` / ``.npz`` files."""
    data = _load_npy(path)
    if isinstance(data, np.ndarray):
        ids, weights, token_ids = data, None, None
    else:
        ids = _pick(path, data, _NPZ_IDS, required=True)
        weights = _pick(path, data, _NPZ_WEIGHTS)
        token_ids = _pick(path, data, _NPZ_TOKENS)
    if weights_path is not None:
        if weights is not None:
            raise UserError(
                f"{weights_path}: expected gate weights in one place, got them in {path} too"
            )
        loaded = _load_npy(weights_path)
        if not isinstance(loaded, np.ndarray):
            raise UserError(f"{weights_path}: expected a .npy array of gate weights, got .npz")
        weights = loaded
    return ids, weights, token_ids


def _load_npy(path: Path) -> Any:
    """A .npy array or a .npz's arrays, read through the one opener with pickles refused
    (``allow_pickle=False``: an object array is an error, never code)."""
    with opener.open_file(path, "a .npy/.npz file") as handle:
        check_declared_arrays(path, handle)
        try:
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    return {name: loaded[name] for name in loaded.files}
            return loaded
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise UserError(
                f"{path}: expected a readable .npy/.npz array, got {_first_line(err)}"
            ) from None


def check_declared_arrays(path: Path, handle: Any) -> None:
    """Read the header of every array in a .npy or .npz before any array is loaded: at most
    `MAX_TRACE_ENTRIES` entries each, and a .npy's data no larger than the file (a small
    compressed .npz can declare gigabytes; np.load would allocate them first)."""
    size = os.fstat(handle.fileno()).st_size
    magic = handle.read(6)
    handle.seek(0)
    try:
        if magic.startswith(b"PK"):
            with zipfile.ZipFile(handle) as archive:
                for info in archive.infolist():
                    with archive.open(info) as member:
                        _check_npy_header(path, member, info.file_size, info.filename)
        elif magic == b"\x93NUMPY":
            _check_npy_header(path, handle, size, None)
    except UserError:
        raise
    except Exception:  # any damage: np.load says what is wrong with it
        pass
    finally:
        handle.seek(0)


def _check_npy_header(path: Path, stream: Any, size: int, member: str | None) -> None:
    fmt = np.lib.format
    version = fmt.read_magic(stream)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, _, dtype = read(stream)
    entries = math.prod(shape)
    where = f"{path}" + (f" ({member})" if member else "")
    check_count(entries, MAX_TRACE_ENTRIES, where, "array entries", f"shape {list(shape)}")
    if dtype.itemsize and entries * dtype.itemsize > size:
        raise UserError(
            f"{where}: expected array data within the file's {size:,} bytes, got shape "
            f"{list(shape)} of {dtype} declaring {entries * dtype.itemsize:,} bytes"
        )


def _pick(
    path: Path, data: dict[str, np.ndarray], names: tuple[str, ...], required: bool = False
) -> np.ndarray | None:
    for name in names:
        if name in data:
            return data[name]
    if required:
        raise UserError(f"{path}: expected an array named one of {list(names)}, got {sorted(data)}")
    return None


# -- JSON lines -------------------------------------------------------------------------------


def read_jsonl(
    path: Path,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, tuple[int, ...]]:
    """(expert ids ``[tokens, layers, k]``, weights or None, token ids or None, layer ids)."""
    layers: list[int] = []
    tokens: list[int] = []
    ids: list[list[int]] = []
    weights: list[list[float] | None] = []
    line_of: list[int] = []  # the line of each record, for errors about one record
    token_ids: dict[int, int] = {}
    with io.TextIOWrapper(opener.open_file(path, "a JSON-lines file"), encoding="utf-8") as handle:
        for lineno, line in _lines(path, handle):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: expected a JSON object, got {err.msg}") from None
            if not isinstance(obj, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            for key in ("layer", "token", "expert_ids"):
                if key not in obj:
                    raise UserError(f"{where}: expected field '{key}', got {sorted(obj)}")
            layer, token = obj["layer"], obj["token"]
            if not (_is_int(layer) and _is_int(token) and 0 <= layer <= MAX_INDEX):
                raise UserError(
                    f"{where}: expected integer 'layer' in 0..{MAX_INDEX:,} and 'token' >= 0, "
                    f"got {layer!r}, {token!r}"
                )
            if not 0 <= token < MAX_TRACE_ENTRIES:
                raise UserError(
                    f"{where}: expected 'token' in 0..{MAX_TRACE_ENTRIES - 1:,}, got {token!r}"
                )
            experts = obj["expert_ids"]
            if not isinstance(experts, list) or not experts or not all(map(_is_int, experts)):
                raise UserError(
                    f"{where}: 'expert_ids': expected a list of integers, got {experts!r}"
                )
            if len(set(experts)) != len(experts):
                raise UserError(
                    f"{where}: 'expert_ids': expected distinct experts, got {experts!r}"
                )
            gate = obj.get("gate_weights")
            if gate is not None and (
                not isinstance(gate, list)
                or len(gate) != len(experts)
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in gate)
            ):
                raise UserError(
                    f"{where}: 'gate_weights': expected {len(experts)} numbers, got {gate!r}"
                )
            if "token_id" in obj:
                if not _is_int(obj["token_id"]) or not INT64_MIN <= obj["token_id"] <= INT64_MAX:
                    raise UserError(
                        f"{where}: 'token_id': expected an integer, got {obj['token_id']!r}"
                    )
                token_ids[token] = obj["token_id"]
            layers.append(layer)
            tokens.append(token)
            ids.append(experts)
            weights.append(gate)
            line_of.append(lineno)
    if not ids:
        raise UserError(f"{path}: expected routing records, got an empty file")
    k = len(ids[0])
    bad_k = next((i for i, e in enumerate(ids) if len(e) != k), None)
    if bad_k is not None:
        raise UserError(
            f"{path}:{line_of[bad_k]}: expected {k} expert ids (as on line {line_of[0]}), "
            f"got {len(ids[bad_k])}"
        )
    with_weights = [w is not None for w in weights]
    if any(with_weights) and not all(with_weights):
        odd = with_weights.index(not with_weights[0])
        has = "has" if with_weights[0] else "lacks"
        raise UserError(
            f"{path}:{line_of[odd]}: expected 'gate_weights' on every line or on none, got "
            f"{'them' if with_weights[odd] else 'none'} here (line {line_of[0]} {has} them)"
        )
    layer_ids = tuple(sorted(set(layers)))
    num_tokens = max(tokens) + 1
    if num_tokens * len(layer_ids) > len(ids):  # counted before a cell array is allocated
        raise UserError(
            f"{path}: expected one record for every (layer, token) of tokens 0..{num_tokens - 1} "
            f"x {len(layer_ids)} layers = {num_tokens * len(layer_ids):,}, got {len(ids):,} "
            "records"
        )
    layer_index = {lid: i for i, lid in enumerate(layer_ids)}
    li = np.array([layer_index[x] for x in layers], dtype=np.int64)
    ti = np.array(tokens, dtype=np.int64)
    cell = ti * len(layer_ids) + li
    seen = np.bincount(cell, minlength=num_tokens * len(layer_ids))
    if seen.max() > 1:
        bad = int(np.argmax(seen > 1))
        lines = [line_of[i] for i in np.flatnonzero(cell == bad)[:2]]
        raise UserError(
            f"{path}:{lines[1]}: expected one record per (layer, token), got layer "
            f"{layer_ids[bad % len(layer_ids)]} token {bad // len(layer_ids)} again (first on "
            f"line {lines[0]})"
        )
    if seen.min() == 0:
        bad = int(np.argmin(seen))
        raise UserError(
            f"{path}: expected a record for every (layer, token) of tokens "
            f"0..{num_tokens - 1}, got none for layer "
            f"{layer_ids[bad % len(layer_ids)]} token {bad // len(layer_ids)}"
        )
    experts_arr = np.empty((num_tokens, len(layer_ids), k), dtype=np.int64)
    experts_arr[ti, li] = int_array(ids, f"{path}: 'expert_ids'", lo=0, hi=MAX_EXPERTS)
    weights_arr = None
    if all(with_weights):
        weights_arr = np.empty((num_tokens, len(layer_ids), k), dtype=np.float32)
        where = f"{path}: 'gate_weights'"
        weights_arr[ti, li] = float_array(weights, where, dtype=np.float32)
    tok = None
    if token_ids:
        tok = np.full(num_tokens, -1, dtype=np.int64)
        tok[np.fromiter(token_ids, dtype=np.int64)] = np.fromiter(
            token_ids.values(), dtype=np.int64
        )
    return experts_arr, weights_arr, tok, layer_ids


def _lines(path: Path, handle: io.TextIOWrapper) -> Iterator[tuple[int, str]]:
    """Numbered lines; undecodable bytes are a UserError naming the line."""
    lineno = 0
    try:
        for lineno, line in enumerate(handle, start=1):
            yield lineno, line
    except UnicodeDecodeError:
        raise UserError(
            f"{path}:{lineno + 1}: expected UTF-8 text, got undecodable bytes"
        ) from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- FLAME-MoE-Traces parquet release ---------------------------------------------------------

_ITER_RE = re.compile(r"^iter_(\d+)$")
_LAYER_RE = re.compile(r"^layer_(\d+)\.parquet$")


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            "parquet import: expected pyarrow to be installed (pip install 'moe-offload-sim"
            "[parquet]'), got ImportError"
        ) from None
    return pq


def parquet_iterations(root: Path) -> list[str]:
    """The ``iter_NNNN`` directories under ``root/actives``, sorted by iteration."""
    actives = root / "actives"
    if not actives.is_dir() or not (root / "samples").is_dir():
        raise UserError(
            f"{root}: expected a FLAME-MoE-Traces model directory with samples/ "
            "and actives/, got none"
        )
    found = [p.name for p in actives.iterdir() if p.is_dir() and _ITER_RE.match(p.name)]
    return sorted(found, key=lambda n: int(_ITER_RE.match(n).group(1)))  # type: ignore[union-attr]


def read_flame_parquet(
    root: Path,
    *,
    iteration: int | None,
    layers: list[int] | None,
    first_shard: int,
    num_shards: int,
    micro_batch_size: int,
    seq_len: int,
    model: str | None = None,
    runid: str = "parquet",
) -> RoutingTrace:
    """Rows of shards ``first_shard ..`` of the parquet release as a Megatron-layout trace.

    Only the row groups that overlap the wanted rows are read, so importing a few shards of a
    52M-row capture costs the memory of those shards.
    """
    pq = _pyarrow_parquet()
    iters = parquet_iterations(root)
    if iteration is None:
        if len(iters) != 1:
            raise UserError(
                f"{root / 'actives'}: expected --iteration to choose one of "
                f"{[int(n[5:]) for n in iters]}, got none"
            )
        iter_dir = root / "actives" / iters[0]
    else:
        iter_dir = root / "actives" / f"iter_{iteration:04d}"
        if not iter_dir.is_dir():
            raise UserError(
                f"{iter_dir}: expected an iteration directory, got nothing (have "
                f"{[int(n[5:]) for n in iters]})"
            )
    layer_files = {
        int(m.group(1)): iter_dir / p.name
        for p in iter_dir.iterdir()
        if (m := _LAYER_RE.match(p.name))
    }
    if not layer_files:
        raise UserError(f"{iter_dir}: expected layer_NN.parquet files, got none")
    chosen = sorted(layer_files) if layers is None else layers
    missing = [x for x in chosen if x not in layer_files]
    if missing:
        raise UserError(
            f"{iter_dir}: expected layer files for layers {missing}, got layers "
            f"{sorted(layer_files)}"
        )
    rows_per_shard = micro_batch_size * seq_len
    start = first_shard * rows_per_shard
    stop = start + num_shards * rows_per_shard
    check_count(  # rows x layers, before a row is read (x k once the files say k)
        (stop - start) * len(chosen),
        MAX_TRACE_ENTRIES,
        f"{root}",
        "routing rows x layers to import",
        f"{num_shards} shards x B={micro_batch_size} x S={seq_len} x {len(chosen)} layers",
    )
    per_layer = []
    for layer in chosen:
        table = _read_rows(pq, [layer_files[layer]], start, stop, ["scores", "indices"])
        scores = _list_column(layer_files[layer], table, "scores", np.float32)
        indices = _list_column(layer_files[layer], table, "indices", np.int64)
        per_layer.append((indices, scores))
    sample_files = sorted((root / "samples").glob("*.parquet"))
    if not sample_files:
        raise UserError(f"{root / 'samples'}: expected NNN.parquet files, got none")
    samples_tab = _read_rows(pq, sample_files, start, stop, ["token_id"])
    samples = int_array(
        samples_tab.column("token_id").to_numpy(zero_copy_only=False), f"{root}: token_id"
    )

    k = per_layer[0][0].shape[1]
    indices = np.stack([p[0] for p in per_layer], axis=1)  # [rows, layers, k]
    scores = np.stack([p[1] for p in per_layer], axis=1)
    if indices.shape[2] != k or scores.shape != indices.shape:
        raise UserError(
            f"{iter_dir}: expected scores and indices of one shape, got "
            f"{scores.shape} and {indices.shape}"
        )
    # Megatron order per shard: actives row s*B + b, samples row b*S + s.
    b, s = micro_batch_size, seq_len
    act = indices.reshape(num_shards, s, b, len(chosen), k)
    sco = scores.reshape(num_shards, s, b, len(chosen), k)
    experts = act.transpose(1, 0, 2, 3, 4).reshape(s * num_shards * b, len(chosen), k)
    weights = sco.transpose(1, 0, 2, 3, 4).reshape(s * num_shards * b, len(chosen), k)
    tok = samples.reshape(num_shards, b, s).transpose(2, 0, 1).reshape(-1)
    iteration_no = int(iter_dir.name[5:])
    labels = ImportLabels(
        model=model or root.name,
        runid=runid,
        epoch=str(iteration_no),
        num_seqs=num_shards * b,
        micro_batch_size=b,
        order="step-major",
        num_experts=None,
        provenance=(
            f"FLAME-MoE-Traces parquet release ({root}, iteration {iteration_no}), rows "
            f"{start}..{stop - 1} read as Megatron shards {first_shard}..."
            f"{first_shard + num_shards - 1} of B={b} x S={s}"
        ),
    )
    return trace_from_rows(str(iter_dir), experts, weights, tok, tuple(chosen), labels)


def _read_rows(pq: Any, files: list[Path], start: int, stop: int, columns: list[str]) -> Any:
    """Rows ``start..stop-1`` of the concatenation of ``files`` (row groups read as needed)."""
    import pyarrow as pa

    pieces = []
    offset = 0
    for path in files:
        with opener.open_file(path, "a parquet file") as handle:
            offset = _read_file_rows(pq, path, handle, start, stop, columns, offset, pieces)
        if offset >= stop:
            break
    have = sum(p.num_rows for p in pieces)
    if have != stop - start:
        raise UserError(
            f"{files[0].parent}: expected rows {start}..{stop - 1}, got only {offset} rows"
        )
    return pa.concat_tables(pieces)


def _read_file_rows(
    pq: Any,
    path: Path,
    handle: Any,
    start: int,
    stop: int,
    columns: list[str],
    offset: int,
    pieces: list[Any],
) -> int:
    """Append the wanted rows of one parquet file to ``pieces``; returns the rows seen so far."""
    import pyarrow as pa

    try:
        pf = pq.ParquetFile(handle)
        names = pf.schema_arrow.names
        absent = [c for c in columns if c not in names]
        if absent:
            raise UserError(f"{path}: expected columns {columns}, got {names}")
        for rg in range(pf.metadata.num_row_groups):
            group = pf.metadata.row_group(rg)
            n = group.num_rows
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:  # what the row group declares, before it is decompressed
                where = f"{path}: row group {rg}"
                check_count(group.total_byte_size, 8 * MAX_TRACE_ENTRIES, where, "bytes")
                table = pf.read_row_group(rg, columns=columns)
                pieces.append(table.slice(lo - offset, hi - lo))
            offset += n
            if offset >= stop:
                break
    except (OSError, pa.ArrowException) as err:
        raise UserError(
            f"{path}: expected a readable parquet file, got {_first_line(err)}"
        ) from None
    return offset


def _list_column(path: Path, table: Any, name: str, dtype: type) -> np.ndarray:
    """A fixed-size list column as a ``[rows, k]`` array."""
    column = table.column(name).combine_chunks()
    try:
        values = column.flatten().to_numpy(zero_copy_only=False)
    except (AttributeError, ValueError, TypeError) as err:
        raise UserError(
            f"{path}: column '{name}': expected lists of numbers, got {_first_line(err)}"
        ) from None
    where = f"{path}: column '{name}'"
    if np.issubdtype(dtype, np.integer):  # dtype and range checked before the cast
        flat = int_array(values, where, lo=0, hi=MAX_EXPERTS).astype(dtype)
    else:
        flat = float_array(values, where, dtype=dtype)
    rows = table.num_rows
    if rows == 0 or flat.size % rows:
        raise UserError(
            f"{path}: column '{name}': expected lists of one length, got "
            f"{flat.size} values in {rows} rows"
        )
    offsets = getattr(column, "offsets", None)  # None for fixed-size lists
    lengths = np.diff(np.asarray(offsets)) if offsets is not None else np.zeros(1)
    if np.any(lengths != lengths[0]):
        raise UserError(
            f"{path}: column '{name}': expected lists of one length, got "
            f"{sorted(set(lengths.tolist()))[:5]}"
        )
    return flat.reshape(rows, flat.size // rows)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
