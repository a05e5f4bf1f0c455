"""Cost tables: the NeuPIMs importer, the four modes by hand, the engine with TableCost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cli import main
from sim.costs.compare import check_modes, npu_only_schedule, run_policies
from sim.costs.modes import MODES, compute_modes, monde_npu_count
from sim.costs.neupims import load_neupims
from sim.costs.source import CostSource
from sim.costs.table import CostTable, TableCost
from sim.engine.cost import RooflineCost
from sim.errors import UserError
from sim.scenario import load_scenario, scenario_from_dict
from sim.units import parse_clock

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "traces" / "neupims-decoder-bs16"
SCENARIO = ROOT / "scenarios" / "neupims-decoder-bs16.yaml"

# -- a hand-made directory ------------------------------------------------------------------------
# One step ("1st"), layers 2 and 3, 2 tokens x top-2. Per expert: NPU (param_load, fc1, gelu,
# fc2) and PIM (fc1, gelu, fc2); activation movements (1, 2) per layer.
CELLS = {
    2: {
        "routing": [(5, 2), (7, 1), (63, 1)],
        "npu": {5: (1000, 5, 1, 4), 7: (1001, 6, 1, 5), 63: (1000, 7, 2, 6)},
        "pim": {5: (30, 2, 28), 7: (35, 3, 32), 63: (40, 4, 36)},
        "act": (7, 8),
    },
    3: {
        "routing": [(2, 2), (9, 1), (63, 1)],
        "npu": {2: (100, 3, 1, 2), 9: (100, 4, 1, 3), 63: (100, 2, 1, 2)},
        "pim": {2: (100, 10, 90), 9: (60, 5, 55), 63: (50, 5, 45)},
        "act": (10, 11),
    },
}
# By hand (docs/cost-tables.md formulas):
# layer 2: NPU-only 1000+1001+1000 + 15 (expert 63) = 3016; PIM-only 60+70+80 + 15 = 225;
#   MoNDE n = ceil(0.05882*3) = 1, T = [5]: max(1000+10, 70+80+15) = 1010;
#   DynaNDE k=0: 225, k=1: max(1010, 165), k=2: max(2013, 95), k=3: 3016 -> 225 (k = 0).
# layer 3: NPU-only 300 + 5 = 305; PIM-only 420 + 21 = 441; MoNDE T = [2]: max(106, 241) = 241;
#   DynaNDE k=0: 441, k=1: 241, k=2: max(200+8, 100+21) = 208, k=3: 305 -> 208 (k = 2).
HAND = {"npu-only": 3016 + 305, "pim-only": 225 + 441, "monde": 1010 + 241, "dynande": 225 + 208}
HAND_CELLS = {
    "npu-only": [3016, 305],
    "pim-only": [225, 441],
    "monde": [1010, 241],
    "dynande": [225, 208],
}


def routing_text(rows: list[tuple[int, int]], tokens: int, k: int) -> str:
    lines = [
        "=" * 60,
        f"TOP {k} EXPERT TOKEN DISTRIBUTION (1St token)",
        "=" * 60,
        f"Total tokens: {tokens}",
        f"Expected total (tokens × {k}): {tokens * k}",
        "=" * 60,
        "Expert ID    Token Count     Percentage",
        "-" * 60,
    ]
    lines += [f"Expert {e:<4} {c:<16} {100 * c / tokens:5.2f}%" for e, c in rows]
    return "\n".join(lines) + "\n"


def npu_text(rows: dict[int, tuple[int, ...]]) -> str:
    lines = ["NPU Expert Operations - Total Cycles", "Decoder-BS64/1st/npu/2", "=" * 80]
    lines.append(" Expert Number  param_load  fc1  gelu  fc2  total compute")
    for e, (load, a, b, c) in sorted(rows.items()):
        lines.append(f"{e:>14} {load:>11} {a:>4} {b:>5} {c:>4} {a + b + c:>14}")
    return "\n".join(lines)  # no final newline, like the shipped files


def pim_text(rows: dict[int, tuple[int, ...]], act: tuple[int, int]) -> str:
    lines = [
        "PIM Expert Operations - Total Cycles",
        "Decoder-BS64/1st/pim/2",
        "--- Activation Movements ---",
        f"layer0.ffn.activation_movement_2: {act[1]} cycles",
        f"layer0.ffn.activation_movement_1: {act[0]} cycles",
        f"Total activation movement cycles: {act[0] + act[1]}",
        "=" * 80,
        " Expert Number  fc1  gelu  fc2  total compute",
    ]
    for e, (a, b, c) in sorted(rows.items()):
        lines.append(f"{e:>14} {a:>4} {b:>5} {c:>4} {a + b + c:>14}")
    return "\n".join(lines)


def write_dir(root: Path, cells: dict = CELLS, tokens: int = 2, k: int = 2) -> Path:
    pos = root / "1st"
    for lid, cell in cells.items():
        (pos / "npu" / str(lid)).mkdir(parents=True, exist_ok=True)
        (pos / "pim" / str(lid)).mkdir(parents=True, exist_ok=True)
        (pos / f"layer{lid}.txt").write_text(routing_text(cell["routing"], tokens, k), "utf-8")
        (pos / "npu" / str(lid) / "SA_stage_E.txt").write_text(npu_text(cell["npu"]))
        (pos / "pim" / str(lid) / "SA_stage_E.txt").write_text(pim_text(cell["pim"], cell["act"]))
    return root


def scenario(exhaustive_limit: int = 0, extra: list | None = None):
    return scenario_from_dict(scenario_dict(exhaustive_limit, extra), "test")


def scenario_dict(exhaustive_limit: int = 0, extra: list | None = None) -> dict:
    """The four mode policies on near-data hardware (figures only matter for the fallback)."""
    return {
        "trace": "embedded",
        "model": {"preset": "flame-moe-290m"},
        "hardware": {
            "gpu": {"preset": "h100-sxm", "non_expert_time": "0 s"},
            "links": {
                "pcie": {"bandwidth": "12 GB/s", "latency": "0 s", "channels": 1},
                "md_link": {"bandwidth": "64 GB/s", "latency": "0 s", "channels": 1},
            },
            "md_mode": "near-data",
            "md_compute": {"memory_bandwidth": "750 GB/s", "peak_flops": "10 TFLOP/s"},
        },
        "baseline": "monde",
        "policies": [
            {"name": "gpu-only", "label": "npu-only"},
            {"name": "md-only", "label": "pim-only"},
            {
                "name": "seed-split",
                "label": "monde",
                "params": {"rounding": "ceil", "bw_pcie": 32, "bw_md": 512},
            },
            {
                "name": "balanced-split",
                "label": "dynande",
                "params": {"exhaustive_limit": exhaustive_limit},
            },
            *(extra or []),
        ],
    }


# -- the four modes by hand -----------------------------------------------------------------------
def test_modes_equal_the_hand_computed_totals(tmp_path):
    data = load_neupims(write_dir(tmp_path))
    assert data.defects == ()
    modes = compute_modes(data)
    for mode in MODES:
        assert modes[mode].cycles[0].tolist() == HAND_CELLS[mode], mode
        assert modes[mode].total == HAND[mode], mode
    assert modes["monde"].npu_experts[0].tolist() == [1, 1]
    assert modes["dynande"].npu_experts[0].tolist() == [0, 2]


def test_monde_count_is_the_readme_rule_and_the_seed_split_ceil():
    from sim.stats.gating import gpu_share

    for active in range(1, 65):
        _gpu, _md, h = gpu_share(active, 32, 512, 1.0, "ceil")
        assert monde_npu_count(active) == h
    assert monde_npu_count(0) == 0
    assert [monde_npu_count(a) for a in (1, 17, 18, 34, 35)] == [1, 1, 2, 2, 3]


def test_npu_only_adds_zero_when_expert_63_is_inactive(tmp_path):
    cells = {2: {**CELLS[2], "routing": [(5, 2), (7, 2)], "npu": {5: CELLS[2]["npu"][5]}}}
    cells[2]["npu"] = {5: (1000, 5, 1, 4), 7: (1001, 6, 1, 5)}
    cells[2]["pim"] = {5: (30, 2, 28), 7: (35, 3, 32)}
    data = load_neupims(write_dir(tmp_path, cells))
    modes = compute_modes(data)
    assert modes["npu-only"].total == 2001  # the README: + 0 without expert 63
    assert npu_only_schedule(data)[0, 0] == 2001 + 12  # the engine: + the last loaded (7)


# -- the engine reproduces them -------------------------------------------------------------------
@pytest.mark.parametrize("clock_hz", [1.0, 1e9])
def test_engine_reproduces_the_four_modes_on_hand_made_tables(tmp_path, clock_hz):
    data = load_neupims(write_dir(tmp_path))
    runs = run_policies(data, scenario(), clock_hz)
    by_label = {r.label: r for r in runs}
    for mode in MODES:
        assert by_label[mode].cycles[0].tolist() == HAND_CELLS[mode], mode
    checks = check_modes(data, compute_modes(data, consistent_only=True), runs)
    assert [c.mode for c in checks] == list(MODES)
    assert all(c.exact and c.split_differing == 0 for c in checks)
    monde = by_label["monde"].result.per_layer
    assert monde["pcie"].tolist() == [1, 1] and monde["md_near"].tolist() == [2, 2]
    assert by_label["dynande"].result.per_layer["pcie"].tolist() == [0, 2]
    used = by_label["pim-only"].costs["used"]
    assert used["near_compute"] == {**used["near_compute"], "table_cells": 6, "fallback_cells": 0}
    assert used["activation"]["table_cells"] == 2


def test_balanced_split_with_exhaustive_search_beats_the_prefix_rule(tmp_path):
    """DynaNDE only tries prefixes of A; balanced-split may search all subsets of a small
    gate: layer 3's best split is {2, 63} on the NPU (max(205, 141) = 205 < 208)."""
    data = load_neupims(write_dir(tmp_path))
    runs = run_policies(data, scenario(exhaustive_limit=12), 1.0)
    assert next(r for r in runs if r.label == "dynande").cycles[0].tolist() == [225, 205]


