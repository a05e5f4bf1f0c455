"""Presets: every entry validates through the scenario schema and names its source; the
notebook presets keep the seed's 32:512 exactly; model sizes match hardware.md section 5."""

from __future__ import annotations

import pytest

from sim.cli import main
from sim.presets import KINDS, presets
from sim.scenario.build import build_hardware, build_model, validated_preset
from sim.scenario.schema import (
    ComputeSection,
    GpuSection,
    HardwareSection,
    LinkSection,
    ModelSection,
    PrecisionSection,
)

SECTION = {
    "links": LinkSection,
    "gpus": GpuSection,
    "cpus": ComputeSection,
    "models": ModelSection,
    "precisions": PrecisionSection,
    "hardware": HardwareSection,
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_preset_validates_and_has_a_source(kind: str) -> None:
    table = presets(kind)
    assert table
    for name, entry in table.items():
        assert str(entry.get("source", "")).strip(), f"{kind}/{name} has no source"
        validated_preset(SECTION[kind], kind, name, name)


@pytest.mark.parametrize("name", list(presets("hardware")))
def test_hardware_presets_build(name: str) -> None:
    model, _ = build_model(None)
    hardware, doc = build_hardware(HardwareSection(preset=name), model)
    assert hardware.pcie.bandwidth > 0 and hardware.md_link.bandwidth > 0
    assert hardware.hbm.capacity == 0.0  # the cache budget is the scenario's choice
    assert doc["gpu"]["preset"] in presets("gpus")


def test_notebook_presets_keep_the_seeds_numbers() -> None:
    links = presets("links")
    assert links["notebook-pcie-gbps"]["bandwidth"] == "32 Gbps"
    assert links["notebook-md-gbps"]["bandwidth"] == "512 Gbps"
    assert links["notebook-pcie-gbytes"]["bandwidth"] == "32 GB/s"
    assert links["notebook-md-gbytes"]["bandwidth"] == "512 GB/s"
    model, _ = build_model(None)
    for name, (pcie, md) in {
        "notebook-gbps": (4e9, 64e9),
        "notebook-gbytes": (32e9, 512e9),
    }.items():
        hw, _ = build_hardware(HardwareSection(preset=name), model)
        assert (hw.pcie.bandwidth, hw.md_link.bandwidth) == (pcie, md)
        assert hw.md_link.bandwidth / hw.pcie.bandwidth == 16  # the seed's 1/17 split
        assert hw.pcie.latency == hw.md_link.latency == 0.0  # the notebook has no latency


@pytest.mark.parametrize(
    ("name", "expert_bytes"),
    [
        ("flame-moe-290m", 4_325_376),
        ("olmoe-1b-7b", 12_582_912),
        ("mixtral-8x7b", 352_321_536),
        ("deepseek-v3", 88_080_384),
        ("switch-base-128", 9_437_184),
    ],
)
def test_model_expert_sizes_match_hardware_md(name: str, expert_bytes: int) -> None:
    model, _ = build_model(ModelSection(preset=name))
    assert model.expert_bytes == expert_bytes


def test_presets_command_lists_sources(capsys) -> None:
    assert main(["presets", "links"]) == 0
    out = capsys.readouterr().out
    assert "notebook-pcie-gbps" in out and "4 GB/s" in out and "seed notebook" in out
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert all(f"{kind} presets" in out for kind in KINDS)


def test_docs_presets_md_is_up_to_date() -> None:
    from pathlib import Path

    from sim.scenario.presets_view import presets_markdown

    path = Path(__file__).resolve().parents[1] / "docs" / "presets.md"
    assert path.read_text(encoding="utf-8") == presets_markdown(), (
        "run: moesim presets --markdown --out docs/presets.md"
    )


def test_survey_citations_point_to_a_shipped_page() -> None:
    """Preset sources cite hardware.md, which is not shipped: presets.md says so and points to
    docs/hardware-sources.md, which lists every link, GPU and model preset's sources."""
    from pathlib import Path

    from sim.presets import presets
    from sim.scenario.presets_view import presets_markdown

    text = presets_markdown()
    assert "not included" in text and "(hardware-sources.md)" in text
    sources = Path(__file__).resolve().parents[1] / "docs" / "hardware-sources.md"
    page = sources.read_text(encoding="utf-8")
    for kind in ("links", "gpus", "models"):
        for name in presets(kind):
            assert f"`{name}`" in page, f"{name} ({kind}) missing from {sources}"
