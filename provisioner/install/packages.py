"""Distribution packages at an exact version, held (apt; dnf hosts are refused for now).

One ``Package`` item per pin, so each shows on its own plan line and in the
manifest. Apply installs every package change of a run in ONE ``apt-get
install`` (``merge_script``): NVIDIA's packages depend on each other at exact
versions, so installing them one by one would make apt pick the candidate
version of the others and fail.

The probe is one ``dpkg-query`` per package: dpkg's Status field starts with
the selection, which ``apt-mark hold`` sets to ``hold`` (dpkg-query(1),
"Status"; apt-mark(8) "hold"), so it tells the version and the hold at once.

Flags as apt 2.6.1 and dpkg 1.21 of Debian 12 document them: apt-get(8)
``--allow-downgrades``, ``--allow-change-held-packages``, ``-o``; ``apt-mark
--help`` hold/unhold; ``dpkg-query --help`` ``-W``, ``-f``, ``--admindir``;
``dpkg --help`` ``--compare-versions``.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from provisioner.errors import ProvisionError
from provisioner.install import InstallChange, InstallKind

# Packages whose change only takes effect after a reboot: a kernel, or a kernel
# module that is loaded while the GPU is in use (the driver, its DKMS source).
REBOOT_PREFIXES = ("nvidia-driver", "nvidia-dkms", "nvidia-kernel", "nvidia-open", "nvidia-fabricmanager",
                   "cuda-drivers", "linux-image", "linux-modules", "kmod-nvidia", "libnvidia-compute")


def needs_reboot(name: str) -> bool:
    return name.startswith(REBOOT_PREFIXES)


def q(text: str) -> str:
    return shlex.quote(text)


@dataclass(frozen=True)
class Package:
    package: str
    version: str
    hold: bool = True

    @property
    def name(self) -> str:
        return f"package:{self.package}"

    @property
    def kind(self) -> InstallKind:
        return "package"

    def record(self) -> dict[str, Any]:
        return {"kind": "package", "package": self.package, "version": self.version, "hold": self.hold}

    def probe(self, root: str) -> str:
        n, p = q(self.name), q(self.package)
        admin = f" --admindir={q(root + '/var/lib/dpkg')}" if root else ""
        return (
            f"if command -v dpkg-query >/dev/null 2>&1; then\n"
            f"    printf '@install %s manager apt\\n' {n}\n"
            f"    s=$(dpkg-query{admin} -W -f='${{Status}}|${{Version}}' {p} 2>/dev/null || true)\n"
            f"    printf '@install %s status %s\\n' {n} \"${{s%%|*}}\"\n"
            f"    printf '@install %s version %s\\n' {n} \"${{s#*|}}\"\n"
            f"    if [ -n \"${{s#*|}}\" ] && [ \"${{s#*|}}\" != \"$s\" ]; then\n"
            f"        if dpkg --compare-versions \"${{s#*|}}\" lt {q(self.version)}; then c=older;"
            f" elif dpkg --compare-versions \"${{s#*|}}\" gt {q(self.version)}; then c=newer; else c=same; fi\n"
            f"        printf '@install %s compare %s\\n' {n} \"$c\"\n"
            f"    fi\n"
            f"elif command -v rpm >/dev/null 2>&1; then\n"
            f"    printf '@install %s manager rpm\\n' {n}\n"
            f"else\n"
            f"    printf '@install %s manager none\\n' {n}\n"
            f"fi")

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        manager = found.get("manager", "none")
        if manager != "apt" and not root:
            raise ProvisionError(
                f"{self.name}: this host has no apt (package manager: {manager})",
                hint="install.packages supports apt (Debian, Ubuntu) so far; install it by other means "
                     "and drop it from install.packages")
        status = found.get("status", "").split()
        installed = found.get("version", "") if status[2:3] == ["installed"] else ""
        held = status[:1] == ["hold"]
        record = self.record()
        if installed == self.version and held == self.hold:
            return None
        if installed == self.version:
            action: Any = "hold" if self.hold else "unhold"
            summary = f"{self.package} {self.version}: {'hold' if self.hold else 'unhold'}"
            reboot = False
        else:
            compare = found.get("compare", "")
            action = "install" if not installed else "upgrade" if compare == "older" else "downgrade"
            before = installed or "not installed"
            summary = f"{self.package} {before} -> {self.version}" + (", held" if self.hold else "")
            reboot = needs_reboot(self.package)
        pending = bool(root)
        if pending:
            summary += " (pending: not run under --root)"
        return InstallChange(self.name, "package", action, summary, self.script(action), record,
                             reboot=reboot, pending=pending)

    def script(self, action: str) -> str:
        """This package alone (apply merges every package change into one run)."""
        return merge_script([(self.package, self.version, self.hold, action)])


def unhold_change(record: dict[str, Any]) -> InstallChange | None:
    """A package an earlier generation held and the profile dropped: unheld, never removed."""
    if not record.get("hold"):
        return None
    name = str(record["package"])
    return InstallChange(f"package:{name}", "package", "unhold", f"{name}: unhold (left installed)",
                         merge_script([(name, str(record["version"]), False, "unhold")]),
                         {"kind": "package", "package": name, "version": record["version"], "hold": False,
                          "dropped": True})


def merge_script(items: Sequence[tuple[str, str, bool, str]]) -> str:
    """(package, version, hold, action) -> one apt-get install, then the holds and unholds."""
    install = [f"{p}={v}" for p, v, _, a in items if a in ("install", "upgrade", "downgrade")]
    holds = [p for p, _, h, a in items if h and a != "unhold"]
    unholds = [p for p, _, h, a in items if not h or a == "unhold"]
    lines = []
    if install:
        words = " ".join(q(w) for w in install)
        # --allow-downgrades: a pin below the installed version is the profile's decision;
        # --allow-change-held-packages: our own hold must not block our own pin change;
        # confold: keep a locally changed config file rather than stop on a prompt.
        lines.append(
            "log=$(mktemp)\n"
            "if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
            f"--allow-change-held-packages -o Dpkg::Options::=--force-confold {words} >\"$log\" 2>&1; then\n"
            "    echo \"@error packages: apt-get install failed: $(grep -E '^E:' \"$log\" | head -n 1)\"\n"
            "    rm -f \"$log\"; exit 1\n"
            "fi\n"
            "rm -f \"$log\"")
    if holds:
        lines.append(f"apt-mark hold {' '.join(q(p) for p in holds)} >/dev/null")
    if unholds:
        lines.append(f"apt-mark unhold {' '.join(q(p) for p in unholds)} >/dev/null")
    return "\n".join(lines)


def merged(changes: list[InstallChange]) -> str:
    """One snippet for every package change of a run (records carry what it needs)."""
    items = [(str(c.record["package"]), str(c.record["version"]), bool(c.record["hold"]), c.action)
             for c in changes]
    return merge_script(items)
