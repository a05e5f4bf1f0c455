"""Scenario validation: every bad input is ONE stderr line naming its YAML path, exit 2,
nothing written; the shipped scenarios validate; docs/scenarios.md matches the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.errors import UserError
from sim.scenario import load_scenario, scenario_from_dict, set_dotted

ROOT = Path(__file__).resolve().parents[1]
GOOD = {
    "name": "t",
    "trace": "embedded",
    "hardware": {"preset": "notebook-gbps", "hbm": {"capacity": "16 experts"}},
    "policies": ["seed-split", "lru"],
}


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


BAD_CASES = [
    # (dotted key, value, expected start of the message)
    ("surprise", 1, "surprise: unknown key"),
    (
        "hardware.links",
        {"pcie": {"bandwidth": "fast"}},
        "hardware.links.pcie.bandwidth: expected a bandwidth like '32 GB/s', got 'fast'",
    ),
    (
        "hardware.links",
        {"pcie": {"bandwidth": "0 GB/s"}},
        "hardware.links.pcie.bandwidth: expected a positive bandwidth",
    ),
    (
        "hardware.links",
        {"md_link": {"bandwidth": "-4 GB/s"}},
        "hardware.links.md_link.bandwidth: expected a positive bandwidth",
    ),
    ("hardware.links", {"pcie": {"latency": "2 weeks"}}, "hardware.links.pcie.latency: expected"),
    (
        "hardware.links",
        {"pcie": {"channels": "two"}},
        "hardware.links.pcie.channels: expected an integer, got 'two'",
    ),
    ("hardware.links", {"pcie": {"colour": "red"}}, "hardware.links.pcie.colour: unknown key"),
    ("hardware.links", {"pcie": "pcie9-x16"}, "hardware.links.pcie.preset: expected one of"),
    ("hardware.preset", "warp-drive", "hardware.preset: expected one of"),
    (
        "hardware.hbm",
        {"capacity": "1 MB"},
        "hardware.hbm.capacity: expected 0 (no cache) or at least one expert",
    ),
    ("hardware.hbm", {"capacity": "1 TB"}, "hardware.hbm.capacity: expected at most the GPU's"),
    ("hardware.hbm", {"capacity": "big"}, "hardware.hbm.capacity: expected a size"),
    ("hardware.md_mode", "teleport", "hardware.md_mode: expected one of"),
    ("hardware.md_mode", "near-data", "hardware.md_compute: required"),
    (
        "policies",
        ["seed-split", "lru", {"name": "lru", "label": "x", "params": {"slots": "many"}}],
        "policies[2].params.slots: expected an integer, got 'many'",
    ),
    (
        "policies",
        ["seed-split", {"name": "lru", "params": {"colour": 1}}],
        "policies[1].params.colour: unknown parameter",
    ),
    ("policies", ["seed-split", "clairvoyance"], "policies[1].name: expected one of"),
    ("policies", ["seed-split", "lru", "lru"], "policies[2].label: expected a label unique"),
    ("baseline", "lru-7", "baseline: expected one of the policy labels"),
    ("routing.topk", [1, "two"], "routing.topk[1]: expected an integer"),
    ("routing.topk", "six", "routing.topk: expected a range like '0-9' or a list"),
    ("routing.topk", [0], "routing.topk[0]: expected a value > 0"),
    ("routing.topk", [65], "routing.topk[0]: expected at most 64"),
    ("model", {"expert_bytes": "huge"}, "model.expert_bytes: expected a size"),
    ("model", {"preset": "gpt-9"}, "model.preset: expected one of"),
    ("trace", {"path": "no/such/dump"}, "trace.path: expected an existing trace directory"),
    ("trace", {"positions": "9-0"}, "trace.positions: range '9-0' ends before it starts"),
    ("trace", {"layout": "sideways"}, "trace.layout: expected one of"),
    (
        "trace",
        {"path": "embedded", "synthetic": {"seq_len": 8}},
        "trace: expected either path or synthetic, got both",
    ),
    ("trace", {"synthetic": {"seq_len": "long"}}, "trace.synthetic.seq_len: expected an integer"),
    ("seed", -1, "seed: expected a value >= 0"),
    ("output", {"timeline": "yes"}, "output.timeline: expected true or false"),
]


@pytest.mark.parametrize(("key", "value", "start"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_each_error_is_one_line_with_its_yaml_path(
    tmp_path, capsys, monkeypatch, key, value, start
) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, set_dotted(GOOD, key, value))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["validate", "--no-trace", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"moesim: error: {start}"), err
    assert str(path) in err
    # nothing written: not by validate, and not by run either
    assert main(["run", str(path), "--quiet"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_yaml_syntax_and_missing_file(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("hardware: [unclosed\n", encoding="utf-8")
    assert main(["validate", str(bad)]) == 2
    assert "expected readable YAML" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "none.yaml")]) == 2
    assert "got nothing (missing)" in capsys.readouterr().err


def test_set_overrides_and_dotted_paths() -> None:
    data = set_dotted(GOOD, "policies[1]", {"name": "lru", "params": {"slots": 8}})
    data = set_dotted(data, "hardware.links.pcie.bandwidth", "25 GB/s")
    scenario = scenario_from_dict(data, "x")
    assert scenario.hardware.pcie.bandwidth == 25e9
    assert scenario.hardware.pcie.latency == 0.0  # the preset's, kept
    assert scenario.policy("lru").params == {"slots": 8}
    assert GOOD["policies"][1] == "lru"  # set_dotted copies


def test_setting_inside_a_string_shorthand_keeps_what_it_names() -> None:
    """`links.md_link: NAME` is `{preset: NAME}`: setting one field inside it must keep the
    preset's other fields (latency, channels), and `policies[i]: NAME` is `{name: NAME}`."""
    data = set_dotted(GOOD, "hardware.links.md_link", "rdma-400g-ndr")
    data = set_dotted(data, "hardware.links.md_link.bandwidth", "64 GB/s")
    data = set_dotted(data, "policies[1].params.slots", 8)
    s = scenario_from_dict(data, "x")
    assert s.hardware.md_link.bandwidth == 64e9
    assert s.hardware.md_link.latency == 3e-6  # from the rdma-400g-ndr preset, not lost
    assert s.policy("lru").params == {"slots": 8}


