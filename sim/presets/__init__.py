"""Named hardware and model figures, kept as YAML data next to this module.

Six kinds: ``links`` (links.yaml), ``gpus`` (gpus.yaml), ``cpus`` (cpus.yaml: host CPUs for
the host-compute path), ``models`` (models.yaml), ``precisions`` (precisions.yaml: expert weight
formats) and ``hardware`` (hardware.yaml: whole machines built from the others by name). Every
entry carries a ``source``. The files are read raw here; `sim.scenario` validates them with the same schema
as scenario files (so units are parsed in one place), and tests check that every preset does.
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

from sim.errors import UserError
from sim.yamlio import parse_yaml

KINDS = ("links", "gpus", "cpus", "models", "precisions", "hardware")


@cache
def _load(kind: str) -> dict[str, dict[str, Any]]:
    text = resources.files(__package__).joinpath(f"{kind}.yaml").read_text(encoding="utf-8")
    data = parse_yaml(text, f"sim/presets/{kind}.yaml")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"sim/presets/{kind}.yaml: expected a mapping of name -> entry")
    return data


def presets(kind: str) -> dict[str, dict[str, Any]]:
    """All presets of ``kind`` by name, in file order (a fresh copy the caller may modify)."""
    if kind not in KINDS:
        raise UserError(f"preset kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return {name: dict(entry) for name, entry in _load(kind).items()}


def get_preset(kind: str, name: str, where: str) -> dict[str, Any]:
    """One preset's raw entry; a one-line UserError naming ``where`` when there is none."""
    table = presets(kind)
    if name not in table:
        raise UserError(f"{where}: expected one of {', '.join(table)}, got {name!r}")
    return table[name]
