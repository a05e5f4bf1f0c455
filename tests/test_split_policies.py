"""seed-split, gpu-only, md-only and balanced-split through the engine."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from engine_traces import GB, hardware, make_trace, model, random_trace
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import RooflineCost, simulate
from sim.errors import UserError
from sim.hardware import ComputeUnit, ModelSpec, Precision
from sim.policies import GateDecision, GateView, Path, Policy, PolicyError, make_policy
from sim.policies.split import balanced_split_paths
from sim.stats.counts import count_cells, gating_table
from sim.stats.gating import GatingRule


def test_registered():
    from sim.policies import available_policies

    names = available_policies()
    assert {"seed-split", "gpu-only", "md-only", "balanced-split"} <= set(names)


@pytest.mark.parametrize("k", [1, 2, 6])
@pytest.mark.parametrize(
    ("alpha", "rounding", "bw"), [(1.0, "nearest", (32, 512)), (0.5, "ceil", (32, 96))]
)
def test_seed_split_counts_equal_the_stats(k, alpha, rounding, bw):
    trace = random_trace(np.random.default_rng(k), 40, 3, 8, 6, 64)
    params = {"alpha": alpha, "rounding": rounding, "bw_pcie": bw[0], "bw_md": bw[1]}
    result = simulate(trace, hardware(), model(), make_policy("seed-split", params), topk=k)
    rule = GatingRule(bw_pcie=bw[0], bw_md=bw[1], alpha=alpha, rounding=rounding)
    table = gating_table(count_cells(trace, [k]), rule).columns
    pl = result.per_layer
    np.testing.assert_array_equal(pl["active"], table["expert_activ"])
    np.testing.assert_array_equal(pl["pcie"], table["h"])
    np.testing.assert_array_equal(pl["md_fetch"], table["expert_activ"] - table["h"])
    if alpha == 1.0:
        np.testing.assert_array_equal(pl["md_fetch"], table["expert_md"])


def _first_gate_paths(policy_name: str, params: dict, trace, hw, mdl) -> dict[int, int]:
    """Expert id -> path at the first gate, via the policy's decision."""
    seen: dict[int, int] = {}
    policy = make_policy(policy_name, params)
    decide = policy.decide

    def spy(view: GateView) -> GateDecision:
        decision = decide(view)
        if not seen:
            seen.update(zip(view.experts.tolist(), decision.paths.tolist(), strict=True))
        return decision

    policy.decide = spy  # type: ignore[method-assign]
    policy.plan_gates = None  # gate by gate (a stateless plan would skip decide)
    simulate(trace, hw, mdl, policy)
    return seen


# 17 experts, expert e gets 17 - e tokens... expert 16 most: ids reversed against tokens
SEVENTEEN = make_trace(
    [[[[e] for e in range(17) for _ in range(e + 1)]]], num_experts=32
)  # expert e has e + 1 tokens


def test_seed_split_order_tokens_or_id():
    mdl = model(32, 1, 1 * GB)
    by_tokens = _first_gate_paths("seed-split", {}, SEVENTEEN, hardware(), mdl)
    assert [e for e, p in by_tokens.items() if p == Path.PCIE] == [16]
    by_id = _first_gate_paths("seed-split", {"order": "id"}, SEVENTEEN, hardware(), mdl)
    assert [e for e, p in by_id.items() if p == Path.PCIE] == [0]


def test_seed_split_alpha_above_one_is_capped_and_from_links():
    mdl = model(32, 1, 1 * GB)
    r = simulate(SEVENTEEN, hardware(), mdl, make_policy("seed-split", {"alpha": 100.0}))
    assert (r.per_layer["pcie"][0], r.per_layer["md_fetch"][0]) == (17, 0)
    # equal link bandwidths: half of 17 -> round(8.5) = 8 (half to even)
    same = hardware(pcie_bw=64 * GB, md_bw=64 * GB)
    r = simulate(SEVENTEEN, same, mdl, make_policy("seed-split", {"from_links": True}))
    assert r.per_layer["pcie"][0] == 8


def test_seed_split_near_data_uses_md_near():
    hw = hardware(md_mode="near-data", md_compute=ComputeUnit(500 * GB, 1e14))
    r = simulate(SEVENTEEN, hw, model(32, 1, 1e8), make_policy("seed-split"))
    assert (r.per_layer["pcie"][0], r.per_layer["md_near"][0], r.per_layer["md_fetch"][0]) == (
        1,
        16,
        0,
    )


