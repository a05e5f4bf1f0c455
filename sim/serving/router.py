"""`Router`: which replica (GPU) serves each request, decided when it arrives.

With several GPUs every GPU is a replica with its own scheduler, KV cache and expert cache; all
of them fetch experts from the one MD pool behind the shared links. Requests are dispatched in
arrival order:

* ``round-robin``: request ``i`` goes to GPU ``i mod num_gpus``;
* ``least-outstanding``: to the GPU whose requests have the fewest tokens left to process
  (prompt + output - 1, less the positions already computed; ties to the lower index), as the
  GPUs stand when the request arrives.

The serving source dispatches, before any GPU's scheduler acts at time ``t``, every request
that has arrived by ``t``: a GPU's state changes only at its iterations' ends, and those come
after the dispatch at the same time, so a request sees the GPUs as they were when it arrived.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sim.serving.requests import RequestSet
from sim.serving.scheduler import Scheduler
from sim.serving.spec import ROUTERS


class Router:
    """Dispatches ``requests`` among ``schedulers`` (each built with ``routed=True``)."""

    def __init__(self, requests: RequestSet, schedulers: Sequence[Scheduler], kind: str) -> None:
        if kind not in ROUTERS:
            raise ValueError(f"router: expected one of {', '.join(ROUTERS)}, got {kind!r}")
        self.arrival = requests.arrival
        self.schedulers = list(schedulers)
        self.kind = kind
        self.next = 0  # the first request not dispatched yet
        self.gpu_of = np.full(len(requests), -1, dtype=np.int64)

    @property
    def done(self) -> bool:
        return self.next == self.arrival.size

    def next_arrival(self) -> float | None:
        """When the next request arrives (None: every one has been dispatched)."""
        return None if self.done else float(self.arrival[self.next])

    def dispatch(self, now: float) -> None:
        """Hand every request that has arrived by ``now`` to its GPU."""
        if self.done or self.arrival[self.next] > now:
            return
        stop = int(np.searchsorted(self.arrival, now, side="right"))
        count = len(self.schedulers)
        for r in range(self.next, stop):
            if self.kind == "round-robin":
                g = r % count
            else:
                g = int(np.argmin([s.outstanding() for s in self.schedulers]))
            self.schedulers[g].assign(r)
            self.gpu_of[r] = g
        self.next = stop
        if self.done:
            for scheduler in self.schedulers:
                scheduler.close()
