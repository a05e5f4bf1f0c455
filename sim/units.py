"""Physical quantities written with units in YAML (``32 GB/s``, ``2 us``, ``80 GiB``), parsed once.

Every number the engine sees is an SI float: bytes, seconds, bytes/s, FLOP/s. Scenario and
preset files must say which unit they mean, because the seed notebook's ``32``/``512`` "Gbps"
shows how easily a bare number is misread (bits or bytes? per lane or per link?).

Grammar: ``<number> <unit>``, with or without a space. Prefixes: SI ones are decimal
(``k``/``K`` = 1e3, ``M`` = 1e6, ``G`` = 1e9, ``T`` = 1e12, ``P`` = 1e15), ``Ki``/``Mi``/
``Gi``/``Ti`` are binary (1024**n). Case matters for ``B`` (bytes) vs ``b`` (bits).

* bandwidth: ``B/s``, ``GB/s``, ``GiB/s``, ``Gbit/s``, ``Gb/s``, ``Gbps`` (bits are divided by 8).
* size: ``B``, ``kB``/``KB``, ``MB``, ``GB``, ``TB``, ``KiB``, ``MiB``, ``GiB``, ``TiB``.
* duration: ``s``, ``ms``, ``us``/``µs``, ``ns``.
* compute: ``FLOP/s`` or ``FLOPS`` with a prefix (``989 TFLOP/s``).
* clock (`parse_clock`, for cost tables' cycles): ``Hz``/``kHz``/``MHz``/``GHz``, or a plain
  number in Hz.

Plain numbers are accepted in one documented case only: ``0`` for a size or a duration
(no cache, no latency), where the unit cannot change the meaning.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from sim.errors import UserError

_DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}

_NUMBER_RE = re.compile(r"^\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")


def _table(prefixes: dict[str, float], bases: dict[str, float]) -> dict[str, float]:
    return {p + b: pv * bv for p, pv in prefixes.items() for b, bv in bases.items()}


_SIZE_UNITS = _table(_DECIMAL | _BINARY, {"B": 1.0, "byte": 1.0, "bytes": 1.0})
_BANDWIDTH_UNITS = _table(_DECIMAL | _BINARY, {"B/s": 1.0, "bit/s": 0.125, "b/s": 0.125}) | (
    _table(_DECIMAL, {"bps": 0.125})
)
_DURATION_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9}
_FLOPS_UNITS = _table(_DECIMAL, {"FLOP/s": 1.0, "FLOPS": 1.0, "flop/s": 1.0})


@dataclass(frozen=True)
class Quantity:
    """One kind of physical quantity: its units, an example for messages, and its range."""

    kind: str  # "bandwidth", "size", "duration", "compute"
    example: str
    units: dict[str, float]
    allow_zero: bool  # a plain or unit-ful 0 is meaningful (no cache, no latency)
    minimum: float = 0.0  # smallest value other than 0 (SI units)
    maximum: float = math.inf  # largest value (SI units): every quantity has a finite range

    def parse(self, value: object, where: str) -> float:
        """``value`` (str, or a plain 0 where allowed) in SI units; UserError naming ``where``."""
        try:
            return _parse(self, value)
        except ValueError as err:
            raise UserError(f"{where}: {err}") from None

    def check(self, value: object) -> float:
        """Like `parse`, but a plain ValueError ("expected ..., got ...") for schema validators."""
        return _parse(self, value)


# The ranges: far beyond any real machine either way, and small enough that every product the
# engine forms (bytes / bandwidth, FLOPs / throughput, times summed over steps) stays finite.
BANDWIDTH = Quantity("bandwidth", "32 GB/s", _BANDWIDTH_UNITS, False, 1.0, 1e18)
SIZE = Quantity("size", "80 GiB", _SIZE_UNITS, True, 1.0, 2.0**60)
DURATION = Quantity("duration", "2 us", _DURATION_UNITS, True, 1e-15, 1e9)
COMPUTE = Quantity("compute", "989 TFLOP/s", _FLOPS_UNITS, False, 1.0, 1e21)
QUANTITIES = {q.kind: q for q in (BANDWIDTH, SIZE, DURATION, COMPUTE)}
# A size that cannot be 0: what something divides by (an expert's bytes, a GPU's memory).
POSITIVE_SIZE = Quantity("size", "4.33 MB", _SIZE_UNITS, False, 1.0, 2.0**60)


def _parse(q: Quantity, value: object) -> float:
    """``value`` in SI units, or ValueError with the message's tail ("expected ..., got ...")."""
    expected = f"a {q.kind} like {q.example!r}"
    if isinstance(value, bool):
        raise ValueError(f"expected {expected}, got {value!r}")
    if isinstance(value, int | float):
        if q.allow_zero and value == 0:
            return 0.0
        raise ValueError(f"expected {expected} (with a unit), got {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"expected {expected}, got a {type(value).__name__}")
    match = _NUMBER_RE.match(value)
    if not match:
        raise ValueError(f"expected {expected}, got {value!r}")
    number, unit = float(match.group(1)), match.group(2)
    if not unit:
        if q.allow_zero and number == 0:
            return 0.0
        raise ValueError(f"expected {expected} (with a unit), got {value!r}")
    scale = q.units.get(unit)
    if scale is None:
        raise ValueError(f"expected {expected}, got {value!r} (unknown unit {unit!r})")
    result = _scaled(number, scale)
    if not math.isfinite(result):
        raise ValueError(f"expected a finite {q.kind}, got {value!r}")
    if result < 0 or (result == 0 and not q.allow_zero):
        sign = "non-negative" if q.allow_zero else "positive"
        raise ValueError(f"expected a {sign} {q.kind} like {q.example!r}, got {value!r}")
    if result != 0 and not q.minimum <= result <= q.maximum:
        low, high = (f"{v:g} {_BASE_UNIT[q.kind]}" for v in (q.minimum, q.maximum))
        zero = "0 or " if q.allow_zero else ""
        raise ValueError(f"expected a {q.kind} of {zero}{low} to {high}, got {value!r}")
    return result


def _scaled(number: float, scale: float) -> float:
    """``number * scale``, dividing by the exact integer for sub-unit scales (``10 us`` is
    exactly ``1e-05``, not ``9.999999999999999e-06``)."""
    return number / round(1.0 / scale) if scale < 1.0 else number * scale


def _unscaled(value: float, scale: float) -> float:
    return value * round(1.0 / scale) if scale < 1.0 else value / scale


def parse_bandwidth(value: object, where: str) -> float:
    """Bytes per second (> 0)."""
    return BANDWIDTH.parse(value, where)


def parse_size(value: object, where: str) -> float:
    """Bytes (>= 0)."""
    return SIZE.parse(value, where)


def parse_duration(value: object, where: str) -> float:
    """Seconds (>= 0)."""
    return DURATION.parse(value, where)


def parse_flops(value: object, where: str) -> float:
    """FLOP per second (> 0)."""
    return COMPUTE.parse(value, where)


MIN_CLOCK_HZ, MAX_CLOCK_HZ = 1.0, 1e12  # cycles of cost tables: 1 Hz .. 1 THz
_CLOCK_RE = re.compile(r"^\s*([0-9.]+(?:[eE][+-]?\d+)?)\s*(Hz|kHz|MHz|GHz)\s*$")
_CLOCK_UNITS = {"Hz": 1.0, "kHz": 1e3, "MHz": 1e6, "GHz": 1e9}


def parse_clock(value: object, where: str) -> float:
    """A clock frequency in Hz from a number (Hz) or a string such as ``1 GHz``/``800 MHz``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        hz = float(value)
    else:
        match = _CLOCK_RE.match(str(value))
        try:
            hz = float(match[1]) * _CLOCK_UNITS[match[2]] if match else None
        except ValueError:  # the pattern admits a malformed number such as '1.2.3'
            hz = None
        if hz is None:
            raise UserError(f"{where}: expected a frequency such as '1 GHz', got {value!r}")
    if not MIN_CLOCK_HZ <= hz <= MAX_CLOCK_HZ:
        raise UserError(
            f"{where}: expected a frequency of {MIN_CLOCK_HZ:g} to {MAX_CLOCK_HZ:g} Hz, got {value!r}"
        )
    return hz


# -- printing ----------------------------------------------------------------------------------
def _format(value: float, steps: tuple[tuple[float, str], ...], digits: int) -> str:
    """``value`` with the largest unit it is at least 1 of (the smallest unit otherwise)."""
    for scale, unit in steps:
        if abs(value) >= scale:
            return f"{_unscaled(value, scale):.{digits}g} {unit}"
    scale, unit = steps[-1]
    return f"{_unscaled(value, scale):.{digits}g} {unit}"


_BW_STEPS = ((1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s"), (1.0, "B/s"))
_SIZE_STEPS = ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "B"))
_TIME_STEPS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns"))
_FLOPS_STEPS = ((1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1.0, "FLOP/s"))


def format_bandwidth(bytes_per_s: float, digits: int = 4) -> str:
    return _format(bytes_per_s, _BW_STEPS, digits)


def format_size(nbytes: float, digits: int = 4) -> str:
    return "0 B" if nbytes == 0 else _format(nbytes, _SIZE_STEPS, digits)


def format_duration(seconds: float, digits: int = 4) -> str:
    return "0 s" if seconds == 0 else _format(seconds, _TIME_STEPS, digits)


def format_flops(flops: float, digits: int = 4) -> str:
    return _format(flops, _FLOPS_STEPS, digits)


# Exact forms for files that are read back (resolved scenarios): a short prefixed form when it
# parses back to the same float, else the float's repr in the base unit.
EXACT_DIGITS = 12

FORMATTERS: dict[str, Callable[[float, int], str]] = {
    "bandwidth": format_bandwidth,
    "size": format_size,
    "duration": format_duration,
    "compute": format_flops,
}


def format_exact(kind: str, value: float) -> str:
    """A unit string that parses back to exactly ``value`` (shortest such form)."""
    fmt = FORMATTERS[kind]
    for digits in range(4, EXACT_DIGITS + 1):
        text = fmt(value, digits)
        if QUANTITIES[kind].check(text) == value:
            return text
    return f"{value!r} {_BASE_UNIT[kind]}"  # the base unit's scale is 1: always exact


_BASE_UNIT = {"bandwidth": "B/s", "size": "B", "duration": "s", "compute": "FLOP/s"}