def test_cache_and_prefetch_policies_run_on_the_tables(tmp_path):
    data = load_neupims(write_dir(tmp_path))
    extra = [{"name": "lru", "params": {"miss_path": "balanced"}}, "prefetch-oracle"]
    sc = scenario(extra=extra)
    sc = type(sc)(**{**sc.__dict__, "hardware": _with_cache(sc.hardware, 2)})
    runs = run_policies(data, sc, 1.0)
    assert {r.label for r in runs} >= {"lru", "prefetch-oracle"}
    assert all(r.total > 0 for r in runs)


def _with_cache(hardware, experts: int):
    from dataclasses import replace

    return replace(hardware, hbm=replace(hardware.hbm, capacity=experts * 4325376.0))


# -- TableCost ------------------------------------------------------------------------------------
def test_table_cost_uses_the_table_and_falls_back_elsewhere():
    sc = scenario()
    nan = np.nan
    table = CostTable(
        transfer=np.array([[[100.0, nan]]]),
        gpu_compute=np.array([[[10.0, 20.0]]]),
        near_compute=np.array([[[nan, nan]]]),
        activation=np.array([[30.0]]),
        unit="cycles",
        clock_hz=100.0,
    )
    roof = RooflineCost(sc.hardware, sc.model)
    cost = TableCost(table, roof)
    experts, tokens = np.array([0, 1]), np.array([3, 1])
    got = cost.transfer_time("pcie", 0, 0, experts)
    assert got[0] == 1.0 and got[1] == roof.uniform_transfer_time("pcie")
    assert (
        cost.transfer_time("md_link", 0, 0, experts).tolist()
        == [roof.uniform_transfer_time("md_link")] * 2
    )
    assert cost.gpu_compute_time(0, 0, experts, tokens).tolist() == [0.1, 0.2]
    near = cost.near_compute_time(0, 0, experts, tokens)
    np.testing.assert_array_equal(near, roof.near_compute_time(0, 0, experts, tokens))
    assert cost.activation_time("md_link", 0, 0, experts, tokens) == 0.3
    assert (
        cost.gpu_compute_time(5, 0, experts, tokens).tolist()
        == roof.gpu_time_from_tokens(tokens).tolist()
    )  # step outside the table
    d = cost.describe()["used"]
    assert d["transfer"]["table_cells"] == 1 and d["transfer"]["fallback_cells"] == 1
    assert d["transfer"]["fallback_other_links"] == {"md_link": 1}
    assert d["near_compute"]["fallback_cells"] == 2
    assert d["gpu_compute"]["fallback_outside_table"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"unit": "cycles", "clock_hz": None}, "clock"),
        ({"unit": "minutes"}, "unit"),
        ({"activation": np.zeros((2, 1))}, "activation"),
        ({"gpu_compute": np.full((1, 1, 2), -1.0)}, ">= 0"),
    ],
)
def test_cost_table_rejects_bad_input(kwargs, message):
    base = {
        "transfer": np.zeros((1, 1, 2)),
        "gpu_compute": np.zeros((1, 1, 2)),
        "near_compute": np.zeros((1, 1, 2)),
        "activation": np.zeros((1, 1)),
        "unit": "seconds",
    }
    with pytest.raises(UserError, match=message):
        CostTable(**{**base, **kwargs})


