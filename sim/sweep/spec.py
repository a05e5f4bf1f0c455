"""The ``sweep:`` block of a scenario YAML: which fields vary, and the points that makes.

A sweep file is an ordinary scenario plus::

    sweep:
      grid:                                  # cartesian product, one axis per field
        hardware.links.md_link.bandwidth: [64 GB/s, 128 GB/s, 256 GB/s]
        policies: [seed-split, lru]          # a single policy per point (or a list per point)
      zip:                                   # fields advanced together (one axis per group)
        hardware.links.pcie.bandwidth: [32 GB/s, 64 GB/s]
        hardware.links.pcie.latency: [2 us, 1 us]
      repeats: 3                             # seeds base..base+2, where randomness is involved

Everything here is plain dict work, so it is checked before any simulation runs: the sweep
block's own shape here, and every point's scenario by `validate_points` (each override is
applied with ``set_dotted`` and the result goes through ``scenario_from_dict``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sim.errors import UserError
from sim.limits import MAX_SWEEP_POINTS, check_count
from sim.yamlio import read_yaml

SWEEP_KEYS = ("grid", "zip", "repeats", "seed_fields")
POLICIES_PATH = "policies"
BASELINE_PATH = "baseline"
SEED_PATH = "seed"


@dataclass(frozen=True)
class SweepAxis:
    """One dimension of the sweep: a grid field, or a zip group of fields moving together."""

    where: str  # YAML path of the axis, for messages: "sweep.grid.routing.topk", "sweep.zip[0]"
    paths: tuple[str, ...]  # the dotted scenario fields this axis sets
    values: tuple[tuple[Any, ...], ...]  # one tuple per position, aligned with ``paths``


@dataclass(frozen=True)
class SweepPoint:
    """One scenario to run: the base scenario with ``overrides`` applied, at one repeat."""

    index: int  # position in the expansion (row order of the final table)
    overrides: tuple[tuple[str, Any], ...]  # (dotted path, value as written in the YAML)
    repeat: int
    seed: int  # the scenario seed this point runs with
    point_id: str  # stable hash of overrides + seed: the point's file name under points/

    def swept(self) -> dict[str, Any]:
        """The swept fields and their values (table columns)."""
        return dict(self.overrides)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep file: the base scenario (without ``sweep:``) and its axes."""

    source: str  # file name, for messages
    base: dict[str, Any]  # the scenario document, ``sweep:`` removed, ``--set`` applied
    axes: tuple[SweepAxis, ...]
    repeats: int
    base_seed: int
    seed_fields: tuple[str, ...]  # fields set to base_seed + repeat (``seed`` and any named)

    @property
    def swept_paths(self) -> tuple[str, ...]:
        return tuple(path for axis in self.axes for path in axis.paths)

    def fingerprint(self) -> str:
        """Hash of the base scenario: a results directory belongs to one base (resume check)."""
        return _digest({"base": self.base, "seed_fields": list(self.seed_fields)})

    def to_dict(self) -> dict[str, Any]:
        """The ``sweep:`` block as resolved (for sweep.resolved.yaml)."""
        grid: dict[str, list[Any]] = {}
        zips: list[dict[str, list[Any]]] = []
        for axis in self.axes:
            if axis.where.startswith("sweep.grid"):
                grid[axis.paths[0]] = [v[0] for v in axis.values]
            else:
                zips.append({p: [v[i] for v in axis.values] for i, p in enumerate(axis.paths)})
        return {
            "grid": grid,
            "zip": zips,
            "repeats": self.repeats,
            "seed_fields": list(self.seed_fields),
        }


def load_sweep(
    path: str | Path,
    sets: Sequence[str] = (),
    set_dotted: Callable[[dict, str, Any], dict] | None = None,
) -> SweepSpec:
    """Read a sweep YAML; ``sets`` ("a.b=value", value YAML-parsed) apply to the whole file."""
    file = Path(path)
    doc = read_yaml(file, "a sweep YAML file")
    if not isinstance(doc, dict):
        raise UserError(f"{file}: expected a mapping with a 'sweep:' block, got {_kind(doc)}")
    if sets:
        from sim.scenario.build import parse_override

        setter = set_dotted or _scenario_set_dotted()
        for item in sets:
            doc = setter(doc, *parse_override(item))
    return sweep_from_dict(doc, str(file))


