"""The discrete-event engine: iteration sources drive expert transfers and compute on GPUs.

simpy keeps the clock. `run_engine` starts one process per GPU (`sim.engine.gpu.GpuProcess`),
each pulling its iterations from an `IterationSource` and running them layer by layer;
`simulate` is the lockstep run of a routing trace (`LockstepSource`): today's one GPU decoding
a fixed batch. The full model, every rule and every metric: docs/engine.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from sim.contract import ROUTES, CostModel, GatePolicy, PolicyContext
from sim.engine.clock import Clock
from sim.engine.cost import RooflineCost
from sim.engine.gpu import GpuProcess
from sim.engine.links import FifoLink
from sim.engine.results import RunResult, collect_gates, collect_steps, compute_totals
from sim.engine.source import Iteration, IterationSource, LockstepSource
from sim.errors import UserError
from sim.hardware import Hardware, ModelSpec
from sim.roofline import step_non_expert_times
from sim.trace.routing import RoutingTrace


def simulate(
    trace: RoutingTrace,
    hardware: Hardware,
    model: ModelSpec,
    policy: GatePolicy,
    *,
    topk: int | None = None,
    cost: CostModel | None = None,
    timeline: bool | tuple[int, int] = False,
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
    label: str | None = None,
) -> RunResult:
    """Replay ``trace`` under ``policy`` on ``hardware``; returns per-layer/step metrics.

    ``topk`` cuts the trace's routing to k' experts per token (default ``model.top_k``) with
    the project's one top-k selection. A policy with ``skip_below`` > 0 makes each token skip its chosen experts whose renormalised score is below it (never its
    top-1): the demand shrinks before the policy sees it (`RoutingTrace.demand`). ``progress`` is called with the number of steps newly
    completed (tqdm's ``update``). ``label`` defaults to the policy's name. ``timeline``: True
    records every interval; ``(start, stop)`` only those of steps ``start .. stop-1`` (a window
    costs what the recorded steps cost; the other steps take the fast path).
    """
    k = model.top_k if topk is None else int(topk)
    if trace.num_experts != model.num_experts:
        raise UserError(
            f"model.num_experts: expected the trace's {trace.num_experts} experts, "
            f"got {model.num_experts}"
        )
    if not 1 <= k <= trace.num_experts:
        raise UserError(f"topk: expected 1..{trace.num_experts}, got {k}")
    skip = float(getattr(policy, "skip_below", 0.0) or 0.0)
    demand = trace.demand(k, skip)
    # per step: the constant gpu.non_expert_time, or the roofline (sim/roofline.py)
    non_expert = step_non_expert_times(hardware, model, trace.num_seqs, trace.positions)
    source = LockstepSource(demand.counts, trace.positions, non_expert[:, None], demand=demand)
    return run_engine(
        source,
        hardware,
        model,
        [policy],
        layer_ids=tuple(trace.layer_ids),
        topk=k,
        cost=cost,
        timeline=timeline,
        progress=_per_iterations(progress, source.steps),
        seed=seed,
        label=label,
        tokens_per_iteration=trace.num_seqs,
    )


def run_engine(
    source: IterationSource,
    hardware: Hardware,
    model: ModelSpec,
    policies: Sequence[GatePolicy],
    *,
    layer_ids: tuple[int, ...],
    topk: int,
    cost: CostModel | None = None,
    timeline: bool | tuple[int, int] = False,
    progress: Callable[[Iteration], None] | None = None,
    seed: int = 0,
    label: str | None = None,
    tokens_per_iteration: int = 1,
) -> RunResult:
    """Run ``source``'s iterations on one GPU per policy instance (``policies[g]`` serves GPU
    ``g``; each GPU has its own HBM cache). ``timeline``: True, False or a window of
    iterations ``(start, stop)`` to record (as `simulate`). ``progress`` is called with each
    iteration that ends. ``tokens_per_iteration``: output tokens an iteration produces (lockstep: the
    batch's sequences), for tokens/s. See docs/engine.md ("Iteration sources") for writing a
    source."""
    if not model.expert_bytes > 0:
        raise UserError(f"model.expert_bytes: expected a size > 0, got {model.expert_bytes}")
    if len(policies) != 1:
        raise ValueError(f"one GPU per run for now, got {len(policies)} policies")
    cost = cost if cost is not None else RooflineCost(hardware, model)
    routes = {name: FifoLink(hardware.link(name)) for name in ROUTES}
    gpus = []
    for g, policy in enumerate(policies):
        ctx = PolicyContext(
            hardware=hardware,
            model=model,
            counts=source.planned_counts(g),
            layer_ids=layer_ids,
            topk=topk,
            cost=cost,
            seed=seed,
            gpu=g,
        )
        policy.bind(ctx)
        gpus.append(GpuProcess(g, ctx, policy, routes, timeline=timeline))

    def ended(gpu: int, iteration: Iteration, start: float, end: float) -> None:
        source.iteration_end(gpu, iteration, start, end)
        if progress is not None:
            progress(iteration)

    env = Clock(initial_time=0.0)
    for gpu in gpus:
        env.process(gpu.run(env, source, ended))
    env.run()
    return _result(gpus, routes, label or policies[0].name, tokens_per_iteration)


def _per_iterations(
    progress: Callable[[int], None] | None, steps: int
) -> Callable[[Iteration], None] | None:
    """tqdm-style ``progress(n)`` about 100 times per run, from per-iteration calls."""
    if progress is None:
        return None
    every = max(1, steps // 100)
    state = {"done": 0, "pending": 0}

    def tick(_iteration: Iteration) -> None:
        state["done"] += 1
        state["pending"] += 1
        if state["done"] % every == 0 or state["done"] == steps:
            progress(state["pending"])
            state["pending"] = 0

    return tick


def _result(
    gpus: list[GpuProcess], routes: dict[str, FifoLink], label: str, tokens: int
) -> RunResult:
    gpu = gpus[0]
    per_layer, extra = collect_gates(gpu.records)
    per_step = collect_steps(per_layer, extra, gpu.layers)
    totals = compute_totals(per_layer, per_step, tokens)
    total_time = totals["total_time"]
    links = {}
    for link in routes.values():
        busy = link.busy / link.channels
        # a prefetch may still be in flight when the last layer ends
        horizon = max(total_time, float(link.free_at.max()))
        links[link.name] = {
            "busy": busy,
            "bytes": link.bytes,
            "utilisation": busy / horizon if horizon > 0 else 0.0,
            "transfers": float(link.transfers),
        }
    params = gpu.policy.params
    return RunResult(
        policy=gpu.policy.name,
        label=label,
        per_layer=per_layer,
        per_step=per_step,
        links=links,
        totals=totals,
        params=dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {},
        timeline=tuple(gpu.events) if gpu.events is not None else None,
    )