def test_params_are_validated():
    with pytest.raises(UserError, match="rounding"):
        make_policy("seed-split", {"rounding": "up"})
    with pytest.raises(UserError, match="order"):
        make_policy("seed-split", {"order": "random"})
    with pytest.raises(UserError, match="alpha"):
        make_policy("seed-split", {"alpha": -1.0})
    with pytest.raises(UserError, match="exhaustive_limit"):
        make_policy("balanced-split", {"exhaustive_limit": 40})


def test_single_path_policies_and_placement():
    mdl = model(32, 1, 1 * GB)
    r = simulate(SEVENTEEN, hardware(), mdl, make_policy("gpu-only"))
    assert (r.per_layer["pcie"][0], r.per_layer["md_fetch"][0]) == (17, 0)
    r = simulate(SEVENTEEN, hardware(), mdl, make_policy("md-only"))
    assert (r.per_layer["pcie"][0], r.per_layer["md_fetch"][0]) == (0, 17)
    with pytest.raises(PolicyError, match="placement"):
        simulate(SEVENTEEN, hardware(placement="host"), mdl, make_policy("seed-split"))
    r = simulate(SEVENTEEN, hardware(placement="host"), mdl, make_policy("balanced-split"))
    assert r.per_layer["pcie"][0] == 17
    r = simulate(SEVENTEEN, hardware(placement="md"), mdl, make_policy("balanced-split"))
    assert r.per_layer["md_fetch"][0] == 17


# -- balanced-split against brute force ----------------------------------------------------------
@dataclass(frozen=True)
class _NoParams:
    pass


class FixedSplit(Policy):
    """Sends the experts in ``on_pcie`` over PCIe and the rest on the MD path, every miss in
    ``split_precision`` (None: its tier's default copy). With ``warm``, step 0 instead fetches
    everything over PCIe in ``precision``, keeps it, and prefetches ``warm`` over PCIe (so
    step 1 sees cached experts, some still in flight, and a busy PCIe link)."""

    name = "fixed-split"
    Params = _NoParams

    def __init__(
        self,
        on_pcie: set[int],
        md: Path,
        warm: tuple[int, ...] | None = None,
        precision: int | None = None,
        split_precision: int | None = None,
    ) -> None:
        super().__init__()
        self.on_pcie, self.md, self.warm, self.precision = on_pcie, md, warm, precision
        self.split_precision = split_precision

    def decide(self, view: GateView) -> GateDecision:
        if self.warm is not None and view.step == 0:
            return warm_up(view, self.warm, self.precision)
        paths = [Path.PCIE if e in self.on_pcie else self.md for e in view.experts.tolist()]
        n, q = view.experts.size, self.split_precision
        return GateDecision(
            paths=np.asarray(paths, dtype=np.int8),
            precision=None if q is None else np.full(n, q),
        )


def warm_up(view: GateView, warm: tuple[int, ...], precision: int | None = None) -> GateDecision:
    """Step 0: everything over PCIe and kept, ``warm`` prefetched behind it (all in
    ``precision``; None: the host tier's default copy)."""
    n = view.experts.size
    prefetch = [(0, e, "pcie") for e in warm if e not in set(view.experts.tolist())]
    return GateDecision(
        paths=np.full(n, Path.PCIE, np.int8),
        admit=np.ones(n, bool),
        prefetch=prefetch,
        precision=None if precision is None else np.full(n, precision),
        prefetch_precision=precision,
    )


class WarmBalanced(Policy):
    """`FixedSplit`'s warm-up at step 0, then balanced-split."""

    name = "warm-balanced"
    Params = _NoParams

    def __init__(self, warm: tuple[int, ...], precision: int | None = None) -> None:
        super().__init__()
        self.warm, self.precision = warm, precision

    def decide(self, view: GateView) -> GateDecision:
        if view.step == 0:
            return warm_up(view, self.warm, self.precision)
        return GateDecision(paths=balanced_split_paths(view, self.ctx))


class _SameCost(RooflineCost):
    """The roofline numbers through an overridden method: forces the general (sorting) path."""

    def transfer_time(self, link, step, layer, experts):
        return super().transfer_time(link, step, layer, experts)


