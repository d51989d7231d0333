"""What a host's memory already holds, so `fit --host/--here` plans with what is left (pure parsers).

The snippet ``FIT_GATHER`` rides in the same single gather as the GPU and init
probes. Every line it prints starts with ``@fit ``:

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
import shlex
from dataclasses import dataclass

MIB = 2**20
KIB = 1024

_GATHER = r"""# --- provision fit: memory other processes hold, hugepages, GPU peer access (lines "@fit ") ---
if command -v nvidia-smi >/dev/null 2>&1; then
    fit_apps=$(nvidia-smi --query-compute-apps=gpu_bus_id,pid,used_memory --format=csv,noheader,nounits 2>&1)
    printf '@fit apps-rc %s\n' "$?"
    printf '%s\n' "$fit_apps" | sed 's/^/@fit app |/'
    nvidia-smi topo -p2p r 2>&1 | sed 's/^/@fit p2p |/'
    fit_apps=
fi
grep -E '^(HugePages_Total|Hugepagesize|Hugetlb):' /proc/meminfo 2>/dev/null | sed 's/^/@fit meminfo /'
fit_main=0
if command -v systemctl >/dev/null 2>&1; then
    fit_main=$(systemctl show -p MainPID --value @UNIT@ 2>/dev/null) || fit_main=0
fi
printf '@fit mainpid %s\n' "${fit_main:-0}"
ps -e -o pid= -o ppid= 2>/dev/null | sed 's/^ */@fit ps /'
"""


def fit_gather(service: str) -> str:
    """The snippet for the profile's service (the unit whose processes are not "others")."""
    return _GATHER.replace("@UNIT@", shlex.quote(f"{service}.service"))


@dataclass(frozen=True)
class GpuProcess:
    bus_id: str  # 00000000:01:00.0, upper case as verify/gpu.py normalises it
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


def _lines(output: str, tag: str) -> list[str]:
    prefix = f"@fit {tag} |"
    return [line[len(prefix):] for line in output.splitlines() if line.startswith(prefix)]


def parse_ps(output: str) -> tuple[int, dict[int, int]]:
    """(MainPID, {pid: ppid}) from the snippet's lines."""
    main = 0
    parents: dict[int, int] = {}
    for line in output.splitlines():
        if line.startswith("@fit mainpid "):
            text = line.removeprefix("@fit mainpid ").strip()
            main = int(text) if text.isdigit() else 0
        elif line.startswith("@fit ps "):
            parts = line.split()
            if len(parts) == 4 and parts[2].isdigit() and parts[3].isdigit():
                parents[int(parts[2])] = int(parts[3])
    return main, parents


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


def parse_hugepages(output: str) -> int:
    """Bytes reserved for hugetlbfs: ``Hugetlb`` (all page sizes, Linux 4.16+) or
    HugePages_Total x Hugepagesize (the default size only) on older kernels."""
    values: dict[str, int] = {}
    for line in output.splitlines():
        if line.startswith("@fit meminfo "):
            key, _, rest = line.removeprefix("@fit meminfo ").partition(":")
            number = rest.split()[0] if rest.split() else ""
            if number.isdigit():
                values[key.strip()] = int(number)
    if "Hugetlb" in values:
        return values["Hugetlb"] * KIB
    return values.get("HugePages_Total", 0) * values.get("Hugepagesize", 0) * KIB


def host_load(output: str, gpu_order: list[str]) -> HostLoad:
    """Pure: the gather output -> HostLoad. ``gpu_order`` lists the bus ids of the GPUs in the
    order the Spec numbers them (catalog groups, nvidia-smi order within a group)."""
    main, parents = parse_ps(output)
    server = descendants(main, parents)
    rc_lines = [line for line in output.splitlines() if line.startswith("@fit apps-rc ")]
    rows = _lines(output, "app")
    failed = bool(rc_lines) and rc_lines[-1].split()[-1] != "0"
    processes = () if failed else parse_apps(rows, server)
    used = {bus: 0 for bus in gpu_order}
    for proc in processes:
        if not proc.server and proc.bus_id in used:
            used[proc.bus_id] += proc.used_bytes
    return HostLoad(gpu_used_by_others=tuple(used[bus] for bus in gpu_order), processes=processes,
                    hugepages_bytes=parse_hugepages(output), p2p=parse_p2p(_lines(output, "p2p")),
                    apps_error=" ".join(rows).strip()[:200] or "failed" if failed else None)
