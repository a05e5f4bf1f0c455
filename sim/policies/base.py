"""The contract between the engine and placement policies.

At every gate (one MoE layer of one decode step, once the router has run) the engine shows the
policy a read-only `GateView` and gets back a `GateDecision`:

* which path each *non-cached* active expert takes (`Path`): fetched to the GPU over PCIe,
  fetched over the disaggregated link, run next to the MD pool (near data), or run on the host;
* which of the experts it fetches to the GPU stay in the HBM expert cache afterwards (admit);
* which cached experts to evict (before anything is admitted);
* which experts of later layers to prefetch into the cache now (they queue on the link behind
  this layer's demand transfers and so overlap with this layer's compute).

Experts already in the cache (or in flight to it) are hits; the engine handles them. The engine
enforces the rules (cache bytes never above capacity; a path must exist in the scenario's
placement and MD mode) and raises `PolicyError` when a policy breaks them: that is a bug in the
policy, not a user error.

A policy is a small class with a frozen `Params` dataclass, registered by name with
`@register_policy`. See docs/policies.md for how to add one.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from sim.errors import UserError
from sim.hardware import Hardware, ModelSpec


class Path(enum.IntEnum):
    """How an active expert is served at a gate."""

    HIT = 0  # in the HBM cache (or in flight to it): computed on the GPU
    PCIE = 1  # weights host -> GPU over PCIe, computed on the GPU
    MD_FETCH = 2  # weights MD pool -> GPU over md_link, computed on the GPU
    MD_NEAR = 3  # computed next to the MD pool; activations cross md_link both ways
    HOST = 4  # computed on the host CPU; activations cross PCIe both ways (Fiddler-style)


GPU_FETCH_PATHS = (Path.PCIE, Path.MD_FETCH)  # weights come to the GPU
IN_PLACE_PATHS = (Path.HOST, Path.MD_NEAR)  # computed where the weights are
# the link each non-hit path uses: weights for a fetch, activations for in-place compute
LINK_OF_PATH = {
    Path.PCIE: "pcie",
    Path.MD_FETCH: "md_link",
    Path.HOST: "pcie",
    Path.MD_NEAR: "md_link",
}
# the path of a weight fetch (demand or prefetch) over each link
FETCH_PATH_OF_LINK = {LINK_OF_PATH[p]: p for p in GPU_FETCH_PATHS}


def allowed_paths(hardware: Hardware) -> dict[Path, str]:
    """Each non-hit path mapped to '' when the scenario allows it, else the reason it does not.

    * PCIE and HOST need the experts in host DRAM (placement "host" or "both"); HOST also
      needs ``host_compute``.
    * MD_FETCH needs them in the MD pool (placement "md" or "both") and md_mode "fetch".
    * MD_NEAR needs them in the MD pool, md_mode "near-data" and ``md_compute``.
    """
    in_host = hardware.placement in ("host", "both")
    in_md = hardware.placement in ("md", "both")
    place = f"placement is {hardware.placement!r}"
    mode = f"md_mode is {hardware.md_mode!r}"
    reasons = {
        Path.PCIE: "" if in_host else f"{place} (no experts in host memory)",
        Path.HOST: ""
        if in_host and hardware.host_compute is not None
        else (f"{place} (no experts in host memory)" if not in_host else "no host_compute"),
        Path.MD_FETCH: ""
        if in_md and hardware.md_mode == "fetch"
        else (place if not in_md else mode),
        Path.MD_NEAR: ""
        if in_md and hardware.md_mode == "near-data" and hardware.md_compute is not None
        else (
            place
            if not in_md
            else (mode if hardware.md_mode != "near-data" else "no md_compute in the scenario")
        ),
    }
    return reasons


RUN_KINDS = ("online", "oracle", "bound")


class PolicyError(RuntimeError):
    """A policy broke the engine's rules (over capacity, impossible path, ...): a policy bug."""