def brute_force_best(
    trace, hw, mdl, warm=None, cost=None, precision=None, split_precision=None
) -> float:
    """Best end time over every split of the last step's non-cached experts (with ``warm``,
    step 0's experts and ``warm`` are cached: `FixedSplit`)."""
    last = trace.topk(mdl.top_k)[-1]
    cached = set() if warm is None else set(np.unique(trace.topk(mdl.top_k)[0]).tolist())
    cached |= set(warm or ())
    experts = sorted(set(np.unique(last).tolist()) - cached)
    md = Path.MD_NEAR if hw.md_mode == "near-data" else Path.MD_FETCH
    best = np.inf
    for bits in itertools.product([False, True], repeat=len(experts)):
        chosen = {e for e, b in zip(experts, bits, strict=True) if b}
        policy = FixedSplit(chosen, md, warm, precision, split_precision)
        best = min(best, simulate(trace, hw, mdl, policy, cost=cost).totals["total_time"])
    return best


@st.composite
def one_gate(draw):
    """One layer of one step with up to 8 active experts, random links and compute."""
    num_experts = 8
    seqs = draw(st.integers(1, 10))
    ids = draw(
        st.lists(
            st.lists(st.integers(0, num_experts - 1), min_size=2, max_size=2, unique=True),
            min_size=seqs,
            max_size=seqs,
        )
    )
    trace = make_trace([[ids]], num_experts)
    near = draw(st.booleans())
    pcie_bw = draw(st.floats(1.0, 64.0)) * GB
    hw = hardware(
        pcie_bw=pcie_bw,
        md_bw=draw(st.floats(1.0, 600.0)) * GB,
        pcie_latency=draw(st.sampled_from([0.0, 1e-5, 1e-3])),
        md_latency=draw(st.sampled_from([0.0, 1e-5, 1e-3])),
        pcie_channels=draw(st.integers(1, 3)),
        md_channels=draw(st.integers(1, 3)),
        expert_start=draw(st.sampled_from(["per-expert", "layer"])),
        md_mode="near-data" if near else "fetch",
        # near-data compute from slower than a PCIe transfer to much faster
        md_compute=ComputeUnit(
            pcie_bw * draw(st.sampled_from([0.3, 1.0, 3.0, 30.0])), draw(st.floats(1e11, 1e14))
        )
        if near
        else None,
        # GPU compute from as long as a PCIe transfer (then the hits' compute decides) to
        # negligible
        hbm_bw=pcie_bw * draw(st.sampled_from([1.0, 3.0, 30.0, 1000.0])),
        peak=draw(st.floats(1e10, 1e15)),  # low peaks make GPU compute depend on tokens
    )
    mdl = model(num_experts, 2, draw(st.floats(1e6, 1e9)))
    return trace, hw, mdl


# Each brute-force property runs quickly in the default suite and thoroughly with `-m slow`
# (run that after any change to balanced-split or to the engine's GPU schedule).
EXAMPLES = [100, pytest.param(1000, marks=pytest.mark.slow, id="thorough")]


def check_property(examples: int, prop, *strategies) -> None:
    """Run the Hypothesis property ``prop`` over ``strategies`` with ``examples`` examples."""
    settings(max_examples=examples, deadline=None)(given(*strategies)(prop))()


def _equals_brute_force(gate, general_path):
    trace, hw, mdl = gate
    cost = _SameCost(hw, mdl) if general_path else None
    got = simulate(trace, hw, mdl, make_policy("balanced-split"), cost=cost).totals["total_time"]
    assert got == pytest.approx(brute_force_best(trace, hw, mdl, cost=cost), rel=1e-9)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_balanced_split_equals_brute_force_over_all_splits(examples):
    check_property(examples, _equals_brute_force, one_gate(), st.booleans())


