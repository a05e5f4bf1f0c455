"""`row_sums`: numpy's float64 sum of many short arrays at once, bit for bit.

The engine adds a gate's hit compute with ``array.sum()`` (numpy's pairwise summation). A block
of gates timed together (`sim.engine.gpu.GpuProcess._planned`) needs the very same floats for
every gate; summing each row with a masked ``sum(axis=1)`` would group the additions
differently. This module repeats numpy's order of additions with vectorised operations over the
rows (`tests/test_engine_sums.py` checks it against ``np.sum`` for every length up to 300).
"""

from __future__ import annotations

import numpy as np

_UNROLL = 8  # numpy's pairwise sum keeps 8 partial sums ...
_BLOCK = 128  # ... over blocks of up to 128 elements, and halves longer arrays


def row_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``values[r, :counts[r]].sum()`` for every row ``r``, equal to numpy's float64 result.

    numpy sums n contiguous float64 values from 0.0: one by one when n < 8; for n <= 128 in 8
    running partial sums over the whole blocks of 8, combined as ((0+1)+(2+3))+((4+5)+(6+7)),
    then the remaining n % 8 one by one; longer arrays are split in two (the first part a
    multiple of 8 long) and the halves' sums added. Adding an exact 0.0 to a sum leaves it
    unchanged, which lets rows of different lengths share each vectorised step."""
    values = np.asarray(values, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    out = np.zeros(counts.shape, dtype=np.float64)
    long = counts > _BLOCK
    if long.any():  # rare (more than 128 hits at one gate): numpy itself, row by row
        for r in np.flatnonzero(long).tolist():
            out[r] = values[r, : counts[r]].sum()
    short = np.flatnonzero(~long)
    if short.size == 0:
        return out
    v, n = values[short], counts[short]
    width = v.shape[1] if v.ndim == 2 else 0
    blocks = np.where(n >= _UNROLL, n // _UNROLL, 0)  # whole blocks of 8 (none below 8)
    partial = np.zeros((short.size, _UNROLL))
    for b in range(int(blocks.max(initial=0))):
        chunk = v[:, b * _UNROLL : (b + 1) * _UNROLL]
        partial += np.where((b < blocks)[:, None], chunk, 0.0)
    p = partial.T
    total = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]))
    rest = n - blocks * _UNROLL
    rows = np.arange(short.size)
    for j in range(int(rest.max(initial=0))):
        col = np.minimum(blocks * _UNROLL + j, max(width - 1, 0))
        total = total + np.where(j < rest, v[rows, col] if width else 0.0, 0.0)
    out[short] = total
    return out
