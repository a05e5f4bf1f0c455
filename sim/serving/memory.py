"""HBM accounting of a serving GPU: non-expert weights + KV cache + expert cache + staging.

* **Non-expert weights** (attention, routers, shared experts, dense layers, embedding and LM
  head) stay in HBM: bytes from the model's dimensions (`sim.roofline`'s per-layer shapes).
* **KV cache**: ``num_layers x kv_cache_dim x bytes_per_activation`` bytes per token, where
  ``kv_cache_dim`` is ``2 x kv_heads x head_dim`` (keys and values) unless the model sets it
  (MLA caches a compressed latent). Allocated in blocks of ``block_tokens`` tokens.
* **Expert cache**: ``hardware.hbm.capacity``, what caching policies keep across layers.
* **Staging**: demand-fetched experts in flight that the cache does not keep. The engine does
  not bound it (a gate of 44 misses stages 44 experts); the plan reserves ``staging`` for it,
  by default one whole layer (every expert of a layer), the most one gate can fetch.

Two modes: ``fixed`` (the KV cache gets ``kv_capacity``, by default whatever the GPU's HBM
leaves) and ``shared`` (KV and expert cache share one pool: the KV budget is the whole pool,
and the expert cache may hold ``min(hbm.capacity, pool - KV in use)``, shrinking as KV grows).
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.errors import UserError
from sim.hardware import Hardware, ModelSpec
from sim.roofline import layer_shape, missing_dimensions
from sim.serving.spec import MemorySpec
from sim.units import format_size


@dataclass(frozen=True)
class HbmPlan:
    """The HBM split of one serving GPU, in bytes."""

    mode: str  # "fixed" or "shared"
    total: float | None  # the GPU's HBM (None: unknown; then kv_capacity was given)
    weights: float  # non-expert weights
    expert_cache: float  # hardware.hbm.capacity: the cache's size (shared: its maximum)
    staging: float
    kv_capacity: float  # what the KV cache may use (shared: the whole pool)
    kv_bytes_per_token: float
    block_tokens: int

    @property
    def block_bytes(self) -> float:
        return self.kv_bytes_per_token * self.block_tokens

    @property
    def kv_blocks(self) -> int:
        """KV cache blocks that fit the KV budget."""
        return int(self.kv_capacity // self.block_bytes)

    def expert_capacity(self, kv_blocks_used: int) -> float:
        """Bytes the expert cache may hold while ``kv_blocks_used`` blocks hold KV."""
        if self.mode == "fixed":
            return self.expert_cache
        left = self.kv_capacity - kv_blocks_used * self.block_bytes
        return max(0.0, min(self.expert_cache, left))

    def describe(self) -> str:
        """One line for tables and notes."""
        total = "unknown" if self.total is None else format_size(self.total)
        return (
            f"HBM {total} ({self.mode}): non-expert weights {format_size(self.weights)}, expert "
            f"cache {format_size(self.expert_cache)}, staging {format_size(self.staging)}, "
            f"KV {format_size(self.kv_capacity)} = {self.kv_blocks} blocks x {self.block_tokens} "
            f"tokens x {format_size(self.kv_bytes_per_token)}/token"
        )


def kv_bytes_per_token(model: ModelSpec) -> float:
    """KV cache bytes per token: layers x (2 x kv_heads x head_dim, or the model's
    kv_cache_dim) x bytes_per_activation."""
    _check_dimensions(model)
    dim = model.kv_cache_dim
    if dim is None:
        assert model.kv_heads is not None and model.head_dim is not None
        dim = 2 * model.kv_heads * model.head_dim
    assert model.num_layers is not None
    return float(model.num_layers) * float(dim) * float(model.bytes_per_activation)


def non_expert_weight_bytes(model: ModelSpec) -> float:
    """Bytes of every weight that is not a routed expert: per MoE layer attention, router and
    shared experts; per dense layer attention and FFN; the embedding and the LM head (two
    vocab x hidden tables)."""
    _check_dimensions(model)
    shape = layer_shape(model)
    assert model.num_layers is not None and model.moe_layers is not None
    moe = float(model.moe_layers)
    dense = float(model.num_layers) - moe
    params = moe * shape.moe_params + dense * shape.dense_params + 2.0 * shape.head_params
    return params * float(model.bytes_per_param)


def _check_dimensions(model: ModelSpec) -> None:
    missing = missing_dimensions(model)
    if missing:
        raise UserError(
            f"model.{missing[0]}: required by a serving workload (the KV cache per token and "
            f"the non-expert weights in HBM come from the model's dimensions), model "
            f"{model.name} lacks {', '.join(missing)}"
        )


def plan_hbm(
    spec: MemorySpec,
    block_tokens: int,
    hardware: Hardware,
    model: ModelSpec,
    gpu_hbm: float | None,
) -> HbmPlan:
    """The HBM split; one-line UserErrors when the parts do not fit the GPU."""
    per_token = kv_bytes_per_token(model)
    weights = non_expert_weight_bytes(model)
    cache = float(hardware.hbm.capacity)
    if spec.staging is None:
        staging = model.num_experts * model.expert_bytes
    elif isinstance(spec.staging, str):  # "N experts"
        staging = int(spec.staging.split()[0]) * model.expert_bytes
    else:
        staging = float(spec.staging)
    fixed_parts = weights + staging + (cache if spec.mode == "fixed" else 0.0)
    parts = f"non-expert weights {format_size(weights)} + staging {format_size(staging)}" + (
        f" + expert cache {format_size(cache)}" if spec.mode == "fixed" else ""
    )
    if spec.mode == "shared":
        if spec.kv_capacity is not None:
            raise UserError(
                "workload.memory.kv_capacity: expected none in shared mode (KV and the expert "
                "cache share what the GPU's HBM leaves), got one"
            )
        if gpu_hbm is None:
            raise UserError(
                "hardware.gpu.hbm_capacity: required by workload.memory.mode shared (the pool "
                "is the GPU's HBM less weights and staging), got none"
            )
        kv = gpu_hbm - fixed_parts
    elif spec.kv_capacity is not None:
        kv = float(spec.kv_capacity)
        if gpu_hbm is not None and kv + fixed_parts > gpu_hbm * (1 + 1e-12):
            raise UserError(
                f"workload.memory.kv_capacity: expected at most the GPU's HBM "
                f"{format_size(gpu_hbm)} less {parts}, got {format_size(kv)}"
            )
    else:
        if gpu_hbm is None:
            raise UserError(
                "workload.memory.kv_capacity: required when the GPU's HBM is not known "
                "(hardware.gpu.hbm_capacity), got none"
            )
        kv = gpu_hbm - fixed_parts
    if kv < per_token * block_tokens:
        raise UserError(
            f"workload.memory: expected HBM for at least one KV block "
            f"({format_size(per_token * block_tokens)}), got {format_size(max(kv, 0.0))} "
            f"(GPU HBM {format_size(gpu_hbm or 0.0)} less {parts})"
        )
    return HbmPlan(
        mode=spec.mode,
        total=gpu_hbm,
        weights=weights,
        expert_cache=cache,
        staging=staging,
        kv_capacity=kv,
        kv_bytes_per_token=per_token,
        block_tokens=block_tokens,
    )
