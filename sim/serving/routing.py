"""Each request's routing comes from one trace sequence; an iteration needs the union.

Request ``i`` uses trace sequence ``i mod num_seqs``. Its prefill processes positions
``0..P-1`` and emits output token 1; decode iteration ``j`` (j = 1..O-1) processes position
``P+j-1`` and emits token ``j+1``, so a request uses positions ``0..P+O-2``. An iteration's
demand at each MoE layer is the union of the experts of all its tokens, with token counts
(the ``[layers, num_experts]`` array the engine's gate sees) and the router mass they give each
expert, as a lockstep step's (`sim.precision.gate_demand`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sim.errors import UserError
from sim.precision import Demand, renormalised, skip_mask
from sim.serving.requests import RequestSet
from sim.trace.routing import RoutingTrace


class SequenceRouting:
    """The top-k routing of every (sequence, position) of a trace, as flat gate keys, with each
    choice's renormalised router score (``skip_below`` > 0: a token skips its chosen experts
    scored below it, never its top-1, as `sim.precision.gate_demand` does for lockstep runs)."""

    def __init__(
        self, trace: RoutingTrace, k: int, *, wrap: bool = False, skip_below: float = 0.0
    ) -> None:
        sel = trace.topk(k)  # [positions, layers, seqs, k]
        positions, layers, seqs, kk = sel.shape
        self.num_positions, self.num_layers, self.num_seqs = positions, layers, seqs
        self.num_experts = trace.num_experts
        self.wrap = wrap
        self.skip_below = float(skip_below)
        offset = (np.arange(layers, dtype=np.int32) * self.num_experts).reshape(1, layers, 1, 1)
        keys = sel.astype(np.int32) + offset  # layer * E + expert

        def per_token(values: np.ndarray) -> np.ndarray:
            """[positions, layers, seqs, k] -> [seq * positions + position, layers * k],
            contiguous: one row per token, for `take`."""
            out = np.ascontiguousarray(values.transpose(2, 0, 1, 3)).reshape(
                seqs * positions, layers * kk
            )
            out.flags.writeable = False
            return out

        self.keys = per_token(keys.astype(np.intp))
        score = renormalised(trace.selected_scores(k))
        keep = skip_mask(score, skip_below) if skip_below > 0.0 else None
        weight = score if keep is None else np.where(keep, score, 0.0)
        self.weight = per_token(weight)  # router mass each token gives each chosen expert
        self.keep = None if keep is None else per_token(keep.astype(np.float64))
        dropped = (score - weight).sum(axis=-1)  # [positions, layers, seqs]
        self.dropped = np.ascontiguousarray(dropped.transpose(2, 0, 1)).reshape(
            seqs * positions, layers
        )  # [seq * positions + pos, layers]
        self.dropped.flags.writeable = False
        self.size = layers * self.num_experts

    def sequence_of(self, request_ids: np.ndarray) -> np.ndarray:
        """The trace sequence each request uses."""
        return np.asarray(request_ids, dtype=np.int64) % self.num_seqs

    def demand(self, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Demand:
        """The gate demand of several iterations at once, ``[iterations, layers, E]`` counts,
        mass and top score and ``[iterations, layers]`` dropped mass: in iteration ``i``,
        request ``ids[j]`` of ``batches[i] = (ids, first_pos, new_tokens)`` processes positions
        ``first_pos[j] .. first_pos[j] + new_tokens[j] - 1`` (modulo the trace's length when
        wrapping)."""
        n = len(batches)
        sizes = [len(b[0]) for b in batches]
        ids = np.concatenate([b[0] for b in batches])
        first = np.concatenate([b[1] for b in batches])
        tokens = np.concatenate([b[2] for b in batches])
        iteration = np.repeat(np.arange(n, dtype=np.int64), sizes)
        rows = self._tokens(ids, first, tokens)
        if rows.size != iteration.size:
            iteration = np.repeat(iteration, tokens)
        offset = (iteration * self.size)[:, None]
        flat = self.keys.take(rows, axis=0)
        flat += offset
        flat = flat.ravel()
        cells = n * self.size
        if self.keep is None:
            counts = np.bincount(flat, minlength=cells)
        else:
            counts = np.bincount(
                flat, weights=self.keep.take(rows, axis=0).ravel(), minlength=cells
            )
        mass = np.bincount(flat, weights=self.weight.take(rows, axis=0).ravel(), minlength=cells)
        if self.keep is None:  # nothing skipped, nothing dropped
            dropped = np.zeros(n * self.num_layers)
        else:
            layer_cells = (iteration * self.num_layers)[:, None] + np.arange(self.num_layers)
            dropped = np.bincount(
                layer_cells.ravel(),
                weights=self.dropped.take(rows, axis=0).ravel(),
                minlength=n * self.num_layers,
            )
        shape = (n, self.num_layers, self.num_experts)
        return Demand(
            counts=counts.astype(np.int32).reshape(shape),
            mass=mass.reshape(shape),
            top=DeferredArray(lambda: self._top(rows, offset, cells).reshape(shape)),
            dropped=dropped.reshape(n, self.num_layers),
        )

    def _top(self, rows: np.ndarray, offset: np.ndarray, cells: int) -> np.ndarray:
        """The largest weight per cell of the tokens ``rows`` (``offset``: each one's first
        cell)."""
        flat = self.keys.take(rows, axis=0)
        flat += offset
        top = np.zeros(cells)
        np.maximum.at(top, flat.ravel(), self.weight.take(rows, axis=0).ravel())
        return top

    def _tokens(
        self, request_ids: np.ndarray, first_pos: np.ndarray, new_tokens: np.ndarray
    ) -> np.ndarray:
        """The row (``sequence * positions + position``) of every token processed."""
        seqs = self.sequence_of(request_ids)
        lengths = np.asarray(new_tokens, dtype=np.int64)
        if lengths.size and int(lengths.max()) == 1:  # decodes only (the common case)
            pos = np.asarray(first_pos, dtype=np.int64)
        else:
            total = int(lengths.sum())
            begin = np.cumsum(lengths) - lengths
            pos = np.repeat(np.asarray(first_pos, dtype=np.int64) - begin, lengths)
            pos += np.arange(total, dtype=np.int64)
            seqs = np.repeat(seqs, lengths)
        if self.wrap:
            pos = pos % self.num_positions
        return seqs * self.num_positions + pos


class DeferredArray:
    """An array computed when first read (indexed, or as an array), then kept: a demand's top
    scores, which only policies that read `GateView.top_score` need (a planned run builds no
    views at all). A maximum does not depend on when it is taken: the values are those an
    eager computation gives. `row` defers one entry of the leading axis (an iteration's)."""

    __slots__ = ("_compute", "_value")

    def __init__(self, compute: Callable[[], np.ndarray]) -> None:
        self._compute: Callable[[], np.ndarray] | None = compute
        self._value: np.ndarray | None = None

    def value(self) -> np.ndarray:
        if self._value is None:
            assert self._compute is not None
            self._value = self._compute()
            self._value.flags.writeable = False
            self._compute = None
        return self._value

    def row(self, i: int) -> DeferredArray:
        return DeferredArray(lambda: self.value()[i])

    def __getitem__(self, key: Any) -> Any:
        return self.value()[key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self.value(), dtype=dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value().shape


def positions_needed(requests: RequestSet) -> np.ndarray:
    """Positions each request walks: ``P + O - 1`` (0..P+O-2)."""
    return requests.prompt + requests.output - 1


def check_lengths(requests: RequestSet, num_positions: int, wrap: bool) -> np.ndarray:
    """Which requests wrap around the trace's sequence length (all False unless ``wrap``);
    without ``wrap`` a request longer than the trace is refused with one line."""
    needed = positions_needed(requests)
    too_long = needed > num_positions
    if too_long.any() and not wrap:
        i = int(np.flatnonzero(too_long)[0])
        raise UserError(
            f"workload: expected requests within the trace's {num_positions} positions "
            f"(prompt + output - 1), got request {i} with prompt {int(requests.prompt[i])} + "
            f"output {int(requests.output[i])} - 1 = {int(needed[i])} ({int(too_long.sum())} "
            f"such requests); shorten them, use a longer trace (moesim trace synth), or set "
            f"workload.wrap: true to reuse positions modulo the length"
        )
    return too_long
