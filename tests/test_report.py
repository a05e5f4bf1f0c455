"""Reports: figures from small hand-written result directories, checked through their artists;
the HTML is self-contained; the trace-event reader; the ``moesim report`` command."""

from __future__ import annotations

import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml

from sim.cli import main
from sim.commands.report import parse_window
from sim.engine.results import PER_LAYER_COLUMNS, PER_STEP_COLUMNS
from sim.errors import UserError
from sim.report import build_content, write_report
from sim.report import figures as F
from sim.report.load import load_results, read_table, read_timeline
from sim.scenario.run import SUMMARY_COLUMNS

LABELS = (("seed-split", "seed-split", False), ("lru", "lru", False), ("belady", "belady", True))
STEPS, LAYERS, LAYER_IDS, EXPERT_BYTES = 4, 3, (2, 3, 4), 1_000_000
BW = {"pcie": 32e9, "md_link": 64e9}
DPI = 80


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    path.write_text(buf.getvalue())


def _rows(columns: tuple[str, ...], rows: list[dict[str, object]]) -> list[list[object]]:
    """Rows given by column name, in ``columns`` order (unnamed cells 0)."""
    return [[row.get(c, 0) for c in columns] for row in rows]


def make_run(
    root: Path, topks: tuple[int, ...] = (2,), synthetic_layers: tuple[int, ...] = ()
) -> Path:
    """A small results directory with exactly the columns of CONTRACTS.md."""
    rng = np.random.default_rng(7)
    layer_rows, step_rows, summary = [], [], []
    for k in topks:
        for n, (label, policy, bound) in enumerate(LABELS):
            latencies = []
            for step in range(STEPS):
                t = step * 1e-3
                for layer in range(LAYERS):
                    active = int(rng.integers(4, 9))
                    hits = 0 if policy == "seed-split" else int(rng.integers(0, active))
                    pcie = (active - hits) // 2
                    md = active - hits - pcie
                    window = float(rng.uniform(1e-5, 1e-4)) * (n + 1)
                    layer_rows.append(
                        {
                            "label": label,
                            "policy": policy,
                            "topk": k,
                            "step": step,
                            "position": step,
                            "layer": layer,
                            "layer_id": LAYER_IDS[layer],
                            "active": active,
                            "hits": hits,
                            "pcie": pcie,
                            "md_fetch": md,
                            "bytes_pcie": pcie * EXPERT_BYTES,
                            "bytes_md": md * EXPERT_BYTES,
                            "t_start": t,
                            "t_gate": t,
                            "t_end": t + 2e-4,
                            "transfer_window": window,
                            "stall": 0.0,
                            "layer_time": 2e-4,
                        }
                    )
                    t += 2e-4
                latencies.append(float(rng.uniform(0.5e-3, 2e-3)) * (3 - n))
                step_rows.append(
                    {
                        "label": label,
                        "policy": policy,
                        "topk": k,
                        "step": step,
                        "position": step,
                        "latency": latencies[-1],
                        "compute_only": 0.3e-3,
                    }
                )
            mean = float(np.mean(latencies))
            summary.append(
                {
                    "policy": policy,
                    "label": label,
                    "topk": k,
                    "kind": "bound" if bound else "online",
                    "is_bound": bound,
                    "is_baseline": label == "seed-split",
                    "total_time": mean * STEPS,
                    "mean_step": mean,
                    "p50_step": float(np.percentile(latencies, 50)),
                    "p99_step": float(np.percentile(latencies, 99)),
                    "transfer_time": 0.0,
                    "bytes_pcie": 0.0,
                    "bytes_md": 0.0,
                    "hit_rate": 0.0,
                    "stall": 0.0,
                    "tokens_per_s": 8 / mean,
                    "ms_per_token": 1e3 * mean,
                    "gap_closed": "",
                }
            )
    base = {r["topk"]: r["mean_step"] for r in summary if r["is_baseline"]}
    for r in summary:
        r["speedup"] = base[r["topk"]] / r["mean_step"]
    _write_csv(
        root / "per_layer.csv",
        ["label", "policy", "topk", *PER_LAYER_COLUMNS],
        _rows(("label", "policy", "topk", *PER_LAYER_COLUMNS), layer_rows),
    )
    _write_csv(
        root / "per_step.csv",
        ["label", "policy", "topk", *PER_STEP_COLUMNS],
        _rows(("label", "policy", "topk", *PER_STEP_COLUMNS), step_rows),
    )
    _write_csv(root / "summary.csv", list(SUMMARY_COLUMNS), _rows(SUMMARY_COLUMNS, summary))
    scenario = {
        "name": "tiny",
        "baseline": "seed-split",
        "routing": {"topk": list(topks)},
        "hardware": {"links": {"pcie": {"bandwidth": "32 GB/s"}, "md_link": {"bandwidth": 64e9}}},
        "policies": [{"name": p, "label": lb} for lb, p, _ in LABELS],
    }
    (root / "scenario.resolved.yaml").write_text(yaml.safe_dump(scenario))
    meta = {
        "model": "flame-moe-290m",
        "synthetic": False,
        "synthetic_layers": list(synthetic_layers),
    }
    (root / "trace.json").write_text(json.dumps({"meta": meta, "shape": [STEPS, LAYERS, 8, 6]}))
    return root


