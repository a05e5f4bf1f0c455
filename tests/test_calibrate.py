"""`moesim calibrate`: fits on recorded and synthetic measurements, the preset, the no-GPU exit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.calibrate.backend import FakeBackend, FakeMachine
from sim.calibrate.fit import (
    build_preset,
    choose_channels,
    fit_expert,
    fit_latency_bandwidth,
    fit_links,
)
from sim.calibrate.measure import (
    CopySample,
    ExpertSample,
    ExpertShape,
    MeasureConfig,
    Measurements,
    measure,
)
from sim.cli import main
from sim.errors import UserError
from sim.scenario import scenario_from_dict
from sim.scenario.schema import GpuSection, LinkSection

# /work/shared/hardware.md s.1.2: A100-PCIE-40GB (Gen4, "DELLA"), pinned H2D bandwidthTest,
# github.com/jdh4/della-gpu-A100 (README): 18.0 / 19.4 / 24.1 / 25.8 GB/s at 1/10/100/1000 MB.
A100_SIZES = (1e6, 1e7, 1e8, 1e9)
A100_GBPS = (18.0, 19.4, 24.1, 25.8)
A100_NOTE = "recorded A100-PCIE-40GB pinned H2D bandwidthTest (github.com/jdh4/della-gpu-A100)"


def a100_record() -> Measurements:
    copies = tuple(
        CopySample("pinned", 1, int(size), (size / (gbps * 1e9),))
        for size, gbps in zip(A100_SIZES, A100_GBPS, strict=True)
    )
    return Measurements(device="A100-PCIE-40GB", date="", copies=copies, note=A100_NOTE)


def test_recorded_a100_fit_is_plausible() -> None:
    (fit,) = fit_links(a100_record())
    # the curve saturates more slowly than L + S/B: a Gen4 x16 link (25.8 GB/s at 1 GB) with a
    # per-copy cost of some 10-20 us (hardware.md s.1.4-1.5)
    assert 5e-6 < fit.latency < 30e-6
    assert 22e9 < fit.bandwidth < 27e9
    assert fit.bandwidth < 31.5e9  # never above the Gen4 x16 line rate
    # one straight line through four points of a curve: up to ~15% off at some size
    assert fit.max_error < 0.2
    for size, gbps in zip(A100_SIZES, A100_GBPS, strict=True):
        assert fit.aggregate_rate(size) == pytest.approx(gbps * 1e9, rel=0.2)


def test_recorded_preset_validates_as_preset_entries() -> None:
    doc = build_preset(a100_record())
    entry = doc["links"]["calibrated-pcie-pinned"]
    section = LinkSection.model_validate(entry)  # the schema sim/presets/links.yaml entries use
    assert section.bandwidth == pytest.approx(doc["fit_links"][0]["bandwidth_Bps"], rel=1e-3)
    assert entry["channels"] == 1
    assert entry["source"].startswith(f"fitted by moesim calibrate from {A100_NOTE}")
    assert "gpus" not in doc  # no expert timings recorded: no GPU entry invented


@settings(deadline=None, max_examples=25)
@given(
    latency=st.floats(0.0, 50e-6),
    bandwidth=st.floats(1e9, 500e9),
    streams=st.integers(1, 4),
)
def test_fit_recovers_synthetic_latency_and_bandwidth(
    latency: float, bandwidth: float, streams: int
) -> None:
    sizes = np.array([64 * 1024 * 4**i for i in range(9)], dtype=float) * streams
    lat, bw = fit_latency_bandwidth(sizes, latency + sizes / bandwidth)
    assert lat == pytest.approx(latency, rel=1e-6, abs=1e-12)
    assert bw == pytest.approx(bandwidth, rel=1e-6)


def test_negative_intercept_is_clamped_to_zero() -> None:
    sizes = np.array([1e6, 1e7, 1e8])
    t = sizes / 20e9 * np.array([0.9, 1.0, 1.0])  # small copies faster than linear: L < 0
    lat, bw = fit_latency_bandwidth(sizes, t)
    assert lat == 0.0
    assert 19e9 < bw < 23e9


@settings(deadline=None, max_examples=25)
@given(
    memory_bw=st.floats(100e9, 5e12),
    peak=st.floats(10e12, 2e15),
)
def test_roofline_fit_recovers_synthetic_expert(memory_bw: float, peak: float) -> None:
    shape = ExpertShape()
    tokens = (1, 8, 64, 512, 4096, 32768)
    times = [max(shape.nbytes / memory_bw, n * shape.flops_per_token / peak) for n in tokens]
    samples = [ExpertSample(n, (t,)) for n, t in zip(tokens, times, strict=True)]
    fit = fit_expert(shape, samples)
    assert fit.max_error < 1e-9
    assert fit.memory_bandwidth == pytest.approx(memory_bw, rel=1e-9)
    knee = shape.nbytes / memory_bw * peak / shape.flops_per_token  # tokens at the ridge
    if knee < tokens[-1]:  # the compute roof was seen: its slope is recovered
        assert fit.peak_flops == pytest.approx(peak, rel=1e-9)
    else:  # flat everywhere: the roof is put just beyond the largest count measured
        assert fit.seconds(tokens[-1]) == pytest.approx(times[-1], rel=1e-9)


def test_end_to_end_on_fake_machine_recovers_its_parameters() -> None:
    machine = FakeMachine(latency=7e-6, bandwidth=24e9, memory_bandwidth=1.2e12, peak_flops=250e12)
    config = MeasureConfig(tokens=(1, 8, 64, 512, 4096, 16384), repeats=3)
    meas = measure(FakeBackend(machine), config, "2026-01-01")
    assert len(meas.copies) == 2 * 3 * 9
    for fit in fit_links(meas):
        if fit.memory == "pinned":
            assert fit.latency == pytest.approx(7e-6, rel=1e-6)
            assert fit.bandwidth == pytest.approx(24e9, rel=1e-6)
        else:
            assert fit.bandwidth == pytest.approx(machine.pageable_bandwidth, rel=1e-6)
    doc = build_preset(meas)
    gpu = GpuSection.model_validate(doc["gpus"]["calibrated-gpu"])
    assert gpu.hbm_bandwidth == pytest.approx(1.2e12, rel=1e-3)
    assert gpu.peak_flops == pytest.approx(250e12, rel=1e-3)
    assert (
        doc["source"]
        == "measured by moesim calibrate on FakeBackend (synthetic, not a GPU), 2026-01-01"
    )
    # the raw measurements round-trip, so the preset can be refitted anywhere
    again = Measurements.from_dict(yaml.safe_load(yaml.safe_dump(doc))["measurements"], "x")
    assert again == meas


def test_noisy_measurements_fit_within_a_few_percent() -> None:
    machine = FakeMachine(noise=0.02, seed=3)
    meas = measure(FakeBackend(machine), MeasureConfig(repeats=5), "2026-01-01")
    for fit in fit_links(meas):
        want = machine.bandwidth if fit.memory == "pinned" else machine.pageable_bandwidth
        assert fit.bandwidth == pytest.approx(want, rel=0.03)


def test_channels_chosen_by_aggregate_rate_at_the_expert_size() -> None:
    nbytes = ExpertShape().nbytes
    # latency-bound copies: more streams hide the latency (rates 10.4, 13.7, 15.3 GB/s)
    meas = Measurements(
        device="d",
        date="",
        copies=tuple(
            CopySample("pinned", n, s, (lat + n * s / 20e9,))
            for n, lat in ((1, 200e-6), (2, 200e-6), (3, 200e-6))
            for s in (2**20, 2**22, 2**24)
        ),
    )
    fits = fit_links(meas)
    chosen = choose_channels(fits, nbytes)
    assert chosen.streams == 3  # 200 us per copy is large against 4.33 MB / 20 GB/s = 216 us
    small_latency = [
        type(f)(f.memory, f.streams, 10e-6, f.bandwidth, f.max_error, f.points) for f in fits
    ]
    assert choose_channels(small_latency, nbytes).streams == 1  # a ~2% gain is not worth it
    no_latency = [
        type(f)(f.memory, f.streams, 0.0, f.bandwidth, f.max_error, f.points) for f in fits
    ]
    assert choose_channels(no_latency, nbytes).streams == 1  # more streams buy nothing


def test_preset_hardware_merges_onto_a_scenario() -> None:
    from sim.calibrate.fidelity import merge_hardware

    meas = measure(FakeBackend(FakeMachine()), MeasureConfig(repeats=2), "2026-01-01")
    doc = build_preset(meas)
    raw = {"hardware": "notebook-gbps", "model": "flame-moe-290m"}
    scenario = scenario_from_dict(merge_hardware(raw, doc["hardware"]), "t")
    hw = scenario.hardware
    assert hw.pcie.bandwidth == pytest.approx(25e9, rel=1e-3)
    assert hw.pcie.latency == pytest.approx(10e-6, rel=1e-3)
    assert hw.hbm.bandwidth == pytest.approx(1.5e12, rel=1e-3)
    assert hw.gpu.peak_flops == pytest.approx(300e12, rel=1e-3)
    assert hw.md_link.bandwidth == pytest.approx(64e9)  # untouched: the preset's md_link
    # a shorthand link preset name is kept as the base the calibrated fields override
    raw = {"hardware": {"gpu": "a100-80gb", "links": {"pcie": "pcie4-x16", "md_link": "pcie5-x16"}}}
    scenario = scenario_from_dict(merge_hardware(raw, doc["hardware"]), "t")
    assert scenario.hardware.pcie.channels == doc["hardware"]["links"]["pcie"]["channels"]
    assert scenario.hardware_doc["links"]["pcie"]["theoretical"] == "31.5 GB/s"


def test_no_gpu_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert main(["calibrate", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("moesim: error: no CUDA GPU: ")


def test_refit_from_recorded_file(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = tmp_path / "a100.yaml"
    recorded.write_text(yaml.safe_dump(a100_record().to_dict()))
    out = tmp_path / "preset.yaml"
    assert main(["calibrate", "--from", str(recorded), "--out", str(out)]) == 0
    doc = yaml.safe_load(out.read_text())
    link = LinkSection.model_validate(doc["links"]["calibrated-pcie-pinned"])
    assert 22e9 < link.bandwidth < 27e9
    # refitting the written preset gives the same preset
    again = tmp_path / "again.yaml"
    assert main(["calibrate", "--from", str(out), "--out", str(again)]) == 0
    assert yaml.safe_load(again.read_text())["links"] == doc["links"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"copies": "x"}, "m.copies: expected a list"),
        ({"copies": [{"memory": "gpu", "streams": 1, "bytes": 1, "seconds": [1.0]}]},
         "m.copies[0].memory: expected one of pinned, pageable, got 'gpu'"),
        ({"copies": [{"memory": "pinned", "streams": 0, "bytes": 1, "seconds": [1.0]}]},
         "m.copies[0].streams: expected a positive integer, got 0"),
        ({"copies": [{"memory": "pinned", "streams": 1, "bytes": 1, "seconds": [-1.0]}]},
         "m.copies[0].seconds: expected positive numbers, got -1.0"),
    ],
)  # fmt: skip
def test_bad_recorded_measurements_are_one_line_errors(data: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        Measurements.from_dict(data, "m")
    assert str(err.value) == message or str(err.value).startswith(message)


def test_one_size_cannot_be_fitted() -> None:
    with pytest.raises(UserError, match="at least 2 distinct sizes"):
        fit_latency_bandwidth(np.array([1e6, 1e6]), np.array([1e-4, 1e-4]))
    assert math.isfinite(fit_latency_bandwidth(np.array([1e6, 2e6]), np.array([1e-4, 2e-4]))[1])
