"""One sample of a host for `provision monitor`: the probe (snippets/sample.sh) and its
pure parser. Rates between two samples: monitor/probe.py; checks: monitor/checks.py.

One run of the probe is one sample. Every line it prints starts with ``@mon ``:

    @mon time SECONDS               /proc/uptime (monotonic since boot: rates divide by its deltas)
    @mon pagesize BYTES             getconf PAGESIZE (pswpin/pswpout count pages)
    @mon smi present | missing
    @mon smi-rc CODE                nvidia-smi --query-gpu failed with CODE (its output follows as gpu lines)
    @mon gpu-fields F1,F2,...       the --query-gpu fields, in order
    @mon gpu |ROW                   one CSV row (noheader, nounits)
    @mon dmon |LINE                 `nvidia-smi dmon -s t -c 1`: PCIe RX/TX MB/s per GPU
    @mon vmstat KEY VALUE           pswpin, pswpout, pgmajfault of /proc/vmstat
    @mon psi-memory |LINE           /proc/pressure/memory (also psi-io, psi-cpu)
    @mon meminfo KEY: N kB          MemTotal, MemAvailable, Cached, SwapTotal, SwapFree
    @mon service NAME
    @mon server systemd | no-systemd | root
    @mon pid N                      the service's MainPID, when it runs
    @mon status |LINE               Name, VmRSS, VmLck, VmSwap of /proc/PID/status
    @mon stat |LINE                 /proc/PID/stat (majflt is field 12)
    @mon governor NAME              cpu0's cpufreq scaling governor
    @mon nvlink |LINE               `nvidia-smi nvlink -s`: each GPU's links and their speed
    @mon xid-log readable | unreadable   whether the kernel log could be read (root)
    @mon xid |LINE                  the last NVRM Xid lines of the kernel log

The output has no ``@done``: it is not a gather script (facts/gather.py), it is run
alone with ``transport.run`` for the least overhead per sample.

The --query-gpu fields (``index``, ``temperature.gpu``, ``power.draw``,
``power.limit``, ``clocks.sm``, ``clocks_event_reasons.active``, ``memory.used``,
``memory.total``, ``utilization.gpu``, ``pcie.link.gen.current``,
``pcie.link.width.current``) and their sources: facts/gpu.py. Older drivers know
only ``clocks_throttle_reasons.*``, so the probe falls back.
``dmon -s t`` prints ``# gpu rxpci txpci`` in MB/s (nvidia-smi(1), "Device Monitoring").
PSI lines: https://www.kernel.org/doc/html/latest/accounting/psi.html
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from provisioner.facts.gpu import Gpu, number, parse_query_row, query_fields, whole
from provisioner.facts.probe import Probe, load_snippet, with_inputs

SmiState = Literal["present", "missing", "failed", "not-gathered"]
ServerState = Literal["systemd", "no-systemd", "root", "not-gathered"]


@dataclass(frozen=True)
class Pressure:
    """One line of a PSI file: percentages of wall time stalled; total in microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total: int


@dataclass(frozen=True)
class Sample:
    time_s: float | None = None
    page_size: int = 4096
    smi: SmiState = "not-gathered"
    smi_error: str | None = None
    gpus: tuple[Gpu, ...] = ()
    pswpin: int | None = None  # pages since boot
    pswpout: int | None = None
    pgmajfault: int | None = None
    psi: dict[str, dict[str, Pressure]] = field(default_factory=dict)  # {"memory": {"some": ..., "full": ...}}
    mem_total_kb: int | None = None
    mem_available_kb: int | None = None
    cached_kb: int | None = None
    swap_total_kb: int | None = None
    swap_free_kb: int | None = None
    service: str | None = None
    server: ServerState = "not-gathered"
    server_pid: int | None = None
    server_name: str | None = None
    server_rss_kb: int | None = None
    server_locked_kb: int | None = None
    server_swap_kb: int | None = None
    server_majflt: int | None = None
    governor: str | None = None
    xid_readable: bool | None = None  # None: not gathered
    xid_lines: tuple[str, ...] = ()  # the last NVRM Xid lines of the kernel log (with timestamps)
    nvlink: tuple[tuple[int, int, float | None], ...] = ()  # (gpu, link, GB/s or None when inactive)

    def pressure(self, resource: str, kind: str) -> Pressure | None:
        return self.psi.get(resource, {}).get(kind)


_NVLINK_GPU = re.compile(r"^GPU (\d+):")
_NVLINK_LINK = re.compile(r"^\s*Link (\d+):\s*(.*)$")


def parse_nvlink(lines: Iterable[str]) -> tuple[tuple[int, int, float | None], ...]:
    """`nvidia-smi nvlink -s` -> (gpu, link, GB/s); an inactive link ("<inactive>") has None."""
    out: list[tuple[int, int, float | None]] = []
    gpu: int | None = None
    for line in lines:
        head = _NVLINK_GPU.match(line)
        if head:
            gpu = int(head.group(1))
            continue
        link = _NVLINK_LINK.match(line)
        if link and gpu is not None:
            speed = re.match(r"([0-9.]+)\s*GB/s", link.group(2).strip())
            out.append((gpu, int(link.group(1)), float(speed.group(1)) if speed else None))
    return tuple(out)