def make_timeline(root: Path) -> Path:
    """Chrome trace events: numeric pid/tid named by metadata events, as Perfetto expects."""
    events: list[dict[str, object]] = []
    resources = ("gpu", "pcie[0]", "pcie[1]", "md_link[0]")
    for pid, (label, _, _) in enumerate(LABELS):
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": label}})
        for tid, res in enumerate(resources):
            events.append(
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": res}}
            )
        for step in range(STEPS):
            for layer in range(LAYERS):
                t0 = (step * LAYERS + layer) * 300.0  # us
                # two overlapping PCIe channels: union 100 us; MD link 40 us; compute 50 us
                for tid, ts, dur, kind in (
                    (1, t0, 80.0, "fetch"),
                    (2, t0 + 20, 80.0, "fetch"),
                    (3, t0, 40.0, "fetch"),
                    (0, t0 + 100, 50.0, "compute"),
                ):
                    events.append(
                        {
                            "ph": "X",
                            "name": kind,
                            "pid": pid,
                            "tid": tid,
                            "ts": ts,
                            "dur": dur,
                            "args": {"step": step, "layer": layer, "expert": -1, "kind": kind},
                        }
                    )
    path = root / "timeline.json"
    path.write_text(json.dumps({"traceEvents": events, "displayTimeUnit": "ms"}))
    return path


def make_sweep(root: Path) -> Path:
    bws, hbms = (64e9, 128e9, 256e9), (1, 2)
    rows = []
    for point, (bw, hbm) in enumerate((b, h) for b in bws for h in hbms):
        for label in ("seed-split", "lru", "balanced-split"):
            speedup = 1.0 if label == "seed-split" else bw / 64e9 * (hbm if label == "lru" else 1.2)
            rows.append(
                [
                    point,
                    label,
                    label,
                    2,
                    label == "seed-split",
                    1e-3 / speedup,
                    speedup,
                    f"{bw / 1e9:g} GB/s",
                    hbm,
                ]
            )
    header = [
        "point",
        "policy",
        "label",
        "topk",
        "is_baseline",
        "mean_step",
        "speedup",
        "hardware.links.md_link.bandwidth",
        "routing.sequences",
    ]
    _write_csv(root / "sweep.csv", header, rows)
    grid = {
        "hardware.links.md_link.bandwidth": ["64 GB/s", "128 GB/s", "256 GB/s"],
        "routing.sequences": list(hbms),
    }
    resolved = {
        "scenario": {"name": "grid", "baseline": "seed-split"},
        "sweep": {"grid": grid, "zip": [], "repeats": 1},
    }
    (root / "sweep.resolved.yaml").write_text(yaml.safe_dump(resolved))
    return root


def make_stats(root: Path) -> Path:
    rows = []
    for k in (1, 2, 6):
        for pos in range(3):
            for layer in (2, 3):
                activ = k + pos + layer
                gpu = round(32 / 544 * activ)
                rows.append([pos, layer, k, activ, gpu, activ - gpu, gpu])
    _write_csv(
        root / "gating.csv",
        ["position", "layer", "topk", "expert_activ", "expert_gpu", "expert_md", "h"],
        rows,
    )
    (root / "meta.json").write_text(json.dumps({"layout": "seed", "synthetic_layers": [3]}))
    return root


def assert_png(fig: object) -> None:
    data = F.render(fig, "png", DPI)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(io.BytesIO(data), format="png")
    assert pixels.ndim == 3 and float(pixels.var()) > 0


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path)


def _colours(run) -> dict[str, str]:
    return F.policy_colours([lb for lb, _, _ in LABELS], run.baseline)


def _bars(ax) -> dict[str, np.ndarray]:
    return {c.get_label(): np.array([p.get_height() for p in c.patches]) for c in ax.containers}


def test_reader_parses_types_and_names_missing_columns(run_dir: Path, tmp_path: Path) -> None:
    run = load_results(run_dir)
    assert run.summary["is_bound"].dtype == bool and run.summary["mean_step"].dtype == np.float64
    assert np.isnan(run.summary["gap_closed"]).all()
    assert run.baseline == "seed-split" and run.bound_labels() == {"belady"}
    bad = tmp_path / "bad.csv"
    bad.write_text("label,topk\nx,1\n")
    with pytest.raises(UserError, match=r"bad.csv: expected columns .* missing \['policy'"):
        read_table(bad, ("label", "policy"))
    with pytest.raises(UserError, match="expected a results directory"):
        load_results(tmp_path / "nowhere")


