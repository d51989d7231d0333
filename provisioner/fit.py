"""Where every byte goes: weights, KV cache and buffers per device (pure).

The first cut of the fit model: it decides the placement flags that the run
scripts state (llama.cpp ``--n-gpu-layers``/``--n-cpu-moe``, vLLM
``--cpu-offload-gb``, Ollama ``num_gpu``) and refuses what cannot fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.profile import Offload
from provisioner.resolve import Spec

# Bytes per cached element. GGML block formats: q8_0 stores 32 values in 34
# bytes, q4_0 in 18, q4_1 in 20, q5_0 in 22, q5_1 in 24, iq4_nl in 18
# (ggml/src/ggml-common.h block structs).
KV_BYTES_PER_ELEMENT = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "auto": 2.0,
    "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32, "q5_1": 24 / 32,
    "iq4_nl": 18 / 32, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0,
}
# Per GPU: CUDA context, cuBLAS workspace and the engine's compute buffers.
# A measured llama.cpp CUDA context + compute buffer at 32K context is 0.5-1.5 GiB;
# we budget the upper end so that "fits" means fits.
GPU_RUNTIME_OVERHEAD = 3 * 2**30 // 2
# Keep this much of each GPU free for fragmentation and other processes (display).
GPU_MARGIN_FRACTION = 0.03
# What the run script passes as --gpu-memory-utilization unless the profile says.
VLLM_DEFAULT_UTILIZATION = 0.90
# Host RAM kept for the OS, page cache of the run and everything else.
RAM_RESERVE = 8 * 2**30


@dataclass(frozen=True)
class Device:
    name: str
    capacity_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    buffers_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.buffers_bytes

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes


@dataclass(frozen=True)
class Placement:
    fits: bool
    devices: tuple[Device, ...]
    context: int
    kv_bytes_per_token: int
    gpu_layers: int  # llama.cpp --n-gpu-layers (repeating layers + output)
    cpu_moe_layers: int  # llama.cpp --n-cpu-moe: layers whose experts stay in RAM
    cpu_offload_bytes: int  # vLLM --cpu-offload-gb (whole GiB, per GPU)
    missing_bytes: int  # how much more memory it would need; 0 if it fits
    warnings: tuple[str, ...] = ()


def kv_bytes_per_token(spec: Spec) -> int:
    """KV cache bytes for one token of context, over all layers."""
    m = spec.model
    k_size = KV_BYTES_PER_ELEMENT.get(spec.profile.model.kv_cache_k, 2.0)
    v_size = KV_BYTES_PER_ELEMENT.get(spec.profile.model.kv_cache_value, 2.0)
    if m.attention == "mla" and m.kv_lora_rank and m.qk_rope_head_dim:
        # MLA caches the compressed latent plus the rope part, once per layer.
        return int(m.layers * (m.kv_lora_rank + m.qk_rope_head_dim) * k_size)
    per_layer = m.kv_heads * m.head_dim * (k_size + v_size)
    return int(m.layers * per_layer)


def kv_cache_bytes(spec: Spec, context: int) -> int:
    m = spec.model
    per_token = kv_bytes_per_token(spec)
    if m.attention == "gqa-sliding" and m.sliding_window and m.sliding_window_layers:
        # Sliding-window layers only keep the last `sliding_window` tokens.
        per_layer = per_token / m.layers
        full = (m.layers - m.sliding_window_layers) * per_layer * context
        window = m.sliding_window_layers * per_layer * min(context, m.sliding_window)
        return int(full + window)
    return per_token * context


def fit(spec: Spec, context: int | None = None) -> Placement:
    p = spec.profile
    m = spec.model
    ctx = context or p.model.context
    slots = p.runtime.parallel
    weights = spec.quant.bytes
    kv_total = kv_cache_bytes(spec, ctx) * slots
    per_layer = weights / (m.layers + 1)  # +1: embeddings and output head
    expert_per_layer = per_layer * m.expert_params_fraction
    ram_capacity = max(p.hardware.ram - RAM_RESERVE, 0)

    if not spec.gpus:
        need = weights + kv_total
        return _placement(spec, ctx, gpu=None, gpu_weights=0, gpu_kv=0, cpu_weights=weights,
                          cpu_kv=kv_total, ram_capacity=ram_capacity, gpu_layers=0,
                          cpu_moe=0, offload=0, missing=max(need - ram_capacity, 0))

    # vLLM takes exactly its --gpu-memory-utilization share of each GPU; the others
    # take what they need, and we keep a margin.
    share = (p.runtime.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION) if p.runtime.engine == "vllm" \
        else 1 - GPU_MARGIN_FRACTION
    usable = sum(int(g.spec.vram * share) * g.count for g in spec.gpus)
    budget = usable - GPU_RUNTIME_OVERHEAD * spec.gpu_count - kv_total
    explicit = p.runtime.offload if isinstance(p.runtime.offload, Offload) else None
    gpu_layers = m.layers + 1
    cpu_moe = 0
    offload = 0
    on_cpu = 0.0
    if explicit is not None:
        if explicit.gpu_layers is not None:
            gpu_layers = explicit.gpu_layers
        if explicit.cpu_moe_layers is not None:
            cpu_moe = explicit.cpu_moe_layers
        if explicit.cpu_offload is not None:
            offload = explicit.cpu_offload
        on_cpu = ((m.layers + 1 - gpu_layers) * per_layer + cpu_moe * expert_per_layer
                  + offload * spec.gpu_count)
    elif weights > budget:
        excess = weights - budget
        if p.runtime.engine == "vllm":
            # --cpu-offload-gb is per GPU: each tensor-parallel rank offloads that much.
            offload = _ceil_gib(excess / spec.gpu_count)
            on_cpu = offload * spec.gpu_count
        elif m.is_moe and expert_per_layer > 0 and p.runtime.engine == "llama.cpp":
            cpu_moe = min(m.layers, -(-int(excess) // int(expert_per_layer)))
            on_cpu = cpu_moe * expert_per_layer
            if cpu_moe == m.layers and on_cpu < excess:
                gpu_layers = _layers_fitting(m.layers, per_layer - expert_per_layer,
                                             budget - (weights - on_cpu))
                on_cpu += (m.layers + 1 - gpu_layers) * (per_layer - expert_per_layer)
        else:
            gpu_layers = _layers_fitting(m.layers, per_layer, budget)
            on_cpu = (m.layers + 1 - gpu_layers) * per_layer
    on_cpu = min(on_cpu, weights)
    gpu_weights = int(weights - on_cpu)
    missing = max(gpu_weights - budget, 0) + max(int(on_cpu) - ram_capacity, 0)
    return _placement(spec, ctx, gpu=usable, gpu_weights=gpu_weights, gpu_kv=kv_total,
                      cpu_weights=int(on_cpu), cpu_kv=0, ram_capacity=ram_capacity,
                      gpu_layers=gpu_layers, cpu_moe=cpu_moe, offload=offload, missing=missing)


def _layers_fitting(layers: int, per_layer: float, budget: float) -> int:
    if per_layer <= 0:
        return layers + 1
    return max(0, min(layers + 1, int(budget // per_layer)))


def _ceil_gib(num_bytes: float) -> int:
    gib = 2**30
    return int(-(-num_bytes // gib)) * gib


def _placement(spec: Spec, ctx: int, *, gpu: int | None, gpu_weights: int, gpu_kv: int,
               cpu_weights: int, cpu_kv: int, ram_capacity: int, gpu_layers: int,
               cpu_moe: int, offload: int, missing: int) -> Placement:
    devices: list[Device] = []
    if gpu is not None:
        names = " + ".join(f"{g.count}x {g.spec.name}" for g in spec.gpus)
        devices.append(Device(names, gpu, gpu_weights, gpu_kv,
                              GPU_RUNTIME_OVERHEAD * spec.gpu_count))
    devices.append(Device("CPU RAM", ram_capacity, cpu_weights, cpu_kv, 0))
    warnings: list[str] = []
    if spec.profile.model.kv_cache_value in {"q4_0", "q4_1", "iq4_nl"}:
        warnings.append("a 4-bit KV cache degrades long reasoning; prefer q8_0 or f16")
    return Placement(fits=missing == 0, devices=tuple(devices), context=ctx,
                     kv_bytes_per_token=kv_bytes_per_token(spec), gpu_layers=gpu_layers,
                     cpu_moe_layers=cpu_moe, cpu_offload_bytes=offload, missing_bytes=missing,
                     warnings=tuple(warnings))
