"""The validation against published measurements (benchmarks/published, docs/validation.md):
the cheap cases reproduce published.csv exactly, the table in the docs is the CSV's, the
calibrated machine figures are calibrate.py's output, the fitted locality reproduces the
published rates, and bad case files get one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "benchmarks" / "published"
for path in (PUBLISHED, PUBLISHED.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import calibrate  # noqa: E402
import harness  # noqa: E402
import locality  # noqa: E402
import run  # noqa: E402

from sim.errors import UserError  # noqa: E402
from sim.units import parse_bandwidth, parse_duration  # noqa: E402

FAST = [c.id for c in harness.load_cases() if c.fast]


def test_the_csv_has_every_case_once_with_the_issue_columns() -> None:
    rows = harness.read_csv()
    assert tuple(rows[0]) == harness.COLUMNS
    ids = [c.id for c in harness.load_cases()]
    assert [r["case"] for r in rows] == ids
    assert len(ids) >= 8
    assert len({r["publication"].split("(")[-1] for r in rows}) >= 4
    for r in rows:  # the error column is the two figures' relative difference
        published, predicted = float(r["published"]), float(r["predicted"])
        assert float(r["error_pct"]) == pytest.approx(
            100 * (predicted - published) / published, abs=0.06 + 1e-3 * abs(published)
        )


def test_fast_cases_reproduce_the_committed_csv_exactly() -> None:
    assert len(FAST) >= 3
    committed = {r["case"]: r for r in harness.read_csv()}
    for case in harness.load_cases(FAST):
        assert harness.row(case, harness.predict(case).value) == committed[case.id], case.id


def test_run_check_passes_on_the_fast_cases(capsys) -> None:
    assert run.main(["--check", "--cases", ",".join(FAST[:1])]) == 0
    assert "reproduced" in capsys.readouterr().out


def test_the_docs_table_is_the_csvs() -> None:
    doc = run.DOC.read_text(encoding="utf-8")
    table = harness.markdown_table(harness.read_csv())
    assert run.doc_with_table(doc, table) == doc, "run: benchmarks/published/run.py"
    assert run.FIGURE.exists()


def test_machines_hold_calibrate_pys_figures() -> None:
    machines = yaml.safe_load(harness.MACHINES.read_text(encoding="utf-8"))
    cal = calibrate.llamacpp_rtx2080()
    box = machines["llamacpp-rtx2080"]
    assert parse_bandwidth(box["hbm"]["bandwidth"], "") == pytest.approx(
        cal.gpu_bandwidth, rel=5e-3
    )
    assert parse_duration(box["gpu"]["layer_overhead"], "") == pytest.approx(
        cal.layer_overhead, rel=5e-3
    )
    cpu = parse_bandwidth(box["host_compute"]["memory_bandwidth"], "")
    assert cpu == pytest.approx(cal.cpu_bandwidth, rel=5e-3)
    for name, sockets in (("ktrans-1s", 1), ("ktrans-2s", 2)):
        got = parse_bandwidth(machines[name]["host_compute"]["memory_bandwidth"], "")
        expected = cal.cpu_efficiency * sockets * calibrate.XEON_6454S_DRAM
        assert got == pytest.approx(expected, rel=5e-4)
    overhead, roofline = calibrate.moe_infinity_a5000()
    assert 0 < roofline < calibrate.MOE_INFINITY_COMPUTE_S
    mi = parse_duration(machines["moeinf-a5000"]["gpu"]["layer_overhead"], "")
    assert mi == pytest.approx(overhead, rel=5e-4)


def test_the_gguf_byte_model_matches_published_file_sizes() -> None:
    for _name, ours, published in calibrate.gguf_file_check():
        assert ours == pytest.approx(published, rel=0.006)


def test_mixtral_non_expert_parameters_match_the_paper() -> None:
    """46.7 B total - 45.1 B of experts (arXiv 2312.17238 s.4.2): 1,605,636,096 with the norms,
    which the roofline does not count (32 x 2 x 4096 + 4096)."""
    case = harness.load_cases(["moeinf-mixtral-a5000"])[0]
    scenario, doc = harness.build_scenario(case)
    assert harness.non_expert_params(scenario) == 1_605_636_096 - (32 * 2 * 4096 + 4096)
    budget = 0.75 * 24e9 - 2 * harness.non_expert_params(scenario)
    assert doc["hardware"]["hbm"]["capacity"] == f"{int(budget // 352_321_536)} experts"


def test_the_fitted_locality_reproduces_the_published_rates() -> None:
    doc = locality.load()
    first, either = locality.measure(doc["synthetic"])
    goal_first, goal_either = locality.targets()
    np.testing.assert_allclose(either, goal_either, atol=0.005)  # what it is fitted to
    np.testing.assert_allclose(either, doc["rates"]["first_or_second_generated"], atol=1e-4)
    np.testing.assert_allclose(first, doc["rates"]["first_choice_generated"], atol=1e-4)
    assert np.all(np.abs(first - goal_first) < 0.07)  # the independent check, as documented


def test_repeat_rates_closed_form() -> None:
    # token 0 -> token 1: same first choice, sets intersect; 1 -> 2: disjoint
    experts = np.array([[0, 1], [0, 2], [3, 4]])[:, None, None, :]
    first, either = locality.repeat_rates(experts, (0,))
    assert first.tolist() == [0.5] and either.tolist() == [0.5]


def _case_file(tmp_path: Path, **meta: object) -> Path:
    base = yaml.safe_load((PUBLISHED / "cases" / "llama-gptoss20b-rtx2080.yaml").read_text())
    base["case"].update(meta)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"unit": "s"}, r"bad.yaml: case.unit: expected one of"),
        ({"measure": "prefill"}, r"bad.yaml: case.measure: expected one of"),
        ({"requests": 1}, r"bad.yaml: case.requests: expected at least 2"),
    ],
)
def test_bad_case_files_get_one_line_errors(tmp_path: Path, meta: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        harness.Case.load(_case_file(tmp_path, **meta))


def test_unknown_machine_and_case(tmp_path: Path) -> None:
    path = _case_file(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["scenario"]["machine"] = "no-such-box"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match="unknown machine 'no-such-box'"):
        harness.resolved_scenario(harness.Case.load(path))
    with pytest.raises(UserError, match="unknown case"):
        harness.load_cases(["no-such-case"])


def test_show_prints_a_plain_scenario(capsys) -> None:
    """`run.py --show CASE` prints the resolved scenario: a document `moesim run` accepts."""
    from sim.scenario import scenario_from_dict

    assert run.main(["--show", "moeinf-dsv2lite-a5000"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert "machine" not in doc and doc["hardware"]["hbm"]["capacity"].endswith("experts")
    scenario = scenario_from_dict(doc)
    assert scenario.hardware.gpu.layer_overhead == pytest.approx(1.609e-3)
    assert run.main(["--show", "no-such-case"]) == 2


def test_fair_links_sensitivity_leaves_paired_transfers_alone(capsys) -> None:
    """mixtral-offloading without a cache loads its two experts per layer together, which keep
    both fifo slots busy: max-min fair links give the same prediction (docs/validation.md)."""
    case = harness.load_cases(["mo-t4-2bit-nocache"])[0]
    fifo = float(next(r for r in harness.read_csv() if r["case"] == case.id)["predicted"])
    assert run.main(["--fair-links", "--cases", case.id]) == 0
    out = capsys.readouterr().out
    assert "nothing written" in out
    fair = float(out.split("predicted")[1].split()[0])
    assert fair == pytest.approx(fifo, rel=1e-3)
