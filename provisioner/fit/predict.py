"""How fast it will run: decode and prefill tokens/s from a placement (pure).

Decode is memory-bound: per token every device reads the bytes that live on it and
are used for this token (dense weights, the active experts' share of the expert
weights, the KV cache so far) at its bandwidth x an efficiency factor, plus the
PCIe traffic of weights streamed from host memory, plus fixed per-layer costs.
Devices that take turns (llama.cpp layer split, GPU then CPU) add their times;
tensor-parallel GPUs (vLLM) work at once. Prefill is bounded by compute
(2 x active parameters per token) or by the weights copied over PCIe per batch.
Factors: catalog/fit.yaml. The model and its known errors: docs/fit.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provisioner.catalog import GpuSpec
from provisioner.fit.kv import kv_cache_bytes
from provisioner.fit.placement import Placement, llama_ubatch, params
from provisioner.profile.resolve import Spec

# GB/s per lane (after 128b/130b encoding) by PCIe generation.
_PCIE_LANE_GB_S = {3: 0.985, 4: 1.969, 5: 3.938, 6: 7.563}
BOTTLENECKS = ("gpu-bandwidth", "cpu-ram-bandwidth", "pcie", "compute", "interconnect")


@dataclass(frozen=True)
class Prediction:
    decode_tokens_per_s: float  # one stream, short prompt (what benchmarks call tg128)
    decode_tokens_per_s_at_context: float  # one stream, cache filled to the profile's context
    prefill_tokens_per_s: float
    bottleneck: str  # the largest share of a short-prompt decode step
    decode_ms: dict[str, float]  # that step, by bottleneck
    streams: int = 1  # the profile's parallel sequences, decoded together
    decode_aggregate_tokens_per_s: float = 0.0  # all streams, short prompts
    decode_per_stream_tokens_per_s: float = 0.0  # each of them



def _speed(key: str) -> Any:
    return params()["speed"][key]


def _per_engine(key: str, engine: str) -> float:
    table = _speed(key)
    return float(table[engine])


def cpu_bandwidth_gb_s(spec: Spec) -> float:
    """RAM bandwidth decode can use: the memory's, capped by what the cores pull."""
    hw = spec.profile.hardware
    cores = spec.profile.runtime.threads or hw.cpu.cores
    return min(hw.memory.bandwidth(), cores * float(_speed("cpu_core_bandwidth_gb_s")))


def pcie_gb_s(spec: Spec) -> float:
    """The slowest GPU link (every GPU streams over its own link at once)."""
    return min((_link_gb_s(g.spec) for g in spec.gpus), default=0.0)


def _link_gb_s(gpu: GpuSpec) -> float:
    # unified memory: "host" RAM is the GPU's own pool, read at the pool's bandwidth
    if gpu.pcie_gen is None or gpu.pcie_lanes is None:
        return gpu.memory_bandwidth_gb_s
    return _PCIE_LANE_GB_S[gpu.pcie_gen] * gpu.pcie_lanes


def _read_ratios(spec: Spec) -> tuple[float, float]:
    """Share of stored dense bytes and of stored expert bytes that one token reads: every
    dense tensor but the input embedding (one row of it), and the experts the model's
    config routes each token to (experts_active of experts_total). With the GGUF header
    the dense bytes and the embedding's are the file's own; else the catalog's parameter
    counts give the dense share."""
    m = spec.model
    expert_ratio = m.experts_active / m.experts_total if m.is_moe else 0.0
    layout = spec.layout
    if layout is not None and layout.layers == m.layers and layout.token_embd:
        dense = sum(layout.dense) + layout.outside
        return (dense - layout.token_embd) / dense if dense else 0.0, expert_ratio
    if not m.is_moe:
        return 1.0, 0.0
    expert_active_params = m.params_total * m.expert_params_fraction * expert_ratio
    dense_params = m.params_total * (1 - m.expert_params_fraction)
    # params_active excludes the input embedding table (one row is read, not all):
    dense_read = max(m.params_active - expert_active_params, 0.0)
    return min(dense_read / dense_params, 1.0) if dense_params else 0.0, expert_ratio


