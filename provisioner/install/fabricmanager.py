"""NVIDIA Fabric Manager on NVSwitch boards: installed at the driver's exact version, held, enabled.

On a board whose GPUs reach each other through NVSwitches (HGX/DGX 8-GPU), CUDA cannot
use the GPUs until ``nv-fabricmanager`` has set up the fabric, and the daemon refuses to
run next to a driver of another version: "the version of fabricmanager must match the
NVIDIA driver installed" (NVIDIA's packaging, https://github.com/NVIDIA/apt-packaging-fabric-manager
README; NVIDIA Fabric Manager user guide,
https://docs.nvidia.com/datacenter/tesla/fabric-manager-user-guide/index.html).

Whether a host gets it: ``install.fabricmanager`` true/false, or auto (the default): when
the gather saw NVSwitches on the host's PCI bus (fact ``nvswitches``, facts/snippets/gather.sh).
Under ``--root`` the bus is the build machine's, not the image's, so auto installs nothing
there: an image for an NVSwitch board says ``true``, and since apply runs no package manager
into a tree, ``true`` there only checks that the image build put it in (installed at the
driver's version, held with the driver's packages, enabled) and refuses the plan otherwise:
the server unit wants it and check-gpu refuses the server without it, so a pending install
would make an image that never serves.

With ``hold`` (the default) apply holds the driver's installed packages of that version
too (``nvidia-*``, ``libnvidia-*``): an upgrade that moved the driver alone would leave the
held fabric manager behind it. Dropping it unholds both.

Package names (apt): NVIDIA's CUDA repository names it ``nvidia-fabricmanager-BRANCH``
(e.g. ``nvidia-fabricmanager-535_535.x.y-1``) up to branch 575 and ``nvidia-fabricmanager``
from 580 on, at version ``DRIVER-1`` (NVIDIA/gpu-driver-container, ubuntu22.04/install.sh,
commit 78fa4ac "add driver 580.65.06": ``nvidia-fabricmanager=${DRIVER_VERSION}-1`` for
branch >= 580, ``nvidia-fabricmanager-${DRIVER_BRANCH}=${DRIVER_VERSION}-1`` before).
Ubuntu's archive keeps ``nvidia-fabricmanager-BRANCH`` (e.g. 580.159.03-0ubuntu0.24.04.1,
https://packages.ubuntu.com/source/noble/fabric-manager-580), where ``nvidia-fabricmanager``
is only a name the branch packages provide (and conflict on, so one is installed at a time:
canonical/apt-packaging-fabric-manager, debian/templates/control.in). So apply asks apt
(``apt-cache madison``) for both names and takes the version whose upstream part is the
driver's, exactly; the Debian revision (``-1``, ``-0ubuntu...``) is the repository's.
``libnvidia-nscq`` is not installed: it is the NVSwitch query library DCGM monitors with
(NVIDIA/apt-packaging-libnvidia-nscq README), and the fabric manager package does not
depend on it (control.in above).

The driver version, in this order: a driver package pinned in ``install.packages`` (what
apply installs first); the installed driver package (``libnvidia-compute*``, the CUDA driver
library every apt driver flavour ships: Ubuntu's ``libnvidia-compute-BRANCH[-server]``,
``libnvidia-compute`` from 590 on, NVIDIA Driver Installation Guide, "Recent Updates", table
"Ubuntu 590 package renames"); the loaded module (fact ``nvidia_driver``). With
none of them plan says the fabric manager waits for the driver, and apply reads it from the
installed driver package (or ``/sys/module/nvidia/version``) when it runs; never a guess.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from provisioner.errors import ProvisionError
from provisioner.install import InstallChange, InstallKind

NAME = "fabricmanager:nvidia"
UNIT = "nvidia-fabricmanager.service"
Setting = bool | Literal["auto"]
# an NVIDIA driver version, e.g. 570.124.06 (older ones: 535.54.03; some have two parts)
DRIVER_VERSION = re.compile(r"^[0-9]{3,}\.[0-9]+(\.[0-9]+)?$")
# the fabric manager service package (not -dev, not the cuda-drivers-fabricmanager meta package)
SERVICE_PACKAGE = re.compile(r"^nvidia-fabricmanager(-[0-9]+)?$")
# install.packages pins whose version is the driver's (Ubuntu and NVIDIA's CUDA repository)
DRIVER_PIN = re.compile(r"^(nvidia-driver|nvidia-open|cuda-drivers|nvidia-headless(-no-dkms)?|libnvidia-compute)"
                        r"(-[0-9]+)?(-server)?(-open)?$")


def upstream(version: str) -> str:
    """A Debian version's upstream part: no epoch, no revision (deb-version(7))."""
    without_epoch = re.sub(r"^[0-9]+:", "", version.strip())
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def wanted(setting: Setting, facts: Mapping[str, str]) -> bool:
    """Does this host get the fabric manager? ``facts`` as gathered (``root`` set: an image tree)."""
    if isinstance(setting, bool):
        return setting
    if facts.get("root"):
        return False  # the NVSwitches the gather counted are the build machine's, not the image's
    count = facts.get("nvswitches", "")
    return count.isdigit() and int(count) > 0


