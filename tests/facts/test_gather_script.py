"""The gather script reads its facts with shell builtins: each value is the one the
usual tool prints (awk, getconf, uname, sourcing os-release, systemctl, the former
sed/grep on the NVIDIA version file), checked on this machine and on recorded files;
a converged tree is read with few programs, and files with the expected digest are
not sent back but still compared and shown exactly."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from provisioner.facts.collect import run_gather
from provisioner.facts.gather import gather_script, parse_gather
from provisioner.transport import Completed
from provisioner.transport.local import LocalTransport

CASES = Path(__file__).resolve().parents[1] / "cases" / "gpu"


def sh(script: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, check=False, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return result.stdout


def facts_with(replace: dict[str, str]) -> dict[str, str]:
    """The facts of a gather whose system files are replaced by others (same script otherwise)."""
    script = gather_script([])
    for system_file, stand_in in replace.items():
        assert system_file in script
        script = script.replace(system_file, stand_in)
    return parse_gather(sh(script)).facts.values


def test_facts_are_what_the_usual_tools_print() -> None:
    facts = run_gather(LocalTransport()).facts.values
    assert facts["mem_total_kb"] == sh("awk '/^MemTotal:/ {print $2}' /proc/meminfo").strip()
    assert facts["cpus"] == sh("getconf _NPROCESSORS_ONLN").strip()
    assert facts["kernel"] == os.uname().release and facts["arch"] == os.uname().machine
    if Path("/etc/os-release").exists():
        assert facts["distro"] == sh(". /etc/os-release && printf '%s %s' \"${ID:-unknown}\" \"${VERSION_ID:-}\"")
    if shutil.which("systemctl"):
        assert facts["systemd"] == sh("systemctl --version | awk 'NR==1 {print $2}'").strip()


@pytest.mark.parametrize(("online", "count"), [("0-1", 2), ("0", 1), ("0-3,8-11", 8), ("0,2,4-5", 4)])
def test_cpus_counts_the_online_ranges_as_getconf(tmp_path: Path, online: str, count: int) -> None:
    # the format of /sys/devices/system/cpu/online: Documentation/ABI/testing/sysfs-devices-system-cpu
    (tmp_path / "online").write_text(online + "\n")
    assert facts_with({"/sys/devices/system/cpu/online": str(tmp_path / "online")})["cpus"] == str(count)


def test_distro_takes_quoted_and_bare_values_as_sourcing_does(tmp_path: Path) -> None:
    release = tmp_path / "os-release"
    release.write_text('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID=\'9.4\'\n'
                       'PRETTY_NAME="Rocky Linux 9.4 (Blue Onyx)"\n')
    sourced = sh(f". {release} && printf '%s %s' \"${{ID:-unknown}}\" \"${{VERSION_ID:-}}\"")
    assert facts_with({"/etc/os-release": str(release)})["distro"] == sourced == "rocky 9.4"
    release.write_text("ID=arch\nBUILD_ID=rolling\n")  # Arch Linux has no VERSION_ID
    assert facts_with({"/etc/os-release": str(release)})["distro"] == "arch "


def _recorded_versions() -> dict[str, str]:
    """The recorded /proc/driver/nvidia/version texts of the GPU cases, by case."""
    raws = {case.stem: yaml.safe_load(case.read_text()).get("raw", {}) for case in sorted(CASES.glob("*.yaml"))}
    return {name: raw["proc-version"] for name, raw in raws.items() if raw.get("proc-version")}


@pytest.mark.parametrize("text", list(_recorded_versions().values()), ids=list(_recorded_versions()))
def test_nvidia_driver_and_module_as_sed_and_grep_read_them(tmp_path: Path, text: str) -> None:
    version = tmp_path / "version"
    version.write_text(text)
    facts = facts_with({"/proc/driver/nvidia/version": str(version)})
    driver = sh(f"sed -n 's/.*Kernel Module[^0-9]*\\([0-9][0-9.]*\\).*/\\1/p' {version} | head -n 1").strip()
    module = "open" if "Open Kernel Module" in text else "proprietary"
    assert (facts["nvidia_driver"], facts["nvidia_module"]) == (driver, module)
    assert driver  # every recorded file names its version


def _pci_function(devices: Path, address: str, vendor: str | None, pci_class: str | None) -> None:
    """One function as sysfs shows it: a folder with a ``vendor`` and a ``class`` file
    (Documentation/ABI/testing/sysfs-bus-pci), either missing when None."""
    folder = devices / address
    folder.mkdir(parents=True)
    for name, value in (("vendor", vendor), ("class", pci_class)):
        if value is not None:
            (folder / name).write_text(value + "\n")


def test_nvswitches_are_the_nvidia_bridges_of_class_0680_on_the_pci_bus(tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    _pci_function(devices, "0000:05:00.0", "0x10de", "0x068000")  # NVSwitch
    _pci_function(devices, "0000:06:00.0", "0x10de", "0x068000")  # NVSwitch
    _pci_function(devices, "0000:18:00.0", "0x10de", "0x030200")  # an NVIDIA 3D controller (a GPU)
    _pci_function(devices, "0000:00:1f.0", "0x8086", "0x068000")  # another vendor's bridge of that class
    _pci_function(devices, "0000:07:00.0", "0x10de", "0x060400")  # an NVIDIA PCI-to-PCI bridge
    _pci_function(devices, "0000:08:00.0", "0x10de", None)  # no class file: not counted, no error
    assert facts_with({"/sys/bus/pci/devices": str(devices)})["nvswitches"] == "2"
    assert facts_with({"/sys/bus/pci/devices": str(tmp_path / "none")})["nvswitches"] == "0"
    expected = sum(1 for folder in Path("/sys/bus/pci/devices").glob("*")
                   if (folder / "vendor").read_text().strip() == "0x10de"
                   and (folder / "class").read_text().startswith("0x0680"))
    assert run_gather(LocalTransport()).facts.values["nvswitches"] == str(expected)


class Recording(LocalTransport):
    """This machine's sh, keeping what each script printed (how many bytes came back)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.outputs: list[str] = []

    def run(self, script: str, env: dict[str, str] | None = None) -> Completed:
        result = super().run(script, env)
        self.outputs.append(result.stdout)
        return result