# -- the importer ---------------------------------------------------------------------------------
def test_routing_trace_has_the_files_counts(tmp_path):
    data = load_neupims(write_dir(tmp_path))
    trace = data.routing_trace()
    np.testing.assert_array_equal(trace.expert_token_counts(2), data.counts)
    assert trace.num_seqs == 2 and trace.k == 2 and trace.layer_ids == (2, 3)
    for token in trace.topk(2).reshape(-1, 2):
        assert token[0] != token[1]
    assert "reconstructed" in trace.meta.provenance


def test_missing_table_is_reported_and_skipped_by_the_modes_that_need_it(tmp_path):
    root = write_dir(tmp_path)
    (root / "1st" / "pim" / "3" / "SA_stage_E.txt").unlink()
    data = load_neupims(root)
    assert data.defects == ("1st/pim/3/SA_stage_E.txt: missing; cell 1st/layer3 has no pim costs",)
    modes = compute_modes(data)
    assert modes["npu-only"].total == HAND["npu-only"]
    for mode in ("pim-only", "monde", "dynande"):
        assert modes[mode].cells == 1 and modes[mode].total == HAND_CELLS[mode][0]
    assert np.isnan(data.cost_table(1.0).near_compute[0, 1]).all()


def test_table_for_other_experts_is_reported_and_left_out_of_the_cost_table(tmp_path):
    root = write_dir(tmp_path)
    text = (root / "1st" / "pim" / "2" / "SA_stage_E.txt").read_text()
    (root / "1st" / "pim" / "3" / "SA_stage_E.txt").write_text(text)  # a copy, like 1st/pim/4
    data = load_neupims(root)
    assert len(data.defects) == 1
    assert data.defects[0].startswith("1st/pim/3/SA_stage_E.txt: expert rows do not match")
    assert "identical to 1st/pim/2/SA_stage_E.txt" in data.defects[0]
    assert not data.pim_ok[0, 1] and data.npu_ok[0, 1]
    literal = compute_modes(data)
    assert literal["pim-only"].cycles[0, 1] == 210 + 15  # the README's formula, as written
    assert literal["dynande"].cycles[0, 1] == -1  # needs PIM rows for A
    assert compute_modes(data, consistent_only=True)["pim-only"].cycles[0, 1] == -1
    assert np.isnan(data.cost_table(1.0).activation[0, 1])