def decode_step_s(spec: Spec, placement: Placement, depth: int, streams: int = 1) -> dict[str, float]:
    """Seconds one decode step spends per bottleneck, with ``depth`` tokens already cached in
    each of ``streams`` sequences decoded together (one token each): the weights are read
    once per step (an MoE's experts as far as any stream routes to them), each stream's
    cache on its own."""
    engine = spec.profile.runtime.engine
    dense_ratio, expert_ratio = _read_ratios(spec)
    expert_ratio = 1.0 - (1.0 - expert_ratio) ** streams
    gpu_eff = _per_engine("gpu_bandwidth_efficiency", engine)
    # Flash attention reads K and V in one fused kernel that streams them like a weight
    # matrix; without it the cache is read head group by head group with softmax between.
    fa = spec.profile.runtime.flash_attention != "off" or engine == "vllm"
    kv_eff = gpu_eff if fa else float(_speed("kv_read_efficiency"))
    kv_now = kv_cache_bytes(spec, depth) * streams
    kv_full = max(sum(d.kv_cache_bytes for d in placement.devices), 1)
    steps = {name: 0.0 for name in BOTTLENECKS}

    gpu_times: list[float] = []
    for dev in placement.gpus:
        read = (dev.weights_bytes - dev.expert_bytes) * dense_ratio + dev.expert_bytes * expert_ratio
        kv = kv_now * dev.kv_cache_bytes / kv_full
        bw = dev.bandwidth_gb_s * 1e9
        gpu_times.append(read / (bw * gpu_eff) + kv / (bw * kv_eff))
    if gpu_times:
        # pipeline stages (a cluster's nodes) take turns; inside a stage TP ranks work at once
        size = max(len(gpu_times) // max(placement.stages, 1), 1)
        stages = [gpu_times[i:i + size] for i in range(0, len(gpu_times), size)]
        steps["gpu-bandwidth"] = sum(max(s) if placement.tensor_parallel else sum(s) for s in stages)
    steps["interconnect"] = placement.interconnect_s_per_token

    ram = placement.ram
    if ram.weights_bytes and not placement.cpu_offload_bytes:
        read = (ram.weights_bytes - ram.expert_bytes) * dense_ratio + ram.expert_bytes * expert_ratio
        kv = kv_now * ram.kv_cache_bytes / kv_full
        raw = cpu_bandwidth_gb_s(spec) * 1e9
        steps["cpu-ram-bandwidth"] = (read / (raw * float(_speed("cpu_bandwidth_efficiency")))
                                      + kv / (raw * float(_speed("kv_read_efficiency"))))
    if placement.cpu_offload_bytes:
        # vLLM --cpu-offload-gb: every step copies the offloaded weights to each GPU.
        steps["pcie"] = placement.cpu_offload_bytes / (pcie_gb_s(spec) * 1e9 * float(_speed("pcie_efficiency")))

    steps["compute"] = _fixed_s(spec, placement)
    return steps


def _fixed_s(spec: Spec, placement: Placement) -> float:
    """The step's costs that no bandwidth explains: per layer, per GPU-CPU hand-off, per
    all-reduce or host-staged GPU boundary."""
    m = spec.model
    overhead_us = _speed("gpu_layer_overhead_us")
    per_layer = float(overhead_us["moe"] if m.is_moe else overhead_us["dense"])
    if m.is_moe and _vllm_marlin_mxfp4(spec):
        per_layer += float(_speed("vllm_marlin_mxfp4_moe_layer_us"))
    if spec.gpus:
        gpu_repeating = min(placement.gpu_layers, m.layers)
        cpu_layers = m.layers - gpu_repeating
        fixed = gpu_repeating * per_layer + cpu_layers * float(_speed("cpu_layer_overhead_us"))
        handoffs = max(placement.cpu_moe_layers - cpu_layers, 0) + (1 if cpu_layers else 0)
        fixed += handoffs * float(_speed("cpu_gpu_handoff_us"))
        if placement.tensor_parallel and spec.gpu_count // max(placement.stages, 1) > 1:
            nvlink = all(g.spec.nvlink for g in spec.gpus)
            link = "nvlink" if nvlink else "pcie-no-p2p" if placement.p2p_missing else "pcie"
            fixed += 2 * m.layers * float(_speed("tp_allreduce_us")[link])
        elif spec.gpu_count > 1 and placement.p2p_missing:
            # layer split: each token's activations cross every GPU boundary through host memory
            fixed += (spec.gpu_count - 1) * float(_speed("gpu_boundary_no_p2p_us"))
    else:
        fixed = m.layers * float(_speed("cpu_layer_overhead_us"))
    return fixed / 1e6


def _vllm_marlin_mxfp4(spec: Spec) -> bool:
    """vLLM runs MXFP4 experts through Marlin's dequantising kernel on GPUs of compute
    capability below 9 (vllm-0.11.0 model_executor/layers/quantization/mxfp4.py,
    get_mxfp4_backend): Ampere and Ada have no FP4 path of their own."""
    return (spec.profile.runtime.engine == "vllm" and spec.profile.model.quant.upper() == "MXFP4"
            and any(int(g.spec.compute_capability.split(".")[0]) < 9 for g in spec.gpus))


def prefill_tokens_per_s(spec: Spec, placement: Placement, prompt_tokens: int | None = None) -> float:
    """Prompt tokens/s for a prompt of ``prompt_tokens`` (None: long enough to fill whole
    ubatches), cut into physical batches of ``ubatch(spec)`` (vLLM: its token budget)."""
    m = spec.model
    flops_per_token = 2.0 * m.params_active
    if not spec.gpus:
        cores = spec.profile.runtime.threads or spec.profile.hardware.cpu.cores
        return cores * float(_speed("cpu_gflops_per_core")) * 1e9 / flops_per_token
    full = placement.ubatch or ubatch(spec)
    batch = min(full, prompt_tokens) if prompt_tokens else full
    compute = batch * flops_per_token * _compute_s_per_flop(spec, placement)
    # Weights in host RAM cross PCIe once per ubatch (llama.cpp copies CPU-resident
    # layers/experts to the GPU for batches of 32+ tokens; vLLM streams its offload).
    # The copy of the next layer overlaps the compute of this one, so a ubatch takes
    # the longer of the two, not their sum.
    host = placement.cpu_offload_bytes * spec.gpu_count if placement.cpu_offload_bytes \
        else placement.ram.weights_bytes
    copy = host / (pcie_gb_s(spec) * 1e9 * float(_speed("pcie_efficiency")))
    return batch / max(compute, copy, _weights_read_s(spec, placement, batch))


def _weights_read_s(spec: Spec, placement: Placement, batch: int) -> float:
    """A batch reads every GPU-resident weight it uses once: all dense tensors and the
    experts that at least one of its tokens routes to (uniform routing). Bounds short
    prompts, where the matrix units wait on memory."""
    m = spec.model
    touched = 1.0 - (1.0 - m.experts_active / m.experts_total) ** batch if m.is_moe else 0.0
    eff = _per_engine("gpu_bandwidth_efficiency", spec.profile.runtime.engine)
    times = [((d.weights_bytes - d.expert_bytes) + d.expert_bytes * touched) / (d.bandwidth_gb_s * 1e9 * eff)
             for d in placement.gpus if d.bandwidth_gb_s]
    return (max(times) if placement.tensor_parallel else sum(times)) if times else 0.0


def _compute_s_per_flop(spec: Spec, placement: Placement) -> float:
    """Seconds per FLOP of a prompt batch over the GPUs. Tensor-parallel ranks (vLLM)
    work at once; a layer split (llama.cpp, Ollama) passes one ubatch through the GPUs in
    turn, so each GPU's share of the work (its share of the weights on GPUs) adds its time."""
    engine = spec.profile.runtime.engine
    rates = [g.spec.fp16_dense_tflops * 1e12 * _compute_efficiency(engine, g.spec)
             for g in spec.gpus for _ in range(g.count)]
    if placement.tensor_parallel:
        return 1.0 / sum(rates)
    on_gpu = [d.weights_bytes for d in placement.gpus]
    total = sum(on_gpu)
    shares = [w / total for w in on_gpu] if total else [1.0 / len(rates)] * len(rates)
    return sum(share / rate for share, rate in zip(shares, rates, strict=True))


def _compute_efficiency(engine: str, gpu: GpuSpec) -> float:
    """Share of the catalog's dense FP16 tensor rate a prompt batch reaches. The catalog
    gives GeForce boards' FP32-accumulate rate (half the FP16-accumulate one); llama.cpp's
    int8 MMQ and FP16-accumulate cuBLAS paths are not bound by it, hence its own entry."""
    table = _speed("gpu_compute_efficiency")[engine]
    return float(table["geforce"] if "GeForce" in gpu.name else table["other"])


def ubatch(spec: Spec) -> int:
    """Tokens per prompt pass: llama.cpp's physical batch (-ub), the profile's else
    fit.yaml's; vLLM's per-step token budget (max_num_batched_tokens)."""
    if spec.profile.runtime.engine == "vllm":
        large = all(g.spec.vram >= 70 * 2**30 and "A100" not in g.spec.name for g in spec.gpus)
        return int(_speed("vllm_batched_tokens")["large" if large and spec.gpus else "other"])
    return llama_ubatch(spec)


def predict(spec: Spec, placement: Placement, depth: int = 0, prompt_tokens: int | None = None) -> Prediction:
    """Speeds for this placement; ``depth`` is the cache fill of the "short prompt" case,
    ``prompt_tokens`` the prompt prefill is priced for (None: whole ubatches)."""
    short = decode_step_s(spec, placement, depth)
    full = decode_step_s(spec, placement, placement.context)
    bottleneck = max(short, key=lambda k: short[k])
    streams = spec.profile.runtime.parallel
    together = sum(decode_step_s(spec, placement, depth, streams).values())
    return Prediction(decode_tokens_per_s=1.0 / sum(short.values()),
                      decode_tokens_per_s_at_context=1.0 / sum(full.values()),
                      prefill_tokens_per_s=prefill_tokens_per_s(spec, placement, prompt_tokens),
                      bottleneck=bottleneck,
                      decode_ms={k: round(v * 1e3, 3) for k, v in short.items()},
                      streams=streams, decode_aggregate_tokens_per_s=streams / together,
                      decode_per_stream_tokens_per_s=1.0 / together)


def placement_kind(spec: Spec, placement: Placement) -> str:
    """The kind of placement whose known error band verify uses (catalog/fit.yaml verify_speed)."""
    if not spec.gpus:
        return "cpu"
    if spec.profile.runtime.engine == "vllm":
        return "vllm"
    if placement.ram.weights_bytes:
        return "ram"
    return "layer-split" if spec.gpu_count > 1 else "gpu"


def speed_floors(spec: Spec, placement: Placement) -> tuple[float, float]:
    """(warn, fail): shares of the predicted decode below which verify warns and fails. The
    warn share is the lowest measured/predicted ratio of the passing cases of this kind."""
    table = params()["verify_speed"]
    warn = float(table["band"][placement_kind(spec, placement)])
    return warn, warn * float(table["fail_share"])
