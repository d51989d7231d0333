"""The command lines a cluster adds (pure): Ray head and workers for vLLM, llama.cpp's
rpc-server on workers. Flags come from ``catalog/cluster.yaml``, spelled per version
with where they were checked, as engine flags come from ``catalog/engines.yaml``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from provisioner.profile.cluster import catalog, head_address, port, rpc_version
from provisioner.profile.cluster_section import ClusterNode
from provisioner.profile.resolve import Spec
from provisioner.render.engine_command import Arg


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
    entry = rpc_version(spec)
    args = (
        Arg((_flag(entry, "host"), node.address), "the cluster address (the head's --rpc list names it)"),
        Arg((_flag(entry, "port"), str(port(spec))), "the port the head's --rpc list names"),
        Arg((_flag(entry, "threads"), str(spec.profile.runtime.threads or spec.profile.hardware.cpu.cores)),
            "CPU device threads (the default is half the cores)"),
    )
    return NodeCommand(str(entry["binary"]), args, str(entry["checked_in"]).strip())
