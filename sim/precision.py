"""Expert precisions and the router's gate mass: what a copy costs, and what a policy gives up.

Two things live here, both shared by the engine, the policies and any iteration source:

* **Copies.** The model lists the precisions an expert can be stored in (`ModelSpec.
  precisions`, index 0 the native one); the hardware says which of them each tier holds
  (`Hardware.copies`). A transfer over a route moves one copy of the tier behind it; unless a
  policy asks for another, the tier's highest precision (its largest copy).
* **Gate mass** (the quality proxy). The router gives each token a probability for each of
  its top-k experts; renormalised over those k they sum to 1, the token's *gate mass*. An
  expert served from a reduced-precision copy *degrades* the mass its tokens give it; an
  expert a token skips *drops* it. `gate_demand` turns per-token routing into what an
  iteration needs per (layer, expert): token counts, kept mass, the largest renormalised score
  of any of its tokens, and the mass dropped per layer. These are proxies for quality, not
  accuracy: they say how much of the router's weight was served below full precision or not
  at all, nothing about what that does to the model's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.hardware import Hardware, ModelSpec

ROUTE_TIER = {"pcie": "host", "md_link": "md"}  # the tier behind each route (sim.contract)


# -- copies ------------------------------------------------------------------------------------
def copy_sizes(model: ModelSpec) -> np.ndarray:
    """Bytes of one expert's copy in each precision (index 0: the native ``expert_bytes``)."""
    return np.array([model.copy_bytes(i) for i in range(len(model.precision_names))])


def tier_copies(hardware: Hardware, model: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The precision indices each tier of the placement holds (native only where
    ``hardware.copies`` says nothing). ValueError for a precision the model lacks."""
    out: dict[str, tuple[int, ...]] = {}
    for tier in hardware.tiers:
        names = hardware.copies.get(tier)
        if names is None:
            out[tier] = (0,)
            continue
        try:
            out[tier] = tuple(model.precision_index(name) for name in names)
        except ValueError as err:
            raise ValueError(f"hardware.copies.{tier}: {err}") from None
    return out


def default_copies(hardware: Hardware, model: ModelSpec) -> dict[str, int]:
    """Per route, the precision a transfer uses unless a policy asks for another: the highest
    precision (largest copy; ties to the lower index) of the tier behind it. Routes to a tier
    outside the placement map to 0 (they are never used)."""
    sizes = copy_sizes(model)
    held = tier_copies(hardware, model)
    out = {}
    for route, tier in ROUTE_TIER.items():
        idx = held.get(tier, (0,))
        out[route] = min(idx, key=lambda i: (-sizes[i], i))
    return out


def expert_bytes_for_cache(hardware: Hardware, model: ModelSpec) -> float:
    """The size one cache slot must hold: the largest default copy of the tiers in use (the
    native ``expert_bytes`` unless every tier holds only smaller copies)."""
    sizes = copy_sizes(model)
    defaults = default_copies(hardware, model)
    tiers = set(hardware.tiers)
    used = [defaults[route] for route, tier in ROUTE_TIER.items() if tier in tiers]
    return float(max(sizes[i] for i in used)) if used else float(model.expert_bytes)


# -- gate mass ---------------------------------------------------------------------------------
def renormalised(scores: np.ndarray) -> np.ndarray:
    """Each token's top-k scores divided by their sum (float64; a token whose scores are all
    0 gives each of its k experts 1/k)."""
    s = np.asarray(scores, dtype=np.float64)
    total = s.sum(axis=-1, keepdims=True)
    empty = total <= 0.0
    if not empty.any():
        return s / total
    out = s / np.where(empty, 1.0, total)
    return np.where(empty, 1.0 / s.shape[-1], out)


def skip_mask(renorm: np.ndarray, threshold: float) -> np.ndarray:
    """True where a token keeps its chosen expert: renormalised score >= ``threshold``, and
    always its top-1 (position 0, the highest score). ``threshold`` 0 keeps everything."""
    keep = renorm >= threshold
    keep[..., 0] = True
    return keep


@dataclass(frozen=True)
class Demand:
    """What the tokens of a batch need per (..., layer, expert), and the mass they gave up.

    ``counts``: tokens per expert (int32); ``mass``: the summed renormalised scores of those
    tokens (each token's k experts sum to 1); ``top``: the largest renormalised score of any
    of its tokens (0 where inactive); ``dropped``: per (..., layer), the renormalised score
    the tokens skipped. ``mass.sum(-1) + dropped`` = the tokens at that gate."""

    counts: np.ndarray
    mass: np.ndarray
    top: np.ndarray
    dropped: np.ndarray


def gate_demand(
    selected: np.ndarray,
    scores: np.ndarray,
    num_experts: int,
    skip_below: float = 0.0,
    counts: np.ndarray | None = None,
) -> Demand:
    """The demand of tokens routed to ``selected`` (``[..., tokens, k]`` expert ids, highest
    score first) with router probabilities ``scores`` (same shape, not renormalised), summed
    over the token axis (the one before k). ``skip_below``: each token skips its chosen
    experts whose renormalised score is below it, never its top-1 (`skip_mask`). ``counts``:
    the token counts when already known (they must be those of ``selected`` with nothing
    skipped); used as they are when nothing is skipped.

    This is how any source of iterations (lockstep, a serving scheduler) turns per-token
    routing into the ``counts``/``mass``/``top``/``dropped`` of an `Iteration`."""
    sel = np.asarray(selected)
    lead = sel.shape[:-2]
    r = renormalised(scores)
    keep = skip_mask(r, skip_below) if skip_below > 0.0 else None
    cells = int(np.prod(lead, dtype=np.int64))
    cell = np.arange(cells, dtype=np.int64).reshape(*lead, 1, 1)
    flat = (cell * num_experts + sel.astype(np.int64)).ravel()
    size = cells * num_experts
    w = r if keep is None else np.where(keep, r, 0.0)
    mass = np.bincount(flat, weights=w.ravel(), minlength=size).reshape(*lead, num_experts)
    top = np.zeros(size)
    np.maximum.at(top, flat, w.ravel())
    top = top.reshape(*lead, num_experts)
    if keep is None:
        dropped = np.zeros(lead)
        if counts is None:
            counts = np.bincount(flat, minlength=size).reshape(*lead, num_experts)
        counts = np.asarray(counts).astype(np.int32, copy=False)
    else:
        dropped = np.where(keep, 0.0, r).sum(axis=(-2, -1))
        counts = np.bincount(flat, weights=keep.ravel().astype(np.float64), minlength=size)
        counts = counts.reshape(*lead, num_experts).astype(np.int32)
    return Demand(counts=counts, mass=mass, top=top, dropped=dropped)


def mass_shares(
    degraded: np.ndarray, dropped: np.ndarray, total: np.ndarray
) -> tuple[float, float]:
    """Run-level shares of the gate mass served below full precision and dropped: summed over
    gates and divided by the total (each token's mass is 1, so this is the token-weighted
    mean). 0 where nothing was degraded (or dropped) even if the total is unknown (NaN)."""
    shares = []
    for part in (degraded, dropped):
        part = np.asarray(part, dtype=np.float64)
        if not np.any(part):
            shares.append(0.0)
            continue
        t = float(np.sum(total))
        shares.append(float(np.sum(part)) / t if t > 0 else float("nan"))
    return shares[0], shares[1]
