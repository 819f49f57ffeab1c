"""Hardware and model presets, and a roofline cost model for the LLM engine.

The engine charges each iteration (one forward pass over a batch) a time that is linear in what
the batch holds:

    dt = iter_base                                   weights streamed once + fixed runtime overhead
       + iter_per_prefill_token * prefill tokens     matmul FLOPs of each prompt token
       + iter_per_decode_seq    * decoding seqs      the sampler's logits traffic of each new token
       + iter_per_kv_token      * KV tokens read     attention reads every cached K and V once
       + swap_per_token         * tokens swapped     KV moved over the host link (preemption)

and the GPU holds `kv_capacity` tokens of KV cache. `roofline(gpu, model)` derives all of these
from datasheet numbers (`GPU`) and config.json numbers (`Model`) and a handful of module-level
efficiency constants that are the same for every GPU and model (see "Constants" below); nothing
is fitted to a measurement.

Modelling choices, stated once:

* A decode token's matmuls ride on the weight stream: below the ridge point (a batch of
  F / B tokens, about 120 for Llama-3.1-8B on an RTX 4090 at the efficiencies below) a decode
  step is bandwidth bound, so its FLOPs cost no time beyond `iter_base` and only the sampler's
  logits traffic is charged per sequence. Above the ridge (batches of hundreds of decoding
  sequences) this underestimates the step. Prefill tokens are charged their FLOPs on top of
  `iter_base`: exact for a compute-bound chunk of a few thousand tokens, and at most
  `iter_base` pessimistic for a small one.
* Attention is charged as memory traffic (every KV token read once per iteration, per layer);
  attention FLOPs (quadratic in a long prompt) are not counted separately.
* Each prompt's last token also goes through the lm_head (to sample the first output token): one
  token's worth per request, which the linear form cannot express and which is negligible
  (about 1 GFLOP for Llama-3.1-8B). Partial chunks of a chunked prefill produce no logits.
* Memory: weights take parameters * dtype_bytes / tensor_parallel per GPU; what the serving
  engine is allowed (memory_bytes * gpu_memory_utilization, as in vLLM) minus the weights and a
  fixed activation/runtime reserve is KV cache.
* Tensor parallel (Megatron style, as vLLM does it): weights, FLOPs and KV heads are split over
  the `tensor_parallel` GPUs; each layer adds two all-reduces of the batch's hidden states (after
  attention and after the MLP), charged as a fixed latency per all-reduce plus ring-all-reduce
  bytes over the GPU-to-GPU link (NVLink where the GPU has it, otherwise its PCIe host link).

Overriding: every preset is a frozen dataclass; change any number with `dataclasses.replace`,
e.g. `roofline(dataclasses.replace(gpu("h100-sxm"), memory_bandwidth=3.0e12), model("qwen3-32b"))`
or `dataclasses.replace(roofline(...), iter_base=0.015)`. The fields are validated on
construction, so a replaced value is checked too.

Units: bytes, seconds, FLOP; bandwidths in bytes/s per direction. Memory capacities in GPU
datasheets ("24 GB") are binary (the DRAM chips are 2^30-byte multiples), so they are given here
in GiB; bandwidths and FLOP rates are decimal, as in the datasheets.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

from jaxq._checks import check_choice, check_positive, check_range

GiB = 2**30  # bytes

# ---------------------------------------------------------------------------------------------
# Constants: achievable fractions and overheads, the same for every GPU and every model. They
# come from general public knowledge of LLM serving on GPUs, not from any measurement here.

BANDWIDTH_EFFICIENCY = 0.8
# Fraction of peak DRAM bandwidth that streaming kernels (decode GEMVs/skinny GEMMs, paged
# attention) reach. STREAM-like copies reach 85-92% of peak on HBM and GDDR parts; decode kernels
# of vLLM/TensorRT-LLM are commonly reported at 70-85% "MBU". 0.8 sits in the middle.

FLOP_EFFICIENCY = 0.75
# Fraction of dense bf16 tensor-core peak that prefill tokens' parameter matmuls reach. With
# chunked prefill an iteration's prompt tokens go through each weight matrix as one GEMM of up to
# the token budget (2048 rows by default) by thousands of columns, a size at which cuBLAS reaches
# 70-80% of peak; 0.75 is the middle. Norms, rotary, activations and attention are not counted
# as FLOPs, so they are absorbed here, and the iteration is charged the whole weight stream
# (iter_base) on top.
# History: this was 0.6 (the 40-60% "MFU" often quoted for whole-model prefill) until the
# comparison with a measured vLLM run (README, "Fidelity to a real engine") showed that run's
# 2048-token prefill iterations taking about 0.20 s, i.e. about 0.87 of the RTX 4090's rated
# 165 TFLOP/s, where 0.6 gave 0.31 s. 0.75 is the large-GEMM figure above, not a fit to that run:
# the preset stays slower than it measured.

ITER_OVERHEAD_S = 2e-3  # seconds per iteration
# Fixed per-iteration cost outside weight streaming and matmuls: scheduling and input
# preparation on the CPU (largely overlapped by vLLM V1's async scheduling but not entirely),
# the launch/tail latency of a few hundred small kernels (norms, rotary, activations) even under
# CUDA graphs, and sampling. Serving-engine profiles put this at 1-5 ms per step; 2 ms.

ACTIVATION_RESERVE_BYTES = 1 * GiB
# Peak activation memory of the serving engine's profiling forward pass (a full token budget of
# a few thousand tokens through the MLP, plus fp32 logits for up to a few hundred sequences):
# vLLM logs this as "activation peak" at about 1-1.3 GiB for 7-8B models.

RUNTIME_RESERVE_BYTES = 0.5 * GiB
# Memory the engine cannot use for KV although it counts against memory_bytes: the driver keeps
# ~2% of a 24 GB card out of CUDA's reported total (the measured RTX 4090 reports 25,250,627,584
# of 25,769,803,776 bytes), plus non-PyTorch allocations (cuBLAS/NCCL workspaces, CUDA graph
# pools), about 0.1-0.3 GiB in vLLM logs.
#
# Sanity check (the only use of a measurement, and only for these two reserves): vLLM 0.19 with
# Llama-3.1-8B on one RTX 4090 at gpu_memory_utilization 0.9 reported 2588 blocks of 16 = 41,408
# KV tokens; these reserves (1.5 GiB in all, round numbers from the reasoning above) give 42,127
# (+1.7%). The check is sensitive: on a 24 GB card each 0.5 GiB of reserve is ~4,100 tokens
# (~10%), so 1.0 or 2.0 GiB would have given +12% / -8%. The reserves are per GPU and do not
# grow with the model or shrink with tensor_parallel (a simplification: larger models have
# larger activations, tensor-parallel ranks smaller ones).

LINK_EFFICIENCY = 0.8
# Fraction of the nominal per-direction bandwidth of PCIe or NVLink that large transfers reach:
# 128b/130b encoding plus packet headers leave ~85-90% on PCIe (pinned-memory copies measure
# ~25 GB/s on Gen4 x16 and ~50 GB/s on Gen5 x16); NCCL reports bus bandwidths at ~80% of NVLink's.

ALLREDUCE_LATENCY_S = 10e-6  # seconds per all-reduce
# Fixed latency of one small all-reduce among the GPUs of one node (vLLM's custom all-reduce or
# NCCL's low-latency protocols): about 5-20 us. Two per layer per iteration when
# tensor_parallel > 1.

LOGITS_BYTES = 4  # bytes per logit: the lm_head's output is upcast to fp32 for sampling


# ---------------------------------------------------------------------------------------------
# Presets


def _check_fields(obj, names):
    for name in names:
        check_positive(f"{type(obj).__name__.lower()}.{name}", getattr(obj, name))


@dataclasses.dataclass(frozen=True)
class GPU:
    """One accelerator, from its datasheet."""

    name: str
    memory_bytes: float  # bytes of device memory
    memory_bandwidth: float  # bytes/s, peak DRAM bandwidth
    bf16_flops: float  # FLOP/s, dense (no sparsity) bf16 tensor-core peak with fp32 accumulate
    host_bandwidth: float  # bytes/s per direction of the host link (PCIe, or NVLink-C2C)
    peer_bandwidth: float | None = None  # bytes/s per direction GPU-GPU; None: host_bandwidth

    def __post_init__(self):
        _check_fields(self, ("memory_bytes", "memory_bandwidth", "bf16_flops", "host_bandwidth"))
        if self.peer_bandwidth is not None:
            check_positive("gpu.peer_bandwidth", self.peer_bandwidth)

    @property
    def gpu_to_gpu_bandwidth(self) -> float:
        """bytes/s per direction between two GPUs of this kind (tensor-parallel traffic)."""
        return self.host_bandwidth if self.peer_bandwidth is None else self.peer_bandwidth


# Host links, bytes/s per direction (GPU datasheets quote both directions together: "64 GB/s",
# "128 GB/s"); 16 or 32 GT/s per lane x 16 lanes, before 128b/130b encoding.
PCIE4_X16 = 32e9  # PCIe 4.0 x16
PCIE5_X16 = 64e9  # PCIe 5.0 x16

GPUS: dict[str, GPU] = {g.name: g for g in (
    # GeForce RTX 4090 (NVIDIA Ada Lovelace architecture whitepaper, appendix table): 24 GB GDDR6X,
    # 384-bit at 21 Gbps = 1008 GB/s; peak BF16 tensor TFLOPS with FP32 accumulate 165.2 dense
    # (330.4 sparse; GeForce runs fp32 accumulate at half the fp16-accumulate rate); PCIe 4.0 x16;
    # no NVLink and no peer-to-peer, so tensor-parallel traffic goes through the host link.
    GPU("rtx-4090", memory_bytes=24 * GiB, memory_bandwidth=1008e9, bf16_flops=165.2e12,
        host_bandwidth=PCIE4_X16),
    # A100 SXM4 80GB (NVIDIA A100 datasheet): 80 GB HBM2e, 2,039 GB/s; BF16 tensor core 312 TFLOPS
    # dense (624 sparse); PCIe Gen4 "64 GB/s"; NVLink 3 "600 GB/s" total = 300 GB/s per direction.
    GPU("a100-80gb", memory_bytes=80 * GiB, memory_bandwidth=2039e9, bf16_flops=312e12,
        host_bandwidth=PCIE4_X16, peer_bandwidth=300e9),
    # H100 SXM5 80GB (NVIDIA H100 datasheet; H100 whitepaper table): 80 GB HBM3, 3.35 TB/s;
    # BF16 tensor core 989.4 TFLOPS dense with fp32 accumulate (datasheet: "1,979" with sparsity);
    # PCIe Gen5 "128 GB/s"; NVLink 4 "900 GB/s" total = 450 GB/s per direction.
    GPU("h100-sxm", memory_bytes=80 * GiB, memory_bandwidth=3.35e12, bf16_flops=989.4e12,
        host_bandwidth=PCIE5_X16, peer_bandwidth=450e9),
    # H200 SXM 141GB (NVIDIA H200 datasheet): 141 GB HBM3e, 4.8 TB/s; the same GH100 compute as
    # H100 SXM: BF16 "1,979 TFLOPS" with sparsity = 989.4 dense; PCIe Gen5 "128 GB/s";
    # NVLink 4 "900 GB/s" total = 450 GB/s per direction.
    GPU("h200", memory_bytes=141 * GiB, memory_bandwidth=4.8e12, bf16_flops=989.4e12,
        host_bandwidth=PCIE5_X16, peer_bandwidth=450e9),
    # RTX PRO 6000 Blackwell (Workstation Edition; NVIDIA RTX PRO 6000 Blackwell datasheet and RTX
    # Blackwell GPU architecture whitepaper): 96 GB GDDR7 ECC, 512-bit at 28 Gbps = 1,792 GB/s;
    # peak FP16/BF16 tensor TFLOPS with FP32 accumulate 503.8 dense (1,007.6 sparse; 188 SMs at
    # 2.617 GHz); PCIe 5.0 x16; no NVLink.
    GPU("rtx-pro-6000", memory_bytes=96 * GiB, memory_bandwidth=1792e9, bf16_flops=503.8e12,
        host_bandwidth=PCIE5_X16),
)}


@dataclasses.dataclass(frozen=True)
class Model:
    """A dense decoder-only transformer, from its config.json."""

    name: str
    parameters: int  # total parameter count, embeddings and lm_head included
    layers: int  # num_hidden_layers
    hidden: int  # hidden_size
    kv_heads: int  # num_key_value_heads
    head_dim: int  # head_dim (hidden_size / num_attention_heads where config.json has none)
    vocab: int  # vocab_size
    dtype_bytes: int = 2  # bytes per weight and per KV element (bf16)
    tied_embeddings: bool = False  # tie_word_embeddings: the lm_head reuses the input embedding

    def __post_init__(self):
        _check_fields(self, ("parameters", "layers", "hidden", "kv_heads", "head_dim", "vocab",
                             "dtype_bytes"))
        if self.body_parameters <= 0:
            raise ValueError(f"model.parameters ({self.parameters}) must exceed the embedding "
                             f"and lm_head parameters ({self.embedding_parameters} each)")

    @property
    def embedding_parameters(self) -> int:
        """vocab * hidden: the input embedding (a lookup, no FLOPs); the lm_head has as many."""
        return self.vocab * self.hidden

    @property
    def body_parameters(self) -> int:
        """Parameters of the transformer layers and final norm: all but embedding and lm_head."""
        heads = 1 if self.tied_embeddings else 2
        return self.parameters - heads * self.embedding_parameters


MODELS: dict[str, Model] = {m.name: m for m in (
    # meta-llama/Llama-2-7b-hf config.json: num_hidden_layers 32, hidden_size 4096,
    # num_attention_heads 32, num_key_value_heads 32 (no GQA), intermediate_size 11008,
    # vocab_size 32000, tie_word_embeddings false; 6,738,415,616 parameters.
    Model("llama-2-7b", parameters=6_738_415_616, layers=32, hidden=4096, kv_heads=32,
          head_dim=128, vocab=32000),
    # meta-llama/Llama-3.1-8B config.json: num_hidden_layers 32, hidden_size 4096,
    # num_attention_heads 32, num_key_value_heads 8, intermediate_size 14336, vocab_size 128256,
    # tie_word_embeddings false; 8,030,261,248 parameters.
    Model("llama-3.1-8b", parameters=8_030_261_248, layers=32, hidden=4096, kv_heads=8,
          head_dim=128, vocab=128256),
    # Qwen/Qwen3-32B config.json: num_hidden_layers 64, hidden_size 5120, num_attention_heads 64,
    # num_key_value_heads 8, head_dim 128, intermediate_size 25600, vocab_size 151936,
    # tie_word_embeddings false; 32,762,123,264 parameters (model card: 32.8B, 31.2B non-embedding).
    Model("qwen3-32b", parameters=32_762_123_264, layers=64, hidden=5120, kv_heads=8,
          head_dim=128, vocab=151936),
)}


def gpu(name: str) -> GPU:
    """The preset GPU called `name` (a key of GPUS)."""
    return GPUS[check_choice("gpu", name, GPUS)]


def model(name: str) -> Model:
    """The preset model called `name` (a key of MODELS)."""
    return MODELS[check_choice("model", name, MODELS)]


# ---------------------------------------------------------------------------------------------
# The cost model


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Coefficients of the engine's linear iteration time and its KV capacity (plain Python
    numbers; one GPU, or one tensor-parallel group acting as one)."""

    iter_base: float  # seconds per iteration
    iter_per_prefill_token: float  # seconds per prompt token in the batch
    iter_per_decode_seq: float  # seconds per decoding sequence in the batch
    iter_per_kv_token: float  # seconds per KV token attended (summed over the batch)
    swap_per_token: float  # seconds per token of KV moved between GPU and host
    kv_capacity: int  # tokens of KV cache the GPU(s) hold
    kv_bytes_per_token: float  # bytes of KV per token on each GPU

    def __post_init__(self):
        for name in ("iter_base", "iter_per_prefill_token", "iter_per_decode_seq",
                     "iter_per_kv_token", "swap_per_token", "kv_bytes_per_token"):
            check_positive(f"costmodel.{name}", getattr(self, name))
        check_range("costmodel.kv_capacity", self.kv_capacity, low=1)


