"""What a host's memory already holds, so `fit --host/--here` plans with what is left: the fit
probe and its pure parsers.

The probe (snippets/load.sh, ``fit_probe(service)``) rides in the same single gather
as the GPU and host probes. Every line it prints starts with ``@fit ``:

    @fit apps-rc CODE                 exit code of the compute-apps query
    @fit app |BUS, PID, MIB           nvidia-smi --query-compute-apps=gpu_bus_id,pid,used_memory
                                      --format=csv,noheader,nounits (one line per process)
    @fit p2p |TEXT                    nvidia-smi topo -p2p r, verbatim
    @fit meminfo KEY: VALUE           HugePages_Total, Hugepagesize, Hugetlb of /proc/meminfo
    @fit mainpid PID                  systemctl show -p MainPID --value SERVICE (0: not running)
    @fit ps PID PPID                  every process, to find the server's children

Field names of ``--query-compute-apps`` (``gpu_bus_id``, ``pid``, ``used_memory``,
an alias of ``used_gpu_memory``) are those listed by ``nvidia-smi
--help-query-compute-apps`` and the nvidia-smi(1) man page, "--query-compute-apps"
(https://man.archlinux.org/man/extra/nvidia-utils/nvidia-smi.1.en; the same list is
quoted in https://github.com/eBay/nvidiagpubeat/issues/29). ``topo -p2p`` takes one of
r (read), w (write), n (NVLink), a (atomics), p (prop) and prints a GPU x GPU matrix
with the legend X, OK, CNS, GNS, TNS, NS, DR, U (nvidia-smi(1), "TOPOLOGY OPTIONS").

The managed model server is not "another process": its unit's MainPID and every
descendant (vLLM workers, Ollama runners) are left out, or a second apply of the
same profile would find its own server in the way and refuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from provisioner.facts.probe import Probe, load_snippet, with_inputs

MIB = 2**20
KIB = 1024


@dataclass(frozen=True)
class GpuProcess:
    bus_id: str  # 00000000:01:00.0, upper case as facts/gpu.py normalises it
    pid: int
    used_bytes: int
    server: bool  # the managed model server or one of its children


@dataclass(frozen=True)
class P2p:
    """nvidia-smi topo -p2p r: the status of each GPU pair, by nvidia-smi index."""

    status: dict[tuple[int, int], str]

    @property
    def missing(self) -> tuple[tuple[int, int, str], ...]:
        """Pairs (i < j) without peer access, with the status code (GNS, CNS, NS ...)."""
        return tuple((i, j, s) for (i, j), s in sorted(self.status.items()) if i < j and s != "OK")


P2P_LEGEND = {"OK": "Status Ok", "CNS": "Chipset not supported", "GNS": "GPU not supported",
              "TNS": "Topology not supported", "NS": "Not supported", "DR": "Disabled by regkey",
              "U": "Unknown"}


@dataclass(frozen=True)
class HostLoad:
    """What fit subtracts from a host's capacity, per GPU in the Spec's GPU order."""

    gpu_used_by_others: tuple[int, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    hugepages_bytes: int = 0  # reserved for hugetlbfs: llama.cpp/vLLM/Ollama do not use it
    p2p: P2p | None = None
    apps_error: str | None = None  # nvidia-smi failed: the VRAM of others is unknown

    @property
    def others(self) -> tuple[GpuProcess, ...]:
        return tuple(p for p in self.processes if not p.server)


def descendants(root: int, parents: dict[int, int]) -> frozenset[int]:
    """``root`` and every process below it (an empty set when root is 0: not running)."""
    if root <= 0:
        return frozenset()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found = {root}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return frozenset(found)


def parse_apps(rows: list[str], server_pids: frozenset[int]) -> tuple[GpuProcess, ...]:
    """CSV rows ``bus, pid, MiB``; a used memory of [N/A] (WDDM, some containers) counts 0."""
    out: list[GpuProcess] = []
    for row in rows:
        cells = [c.strip() for c in row.split(",")]
        if len(cells) != 3 or not cells[1].isdigit() or ":" not in cells[0]:
            continue  # "No running processes found" and error text
        pid = int(cells[1])
        mib = int(cells[2]) if cells[2].isdigit() else 0
        out.append(GpuProcess(cells[0].upper(), pid, mib * MIB, pid in server_pids))
    return tuple(out)


def parse_p2p(rows: list[str]) -> P2p | None:
    """The matrix of ``nvidia-smi topo -p2p r``: a header of GPUn names, then one row per GPU."""
    header: list[int] | None = None
    status: dict[tuple[int, int], str] = {}
    for row in rows:
        cells = row.split()
        if not cells:
            continue
        if header is None and all(re.fullmatch(r"GPU\d+", c) for c in cells):
            header = [int(c[3:]) for c in cells]
            continue
        if header is not None and re.fullmatch(r"GPU\d+", cells[0]) and len(cells) == len(header) + 1:
            i = int(cells[0][3:])
            for j, code in zip(header, cells[1:], strict=True):
                if code != "X":
                    status[(i, j)] = code
    return P2p(status) if header is not None and status else None


def parse_hugepages(meminfo: list[str]) -> int:
    """Bytes reserved for hugetlbfs: ``Hugetlb`` (all page sizes, Linux 4.16+) or
    HugePages_Total x Hugepagesize (the default size only) on older kernels."""
    values: dict[str, int] = {}
    for line in meminfo:
        key, _, rest = line.partition(":")
        number = rest.split()[0] if rest.split() else ""
        if number.isdigit():
            values[key.strip()] = int(number)
    if "Hugetlb" in values:
        return values["Hugetlb"] * KIB
    return values.get("HugePages_Total", 0) * values.get("Hugepagesize", 0) * KIB


@dataclass(frozen=True)
class LoadReading:
    """What the fit probe printed, sorted by kind."""

    apps_failed: bool = False  # the compute-apps query exited non-zero
    app_rows: tuple[str, ...] = ()  # its output: CSV rows, or the error text
    p2p_rows: tuple[str, ...] = ()
    hugepages_bytes: int = 0
    main_pid: int = 0  # the model server unit's MainPID, 0: not running
    parents: dict[int, int] = field(default_factory=dict)  # pid -> ppid of every process


def parse_load_lines(lines: list[str]) -> LoadReading:
    """The fit probe's lines (marker removed) -> LoadReading."""
    rcs: list[str] = []
    rows: dict[str, list[str]] = {"app": [], "p2p": [], "meminfo": []}
    main = 0
    parents: dict[int, int] = {}
    for line in lines:
        tag, _, rest = line.partition(" ")
        if tag in ("app", "p2p") and rest.startswith("|"):
            rows[tag].append(rest[1:])
        elif tag == "meminfo":
            rows["meminfo"].append(rest)
        elif tag == "apps-rc":
            rcs.append(rest)
        elif tag == "mainpid":
            main = int(rest.strip()) if rest.strip().isdigit() else 0
        elif tag == "ps":
            parts = rest.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                parents[int(parts[0])] = int(parts[1])
    failed = bool(rcs) and (rcs[-1].split() or [""])[-1] != "0"
    return LoadReading(failed, tuple(rows["app"]), tuple(rows["p2p"]), parse_hugepages(rows["meminfo"]), main,
                       parents)


