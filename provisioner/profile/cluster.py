"""Multi-node serving, the pure part: which node a host is, the view of the profile
from that node, addresses and ports (the processes' command lines are render/cluster.py).

The flags come from ``catalog/cluster.yaml`` (spelled per version, with where they
were checked), the same way engine flags come from ``catalog/engines.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from provisioner.catalog import catalog_table
from provisioner.errors import RenderError
from provisioner.profile.cluster_section import Cluster, ClusterNode
from provisioner.profile.nodes import ClusterNodes, Node
from provisioner.profile.resolve import Spec


def catalog() -> dict[str, Any]:
    return catalog_table("cluster")


def cluster_of(spec: Spec) -> Cluster:
    cluster = spec.profile.cluster
    assert cluster is not None, "only called on cluster profiles"
    return cluster


def node_named(spec: Spec, name: str) -> ClusterNode:
    return next(n for n in cluster_of(spec).nodes if n.name == name)


def nodes_of(spec: Spec) -> ClusterNodes:
    """The cluster's nodes by name and host (none: not a cluster profile)."""
    cluster = spec.profile.cluster
    nodes = tuple(Node(n.name, n.host, n.address) for n in cluster.nodes) if cluster is not None else ()
    return ClusterNodes(spec.profile.metadata.name, str(spec.loaded.path), nodes)


def chosen_node(spec: Spec, name: str) -> str:
    """--node NAME, checked against the profile: a cluster node's name, or a usage error."""
    return nodes_of(spec).chosen(name)


def node_for_host(spec: Spec, host: str) -> ClusterNode:
    """The node an inventory host is; a host that is no node is an error (nothing to render)."""
    return node_named(spec, nodes_of(spec).for_host(host))


def node_spec(spec: Spec, node: str) -> Spec:
    """The profile seen from one node: its own GPUs (devices, CUDA_VISIBLE_DEVICES, checks)."""
    groups = dict(spec.node_gpus)[node]
    return dataclasses.replace(spec, gpus=groups, node=node)


def gpus_per_node(spec: Spec) -> int:
    return cluster_of(spec).head.gpu_count


def port(spec: Spec) -> int:
    cluster = cluster_of(spec)
    if cluster.port is not None:
        return cluster.port
    if cluster.backend == "ray":
        return int(catalog()["ray"]["default_port"])
    return int(rpc_version(spec)["default_port"])


def _host_port(address: str, number: int) -> str:
    return f"[{address}]:{number}" if ":" in address else f"{address}:{number}"


def head_address(spec: Spec) -> str:
    """HEAD:PORT, what Ray workers and vLLM's driver connect to."""
    return _host_port(cluster_of(spec).head.address, port(spec))


def rpc_servers(spec: Spec) -> str:
    """llama-server --rpc: every worker's rpc-server, in node order."""
    return ",".join(_host_port(n.address, port(spec)) for n in cluster_of(spec).workers)


def rpc_version(spec: Spec) -> dict[str, Any]:
    versions: dict[str, Any] = catalog()["rpc"]["versions"]
    entry: dict[str, Any] | None = versions.get(spec.profile.runtime.version)
    if entry is None:
        raise RenderError(f"no rpc-server entry for llama.cpp {spec.profile.runtime.version} in catalog/cluster.yaml",
                          hint=f"known: {', '.join(versions)}")
    return entry


def address_env() -> str:
    return str(catalog()["ray"]["address_env"])


def latency_s(spec: Spec) -> float:
    kind = cluster_of(spec).interconnect.type
    return float(catalog()["latency_us"][kind]) / 1e6
