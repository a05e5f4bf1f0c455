"""One serving run: requests, HBM plan and scheduler set up, the engine run, records made.

`prepare` does every check a serving scenario needs before anything runs (so `moesim validate`
can call it too): the trace's positions, the requests (generated or read from the CSV), their
lengths against the trace, the HBM plan, the scheduler's limits and the policies. `run_serving`
then runs one policy at one top-k on the engine, through a `ServingSource`, and returns the
engine's `RunResult` with the per-request and per-iteration records of the run.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.errors import UserError
from sim.hardware import Hardware, ModelSpec
from sim.serving.memory import HbmPlan, plan_hbm
from sim.serving.metrics import summarize
from sim.serving.requests import RequestSet, make_requests
from sim.serving.routing import SequenceRouting, check_lengths
from sim.serving.scheduler import ITERATION_COLUMNS, Batch, Scheduler, check_fits
from sim.serving.spec import ServingSpec
from sim.trace.routing import RoutingTrace
from sim.units import parse_size

# per_iteration.csv: the scheduler's columns, then the HBM they and the engine hold
PER_ITERATION_COLUMNS = (
    "gpu",
    *ITERATION_COLUMNS,
    "kv_bytes",
    "kv_budget_bytes",
    "expert_cache_bytes",
    "expert_capacity_bytes",
)


@dataclass(frozen=True)
class ServingSetup:
    """What every run of a serving scenario shares: the requests and the HBM plan."""

    spec: ServingSpec
    requests: RequestSet
    wrapped: np.ndarray  # bool per request: its positions wrap around the trace's length
    hbm: HbmPlan


@dataclass(frozen=True)
class ServingRecords:
    """The serving side of one run: requests.csv and per_iteration.csv columns, summary."""

    requests: dict[str, np.ndarray]
    iterations: dict[str, np.ndarray]
    summary: dict[str, float]


def prepare(scenario: Any, trace: RoutingTrace) -> ServingSetup:
    """Check a serving scenario against its trace and build what its runs share. Every
    problem is one UserError line naming the field."""
    spec: ServingSpec = scenario.workload
    topology = scenario.hardware.topology
    if topology.num_gpus > 1 and topology.data_parallel != "replicas":
        raise UserError(
            f"hardware.parallel: expected replicas with a serving workload (each GPU serves the "
            f"requests the router sends it), got {topology.data_parallel}"
        )
    check_positions(trace)
    check_policies(scenario)
    requests = make_requests(spec)
    wrapped = check_lengths(requests, trace.num_steps, spec.wrap)
    hbm = plan_hbm(
        spec.memory,
        spec.scheduler.block_tokens,
        scenario.hardware,
        scenario.model,
        gpu_hbm_bytes(scenario.hardware_doc),
    )
    check_fits(requests, spec.scheduler, hbm.kv_blocks)
    return ServingSetup(spec, requests, wrapped, hbm)


def check_positions(trace: RoutingTrace) -> None:
    """A request walks its sequence's positions in order: the trace's must be consecutive."""
    positions = np.asarray(trace.positions, dtype=np.int64)
    gaps = np.flatnonzero(np.diff(positions) != 1)
    if gaps.size:
        i = int(gaps[0])
        raise UserError(
            f"trace.positions: expected consecutive positions for a serving workload (each "
            f"request walks its sequence's positions in order), got {int(positions[i + 1])} "
            f"after {int(positions[i])}"
        )


def check_policies(scenario: Any) -> None:
    """Oracles and offline bounds read the routing ahead; a serving run's iterations depend
    on arrivals and on the run itself, so there is none to read: refused, naming the entry. A
    policy profiled on another trace (``params.profile``) is online and runs."""
    from sim.policies.base import available_policies

    registry = available_policies()
    for i, spec in enumerate(scenario.policies):
        cls = registry[spec.name]
        profiled = spec.resolved_params.get("profile") is not None  # on another trace: online
        where = spec.where if spec.where != "policies" else f"policies[{i}]"
        shared = scenario.workload.memory.mode == "shared"
        if shared and spec.resolved_params.get("writeback"):
            raise UserError(
                f"{where}.params.writeback: expected false with workload.memory.mode shared (the "
                "shared pool's evictions are not written back), got true"
            )
        # the instance says: a policy that wraps another reads ahead when that one does
        if (
            getattr(spec.build(), "uses_future", getattr(cls, "uses_future", False))
            and not profiled
        ):
            raise UserError(
                f"{where}.name: expected an online policy with a serving workload, got "
                f"{spec.name!r}, which reads the routing ahead (an oracle or offline bound); "
                "serving iterations are formed at run time, so there is no future to read"
            )


def gpu_hbm_bytes(hardware_doc: dict[str, Any]) -> float | None:
    """The GPU's HBM (``hardware.gpu.hbm_capacity``), None when the scenario does not say."""
    value = (hardware_doc.get("gpu") or {}).get("hbm_capacity")
    return None if value is None else parse_size(value, "hardware.gpu.hbm_capacity")


def non_expert_function(hardware: Hardware, model: ModelSpec) -> Callable[[Batch], float]:
    """Seconds of one MoE layer's non-expert work in an iteration: the GPU's constant
    ``non_expert_time`` (plus ``layer_overhead``) when it is set, else the roofline over the
    batch's new tokens and KV lengths; both from `sim.roofline`, as lockstep runs take them."""
    from sim.roofline import constant_non_expert_time, non_expert_time

    constant = constant_non_expert_time(hardware, model)
    if constant is not None:
        return lambda batch: constant
    return lambda batch: non_expert_time(hardware, model, batch.new_tokens, batch.kv_after)


