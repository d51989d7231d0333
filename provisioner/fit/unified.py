"""Unified memory (DGX Spark, Jetson): one pool for the weights, the KV cache and the OS.

Such a board's ``vram`` (catalog) is the whole pool, read at ``memory_bandwidth_gb_s``
by the GPU and the CPU alike, with no PCIe link between them. So fit places the model
in the pool less what the OS keeps (fit.yaml ``ram_reserve_gib``, and hugepages), keeps
every layer on the GPU (a layer "on the CPU" would sit in the same memory and free
nothing), never chooses vLLM's --cpu-offload-gb, and shows the pool's rest as the
"CPU RAM" row. docs/fit.md, "Unified memory".
"""

from __future__ import annotations

from provisioner.catalog import GpuSpec
from provisioner.profile.resolve import Spec


def unified(spec: Spec) -> bool:
    """Every GPU shares one memory pool with the CPU and the OS."""
    return bool(spec.gpus) and all(g.spec.unified_memory for g in spec.gpus)


def memory_of(spec: Spec, gpu: GpuSpec, os_reserve: int) -> int:
    """Memory a GPU offers the model server: its VRAM, or on a unified machine the
    pool less what the OS keeps."""
    return max(gpu.vram - os_reserve, 0) if unified(spec) else gpu.vram


def pool_bandwidth_gb_s(spec: Spec) -> float:
    """Weights kept "on the CPU" are read from the same pool, at its bandwidth."""
    return min(g.spec.memory_bandwidth_gb_s for g in spec.gpus)


def pool_left(spec: Spec, free: list[int]) -> int:
    """The "CPU RAM" of a unified machine: what its GPUs' pool has left (``free`` per GPU,
    in Spec order). A cluster's RAM row is the head's: only the head node's GPUs count."""
    if spec.profile.cluster is None or not spec.node_gpus:
        return max(sum(free), 0)
    start = 0
    for name, groups in spec.node_gpus:
        count = sum(g.count for g in groups)
        if name == spec.profile.cluster.head.name:
            return max(sum(free[start:start + count]), 0)
        start += count
    return 0  # pragma: no cover - a cluster has a head node
