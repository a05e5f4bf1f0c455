"""Trace statistics: is it the policy or the working set?

Everything here is computed from a :class:`RoutingTrace` under top-``k`` routing (the project's
one selection rule, ``trace.topk(k)``), per MoE layer:

* popularity: tokens per expert, entropy (bits), Gini coefficient, max/mean;
* temporal locality: experts shared by the same sequence at steps ``t`` and ``t + lag``,
  against the same-step overlap of two different sequences (the no-locality baseline);
* reuse distance: per (layer, expert), the gaps between consecutive steps where the expert is
  active for the batch;
* working set: distinct experts active per step, and within windows of ``w`` steps;
* miss-ratio curves (LRU, OPT, static pinning; see :mod:`sim.trace.missratio`);
* inter-layer co-activation: mutual information between a token's experts at layer ``l`` and
  ``l + 1`` (each token contributes its ``k x k`` expert pairs), against a shuffled baseline
  that pairs different tokens, and the mean of the largest lift ``P(i, j) / P(i) P(j)``;
* token-id consistency: experts shared by two rows of the same sequence with the same token id
  versus different ids (rows whose token is unknown, ``-1``, are left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim.trace.missratio import lru_misses, opt_misses, static_misses
from sim.trace.routing import RoutingTrace

DEFAULT_LAGS = (1, 2, 4, 8, 16, 64)
DEFAULT_WINDOWS = (1, 2, 4, 8, 16, 64)
_SHUFFLE_SEED = 0


@dataclass(frozen=True)
class LayerProfile:
    """The statistics of one MoE layer (plain numbers and small arrays)."""

    layer: int
    token_counts: np.ndarray  # [experts] tokens routed to each expert
    entropy_bits: float
    gini: float
    max_over_mean: float
    overlap_by_lag: dict[int, float]  # same sequence, steps t and t + lag
    cross_seq_overlap: float  # two different sequences, same step (nan with one sequence)
    reuse_gaps: np.ndarray  # [steps] count of gaps of each length (index = gap)
    active_mean: float
    active_min: int
    active_max: int
    working_set: dict[int, float]  # window (steps) -> mean distinct experts
    requests: int  # sum over steps of the active set size
    lru_misses: np.ndarray  # [experts + 1]
    opt_misses: np.ndarray
    static_misses: np.ndarray
    same_token_shared: float  # nan when no two rows share a known token id
    diff_token_shared: float
    same_token_pairs: int

    @property
    def reuse_gap_mean(self) -> float:
        gaps = np.arange(self.reuse_gaps.size)
        total = self.reuse_gaps.sum()
        return float((gaps * self.reuse_gaps).sum() / total) if total else float("nan")

    @property
    def reuse_gap1_share(self) -> float:
        total = self.reuse_gaps.sum()
        return float(self.reuse_gaps[1] / total) if total and self.reuse_gaps.size > 1 else 0.0


@dataclass(frozen=True)
class CoactivationProfile:
    """Co-activation of a token's experts at two consecutive MoE layers."""

    layer_from: int
    layer_to: int
    mutual_info_bits: float
    shuffled_mutual_info_bits: float  # same marginals, tokens paired at random
    max_lift_mean: float  # mean over experts i at layer_from of max_j lift(i, j)
    joint: np.ndarray  # [experts, experts] pair counts

    @property
    def excess_mutual_info_bits(self) -> float:
        return self.mutual_info_bits - self.shuffled_mutual_info_bits


@dataclass(frozen=True)
class TraceProfile:
    k: int
    num_experts: int
    num_steps: int
    num_seqs: int
    description: str
    layers: tuple[LayerProfile, ...]
    coactivation: tuple[CoactivationProfile, ...]


def onehot(selected: np.ndarray, num_experts: int) -> np.ndarray:
    """``[..., k]`` expert ids -> ``[..., experts]`` bool membership."""
    out = np.zeros((*selected.shape[:-1], num_experts), dtype=bool)
    np.put_along_axis(out, selected.astype(np.intp), True, axis=-1)
    return out


