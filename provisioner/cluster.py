"""Multi-node serving, the pure part: which node a host is, the view of the profile
from that node, and the command lines of the processes a cluster adds (Ray head and
workers for vLLM, llama.cpp's rpc-server on workers).

The flags come from ``catalog/cluster.yaml`` (spelled per version, with where they
were checked), the same way engine flags come from ``catalog/engines.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from provisioner.catalog import catalog_table
from provisioner.engine_args import Arg
from provisioner.errors import ProfileError, RenderError, UsageError
from provisioner.profile import Cluster, ClusterNode
from provisioner.resolve import Spec


def catalog() -> dict[str, Any]:
    return catalog_table("cluster")


def cluster_of(spec: Spec) -> Cluster:
    cluster = spec.profile.cluster
    assert cluster is not None, "only called on cluster profiles"
    return cluster


def node_named(spec: Spec, name: str) -> ClusterNode:
    return next(n for n in cluster_of(spec).nodes if n.name == name)


def chosen_node(spec: Spec, name: str) -> str:
    """--node NAME, checked against the profile: a cluster node's name, or a usage error."""
    cluster = spec.profile.cluster
    names = [n.name for n in cluster.nodes] if cluster is not None else []
    if name not in names:
        raise UsageError(f"--node {name}: " + ("not a node of this cluster" if names else
                                               "the profile describes no cluster"),
                         hint=f"nodes: {', '.join(names)}" if names else "drop --node")
    return name


def node_for_host(spec: Spec, host: str) -> ClusterNode:
    """The node an inventory host is; a host that is no node is an error (nothing to render)."""
    cluster = cluster_of(spec)
    node = cluster.node_for_host(host)
    if node is None:
        raise ProfileError(f"host {host} is not a node of the cluster in profile {spec.profile.metadata.name}",
                           hint="cluster.nodes[].host names the inventory hosts: "
                                + ", ".join(n.host for n in cluster.nodes),
                           file=str(spec.loaded.path), field="cluster.nodes")
    return node


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
    return int(_rpc_version(spec)["default_port"])


def _host_port(address: str, number: int) -> str:
    return f"[{address}]:{number}" if ":" in address else f"{address}:{number}"


def head_address(spec: Spec) -> str:
    """HEAD:PORT, what Ray workers and vLLM's driver connect to."""
    return _host_port(cluster_of(spec).head.address, port(spec))


def rpc_servers(spec: Spec) -> str:
    """llama-server --rpc: every worker's rpc-server, in node order."""
    return ",".join(_host_port(n.address, port(spec)) for n in cluster_of(spec).workers)


def _rpc_version(spec: Spec) -> dict[str, Any]:
    versions: dict[str, Any] = catalog()["rpc"]["versions"]
    entry: dict[str, Any] | None = versions.get(spec.profile.runtime.version)
    if entry is None:
        raise RenderError(f"no rpc-server entry for llama.cpp {spec.profile.runtime.version} in catalog/cluster.yaml",
                          hint=f"known: {', '.join(versions)}")
    return entry


def _flag(table: dict[str, Any], name: str) -> str:
    return str(table["flags"][name]["flag"])


@dataclasses.dataclass(frozen=True)
class NodeCommand:
    """A cluster process: binary, arguments with reasons, where its flags were checked."""

    binary: str
    args: tuple[Arg, ...]
    checked_in: str


def ray_command(spec: Spec, node: ClusterNode, temp_dir: str) -> NodeCommand:
    """`ray start` for the head (GCS) or a worker, in the foreground for systemd."""
    ray = catalog()["ray"]
    args: list[Arg] = []
    if node.role == "head":
        args.append(Arg((_flag(ray, "head"),), "this node runs Ray's GCS; vLLM's driver starts here"))
        args.append(Arg((f"{_flag(ray, 'port')}={port(spec)}",), "GCS port the workers join"))
        args.append(Arg((f"{_flag(ray, 'temp_dir')}={temp_dir}",),
                        "session dir outside /tmp: the vLLM unit has a private /tmp and must reach the sockets"))
    else:
        args.append(Arg((f"{_flag(ray, 'address')}={head_address(spec)}",), "join the head's GCS"))
    args.append(Arg((f"{_flag(ray, 'node_ip_address')}={node.address}",),
                    "the address the other nodes reach this one at (not a guess from the routes)"))
    args.append(Arg((f"{_flag(ray, 'num_gpus')}={node.gpu_count}",), "GPUs this node offers to vLLM's workers"))
    args.append(Arg((_flag(ray, "block"),), "stay in the foreground: systemd supervises and restarts it"))
    args.append(Arg((_flag(ray, "disable_usage_stats"),), "no usage telemetry from a server"))
    return NodeCommand(str(ray["binary"]), tuple(args), str(ray["checked_in"]).strip())


def rpc_server_command(spec: Spec, node: ClusterNode) -> NodeCommand:
    """llama.cpp's rpc-server on a worker: its GPUs, on its cluster address."""
    entry = _rpc_version(spec)
    args = (
        Arg((_flag(entry, "host"), node.address), "the cluster address (the head's --rpc list names it)"),
        Arg((_flag(entry, "port"), str(port(spec))), "the port the head's --rpc list names"),
        Arg((_flag(entry, "threads"), str(spec.profile.runtime.threads or spec.profile.hardware.cpu.cores)),
            "CPU device threads (the default is half the cores)"),
    )
    return NodeCommand(str(entry["binary"]), args, str(entry["checked_in"]).strip())


def address_env() -> str:
    return str(catalog()["ray"]["address_env"])


def latency_s(spec: Spec) -> float:
    kind = cluster_of(spec).interconnect.type
    return float(catalog()["latency_us"][kind]) / 1e6