def pinned_driver(pins: Sequence[tuple[str, str]]) -> list[str]:
    """The driver versions of the driver packages among (name, version) pins."""
    found = [upstream(version) for name, version in pins if DRIVER_PIN.match(name)]
    return sorted({v for v in found if DRIVER_VERSION.match(v)})


def dpkg_entries(text: str) -> list[tuple[str, str, str]]:
    """The probe's ``PACKAGE=VERSION=ABBREV;`` list -> (package, version, dpkg's status abbreviation)."""
    out = []
    for entry in text.split(";"):
        parts = entry.strip().split("=")
        if len(parts) == 3 and parts[0]:
            out.append((parts[0], parts[1], parts[2].strip()))
    return out


def _installed(entries: list[tuple[str, str, str]]) -> list[tuple[str, str, bool]]:
    """(package, version, held) of the installed ones (status abbreviation ``?i``; ``h`` first: held)."""
    return [(p, v, abbrev[:1] == "h") for p, v, abbrev in entries if abbrev[1:2] == "i"]


def _q(text: str) -> str:
    return shlex.quote(text)


# awk: print the first installed fabric manager package whose upstream version is $want
_HAVE = (r"""awk -v want="$fm_driver" '$1 ~ /^.i/ && $2 ~ /^nvidia-fabricmanager(-[0-9]+)?$/ """
         r"""{u=$3; sub(/^[0-9]+:/,"",u); sub(/-[^-]*$/,"",u); if (u==want) {print $2; exit}}'""")
# awk over `apt-cache madison NAME` ("NAME | VERSION | SOURCE"): the first version of upstream $want
_PICK = (r"""awk -F'|' -v want="$fm_driver" '{v=$2; gsub(/ /,"",v); u=v; sub(/^[0-9]+:/,"",u); """
         r"""sub(/-[^-]*$/,"",u); if (u==want) {print v; exit}}'""")
_DPKG_LIST = "-W -f='${db:Status-Abbrev} ${Package} ${Version}\\n'"
# the NVIDIA driver packages: what the probe lists (``nvidia``) and apply holds with the fabric manager
DRIVER_GLOBS = ("nvidia-*", "libnvidia-*")
# awk: the installed driver packages (not the fabric manager's own) whose upstream version is $want
_OF_VERSION = (r"""awk -v want="$fm_driver" '$1 ~ /^.i/ && $2 !~ /^nvidia-fabricmanager/ """
               r"""{u=$3; sub(/^[0-9]+:/,"",u); sub(/-[^-]*$/,"",u); if (u==want) print $2}'""")
# the driver's packages are held with it: an `apt upgrade` (or unattended-upgrades) that moved the
# driver past the held fabric manager would leave check-gpu refusing the server after the reboot
_HOLD_DRIVER = [
    f"fm_drivers=$(dpkg-query {_DPKG_LIST} 'nvidia-*' 'libnvidia-*' 2>/dev/null | {_OF_VERSION})",
    "# shellcheck disable=SC2086 # package names hold no blanks",
    'if [ -n "$fm_drivers" ]; then apt-mark hold $fm_drivers >/dev/null; fi',
]


