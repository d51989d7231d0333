"""The profile's ``cluster:`` section: one model served by several machines, each node
with its GPUs and address, and the network between them (the queries over it are
cluster.py).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from provisioner.profile.field_types import Name, ProfileModel, Text
from provisioner.profile.hardware_section import GpuEntry


class ClusterNode(ProfileModel):
    """One machine of a cluster: an inventory host with its GPUs and the address the
    other nodes reach it at (an IP: it lands in unit files, scripts and --rpc lists)."""

    name: Name
    """The node's name (--node NAME)."""
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    """The inventory host that is this node."""
    address: Text
    """The IP address the other nodes reach this one at."""
    role: Literal["head", "worker"]
    """head (serves the API) or worker; exactly one head."""
    gpus: list[GpuEntry] = Field(min_length=1)
    """This node's GPUs by catalog id and count."""

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"address must be an IP address, got {value!r}") from exc
        return value

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)


class Interconnect(ProfileModel):
    """The network between the nodes: its type sets the per-message latency fit assumes."""

    type: Literal["ethernet", "infiniband", "roce"] = "ethernet"
    """ethernet, roce or infiniband: sets the per-message latency fit assumes (catalog/cluster.yaml)."""
    gbit_s: float = Field(gt=0, le=3200)
    """Link bandwidth in Gbit/s."""


class Cluster(ProfileModel):
    """One model served by several machines: vLLM on Ray (tensor parallel inside a
    node, pipeline parallel across nodes) or llama.cpp RPC (workers lend their GPUs
    to the head's llama-server)."""

    backend: Literal["ray", "rpc"]
    """ray (vLLM on Ray) or rpc (llama.cpp with rpc-server workers)."""
    nodes: list[ClusterNode] = Field(min_length=2, max_length=64)
    """The machines, head and workers (2 to 64)."""
    interconnect: Interconnect
    """The network between the nodes."""
    port: int | None = Field(default=None, ge=1024, le=65535)
    """Ray's GCS port on the head or each worker's rpc-server port; default: catalog/cluster.yaml."""
    # The RPC server and Ray's ports have no authentication: listening beyond loopback
    # must be asked for, like runtime.expose.
    trusted_network: bool = False
    """Ray's and rpc-server's ports have no authentication: node addresses beyond loopback need true."""

    @model_validator(mode="after")
    def _shape(self) -> Cluster:
        heads = [n.name for n in self.nodes if n.role == "head"]
        if len(heads) != 1:
            raise ValueError(f"a cluster has exactly one node with role: head (got {len(heads)})")
        for key in ("name", "host", "address"):
            values = [getattr(n, key) for n in self.nodes]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"two nodes share the {key} {dupes[0]!r}")
        public = [n.address for n in self.nodes if not ipaddress.ip_address(n.address).is_loopback]
        if public and not self.trusted_network:
            raise ValueError(f"node address {public[0]} is beyond loopback and "
                             f"{'rpc-server' if self.backend == 'rpc' else 'Ray'} has no authentication; "
                             "set cluster.trusted_network: true if this network is private")
        return self

    @property
    def head(self) -> ClusterNode:
        return next(n for n in self.nodes if n.role == "head")

    @property
    def workers(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.role == "worker"]

    def node_for_host(self, host: str) -> ClusterNode | None:
        """The node an inventory host name (or, for --host, its address) stands for."""
        return next((n for n in self.nodes if host in (n.host, n.address)), None)
