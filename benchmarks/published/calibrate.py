"""Software calibration figures of the published machines, derived from published measurements
that are NOT the validation cases (docs/validation.md, "What was fixed first").

Two machines have such measurements:

* **the llmfit RTX 2080 box** (i9-10900X, quad-channel DDR4, llama.cpp): the same contributor
  measured dense models on it with the same tool and method as the MoE cases (llmfit 1.1.3
  ``bench --runs 3``, Q4_K_M, context 4096). Dense models fully on the GPU (``-ngl 99``) give
  llama.cpp's achieved GPU bandwidth and its fixed time per layer (least squares of
  ``t = bytes / B + layers x o`` over four Llama-family models); dense models split by
  ``-ngl N`` give the bandwidth llama.cpp's CPU kernels read weights at (the mean of three).
* **MoE-Infinity's RTX A5000** (arXiv 2401.14361, s.5.1, Figure 8 text): "total computation
  time" of DeepSeek-V2-Lite decoding is 50 ms at a 4,096-token context. What the roofline
  does not explain of it, spread over the 27 transformer layers, is MoE-Infinity's fixed time
  per layer.

Bytes of a llama.cpp ``Q4_K_M`` file: every layer matrix at 4.84375 bits per weight (ffn gate
and up Q4_K, 4.5 bits; ffn_down Q6_K, 6.5625 bits, in half of the layers, Q4_K in the rest:
llama.cpp's recipe), the output matrix at Q6_K (6.5625 bits), the token embedding only looked
up. It reproduces the published file sizes of Qwen3-30B-A3B (17.28 GiB) and DeepSeek-V3
(376.65 GiB) within 0.5 % (`gguf_file_check`).

    .venv/bin/python benchmarks/published/calibrate.py   # print the figures and the checks
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

Q4_K_M_LAYER_BPW = (4.5 + 4.5 + (4.5 + 6.5625) / 2) / 3  # = 4.84375 bits per weight
Q6_K_BPW = 6.5625
Q4_K_BPW = 4.5
LAYER_BYTES_PER_PARAM = Q4_K_M_LAYER_BPW / 8


@dataclass(frozen=True)
class Dense:
    """A dense decoder's shape (public config.json), enough to count the bytes of a token."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int

    @property
    def layer_params(self) -> float:
        q_o = 2 * self.hidden * self.heads * self.head_dim
        k_v = 2 * self.hidden * self.kv_heads * self.head_dim
        return float(q_o + k_v + 3 * self.hidden * self.ffn)

    @property
    def layer_bytes(self) -> float:
        return self.layer_params * LAYER_BYTES_PER_PARAM

    @property
    def head_bytes(self) -> float:
        return self.vocab * self.hidden * Q6_K_BPW / 8


