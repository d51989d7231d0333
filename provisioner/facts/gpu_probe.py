"""The GPU and driver probe (snippets/gpu.sh) and its pure parser, for verify's gpu.*
checks, `provision init` and `fit --host`.

Every line the snippet prints starts with ``@gpu ``:

    @gpu smi present | missing
    @gpu rc NAME CODE               exit code of a command (NAME as below)
    @gpu fields NAME F1,F2,...      the --query-gpu fields of CSV block NAME
    @gpu line NAME |TEXT            one line of a command's output, verbatim
    @gpu log dmesg | journalctl | unreadable
    @gpu reboot yes | no
    @gpu modinfo present | missing  (present and no vermagic line: no nvidia module for the running kernel)

Line blocks: ``smi-q`` (nvidia-smi -q), ``csv-core``, ``csv-clocks``,
``csv-remap`` (nvidia-smi --query-gpu, noheader, nounits), ``proc-version``
(/proc/driver/nvidia/version), ``uname``, ``vermagic``, ``modversion`` and
``license`` (modinfo of the nvidia module for the running kernel: the licence
tells the flavour, "Dual MIT/GPL" open and "NVIDIA" proprietary, as NVIDIA's
kernel_open README says), ``loaded`` (the loaded
module's /sys/module/nvidia/version), ``dkms``, ``reboot-pkgs``, ``xid``.

Field names and clock-reason bits: see facts/gpu.py. The clocks query tries
``clocks_event_reasons.active`` and falls back to ``clocks_throttle_reasons.active``
for drivers that know only the older name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from provisioner.facts.gpu import Gpu, bus, device, flag, number, parse_query_row, query_fields, text, whole
from provisioner.facts.probe import Probe, load_snippet

SmiState = Literal["ok", "missing", "failed", "not-gathered"]
LogState = Literal["dmesg", "journalctl", "unreadable", "not-gathered"]


@dataclass(frozen=True)
class GpuReport:
    smi: SmiState = "not-gathered"
    smi_error: str | None = None
    driver_version: str | None = None
    gpus: tuple[Gpu, ...] = ()
    proc_version: str | None = None  # first line of /proc/driver/nvidia/version
    kernel: str | None = None
    vermagic: str | None = None
    module_version: str | None = None  # on disk, for the running kernel
    module_license: str | None = None  # modinfo -F license: "Dual MIT/GPL" (open) or "NVIDIA" (proprietary)
    modinfo: bool | None = None  # modinfo ran (None: not recorded)
    loaded_version: str | None = None
    dkms: tuple[str, ...] | None = None  # None: dkms not installed
    reboot_required: bool | None = None
    reboot_pkgs: tuple[str, ...] = ()
    log: LogState = "not-gathered"
    xid_lines: tuple[str, ...] = field(default_factory=tuple)

    @property
    def module_flavour(self) -> Literal["open", "proprietary"] | None:
        if self.proc_version:  # the loaded module
            return "open" if "Open Kernel Module" in self.proc_version else "proprietary"
        if self.module_license:  # installed for the running kernel, not loaded (or /proc not readable)
            return "open" if "GPL" in self.module_license else "proprietary"
        return None


def _tree(lines: list[str]) -> tuple[dict[str, str], list[tuple[str, dict[str, str]]]]:
    """`nvidia-smi -q` -> (top-level values, [(bus id, {"PCI/GPU Link Info/...": value})])."""
    top: dict[str, str] = {}
    gpus: list[tuple[str, dict[str, str]]] = []
    stack: list[tuple[int, str]] = []
    current: dict[str, str] | None = None
    for raw in lines:
        if not raw.strip() or raw.startswith("="):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        kv = re.match(r"^\s*(\S[^:]*?)\s+:\s?(.*)$", raw)
        name = kv.group(1) if kv else raw.strip()
        if indent == 0 and not kv:
            gpu = re.match(r"GPU ([0-9A-Fa-f]+:[0-9A-Fa-f]+:[0-9A-Fa-f]+\.[0-9A-Fa-f])", name)
            if gpu:
                current = {}
                gpus.append((bus(gpu.group(1)), current))
                stack = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([s[1] for s in stack] + [name])
        if kv:
            (current if current is not None and indent > 0 else top)[path] = kv.group(2).strip()
        stack.append((indent, name))
    return top, gpus


def _from_q(values: dict[str, str], bus_id: str) -> Gpu:
    def first(*keys: str) -> str | None:
        for k in keys:
            if text(values.get(k)) is not None:
                return values[k]
        return None

    power = ("GPU Power Readings", "Power Readings")
    ecc = [v for k, v in values.items() if k.startswith("ECC Errors/Volatile/")
           and ("Uncorrectable" in k or k.endswith("Double Bit/Total"))]
    ecc_counts = [n for n in (whole(v) for v in ecc) if n is not None]
    reasons: tuple[str, ...] | None = None
    for section in ("Clocks Event Reasons", "Clocks Throttle Reasons", "Clocks Throttle Reasons Active"):
        items = {k.split("/")[-1]: v for k, v in values.items() if k.startswith(section + "/")}
        if items:
            reasons = tuple(n for n, v in items.items() if v.strip() == "Active")
            break
    link = "PCI/GPU Link Info/"
    return Gpu(
        bus_id=bus_id,
        name=text(values.get("Product Name")),
        device_id=device(values.get("PCI/Device Id")),
        persistence=flag(values.get("Persistence Mode")),
        power_limit_w=number(first(*(f"{p}/Requested Power Limit" for p in power), "Power Readings/Power Limit")),
        power_default_w=number(first(*(f"{p}/Default Power Limit" for p in power))),
        power_max_w=number(first(*(f"{p}/Max Power Limit" for p in power))),
        pcie_gen_current=whole(values.get(link + "PCIe Generation/Current")),
        pcie_gen_max=whole(values.get(link + "PCIe Generation/Max")),
        pcie_width_current=whole(values.get(link + "Link Width/Current")),
        pcie_width_max=whole(values.get(link + "Link Width/Max")),
        ecc_uncorrected=sum(ecc_counts) if ecc_counts else None,
        retired_sbe=whole(first("Retired Pages/Single Bit ECC", "Retired Pages/Single Bit ECC/Count")),
        retired_dbe=whole(first("Retired Pages/Double Bit ECC", "Retired Pages/Double Bit ECC/Count")),
        retired_pending=flag(first("Retired Pages/Pending Page Blacklist", "Retired Pages/Pending Page Retirement",
                                   "Retired Pages/Pending")),
        remapped_correctable=whole(values.get("Remapped Rows/Correctable Error")),
        remapped_uncorrectable=whole(values.get("Remapped Rows/Uncorrectable Error")),
        remap_pending=flag(values.get("Remapped Rows/Pending")),
        remap_failure=flag(values.get("Remapped Rows/Remapping Failure Occurred")),
        clock_reasons=reasons,
    )


@dataclass(frozen=True)
class _Scanned:
    """The probe's lines sorted by kind."""

    blocks: dict[str, list[str]]  # line NAME |TEXT
    rcs: dict[str, int]  # rc NAME CODE
    csv_fields: dict[str, str]  # fields NAME F1,F2,...
    status: dict[str, str]  # smi, log, reboot, modinfo

    def one(self, name: str) -> str | None:
        """The first non-blank line of block ``name``."""
        lines = [ln for ln in self.blocks.get(name, []) if ln.strip()]
        return lines[0].strip() if lines else None


