"""The one top-k selection equals the notebook's CSV round trip + argsort, row by row."""

from __future__ import annotations

import numpy as np
import pytest

from sim.topk import select_topk


def notebook_topk(experts_row: np.ndarray, scores_row: np.ndarray, k: int, num_experts: int):
    """Straight re-implementation of the notebook: dense row, '%.6f', float(), argsort."""
    row = [0.0] * num_experts
    for e, s in zip(experts_row.tolist(), scores_row.tolist()):
        row[int(e)] = float(s)
    values = np.array([float(f"{x:.6f}") for x in row])
    return np.argsort(values)[-k:][::-1]


def _random_rows(rng: np.random.Generator, n: int, k: int, num_experts: int):
    scores = (rng.random((n, k)) * 0.2).astype(np.float32)
    scores[: n // 4] = np.round(scores[: n // 4], 3)  # ties at 6 decimals
    scores[n // 4 : n // 3, k // 2 :] = 0.0  # fewer than k nonzero scores
    scores[n // 3 : n // 2] = 1e-7  # all round to zero
    scores = -np.sort(-scores, axis=1)
    experts = np.argsort(rng.random((n, num_experts)), axis=1)[:, :k].astype(np.int16)
    return experts, scores


@pytest.mark.parametrize("k", [1, 2, 3, 6, 8])
def test_select_topk_matches_notebook_rows(k: int) -> None:
    rng = np.random.default_rng(k)
    experts, scores = _random_rows(rng, 600, 6, 64)
    got = select_topk(experts, scores, k, 64)
    for r in range(experts.shape[0]):
        np.testing.assert_array_equal(got[r], notebook_topk(experts[r], scores[r], k, 64))


def test_select_topk_keeps_leading_shape() -> None:
    rng = np.random.default_rng(1)
    experts, scores = _random_rows(rng, 24, 6, 16)
    got = select_topk(experts.reshape(2, 3, 4, 6), scores.reshape(2, 3, 4, 6), 2, 16)
    assert got.shape == (2, 3, 4, 2)
    np.testing.assert_array_equal(got.reshape(24, 2), select_topk(experts, scores, 2, 16))


def test_unsorted_trace_rows_still_follow_notebook() -> None:
    experts = np.array([[5, 3, 9]], dtype=np.int16)
    scores = np.array([[0.1, 0.3, 0.2]], dtype=np.float32)  # not descending
    np.testing.assert_array_equal(select_topk(experts, scores, 2, 10)[0], [3, 9])
