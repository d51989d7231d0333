"""GPU and driver checks: a POSIX sh gather snippet, a pure parser of its output
and pure checks against the profile and the catalog.

Every line the snippet prints starts with ``@gpu `` so it can be picked out of
a larger gather script's output:

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

Field names are those of ``nvidia-smi --help-query-gpu`` (driver 590.48.01 as
recorded in https://github.com/utkuozdemir/nvidia_gpu_exporter/blob/main/internal/captures/linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt):
``clocks_event_reasons.*`` is the current name and ``clocks_throttle_reasons.*``
the alias older drivers know alone, so the clocks query tries one then the other.
The clock-reason bits are NVML's nvmlClocksEventReasons
(https://docs.nvidia.com/deploy/nvml-api/group__nvmlClocksEventReasons.html).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any, Literal

from packaging.version import InvalidVersion, Version

from provisioner.catalog import GpuSpec, load_bundled_yaml
from provisioner.facts.check import Check, Status

_CORE = ("pci.bus_id,name,pci.device_id,driver_version,persistence_mode,power.limit,power.default_limit,"
         "power.max_limit,pcie.link.gen.current,pcie.link.gen.max,pcie.link.width.current,pcie.link.width.max,"
         "ecc.errors.uncorrected.volatile.total,retired_pages.sbe,retired_pages.dbe,retired_pages.pending")
_REMAP = "pci.bus_id,remapped_rows.correctable,remapped_rows.uncorrectable,remapped_rows.pending,remapped_rows.failure"

GPU_GATHER = r"""# --- provision: GPU and driver (lines prefixed "@gpu ") ---
gpu_lines() { sed "s/^/@gpu line $1 |/"; }
gpu_csv() {
    gpu_out=$(nvidia-smi --query-gpu="$2" --format=csv,noheader,nounits 2>&1)
    gpu_rc=$?
    printf '@gpu rc %s %s\n' "$1" "$gpu_rc"
    printf '@gpu fields %s %s\n' "$1" "$2"
    printf '%s\n' "$gpu_out" | gpu_lines "$1"
    return "$gpu_rc"
}
if command -v nvidia-smi >/dev/null 2>&1; then
    echo '@gpu smi present'
    gpu_csv csv-core '@CORE@'
    if nvidia-smi --query-gpu=clocks_event_reasons.active --format=csv,noheader >/dev/null 2>&1; then
        gpu_csv csv-clocks pci.bus_id,clocks_event_reasons.active
    else
        gpu_csv csv-clocks pci.bus_id,clocks_throttle_reasons.active
    fi
    gpu_csv csv-remap '@REMAP@'
    nvidia-smi -q 2>&1 | gpu_lines smi-q
else
    echo '@gpu smi missing'
fi
if [ -r /proc/driver/nvidia/version ]; then gpu_lines proc-version < /proc/driver/nvidia/version; fi
uname -r | gpu_lines uname
if command -v modinfo >/dev/null 2>&1; then
    echo '@gpu modinfo present'
    modinfo -F vermagic nvidia 2>/dev/null | gpu_lines vermagic
    modinfo -F version nvidia 2>/dev/null | gpu_lines modversion
    modinfo -F license nvidia 2>/dev/null | gpu_lines license
else
    echo '@gpu modinfo missing'
fi
if [ -r /sys/module/nvidia/version ]; then gpu_lines loaded < /sys/module/nvidia/version; fi
if command -v dkms >/dev/null 2>&1; then dkms status 2>&1 | grep -i nvidia | gpu_lines dkms; fi
if [ -e /var/run/reboot-required ]; then
    echo '@gpu reboot yes'
    if [ -r /var/run/reboot-required.pkgs ]; then gpu_lines reboot-pkgs < /var/run/reboot-required.pkgs; fi
else
    echo '@gpu reboot no'
fi
if gpu_log=$(dmesg 2>/dev/null) && [ -n "$gpu_log" ]; then
    echo '@gpu log dmesg'
    printf '%s\n' "$gpu_log" | grep 'NVRM: Xid' | tail -n 50 | gpu_lines xid
