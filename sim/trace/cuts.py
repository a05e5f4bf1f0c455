"""Read the seed notebook's own output files (per-layer cut ``.pt`` dicts) as a trace source.

Two kinds of directory (see ``docs/trace-format.md``):

* a **prefill** cut, ``Layer_{n}/*.pt`` with rows 0..N-1 of one shard: in true (Megatron) order
  these are B sequences x N/B consecutive steps; token ids are known for sequence 0 only
  (``samples[s]`` for s < N/B is its token at position s).
* **decoder** cuts, ``{1st,2nd,...}/Layer_{n}/*.pt``: the notebook's rows ``p + L*j`` of each
  shard, read in the seed layout (in true order they are ragged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sim.errors import UserError
from sim.trace.dump import (
    INDEX_DTYPES,
    MEGATRON_MICRO_BATCH,
    SCORE_DTYPES,
    TOKEN_DTYPES,
    check_routing,
    load_pt,
    model_preset,
    tensor_numpy,
)
from sim.trace.routing import RoutingTrace, TraceMeta

_LAYER_DIR = re.compile(r"^Layer_(\d+)$")
_ORDINAL_DIR = re.compile(r"^(\d+)(st|nd|rd|th)$")
_REQUIRED_KEYS = ("model", "runid", "epoch", "layer", "samples", "scores", "indices")
CUTS_PROVENANCE = "seed notebook cut files"


def layer_dirs(directory: Path) -> dict[int, Path]:
    """``{layer id: Layer_n directory}`` under ``directory``, sorted by layer."""
    if not directory.is_dir():
        return {}
    found = {}
    for p in directory.iterdir():
        match = _LAYER_DIR.match(p.name)
        if match and p.is_dir():
            found[int(match.group(1))] = p
    return dict(sorted(found.items()))


def ordinal_dirs(directory: Path) -> dict[int, Path]:
    """``{position: dir}`` for the decoder's ``1st, 2nd, ...`` folders (position = ordinal - 1)."""
    if not directory.is_dir():
        return {}
    found = {}
    for p in directory.iterdir():
        match = _ORDINAL_DIR.match(p.name)
        if match and p.is_dir() and int(match.group(1)) >= 1:
            found[int(match.group(1)) - 1] = p
    return dict(sorted(found.items()))


def is_prefill_dir(path: Path) -> bool:
    return bool(layer_dirs(path))


def is_decoder_dir(path: Path) -> bool:
    dirs = ordinal_dirs(path)
    return bool(dirs) and any(layer_dirs(d) for d in dirs.values())


# -- one cut file ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cut:
    """One validated cut file: ``N`` rows of one layer."""

    path: Path
    model: str
    runid: str
    epoch: str
    layer: int
    token_position: int | None  # decoder cuts only
    shards: tuple[str, ...]
    samples: np.ndarray  # [N] int64
    experts: np.ndarray  # [N, k] int16
    scores: np.ndarray  # [N, k] float32
    num_experts: int


