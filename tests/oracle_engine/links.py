"""`FifoLink`: a link with ``channels`` concurrent transfer slots, in closed form.

No simpy `Resource` per transfer (far too slow for ~10^6 transfers): each slot only keeps the
time it becomes free (``free_at``). A batch of transfers issued at time ``t`` is placed FIFO:
each, in order, takes the slot that frees up first and occupies it for its duration. Issues
must come in non-decreasing time order, which the engine guarantees.

Times inside a batch are computed *relative to the issue time* (``t``): slots already free
count as 0, so a layer whose links are idle gets exactly the arithmetic of the closed form.

Placement with equal durations ``d`` is vectorised: slot ``k`` (free at ``g_k``) can start
transfers at ``g_k, g_k + d, g_k + 2d, ...``; greedy FIFO takes the ``n`` smallest of those
candidate start times (a merge of arithmetic sequences). Unequal durations on one slot are a
cumulative sum; unequal durations on several slots fall back to a small heap loop.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from sim.hardware import LinkConfig


@dataclass(frozen=True)
class Placed:
    """A placed batch: start/end relative to the issue time, and the slot of each transfer."""

    start: np.ndarray
    end: np.ndarray
    slot: np.ndarray
    last: float  # the latest end (relative), 0 for an empty batch


_EMPTY = Placed(np.empty(0), np.empty(0), np.empty(0, dtype=np.intp), 0.0)


class FifoLink:
    """One direction of a link: FIFO over ``channels`` slots with per-slot ``free_at``."""

    def __init__(self, config: LinkConfig) -> None:
        if config.channels < 1:
            raise ValueError(f"link {config.name}: channels must be >= 1, got {config.channels}")
        self.config = config
        self.name = config.name
        self.channels = int(config.channels)
        self.free_at = np.zeros(self.channels)  # absolute time each slot becomes free, s
        self.busy = 0.0  # slot-seconds occupied
        self.bytes = 0.0
        self.transfers = 0
        self.latest = 0.0  # max(free_at): the link is idle from then on
        # a read-only view for policies (reflects the updates made through free_at)
        self.public_free_at = self.free_at.view()
        self.public_free_at.flags.writeable = False
        self._idle: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def relative_free(self, t: float) -> np.ndarray:
        """Each slot's free time relative to ``t`` (0 where already free)."""
        return np.maximum(self.free_at - t, 0.0)

    def place(self, t: float, durations: np.ndarray | float, n: int, nbytes: float) -> Placed:
        """Issue ``n`` transfers at time ``t`` (a scalar duration means all are equal).

        ``nbytes`` is the total the batch moves (for the link's byte count).
        """
        if n == 0:
            return _EMPTY
        self.bytes += nbytes
        self.transfers += n
        if isinstance(durations, float | int):
            d = float(durations)
            self.busy += d * n
            if self.latest <= t:
                return self._place_idle(t, d, n)
            if self.channels == 1:
                g = float(self.free_at[0]) - t
                start = (g if g > 0.0 else 0.0) + np.arange(n, dtype=np.float64) * d
                end = start + d
                last = float(end[-1])
                self.free_at[0] = self.latest = t + last
                return Placed(start, end, np.zeros(n, dtype=np.intp), last)
            g = self.relative_free(t)
            start, slot = fifo_equal(g, d, n)
            end = start + d
            # slot k took m_k transfers: its last one ends at (g_k + (m_k - 1) d) + d
            m = np.bincount(slot, minlength=self.channels)
            used = m > 0
            self.free_at[used] = t + ((g[used] + (m[used] - 1) * d) + d)
            self.latest = float(self.free_at.max())
            return Placed(start, end, slot, float(end[-1]))  # starts ascend: so do ends
        durations = np.asarray(durations, dtype=np.float64)
        self.busy += float(durations.sum())
        g = self.relative_free(t)
        start, slot = fifo_unequal(g, durations)
        end = start + durations
        # transfers on one slot follow each other, so a slot's last end is its largest end
        last = np.full(self.channels, -np.inf)
        np.maximum.at(last, slot, end)
        used = np.isfinite(last)
        self.free_at[used] = t + last[used]
        self.latest = float(self.free_at.max())
        return Placed(start, end, slot, float(end.max()))

    def _place_idle(self, t: float, d: float, n: int) -> Placed:
        """All slots free: transfer j starts at (j // c) d on slot j % c (precomputed views)."""
        table = self._idle.get(d)
        if table is None or table[0].size < n:
            size = max(n, 64 if table is None else 2 * table[0].size)
            j = np.arange(size)
            start = (j // self.channels).astype(np.float64) * d
            table = (start, start + d, j % self.channels)
            for arr in table:
                arr.flags.writeable = False
            self._idle[d] = table
        start, end, slot = table[0][:n], table[1][:n], table[2][:n]
        last = float(end[n - 1])
        if self.channels == 1:
            self.free_at[0] = t + last
        else:  # the last c transfers are each the last on their slot
            tail = n - min(n, self.channels)
            self.free_at[slot[tail:]] = t + end[tail:]
        self.latest = t + last
        return Placed(start, end, slot, last)

    def place_one(self, t: float, duration: float, nbytes: float) -> tuple[float, float, int]:
        """Issue one transfer at ``t``; returns (relative start, relative end, slot)."""
        k = int(np.argmin(self.free_at))
        start = max(self.free_at[k] - t, 0.0)
        end = start + duration
        self.free_at[k] = t + end
        self.latest = max(self.latest, t + end)
        self.busy += duration
        self.bytes += nbytes
        self.transfers += 1
        return start, end, k


def fifo_arrivals(free: np.ndarray, durations: np.ndarray | float, n: int) -> np.ndarray:
    """Arrival times of ``n`` transfers placed FIFO on slots free at ``free`` (relative times,
    >= 0), without touching any link: what a policy uses to estimate a schedule."""
    if n == 0:
        return np.empty(0)
    if isinstance(durations, float | int):
        start, _slot = fifo_equal(free, float(durations), n)
        return start + float(durations)
    durations = np.asarray(durations, dtype=np.float64)
    start, _slot = fifo_unequal(free, durations)
    return start + durations


def fifo_equal(g: np.ndarray, d: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """FIFO start times (relative) and slots of ``n`` transfers of duration ``d``."""
    steps = np.arange(n, dtype=np.float64) * d
    if g.size == 1:
        return g[0] + steps, np.zeros(n, dtype=np.intp)
    candidates = (g[:, None] + steps[None, :]).ravel()  # slot-major: ties go to lower slots
    pick = np.argsort(candidates, kind="stable")[:n]
    return candidates[pick], pick // n


def fifo_unequal(g: np.ndarray, durations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = durations.size
    if g.size == 1:
        ends = g[0] + np.cumsum(durations)
        return ends - durations, np.zeros(n, dtype=np.intp)
    heap = [(float(v), k) for k, v in enumerate(g)]
    heapq.heapify(heap)
    start = np.empty(n)
    slot = np.empty(n, dtype=np.intp)
    for i, d in enumerate(durations.tolist()):
        free, k = heapq.heappop(heap)
        start[i] = free
        slot[i] = k
        heapq.heappush(heap, (free + d, k))
    return start, slot
