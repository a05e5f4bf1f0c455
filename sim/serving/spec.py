"""The resolved ``workload: serving`` section: plain frozen dataclasses in SI units.

`sim.scenario.schema` validates the YAML (one-line errors naming the field); `from_section`
turns the validated section into these, filling defaults, so the rest of `sim.serving` never
sees pydantic. `ServingSpec.to_dict` writes the section back (scenario.resolved.yaml), and it
validates back to the same spec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sim import opener
from sim.errors import UserError
from sim.scenario.schema import MAX_REQUESTS
from sim.units import format_exact

ARRIVAL_PROCESSES = ("poisson", "gamma", "csv")
LENGTH_DISTS = ("fixed", "uniform", "lognormal")
HBM_MODES = ("fixed", "shared")
ROUTERS = ("round-robin", "least-outstanding")

# vLLM's defaults (max_num_seqs 256, block_size 16) and Sarathi-Serve's token budget
DEFAULT_MAX_RUNNING = 256
DEFAULT_MAX_BATCHED_TOKENS = 2048
DEFAULT_BLOCK_TOKENS = 16


@dataclass(frozen=True)
class Arrivals:
    """How requests arrive: a Poisson process at ``rate`` requests/s, a Gamma renewal process
    (inter-arrival times with mean 1/rate and coefficient of variation ``cv``: bursty when
    cv > 1), or the rows of a CSV file (``path``), whose times are divided by ``rate_scale``."""

    process: str
    rate: float | None = None  # requests per second (poisson, gamma)
    cv: float | None = None  # gamma
    path: Path | None = None  # csv
    rate_scale: float = 1.0  # csv: arrival times / rate_scale (2 = twice the load)

    def to_dict(self) -> dict[str, Any]:
        if self.process == "csv":
            return {"process": "csv", "path": str(self.path), "rate_scale": self.rate_scale}
        out: dict[str, Any] = {"process": self.process, "rate": self.rate}
        if self.process == "gamma":
            out["cv"] = self.cv
        return out


@dataclass(frozen=True)
class LengthDist:
    """Token counts per request: ``fixed`` (``value``), ``uniform`` (``low``..``high``
    inclusive) or ``lognormal`` fitted to a ``mean`` and a ``median`` (mu = ln median,
    sigma^2 = 2 ln(mean / median)), rounded to whole tokens, at least 1, at most ``max``."""

    dist: str
    value: int | None = None
    low: int | None = None
    high: int | None = None
    mean: float | None = None
    median: float | None = None
    max: int | None = None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` lengths (int64), drawn from ``rng``."""
        if self.dist == "fixed":
            assert self.value is not None
            return np.full(n, self.value, dtype=np.int64)
        if self.dist == "uniform":
            assert self.low is not None and self.high is not None
            return rng.integers(self.low, self.high + 1, size=n, dtype=np.int64)
        assert self.mean is not None and self.median is not None
        mu, sigma = lognormal_parameters(self.mean, self.median)
        values = np.rint(rng.lognormal(mu, sigma, size=n))
        upper = float(self.max) if self.max is not None else np.inf
        return np.clip(values, 1.0, upper).astype(np.int64)

    def upper_bound(self) -> int | None:
        """The largest length this distribution can give (None: unbounded)."""
        if self.dist == "fixed":
            return self.value
        if self.dist == "uniform":
            return self.high
        return self.max

    def to_dict(self) -> dict[str, Any]:
        keys = {
            "fixed": ("value",),
            "uniform": ("low", "high"),
            "lognormal": ("mean", "median", "max"),
        }[self.dist]
        out: dict[str, Any] = {"dist": self.dist}
        out.update({k: getattr(self, k) for k in keys if getattr(self, k) is not None})
        return out


def lognormal_parameters(mean: float, median: float) -> tuple[float, float]:
    """(mu, sigma) of the lognormal with this mean and median (mean >= median > 0)."""
    return math.log(median), math.sqrt(2.0 * math.log(mean / median))


@dataclass(frozen=True)
class SchedulerSpec:
    """Iteration-level continuous batching (Orca, vLLM): at most ``max_running`` requests in
    the batch and ``max_batched_tokens`` tokens per iteration; ``chunked_prefill`` splits
    prompts into chunks that fill the token budget left by the decodes (Sarathi-Serve). KV is
    allocated in blocks of ``block_tokens`` tokens (vLLM's paged attention)."""

    max_running: int = DEFAULT_MAX_RUNNING
    max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS
    chunked_prefill: bool = False
    block_tokens: int = DEFAULT_BLOCK_TOKENS

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_running": self.max_running,
            "max_batched_tokens": self.max_batched_tokens,
            "chunked_prefill": self.chunked_prefill,
            "block_tokens": self.block_tokens,
        }


@dataclass(frozen=True)
class MemorySpec:
    """How HBM is shared. ``fixed``: the expert cache keeps ``hardware.hbm.capacity`` and the
    KV cache gets ``kv_capacity`` (default: the GPU's HBM less non-expert weights, expert cache
    and staging). ``shared``: KV and expert cache share one pool; the cache shrinks as KV
    grows. ``staging``: HBM held for demand-fetched experts in flight (default: one layer's
    worth, every expert of a layer)."""

    mode: str = "fixed"
    kv_capacity: float | None = None  # bytes
    staging: float | str | None = None  # bytes or "N experts"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode}
        if self.kv_capacity is not None:
            out["kv_capacity"] = format_exact("size", self.kv_capacity)
        if self.staging is not None:
            out["staging"] = (
                self.staging
                if isinstance(self.staging, str)
                else format_exact("size", self.staging)
            )
        return out


