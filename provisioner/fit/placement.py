"""Where every byte goes: weights, KV cache and buffers per device (pure).

The fit model decides the placement flags that the run scripts state (llama.cpp
``--n-gpu-layers``/``--n-cpu-moe``, vLLM ``--cpu-offload-gb``, Ollama ``num_gpu``)
and refuses what cannot fit. Its overheads are data: ``catalog/fit.yaml``.
Speed is predicted from the placement by ``predict.py``; docs/fit.md explains both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from provisioner.catalog import catalog_table
from provisioner.facts.host_load import P2P_LEGEND
from provisioner.fit.kv import UNQUANTISED_KV, kv_bytes_per_token, kv_cache_bytes
from provisioner.fit.rope import yarn_warnings
from provisioner.fit.unified import memory_of, pool_bandwidth_gb_s, pool_left, unified
from provisioner.profile.resolve import GpuGroup, Spec, driver_floor_warnings
from provisioner.profile.runtime_section import Offload
from provisioner.units import GIB

MIB = 2**20


def params() -> dict[str, Any]:
    """The factors and overheads of catalog/fit.yaml."""
    return catalog_table("fit")


def _mem(key: str) -> float:
    return float(params()["memory"][key])


# What the run script passes as --gpu-memory-utilization unless the profile says.
VLLM_DEFAULT_UTILIZATION = _mem("vllm_default_utilization")
GPU_MARGIN_FRACTION = _mem("gpu_margin_fraction")
RAM_RESERVE = int(_mem("ram_reserve_gib") * GIB)


@dataclass(frozen=True)
class Device:
    name: str
    capacity_bytes: int
    weights_bytes: int
    kv_cache_bytes: int
    buffers_bytes: int
    expert_bytes: int = 0  # of weights_bytes: routed-expert tensors (MoE)
    bandwidth_gb_s: float = 0.0  # memory bandwidth of this device (data sheet / profile)
    node: str = ""  # a cluster's node holding this device ("" on one machine)

    @property
    def used_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.buffers_bytes

    @property
    def free_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes


@dataclass(frozen=True)
class Placement:
    fits: bool
    devices: tuple[Device, ...]  # one per GPU, then "CPU RAM" (always last)
    context: int  # tokens per sequence (per llama.cpp slot)
    kv_bytes_per_token: int
    gpu_layers: int  # llama.cpp --n-gpu-layers (repeating layers + output)
    cpu_moe_layers: int  # llama.cpp --n-cpu-moe: layers whose experts stay in RAM
    cpu_offload_bytes: int  # vLLM --cpu-offload-gb (whole GiB, per GPU)
    missing_bytes: int  # how much more memory it would need; 0 if it fits
    warnings: tuple[str, ...] = ()
    parallel: int = 1  # sequences (llama.cpp slots, vLLM max_num_seqs, Ollama NUM_PARALLEL)
    kv_bytes_per_sequence: int = 0  # one sequence at the full context
    kv_pool_bytes_per_gpu: int | None = None  # vLLM: the KV pool of its smallest GPU
    kv_bytes_per_sequence_per_gpu: int = 0  # vLLM: one full-context sequence's share of a GPU
    tensor_parallel: bool = False  # vLLM: every GPU holds a shard and works on every token
    weights_from: str = "catalog"  # or "GGUF header of FILE": where the per-layer sizes came from
    tensor_split: tuple[float, ...] = ()  # llama.cpp, several GPUs: share of the layers on each
    ubatch: int = 0  # llama.cpp -ub fit chose (0: the profile's or fit.yaml's, llama_ubatch)
    ubatch_options: tuple[Any, ...] = ()  # fit.ubatch.UbatchOption per size it weighed
    p2p_missing: bool = False  # host facts: some GPU pair has no peer-to-peer access
    # a cluster: pipeline stages (the GPUs split into this many equal groups, one per node,
    # taking turns on each token) and what the network costs one decode step
    stages: int = 1
    interconnect_s_per_token: float = 0.0
    interconnect_bytes_per_token: int = 0

    @property
    def max_concurrency(self) -> float | None:
        """vLLM: the sequences at full context its KV pool holds."""
        if self.kv_pool_bytes_per_gpu is None or not self.kv_bytes_per_sequence_per_gpu:
            return None
        return self.kv_pool_bytes_per_gpu / self.kv_bytes_per_sequence_per_gpu

    @property
    def gpus(self) -> tuple[Device, ...]:
        return self.devices[:-1]

    @property
    def ram(self) -> Device:
        return self.devices[-1]


@dataclass(frozen=True)
class WeightSplit:
    """The weight file split the way offload flags move it (per layer, dense vs experts)."""

    total: int
    dense: tuple[float, ...]  # per repeating layer: attention, norms, router, shared experts
    experts: tuple[float, ...]  # per repeating layer: routed-expert tensors
    outside: float  # embeddings/output/final norm: the "+1" layer of --n-gpu-layers
    source: str  # "catalog", the lock or files the size came from, or the GGUF file(s) read

    @property
    def layers(self) -> int:
        return len(self.dense)

    @property
    def expert_total(self) -> float:
        return sum(self.experts)

    @classmethod
    def of(cls, spec: Spec) -> WeightSplit:
        m = spec.model
        layout = spec.layout
        if layout is not None and layout.layers == m.layers:
            return cls(layout.total, tuple(map(float, layout.dense)), tuple(map(float, layout.experts)),
                       float(layout.outside), f"GGUF header of {layout.source}")
        # The catalog's estimate: uniform bits per weight, experts spread evenly.
        total = spec.quant.bytes
        experts = total * m.expert_params_fraction if m.is_moe else 0.0
        dense = (total - experts) / (m.layers + 1)
        return cls(total, (dense,) * m.layers, (experts / m.layers,) * m.layers, dense,
                   spec.weights_size_from or "catalog")

    def on_gpu(self, gpu_layers: int, cpu_moe: int) -> tuple[float, float]:
        """(dense, expert) bytes on the GPUs: llama.cpp offloads the LAST ``gpu_layers``
        (the output counts as one when all repeating layers are offloaded) and
        ``--n-cpu-moe N`` keeps the experts of the FIRST N layers in RAM."""
        first_gpu = self.layers - min(gpu_layers, self.layers)
        dense = sum(self.dense[first_gpu:]) + (self.outside if gpu_layers > self.layers else 0.0)
        experts = sum(self.experts[max(first_gpu, cpu_moe):])
        return dense, experts


def _gpu_names(spec: Spec) -> list[tuple[GpuGroup, str]]:
    out: list[tuple[GpuGroup, str]] = []
    for group in spec.gpus:
        for _ in range(group.count):
            out.append((group, f"GPU{len(out)} {group.spec.name}"))
    return out


def _hugepages_bytes(spec: Spec) -> int:
    """RAM reserved for hugetlbfs, which the engines do not use: the profile's own
    os.hugepages (apply sets them) or else what the host has reserved now."""
    hp = spec.profile.os.hugepages
    if hp.count:
        return hp.total_bytes
    return spec.host.hugepages_bytes if spec.host is not None else 0


def _ram_capacity(spec: Spec) -> int:
    return max(spec.profile.hardware.ram - RAM_RESERVE - _hugepages_bytes(spec), 0)


def ram_device(spec: Spec, weights: int, experts: int, kv: int, buffers: int,
               gpus: list[Device] | None = None) -> Device:
    if gpus and unified(spec):  # the rest of the GPUs' own pool (fit/unified.py)
        return Device("CPU RAM (unified pool)", pool_left(spec, [d.free_bytes for d in gpus]), weights, kv,
                      buffers, experts, pool_bandwidth_gb_s(spec))
    return Device("CPU RAM", _ram_capacity(spec), weights, kv, buffers, experts,
                  spec.profile.hardware.memory.bandwidth())


def gpu_memory(spec: Spec, gpu: GpuGroup) -> int:
    """VRAM, or a unified pool less what the OS keeps (fit/unified.py)."""
    return memory_of(spec, gpu.spec, RAM_RESERVE + _hugepages_bytes(spec))


def _others(spec: Spec, index: int) -> int:
    """VRAM that other processes hold on GPU ``index`` (host facts; 0 without them)."""
    used = spec.host.gpu_used_by_others if spec.host is not None else ()
    return used[index] if index < len(used) else 0


def fit_layers(spec: Spec, ctx: int) -> Placement:
    """llama.cpp and Ollama: whole layers (or a layer's experts) live on one device."""
    p = spec.profile
    m = spec.model
    w = WeightSplit.of(spec)
    slots = p.runtime.parallel
    kv_seq = kv_cache_bytes(spec, ctx)
    kv_total = kv_seq * slots
    kv_per_layer = kv_total / m.layers
    gpus = _gpu_names(spec)
    gpu_buffer = _llama_gpu_buffer(spec, ctx * slots)

    if not gpus:
        buffers = int(_mem("llama_cpp_cpu_compute_buffer_mib") * MIB)
        ram = ram_device(spec, w.total, int(w.expert_total), kv_total, buffers)
        missing = max(ram.used_bytes - ram.capacity_bytes, 0)
        return placement_of(spec, ctx, (ram,), gpu_layers=0, cpu_moe=0, offload=0, missing=missing,
                          kv_seq=kv_seq, weights_from=w.source)

    capacities = [max(int(gpu_memory(spec, g) * (1 - GPU_MARGIN_FRACTION)) - _others(spec, i), 0)
                  for i, (g, _) in enumerate(gpus)]
    budget = sum(capacities) - gpu_buffer * len(gpus)

    def gpu_need(gpu_layers: int, cpu_moe: int) -> float:
        dense, experts = w.on_gpu(gpu_layers, cpu_moe)
        return dense + experts + kv_per_layer * min(gpu_layers, m.layers)

    explicit = p.runtime.offload if isinstance(p.runtime.offload, Offload) else None
    gpu_layers = m.layers + 1
    cpu_moe = 0
    if explicit is not None:
        gpu_layers = min(explicit.gpu_layers if explicit.gpu_layers is not None else m.layers + 1,
                         m.layers + 1)
        cpu_moe = min(explicit.cpu_moe_layers or 0, m.layers)
    elif gpu_need(gpu_layers, 0) > budget and not unified(spec):  # one pool: the CPU frees nothing
        if m.is_moe and p.runtime.engine == "llama.cpp" and w.expert_total > 0:
            # the fewest layers whose experts go to RAM (layer by layer: real sizes differ)
            while cpu_moe < m.layers and gpu_need(gpu_layers, cpu_moe) > budget:
                cpu_moe += 1
        while gpu_layers > 0 and gpu_need(gpu_layers, cpu_moe) > budget:
            gpu_layers -= 1
    # Layers not on the GPU are the first ones (llama.cpp offloads the last n); --n-cpu-moe
    # counts from the first layer too, so the two overlap on the CPU layers.
    repeating_gpu = min(gpu_layers, m.layers)
    dense_gpu, gpu_experts = w.on_gpu(gpu_layers, cpu_moe)
    # round, not truncate: a fully offloaded model must leave 0 B (not 1 B) on the CPU,
    # or the CPU buffer and mlock that follow from "weights in RAM" would be chosen
    gpu_weights = min(round(dense_gpu + gpu_experts), int(w.total))
    gpu_kv = int(kv_per_layer * repeating_gpu)
    cpu_weights = w.total - gpu_weights
    cpu_experts = max(round(w.expert_total - gpu_experts), 0)
    cpu_kv = kv_total - gpu_kv

    devices: list[Device] = []
    room = sum(capacities) or 1
    split: list[float] = []
    for (group, name), capacity in zip(gpus, capacities, strict=True):
        share = capacity / room  # the layer split fit states with --tensor-split
        split.append(share)
        devices.append(Device(name, capacity, int(gpu_weights * share), int(gpu_kv * share), gpu_buffer,
                              int(gpu_experts * share), group.spec.memory_bandwidth_gb_s))
    host_buffer = int(_mem("llama_cpp_host_buffer_mib") * MIB) if cpu_weights else 0
    ram = ram_device(spec, cpu_weights, cpu_experts, cpu_kv, host_buffer, devices)
    devices.append(ram)
    missing = (max(int(gpu_need(gpu_layers, cpu_moe)) - budget, 0)
               + max(ram.used_bytes - ram.capacity_bytes, 0))
    return placement_of(spec, ctx, tuple(devices), gpu_layers=gpu_layers, cpu_moe=cpu_moe,
                      offload=0, missing=missing, kv_seq=kv_seq, weights_from=w.source,
                      tensor_split=tuple(split) if len(split) > 1 else ())


def llama_ubatch(spec: Spec) -> int:
    """llama.cpp's physical batch (-ub): the profile's, else fit.yaml's."""
    return spec.profile.runtime.ubatch or int(params()["speed"]["llama_cpp_ubatch"])


def _llama_gpu_buffer(spec: Spec, total_ctx: int) -> int:
    """CUDA context + llama.cpp compute buffer on each GPU (its activations and logits
    scale with the ubatch; the budget is for the default one)."""
    scale = llama_ubatch(spec) / float(params()["speed"]["llama_cpp_ubatch"])
    mib = _mem("cuda_context_mib") + _mem("llama_cpp_compute_buffer_mib") * scale
    if spec.profile.runtime.flash_attention == "off":
        mib += _mem("llama_cpp_no_fa_buffer_mib_per_1k_context") * total_ctx / 1024
    return int(mib * MIB)


def vllm_overhead(spec: Spec) -> int:
    """Per GPU, besides weights and KV cache: activations, CUDA graphs, NCCL."""
    mib = _mem("vllm_overhead_mib")
    if spec.model.is_moe:
        mib += _mem("vllm_moe_extra_mib")
    if spec.gpu_count > 1:
        mib += _mem("vllm_tp_extra_mib")
    return int(mib * MIB)


def fit_vllm(spec: Spec, ctx: int) -> Placement:
    """vLLM: tensor parallel over all GPUs, a fixed share of each, KV pool = the rest."""
    p = spec.profile
    m = spec.model
    gpus = _gpu_names(spec)
    n = len(gpus)
    util = p.runtime.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION
    # KV heads are split over the ranks; with fewer KV heads than GPUs they are replicated.
    replicas = max(1.0, n / m.kv_heads) if m.attention != "mla" else float(n)
    kv_seq = kv_cache_bytes(spec, ctx)
    kv_seq_gpu = int(kv_seq * replicas / n)
    # Conservative: the full context for every sequence (vLLM pages the cache on
    # demand, so short requests need less).
    kv_need_gpu = kv_seq_gpu * p.runtime.parallel
    overhead = vllm_overhead(spec)
    weights_gpu = spec.quant.bytes / n
    # vLLM takes vram x utilisation of each GPU; what other processes hold beyond the
    # rest (1 - utilisation) comes out of that share (vLLM 0.11 refuses to start then).
    capacities = [min(int(g.spec.vram * util), gpu_memory(spec, g) - _others(spec, i))
                  for i, (g, _) in enumerate(gpus)]
    smallest = min(capacities)
    explicit = p.runtime.offload if isinstance(p.runtime.offload, Offload) else None
    if explicit is not None and explicit.cpu_offload is not None:
        offload = explicit.cpu_offload
    elif unified(spec):
        offload = 0  # "CPU" memory is the same pool: offloading frees nothing
    else:
        deficit = weights_gpu + overhead + kv_need_gpu - smallest
        offload = _ceil_gib(deficit) if deficit > 0 else 0
    resident = int(max(weights_gpu - offload, 0))
    devices: list[Device] = []
    pool = smallest - resident - overhead  # vLLM sizes every rank's pool by the smallest
    missing = 0
    for (group, name), capacity in zip(gpus, capacities, strict=True):
        missing = max(missing, resident + overhead + kv_need_gpu - capacity)
        devices.append(Device(name, capacity, resident, kv_need_gpu, overhead,
                              int(resident * m.expert_params_fraction),
                              group.spec.memory_bandwidth_gb_s))
    ram_weights = int(offload * n * _mem("vllm_cpu_offload_ram_factor"))
    ram = ram_device(spec, ram_weights, int(ram_weights * m.expert_params_fraction), 0, 0, devices)
    devices.append(ram)
    missing = missing * n + max(ram.used_bytes - ram.capacity_bytes, 0)
    if offload > weights_gpu:
        missing = max(missing, int(offload - weights_gpu))
    return placement_of(spec, ctx, tuple(devices), gpu_layers=m.layers + 1, cpu_moe=0,
                      offload=offload, missing=missing, kv_seq=kv_seq,
                      tensor_parallel=True, kv_pool=pool, kv_seq_gpu=kv_seq_gpu,
                      weights_from=spec.weights_size_from or "catalog")


def _ceil_gib(num_bytes: float) -> int:
    return int(-(-num_bytes // GIB)) * GIB


def placement_of(spec: Spec, ctx: int, devices: tuple[Device, ...], *, gpu_layers: int,
               cpu_moe: int, offload: int, missing: int, kv_seq: int,
               tensor_parallel: bool = False,
               weights_from: str = "catalog", tensor_split: tuple[float, ...] = (),
               stages: int = 1, kv_pool: int | None = None, kv_seq_gpu: int = 0) -> Placement:
    p = spec.profile
    warnings: list[str] = (_host_warnings(spec, tensor_parallel) + yarn_warnings(spec, ctx)
                           + driver_floor_warnings(spec))
    kv_k, kv_v = p.model.kv_cache_k, p.model.kv_cache_value
    if kv_v in {"q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"} or kv_k in {"q4_0", "q4_1", "iq4_nl"}:
        warnings.append("a 4-bit KV cache degrades long reasoning and long-context recall; "
                        "prefer q8_0 or f16")
    elif (kv_k not in UNQUANTISED_KV or kv_v not in UNQUANTISED_KV) and p.model.mode == "thinking":
        warnings.append(f"quantised KV cache ({kv_k}/{kv_v}) in thinking mode: small but measurable "
                        "quality loss on long reasoning chains; f16 is the safe choice")
    if spec.gpus and gpu_layers < spec.model.layers + 1:
        warnings.append(f"only {gpu_layers} of {spec.model.layers + 1} layers on the GPU: "
                        "the rest (attention included) runs on the CPU, which is slow")
    if offload:
        warnings.append(f"--cpu-offload-gb {offload // GIB}: vLLM streams these weights over PCIe "
                        "on every step; expect a large slowdown")
    if p.runtime.engine == "vllm" and p.runtime.parallel > 1:
        warnings.append(f"KV cache reserved for the full context of each of {p.runtime.parallel} "
                        "sequences (conservative: vLLM pages it on demand)")
    concurrency = kv_pool / kv_seq_gpu if kv_pool is not None and kv_seq_gpu else None
    if concurrency is not None and concurrency < p.runtime.parallel and not missing:
        warnings.append(f"vLLM's KV pool holds {concurrency:.1f} sequences at {ctx} tokens, "
                        f"fewer than max_num_seqs {p.runtime.parallel}")
    if spec.gpus and not tensor_parallel and spec.gpu_count > 1 and p.cluster is None:
        warnings.append("llama.cpp splits layers over the GPUs: they take turns on each token, "
                        "so decode runs at one GPU's bandwidth")
    if p.runtime.engine == "ollama" and p.model.mode == "non-thinking" and "thinking" in spec.model.modes:
        # engines.yaml ollama `think`: no env var or Modelfile parameter turns it off
        warnings.append("Ollama thinks unless each request says not to: clients send \"think\": false "
                        "(/api/chat) or \"reasoning_effort\": \"none\" (/v1/chat/completions)")
    if spec.layout is not None and spec.layout.layers != spec.model.layers:
        warnings.append(f"the GGUF file has {spec.layout.layers} layers, the catalog's "
                        f"{spec.model.name} {spec.model.layers}: placed with the catalog's sizes")
    return Placement(fits=missing <= 0, devices=devices, context=ctx,
                     kv_bytes_per_token=kv_bytes_per_token(spec), gpu_layers=gpu_layers,
                     cpu_moe_layers=cpu_moe, cpu_offload_bytes=offload,
                     missing_bytes=max(int(missing), 0), warnings=tuple(warnings),
                     parallel=p.runtime.parallel, kv_bytes_per_sequence=kv_seq,
                     kv_pool_bytes_per_gpu=kv_pool,
                     kv_bytes_per_sequence_per_gpu=kv_seq_gpu, tensor_parallel=tensor_parallel,
                     weights_from=weights_from, tensor_split=tensor_split,
                     p2p_missing=bool(spec.host and spec.host.p2p and spec.host.p2p.missing),
                     stages=stages)


def _host_warnings(spec: Spec, tensor_parallel: bool) -> list[str]:
    """What the host's facts change: memory others hold, hugepages, GPUs without peer access."""
    host = spec.host
    if host is None:
        return []
    out: list[str] = []
    for i, used in enumerate(host.gpu_used_by_others):
        if used:
            out.append(f"GPU{i}: {used / GIB:.1f} GiB held by other processes (not the model server): "
                       "subtracted from its capacity")
    if host.apps_error:
        out.append(f"nvidia-smi could not list the GPU processes ({host.apps_error}): "
                   "VRAM other processes hold is not known")
    if host.hugepages_bytes and not spec.profile.os.hugepages.count:
        out.append(f"{host.hugepages_bytes / GIB:.1f} GiB of RAM reserved as hugepages, which the engine "
                   "does not use: subtracted from RAM")
    if host.p2p is not None and host.p2p.missing and spec.gpu_count > 1:
        i, j, code = host.p2p.missing[0]
        how = ("the all-reduce of every layer" if tensor_parallel
               else "the activations at each GPU boundary")
        out.append(f"no peer-to-peer access between GPU{i} and GPU{j} ({code}: "
                   f"{P2P_LEGEND.get(code, 'unknown')}): {how} go through host memory "
                   f"(slower; the prediction includes it)")
    return out
