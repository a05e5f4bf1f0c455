"""Policies that trade router gate mass for transfer: reduced-precision copies, skipped experts.

Each wraps an underlying policy (any registered online or oracle policy: a split, a cache, a
prefetcher, with its own miss paths) and changes one thing about what it decides:

* ``quantised-all``: every expert is moved (and cached) in one reduced precision, as
  mixtral-offloading keeps its experts at 2-3 bits (Eliseev & Mazur, arXiv 2312.17238). The
  underlying policy plans with that precision's sizes (its cache holds more experts).
* ``low-precision-on-miss``: a miss whose router score is low (below a threshold, or among the
  lowest-scored misses of the gate) is fetched in a reduced precision; cached copies keep
  their precision, and a later hit may upgrade it (HOBBIT, Tang et al., arXiv 2411.01433).
* ``skip-low-score``: each token skips its chosen experts whose renormalised score is below a
  threshold, never its top-1; the gate's demand shrinks before the underlying policy sees it
  (adaptive gating, AdapMoE, Zhong et al., arXiv 2408.10284).

The quality proxies these policies move (`sim.precision`: the share of the router's gate mass
served below native precision, or dropped) are measured by the engine, not by the policies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from sim.engine.cost import RooflineCost, is_roofline
from sim.errors import UserError
from sim.hardware import Hardware, ModelSpec
from sim.policies.base import (
    GPU_FETCH_PATHS,
    LINK_OF_PATH,
    GateDecision,
    GateView,
    Path,
    Policy,
    PolicyContext,
    allowed_paths,
    register_policy,
)
from sim.precision import ROUTE_TIER, copy_sizes, tier_copies


@dataclass(frozen=True)
class WrapperParams:
    """The underlying policy: its registry name and its parameters."""

    policy: str = "seed-split"
    policy_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _inner(self)  # a bad name or parameter is reported now, under this policy's params


def _inner(params: WrapperParams) -> Policy:
    """The underlying policy, built from ``params`` (ValueError naming the field)."""
    from sim.policies.base import make_policy

    try:
        inner = make_policy(params.policy, dict(params.policy_params), "policy_params")
    except UserError as err:
        text = str(err)
        if text.startswith("policy_params: expected one of"):
            text = "policy" + text.removeprefix("policy_params")
        raise ValueError(text) from None
    if inner.run_kind() == "bound":
        raise ValueError(
            f"policy: expected an online or oracle policy, got the offline bound {params.policy!r}"
        )
    return inner


class WrappedPolicy(Policy):
    """Runs an underlying policy and changes its decisions (`adjust`); everything the run
    reports about the underlying policy (its kind, statistics, cache size) is passed through."""

    Params = WrapperParams

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        self.inner = _inner(self.params)
        # what this run may know is the underlying policy's (an instance's, not the class's)
        self.uses_future = self.inner.uses_future  # type: ignore[misc]

    def run_kind(self) -> str:
        return self.inner.run_kind()

    def bind(self, ctx: PolicyContext) -> None:
        super().bind(ctx)
        self.inner.bind(self.inner_context(ctx))

    def inner_context(self, ctx: PolicyContext) -> PolicyContext:
        """The context the underlying policy plans with (the run's, unless overridden)."""
        return ctx

    def decide(self, view: GateView) -> GateDecision:
        return self.adjust(view, self.inner.decide(view))

    def adjust(self, view: GateView, decision: GateDecision) -> GateDecision:
        raise NotImplementedError

    def on_layer_end(self, view: GateView, end_time: float) -> None:
        self.inner.on_layer_end(view, end_time)

    @property
    def skip_below(self) -> float:
        """Tokens skip experts whose renormalised score is below this (the underlying
        policy's; `skip-low-score` sets its own)."""
        return float(getattr(self.inner, "skip_below", 0.0) or 0.0)

    def __getattr__(self, name: str) -> Any:
        """What the run reads off a policy when it has it (``stats``, ``partition_slots``)
        comes from the underlying one."""
        if name in ("stats", "partition_slots", "oracle") and "inner" in self.__dict__:
            return getattr(self.inner, name)
        raise AttributeError(name)


def precision_index(hardware: Hardware, model: ModelSpec, name: str, who: str) -> int:
    """The index of precision ``name`` in the run's model, held by every tier of the placement
    (a UserError naming the field to change otherwise)."""
    names = model.precision_names
    if name not in names:
        raise UserError(f"{who}.precision: expected one of {', '.join(names)}, got {name!r}")
    index = names.index(name)
    for tier, held in tier_copies(hardware, model).items():
        if index not in held:
            have = ", ".join(names[i] for i in held)
            raise UserError(
                f"{who}.precision: expected a precision every tier holds, got {name!r} (tier "
                f"{tier} holds only {have}: add it to hardware.copies.{tier})"
            )
    return index


@register_policy
class QuantisedAll(WrappedPolicy):
    """Every expert moved, computed and cached in one reduced precision (mixtral-offloading's
    setting: experts quantised to 2-3 bits, arXiv 2312.17238). The underlying policy plans
    with that precision's copy size: a cache of the same bytes holds more experts."""

    name: ClassVar[str] = "quantised-all"
    summary: ClassVar[str] = (
        "every expert moved and cached in one reduced precision (mixtral-offloading)"
    )

    @dataclass(frozen=True)
    class Params(WrapperParams):
        precision: str = "int4"

    def check(self, hardware: Hardware, model: ModelSpec, where: str) -> None:
        """Scenario-time check (`sim.scenario.build`): the precision exists in every tier."""
        precision_index(hardware, model, self.params.precision, where)

    def bind(self, ctx: PolicyContext) -> None:
        who = f"policy {self.name}"
        self.index = precision_index(ctx.hardware, ctx.model, self.params.precision, who)
        self.copy_bytes = float(copy_sizes(ctx.model)[self.index])
        super().bind(ctx)

    def inner_context(self, ctx: PolicyContext) -> PolicyContext:
        cost = ctx.cost
        if is_roofline(cost, "transfer_time") and isinstance(cost, RooflineCost):
            cost = RooflineCost(ctx.hardware, ctx.model, precision=self.index)
        return dataclasses.replace(ctx, cost=cost, slot_bytes=self.copy_bytes)

    def adjust(self, view: GateView, decision: GateDecision) -> GateDecision:
        decision.precision = np.full(view.experts.size, self.index, dtype=np.int64)
        if decision.prefetch:
            decision.prefetch_precision = self.index
        return decision


def _scores(view: GateView, who: str) -> np.ndarray:
    """The largest renormalised router score of each active expert (`GateView.top_score`)."""
    if view.top_score is None:
        raise UserError(
            f"policy {who}: expected the router's scores with each iteration (Iteration.top), "
            "got none: this iteration source does not give them"
        )
    return view.top_score[view.experts]


@register_policy
class LowPrecisionOnMiss(WrappedPolicy):
    """HOBBIT-style (Tang et al., arXiv 2411.01433): a cache miss whose router score is low is
    fetched in a reduced precision, the others in full. An expert's score at a gate is the
    largest renormalised score among its tokens (one token's top-k scores sum to 1), so a
    miss is degraded only when no token leans on it. Cached copies keep their precision; with
    ``upgrade`` a hit on a reduced copy whose score is no longer low fetches the full copy
    again and replaces it. The reduced copy must be in the tier the miss comes from (a miss
    whose tier lacks it stays in full precision); prefetches stay in full precision."""

    name: ClassVar[str] = "low-precision-on-miss"
    summary: ClassVar[str] = (
        "low-scored cache misses fetched in a reduced precision (HOBBIT); optional upgrade on hit"
    )

    @dataclass(frozen=True)
    class Params(WrapperParams):
        precision: str = "int4"
        threshold: float | None = None  # renormalised score below which (default 0.1)
        lowest: int | None = None  # or: the lowest-scored misses of each gate, by count
        upgrade: bool = False  # a hit on a reduced copy whose score is not low refetches it

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.threshold is not None and self.lowest is not None:
                raise ValueError("threshold, lowest: expected at most one, got both")
            if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
                raise ValueError(f"threshold: expected 0..1, got {self.threshold!r}")
            if self.lowest is not None and self.lowest < 0:
                raise ValueError(f"lowest: expected >= 0, got {self.lowest!r}")

    DEFAULT_THRESHOLD: ClassVar[float] = 0.1

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        p = self.params
        self.threshold = (
            (self.DEFAULT_THRESHOLD if p.lowest is None else None)
            if p.threshold is None
            else p.threshold
        )
        # degrading nothing, it is its underlying policy (and may be timed as one)
        if self.threshold == 0.0 or p.lowest == 0:
            self.plan_gates = getattr(self.inner, "plan_gates", None)

    def check(self, hardware: Hardware, model: ModelSpec, where: str) -> None:
        """Scenario-time check: the precision exists and some tier holds it."""
        names = model.precision_names
        if self.params.precision not in names:
            raise UserError(
                f"{where}.precision: expected one of {', '.join(names)}, "
                f"got {self.params.precision!r}"
            )
        index = names.index(self.params.precision)
        if not any(index in held for held in tier_copies(hardware, model).values()):
            raise UserError(
                f"{where}.precision: expected a precision some tier holds, got "
                f"{self.params.precision!r} (add it to hardware.copies)"
            )

    def bind(self, ctx: PolicyContext) -> None:
        where = f"policy {self.name}"
        self.check(ctx.hardware, ctx.model, where)
        self.index = ctx.model.precision_index(self.params.precision)
        held = tier_copies(ctx.hardware, ctx.model)
        sizes = copy_sizes(ctx.model)
        # per path: can a miss on it be served in the reduced precision?
        self.low_ok = np.zeros(len(Path), dtype=bool)
        self.full = {}  # per fetch path: the copy an upgrade fetches (the tier's largest)
        for path, route in LINK_OF_PATH.items():
            tier = ROUTE_TIER[route]
            copies = held.get(tier, ())
            self.low_ok[path] = self.index in copies
            if copies and path in GPU_FETCH_PATHS:
                self.full[path] = min(copies, key=lambda i: (-sizes[i], i))
        allowed = allowed_paths(ctx.hardware)
        # an upgrade is fetched over whichever fetch path would deliver the full copy first
        self.upgrade_paths = [
            (
                p,
                LINK_OF_PATH[p],
                ctx.hardware.link(LINK_OF_PATH[p]).transfer_time(sizes[self.full[p]]),
            )
            for p in GPU_FETCH_PATHS
            if not allowed[p] and p in self.full
        ]
        super().bind(ctx)

    def upgrade_path(self, view: GateView) -> Path | None:
        """The fetch path whose route would deliver a full copy soonest (its first free slot
        plus the copy's transfer time), or None when no tier can upgrade."""
        best, best_t = None, np.inf
        for path, route, d in self.upgrade_paths:
            t = max(float(view.link_free_at[route].min()) - view.now, 0.0) + d
            if t < best_t:
                best, best_t = path, t
        return best

    def low(self, view: GateView, candidates: np.ndarray) -> np.ndarray:
        """bool per active expert: is it low-scored among ``candidates`` (bool, the experts
        the rule ranks)?"""
        score = _scores(view, self.name)
        if self.threshold is not None:
            return candidates & (score < self.threshold)
        n = min(int(self.params.lowest or 0), int(np.count_nonzero(candidates)))
        out = np.zeros(view.experts.size, dtype=bool)
        if n:
            idx = np.flatnonzero(candidates)
            # lowest score first; ties: fewer tokens (later in gate order) first
            order = np.lexsort((-idx, score[idx]))
            out[idx[order[:n]]] = True
        return out

    def adjust(self, view: GateView, decision: GateDecision) -> GateDecision:
        if self.threshold == 0.0 or self.params.lowest == 0:
            return decision
        n = view.experts.size
        paths = np.asarray(decision.paths)
        misses = ~view.cached
        cached_p = None
        reduced_hits = np.zeros(n, dtype=bool)
        if self.params.upgrade and view.cache_bytes and view.precision_at is not None:
            cached_p = view.precision_at[view.layer, view.experts]
            reduced_hits = view.cached & (cached_p > 0)
        low = self.low(view, misses | reduced_hits)
        precision = np.full(n, -1, dtype=np.int64)
        degrade = low & misses & self.low_ok[paths]
        precision[degrade] = self.index
        if degrade.any():
            decision.precision = precision
        path = self.upgrade_path(view) if cached_p is not None else None
        if path is not None:
            full = self.full[path]
            up = reduced_hits & ~low & (cached_p != full)
            if up.any():
                paths = paths.copy()
                paths[up] = path
                precision[up] = full
                decision.paths = paths
                decision.precision = precision
                decision.upgrade = up
        return decision


@register_policy
class SkipLowScore(WrappedPolicy):
    """Adaptive top-k (AdapMoE, Zhong et al., arXiv 2408.10284: fewer activated experts for
    tokens whose router is confident): each token skips its chosen experts whose renormalised
    score is below ``threshold``, never its top-1. The gate's demand shrinks (token counts,
    active experts) before the underlying policy sees it; the skipped mass is the run's
    ``dropped_gate_mass``. AdapMoE sets its thresholds per layer from a sensitivity analysis;
    here one threshold holds for every layer."""

    name: ClassVar[str] = "skip-low-score"
    summary: ClassVar[str] = (
        "tokens skip chosen experts with a low renormalised score, never the top-1 (AdapMoE)"
    )

    @dataclass(frozen=True)
    class Params(WrapperParams):
        threshold: float = 0.1

        def __post_init__(self) -> None:
            super().__post_init__()
            if not 0.0 <= self.threshold <= 1.0:
                raise ValueError(f"threshold: expected 0..1, got {self.threshold!r}")

    def __init__(self, params: Any = None) -> None:
        super().__init__(params)
        # the demand shrinks before the gate: the underlying policy's plan still applies
        self.plan_gates = getattr(self.inner, "plan_gates", None)

    @property
    def skip_below(self) -> float:
        return max(float(self.params.threshold), super().skip_below)

    def adjust(self, view: GateView, decision: GateDecision) -> GateDecision:
        return decision
