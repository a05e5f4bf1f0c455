"""Each request's routing comes from one trace sequence; an iteration needs the union.

Request ``i`` uses trace sequence ``i mod num_seqs``. Its prefill processes positions
``0..P-1`` and emits output token 1; decode iteration ``j`` (j = 1..O-1) processes position
``P+j-1`` and emits token ``j+1``, so a request uses positions ``0..P+O-2``. An iteration's
demand at each MoE layer is the union of the experts of all its tokens, with token counts:
the ``[layers, num_experts]`` array the engine's gate sees, built with one ``bincount``.
"""

from __future__ import annotations

import numpy as np

from sim.errors import UserError
from sim.serving.requests import RequestSet
from sim.trace.routing import RoutingTrace


class SequenceRouting:
    """The top-k routing of every (sequence, position) of a trace, as flat gate keys."""

    def __init__(self, trace: RoutingTrace, k: int, *, wrap: bool = False) -> None:
        sel = trace.topk(k)  # [positions, layers, seqs, k]
        positions, layers, seqs, kk = sel.shape
        self.num_positions, self.num_layers, self.num_seqs = positions, layers, seqs
        self.num_experts = trace.num_experts
        self.wrap = wrap
        offset = (np.arange(layers, dtype=np.int32) * self.num_experts).reshape(1, layers, 1, 1)
        keys = sel.astype(np.int32) + offset  # layer * E + expert
        # [seq, position, layers * k]: one row per token, contiguous for fancy indexing
        self.keys = np.ascontiguousarray(keys.transpose(2, 0, 1, 3)).reshape(
            seqs, positions, layers * kk
        )
        self.keys.flags.writeable = False
        self.size = layers * self.num_experts

    def sequence_of(self, request_ids: np.ndarray) -> np.ndarray:
        """The trace sequence each request uses."""
        return np.asarray(request_ids, dtype=np.int64) % self.num_seqs

    def counts(
        self, request_ids: np.ndarray, first_pos: np.ndarray, new_tokens: np.ndarray
    ) -> np.ndarray:
        """``[layers, num_experts]`` int64 token counts of one iteration: request
        ``request_ids[i]`` processes positions ``first_pos[i] .. first_pos[i] +
        new_tokens[i] - 1`` (modulo the trace's length when wrapping)."""
        flat = self._keys(request_ids, first_pos, new_tokens)
        return np.bincount(flat, minlength=self.size).reshape(self.num_layers, self.num_experts)

    def counts_many(self, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        """`counts` of several iterations at once, ``[iterations, layers, num_experts]``."""
        k = len(batches)
        sizes = [len(b[0]) for b in batches]
        ids = np.concatenate([b[0] for b in batches])
        first = np.concatenate([b[1] for b in batches])
        tokens = np.concatenate([b[2] for b in batches])
        iteration = np.repeat(np.arange(k, dtype=np.int64) * self.size, sizes)
        if tokens.size and int(tokens.max()) > 1:
            iteration = np.repeat(iteration, tokens)
        keys = self._keys(ids, first, tokens).reshape(iteration.size, -1)
        flat = (keys + iteration[:, None]).ravel()
        counts = np.bincount(flat, minlength=k * self.size)
        return counts.reshape(k, self.num_layers, self.num_experts)

    def _keys(
        self, request_ids: np.ndarray, first_pos: np.ndarray, new_tokens: np.ndarray
    ) -> np.ndarray:
        """The gate keys (layer * E + expert) of every token of one iteration."""
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
        return self.keys[seqs, pos].ravel()


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