@st.composite
def two_steps(draw):
    """`one_gate`'s step, then step 1 with another routing of the same sequences (partly
    cached by step 0's fetches), all but one at most of step 1's other experts prefetched at
    step 0, some non-expert time and an HBM cache that holds all 8 experts. Returns (trace,
    hardware, model, warm)."""
    trace, hw, mdl = draw(one_gate())
    pair = st.lists(st.integers(0, 7), min_size=2, max_size=2, unique=True)
    seqs = trace.experts.shape[2]
    second = draw(st.lists(pair, min_size=seqs, max_size=seqs))
    two = make_trace(np.concatenate([trace.experts, [[second]]], axis=0), 8)
    warm = sorted(set(np.ravel(second).tolist()) - set(trace.experts.ravel().tolist()))
    warm = tuple(warm[: draw(st.integers(0, max(len(warm) - 1, 0)))])  # one miss at least
    # non-expert work before each gate, in PCIe transfers: with it the prefetches have landed
    # by step 1's gate (hits in HBM), without it some are still in flight
    gap = draw(st.sampled_from([0.0, 0.5, 8.0])) * mdl.expert_bytes / hw.links["pcie"].bandwidth
    gpu = dataclasses.replace(hw.gpu, non_expert_time=gap)
    hbm = dataclasses.replace(hw.hbm, capacity=8 * mdl.expert_bytes)
    return two, dataclasses.replace(hw, gpu=gpu, hbm=hbm), mdl, warm


def _with_cached_experts_in_flight(steps, general_path):
    two, hw, mdl, warm = steps
    cost = _SameCost(hw, mdl) if general_path else None
    got = simulate(two, hw, mdl, WarmBalanced(warm), cost=cost).totals["total_time"]
    assert got == pytest.approx(brute_force_best(two, hw, mdl, warm, cost), rel=1e-9)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_balanced_split_with_cached_experts_in_flight(examples):
    """Step 0 caches its experts and prefetches some of step 1's behind them: at step 1 some
    hits are still arriving and PCIe is busy; balanced-split must still find the best split
    (the first counterexample: general path, no prefetch, 7.028 ms against 6.938 ms)."""
    check_property(examples, _with_cached_experts_in_flight, two_steps(), st.booleans())


class _PerExpertCost(RooflineCost):
    """The roofline's numbers scaled per expert id, as a cost table gives them: unequal
    transfer times, GPU and near-data compute out of token order (``scale``: [3, experts] for
    transfer, GPU compute, near compute). None of balanced-split's sorted arguments holds."""

    def __init__(self, hw, mdl, scale) -> None:
        super().__init__(hw, mdl)
        self.scale = np.asarray(scale, dtype=np.float64)

    def transfer_time(self, link, step, layer, experts):
        return super().transfer_time(link, step, layer, experts) * self.scale[0][experts]

    def gpu_compute_time(self, step, layer, experts, tokens):
        return super().gpu_compute_time(step, layer, experts, tokens) * self.scale[1][experts]

    def near_compute_time(self, step, layer, experts, tokens):
        return super().near_compute_time(step, layer, experts, tokens) * self.scale[2][experts]


def _with_per_expert_costs(steps, scale):
    two, hw, mdl, warm = steps
    cost = _PerExpertCost(hw, mdl, np.reshape(scale, (3, 8)))
    got = simulate(two, hw, mdl, WarmBalanced(warm), cost=cost).totals["total_time"]
    assert got == pytest.approx(brute_force_best(two, hw, mdl, warm, cost), rel=1e-9)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_balanced_split_with_per_expert_costs_searches_every_split(examples):
    """With per-expert costs (a cost table) the sorted arguments fail; with n <= the
    exhaustive limit every split is evaluated, so the optimum is still exact, hits in HBM and in
    flight included (and transfers that overtake each other on several slots)."""
    scale = st.lists(st.floats(0.25, 4.0), min_size=24, max_size=24)
    check_property(examples, _with_per_expert_costs, two_steps(), scale)


INT4 = Precision("int4", bits=4, group_size=128, scale_bits=16, dequant_ops=2)
COPIES = [("bf16",), ("int4",), ("bf16", "int4")]


def with_int4(hw, mdl, host, md):
    """``mdl`` with an int4 copy (a 4.3 MB native expert), the tiers holding ``host`` and
    ``md`` copies, and an HBM cache for all 8 experts."""
    mdl = dataclasses.replace(mdl, expert_bytes=float(2 * 3 * 1024 * 704), precisions=(INT4,))
    hw = dataclasses.replace(hw, copies={"host": host, "md": md})
    return dataclasses.replace(
        hw, hbm=dataclasses.replace(hw.hbm, capacity=8 * mdl.expert_bytes)
    ), mdl


