"""A host's hardware as `provision init` and `fit --host/--here` use it: the host probe
(snippets/host.sh: host name, CPU cores, NUMA nodes, DIMMs), its pure parser, and
``HostFacts``, which joins it with the gather's base facts and the GPU probe.

Every line the host probe prints starts with ``@init ``:

    @init hostname NAME
    @init cores N                   physical cores: distinct (physical id, core id) of /proc/cpuinfo
    @init cpu_model TEXT
    @init numa_nodes N              /sys/devices/system/node/node*
    @init dimm KEY: VALUE           Size, Type, Speed, Configured Memory Speed of `dmidecode -t 17`
    @init dimm unreadable           dmidecode missing or not root
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from provisioner.errors import ProvisionError
from provisioner.facts.gather import Gathered, parse_gather
from provisioner.facts.gpu import Gpu
from provisioner.facts.gpu_probe import GPU_PROBE
from provisioner.facts.probe import Probe, load_snippet
from provisioner.units import GIB, format_size

KIB = 1024


@dataclass(frozen=True)
class HostInfo:
    """What the host probe read; None where it could not."""

    hostname: str | None = None
    cores: int | None = None  # physical cores
    cpu_model: str | None = None
    numa_nodes: int | None = None
    memory_type: str | None = None  # "ddr5-5600" from dmidecode (needs root)
    dimm_bytes: int | None = None  # installed RAM from dmidecode
    dimms: int | None = None
    # bus id (lower case) -> (memory.total MiB, compute capability), for GPUs the catalog lacks
    boards: tuple[tuple[str, int | None, str | None], ...] = ()


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _dimm_size(text: str) -> int | None:
    """dmidecode prints "16384 MB"/"16 GB" (before 3.6) or "32 GiB" (3.6 and later)."""
    m = re.fullmatch(r"(\d+)\s*(MB|GB|TB|MiB|GiB|TiB)", text.strip())
    if not m:
        return None
    return int(m.group(1)) * {"M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)[0]]


def parse_dimms(lines: list[str]) -> tuple[str | None, int | None, int | None]:
    """(memory type like ddr5-5600, installed bytes, populated DIMMs) from dmidecode -t 17.

    The speed is the slowest DIMM's "Configured Memory Speed" (what the controller runs:
    below the rating with two DIMMs per channel, above it with XMP/EXPO), else its
    rated "Speed" where the configured one is unknown."""
    sizes: list[int] = []
    types: set[str] = set()
    speeds: list[int] = []
    rated: int | None = None
    populated = False

    def close() -> None:  # the previous DIMM's speed, once its block is read
        nonlocal rated
        if rated is not None:
            speeds.append(rated)
        rated = None

    for line in lines:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        mts = re.match(r"(\d+)\s*MT/s", value)
        if key == "Size":
            close()
            size = _dimm_size(value)
            populated = size is not None
            if size is not None:
                sizes.append(size)
        elif populated and key == "Type" and re.fullmatch(r"(LP)?DDR[45]X?", value):
            types.add(value.lower())
        elif populated and key == "Speed" and mts:
            rated = int(mts.group(1))
        elif populated and key == "Configured Memory Speed" and mts:
            speeds.append(int(mts.group(1)))
            rated = None
    close()
    memory_type = f"{types.pop()}-{min(speeds)}" if len(types) == 1 and speeds else None
    return memory_type, (sum(sizes) or None), (len(sizes) or None)


def parse_host_lines(lines: list[str]) -> HostInfo:
    """The host probe's lines (marker removed) -> HostInfo."""
    values: dict[str, str] = {}
    dimm_lines: list[str] = []
    boards: list[tuple[str, int | None, str | None]] = []
    for line in lines:
        if line.startswith("dimm "):
            dimm_lines.append(line.removeprefix("dimm "))
        elif line.startswith("gpu "):
            parts = [p.strip() for p in line.removeprefix("gpu ").split(",")]
            if len(parts) == 3:
                cap = parts[2] if re.fullmatch(r"[0-9]+\.[0-9]+", parts[2]) else None
                boards.append((parts[0].lower(), _int(parts[1]), cap))
        else:
            key, _, value = line.partition(" ")
            values[key] = value.strip()
    memory_type, dimm_bytes, dimms = parse_dimms(dimm_lines)
    return HostInfo(hostname=values.get("hostname") or None, cores=_int(values.get("cores")) or None,
                    cpu_model=values.get("cpu_model") or None, numa_nodes=_int(values.get("numa_nodes")) or None,
                    memory_type=memory_type, dimm_bytes=dimm_bytes, dimms=dimms, boards=tuple(boards))


