"""The latency-quality frontier (issue 22): the marked points are exactly the non-dominated ones,
and a run of scenarios/mixed-precision.yaml reports its proxies and draws the frontier."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.cli import main
from sim.report import build_content
from sim.report.frontier import FAMILIES, frontier_table, pareto_mask
from sim.report.load import Table, load_results

REPO = Path(__file__).resolve().parents[1]


def dominated_by_hand(points: list[tuple[float, float]], i: int) -> bool:
    """Point i is dominated: some other point is no worse in both and better in one."""
    xi, yi = points[i]
    for j, (xj, yj) in enumerate(points):
        if j == i or math.isnan(xj) or math.isnan(yj):
            continue
        if xj <= xi and yj <= yi and (xj < xi or yj < yi):
            return True
    return False


values = st.one_of(
    st.sampled_from([0.0, 0.1, 0.5, 1.0]), st.floats(0.0, 1.0), st.just(float("nan"))
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(values, values), min_size=0, max_size=12))
def test_marked_points_are_exactly_the_non_dominated_ones(points):
    mask = pareto_mask([p[1] for p in points], [p[0] for p in points])
    for i, (x, y) in enumerate(points):
        expected = not (math.isnan(x) or math.isnan(y)) and not dominated_by_hand(points, i)
        assert bool(mask[i]) == expected, (points, i)


def test_equal_points_are_both_on_the_front():
    assert pareto_mask([1.0, 1.0, 2.0], [0.5, 0.5, 0.5]).tolist() == [True, True, False]


def table(rows: list[dict]) -> Table:
    names = rows[0].keys()
    return Table(
        {
            n: np.array([r[n] for r in rows], dtype=object if isinstance(rows[0][n], str) else None)
            for n in names
        },
        "test",
    )


def test_only_online_runs_compete_and_the_front_is_numbered():
    rows = [
        # label, policy, kind, mean_step, degraded, dropped
        ("base", "seed-split", "online", 10.0, 0.0, 0.0),
        ("cache", "lru", "online", 8.0, 0.0, 0.0),
        ("low", "low-precision-on-miss", "online", 6.0, 0.1, 0.0),
        ("skip", "skip-low-score", "online", 5.0, 0.0, 0.1),  # dominates "low"
        ("q", "quantised-all", "online", 1.0, 1.0, 0.0),
        ("oracle", "quantised-all", "oracle", 0.5, 0.0, 0.0),  # would dominate all: excluded
    ]
    t = table(
        [
            {
                "label": lb,
                "policy": p,
                "kind": k,
                "topk": 2,
                "mean_step": m,
                "degraded_gate_mass": d,
                "dropped_gate_mass": dr,
                "tokens_per_s": 1.0 / m,
            }
            for lb, p, k, m, d, dr in rows
        ]
    )
    front = frontier_table(t)
    marked = {str(lb) for lb, on in zip(front["label"], front["pareto"]) if on}
    assert marked == {"cache", "skip", "q"}
    ranks = {str(lb): r for lb, r in zip(front["label"], front["rank"]) if r == r}
    assert ranks == {"cache": 1, "skip": 2, "q": 3}
    families = dict(zip(front["label"], front["family"]))
    assert families["base"] == "full precision" and families["skip"] in FAMILIES


def test_a_mixed_precision_run_reports_proxies_and_draws_the_frontier(tmp_path, capsys):
    out = tmp_path / "run"
    scenario = REPO / "scenarios" / "mixed-precision.yaml"
    code = main(["run", str(scenario), "--set", "trace.positions=0-7", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "degraded*" in printed and "quality PROXIES, not accuracy" in printed
    rows = list(csv.DictReader((out / "summary.csv").open()))
    by_label = {r["label"]: r for r in rows}
    for label in ("seed-split", "lru", "lru-balanced"):
        assert float(by_label[label]["degraded_gate_mass"]) == 0.0
        assert float(by_label[label]["dropped_gate_mass"]) == 0.0
    assert float(by_label["q-int4"]["degraded_gate_mass"]) == 1.0
    assert 0.0 < float(by_label["skip-0.1"]["dropped_gate_mass"]) < 1.0
    per_layer = list(csv.DictReader((out / "per_layer.csv").open()))
    assert {"degraded_gate_mass", "dropped_gate_mass", "gate_mass", "reduced"} <= set(per_layer[0])
    # the report: the frontier figure and table, its marks the non-dominated online runs
    content = build_content(load_results(out))
    names = [f.name for f in content.figures]
    assert "latency_quality_frontier" in names
    assert any("Latency-quality frontier" in s for s in content.sections)
    front = frontier_table(load_results(out).summary)
    points = list(zip(front["proxy"].tolist(), front["mean_step"].tolist()))
    for i, on in enumerate(front["pareto"]):
        assert bool(on) == (not dominated_by_hand(points, i)), front["label"][i]
