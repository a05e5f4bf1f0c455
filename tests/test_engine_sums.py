"""`row_sums` repeats numpy's float64 summation bit for bit, for every length."""

from __future__ import annotations

import numpy as np
import pytest

from sim.engine.sums import row_sums


@pytest.mark.parametrize("seed", [0, 1])
def test_row_sums_equal_numpy_sum_for_every_length(seed):
    rng = np.random.default_rng(seed)
    width = 300
    counts = np.concatenate([np.arange(width + 1), rng.integers(0, width + 1, 200)])
    # magnitudes spread over many decades, so that any other grouping rounds differently
    values = rng.random((counts.size, width)) * 10.0 ** rng.integers(-9, 3, (counts.size, width))
    expected = np.array([values[r, :n].sum() for r, n in enumerate(counts.tolist())])
    np.testing.assert_array_equal(row_sums(values, counts), expected)
    # what the engine sums: a gather of a table row (a new contiguous array)
    idx = rng.permutation(width)[:37]
    assert row_sums(values[:1, idx], np.array([37]))[0] == values[0][idx].sum()


def test_row_sums_of_nothing():
    assert row_sums(np.zeros((3, 0)), np.zeros(3, dtype=np.int64)).tolist() == [0.0] * 3
    assert row_sums(np.zeros((0, 5)), np.zeros(0, dtype=np.int64)).shape == (0,)
