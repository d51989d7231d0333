"""What a driver package change means for the kernel: DKMS and Secure Boot.

A probe (in the same gather) reads ``dkms status``, the installed kernels
(``/lib/modules``), the running one and ``mokutil --sb-state``; pure parsers
turn that into notes for the plan: is the nvidia module built for the running
AND the newest installed kernel (the one the next boot picks), and does Secure
Boot need the DKMS signing key enrolled. Under ``--root`` only the tree's
kernels are read: dkms and mokutil would describe the build host.

Output formats (parsers tested on recorded outputs in tests/cases/install/):
- dkms 3: ``nvidia/535.86.05, 6.5.0-060500rc5-generic, x86_64: installed``;
  dkms 2: ``nvidia, 396.45, 4.17.11-200.fc28.x86_64, x86_64: installed``,
  possibly followed by `` (original_module exists)``.
- mokutil: ``SecureBoot enabled`` / ``SecureBoot disabled`` (+ ``Platform is
  in Setup Mode``), ``This system doesn't support Secure Boot``, ``EFI
  variables are not supported on this system``.
"""

from __future__ import annotations

import base64
import binascii
import re
import shlex
from dataclasses import dataclass

from provisioner.install import InstallChange, InstallKind

NAME = "kernel:nvidia"
# Where DKMS keeps the key it signs modules with (Debian's dkms: /var/lib/dkms/mok.pub,
# https://wiki.debian.org/SecureBoot#DKMS_and_secure_boot; Ubuntu's shim-signed:
# /var/lib/shim-signed/mok/MOK.der, https://wiki.ubuntu.com/UEFI/SecureBoot/Signing).
MOK_HINT = ("enroll the key DKMS signs the nvidia module with, then reboot and confirm it in MOK Manager: "
            "mokutil --import /var/lib/dkms/mok.pub (Debian) or "
            "mokutil --import /var/lib/shim-signed/mok/MOK.der (Ubuntu)")

_DKMS3 = re.compile(r"^(?P<module>[^/,\s]+)/(?P<version>[^,\s]+), (?P<kernel>[^,\s]+), (?P<arch>[^:\s]+): "
                    r"(?P<state>\w+)")
_DKMS2 = re.compile(r"^(?P<module>[^,\s]+), (?P<version>[^,\s]+), (?P<kernel>[^,\s]+), (?P<arch>[^:\s]+): "
                    r"(?P<state>\w+)")


@dataclass(frozen=True)
class DkmsEntry:
    module: str
    version: str
    kernel: str
    state: str  # added, built, installed


def parse_dkms_status(text: str) -> list[DkmsEntry]:
    """``dkms status`` lines -> entries; lines in neither format (warnings, errors) are skipped."""
    out = []
    for line in text.splitlines():
        match = _DKMS3.match(line.strip()) or _DKMS2.match(line.strip())
        if match:
            out.append(DkmsEntry(match["module"], match["version"], match["kernel"], match["state"]))
    return out


def parse_sb_state(text: str) -> str:
    """``mokutil --sb-state`` -> enabled / disabled / setup-mode / unsupported / unknown."""
    lowered = text.lower()
    if "secureboot enabled" in lowered:
        return "enabled"
    if "setup mode" in lowered:
        return "setup-mode"
    if "secureboot disabled" in lowered:
        return "disabled"
    if "doesn't support secure boot" in lowered or "efi variables are not supported" in lowered:
        return "unsupported"
    return "unknown"


def _version_key(kernel: str) -> list[tuple[int, str]]:
    """Kernel release sort key: numbers compare as numbers (6.8.0-51 < 6.8.0-100)."""
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"[.\-_+~]", kernel)]


def newest_kernel(kernels: list[str]) -> str:
    return max(kernels, key=_version_key) if kernels else ""


def notes(dkms: str, sb: str, running: str, kernels: list[str], *, driver_changes: bool) -> list[str]:
    """One line per thing the operator must know about the nvidia module on this host."""
    out: list[str] = []
    built = {e.kernel for e in parse_dkms_status(dkms) if e.module.startswith("nvidia") and e.state == "installed"}
    newest = newest_kernel(kernels)
    if dkms.strip() and not driver_changes:
        if running and running not in built:
            out.append(f"the nvidia DKMS module is not installed for the running kernel {running}")
        if newest and newest != running and newest not in built:
            out.append(f"the nvidia DKMS module is not built for the newest installed kernel {newest}: "
                       f"the next boot has no GPU driver (dkms autoinstall -k {newest})")
    state = parse_sb_state(sb)
    if state == "enabled" and (driver_changes or built):
        out.append(f"Secure Boot is on: an unsigned nvidia module will not load; {MOK_HINT}")
    return out


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


@dataclass(frozen=True)
class KernelModules:
    """A probe only (never a change): the DKMS and Secure Boot notes of the plan."""

    probe_only = True  # never a change, never in the manifest

    @property
    def name(self) -> str:
        return NAME

    @property
    def kind(self) -> InstallKind:
        return "package"

    def probe(self, root: str) -> str:
        n = shlex.quote(NAME)
        lines = [f"printf '@install %s kernels %s\\n' {n} \"$(ls {shlex.quote(root + '/lib/modules')} "
                 "2>/dev/null | tr '\\n' ' ')\""]
        if not root:
            lines += [
                f"printf '@install %s running %s\\n' {n} \"$(uname -r)\"",
                f"if command -v dkms >/dev/null 2>&1; then printf '@install %s dkms %s\\n' {n} "
                "\"$(dkms status 2>/dev/null | base64 | tr -d '\\n')\"; fi",
                f"if command -v mokutil >/dev/null 2>&1; then printf '@install %s sb %s\\n' {n} "
                "\"$(mokutil --sb-state 2>&1 | base64 | tr -d '\\n')\"; fi"]
        return "\n".join(lines)

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        return None

    def notes(self, found: dict[str, str], driver_changes: bool) -> list[str]:
        return notes(_b64(found.get("dkms", "")), _b64(found.get("sb", "")), found.get("running", ""),
                     found.get("kernels", "").split(), driver_changes=driver_changes)
