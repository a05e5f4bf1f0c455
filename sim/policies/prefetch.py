"""Prefetch: load the experts of a later gate while this one computes.

Every prefetch policy is a cache policy (sim/policies/cache.py: eviction rule, scope, miss
path) that also, at each gate, predicts the active experts of the gate ``lookahead`` gates ahead
(layer l+1 of this step for lookahead 1; past the last layer, the first layers of the next step)
and prefetches those not in HBM. Prefetches go through the cache: they take slots (evicting by
the policy's rule, never the current gate's experts nor the predicted ones) and link time
behind this gate's demand transfers, so a wrong prediction costs its bandwidth and its
evictions. Each prefetch takes the allowed link on which it is estimated to arrive first.

* ``prefetch-oracle``: knows the trace (an upper bound on what prediction can give).
* ``prefetch-predicted``: co-activation statistics P(j at the next gate | i at this gate),
  learned from the gates of the first ``train_steps`` steps as they run (online: it never
  reads the trace ahead); it does not prefetch during them.
* ``prefetch-synthetic``: a predictor of chosen precision and recall (seeded), to compare
  policies at equal prediction accuracy.

``stats()`` reports the realised precision and recall of the predictions (scored against the
routing of the target gate, on the gates where the policy predicted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from sim.errors import UserError
from sim.policies.base import (
    FETCH_PATH_OF_LINK,
    GateView,
    PolicyContext,
    allowed_paths,
    register_policy,
)
from sim.policies.cache import EVICTION_KEYS, CacheParams, CachePolicy

Eviction = Literal["lru", "lfu", "least-stale"]
PrefetchLink = Literal["auto", "pcie", "md_link"]


@dataclass(frozen=True)
class PrefetchParams(CacheParams):
    eviction: Eviction = "lru"  # lru | lfu | least-stale
    lookahead: int = 1  # gates ahead: 1 = the next layer
    link: PrefetchLink = "auto"  # auto (earliest estimated arrival) | pcie | md_link
    max_prefetch: int | None = None  # per gate (None: as many as predicted and fit)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookahead < 1:
            raise ValueError(f"lookahead: expected >= 1, got {self.lookahead}")
        if self.max_prefetch is not None and self.max_prefetch < 0:
            raise ValueError(f"max_prefetch: expected >= 0, got {self.max_prefetch}")


class PrefetchPolicy(CachePolicy):
    """A cache policy plus prefetching of ``predict``'s experts for the gate ``lookahead`` ahead."""

    Params = PrefetchParams

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self._key = EVICTION_KEYS[self.params.eviction]
        self.links = self._allowed_links(ctx)
        self._pending: dict[int, np.ndarray] = {}  # target gate -> predicted experts
        self.tp = self.fp = self.fn = 0
        self.prefetched = 0

    def _allowed_links(self, ctx: PolicyContext) -> tuple[str, ...]:
        reasons = allowed_paths(ctx.hardware)
        ok = tuple(name for name, path in FETCH_PATH_OF_LINK.items() if not reasons[path])
        wanted = ok if self.params.link == "auto" else (self.params.link,)
        bad = [name for name in wanted if name not in ok]
        if bad or not wanted:
            raise UserError(
                f"policy {self.name}: link: expected one of the links weights can be fetched "
                f"over in this scenario ({', '.join(ok) or 'none'}), got {self.params.link!r}"
            )
        return wanted

    def keep_key(self, view: GateView) -> np.ndarray:
        return self._key(self, view)

    def predict(self, view: GateView, step: int, layer: int) -> np.ndarray | None:
        """Predicted active experts of gate (step, layer), best first; None: no prediction."""
        raise NotImplementedError

    def prefetch(
        self, view: GateView, paths: np.ndarray, resident: np.ndarray
    ) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
        ctx = self.ctx
        assert ctx is not None
        gate = view.step * self.num_layers + view.layer
        self._score(gate, view.experts)
        target = gate + self.params.lookahead
        step, layer = divmod(target, self.num_layers)
        if (step >= ctx.num_steps and not ctx.open_ended) or self.partition_slots == 0:
            return [], []
        predicted = self.predict(view, step, layer)
        if predicted is None:
            return [], []
        self._pending[target] = predicted
        need = predicted[~resident[layer, predicted]]
        if self.params.max_prefetch is not None:
            need = need[: self.params.max_prefetch]
        if need.size == 0:
            return [], []
        evict = self.make_room(view, resident, layer, need.size, [(layer, predicted)])
        free = self.partition_slots - self.occupancy(resident, layer)
        need = need[: max(0, free)]
        if need.size == 0:
            return [], evict
        resident[layer, need] = True
        self.last_use[layer, need] = self.gate  # fresh: not the next victims
        self.prefetched += int(need.size)
        return self._assign_links(view, paths, step, layer, need), evict

    def _assign_links(
        self, view: GateView, paths: np.ndarray, step: int, layer: int, experts: np.ndarray
    ) -> list[tuple[int, int, str]]:
        """Each prefetch on the allowed link where it is estimated to arrive first, queued
        behind this gate's demand fetches (FIFO slots, the links' mean transfer time)."""
        cost = self.ctx.cost  # type: ignore[union-attr]
        n = experts.size
        if len(self.links) == 1:
            chosen = np.zeros(n, dtype=np.intp)
        else:
            ends = []
            for name in self.links:
                demand = int(np.count_nonzero(~view.cached & (paths == FETCH_PATH_OF_LINK[name])))
                duration = float(np.mean(cost.transfer_time(name, step, layer, experts)))
                free = np.maximum(np.asarray(view.link_free_at[name], dtype=float), view.now)
                ends.append(fifo_ends(free, duration, demand, n))
            label = np.concatenate([np.full(n, i) for i in range(len(self.links))])
            chosen = label[np.argsort(np.concatenate(ends), kind="stable")[:n]]
        names = [self.links[i] for i in chosen.tolist()]
        return list(zip([layer] * n, experts.tolist(), names))

    def _score(self, gate: int, actual: np.ndarray) -> None:
        predicted = self._pending.pop(gate, None)
        if predicted is None:
            return
        hit = int(np.isin(predicted, actual).sum())
        self.tp += hit
        self.fp += int(predicted.size) - hit
        self.fn += int(actual.size) - hit

    def stats(self) -> dict[str, Any]:
        """Realised predictor quality (micro-averaged over scored gates) and prefetch count."""
        predicted, actual = self.tp + self.fp, self.tp + self.fn
        return {
            "precision": self.tp / predicted if predicted else None,
            "recall": self.tp / actual if actual else None,
            "true_positives": self.tp,
            "false_positives": self.fp,
            "false_negatives": self.fn,
            "prefetched": self.prefetched,
        }


