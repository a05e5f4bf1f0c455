"""`Clock`: simpy's environment plus events at absolute times.

The engine computes times in closed form (``t_gate + rel_end``) and must land on exactly those
floats: ``env.timeout(t - env.now)`` would give ``now + (t - now)``, which can differ from
``t`` in the last bit. `Clock.at` schedules an event at ``t`` itself. It uses simpy's event
queue directly (simpy is pinned in constraints.txt; its `Environment.schedule` only takes a
relative delay).
"""

from __future__ import annotations

from heapq import heappush

import simpy
from simpy.events import NORMAL


class Clock(simpy.Environment):
    def at(self, when: float) -> simpy.Event:
        """An event that fires at simulated time ``when`` (>= now)."""
        if when < self._now:
            raise ValueError(f"Clock.at({when!r}) is before now ({self._now!r})")
        event = simpy.Event(self)
        event._ok = True
        event._value = None
        heappush(self._queue, (when, NORMAL, next(self._eid), event))
        return event