@dataclass(frozen=True)
class Slo:
    """A request meets the SLO when its TTFT and its TPOT are each at most the bound given
    (a bound left out is not checked)."""

    ttft: float | None = None  # s
    tpot: float | None = None  # s

    def to_dict(self) -> dict[str, Any]:
        return {
            k: format_exact("duration", v)
            for k, v in (("ttft", self.ttft), ("tpot", self.tpot))
            if v is not None
        }


@dataclass(frozen=True)
class ServingSpec:
    """A serving workload. Either ``requests`` (how many) or ``duration`` (arrivals before
    it); the first ``warmup`` requests are simulated but left out of the summaries."""

    arrivals: Arrivals
    prompt: LengthDist | None  # None with a CSV (its rows give the lengths)
    output: LengthDist | None
    requests: int | None = None
    duration: float | None = None  # s
    warmup: int = 0
    seed: int = 0
    wrap: bool = False
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    memory: MemorySpec = field(default_factory=MemorySpec)
    slo: Slo = field(default_factory=Slo)
    router: str = "round-robin"  # which GPU serves an arriving request (several GPUs)

    def to_dict(self) -> dict[str, Any]:
        """The ``workload:`` section that reproduces this spec."""
        out: dict[str, Any] = {"kind": "serving", "arrivals": self.arrivals.to_dict()}
        if self.prompt is not None:
            out["prompt"] = self.prompt.to_dict()
        if self.output is not None:
            out["output"] = self.output.to_dict()
        if self.requests is not None:
            out["requests"] = self.requests
        if self.duration is not None:
            out["duration"] = format_exact("duration", self.duration)
        out.update(
            {
                "warmup": self.warmup,
                "seed": self.seed,
                "wrap": self.wrap,
                "scheduler": self.scheduler.to_dict(),
                "memory": self.memory.to_dict(),
                "slo": self.slo.to_dict(),
                "router": self.router,
            }
        )
        return out


def from_section(section: Any, base_dir: Path, scenario_seed: int) -> ServingSpec | None:
    """The resolved spec of a validated ``WorkloadSection`` (None for ``lockstep``). A CSV
    path is taken relative to ``base_dir`` and must be a file (its rows are read at run
    time, by `sim.serving.requests.load_requests`)."""
    if section.kind == "lockstep":
        return None
    a = section.arrivals
    path = None
    if a.process == "csv":
        path = (base_dir / Path(a.path).expanduser()).absolute()
        what = opener.describe(path)
        if what != "a file":
            raise UserError(
                f"workload.arrivals.path: expected a CSV file of requests, got {a.path!r} "
                f"({path}: {what})"
            )
    arrivals = Arrivals(
        process=a.process,
        rate=a.rate,
        cv=a.cv,
        path=path,
        rate_scale=1.0 if a.rate_scale is None else a.rate_scale,
    )
    warmup = section.warmup or 0
    if section.requests is not None and warmup >= section.requests:
        raise UserError(
            f"workload.warmup: expected fewer than the {section.requests} requests, "
            f"got {section.warmup}"
        )
    if section.duration is not None and arrivals.rate is not None:
        expected = arrivals.rate * section.duration
        if expected > MAX_REQUESTS:
            raise UserError(
                f"workload.duration: expected rate x duration at most {MAX_REQUESTS:,} "
                f"requests, got {expected:,.0f}"
            )
    sched = section.scheduler
    memory = section.memory
    slo = section.slo

    def pick(sec: Any, name: str, default: Any) -> Any:
        value = None if sec is None else getattr(sec, name)
        return default if value is None else value

    scheduler = SchedulerSpec(
        max_running=pick(sched, "max_running", DEFAULT_MAX_RUNNING),
        max_batched_tokens=pick(sched, "max_batched_tokens", DEFAULT_MAX_BATCHED_TOKENS),
        chunked_prefill=pick(sched, "chunked_prefill", False),
        block_tokens=pick(sched, "block_tokens", DEFAULT_BLOCK_TOKENS),
    )
    return ServingSpec(
        arrivals=arrivals,
        prompt=_length(section.prompt),
        output=_length(section.output),
        requests=section.requests,
        duration=section.duration,
        warmup=section.warmup or 0,
        seed=scenario_seed if section.seed is None else section.seed,
        wrap=bool(section.wrap),
        scheduler=scheduler,
        memory=MemorySpec(
            mode=pick(memory, "mode", "fixed"),
            kv_capacity=pick(memory, "kv_capacity", None),
            staging=pick(memory, "staging", None),
        ),
        slo=Slo(ttft=pick(slo, "ttft", None), tpot=pick(slo, "tpot", None)),
        router=section.router or "round-robin",
    )


def _length(section: Any) -> LengthDist | None:
    if section is None:
        return None
    return LengthDist(
        dist=section.dist,
        value=section.value,
        low=section.low,
        high=section.high,
        mean=section.mean,
        median=section.median,
        max=section.max,
    )
