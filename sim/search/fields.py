"""The field a search varies: what kind of value it holds, its range, and the lattice of values
the search may try.

A field is any dotted scenario path whose schema type carries a unit (a bandwidth, size,
duration or compute rate; the HBM capacity also in whole experts) or is an integer (link
channels, ``trace.batch``, ...). Its values live on a *lattice*: geometric with ratio
``1 + tolerance`` from LO to HI (HI itself the last value), so that two neighbours are one
tolerance step apart and bisection over lattice indices ends with the boundary and the value
one tolerance step on the wrong side, both simulated. Integer fields use the distinct rounded
values of the same geometric sequence (every integer while the step is below one). A range
starting at 0 starts the sequence at ``tolerance x HI`` (floats) or 1 (integers), after 0.
"""

from __future__ import annotations

import math
import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from sim.errors import UserError
from sim.units import FORMATTERS, QUANTITIES, format_exact

INTEGER = "integer"
EXPERTS = "experts"  # HBM capacity searched in whole experts (the range written in experts)
MAX_INTEGER_VALUES = 1_000_000  # integer lattices are listed; float lattices are computed
_SIGNIFICANT = 12  # float lattice values are rounded to this many digits: short, stable text
_EXPERTS_RE = re.compile(r"^\s*(\d+)\s*experts?\s*$")
_INDEX_RE = re.compile(r"\[(\d+)\]")
_NOT_SEARCHABLE = {"seed": "the seed picks random numbers; it is no amount of anything"}


@dataclass(frozen=True)
class FieldKind:
    """What a scenario field holds: a quantity kind of ``sim.units`` or ``integer``; whether
    a size may be written in experts."""

    path: str
    kind: str  # "bandwidth", "size", "duration", "compute" or "integer"
    experts: bool = False


def field_kind(path: str, where: str = "--vary") -> FieldKind:
    """The kind of the scenario field at ``path``; UserError for an unknown field or one
    without a unit."""
    from sim.scenario.build import unit_of
    from sim.scenario.schema import ScenarioSection

    parts = [p for p in _INDEX_RE.sub(r".\1", path).split(".")]
    if not path.strip() or not all(parts):
        raise UserError(
            f"{where}: expected a dotted scenario field like 'hardware.hbm.capacity', got {path!r}"
        )
    if path in _NOT_SEARCHABLE:
        raise UserError(
            f"{where}: expected a field with a unit, got {path} ({_NOT_SEARCHABLE[path]})"
        )
    node: Any = ScenarioSection
    annotation: Any = None
    metadata: Any = ()
    for depth, part in enumerate(parts):
        node = _container(node)
        done = ".".join(parts[:depth])
        if _is_model(node):
            info = node.model_fields.get(part)
            if info is None:
                allowed = ", ".join(node.model_fields)
                inside = f" in {done}" if done else ""
                raise UserError(
                    f"{where}: expected a scenario field, got {path} (no field {part!r}{inside}; "
                    f"allowed: {allowed})"
                )
            annotation, metadata = info.annotation, info.metadata
        elif typing.get_origin(node) is dict:
            annotation, metadata = typing.get_args(node)[1], ()
        elif typing.get_origin(node) is list and part.isdigit():
            annotation, metadata = typing.get_args(node)[0], ()
        else:
            raise UserError(
                f"{where}: expected a scenario field, got {path} ({done or 'the scenario'} "
                f"has no field {part!r})"
            )
        node = annotation
    unit = unit_of(annotation, metadata)
    if unit is not None:
        if unit.kind not in QUANTITIES:
            raise UserError(
                f"{where}: expected a field with a known unit, got {path} ({unit.kind})"
            )
        return FieldKind(path, unit.kind, unit.experts)
    if _is_int(annotation):
        return FieldKind(path, INTEGER)
    raise UserError(
        f"{where}: expected a field with a unit (bandwidth, size, duration, compute) or an "
        f"integer field, got {path} ({_describe(annotation)})"
    )


def _container(annotation: Any) -> Any:
    """The model, dict or list type inside ``X | None`` / ``Annotated[X, ...]``, else None."""
    if _is_model(annotation) or typing.get_origin(annotation) in (dict, list):
        return annotation
    for arg in typing.get_args(annotation):
        found = _container(arg)
        if found is not None:
            return found
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_int(typing.get_args(annotation)[0])
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return origin is not None and origin is not list and len(args) == 1 and _is_int(args[0])