def _edit(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("rel", "old", "new", "message"),
    [
        ("1st/npu/2/SA_stage_E.txt", "param_load", "param_lod", "expected columns"),
        (
            "1st/npu/2/SA_stage_E.txt",
            " 1001 ",
            " 10x1 ",
            r"SA_stage_E.txt:\d+: expected 6 integers",
        ),
        ("1st/npu/2/SA_stage_E.txt", "             12", "             13", "fc1 \\+ gelu \\+ fc2"),
        ("1st/pim/2/SA_stage_E.txt", "Expert Number", "Expert", "header line"),
        ("1st/pim/2/SA_stage_E.txt", "activation_movement_1", "activation_movement_3", "_1 and"),
        ("1st/pim/2/SA_stage_E.txt", "cycles: 15", "cycles: 16", "Total activation movement"),
        ("1st/layer2.txt", "Expert 7 ", "Expert 5 ", "once"),
        ("1st/layer2.txt", "Expert 7 ", "Expert 99", "0..63"),
        ("1st/layer2.txt", "Total tokens: 2", "Total tokens: 3", "summing to tokens x k"),
        ("1st/layer3.txt", "Expert 9 ", "Expert 64", "0..63"),
        ("1st/layer3.txt", "Expert 2    2", "Expert 2    0", "summing"),
        ("1st/layer2.txt", "Total tokens: 2\n", "", "'Total tokens: N'"),
    ],
)
def test_malformed_files_are_one_line_user_errors(tmp_path, rel, old, new, message):
    root = write_dir(tmp_path)
    _edit(root, rel, old, new)
    with pytest.raises(UserError, match=message) as err:
        load_neupims(root)
    assert "\n" not in str(err.value) and rel in str(err.value)