def _check_tensor_parallel(tensor_parallel, m: Model) -> int:
    if (isinstance(tensor_parallel, bool) or not isinstance(tensor_parallel, numbers.Integral)
            or tensor_parallel < 1):
        raise ValueError(f"tensor_parallel must be an integer >= 1, got {tensor_parallel!r}")
    tp = int(tensor_parallel)
    if m.kv_heads % tp and tp % m.kv_heads:
        raise ValueError(f"tensor_parallel ({tp}) must divide, or be a multiple of, the "
                         f"{m.kv_heads} KV heads of {m.name}")
    return tp


def weight_bytes(m: Model, tensor_parallel: int = 1) -> float:
    """Bytes of weights on each GPU: parameters * dtype_bytes / tensor_parallel."""
    tp = _check_tensor_parallel(tensor_parallel, m)
    return m.parameters * m.dtype_bytes / tp


def kv_bytes_per_token(m: Model, tensor_parallel: int = 1) -> float:
    """Bytes of KV cache per token on each GPU: K and V, every layer, this GPU's KV heads.

    KV heads are split over the GPUs; with more GPUs than KV heads each GPU keeps one
    (replicated), as vLLM does.
    """
    tp = _check_tensor_parallel(tensor_parallel, m)
    kv_heads_per_gpu = max(m.kv_heads // tp, 1)
    return 2 * m.layers * kv_heads_per_gpu * m.head_dim * m.dtype_bytes


def roofline(gpu: GPU | str, model: Model | str, *, tensor_parallel: int = 1,
             gpu_memory_utilization: float = 0.9) -> CostModel:
    """The cost model of `model` served on `tensor_parallel` GPUs of kind `gpu`.

    `gpu_memory_utilization` is the share of each GPU's memory the engine may use (as in vLLM);
    what weights and the reserves leave of it becomes KV cache. Raises ValueError if nothing is
    left.
    """
    g = GPUS[check_choice("gpu", gpu, GPUS)] if isinstance(gpu, str) else gpu
    m = MODELS[check_choice("model", model, MODELS)] if isinstance(model, str) else model
    if not isinstance(g, GPU):
        raise TypeError(f"gpu must be a GPU or a preset name, got {type(g).__name__}")
    if not isinstance(m, Model):
        raise TypeError(f"model must be a Model or a preset name, got {type(m).__name__}")
    tp = _check_tensor_parallel(tensor_parallel, m)
    check_range("gpu_memory_utilization", gpu_memory_utilization, low=0.0, low_open=True, high=1.0)

    bandwidth = BANDWIDTH_EFFICIENCY * g.memory_bandwidth  # bytes/s achievable, per GPU
    flops = FLOP_EFFICIENCY * g.bf16_flops * tp  # FLOP/s achievable, whole group
    link = LINK_EFFICIENCY * g.gpu_to_gpu_bandwidth  # bytes/s achievable, per GPU per direction

    # Memory: weights, then reserves, then KV.
    weights = weight_bytes(m, tp)  # bytes per GPU
    kv_bytes = kv_bytes_per_token(m, tp)  # bytes per token per GPU
    free = (g.memory_bytes * gpu_memory_utilization - weights - ACTIVATION_RESERVE_BYTES
            - RUNTIME_RESERVE_BYTES)  # bytes per GPU for KV
    kv_capacity = math.floor(free / kv_bytes) if free > 0 else 0  # tokens
    if kv_capacity < 1:
        raise ValueError(
            f"model {m.name} does not fit on gpu {g.name} at tensor_parallel={tp}: "
            f"{weights / GiB:.1f} GiB of weights per GPU plus "
            f"{(ACTIVATION_RESERVE_BYTES + RUNTIME_RESERVE_BYTES) / GiB:.1f} GiB of reserve exceed "
            f"gpu_memory_utilization {gpu_memory_utilization:g} x {g.memory_bytes / GiB:.1f} GiB, "
            f"leaving no room for KV cache; use a larger tensor_parallel or GPU")

    # Per iteration: every weight but the input embedding is read once (the embedding is a lookup
    # of a few rows; a tied lm_head reads the whole table anyway, so it is kept in the count).
    streamed = (m.body_parameters + m.embedding_parameters) * m.dtype_bytes / tp  # bytes per GPU
    iter_base = streamed / bandwidth + ITER_OVERHEAD_S

    # Matmul FLOPs: 2 per parameter per token. Prompt tokens go through the layers only (their
    # logits are not needed, see the module docstring). A decode token's matmuls hide under the
    # weight stream (bandwidth bound below the ridge point, see the module docstring); what is
    # left per decoding sequence is its fp32 logits row, written and read once more by the sampler.
    prefill_flops = 2 * m.body_parameters  # FLOP per prompt token
    logits_time = 2 * m.vocab * LOGITS_BYTES / bandwidth  # seconds per decoding sequence
    iter_per_prefill_token = prefill_flops / flops
    iter_per_decode_seq = logits_time

    if tp > 1:
        # Two all-reduces per layer of every token's hidden state; a ring all-reduce moves
        # 2 (tp-1)/tp of the message through each GPU's link.
        allreduces = 2 * m.layers  # per iteration
        iter_base += allreduces * ALLREDUCE_LATENCY_S
        per_token = allreduces * 2 * (tp - 1) / tp * m.hidden * m.dtype_bytes / link  # s/token
        iter_per_prefill_token += per_token
        iter_per_decode_seq += per_token

    # Attention reads each cached token's K and V once per iteration, on every GPU in parallel.
    iter_per_kv_token = kv_bytes / bandwidth
    # Swapping: the whole model's KV of a token (all GPUs' shares) crosses one host link's worth
    # of bandwidth. Conservative: tensor-parallel GPUs often share the host's bandwidth (x8/x8
    # slots on workstation boards, a PCIe switch per GPU pair in servers); with an independent
    # x16 link per GPU swaps would be tensor_parallel times faster.
    swap_per_token = kv_bytes * tp / (LINK_EFFICIENCY * g.host_bandwidth)

    return CostModel(iter_base=float(iter_base),
                     iter_per_prefill_token=float(iter_per_prefill_token),
                     iter_per_decode_seq=float(iter_per_decode_seq),
                     iter_per_kv_token=float(iter_per_kv_token),
                     swap_per_token=float(swap_per_token),
                     kv_capacity=int(kv_capacity), kv_bytes_per_token=float(kv_bytes))
