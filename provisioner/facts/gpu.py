"""One record for an NVIDIA GPU as a host reports it, the one parser of
``nvidia-smi --query-gpu`` CSV rows, and the GPU knowledge several readers share
(clock-event reason bits, the Xid table).

verify (the ``@gpu`` probe), init and fit --host (the same probe) and monitor
(the ``@mon`` probe) each query other fields; a field a probe does not ask for
stays None, as does one the driver reports as ``[N/A]`` or ``[Not Supported]``.

Query field names are those of ``nvidia-smi --help-query-gpu``, as recorded for
driver 590.48.01 in
https://github.com/utkuozdemir/nvidia_gpu_exporter/blob/main/internal/captures/linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt
and for driver 595.71.05 in
https://github.com/utkuozdemir/nvidia_gpu_exporter/blob/main/internal/captures/linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05.txt
(``clocks.sm`` is an alias of ``clocks.current.sm``; ``clocks_event_reasons.*`` is
the current name and ``clocks_throttle_reasons.*`` the alias older drivers know
alone). The clock-reason bits are NVML's nvmlClocksEventReasons
(https://docs.nvidia.com/deploy/nvml-api/group__nvmlClocksEventReasons.html).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from importlib import resources
from typing import Any

# nvmlClocksEventReasons bits (NVML API reference, see the module docstring)
CLOCK_BITS: dict[int, str] = {
    0x1: "Idle", 0x2: "Applications Clocks Setting", 0x4: "SW Power Cap", 0x8: "HW Slowdown",
    0x10: "Sync Boost", 0x20: "SW Thermal Slowdown", 0x40: "HW Thermal Slowdown",
    0x80: "HW Power Brake Slowdown", 0x100: "Display Clock Setting",
}
# reasons that mean the card is held back by hardware, heat or power: warn
BAD_CLOCK_REASONS = ("HW Slowdown", "HW Thermal Slowdown", "HW Power Brake Slowdown", "SW Thermal Slowdown")

# "NVRM: Xid (PCI:0000:01:00): 79, pid=..., GPU has fallen off the bus." -> (PCI address, Xid code)
XID_LINE = re.compile(r"NVRM: Xid \(([^)]*)\): (\d+)")


@dataclass(frozen=True)
class Gpu:
    """One GPU: what its probe read, None where it read nothing."""

    index: int | None = None  # nvidia-smi's numbering
    bus_id: str | None = None  # 00000000:01:00.0, upper case
    name: str | None = None
    device_id: str | None = None  # "0x2330", lower case, the device half as the catalog stores it
    driver: str | None = None  # driver_version
    persistence: bool | None = None
    temperature_c: float | None = None
    power_w: float | None = None  # power.draw
    power_limit_w: float | None = None
    power_default_w: float | None = None
    power_max_w: float | None = None
    sm_clock_mhz: float | None = None
    clock_mask: int | None = None
    clock_reasons: tuple[str, ...] | None = None  # active reasons, None when unknown
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    compute_cap: str | None = None  # "8.9": nvidia-smi compute_cap (driver 510 and later)
    utilization_pct: float | None = None
    pcie_gen_current: int | None = None
    pcie_gen_max: int | None = None
    pcie_width_current: int | None = None
    pcie_width_max: int | None = None
    pcie_rx_mbs: float | None = None  # nvidia-smi dmon, MB/s
    pcie_tx_mbs: float | None = None
    ecc_uncorrected: int | None = None  # volatile, since the driver loaded
    retired_sbe: int | None = None
    retired_dbe: int | None = None
    retired_pending: bool | None = None
    remapped_correctable: int | None = None
    remapped_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None

    @property
    def catalog_id(self) -> str | None:
        """The catalog's id for this GPU (None: not in the catalog)."""
        return catalog_gpu_id(self.device_id, self.name)

    def merged(self, other: Gpu) -> Gpu:
        """This record with every value ``other`` read replacing its own."""
        return replace(self, **{f.name: value for f in fields(other) if (value := getattr(other, f.name)) is not None})


def catalog_gpu_id(device_id: str | None, name: str | None) -> str | None:
    """The catalog id of a GPU by PCI device id, else by its exact nvidia-smi name."""
    # the catalog's pydantic models load when a GPU is matched, not on every gather
    from provisioner.catalog import load_catalog  # noqa: PLC0415

    gpus = load_catalog().gpus
    if device_id:
        by_device = [key for key, spec in gpus.items() if device_id.lower() in (d.lower() for d in spec.pci_device_ids)]
        # boards that share a device id (Quadro RTX 6000/8000, A2/A16) are told apart by name
        named = [key for key in by_device if name and gpus[key].name.lower() == name.strip().lower()]
        if named or by_device:
            return (named or by_device)[0]
    if name:
        for key, spec in gpus.items():
            if spec.name.lower() == name.strip().lower():
                return key
    return None


# --------------------------------------------------------------------------- values as nvidia-smi prints them

def text(value: str | None) -> str | None:
    """The value, or None for nvidia-smi's "not known" spellings."""
    if value is None:
        return None
    value = value.strip()
    if not value or value.startswith(("[", "N/A")) or value in {"Unknown Error", "Not Supported"}:
        return None
    return value


