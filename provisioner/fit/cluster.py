"""Placing one model over a cluster's nodes (pure).

- Ray / vLLM: tensor parallel inside a node (TP = GPUs per node), pipeline parallel
  across nodes (PP = node count). Each GPU holds 1/(TP x PP) of the weights and,
  for its stage's layers, its share of the KV heads; the stages take turns on a token.
- RPC / llama.cpp: layers split over every GPU of every node by memory (llama.cpp's
  default: "in proportion to each device's available memory", tools/rpc/README.md);
  the devices take turns, as in a local layer split.

The network cost per token is the activations crossing each node boundary (hidden
size x bytes per value) at the interconnect's rate, plus a fixed latency per message
(catalog/cluster.yaml); see docs/fit.md, "Clusters".
"""

from __future__ import annotations

import dataclasses

from provisioner.fit.kv import kv_cache_bytes
from provisioner.fit.placement import (
    VLLM_DEFAULT_UTILIZATION,
    Device,
    Placement,
    fit_layers,
    gpu_memory,
    params,
    placement_of,
    ram_device,
    vllm_overhead,
)
from provisioner.profile.cluster import cluster_of, latency_s
from provisioner.profile.resolve import Spec


def _speed(key: str) -> float:
    return float(params()["speed"][key])


def fit_cluster(spec: Spec, ctx: int) -> Placement:
    cluster = cluster_of(spec)
    placement = _fit_ray(spec, ctx) if cluster.backend == "ray" else _fit_rpc(spec, ctx)
    seconds, sent = interconnect_cost(spec, _worker_layers(spec, placement))
    return dataclasses.replace(placement, interconnect_s_per_token=seconds, interconnect_bytes_per_token=sent)


def _worker_layers(spec: Spec, placement: Placement) -> int:
    """Repeating layers held by worker GPUs (llama.cpp splits layers by the weight share)."""
    head = cluster_of(spec).head.name
    on_gpus = sum(d.weights_bytes for d in placement.gpus)
    remote = sum(d.weights_bytes for d in placement.gpus if d.node != head)
    return round(min(placement.gpu_layers, spec.model.layers) * remote / on_gpus) if on_gpus else 0


def interconnect_cost(spec: Spec, worker_layers: int = 0) -> tuple[float, int]:
    """Seconds and bytes one decode token spends crossing node boundaries.

    Ray/vLLM pipeline parallel: the hidden state (bf16, 2 bytes per value) goes from
    each stage to the next: nodes - 1 hand-offs, one message each. llama.cpp RPC: the
    head drives every remote device: per remote node it sends the input activations
    (f32), runs the graph and reads the output back (`rpc_round_trips_per_node` messages,
    fit.yaml), so each worker costs round trips, not just one hand-off; and the graph of
    the worker's layers is sent with every token (``rpc_graph_bytes_per_layer``)."""
    cluster = cluster_of(spec)
    rate = cluster.interconnect.gbit_s / 8 * 1e9  # bytes per second
    latency = latency_s(spec)
    hidden = spec.model.hidden_size
    hops = len(cluster.nodes) - 1
    if cluster.backend == "ray":
        sent = hops * hidden * 2
        return hops * latency + sent / rate, sent
    sent = hops * hidden * 4 * 2  # activations to the worker and back, f32
    sent += int(worker_layers * _speed("rpc_graph_bytes_per_layer"))
    messages = hops * _speed("rpc_round_trips_per_node")
    return messages * latency + sent / rate, sent


def _named(spec: Spec, devices: tuple[Device, ...]) -> tuple[Device, ...]:
    """Name the GPUs of a cluster placement by node (they come in node order)."""
    out: list[Device] = []
    index = 0
    for node_name, groups in spec.node_gpus:
        local = 0
        for group in groups:
            for _ in range(group.count):
                dev = devices[index]
                out.append(dataclasses.replace(dev, name=f"{node_name} GPU{local} {group.spec.name}", node=node_name))
                index += 1
                local += 1
    head = cluster_of(spec).head.name
    out += [dataclasses.replace(d, name=f"{head} CPU RAM", node=head) for d in devices[index:]]
    return tuple(out)


def _fit_rpc(spec: Spec, ctx: int) -> Placement:
    placement = fit_layers(spec, ctx)
    return dataclasses.replace(placement, devices=_named(spec, placement.devices))


def _fit_ray(spec: Spec, ctx: int) -> Placement:
    p = spec.profile
    m = spec.model
    cluster = cluster_of(spec)
    pp = len(cluster.nodes)
    tp = cluster.head.gpu_count
    util = p.runtime.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION
    # KV heads are split over a stage's TP ranks (replicated when fewer than TP); MLA is
    # replicated on every rank. Each stage holds the KV of its own layers only.
    replicas = max(1.0, tp / m.kv_heads) if m.attention != "mla" else float(tp)
    kv_seq = kv_cache_bytes(spec, ctx)
    kv_seq_gpu = int(kv_seq * replicas / tp / pp)
    kv_need = kv_seq_gpu * p.runtime.parallel
    overhead = vllm_overhead(spec)
    weights = int(spec.quant.bytes / (tp * pp))
    devices: list[Device] = []
    missing = 0
    pool = None
    for _, groups in spec.node_gpus:
        for group in groups:
            for _ in range(group.count):
                capacity = min(int(group.spec.vram * util), gpu_memory(spec, group))
                missing += max(weights + overhead + kv_need - capacity, 0)
                left = capacity - weights - overhead
                pool = left if pool is None else min(pool, left)
                devices.append(Device("", capacity, weights, kv_need, overhead,
                                      int(weights * m.expert_params_fraction), group.spec.memory_bandwidth_gb_s))
    devices.append(ram_device(spec, 0, 0, 0, 0))
    placement = placement_of(spec, ctx, tuple(devices), gpu_layers=m.layers + 1, cpu_moe=0, offload=0,
                           missing=missing, kv_seq=kv_seq,
                           tensor_parallel=True, stages=pp, kv_pool=pool or 0, kv_seq_gpu=kv_seq_gpu)
    return dataclasses.replace(placement, devices=_named(spec, placement.devices))
