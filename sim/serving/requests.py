"""The requests of a serving run: arrival times and prompt/output lengths.

Generated from a `ServingSpec` (Poisson or Gamma arrivals, lengths from distributions) or read
from a CSV file of requests, such as the public Azure LLM inference traces (columns
``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens``). Arrivals, prompt lengths and output
lengths draw from three independent streams of the workload's seed, so changing the length
distribution never moves the arrival times (and vice versa).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sim import opener
from sim.errors import UserError
from sim.scenario.schema import MAX_REQUESTS, MAX_TOKENS
from sim.serving.spec import Arrivals, ServingSpec

# CSV column names: ours first, then the Azure LLM inference traces'
ARRIVAL_COLUMNS = ("arrival", "TIMESTAMP")
PROMPT_COLUMNS = ("prompt_tokens", "ContextTokens")
OUTPUT_COLUMNS = ("output_tokens", "GeneratedTokens")
_CHUNK = 4096  # arrivals drawn at a time when generating up to a duration


@dataclass(frozen=True)
class RequestSet:
    """Requests in arrival order (ties keep file / generation order); times in seconds."""

    arrival: np.ndarray  # float64 [n], non-decreasing, first >= 0
    prompt: np.ndarray  # int64 [n], >= 1
    output: np.ndarray  # int64 [n], >= 1

    def __post_init__(self) -> None:
        for arr in (self.arrival, self.prompt, self.output):
            arr.flags.writeable = False

    def __len__(self) -> int:
        return int(self.arrival.size)


def make_requests(spec: ServingSpec) -> RequestSet:
    """The workload's requests: generated, or read from its CSV (then cut to ``requests`` or
    ``duration``)."""
    if spec.arrivals.process == "csv":
        assert spec.arrivals.path is not None
        found = read_requests_csv(spec.arrivals.path, spec.arrivals.rate_scale)
        return _cut(found, spec)
    arrivals_rng, prompt_rng, output_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(spec.seed).spawn(3)
    )
    arrival = arrival_times(spec.arrivals, arrivals_rng, spec.requests, spec.duration)
    n = arrival.size
    if n == 0:
        raise UserError(
            f"workload.duration: expected at least one request to arrive, got none in "
            f"{spec.duration} s at rate {spec.arrivals.rate}/s"
        )
    assert spec.prompt is not None and spec.output is not None
    return RequestSet(arrival, spec.prompt.sample(prompt_rng, n), spec.output.sample(output_rng, n))


def arrival_times(
    arrivals: Arrivals, rng: np.random.Generator, count: int | None, duration: float | None
) -> np.ndarray:
    """``count`` arrival times, or every arrival before ``duration``, of a Poisson or Gamma
    renewal process starting at time 0 (the first request arrives after one gap)."""
    if count is not None:
        return np.cumsum(_gaps(arrivals, rng, count))
    assert duration is not None
    times: list[np.ndarray] = []
    last = 0.0
    while last < duration:
        chunk = last + np.cumsum(_gaps(arrivals, rng, _CHUNK))
        times.append(chunk)
        last = float(chunk[-1])
    out = np.concatenate(times) if times else np.zeros(0)
    return out[out < duration]


def _gaps(arrivals: Arrivals, rng: np.random.Generator, n: int) -> np.ndarray:
    assert arrivals.rate is not None
    mean = 1.0 / arrivals.rate
    if arrivals.process == "poisson":
        return rng.exponential(mean, size=n)
    assert arrivals.cv is not None
    shape = 1.0 / (arrivals.cv * arrivals.cv)  # gamma: cv^2 = 1 / shape, mean = shape * scale
    return rng.gamma(shape, mean / shape, size=n)


def _cut(found: RequestSet, spec: ServingSpec) -> RequestSet:
    where = spec.arrivals.path
    if spec.requests is not None:
        if spec.requests > len(found):
            raise UserError(
                f"workload.requests: expected at most the {len(found)} requests of {where}, "
                f"got {spec.requests}"
            )
        keep = slice(0, spec.requests)
    elif spec.duration is not None:
        keep = slice(0, int(np.searchsorted(found.arrival, spec.duration, side="left")))
        if keep.stop == 0:
            raise UserError(
                f"workload.duration: expected at least one request of {where} to arrive before "
                f"{spec.duration} s, got none"
            )
    else:
        return _check_warmup(found, spec)
    cut = RequestSet(
        found.arrival[keep].copy(), found.prompt[keep].copy(), found.output[keep].copy()
    )
    return _check_warmup(cut, spec)


def _check_warmup(found: RequestSet, spec: ServingSpec) -> RequestSet:
    if spec.warmup >= len(found):
        raise UserError(
            f"workload.warmup: expected fewer than the {len(found)} requests of "
            f"{spec.arrivals.path}, got {spec.warmup}"
        )
    return found


# -- CSV -----------------------------------------------------------------------------------------
def read_requests_csv(path: str | Path, rate_scale: float = 1.0) -> RequestSet:
    """Requests from a CSV file with a header row. Arrival: ``arrival`` (seconds) or
    ``TIMESTAMP`` (a date-time; times are taken from the first row's). Lengths:
    ``prompt_tokens``/``ContextTokens`` and ``output_tokens``/``GeneratedTokens``, whole
    numbers >= 1. Rows must be in arrival order. Every problem is one UserError line naming
    the file, the row (1 = the first row after the header) and the column."""
    file = Path(path)
    text = _read_text(file)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{file}: expected a CSV header row, got an empty file") from None
    except csv.Error as err:
        raise UserError(f"{file}: expected a CSV header row, got {err}") from None
    names = [h.strip().lstrip("\ufeff") for h in header]
    arrival_col = _column(file, names, ARRIVAL_COLUMNS)
    prompt_col = _column(file, names, PROMPT_COLUMNS)
    output_col = _column(file, names, OUTPUT_COLUMNS)
    is_timestamp = names[arrival_col] == "TIMESTAMP"
    arrivals: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    first_stamp: np.datetime64 | None = None
    previous = -np.inf
    row = 0
    try:
        for row, cells in enumerate(reader, start=1):
            if not cells or all(not c.strip() for c in cells):
                continue  # a blank line
            if len(cells) != len(names):
                raise UserError(
                    f"{file} row {row}: expected {len(names)} columns as the header, "
                    f"got {len(cells)}"
                )
            raw = cells[arrival_col].strip()
            if is_timestamp:
                stamp = _timestamp(file, row, raw)
                if first_stamp is None:
                    first_stamp = stamp
                t = float((stamp - first_stamp) / np.timedelta64(1, "ns")) * 1e-9
            else:
                t = _seconds(file, row, names[arrival_col], raw)
            if t < previous:
                raise UserError(
                    f"{file} row {row}, column {names[arrival_col]}: expected arrivals in "
                    f"non-decreasing order, got {raw!r} before the previous row's"
                )
            previous = t
            arrivals.append(t)
            prompts.append(_tokens(file, row, names[prompt_col], cells[prompt_col]))
            outputs.append(_tokens(file, row, names[output_col], cells[output_col]))
            if len(arrivals) > MAX_REQUESTS:
                raise UserError(
                    f"{file}: expected at most {MAX_REQUESTS:,} requests, got more (cut the file)"
                )
    except csv.Error as err:
        raise UserError(f"{file} row {row + 1}: expected a CSV row, got {err}") from None
    if not arrivals:
        raise UserError(f"{file}: expected at least one request row, got none")
    times = np.asarray(arrivals, dtype=np.float64) / rate_scale
    return RequestSet(
        times, np.asarray(prompts, dtype=np.int64), np.asarray(outputs, dtype=np.int64)
    )


def _read_text(file: Path) -> str:
    return opener.read_text(file, "a CSV file of requests")


def _column(file: Path, names: list[str], choices: tuple[str, ...]) -> int:
    present = [c for c in choices if c in names]
    if not present:
        raise UserError(
            f"{file}: expected a column {' or '.join(choices)} in the header, got "
            f"{', '.join(names) or 'no columns'}"
        )
    if len(present) > 1:
        raise UserError(f"{file}: expected one of the columns {', '.join(choices)}, got both")
    if names.count(present[0]) > 1:
        raise UserError(f"{file}: expected one column {present[0]}, got {names.count(present[0])}")
    return names.index(present[0])


def _timestamp(file: Path, row: int, raw: str) -> np.datetime64:
    try:
        stamp = np.datetime64(raw, "ns")
    except ValueError:
        stamp = None
    if stamp is None or np.isnat(stamp) or not raw:
        raise UserError(
            f"{file} row {row}, column TIMESTAMP: expected a date-time like "
            f"'2023-11-16 18:15:46.6805900', got {raw!r}"
        )
    return stamp


def _seconds(file: Path, row: int, column: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value >= 0):
        raise UserError(
            f"{file} row {row}, column {column}: expected a time in seconds >= 0, got {raw!r}"
        )
    return value


def _tokens(file: Path, row: int, column: str, raw: str) -> int:
    text = raw.strip()
    value = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
    if not 1 <= value <= MAX_TOKENS:
        raise UserError(
            f"{file} row {row}, column {column}: expected a whole number of tokens from 1 to "
            f"{MAX_TOKENS:,} (every request has a prompt and generates a token), got {raw!r}"
        )
    return value