def sweep_from_dict(doc: dict[str, Any], source: str) -> SweepSpec:
    """Split a document into base scenario and sweep block; check the block's shape."""
    if "sweep" not in doc:
        raise UserError(f"{source}: sweep: expected a 'sweep:' block with grid/zip, got none")
    block = doc["sweep"]
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise UserError(f"{source}: sweep: expected a mapping, got {_kind(block)}")
    unknown = [k for k in block if k not in SWEEP_KEYS]
    if unknown:
        raise UserError(
            f"{source}: sweep.{unknown[0]}: expected one of {', '.join(SWEEP_KEYS)}, "
            f"got {unknown[0]!r}"
        )
    base = {k: v for k, v in doc.items() if k != "sweep"}
    axes = [*_grid_axes(block.get("grid"), source), *_zip_axes(block.get("zip"), source)]
    _check_distinct_paths(axes, source)

    repeats = block.get("repeats", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise UserError(f"{source}: sweep.repeats: expected an integer >= 1, got {repeats!r}")
    base_seed = base.get("seed", 0)
    if isinstance(base_seed, bool) or not isinstance(base_seed, int):
        raise UserError(f"{source}: seed: expected an integer, got {base_seed!r}")
    seed_fields = _seed_fields(block.get("seed_fields"), source)
    swept = {p for axis in axes for p in axis.paths}
    clash = [p for p in seed_fields if p in swept]
    if clash and repeats > 1:
        raise UserError(
            f"{source}: sweep.repeats: expected seed fields ({clash[0]}) not to be swept "
            f"as well, got both"
        )
    return SweepSpec(
        source=source,
        base=base,
        axes=tuple(axes),
        repeats=repeats,
        base_seed=base_seed,
        seed_fields=seed_fields,
    )


def count_points(spec: SweepSpec) -> int:
    """How many points the sweep declares (the product of its axes' lengths and repeats),
    counted without expanding anything."""
    return math.prod(len(axis.values) for axis in spec.axes) * spec.repeats


def expand(spec: SweepSpec) -> list[SweepPoint]:
    """Every point of the sweep, in a stable order: axes in file order, repeats innermost.
    The count is checked against `MAX_SWEEP_POINTS` first: a 12-line file can declare 10^12."""
    shape = " x ".join(str(len(axis.values)) for axis in spec.axes) or "1"
    check_count(
        count_points(spec),
        MAX_SWEEP_POINTS,
        f"{spec.source}: sweep",
        "points",
        f"{shape} values x {spec.repeats} repeats; split it into several sweeps",
    )
    points: list[SweepPoint] = []
    positions = [range(len(axis.values)) for axis in spec.axes]
    for combo in itertools.product(*positions):
        overrides: list[tuple[str, Any]] = []
        for axis, pos in zip(spec.axes, combo):
            overrides.extend(zip(axis.paths, axis.values[pos]))
        for repeat in range(spec.repeats):
            seed = spec.base_seed + repeat
            frozen = tuple(overrides)
            points.append(
                SweepPoint(
                    index=len(points),
                    overrides=frozen,
                    repeat=repeat,
                    seed=seed,
                    point_id=point_id(frozen, seed),
                )
            )
    return points


def point_id(overrides: Sequence[tuple[str, Any]], seed: int) -> str:
    """Stable id of a point: independent of axis order, process, and Python hash seed."""
    return _digest({"overrides": sorted([p, v] for p, v in overrides), "seed": seed})[:16]


def point_document(
    spec: SweepSpec,
    point: SweepPoint,
    set_dotted: Callable[[dict, str, Any], dict] | None = None,
) -> dict[str, Any]:
    """The scenario document of one point (a fresh copy; the base is never modified)."""
    setter = set_dotted or _scenario_set_dotted()
    doc = copy.deepcopy(spec.base)
    for path, value in point.overrides:
        doc = _apply(setter, doc, path, value, f"sweep point {point.index}", spec.source)
    if spec.repeats > 1 or point.seed != spec.base_seed:
        for path in spec.seed_fields:
            doc = setter(doc, path, point.seed)
    return doc


def validate_points(
    spec: SweepSpec,
    points: Sequence[SweepPoint],
    validate: Callable[[dict, str], Any] | None = None,
    set_dotted: Callable[[dict, str, Any], dict] | None = None,
) -> tuple[Any | None, list[Any]]:
    """Validate every point's scenario before anything runs.

    Returns the validated base scenario (None when the base is only valid with the sweep's
    overrides, e.g. ``policies`` given only by the sweep) and one scenario per point.
    Each axis value is first tried with every other axis at its first value, so a bad value
    is reported at its own YAML path (``sweep.grid.hardware.hbm.capacity[2]``); then every
    point is checked, because values can be valid alone and invalid together.
    """
    check = validate or _scenario_from_dict()
    setter = set_dotted or _scenario_set_dotted()
    first = [0] * len(spec.axes)
    try:
        check(_document_at(spec, first, setter), spec.source)
    except UserError:
        _blame_first_values(spec, check, setter)
        raise
    for number, axis in enumerate(spec.axes):
        for pos in range(1, len(axis.values)):
            where = f"{axis.where}[{pos}] ({_show(axis.values[pos])})"
            doc = _document_at(spec, [*first[:number], pos, *first[number + 1 :]], setter, where)
            _run_check(check, doc, spec.source, where)
    scenarios = []
    for point in points:
        doc = point_document(spec, point, setter)
        where = f"sweep point {point.index} ({_describe(point)})"
        scenarios.append(_run_check(check, doc, spec.source, where))
    try:
        base = check(copy.deepcopy(spec.base), spec.source)
    except UserError:
        base = None
    return base, scenarios


def _blame_first_values(
    spec: SweepSpec,
    check: Callable[[dict, str], Any],
    setter: Callable[[dict, str, Any], dict],
) -> None:
    """Point 0 is invalid: name the first axis value that is invalid on the base alone."""
    try:
        check(copy.deepcopy(spec.base), spec.source)
    except UserError:
        return  # the base needs the sweep's values (or is itself wrong): report the point
    for axis in spec.axes:
        where = f"{axis.where}[0] ({_show(axis.values[0])})"
        doc = copy.deepcopy(spec.base)
        for path, value in zip(axis.paths, axis.values[0]):
            doc = _apply(setter, doc, path, value, where, spec.source)
        _run_check(check, doc, spec.source, where)
    _run_check(
        check, _document_at(spec, [0] * len(spec.axes), setter), spec.source, "sweep point 0"
    )


def _document_at(
    spec: SweepSpec,
    positions: Sequence[int],
    setter: Callable[[dict, str, Any], dict],
    where: str = "sweep point 0",
) -> dict[str, Any]:
    doc = copy.deepcopy(spec.base)
    for axis, pos in zip(spec.axes, positions):
        for path, value in zip(axis.paths, axis.values[pos]):
            doc = _apply(setter, doc, path, value, where, spec.source)
    return doc


def _apply(
    setter: Callable[[dict, str, Any], dict],
    doc: dict[str, Any],
    path: str,
    value: Any,
    where: str,
    source: str,
) -> dict[str, Any]:
    try:
        if path != POLICIES_PATH or isinstance(value, list):
            return setter(doc, path, value)
        # One policy per point: it is also the point's own baseline, so the scenario does not
        # add the baseline policy to every point; the table's speedup compares sibling points.
        doc = setter(doc, path, [value])
        return setter(doc, BASELINE_PATH, _policy_label(value))
    except UserError as err:
        raise UserError(f"{source}: {where}: {err}") from None


def _policy_label(entry: Any) -> Any:
    if isinstance(entry, dict):
        return entry.get("label") or entry.get("name")
    return entry


def _run_check(check: Callable[[dict, str], Any], doc: dict, source: str, where: str) -> Any:
    try:
        return check(doc, source)
    except UserError as err:
        message = str(err).removeprefix(f"{source}: ").removesuffix(f" ({source})")
        raise UserError(f"{source}: {where}: {message}") from None


def _grid_axes(grid: Any, source: str) -> list[SweepAxis]:
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise UserError(
            f"{source}: sweep.grid: expected a mapping of field: [values], got {_kind(grid)}"
        )
    axes = []
    for path, values in grid.items():
        where = f"sweep.grid.{path}"
        _check_path(path, where, source)
        column = _value_list(values, where, source)
        _check_unique([(v,) for v in column], where, source)
        axes.append(SweepAxis(where=where, paths=(path,), values=tuple((v,) for v in column)))
    return axes


def _zip_axes(zipped: Any, source: str) -> list[SweepAxis]:
    if zipped is None:
        return []
    groups = [zipped] if isinstance(zipped, dict) else zipped
    if not isinstance(groups, list):
        raise UserError(
            f"{source}: sweep.zip: expected a mapping of field: [values] (or a list of them), "
            f"got {_kind(zipped)}"
        )
    axes = []
    for number, group in enumerate(groups):
        where = "sweep.zip" if isinstance(zipped, dict) else f"sweep.zip[{number}]"
        if not isinstance(group, dict) or not group:
            raise UserError(
                f"{source}: {where}: expected a mapping of field: [values], got {_kind(group)}"
            )
        columns = {}
        for path, values in group.items():
            _check_path(path, f"{where}.{path}", source)
            columns[path] = _value_list(values, f"{where}.{path}", source)
        lengths = {p: len(v) for p, v in columns.items()}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{p}: {n}" for p, n in lengths.items())
            raise UserError(f"{source}: {where}: expected lists of equal length, got {shown}")
        rows = list(zip(*columns.values()))
        _check_unique(rows, where, source)
        axes.append(SweepAxis(where=where, paths=tuple(columns), values=tuple(rows)))
    return axes


def _seed_fields(value: Any, source: str) -> tuple[str, ...]:
    if value is None:
        return (SEED_PATH,)
    if not isinstance(value, list) or not value:
        raise UserError(
            f"{source}: sweep.seed_fields: expected a list of dotted fields, got {_kind(value)}"
        )
    for pos, path in enumerate(value):
        _check_path(path, f"sweep.seed_fields[{pos}]", source)
    return tuple(dict.fromkeys(value))


def _check_path(path: Any, where: str, source: str) -> None:
    if not isinstance(path, str) or not path.strip() or any(not p for p in path.split(".")):
        raise UserError(
            f"{source}: {where}: expected a dotted field like 'routing.topk', got {path!r}"
        )
    if path == "sweep" or path.startswith("sweep."):
        raise UserError(f"{source}: {where}: expected a scenario field, got the sweep block itself")


def _value_list(values: Any, where: str, source: str) -> list[Any]:
    if not isinstance(values, list) or not values:
        raise UserError(
            f"{source}: {where}: expected a non-empty list of values, got {_kind(values)}"
        )
    return values


def _check_unique(rows: list[tuple[Any, ...]], where: str, source: str) -> None:
    seen: dict[str, int] = {}
    for pos, row in enumerate(rows):
        key = canonical_json(list(row))
        if key in seen:
            raise UserError(
                f"{source}: {where}[{pos}]: expected distinct values, got {_show(row)} "
                f"again (first at [{seen[key]}])"
            )
        seen[key] = pos


def _check_distinct_paths(axes: list[SweepAxis], source: str) -> None:
    owner: dict[str, str] = {}
    for axis in axes:
        for path in axis.paths:
            if path in owner:
                raise UserError(
                    f"{source}: {axis.where}: expected each field swept once, got {path} "
                    f"also in {owner[path]}"
                )
            owner[path] = axis.where


def _describe(point: SweepPoint) -> str:
    parts = [f"{p}={_show((v,))}" for p, v in point.overrides]
    parts.append(f"seed={point.seed}")
    return ", ".join(parts)


def _show(values: tuple[Any, ...]) -> str:
    shown = [v if isinstance(v, str) else canonical_json(v) for v in values]
    return shown[0] if len(shown) == 1 else "(" + ", ".join(shown) + ")"


def canonical_json(obj: Any) -> str:
    """Compact, key-sorted JSON: the stable text that ids and cache keys are hashed from."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list) and not value:
        return "an empty list"
    if isinstance(value, dict | list):
        return type(value).__name__
    return repr(value)


def _scenario_set_dotted() -> Callable[[dict, str, Any], dict]:
    from sim.scenario import set_dotted

    return set_dotted


def _scenario_from_dict() -> Callable[[dict, str], Any]:
    from sim.scenario import scenario_from_dict

    return scenario_from_dict
