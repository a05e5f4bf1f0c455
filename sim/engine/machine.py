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

from sim.engine.clock import Clock
from sim.engine.links import FifoLink
from sim.engine.network import FlowNetwork, LinkState, Route, SlotPool
from sim.hardware import ROUTE_OF_TIER, TIERS, Hardware


@dataclass
class Machine:
    """Link instances (closed-form and network) and, per GPU, its routes by route name."""

    fifo: dict[str, FifoLink]
    network_links: dict[str, LinkState]
    network: FlowNetwork | None
    routes: list[dict[str, FifoLink | Route]]
    alone: list[bool]

    @classmethod
    def build(cls, hardware: Hardware, env: Clock, *, record_rates: bool = False) -> Machine:
        topo = hardware.topology
        links = hardware.links
        # links timed by the network: fair ones, and every link of a multi-link path
        timed = {
            name
            for tier in TIERS
            for name in topo.paths[tier]
            if links[name].sharing == "fair" or len(topo.paths[tier]) > 1
        }
        fifo: dict[str, FifoLink] = {}
        states: dict[str, LinkState] = {}
        pools: dict[tuple, SlotPool] = {}
        routes: list[dict[str, FifoLink | Route]] = []
        users: Counter[str] = Counter()
        for gpu in range(topo.num_gpus):
            own: dict[str, FifoLink | Route] = {}
            used: set[str] = set()
            for tier in TIERS:
                names = topo.paths[tier]
                instances = topo.route(tier, gpu)
                used.update(instances)
                if not any(name in timed for name in names):
                    config = links[names[0]]
                    if instances[0] != config.name:
                        config = dataclasses.replace(config, name=instances[0])
                    own[ROUTE_OF_TIER[tier]] = fifo.setdefault(instances[0], FifoLink(config))
                    continue
                path = []
                for inst, name in zip(instances, names, strict=True):
                    if inst not in states:
                        states[inst] = LinkState(inst, links[name])
                        if record_rates:
                            states[inst].history = []
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
                own[ROUTE_OF_TIER[tier]] = Route(
                    links=tuple(path),
                    pool=pool,
                    cap=min(caps),
                    latency=sum(links[n].latency for n in names),
                )
            users.update(used)
            routes.append(own)
        alone = [
            all(isinstance(r, FifoLink) and users[r.name] == 1 for r in own.values())
            for own in routes
        ]
        network = FlowNetwork(env, states) if states else None
        return cls(fifo, states, network, routes, alone)

    def link_stats(self, end: float) -> dict[str, dict[str, float]]:
        """Per link instance: busy (link-seconds of full use), bytes, utilisation (busy over
        the run, extended to the last transfer's end), transfers; network links also time
        saturated and mean / p99 queueing delay of their transfers."""
        stats: dict[str, dict[str, float]] = {}
        for link in self.fifo.values():
            busy = link.busy / link.channels
            # a prefetch may still be in flight when the last layer ends
            horizon = max(end, float(link.free_at.max()))
            stats[link.name] = {
                "busy": busy,
                "bytes": link.bytes,
                "utilisation": busy / horizon if horizon > 0 else 0.0,
                "transfers": float(link.transfers),
            }
        for link in self.network_links.values():
            horizon = max(end, link.since)
            link.set_rate(horizon, link.rate)  # close the integrals
            stats[link.name] = {
                "busy": link.busy,
                "bytes": link.bytes,
                "utilisation": link.busy / horizon if horizon > 0 else 0.0,
                "transfers": float(link.transfers),
            }
        return stats