def entropy_bits(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0 = all equal, -> 1 = one expert takes all)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, x.sum()
    if total == 0 or n == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * total))


def overlap_by_lag(member: np.ndarray, lags: tuple[int, ...]) -> dict[int, float]:
    """Mean experts shared by one sequence at steps t and t + lag; ``member[steps, seqs, E]``."""
    steps = member.shape[0]
    return {
        lag: float((member[lag:] & member[:-lag]).sum(axis=-1).mean())
        for lag in lags
        if lag < steps
    }


def cross_sequence_overlap(counts: np.ndarray, num_seqs: int) -> float:
    """Mean experts shared by two different sequences at the same step; ``counts[steps, E]``.

    With each sequence picking distinct experts, ``sum_e n_e (n_e - 1)`` counts ordered pairs.
    """
    if num_seqs < 2:
        return float("nan")
    c = counts.astype(np.int64)
    return float((c * (c - 1)).sum(axis=-1).mean() / (num_seqs * (num_seqs - 1)))


def reuse_gap_histogram(active: np.ndarray) -> np.ndarray:
    """``hist[g]``: how often an expert is next active ``g`` steps later; ``active[steps, E]``."""
    expert, step = np.nonzero(active.T)  # sorted by expert, then step
    same = expert[1:] == expert[:-1]
    gaps = (step[1:] - step[:-1])[same]
    return np.bincount(gaps, minlength=active.shape[0]).astype(np.int64)


def working_set_sizes(active: np.ndarray, windows: tuple[int, ...]) -> dict[int, float]:
    """Mean distinct experts active within the last ``w`` steps (steps ``t >= w - 1``)."""
    steps = active.shape[0]
    step_idx = np.arange(steps)[:, None]
    last = np.maximum.accumulate(np.where(active, step_idx, -(10**9)), axis=0)
    out: dict[int, float] = {}
    for w in windows:
        if w > steps:
            continue
        inside = last[w - 1 :] > (step_idx[w - 1 :] - w)
        out[w] = float(inside.sum(axis=1).mean())
    return out


def token_consistency(member: np.ndarray, tokens: np.ndarray) -> tuple[float, float, int]:
    """(same-id mean shared experts, different-id mean, same-id pairs) over pairs of rows of the
    *same sequence*; ``member[steps, seqs, E]``, ``tokens[steps, seqs]`` (-1 = unknown, skipped).

    Pairs stay within a sequence so that the document context is held fixed (the real trace
    knows the tokens of one sequence only). Pairs are counted through per-expert tallies, never
    formed one by one: shared experts summed over pairs = ``sum_e C(n_e, 2)``.
    """
    steps, seqs, experts = member.shape
    seq_of = np.broadcast_to(np.arange(seqs), (steps, seqs))
    known = tokens >= 0
    rows = member[known]
    seq = seq_of[known].astype(np.int64)
    if rows.shape[0] < 2:
        return float("nan"), float("nan"), 0
    _, group = np.unique(np.stack([seq, tokens[known]]), axis=1, return_inverse=True)
    group = group.reshape(-1)

    def pairs_and_shared(labels: np.ndarray) -> tuple[int, int]:
        count = int(labels.max()) + 1
        size = np.bincount(labels, minlength=count).astype(np.int64)
        r_idx, e_idx = np.nonzero(rows)
        tally = np.bincount(labels[r_idx] * experts + e_idx, minlength=count * experts)
        tally = tally.astype(np.int64)
        return int((size * (size - 1) // 2).sum()), int((tally * (tally - 1) // 2).sum())

    seq_pairs, seq_shared = pairs_and_shared(seq)
    same_pairs, same_shared = pairs_and_shared(group)
    diff_pairs = seq_pairs - same_pairs
    same = same_shared / same_pairs if same_pairs else float("nan")
    diff = (seq_shared - same_shared) / diff_pairs if diff_pairs else float("nan")
    return float(same), float(diff), same_pairs


def mutual_information_bits(joint: np.ndarray) -> float:
    total = joint.sum()
    if total == 0:
        return 0.0
    p = joint / total
    pi = p.sum(axis=1, keepdims=True)
    pj = p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pi @ pj)[nz])).sum())


