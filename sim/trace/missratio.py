"""Miss-ratio curves: expert-cache misses versus cache size, under LRU, Belady/OPT and pinning.

The request model is the simulator's: at every decode step a layer needs its *active set*
(the distinct experts any sequence of the batch routes to). An active expert not in the cache
is a miss and is fetched; after the step the cache must hold the whole active set (when it fits)
and keeps its other slots for experts chosen by the policy. A cache of ``C`` experts per layer:

* **LRU** keeps the ``C`` most recently used experts. Experts used in the same step are ordered
  by id (lower id = more recent); that only matters when ``C`` is smaller than an active set.
  LRU has the inclusion property, so one pass of stack distances gives every ``C`` at once.
* **OPT** (Belady's MIN, the offline optimum for this model) keeps the active set plus the
  experts whose next use is soonest. Simulated for all ``C`` together, vectorised over ``C``.
  When ``C`` is below the active set it keeps the ``C`` active experts needed again soonest.
* **static** fills the slots left by the active set with the experts most often active over the
  whole trace (an offline popularity oracle): what a frequency-only placement can reach.

All functions take ``active``: a ``[steps, experts]`` bool matrix of one layer's requests, and
return ``misses[C]`` for ``C = 0 .. experts`` (cold misses included).
"""

from __future__ import annotations

import numpy as np


def requests_from_string(refs: np.ndarray | list[int], num_items: int) -> np.ndarray:
    """A textbook reference string (one request per step) as a ``[steps, items]`` request matrix."""
    refs = np.asarray(refs, dtype=np.intp)
    active = np.zeros((refs.size, num_items), dtype=bool)
    active[np.arange(refs.size), refs] = True
    return active


def lru_stack_distances(active: np.ndarray) -> np.ndarray:
    """LRU stack distance of every request, in step order then id order.

    A request is a hit in an LRU cache of ``C`` experts iff its distance is ``<= C``; first
    uses (cold misses) get ``experts + 1``.
    """
    steps, items = active.shape
    step_idx = np.arange(steps)[:, None]
    last = np.maximum.accumulate(np.where(active, step_idx, -1), axis=0)
    before = np.vstack([np.full((1, items), -1), last[:-1]])  # last use before step t
    # Recency key at the start of step t: later step first, then lower id first.
    key = before.astype(np.int64) * items + (items - 1 - np.arange(items))
    order = np.argsort(-key, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(1, items + 1)[None, :], axis=1)
    distance = np.where(before >= 0, rank, items + 1)
    return distance[active]


def lru_misses(active: np.ndarray) -> np.ndarray:
    """``misses[C]``, ``C = 0 .. experts``, of an LRU cache of ``C`` experts."""
    items = active.shape[1]
    distance = lru_stack_distances(active)
    hits_at_most = np.cumsum(np.bincount(distance, minlength=items + 2))[: items + 1]
    return (distance.size - hits_at_most).astype(np.int64)


def next_use_after(active: np.ndarray) -> np.ndarray:
    """``[steps, experts]``: the next step after t at which each expert is active (or ``steps``)."""
    steps = active.shape[0]
    at_or_after = np.where(active, np.arange(steps)[:, None], steps)
    at_or_after = np.minimum.accumulate(at_or_after[::-1], axis=0)[::-1]
    return np.vstack([at_or_after[1:], np.full((1, active.shape[1]), steps)])


def opt_misses(active: np.ndarray) -> np.ndarray:
    """``misses[C]``, ``C = 0 .. experts``, of Belady's offline-optimal cache of ``C`` experts."""
    return simulate_cache(active, next_use_after(active))


def static_misses(active: np.ndarray) -> np.ndarray:
    """``misses[C]`` when the spare slots hold the experts most often active over the whole
    trace (an offline popularity oracle; ties: lower id)."""
    counts = active.sum(axis=0)
    rank = np.empty(active.shape[1], dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(active.shape[1])
    return simulate_cache(active, np.broadcast_to(rank, active.shape))


def simulate_cache(active: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """``misses[C]`` for every cache size ``C = 0 .. experts`` at once.

    After each step the cache keeps the active set, then the other experts it holds by
    ascending ``priority[t]`` (lower = keep), up to ``C``; with ``C`` below the active set it
    keeps the ``C`` active experts of lowest priority.
    """
    steps, items = active.shape
    sizes = np.arange(items + 1)[:, None]
    cache = np.zeros((items + 1, items), dtype=bool)
    hits = np.zeros(items + 1, dtype=np.int64)
    for t in range(steps):  # one vectorised update per step, for every cache size at once
        need = active[t]
        hits += (cache & need).sum(axis=1)
        order = np.lexsort((priority[t], ~need))  # active set first, then by priority
        pool = (cache | need)[:, order]
        cache[:, order] = pool & (np.cumsum(pool, axis=1) <= sizes)
    return int(active.sum()) - hits