def _with_reduced_copies(steps, host, md, warm_int4):
    two, hw, mdl, warm = steps
    hw, mdl = with_int4(hw, mdl, host, md)
    precision = 1 if warm_int4 and "int4" in host else None
    got = simulate(two, hw, mdl, WarmBalanced(warm, precision)).totals["total_time"]
    assert got == pytest.approx(brute_force_best(two, hw, mdl, warm, None, precision), rel=1e-9)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_balanced_split_with_reduced_copies(examples):
    """Copies in other precisions are computed at their own size: hits cached in int4 (step 0
    fetches in int4 when ``warm_int4`` and the host tier holds it), and misses fetched or run
    near data in a tier's default copy when that tier holds only int4. The split is still the
    best over every split."""
    copies = st.sampled_from(COPIES)
    check_property(
        examples,
        _with_reduced_copies,
        two_steps(),
        copies,
        copies,
        st.booleans(),
    )


def _quantised_all(gate, host, md):
    trace, hw, mdl = gate
    hw, mdl = with_int4(hw, mdl, host, md)
    policy = make_policy("quantised-all", {"policy": "balanced-split", "precision": "int4"})
    got = simulate(trace, hw, mdl, policy).totals["total_time"]
    best = brute_force_best(trace, hw, mdl, split_precision=1)
    assert got == pytest.approx(best, rel=1e-9)


@pytest.mark.parametrize("examples", EXAMPLES)
def test_balanced_split_under_quantised_all(examples):
    """`quantised-all` hands balanced-split a cost model in int4 (every copy moved and computed
    in int4, whatever the tiers' default copies): the split is the best over every split of
    int4 copies."""
    with_copy = st.sampled_from([c for c in COPIES if "int4" in c])
    check_property(examples, _quantised_all, one_gate(), with_copy, with_copy)


# Regression (found by Hypothesis): hits already in HBM were left out of the GPU's schedule
# whenever the cost model was not the plain roofline, so the PCIe path looked 1 ms too early.
# Experts 0 and 2 are fetched at step 0 and kept; at step 1 they are hits, expert 1 is the
# only candidate. Every GPU expert computes in 1 ms (1 MB at 1 GB/s), a PCIe transfer takes
# 1 ms, near-data compute 1 ms, an md_link crossing 0.75 ms (+ 2048 B of activations at 1e15 B/s).
# Step 0: arrivals at 1 and 2 ms; per-expert start computes 1-2 and 2-3 ms (layer start: 2-4).
# Step 1, expert 1 over PCIe: it arrives at 1 ms but the hits hold the GPU until 2 ms, so the
# layer ends at 3 ms (layer start: 1 + 2 + 1 = 4 ms); near data: 0.75 + 1 + 0.75 = 2.5 ms,
# the hits done at 2 ms. The best split is near data. Ignoring the hits, PCIe looked like
# 1 + 1 = 2 ms < 2.5 ms and was chosen.
HITS_FIRST = make_trace([[[[0], [2], [0]]], [[[0], [2], [1]]]], 4)


@pytest.mark.parametrize(("expert_start", "step0"), [("per-expert", 3e-3), ("layer", 4e-3)])
@pytest.mark.parametrize("general_path", [False, True])
def test_balanced_split_counts_the_hits_in_hbm(expert_start, step0, general_path):
    mdl = model(4, 1, 1e6)
    hw = hardware(
        1 * GB,
        1e15,
        md_latency=0.75e-3,
        md_mode="near-data",
        md_compute=ComputeUnit(1 * GB, 1e18),
        hbm_bw=1 * GB,
        peak=1e18,
        capacity=4e6,
        expert_start=expert_start,
    )
    cost = _SameCost(hw, mdl) if general_path else None
    r = simulate(HITS_FIRST, hw, mdl, WarmBalanced(()), cost=cost)
    near = 0.75e-3 + 1e-3 + 0.75e-3 + 2 * 2048 / 1e15
    np.testing.assert_allclose(r.per_step["latency"], [step0, near], rtol=1e-12)
    assert (r.per_layer["pcie"].tolist(), r.per_layer["md_near"].tolist()) == ([2, 0], [0, 1])
    worse = simulate(HITS_FIRST, hw, mdl, FixedSplit({1}, Path.MD_NEAR, ()), cost=cost)
    np.testing.assert_allclose(worse.per_step["latency"][1], step0, rtol=1e-12)