def _describe(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return f"a field of type {text}" if len(text) < 60 else "a field without a unit"


# -- the range -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    """A varied field with its range and lattice. Values are SI floats (bytes, seconds, B/s,
    FLOP/s), ints (integer fields) or expert counts (``experts``: the range was written in
    experts; ``expert_bytes`` converts them to bytes for the table)."""

    path: str
    kind: str  # a quantity kind, "integer" or "experts"
    lo: float
    hi: float
    tolerance: float
    expert_bytes: float = 0.0
    integers: tuple[int, ...] = ()  # the lattice of an integer or experts field

    @property
    def size(self) -> int:
        """Number of lattice values (the equivalent grid's length)."""
        if self.integers:
            return len(self.integers)
        return _float_count(self.lo, self.hi, self.tolerance)

    def value(self, index: int) -> float | int:
        """The lattice's ``index``-th value (SI float, or int for integer/experts fields)."""
        if not 0 <= index < self.size:
            raise IndexError(index)
        if self.integers:
            return self.integers[index]
        return _float_value(self.lo, self.hi, self.tolerance, index)

    def yaml_value(self, index: int) -> Any:
        """The value as a scenario file writes it (``45.2548339959 GB/s``, ``12 experts``, 8)."""
        value = self.value(index)
        if self.kind == INTEGER:
            return int(value)
        if self.kind == EXPERTS:
            return f"{int(value)} experts"
        return format_exact(self.kind, float(value))

    def si(self, index: int) -> float | int:
        """The value in SI units (bytes for experts), for search.csv."""
        value = self.value(index)
        if self.kind == EXPERTS:
            return float(value) * self.expert_bytes
        return value

    def show(self, index: int) -> str:
        """Readable text of the value (4 significant digits)."""
        return show_value(self.kind, self.value(index))

    def grid_indices(self, count: int) -> list[int]:
        """``count`` lattice indices evenly spaced from the first to the last (fewer when the
        lattice is shorter)."""
        n = self.size
        if count >= n:
            return list(range(n))
        return sorted({round(i * (n - 1) / (count - 1)) for i in range(count)})


def show_value(kind: str, value: float | int) -> str:
    if kind == INTEGER:
        return str(int(value))
    if kind == EXPERTS:
        return f"{int(value)} experts"
    return FORMATTERS[kind](float(value), 4)


def parse_range(text: str, kind: FieldKind, tolerance: float, where: str = "--range") -> Field:
    """``LO:HI`` in the field's units (``16 GB/s:512 GB/s``, ``8 experts:64 experts``, ``1:64``)
    into a `Field` with its lattice."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise UserError(f"{where}: expected LO:HI like {_example(kind)!r}, got {text!r}")
    experts = kind.experts and any(_EXPERTS_RE.match(p) for p in parts)
    if experts:
        lo, hi = (_experts(p, kind, where) for p in parts)
        field_kind_name = EXPERTS
    elif kind.kind == INTEGER:
        lo, hi = (_integer(p, kind, where) for p in parts)
        field_kind_name = INTEGER
    else:
        quantity = QUANTITIES[kind.kind]
        try:
            lo, hi = (quantity.check(p.strip()) for p in parts)
        except ValueError as err:
            raise UserError(f"{where} ({kind.path}): {err}") from None
        field_kind_name = kind.kind
    if not lo < hi:
        raise UserError(f"{where}: expected LO < HI, got {text!r}")
    integers: tuple[int, ...] = ()
    if field_kind_name in (INTEGER, EXPERTS):
        integers = _integer_lattice(int(lo), int(hi), tolerance, where)
    return Field(kind.path, field_kind_name, lo, hi, tolerance, integers=integers)


def _example(kind: FieldKind) -> str:
    if kind.kind == INTEGER:
        return "1:64"
    if kind.experts:
        return "8 experts:64 experts"
    example = QUANTITIES[kind.kind].example  # a kind added later: its own example twice
    return _RANGE_EXAMPLES.get(kind.kind, f"{example}:{example}")


_RANGE_EXAMPLES = {
    "bandwidth": "16 GB/s:512 GB/s",
    "size": "1 GiB:16 GiB",
    "duration": "1 us:50 us",
    "compute": "100 TFLOP/s:1000 TFLOP/s",
}


def _experts(text: str, kind: FieldKind, where: str) -> int:
    match = _EXPERTS_RE.match(text)
    if match is None and text.strip() not in ("0", "0 B"):
        raise UserError(
            f"{where} ({kind.path}): expected both ends in experts like '8 experts:64 experts' "
            f"(or both sizes), got {text.strip()!r}"
        )
    return int(match.group(1)) if match else 0


def _integer(text: str, kind: FieldKind, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise UserError(
            f"{where} ({kind.path}): expected integers like '1:64', got {text.strip()!r}"
        ) from None
    if value < 0:
        raise UserError(f"{where} ({kind.path}): expected integers >= 0, got {value}")
    return value


def _float_count(lo: float, hi: float, tolerance: float) -> int:
    start = lo if lo > 0 else _rounded(tolerance * hi)
    steps = max(1, math.ceil(math.log(hi / start) / math.log1p(tolerance) - 1e-9))
    return steps + 1 + (1 if lo == 0 else 0)


def _float_value(lo: float, hi: float, tolerance: float, index: int) -> float:
    if lo == 0:
        if index == 0:
            return 0.0
        lo, index = _rounded(tolerance * hi), index - 1
    n = _float_count(lo, hi, tolerance)
    if index == 0:
        return lo
    if index >= n - 1:
        return hi
    return min(_rounded(lo * (1.0 + tolerance) ** index), hi)


def _rounded(value: float) -> float:
    return float(f"{value:.{_SIGNIFICANT}g}")


def _integer_lattice(lo: int, hi: int, tolerance: float, where: str) -> tuple[int, ...]:
    """Distinct rounded values of the geometric sequence from ``lo`` (1 after a 0) to ``hi``."""
    values = [0] if lo == 0 else []
    current = float(max(lo, 1))
    last = None
    while True:
        value = min(round(current), hi)
        if value != last:
            values.append(value)
            last = value
            if len(values) > MAX_INTEGER_VALUES:
                raise UserError(
                    f"{where}: expected at most {MAX_INTEGER_VALUES:,} values at this tolerance, "
                    f"got more (raise --tolerance or narrow the range)"
                )
        if value >= hi:
            return tuple(values)
        current = max(current * (1.0 + tolerance), value + 1.0)