def fifo_ends(free_at: np.ndarray, duration: float, skip: int, n: int) -> np.ndarray:
    """End times of the ``n`` transfers of ``duration`` queued FIFO on slots free at
    ``free_at`` after ``skip`` others (each takes the slot that frees first)."""
    per_slot = np.arange(1, skip + n + 1) * duration
    candidates = np.sort((free_at[:, None] + per_slot[None, :]).ravel())
    return candidates[skip : skip + n]


def active_by_tokens(counts_row: np.ndarray) -> np.ndarray:
    """Active expert ids of one gate, most tokens first, ties by lower id (the engine's order)."""
    order = np.argsort(-counts_row.astype(np.int64), kind="stable")
    return order[counts_row[order] > 0]


@register_policy
class PrefetchOraclePolicy(PrefetchPolicy):
    """Prefetch exactly the experts the next gate will use (reads the trace ahead)."""

    name: ClassVar[str] = "prefetch-oracle"
    summary: ClassVar[str] = "cache + prefetch of the next layer's experts, knowing the trace"
    uses_future: ClassVar[bool] = True

    def predict(self, view: GateView, step: int, layer: int) -> np.ndarray:
        return active_by_tokens(self.ctx.counts[step, layer])  # type: ignore[union-attr]


@register_policy
class PrefetchPredictedPolicy(PrefetchPolicy):
    """Co-activation predictor: P(j active at the next gate | i active now), learned from the
    gates of the first ``train_steps`` steps as they run; the score of j is the mean over this
    gate's active i. It predicts the top ``n`` (n = mean active count of the target layer in
    training) or those above ``threshold``. No prefetching during the training steps."""

    name: ClassVar[str] = "prefetch-predicted"
    summary: ClassVar[str] = "cache + next-layer prefetch predicted from co-activation statistics"
    SERVING_TRAIN_STEPS: ClassVar[int] = 64  # default when the run's length is not known

    @dataclass(frozen=True)
    class Params(PrefetchParams):
        # None: a quarter of the trace (at least 1 step); 64 iterations in a serving run
        train_steps: int | None = None
        threshold: float | None = None  # None: predict the expected number of active experts

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.lookahead != 1:
                raise ValueError(
                    f"lookahead: expected 1 for prefetch-predicted, got {self.lookahead}"
                )
            if self.train_steps is not None and self.train_steps < 1:
                raise ValueError(f"train_steps: expected >= 1, got {self.train_steps}")
            if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
                raise ValueError(f"threshold: expected 0..1, got {self.threshold}")

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        train = self.params.train_steps
        if train is None:
            train = self.SERVING_TRAIN_STEPS if ctx.open_ended else max(1, ctx.num_steps // 4)
        if train >= ctx.num_steps and not ctx.open_ended:
            raise UserError(
                f"policy {self.name}: train_steps: expected fewer than the trace's "
                f"{ctx.num_steps} steps (the rest is evaluated), got {train}"
            )
        self.train_steps = train
        e = ctx.model.num_experts
        # co-activation counts of consecutive training gates, as `coactivation_model` counts
        self._pairs = np.zeros((self.num_layers, e, e))
        self._seen = np.zeros((self.num_layers, e))
        self._active = np.zeros(self.num_layers)
        self._previous: tuple[int, np.ndarray] | None = None
        self.cond: np.ndarray | None = None
        self.expected: np.ndarray | None = None

    def prefetch(
        self, view: GateView, paths: np.ndarray, resident: np.ndarray
    ) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]]]:
        self._learn(view)
        return super().prefetch(view, paths, resident)

    def _learn(self, view: GateView) -> None:
        """Count this training gate (and the pair it makes with the previous one); at the
        first gate after training, turn the counts into the model."""
        if view.step >= self.train_steps:
            if self.cond is None:
                seen = np.maximum(self._seen, 1.0)[:, :, None]
                self.cond = self._pairs / seen
                self.expected = np.rint(self._active / self.train_steps).astype(np.int64)
            return
        active = np.zeros(self._seen.shape[1])
        active[view.experts] = 1.0
        self._active[view.layer] += active.sum()
        if self._previous is not None:
            layer, before = self._previous
            self._pairs[layer] += np.outer(before, active)
            self._seen[layer] += before
        self._previous = (view.layer, active)

    def predict(self, view: GateView, step: int, layer: int) -> np.ndarray | None:
        if view.step < self.train_steps or view.experts.size == 0:
            return None
        assert self.cond is not None and self.expected is not None
        score = self.cond[view.layer][view.experts].mean(axis=0)
        order = np.argsort(-score, kind="stable")
        if self.params.threshold is None:
            return order[: int(self.expected[layer])]
        return order[score[order] >= self.params.threshold]

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "train_steps": self.train_steps}


