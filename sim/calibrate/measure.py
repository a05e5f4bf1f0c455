"""What `moesim calibrate` measures, and the records that keep the raw numbers.

Two experiments, both timed with device events by a `Backend` (`sim.calibrate.cuda` on a GPU):

* host-to-device copies: for each memory kind (``pinned``, ``pageable``), stream count ``n``
  and size ``S``, the time from issuing ``n`` concurrent copies of ``S`` bytes (one per stream)
  until the last one has landed. Repeated; the raw times are kept so a fit can be redone.
* one expert's FFN (SwiGLU by default) on ``tokens`` tokens, weights already in HBM.

The records serialise to plain YAML/JSON (`Measurements.to_dict` / `from_dict`), so a preset
written on a GPU machine carries its own evidence and `moesim calibrate --from FILE` refits it
anywhere. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sim.errors import UserError

MEMORY_KINDS = ("pinned", "pageable")
KiB = 1024
MiB = 1024**2
GiB = 1024**3
# 64 KiB .. 1 GiB in powers of 4: 64K 256K 1M 4M 16M 64M 256M 1G
DEFAULT_SIZES = tuple(64 * KiB * 4**i for i in range(9))
DEFAULT_STREAMS = (1, 2, 3)
DEFAULT_TOKENS = (1, 8, 64, 512)


@dataclass(frozen=True)
class ExpertShape:
    """The expert FFN that is timed: FLAME-MoE-290M's by default (1024 x 704, SwiGLU, bf16)."""

    hidden_size: int = 1024
    ffn_size: int = 704
    gated: bool = True
    dtype: str = "bfloat16"
    bytes_per_param: int = 2

    @property
    def matrices(self) -> int:
        return 3 if self.gated else 2

    @property
    def params(self) -> int:
        return self.matrices * self.hidden_size * self.ffn_size

    @property
    def nbytes(self) -> int:
        return self.params * self.bytes_per_param

    @property
    def flops_per_token(self) -> float:
        return 2.0 * self.params


@dataclass(frozen=True)
class CopySample:
    """``streams`` concurrent copies of ``nbytes`` each from ``memory``: raw times, s."""

    memory: str
    streams: int
    nbytes: int
    seconds: tuple[float, ...]

    @property
    def total_bytes(self) -> int:
        return self.nbytes * self.streams


@dataclass(frozen=True)
class ExpertSample:
    tokens: int
    seconds: tuple[float, ...]