def test_unsorted_routing_is_an_error(tmp_path):
    cells = {2: {**CELLS[2], "routing": [(7, 1), (5, 2), (63, 1)]}}
    with pytest.raises(UserError, match="sorted by token count"):
        load_neupims(write_dir(tmp_path, cells))


def test_missing_routing_file_and_empty_directory_are_errors(tmp_path):
    with pytest.raises(UserError, match="position directories"):
        load_neupims(tmp_path)
    root = write_dir(tmp_path / "d")
    write_dir(tmp_path / "d2")
    (root / "2nd").mkdir()
    (root / "2nd" / "layer2.txt").write_text((root / "1st" / "layer2.txt").read_text())
    with pytest.raises(UserError, match=r"expected layer files for layers \[2, 3\]"):
        load_neupims(root)


# -- the command ----------------------------------------------------------------------------------
def test_costs_neupims_command_prints_totals_and_writes_files(tmp_path, capsys):
    root = write_dir(tmp_path / "data")
    out = tmp_path / "out"
    file = tmp_path / "scenario.yaml"
    file.write_text(yaml.safe_dump(scenario_dict()))
    code = main(
        [
            "costs",
            "neupims",
            str(root),
            "--scenario",
            str(file),
            "--clock",
            "1 Hz",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    for mode in MODES:
        assert any(line.split()[:3] == [mode, "2", str(HAND[mode])] for line in text.splitlines())
    assert (out / "modes.csv").is_file() and (out / "engine" / "summary.csv").is_file()
    import json

    doc = json.loads((out / "costs.json").read_text())
    assert {c["mode"]: c["exact"] for c in doc["checks"]} == dict.fromkeys(MODES, True)


def test_costs_neupims_command_errors_are_one_line(tmp_path, capsys):
    assert main(["costs", "neupims", str(tmp_path / "nothing")]) == 2
    assert "expected a NeuPIMs cost-table directory" in capsys.readouterr().err
    assert main(["costs", "neupims", str(write_dir(tmp_path)), "--clock", "fast"]) == 2
    assert "--clock: expected a frequency" in capsys.readouterr().err


# -- the shipped data -----------------------------------------------------------------------------
def test_shipped_data_totals_and_engine_reproduction():
    data = load_neupims(SHIPPED)
    assert len(data.defects) == 2
    assert data.defects[0].startswith("2nd/pim/5/SA_stage_E.txt: missing")
    assert data.defects[1].startswith("1st/pim/4/SA_stage_E.txt: expert rows do not match")
    literal = compute_modes(data)
    assert {m: (literal[m].cells, literal[m].total) for m in MODES} == {
        "npu-only": (80, 1386604822),
        "pim-only": (79, 23424859),
        "monde": (79, 88399108),
        "dynande": (78, 23124817),
    }
    consistent = compute_modes(data, consistent_only=True)
    runs = run_policies(data, load_scenario(SCENARIO), 1e9)
    checks = {c.mode: c for c in check_modes(data, consistent, runs)}
    for mode in ("pim-only", "monde", "dynande"):
        assert checks[mode].exact and checks[mode].cells == 78, mode
        assert checks[mode].split_differing == 0, mode
    npu = checks["npu-only"]
    assert npu.cells == 80 and not npu.exact
    assert npu.engine_total - npu.formula_total == npu.explained == 3664


# -- the scenario's cost source -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "hz"), [(1e9, 1e9), ("1 GHz", 1e9), ("800 MHz", 8e8), ("2.5e3 kHz", 2.5e6)]
)
def test_parse_clock(value, hz):
    assert parse_clock(value, "costs.clock") == hz


@pytest.mark.parametrize("value", ["fast", "0 GHz", -1, True, "1 THz", "1.2.3 GHz"])
def test_parse_clock_rejects(value):
    with pytest.raises(UserError, match=r"costs\.clock: expected a frequency"):
        parse_clock(value, "costs.clock")


def test_cost_source_gives_the_trace_and_a_fresh_cost_model_per_run(tmp_path):
    source = CostSource(write_dir(tmp_path), clock_hz=1.0)
    sc = scenario()
    trace = source.trace()
    assert trace.layer_ids == (2, 3)
    first, second = (
        source.cost_model(sc.hardware, sc.model),
        source.cost_model(sc.hardware, sc.model),
    )
    assert first is not second and first.table.clock_hz == 1.0
    assert source.to_dict() == {
        "kind": "neupims",
        "path": str(tmp_path),
        "clock_hz": 1.0,
        "defects": [],
    }
    with pytest.raises(UserError, match=r"costs\.kind"):
        CostSource(tmp_path, 1.0, kind="other")


# -- property: the engine equals the formulas on random tables -------------------------------------
@st.composite
def random_cell(draw) -> dict:
    """One layer: 1-10 active experts with 1-5 tokens each (k = 1: one expert per token), NPU
    compute below every load (the overlap both models assume), any PIM costs."""
    ids = draw(st.lists(st.integers(0, 63), min_size=1, max_size=10, unique=True))
    counts = draw(st.lists(st.integers(1, 5), min_size=len(ids), max_size=len(ids)))
    routing = sorted(zip(ids, counts, strict=True), key=lambda ec: (-ec[1], ec[0]))
    small = st.integers(0, 30)
    npu = {e: (draw(st.integers(500, 600)), draw(small), draw(small), draw(small)) for e in ids}
    pim = {e: (draw(st.integers(0, 200)), draw(small), draw(st.integers(0, 200))) for e in ids}
    return {"routing": routing, "npu": npu, "pim": pim, "act": (draw(small), draw(small))}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cells=st.lists(random_cell(), min_size=1, max_size=2))
