"""`FlowNetwork`: transfers as flows over paths of links, event by event.

Used for the routes that a closed form cannot time: a route with a ``fair`` link, or a
multi-link route (docs/engine.md, "Topology"). A transfer goes through three phases:

1. **queued** for a slot of its route's `SlotPool` (FIFO): a ``fifo`` first link's slots are
   the link's own, shared by every GPU on it; a ``fair`` first link gives each GPU
   ``channels`` slots of its own on the route (its copy engines / queue pairs);
2. **latency**: it holds its slot for the path's summed latency, moving nothing;
3. **data**: a flow over every link of its path. Its rate is its max-min fair share
   (progressive filling, Bertsekas & Gallager; the model of SimGrid's LV08 network and of
   ASTRA-sim's analytical backend): a ``fair`` link's bandwidth is shared by the flows on it,
   a ``fifo`` link (only ever first on a path) caps each flow at its static channel rate, and
   ``channel_bandwidth`` caps a flow on a fair link. Rates are exact between events (no time
   stepping); when a flow starts or ends only the flows connected to it through shared fair
   links (its component) are re-rated and their completions rescheduled.

Completions, latency ends and re-ratings are kept on the network's own heap; simpy only sees
one wake-up event per distinct time (`Clock.at`).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.engine.clock import Clock
from sim.hardware import LinkConfig

SATURATED = 1.0 - 1e-9  # a link at this share of its bandwidth or more counts as saturated


@dataclass(eq=False)
class LinkState:
    """One link instance in the network: its figures, the flows on it, its statistics."""

    name: str  # instance name (``pcie@gpu1``)
    config: LinkConfig
    flows: set[Flow] = field(default_factory=set)
    bytes: float = 0.0  # issued on it (whole transfers, counted when issued)
    transfers: int = 0
    busy: float = 0.0  # integral of (total rate / bandwidth) dt: link-seconds of full use
    saturated: float = 0.0  # time its flows used it fully
    rate: float = 0.0  # total rate of its flows now
    since: float = 0.0  # when `rate` was set
    history: list[tuple[float, float]] | None = None  # (time, total rate) when recorded

    @property
    def fair(self) -> bool:
        return self.config.sharing == "fair"

    def set_rate(self, now: float, rate: float) -> None:
        """The flows' total rate changes at ``now``: close the busy/saturated integrals."""
        dt = now - self.since
        bandwidth = self.config.bandwidth
        if dt > 0 and self.rate > 0 and bandwidth > 0:
            self.busy += dt * self.rate / bandwidth
            if self.rate >= SATURATED * bandwidth:
                self.saturated += dt
        self.rate, self.since = rate, now
        if self.history is not None:
            self.history.append((now, rate))


class SlotPool:
    """Concurrent transfer slots of a route, FIFO: the first link's own (fifo) or a GPU's
    (fair). A transfer takes the lowest free slot (its number shows in timelines)."""

    __slots__ = ("free", "size", "slots", "waiting")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        self.slots = list(range(size))  # free slot numbers, a min-heap
        self.waiting: deque[Transfer] = deque()

    def take(self) -> int:
        self.free -= 1
        return heapq.heappop(self.slots)

    def give(self, slot: int) -> None:
        self.free += 1
        heapq.heappush(self.slots, slot)