def test_transfer_figure_bars_match_per_layer_bytes(run_dir: Path) -> None:
    run = load_results(run_dir)
    fig = F.transfer_time_by_layer(run, _colours(run), 2)
    assert_png(fig)
    pcie_ax, md_ax, window_ax = fig.axes[:3]
    table = run.per_layer
    for ax, column, bw in ((pcie_ax, "bytes_pcie", BW["pcie"]), (md_ax, "bytes_md", BW["md_link"])):
        bars = _bars(ax)
        assert set(bars) == {"seed-split", "lru", "belady"}
        for label, heights in bars.items():
            rows = table.where(label=label)
            want = [rows[column][rows["layer"] == i].mean() / bw * 1e3 for i in range(LAYERS)]
            np.testing.assert_allclose(heights, want)
        assert "transfer time per step (ms" in ax.get_ylabel()
        assert "bytes / link bandwidth" in fig._suptitle.get_text()
    for label, heights in _bars(window_ax).items():
        rows = table.where(label=label)
        want = [rows["transfer_window"][rows["layer"] == i].mean() * 1e3 for i in range(LAYERS)]
        np.testing.assert_allclose(heights, want)
    assert [t.get_text() for t in pcie_ax.get_xticklabels()] == ["2", "3", "4"]
    colours = {c.get_label(): c.patches[0].get_facecolor() for c in pcie_ax.containers}
    assert colours["seed-split"][:3] == pytest.approx((0x4D / 255,) * 3)


def test_transfer_figure_uses_timeline_busy_time(run_dir: Path) -> None:
    make_timeline(run_dir)
    run = load_results(run_dir)
    fig = F.transfer_time_by_layer(run, _colours(run), 2)
    pcie, md = _bars(fig.axes[0]), _bars(fig.axes[1])
    # pcie channels overlap: [0, 80] u [20, 100] = 100 us per layer and step
    np.testing.assert_allclose(pcie["lru"], [0.1] * LAYERS)
    np.testing.assert_allclose(md["lru"], [0.04] * LAYERS)
    assert "busy" in fig.axes[0].get_ylabel() and "timeline.json" in fig.get_suptitle()


def test_busy_time_merges_overlaps_only_within_a_layer() -> None:
    ev = F.TimelineEvents(
        label=np.array(["a"] * 4, dtype=object),
        resource=np.array(["pcie[0]", "pcie[1]", "pcie[0]", "pcie[0]"], dtype=object),
        kind=np.array(["fetch"] * 4, dtype=object),
        start=np.array([0.0, 0.5, 1.0, 5.0]),
        end=np.array([1.0, 2.0, 3.0, 6.0]),
        step=np.array([0, 0, 0, 1]),
        layer=np.array([0, 0, 1, 0]),
        expert=np.full(4, -1),
        topk=np.full(4, -1),
        process=np.array(["1"] * 4, dtype=object),
    )
    # layer 0: step 0 [0,2] -> 2, step 1 [5,6] -> 1; layer 1: [1,3] -> 2 (overlaps layer 0 in
    # time but is another layer)
    np.testing.assert_allclose(F.busy_by_layer(ev, np.array([0, 1])), [3.0, 2.0])


def test_latency_cdf_lines_are_sorted_per_step_latency(run_dir: Path) -> None:
    run = load_results(run_dir)
    fig = F.step_latency_cdf(run, _colours(run), 2)
    assert_png(fig)
    ax = fig.axes[0]
    lines = {ln.get_label().split(":")[0]: ln for ln in ax.lines if len(ln.get_xdata()) > 1}
    assert set(lines) == {"seed-split", "lru", "belady (offline bound)"}
    lines["belady"] = lines["belady (offline bound)"]
    for label in ("seed-split", "lru", "belady"):
        latency = np.sort(run.per_step.where(label=label)["latency"]) * 1e3
        np.testing.assert_allclose(lines[label].get_xdata(), latency)
        np.testing.assert_allclose(lines[label].get_ydata(), np.arange(1, STEPS + 1) / STEPS)
        p99 = next(ln for ln in ax.lines if ln.get_gid() == f"p99:{label}")
        assert p99.get_xdata()[0] == pytest.approx(np.percentile(latency, 99))
    assert ax.get_xlabel() == "step latency (ms)"


def test_hit_rate_lines_match_hits_over_active(run_dir: Path) -> None:
    run = load_results(run_dir)
    fig = F.hit_rate_over_steps(run, _colours(run), 2)
    assert_png(fig)
    lines = {ln.get_label(): ln for ln in fig.axes[0].lines}
    assert set(lines) == {"lru", "belady (offline bound)"}  # seed-split never hits
    assert lines["belady (offline bound)"].get_linestyle() == "--"
    rows = run.per_layer.where(label="lru")
    want = [
        rows["hits"][rows["step"] == s].sum() / rows["active"][rows["step"] == s].sum() * 100
        for s in range(STEPS)
    ]
    np.testing.assert_allclose(lines["lru"].get_ydata(), want)
    # The legend sits outside the axes (a figure legend below them), never over a curve.
    assert fig.axes[0].get_legend() is None and len(fig.legends) == 1
    names = [t.get_text() for t in fig.legends[0].get_texts()]
    assert names == ["belady (offline bound)", "lru"]
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.y1 <= fig.axes[0].get_window_extent().y0