def read_cut(path: Path, num_experts: int | None) -> Cut:
    """Load one cut dict and validate its keys, dtypes, shapes and routing."""
    obj = load_pt(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected a notebook cut dict, got a {type(obj).__name__}")
    missing = [k for k in _REQUIRED_KEYS if k not in obj]
    if missing:
        raise UserError(f"{path}: expected cut keys {list(_REQUIRED_KEYS)}, missing {missing}")
    samples, scores, ids = obj["samples"], obj["scores"], obj["indices"]
    if not all(isinstance(t, torch.Tensor) for t in (samples, scores, ids)):
        raise UserError(f"{path}: expected samples, scores and indices to be tensors")
    if samples.ndim != 1 or samples.dtype not in TOKEN_DTYPES:
        raise UserError(
            f"{path}: expected 1-D int64 samples, got {samples.dtype} {list(samples.shape)}"
        )
    if scores.dtype not in SCORE_DTYPES:
        raise UserError(
            f"{path}: expected scores of dtype float32/bfloat16/float16, got {scores.dtype}"
        )
    if ids.dtype not in INDEX_DTYPES:
        raise UserError(f"{path}: expected indices of dtype int64/int32/int16, got {ids.dtype}")
    if scores.ndim != 2 or scores.shape != ids.shape or scores.shape[0] != samples.shape[0]:
        raise UserError(
            f"{path}: expected samples [N], scores [N, k] and indices [N, k], got "
            f"{list(samples.shape)}, {list(scores.shape)}, {list(ids.shape)}"
        )
    model = str(obj["model"])
    experts = num_experts or _preset_experts(path, model)
    ids_np = ids.numpy()
    scores_np = tensor_numpy(scores)
    check_routing(path, ids_np, scores_np, experts)
    position = obj.get("token_position")
    return Cut(
        path=path,
        model=model,
        runid=str(obj["runid"]),
        epoch=str(obj["epoch"]),
        layer=_int_field(path, obj, "layer"),
        token_position=None if position is None else _int_field(path, obj, "token_position"),
        shards=tuple(str(s).removesuffix(".pt") for s in (obj.get("shards") or ())),
        samples=samples.numpy().astype(np.int64, copy=False),
        experts=ids_np.astype(np.int16),
        scores=scores_np.astype(np.float32, copy=False),
        num_experts=experts,
    )


def _preset_experts(path: Path, model: str) -> int:
    preset = model_preset(model)
    if preset is None:
        raise UserError(f"{path}: expected --num-experts (no preset for model {model!r}), got none")
    return preset.num_experts


def _int_field(path: Path, obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{path}: field '{key}': expected an integer, got {value!r}")
    return value


def _read_layer_dir(layer: int, ldir: Path, num_experts: int | None, first: Cut | None) -> Cut:
    """The one cut in ``Layer_n``, checked against its folder and against the first cut read."""
    files = sorted(p for p in ldir.glob("*.pt") if not p.name.startswith("."))
    if len(files) != 1:
        raise UserError(f"{ldir}: expected exactly one cut .pt file, got {len(files)}")
    cut = read_cut(files[0], num_experts)
    if cut.layer != layer:
        raise UserError(f"{cut.path}: expected layer {layer} (from {ldir.name}), got {cut.layer}")
    if first is not None:
        for key in ("model", "runid", "epoch", "shards"):
            if getattr(cut, key) != getattr(first, key):
                raise UserError(
                    f"{cut.path}: expected {key} {getattr(first, key)!r} like {first.path}, "
                    f"got {getattr(cut, key)!r}"
                )
        if cut.scores.shape != first.scores.shape:
            raise UserError(
                f"{cut.path}: expected shape {list(first.scores.shape)} like {first.path}, "
                f"got {list(cut.scores.shape)}"
            )
    return cut


def _meta(first: Cut, directory: Path, layout: str, what: str, **kwargs: Any) -> TraceMeta:
    return TraceMeta(
        model=first.model,
        runid=first.runid,
        epoch=first.epoch,
        layout=layout,
        shards=first.shards,
        source=str(directory),
        provenance=f"{CUTS_PROVENANCE} ({what} of shard(s) {','.join(first.shards) or '?'})",
        **kwargs,
    )


# -- prefill --------------------------------------------------------------------------------------
def load_prefill_cut(
    directory: Path,
    *,
    micro_batch_size: int = MEGATRON_MICRO_BATCH,
    num_experts: int | None = None,
) -> RoutingTrace:
    """A prefill cut as a true-order trace: B sequences x N/B steps x the cut's layers."""
    directory = Path(directory)
    layers = layer_dirs(directory)
    if not layers:
        raise UserError(f"{directory}: expected Layer_<n> directories of a prefill cut, got none")
    cuts: list[Cut] = []
    for layer, ldir in layers.items():
        cuts.append(_read_layer_dir(layer, ldir, num_experts, cuts[0] if cuts else None))
    first = cuts[0]
    rows, k = first.scores.shape
    batch = micro_batch_size
    if rows % batch:
        raise UserError(f"{first.path}: expected a multiple of B={batch} rows, got {rows}")
    steps = rows // batch
    # Row i is sequence i % B at position i // B: [steps, B] in row-major order.
    experts = np.stack([c.experts.reshape(steps, batch, k) for c in cuts], axis=1)
    scores = np.stack([c.scores.reshape(steps, batch, k) for c in cuts], axis=1)
    tokens = np.full((steps, batch), -1, dtype=np.int64)
    tokens[:, 0] = first.samples[:steps]  # samples row b*S + s: only sequence 0 is in the cut
    return RoutingTrace(
        experts=np.ascontiguousarray(experts),
        scores=np.ascontiguousarray(scores),
        tokens=tokens,
        num_experts=first.num_experts,
        layer_ids=tuple(layers),
        positions=tuple(range(steps)),
        meta=_meta(
            first,
            directory,
            "megatron",
            f"prefill: rows 0..{rows - 1}",
            micro_batch_size=batch,
            extra={"tokens_known": "sequence 0 only"},
        ),
    )


# -- decoder --------------------------------------------------------------------------------------
def load_decoder_cuts(directory: Path, *, num_experts: int | None = None) -> RoutingTrace:
    """Decoder cuts as a seed-layout trace: the notebook's positions x layers x its rows."""
    directory = Path(directory)
    positions = ordinal_dirs(directory)
    if not positions:
        raise UserError(
            f"{directory}: expected 1st, 2nd, ... directories of decoder cuts, got none"
        )
    layer_ids: tuple[int, ...] | None = None
    grid: list[list[Cut]] = []  # [position][layer]
    first: Cut | None = None
    for pos, pdir in positions.items():
        layers = layer_dirs(pdir)
        layer_ids = layer_ids or tuple(layers)
        if tuple(layers) != layer_ids:
            raise UserError(
                f"{pdir}: expected layers {list(layer_ids)} like the other positions, "
                f"got {list(layers)}"
            )
        row: list[Cut] = []
        for layer, ldir in layers.items():
            cut = _read_layer_dir(layer, ldir, num_experts, first)
            first = first or cut
            if cut.token_position is not None and cut.token_position != pos:
                raise UserError(
                    f"{cut.path}: expected token_position {pos} (from {pdir.name}), "
                    f"got {cut.token_position}"
                )
            if row and not np.array_equal(cut.samples, row[0].samples):
                raise UserError(
                    f"{cut.path}: expected the same samples as {row[0].path}, got others"
                )
            row.append(cut)
        grid.append(row)
    assert first is not None and layer_ids is not None
    return RoutingTrace(
        experts=np.stack([np.stack([c.experts for c in row]) for row in grid]),
        scores=np.stack([np.stack([c.scores for c in row]) for row in grid]),
        tokens=np.stack([row[0].samples for row in grid]),
        num_experts=first.num_experts,
        layer_ids=layer_ids,
        positions=tuple(positions),
        meta=_meta(first, directory, "seed", "decoder: the notebook's rows"),
    )