def test_engine_equals_the_formulas_on_random_tables(tmp_path_factory, cells):
    tokens = sum(c for _e, c in cells[0]["routing"])
    balanced = []
    for cell in cells:
        routing = _pad(cell["routing"], tokens)
        keep = {e for e, _c in routing}
        npu = {e: v for e, v in cell["npu"].items() if e in keep}
        pim = {e: v for e, v in cell["pim"].items() if e in keep}
        balanced.append({**cell, "routing": routing, "npu": npu, "pim": pim})
    root = write_dir(tmp_path_factory.mktemp("t"), dict(enumerate(balanced, start=2)), tokens, 1)
    data = load_neupims(root)
    assert data.defects == ()
    runs = {r.label: r for r in run_policies(data, scenario(), 1.0)}
    modes = compute_modes(data)
    for mode in ("pim-only", "monde", "dynande"):
        # (|A| = 1 under MoNDE: the README adds act to an empty PIM side, the engine moves no
        # activations; equal here since act < every load)
        np.testing.assert_array_equal(runs[mode].cycles, modes[mode].cycles, err_msg=mode)
    np.testing.assert_array_equal(runs["npu-only"].cycles, npu_only_schedule(data))


def _pad(routing: list[tuple[int, int]], tokens: int) -> list[tuple[int, int]]:
    """Make a second layer's counts add up to the first one's token total (one file format for
    the batch): add the difference to its busiest expert, or drop tokens from the end."""
    total = sum(c for _e, c in routing)
    rows = [list(r) for r in routing]
    if total < tokens:
        rows[0][1] += tokens - total
    while total > tokens:
        cut = min(rows[-1][1], total - tokens)
        rows[-1][1] -= cut
        total -= cut
        if rows[-1][1] == 0:
            rows.pop()
    return sorted(((e, c) for e, c in rows), key=lambda ec: (-ec[1], ec[0]))


def test_prefetches_are_costed_at_the_gate_they_are_for(tmp_path):
    """The engine looks a prefetched expert's transfer up at its own (step, layer) cell: every
    prefetch here is for layer 3's experts (9 is active only there), so no transfer falls back."""
    data = load_neupims(write_dir(tmp_path))
    sc = scenario(extra=[{"name": "prefetch-oracle", "params": {"miss_path": "pcie"}}])
    sc = type(sc)(**{**sc.__dict__, "hardware": _with_cache(sc.hardware, 4)})
    run = next(r for r in run_policies(data, sc, 1.0) if r.label == "prefetch-oracle")
    assert run.result.per_layer["prefetch_pcie"].sum() > 0
    used = run.costs["used"]["transfer"]
    assert used["fallback_cells"] == 0 and used["table_cells"] == 6


# -- `moesim run` with a costs: section ------------------------------------------------------------
def costs_scenario_file(tmp_path: Path, clock: str = "1 GHz", **extra) -> Path:
    """The four mode policies with ``costs:`` naming a hand-made directory (relative path)."""
    write_dir(tmp_path / "tables")
    doc = {k: v for k, v in scenario_dict().items() if k != "trace"}
    doc.update(costs={"kind": "neupims", "path": "tables", "clock": clock}, routing={"topk": 2})
    doc.update(extra)
    file = tmp_path / "scenario.yaml"
    file.write_text(yaml.safe_dump(doc))
    return file