def _bars_yscale(series: dict[str, list[float]]) -> tuple[str, float]:
    fig = F._figure(4, 3)
    ax = fig.subplots()
    ax.set_ylabel("time (ms)")
    x = np.arange(len(next(iter(series.values()))))
    F._grouped_bars(ax, x, [(k, np.array(v), "#000000") for k, v in series.items()], True)
    return ax.get_yscale(), ax.get_ylim()[0]


def test_transfer_bars_turn_log_only_when_one_policy_dwarfs_the_rest() -> None:
    # Near-data run: belady moves next to nothing over md_link in some layers (1e-6 ms bars),
    # every policy's tallest bar is ~3e-3 ms: a log axis would only magnify noise.
    noise = {
        "seed-split": [3e-3, 2.9e-3, 3.1e-3],
        "lru": [2.8e-3, 3e-3, 3e-3],
        "belady": [1e-6, 2.9e-3, 1e-6],
    }
    assert _bars_yscale(noise)[0] == "linear"
    # gpu-only moves every expert over PCIe: its bars dwarf every other policy's.
    wide = {
        "gpu-only": [40.0, 42.0, 41.0],
        "seed-split": [2.0, 2.5, 1.9],
        "lru": [1.5, 1.8, 1e-5],  # a noise bar: does not stretch the log axis to 1e-5
    }
    scale, bottom = _bars_yscale(wide)
    assert scale == "log" and bottom == pytest.approx(1.5 / 2)
    # 10x is not enough: the tallest must exceed every other policy's tallest by more.
    assert _bars_yscale({"a": [10.0, 1.0], "b": [1.0, 1.0]})[0] == "linear"


def test_timeline_gantt_shows_baseline_and_best_in_window(run_dir: Path) -> None:
    make_timeline(run_dir)
    run = load_results(run_dir)
    fig = F.link_timeline(run, _colours(run), 2, window=(1, 2))
    assert_png(fig)
    left, right = fig.axes[:2]
    assert "seed-split" in left.get_title() and "lru" in right.get_title()
    boxes = [p.get_extents() for c in left.collections for p in c.get_paths()]
    # one step x 3 layers x (2 pcie + 1 md + 1 compute) events, durations in ms
    assert sorted(b.width for b in boxes) == pytest.approx(
        sorted([0.08, 0.08, 0.04, 0.05] * LAYERS)
    )
    assert min(b.x0 for b in boxes) == 0.0
    assert {c.get_label() for c in left.collections} == {"fetch", "compute"}
    assert [t.get_text() for t in left.get_yticklabels()] == [
        "gpu",
        "pcie[0]",
        "pcie[1]",
        "md_link[0]",
    ]


def test_timeline_processes_per_topk_get_their_topk(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, topks=(6, 2))
    path = make_timeline(run_dir)
    data = json.loads(path.read_text())
    # a second copy of every process, as for the second top-k of a run (pid offset 10)
    data["traceEvents"] += [{**e, "pid": e["pid"] + 10} for e in data["traceEvents"]]
    path.write_text(json.dumps(data))
    events = load_results(run_dir).timeline
    assert set(events.topk[events.process.astype(int) < 10]) == {6}
    assert set(events.topk[events.process.astype(int) >= 10]) == {2}


def test_timeline_figure_needs_a_timeline(run_dir: Path) -> None:
    run = load_results(run_dir)
    with pytest.raises(F.NoData, match="--timeline"):
        F.link_timeline(run, _colours(run), 2)


def test_read_timeline_names_processes_and_threads(run_dir: Path) -> None:
    events = read_timeline(make_timeline(run_dir))
    assert len(events) == len(LABELS) * STEPS * LAYERS * 4
    assert set(events.label) == {"seed-split", "lru", "belady"}
    assert set(events.link) == {"gpu", "pcie", "md_link"}
    first = events.rows(np.arange(1))
    assert first.start[0] == 0.0 and first.end[0] == pytest.approx(80e-6)
    bad = run_dir / "bad.json"
    bad.write_text(json.dumps([{"ph": "X", "pid": 0, "tid": 0, "ts": "soon"}]))
    with pytest.raises(UserError, match=r"bad\.json"):
        read_timeline(bad)


def test_seed_view_from_stats_and_from_run(run_dir: Path, tmp_path: Path) -> None:
    stats = load_results(make_stats(tmp_path / "stats"))
    fig = F.seed_view(stats.gating, "gating.csv")
    assert_png(fig)
    assert [ax.get_title() for ax in fig.axes] == [f"top-{k} (3 positions)" for k in (1, 2, 6)]
    bars = _bars(fig.axes[2])
    g = stats.gating.where(topk=6)
    want = [g["expert_activ"][g["layer"] == lay].mean() for lay in (2, 3)]
    np.testing.assert_allclose(bars["Expert_Activ"], want)
    run = load_results(run_dir)
    view = F.gating_from_run(run)
    bars = _bars(F.seed_view(view, "run").axes[0])
    rows = run.per_layer.where(label="seed-split")
    md = rows["md_fetch"] + rows["md_near"]
    np.testing.assert_allclose(
        bars["Expert_MD (MD path)"], [md[rows["layer"] == i].mean() for i in range(3)]
    )