def install_script(driver: str, hold: bool) -> str:
    """Apply's snippet: the driver's version (given, else the installed driver package), the
    fabric manager package of exactly that version, held, enabled, started if that driver is loaded."""
    no_driver = _q("@error fabricmanager: no NVIDIA driver is installed, so no fabric manager version can "
                   "match it: install the driver first (install.packages)")
    lines = [
        f"fm_driver={_q(driver)}",
        'if [ -z "$fm_driver" ]; then',
        "    # the installed driver package: install.packages ran before this step",
        f"    fm_driver=$(dpkg-query {_DPKG_LIST} 'libnvidia-compute*' 2>/dev/null"
        " | awk '$1 ~ /^.i/ {u=$3; sub(/^[0-9]+:/,\"\",u); sub(/-[^-]*$/,\"\",u); print u}' | sort -u)",
        "fi",
        'if [ -z "$fm_driver" ] && [ -r /sys/module/nvidia/version ]; then',
        "    IFS= read -r fm_driver < /sys/module/nvidia/version",
        "fi",
        f'[ -n "$fm_driver" ] || {{ echo {no_driver}; exit 1; }}',
        'case $fm_driver in *[!0-9.]*)',
        '    echo "@error fabricmanager: several NVIDIA driver versions are installed'
        ' ($(printf \'%s\' "$fm_driver" | tr \'\\n\' \' \')):'
        ' remove all but one"; exit 1 ;;',
        "esac",
        f"fm_package=$(dpkg-query {_DPKG_LIST} 'nvidia-fabricmanager*' 2>/dev/null | {_HAVE})",
        'if [ -z "$fm_package" ]; then',
        "    fm_pick=",
        '    for fm_name in nvidia-fabricmanager "nvidia-fabricmanager-${fm_driver%%.*}"; do',
        f'        fm_version=$(apt-cache madison "$fm_name" 2>/dev/null | {_PICK})',
        '        if [ -n "$fm_version" ]; then fm_pick="$fm_name=$fm_version"; break; fi',
        "    done",
        '    [ -n "$fm_pick" ] || { echo "@error fabricmanager: no nvidia-fabricmanager package of version'
        ' $fm_driver in the apt sources (apt-cache madison nvidia-fabricmanager'
        ' nvidia-fabricmanager-${fm_driver%%.*}): add NVIDIA\'s CUDA repository or Ubuntu\'s multiverse,'
        ' then apt-get update"; exit 1; }',
        "    log=$(mktemp)",
        "    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
        '--allow-change-held-packages -o Dpkg::Options::=--force-confold "$fm_pick" >"$log" 2>&1; then',
        '        echo "@error fabricmanager: apt-get install $fm_pick failed: $(grep -E \'^E:\' "$log" | head -n 1)"',
        '        rm -f "$log"; exit 1',
        "    fi",
        '    rm -f "$log"',
        '    fm_package=${fm_pick%%=*}',
        "fi",
        'apt-mark hold "$fm_package" >/dev/null' if hold else 'apt-mark unhold "$fm_package" >/dev/null',
        *(_HOLD_DRIVER if hold else []),
        f"systemctl enable {UNIT} >/dev/null 2>&1 || "
        f"{{ echo '@error fabricmanager: systemctl enable {UNIT} failed'; exit 1; }}",
        "fm_loaded=",
        "if [ -r /sys/module/nvidia/version ]; then IFS= read -r fm_loaded < /sys/module/nvidia/version; fi",
        'if [ "$fm_loaded" = "$fm_driver" ]; then',
        f"    systemctl start {UNIT} || {{ echo '@error fabricmanager: {UNIT} did not start "
        f"(journalctl -u {UNIT})'; exit 1; }}",
        "else",
        '    echo "@warn fabricmanager: $fm_package starts with driver $fm_driver, after the reboot"',
        "fi",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class FabricManager:
    """The fabric manager of a host: what the profile says, completed by ``with_facts``."""

    setting: Setting = "auto"
    pinned: str = ""  # the driver version a driver package of install.packages pins ("" none)
    hold: bool = True
    nvlink: bool = False  # several GPUs whose catalog entry has NVLink: an NVSwitch board is possible
    # from the host's facts (with_facts): does it get one, the loaded driver's version, an image tree?
    decided: bool = False
    host_wants: bool = False
    loaded: str = ""
    image: bool = False

    @property
    def wants(self) -> bool:
        """true, or auto where the host's facts say so (before them: only true)."""
        return self.host_wants if self.decided else self.setting is True

    @property
    def name(self) -> str:
        return NAME

    @property
    def kind(self) -> InstallKind:
        return "fabricmanager"

    @property
    def probe_only(self) -> bool:
        """Not for this host (auto without NVSwitches): no change, no record."""
        return not self.wants

    def with_facts(self, facts: Mapping[str, str]) -> FabricManager:
        driver = facts.get("nvidia_driver", "")
        loaded = driver if not facts.get("root") and DRIVER_VERSION.match(driver) else ""
        return dataclasses.replace(self, decided=True, host_wants=wanted(self.setting, facts), loaded=loaded,
                                   image=bool(facts.get("root")))

    def notes(self, found: dict[str, str], driver_changes: bool) -> list[str]:
        """Under --root, auto cannot see the image's board: say so where NVSwitches are possible."""
        if self.setting == "auto" and self.image and self.nvlink:
            return ["install.fabricmanager is auto, which installs nothing into an image tree (the NVSwitches "
                    "the gather sees are this machine's): set it to true if the image boots on an NVSwitch "
                    "board (HGX/DGX 8-GPU), false otherwise"]
        return []

    def record(self) -> dict[str, Any]:
        return {"kind": "fabricmanager", "hold": self.hold}

    def probe(self, root: str) -> str:
        n = _q(NAME)
        admin = f" --admindir={_q(root + '/var/lib/dpkg')}" if root else ""
        listed = "-W -f='${Package}=${Version}=${db:Status-Abbrev};'"
        systemctl = f"systemctl --root={_q(root)}" if root else "systemctl"
        if self.setting == "auto" and root:
            return ":  # fabric manager: auto installs none into an image tree"
        # auto asks dpkg and systemctl only where the gather (facts/snippets/gather.sh, which runs
        # before every probe in the same shell) counted NVSwitches: each program costs a fork
        when = "true" if self.setting is True else '[ "${gather_nvswitches:-0}" -gt 0 ]'
        return (
            f"if ! {when}; then\n"
            f"    :\n"
            f"elif command -v dpkg-query >/dev/null 2>&1; then\n"
            f"    printf '@install %s manager apt\\n' {n}\n"
            f"    printf '@install %s fm %s\\n' {n} \"$(dpkg-query{admin} {listed} 'nvidia-fabricmanager*' "
            f"2>/dev/null)\"\n"
            f"    printf '@install %s driver %s\\n' {n} \"$(dpkg-query{admin} {listed} 'libnvidia-compute*' "
            f"2>/dev/null)\"\n"
            f"    printf '@install %s nvidia %s\\n' {n} \"$(dpkg-query{admin} {listed} "
            f"{' '.join(_q(g) for g in DRIVER_GLOBS)} 2>/dev/null)\"\n"
            f"elif command -v rpm >/dev/null 2>&1; then\n"
            f"    printf '@install %s manager rpm\\n' {n}\n"
            f"else\n"
            f"    printf '@install %s manager none\\n' {n}\n"
            f"fi\n"
            f"if {when} && command -v systemctl >/dev/null 2>&1; then\n"
            f"    printf '@install %s enabled %s\\n' {n} \"$({systemctl} is-enabled {UNIT} 2>/dev/null)\"\n"
            f"fi")

    def driver(self, found: dict[str, str]) -> tuple[str, str]:
        """(version, where it comes from): the pin, the installed package, the loaded module, or ("", "")."""
        if self.pinned:
            return self.pinned, "the driver pinned in install.packages"
        installed = sorted({upstream(v) for _, v, _ in _installed(dpkg_entries(found.get("driver", "")))})
        installed = [v for v in installed if DRIVER_VERSION.match(v)]
        if len(installed) > 1:
            raise ProvisionError(f"{NAME}: several NVIDIA driver versions are installed ({', '.join(installed)})",
                                 hint="the fabric manager must match one driver exactly: remove all but one, "
                                      "or pin the driver in install.packages")
        if installed:
            return installed[0], "the installed driver package"
        if self.loaded:
            return self.loaded, "the loaded driver"
        return "", ""

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        if not self.wants:
            return None
        manager = found.get("manager", "none")
        if manager != "apt" and not root:
            raise ProvisionError(f"{NAME}: this host has no apt (package manager: {manager})",
                                 hint="provision installs the fabric manager with apt (Debian, Ubuntu); install "
                                      "it by other means and set install.fabricmanager: false")
        driver, source = self.driver(found)
        fm = [e for e in _installed(dpkg_entries(found.get("fm", ""))) if SERVICE_PACKAGE.match(e[0])]
        enabled = found.get("enabled", "") == "enabled"
        matching = [e for e in fm if upstream(e[1]) == driver] if driver else []
        unheld = unheld_driver(found, driver) if self.hold else []
        if matching and len(fm) == 1 and matching[0][2] == self.hold and enabled and not unheld:
            return None
        action, summary = _describe(fm, matching, driver, source, enabled, self.hold)
        if unheld:
            action = action if action != "enable" else "hold"
            summary += f"; the driver's packages held with it ({', '.join(unheld)})"
        if root:
            raise _not_in_image(summary)
        record = {**self.record(), "driver": driver}
        return InstallChange(NAME, "fabricmanager", action, summary, install_script(driver, self.hold), record)


def unheld_driver(found: dict[str, str], driver: str) -> list[str]:
    """The installed driver packages of version ``driver`` (not the fabric manager) that are not held."""
    return sorted(p for p, v, held in _installed(dpkg_entries(found.get("nvidia", "")))
                  if not held and not p.startswith("nvidia-fabricmanager") and upstream(v) == driver)


def _not_in_image(summary: str) -> ProvisionError:
    """Under --root apply runs no package manager, and the server unit wants the fabric manager
    (check-gpu refuses to start it without): an image the install would be pending in never serves."""
    return ProvisionError(
        f"{NAME}: install.fabricmanager: true under --root needs the fabric manager in the image already, "
        f"and it is not as wanted: {summary}",
        hint="install it in the image build itself (in the chroot: apt-get install nvidia-fabricmanager[-BRANCH] "
             "of the driver's exact version, apt-mark hold it and the driver's packages, systemctl enable "
             "nvidia-fabricmanager.service), then plan again; or install.fabricmanager: false for an image "
             "whose machines have no NVSwitches")


def _describe(fm: list[tuple[str, str, bool]], matching: list[tuple[str, str, bool]], driver: str, source: str,
              enabled: bool, hold: bool) -> tuple[Any, str]:
    """(action, plan line) for a fabric manager that is not yet as wanted."""
    after = f", {'held' if hold else 'not held'}, {UNIT} enabled"
    if not driver:
        return "install", ("nvidia-fabricmanager waits for the NVIDIA driver: no driver is installed or pinned "
                           "yet, so apply takes the version from the installed driver package when it runs" + after)
    if matching:
        package, version, held = matching[0]
        what = ("hold" if hold else "unhold") if held != hold else "enable"
        return what, f"{package} {version} (matches driver {driver}){after}"
    before = ", ".join(f"{p} {v}" for p, v, _ in fm) or "not installed"
    action = "install" if not fm else "upgrade" if _older(fm[0][1], driver) else "downgrade"
    return action, (f"nvidia-fabricmanager {before} -> {driver} (exactly the driver's version, from {source}; "
                    f"package and revision from apt's sources at apply){after}")


def _older(version: str, driver: str) -> bool:
    def key(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"[0-9]+", text))
    return key(upstream(version)) < key(driver)


