"""The discrete-event engine: iteration sources drive expert transfers and compute on GPUs.

simpy keeps the clock. `run_engine` starts one process per GPU (`sim.engine.gpu.GpuProcess`),
each pulling its iterations from an `IterationSource` and running them layer by layer;
`simulate` is the lockstep run of a routing trace (`LockstepSource`): today's one GPU decoding
a fixed batch. The full model, every rule and every metric: docs/engine.md.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sim.contract import CostModel, GatePolicy, PolicyContext
from sim.engine.clock import Clock
from sim.engine.cost import RooflineCost
from sim.engine.gpu import GpuProcess
from sim.engine.machine import Machine
from sim.engine.results import (
    RunResult,
    collect_gates,
    collect_steps,
    combined_totals,
    compute_totals,
)
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
    record_rates: bool = False,
) -> RunResult:
    """Replay ``trace`` under ``policy`` on ``hardware``; returns per-layer/step metrics.

    ``topk`` cuts the trace's routing to k' experts per token (default ``model.top_k``) with
    the project's one top-k selection. A policy with ``skip_below`` > 0 makes each token skip
    its chosen experts whose renormalised score is below it (never its top-1): the demand
    shrinks before the policy sees it (`RoutingTrace.demand`). ``progress`` is called with the
    number of steps newly completed (tqdm's ``update``). ``label`` defaults to the policy's name. ``timeline``: True
    records every interval; ``(start, stop)`` only those of steps ``start .. stop-1`` (a window
    costs what the recorded steps cost; the other steps take the fast path). With several GPUs
    (``hardware.topology``) each gets a copy of ``policy`` and the trace's batch (replicas) or
    a share of its sequences (split). ``record_rates``: see `run_engine`.
    """
    k = model.top_k if topk is None else int(topk)
    if trace.num_experts != model.num_experts:
        raise UserError(
            f"model.num_experts: expected the trace's {trace.num_experts} experts, "
            f"got {model.num_experts}"
        )
    if not 1 <= k <= trace.num_experts:
        raise UserError(f"topk: expected 1..{trace.num_experts}, got {k}")
    traces = gpu_traces(trace, hardware)
    skip = float(getattr(policy, "skip_below", 0.0) or 0.0)
    demands: dict[int, Any] = {}
    demand = [demands.setdefault(id(t), t.demand(k, skip)) for t in traces]
    # per step: the constant gpu.non_expert_time, or the roofline (sim/roofline.py)
    non_expert = [
        step_non_expert_times(hardware, model, t.num_seqs, t.positions)[:, None] for t in traces
    ]
    counts = [d.counts for d in demand]
    exchange = None
    if hardware.topology.data_parallel == "expert" and hardware.topology.num_gpus > 1:
        if skip > 0:
            raise UserError(f"policy {policy.name}: skip_below with expert parallelism: not yet")
        counts, exchange, demand = expert_parallel(trace, k, hardware.topology.num_gpus)
    source = LockstepSource(counts, trace.positions, non_expert, demand=demand, exchange=exchange)
    source.skip_below = skip
    policies = [policy] + [copy.deepcopy(policy) for _ in traces[1:]]  # one per GPU, unbound
    return run_engine(
        source,
        hardware,
        model,
        policies,
        layer_ids=tuple(trace.layer_ids),
        topk=k,
        cost=cost,
        timeline=timeline,
        progress=_per_iterations(progress, source.steps),
        seed=seed,
        label=label,
        tokens_per_iteration=[t.num_seqs for t in traces],
        record_rates=record_rates,
    )


def gpu_traces(trace: RoutingTrace, hardware: Hardware) -> list[RoutingTrace]:
    """Whose tokens each GPU holds (its attention, its non-expert work): the whole batch on
    every replica, or (``split``, ``expert``) the batch's sequences divided into contiguous
    shares, as equal as they can be."""
    topo = hardware.topology
    if topo.num_gpus == 1 or topo.data_parallel == "replicas":
        return [trace] * topo.num_gpus
    if topo.num_gpus > trace.num_seqs:
        raise UserError(
            f"hardware.num_gpus: expected at most the batch's {trace.num_seqs} sequences when "
            f"data_parallel is split, got {topo.num_gpus}"
        )
    return [trace.select(seqs=share.tolist()) for share in seq_shares(trace, topo.num_gpus)]


def seq_shares(trace: RoutingTrace, num_gpus: int) -> list[np.ndarray]:
    """Each GPU's sequences of the batch: contiguous shares, as equal as they can be."""
    return np.array_split(np.arange(trace.num_seqs), num_gpus)


def expert_parallel(
    trace: RoutingTrace, k: int, num_gpus: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[None]]:
    """Expert parallelism over ``num_gpus`` GPUs: expert e lives on GPU e mod N and sequence s
    on the GPU of its share (`seq_shares`, as in `gpu_traces`). Per GPU: the whole batch's
    token counts of its own experts (``[steps, layers, E]``, 0 elsewhere), and per step and
    layer the tokens that come into it from other GPUs: dispatched to its experts, and its own
    tokens' results back from other GPUs' experts (``[steps, layers, 2]``)."""
    ids = trace.topk(k)  # [steps, layers, seqs, k]
    counts = trace.expert_token_counts(k)
    owner = np.arange(trace.num_experts) % num_gpus
    home = np.zeros(trace.num_seqs, dtype=np.int64)
    for g, share in enumerate(seq_shares(trace, num_gpus)):
        home[share] = g
    at = owner[ids]  # the GPU of each (token, expert) pair
    seq_home = home[None, None, :, None]
    per_counts, per_exchange = [], []
    for g in range(num_gpus):
        mine = owner == g
        per_counts.append(np.where(mine[None, None, :], counts, 0))
        dispatch = ((at == g) & (seq_home != g)).sum(axis=(2, 3))
        combine = ((at != g) & (seq_home == g)).sum(axis=(2, 3))
        per_exchange.append(np.stack([dispatch, combine], axis=-1).astype(np.float64))
    return per_counts, per_exchange, [None] * num_gpus


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
    tokens_per_iteration: int | Sequence[int] = 1,
    record_rates: bool = False,
) -> RunResult:
    """Run ``source``'s iterations on ``hardware``'s GPUs, one policy instance per GPU
    (``policies[g]`` serves GPU ``g``; each GPU has its own HBM cache). ``timeline``: True,
    False or a window of iterations ``(start, stop)`` to record (as `simulate`).
    ``progress`` is called with each iteration that ends. ``tokens_per_iteration``: output
    tokens an iteration produces (lockstep: the batch's sequences), one number or one per GPU,
    for tokens/s. ``record_rates``: keep each network link's total rate over time
    (`RunResult.rates`, for checks). See docs/engine.md ("Iteration sources") for writing a
    source."""
    if not model.expert_bytes > 0:
        raise UserError(f"model.expert_bytes: expected a size > 0, got {model.expert_bytes}")
    num_gpus = hardware.topology.num_gpus
    if len(policies) != num_gpus:
        raise ValueError(f"expected one policy per GPU ({num_gpus}), got {len(policies)}")
    if len({id(p) for p in policies}) != len(policies):
        raise ValueError("each GPU needs its own policy instance")
    cost = cost if cost is not None else RooflineCost(hardware, model)
    for policy in policies:
        _check_skip(policy, source)
    env = Clock(initial_time=0.0)
    machine = Machine.build(hardware, env)
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
        gpus.append(
            GpuProcess(
                g,
                ctx,
                policy,
                machine.routes[g],
                timeline=timeline,
                alone=machine.alone[g],
                network=machine.network,
                near_unit=machine.near_unit,
                barrier=machine.barrier,
            )
        )

    def ended(gpu: int, iteration: Iteration, start: float, end: float) -> None:
        source.iteration_end(gpu, iteration, start, end)
        if progress is not None:
            progress(iteration)

    for gpu in gpus:
        env.process(gpu.run(env, source, ended))
    env.run()
    tokens = (
        [int(tokens_per_iteration)] * num_gpus
        if isinstance(tokens_per_iteration, int)
        else [int(t) for t in tokens_per_iteration]
    )
    return _result(gpus, machine, label or policies[0].name, tokens, record_rates)


