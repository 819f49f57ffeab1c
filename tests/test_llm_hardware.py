"""LLM hardware: presets, the roofline cost model's arithmetic, scaling, and validation."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest

from jaxq.llm import hardware as hw
from jaxq.llm.hardware import GPUS, MODELS, CostModel, GPU, Model, gpu, model, roofline

GiB = 2**30

# vLLM 0.19, Llama-3.1-8B, one RTX 4090, gpu_memory_utilization 0.9: 2588 blocks of 16 tokens
# (../shared/data/vllm-rtx4090-llama3.1-8b/meta.json)
VLLM_4090_KV_TOKENS = 2588 * 16


def test_kv_bytes_per_token_llama31_8b():
    # 2 (K and V) * 32 layers * 8 KV heads * 128 head_dim * 2 bytes (bf16)
    expected = 2 * 32 * 8 * 128 * 2
    assert expected == 131072
    assert hw.kv_bytes_per_token(model("llama-3.1-8b")) == expected
    assert roofline("rtx-4090", "llama-3.1-8b").kv_bytes_per_token == expected
    # split over the KV heads of 2 GPUs; replicated (one head each) beyond 8 GPUs
    tp2 = roofline("h100-sxm", "llama-3.1-8b", tensor_parallel=2)
    assert tp2.kv_bytes_per_token == expected / 2
    assert hw.kv_bytes_per_token(model("llama-3.1-8b"), 16) == 2 * 32 * 1 * 128 * 2


def test_kv_bytes_per_token_llama2_and_qwen3():
    assert hw.kv_bytes_per_token(model("llama-2-7b")) == 2 * 32 * 32 * 128 * 2  # no GQA: 512 KiB
    assert hw.kv_bytes_per_token(model("qwen3-32b")) == 2 * 64 * 8 * 128 * 2


def test_presets_match_config_json_parameter_counts():
    """Parameter totals follow from the config.json shapes (attention, MLP, norms, embeddings)."""
    def count(layers, hidden, heads, kv_heads, head_dim, inter, vocab, qk_norm=False):
        attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
        attn += 2 * head_dim if qk_norm else 0
        per_layer = attn + 3 * hidden * inter + 2 * hidden
        return layers * per_layer + hidden + 2 * vocab * hidden  # final norm, embedding, lm_head
    assert model("llama-2-7b").parameters == count(32, 4096, 32, 32, 128, 11008, 32000)
    assert model("llama-3.1-8b").parameters == count(32, 4096, 32, 8, 128, 14336, 128256)
    assert model("qwen3-32b").parameters == count(64, 5120, 64, 8, 128, 25600, 151936, qk_norm=True)


def test_weight_bytes():
    m = model("llama-3.1-8b")
    assert hw.weight_bytes(m) == 8_030_261_248 * 2
    assert hw.weight_bytes(m, 4) == 8_030_261_248 * 2 / 4
    assert hw.weight_bytes(dataclasses.replace(m, dtype_bytes=1)) == 8_030_261_248


def test_kv_capacity_rtx4090_llama31_8b_near_vllm():
    c = roofline(gpu("rtx-4090"), model("llama-3.1-8b"), gpu_memory_utilization=0.9)
    assert isinstance(c.kv_capacity, int)
    assert abs(c.kv_capacity / VLLM_4090_KV_TOKENS - 1) < 0.10, c.kv_capacity


def test_kv_capacity_formula():
    g, m = gpu("h100-sxm"), model("llama-3.1-8b")
    reserve = hw.ACTIVATION_RESERVE_BYTES + hw.RUNTIME_RESERVE_BYTES
    free = 80 * GiB * 0.8 - 8_030_261_248 * 2 - reserve
    assert roofline(g, m, gpu_memory_utilization=0.8).kv_capacity == math.floor(free / 131072)


def test_coefficients_from_first_principles_rtx4090():
    """Every coefficient recomputed here from the datasheet numbers and the module constants."""
    c = roofline("rtx-4090", "llama-3.1-8b")
    bw = hw.BANDWIDTH_EFFICIENCY * 1008e9
    fl = hw.FLOP_EFFICIENCY * 165.2e12
    embed = 128256 * 4096
    body = 8_030_261_248 - 2 * embed
    assert c.iter_base == pytest.approx((body + embed) * 2 / bw + hw.ITER_OVERHEAD_S)
    assert c.iter_per_prefill_token == pytest.approx(2 * body / fl)
    assert c.iter_per_decode_seq == pytest.approx(2 * 128256 * 4 / bw)
    assert c.iter_per_kv_token == pytest.approx(131072 / bw)
    assert c.swap_per_token == pytest.approx(131072 / (hw.LINK_EFFICIENCY * 32e9))
    # orders of magnitude a reader can check: ~20 ms to stream 15 GB at ~0.8 TB/s, ~0.14 ms per
    # prompt token (15 GFLOP at ~100 TFLOP/s), ~1 us per decoding sequence (a 0.5 MB logits row)
    assert 0.015 < c.iter_base < 0.03
    assert 1e-4 < c.iter_per_prefill_token < 2e-4
    assert 5e-7 < c.iter_per_decode_seq < 5e-6


def test_tensor_parallel_halves_weight_time():
    m = model("llama-3.1-8b")
    c1 = roofline("h100-sxm", m)
    c2 = roofline("h100-sxm", m, tensor_parallel=2)
    weight_time_1 = c1.iter_base - hw.ITER_OVERHEAD_S
    weight_time_2 = c2.iter_base - hw.ITER_OVERHEAD_S - 2 * m.layers * hw.ALLREDUCE_LATENCY_S
    assert weight_time_2 == pytest.approx(weight_time_1 / 2)
    assert c2.iter_base > c1.iter_base / 2  # the fixed overhead and the all-reduces do not split
    assert c2.iter_per_kv_token == pytest.approx(c1.iter_per_kv_token / 2)
    # FLOPs split too, but the all-reduce bytes are added per token
    assert c1.iter_per_prefill_token / 2 < c2.iter_per_prefill_token < c1.iter_per_prefill_token
    assert c2.swap_per_token == pytest.approx(c1.swap_per_token)  # whole model over one host link
    assert c2.kv_capacity > 2 * c1.kv_capacity  # half the weights and half the KV per GPU


def test_all_reduce_over_pcie_is_dearer_than_over_nvlink():
    m = model("llama-3.1-8b")
    pcie = dataclasses.replace(gpu("h100-sxm"), peer_bandwidth=None)  # through the host link
    extra_nvlink = (roofline("h100-sxm", m, tensor_parallel=2).iter_per_prefill_token
                    - roofline("h100-sxm", m).iter_per_prefill_token / 2)
    extra_pcie = (roofline(pcie, m, tensor_parallel=2).iter_per_prefill_token
                  - roofline(pcie, m).iter_per_prefill_token / 2)
    assert extra_pcie == pytest.approx(extra_nvlink * 450e9 / 64e9)


def test_doubling_memory_bandwidth_halves_kv_time():
    g = gpu("a100-80gb")
    fast = dataclasses.replace(g, memory_bandwidth=2 * g.memory_bandwidth)
    c, c_fast = roofline(g, "llama-2-7b"), roofline(fast, "llama-2-7b")
    assert c_fast.iter_per_kv_token == pytest.approx(c.iter_per_kv_token / 2)
    weight_time = c.iter_base - hw.ITER_OVERHEAD_S
    assert c_fast.iter_base - hw.ITER_OVERHEAD_S == pytest.approx(weight_time / 2)
    assert c_fast.iter_per_prefill_token == c.iter_per_prefill_token  # compute, not bandwidth
    assert c_fast.kv_capacity == c.kv_capacity


def test_doubling_flops_halves_prefill_time():
    g = gpu("rtx-pro-6000")
    c = roofline(g, "qwen3-32b")
    c_fast = roofline(dataclasses.replace(g, bf16_flops=2 * g.bf16_flops), "qwen3-32b")
    assert c_fast.iter_per_prefill_token == pytest.approx(c.iter_per_prefill_token / 2)
    assert c_fast.iter_base == c.iter_base


def test_more_memory_more_kv():
    g = gpu("rtx-4090")
    caps = [roofline(dataclasses.replace(g, memory_bytes=gib * GiB), "llama-3.1-8b").kv_capacity
            for gib in (24, 32, 48)]
    assert caps[0] < caps[1] < caps[2]
    # each extra GiB at utilization 0.9 holds 0.9 GiB / 128 KiB = 7372.8 tokens
    assert caps[2] - caps[1] == pytest.approx(16 * 0.9 * GiB / 131072, abs=1)
    assert (roofline(g, "llama-3.1-8b", gpu_memory_utilization=0.95).kv_capacity
            > roofline(g, "llama-3.1-8b").kv_capacity)


@pytest.mark.parametrize("g, m", list(itertools.product(GPUS, MODELS)))
def test_every_preset_pair(g, m):
    if g == "rtx-4090" and m == "qwen3-32b":  # 61 GiB of bf16 weights on a 24 GiB card
        with pytest.raises(ValueError, match=r"qwen3-32b does not fit on gpu rtx-4090"):
            roofline(g, m)
        c = roofline(g, m, tensor_parallel=4)  # 15.3 GiB per GPU fits
    else:
        c = roofline(g, m)
    assert isinstance(c, CostModel)
    for name in ("iter_base", "iter_per_prefill_token", "iter_per_decode_seq",
                 "iter_per_kv_token", "swap_per_token", "kv_bytes_per_token"):
        value = getattr(c, name)
        assert type(value) is float and math.isfinite(value) and value > 0, (name, value)
    assert type(c.kv_capacity) is int and c.kv_capacity > 0


def test_bad_names():
    with pytest.raises(ValueError, match=r"gpu.*'rtx-9090'.*rtx-4090.*h200"):
        gpu("rtx-9090")
    with pytest.raises(ValueError, match=r"model.*'llama-4'.*llama-3.1-8b.*qwen3-32b"):
        model("llama-4")
    with pytest.raises(ValueError, match=r"unknown gpu"):
        roofline("tpu-v5", "llama-3.1-8b")
    with pytest.raises(ValueError, match=r"unknown model"):
        roofline("h200", "gpt-5")


@pytest.mark.parametrize("tp", [0, -1, 1.5, 2.0, True, "2"])
def test_bad_tensor_parallel(tp):
    with pytest.raises(ValueError, match=r"tensor_parallel must be an integer >= 1"):
        roofline("h100-sxm", "llama-3.1-8b", tensor_parallel=tp)


def test_tensor_parallel_must_split_kv_heads():
    with pytest.raises(ValueError, match=r"tensor_parallel \(3\).*8 KV heads"):
        roofline("h100-sxm", "llama-3.1-8b", tensor_parallel=3)


@pytest.mark.parametrize("u", [0.0, -0.1, 1.01, float("nan"), float("inf")])
def test_bad_gpu_memory_utilization(u):
    message = r"gpu_memory_utilization must (lie in \(0, 1\]|be finite)"
    with pytest.raises(ValueError, match=message):
        roofline("h100-sxm", "llama-3.1-8b", gpu_memory_utilization=u)


def test_utilization_too_small_for_the_weights():
    with pytest.raises(ValueError, match=r"does not fit.*gpu_memory_utilization 0\.5"):
        roofline("rtx-4090", "llama-3.1-8b", gpu_memory_utilization=0.5)


def test_bad_overrides_are_caught():
    with pytest.raises(ValueError, match=r"gpu\.memory_bandwidth"):
        dataclasses.replace(gpu("h200"), memory_bandwidth=0.0)
    with pytest.raises(ValueError, match=r"model\.layers"):
        dataclasses.replace(model("qwen3-32b"), layers=-64)
    with pytest.raises(ValueError, match=r"model\.parameters"):
        dataclasses.replace(model("llama-3.1-8b"), parameters=1_000_000)


def test_presets_are_frozen_and_named_by_key():
    for name, g in GPUS.items():
        assert isinstance(g, GPU) and g.name == name
    for name, m in MODELS.items():
        assert isinstance(m, Model) and m.name == name
    assert {"rtx-4090", "a100-80gb", "h100-sxm", "h200", "rtx-pro-6000"} <= set(GPUS)
    assert {"llama-2-7b", "llama-3.1-8b", "qwen3-32b"} <= set(MODELS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        gpu("h200").memory_bytes = 1  # type: ignore[misc]
