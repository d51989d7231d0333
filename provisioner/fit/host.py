"""A profile re-targeted at a real host for `fit --host/--here` (pure): the host's facts
(facts/host.py) as overrides of the profile's hardware."""

from __future__ import annotations

from typing import Any

from provisioner.facts.host import HostFacts


def hardware_overrides(facts: HostFacts) -> dict[str, Any]:
    """The profile's hardware replaced by a host's facts: its GPUs (catalog ids by PCI
    device id), installed RAM, cores and NUMA nodes, and the memory type where dmidecode
    could read it. Memory channels stay the profile's."""
    hardware: dict[str, Any] = {
        "gpus": [{"model": gid, "count": count} for gid, count in facts.gpu_groups],
        "ram": facts.ram_bytes,
        "cpu": {"cores": facts.cores or facts.cpus, "numa_nodes": facts.numa_nodes or 1},
    }
    if facts.memory_type:
        hardware["memory"] = {"type": facts.memory_type}
    return {"hardware": hardware}
