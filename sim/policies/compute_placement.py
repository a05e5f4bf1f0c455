"""Move compute instead of weights: a miss may run where its weights already are.

Two places can compute an expert without moving its weights to the GPU:

* the host CPU, for an expert whose weights are in host DRAM (Fiddler, arXiv 2402.07033): only
  the tokens' activations cross PCIe, there and back (``Path.HOST``);
* the MD pool's near-data engine (MoNDE): the activations cross md_link (``Path.MD_NEAR``).

For few tokens, computing there beats moving megabytes of weights; for many, the weak compute
loses. `ComputePlacement` estimates, per miss, when each option would finish (FIFO slots on the
link, one queue per compute unit, the cost model's times) and moves the miss when computing in
place finishes sooner. It only estimates: the engine times what actually happens.
"""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.policies.base import GateView, Path, PolicyContext

# a fetch over this link can instead be computed here (weights are at the link's far end)
_IN_PLACE = {Path.PCIE: Path.HOST, Path.MD_FETCH: Path.MD_NEAR}
_LINK = {Path.PCIE: "pcie", Path.MD_FETCH: "md_link", Path.HOST: "pcie", Path.MD_NEAR: "md_link"}


class SlotEstimate:
    """FIFO estimate of a link's (or compute unit's) concurrent slots: each job takes the slot
    that frees first. Used by policies to *predict* finish times; the engine does the real ones."""

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


def in_place_paths(ctx: PolicyContext) -> dict[Path, Path]:
    """The fetch -> compute-in-place moves this hardware allows."""
    hw = ctx.hardware
    moves: dict[Path, Path] = {}
    if hw.host_compute is not None and hw.placement in ("host", "both"):
        moves[Path.PCIE] = Path.HOST
    if hw.md_compute is not None and hw.md_mode == "near-data" and hw.placement in ("md", "both"):
        moves[Path.MD_FETCH] = Path.MD_NEAR
    return moves


class ComputePlacement:
    """Per gate: turn fetches into in-place compute where that is estimated to finish sooner."""

    def __init__(self, ctx: PolicyContext, where: str) -> None:
        self.ctx = ctx
        self.moves = in_place_paths(ctx)
        if not self.moves:
            raise UserError(
                f"{where}: compute_near needs hardware.host_compute (placement host/both) or "
                "hardware.md_compute with md_mode near-data, got neither"
            )

    def reassign(self, view: GateView, paths: np.ndarray) -> np.ndarray:
        """``paths`` with some fetch misses moved to HOST / MD_NEAR. Misses are considered
        fewest tokens first: they gain most from not moving weights."""
        cost = self.ctx.cost
        out = paths.copy()
        candidates = [
            i
            for i in np.argsort(view.tokens, kind="stable")
            if not view.cached[i] and Path(int(paths[i])) in self.moves
        ]
        if not candidates:
            return out
        links = {
            name: SlotEstimate(view.link_free_at.get(name, np.zeros(1)), view.now)
            for name in ("pcie", "md_link")
        }
        units = {Path.HOST: SlotEstimate(0.0, view.now), Path.MD_NEAR: SlotEstimate(0.0, view.now)}
        # fetches that stay fetches occupy their link first (they are queued in view order)
        moving = set(candidates)
        staying = [i for i in range(len(paths)) if not view.cached[i] and i not in moving]
        for i in staying:
            path = Path(int(paths[i]))
            if path in (Path.PCIE, Path.MD_FETCH):
                links[_LINK[path]].push(self._fetch_time(view, path, i))
        for i in candidates:
            fetch_path = Path(int(paths[i]))
            near_path = self.moves[fetch_path]
            e, t = view.experts[i : i + 1], view.tokens[i : i + 1]
            fetch_end = links[_LINK[fetch_path]].peek(self._fetch_time(view, fetch_path, i))
            fetch_end += float(cost.gpu_compute_time(view.step, view.layer, e, t)[0])
            act = float(cost.activation_time(_LINK[near_path], view.step, view.layer, e, t))
            near_compute = self._near_compute(view, near_path, e, t)
            # activations in, compute on the (serial) unit, activations out
            start = max(float(units[near_path].free.min()), view.now + act / 2)
            near_end = start + near_compute + act / 2
            if near_end < fetch_end:
                out[i] = int(near_path)
                units[near_path].free[:] = start + near_compute
            else:
                links[_LINK[fetch_path]].push(self._fetch_time(view, fetch_path, i))
        return out

    def _fetch_time(self, view: GateView, path: Path, i: int) -> float:
        e = view.experts[i : i + 1]
        return float(self.ctx.cost.transfer_time(_LINK[path], view.step, view.layer, e)[0])

    def _near_compute(self, view: GateView, path: Path, e: np.ndarray, t: np.ndarray) -> float:
        cost = self.ctx.cost
        if path is Path.HOST:
            return float(cost.host_compute_time(view.step, view.layer, e, t)[0])
        return float(cost.near_compute_time(view.step, view.layer, e, t)[0])