def parse_dmon(lines: Iterable[str]) -> dict[int, tuple[float | None, float | None]]:
    """`nvidia-smi dmon -s t` (or any -s with t) -> {gpu index: (rx MB/s, tx MB/s)}; columns by name."""
    columns: list[str] = []
    out: dict[int, tuple[float | None, float | None]] = {}
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "#":
            if "gpu" in words[1:]:
                columns = words[1:]
            continue
        if words[0].startswith("#"):  # "#gpu" without a space
            columns = [words[0][1:], *words[1:]] if words[0] != "#" else columns
            continue
        if not columns or "rxpci" not in columns or len(words) != len(columns) or not words[0].isdigit():
            continue
        row = dict(zip(columns, words, strict=True))
        out[int(words[0])] = (number(row.get("rxpci")), number(row.get("txpci")))
    return out


def _psi(lines: list[str]) -> dict[str, Pressure]:
    out: dict[str, Pressure] = {}
    for line in lines:
        words = line.split()
        if not words or words[0] not in {"some", "full"}:
            continue
        kv = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        try:
            out[words[0]] = Pressure(float(kv["avg10"]), float(kv["avg60"]), float(kv["avg300"]), int(kv["total"]))
        except (KeyError, ValueError):
            continue
    return out


def _majflt(stat: str) -> int | None:
    """/proc/PID/stat: the comm field may hold spaces and parentheses; count after the last ')'."""
    rest = stat.rsplit(")", 1)[-1].split()
    return int(rest[9]) if len(rest) > 9 and rest[9].isdigit() else None  # field 12 = 3rd after ')' + 9


_MEMINFO = {"MemTotal": "mem_total_kb", "MemAvailable": "mem_available_kb", "Cached": "cached_kb",
            "SwapTotal": "swap_total_kb", "SwapFree": "swap_free_kb"}


def _value(values: dict[str, Any], key: str, rest: str) -> None:
    """One ``@mon KEY VALUE`` line into the Sample's values (unknown keys are ignored)."""
    if key == "time":
        values["time_s"] = number(rest)
    elif key == "pagesize" and rest.isdigit():
        values["page_size"] = int(rest)
    elif key == "smi":
        values["smi"] = rest if rest in {"present", "missing"} else "not-gathered"
    elif key == "vmstat":
        name, _, count = rest.partition(" ")
        if name in {"pswpin", "pswpout", "pgmajfault"} and count.strip().isdigit():
            values[name] = int(count)
    elif key == "meminfo":
        name, _, kb = rest.partition(":")
        if name in _MEMINFO:
            values[_MEMINFO[name]] = whole(kb)
    elif key == "service":
        values["service"] = rest
    elif key == "server" and rest in {"systemd", "no-systemd", "root"}:
        values["server"] = rest
    elif key == "pid" and rest.isdigit():
        values["server_pid"] = int(rest)
    elif key == "governor":
        values["governor"] = rest or None
    elif key == "xid-log":
        values["xid_readable"] = rest == "readable"


def _gpus(values: dict[str, Any], blocks: dict[str, list[str]], names: list[str], smi_rc: int | None) -> None:
    """The GPU rows (with dmon's PCIe throughput), or smi "failed" when nvidia-smi printed no row."""
    rows = blocks.get("gpu", [])
    parsed = [(g.index, g) for g in (parse_query_row(names, r) for r in rows) if g is not None and g.index is not None]
    if smi_rc or (rows and not parsed):
        values["smi"] = "failed"
        values["smi_error"] = "; ".join(r.strip() for r in rows if r.strip())[:300] or f"exit code {smi_rc}"
    dmon = parse_dmon(blocks.get("dmon", []))
    values["gpus"] = tuple(replace(g, pcie_rx_mbs=dmon.get(index, (None, None))[0],
                                   pcie_tx_mbs=dmon.get(index, (None, None))[1]) for index, g in parsed)


def _server(values: dict[str, Any], blocks: dict[str, list[str]]) -> None:
    for line in blocks.get("status", []):
        name, _, rest = line.partition(":")
        attr = {"VmRSS": "server_rss_kb", "VmLck": "server_locked_kb", "VmSwap": "server_swap_kb"}.get(name)
        if attr:
            values[attr] = whole(rest)
        elif name == "Name":
            values["server_name"] = rest.strip()
    stat = blocks.get("stat", [])
    if stat:
        values["server_majflt"] = _majflt(stat[0])


def parse_sample_lines(lines: list[str]) -> Sample:
    """The probe's lines (marker removed) -> Sample."""
    values: dict[str, Any] = {}
    blocks: dict[str, list[str]] = {}
    names: list[str] = []
    smi_rc: int | None = None
    for line in lines:
        key, _, rest = line.partition(" ")
        if rest.startswith("|"):
            blocks.setdefault(key, []).append(rest[1:])
        elif key == "smi-rc":
            smi_rc = whole(rest.strip())
        elif key == "gpu-fields":
            names = query_fields(rest.strip())
        else:
            _value(values, key, rest.strip())
    if values.get("smi") == "present":
        _gpus(values, blocks, names, smi_rc)
    values["psi"] = {r: p for r in ("memory", "io", "cpu") if (p := _psi(blocks.get(f"psi-{r}", [])))}
    _server(values, blocks)
    values["xid_lines"] = tuple(blocks.get("xid", []))
    values["nvlink"] = parse_nvlink(blocks.get("nvlink", []))
    return Sample(**values)


SAMPLE_PROBE: Probe[Sample] = Probe("mon", load_snippet("sample"), parse_sample_lines)


def sample_script(service: str, root: str = "") -> str:
    """The probe with its two inputs set: the service to find, and --root (a tree runs no server)."""
    return with_inputs(SAMPLE_PROBE, MON_SERVICE=service, MON_ROOT=root).snippet