HOST_PROBE: Probe[HostInfo] = Probe("init", load_snippet("host"), parse_host_lines)


@dataclass(frozen=True)
class HostFacts:
    """What init and fit --host need to know about a host, from one gather round trip."""

    mem_total_kb: int
    cpus: int  # logical processors
    gpus: tuple[Gpu, ...] = ()
    cores: int | None = None  # physical cores, None when unreadable
    numa_nodes: int | None = None
    cpu_model: str | None = None
    hostname: str | None = None
    memory_type: str | None = None  # "ddr5-5600" from dmidecode (needs root)
    dimm_bytes: int | None = None  # installed RAM from dmidecode
    dimms: int | None = None
    nvidia_driver: str | None = None
    nvidia_module: str | None = None
    smi: str = "not-gathered"  # nvidia-smi: ok, missing, failed, not-gathered

    @classmethod
    def from_gathered(cls, gathered: Gathered) -> HostFacts:
        """From a gather whose script included GPU_PROBE and HOST_PROBE (facts/collect.py)."""
        return host_facts(gathered.output)

    @property
    def mem_total_bytes(self) -> int:
        return self.mem_total_kb * KIB

    @property
    def ram_bytes(self) -> int:
        """Installed RAM: the DIMMs' sizes if readable, else MemTotal rounded up to the
        installed size (the kernel keeps a few GiB for itself), to whole GiB otherwise."""
        if self.dimm_bytes:
            return self.dimm_bytes
        total = self.mem_total_bytes
        for step in (8 * GIB, 4 * GIB):
            rounded = -(-total // step) * step
            # the kernel's share: ~2-3.5% of RAM; a bigger gap is not rounding, never claim it
            if rounded - total <= 0.035 * rounded + GIB // 4:
                return rounded
        return -(-total // GIB) * GIB

    @property
    def ram_source(self) -> str:
        if self.dimm_bytes:
            return f"dmidecode: {self.dimms} DIMMs, {format_size(self.dimm_bytes)}"
        return (f"MemTotal {self.mem_total_kb} kB ({format_size(self.mem_total_bytes)}) "
                "rounded up to the installed size")

    @property
    def gpu_groups(self) -> tuple[tuple[str, int], ...]:
        """(catalog id, count) of the known GPUs, in order of first appearance."""
        counts: dict[str, int] = {}
        for gpu in self.gpus:
            catalog_id = gpu.catalog_id
            if catalog_id is not None:
                counts[catalog_id] = counts.get(catalog_id, 0) + 1
        return tuple(counts.items())

    @property
    def gpu_order(self) -> list[str]:
        """Bus ids of the catalog GPUs in the order a Spec of ``gpu_groups`` numbers them: by
        catalog group (first appearance), nvidia-smi order within a group."""
        return [g.bus_id for cid, _ in self.gpu_groups for g in self.gpus
                if g.catalog_id == cid and g.bus_id is not None]

    @property
    def unknown_gpus(self) -> tuple[Gpu, ...]:
        return tuple(g for g in self.gpus if g.catalog_id is None)


def host_facts(output: str) -> HostFacts:
    """Pure: the gather output (base facts, GPU_PROBE's and HOST_PROBE's lines) -> HostFacts."""
    values = parse_gather(output).facts.values
    host = HOST_PROBE.read(output)
    report = GPU_PROBE.read(output)
    mem_total_kb = _int(values.get("mem_total_kb"))
    if not mem_total_kb:
        raise ProvisionError("the host's facts have no MemTotal", hint="is /proc/meminfo readable on the host?")
    driver = values.get("nvidia_driver")
    boards = {bus: (mib, cap) for bus, mib, cap in host.boards}
    gpus = tuple(_with_board(g, boards) for g in report.gpus)
    return HostFacts(
        mem_total_kb=mem_total_kb, cpus=_int(values.get("cpus")) or 1, gpus=gpus,
        cores=host.cores, numa_nodes=host.numa_nodes, cpu_model=host.cpu_model, hostname=host.hostname,
        memory_type=host.memory_type, dimm_bytes=host.dimm_bytes, dimms=host.dimms,
        nvidia_driver=driver if driver and driver != "none" else None,
        nvidia_module=values.get("nvidia_module"), smi=report.smi)


def _with_board(gpu: Gpu, boards: dict[str, tuple[int | None, str | None]]) -> Gpu:
    """The GPU with what the host probe's nvidia-smi query adds (memory, compute capability)."""
    mib, cap = boards.get((gpu.bus_id or "").lower(), (None, None))
    return dataclasses.replace(gpu, memory_total_mib=gpu.memory_total_mib if mib is None else float(mib),
                               compute_cap=cap or gpu.compute_cap)