elif command -v journalctl >/dev/null 2>&1 && gpu_log=$(journalctl -k -b --no-pager -q 2>&1) \
        && ! printf '%s\n' "$gpu_log" | grep -q 'insufficient permissions'; then
    echo '@gpu log journalctl'
    printf '%s\n' "$gpu_log" | grep 'NVRM: Xid' | tail -n 50 | gpu_lines xid
else
    echo '@gpu log unreadable'
fi
gpu_log=
""".replace("@CORE@", _CORE).replace("@REMAP@", _REMAP)

# nvmlClocksEventReasons bits (NVML API reference, see the module docstring)
CLOCK_BITS: dict[int, str] = {
    0x1: "Idle", 0x2: "Applications Clocks Setting", 0x4: "SW Power Cap", 0x8: "HW Slowdown",
    0x10: "Sync Boost", 0x20: "SW Thermal Slowdown", 0x40: "HW Thermal Slowdown",
    0x80: "HW Power Brake Slowdown", 0x100: "Display Clock Setting",
}
# reasons that mean the card is held back by hardware, heat or power: warn
BAD_CLOCK_REASONS = ("HW Slowdown", "HW Thermal Slowdown", "HW Power Brake Slowdown", "SW Thermal Slowdown")

SmiState = Literal["ok", "missing", "failed", "not-gathered"]
LogState = Literal["dmesg", "journalctl", "unreadable", "not-gathered"]


@dataclass(frozen=True)
class GpuInfo:
    bus_id: str
    name: str | None = None
    device_id: str | None = None  # "0x2330", lower case, the device half as the catalog stores it
    persistence: bool | None = None
    power_limit_w: float | None = None
    power_default_w: float | None = None
    power_max_w: float | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    ecc_uncorrected: int | None = None  # volatile, since the driver loaded
    retired_sbe: int | None = None
    retired_dbe: int | None = None
    retired_pending: bool | None = None
    remapped_correctable: int | None = None
    remapped_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None
    clock_reasons: tuple[str, ...] | None = None  # active reasons, None when unknown


@dataclass(frozen=True)
class GpuReport:
    smi: SmiState = "not-gathered"
    smi_error: str | None = None
    driver_version: str | None = None
    gpus: tuple[GpuInfo, ...] = ()
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


# --------------------------------------------------------------------------- parsing

def _na(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or value.startswith(("[", "N/A")) or value in {"Unknown Error", "Not Supported"}:
        return None
    return value


def _int(value: str | None) -> int | None:
    v = _na(value)
    m = re.match(r"\d+", v or "")
    return int(m.group()) if m else None


def _float(value: str | None) -> float | None:
    v = _na(value)
    m = re.match(r"\d+(\.\d+)?", v or "")
    return float(m.group()) if m else None


def _bool(value: str | None) -> bool | None:
    v = (_na(value) or "").lower()
    if v in {"enabled", "yes", "active"}:
        return True
    if v in {"disabled", "no", "not active"}:
        return False
    return None


def _device(value: str | None) -> str | None:
    v = _na(value)
    m = re.fullmatch(r"0x([0-9a-fA-F]{4})([0-9a-fA-F]{4})?", v or "")
    return f"0x{m.group(1).lower()}" if m else None


def _bus(value: str) -> str:
    """Normalise a PCI bus id: CSV and -q both print 00000000:01:00.0."""
    return value.strip().upper()


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
                gpus.append((_bus(gpu.group(1)), current))
                stack = []
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([s[1] for s in stack] + [name])
        if kv:
            (current if current is not None and indent > 0 else top)[path] = kv.group(2).strip()
        stack.append((indent, name))
    return top, gpus


def _from_q(values: dict[str, str], bus: str) -> GpuInfo:
    def first(*keys: str) -> str | None:
        for k in keys:
            if _na(values.get(k)) is not None:
                return values[k]
        return None

    power = ("GPU Power Readings", "Power Readings")
    ecc = [v for k, v in values.items() if k.startswith("ECC Errors/Volatile/")
           and ("Uncorrectable" in k or k.endswith("Double Bit/Total"))]
    ecc_counts = [n for n in (_int(v) for v in ecc) if n is not None]
    reasons: tuple[str, ...] | None = None
    for section in ("Clocks Event Reasons", "Clocks Throttle Reasons", "Clocks Throttle Reasons Active"):
        items = {k.split("/")[-1]: v for k, v in values.items() if k.startswith(section + "/")}
        if items:
            reasons = tuple(n for n, v in items.items() if v.strip() == "Active")
            break
    link = "PCI/GPU Link Info/"
    return GpuInfo(
        bus_id=bus,
        name=_na(values.get("Product Name")),
        device_id=_device(values.get("PCI/Device Id")),
        persistence=_bool(values.get("Persistence Mode")),
        power_limit_w=_float(first(*(f"{p}/Requested Power Limit" for p in power), "Power Readings/Power Limit")),
        power_default_w=_float(first(*(f"{p}/Default Power Limit" for p in power))),
        power_max_w=_float(first(*(f"{p}/Max Power Limit" for p in power))),
        pcie_gen_current=_int(values.get(link + "PCIe Generation/Current")),
        pcie_gen_max=_int(values.get(link + "PCIe Generation/Max")),
        pcie_width_current=_int(values.get(link + "Link Width/Current")),
        pcie_width_max=_int(values.get(link + "Link Width/Max")),
        ecc_uncorrected=sum(ecc_counts) if ecc_counts else None,
        retired_sbe=_int(first("Retired Pages/Single Bit ECC", "Retired Pages/Single Bit ECC/Count")),
        retired_dbe=_int(first("Retired Pages/Double Bit ECC", "Retired Pages/Double Bit ECC/Count")),
        retired_pending=_bool(first("Retired Pages/Pending Page Blacklist", "Retired Pages/Pending Page Retirement",
                                    "Retired Pages/Pending")),
        remapped_correctable=_int(values.get("Remapped Rows/Correctable Error")),
        remapped_uncorrectable=_int(values.get("Remapped Rows/Uncorrectable Error")),
        remap_pending=_bool(values.get("Remapped Rows/Pending")),
        remap_failure=_bool(values.get("Remapped Rows/Remapping Failure Occurred")),
        clock_reasons=reasons,
    )


_CSV_FIELDS: dict[str, tuple[str, Any]] = {
    "name": ("name", _na), "pci.device_id": ("device_id", _device),
    "persistence_mode": ("persistence", _bool), "power.limit": ("power_limit_w", _float),
    "power.default_limit": ("power_default_w", _float), "power.max_limit": ("power_max_w", _float),
    "pcie.link.gen.current": ("pcie_gen_current", _int), "pcie.link.gen.max": ("pcie_gen_max", _int),
    "pcie.link.width.current": ("pcie_width_current", _int), "pcie.link.width.max": ("pcie_width_max", _int),
    "ecc.errors.uncorrected.volatile.total": ("ecc_uncorrected", _int),
    "retired_pages.sbe": ("retired_sbe", _int), "retired_pages.single_bit_ecc.count": ("retired_sbe", _int),
    "retired_pages.dbe": ("retired_dbe", _int), "retired_pages.double_bit.count": ("retired_dbe", _int),
    "retired_pages.pending": ("retired_pending", _bool),
    "remapped_rows.correctable": ("remapped_correctable", _int),
    "remapped_rows.uncorrectable": ("remapped_uncorrectable", _int),
    "remapped_rows.pending": ("remap_pending", _bool), "remapped_rows.failure": ("remap_failure", _bool),
}


def _reasons(mask: str) -> tuple[str, ...] | None:
    v = _na(mask)
    if v is None or not re.fullmatch(r"0x[0-9a-fA-F]+", v):
        return None
    bits = int(v, 16)
    return tuple(name for bit, name in CLOCK_BITS.items() if bits & bit)


def _from_csv(field_list: str, rows: list[str]) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """CSV rows (noheader, nounits) -> (driver version, {bus id: GpuInfo field values})."""
    names = [f.strip() for f in field_list.split(",")]
    driver: str | None = None
    out: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows):
        cells = [c.strip() for c in row.split(", ")]
        if len(cells) != len(names):
            continue
        record = dict(zip(names, cells, strict=True))
        bus = _bus(record.get("pci.bus_id") or record.get("gpu_bus_id") or f"#{n}")
        values = out.setdefault(bus, {})
        for name, cell in record.items():
            if name in _CSV_FIELDS:
                attr, conv = _CSV_FIELDS[name]
                converted = conv(cell)
                if converted is not None:
                    values[attr] = converted
            elif name in {"clocks_event_reasons.active", "clocks_throttle_reasons.active"}:
                reasons = _reasons(cell)
                if reasons is not None:
                    values["clock_reasons"] = reasons
            elif name == "driver_version" and _na(cell):
                driver = cell
    return driver, out


def _scan(text: str) -> tuple[dict[str, list[str]], dict[str, int], dict[str, str], dict[str, str]]:
    blocks: dict[str, list[str]] = {}
    rcs: dict[str, int] = {}
    csv_fields: dict[str, str] = {}
    status: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("@gpu "):
            continue
        kind, _, rest = line[5:].partition(" ")
        if kind == "line":
            name, _, body = rest.partition(" |")
            blocks.setdefault(name, []).append(body)
        elif kind == "rc":
            name, _, code = rest.partition(" ")
            rcs[name] = int(code) if code.strip().isdigit() else 1
        elif kind == "fields":
            name, _, flist = rest.partition(" ")
            csv_fields[name] = flist
        else:
            status[kind] = rest.strip()
    return blocks, rcs, csv_fields, status


def parse_gpu(text: str) -> GpuReport:
    """Pure parser of GPU_GATHER's lines (other lines in ``text`` are ignored)."""
    blocks, rcs, csv_fields, status = _scan(text)

    def one(name: str) -> str | None:
        lines = [ln for ln in blocks.get(name, []) if ln.strip()]
        return lines[0].strip() if lines else None

    smi: SmiState = "not-gathered"
    smi_error: str | None = None
    driver: str | None = None
    gpus: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    if status.get("smi") == "missing":
        smi = "missing"
    elif status.get("smi") == "present" or "smi-q" in blocks or csv_fields:
        top, q_gpus = _tree(blocks.get("smi-q", []))
        driver = _na(top.get("Driver Version"))
        for bus, values in q_gpus:
            info = _from_q(values, bus)
            gpus[bus] = {f.name: getattr(info, f.name) for f in fields(info) if getattr(info, f.name) is not None}
            order.append(bus)
        for name, flist in csv_fields.items():
            if rcs.get(name, 0) != 0:
                continue
            csv_driver, rows = _from_csv(flist, blocks.get(name, []))
            driver = driver or csv_driver
            for bus, values in rows.items():
                if bus not in gpus:
                    order.append(bus)
                gpus.setdefault(bus, {"bus_id": bus}).update(values)
        smi = "ok"
        if not gpus:
            failed = [ln for name in ("csv-core", "smi-q") for ln in blocks.get(name, []) if ln.strip()]
            if failed and "No devices were found" not in " ".join(failed):
                smi, smi_error = "failed", failed[0].strip()
    report_gpus = tuple(GpuInfo(**gpus[b]) for b in order)
    dkms = tuple(ln.strip() for ln in blocks.get("dkms", []) if ln.strip()) if "dkms" in blocks else None
    log: LogState = "not-gathered"
    if status.get("log") in {"dmesg", "journalctl", "unreadable"}:
        log = status["log"]  # type: ignore[assignment]
    elif "xid" in blocks:
        log = "dmesg"
    reboot = {"yes": True, "no": False}.get(status.get("reboot", ""))
    return GpuReport(
        smi=smi, smi_error=smi_error, driver_version=driver, gpus=report_gpus,
        proc_version=one("proc-version"), kernel=one("uname"), vermagic=one("vermagic"),
        module_version=one("modversion"), module_license=one("license"),
        modinfo={"present": True, "missing": False}.get(status.get("modinfo", "")),
        loaded_version=one("loaded"), dkms=dkms,
        reboot_required=reboot, reboot_pkgs=tuple(ln.strip() for ln in blocks.get("reboot-pkgs", []) if ln.strip()),
        log=log, xid_lines=tuple(ln for ln in blocks.get("xid", []) if "Xid" in ln),
    )


