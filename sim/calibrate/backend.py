"""The device-specific half of calibration and replay, behind one small interface.

A `Backend` times copies and one expert (`sim.calibrate.measure.Timer`) and replays a
`ReplayPlan`: per decode step and MoE layer, the experts to copy host -> GPU (each on a given
stream, in a given order) and the experts to compute (in a given order, each waiting for its
copy). `sim.calibrate.cuda.CudaBackend` does it for real; `FakeBackend` is a deterministic
synthetic machine with known parameters, so the whole harness is tested without a GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sim.calibrate.measure import ExpertShape, Timer


@dataclass(frozen=True)
class LayerPlan:
    """One MoE layer of one step.

    ``fetch[i] = (expert, stream)``: copies issued at the gate, in this order (FIFO per stream).
    ``compute[j] = (expert, tokens, fetch index or -1)``: expert FFNs run one after another in
    this order; one with a fetch index waits for that copy (-1: weights already in HBM).
    """

    fetch: np.ndarray  # [n, 2] int64
    compute: np.ndarray  # [m, 3] int64


@dataclass(frozen=True)
class ReplayPlan:
    label: str  # the policy's label in the scenario
    shape: ExpertShape
    num_layers: int
    num_experts: int
    streams: int  # copy streams (the link's channels)
    per_expert_start: bool  # False: a layer's compute waits for all of its copies
    steps: tuple[tuple[LayerPlan, ...], ...]  # [step][layer]

    @property
    def max_tokens(self) -> int:
        most = [
            int(lp.compute[:, 1].max()) for step in self.steps for lp in step if lp.compute.size
        ]
        return max(most, default=1)


class Backend(Timer, Protocol):
    """A machine that can be calibrated and can replay a plan."""

    name: str  # "cuda" or "fake"

    def replay(self, plan: ReplayPlan, repeats: int) -> np.ndarray:
        """Per-step wall time of the plan, s (median over ``repeats`` timed passes, after one
        untimed warm-up pass)."""
        ...


@dataclass(frozen=True)
class FakeMachine:
    """The true parameters of a `FakeBackend`: copies pay ``latency`` each and ``streams``
    concurrent copies share ``bandwidth`` equally; an expert takes the roofline
    ``max(bytes / memory_bandwidth, tokens * flops / peak_flops)``."""

    latency: float = 10e-6
    bandwidth: float = 25e9
    pageable_latency: float = 20e-6
    pageable_bandwidth: float = 10e9
    memory_bandwidth: float = 1.5e12
    peak_flops: float = 300e12
    noise: float = 0.0  # relative jitter of every timing (deterministic, seeded)
    seed: int = 0
    device: str = "FakeBackend (synthetic, not a GPU)"


class FakeBackend:
    """Synthetic timings from a `FakeMachine`: exact arithmetic, optionally with seeded jitter."""

    name = "fake"

    def __init__(self, machine: FakeMachine | None = None) -> None:
        self.machine = machine or FakeMachine()
        self._rng = np.random.default_rng(self.machine.seed)

    def _jitter(self, seconds: float | np.ndarray) -> np.ndarray:
        t = np.asarray(seconds, dtype=np.float64)
        if self.machine.noise == 0:
            return t
        return t * (1.0 + self.machine.noise * self._rng.uniform(-1.0, 1.0, size=t.shape))

    # -- Timer -------------------------------------------------------------------------------------
    def device_name(self) -> str:
        return self.machine.device

    def hbm_capacity(self) -> float | None:
        return 80e9

    def copy_time(self, memory: str, nbytes: float, streams: int) -> float:
        m = self.machine
        latency, bandwidth = (
            (m.latency, m.bandwidth)
            if memory == "pinned"
            else (m.pageable_latency, m.pageable_bandwidth)
        )
        return latency + streams * nbytes / bandwidth

    def copy_seconds(self, memory: str, nbytes: int, streams: int, repeats: int) -> list[float]:
        t = np.full(repeats, self.copy_time(memory, nbytes, streams))
        return self._jitter(t).tolist()

    def expert_time(self, shape: ExpertShape, tokens: np.ndarray | float) -> np.ndarray:
        m = self.machine
        t = np.asarray(tokens, dtype=np.float64)
        return np.maximum(
            shape.nbytes / m.memory_bandwidth, t * shape.flops_per_token / m.peak_flops
        )

    def expert_seconds(self, shape: ExpertShape, tokens: int, repeats: int) -> list[float]:
        return self._jitter(np.full(repeats, float(self.expert_time(shape, tokens)))).tolist()

    # -- replay ------------------------------------------------------------------------------------
    def replay(self, plan: ReplayPlan, repeats: int = 1) -> np.ndarray:
        """Each step's time on the synthetic machine: copies FIFO per stream from the gate, each
        taking ``latency + streams * bytes / bandwidth``; expert compute serial in plan order."""
        copy = self.copy_time("pinned", plan.shape.nbytes, plan.streams)
        out = np.empty(len(plan.steps))
        free = np.zeros(plan.streams)
        now = 0.0
        for s, layers in enumerate(plan.steps):
            start = now
            for lp in layers:
                arrive = _fifo_arrivals(free, lp.fetch[:, 1], now, copy)
                compute = self.expert_time(plan.shape, lp.compute[:, 1])
                fetched = lp.compute[:, 2]
                ready = np.full(fetched.size, now)
                if arrive.size:
                    ready = np.where(fetched >= 0, arrive[np.maximum(fetched, 0)], now)
                if not plan.per_expert_start and ready.size:
                    ready = np.full_like(ready, max(now, float(arrive.max(initial=now))))
                for r, c in zip(ready.tolist(), compute.tolist(), strict=True):
                    now = max(now, r) + c
                now = max(now, float(arrive.max(initial=now)))
            out[s] = now - start
        return self._jitter(out)


def _fifo_arrivals(
    free: np.ndarray, streams: Sequence[int], now: float, duration: float
) -> np.ndarray:
    """Arrival times of copies issued at ``now`` on the given streams (FIFO per stream);
    updates ``free`` (each stream's busy-until time) in place."""
    arrive = np.empty(len(streams))
    for i, k in enumerate(streams):
        begin = max(free[k], now)
        free[k] = begin + duration
        arrive[i] = free[k]
    return arrive