def test_sweep_figures_match_table(tmp_path: Path) -> None:
    sweep = load_results(make_sweep(tmp_path))
    assert sweep.fields == ("hardware.links.md_link.bandwidth", "routing.sequences")
    colours = F.policy_colours(["seed-split", "lru", "balanced-split"], sweep.baseline)
    fig = F.speedup_vs_field(sweep, sweep.fields[0], colours, 2)
    assert_png(fig)
    lines = {ln.get_label(): ln for ln in fig.axes[0].lines}
    # "64 GB/s" < "128 GB/s" < "256 GB/s" as bandwidths (not as text), plotted in GB/s
    np.testing.assert_allclose(lines["lru"].get_xdata(), [64, 128, 256])
    np.testing.assert_allclose(lines["lru"].get_ydata(), [1.5, 3.0, 6.0])  # mean over hbm 1, 2
    np.testing.assert_allclose(lines["seed-split"].get_ydata(), [1.0, 1.0, 1.0])
    assert "GB/s" in fig.axes[0].get_xlabel()
    heat = F.speedup_heatmap(sweep, *sweep.fields, 2)
    assert_png(heat)
    grid = heat.axes[0].images[0].get_array()
    # rows: sequences 1, 2; columns: bandwidth; best of lru (bw*hbm) and balanced (bw*1.5)
    np.testing.assert_allclose(grid, [[1.2, 2.4, 4.8], [2.0, 4.0, 8.0]])
    texts = [t.get_text() for t in heat.axes[0].texts]
    assert "2.00×\nlru" in texts and "1.20×\nbalanced-split" in texts


def test_sweep_scenario_box_shows_swept_values(tmp_path: Path) -> None:
    """The key facts of a sweep's base scenario show each swept field's values, not the base
    value no point ran with; fields the sweep leaves alone keep their value."""
    root = make_sweep(tmp_path)
    resolved = yaml.safe_load((root / "sweep.resolved.yaml").read_text())
    resolved["scenario"].update(
        routing={"topk": [2]},
        policies=["seed-split"],
        hardware={"links": {"md_link": {"bandwidth": "64 GB/s"}, "pcie": {"bandwidth": 3e10}}},
    )
    resolved["sweep"]["grid"]["policies"] = ["seed-split", "lru", {"name": "balanced-split"}]
    (root / "sweep.resolved.yaml").write_text(yaml.safe_dump(resolved))
    table = read_table(root / "sweep.csv")  # a policies sweep has a policies column
    names = [*table.names, "policies"]
    rows = [[*(table[c][i] for c in table.names), table["label"][i]] for i in range(len(table))]
    _write_csv(root / "sweep.csv", names, rows)
    facts = dict(
        re.findall(
            r'<th class="text">([^<]*)</th><td class="text">([^<]*)</td>',
            "".join(build_content(load_results(root)).sections),
        )
    )
    assert facts["hardware.links.md_link.bandwidth"] == (
        "swept: 64 GB/s, 128 GB/s, 256 GB/s (3 values)"
    )
    assert facts["policies"] == "swept: seed-split, lru, balanced-split (3 values)"
    assert facts["routing.sequences"] == "swept: 1, 2 (2 values)"  # no fact of its own
    assert facts["hardware.links.pcie.bandwidth"] == "30000000000.0"
    assert facts["topk"] == "2"


def test_sweep_summary_and_missing_speedup(tmp_path: Path) -> None:
    from sim.report import sweep_summary

    root = make_sweep(tmp_path)
    table = read_table(root / "sweep.csv")
    keep = [c for c in table.names if c != "speedup"]
    _write_csv(root / "sweep.csv", keep, [[table[c][i] for c in keep] for i in range(len(table))])
    sweep = load_results(root)
    np.testing.assert_allclose(sweep.table["speedup"], table["speedup"])
    summary = sweep_summary(sweep)
    wins = dict(zip(summary["label"], summary["wins"]))
    # sequences 1: balanced-split (1.2 bw) beats lru (1 bw); sequences 2: lru (2 bw) wins
    assert wins == {"seed-split": 0, "balanced-split": 3, "lru": 3}


