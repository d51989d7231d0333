"""A host's facts for init and fit --host: recorded gathers (tests/cases/init/*.yaml, base
facts with the GPU and host probes' lines) and the real round trip on this machine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.errors import ProvisionError
from provisioner.facts.collect import gather_host
from provisioner.facts.host import HOST_PROBE, HostFacts, host_facts
from provisioner.transport.local import LocalTransport
from provisioner.units import GIB

ROOT = Path(__file__).resolve().parents[2]


def _facts(name: str) -> str:
    data: dict[str, Any] = yaml.safe_load((ROOT / "tests/cases/init" / f"{name}.yaml").read_text(encoding="utf-8"))
    return str(data["facts"])


def test_gpus_matched_by_pci_device_id() -> None:
    facts = host_facts(_facts("2x-rtx-3090-128g"))
    assert [g.device_id for g in facts.gpus] == ["0x2204", "0x2204"]
    assert facts.gpu_groups == (("rtx-3090", 2),)
    assert facts.ram_bytes == 128 * GIB  # from the DIMMs
    assert facts.memory_type == "ddr4-3200"


def test_gpu_order_follows_the_catalog_groups() -> None:
    """An unknown GPU between two known ones takes no place in the Spec's numbering."""
    text = _facts("rtx-4090-64g")
    line = next(ln for ln in text.splitlines() if ln.startswith("@gpu line csv-core"))
    other = line.replace("00000000:01:00.0", "00000000:02:00.0").replace("NVIDIA GeForce RTX 4090", "Future GPU") \
        .replace("0x268410DE", "0xFFFF10DE")
    third = line.replace("00000000:01:00.0", "00000000:03:00.0")
    facts = host_facts(text.replace(line, "\n".join([line, other, third])))
    assert [g.bus_id for g in facts.gpus] == ["00000000:01:00.0", "00000000:02:00.0", "00000000:03:00.0"]
    assert facts.gpu_groups == (("rtx-4090", 2),)
    assert facts.gpu_order == ["00000000:01:00.0", "00000000:03:00.0"]
    assert [g.name for g in facts.unknown_gpus] == ["Future GPU"]


def test_host_probe_lines() -> None:
    info = HOST_PROBE.read(_facts("rtx-pro-6000-192g"))
    assert info.cores and info.cores > 0 and info.numa_nodes and info.hostname


def test_no_memtotal_is_an_error_with_a_hint() -> None:
    with pytest.raises(ProvisionError) as info:
        host_facts("@fact cpus 4\n@done\n")
    assert info.value.first.hint == "is /proc/meminfo readable on the host?"


@pytest.mark.parametrize(("mem_total_kb", "expected_gib"), [
    (197654328, 192), (65648120, 64), (131841232, 128), (263874512, 256), (16206344, 16),
    (24684096, 24), (100 * 1024 * 1024, 100),  # 104 would be more than the kernel's share: 100
    (98 * 1024 * 1024 + 300_000, 100), (83 * 1024 * 1024 + 10, 84),  # VMs: multiples of 4, then whole GiB
])
def test_ram_rounded_to_the_installed_size(mem_total_kb: int, expected_gib: int) -> None:
    assert HostFacts(mem_total_kb=mem_total_kb, cpus=4).ram_bytes == expected_gib * GIB


def test_gather_host_reads_this_machine(tmp_path: Path) -> None:
    facts = gather_host(LocalTransport(tmp_path))  # reads facts only; --root keeps state paths in tmp
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    assert facts.mem_total_kb == int(next(ln for ln in meminfo if ln.startswith("MemTotal:")).split()[1])
    assert facts.cpus == os.cpu_count()
    assert facts.hostname == os.uname().nodename
    assert facts.numa_nodes is None or facts.numa_nodes >= 1