def coactivation(
    member_a: np.ndarray, member_b: np.ndarray, layer_from: int, layer_to: int
) -> CoactivationProfile:
    """Pairs (expert at layer_from, expert at layer_to) of the same token; ``member[rows, E]``."""
    a = member_a.astype(np.float32)
    b = member_b.astype(np.float32)
    joint = np.rint(a.T @ b).astype(np.int64)
    perm = np.random.default_rng(_SHUFFLE_SEED).permutation(b.shape[0])
    shuffled = np.rint(a.T @ b[perm]).astype(np.int64)
    total = joint.sum()
    p = joint / max(total, 1)
    pi, pj = p.sum(axis=1), p.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift = np.where(np.outer(pi, pj) > 0, p / np.outer(pi, pj), 0.0)
    seen = pi > 0
    return CoactivationProfile(
        layer_from=layer_from,
        layer_to=layer_to,
        mutual_info_bits=mutual_information_bits(joint),
        shuffled_mutual_info_bits=mutual_information_bits(shuffled),
        max_lift_mean=float(lift.max(axis=1)[seen].mean()) if seen.any() else float("nan"),
        joint=joint,
    )


def profile_trace(
    trace: RoutingTrace,
    k: int | None = None,
    lags: tuple[int, ...] = DEFAULT_LAGS,
    windows: tuple[int, ...] = DEFAULT_WINDOWS,
) -> TraceProfile:
    """Every statistic of ``trace`` under top-``k`` routing (``k`` defaults to the trace's)."""
    k = trace.k if k is None else k
    selected = trace.topk(k)  # [steps, layers, seqs, k]
    member = onehot(selected, trace.num_experts)  # [steps, layers, seqs, E]
    counts = trace.expert_token_counts(k)  # [steps, layers, E]
    active = counts > 0
    layers = []
    for li, layer in enumerate(trace.layer_ids):
        layer_member = member[:, li]
        layer_active = active[:, li]
        per_step = layer_active.sum(axis=1)
        same, diff, pairs = token_consistency(layer_member, trace.tokens)
        token_counts = counts[:, li].sum(axis=0).astype(np.int64)
        layers.append(
            LayerProfile(
                layer=layer,
                token_counts=token_counts,
                entropy_bits=entropy_bits(token_counts),
                gini=gini(token_counts),
                max_over_mean=float(token_counts.max() / max(token_counts.mean(), 1e-12)),
                overlap_by_lag=overlap_by_lag(layer_member, lags),
                cross_seq_overlap=cross_sequence_overlap(counts[:, li], trace.num_seqs),
                reuse_gaps=reuse_gap_histogram(layer_active),
                active_mean=float(per_step.mean()),
                active_min=int(per_step.min()),
                active_max=int(per_step.max()),
                working_set=working_set_sizes(layer_active, windows),
                requests=int(per_step.sum()),
                lru_misses=lru_misses(layer_active),
                opt_misses=opt_misses(layer_active),
                static_misses=static_misses(layer_active),
                same_token_shared=same,
                diff_token_shared=diff,
                same_token_pairs=pairs,
            )
        )
    coact = tuple(
        coactivation(
            member[:, li].reshape(-1, trace.num_experts),
            member[:, li + 1].reshape(-1, trace.num_experts),
            trace.layer_ids[li],
            trace.layer_ids[li + 1],
        )
        for li in range(trace.num_layers - 1)
    )
    return TraceProfile(
        k=k,
        num_experts=trace.num_experts,
        num_steps=trace.num_steps,
        num_seqs=trace.num_seqs,
        description=trace.describe(),
        layers=tuple(layers),
        coactivation=coact,
    )