class CostModel(Protocol):
    """Per-expert costs in seconds. The roofline/link model implements it from `Hardware` and
    `ModelSpec`; a cost table (measured or from a cycle-accurate simulator) may override any of
    it. Arrays are aligned with ``experts``; ``step``/``layer`` are trace indices."""

    def transfer_time(self, link: str, step: int, layer: int, experts: np.ndarray) -> np.ndarray:
        """Time one weight transfer occupies one slot of ``link`` (latency included)."""
        ...

    def gpu_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray: ...

    def near_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray: ...

    def host_compute_time(
        self, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> np.ndarray: ...

    def activation_time(
        self, link: str, step: int, layer: int, experts: np.ndarray, tokens: np.ndarray
    ) -> float:
        """Link time to move the activations of these experts' tokens there and back."""
        ...


@dataclass(frozen=True)
class PolicyContext:
    """What a policy is given once, before the run. ``counts`` is the whole routing
    (``[steps, layers, num_experts]`` tokens per expert under the run's top-k): online
    policies must only read rows up to the current gate; policies that declare
    ``uses_future = True`` (oracles, offline bounds) may read ahead."""

    hardware: Hardware
    model: ModelSpec
    counts: np.ndarray
    layer_ids: tuple[int, ...]
    topk: int
    cost: CostModel
    seed: int = 0

    @property
    def num_steps(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.counts.shape[1])

    @property
    def cache_slots(self) -> int:
        """How many experts fit in the HBM cache."""
        return int(self.hardware.hbm.capacity // self.model.expert_bytes)


@dataclass(frozen=True)
class GateView:
    """Read-only state at one gate. Arrays must not be modified."""

    step: int  # step index in the trace
    layer: int  # layer index (0 .. num_layers-1); layer id = ctx.layer_ids[layer]
    now: float  # simulated time of the gate, s
    experts: np.ndarray  # active expert ids, most tokens first, ties by lower id
    tokens: np.ndarray  # tokens routed to each of them
    cached: np.ndarray  # bool, aligned with experts: in the cache or in flight to it
    ready_at: np.ndarray  # float [num_layers, num_experts]: when each cached expert is (was)
    #                       in HBM; +inf where not cached
    cache_bytes: float  # bytes of the cache in use (in flight included)
    link_free_at: dict[str, np.ndarray]  # per link: time each slot becomes free


@dataclass
class GateDecision:
    """A policy's answer at one gate. ``paths`` and ``admit`` are aligned with
    ``GateView.experts``; entries for cached experts are ignored (they are hits)."""

    paths: np.ndarray
    admit: np.ndarray | None = None  # bool: keep this fetched expert in the cache
    evict: list[tuple[int, int]] = field(default_factory=list)  # (layer index, expert id)
    prefetch: list[tuple[int, int, str]] = field(default_factory=list)  # (layer, expert, link)


class Policy:
    """Base class: subclasses set ``name``, ``Params`` and implement ``decide``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line: the idea and where it comes from
    uses_future: ClassVar[bool] = False  # True for oracles and offline bounds
    is_bound: ClassVar[bool] = False  # True for offline bounds (reported as such)

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()
        self.ctx: PolicyContext | None = None

    def bind(self, ctx: PolicyContext) -> None:
        """Called once before the run; reset any state here (a policy object may be reused)."""
        self.ctx = ctx

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
    """Instantiate a frozen Params dataclass from a dict, with one-line errors per field."""
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping of parameters, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    for key in values:
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise UserError(f"{where}.{key}: unknown parameter (known: {known})")
    kwargs = {}
    for key, value in values.items():
        kwargs[key] = _coerce(fields[key], value, f"{where}.{key}")
    try:
        return params_cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from None


def _coerce(f: dataclasses.Field, value: Any, where: str) -> Any:
    """Check a parameter against its annotation (int, float, bool, str, Literal-like choices)."""
    annotation = str(f.type)
    checks: dict[str, Callable[[Any], bool]] = {
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
    }
    base = annotation.replace(" | None", "")
    if value is None and "None" in annotation:
        return None
    if base in checks:
        if not checks[base](value):
            raise UserError(f"{where}: expected {base}, got {value!r}")
        return float(value) if base == "float" else value
    return value
