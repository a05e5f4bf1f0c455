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

from typing import NamedTuple

import numpy as np

from sim.contract import fifo_equal, fifo_unequal
from sim.hardware import LinkConfig


class Placed(NamedTuple):
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
        # every placed batch: (issue time, relative starts, relative ends), for statistics
        self.log: list[tuple[float, np.ndarray | float, np.ndarray | float]] = []
        # batches placed on idle slots, kept compactly: (issue times, counts, durations)
        self.idle: list[tuple[float, int, float]] = []
        self.idle_blocks: list[tuple[np.ndarray, np.ndarray, float]] = []

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
                self.log.append((t, start, end))
                return Placed(start, end, np.zeros(n, dtype=np.intp), last)
            g = self.relative_free(t)
            start, slot = fifo_equal(g, d, n)
            end = start + d
            # slot k took m_k transfers: its last one ends at (g_k + (m_k - 1) d) + d
            m = np.bincount(slot, minlength=self.channels)
            used = m > 0
            self.free_at[used] = t + ((g[used] + (m[used] - 1) * d) + d)
            self.latest = float(self.free_at.max())
            self.log.append((t, start, end))
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
        self.log.append((t, start, end))
        return Placed(start, end, slot, float(end.max()))

    def idle_table(self, d: float, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Starts, ends and slots of ``n`` transfers of ``d`` on idle slots: transfer j starts
        at (j // c) d on slot j % c (precomputed, read-only views)."""
        table = self._idle.get(d)
        if table is None or table[0].size < n:
            size = max(n, 64 if table is None else 2 * table[0].size)
            j = np.arange(size)
            start = (j // self.channels).astype(np.float64) * d
            table = (start, start + d, j % self.channels)
            for arr in table:
                arr.flags.writeable = False
            self._idle[d] = table
        return table[0][:n], table[1][:n], table[2][:n]

    def _place_idle(self, t: float, d: float, n: int) -> Placed:
        """All slots free: transfer j starts at (j // c) d on slot j % c."""
        start, end, slot = self.idle_table(d, n)
        self.idle.append((t, n, d))
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
        self.log.append((t, start, end))
        self.free_at[k] = t + end
        self.latest = max(self.latest, t + end)
        self.busy += duration
        self.bytes += nbytes
        self.transfers += 1
        return start, end, k

    def idle_batches(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batches placed on idle slots, in issue order: issue times, counts and transfer
        durations (the blocks of gates timed at once and the single gates between them)."""
        parts = [
            (np.asarray(t, float), np.asarray(n, np.int64), np.full(len(t), d))
            for t, n, d in self.idle_blocks
        ]
        if self.idle:
            t, n, d = (np.array(col) for col in zip(*self.idle))
            parts.append((t.astype(float), n.astype(np.int64), d.astype(float)))
        if not parts:
            return np.empty(0), np.empty(0, dtype=np.int64), np.empty(0)
        t, n, d = (np.concatenate([p[i] for p in parts]) for i in range(3))
        order = np.argsort(t, kind="stable")
        return t[order], n[order], d[order]

    def intervals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every transfer's issue, start and end times (absolute, s): the batches placed on
        idle slots (transfer j of a batch starts (j // c) d after its issue), then the rest."""
        t, n, d = self.idle_batches()
        total = int(n.sum())
        first = np.cumsum(n) - n
        j = np.arange(total) - np.repeat(first, n)
        issue = np.repeat(t, n)
        step = np.repeat(d, n)
        start = issue + (j // self.channels) * step
        parts = [(issue, start, start + step)]
        if self.log:
            sizes = [np.size(start) for _, start, _ in self.log]
            at = np.repeat([t for t, _, _ in self.log], sizes)
            rel_start = np.concatenate([np.atleast_1d(s) for _, s, _ in self.log])
            rel_end = np.concatenate([np.atleast_1d(e) for _, _, e in self.log])
            parts.append((at, at + rel_start, at + rel_end))
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]