def run_serving(
    setup: ServingSetup,
    trace: RoutingTrace,
    hardware: Hardware,
    model: ModelSpec,
    policy: Any,
    *,
    topk: int,
    cost: Any = None,
    timeline: bool | tuple[int, int] = False,
    progress: Callable[[int], None] | None = None,
    seed: int = 0,
    label: str | None = None,
) -> tuple[Any, ServingRecords]:
    """Run ``policy`` on the serving workload; the engine's result and the serving records.
    With several GPUs (``hardware.num_gpus``) each is a replica with its own scheduler and a
    copy of ``policy``, requests go to them by the workload's router, and they share the MD
    pool. ``progress`` is called with the number of requests newly finished."""
    from sim.engine.simulate import run_engine
    from sim.serving.router import Router
    from sim.serving.source import ServingSource

    spec = setup.spec
    gpus = hardware.topology.num_gpus
    skip = float(getattr(policy, "skip_below", 0.0) or 0.0)
    routing = trace.sequence_routing(topk, wrap=spec.wrap, skip_below=skip)
    kv_blocks = setup.hbm.kv_blocks
    routed = gpus > 1
    schedulers = [
        Scheduler(setup.requests, spec.scheduler, kv_blocks, routed=routed) for _ in range(gpus)
    ]
    router = Router(setup.requests, schedulers, spec.router) if routed else None
    shared = setup.hbm.expert_capacity if setup.hbm.mode == "shared" else None
    source = ServingSource(
        schedulers,
        routing,
        non_expert_function(hardware, model),
        cache_capacity=shared,
        router=router,
    )
    finished = [0]

    def report(_iteration: Any) -> None:
        done = sum(s.finished_count for s in schedulers)
        if progress is not None and done > finished[0]:
            progress(done - finished[0])
        finished[0] = done

    policies = [policy] + [copy.deepcopy(policy) for _ in range(gpus - 1)]  # one per GPU
    result = run_engine(
        source,
        hardware,
        model,
        policies,
        layer_ids=tuple(trace.layer_ids),
        topk=topk,
        cost=cost,
        timeline=timeline,
        progress=None if progress is None else report,  # nobody to tell: no count each time
        seed=seed,
        label=label,
    )
    if not all(s.all_finished for s in schedulers):  # the engine ends when the source does
        raise RuntimeError("serving run ended with unfinished requests")
    owner = np.zeros(len(setup.requests), dtype=np.int64) if router is None else router.gpu_of
    served = records(setup, schedulers, owner, routing, result)
    # the lockstep totals' tokens/s and ms/token assume a fixed batch: the requests' own here
    totals = {
        **result.totals,
        "tokens_per_s": served.summary["output_tokens_per_s"],
        "ms_per_token": 1e3 * served.summary["tpot_mean"],
    }
    return dataclasses.replace(result, totals=totals), served


def records(
    setup: ServingSetup,
    schedulers: list[Scheduler],
    owner: np.ndarray,
    routing: SequenceRouting,
    result: Any,
) -> ServingRecords:
    """requests.csv and per_iteration.csv columns of every GPU's scheduler (each request from
    the GPU that served it, ``owner``), and the summary."""
    req = setup.requests
    n = len(req)
    ids = np.arange(n, dtype=np.int64)

    def by_owner(name: str) -> np.ndarray:
        stacked = np.stack([getattr(s, name) for s in schedulers])
        return stacked[owner, ids]

    requests = {
        "request_id": ids,
        "gpu": owner.copy(),
        "arrival": req.arrival.copy(),
        "admitted": by_owner("admitted"),
        "first_token": by_owner("first_token"),
        "finish": by_owner("finish"),
        "prompt_tokens": req.prompt.copy(),
        "output_tokens": req.output.copy(),
        "preempted": by_owner("preempted"),
        "sequence": routing.sequence_of(ids),
        "wrapped": setup.wrapped.copy(),
        "measured": ids >= setup.spec.warmup,
    }
    hbm = setup.hbm
    parts = []
    for gpu, scheduler in enumerate(schedulers):
        table = scheduler.iteration_table()
        count = len(table["iteration"])
        part: dict[str, np.ndarray] = {"gpu": np.full(count, gpu, dtype=np.int64)}
        part.update(table)
        part["kv_bytes"] = table["kv_blocks"] * hbm.block_bytes
        part["kv_budget_bytes"] = table["kv_budget_blocks"] * hbm.block_bytes
        part["expert_cache_bytes"] = _cache_after_iterations(result, gpu, count)
        part["expert_capacity_bytes"] = np.array(
            [hbm.expert_capacity(int(b)) for b in table["kv_blocks"]], dtype=np.float64
        )
        parts.append(part)
    iterations = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    return ServingRecords(requests, iterations, summarize(requests, iterations, setup.spec.slo))


def _cache_after_iterations(result: Any, gpu: int, iterations: int) -> np.ndarray:
    """GPU ``gpu``'s expert cache bytes after each of its iterations' last gate (the engine's
    per-gate ``cache_bytes``, one row per (iteration, layer), iteration-major per GPU)."""
    mine = np.asarray(result.per_layer["gpu"]) == gpu
    cache = np.asarray(result.per_layer["cache_bytes"], dtype=np.float64)[mine]
    if not iterations:
        return np.zeros(0)
    return cache.reshape(iterations, -1)[:, -1].copy()
