"""`Machine`: the link objects of a topology and each GPU's two routes over them.

A route whose path is one ``fifo`` link keeps today's closed form (`FifoLink`, slots with
``free_at``; one object per link instance, shared by the GPUs whose paths use it). Every other
route (a ``fair`` link anywhere on it, or several links) is timed by the `FlowNetwork`. A GPU
whose routes are all closed-form links that no other GPU uses is *alone*: nothing another GPU
does can change its timing, so it runs each iteration without waiting on events.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from sim.engine.clock import Clock
from sim.engine.links import FifoLink
from sim.engine.network import (
    FlowNetwork,
    LayerBarrier,
    LinkState,
    Route,
    SharedUnit,
    SlotPool,
)
from sim.hardware import PEER, ROUTE_OF_TIER, Hardware


@dataclass
class Machine:
    """Link instances (closed-form and network) and, per GPU, its routes by route name."""

    fifo: dict[str, FifoLink]
    network_links: dict[str, LinkState]
    network: FlowNetwork | None
    routes: list[dict[str, FifoLink | Route]]
    alone: list[bool]
    near_unit: SharedUnit | None = None  # the MD pool's compute, when several GPUs share it
    barrier: LayerBarrier | None = None  # expert parallelism: layers end on all GPUs at once

    @classmethod
    def build(cls, hardware: Hardware, env: Clock) -> Machine:
        topo = hardware.topology
        links = hardware.links
        # links timed by the network: fair ones, and every link of a multi-link path
        timed = {
            name
            for path in topo.paths.values()
            for name in path
            if links[name].sharing == "fair" or len(path) > 1
        }
        route_of = {**ROUTE_OF_TIER, PEER: PEER}
        fifo: dict[str, FifoLink] = {}
        states: dict[str, LinkState] = {}
        pools: dict[tuple, SlotPool] = {}
        routes: list[dict[str, FifoLink | Route]] = []
        users: Counter[str] = Counter()
        for gpu in range(topo.num_gpus):
            own: dict[str, FifoLink | Route] = {}
            used: set[str] = set()
            for tier in topo.paths:
                names = topo.paths[tier]
                instances = topo.route(tier, gpu)
                used.update(instances)
                if not any(name in timed for name in names):
                    config = links[names[0]]
                    if instances[0] != config.name:
                        config = dataclasses.replace(config, name=instances[0])
                    own[route_of[tier]] = fifo.setdefault(instances[0], FifoLink(config))
                    continue
                path = []
                for inst, name in zip(instances, names, strict=True):
                    if inst not in states:
                        states[inst] = LinkState(inst, links[name], history=[])
                    path.append(states[inst])
                first = links[names[0]]
                # a fifo first link's slots are the link's (every GPU's); a fair one's the GPU's
                key = (instances[0],) if first.sharing == "fifo" else (instances[0], gpu, tier)
                pool = pools.setdefault(key, SlotPool(first.channels))
                caps = [first.channel_rate if first.sharing == "fifo" else math.inf]
                caps += [
                    links[n].channel_bandwidth
                    for n in names
                    if links[n].sharing == "fair" and links[n].channel_bandwidth is not None
                ]
                own[route_of[tier]] = Route(
                    links=tuple(path),
                    pool=pool,
                    cap=min(caps),
                    latency=sum(links[n].latency for n in names),
                )
            users.update(used)
            routes.append(own)
        unit = hardware.md_compute
        shared = (
            topo.num_gpus > 1
            and unit is not None
            and hardware.md_mode == "near-data"
            and hardware.placement in ("md", "both")
        )
        near_unit = SharedUnit(env, unit.sharing, topo.num_gpus) if shared and unit else None
        expert = topo.data_parallel == "expert" and topo.num_gpus > 1
        barrier = LayerBarrier(env, topo.num_gpus) if expert else None
        alone = [
            near_unit is None
            and barrier is None
            and all(isinstance(r, FifoLink) and users[r.name] == 1 for r in own.values())
            for own in routes
        ]
        network = FlowNetwork(env, states) if states else None
        return cls(fifo, states, network, routes, alone, near_unit, barrier)

    def network_routes(self) -> list[Route]:
        """Every route the flow network times, each once (GPUs may share one)."""
        routes = {id(r): r for own in self.routes for r in own.values() if isinstance(r, Route)}
        return list(routes.values())

    def link_stats(
        self, end: float, bins: int = 200
    ) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
        """Per link instance: its figures (below) and its utilisation over time (``bins``
        equal intervals from 0 to the run's end, extended to the last transfer's).

        ``busy`` (link-seconds of full use: slot-seconds / channels on fifo links, the
        integral of total rate / bandwidth on network links), ``bytes``, ``transfers``,
        ``utilisation`` (busy / run time), ``saturated`` (time every slot was busy, fifo, or
        the flows used the whole bandwidth, fair), ``delay_mean`` and ``delay_p99`` (queueing
        delay per transfer: waiting for a slot on fifo links; on network links the time beyond
        what it would take alone on idle links)."""
        stats: dict[str, dict[str, float]] = {}
        series: dict[str, np.ndarray] = {}
        for link in self.fifo.values():
            horizon = max(end, float(link.free_at.max()))
            if link.log:  # any batch placed behind others: the general sweep
                issue, start, stop = link.intervals()
                times, counts = _step_function(start, stop)
                delays = start - issue
            else:  # only batches on idle slots: each a block of waves, none overlapping
                times, counts, delays = _idle_waves(link)
            saturated = _time_at_least(times, counts, link.channels)
            stats[link.name] = {
                "busy": link.busy / link.channels,
                "bytes": link.bytes,
                "utilisation": (link.busy / link.channels) / horizon if horizon > 0 else 0.0,
                "transfers": float(link.transfers),
                "saturated": saturated,
                **_delays(delays),
            }
            series[link.name] = _binned(times, counts / link.channels, horizon, bins)
        routes = self.network_routes()
        for link in self.network_links.values():
            horizon = max(end, link.since)
            link.set_rate(horizon, link.rate)  # close the integrals
            history = link.history or [(0.0, 0.0)]
            times = np.array([t for t, _ in history] + [horizon])
            share = np.array([r for _, r in history]) / link.config.bandwidth
            stats[link.name] = {
                "busy": link.busy,
                "bytes": link.bytes,
                "utilisation": link.busy / horizon if horizon > 0 else 0.0,
                "transfers": float(link.transfers),
                "saturated": link.saturated,
                **_delays(_route_delays(routes, link)),
            }
            series[link.name] = _binned(times, share, horizon, bins)
        return stats, series


def _route_delays(routes: list, link: LinkState) -> np.ndarray:
    parts = [r.delays() for r in routes if link in r.links]
    return np.concatenate(parts) if parts else np.empty(0)


def _idle_waves(link: FifoLink) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_step_function` and the queueing delays of a link whose every batch was placed on idle
    slots: a batch of n transfers of d on c slots keeps all c busy for n // c waves, then
    n % c for one more; the batches follow each other (each issued when the last is done)."""
    t, n, d = link.idle_batches()
    c = link.channels
    waves, rest = n // c, n % c
    full_end = t + waves * d
    times = np.stack([t, full_end, full_end + np.where(rest > 0, d, 0.0)], axis=1).ravel()
    counts = np.stack([np.full(t.size, float(c)), rest.astype(float), np.zeros(t.size)], axis=1)
    counts = counts.ravel()[:-1] if t.size else np.zeros(0)
    j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    delays = (j // c) * np.repeat(d, n)
    return times, counts, delays


def _delays(delays: np.ndarray) -> dict[str, float]:
    if not delays.size:
        return {"delay_mean": 0.0, "delay_p99": 0.0}
    return {"delay_mean": float(delays.mean()), "delay_p99": float(np.percentile(delays, 99))}


def _step_function(start: np.ndarray, stop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Busy intervals as a step function: at ``times[i]`` the count becomes ``counts[i]``
    (the last entry closes it at 0)."""
    if not start.size:
        return np.zeros(1), np.zeros(0)
    times = np.concatenate([start, stop])
    delta = np.concatenate([np.ones(start.size), -np.ones(stop.size)])
    order = np.lexsort((delta, times))  # at one instant ends (-1) before starts
    times, delta = times[order], delta[order]
    return times, np.cumsum(delta)[:-1]


def _time_at_least(times: np.ndarray, counts: np.ndarray, level: float) -> float:
    if not counts.size:
        return 0.0
    return float(np.sum(np.diff(times)[counts >= level]))


def _binned(times: np.ndarray, values: np.ndarray, horizon: float, bins: int) -> np.ndarray:
    """The step function (value ``values[i]`` on ``[times[i], times[i+1])``) averaged over
    ``bins`` equal intervals of ``[0, horizon]``: rows of (start, end, mean value)."""
    edges = np.linspace(0.0, horizon, bins + 1) if horizon > 0 else np.zeros(2)
    if values.size:
        area = np.concatenate([[0.0], np.cumsum(values * np.diff(times))])
        at_edges = np.interp(edges, times, area)
    else:
        at_edges = np.zeros(edges.size)
    width = np.diff(edges)
    mean = np.divide(np.diff(at_edges), width, out=np.zeros(width.size), where=width > 0)
    return np.stack([edges[:-1], edges[1:], mean], axis=1)
