"""The one top-k' expert selection used everywhere (stats, engine, policies).

The seed notebook picks a token's experts like this: it spreads the token's scores over a
dense row of ``num_experts`` columns (zero elsewhere), writes the row to CSV with ``'%.6f'``,
reads it back as float64 and takes ``np.argsort(row)[-k:][::-1]``. Ties (scores equal at 6
decimals, or zeros when a token has fewer than k nonzero scores) are broken by numpy's default
(unstable) argsort. We reproduce that exactly, vectorised:

* ``'%.6f'`` then parsing back equals ``rint(x * 1e6) / 1e6`` in float64 for float32/bf16/f16
  inputs: ``x * 1e6`` is exact in float64 (24 + 20 bits < 53), ``rint`` rounds half to even on
  the exact value like correct decimal formatting, and the division is correctly rounded like
  correct parsing. So the dense rows hold bit-identical values to the notebook's.
* Rows whose answer does not depend on tie-breaking (the trace's scores, rounded, strictly
  decreasing over the first k'+1 entries and the k'-th one above zero) are answered by slicing;
  the other rows go through the same ``np.argsort`` call on the same float64 64-column rows.
  Tests check this against a row-by-row re-implementation of the notebook.

numpy's tie order can differ between numpy builds: record ``numpy.__version__`` with results.
"""

from __future__ import annotations

import numpy as np

# Rows per chunk of the dense argsort path: bounds memory to ~chunk * num_experts * 8 bytes.
_DENSE_CHUNK_ROWS = 65_536


def round_scores(scores: np.ndarray) -> np.ndarray:
    """Scores as the notebook sees them after its CSV round trip (float64, 6 decimals)."""
    return np.rint(np.asarray(scores, dtype=np.float64) * 1e6) / 1e6


def dense_rows(experts: np.ndarray, scores: np.ndarray, num_experts: int) -> np.ndarray:
    """The notebook's dense rows: ``[rows, num_experts]`` float64, rounded score at each expert."""
    rows = experts.shape[0]
    dense = np.zeros((rows, num_experts), dtype=np.float64)
    np.put_along_axis(dense, experts.astype(np.intp), round_scores(scores), axis=1)
    return dense


def argsort_topk(dense: np.ndarray, k: int) -> np.ndarray:
    """The notebook's ``np.argsort(row)[-k:][::-1]`` on every row of ``dense`` (float64)."""
    order = np.argsort(dense, axis=1)
    return order[:, ::-1][:, :k]


def select_topk(experts: np.ndarray, scores: np.ndarray, k: int, num_experts: int) -> np.ndarray:
    """Each token's top-``k`` experts, exactly as the seed notebook selects them.

    ``experts`` and ``scores`` have shape ``[..., k_trace]`` (one token per leading index);
    the result has shape ``[..., k]`` (int16), highest score first, ties in the notebook's order.
    ``k`` may exceed ``k_trace`` (the extra picks are zero-score experts, as in the notebook).
    """
    experts = np.asarray(experts)
    scores = np.asarray(scores)
    if experts.shape != scores.shape:
        raise ValueError(f"experts {experts.shape} and scores {scores.shape} differ in shape")
    if not 1 <= k <= num_experts:
        raise ValueError(f"k must be in 1..{num_experts}, got {k}")
    lead = experts.shape[:-1]
    k_trace = experts.shape[-1]
    flat_e = experts.reshape(-1, k_trace)
    flat_s = scores.reshape(-1, k_trace)
    out = np.empty((flat_e.shape[0], k), dtype=np.int16)
    slow = _rows_needing_argsort(flat_s, k)
    fast = ~slow
    if k <= k_trace:
        out[fast] = flat_e[fast, :k]
    slow_rows = np.flatnonzero(slow)
    for start in range(0, slow_rows.size, _DENSE_CHUNK_ROWS):
        rows = slow_rows[start : start + _DENSE_CHUNK_ROWS]
        dense = dense_rows(flat_e[rows], flat_s[rows], num_experts)
        out[rows] = argsort_topk(dense, k)
    return out.reshape(*lead, k)


def _rows_needing_argsort(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows whose top-k depends on the notebook's tie-breaking (or that are not sorted)."""
    rows, k_trace = scores.shape
    if k > k_trace:
        return np.ones(rows, dtype=bool)
    rounded = round_scores(scores)
    # Strictly decreasing over the first k entries, and the k-th strictly above the (k+1)-th
    # value of the dense row: the trace's next score, or 0 for the columns not in the trace.
    head = rounded[:, : min(k + 1, k_trace)]
    strictly_decreasing = np.all(head[:, :-1] > head[:, 1:], axis=1) if head.shape[1] > 1 else True
    above_zero = rounded[:, k - 1] > 0.0
    # The trace's remaining scores (after k+1) must also stay below the k-th; scores are
    # sorted descending in valid dumps, but check rather than assume.
    if k_trace > k + 1:
        rest_below = np.all(rounded[:, k + 1 :] < rounded[:, k - 1 : k], axis=1)
    else:
        rest_below = True
    return ~(strictly_decreasing & above_zero & rest_below)
