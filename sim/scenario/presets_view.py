"""One-line summaries of presets, from their validated (unit-parsed) form."""

from __future__ import annotations

from sim.scenario.build import build_hardware, build_model, validated_preset
from sim.scenario.schema import GpuSection, HardwareSection, LinkSection, ModelSection
from sim.units import format_bandwidth, format_duration, format_flops, format_size


def preset_summary(kind: str, name: str) -> str:
    where = f"sim/presets/{kind}.yaml: {name}"
    if kind == "links":
        link = validated_preset(LinkSection, kind, name, where)
        return (
            f"{format_bandwidth(link.bandwidth)} effective, latency "
            f"{format_duration(link.latency or 0.0)}, {link.channels or 1} channel(s)"
        )
    if kind == "gpus":
        gpu = validated_preset(GpuSection, kind, name, where)
        return (
            f"HBM {format_size(gpu.hbm_capacity or 0)} at {format_bandwidth(gpu.hbm_bandwidth or 0)}"
            f", {format_flops(gpu.peak_flops or 0)} bf16"
        )
    if kind == "models":
        model, _ = build_model(ModelSection(preset=name))
        return (
            f"{model.num_experts} experts, top-{model.top_k}, "
            f"{format_size(model.expert_bytes)} per expert"
        )
    section = HardwareSection(preset=name)
    model, _ = build_model(None)
    hw, doc = build_hardware(section, model)
    return (
        f"GPU {doc['gpu'].get('preset', '?')}; pcie {doc['links']['pcie'].get('preset', '')} "
        f"{format_bandwidth(hw.pcie.bandwidth)}; md_link {doc['links']['md_link'].get('preset', '')} "
        f"{format_bandwidth(hw.md_link.bandwidth)}"
    )