def number(value: str | None) -> float | None:
    """The leading number of a value ("-", as dmon prints an unread column, is None)."""
    m = re.match(r"-?\d+(\.\d+)?", text(value) or "")
    return float(m.group()) if m else None


def whole(value: str | None) -> int | None:
    found = number(value)
    return None if found is None else int(found)


def flag(value: str | None) -> bool | None:
    v = (text(value) or "").lower()
    if v in {"enabled", "yes", "active"}:
        return True
    if v in {"disabled", "no", "not active"}:
        return False
    return None


def device(value: str | None) -> str | None:
    """pci.device_id 0x233010DE (device, then vendor) -> "0x2330"."""
    m = re.fullmatch(r"0x([0-9a-fA-F]{4})([0-9a-fA-F]{4})?", text(value) or "")
    return f"0x{m.group(1).lower()}" if m else None


def bus(value: str) -> str:
    """A PCI bus id as CSV and -q both print it: 00000000:01:00.0."""
    return value.strip().upper()


def reasons(mask: int) -> tuple[str, ...]:
    """The names of the clock-event reason bits set in ``mask``."""
    return tuple(name for bit, name in CLOCK_BITS.items() if mask & bit)


def _mask(value: str | None) -> dict[str, Any]:
    m = re.fullmatch(r"0x([0-9a-fA-F]+)", text(value) or "")
    if not m:
        return {}
    bits = int(m.group(1), 16)
    return {"clock_mask": bits, "clock_reasons": reasons(bits)}


def _one(attr: str, convert: Callable[[str], Any]) -> Callable[[str], dict[str, Any]]:
    return lambda cell: {attr: convert(cell)}


# --query-gpu field -> the Gpu values of its cell
_FIELDS: dict[str, Callable[[str], dict[str, Any]]] = {
    "index": _one("index", whole), "pci.bus_id": _one("bus_id", bus), "gpu_bus_id": _one("bus_id", bus),
    "name": _one("name", text), "pci.device_id": _one("device_id", device),
    "driver_version": _one("driver", text), "persistence_mode": _one("persistence", flag),
    "temperature.gpu": _one("temperature_c", number), "power.draw": _one("power_w", number),
    "power.limit": _one("power_limit_w", number), "power.default_limit": _one("power_default_w", number),
    "power.max_limit": _one("power_max_w", number),
    "clocks.sm": _one("sm_clock_mhz", number), "clocks.current.sm": _one("sm_clock_mhz", number),
    "clocks_event_reasons.active": _mask, "clocks_throttle_reasons.active": _mask,
    "memory.used": _one("memory_used_mib", number), "memory.total": _one("memory_total_mib", number),
    "utilization.gpu": _one("utilization_pct", number),
    "pcie.link.gen.current": _one("pcie_gen_current", whole), "pcie.link.gen.max": _one("pcie_gen_max", whole),
    "pcie.link.width.current": _one("pcie_width_current", whole),
    "pcie.link.width.max": _one("pcie_width_max", whole),
    "ecc.errors.uncorrected.volatile.total": _one("ecc_uncorrected", whole),
    "retired_pages.sbe": _one("retired_sbe", whole), "retired_pages.single_bit_ecc.count": _one("retired_sbe", whole),
    "retired_pages.dbe": _one("retired_dbe", whole), "retired_pages.double_bit.count": _one("retired_dbe", whole),
    "retired_pages.pending": _one("retired_pending", flag),
    "remapped_rows.correctable": _one("remapped_correctable", whole),
    "remapped_rows.uncorrectable": _one("remapped_uncorrectable", whole),
    "remapped_rows.pending": _one("remap_pending", flag), "remapped_rows.failure": _one("remap_failure", flag),
}


def query_fields(field_list: str) -> list[str]:
    """The field names of a ``--query-gpu=F1,F2,...`` argument."""
    return [f.strip() for f in field_list.split(",")]


def parse_query_row(names: Sequence[str], row: str) -> Gpu | None:
    """One row of ``nvidia-smi --query-gpu=NAMES --format=csv,noheader,nounits``; None when its
    cells do not match the fields (an error message in place of the rows)."""
    cells = [c.strip() for c in row.split(", ")]
    if len(cells) != len(names):
        return None
    values: dict[str, Any] = {}
    for name, cell in zip(names, cells, strict=True):
        convert = _FIELDS.get(name)
        if convert is not None:
            values.update({k: v for k, v in convert(cell).items() if v is not None})
    return Gpu(**values)


def load_xid_table() -> dict[int, dict[str, str]]:
    """Xid code -> {meaning, severity} (xid.yaml beside this module, with its sources)."""
    raw = resources.files("provisioner.facts").joinpath("xid.yaml").read_text(encoding="utf-8")
    from provisioner.catalog import load_bundled_yaml  # noqa: PLC0415 - yaml only when the table is read

    data = load_bundled_yaml(raw)
    return {int(k): {"meaning": str(v["meaning"]), "severity": str(v["severity"])} for k, v in data.items()}
