"""`HbmCache`: the engine's bookkeeping of the HBM expert cache, and its checks of policies.

The cache is one array, ``ready_at[layer, expert]``: when each cached expert is (or was) in HBM,
``+inf`` when it is not cached and ``-1`` while a prefetch is reserved but not yet placed on a
link; beside it ``precision_at[layer, expert]``, the precision of each cached copy (`sim.
precision`; -1 when not cached), and a count of cached copies per precision, from which the
bytes in use follow (copies of different precisions have different sizes). Evictions, admissions and prefetch reservations are applied here, vectorised when a
policy's whole list is valid (global-scope policies touch ~60 experts a gate) and item by item
otherwise, so that the first invalid item raises the `PolicyError` policies are told about.
The rules: docs/engine.md and `sim.policies.base`.
"""

from __future__ import annotations

import numpy as np

from sim.contract import FETCH_PATH_OF_LINK, ROUTES, Path, PolicyError
from sim.engine.links import Placed

PENDING = 1e300  # ready_at of a cached expert whose transfer's arrival is not known yet


class HbmCache:
    """Which (layer, expert) pairs are cached, in which precision, and when each is ready.

    On routes timed by the flow network (`sim.engine.network`) a transfer's arrival is only
    known when it happens: its expert is cached with ``ready_at`` = `PENDING` (in flight) and
    ``pending`` maps its flat key to the transfer until `arrival` sets the real time."""

    def __init__(
        self,
        layers: int,
        num_experts: int,
        not_allowed: dict[Path, str],
        sizes: np.ndarray,
        capacity: float,
        who: str,
    ) -> None:
        """``not_allowed``: `allowed_paths` of the hardware; ``sizes``: bytes of one copy per
        precision (index 0 the native one); ``who``: how errors name the policy."""
        self.layers, self.num_experts = layers, num_experts
        self.not_allowed = not_allowed
        self.sizes = [float(x) for x in sizes]
        self.expert_bytes = self.sizes[0]
        self.capacity = capacity
        self.who = who
        # when each cached (layer, expert) is / was in HBM; +inf = not cached.
        self.ready_at = np.full((layers, num_experts), np.inf)
        self.public_ready_at = self.ready_at.view()
        self.public_ready_at.flags.writeable = False
        self.flat_ready_at = self.ready_at.reshape(-1)  # a view: eviction by flat index
        self.key_bounds = np.array([layers, num_experts], dtype=np.uint64)
        self.key_scratch = np.empty(layers * num_experts, dtype=np.intp)
        self.arange_keys = np.arange(layers * num_experts, dtype=np.intp)
        self.count = 0  # cached experts (in flight and reserved included)
        self.max_ready = 0.0  # latest ready time ever given to a cached expert
        self.pending: dict[int, object] = {}  # flat key -> network transfer in flight to it
        # the precision of each cached copy (-1: not cached) and how many copies per precision
        self.precision_at = np.full((layers, num_experts), -1, dtype=np.int8)
        self.public_precision_at = self.precision_at.view()
        self.public_precision_at.flags.writeable = False
        self.flat_precision_at = self.precision_at.reshape(-1)
        self.by_precision = [0] * len(self.sizes)
        self.reduced = 0  # cached copies not in the native precision

    @property
    def used_bytes(self) -> float:
        """Bytes of the cached copies (in flight and reserved included)."""
        if not self.reduced:  # every copy native: count x size, as one product
            return self.count * self.expert_bytes
        total = 0.0
        for n, size in zip(self.by_precision, self.sizes):
            if n:
                total += n * size
        return total

    def preload(self, resident: object) -> None:
        """Experts in HBM before the run (a policy's `initial_cache`): ready at time 0, never
        transferred. A wrong shape or more bytes than ``hbm.capacity`` is a `PolicyError`."""
        mask = np.asarray(resident)
        if mask.shape != self.ready_at.shape or mask.dtype != bool:
            raise PolicyError(
                f"{self.who}: initial_cache must be a bool array of shape "
                f"{self.ready_at.shape}, got {mask.dtype} {mask.shape}"
            )
        self.ready_at[mask] = 0.0
        self.precision_at[mask] = 0  # loaded in the native precision
        self.count = int(np.count_nonzero(np.isfinite(self.ready_at)))
        self.by_precision[0] = self.count
        if self.count and self.count * self.expert_bytes > self.capacity * (1 + 1e-12):
            raise PolicyError(
                f"{self.who}: initial_cache holds {self.count} experts = "
                f"{self.count * self.expert_bytes:.6g} B, above hbm.capacity {self.capacity:.6g} B"
            )

    def check_capacity(self, s: int, layer: int) -> None:
        """`PolicyError` when the cached experts' bytes exceed ``hbm.capacity``."""
        if self.count and self.used_bytes > self.capacity * (1 + 1e-12):
            raise PolicyError(
                f"{self.who} at step {s} layer {layer}: cache holds "
                f"{self.count} experts = {self.used_bytes:.6g} B, "
                f"above hbm.capacity {self.capacity:.6g} B"
            )

    def _added(self, flat: np.ndarray, precision: np.ndarray | int) -> None:
        """Copies at flat keys ``flat`` entered the cache in ``precision`` (one or per key)."""
        self.flat_precision_at[flat] = precision
        n = int(np.size(flat))
        self.count += n
        if isinstance(precision, int | np.integer):
            self.by_precision[int(precision)] += n
            if precision:
                self.reduced += n
            return
        for p, m in zip(*np.unique(precision, return_counts=True)):
            self.by_precision[int(p)] += int(m)
            if p:
                self.reduced += int(m)

    def precisions_of(self, keys: list) -> np.ndarray:
        """The precision of the cached copies at ``keys`` ((layer, expert) pairs; -1 where
        not cached or out of range: the eviction then raises its own error)."""
        out = np.full(len(keys), -1, dtype=np.int64)
        for i, (lyr, e) in enumerate(keys):
            if 0 <= int(lyr) < self.layers and 0 <= int(e) < self.num_experts:
                out[i] = self.precision_at[int(lyr), int(e)]
        return out

    def _removed(self, flat: np.ndarray) -> None:
        """The copies at flat keys ``flat`` left the cache."""
        precision = self.flat_precision_at[flat]
        self.flat_precision_at[flat] = -1
        self.count -= int(np.size(flat))
        if not self.reduced:
            self.by_precision[0] -= int(np.size(flat))
            return
        for p, m in zip(*np.unique(precision, return_counts=True)):
            self.by_precision[int(p)] -= int(m)
            if p:
                self.reduced -= int(m)

    # -- evictions ---------------------------------------------------------------------------------
    def evict(self, evict: list, s: int, layer: int, active_row: np.ndarray) -> None:
        """Drop the evicted experts from the cache, all at once when every eviction is valid
        (global-scope caches evict ~60 experts a gate); otherwise item by item, which raises
        the first invalid one's error exactly as policies are told. ``active_row``: the gate's
        tokens per expert (an expert the gate uses must not be evicted there)."""
        keys = self._eviction_keys(evict, layer, active_row)
        if keys is None:
            self._evict_one_by_one(evict, s, layer, active_row)
            return
        self.flat_ready_at[keys] = np.inf
        self._removed(keys)
        if self.pending:
            for key in keys.tolist():
                self.pending.pop(key, None)

    def _eviction_keys(self, evict: list, layer: int, active_row: np.ndarray) -> np.ndarray | None:
        """Flat ``layer * num_experts + expert`` indices of ``evict`` if every one is in range,
        cached, distinct and not used by this gate; None otherwise (or for a shape the fast
        path does not read)."""
        try:
            keys = np.asarray(evict)
        except ValueError:  # ragged
            return None
        if keys.ndim != 2 or keys.shape[1] != 2 or keys.dtype.kind not in "iu":
            return None
        if len(keys) > self.key_scratch.size:  # more evictions than experts: a repeat
            return None
        # negative values wrap to huge unsigned ones: one comparison checks both bounds
        if not (keys.astype(np.uint64, copy=False) < self.key_bounds).all():
            return None
        lyr, e = keys[:, 0], keys[:, 1]
        flat = lyr * self.num_experts + e
        if not (self.flat_ready_at[flat] < np.inf).all():
            return None
        if ((active_row[e] > 0) & (lyr == layer)).any():
            return None
        order = self.arange_keys[: len(flat)]
        self.key_scratch[flat] = order  # a repeated key keeps only its last position
        if not (self.key_scratch[flat] == order).all():
            return None
        return flat

    def _evict_one_by_one(self, evict: list, s: int, layer: int, active_row: np.ndarray) -> None:
        for item in evict:
            lyr, e = self._check_key(item, "evict", s, layer)
            if not np.isfinite(self.ready_at[lyr, e]):
                raise PolicyError(
                    f"{self.who} at step {s} layer {layer} evicts "
                    f"(layer {lyr}, expert {e}), which is not cached"
                )
            if lyr == layer and active_row[e] > 0:
                raise PolicyError(
                    f"{self.who} at step {s} layer {layer} evicts expert {e}, "
                    "which this layer is using"
                )
            self.ready_at[lyr, e] = np.inf
            self._removed(np.array([lyr * self.num_experts + e]))
            self.pending.pop(lyr * self.num_experts + e, None)

    def _check_key(self, item: tuple, what: str, s: int, layer: int) -> tuple[int, int]:
        lyr, e = int(item[0]), int(item[1])
        if not (0 <= lyr < self.layers and 0 <= e < self.num_experts):
            raise PolicyError(
                f"{self.who} at step {s} layer {layer}: {what} "
                f"(layer {lyr}, expert {e}) out of range"
            )
        return lyr, e

    # -- admissions --------------------------------------------------------------------------------
    def admit(
        self,
        admit_flags: object,
        experts: np.ndarray,
        n: int,
        fetched: list[tuple[np.ndarray, Placed, str]],
        layer: int,
        t_gate: float,
        precision: np.ndarray | dict[str, int],
    ) -> None:
        """Fetched experts the policy admits stay in the cache, ready when they arrive.
        ``precision``: the precision of each fetched copy (aligned with ``experts``), or one
        per route."""
        admit = np.asarray(admit_flags, dtype=bool)
        if admit.shape != (n,):
            raise PolicyError(f"{self.who}: admit has shape {admit.shape}, expected ({n},)")
        for idx, placed, route in fetched:
            keep = admit[idx]
            kept = int(np.count_nonzero(keep))
            if kept:
                chosen = experts[idx[keep]]
                self.ready_at[layer, chosen] = t_gate + placed.end[keep]
                p = precision[route] if isinstance(precision, dict) else precision[idx[keep]]
                self._added(layer * self.num_experts + chosen, p)
                self.max_ready = max(self.max_ready, t_gate + placed.last)

    def admit_pending(
        self,
        admit_flags: object,
        experts: np.ndarray,
        n: int,
        fetched: list[tuple[np.ndarray, list]],
        layer: int,
        precision: np.ndarray,
    ) -> None:
        """`admit` for fetches whose arrivals the network will tell (``fetched``: indices
        into the gate's experts and their transfers; ``precision``: of each gate expert)."""
        admit = np.asarray(admit_flags, dtype=bool)
        if admit.shape != (n,):
            raise PolicyError(f"{self.who}: admit has shape {admit.shape}, expected ({n},)")
        for idx, transfers in fetched:
            for i, transfer in zip(idx.tolist(), transfers, strict=True):
                if admit[i]:
                    self.track(layer, int(experts[i]), transfer)
                    self._added(
                        np.array([layer * self.num_experts + int(experts[i])]), int(precision[i])
                    )

    def track(self, layer: int, expert: int, transfer: object) -> None:
        """(layer, expert) is in flight on ``transfer``: ready when it arrives."""
        self.ready_at[layer, expert] = PENDING
        self.pending[layer * self.num_experts + expert] = transfer
        self.max_ready = PENDING

    def arrival(self, key: int, transfer: object, when: float) -> None:
        """``transfer`` arrived at ``when``: if it still carries the cached expert ``key``,
        that expert is ready from then on."""
        if self.pending.get(key) is transfer:
            del self.pending[key]
            self.flat_ready_at[key] = when

    def replace(
        self, layer: int, experts: np.ndarray, precision: np.ndarray, ready: np.ndarray
    ) -> None:
        """Cached copies of ``experts`` (this layer) replaced by copies in ``precision``
        (an upgrade: fetched now, ready at ``ready``)."""
        flat = layer * self.num_experts + experts
        self._removed(flat)
        self._added(flat, precision)
        self.ready_at[layer, experts] = ready
        self.max_ready = max(self.max_ready, float(np.max(ready)))

    # -- prefetches --------------------------------------------------------------------------------
    def reserve_prefetches(
        self, prefetch: list, s: int, layer: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Reserve cache room for ``prefetch`` (already cached or listed before: skipped); per
        link, the (layer, expert) rows to fetch, in the policy's order, and the positions in
        ``prefetch`` of all rows issued (link by link, in `ROUTES` order). The caller sets
        their precision (`set_precision`), places them on the links and calls `arrived`."""
        reserved = self._reserve_all(prefetch)
        if reserved is None:
            reserved = self._reserve_one_by_one(prefetch, s, layer)
        return reserved

    def set_precision(self, keys: np.ndarray, precision: np.ndarray | int) -> None:
        """Reserved prefetches ``keys`` (rows of (layer, expert)) hold copies in
        ``precision``: they count in the cache's bytes from now on."""
        self.count -= len(keys)  # _added counts them again, by precision
        self._added(keys[:, 0] * self.num_experts + keys[:, 1], precision)

    def arrived(self, keys: np.ndarray, placed: Placed, t_gate: float) -> None:
        """Reserved prefetches ``keys`` (rows of (layer, expert)) are ready when they arrive."""
        self.ready_at[keys[:, 0], keys[:, 1]] = t_gate + placed.end
        self.max_ready = max(self.max_ready, t_gate + placed.last)

    def _reserve_all(self, prefetch: list) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        """Reserve cache room for ``prefetch`` at once (global-scope prefetchers issue ~60 a
        gate). None, with nothing reserved, unless every item is a valid key on a usable
        link."""
        try:
            layers, experts, links = zip(*prefetch, strict=False)
            usable = all(
                name in FETCH_PATH_OF_LINK and not self.not_allowed[FETCH_PATH_OF_LINK[name]]
                for name in set(links)
            )
        except (TypeError, ValueError):  # not (layer, expert, link) triples, unhashable link
            return None
        keys = np.array([layers, experts]).T
        if not usable or keys.dtype.kind not in "iu":
            return None
        if not (keys.astype(np.uint64, copy=False) < self.key_bounds).all():
            return None
        flat = keys[:, 0] * self.num_experts + keys[:, 1]
        issue = self.flat_ready_at[flat] == np.inf
        if len(flat) > 1:  # a repeated key counts once, at its first position
            first = np.zeros(len(flat), dtype=bool)
            first[np.unique(flat, return_index=True)[1]] = True
            issue &= first
        self.flat_ready_at[flat[issue]] = -1.0  # reserved (real ready time set by `arrived`)
        self.count += int(np.count_nonzero(issue))
        link_of = np.array(links, dtype=object)
        masks = [issue & (link_of == name) for name in ROUTES]
        by_link = {
            name: keys[mask].astype(np.intp, copy=False) for name, mask in zip(ROUTES, masks)
        }
        return by_link, np.concatenate([np.flatnonzero(mask) for mask in masks])

    def _reserve_one_by_one(
        self, prefetch: list, s: int, layer: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`_reserve_all` item by item: raises the first invalid item's error."""
        by_link: dict[str, list[tuple[int, int]]] = {name: [] for name in ROUTES}
        where: dict[str, list[int]] = {name: [] for name in ROUTES}
        for i, item in enumerate(prefetch):
            lyr, e = self._check_key(item, "prefetch", s, layer)
            link_name = item[2]
            if link_name not in FETCH_PATH_OF_LINK:
                raise PolicyError(
                    f"{self.who}: prefetch link must be 'pcie' or 'md_link', got {link_name!r}"
                )
            reason = self.not_allowed[FETCH_PATH_OF_LINK[link_name]]
            if reason:
                raise PolicyError(
                    f"{self.who} at step {s} layer {layer} prefetches over "
                    f"{link_name}, impossible: {reason}"
                )
            if self.ready_at[lyr, e] != np.inf:
                continue
            self.ready_at[lyr, e] = -1.0  # reserved (real ready time set by `arrived`)
            self.count += 1
            by_link[link_name].append((lyr, e))
            where[link_name].append(i)
        keys = {
            name: np.asarray(rows, dtype=np.intp).reshape(-1, 2) for name, rows in by_link.items()
        }
        return keys, np.array([i for name in ROUTES for i in where[name]], dtype=np.intp)