def _check_skip(policy: GatePolicy, source: IterationSource) -> None:
    """A policy that makes tokens skip low-score experts needs a source that built its
    iterations that way (``source.skip_below``, `sim.precision.gate_demand`): otherwise the
    run would silently keep every expert."""
    want = float(getattr(policy, "skip_below", 0.0) or 0.0)
    have = float(getattr(source, "skip_below", 0.0) or 0.0)
    if want != have:
        raise UserError(
            f"policy {policy.name}: expected an iteration source whose tokens skip experts "
            f"below a renormalised score of {want:g} (source.skip_below), got one that skips "
            f"below {have:g}"
        )


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
    gpus: list[GpuProcess], machine: Machine, label: str, tokens: list[int], rates: bool
) -> RunResult:
    """The run's columns (every GPU's rows, GPU by GPU), totals and link figures.

    With several GPUs the step is the slowest GPU's: step ``s`` of the run takes the longest
    of the GPUs' step ``s`` latencies (they decode in lockstep: a batch's next token needs every
    replica's or shard's), and the run ends when the last GPU does; counts and bytes are the
    GPUs' sums. Each GPU's own totals are in ``per_gpu``."""
    layers = gpus[0].layers
    parts = []
    for gpu, n in zip(gpus, tokens, strict=True):
        per_layer, extra = collect_gates(gpu.records)
        per_step = collect_steps(per_layer, extra, layers)
        parts.append((per_layer, per_step, compute_totals(per_layer, per_step, n)))
    if len(gpus) == 1:
        per_layer, per_step, totals = parts[0]
        per_gpu = [{"gpu": 0, **totals}]
    else:
        per_layer = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
        per_step = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
        totals = combined_totals([p[0] for p in parts], [p[1] for p in parts], sum(tokens))
        per_gpu = [{"gpu": g, **p[2]} for g, p in enumerate(parts)]
    links, usage = machine.link_stats(totals["total_time"])
    policy = gpus[0].policy
    params = policy.params
    events = [e for gpu in gpus if gpu.events is not None for e in gpu.events]
    return RunResult(
        policy=policy.name,
        label=label,
        per_layer=per_layer,
        per_step=per_step,
        links=links,
        totals=totals,
        params=dataclasses.asdict(params) if dataclasses.is_dataclass(params) else {},
        timeline=tuple(events) if gpus[0].events is not None else None,
        per_gpu=per_gpu,
        rates={name: tuple(link.history or ()) for name, link in machine.network_links.items()}
        if rates
        else {},
        link_usage=usage,
        engine={
            "gates": float(len(per_layer["t_end"])),
            "network_transfers": float(sum(len(r.finished) for r in machine.network_routes())),
            "network_events": float(machine.network.events if machine.network else 0),
            "rerates": float(machine.network.rerates if machine.network else 0),
            "md_compute_busy": machine.near_unit.busy if machine.near_unit else 0.0,
        },
    )