def unhold_change(record: dict[str, Any]) -> InstallChange | None:
    """The profile dropped the fabric manager: its package is unheld, left installed and enabled."""
    if not record.get("hold"):
        return None
    # the driver's packages apply held with it: the held ones of the fabric manager's version
    script = (f"fm_held=$(dpkg-query {_DPKG_LIST} 'nvidia-fabricmanager*' 2>/dev/null | awk '$1 ~ /^h/ {{print $2}}')\n"
              f"fm_driver=$(dpkg-query {_DPKG_LIST} 'nvidia-fabricmanager*' 2>/dev/null"
              " | awk '$1 ~ /^.i/ {u=$3; sub(/^[0-9]+:/,\"\",u); sub(/-[^-]*$/,\"\",u); print u; exit}')\n"
              'fm_drivers=\n'
              f'if [ -n "$fm_driver" ]; then\n'
              f"    fm_drivers=$(dpkg-query {_DPKG_LIST} 'nvidia-*' 'libnvidia-*' 2>/dev/null"
              f" | awk '$1 ~ /^h/' | {_OF_VERSION})\n"
              "fi\n"
              "# shellcheck disable=SC2086 # package names hold no blanks\n"
              'if [ -n "$fm_held$fm_drivers" ]; then apt-mark unhold $fm_held $fm_drivers >/dev/null; fi')
    return InstallChange(NAME, "fabricmanager", "unhold",
                         "nvidia-fabricmanager and the driver's packages held with it: unhold (left installed)",
                         script, {"kind": "fabricmanager", "hold": False, "dropped": True})
