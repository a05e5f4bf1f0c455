"""Policies: the `Policy` base class, the registry, and building a policy from YAML parameters.

The engine/policy contract itself (`GateView`, `GateDecision`, `Path`, `PolicyContext`,
`CostModel`, `PolicyError`, the path and route rules, the FIFO helpers) lives in the leaf module
`sim.contract`, which the engine imports too; it is re-exported here for policy authors.

A policy is a small class with a frozen `Params` dataclass, registered by name with
`@register_policy`. Its parameters are validated by pydantic, like the scenario: types are
checked strictly (an int is no float's ``"3"``, a bool is no int), ``Literal`` choices are
enforced, and the first problem is one line naming the YAML path. See docs/policies.md for how
to add one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from sim.contract import (
    FETCH_PATH_OF_LINK,
    GPU_FETCH_PATHS,
    IN_PLACE_PATHS,
    LINK_OF_PATH,
    CostModel,
    GateDecision,
    GateView,
    Path,
    PolicyContext,
    PolicyError,
    allowed_paths,
)
from sim.errors import UserError
from sim.limits import INT32_MAX, MAX_PARAM_FLOAT

__all__ = [
    "FETCH_PATH_OF_LINK",
    "GPU_FETCH_PATHS",
    "IN_PLACE_PATHS",
    "LINK_OF_PATH",
    "RUN_KINDS",
    "CostModel",
    "GateDecision",
    "GateView",
    "Path",
    "Policy",
    "PolicyContext",
    "PolicyError",
    "allowed_paths",
    "available_policies",
    "build_params",
    "make_policy",
    "register_policy",
]

RUN_KINDS = ("online", "oracle", "bound")  # what a run may know (Policy.run_kind)


class Policy:
    """Base class: subclasses set ``name``, ``Params`` and implement ``decide``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line: the idea and where it comes from
    uses_future: ClassVar[bool] = False  # True for oracles and offline bounds
    is_bound: ClassVar[bool] = False  # True for offline bounds (reported as such)
    # Stateless policies (no cache, no prefetch, paths depending only on the gate's routing)
    # may define ``plan_gates(experts, tokens, active) -> paths``: for every layer of an iteration at
    # once (rows of ``[layers, E]``, each in gate order as `GateView.experts`/``tokens``, the
    # first ``active[layer]`` entries of a row active), the `Path` that ``decide`` would give
    # each expert. The engine then times the iteration in closed form when it can
    # (docs/engine.md, "Speed").
    plan_gates: ClassVar[Callable[..., np.ndarray | None] | None] = None

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.ctx: PolicyContext | None = None

    def bind(self, ctx: PolicyContext) -> None:
        """Called once before the run; reset any state here (a policy object may be reused)."""
        self.ctx = ctx

    def initial_cache(self) -> np.ndarray | None:
        """Experts in HBM before the run starts (bool ``[layers, num_experts]``), loaded
        outside the simulated time; None (the default): the cache starts empty."""
        return None

    def decide(self, view: GateView) -> GateDecision:
        raise NotImplementedError

    def run_kind(self) -> str:
        """What this run may know, for labelling its results (one of `RUN_KINDS`): ``bound``
        (an offline bound), ``oracle`` (reads routing it could not know online) or
        ``online``. A property of the run, not only of the class: a policy profiled on another
        trace than the one it is judged on is online (static-popular overrides this)."""
        if self.is_bound:
            return "bound"
        return "oracle" if self.uses_future else "online"

    def on_layer_end(self, view: GateView, end_time: float) -> None:
        """Called when the layer's experts are done (for bookkeeping such as recency)."""

    def on_cache_resize(
        self, capacity: float, ready_at: np.ndarray, step: int
    ) -> list[tuple[int, int]]:
        """The HBM expert cache may hold ``capacity`` bytes from iteration ``step`` on (a
        serving workload's shared HBM pool: it shrinks as the KV cache grows and grows back as
        it shrinks). Return the ``(layer, expert)`` pairs to evict so that the rest fits
        (``ready_at``: `GateView.ready_at`); the engine raises `PolicyError` if it does not.
        A policy without a cache keeps nothing: nothing to evict."""
        return []


_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy selectable by ``cls.name`` from YAML and the CLI."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"policy name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available_policies() -> dict[str, type[Policy]]:
    """Registered policies by name (importing the built-in ones first)."""
    _import_builtin_policies()
    return dict(sorted(_REGISTRY.items()))


def _import_builtin_policies() -> None:
    """Import every module of ``sim.policies`` once: each registers its policies."""
    import importlib
    import pkgutil

    import sim.policies as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"sim.policies.{info.name}")


def make_policy(name: str, params: dict[str, Any] | None = None, where: str = "policy") -> Policy:
    """Build a registered policy from YAML-style parameters, validating names and types."""
    registry = available_policies()
    if name not in registry:
        raise UserError(f"{where}: expected one of {', '.join(registry)}, got {name!r}")
    cls = registry[name]
    return cls(build_params(cls.Params, params or {}, where))


def build_params(params_cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate a frozen Params dataclass from a dict, validated by pydantic (strict types,
    ``Literal`` choices, the class's own ``__post_init__`` checks); the first problem is one
    ``where.field: expected X, got Y`` UserError."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of parameters, got {values!r}")
    fields = [f.name for f in dataclasses.fields(params_cls)]
    for key in values:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise UserError(f"{where}.{key}: unknown parameter (known: {known})")
    checked = _validated_fields(params_cls, values, where)
    try:
        return params_cls(**checked)
    except (TypeError, ValueError) as err:  # the class's own __post_init__ checks
        raise UserError(f"{where}: {err}") from None


_MODELS: dict[type, type[BaseModel]] = {}


def _validated_fields(params_cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` checked against the dataclass's annotations by a pydantic model built once
    per class (strict: an int is accepted for a float and becomes one, nothing else converts;
    ``Literal`` choices enforced; other classes by isinstance)."""
    model = _MODELS.get(params_cls)
    if model is None:
        hints = typing.get_type_hints(params_cls)
        fields: dict[str, Any] = {
            f.name: (bounded(hints[f.name]), None) for f in dataclasses.fields(params_cls) if f.init
        }
        model = create_model(
            f"{params_cls.__name__}Check",
            __config__=ConfigDict(
                strict=True, extra="forbid", arbitrary_types_allowed=True, allow_inf_nan=False
            ),
            **fields,
        )
        _MODELS[params_cls] = model
    try:
        checked = model.model_validate(values, strict=True)
    except ValidationError as err:
        raise _params_error(err, values, where) from None
    return {name: getattr(checked, name) for name in values}


PARAM_INT = Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX)]
PARAM_FLOAT = Annotated[float, Field(ge=-MAX_PARAM_FLOAT, le=MAX_PARAM_FLOAT)]


def bounded(hint: Any) -> Any:
    """A parameter's type with the range every number of a policy has: ints within int32,
    floats finite within +-1e15 (a policy's own ``__post_init__`` narrows it further). Unions
    (``int | None``) are bounded member by member."""
    if hint is int:
        return PARAM_INT
    if hint is float:
        return PARAM_FLOAT
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.Union[tuple(bounded(a) for a in args)]  # noqa: UP007
    return hint


def _params_error(err: ValidationError, values: dict[str, Any], where: str) -> UserError:
    """The first problem as one line under ``where`` (the scenario's one-line wording)."""
    from sim.scenario.schema import validation_error_line

    first = err.errors(include_url=False)[0]
    line = str(validation_error_line(err, values))
    return UserError(f"{where}.{line}" if first["loc"] else f"{where}: {line}")
