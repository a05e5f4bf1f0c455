"""Fits from raw measurements to the simulator's parameters, and the preset document.

* Copies: per (memory kind, streams ``n``), least squares of ``t = L + n*S/B`` over the sizes
  ``S`` (``n`` concurrent copies of ``S`` bytes on ``n`` streams, i.e. the engine's link model
  with ``channels = n``: each slot moves ``B/n``). Errors are weighted relative to ``t``,
  because sizes span four orders of magnitude and a plain fit would ignore the small copies
  where the latency shows. ``L`` is clamped at 0.
* Concurrency: the aggregate rate ``n*S / t_n(S)`` at the expert's size for each ``n``; the
  preset takes the smallest ``n`` within 10% of the best. The engine gives each of ``n``
  channels a fixed ``B/n``, so a copy alone on the link is modelled up to ``n`` times too slow:
  extra channels are only worth modelling when they buy a lot (latency-bound copies).
* Expert FFN: the engine's roofline ``t(tokens) = max(W / BW, tokens * F / P)`` with the
  expert's weight bytes ``W`` and FLOPs per token ``F``; the fit finds the effective ``BW``
  and ``P`` (relative least squares, exact over every split into memory- and compute-bound
  points). They are *effective* figures: ``BW`` absorbs kernel launch overheads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.calibrate.measure import CopySample, ExpertSample, ExpertShape, Measurements
from sim.errors import UserError
from sim.units import format_bandwidth, format_duration, format_flops, format_size

CHANNEL_TOLERANCE = 0.10  # a stream count within 10% of the best aggregate rate is as good


@dataclass(frozen=True)
class LinkFit:
    """``t = latency + streams * bytes / bandwidth`` for one memory kind and stream count."""

    memory: str
    streams: int
    latency: float  # s per copy
    bandwidth: float  # bytes/s, the link's total shared by the streams
    max_error: float  # largest |fit - measured| / measured over the sizes
    points: int

    def seconds(self, nbytes: float) -> float:
        """Predicted time of ``streams`` concurrent copies of ``nbytes`` each."""
        return self.latency + self.streams * nbytes / self.bandwidth

    def aggregate_rate(self, nbytes: float) -> float:
        """Bytes/s the streams move together at this copy size."""
        return self.streams * nbytes / self.seconds(nbytes)


@dataclass(frozen=True)
class ExpertFit:
    """One expert's time on the GPU: ``max(nbytes / memory_bandwidth, tokens * flops / peak)``."""

    memory_bandwidth: float  # bytes/s (effective)
    peak_flops: float  # FLOP/s (effective)
    nbytes: float
    flops_per_token: float
    max_error: float

    def seconds(self, tokens: np.ndarray | float) -> np.ndarray:
        t = np.asarray(tokens, dtype=np.float64)
        return np.maximum(
            self.nbytes / self.memory_bandwidth, t * self.flops_per_token / self.peak_flops
        )


def representative(seconds: Sequence[float]) -> float:
    """The median of repeated timings (robust to one slow first run)."""
    return float(np.median(np.asarray(seconds, dtype=np.float64)))


