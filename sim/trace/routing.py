"""`RoutingTrace`: the one in-memory routing trace that feeds stats, the engine and policies.

Arrays are indexed ``[step, layer, seq, k]``. A *step* is one token position of every
sequence of the batch: a true decode step under the Megatron layout, or one of the notebook's
"positions" under the seed layout (see ``docs/trace-format.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from sim.topk import select_topk

LAYOUTS = ("megatron", "seed")


@dataclass(frozen=True)
class TraceMeta:
    """Where a trace came from, so every result can say what it was computed on."""

    model: str
    runid: int | str
    epoch: int | str
    layout: str  # "megatron" (true decode order) or "seed" (the notebook's reading)
    shards: tuple[str, ...] = ()
    source: str = ""  # path or generator description
    provenance: str = ""  # free text: "real FLAME-MoE dump", "synthetic (seed 0, ...)", ...
    synthetic: bool = False  # the routing itself is generated, not captured
    synthetic_layers: tuple[int, ...] = ()  # layer ids made by extension (copied from others)
    seq_len: int | None = None  # S of the dump, when known
    micro_batch_size: int | None = None  # B of the dump, when known
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-ready view."""
        return {
            "model": self.model,
            "runid": self.runid,
            "epoch": self.epoch,
            "layout": self.layout,
            "shards": list(self.shards),
            "source": self.source,
            "provenance": self.provenance,
            "synthetic": self.synthetic,
            "synthetic_layers": list(self.synthetic_layers),
            "seq_len": self.seq_len,
            "micro_batch_size": self.micro_batch_size,
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


@dataclass(frozen=True, eq=False)
class RoutingTrace:
    """Top-k routing of a batch of sequences over steps and MoE layers.

    experts: ``[steps, layers, seqs, k]`` int16 expert ids (trace order: score descending).
    scores:  ``[steps, layers, seqs, k]`` float32 router probabilities of those experts.
    tokens:  ``[steps, seqs]`` int64 token ids, -1 where unknown.
    """

    experts: np.ndarray
    scores: np.ndarray
    tokens: np.ndarray
    num_experts: int
    layer_ids: tuple[int, ...]
    positions: tuple[int, ...]
    meta: TraceMeta

    def __post_init__(self) -> None:
        if self.experts.ndim != 4 or self.experts.shape != self.scores.shape:
            raise ValueError(
                f"experts {self.experts.shape} and scores {self.scores.shape} must be equal 4-D"
            )
        steps, layers, seqs, _ = self.experts.shape
        if self.tokens.shape != (steps, seqs):
            raise ValueError(f"tokens {self.tokens.shape} must be ({steps}, {seqs})")
        if len(self.layer_ids) != layers or len(self.positions) != steps:
            raise ValueError("layer_ids/positions do not match the arrays")
        if self.meta.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.meta.layout!r}")

    # -- shape -------------------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return int(self.experts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def num_seqs(self) -> int:
        return int(self.experts.shape[2])

    @property
    def k(self) -> int:
        return int(self.experts.shape[3])

    # -- derived views (cached: traces are immutable) ---------------------------------------
    def topk(self, k: int) -> np.ndarray:
        """``[steps, layers, seqs, k]`` experts under top-``k`` routing (the one selection rule)."""
        cache = self._topk_cache
        if k not in cache:
            cache[k] = select_topk(self.experts, self.scores, k, self.num_experts)
        return cache[k]

    def expert_token_counts(self, k: int) -> np.ndarray:
        """``[steps, layers, num_experts]`` int32: tokens routed to each expert under top-``k``."""
        cache = self._count_cache
        if k not in cache:
            sel = self.topk(k).astype(np.int64)
            steps, layers, _seqs, _kk = sel.shape
            cell = np.arange(steps * layers, dtype=np.int64).reshape(steps, layers, 1, 1)
            flat = (cell * self.num_experts + sel).ravel()
            counts = np.bincount(flat, minlength=steps * layers * self.num_experts)
            cache[k] = counts.reshape(steps, layers, self.num_experts).astype(np.int32)
        return cache[k]

    def selected_scores(self, k: int) -> np.ndarray:
        """``[steps, layers, seqs, k]`` float64: the trace's (raw, not renormalised) score of
        each expert `topk` selects, 0 for a pick the trace has no score for (k beyond the
        trace's k)."""
        cache = self._score_cache
        if k not in cache:
            sel = self.topk(k)
            if k <= self.k and np.array_equal(sel, self.experts[..., :k]):
                out = self.scores[..., :k].astype(np.float64)  # the usual case: a slice
            else:
                out = np.zeros(sel.shape, dtype=np.float64)
                for j in range(self.k):
                    column = self.experts[..., j : j + 1]
                    score = self.scores[..., j : j + 1].astype(np.float64)
                    out += np.where(sel == column, score, 0.0)
            cache[k] = out
        return cache[k]

    def demand(self, k: int, skip_below: float = 0.0) -> Any:
        """`sim.precision.Demand` of every (step, layer) under top-``k``: token counts (those of
        `expert_token_counts` when nothing is skipped), gate mass per expert, top renormalised
        score per expert, and the mass dropped by tokens skipping experts below
        ``skip_below`` (never their top-1)."""
        from sim.precision import gate_demand

        key = (k, float(skip_below))
        cache = self._demand_cache
        if key not in cache:
            counts = self.expert_token_counts(k) if skip_below <= 0.0 else None
            cache[key] = gate_demand(
                self.topk(k), self.selected_scores(k), self.num_experts, skip_below, counts
            )
        return cache[key]

    def sequence_routing(self, k: int, *, wrap: bool = False, skip_below: float = 0.0) -> Any:
        """`sim.serving.routing.SequenceRouting` of the trace under top-``k``: every (sequence,
        position)'s routing, from which a serving run forms each iteration's demand. Cached, as
        `demand` is for lockstep runs (its arrays are read-only), so that runs of several
        policies or sweep points on one trace share it."""
        from sim.serving.routing import SequenceRouting

        key = (k, bool(wrap), float(skip_below))
        cache = self._sequence_cache
        if key not in cache:
            cache[key] = SequenceRouting(self, k, wrap=wrap, skip_below=skip_below)
        return cache[key]

    def active_experts(self, k: int) -> np.ndarray:
        """``[steps, layers]`` number of distinct experts with at least one token (Expert_Activ)."""
        return (self.expert_token_counts(k) > 0).sum(axis=2).astype(np.int32)

    @cached_property
    def _topk_cache(self) -> dict[int, np.ndarray]:
        return {}

    @cached_property
    def _count_cache(self) -> dict[int, np.ndarray]:
        return {}

    @cached_property
    def _score_cache(self) -> dict[int, np.ndarray]:
        return {}

    @cached_property
    def _demand_cache(self) -> dict[tuple[int, float], Any]:
        return {}

    @cached_property
    def _sequence_cache(self) -> dict[tuple[int, bool, float], Any]:
        return {}

    # -- selection -----------------------------------------------------------------------------
    def select(
        self,
        steps: slice | np.ndarray | list[int] | None = None,
        layers: list[int] | None = None,
        seqs: slice | np.ndarray | list[int] | None = None,
    ) -> RoutingTrace:
        """A sub-trace: step indices, layer *ids* and sequence indices (None keeps all)."""
        s_idx = np.arange(self.num_steps)[steps] if steps is not None else np.arange(self.num_steps)
        q_idx = np.arange(self.num_seqs)[seqs] if seqs is not None else np.arange(self.num_seqs)
        if layers is None:
            l_idx = np.arange(self.num_layers)
        else:
            missing = [lid for lid in layers if lid not in self.layer_ids]
            if missing:
                raise KeyError(f"layers {missing} not in trace layers {list(self.layer_ids)}")
            l_idx = np.array([self.layer_ids.index(lid) for lid in layers], dtype=np.intp)
        ix = np.ix_(s_idx, l_idx, q_idx)
        new_layers = tuple(self.layer_ids[i] for i in l_idx)
        return RoutingTrace(
            experts=np.ascontiguousarray(self.experts[ix]),
            scores=np.ascontiguousarray(self.scores[ix]),
            tokens=np.ascontiguousarray(self.tokens[np.ix_(s_idx, q_idx)]),
            num_experts=self.num_experts,
            layer_ids=new_layers,
            positions=tuple(self.positions[i] for i in s_idx),
            meta=replace(
                self.meta,
                synthetic_layers=tuple(x for x in self.meta.synthetic_layers if x in new_layers),
            ),
        )

    def describe(self) -> str:
        """One line for logs and report headers."""
        m = self.meta
        synth = " SYNTHETIC" if m.synthetic else ""
        ext = f", extended layers {list(m.synthetic_layers)}" if m.synthetic_layers else ""
        return (
            f"{m.model} run {m.runid} epoch {m.epoch} [{m.layout} layout{synth}]: "
            f"{self.num_steps} steps x {self.num_layers} layers {list(self.layer_ids)} x "
            f"{self.num_seqs} seqs, top-{self.k} of {self.num_experts} experts{ext}"
        )
