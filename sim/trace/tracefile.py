"""`trace.yaml`: the facts a trace directory carries about itself.

A raw FLAME-MoE dump cannot tell its own sequence length, micro-batch size, expert count or
(for the dense format) k; directories this project writes (embedded, synthetic, imported) record
them next to the dump so that loading needs no options. See ``docs/trace-format.md``.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from sim import opener
from sim.atomic import write_text
from sim.errors import UserError
from sim.limits import MAX_BATCH, MAX_EXPERTS, MAX_SEQ_LEN
from sim.ranges import MAX_INDEX
from sim.trace.routing import LAYOUTS
from sim.yamlio import read_yaml

TRACE_YAML = "trace.yaml"
_SHARD_NAME = re.compile(r"^\d+-\d+$")

_INT_FIELDS = ("seq_len", "micro_batch_size", "num_experts", "k")
_INT_LIMITS = {
    "seq_len": MAX_SEQ_LEN,
    "micro_batch_size": MAX_BATCH,
    "num_experts": MAX_EXPERTS,
    "k": MAX_EXPERTS,
}
_STR_FIELDS = ("model", "runid", "epoch", "layout", "provenance", "tokens_known", "notes")


@dataclass(frozen=True)
class TraceFile:
    """Contents of ``trace.yaml`` (every field optional except model/runid/epoch)."""

    model: str
    runid: str
    epoch: str
    layout: str = "megatron"
    seq_len: int | None = None
    micro_batch_size: int | None = None
    num_experts: int | None = None
    k: int | None = None
    provenance: str = ""
    synthetic: bool = False
    synthetic_layers: tuple[int, ...] = ()
    tokens_known: str = "all"  # "all", "none", "sequence 0 only", ...
    notes: str = ""
    # What the directory holds, as written (empty: not declared, as in older trace.yaml files):
    # loading "all" takes these, and `moesim trace info` compares them with the files.
    layers: tuple[int, ...] = ()
    shards: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("synthetic_layers", "layers", "shards"):
            data[name] = list(getattr(self, name))
        if not self.layers:
            del data["layers"]
        if not self.shards:
            del data["shards"]
        return data


def trace_yaml_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / TRACE_YAML


def read_trace_yaml(root: str | os.PathLike[str]) -> TraceFile | None:
    """The ``trace.yaml`` of ``root``, or None when there is none (a raw dump)."""
    path = trace_yaml_path(root)
    if opener.describe(path) == "nothing (missing)":
        return None
    data = read_yaml(path, "a trace.yaml file")
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of trace facts, got {type(data).__name__}")
    return _from_mapping(path, data)


def write_trace_yaml(root: str | os.PathLike[str], tf: TraceFile) -> Path:
    """Write ``root/trace.yaml`` atomically."""
    header = "# Trace facts read by moesim (see docs/trace-format.md).\n"
    body = yaml.safe_dump(tf.to_dict(), sort_keys=False, allow_unicode=True, width=100)
    return write_text(trace_yaml_path(root), header + body)


def _from_mapping(path: Path, data: dict[str, Any]) -> TraceFile:
    known = set(TraceFile.__dataclass_fields__)
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise UserError(f"{path}: expected fields among {sorted(known)}, got unknown {unknown}")
    for name in ("model", "runid", "epoch"):
        if data.get(name) in (None, ""):
            raise UserError(f"{path}: field '{name}': expected a value, got none")
    values: dict[str, Any] = {}
    for name in _STR_FIELDS:
        if name in data and data[name] is not None:
            if isinstance(data[name], dict | list):
                raise UserError(f"{path}: field '{name}': expected text, got {data[name]!r}")
            values[name] = str(data[name])
    for name in _INT_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        limit = _INT_LIMITS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= limit:
            raise UserError(
                f"{path}: field '{name}': expected an integer in 1..{limit:,}, got {value!r}"
            )
        values[name] = value
    if "synthetic" in data:
        if not isinstance(data["synthetic"], bool):
            raise UserError(
                f"{path}: field 'synthetic': expected true/false, got {data['synthetic']!r}"
            )
        values["synthetic"] = data["synthetic"]
    for name in ("synthetic_layers", "layers"):
        layers = data.get(name) or []
        if not isinstance(layers, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_INDEX for v in layers
        ):
            raise UserError(f"{path}: field '{name}': expected a list of layer ids, got {layers!r}")
        if len(set(layers)) != len(layers):
            raise UserError(f"{path}: field '{name}': expected distinct layer ids, got {layers!r}")
        values[name] = tuple(layers)
    shards = data.get("shards") or []
    if not isinstance(shards, list) or not all(
        isinstance(v, str) and _SHARD_NAME.match(v) for v in shards
    ):
        raise UserError(f"{path}: field 'shards': expected shard names like '0-0', got {shards!r}")
    if len(set(shards)) != len(shards):
        raise UserError(f"{path}: field 'shards': expected distinct names, got {shards!r}")
    values["shards"] = tuple(shards)
    layout = values.get("layout", "megatron")
    if layout not in LAYOUTS:
        raise UserError(f"{path}: field 'layout': expected one of {list(LAYOUTS)}, got {layout!r}")
    return TraceFile(**values)