# [S] public config.json shapes: (layers, hidden, heads, KV heads, head_dim, FFN, vocab)
LLAMA_3_2_1B = Dense("Llama-3.2-1B", 16, 2048, 32, 8, 64, 8192, 128256)
LLAMA_3_2_3B = Dense("Llama-3.2-3B", 28, 3072, 24, 8, 128, 8192, 128256)
LLAMA_3_1_8B = Dense("Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256)
QWEN3_14B = Dense("Qwen3-14B", 40, 5120, 40, 8, 128, 17408, 151936)
PHI_4 = Dense("phi-4", 40, 5120, 40, 10, 128, 17920, 100352)
MISTRAL_SMALL_24B = Dense("Mistral-Small-24B", 40, 5120, 32, 8, 128, 32768, 131072)

# [S] llmfit community data, nvidia-geforce-rtx-2080 (avgTps, tok/s; -ngl as the PRs state)
FULL_GPU = (  # -ngl 99: PR #773 (1784560682-efc5c3a6.json), PR #778 (1784627097-07f3856f.json)
    (LLAMA_3_2_1B, 304.27, "PR #778, Llama-3.2-1B-Instruct-Q4_K_M"),
    (LLAMA_3_2_3B, 140.33, "PR #778, Llama-3.2-3B-Instruct-Q4_K_M"),
    (LLAMA_3_1_8B, 71.87, "PR #773, Meta-Llama-3.1-8B-Instruct-Q4_K_M"),
    (LLAMA_3_1_8B, 71.74, "PR #778, DeepSeek-R1-Distill-Llama-8B-Q4_K_M"),
)
PARTIAL = (  # -ngl N < layers: the last N layers on the GPU, the rest and the output on the CPU
    (QWEN3_14B, 32, 16.85, "PR #774, Qwen3-14B-Q4_K_M, -ngl 32"),
    (PHI_4, 32, 16.72, "PR #774, phi-4-Q4_K_M, -ngl 32"),
    (MISTRAL_SMALL_24B, 16, 5.22, "PR #775, Mistral-Small-24B-Instruct-2501-Q4_K_M, -ngl 16"),
)
I9_10900X_DRAM = 102.4e9  # [S] PR #755: quad-channel DDR4, "~102 GB/s"
XEON_6454S_DRAM = 307.2e9  # [D] 8 x DDR5-4800 x 8 B per socket (ktransformers tutorial)


@dataclass(frozen=True)
class LlamaCppCalibration:
    gpu_bandwidth: float  # bytes/s llama.cpp's CUDA kernels read weights at on the RTX 2080
    layer_overhead: float  # s per layer and token (launches, synchronisation)
    cpu_bandwidth: float  # bytes/s its CPU kernels read weights at on the i9-10900X
    cpu_each: tuple[float, ...]  # the three partial-offload estimates
    gpu_residuals: tuple[float, ...]  # fit residuals of the full-GPU runs (s per token)

    @property
    def cpu_efficiency(self) -> float:
        """Achieved over the DRAM line rate: what llama.cpp-class CPU kernels reach."""
        return self.cpu_bandwidth / I9_10900X_DRAM


def llamacpp_rtx2080() -> LlamaCppCalibration:
    """Least squares of ``t = W / B + L o`` over the full-GPU runs, then ``C`` per split run:
    ``t = W_gpu / B + W_cpu / C + L o`` (the output matrix on the CPU: ``-ngl`` below the
    layer count keeps it there)."""
    rows = np.array([[m.layers * m.layer_bytes + m.head_bytes, m.layers] for m, _, _ in FULL_GPU])
    t = np.array([1.0 / tps for _, tps, _ in FULL_GPU])
    (inv_b, overhead), *_ = np.linalg.lstsq(rows, t, rcond=None)
    each = []
    for m, ngl, tps, _ in PARTIAL:
        gpu = ngl * m.layer_bytes * inv_b
        cpu_bytes = (m.layers - ngl) * m.layer_bytes + m.head_bytes
        cpu_time = 1.0 / tps - gpu - m.layers * overhead
        each.append(cpu_bytes / cpu_time)
    return LlamaCppCalibration(
        gpu_bandwidth=1.0 / inv_b,
        layer_overhead=float(overhead),
        cpu_bandwidth=float(np.mean(each)),
        cpu_each=tuple(float(c) for c in each),
        gpu_residuals=tuple(float(r) for r in rows @ np.array([inv_b, overhead]) - t),
    )


# [S] arXiv 2401.14361 s.5.1 (Figure 8 text): DeepSeek-V2-Lite, "total computation time rises
# from 50ms to 160ms" as the context grows from 2^12 to 2^17
MOE_INFINITY_COMPUTE_S = 0.050
MOE_INFINITY_CONTEXT = 4096


def moe_infinity_a5000() -> tuple[float, float]:
    """(layer overhead s, roofline compute s per token) of MoE-Infinity on the A5000: the
    published compute time minus the roofline of one DeepSeek-V2-Lite decode step with every
    expert in HBM (bf16, as MoE-Infinity runs it), per transformer layer."""
    from sim.engine.cost import RooflineCost
    from sim.roofline import non_expert_time
    from sim.scenario import scenario_from_dict

    scenario = scenario_from_dict(
        {
            "model": "deepseek-v2-lite",
            "hardware": {
                "gpu": "rtx-a5000",
                "links": {"pcie": "pcie4-x16", "md_link": "pcie4-x16"},
            },
            "policies": ["gpu-only"],
            "baseline": "gpu-only",
        }
    )
    hw, model = scenario.hardware, scenario.model
    per_layer = non_expert_time(hw, model, [1], [MOE_INFINITY_CONTEXT])
    experts = RooflineCost(hw, model).gpu_time_from_tokens(np.ones(model.top_k)).sum()
    roofline = model.moe_layers * (per_layer + float(experts))
    return (MOE_INFINITY_COMPUTE_S - roofline) / model.num_layers, roofline


def gguf_file_check() -> list[tuple[str, float, float]]:
    """(model, bytes the Q4_K_M byte model gives, published GiB x 2^30) for two MoE files."""
    qwen_layer = 2 * 2048 * 4096 + 2 * 2048 * 512 + 2048 * 128 + 128 * 3 * 2048 * 768
    qwen = 48 * qwen_layer * LAYER_BYTES_PER_PARAM + 151936 * 2048 * (Q4_K_BPW + Q6_K_BPW) / 8
    params_v3 = 671.03e9  # [S] llama-bench rows of DeepSeek-V3 Q4_K_M: 376.65 GiB, 671.03 B
    embed_v3 = 129280 * 7168
    v3 = (params_v3 - 2 * embed_v3) * LAYER_BYTES_PER_PARAM + embed_v3 * (Q4_K_BPW + Q6_K_BPW) / 8
    return [
        ("Qwen3-30B-A3B Q4_K_M", qwen, 17.28 * 2**30),  # [S] ik_llama.cpp issue 1075
        ("DeepSeek-V3 Q4_K_M", v3, 376.65 * 2**30),
    ]


def main() -> int:
    cal = llamacpp_rtx2080()
    print("llama.cpp on the RTX 2080 box (llmfit community data):")
    print(f"  GPU bandwidth   {cal.gpu_bandwidth / 1e9:.4g} GB/s (RTX 2080 spec 448 GB/s)")
    print(f"  layer overhead  {cal.layer_overhead * 1e6:.4g} us per layer and token")
    print("  full-GPU fit residuals (ms):", [round(r * 1e3, 3) for r in cal.gpu_residuals])
    print(
        f"  CPU bandwidth   {cal.cpu_bandwidth / 1e9:.4g} GB/s (each: "
        f"{', '.join(f'{c / 1e9:.4g}' for c in cal.cpu_each)}); "
        f"{cal.cpu_efficiency:.1%} of the 102.4 GB/s DRAM line rate"
    )
    for sockets in (1, 2):
        print(
            f"  -> KTransformers, {sockets} socket(s) of the Xeon Gold 6454S: "
            f"{cal.cpu_efficiency * sockets * XEON_6454S_DRAM / 1e9:.4g} GB/s"
        )
    overhead, roofline = moe_infinity_a5000()
    print("MoE-Infinity on the RTX A5000 (arXiv 2401.14361 s.5.1):")
    print(
        f"  roofline compute {roofline * 1e3:.4g} ms/token; layer overhead {overhead * 1e3:.4g} ms"
    )
    print("Q4_K_M byte model vs published file sizes:")
    for name, ours, published in gguf_file_check():
        print(f"  {name}: {ours / 2**30:.2f} GiB vs {published / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