def _external_refs(text: str) -> list[str]:
    refs: list[str] = []

    class Refs(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            refs.extend(v or "" for k, v in attrs if k in {"src", "href"})

    Refs().feed(text)
    remote = re.compile(r"^\s*(https?:|//)", re.IGNORECASE)
    bad = [r for r in refs if remote.match(r) or not r.startswith("data:")]
    bad += re.findall(r"@import|url\(\s*['\"]?\s*(?:https?:|//)", text)
    return bad


def test_html_report_is_self_contained_with_every_section(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, synthetic_layers=(4,))
    make_timeline(run_dir)
    path = write_report(run_dir, ("html", "png"), dpi=DPI)
    text = path.read_text()
    assert path == run_dir / "report.html"
    assert _external_refs(text) == []
    assert text.count("<img") == 5 and text.count("data:image/png;base64,") == 5
    assert 'class="warning"' in text and "SYNTHESISED LAYERS: layers 4" in text
    for heading in ("Scenario", "Trace provenance", "Comparison", "Figures"):
        assert f"<h2>{heading}</h2>" in text
    assert sorted(p.name for p in (run_dir / "figures").iterdir()) == [
        "hit_rate_top2.png",
        "link_timeline_top2.png",
        "seed_view.png",
        "step_latency_cdf_top2.png",
        "transfer_by_layer_top2.png",
    ]


def test_html_without_timeline_says_how_to_get_it(run_dir: Path) -> None:
    content = build_content(load_results(run_dir))
    assert any("--timeline" in s for s in content.skipped)
    assert 'class="warning"' not in "".join(content.sections)


def test_provenance_warnings() -> None:
    from sim.report import provenance_warnings

    assert provenance_warnings({"synthetic": False, "synthetic_layers": []}) == []
    (synthetic,) = provenance_warnings({"meta": {"synthetic": True, "synthetic_layers": []}})
    assert synthetic.startswith("SYNTHETIC TRACE")
    (unknown,) = provenance_warnings(None)
    assert "unknown" in unknown


def test_stats_and_sweep_reports(tmp_path: Path) -> None:
    stats = write_report(make_stats(tmp_path / "stats"), ("html",), dpi=DPI)
    text = stats.read_text()
    assert "SYNTHESISED LAYERS" in text and text.count("<img") == 1 and _external_refs(text) == []
    sweep = write_report(make_sweep(tmp_path / "sweep"), ("html", "pdf"), dpi=DPI)
    assert (
        sweep.name == "report.html"
        and (tmp_path / "sweep" / "report.pdf").read_bytes()[:5] == b"%PDF-"
    )
    text = sweep.read_text()
    assert text.count("<img") == 3 and _external_refs(text) == []


def test_cli_report_and_bad_flags(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(run_dir), "--format", "png", "--dpi", str(DPI)]) == 0
    assert "figures" in capsys.readouterr().out
    assert not (run_dir / "report.html").exists()
    assert main(["report", str(run_dir), "--format", "svg"]) == 2
    assert "--format: expected" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--window", "3:1"]) == 2


def test_parse_window() -> None:
    assert parse_window("2:5") == (2, 5) and parse_window(None) is None
    for bad in ("5", "a:b", "4:4", "-1:3"):
        with pytest.raises(UserError, match="--window"):
            parse_window(bad)


TINY_SCENARIO = """
name: tiny-report
trace: embedded
routing:
  topk: [2]
model:
  preset: flame-moe-290m
hardware:
  preset: notebook-gbps
  hbm:
    capacity: 32 experts
baseline: seed-split
policies: [seed-split, lru, belady, prefetch-oracle]
seed: 0
"""


def test_end_to_end_run_timeline_matches_per_layer_and_reports(tmp_path: Path) -> None:
    """A real engine run with D's exporter: every demand fetch on each link is one timeline
    event of its (step, layer), inside that layer's interval; prefetches add up per link."""
    from sim.scenario import load_scenario, load_scenario_trace, run_scenario, write_results

    source = tmp_path / "tiny.yaml"
    source.write_text(TINY_SCENARIO)
    scenario = load_scenario(source, ["trace.positions=0-3"])
    trace = load_scenario_trace(scenario)
    results = run_scenario(scenario, trace, progress=False, timeline=True)
    out = write_results(tmp_path / "results", scenario, trace, results)
    run = load_results(out)
    assert run.timeline is not None and run.baseline == "seed-split"
    for label in ("seed-split", "lru", "belady", "prefetch-oracle"):
        ev = F._timeline_rows(run.timeline, label, 2)
        rows = run.per_layer.where(label=label)
        num_layers = int(rows["layer"].max()) + 1
        cell = (rows["step"] * num_layers + rows["layer"]).astype(int)
        links = ev.link
        for link, column in (("pcie", "pcie"), ("md_link", "md_fetch")):
            fetch = (ev.kind == "fetch") & (links == link)
            counts = np.bincount(
                ev.step[fetch] * num_layers + ev.layer[fetch], minlength=cell.max() + 1
            )
            np.testing.assert_array_equal(counts[cell], rows[column], err_msg=f"{label} {link}")
            prefetch = (ev.kind == "prefetch") & (links == link)
            assert prefetch.sum() == rows[f"prefetch_{'pcie' if link == 'pcie' else 'md'}"].sum()
        demand = ev.rows(ev.kind != "prefetch")
        slot = np.searchsorted(cell, demand.step * num_layers + demand.layer)
        assert (demand.start >= rows["t_start"][slot] - 1e-12).all()
        assert (demand.end <= rows["t_end"][slot] + 1e-12).all()
    path = write_report(out, ("html",), dpi=60)
    text = path.read_text()
    assert _external_refs(text) == [] and text.count("<img") == 6  # with link utilisation
    assert "Not drawn" not in text


