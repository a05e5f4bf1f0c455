"""The closed form of stateless policies: one numpy pass over every (step, layer) gate at once.

A *stateless* policy sends every active expert of every gate down a path (PCIe fetch, MD
fetch, or near data), with no cache and no prefetch. Then every link is idle when a gate
opens (each transfer a layer issues is finished before the layer ends), so each gate is an
independent little schedule:

* a link with ``c`` slots and per-transfer time ``d`` delivers its ``j``-th fetch of the gate
  (FIFO in the gate's expert order: most tokens first, ties by lower id) at
  ``(j // c) * d + d`` after the gate;
* the GPU computes its experts one at a time in arrival order: with per-expert start the last
  one ends at ``C + max(0, max_i(r_i - C_{i-1}))`` (``r`` arrivals in order, ``C`` cumulative
  compute); with layer start at ``max(r) + C``;
* near-data experts: activations out (one transfer: ``latency + tokens * bytes / rate``), serial
  compute next to the pool, activations back;
* the layer ends when both are done; times accumulate exactly as the engine's clock does.

This is the engine's test oracle (tests assert equality to rtol 1e-12) and a fast path for
sweeps over stateless policies. It needs the default `RooflineCost` (uniform transfer times)
and does not model the HOST path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.contract import Path
from sim.engine.cost import RooflineCost
from sim.engine.results import stall_split
from sim.hardware import Hardware, ModelSpec
from sim.roofline import constant_non_expert_time


@dataclass(frozen=True)
class StatelessTimes:
    """Per (step, layer) ``[steps, layers]`` and per step ``[steps]`` timings, seconds/bytes."""

    t_start: np.ndarray
    t_gate: np.ndarray
    t_end: np.ndarray
    transfer_window: np.ndarray
    layer_time: np.ndarray
    stall: np.ndarray
    bytes_pcie: np.ndarray
    bytes_md: np.ndarray
    latency: np.ndarray  # per step
    compute_only: np.ndarray  # per step


def stateless_layer_times(
    counts: np.ndarray,
    paths: np.ndarray,
    hardware: Hardware,
    model: ModelSpec,
    cost: RooflineCost | None = None,
    non_expert: np.ndarray | None = None,
) -> StatelessTimes:
    """Timings of a stateless policy's run.

    ``counts``: ``[steps, layers, E]`` tokens per expert (``RoutingTrace.expert_token_counts``).
    ``paths``: ``[steps, layers, E]`` the `Path` of each active expert (by expert id; ignored
    where the count is 0): PCIE, MD_FETCH or MD_NEAR. ``non_expert``: per step, the
    non-expert time of each layer (`sim.roofline.step_non_expert_times`); default the constant
    ``hardware.gpu.non_expert_time`` plus ``layer_overhead`` (`constant_non_expert_time`).
    """
    cost = cost or RooflineCost(hardware, model)
    if any(cost.route_copy.values()):
        raise ValueError("the closed form covers native-precision copies only")
    counts = np.asarray(counts)
    paths = np.asarray(paths)
    if counts.shape != paths.shape or counts.ndim != 3:
        raise ValueError(f"counts {counts.shape} and paths {paths.shape} must be equal 3-D")
    order = np.argsort(-counts.astype(np.int64), axis=2, kind="stable")
    tok = np.take_along_axis(counts, order, axis=2).astype(np.float64)
    path = np.take_along_axis(paths, order, axis=2)
    active = tok > 0
    used = path[active]
    if np.isin(used, (Path.HIT, Path.HOST)).any() or used.min(initial=1) < 0:
        raise ValueError("the closed form covers PCIE, MD_FETCH and MD_NEAR paths only")

    c_all = np.where(active, cost.gpu_time_from_tokens(tok), 0.0)
    pcie = active & (path == Path.PCIE)
    mdf = active & (path == Path.MD_FETCH)
    near = active & (path == Path.MD_NEAR)
    gpu = pcie | mdf

    arrival = np.full(tok.shape, np.inf)
    for mask, link in ((pcie, hardware.pcie), (mdf, hardware.md_link)):
        rank = np.cumsum(mask, axis=2) - 1
        d = cost.uniform_transfer_time(link.name)
        arrival = np.where(mask, (rank // link.channels).astype(np.float64) * d + d, arrival)
    fetch_last = np.where(gpu, arrival, 0.0).max(axis=2)
    gpu_end = _gpu_end(arrival, np.where(gpu, c_all, 0.0), gpu, hardware)

    near_tokens = np.where(near, tok, 0.0).sum(axis=2)
    half = cost.activation_one_way("md_link", near_tokens)
    if near.any():
        near_c = np.where(near, cost.near_time_from_tokens(np.where(near, tok, 0.0)), 0.0)
    else:
        near_c = np.zeros_like(tok)
    md_end = np.where(near.any(axis=2), (half + near_c.sum(axis=2)) + half, 0.0)

    rel_end = np.maximum(gpu_end, md_end)
    # stall's reference: the GPU's experts one after another beside the MD unit's (`stall_split`)
    gpu_c = np.where(gpu, c_all, 0.0).sum(axis=2)
    ref, stall = stall_split(rel_end, np.maximum(gpu_c, near_c.sum(axis=2)))
    steps, layers = rel_end.shape
    if non_expert is None:
        constant = constant_non_expert_time(hardware, model)
        if constant is None:
            raise ValueError("gpu.non_expert_time is the roofline: pass non_expert per step")
        non_expert = np.full(steps, constant)
    ne = np.asarray(non_expert, dtype=np.float64)[:, None]
    # The engine's clock: now += non_expert; now += rel_end; ... (a sequential sum, like cumsum)
    ticks = np.empty(2 * steps * layers + 1)
    ticks[0] = 0.0
    ticks[1::2] = np.broadcast_to(ne, (steps, layers)).ravel()
    ticks[2::2] = rel_end.ravel()
    clock = np.cumsum(ticks)
    t_start = clock[0:-1:2].reshape(steps, layers)
    t_gate = clock[1::2].reshape(steps, layers)
    t_end = clock[2::2].reshape(steps, layers)
    layer_time = ne + rel_end
    eb = float(model.expert_bytes)
    act_bytes = float(model.activation_bytes_per_token)
    return StatelessTimes(
        t_start=t_start,
        t_gate=t_gate,
        t_end=t_end,
        transfer_window=np.maximum(fetch_last, md_end),
        layer_time=layer_time,
        stall=stall,
        bytes_pcie=pcie.sum(axis=2) * eb,
        bytes_md=mdf.sum(axis=2) * eb + 2.0 * near_tokens * act_bytes,
        latency=layer_time.sum(axis=1),
        compute_only=(ne + ref).sum(axis=1),
    )


def _gpu_end(
    arrival: np.ndarray, compute: np.ndarray, gpu: np.ndarray, hardware: Hardware
) -> np.ndarray:
    """End of the serial GPU compute of every gate, relative to the gate."""
    total = compute.sum(axis=2)
    if hardware.gpu.expert_start == "layer":
        last = np.where(gpu, arrival, 0.0).max(axis=2)
        return np.where(gpu.any(axis=2), last + total, 0.0)
    by_arrival = np.argsort(arrival, axis=2, kind="stable")
    r = np.take_along_axis(arrival, by_arrival, axis=2)
    c = np.take_along_axis(compute, by_arrival, axis=2)
    cum = np.cumsum(c, axis=2)
    late = np.where(np.isfinite(r), r - (cum - c), 0.0)
    end = cum[:, :, -1] + np.maximum(late.max(axis=2), 0.0)
    return np.where(gpu.any(axis=2), end, 0.0)