def test_presets_merge_and_capacity_in_experts() -> None:
    s = scenario_from_dict(set_dotted(GOOD, "hardware.links.md_link", "rdma-400g-ndr"), "x")
    assert s.hardware.md_link.bandwidth == 46e9 and s.hardware.md_link.latency == 3e-6
    assert s.hardware.pcie.bandwidth == 4e9  # 32 Gbps, from notebook-gbps
    assert s.hardware.hbm.capacity == 16 * s.model.expert_bytes
    assert s.model.expert_bytes == 3 * 1024 * 704 * 2
    assert s.topk == [6] and s.baseline == "seed-split"


def test_topk_shorthands() -> None:
    assert scenario_from_dict({**GOOD, "routing": {"topk": "1,2,6"}}, "x").topk == [1, 2, 6]
    assert scenario_from_dict({**GOOD, "routing": {"topk": 2}}, "x").topk == [2]


def test_baseline_added_when_missing() -> None:
    s = scenario_from_dict({**GOOD, "policies": ["lru"]}, "x")
    assert [p.label for p in s.policies] == ["seed-split", "lru"]


def test_resolved_dict_validates_back_to_the_same_scenario() -> None:
    s = scenario_from_dict(GOOD, "x")
    again = scenario_from_dict(s.resolved_dict(), "y")
    assert again.hardware == s.hardware and again.model == s.model
    assert again.resolved_dict() == s.resolved_dict()


def _scenario_files() -> list[Path]:
    files = sorted((ROOT / "scenarios").glob("*.yaml"))
    return [f for f in files if "sweep" not in (yaml.safe_load(f.read_text()) or {})]


@pytest.mark.parametrize("path", _scenario_files(), ids=lambda p: p.name)
def test_shipped_scenarios_validate(path: Path, tmp_path: Path) -> None:
    if path.name == "seed-baseline.yaml":
        dump = tmp_path / "dump"
        (dump / "samples").mkdir(parents=True)
        (dump / "actives").mkdir()
        scenario = load_scenario(path, [f"trace.path={dump}"])
        assert scenario.trace.layout == "seed" and scenario.topk == [1, 2, 6]
        assert scenario.trace.shards == ("1-2", "1-3")
        assert scenario.trace.positions == tuple(range(10))
        assert scenario.hardware.pcie.bandwidth * 16 == scenario.hardware.md_link.bandwidth
    else:
        assert main(["validate", "--no-trace", str(path)]) == 0


def test_seed_baseline_placeholder_is_reported_clearly(capsys) -> None:
    assert main(["validate", str(ROOT / "scenarios" / "seed-baseline.yaml")]) == 2
    err = capsys.readouterr().err
    assert "trace.path: expected an existing trace directory" in err
    assert "/path/to/flame-moe-dump" in err


def test_docs_scenarios_md_is_up_to_date() -> None:
    from sim.scenario.schema_docs import schema_markdown

    example = (ROOT / "scenarios" / "default.yaml").read_text(encoding="utf-8")
    expected = schema_markdown(example)
    actual = (ROOT / "docs" / "scenarios.md").read_text(encoding="utf-8")
    assert actual == expected, "run: moesim schema --markdown --out docs/scenarios.md"