def fit_latency_bandwidth(nbytes: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """Least squares of ``t = L + nbytes / B`` with relative weights; returns (L >= 0, B)."""
    x = np.asarray(nbytes, dtype=np.float64)
    t = np.asarray(seconds, dtype=np.float64)
    if x.size < 2 or np.unique(x).size < 2:
        raise UserError(f"copy fit: expected at least 2 distinct sizes, got {np.unique(x).size}")
    w = 1.0 / t  # rows scaled by 1/t: minimises the sum of squared relative errors
    design = np.column_stack([w, x * w])
    (latency, inv_bw), *_ = np.linalg.lstsq(design, np.ones_like(t), rcond=None)
    if latency < 0 or inv_bw <= 0:  # refit through the origin: t = nbytes / B
        latency = 0.0
        inv_bw = float(np.sum(x * w * w * t) / np.sum((x * w) ** 2))
    if inv_bw <= 0:
        raise UserError("copy fit: expected times growing with size, got none that do")
    return float(latency), float(1.0 / inv_bw)


def fit_links(measurements: Measurements) -> list[LinkFit]:
    """One `LinkFit` per (memory kind, stream count) present, in measurement order."""
    groups: dict[tuple[str, int], list[CopySample]] = {}
    for sample in measurements.copies:
        groups.setdefault((sample.memory, sample.streams), []).append(sample)
    fits = []
    for (memory, streams), samples in groups.items():
        total = np.array([s.total_bytes for s in samples], dtype=np.float64)
        t = np.array([representative(s.seconds) for s in samples])
        latency, bandwidth = fit_latency_bandwidth(total, t)
        err = np.abs(latency + total / bandwidth - t) / t
        fits.append(LinkFit(memory, streams, latency, bandwidth, float(err.max()), len(samples)))
    return fits


def effective_bandwidths(measurements: Measurements) -> list[dict[str, Any]]:
    """Measured aggregate bandwidth per (memory, streams, size): total bytes / median time."""
    rows = []
    for s in measurements.copies:
        t = representative(s.seconds)
        rows.append(
            {"memory": s.memory, "streams": s.streams, "bytes": s.nbytes, "seconds": t,
             "bandwidth": s.total_bytes / t}
        )  # fmt: skip
    return rows


def choose_channels(fits: Sequence[LinkFit], nbytes: float) -> LinkFit:
    """The fit whose stream count moves ``nbytes``-sized copies fastest together (the smallest
    stream count within `CHANNEL_TOLERANCE` of the best)."""
    if not fits:
        raise UserError("copy fit: expected measurements for at least one stream count, got none")
    best = max(f.aggregate_rate(nbytes) for f in fits)
    good = [f for f in fits if f.aggregate_rate(nbytes) >= best * (1 - CHANNEL_TOLERANCE)]
    return min(good, key=lambda f: f.streams)


def concurrency_table(fits: Sequence[LinkFit], nbytes: float) -> list[dict[str, Any]]:
    """Per (memory, streams): aggregate rate at ``nbytes`` and the gain over one stream."""
    single = {f.memory: f.aggregate_rate(nbytes) for f in fits if f.streams == 1}
    rows = []
    for f in fits:
        rate = f.aggregate_rate(nbytes)
        base = single.get(f.memory)
        rows.append(
            {"memory": f.memory, "streams": f.streams, "bytes": nbytes, "rate": rate,
             "gain": rate / base if base else None}
        )  # fmt: skip
    return rows


def fit_expert(shape: ExpertShape, samples: Sequence[ExpertSample]) -> ExpertFit:
    """The roofline through the expert timings (see the module docstring)."""
    if not samples:
        raise UserError("expert fit: expected timings for at least one token count, got none")
    order = sorted(samples, key=lambda s: s.tokens)
    n = np.array([s.tokens for s in order], dtype=np.float64)
    t = np.array([representative(s.seconds) for s in order])
    w = 1.0 / t**2  # relative least squares: minimise sum(((fit - t) / t)^2)
    best: tuple[float, float, float] | None = None
    for j in range(n.size + 1):  # points [:j] memory-bound (flat), [j:] compute-bound (slope)
        if j == 0:
            b = float(np.sum(w * n * t) / np.sum(w * n * n))
            a = b * n[0]
        else:
            a = float(np.sum(w[:j] * t[:j]) / np.sum(w[:j]))
            if j < n.size:
                b = float(np.sum(w[j:] * n[j:] * t[j:]) / np.sum(w[j:] * n[j:] ** 2))
            else:  # flat everywhere measured: compute-bound only beyond the largest count
                b = a / n[-1]
        sse = float(np.sum(((np.maximum(a, b * n) - t) / t) ** 2))
        if best is None or sse < best[2]:
            best = (a, b, sse)
    assert best is not None
    a, b, _ = best
    fit = ExpertFit(
        memory_bandwidth=shape.nbytes / a,
        peak_flops=shape.flops_per_token / b,
        nbytes=float(shape.nbytes),
        flops_per_token=shape.flops_per_token,
        max_error=0.0,
    )
    err = float(np.max(np.abs(fit.seconds(n) - t) / t))
    return ExpertFit(fit.memory_bandwidth, fit.peak_flops, fit.nbytes, fit.flops_per_token, err)


# -- the preset document --------------------------------------------------------------------------
def source_line(measurements: Measurements) -> str:
    if measurements.note:
        return f"fitted by moesim calibrate from {measurements.note}"
    return f"measured by moesim calibrate on {measurements.device}, {measurements.date}"


def link_entry(fit: LinkFit, source: str) -> dict[str, Any]:
    """A `sim/presets/links.yaml`-style entry."""
    return {
        "bandwidth": format_bandwidth(fit.bandwidth, 4),
        "latency": format_duration(fit.latency, 4),
        "channels": fit.streams,
        "source": f"{source} ({fit.memory} host-to-device; least squares t = L + n*S/B over "
        f"{fit.points} sizes with {fit.streams} stream(s), max error {fit.max_error:.1%})",
    }


def build_preset(measurements: Measurements) -> dict[str, Any]:
    """The calibrated preset: ``links``/``gpus`` entries in sim/presets' format, ``hardware``
    (a partial scenario ``hardware:`` section to merge onto a scenario), the fits, and the raw
    measurements. See docs/calibration.md."""
    source = source_line(measurements)
    shape = measurements.expert_shape
    fits = fit_links(measurements)
    links: dict[str, dict[str, Any]] = {}
    chosen: dict[str, LinkFit] = {}
    for memory in dict.fromkeys(f.memory for f in fits):
        chosen[memory] = choose_channels([f for f in fits if f.memory == memory], shape.nbytes)
        links[f"calibrated-pcie-{memory}"] = link_entry(chosen[memory], source)
    doc: dict[str, Any] = {
        "device": measurements.device,
        "date": measurements.date,
        "source": source,
        "links": links,
    }
    overlay: dict[str, Any] = {"source": source}
    if measurements.expert:
        expert = fit_expert(shape, measurements.expert)
        gpu = {
            "hbm_bandwidth": format_bandwidth(expert.memory_bandwidth, 4),
            "peak_flops": format_flops(expert.peak_flops, 4),
            "source": f"{source} (effective roofline of one {shape.hidden_size} x "
            f"{shape.ffn_size} {'SwiGLU' if shape.gated else 'FFN'} expert in {shape.dtype}, "
            f"max error {expert.max_error:.1%}; not the datasheet peak)",
        }
        entry = dict(gpu)
        if measurements.hbm_capacity:
            entry = {"hbm_capacity": format_size(measurements.hbm_capacity, 4), **entry}
        doc["gpus"] = {"calibrated-gpu": entry}
        overlay["gpu"] = gpu
        overlay["hbm"] = {"bandwidth": gpu["hbm_bandwidth"]}
        doc["fit_expert"] = {
            "memory_bandwidth": expert.memory_bandwidth,
            "peak_flops": expert.peak_flops,
            "max_error": expert.max_error,
        }
    pcie = chosen.get("pinned") or next(iter(chosen.values()))
    overlay["links"] = {"pcie": {k: v for k, v in link_entry(pcie, source).items()}}
    doc["hardware"] = overlay
    doc["fit_links"] = [
        {"memory": f.memory, "streams": f.streams, "latency_s": f.latency,
         "bandwidth_Bps": f.bandwidth, "max_error": f.max_error}
        for f in fits
    ]  # fmt: skip
    doc["concurrency"] = concurrency_table(fits, shape.nbytes)
    doc["effective_bandwidth"] = effective_bandwidths(measurements)
    doc["measurements"] = measurements.to_dict()
    return doc
