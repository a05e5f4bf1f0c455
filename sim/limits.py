"""Every bound on what users hand us, in one place: numbers and declared sizes.

Numbers: a value from a file or a flag is checked for type, finiteness and range *before* it is
used (`checked_int`, `checked_float`), and an array read from a file is checked for dtype and
range before it is cast (`int_array`, `float_array`): an ``object`` array, a uint64 id beyond
int64, a Python integer of 30 digits or an ``inf`` score each become one `UserError` line, never
an OverflowError, a silent wrap-around or a ZeroDivisionError.

Declared sizes: a count the input *declares* (sweep points, alias expansion, a shard's storage,
a synthetic trace's shape) is compared with its limit before anything is expanded, allocated
or read (`check_count`), and refused naming the count and the limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sim.errors import UserError

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
INT32_MAX = 2**31 - 1
MAX_PARAM_FLOAT = 1e15  # any float parameter of a policy, either sign

# -- declared sizes --------------------------------------------------------------------------------
MAX_YAML_BYTES = 64 * 2**20  # a sweep manifest of 100,000 points is about 20 MB
MAX_ALIAS_NODES = 100_000  # nodes aliases may add to a YAML document (real files use a few)
MAX_SWEEP_POINTS = 100_000  # points of one sweep (each is validated, then run)
MAX_TRACE_ENTRIES = 2**28  # routing entries steps x layers x seqs x k held in memory (1.6 GB)
MAX_SEQ_LEN = 2**20  # decode steps of a sequence (synthetic traces, --seq-len)
MAX_LAYERS = 4096
MAX_EXPERTS = 2**15 - 1  # expert ids are stored as int16
MAX_DIMENSION = 2**20  # a model width (hidden, FFN, heads, head dim): 1,048,576
MAX_BATCH = 2**20  # sequences of one trace


def check_count(count: int, limit: int, where: str, what: str, hint: str = "") -> int:
    """``count`` if it is at most ``limit``; else ``WHERE: expected at most LIMIT WHAT, got
    COUNT`` (both with thousands separators) and an optional hint."""
    if count > limit:
        tail = f" ({hint})" if hint else ""
        raise UserError(f"{where}: expected at most {limit:,} {what}, got {count:,}{tail}")
    return count


# -- scalars -----------------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def checked_int(value: Any, where: str, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """An integer (not a bool, not a float) in ``[lo, hi]``."""
    if not _is_int(value):
        raise UserError(f"{where}: expected an integer in {lo:,}..{hi:,}, got {_show(value)}")
    number = int(value)
    if not lo <= number <= hi:
        raise UserError(f"{where}: expected an integer in {lo:,}..{hi:,}, got {_show(number)}")
    return number


def checked_float(
    value: Any,
    where: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
) -> float:
    """A finite number (int or float, not a bool) in ``[lo, hi]`` (``(lo, hi]`` with
    ``lo_open``)."""
    shown = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise UserError(f"{where}: expected a finite number in {shown}, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond what a float holds
        raise UserError(
            f"{where}: expected a finite number in {shown}, got {_show(value)}"
        ) from None
    if not math.isfinite(number) or number < lo or number > hi or (lo_open and number == lo):
        raise UserError(f"{where}: expected a finite number in {shown}, got {_show(value)}")
    return number


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:24]}... ({len(text)} characters)"


# -- arrays ------------------------------------------------------------------------------------
def int_array(
    values: Any, where: str, *, lo: int = INT64_MIN, hi: int = INT64_MAX, what: str = "integers"
) -> np.ndarray:
    """``values`` (an array or nested lists) as int64, after checking its dtype is an integer
    one and every value is in ``[lo, hi]``; ``object``, float, bool, text and complex arrays
    are refused, and so are Python integers beyond int64."""
    if isinstance(values, np.ndarray):
        arr = values
    else:
        try:
            arr = np.asarray(values)
        except (OverflowError, ValueError) as err:
            raise UserError(f"{where}: expected {what}, got {_first(err)}") from None
    if arr.dtype == object:
        arr = _object_ints(arr, where, what)
    if arr.dtype.kind not in "iu":
        raise UserError(f"{where}: expected {what} (an integer dtype), got dtype {arr.dtype}")
    if arr.size:
        small, big = int(arr.min()), int(arr.max())  # exact for every integer dtype
        if small < lo or big > hi:
            bad = small if small < lo else big
            raise UserError(f"{where}: expected {what} in {lo:,}..{hi:,}, got {_show(bad)}")
    return arr.astype(np.int64, copy=False)


def _object_ints(arr: np.ndarray, where: str, what: str) -> np.ndarray:
    """An object array of Python ints (nested lists with huge values) -> int64, or refused."""
    flat = arr.ravel().tolist()
    if not all(_is_int(v) for v in flat):
        bad = next(v for v in flat if not _is_int(v))
        raise UserError(f"{where}: expected {what}, got {_show(bad)}")
    too_big = [v for v in flat if not INT64_MIN <= v <= INT64_MAX]
    if too_big:
        raise UserError(f"{where}: expected {what} within int64, got {_show(too_big[0])}")
    return np.array(flat, dtype=np.int64).reshape(arr.shape)


def float_array(
    values: Any,
    where: str,
    *,
    lo: float = -math.inf,
    hi: float = math.inf,
    what: str = "numbers",
    dtype: Any = np.float64,
) -> np.ndarray:
    """``values`` as ``dtype`` (float64 by default) after checking the dtype is numeric (not
    object, bool, text or complex), and that every value is finite, in ``[lo, hi]``, and
    still finite after the cast (3.5e38 overflows float32)."""
    if isinstance(values, np.ndarray):
        arr = values
    else:
        try:
            arr = np.asarray(values)
        except (OverflowError, ValueError) as err:
            raise UserError(f"{where}: expected {what}, got {_first(err)}") from None
    if arr.dtype.kind not in "iuf":
        raise UserError(f"{where}: expected {what} (a numeric dtype), got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(dtype, copy=False)
    if out.size:
        finite = np.isfinite(out)
        if not finite.all():
            bad = arr.ravel()[int(np.flatnonzero(~finite.ravel())[0])]
            raise UserError(f"{where}: expected finite {what}, got {_show(bad.item())}")
        small, big = float(out.min()), float(out.max())
        if small < lo or big > hi:
            raise UserError(
                f"{where}: expected {what} in [{lo:g}, {hi:g}], got {small if small < lo else big:g}"
            )
    return out


def _first(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:120] if text else type(err).__name__


def shape_entries(shape: Sequence[int]) -> int:
    """The number of entries of ``shape`` (a Python int: never overflows)."""
    return math.prod(int(n) for n in shape)