def coactivation_model(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From ``[steps, layers, E]`` training counts: ``cond[l][i, j]`` = P(j active at the gate
    after (., l) | i active at (., l)) (layer l+1 of the step, or layer 0 of the next step), and
    the mean number of active experts per layer, rounded."""
    active = (counts > 0).astype(np.float64)
    steps, layers, num_experts = active.shape
    # gates in order; gate g is followed by gate g + 1
    flat = active.reshape(steps * layers, num_experts)
    cond = np.zeros((layers, num_experts, num_experts))
    for layer in range(layers):
        now = flat[layer : steps * layers - 1 : layers]
        nxt = flat[layer + 1 :: layers][: now.shape[0]]
        seen = now.sum(axis=0)
        cond[layer] = (now.T @ nxt) / np.maximum(seen, 1.0)[:, None]
    expected = np.rint(active.sum(axis=2).mean(axis=0)).astype(np.int64)
    return cond, expected


@register_policy
class PrefetchSyntheticPolicy(PrefetchPolicy):
    """A predictor of chosen quality: each active expert of the target gate is predicted with
    probability ``recall``; false positives (inactive experts, uniformly) are added so that the
    expected precision is ``precision``. Reads the trace ahead; seeded from the run's seed."""

    name: ClassVar[str] = "prefetch-synthetic"
    summary: ClassVar[str] = (
        "cache + prefetch from a synthetic predictor of chosen precision/recall"
    )
    uses_future: ClassVar[bool] = True

    @dataclass(frozen=True)
    class Params(PrefetchParams):
        precision: float = 0.8
        recall: float = 0.8

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 < self.precision <= 1.0:
                raise ValueError(f"precision: expected 0 < p <= 1, got {self.precision}")
            if not 0.0 <= self.recall <= 1.0:
                raise ValueError(f"recall: expected 0..1, got {self.recall}")

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self.rng = np.random.default_rng(ctx.seed)

    def predict(self, view: GateView, step: int, layer: int) -> np.ndarray:
        p = self.params
        row = self.ctx.counts[step, layer]  # type: ignore[union-attr]
        active = np.flatnonzero(row > 0)
        inactive = np.flatnonzero(row == 0)
        true_pos = active[self.rng.random(active.size) < p.recall]
        mean_fp = true_pos.size * (1.0 - p.precision) / p.precision
        n_fp = int(mean_fp) + int(self.rng.random() < mean_fp - int(mean_fp))
        false_pos = self.rng.choice(inactive, size=min(n_fp, inactive.size), replace=False)
        return self.rng.permutation(np.concatenate([true_pos, false_pos]))
