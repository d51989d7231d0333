"""The gpu.* checks: pure checks of the GPU probe's report (facts/gpu_probe.py)
against the profile and the catalog."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from packaging.version import InvalidVersion, Version

from provisioner.catalog import GpuSpec
from provisioner.facts.check import Check, Status
from provisioner.facts.gpu import BAD_CLOCK_REASONS, XID_LINE, Gpu, load_xid_table
from provisioner.facts.gpu_probe import GpuReport, proc_driver_version
from provisioner.profile.resolve import driver_floor_note


def _skip(check_id: str, reason: str, expected: str | None = None) -> Check:
    return Check(check_id, "skip", None, expected, reason)


def _ver(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _same_name(gpu: Gpu, spec: GpuSpec) -> bool:
    return (gpu.name or "").strip().lower() == spec.name.lower()


def _match(gpu: Gpu, spec: GpuSpec) -> bool:
    if gpu.device_id is not None:
        if gpu.device_id not in {d.lower() for d in spec.pci_device_ids}:
            return False
        # boards that share a device id (the catalog lists their subsystem ids) are told apart by name
        return not spec.pci_subsystem_ids or gpu.name is None or _same_name(gpu, spec)
    return _same_name(gpu, spec)


def _shares_id(gpu: Gpu, spec: GpuSpec) -> bool:
    """A different board with the device id of ``spec`` (Quadro RTX 6000/8000, A2/A16, ...)."""
    return (gpu.device_id is not None and gpu.device_id in {d.lower() for d in spec.pci_device_ids}
            and not _match(gpu, spec))


def _per_gpu(gpus: Iterable[Gpu], check_id: str, test: Any, expected: str, hint: str,
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


def _present(gpus: tuple[Gpu, ...], expected: list[tuple[GpuSpec, int]], want: str) -> Check:
    found = [f"{g.name or '?'} [{g.device_id or 'device id not reported'}]" for g in gpus]
    missing = []
    for spec, count in expected:
        have = sum(1 for g in gpus if _match(g, spec))
        if have < count:
            missing.append(f"{count - have} more {spec.name} ({'/'.join(spec.pci_device_ids)})")
    by_name = any(g.device_id is None for g in gpus)
    observed = f"{len(gpus)} GPU(s): " + ", ".join(found) + (" (matched by name: no PCI device id)" if by_name else "")
    if missing:
        shared = sorted({f"{g.name} [{g.device_id}] shares its PCI device id with {spec.name} but is another board"
                         for spec, _ in expected for g in gpus if _shares_id(g, spec)})
        hint = (f"{'; '.join(shared)}: name the board that is installed in the profile" if shared else
                "check `nvidia-smi -L`, seating, power cables and the profile")
        return Check("gpu.present", "fail", observed, want, f"missing {', '.join(missing)}: {hint}")
    return Check("gpu.present", "pass", observed, want)


def _driver(report: GpuReport, expected: list[tuple[GpuSpec, int]], min_driver: str) -> Check:
    """Below a GPU's known minimum: fail. Below a floor (catalog min_driver_floor: the oldest
    driver known to list the board, its first not recorded): warn, the driver may run it."""
    hard = [min_driver, *(s.min_driver for s, _ in expected if s.min_driver is not None and not s.min_driver_floor)]
    soft = {s.name: s.min_driver for s, _ in expected if s.min_driver_floor and s.min_driver and _ver(s.min_driver)}
    floor = max((v for v in hard if _ver(v)), key=Version, default=None)
    known = max(soft.values(), key=Version, default=None)
    if known is not None and floor is not None and Version(known) <= Version(floor):
        known = None
    have = report.driver_version or proc_driver_version(report.proc_version)
    want = "; ".join(([f">= {floor}"] if floor else []) + ([f"{known} or newer known to work"] if known else []))
    if have is None:
        return _skip("gpu.driver", "driver version not reported", want or None)
    got = _ver(have)
    if (floor is None and known is None) or got is None:
        return Check("gpu.driver", "warn", have, want or None, "could not compare the driver version")
    if floor is not None and got < Version(floor):
        return Check("gpu.driver", "fail", have, want, f"install driver {floor} or newer (then reboot)")
    if known is not None and got < Version(known):
        names = ", ".join(name for name, v in soft.items() if got < Version(v))
        return Check("gpu.driver", "warn", have, want, driver_floor_note(have, known, names))
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


def _power(gpus: tuple[Gpu, ...], power_limit_w: int | None) -> Check:
    def test(g: Gpu) -> tuple[str, str] | None:
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


def _pcie(gpus: tuple[Gpu, ...], expected: list[tuple[GpuSpec, int]]) -> Check:
    def spec_of(g: Gpu) -> GpuSpec | None:
        return next((s for s, _ in expected if _match(g, s)), None)

    def test(g: Gpu) -> tuple[str, str] | None:
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


def _ecc(gpus: tuple[Gpu, ...]) -> Check:
    def test(g: Gpu) -> tuple[str, str] | None:
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
        m = XID_LINE.search(line)
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


__all__ = ["gpu_checks"]
