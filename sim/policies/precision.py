"""Policies that trade router gate mass for transfer: reduced-precision copies, skipped experts.

Each wraps an underlying policy (any registered online or oracle policy: a split, a cache, a
prefetcher, with its own miss paths) and changes one thing about what it decides:

* ``quantised-all``: every expert is moved (and cached) in one reduced precision, as
  mixtral-offloading keeps its experts at 2-3 bits (Eliseev & Mazur, arXiv 2312.17238). The
  underlying policy plans with that precision's sizes (its cache holds more experts).

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
from sim.policies.base import GateDecision, GateView, Policy, PolicyContext, register_policy
from sim.precision import copy_sizes, tier_copies


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

    @property
    def uses_future(self) -> bool:  # type: ignore[override]
        return self.inner.uses_future

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
