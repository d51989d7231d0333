"""The fabric manager through the real gather and plan (and `provision plan`): a host's
NVSwitches decide auto, an image tree never lends the build machine's; the version is the
driver's, from a pin, the tree's dpkg database or nothing yet (then apply resolves it);
an installed, held and enabled one is left alone. dpkg databases here are real files read
by the real dpkg-query (--admindir), the enable is a real `systemctl --root enable`.

The package versions are NVIDIA's published ones: 580.65.06 (NVIDIA/gpu-driver-container
commit 78fa4ac, "add driver 580.65.06") and 570.172.08 (Ubuntu's fabric-manager-570 in
questing, https://packages.ubuntu.com/source/questing/fabric-manager-570)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.converge.plan import Plan
from provisioner.converge.run import plan_host
from provisioner.errors import ProvisionError
from provisioner.install import InstallChange
from provisioner.install.fabricmanager import NAME, FabricManager, upstream, wanted
from provisioner.render.pipeline import build
from provisioner.transport import Completed
from provisioner.transport.local import LocalTransport
from tests.conftest import make_profile
from tests.facts.test_gather_script import _pci_function

SYSFS_DEVICES = "/sys/bus/pci/devices"


class OtherBus(LocalTransport):
    """This machine, with the PCI bus of another (a folder shaped as sysfs shows one): the
    gather script is run as it is, reading that folder where it reads /sys/bus/pci/devices."""

    def __init__(self, devices: Path, root: Path | None = None) -> None:
        super().__init__(root)
        self.devices = devices

    def run(self, script: str, env: dict[str, str] | None = None) -> Completed:
        return super().run(script.replace(SYSFS_DEVICES, str(self.devices)), env)


def hgx_bus(tmp_path: Path) -> Path:
    """Two NVSwitches and a GPU (an HGX board has more of each; two tell the count)."""
    devices = tmp_path / "pci"
    _pci_function(devices, "0000:05:00.0", "0x10de", "0x068000")
    _pci_function(devices, "0000:06:00.0", "0x10de", "0x068000")
    _pci_function(devices, "0000:18:00.0", "0x10de", "0x030200")
    return devices


def dpkg_tree(root: Path, packages: list[tuple[str, str, str]]) -> None:
    """A tree whose dpkg database holds ``packages`` (name, version, Status field)."""
    admin = root / "var" / "lib" / "dpkg"
    (admin / "info").mkdir(parents=True)
    (admin / "updates").mkdir()
    stanzas = [f"Package: {name}\nStatus: {status}\nPriority: optional\nSection: non-free/libs\n"
               f"Maintainer: NVIDIA\nArchitecture: amd64\nVersion: {version}\nDescription: {name}\n"
               for name, version, status in packages]
    (admin / "status").write_text("\n".join(stanzas))


def fabric_changes(plan: Plan) -> list[InstallChange]:
    return [c for c in plan.installs if c.name == NAME]


def plan_of(profile: Path, transport: LocalTransport) -> Plan:
    built = build(profile)
    plan, _ = plan_host(built.rendered, transport, service="llm-server",
                        rerender=built.rendered_for)
    return plan


def test_upstream_version_and_the_decision() -> None:
    assert upstream("580.65.06-1") == "580.65.06"
    assert upstream("570.172.08-0ubuntu1") == "570.172.08"
    assert upstream("1:580.65.06-1") == "580.65.06"
    assert wanted("auto", {"nvswitches": "6"}) and not wanted("auto", {"nvswitches": "0"})
    assert not wanted("auto", {})  # not gathered: not decided for it
    assert not wanted("auto", {"nvswitches": "6", "root": "L2ltYWdl"})  # an image tree: the bus is not its
    assert wanted(True, {"root": "L2ltYWdl"}) and not wanted(False, {"nvswitches": "6"})


def test_a_live_host_with_nvswitches_gets_one_at_the_pinned_drivers_version(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"builtin_files": False, "install.packages": [
        {"name": "nvidia-driver-580-server", "version": "580.65.06-0ubuntu1"}]})
    [change] = fabric_changes(plan_of(profile, OtherBus(hgx_bus(tmp_path))))
    assert change.action == "install" and not change.pending and not change.reboot
    assert "-> 580.65.06 (exactly the driver's version, from the driver pinned in install.packages" in change.summary
    assert change.summary.endswith("held, nvidia-fabricmanager.service enabled")
    assert "fm_driver=580.65.06\n" in change.script and "apt-cache madison" in change.script
    assert change.record == {"kind": "fabricmanager", "hold": True, "driver": "580.65.06"}


def test_without_a_driver_the_plan_says_the_fabric_manager_waits_for_it(tmp_path: Path) -> None:
    if shutil.which("dpkg-query") and subprocess.run(["dpkg-query", "-W", "libnvidia-compute*"],
                                                     capture_output=True, check=False).returncode == 0:
        pytest.skip("this machine has an NVIDIA driver package installed")
    if Path("/proc/driver/nvidia/version").exists():
        pytest.skip("this machine has an NVIDIA driver loaded")
    profile = make_profile(tmp_path, {"builtin_files": False})
    [change] = fabric_changes(plan_of(profile, OtherBus(hgx_bus(tmp_path))))
    assert change.summary.startswith("nvidia-fabricmanager waits for the NVIDIA driver: no driver is installed or "
                                     "pinned yet, so apply takes the version from the installed driver package")
    assert "fm_driver=''\n" in change.script  # resolved when apply runs, never guessed here


def test_a_host_without_nvswitches_gets_none_and_records_none(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"builtin_files": False})
    plan = plan_of(profile, OtherBus(tmp_path / "no-pci"))
    assert not fabric_changes(plan) and NAME not in plan.install_records


def test_an_image_tree_takes_the_tree_drivers_version_and_never_the_build_machines_switches(
        tmp_path: Path) -> None:
    root = tmp_path / "image"
    dpkg_tree(root, [("libnvidia-compute-570", "570.172.08-0ubuntu1", "install ok installed")])
    auto = make_profile(tmp_path, {"builtin_files": False}, name="auto.yaml")
    assert not fabric_changes(plan_of(auto, OtherBus(hgx_bus(tmp_path), root)))
    forced = make_profile(tmp_path, {"builtin_files": False, "install.fabricmanager": True})
    # apply runs no apt into a tree: an install left pending would be an image whose server never starts
    with pytest.raises(ProvisionError, match=r"true under --root needs the fabric manager in the image already, "
                       r"and it is not as wanted: nvidia-fabricmanager not installed -> 570\.172\.08 \(exactly "
                       r"the driver's version, from the installed driver package"):
        plan_of(forced, LocalTransport(root))


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl for its --root enable")
def test_an_image_whose_build_installed_held_and_enabled_it_passes(tmp_path: Path) -> None:
    """Under --root true only checks what the image build did: each missing step is refused,
    naming it, until the tree has it all; then nothing is pending and the server unit wants it."""
    root = tmp_path / "image"
    dpkg_tree(root, [("libnvidia-compute-570", "570.172.08-0ubuntu1", "install ok installed"),
                     ("nvidia-utils-570", "570.172.08-0ubuntu1", "install ok installed"),
                     ("nvidia-fabricmanager-570", "570.172.08-0ubuntu1", "hold ok installed")])
    unit = root / "lib" / "systemd" / "system" / "nvidia-fabricmanager.service"
    unit.parent.mkdir(parents=True)
    # the [Install] section is what `systemctl enable` reads; the rest is not this test's
    unit.write_text("[Unit]\nDescription=FabricManager service\n[Service]\nExecStart=/usr/bin/nv-fabricmanager\n"
                    "[Install]\nWantedBy=multi-user.target\n")
    profile = make_profile(tmp_path, {"builtin_files": False, "install.fabricmanager": True})
    with pytest.raises(ProvisionError, match=r"nvidia-fabricmanager-570 570\.172\.08-0ubuntu1 \(matches driver "
                       r"570\.172\.08\), held, nvidia-fabricmanager.service enabled; the driver's packages held "
                       r"with it \(libnvidia-compute-570, nvidia-utils-570\)"):
        plan_of(profile, LocalTransport(root))
    subprocess.run(["systemctl", f"--root={root}", "enable", "nvidia-fabricmanager.service"], check=True,
                   capture_output=True)
    with pytest.raises(ProvisionError, match=r"held with it \(libnvidia-compute-570, nvidia-utils-570\)"):
        plan_of(profile, LocalTransport(root))
    status = root / "var" / "lib" / "dpkg" / "status"
    status.write_text(status.read_text().replace("install ok installed", "hold ok installed"))  # apt-mark hold
    plan = plan_of(profile, LocalTransport(root))
    assert not fabric_changes(plan)
    assert plan.install_records[NAME] == {"kind": "fabricmanager", "hold": True}


def test_another_versions_fabric_manager_is_replaced_by_the_drivers(tmp_path: Path) -> None:
    root = tmp_path / "image"
    dpkg_tree(root, [("libnvidia-compute-580", "580.65.06-1", "install ok installed"),
                     ("nvidia-fabricmanager-570", "570.172.08-0ubuntu1", "hold ok installed")])
    profile = make_profile(tmp_path, {"builtin_files": False, "install.fabricmanager": True})
    with pytest.raises(ProvisionError, match=r"nvidia-fabricmanager nvidia-fabricmanager-570 570\.172\.08-0ubuntu1 "
                                             r"-> 580\.65\.06"):
        plan_of(profile, LocalTransport(root))
    # what that database's probe says, on a live host (no root): the upgrade is planned, to run
    found = {"manager": "apt", "fm": "nvidia-fabricmanager-570=570.172.08-0ubuntu1=hi;",
             "driver": "libnvidia-compute-580=580.65.06-1=ii;", "nvidia": "libnvidia-compute-580=580.65.06-1=ii;"}
    change = FabricManager(True).with_facts({}).change(found, "")
    assert change is not None and change.action == "upgrade" and not change.pending
    assert change.summary.endswith("; the driver's packages held with it (libnvidia-compute-580)")


def test_plan_shows_it_and_a_profile_without_gpus_cannot_ask_for_it(tmp_path: Path) -> None:
    root = tmp_path / "image"
    dpkg_tree(root, [("libnvidia-compute-570", "570.172.08-0ubuntu1", "install ok installed")])
    profile = make_profile(tmp_path, {"builtin_files": False, "install.fabricmanager": True})
    run = subprocess.run([sys.executable, "-m", "provisioner", "plan", str(profile), "--root", str(root)],
                         capture_output=True, text=True, check=False, env={**os.environ, "NO_COLOR": "1"})
    # an image it is not in would never start its server (it wants the unit, check-gpu needs it running)
    assert run.returncode == 1 and run.stdout == "", run.stdout
    [line] = run.stderr.strip().splitlines()
    assert line.startswith(f"error: {NAME}: install.fabricmanager: true under --root needs the fabric manager "
                           "in the image already, and it is not as wanted: nvidia-fabricmanager not installed -> "
                           "570.172.08 (exactly the driver's version")
    assert "(hint: install it in the image build itself (in the chroot: apt-get install" in line
    # verify of that image fails it (before, a pending install was only skipped there)
    run = subprocess.run([sys.executable, "-m", "provisioner", "verify", str(profile), "--root", str(root),
                          "--only", "install", "--json"], capture_output=True, text=True, check=False)
    [check] = [c for h in json.loads(run.stdout)["hosts"] for c in h["checks"] if c["id"] == f"install.{NAME}"]
    assert run.returncode == 2 and check["status"] == "fail"
    assert "true under --root needs the fabric manager in the image already" in check["observed"]
    cpu = make_profile(tmp_path, {"install.fabricmanager": True, "hardware.gpus": []}, name="cpu.yaml")
    run = subprocess.run([sys.executable, "-m", "provisioner", "validate", str(cpu)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert "install.fabricmanager: true on a profile without GPUs" in run.stdout + run.stderr


def _shims(tmp_path: Path, admin: Path, madison: dict[str, list[str]]) -> tuple[dict[str, str], Path]:
    """PATH for apply's snippet: the real dpkg-query on ``admin``; apt-cache madison printing
    ``madison`` in its own format (`apt-cache madison hello` on Debian 12:
    "     hello |     2.10-3 | http://deb.debian.org/debian bookworm/main amd64 Packages");
    apt-get, apt-mark and systemctl logging what they were asked."""
    shims, log = tmp_path / "shims", tmp_path / "calls.log"
    shims.mkdir()
    real = shutil.which("dpkg-query")
    (shims / "dpkg-query").write_text(f'#!/bin/sh\nexec {real} --admindir={admin} "$@"\n')
    cases = "".join(f"    {name}) printf '%s\\n' " + " ".join(
        f"' {name} | {version} | https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/x86_64"
        f"  Packages'" for version in versions) + " ;;\n" for name, versions in madison.items())
    (shims / "apt-cache").write_text(f'#!/bin/sh\n[ "$1" = madison ] || exit 1\ncase $2 in\n{cases}esac\n')
    for name in ("apt-get", "apt-mark", "systemctl"):
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    return {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}, log


def _apply_snippet(driver: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    from provisioner.install.fabricmanager import install_script

    return subprocess.run(["sh", "-c", f"set -eu\nroot=\n{install_script(driver, hold=True)}"],
                          capture_output=True, text=True, env=env, check=False)


@pytest.mark.skipif(Path("/sys/module/nvidia/version").exists(), reason="this machine has an NVIDIA driver loaded")
@pytest.mark.parametrize(("installed", "madison", "pick"), [
    # NVIDIA's CUDA repository from 580: one name, the driver's version plus "-1"
    ("580.65.06-1", {"nvidia-fabricmanager": ["580.95.05-1", "580.65.06-1"]}, "nvidia-fabricmanager=580.65.06-1"),
    # Ubuntu's archive: the branch name (the plain one is only provided, madison lists nothing)
    ("570.172.08-0ubuntu1", {"nvidia-fabricmanager": [], "nvidia-fabricmanager-570": ["570.172.08-0ubuntu1"]},
     "nvidia-fabricmanager-570=570.172.08-0ubuntu1"),
])
def test_apply_resolves_the_exact_version_from_the_installed_driver_package(
        tmp_path: Path, installed: str, madison: dict[str, list[str]], pick: str) -> None:
    root = tmp_path / "host"
    branch = installed.split(".", maxsplit=1)[0]
    dpkg_tree(root, [(f"libnvidia-compute-{branch}", installed, "install ok installed")])
    env, log = _shims(tmp_path, root / "var" / "lib" / "dpkg", madison)
    run = _apply_snippet("", env)  # plan knew no driver: apply reads the installed package
    assert run.returncode == 0, run.stdout + run.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("apt-get install -y -q") and calls[0].endswith(f" {pick}")
    package = pick.split("=", maxsplit=1)[0]
    # the driver's packages of that version are held with it
    assert calls[1:] == [f"apt-mark hold {package}", f"apt-mark hold libnvidia-compute-{branch}",
                         "systemctl enable nvidia-fabricmanager.service"]
    # the loaded driver is not this one (none is loaded here): it starts after the reboot
    assert f"@warn fabricmanager: {package} starts with driver {upstream(installed)}, after the reboot" in run.stdout


@pytest.mark.skipif(Path("/sys/module/nvidia/version").exists(), reason="this machine has an NVIDIA driver loaded")
def test_apply_refuses_when_apt_has_no_fabric_manager_of_the_drivers_version(tmp_path: Path) -> None:
    root = tmp_path / "host"
    dpkg_tree(root, [])
    env, log = _shims(tmp_path, root / "var" / "lib" / "dpkg", {"nvidia-fabricmanager": ["580.95.05-1"]})
    run = _apply_snippet("580.65.06", env)
    assert run.returncode == 1 and not log.exists()
    assert run.stdout.startswith("@error fabricmanager: no nvidia-fabricmanager package of version 580.65.06 in "
                                 "the apt sources")
    none = _apply_snippet("", env)
    assert none.returncode == 1 and "@error fabricmanager: no NVIDIA driver is installed" in none.stdout


def test_an_image_of_nvlink_gpus_on_auto_is_told_to_choose(tmp_path: Path) -> None:
    root = tmp_path / "image"
    dpkg_tree(root, [])
    sxm = make_profile(tmp_path, {"builtin_files": False, "hardware.gpus": [{"model": "h100-sxm", "count": 2}]})
    plan = plan_of(sxm, LocalTransport(root))
    assert not fabric_changes(plan)
    assert any(w.startswith("install.fabricmanager is auto, which installs nothing into an image tree")
               for w in plan.warnings)
    single = make_profile(tmp_path, {"builtin_files": False}, name="single.yaml")
    assert not [w for w in plan_of(single, LocalTransport(root)).warnings if "fabricmanager" in w]


def test_a_profile_that_drops_it_unholds_it_and_leaves_it_installed(tmp_path: Path) -> None:
    """The last generation recorded a held fabric manager; the profile now says false."""
    root = tmp_path / "image"
    dpkg_tree(root, [("nvidia-fabricmanager-570", "570.172.08-0ubuntu1", "hold ok installed"),
                     ("libnvidia-compute-570", "570.172.08-0ubuntu1", "hold ok installed"),
                     ("nvidia-utils-570", "570.172.08-0ubuntu1", "install ok installed"),
                     ("libnvidia-compute-580", "580.65.06-1", "hold ok installed")])
    generation = root / "var" / "lib" / "provision" / "generations" / "1"
    generation.mkdir(parents=True)
    (generation / "manifest.json").write_text(json.dumps(
        {"generation": 1, "files": {}, "changes": [], "installs": {NAME: {"kind": "fabricmanager", "hold": True}}}))
    (generation / "complete").write_text("")
    (root / "var" / "lib" / "provision" / "last").write_text("1\n")
    off = make_profile(tmp_path, {"builtin_files": False, "install.fabricmanager": False})
    [change] = fabric_changes(plan_of(off, LocalTransport(root)))
    assert change.action == "unhold" and change.pending
    assert change.summary == ("nvidia-fabricmanager and the driver's packages held with it: unhold (left "
                              "installed) (pending: not run under --root)")
    # the snippet, run against that database: apt-mark is asked to unhold the held package
    env, log = _shims(tmp_path, root / "var" / "lib" / "dpkg", {})
    run = subprocess.run(["sh", "-c", f"set -eu\n{change.script}"], capture_output=True, text=True, env=env,
                         check=False)
    assert run.returncode == 0, run.stderr
    # the held driver package of its version; not the unheld one, nor a held one of another version
    assert log.read_text().splitlines() == ["apt-mark unhold nvidia-fabricmanager-570 libnvidia-compute-570"]


def test_two_driver_versions_are_refused_before_and_at_plan(tmp_path: Path) -> None:
    pinned = make_profile(tmp_path, {"install.packages": [
        {"name": "nvidia-driver-580-server", "version": "580.65.06-0ubuntu1"},
        {"name": "libnvidia-compute-580-server", "version": "580.95.05-0ubuntu1"}]})
    run = subprocess.run([sys.executable, "-m", "provisioner", "validate", str(pinned)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 1
    assert ("install.packages pins driver packages of 2 versions (580.65.06, 580.95.05): the fabric manager "
            "must match one exactly") in run.stdout + run.stderr
    root = tmp_path / "image"
    dpkg_tree(root, [("libnvidia-compute-570", "570.172.08-0ubuntu1", "install ok installed"),
                     ("libnvidia-compute-580", "580.65.06-1", "install ok installed")])
    forced = make_profile(tmp_path, {"builtin_files": False, "install.fabricmanager": True}, name="forced.yaml")
    with pytest.raises(ProvisionError, match=r"several NVIDIA driver versions are installed \(570.172.08, 580.65.06\)"):
        plan_of(forced, LocalTransport(root))