def _tiny_run(tmp_path: Path, name: str, overrides: list[str]) -> Path:
    from sim.scenario import load_scenario, load_scenario_trace, run_scenario, write_results

    source = tmp_path / "tiny.yaml"
    source.write_text(TINY_SCENARIO)
    scenario = load_scenario(
        source, ["trace.positions=0-1", "policies=[seed-split, lru]", *overrides]
    )
    trace = load_scenario_trace(scenario)
    results = run_scenario(scenario, trace, progress=False, timeline=True)
    return write_results(tmp_path / name, scenario, trace, results)


def test_report_refuses_another_runs_timeline(tmp_path: Path, capsys) -> None:
    """Same policy labels, other hardware: only the fingerprint in otherData tells them apart."""
    ours = _tiny_run(tmp_path, "ours", [])
    theirs = _tiny_run(tmp_path, "theirs", ["hardware.hbm.capacity=16 experts"])
    other = json.loads((theirs / "timeline.json").read_text())["otherData"]
    assert other["scenario"] == "tiny-report" and other["scenario_sha256"].startswith("sha256:")
    assert load_results(ours, timeline=ours / "timeline.json").timeline is not None
    with pytest.raises(UserError) as err:
        load_results(ours, timeline=theirs / "timeline.json")
    message = str(err.value)
    assert str(theirs / "timeline.json") in message
    assert str(ours / "scenario.resolved.yaml") in message
    assert main(["report", str(ours), "--timeline", str(theirs / "timeline.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_report_checks_labels_of_a_timeline_without_fingerprint(run_dir: Path) -> None:
    path = make_timeline(run_dir)  # no otherData, as older moesim wrote: labels must match
    assert load_results(run_dir).timeline is not None
    data = json.loads(path.read_text())
    data["traceEvents"][0]["args"]["name"] = "lfu"
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"timeline\.json: expected timelines of the policies in "):
        load_results(run_dir)


def test_timeline_legend_lists_kinds_drawn_in_either_panel(run_dir: Path) -> None:
    path = make_timeline(run_dir)
    data = json.loads(path.read_text())
    lru = next(e["pid"] for e in data["traceEvents"] if e["args"].get("name") == "lru")
    first = next(e for e in data["traceEvents"] if e["ph"] == "X" and e["pid"] == lru)
    first["name"] = first["args"]["kind"] = "prefetch"  # only the right panel has a prefetch
    path.write_text(json.dumps(data))
    run = load_results(run_dir)
    fig = F.link_timeline(run, _colours(run), 2, window=(0, 1))
    left, right = fig.axes[:2]
    assert "lru" in right.get_title()
    assert "prefetch" not in {c.get_label() for c in left.collections}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert sorted(legend) == ["compute", "fetch", "prefetch"]


def test_scenario_table_gives_the_cache_in_experts(run_dir: Path) -> None:
    path = run_dir / "scenario.resolved.yaml"
    scenario = yaml.safe_load(path.read_text())
    scenario["model"] = {"expert_bytes": "4.325376 MB"}
    scenario["hardware"]["hbm"] = {"capacity": "553.648128 MB"}  # what `128 experts` resolves to
    path.write_text(yaml.safe_dump(scenario))
    text = "".join(build_content(load_results(run_dir)).sections)
    assert (
        '<th class="text">hardware.hbm.capacity</th><td class="text">128 experts (553.6 MB)' in text
    )


def test_run_notes_reach_the_report(tmp_path: Path) -> None:
    """The notes `moesim run` prints under its table (here lfu = lru) are in notes.txt and
    in report.html's comparison section."""
    from sim.cli import main

    scenario = Path(__file__).resolve().parents[1] / "scenarios" / "default.yaml"
    out = tmp_path / "run"
    argv = ["run", str(scenario), "--out", str(out), "--quiet", "--set", "trace.positions=0-3"]
    assert main([*argv, "--set", "policies=[seed-split, lru, lfu]"]) == 0
    notes = (out / "notes.txt").read_text().splitlines()
    assert any(n.startswith("top-6: lfu = lru: identical") for n in notes)
    assert main(["report", str(out), "--format", "html"]) == 0
    assert "lfu = lru: identical" in (out / "report.html").read_text()


# -- kinds: an oracle is never the best online policy --------------------------------------------
KINDS_SCENARIO = {
    "name": "kinds",
    "trace": {
        "synthetic": {
            "num_seqs": 4,
            "seq_len": 16,
            "layer_ids": "2-4",
            "num_experts": 16,
            "topk": 4,
            "seed": 5,
        }
    },
    "model": {"preset": "flame-moe-290m", "num_experts": 16, "top_k": 4},
    "hardware": {"preset": "notebook-gbps", "hbm": {"capacity": "6 experts"}},
    "policies": ["seed-split", "lru", "prefetch-oracle", "static-popular", "belady"],
}


def test_oracles_are_labelled_and_never_the_best_online_policy(tmp_path: Path) -> None:
    scenario = tmp_path / "kinds.yaml"
    scenario.write_text(yaml.safe_dump(KINDS_SCENARIO))
    out = tmp_path / "run"
    assert main(["run", str(scenario), "--out", str(out), "--quiet", "--report"]) == 0
    run = load_results(out)
    mean = dict(zip(run.summary["label"], run.summary["mean_step"]))
    assert mean["prefetch-oracle"] < mean["lru"]  # the oracle is faster, yet not "best online"
    assert run.kinds() == {
        "seed-split": "online",
        "lru": "online",
        "prefetch-oracle": "oracle",
        "static-popular": "oracle",
        "belady": "bound",
    }
    assert F.best_label(run.summary, run.baseline, 4) == "lru"
    events = json.loads((out / "timeline.json").read_text())["traceEvents"]
    assert {e["args"]["label"] for e in events if e["name"] == "process_name"} == {
        "seed-split",
        "lru",
    }
    text = (out / "report.html").read_text()
    best_rows = re.findall(r'<tr class="best">(.*?)</tr>', text)
    assert len(best_rows) == 1 and ">lru<" in best_rows[0]
    assert '<th class="text">kind</th>' in text and "tokens/s" in text
    assert "hardware: GPU h100-sxm" in text
    timeline = F.link_timeline(run, F.policy_colours(mean, run.baseline), 4)
    titles = [ax.get_title() for ax in timeline.axes]
    assert "best online policy: lru" in titles and not any("oracle" in t for t in titles)


def test_coinciding_lines_are_said_in_the_legend(tmp_path: Path) -> None:
    doc = {**KINDS_SCENARIO, "policies": ["seed-split", "lru", "lfu", "prefetch-oracle"]}
    doc["hardware"] = {"preset": "notebook-gbps", "hbm": {"capacity": "3 experts"}}
    scenario = tmp_path / "twins.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    assert main(["run", str(scenario), "--out", str(out), "--quiet"]) == 0
    run = load_results(out)
    colours = F.policy_colours(run.summary["label"], run.baseline)
    for figure in (F.step_latency_cdf(run, colours, 4), F.hit_rate_over_steps(run, colours, 4)):
        names = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
        assert any(n.startswith("lru (= lfu: same line)") for n in names), names
        assert any(n.startswith("prefetch-oracle (oracle)") for n in names), names


def test_many_layers_get_a_heatmap_and_thinned_ticks(tmp_path: Path) -> None:
    doc = {
        **KINDS_SCENARIO,
        "trace": {
            "synthetic": {
                "num_seqs": 2,
                "seq_len": 4,
                "layer_ids": "1-40",
                "num_experts": 16,
                "topk": 4,
                "seed": 1,
            }
        },
        "hardware": {"preset": "notebook-gbps", "hbm": {"capacity": "80 experts"}},
        "policies": ["seed-split", "md-only", "lru"],
    }
    scenario = tmp_path / "wide.yaml"
    scenario.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    assert main(["run", str(scenario), "--out", str(out), "--quiet"]) == 0
    run = load_results(out)
    fig = F.transfer_time_by_layer(run, F.policy_colours(run.summary["label"], run.baseline), 4)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert all(ax.images for ax in panels)  # 3 policies x 40 layers > MAX_BARS: heatmaps
    labelled = [t.get_text() for t in panels[0].get_xticklabels() if t.get_text()]
    assert len(labelled) <= F.MAX_TICKS and labelled[0] == "1" and labelled[-1] == "40"
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["seed-split", "lru", "md-only"]


def test_sweep_summary_says_where_each_policy_wins(tmp_path: Path) -> None:
    from sim.report import sweep_summary_lines

    sweep = load_results(make_sweep(tmp_path))
    lines = sweep_summary_lines(sweep)
    assert lines[1] == "  seed-split (online): the baseline"
    lru = next(line for line in lines if line.startswith("  lru "))
    assert lru.startswith("  lru (online): 1.00x at bandwidth=64 GB/s, sequences=1 .. ")
    assert "fastest online in 3 cells: " in lru and "sequences=2" in lru
    # the full YAML shows the swept fields as swept, not the base value no point ran with
    resolved = yaml.safe_load((sweep.path / "sweep.resolved.yaml").read_text())
    resolved["scenario"]["hardware"] = {"links": {"md_link": {"bandwidth": "999 GB/s"}}}
    (sweep.path / "sweep.resolved.yaml").write_text(yaml.safe_dump(resolved))
    html = "".join(build_content(load_results(sweep.path)).sections)
    assert "999 GB/s" not in html
    assert "bandwidth: &#x27;swept: 64 GB/s, 128 GB/s, 256 GB/s (3 values)&#x27;" in html
