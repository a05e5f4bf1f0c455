"""`open_trace`: one entry point for every trace source a user can point the tool at.

``path`` may be a dump root (``samples/`` + ``actives/``, with or without ``trace.yaml``), a
notebook prefill-cut or decoder-cut directory, or ``embedded`` / ``embedded:NAME`` for the
traces shipped in the repository's ``traces/`` directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import sim
from sim import opener
from sim.errors import SelectionError, UserError
from sim.trace.cuts import is_decoder_dir, is_prefill_dir, load_decoder_cuts, load_prefill_cut
from sim.trace.dump import (
    MEGATRON_MICRO_BATCH,
    SEED_SEQS_PER_SHARD,
    DumpSelection,
    list_subdirs,
    load_trace,
)
from sim.trace.routing import LAYOUTS, RoutingTrace
from sim.trace.tracefile import TRACE_YAML, read_trace_yaml

EMBEDDED_PREFIX = "embedded"
DEFAULT_EMBEDDED = "flame-moe-290m-real"


def traces_dir() -> Path:
    """The repository's ``traces/`` directory (next to the ``sim`` package in a checkout)."""
    return Path(sim.__file__).resolve().parent.parent / "traces"


def embedded_root(spec: str) -> Path:
    """Directory of ``embedded`` / ``embedded:NAME``; UserError when it is not shipped."""
    _, _, name = spec.partition(":")
    name = name or DEFAULT_EMBEDDED
    root = traces_dir() / name
    if not root.is_dir():
        raise UserError(
            f"{spec}: expected an embedded trace at {root}, got nothing (embedded traces live in "
            "the repository's traces/ directory, which an installed wheel lacks; "
            f"have {list(embedded_trace_names())})"
        )
    if not is_routing_trace_dir(root):
        raise UserError(
            f"{spec}: expected a routing trace directory (trace.yaml, or samples/ and actives/), "
            f"got {root.name}/ without them (traces/README.md says what it is; routing traces: "
            f"{list(embedded_trace_names())})"
        )
    return root


def embedded_trace_names() -> tuple[str, ...]:
    """The routing traces under traces/ (other directories there, such as cost tables, are
    not names ``embedded:NAME`` can open)."""
    return tuple(n for n in list_subdirs(traces_dir()) if is_routing_trace_dir(traces_dir() / n))


def is_routing_trace_dir(path: Path) -> bool:
    """A trace directory (``trace.yaml``) or a raw dump root (``samples/`` + ``actives/``)."""
    return (path / TRACE_YAML).is_file() or is_dump_root(path)


def is_dump_root(path: Path) -> bool:
    return (path / "samples").is_dir() and (path / "actives").is_dir()


def open_trace(
    path: str | os.PathLike[str],
    *,
    layout: str | None = None,
    shards: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    model: str | None = None,
    runid: str | int | None = None,
    epoch: str | int | None = None,
    num_experts: int | None = None,
    k: int | None = None,
    seq_len: int | None = None,
    micro_batch_size: int | None = None,
    seed_seqs_per_shard: int | None = None,
) -> RoutingTrace:
    """Detect what ``path`` is and load the selection from it (None selects everything)."""
    text = os.fspath(path)
    if text == EMBEDDED_PREFIX or text.startswith(EMBEDDED_PREFIX + ":"):
        root = embedded_root(text)
    else:
        root = Path(text)
    if layout is not None and layout not in LAYOUTS:
        raise UserError(f"--layout: expected one of {list(LAYOUTS)}, got {layout!r}")
    opener.check_dir(root, "a trace directory")

    if is_dump_root(root):
        tf = read_trace_yaml(root)
        chosen_model = _given(model, tf.model if tf else None) or _only(root / "samples", "--model")
        chosen_run = _given(runid, tf.runid if tf else None) or _only(
            root / "samples" / chosen_model, "--runid"
        )
        chosen_epoch = _given(epoch, tf.epoch if tf else None) or _only(
            root / "actives" / chosen_model / chosen_run, "--epoch"
        )
        return load_trace(
            DumpSelection(
                root=root,
                model=chosen_model,
                runid=chosen_run,
                epoch=chosen_epoch,
                shards=tuple(shards) if shards is not None else None,
                layers=tuple(int(x) for x in layers) if layers is not None else None,
                positions=tuple(int(x) for x in positions) if positions is not None else None,
                layout=layout or (tf.layout if tf else "megatron"),
                num_experts=num_experts,
                k=k,
                seq_len=seq_len,
                micro_batch_size=micro_batch_size,
                seed_seqs_per_shard=seed_seqs_per_shard or SEED_SEQS_PER_SHARD,
            )
        )

    if is_prefill_dir(root):
        trace = load_prefill_cut(
            root, micro_batch_size=micro_batch_size or MEGATRON_MICRO_BATCH, num_experts=num_experts
        )
    elif is_decoder_dir(root):
        trace = load_decoder_cuts(root, num_experts=num_experts)
    else:
        if is_prefill_dir(root / "prefill") or is_decoder_dir(root / "decoder"):
            raise UserError(
                f"{root}: expected one trace source, got a folder of notebook cuts: point at "
                f"{root / 'prefill'} or {root / 'decoder'}"
            )
        raise UserError(
            f"{root}: expected a dump root (samples/ + actives/), a notebook prefill cut "
            f"(Layer_<n>/) or decoder cuts (1st/Layer_<n>/), got none of these"
        )
    return _select_from_cuts(trace, layout, shards, layers, positions, model, runid, epoch, seq_len)