def test_balanced_split_times_hits_in_their_cached_copy():
    """HITS_FIRST with step 0 fetching in int4: every bandwidth is 1000 native copies per
    second (a native expert: 1 ms to move, 1 ms to compute), an int4 copy is 1,115,136 of
    4,325,376 bytes: 0.2578125 ms. Step 0: the copies arrive at 0.2578 and 0.5156 ms and are
    computed by 0.7734375 ms. Step 1: the int4 hits take 0.515625 ms of GPU; expert 1 over
    PCIe arrives at 1 ms and ends at 2 ms, near data ends at 0.75 + 1 + 0.75 = 2.5 ms: PCIe.
    Timing the hits as native copies (2 ms of GPU) made PCIe look like 3 ms."""
    native = float(2 * 3 * 1024 * 704)
    mdl = ModelSpec("test", num_experts=4, top_k=1, expert_bytes=native, precisions=(INT4,))
    rate = 1000 * native
    hw = hardware(
        rate,
        1e15,
        md_latency=0.75e-3,
        md_mode="near-data",
        md_compute=ComputeUnit(rate, 1e18),
        hbm_bw=rate,
        peak=1e18,
        capacity=4 * native,
    )
    hw = dataclasses.replace(hw, copies={"host": ("bf16", "int4"), "md": ("bf16",)})
    r = simulate(HITS_FIRST, hw, mdl, WarmBalanced((), precision=1))
    np.testing.assert_allclose(r.per_step["latency"], [0.7734375e-3, 2e-3], rtol=1e-12)
    assert (r.per_layer["pcie"].tolist(), r.per_layer["md_near"].tolist()) == ([2, 1], [0, 0])
    near = simulate(HITS_FIRST, hw, mdl, FixedSplit(set(), Path.MD_NEAR, (), precision=1))
    np.testing.assert_allclose(near.per_step["latency"][1], 2.5e-3 + 2 * 2048 / 1e15, rtol=1e-12)


@pytest.mark.parametrize("general_path", [False, True])
def test_balanced_split_ties_go_to_fewer_pcie_transfers_with_hits(general_path):
    """Fetch mode, hits in HBM (2 ms of GPU work): expert 1 over PCIe arrives at 1 ms, over
    md_link at 1.5 ms; either way the GPU ends at 3 ms, so the tie goes to md_link."""
    mdl = model(4, 1, 1e6)
    hw = hardware(1 * GB, 1 * GB, md_latency=0.5e-3, hbm_bw=1 * GB, peak=1e18, capacity=4e6)
    cost = _SameCost(hw, mdl) if general_path else None
    r = simulate(HITS_FIRST, hw, mdl, WarmBalanced(()), cost=cost)
    np.testing.assert_allclose(r.per_step["latency"], [3e-3, 3e-3], rtol=1e-12)
    assert (r.per_layer["pcie"].tolist(), r.per_layer["md_fetch"].tolist()) == ([2, 0], [0, 1])


def test_latency_makes_the_seed_rule_wrong():
    """16:1 bandwidth, but every md_link transfer pays 1 ms: the seed still sends 16 of 17
    experts to the MD side; the balanced split sends most over PCIe and finishes sooner."""
    mdl = model(32, 1, 16e6)  # 16 MB experts: 0.5 ms on PCIe, 31 us on the MD link
    hw = hardware(pcie_bw=32 * GB, md_bw=512 * GB, md_latency=1e-3)
    seed = simulate(SEVENTEEN, hw, mdl, make_policy("seed-split"))
    balanced = simulate(SEVENTEEN, hw, mdl, make_policy("balanced-split"))
    assert seed.per_layer["pcie"][0] == 1
    assert balanced.per_layer["pcie"][0] > 8
    assert balanced.totals["total_time"] < 0.7 * seed.totals["total_time"]


def test_balanced_split_matches_seed_when_the_seed_is_right():
    """No latency, equal experts, per-expert compute negligible: 1:16 is optimal up to
    rounding, so balanced is never slower than the seed."""
    trace = random_trace(np.random.default_rng(3), 20, 2, 16, 6, 64)
    hw = hardware(hbm_bw=1e18, peak=1e18)
    seed = simulate(trace, hw, model(), make_policy("seed-split"))
    balanced = simulate(trace, hw, model(), make_policy("balanced-split"))
    assert np.all(balanced.per_step["latency"] <= seed.per_step["latency"] * (1 + 1e-12))
