"""The seed's gating rule: how many of a layer's active experts take the GPU (PCIe) path.

    Expert_GPU = round(BW_PCIe / (BW_MD + BW_PCIe) * Expert_Activ)   # Python round: half to even
    Expert_MD  = Expert_Activ - Expert_GPU
    H          = int(alpha * Expert_GPU)

Vectorised over arrays, bit-identical to the notebook's scalar Python: the ratio is computed
once with Python scalars in the notebook's order, the product in float64 (Python floats are
IEEE doubles), ``np.rint`` rounds half to even like ``round`` on a float, and ``np.trunc``
truncates toward zero like ``int``. ``rounding="ceil"``/``"floor"`` give the variants other
policies use (MoNDE rounds up).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.errors import fail

ROUNDINGS = ("nearest", "ceil", "floor")
_ROUNDERS = {"nearest": np.rint, "ceil": np.ceil, "floor": np.floor}


@dataclass(frozen=True)
class GatingRule:
    """The rule's constants. Only the bandwidth ratio matters, so any one unit will do."""

    bw_pcie: float = 32
    bw_md: float = 512
    alpha: float = 1.0
    rounding: str = "nearest"

    def split(self, expert_activ: Any) -> tuple[Any, Any, Any]:
        """``(expert_gpu, expert_md, h)`` for ``expert_activ`` (see :func:`gpu_share`)."""
        return gpu_share(expert_activ, self.bw_pcie, self.bw_md, self.alpha, self.rounding)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bw_pcie": self.bw_pcie,
            "bw_md": self.bw_md,
            "alpha": self.alpha,
            "rounding": self.rounding,
        }


def gpu_share(
    expert_activ: Any,
    bw_pcie: float,
    bw_md: float,
    alpha: float = 1.0,
    rounding: str = "nearest",
) -> tuple[Any, Any, Any]:
    """Split ``expert_activ`` active experts into ``(expert_gpu, expert_md, h)``.

    ``expert_activ`` is an int or an integer array; the result has the same shape (Python ints
    for a scalar, int64 arrays otherwise).
    """
    _check_constants(bw_pcie, bw_md, alpha, rounding)
    activ = np.asarray(expert_activ)
    if activ.dtype.kind not in "iu":
        raise fail("expert_activ", "integers", f"dtype {activ.dtype}")
    if activ.size and activ.min() < 0:
        raise fail("expert_activ", "non-negative integers", int(activ.min()))
    # The notebook's expression, ratio first, in Python scalars: (BW_PCIe / (BW_MD + BW_PCIe)).
    ratio = bw_pcie / (bw_md + bw_pcie)
    share = ratio * activ.astype(np.float64)
    gpu = _ROUNDERS[rounding](share).astype(np.int64)
    md = activ.astype(np.int64) - gpu
    h = np.trunc(alpha * gpu.astype(np.float64)).astype(np.int64)
    if activ.ndim == 0:
        return int(gpu), int(md), int(h)
    return gpu, md, h


def _check_constants(bw_pcie: float, bw_md: float, alpha: float, rounding: str) -> None:
    for name, value in (("bw_pcie", bw_pcie), ("bw_md", bw_md), ("alpha", alpha)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise fail(name, "a number", repr(value))
        if not math.isfinite(value) or value < 0:
            raise fail(name, "a finite non-negative number", value)
    if bw_pcie + bw_md <= 0:
        raise fail("bw_pcie + bw_md", "a positive total bandwidth", bw_pcie + bw_md)
    if rounding not in ROUNDINGS:
        raise fail("rounding", f"one of {', '.join(ROUNDINGS)}", repr(rounding))
