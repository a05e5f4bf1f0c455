"""The contract between the engine and placement policies: the one module both sides import.

`sim.engine` (which times what happens) and `sim.policies` (which decide) both build on this
leaf module and never on each other's internals: it imports nothing from either package.

At every gate (one MoE layer of one iteration of one GPU, once the router has run) the engine
shows the policy a read-only `GateView` and gets back a `GateDecision`:

* which path each *non-cached* active expert takes (`Path`): fetched to the GPU over the host
  route (PCIe), fetched over the MD route, run next to the MD pool (near data), or run on the
  host;
* which of the experts it fetches to the GPU stay in the HBM expert cache afterwards (admit);
* which cached experts to evict (before anything is admitted);
* which experts of later layers to prefetch into the cache now (they queue on the route behind
  this layer's demand transfers and so overlap with this layer's compute);
* optionally, in which precision each transfer moves its expert (`sim.precision`: a tier may
  hold copies in several precisions; by default a transfer moves the tier's highest one), and
  which cached reduced-precision copies to upgrade (fetch again in a higher precision).

Experts already in the cache (or in flight to it) are hits; the engine handles them. The engine
enforces the rules (cache bytes never above capacity; a path must exist in the scenario's
placement and MD mode) and raises `PolicyError` when a policy breaks them: that is a bug in the
policy, not a user error.

**Routes.** A GPU reaches each tier that holds experts outside HBM over a *route*: host DRAM over
``"pcie"`` and the MD pool over ``"md_link"``. Policies name routes by these two keys
(`GateView.link_free_at`, the link of a prefetch, `CostModel.transfer_time`); in the one-GPU
topology each route is the one link of that name. The route's queue is its first link's
transfer slots (see docs/engine.md, "Topology").

The FIFO helpers at the end are the arithmetic of a route's slots, for policies that estimate a
schedule (`fifo_arrivals`) and for the engine that places it.
"""

from __future__ import annotations

import enum
import heapq
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol

import numpy as np

from sim.hardware import Hardware, ModelSpec
from sim.precision import expert_bytes_for_cache


class Path(enum.IntEnum):
    """How an active expert is served at a gate."""

    HIT = 0  # in the HBM cache (or in flight to it): computed on the GPU
    PCIE = 1  # weights host -> GPU over the host route, computed on the GPU
    MD_FETCH = 2  # weights MD pool -> GPU over the MD route, computed on the GPU
    MD_NEAR = 3  # computed next to the MD pool; activations cross the MD route both ways
    HOST = 4  # computed on the host CPU; activations cross the host route both ways (Fiddler)


HOST_ROUTE = "pcie"  # the route from host DRAM to the GPU
MD_ROUTE = "md_link"  # the route from the MD pool to the GPU
ROUTES = (HOST_ROUTE, MD_ROUTE)
GPU_FETCH_PATHS = (Path.PCIE, Path.MD_FETCH)  # weights come to the GPU
IN_PLACE_PATHS = (Path.HOST, Path.MD_NEAR)  # computed where the weights are
# the route each non-hit path uses: weights for a fetch, activations for in-place compute
LINK_OF_PATH = {
    Path.PCIE: HOST_ROUTE,
    Path.MD_FETCH: MD_ROUTE,
    Path.HOST: HOST_ROUTE,
    Path.MD_NEAR: MD_ROUTE,
}
# the path of a weight fetch (demand or prefetch) over each route
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


class PolicyError(RuntimeError):
    """A policy broke the engine's rules (over capacity, impossible path, ...): a policy bug."""