FIT_PROBE: Probe[LoadReading] = Probe("fit", load_snippet("load"), parse_load_lines)  # its input: fit_probe()


def fit_probe(service: str) -> Probe[LoadReading]:
    """The probe for the profile's service (the unit whose processes are not "others")."""
    return with_inputs(FIT_PROBE, FIT_UNIT=f"{service}.service")


def host_load(reading: LoadReading, gpu_order: list[str]) -> HostLoad:
    """Pure: what the fit probe read -> HostLoad. ``gpu_order`` lists the bus ids of the GPUs in
    the order the Spec numbers them (catalog groups, nvidia-smi order within a group)."""
    server = descendants(reading.main_pid, reading.parents)
    rows = list(reading.app_rows)
    processes = () if reading.apps_failed else parse_apps(rows, server)
    used = {bus: 0 for bus in gpu_order}
    for proc in processes:
        if not proc.server and proc.bus_id in used:
            used[proc.bus_id] += proc.used_bytes
    return HostLoad(gpu_used_by_others=tuple(used[bus] for bus in gpu_order), processes=processes,
                    hugepages_bytes=reading.hugepages_bytes, p2p=parse_p2p(list(reading.p2p_rows)),
                    apps_error=" ".join(rows).strip()[:200] or "failed" if reading.apps_failed else None)