def read_summary(out: Path) -> dict[str, dict]:
    import csv

    with (out / "summary.csv").open(newline="") as handle:
        return {row["label"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("clock", ["1 GHz", "800 MHz", "1 Hz"])
def test_moesim_run_on_cost_tables_gives_the_readme_totals_in_cycles(tmp_path, capsys, clock):
    out = tmp_path / "out"
    assert main(["run", str(costs_scenario_file(tmp_path, clock)), "--out", str(out)]) == 0
    rows = read_summary(out)
    for mode in ("pim-only", "monde", "dynande"):  # md-only, seed-split ceil, balanced-split 0
        assert rows[mode]["cycles"] == str(HAND[mode]), mode
    # NPU-only: the engine computes the last expert loaded (docs/cost-tables.md), by hand:
    # layer 2 loads 5, 7, 63 (3001 cycles) + expert 63's 15; layer 3 loads 2, 9, 63 + 5.
    assert rows["npu-only"]["cycles"] == str(3001 + 15 + 300 + 5)
    printed = capsys.readouterr().out
    assert "cycles" in printed and f"{HAND['monde']:,}" in printed
    resolved = yaml.safe_load((out / "scenario.resolved.yaml").read_text())
    assert resolved["trace"] == {"path": "costs"}
    assert resolved["costs"]["path"] == str(tmp_path / "tables")
    runs = {r["label"]: r for r in resolved["provenance"]["costs"]["runs"]}
    used = runs["pim-only"]["used"]
    assert used["near_compute"]["table_cells"] == 6 and used["near_compute"]["fallback_cells"] == 0
    assert runs["npu-only"]["used"]["transfer"]["table_cells"] == 6
    again = load_scenario(out / "scenario.resolved.yaml")  # the resolved file runs as it is
    assert again.costs is not None and again.costs.clock_hz == parse_clock(clock, "clock")


def test_costs_section_runs_fresh_cost_models_per_policy(tmp_path):
    from sim.scenario import load_scenario_trace, run_scenario

    sc = load_scenario(costs_scenario_file(tmp_path, "1 Hz"))
    results = run_scenario(sc, load_scenario_trace(sc), progress=False)
    # each run's record starts empty (pim-only reads no transfer after npu-only read all 6;
    # monde loads 1 expert per layer; balanced-split prices every candidate split)
    assert [r.costs["used"]["transfer"]["table_cells"] for r in results] == [6, 0, 2, 6]
    assert {r.label: round(r.totals["total_time"]) for r in results} == {
        "npu-only": 3321,
        "pim-only": HAND["pim-only"],
        "monde": HAND["monde"],
        "dynande": HAND["dynande"],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"costs": {"path": "nowhere"}}, r"^costs\.path: expected an existing cost-table dir"),
        ({"costs": {"path": "tables", "clock": "fast"}}, r"^costs\.clock: expected a frequency"),
        ({"costs": {"path": "tables", "kind": "x"}}, r"^costs\.kind: expected one of 'neupims'"),
        ({"trace": "embedded"}, r"^trace\.path: expected 'costs' or no trace section"),
        ({"trace": {"path": "costs", "layers": "2"}}, r"^trace\.layers: expected nothing"),
        ({"costs": None, "trace": "costs"}, r"^trace\.path: expected a costs: section"),
    ],
)
def test_costs_section_errors_are_one_line(tmp_path, change, message):
    file = costs_scenario_file(tmp_path)
    doc = {**yaml.safe_load(file.read_text()), **change}
    if doc["costs"] is None:
        del doc["costs"]
    file.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=message) as err:
        load_scenario(file)
    assert "\n" not in str(err.value) and str(file) in str(err.value)
    assert main(["validate", "--no-trace", str(file)]) == 2


def test_malformed_cost_tables_fail_the_run_before_anything_is_written(tmp_path, capsys):
    file = costs_scenario_file(tmp_path)
    table = tmp_path / "tables" / "1st" / "npu" / "3" / "SA_stage_E.txt"
    table.write_text(table.read_text() + "\n            11 x 1 1 1 3")
    assert main(["run", str(file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "costs.path:" in err and "npu/3/SA_stage_E.txt" in err
    assert not (tmp_path / "out").exists()