def _scan(lines: list[str]) -> _Scanned:
    found = _Scanned({}, {}, {}, {})
    for line in lines:
        kind, _, rest = line.partition(" ")
        if kind == "line":
            name, _, body = rest.partition(" |")
            found.blocks.setdefault(name, []).append(body)
        elif kind == "rc":
            name, _, code = rest.partition(" ")
            found.rcs[name] = int(code) if code.strip().isdigit() else 1
        elif kind == "fields":
            name, _, flist = rest.partition(" ")
            found.csv_fields[name] = flist
        else:
            found.status[kind] = rest.strip()
    return found


def _gpus(scanned: _Scanned) -> tuple[str | None, list[Gpu]]:
    """(driver version, every GPU): nvidia-smi -q first, each --query-gpu block merged in by bus id."""
    top, q_gpus = _tree(scanned.blocks.get("smi-q", []))
    driver = text(top.get("Driver Version"))
    gpus = {bus_id: _from_q(values, bus_id) for bus_id, values in q_gpus}
    for name, flist in scanned.csv_fields.items():
        if scanned.rcs.get(name, 0) != 0:
            continue
        names = query_fields(flist)
        parsed = [(n, parse_query_row(names, row)) for n, row in enumerate(scanned.blocks.get(name, []))]
        rows = [(n, gpu) for n, gpu in parsed if gpu is not None]
        driver = driver or next((g.driver for _, g in reversed(rows) if g.driver), None)
        for n, row in rows:
            bus_id = row.bus_id or f"#{n}"
            gpus[bus_id] = gpus.get(bus_id, Gpu(bus_id=bus_id)).merged(row)
    return driver, list(gpus.values())


def parse_gpu_lines(lines: list[str]) -> GpuReport:
    """Pure parser of the GPU probe's lines (marker removed)."""
    scanned = _scan(lines)
    status, blocks = scanned.status, scanned.blocks
    smi: SmiState = "not-gathered"
    smi_error: str | None = None
    driver: str | None = None
    gpus: list[Gpu] = []
    if status.get("smi") == "missing":
        smi = "missing"
    elif status.get("smi") == "present" or "smi-q" in blocks or scanned.csv_fields:
        driver, gpus = _gpus(scanned)
        smi = "ok"
        if not gpus:
            failed = [ln for name in ("csv-core", "smi-q") for ln in blocks.get(name, []) if ln.strip()]
            if failed and "No devices were found" not in " ".join(failed):
                smi, smi_error = "failed", failed[0].strip()
    dkms = tuple(ln.strip() for ln in blocks.get("dkms", []) if ln.strip()) if "dkms" in blocks else None
    log: LogState = "not-gathered"
    if status.get("log") in {"dmesg", "journalctl", "unreadable"}:
        log = status["log"]  # type: ignore[assignment]
    elif "xid" in blocks:
        log = "dmesg"
    return GpuReport(
        smi=smi, smi_error=smi_error, driver_version=driver, gpus=tuple(gpus),
        proc_version=scanned.one("proc-version"), kernel=scanned.one("uname"), vermagic=scanned.one("vermagic"),
        module_version=scanned.one("modversion"), module_license=scanned.one("license"),
        modinfo={"present": True, "missing": False}.get(status.get("modinfo", "")),
        loaded_version=scanned.one("loaded"), dkms=dkms,
        reboot_required={"yes": True, "no": False}.get(status.get("reboot", "")),
        reboot_pkgs=tuple(ln.strip() for ln in blocks.get("reboot-pkgs", []) if ln.strip()),
        log=log, xid_lines=tuple(ln for ln in blocks.get("xid", []) if "Xid" in ln),
    )


def proc_driver_version(proc_version: str | None) -> str | None:
    """The driver version in /proc/driver/nvidia/version's first line."""
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", proc_version or "")
    return m.group(1) if m else None


GPU_PROBE: Probe[GpuReport] = Probe("gpu", load_snippet("gpu"), parse_gpu_lines)
