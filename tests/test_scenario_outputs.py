"""What `moesim run` adds beyond the engine's totals: policy statistics (summary.json's nested
``policy_stats``, summary.csv's ``stat_<name>`` columns, the printed predictor footnote) and
timeline events that say their top-k."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from sim.cli import main
from sim.engine.timeline import trace_events
from sim.errors import UserError
from sim.report.load import load_results
from sim.scenario import load_scenario, load_scenario_trace, run_scenario
from sim.scenario.run import stat_columns

SCENARIO = {
    "name": "stats",
    "trace": {
        "synthetic": {
            "num_seqs": 4,
            "seq_len": 16,
            "layer_ids": "2-4",
            "num_experts": 16,
            "topk": 4,
            "seed": 5,
        },
    },
    "routing": {"topk": [2, 4]},
    "model": {"preset": "flame-moe-290m", "num_experts": 16, "top_k": 4},
    "hardware": {"preset": "notebook-gbps", "hbm": {"capacity": "6 experts"}},
    "policies": [
        "seed-split",
        "lru",
        {"name": "prefetch-predicted", "params": {"train_steps": 4}},
        "prefetch-oracle",
    ],
}


@pytest.fixture
def run_dir(tmp_path: Path, capsys) -> tuple[Path, str]:
    file = tmp_path / "stats.yaml"
    file.write_text(yaml.safe_dump(SCENARIO), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["run", str(file), "--out", str(out), "--timeline"]) == 0
    return out, capsys.readouterr().out


def test_policy_stats_in_summary_json_and_csv(run_dir) -> None:
    out, _ = run_dir
    rows = json.loads((out / "summary.json").read_text())
    by_key = {(r["topk"], r["label"]): r for r in rows}
    assert by_key[(2, "lru")]["policy_stats"] is None
    assert by_key[(2, "seed-split")]["policy_stats"] is None
    predicted = by_key[(4, "prefetch-predicted")]["policy_stats"]
    assert predicted["train_steps"] == 4
    tp, fp, fn = (predicted[k] for k in ("true_positives", "false_positives", "false_negatives"))
    assert predicted["precision"] == tp / (tp + fp) and predicted["recall"] == tp / (tp + fn)
    oracle = by_key[(4, "prefetch-oracle")]["policy_stats"]
    assert oracle["precision"] == 1.0 and oracle["recall"] == 1.0 and oracle["prefetched"] > 0
    with (out / "summary.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert "stat_precision" in table[0] and "policy_stats" not in table[0]
    for row in table:
        stats = by_key[(int(row["topk"]), row["label"])]["policy_stats"]
        if stats is None:
            assert row["stat_precision"] == "" and row["stat_prefetched"] == ""
        else:
            assert float(row["stat_recall"]) == stats["recall"]
            assert int(row["stat_prefetched"]) == stats["prefetched"]


def test_printed_table_has_the_predictor_footnote(run_dir) -> None:
    out, printed = run_dir
    rows = json.loads((out / "summary.json").read_text())
    for k in (2, 4):
        stats = next(
            r["policy_stats"] for r in rows if r["topk"] == k and r["label"] == "prefetch-predicted"
        )
        line = next(
            x for x in printed.splitlines() if x.startswith(f"prefetch-predicted (top-{k})")
        )
        assert f"precision {100 * stats['precision']:.1f}%" in line
        assert f"recall {100 * stats['recall']:.1f}%" in line
    assert "lru (top-2):" not in printed  # only policies with a predictor get a footnote


def test_stat_columns_keep_scalars_only() -> None:
    stats = {"objective": 1.5, "ok": True, "name": "x", "none": None, "sizes": [1, 2], "d": {}}
    assert stat_columns(stats) == {
        "stat_objective": 1.5,
        "stat_ok": True,
        "stat_name": "x",
        "stat_none": None,
    }
    assert stat_columns(None) == {}


def test_optimal_reports_its_milp_stats(tmp_path: Path) -> None:
    doc = {
        **SCENARIO,
        "routing": {"topk": [1]},
        "trace": {"synthetic": {**SCENARIO["trace"]["synthetic"], "seq_len": 3, "num_seqs": 2}},
        "policies": ["seed-split", {"name": "optimal", "params": {"slots": 2}}],
    }
    file = tmp_path / "opt.yaml"
    file.write_text(yaml.safe_dump(doc), encoding="utf-8")
    scenario = load_scenario(file)
    results = run_scenario(scenario, load_scenario_trace(scenario), progress=False)
    stats = results[1].policy_stats
    assert stats is not None and stats["objective"] >= 0 and results[0].policy_stats is None


def test_timeline_events_carry_their_topk(run_dir) -> None:
    out, _ = run_dir
    events = json.loads((out / "timeline.json").read_text())["traceEvents"]
    names = {e["pid"]: e["args"] for e in events if e.get("name") == "process_name"}
    assert {a["name"] for a in names.values()} >= {"lru top-2", "lru top-4"}
    for event in (e for e in events if e["ph"] == "X"):
        assert event["args"]["topk"] == names[event["pid"]]["topk"]
    loaded = load_results(out).timeline  # the report matches processes to summary labels
    assert set(loaded.label) == {"seed-split", "lru", "prefetch-predicted", "prefetch-oracle"}
    assert set(loaded.topk) == {2, 4}


def test_plain_run_result_timeline_has_no_topk() -> None:
    scenario_doc = {**SCENARIO, "routing": {"topk": [2]}, "policies": ["seed-split"]}
    from sim.engine.simulate import simulate
    from sim.scenario import scenario_from_dict

    scenario = scenario_from_dict(scenario_doc, "x")
    trace = load_scenario_trace(scenario)
    plain = simulate(
        trace, scenario.hardware, scenario.model, scenario.policies[0].build(), timeline=True
    )
    events = trace_events([plain])
    assert events[0]["args"] == {"name": plain.label, "label": plain.label}
    assert all("topk" not in e["args"] for e in events if e["ph"] == "X")


def test_identical_runs_are_noted_once() -> None:
    from types import SimpleNamespace

    import numpy as np

    from sim.scenario.table import identical_run_notes

    def run(label: str, hits: list[int], topk: int = 6) -> SimpleNamespace:
        return SimpleNamespace(label=label, topk=topk, per_layer={"hits": np.array(hits)})

    notes = identical_run_notes(
        [run("lru", [1, 2]), run("lfu", [1, 2]), run("belady", [2, 2]), run("x", [1, 2], 2)]
    )
    assert len(notes) == 1 and notes[0].startswith("top-6: lfu = lru: identical")
    assert "cache" not in notes[0]  # the runs do not say they are cache policies

    # One line per group and top-k; the cache reason only when every member is a cache policy
    # whose cache is smaller than a gate's active set (here ~5 active experts per gate).
    def policy_run(label: str, policy: str, slots: int | None, topk: int = 2) -> SimpleNamespace:
        per_layer = {"hits": np.zeros(3), "active": np.array([4, 5, 6])}
        return SimpleNamespace(
            label=label, policy=policy, topk=topk, per_layer=per_layer, cache_slots=slots
        )

    near = [
        policy_run("balanced-split", "balanced-split", None),
        policy_run("md-only", "md-only", None),
        policy_run("lru-near", "lru", 2),
        policy_run("lru-big", "lru", 64, topk=6),
        policy_run("lfu-big", "lfu", 64, topk=6),
        policy_run("lru-small", "lru", 2, topk=4),
        policy_run("lfu-small", "lfu", 2, topk=4),
    ]
    assert identical_run_notes(near) == [
        "top-2: balanced-split = lru-near = md-only: identical in every step and layer",
        "top-6: lfu-big = lru-big: identical in every step and layer",
        "top-4: lfu-small = lru-small: identical in every step and layer (each cache is smaller "
        "than a gate's active set: every gate evicts every other cached expert, so the eviction "
        "order never matters)",
    ]


def test_cache_policies_without_hits_are_noted() -> None:
    from types import SimpleNamespace

    import numpy as np

    from sim.scenario.table import no_hit_notes

    def run(
        label: str, policy: str, slots: int | None, hits: int, scope: str = "global"
    ) -> SimpleNamespace:
        per_layer = {"hits": np.array([0, hits]), "active": np.array([34, 36])}
        params = {"scope": scope} if slots is not None else {}
        return SimpleNamespace(
            label=label,
            policy=policy,
            topk=6,
            per_layer=per_layer,
            cache_slots=slots,
            params=params,
        )

    notes = no_hit_notes(
        [
            run("seed-split", "seed-split", None, 0),  # no cache: nothing to say
            run("lru", "lru", 16, 3),  # hits
            run("least-stale", "least-stale", 16, 0),
            run("lfu-big", "lfu", 64, 0),
            run("lru-layer", "lru", 2, 0, scope="layer"),
        ]
    )
    assert notes == [
        "top-6: least-stale: no hits: its cache (16 experts) is smaller than one gate's active "
        "set (~35)",
        "top-6: lfu-big: no hits",
        "top-6: lru-layer: no hits: its cache (2 experts per layer) is smaller than one gate's "
        "active set (~35)",
    ]


def test_run_result_knows_its_cache_size() -> None:
    scenario = load_scenario_from(SCENARIO, policies=["seed-split", "lru"], topk=[2])
    results = run_scenario(scenario, progress=False)
    by_label = {r.label: r for r in results}
    assert by_label["seed-split"].cache_slots is None
    assert by_label["lru"].cache_slots == 6 // 3  # "6 experts", per-layer scope over 3 layers


def load_scenario_from(doc: dict, **changes) -> object:
    from sim.scenario import scenario_from_dict

    data = {**doc, "policies": changes.get("policies", doc["policies"])}
    data["routing"] = {"topk": changes.get("topk", doc["routing"]["topk"])}
    return scenario_from_dict(data, "test")


def test_gap_closed_is_blank_when_no_bound_beats_the_baseline() -> None:
    """belady bounds demand misses, not latency: when it is slower than the baseline there is
    no gap to close, so every row's gap_closed is blank and the table says why."""
    from types import SimpleNamespace

    from sim.scenario.run import summary_rows
    from sim.scenario.table import bound_notes

    def fake(label: str, policy: str, mean: float, topk: int, bound: bool = False):
        row = {
            "policy": policy,
            "label": label,
            "topk": topk,
            "is_bound": bound,
            "is_baseline": label == "seed-split",
            "mean_step": mean,
            "total_time": mean,
        }
        return SimpleNamespace(label=label, policy=policy, topk=topk, summary_row=lambda: row)

    scenario = SimpleNamespace(baseline="seed-split", clock_hz=None, topk=[2, 6])
    results = [
        fake("seed-split", "seed-split", 1.88e-3, 2),
        fake("balanced-split", "balanced-split", 1.5e-3, 2),
        fake("belady", "belady", 2.04e-3, 2, bound=True),
        fake("seed-split", "seed-split", 4e-3, 6),
        fake("lru", "lru", 3e-3, 6),
        fake("belady", "belady", 2e-3, 6, bound=True),
    ]
    rows = {(r["topk"], r["label"]): r for r in summary_rows(scenario, results)}
    assert all(rows[(2, label)]["gap_closed"] is None for label in ("seed-split", "belady"))
    assert rows[(2, "balanced-split")]["gap_closed"] is None
    baseline_gap = rows[(6, "seed-split")]["gap_closed"]
    assert baseline_gap == 0.0 and str(baseline_gap) == "0.0"  # never -0.0
    assert rows[(6, "lru")]["gap_closed"] == pytest.approx(0.5)
    assert bound_notes(scenario, results) == [
        "top-2: gap closed blank: no bound beats the baseline here (belady 2.04 ms vs "
        "seed-split 1.88 ms mean step): belady bounds demand misses, not latency"
    ]


