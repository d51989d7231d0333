"""Which cluster node a target is, from the nodes' names and hosts alone.

Kept apart from the pydantic models (``profile/cluster.py`` builds one from a Spec)
so that converge can answer it from a cached build without loading them.
"""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.errors import ProfileError, UsageError


@dataclass(frozen=True)
class Node:
    name: str
    host: str  # the inventory host name
    address: str


@dataclass(frozen=True)
class ClusterNodes:
    """A profile's cluster nodes in profile order (none: not a cluster profile)."""

    profile_name: str
    profile_file: str
    nodes: tuple[Node, ...] = ()

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    def chosen(self, name: str) -> str:
        """--node NAME, checked against the profile: a cluster node's name, or a usage error."""
        if name not in self.names:
            raise UsageError(f"--node {name}: " + ("not a node of this cluster" if self.nodes else
                                                   "the profile describes no cluster"),
                             hint=f"nodes: {', '.join(self.names)}" if self.nodes else "drop --node")
        return name

    def for_host(self, host: str) -> str:
        """The node an inventory host name (or, for --host, its address) stands for; a host
        that is no node is an error (nothing to render)."""
        for node in self.nodes:
            if host in (node.host, node.address):
                return node.name
        raise ProfileError(f"host {host} is not a node of the cluster in profile {self.profile_name}",
                           hint="cluster.nodes[].host names the inventory hosts: "
                                + ", ".join(n.host for n in self.nodes),
                           file=self.profile_file, field="cluster.nodes")