def proc_driver_version(proc_version: str | None) -> str | None:
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+(?:\.\d+)+)", proc_version or "")
    return m.group(1) if m else None


# --------------------------------------------------------------------------- checks

def load_xid_table() -> dict[int, dict[str, str]]:
    text = resources.files("provisioner.verify").joinpath("xid.yaml").read_text(encoding="utf-8")
    data = load_bundled_yaml(text)
    return {int(k): {"meaning": str(v["meaning"]), "severity": str(v["severity"])} for k, v in data.items()}


_XID = re.compile(r"NVRM: Xid \(([^)]*)\): (\d+)")


def _skip(check_id: str, reason: str, expected: str | None = None) -> Check:
    return Check(check_id, "skip", None, expected, reason)


def _ver(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _match(gpu: GpuInfo, spec: GpuSpec) -> bool:
    if gpu.device_id is not None:
        return gpu.device_id in {d.lower() for d in spec.pci_device_ids}
    return (gpu.name or "").strip().lower() == spec.name.lower()


def _per_gpu(gpus: Iterable[GpuInfo], check_id: str, test: Any, expected: str, hint: str,
             missing: str) -> Check:
    """One check over every GPU: ``test(gpu)`` -> (status, observed) or None when unknown."""
    results = [(g, test(g)) for g in gpus]
    known = [(g, r) for g, r in results if r is not None]
    if not known:
        return _skip(check_id, missing, expected)
    worst: Status = "pass"
    for _, (status, _obs) in known:
        if status == "fail" or (status == "warn" and worst == "pass"):
            worst = status
    observed = "; ".join(f"{g.bus_id}: {obs}" for g, (_s, obs) in known)
    if len(known) < len(results):
        observed += f" ({len(results) - len(known)} GPU(s) did not report it)"
    return Check(check_id, worst, observed, expected, hint if worst != "pass" else None)


def gpu_checks(report: GpuReport, expected_gpus: list[tuple[GpuSpec, int]], kernel_module: str,
               min_driver: str, persistence: bool, power_limit_w: int | None) -> list[Check]:
    """The gpu.* checks of a host's GPU gather against the profile's GPUs."""
    ids = ["gpu.present", "gpu.driver", "gpu.kernel_module", "gpu.module_kernel", "gpu.persistence",
           "gpu.power_limit", "gpu.pcie", "gpu.ecc", "gpu.xid", "gpu.clocks"]
    if not expected_gpus:
        return [_skip(i, "the profile has no GPUs") for i in ids]
    want = ", ".join(f"{n}x {s.name}" for s, n in expected_gpus)
    host = {"gpu.driver": _driver(report, expected_gpus, min_driver),
            "gpu.kernel_module": _module(report, expected_gpus, kernel_module),
            "gpu.module_kernel": _module_kernel(report), "gpu.xid": _xid(report)}
    if report.smi != "ok" or not report.gpus:
        if report.smi == "not-gathered":
            first = _skip("gpu.present", "nvidia-smi output was not gathered", want)
            reason = "nvidia-smi output was not gathered"
        elif report.smi == "missing":
            first = Check("gpu.present", "fail", "nvidia-smi not found", want,
                          "install the NVIDIA driver (nvidia-smi ships with it) and reboot")
            reason = "nvidia-smi is missing"
        else:
            first = Check("gpu.present", "fail", f"nvidia-smi found no GPU: {report.smi_error or 'no devices'}",
                          want, "is the nvidia module loaded (lsmod | grep nvidia) and the card seen (lspci -d 10de:)?")
            reason = "nvidia-smi sees no GPU"
        return [first, *[host.get(i) or _skip(i, reason) for i in ids[1:]]]
    gpus = report.gpus
    checks = [_present(gpus, expected_gpus, want), host["gpu.driver"], host["gpu.kernel_module"],
              host["gpu.module_kernel"]]
    checks.append(_per_gpu(
        gpus, "gpu.persistence",
        lambda g: None if g.persistence is None else
        ("pass" if g.persistence == persistence else "fail", "enabled" if g.persistence else "disabled"),
        "enabled" if persistence else "disabled",
        "nvidia-smi -pm 1 (or the nvidia-persistenced service) sets it; provision's gpu-settings unit does",
        "persistence mode not reported"))
    checks.append(_power(gpus, power_limit_w))
    checks.append(_pcie(gpus, expected_gpus))
    checks.append(_ecc(gpus))
    checks.append(host["gpu.xid"])
    checks.append(_per_gpu(
        gpus, "gpu.clocks",
        lambda g: None if g.clock_reasons is None else (
            "warn" if any(r in BAD_CLOCK_REASONS for r in g.clock_reasons) else "pass",
            ", ".join(g.clock_reasons) or "none active"),
        f"none of: {', '.join(BAD_CLOCK_REASONS)}",
        "the card is held back by heat or power: check cooling, airflow, PSU cables and the power limit",
        "clock event reasons not reported"))
    return checks


def _present(gpus: tuple[GpuInfo, ...], expected: list[tuple[GpuSpec, int]], want: str) -> Check:
    found = [f"{g.name or '?'} [{g.device_id or 'device id not reported'}]" for g in gpus]
    missing = []
    for spec, count in expected:
        have = sum(1 for g in gpus if _match(g, spec))
        if have < count:
            missing.append(f"{count - have} more {spec.name} ({'/'.join(spec.pci_device_ids)})")
    by_name = any(g.device_id is None for g in gpus)
    observed = f"{len(gpus)} GPU(s): " + ", ".join(found) + (" (matched by name: no PCI device id)" if by_name else "")
    if missing:
        return Check("gpu.present", "fail", observed, want,
                     f"missing {', '.join(missing)}: check `nvidia-smi -L`, seating, power cables and the profile")
    return Check("gpu.present", "pass", observed, want)


def _driver(report: GpuReport, expected: list[tuple[GpuSpec, int]], min_driver: str) -> Check:
    floors = ([v for v in (_ver(s.min_driver) for s, _ in expected if s.min_driver is not None) if v]
              + [v for v in [_ver(min_driver)] if v])
    floor = max(floors) if floors else None
    have = report.driver_version or proc_driver_version(report.proc_version)
    want = f">= {floor}" if floor else None
    if have is None:
        return _skip("gpu.driver", "driver version not reported", want)
    got = _ver(have)
    if floor is None or got is None:
        return Check("gpu.driver", "warn", have, want, "could not compare the driver version")
    if got < floor:
        return Check("gpu.driver", "fail", have, want, f"install driver {floor} or newer (then reboot)")
    return Check("gpu.driver", "pass", have, want)


def _module(report: GpuReport, expected: list[tuple[GpuSpec, int]], kernel_module: str) -> Check:
    allowed = set.intersection(*[set(s.kernel_modules) for s, _ in expected])
    want = kernel_module if kernel_module in allowed else f"{kernel_module} (the GPUs support {', '.join(allowed)})"
    flavour = report.module_flavour
    if flavour is None:
        return _skip("gpu.kernel_module", "/proc/driver/nvidia/version not readable (module not loaded?)", want)
    observed = f"{flavour}: " + (report.proc_version or f"modinfo license {report.module_license} (not loaded)")
    if flavour not in allowed:
        return Check("gpu.kernel_module", "fail", observed, want,
                     f"these GPUs need the {'/'.join(sorted(allowed))} kernel module (e.g. nvidia-open / -open DKMS)")
    if flavour != kernel_module:
        return Check("gpu.kernel_module", "fail", observed, want,
                     f"the profile asks for the {kernel_module} module; install that flavour and reboot")
    return Check("gpu.kernel_module", "pass", observed, want)


def _module_kernel(report: GpuReport) -> Check:
    kernel = report.kernel
    want = f"nvidia module built for {kernel or 'the running kernel'}, no reboot pending"
    if kernel is None:
        return _skip("gpu.module_kernel", "running kernel not reported", want)
    problems: list[str] = []
    notes: list[str] = []
    status = "pass"
    if report.vermagic is None:
        if not report.modinfo and report.dkms is None and report.module_version is None \
                and report.proc_version is None:
            return _skip("gpu.module_kernel", "module information not recorded (modinfo unavailable)", want)
        problems.append(f"no nvidia module installed for {kernel}")
        status = "fail"
    elif report.vermagic.split()[0] != kernel:
        problems.append(f"module built for {report.vermagic.split()[0]}, running {kernel}")
        status = "fail"
    else:
        notes.append(f"module vermagic {report.vermagic.split()[0]}")
    loaded = report.loaded_version or proc_driver_version(report.proc_version)
    if loaded and report.module_version and loaded != report.module_version:
        problems.append(f"loaded {loaded} but {report.module_version} installed: reboot (or reload) pending")
        status = "fail"
    if report.dkms:
        notes.append("dkms: " + "; ".join(report.dkms))
    if report.reboot_required:
        pkgs = ", ".join(report.reboot_pkgs)
        problems.append("reboot required" + (f" by {pkgs}" if pkgs else ""))
        if status == "pass":
            status = "fail" if any("nvidia" in p or "linux-" in p for p in report.reboot_pkgs) else "warn"
    observed = "; ".join(problems + notes) or f"running {kernel}"
    hint = None
    if status != "pass":
        hint = "rebuild with `dkms autoinstall` (or reinstall the driver for this kernel), then reboot"
    return Check("gpu.module_kernel", status, observed, want, hint)  # type: ignore[arg-type]


def _power(gpus: tuple[GpuInfo, ...], power_limit_w: int | None) -> Check:
    def test(g: GpuInfo) -> tuple[str, str] | None:
        if g.power_limit_w is None:
            return None
        target = power_limit_w if power_limit_w is not None else g.power_default_w
        obs = f"{g.power_limit_w:g} W" + (f" (default {g.power_default_w:g} W)" if g.power_default_w else "")
        if target is None:
            return ("pass", obs)
        return ("pass" if abs(g.power_limit_w - target) < 1 else "fail", obs)
    want = f"{power_limit_w} W" if power_limit_w is not None else "the board default"
    return _per_gpu(gpus, "gpu.power_limit", test, want,
                    "set it with `nvidia-smi -pl W` (provision's gpu-settings unit does at boot)",
                    "power limit not reported")


def _pcie(gpus: tuple[GpuInfo, ...], expected: list[tuple[GpuSpec, int]]) -> Check:
    def spec_of(g: GpuInfo) -> GpuSpec | None:
        return next((s for s, _ in expected if _match(g, s)), None)

    def test(g: GpuInfo) -> tuple[str, str] | None:
        spec = spec_of(g)
        if spec is None or spec.pcie_gen is None or spec.pcie_lanes is None:  # unified memory: no PCIe hop
            return None
        if g.pcie_gen_max is not None and g.pcie_width_max is not None:
            ok = g.pcie_gen_max >= spec.pcie_gen and g.pcie_width_max >= spec.pcie_lanes
            cur = ""
            if g.pcie_gen_current is not None:
                cur = f", now Gen{g.pcie_gen_current} x{g.pcie_width_current} (idle cards drop the link)"
            return ("pass" if ok else "warn", f"max Gen{g.pcie_gen_max} x{g.pcie_width_max} compared{cur}")
        if g.pcie_gen_current is not None and g.pcie_width_current is not None:
            ok = g.pcie_gen_current >= spec.pcie_gen and g.pcie_width_current >= spec.pcie_lanes
            return ("pass" if ok else "warn",
                    f"current Gen{g.pcie_gen_current} x{g.pcie_width_current} compared (max not reported"
                    + ("" if ok else "; an idle card drops the link, check under load") + ")")
        return None
    want = ", ".join(sorted({f"Gen{s.pcie_gen} x{s.pcie_lanes} for {s.name}" for s, _ in expected
                             if s.pcie_gen is not None}))
    return _per_gpu(gpus, "gpu.pcie", test, want,
                    "the slot or riser limits the link: use a full x16 CPU slot, check BIOS PCIe settings and risers",
                    "PCIe link not reported (or GPU not in the profile)")


def _ecc(gpus: tuple[GpuInfo, ...]) -> Check:
    def test(g: GpuInfo) -> tuple[str, str] | None:
        parts: list[str] = []
        status = "pass"
        if g.ecc_uncorrected is not None:
            parts.append(f"{g.ecc_uncorrected} uncorrected ECC errors")
            status = "fail" if g.ecc_uncorrected else status
        if g.retired_sbe is not None or g.retired_dbe is not None:
            parts.append(f"retired pages {g.retired_sbe or 0} SBE / {g.retired_dbe or 0} DBE")
            status = "fail" if g.retired_dbe else ("warn" if g.retired_sbe and status == "pass" else status)
        if g.retired_pending:
            parts.append("page retirement pending")
            status = "warn" if status == "pass" else status
        if g.remapped_correctable is not None or g.remapped_uncorrectable is not None:
            parts.append(f"remapped rows {g.remapped_correctable or 0} correctable / "
                         f"{g.remapped_uncorrectable or 0} uncorrectable")
            status = "warn" if g.remapped_uncorrectable and status == "pass" else status
        if g.remap_pending:
            parts.append("row remapping pending (reset the GPU)")
            status = "warn" if status == "pass" else status
        if g.remap_failure:
            parts.append("row remapping FAILED")
            status = "fail"
        return (status, ", ".join(parts)) if parts else None
    return _per_gpu(gpus, "gpu.ecc", test, "0 uncorrected errors, no retired pages or remapped rows pending/failed",
                    "memory errors: reset the GPU (nvidia-smi -r) to apply pending remaps; repeated ones mean RMA",
                    "no ECC information (consumer cards have no ECC reporting)")


def _xid(report: GpuReport) -> Check:
    want = "no Xid events since boot"
    if report.log == "not-gathered":
        return _skip("gpu.xid", "kernel log not gathered", want)
    if report.log == "unreadable":
        return _skip("gpu.xid", "kernel log not readable (dmesg restricted, no journal access): run with --become",
                     want)
    if not report.xid_lines:
        return Check("gpu.xid", "pass", f"no Xid in {report.log}", want)
    table = load_xid_table()
    seen: dict[int, int] = {}
    for line in report.xid_lines:
        m = _XID.search(line)
        if m:
            seen[int(m.group(2))] = seen.get(int(m.group(2)), 0) + 1
    status = "warn"
    parts = []
    for code, n in sorted(seen.items()):
        entry = table.get(code, {"meaning": "unknown Xid", "severity": "warn"})
        if entry["severity"] == "fail":
            status = "fail"
        parts.append(f"Xid {code} x{n}: {entry['meaning']}")
    observed = "; ".join(parts) or f"{len(report.xid_lines)} unparsed Xid line(s)"
    return Check("gpu.xid", status, observed, want,  # type: ignore[arg-type]
                 "see https://docs.nvidia.com/deploy/xid-errors/index.html; last line: " + report.xid_lines[-1].strip())


__all__ = ["GPU_GATHER", "GpuInfo", "GpuReport", "gpu_checks", "load_xid_table", "parse_gpu"]