# -- honest labels: kind, header, notes that state their cause ------------------------------------
MIXTRAL_SHAPED = {
    "name": "mix",
    "trace": {
        "synthetic": {
            "num_seqs": 8,
            "seq_len": 24,
            "layer_ids": "1-4",
            "num_experts": 8,
            "topk": 2,
            "seed": 1,
        }
    },
    "model": "mixtral-8x7b",
    "hardware": {"preset": "h100-pcie5-cxl", "hbm": {"capacity": "8 experts"}},
    "policies": [
        "seed-split",
        {"name": "lru", "label": "lru-balanced", "params": {"miss_path": "balanced"}},
        "static-popular",
        "prefetch-oracle",
        {"name": "belady", "label": "belady-seed", "params": {"miss_path": "seed"}},
    ],
}


def _printed(doc: dict, tmp_path: Path, capsys, *overrides: str) -> tuple[str, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    out = tmp_path / "out"
    args = ["run", str(path), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    return capsys.readouterr().out, out


def test_eight_expert_top2_run_labels_kinds_and_never_hides_a_beaten_bound(tmp_path, capsys):
    printed, out = _printed(MIXTRAL_SHAPED, tmp_path, capsys)
    rows = {r["label"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert {k: r["kind"] for k, r in rows.items()} == {
        "seed-split": "online",
        "lru-balanced": "online",
        "static-popular": "oracle",  # profiled on the trace it is judged on
        "prefetch-oracle": "oracle",
        "belady-seed": "bound",
    }
    assert float(rows["seed-split"]["tokens_per_s"]) == pytest.approx(
        8 / float(rows["seed-split"]["mean_step"])
    )
    assert "tokens/s" in printed and "ms/token" in printed and " kind " in printed
    header = next(line for line in printed.splitlines() if line.startswith("hardware: "))
    for part in (
        "GPU h100-pcie",
        "pcie 53 GB/s [pcie5-x16]",
        "HBM expert cache 8 experts",
        "md_mode fetch",
        "non-expert time: roofline",
    ):
        assert part in header
    # the seed's 32:512 share of ~7 active experts rounds to 0: the baseline is md-only
    assert "seed-split sends 0 experts over PCIe" in printed
    assert (
        "seed rule: splits by the constants 32:512 (PCIe:MD), not by this scenario's links"
        in printed
    )
    # belady with the seed's miss path is beaten on latency: said on the same screen, marked
    assert float(rows["lru-balanced"]["mean_step"]) < float(rows["belady-seed"]["mean_step"])
    assert float(rows["lru-balanced"]["gap_closed"]) > 1.0
    assert re.search(r"lru-balanced.* beats? the bound belady-seed on mean step", printed)
    assert "(gap closed over 100%, marked * in the printed table)" in printed
    assert (
        "belady bounds demand misses, not latency (for its cache size, with misses served by "
        "the seed rule)" in printed
    )
    assert re.search(r"\d+%\*", printed)  # the over-100 % mark in the gap column
    notes = (out / "notes.txt").read_text()
    assert "beat" in notes and "md-only here" in notes


def test_default_belady_takes_the_latency_minimising_miss_path(tmp_path, capsys) -> None:
    doc = {**MIXTRAL_SHAPED, "policies": [*MIXTRAL_SHAPED["policies"][:2], "belady"]}
    printed, out = _printed(doc, tmp_path, capsys)
    rows = {r["label"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert float(rows["belady"]["mean_step"]) <= float(rows["lru-balanced"]["mean_step"])
    assert "beat" not in printed


def test_zero_slot_caches_and_never_fetched_misses_say_so(tmp_path, capsys) -> None:
    doc = {**SCENARIO, "routing": {"topk": [4]}, "policies": ["seed-split", "lru", "lfu"]}
    printed, _ = _printed(doc, tmp_path, capsys, "hardware.hbm.capacity=1 experts")
    assert (
        "top-4: lru, lfu: no hits: 0 cache slots per layer (scope: layer divides the cache by "
        "the trace's 3 layers, rounding down)" in printed
    )
    near = {
        **SCENARIO,
        "routing": {"topk": [4]},
        "hardware": {
            "preset": "notebook-gbps",
            "hbm": {"capacity": "6 experts"},
            "md_mode": "near-data",
            "md_compute": {"memory_bandwidth": "1 TB/s", "peak_flops": "100 TFLOP/s"},
        },
        "policies": ["seed-split", {"name": "lru", "params": {"miss_path": "md"}}],
    }
    printed, _ = _printed(near, tmp_path / "near", capsys)
    assert "lru: no hits: its miss path (md) never brings an expert's weights to the GPU" in printed
    assert "smaller than one gate's active set" not in printed


def test_static_popular_is_online_only_when_profiled_on_another_trace(tmp_path) -> None:
    from sim.scenario import scenario_from_dict

    def kind(params: dict) -> str:
        doc = {
            "trace": {"path": "embedded", "positions": "0-7"},
            "hardware": {"preset": "notebook-gbps", "hbm": {"capacity": "64 experts"}},
            "policies": [{"name": "static-popular", "params": params}],
        }
        scenario = scenario_from_dict(doc, "test")
        results = run_scenario(scenario, progress=False)
        return next(r.kind for r in results if r.policy == "static-popular")

    assert kind({}) == "oracle"  # its warm-up window is the start of the judged trace
    assert kind({"profile": "embedded:flame-moe-290m-synth"}) == "online"
    assert kind({"profile": "embedded", "warmup_steps": 4}) == "oracle"  # the same rows
    other = tmp_path / "four-layers"
    synth = ["trace", "synth", "--out", str(other), "--layers", "2-5", "--num-shards", "1"]
    assert main([*synth, "--seq-len", "8", "--micro-batch-size", "2"]) == 0
    with pytest.raises(UserError, match="profile: expected a trace of 8 layers x 64 experts"):
        kind({"profile": str(other)})
