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
from provisioner.fit.placement import Placement, kv_cache_bytes, params
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
    """Share of stored dense bytes and of stored expert bytes that one token reads."""
    m = spec.model
    if not m.is_moe:
        return 1.0, 0.0
    expert_ratio = m.experts_active / m.experts_total
    expert_active_params = m.params_total * m.expert_params_fraction * expert_ratio
    dense_params = m.params_total * (1 - m.expert_params_fraction)
    # params_active excludes the input embedding table (one row is read, not all):
    dense_read = max(m.params_active - expert_active_params, 0.0)
    return min(dense_read / dense_params, 1.0) if dense_params else 0.0, expert_ratio


def decode_step_s(spec: Spec, placement: Placement, depth: int) -> dict[str, float]:
    """Seconds one decode step spends per bottleneck, with ``depth`` tokens already cached."""
    m = spec.model
    engine = spec.profile.runtime.engine
    dense_ratio, expert_ratio = _read_ratios(spec)
    gpu_eff = _per_engine("gpu_bandwidth_efficiency", engine)
    kv_eff = float(_speed("kv_read_efficiency"))
    kv_now = kv_cache_bytes(spec, depth)
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
                                      + kv / (raw * kv_eff))
    if placement.cpu_offload_bytes:
        # vLLM --cpu-offload-gb: every step copies the offloaded weights to each GPU.
        steps["pcie"] = placement.cpu_offload_bytes / (pcie_gb_s(spec) * 1e9 * float(_speed("pcie_efficiency")))

    overhead_us = _speed("gpu_layer_overhead_us")
    per_layer = float(overhead_us["moe"] if m.is_moe else overhead_us["dense"])
    if spec.gpus:
        gpu_repeating = min(placement.gpu_layers, m.layers)
        cpu_layers = m.layers - gpu_repeating
        fixed = gpu_repeating * per_layer + cpu_layers * float(_speed("cpu_layer_overhead_us"))
        handoffs = max(placement.cpu_moe_layers - cpu_layers, 0) + (1 if cpu_layers else 0)
        fixed += handoffs * float(_speed("cpu_gpu_handoff_us"))
        if placement.tensor_parallel and spec.gpu_count // max(placement.stages, 1) > 1:
            nvlink = all("sxm" in g.id or g.id.startswith("h200") for g in spec.gpus)
            link = "nvlink" if nvlink else "pcie-no-p2p" if placement.p2p_missing else "pcie"
            fixed += 2 * m.layers * float(_speed("tp_allreduce_us")[link])
        elif spec.gpu_count > 1 and placement.p2p_missing:
            # layer split: each token's activations cross every GPU boundary through host memory
            fixed += (spec.gpu_count - 1) * float(_speed("gpu_boundary_no_p2p_us"))
    else:
        fixed = m.layers * float(_speed("cpu_layer_overhead_us"))
    steps["compute"] = fixed / 1e6
    return steps


def prefill_tokens_per_s(spec: Spec, placement: Placement) -> float:
    m = spec.model
    engine = spec.profile.runtime.engine
    flops_per_token = 2.0 * m.params_active
    if not spec.gpus:
        cores = spec.profile.runtime.threads or spec.profile.hardware.cpu.cores
        return cores * float(_speed("cpu_gflops_per_core")) * 1e9 / flops_per_token
    eff = _per_engine("gpu_compute_efficiency", engine)
    flops = sum(g.spec.fp16_dense_tflops * g.count for g in spec.gpus) * 1e12 * eff
    batch = ubatch(spec) if engine != "vllm" else 8192
    compute = batch * flops_per_token / flops
    # Weights in host RAM cross PCIe once per ubatch (llama.cpp copies CPU-resident
    # layers/experts to the GPU for batches of 32+ tokens; vLLM streams its offload).
    # The copy of the next layer overlaps the compute of this one, so a ubatch takes
    # the longer of the two, not their sum.
    host = placement.cpu_offload_bytes * spec.gpu_count if placement.cpu_offload_bytes \
        else placement.ram.weights_bytes
    copy = host / (pcie_gb_s(spec) * 1e9 * float(_speed("pcie_efficiency")))
    return batch / max(compute, copy)


def ubatch(spec: Spec) -> int:
    """llama.cpp's physical batch (-ub): the profile's, else fit.yaml's."""
    return int(_speed("llama_cpp_ubatch"))


def predict(spec: Spec, placement: Placement, depth: int = 0) -> Prediction:
    """Speeds for this placement; ``depth`` is the cache fill of the "short prompt" case."""
    short = decode_step_s(spec, placement, depth)
    full = decode_step_s(spec, placement, placement.context)
    bottleneck = max(short, key=lambda k: short[k])
    return Prediction(decode_tokens_per_s=1.0 / sum(short.values()),
                      decode_tokens_per_s_at_context=1.0 / sum(full.values()),
                      prefill_tokens_per_s=prefill_tokens_per_s(spec, placement),
                      bottleneck=bottleneck,
                      decode_ms={k: round(v * 1e3, 3) for k, v in short.items()})