@dataclass(eq=False)
class Route:
    """A GPU's path to one tier: link instances in order, the slots that admit transfers, and
    the most one flow may get (fifo first link's channel rate, fair links' per-flow caps)."""

    links: tuple[LinkState, ...]
    pool: SlotPool
    cap: float
    latency: float
    free_at: np.ndarray = field(init=False)  # per slot, when it is estimated to free up
    public_free_at: np.ndarray = field(init=False)  # read-only view for policies
    one_transfer: float = 0.0  # an expert's transfer alone on the route, s (set by the GPU)
    _nominal: float = field(init=False, default=0.0)
    shared: tuple[LinkState, ...] = field(init=False, default=())
    unshared: tuple[LinkState, ...] = field(init=False, default=())
    # (issued, done, bytes) of each finished transfer
    finished: list[tuple[float, float, float]] = field(init=False, default_factory=list)

    @property
    def nominal_rate(self) -> float:
        """What one transfer gets alone on idle links: its cap, or the slowest link."""
        return self._nominal

    def __post_init__(self) -> None:
        self.free_at = np.zeros(self.pool.size)
        self.public_free_at = self.free_at.view()
        self.public_free_at.flags.writeable = False
        self._nominal = min(self.cap, *(link.config.bandwidth for link in self.links))
        self.shared = tuple(link for link in self.links if link.fair)  # what its flows share
        self.unshared = tuple(link for link in self.links if not link.fair)  # fifo first link

    def delays(self) -> np.ndarray:
        """Each finished transfer's queueing delay: its time beyond the unloaded one (latency
        + bytes at the route's nominal rate)."""
        if not self.finished:
            return np.empty(0)
        issued, done, nbytes = np.array(self.finished).T
        return np.maximum(0.0, (done - issued) - (self.latency + nbytes / self._nominal))

    def estimate_free_at(self, now: float) -> None:
        """``free_at`` as policies see it (`GateView.link_free_at`): the route's busy and
        queued transfers spread over its slots, each taking ``one_transfer`` (the time alone
        on the route; contention may make it longer). An estimate, not the network's state."""
        pool = self.pool
        outstanding = (pool.size - pool.free) + len(pool.waiting)
        rounds = (outstanding - np.arange(pool.size) + pool.size - 1) // pool.size
        self.free_at[:] = now + np.maximum(rounds, 0) * self.one_transfer


class Transfer:
    """One transfer (an expert's weights, or a batch's activations one way). ``on_done`` is
    called when it arrives, then every one of ``watchers``; ``key`` and ``info`` are the
    submitter's (a cache key, what to show in a timeline)."""

    __slots__ = (
        "done",
        "info",
        "issued",
        "key",
        "nbytes",
        "on_done",
        "route",
        "seq",
        "slot",
        "started",
        "watchers",
    )

    def __init__(
        self,
        route: Route,
        nbytes: float,
        issued: float,
        on_done: Callable[[Transfer], None] | None = None,
        key: int = -1,
        info: object = None,
    ) -> None:
        self.route = route
        self.nbytes = nbytes
        self.issued = issued
        self.on_done = on_done
        self.key = key
        self.info = info
        self.started = math.nan  # slot acquired
        self.done = math.nan  # arrived
        self.seq = -1  # submission order in the network: the deterministic tie-break
        self.slot = -1  # the slot of its route it held
        self.watchers: list[Callable[[Transfer], None]] | None = None


class Flow:
    """A transfer in its data phase."""

    __slots__ = ("cap", "links", "rate", "remaining", "through", "transfer", "updated", "version")

    def __init__(self, transfer: Transfer, now: float) -> None:
        self.transfer = transfer
        self.through = transfer.route.links  # every link it crosses (for their statistics)
        self.links = transfer.route.shared  # those it shares
        self.cap = transfer.route.cap
        self.remaining = transfer.nbytes
        self.rate = 0.0
        self.updated = now
        self.version = 0


_ENTER, _DONE = 0, 1