@dataclass(frozen=True)
class Measurements:
    device: str
    date: str  # ISO date (UTC) of the measurement
    copies: tuple[CopySample, ...]
    expert_shape: ExpertShape = field(default_factory=ExpertShape)
    expert: tuple[ExpertSample, ...] = ()
    hbm_capacity: float | None = None  # bytes the driver reports, if known
    note: str = ""  # where the numbers come from when not measured here (recorded figures)

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "date": self.date,
            "note": self.note,
            "hbm_capacity_bytes": self.hbm_capacity,
            "copies": [
                {"memory": c.memory, "streams": c.streams, "bytes": c.nbytes,
                 "seconds": list(c.seconds)}
                for c in self.copies
            ],
            "expert": {
                "hidden_size": self.expert_shape.hidden_size,
                "ffn_size": self.expert_shape.ffn_size,
                "gated": self.expert_shape.gated,
                "dtype": self.expert_shape.dtype,
                "bytes_per_param": self.expert_shape.bytes_per_param,
                "points": [{"tokens": e.tokens, "seconds": list(e.seconds)} for e in self.expert],
            },
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Measurements:
        """Parse `to_dict` output (e.g. the ``measurements`` of a calibrated preset)."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping, got {type(data).__name__}")
        copies = tuple(
            CopySample(
                memory=_choice(c, "memory", MEMORY_KINDS, f"{where}.copies[{i}]"),
                streams=_pos_int(c, "streams", f"{where}.copies[{i}]"),
                nbytes=_pos_int(c, "bytes", f"{where}.copies[{i}]"),
                seconds=_times(c, f"{where}.copies[{i}]"),
            )
            for i, c in enumerate(_list(data, "copies", where))
        )
        expert = data.get("expert") or {}
        if not isinstance(expert, dict):
            raise UserError(f"{where}.expert: expected a mapping, got {type(expert).__name__}")
        shape = ExpertShape(
            hidden_size=int(expert.get("hidden_size", 1024)),
            ffn_size=int(expert.get("ffn_size", 704)),
            gated=bool(expert.get("gated", True)),
            dtype=str(expert.get("dtype", "bfloat16")),
            bytes_per_param=int(expert.get("bytes_per_param", 2)),
        )
        points = tuple(
            ExpertSample(
                tokens=_pos_int(p, "tokens", f"{where}.expert.points[{i}]"),
                seconds=_times(p, f"{where}.expert.points[{i}]"),
            )
            for i, p in enumerate(_list(expert, "points", f"{where}.expert", required=False))
        )
        hbm = data.get("hbm_capacity_bytes")
        return cls(
            device=str(data.get("device", "unknown device")),
            date=str(data.get("date", "")),
            copies=copies,
            expert_shape=shape,
            expert=points,
            hbm_capacity=float(hbm) if hbm is not None else None,
            note=str(data.get("note", "") or ""),
        )


def _list(data: dict, key: str, where: str, required: bool = True) -> list:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise UserError(f"{where}.{key}: expected a list, got {type(value).__name__}")
    return value


def _choice(item: Any, key: str, choices: Sequence[str], where: str) -> str:
    value = item.get(key) if isinstance(item, dict) else None
    if value not in choices:
        raise UserError(f"{where}.{key}: expected one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _pos_int(item: Any, key: str, where: str) -> int:
    value = item.get(key) if isinstance(item, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where}.{key}: expected a positive integer, got {value!r}")
    return value


def _times(item: Any, where: str) -> tuple[float, ...]:
    value = item.get("seconds") if isinstance(item, dict) else None
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}.seconds: expected a non-empty list of times, got {value!r}")
    out = []
    for t in value:
        if isinstance(t, bool) or not isinstance(t, int | float) or not t > 0:
            raise UserError(f"{where}.seconds: expected positive numbers, got {t!r}")
        out.append(float(t))
    return tuple(out)


class Timer(Protocol):
    """The device-specific half of calibration (`sim.calibrate.cuda.CudaBackend`,
    `sim.calibrate.backend.FakeBackend`)."""

    def device_name(self) -> str: ...

    def hbm_capacity(self) -> float | None: ...

    def copy_seconds(self, memory: str, nbytes: int, streams: int, repeats: int) -> list[float]:
        """Times of ``repeats`` rounds of ``streams`` concurrent ``nbytes`` copies, s."""
        ...

    def expert_seconds(self, shape: ExpertShape, tokens: int, repeats: int) -> list[float]:
        """Times of ``repeats`` runs of one expert FFN on ``tokens`` tokens, s."""
        ...


@dataclass(frozen=True)
class MeasureConfig:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    streams: tuple[int, ...] = DEFAULT_STREAMS
    tokens: tuple[int, ...] = DEFAULT_TOKENS
    memory: tuple[str, ...] = MEMORY_KINDS
    repeats: int = 5
    shape: ExpertShape = field(default_factory=ExpertShape)

    def repeats_for(self, total_bytes: int) -> int:
        """Fewer rounds for the biggest copies (a 1 GiB pageable copy takes ~0.1 s)."""
        return max(2, self.repeats // 2) if total_bytes >= 256 * MiB else self.repeats


def measure(timer: Timer, config: MeasureConfig, date: str, progress: Any = None) -> Measurements:
    """Run every copy and expert experiment of ``config`` on ``timer``."""
    copies = []
    for memory in config.memory:
        for streams in config.streams:
            for size in config.sizes:
                reps = config.repeats_for(size * streams)
                seconds = timer.copy_seconds(memory, size, streams, reps)
                copies.append(CopySample(memory, streams, size, tuple(seconds)))
                if progress is not None:
                    progress(f"{memory} x{streams} {size} B: {min(seconds) * 1e6:.1f} us")
    expert = []
    for tokens in config.tokens:
        seconds = timer.expert_seconds(config.shape, tokens, config.repeats)
        expert.append(ExpertSample(tokens, tuple(seconds)))
        if progress is not None:
            progress(f"expert {tokens} tokens: {min(seconds) * 1e6:.1f} us")
    return Measurements(
        device=timer.device_name(),
        date=date,
        copies=tuple(copies),
        expert_shape=config.shape,
        expert=tuple(expert),
        hbm_capacity=timer.hbm_capacity(),
    )