def test_trace_batch_keeps_the_first_sequences_and_embedded_names() -> None:
    from sim.scenario import load_scenario_trace

    data = set_dotted(GOOD, "trace", {"path": "embedded:flame-moe-290m-real", "batch": 3})
    scenario = scenario_from_dict(data, "x")
    assert scenario.trace.seqs == (0, 1, 2)
    trace = load_scenario_trace(scenario)
    assert trace.num_seqs == 3 and trace.meta.model == "flame-moe-290m"
    both = set_dotted(data, "trace.seqs", "0-1")
    with pytest.raises(UserError, match=r"^trace.batch: expected either"):
        scenario_from_dict(both, "x")
    with pytest.raises(UserError, match="embedded:no-such-trace"):
        scenario_from_dict(set_dotted(GOOD, "trace", "embedded:no-such-trace"), "x")


SELECTIONS_OUTSIDE_THE_TRACE = [
    # (--set, expected start of the message); the embedded trace: 8 seqs, 256 steps, layers 2-9
    ("trace.positions=250-260", "trace.positions: expected values in 0..255"),
    ("trace.layers=1-3", "trace.layers: expected ids among 2-9 (the trace's layers), got [1] ("),
    ("trace.batch=9", "trace.batch: expected at most 8 (the trace's sequences), got 9"),
    ("trace.seqs=7-8", "trace.seqs: expected indices below 8"),
]


@pytest.mark.parametrize(
    ("override", "start"),
    SELECTIONS_OUTSIDE_THE_TRACE,
    ids=[c[0].partition("=")[0] for c in SELECTIONS_OUTSIDE_THE_TRACE],
)
def test_selection_outside_the_trace_names_its_yaml_path_and_file(
    tmp_path, capsys, override, start
) -> None:
    path = _write(tmp_path, GOOD)
    assert main(["validate", str(path), "--set", override]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"moesim: error: {start}"), err
    assert err.rstrip().endswith(f"({path})"), err


@pytest.mark.parametrize("dotted", ["policies[9].name", "policies.9.name"])
def test_set_index_out_of_range_is_named_as_the_schema_names_it(dotted) -> None:
    with pytest.raises(UserError, match=r"^policies\[9\]: expected an index below 2, got '9'$"):
        set_dotted(GOOD, dotted, "lru")


def test_policy_cache_above_the_hbm_budget_names_both_fields(tmp_path, capsys) -> None:
    lru16 = {"name": "lru", "label": "lru-16", "params": {"slots": 16}}
    data = {**GOOD, "hardware": "notebook-gbps", "policies": ["seed-split", lru16]}
    path = _write(tmp_path, data)
    assert main(["validate", "--no-trace", str(path)]) == 2  # before any run starts
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(
        "moesim: error: policies[1].params.slots (lru-16): expected at most 0 experts "
        "(hardware.hbm.capacity is 0 B, from preset notebook-gbps; set hardware.hbm.capacity), "
        "got 16"
    ), err
    fits = set_dotted(
        data, "hardware", {"preset": "notebook-gbps", "hbm": {"capacity": "16 experts"}}
    )
    assert scenario_from_dict(fits, "x").policy("lru-16").params == {"slots": 16}
    with pytest.raises(UserError, match=r"^policies\[1\]\.params\.capacity_bytes \(lru-16\): "):
        scenario_from_dict(set_dotted(fits, "policies[1].params", {"capacity_bytes": 1e11}), "x")


def test_schema_docs_name_the_embedded_traces_by_name() -> None:
    from sim.scenario.schema_docs import schema_markdown

    text = schema_markdown("")
    assert "`embedded:NAME`" in text and "`embedded:flame-moe-290m-synth`" in text
    assert (ROOT / "traces" / "flame-moe-290m-synth").is_dir()  # the example is shipped


def test_validate_checks_every_file_and_reports_each(tmp_path, capsys) -> None:
    bad_preset = tmp_path / "a.yaml"
    bad_preset.write_text("hardware: nosuch\n")
    bad_policy = tmp_path / "b.yaml"
    bad_policy.write_text("hardware: notebook-gbps\npolicies: [lru2]\n")
    good = str(ROOT / "scenarios" / "hbm-tight.yaml")
    files = [good, str(bad_preset), str(bad_policy), str(ROOT / "scenarios" / "sweep-hbm.yaml")]
    assert main(["validate", "--no-trace", *files]) == 2
    captured = capsys.readouterr()
    assert [line.split(": ok")[0] for line in captured.out.splitlines()] == [files[0], files[3]]
    errors = captured.err.splitlines()
    assert errors[0].startswith("moesim: error: hardware.preset: expected one of")
    assert str(bad_preset) in errors[0]
    assert (
        errors[1].startswith("moesim: error: policies[0].name: expected")
        and str(bad_policy) in errors[1]
    )
    assert errors[2] == "moesim: 2 of 4 files failed"
    assert main(["validate", "--no-trace", good, good]) == 0