class FlowNetwork:
    """Transfers over routes; `submit` at the current simulated time, then `commit` once per
    batch (a gate's transfers): the rates are settled and the next wake-up scheduled."""

    def __init__(self, env: Clock, links: dict[str, LinkState]) -> None:
        self.env = env
        self.links = links
        self._heap: list[tuple[float, int, int, object, int]] = []
        self._seq = itertools.count()
        self._order = itertools.count()
        self._wake_at = math.inf
        self._changed: set[LinkState] = set()  # fair links whose flows changed: re-rate
        self._accounts: set[LinkState] = set()  # fifo links whose flows' rates changed
        self._new: list[Flow] = []
        self.events = 0  # processed heap entries (completions, latency ends)
        self.rerates = 0  # component re-ratings

    # -- the interface -----------------------------------------------------------------------------
    def submit(self, transfer: Transfer) -> None:
        """Queue ``transfer`` (issued now) for a slot of its route."""
        now = self.env.now
        transfer.seq = next(self._order)
        for link in transfer.route.links:
            link.bytes += transfer.nbytes
            link.transfers += 1
        pool = transfer.route.pool
        if pool.free > 0 and not pool.waiting:
            transfer.slot = pool.take()
            self._start(transfer, now)
        else:
            pool.waiting.append(transfer)

    def commit(self) -> None:
        """Settle the rates after submissions and schedule the next wake-up."""
        self._settle(self.env.now)

    # -- internals -----------------------------------------------------------------------------
    def _start(self, transfer: Transfer, now: float) -> None:
        transfer.started = now
        latency = transfer.route.latency
        if latency > 0:
            self._push(now + latency, _ENTER, transfer, 0)
        else:
            self._enter(transfer, now)

    def _enter(self, transfer: Transfer, now: float) -> None:
        flow = Flow(transfer, now)
        for link in flow.through:
            link.flows.add(flow)
        if not flow.links:  # only capped by its first (fifo) link: nothing to share
            flow.rate = flow.cap
            self._schedule_done(flow, now)
            for link in flow.through:
                self._account(link, now)
            return
        self._changed.update(flow.links)
        self._new.append(flow)

    def _schedule_done(self, flow: Flow, now: float) -> None:
        flow.version += 1
        flow.updated = now
        duration = flow.remaining / flow.rate if flow.remaining > 0 else 0.0
        self._push(now + duration, _DONE, flow, flow.version)

    def _push(self, when: float, kind: int, item: object, version: int) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, item, version))

    def _wake(self, _event: object) -> None:
        now = self.env.now
        self._wake_at = math.inf
        heap = self._heap
        while heap and heap[0][0] <= now:
            _when, _seq, kind, item, version = heapq.heappop(heap)
            if kind == _ENTER:
                self.events += 1
                self._enter(item, now)  # type: ignore[arg-type]
            elif version == item.version:  # type: ignore[attr-defined]
                self.events += 1
                self._finish(item, now)  # type: ignore[arg-type]
        self._settle(now)

    def _finish(self, flow: Flow, now: float) -> None:
        transfer = flow.transfer
        route = transfer.route
        for link in flow.through:
            link.flows.discard(flow)
        self._changed.update(flow.links)
        if route.unshared:
            self._accounts.update(route.unshared)
        flow.version += 1
        transfer.done = now
        route.finished.append((transfer.issued, now, transfer.nbytes))
        pool = route.pool
        if pool.waiting:
            waiting = pool.waiting.popleft()
            waiting.slot = transfer.slot
            self._start(waiting, now)
        else:
            pool.give(transfer.slot)
        if transfer.on_done is not None:
            transfer.on_done(transfer)
        if transfer.watchers:
            for watcher in transfer.watchers:
                watcher(transfer)

    def _settle(self, now: float) -> None:
        if self._changed:
            self._rerate(now)
        for link in sorted(self._accounts, key=_link_order):
            self._account(link, now)
        self._accounts.clear()
        if self._heap and self._heap[0][0] < self._wake_at:
            when = max(self._heap[0][0], now)
            self._wake_at = when
            self.env.at(when).callbacks.append(self._wake)

    def _rerate(self, now: float) -> None:
        """Max-min fair rates of the flows connected to a changed link (progressive filling)."""
        self.rerates += 1
        links: set[LinkState] = set()
        flows: set[Flow] = set()
        stack = list(self._changed)
        self._changed.clear()
        while stack:
            link = stack.pop()
            if link in links:
                continue
            links.add(link)
            for flow in link.flows:
                if flow not in flows:
                    flows.add(flow)
                    stack.extend(other for other in flow.links if other not in links)
        new = set(self._new)
        self._new.clear()
        if len(links) == 1:  # one shared link (a pool behind one link): equal shares, caps
            (link,) = links
            rates = _one_link_rates(link, flows)
        else:
            rates = max_min_rates(flows, links)
        for flow in sorted(flows, key=_flow_order):
            rate = rates[flow]
            if flow in new or rate != flow.rate:
                dt = now - flow.updated
                if flow not in new and dt > 0:  # the bytes moved at the old rate until now
                    flow.remaining = max(0.0, flow.remaining - flow.rate * dt)
                flow.rate = rate
                self._schedule_done(flow, now)
        for link in sorted(links, key=_link_order):
            self._account(link, now)
        for flow in flows:
            if flow.transfer.route.unshared:
                self._accounts.update(flow.transfer.route.unshared)

    @staticmethod
    def _account(link: LinkState, now: float) -> None:
        """The link's total rate from its flows (added in submission order unless all are
        equal, when any order gives the same float)."""
        flows = link.flows
        rates = [flow.rate for flow in flows]
        if rates and min(rates) != max(rates):
            rates = [flow.rate for flow in sorted(flows, key=_flow_order)]
        total = 0.0
        for rate in rates:
            total += rate
        link.set_rate(now, total)


