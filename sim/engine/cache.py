"""`HbmCache`: the engine's bookkeeping of the HBM expert cache, and its checks of policies.

The cache is one array, ``ready_at[layer, expert]``: when each cached expert is (or was) in HBM,
``+inf`` when it is not cached and ``-1`` while a prefetch is reserved but not yet placed on a
link. Evictions, admissions and prefetch reservations are applied here, vectorised when a
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
    """Which (layer, expert) pairs are cached and when each is ready; capacity in experts.

    On routes timed by the flow network (`sim.engine.network`) a transfer's arrival is only
    known when it happens: its expert is cached with ``ready_at`` = `PENDING` (in flight) and
    ``pending`` maps its flat key to the transfer until `arrival` sets the real time."""

    def __init__(
        self,
        layers: int,
        num_experts: int,
        not_allowed: dict[Path, str],
        expert_bytes: float,
        capacity: float,
        who: str,
    ) -> None:
        """``not_allowed``: `allowed_paths` of the hardware; ``who``: how errors name the
        policy."""
        self.layers, self.num_experts = layers, num_experts
        self.not_allowed = not_allowed
        self.expert_bytes = expert_bytes
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
        self.count = int(np.count_nonzero(np.isfinite(self.ready_at)))
        if self.count and self.count * self.expert_bytes > self.capacity * (1 + 1e-12):
            raise PolicyError(
                f"{self.who}: initial_cache holds {self.count} experts = "
                f"{self.count * self.expert_bytes:.6g} B, above hbm.capacity {self.capacity:.6g} B"
            )

    def check_capacity(self, s: int, layer: int) -> None:
        """`PolicyError` when the cached experts' bytes exceed ``hbm.capacity``."""
        if self.count and self.count * self.expert_bytes > self.capacity * (1 + 1e-12):
            raise PolicyError(
                f"{self.who} at step {s} layer {layer}: cache holds "
                f"{self.count} experts = {self.count * self.expert_bytes:.6g} B, "
                f"above hbm.capacity {self.capacity:.6g} B"
            )

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
        self.count -= len(keys)
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
            self.count -= 1
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
    ) -> None:
        """Fetched experts the policy admits stay in the cache, ready when they arrive."""
        admit = np.asarray(admit_flags, dtype=bool)
        if admit.shape != (n,):
            raise PolicyError(f"{self.who}: admit has shape {admit.shape}, expected ({n},)")
        for idx, placed, _link in fetched:
            keep = admit[idx]
            kept = int(np.count_nonzero(keep))
            if kept:
                self.ready_at[layer, experts[idx[keep]]] = t_gate + placed.end[keep]
                self.count += kept
                self.max_ready = max(self.max_ready, t_gate + placed.last)

    def admit_pending(
        self,
        admit_flags: object,
        experts: np.ndarray,
        n: int,
        fetched: list[tuple[np.ndarray, list]],
        layer: int,
    ) -> None:
        """`admit` for fetches whose arrivals the network will tell (``fetched``: indices
        into the gate's experts and their transfers)."""
        admit = np.asarray(admit_flags, dtype=bool)
        if admit.shape != (n,):
            raise PolicyError(f"{self.who}: admit has shape {admit.shape}, expected ({n},)")
        for idx, transfers in fetched:
            for i, transfer in zip(idx.tolist(), transfers, strict=True):
                if admit[i]:
                    self.track(layer, int(experts[i]), transfer)
                    self.count += 1

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

    # -- prefetches --------------------------------------------------------------------------------
    def reserve_prefetches(self, prefetch: list, s: int, layer: int) -> dict[str, np.ndarray]:
        """Reserve cache room for ``prefetch`` (already cached or listed before: skipped); per
        link, the (layer, expert) rows to fetch, in the policy's order. The caller places them
        on the links and then calls `arrived`."""
        by_link = self._reserve_all(prefetch)
        if by_link is None:
            by_link = self._reserve_one_by_one(prefetch, s, layer)
        return by_link

    def arrived(self, keys: np.ndarray, placed: Placed, t_gate: float) -> None:
        """Reserved prefetches ``keys`` (rows of (layer, expert)) are ready when they arrive."""
        self.ready_at[keys[:, 0], keys[:, 1]] = t_gate + placed.end
        self.max_ready = max(self.max_ready, t_gate + placed.last)

    def _reserve_all(self, prefetch: list) -> dict[str, np.ndarray] | None:
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
        return {
            name: keys[issue & (link_of == name)].astype(np.intp, copy=False) for name in ROUTES
        }

    def _reserve_one_by_one(self, prefetch: list, s: int, layer: int) -> dict[str, np.ndarray]:
        """`_reserve_all` item by item: raises the first invalid item's error."""
        by_link: dict[str, list[tuple[int, int]]] = {name: [] for name in ROUTES}
        for item in prefetch:
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
        return {
            name: np.asarray(keys, dtype=np.intp).reshape(-1, 2) for name, keys in by_link.items()
        }
