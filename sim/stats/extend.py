"""The seed's layer extension (notebook cell 2): layers 10-26 copied cyclically from 2-9.

FLAME-MoE-290M has MoE layers 2-9; the notebook made a deeper model by copying them, target
layer ``t`` taking source layer ``sources[(t - first_target) % len(sources)]`` (10 <- 2, ...,
17 <- 9, 18 <- 2, ..., 26 <- 2). Copies are not routing data: every trace and tree we extend
records them as synthetic (``TraceMeta.synthetic_layers``, ``extended_layers.json``).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sim import opener
from sim.atomic import staged_dir, write_bytes
from sim.errors import UserError
from sim.ranges import format_int_selection
from sim.stats.notebook_tree import write_extended_manifest
from sim.trace.dump import load_pt
from sim.trace.routing import RoutingTrace

SEED_SOURCE_LAYERS: tuple[int, ...] = tuple(range(2, 10))
SEED_TARGET_LAYERS: tuple[int, ...] = tuple(range(10, 27))

_POSITION_DIR = re.compile(r"^(\d+)(st|nd|rd|th)$")


def layer_copies(sources: tuple[int, ...], targets: tuple[int, ...]) -> dict[int, int]:
    """``{target: source}``: the notebook's ``sources[(target - 10) % len(sources)]``, with
    10 generalised to the first target."""
    sources, targets = tuple(sources), tuple(sorted(targets))
    if not sources:
        raise UserError("--from: expected at least one source layer, got none")
    if not targets:
        raise UserError("--to: expected at least one target layer, got none")
    overlap = sorted(set(sources) & set(targets))
    if overlap:
        raise UserError(f"--to: expected layers that are not also sources, got {overlap}")
    first = targets[0]
    return {t: sources[(t - first) % len(sources)] for t in targets}


def extend_layers(
    trace: RoutingTrace,
    sources: tuple[int, ...] = SEED_SOURCE_LAYERS,
    targets: tuple[int, ...] = SEED_TARGET_LAYERS,
) -> RoutingTrace:
    """A new trace with the ``targets`` layers added as copies, marked synthetic."""
    copies = layer_copies(sources, targets)
    missing = [s for s in sources if s not in trace.layer_ids]
    if missing:
        raise UserError(
            f"--from: expected layers present in the trace {list(trace.layer_ids)}, got {missing}"
        )
    present = [t for t in copies if t in trace.layer_ids]
    if present:
        raise UserError(f"--to: expected layers not already in the trace, got {present}")
    new_ids = tuple(sorted((*trace.layer_ids, *copies)))
    take = np.array([trace.layer_ids.index(copies.get(lid, lid)) for lid in new_ids], np.intp)
    m = trace.meta
    old_copies = {int(k): int(v) for k, v in m.extra.get("layer_copies", {}).items()}
    note = (
        f"layers {format_int_selection(tuple(copies))} copied from "
        f"{format_int_selection(tuple(sources))} (seed cell 2)"
    )
    meta = replace(
        m,
        synthetic_layers=tuple(sorted({*m.synthetic_layers, *copies})),
        provenance=f"{m.provenance}; {note}" if m.provenance else note,
        extra={**m.extra, "layer_copies": {**old_copies, **copies}},
    )
    return RoutingTrace(
        experts=np.ascontiguousarray(trace.experts[:, take]),
        scores=np.ascontiguousarray(trace.scores[:, take]),
        tokens=trace.tokens,
        num_experts=trace.num_experts,
        layer_ids=new_ids,
        positions=trace.positions,
        meta=meta,
    )


@dataclass(frozen=True)
class TreeExtension:
    """What `extend_notebook_tree` did."""

    positions: tuple[str, ...]
    copies: dict[int, int]
    files_written: int


def extend_notebook_tree(
    tree: str | Path,
    sources: tuple[int, ...] = SEED_SOURCE_LAYERS,
    targets: tuple[int, ...] = SEED_TARGET_LAYERS,
    overwrite: bool = False,
) -> TreeExtension:
    """Add ``Layer_{t}`` folders to every position folder of a notebook tree, in place.

    Like the notebook: file names get ``_layer{t}_``, the ``.pt`` dict's ``layer`` and the
    ``.txt``'s ``Layer: t`` line are updated, other files are copied. Unlike it: the dense
    ``.csv``'s ``layer_id`` column is set to ``t`` (the notebook's was always 0), the ``.pt``
    dict gains ``copied_from_layer``, a missing source is an error (it warned and went on),
    and ``extended_layers.json`` records the copies.
    """
    root = Path(tree)
    copies = layer_copies(sources, targets)
    positions = position_dirs(root)
    plan: list[tuple[Path, Path, int, int, list[Path]]] = []
    for pos_dir in positions:
        for target, source in copies.items():
            src_dir, dst_dir = pos_dir / f"Layer_{source}", pos_dir / f"Layer_{target}"
            if not src_dir.is_dir():
                raise UserError(f"{src_dir}: expected the source layer folder, got nothing")
            files = sorted(p for p in src_dir.iterdir() if p.is_file())
            if not files:
                raise UserError(f"{src_dir}: expected the notebook's files, got an empty folder")
            if dst_dir.exists() and not overwrite:
                raise UserError(f"{dst_dir}: expected no such folder (use --force), got one")
            plan.append((src_dir, dst_dir, source, target, files))
    written = 0
    with staged_dir(root, "merge") as staging:  # every copy appears, or none
        for _src_dir, dst_dir, source, target, files in plan:
            for path in files:
                name = path.name.replace(f"_layer{source}_", f"_layer{target}_")
                dst = staging / dst_dir.relative_to(root) / name
                write_bytes(dst, _copied_file(path, source, target))
                written += 1
        write_extended_manifest(root, tuple(copies), copies, out=staging)
    return TreeExtension(
        positions=tuple(p.name for p in positions), copies=copies, files_written=written + 1
    )


def position_dirs(root: Path) -> list[Path]:
    """The notebook's position folders (``1st``, ``2nd``, ...) under ``root``, in order."""
    if not root.is_dir():
        raise UserError(f"{root}: expected a notebook tree directory, got nothing")
    found = [p for p in root.iterdir() if p.is_dir() and _POSITION_DIR.match(p.name)]
    if not found:
        raise UserError(f"{root}: expected position folders like 1st/, 2nd/, got none")
    return sorted(found, key=lambda p: int(_POSITION_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def _copied_file(path: Path, source: int, target: int) -> bytes:
    if path.suffix == ".pt":
        data = load_pt(path)
        if not isinstance(data, dict) or "layer" not in data:
            raise UserError(f"{path}: expected the notebook's dict with a 'layer' key")
        data = {**data, "layer": target, "copied_from_layer": source}
        buf = io.BytesIO()
        torch.save(data, buf)
        return buf.getvalue()
    if path.suffix == ".txt":
        text = _read_text(path)
        return re.sub(f"Layer: {source}\n", f"Layer: {target}\n", text).encode("utf-8")
    if path.suffix == ".csv":
        text = _read_text(path)
        if text.startswith("layer_id,"):
            # Data lines start with the layer id; the header starts with a letter.
            return re.sub(r"(?m)^-?\d+,", f"{target},", text).encode("utf-8")
    return opener.read_bytes(path, "a notebook tree file")


def _read_text(path: Path) -> str:
    return opener.read_text(path, "a notebook tree text file")
