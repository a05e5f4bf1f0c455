"""Move compute instead of weights: a miss may run where its weights already are.

Two places can compute an expert without moving its weights to the GPU:

* the host CPU, for weights in host DRAM (Fiddler, arXiv 2402.07033): only the tokens'
  activations cross PCIe, there and back (``Path.HOST``);
* the MD pool's near-data engine (MoNDE, arXiv 2405.18832): the activations cross md_link
  (``Path.MD_NEAR``).

For few tokens, computing there beats moving megabytes of weights; for many, the weak compute
loses. `ComputePlacement` estimates, per miss the rule would fetch, when each option would
finish (FIFO slots on the link, a serial queue per compute unit, the cost model's times) and
moves the miss to the soonest. It only estimates: the engine times what actually happens.
"""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.policies.base import (
    GPU_FETCH_PATHS,
    IN_PLACE_PATHS,
    LINK_OF_PATH,
    GateView,
    Path,
    PolicyContext,
    allowed_paths,
)


class SlotEstimate:
    """FIFO estimate of a link's concurrent slots: each job takes the slot that frees first.
    Used by policies to *predict* finish times; the engine computes the real ones."""

    def __init__(self, free_at: np.ndarray | float, now: float) -> None:
        self.free = np.maximum(np.atleast_1d(np.asarray(free_at, dtype=np.float64)), now)

    def push(self, duration: float) -> float:
        """Queue a job of ``duration`` s; return when it ends."""
        i = int(np.argmin(self.free))
        self.free[i] += duration
        return float(self.free[i])

    def peek(self, duration: float) -> float:
        """When a job of ``duration`` s would end if queued now (without queueing it)."""
        return float(self.free.min() + duration)


def in_place_options(ctx: PolicyContext) -> tuple[Path, ...]:
    """The compute-where-the-weights-are paths this scenario allows (engine's rules)."""
    reasons = allowed_paths(ctx.hardware)
    return tuple(p for p in IN_PLACE_PATHS if not reasons[p])


class ComputePlacement:
    """Per gate: turn fetches into in-place compute where that is estimated to finish sooner."""

    def __init__(self, ctx: PolicyContext, where: str) -> None:
        self.ctx = ctx
        self.options = in_place_options(ctx)
        if not self.options:
            raise UserError(
                f"{where}: compute_near needs hardware.host_compute (placement host/both) or "
                "hardware.md_compute with md_mode near-data, got neither"
            )

    def reassign(self, view: GateView, paths: np.ndarray) -> np.ndarray:
        """``paths`` with some fetch misses moved to HOST / MD_NEAR. Misses are considered
        fewest tokens first: they gain most from not moving weights."""
        fetch = ~view.cached & ((paths == Path.PCIE) | (paths == Path.MD_FETCH))
        if not fetch.any():
            return paths
        out = paths.copy()
        links = {
            name: SlotEstimate(view.link_free_at[name], view.now) for name in ("pcie", "md_link")
        }
        unit_free = {p: view.now for p in self.options}  # each unit runs its experts serially
        for i in np.flatnonzero(fetch)[np.argsort(view.tokens[fetch], kind="stable")]:
            fetch_path = Path(int(paths[i]))
            e, t = view.experts[i : i + 1], view.tokens[i : i + 1]
            transfer = self._transfer(view, fetch_path, e)
            gpu = float(self.ctx.cost.gpu_compute_time(view.step, view.layer, e, t)[0])
            best, best_end, best_start = (
                fetch_path,
                links[LINK_OF_PATH[fetch_path]].peek(transfer) + gpu,
                0.0,
            )
            for option in self.options:
                act = float(
                    self.ctx.cost.activation_time(LINK_OF_PATH[option], view.step, view.layer, e, t)
                )
                run = self._compute(view, option, e, t)
                start = max(unit_free[option], view.now + act / 2)  # activations in, then run
                end = start + run + act / 2  # and results back
                if end < best_end:
                    best, best_end, best_start = option, end, start + run
            if best in GPU_FETCH_PATHS:
                links[LINK_OF_PATH[best]].push(transfer)
            else:
                out[i] = int(best)
                unit_free[best] = best_start
        return out

    def _transfer(self, view: GateView, path: Path, e: np.ndarray) -> float:
        return float(self.ctx.cost.transfer_time(LINK_OF_PATH[path], view.step, view.layer, e)[0])

    def _compute(self, view: GateView, path: Path, e: np.ndarray, t: np.ndarray) -> float:
        cost = self.ctx.cost
        if path is Path.HOST:
            return float(cost.host_compute_time(view.step, view.layer, e, t)[0])
        return float(cost.near_compute_time(view.step, view.layer, e, t)[0])