def _given(option: str | int | None, from_yaml: str | None) -> str | None:
    """The option when given (0 included), else trace.yaml's value, as text."""
    if option is not None:
        return str(option)
    return from_yaml


def _only(directory: Path, option: str) -> str:
    """The single sub-directory of ``directory``; otherwise ask for ``option``."""
    found = list_subdirs(directory)
    if len(found) == 1:
        return found[0]
    if not found:
        raise UserError(f"{directory}: expected a directory per {option[2:]}, got none")
    raise UserError(f"{directory}: expected {option} to choose one of {list(found)}, got none")


def _select_from_cuts(
    trace: RoutingTrace,
    layout: str | None,
    shards: Sequence[str] | None,
    layers: Sequence[int] | None,
    positions: Sequence[int] | None,
    model: str | None,
    runid: str | int | None,
    epoch: str | int | None,
    seq_len: int | None,
) -> RoutingTrace:
    """Apply a selection to a trace read from cuts (whose layout and rows are fixed)."""
    source = trace.meta.source
    if layout is not None and layout != trace.meta.layout:
        raise UserError(
            f"{source}: these cuts are read in the {trace.meta.layout} layout, "
            f"got --layout {layout}"
        )
    if shards is not None and tuple(shards) != trace.meta.shards:
        raise UserError(
            f"{source}: expected no shard selection (cuts hold shards "
            f"{list(trace.meta.shards)}), got {list(shards)}"
        )
    for option, wanted, have in (
        ("--model", model, trace.meta.model),
        ("--runid", runid, trace.meta.runid),
        ("--epoch", epoch, trace.meta.epoch),
    ):
        if wanted is not None and str(wanted) != str(have):
            raise UserError(f"{source}: {option} expected {have!r} (the cuts' own), got {wanted!r}")
    if seq_len is not None:
        raise UserError(
            f"{source}: expected no --seq-len for notebook cuts (their rows are fixed), "
            f"got {seq_len}"
        )
    step_idx = None
    if positions is not None:
        missing = [p for p in positions if p not in trace.positions]
        if missing:
            raise SelectionError(
                "positions",
                f"expected values among {_span(trace.positions)} (the positions of {source}), "
                f"got {missing[:5]}",
            )
        step_idx = np.array([trace.positions.index(p) for p in positions], dtype=np.intp)
    if layers is not None:
        missing_l = [x for x in layers if x not in trace.layer_ids]
        if missing_l:
            raise SelectionError(
                "layers",
                f"expected ids among {list(trace.layer_ids)} (the layers of {source}), "
                f"got {missing_l}",
            )
    if step_idx is None and layers is None:
        return trace
    return trace.select(steps=step_idx, layers=list(layers) if layers is not None else None)


def _span(values: Sequence[int]) -> str:
    if values and list(values) == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}..{values[-1]}"
    return str(list(values))