class CostModel(Protocol):
    """Per-expert costs in seconds. The roofline/link model (`sim.engine.cost.RooflineCost`)
    implements it from `Hardware` and `ModelSpec`; a cost table (measured or from a
    cycle-accurate simulator) may override any of it. Arrays are aligned with ``experts``;
    ``step``/``layer`` are the gate's indices; ``link`` is a route name (`ROUTES`)."""

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
    ``uses_future = True`` (oracles, offline bounds) may read ahead. ``gpu`` is the index of the
    GPU this policy instance serves (each GPU has its own)."""

    hardware: Hardware
    model: ModelSpec
    counts: np.ndarray
    layer_ids: tuple[int, ...]
    topk: int
    cost: CostModel
    seed: int = 0
    gpu: int = 0
    slot_bytes: float | None = None  # bytes of one cache slot (None: `expert_bytes`)

    @property
    def num_steps(self) -> int:
        return int(self.counts.shape[0])

    @property
    def open_ended(self) -> bool:
        """True when the run's iterations are not known before it (a serving workload: they
        depend on arrivals and on the run's own latencies): ``counts`` has no rows."""
        return self.num_steps == 0

    @property
    def num_layers(self) -> int:
        return int(self.counts.shape[1])

    @property
    def expert_bytes(self) -> float:
        """Bytes of one expert as this policy caches it: ``slot_bytes`` when set (a policy that
        moves every expert in one precision), else the largest default copy of the tiers in use
        (`sim.precision.expert_bytes_for_cache`: the native ``model.expert_bytes`` unless every
        tier holds only smaller copies)."""
        if self.slot_bytes is not None:
            return self.slot_bytes
        return expert_bytes_for_cache(self.hardware, self.model)

    @property
    def cache_slots(self) -> int:
        """How many experts fit in the HBM cache."""
        return int(self.hardware.hbm.capacity // self.expert_bytes)


@dataclass(frozen=True)
class GateView:
    """Read-only state at one gate. Arrays must not be modified."""

    step: int  # iteration index of this GPU (a trace step in lockstep runs)
    layer: int  # layer index (0 .. num_layers-1); layer id = ctx.layer_ids[layer]
    now: float  # simulated time of the gate, s
    experts: np.ndarray  # active expert ids, most tokens first, ties by lower id
    tokens: np.ndarray  # tokens routed to each of them
    cached: np.ndarray  # bool, aligned with experts: in the cache or in flight to it
    ready_at: np.ndarray  # float [num_layers, num_experts]: when each cached expert is (was)
    #                       in HBM; +inf where not cached
    cache_bytes: float  # bytes of the cache in use (in flight included)
    link_free_at: dict[str, np.ndarray]  # per route: time each slot becomes free
    # [num_layers, num_experts]: the precision of each cached copy (index into
    # ctx.model.precision_names, 0 the native one); -1 where not cached
    precision_at: np.ndarray | None = None
    # by expert id [num_experts]: the gate's router mass per expert (each token's top-k scores
    # renormalised to sum to 1, summed over the expert's tokens) and the largest renormalised
    # score among its tokens; None when the iteration source gives no scores
    gate_mass: np.ndarray | None = None
    top_score: np.ndarray | None = None


@dataclass
class GateDecision:
    """A policy's answer at one gate. ``paths``, ``admit``, ``precision`` and ``upgrade`` are
    aligned with ``GateView.experts``; entries for cached experts are ignored (they are hits,
    served in the cached copy's precision) unless ``upgrade`` says otherwise.

    ``writeback``: the evicted experts are copied back to host DRAM over the host route, each
    one transfer of the evicted copy's size queued behind the gate's demand fetches (exclusive
    caching: the only copy of an expert moves between HBM and host memory, as
    mixtral-offloading swaps them). False: host memory keeps a copy and eviction is free."""

    paths: np.ndarray
    admit: np.ndarray | None = None  # bool: keep this fetched expert in the cache
    evict: list[tuple[int, int]] = field(default_factory=list)  # (layer index, expert id)
    prefetch: list[tuple[int, int, str]] = field(default_factory=list)  # (layer, expert, route)
    writeback: bool = False
    # the precision each non-hit expert is moved (or computed in place) in, by index into
    # ctx.model.precision_names; -1 or None: the default copy of the path's tier
    precision: np.ndarray | None = None
    # bool: fetch this *cached* expert again in ``precision`` over its (fetch) path and serve
    # it from the new copy, which replaces the cached one
    upgrade: np.ndarray | None = None
    # the precision of the prefetches: one for all, or one per entry of ``prefetch``
    prefetch_precision: int | np.ndarray | None = None


class CachePlan(NamedTuple):
    """A caching policy's decisions for consecutive gates at once (`Policy.plan_cache`): what
    ``decide`` would have answered at each, for a policy whose decisions do not depend on time.
    Rows are gates (whole iterations, layer by layer), columns the gate order of
    `GateView.experts` (entries past the gate's active experts are ignored)."""

    paths: np.ndarray  # int8 [gates, E]: HIT for the experts cached at the gate, else the path
    admit: np.ndarray  # bool [gates, E]: fetched experts kept in the cache
    evicted: np.ndarray  # int64 [gates]: how many cached experts the gate evicted
    resident: np.ndarray  # bool [layers, E]: what is cached after the last gate


class GatePolicy(Protocol):
    """What the engine calls on a policy (`sim.policies.base.Policy` implements it)."""

    name: ClassVar[str]
    params: Any

    def bind(self, ctx: PolicyContext) -> None: ...

    def initial_cache(self) -> np.ndarray | None:
        """Called once after ``bind``: bool ``[layers, num_experts]`` of the experts already in
        HBM when the run starts (a static placement loads them before serving; they are never
        transferred during the run), or None for an empty cache. The engine checks the
        capacity."""
        ...

    def decide(self, view: GateView) -> GateDecision: ...

    def on_layer_end(self, view: GateView, end_time: float) -> None: ...


# -- FIFO slots ------------------------------------------------------------------------------
def fifo_arrivals(free: np.ndarray, durations: np.ndarray | float, n: int) -> np.ndarray:
    """Arrival times of ``n`` transfers placed FIFO on slots free at ``free`` (relative times,
    >= 0), without touching any link: what a policy uses to estimate a schedule."""
    if n == 0:
        return np.empty(0)
    if isinstance(durations, float | int):
        start, _slot = fifo_equal(free, float(durations), n)
        return start + float(durations)
    durations = np.asarray(durations, dtype=np.float64)
    start, _slot = fifo_unequal(free, durations)
    return start + durations


def fifo_equal(g: np.ndarray, d: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """FIFO start times (relative) and slots of ``n`` transfers of duration ``d`` on slots free
    at ``g``: slot ``k`` can start transfers at ``g_k, g_k + d, ...``; FIFO takes the ``n``
    smallest of those candidates (a merge of arithmetic sequences; ties to lower slots)."""
    steps = np.arange(n, dtype=np.float64) * d
    if g.size == 1:
        return g[0] + steps, np.zeros(n, dtype=np.intp)
    candidates = (g[:, None] + steps[None, :]).ravel()  # slot-major: ties go to lower slots
    pick = np.argsort(candidates, kind="stable")[:n]
    return candidates[pick], pick // n


def fifo_unequal(g: np.ndarray, durations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`fifo_equal` for unequal durations: each transfer, in order, takes the slot that frees
    first (a heap loop; one slot is a cumulative sum)."""
    n = durations.size
    if g.size == 1:
        ends = g[0] + np.cumsum(durations)
        return ends - durations, np.zeros(n, dtype=np.intp)
    heap = [(float(v), k) for k, v in enumerate(g)]
    heapq.heapify(heap)
    start = np.empty(n)
    slot = np.empty(n, dtype=np.intp)
    for i, d in enumerate(durations.tolist()):
        free, k = heapq.heappop(heap)
        start[i] = free
        slot[i] = k
        heapq.heappush(heap, (free + d, k))
    return start, slot


def serial_ends(ready: np.ndarray, compute: np.ndarray) -> np.ndarray:
    """End times of jobs run one after another from time 0, in the given order, each starting
    when it is ready and the previous one is done: ``f_i = max(f_{i-1}, r_i) + c_i``.

    Closed form: ``f_i = C_i + max(0, max_{j<=i}(r_j - C_{j-1}))`` with ``C`` the cumulative
    compute."""
    cum = np.cumsum(compute)
    lateness = np.maximum.accumulate(np.maximum(ready - (cum - compute), 0.0))
    return cum + lateness