def _converged(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "root"
    files = {"/etc/a.conf": b"alpha\n", "/etc/b.conf": b"beta\n" * 50, "/opt/x/run.sh": b"#!/bin/sh\nexit 0\n"}
    for path, data in files.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_bytes(data)
    return root, files


def test_files_with_the_expected_digest_are_not_sent_but_known(tmp_path: Path) -> None:
    root, files = _converged(tmp_path)
    transport = Recording(root)
    sent = run_gather(transport, paths=list(files))
    skipped = run_gather(transport, paths=list(files), known=files)
    assert "@blob\n@blob-end" in transport.outputs[1] and "@send" not in transport.outputs[1]
    assert len(transport.outputs[1]) < len(transport.outputs[0])
    assert skipped.paths == sent.paths  # the same states, contents included
    assert {p: s.content for p, s in skipped.paths.items()} == files


def test_a_file_that_differs_is_sent_and_the_others_are_not(tmp_path: Path) -> None:
    root, files = _converged(tmp_path)
    (root / "etc/b.conf").write_bytes(b"edited by hand\n")
    transport = Recording(root)
    gathered = run_gather(transport, paths=list(files), known=files)
    assert [ln for ln in transport.outputs[0].splitlines() if ln.startswith("@send ")] == [f"@send {root}/etc/b.conf"]
    assert gathered.paths["/etc/b.conf"].content == b"edited by hand\n"
    assert gathered.paths["/etc/a.conf"].content == b"alpha\n"
    assert gathered.paths["/opt/x/run.sh"].content == files["/opt/x/run.sh"]


def test_a_converged_tree_is_read_with_few_programs(tmp_path: Path) -> None:
    """Every program the no-op gather starts, through a PATH of logging stand-ins for the
    real ones: forks are the host's cost per run."""
    root, files = _converged(tmp_path)
    shims, log = tmp_path / "shims", tmp_path / "exec.log"
    shims.mkdir()
    for name in ("awk", "getconf", "uname", "systemctl", "base64", "tr", "cat", "stat", "sha256sum", "sed", "head",
                 "grep", "readlink", "getenforce"):
        real = shutil.which(name)
        if real:
            (shims / name).write_text(f'#!/bin/sh\necho {name} >> {log}\nexec {real} "$@"\n')
            (shims / name).chmod(0o755)
    script = gather_script(list(files), str(root),
                           expect={p: hashlib.sha256(d).hexdigest() for p, d in files.items()})
    out = sh(script, {"PATH": f"{shims}:{os.environ['PATH']}"})
    assert "@done" in out
    started = log.read_text().split() if log.exists() else []
    assert sorted(started) == sorted(["uname", "stat", "sha256sum"] + (["systemctl"] if shutil.which("systemctl")
                                                                         else []))


def test_a_file_the_last_generation_also_lists_is_read_once(tmp_path: Path) -> None:
    root, files = _converged(tmp_path)
    generation = root / "var/lib/provision/generations/1"
    generation.mkdir(parents=True)
    (generation / "paths").write_text("".join(f"{path}\n" for path in files))
    (generation / "manifest.json").write_text('{"files": {}, "changes": []}')
    (generation / "complete").write_text("")
    (root / "var/lib/provision/last").write_text("1\n")
    transport = Recording(root)
    gathered = run_gather(transport, paths=list(files), known=files)
    stats = [line.split()[-1] for line in transport.outputs[0].splitlines() if line.startswith("@stat ")]
    assert sorted(stats) == sorted([f"{root}{path}" for path in files] + [f"{generation}/manifest.json"])
    assert gathered.manifest == {"files": {}, "changes": []} and gathered.last_generation == 1
    assert "/var/lib/provision/generations/1/manifest.json" not in gathered.paths