def _flow_order(flow: Flow) -> int:
    """A deterministic order (sets iterate in hash order): submission order."""
    return flow.transfer.seq


def _link_order(link: LinkState) -> str:
    return link.name


def _one_link_rates(link: LinkState, flows: set[Flow]) -> dict[Flow, float]:
    """`max_min_rates` when every flow shares just this one link: with one cap for all, each
    gets min(cap, bandwidth / n)."""
    caps = {flow.cap for flow in flows}
    if len(caps) == 1:
        (cap,) = caps
        share = link.config.bandwidth / len(flows)
        rate = cap if cap <= share else share
        return dict.fromkeys(flows, rate)
    return max_min_rates(flows, {link})


def max_min_rates(flows: set[Flow], links: set[LinkState]) -> dict[Flow, float]:
    """Progressive filling: raise every unfixed flow's rate together; a link whose bandwidth
    runs out fixes its flows at its equal share, a flow reaching its cap is fixed there; repeat
    with what is left. Exact (no iteration to a tolerance): each round fixes at least one
    flow."""
    rates: dict[Flow, float] = {}
    ordered = sorted(links, key=_link_order)
    left = {link: link.config.bandwidth for link in ordered}
    count = {link: sum(1 for f in link.flows if f in flows) for link in ordered}
    unfixed = set(flows)
    while unfixed:
        share, bottleneck = math.inf, None
        for link, n in count.items():
            if n > 0:
                s = left[link] / n
                if s < share:
                    share, bottleneck = s, link
        capped = min(unfixed, key=lambda f: (f.cap, _flow_order(f)))
        if capped.cap <= share:
            fixed = sorted((f for f in unfixed if f.cap == capped.cap), key=_flow_order)
            level = capped.cap
        else:
            assert bottleneck is not None
            fixed = [f for f in bottleneck.flows if f in unfixed]
            fixed.sort(key=_flow_order)
            level = share
        for flow in fixed:
            rates[flow] = level
            unfixed.discard(flow)
            for link in flow.links:
                left[link] = max(0.0, left[link] - level)
                count[link] -= 1
    return rates


class SharedUnit:
    """The MD pool's near-data compute unit when several GPUs send it work: each gate's batch
    of near-data experts is one job of ``work`` seconds (its serial compute alone on the unit).

    ``fifo``: jobs run one at a time in arrival order. ``ps`` (processor sharing): the jobs in
    progress share the unit equally, a flow network over one resource of capacity 1 (work
    seconds per second), so a job alone runs at full speed and n together each at 1/n."""

    def __init__(self, env: Clock, sharing: str, jobs: int) -> None:
        self.env = env
        self.sharing = sharing
        self.free = 0.0  # fifo: when the unit is next idle
        self.busy = 0.0  # work done, s
        state = LinkState("md_compute", LinkConfig("md_compute", 1.0, sharing="fair"))
        self.network = FlowNetwork(env, {"md_compute": state}) if sharing == "ps" else None
        self.route = Route(links=(state,), pool=SlotPool(max(jobs, 1)), cap=1.0, latency=0.0)

    def submit(self, work: float) -> float | Transfer:
        """A job arriving now: its end (fifo), or a transfer whose ``done`` will be its end."""
        now = self.env.now
        self.busy += work
        if self.network is None:
            start = self.free if self.free > now else now
            self.free = start + work
            return self.free
        job = Transfer(self.route, work, now)
        self.network.submit(job)
        self.network.commit()
        return job


class LayerBarrier:
    """Expert parallelism's synchronisation: a GPU waits here until all ``n`` have arrived,
    then all go on at that instant (the last arrival's time)."""

    def __init__(self, env: Clock, n: int) -> None:
        self.env = env
        self.n = n
        self._arrived = 0
        self._event = env.event()

    def wait(self) -> Any:
        """The event to yield: fires when the last of the ``n`` GPUs has called `wait`."""
        event = self._event
        self._arrived += 1
        if self._arrived == self.n:
            self._arrived = 0
            self._event = self.env.event()
            event.succeed()
        return event
