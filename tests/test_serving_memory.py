"""HBM accounting of a serving GPU, checked by hand on FLAME-MoE-290M's dimensions."""

from __future__ import annotations

import dataclasses

import pytest

from sim.errors import UserError
from sim.scenario import scenario_from_dict
from sim.serving.memory import kv_bytes_per_token, non_expert_weight_bytes, plan_hbm
from sim.serving.run import gpu_hbm_bytes
from sim.serving.spec import MemorySpec

GB = 1e9


def _scenario(capacity: str = "128 experts"):
    return scenario_from_dict(
        {"hardware": {"preset": "notebook-gbps", "hbm": {"capacity": capacity}}}
    )


def test_kv_bytes_per_token_by_hand():
    model = _scenario().model  # flame-moe-290m: 9 layers, 16 KV heads x 64, bf16
    assert kv_bytes_per_token(model) == 9 * 2 * 16 * 64 * 2
    mla = dataclasses.replace(model, kv_cache_dim=576.0)  # a compressed latent instead
    assert kv_bytes_per_token(mla) == 9 * 576 * 2


def test_non_expert_weights_by_hand():
    model = _scenario().model
    h, heads, kv, hd, e = 1024, 16, 16, 64, 64
    attention = 2 * h * heads * hd + 2 * h * kv * hd
    moe = attention + h * e + 3 * h * (2 * 704)  # router, two shared experts of 704
    dense = attention + 3 * h * model.dense_ffn_size
    params = 8 * moe + 1 * dense + 2 * 50304 * h  # embedding and LM head
    assert non_expert_weight_bytes(model) == pytest.approx(params * 2, rel=1e-12)


def test_fixed_split_gives_kv_what_is_left():
    scenario = _scenario()
    model, hw = scenario.model, scenario.hardware
    total = gpu_hbm_bytes(scenario.hardware_doc)
    assert total == 80 * GB  # h100-sxm of the notebook-gbps preset
    plan = plan_hbm(MemorySpec(), 16, hw, model, total)
    weights, staging = non_expert_weight_bytes(model), 64 * model.expert_bytes
    assert plan.kv_capacity == pytest.approx(total - weights - 128 * model.expert_bytes - staging)
    assert plan.kv_blocks == int(plan.kv_capacity // (16 * kv_bytes_per_token(model)))
    assert plan.expert_capacity(plan.kv_blocks) == 128 * model.expert_bytes
    given = plan_hbm(MemorySpec(kv_capacity=1 * GB, staging="8 experts"), 16, hw, model, total)
    assert given.kv_capacity == 1 * GB and given.staging == 8 * model.expert_bytes
    with pytest.raises(UserError, match=r"kv_capacity: expected at most the GPU's HBM 80 GB"):
        plan_hbm(MemorySpec(kv_capacity=80 * GB), 16, hw, model, total)
    with pytest.raises(UserError, match="expected HBM for at least one KV block"):
        plan_hbm(MemorySpec(), 16, hw, model, 0.5 * GB)
    with pytest.raises(UserError, match="kv_capacity: required when the GPU's HBM is not known"):
        plan_hbm(MemorySpec(), 16, hw, model, None)


def test_shared_pool_shrinks_the_expert_cache_as_kv_grows():
    scenario = _scenario("1 GB")
    model, hw = scenario.model, scenario.hardware
    total = 2 * GB
    plan = plan_hbm(MemorySpec(mode="shared"), 16, hw, model, total)
    pool = total - non_expert_weight_bytes(model) - 64 * model.expert_bytes
    assert plan.kv_capacity == pytest.approx(pool)
    block = 16 * kv_bytes_per_token(model)
    assert plan.expert_capacity(0) == 1 * GB  # the cache's own budget caps it
    used = int((pool - 0.5 * GB) // block)
    assert plan.expert_capacity(used) == pytest.approx(pool - used * block)
    assert plan.expert_capacity(plan.kv_blocks) < block
    with pytest.raises(UserError, match="kv_capacity: expected none in shared mode"):
        plan_hbm(MemorySpec(mode="shared", kv_capacity=GB), 16, hw, model, total)


def test_a_model_without_dimensions_is_refused():
    model = dataclasses.replace(_scenario().model, num_layers=None)
    with pytest.raises(UserError, match=r"model\.num_layers: required by a serving workload"):
        kv_bytes_per_token(model)
