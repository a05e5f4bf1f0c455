"""Miss-path rules: which path the *misses* of a gate take, for the caching/prefetching policies.

A caching policy decides what stays in HBM; what is not there still has to be served. The rules
reuse the stateless split policies of sim/policies/split.py rather than re-implement them:

* ``seed``: the seed's bandwidth-proportional split (`seed_split_paths`, default constants)
  applied to the misses only (the cache-aware reading: only what must move is split);
* ``balanced``: `balanced_split_paths` (DynaNDE-style finish-time optimum over the misses,
  aware of what is already in HBM and of the links' queues);
* ``pcie``: every miss over PCIe; ``md``: every miss on the scenario's MD path (fetched over
  md_link, or run near data in near-data mode).
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from sim.errors import UserError
from sim.policies.base import GateView, Path, PolicyContext, allowed_paths
from sim.policies.split import (
    BalancedSplitParams,
    SeedSplitParams,
    balanced_split_paths,
    md_path,
    seed_h_table,
    seed_split_paths,
    single_path,
)

MissPath = Literal["seed", "balanced", "pcie", "md"]
MISS_PATH_RULES = get_args(MissPath)


def check_rule(rule: str) -> None:
    """ValueError on a name that is not a rule (Params check it by their ``MissPath`` type)."""
    if rule not in MISS_PATH_RULES:
        raise ValueError(f"miss_path: expected one of {', '.join(MISS_PATH_RULES)}, got {rule!r}")


class MissPathRule:
    """Paths for a gate's misses (entries for cached experts are ignored by the engine)."""

    def __init__(self, rule: str) -> None:
        check_rule(rule)
        self.rule = rule
        self._ctx: PolicyContext | None = None

    def bind(self, ctx: PolicyContext, where: str) -> None:
        """Prepare for a run; a rule needing a path this scenario lacks is a UserError."""
        self._md = md_path(ctx.hardware)
        needs = {"seed": (Path.PCIE, self._md), "pcie": (Path.PCIE,), "md": (self._md,)}
        reasons = allowed_paths(ctx.hardware)
        for path in needs.get(self.rule, ()):
            if reasons[path]:
                raise UserError(
                    f"{where}: miss_path: expected a rule whose paths the hardware allows, "
                    f"got {self.rule!r} ({path.name} impossible: {reasons[path]})"
                )
        self._seed = SeedSplitParams()
        self._h = seed_h_table(self._seed, ctx.hardware, ctx.model.num_experts)
        self._ctx = ctx

    def paths(self, view: GateView) -> np.ndarray:
        """A ``Path`` (int8) per ``view.experts``."""
        if self.rule == "seed":
            return seed_split_paths(view, self._h, self._md, self._seed.order)
        if self.rule == "pcie":
            return single_path(view, Path.PCIE)
        if self.rule == "md":
            return single_path(view, self._md)
        assert self._ctx is not None
        limit = BalancedSplitParams().exhaustive_limit
        return np.asarray(balanced_split_paths(view, self._ctx, limit), dtype=np.int8)

    @property
    def reads_time(self) -> bool:
        """Whether the rule reads the links' queues or the clock (``balanced`` does)."""
        return self.rule == "balanced"

    def plan(self, miss: np.ndarray) -> np.ndarray:
        """`paths` for many gates at once (rows; columns in gate order): ``miss`` marks each
        gate's misses (its active experts not cached); every other entry gets ``HIT``. Not for
        the ``balanced`` rule, which reads the links' queues at the gate."""
        if self.rule == "seed":  # as seed_split_paths: the first H misses (most tokens) on PCIe
            rank = np.cumsum(miss, axis=1, dtype=np.int32)  # 1, 2, ... at the misses
            h = self._h[rank[:, -1]]
            chosen = np.where(rank <= h[:, None], Path.PCIE, self._md)
        elif self.rule in ("pcie", "md"):
            chosen = Path.PCIE if self.rule == "pcie" else self._md
        else:
            raise ValueError(f"miss_path {self.rule!r}: no plan (it reads the links' queues)")
        return np.where(miss, chosen, Path.HIT).astype(np.int8)
