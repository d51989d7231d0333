"""The hardened unit still lets CUDA start: nvidia-uvm is loaded before the service (a
modules-load.d file and nvidia-modprobe in nvidia-gpu-settings.service, ordered before it:
the unit's device allow list is built when its cgroup is set up), check-gpu refuses a host without
/dev/nvidia-uvm (run for real, with and without the node), and every engine's caches and
home point into the unit's own writable directories."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.render.pipeline import build
from tests.conftest import ROOT, make_profile

# the first row of a recorded 4x RTX PRO 6000 nvidia-smi (tests/cases/gpu/rtx-pro-6000-4x-610-csv.yaml)
SMI_ROW = "NVIDIA RTX PRO 6000 Blackwell Workstation Edition, 610.43.02"
HARDENING = ("NoNewPrivileges", "ProtectSystem", "ProtectKernelTunables", "ProtectKernelModules",
             "RestrictSUIDSGID", "DevicePolicy")


def _files(profile: Path) -> dict[str, str]:
    return {f.path: f.content.decode() for f in build(profile).rendered.files}


def test_uvm_is_loaded_before_the_sandboxed_start_and_each_hardening_line_says_why() -> None:
    files = _files(ROOT / "examples" / "quickstart.yaml")
    unit = files["/etc/systemd/system/llm-server.service"].splitlines()
    assert not [line for line in unit if "nvidia-modprobe" in line and not line.startswith("#")]
    settings = files["/etc/systemd/system/nvidia-gpu-settings.service"].splitlines()
    assert "ExecStart=-/usr/bin/nvidia-modprobe -u -c0" in settings
    assert "Before=llm-server.service" in settings
    assert any(line.startswith("After=") and "nvidia-gpu-settings.service" in line for line in unit)
    for directive in HARDENING:
        [line] = [i for i, text in enumerate(unit) if text.startswith(f"{directive}=")]
        assert unit[line - 1].startswith("#"), f"{directive} has no comment saying why it keeps the GPU usable"
    assert "nvidia-uvm" in files["/etc/modules-load.d/provision-nvidia.conf"].splitlines()
    for variable, value in (("HOME", "/var/lib/llm-server"), ("XDG_CACHE_HOME", "/var/cache/llm-server"),
                            ("VLLM_CACHE_ROOT", "/var/cache/llm-server/vllm"),
                            ("TRITON_CACHE_DIR", "/var/cache/llm-server/triton"),
                            ("HF_HOME", "/var/cache/llm-server/huggingface")):
        assert f"Environment={variable}={value}" in unit


def test_ollama_gets_its_state_directory_as_a_writable_home() -> None:
    files = _files(ROOT / "profiles" / "rtx-4090-qwen3-30b-ollama.yaml")
    unit = files["/etc/systemd/system/ollama.service"].splitlines()
    assert "Environment=HOME=/var/lib/ollama" in unit and "StateDirectory=ollama" in unit


def _unit(profile: Path, facts: dict[str, str] | None = None) -> str:
    rendered = build(profile).rendered_for(facts)
    return next(f.content.decode() for f in rendered.files if f.path == "/etc/systemd/system/llm-server.service")


def test_the_unit_waits_for_the_fabric_manager_only_where_it_is_installed(tmp_path: Path) -> None:
    # the same decision as the install item's: auto follows the host's NVSwitches, never an image
    # tree's build machine; a 4x PCIe box (no NVSwitch) gets no ordering on a unit it does not have
    h100 = ROOT / "profiles" / "4x-h100-qwen3-235b-fp8-vllm.yaml"
    wants = "Wants=network-online.target nvidia-gpu-settings.service nvidia-fabricmanager.service"
    assert wants in _unit(h100, {"nvswitches": "4"})
    assert any(line.startswith("After=") and "nvidia-fabricmanager.service" in line
               for line in _unit(h100, {"nvswitches": "4"}).splitlines())
    for facts in (None, {"nvswitches": "0"}, {"nvswitches": "4", "root": "L21udC9pbWFnZQ=="}):
        assert "fabricmanager" not in _unit(h100, facts), facts
    forced = make_profile(tmp_path, {"install.fabricmanager": True})
    assert wants in _unit(forced, {"nvswitches": "0", "root": "L21udC9pbWFnZQ=="})
    off = make_profile(tmp_path, {"install.fabricmanager": False}, name="off.yaml")
    assert "fabricmanager" not in _unit(off, {"nvswitches": "4"})


@pytest.fixture
def check_gpu(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The rendered check-gpu script and a PATH whose nvidia-smi prints a recorded row."""
    profile = make_profile(tmp_path, {"hardware.gpus": [{"model": "rtx-pro-6000-blackwell", "count": 1}]})
    script = tmp_path / "check-gpu.sh"
    script.write_text(_files(profile)["/opt/provision/bin/llm-server-check-gpu.sh"])
    script.chmod(0o755)
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(f"#!/bin/sh\necho '{SMI_ROW}'\n")
    (tools / "nvidia-smi").chmod(0o755)
    return script, {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}


@pytest.mark.skipif(Path("/dev/nvidia-uvm").exists(), reason="this machine has nvidia-uvm loaded")
def test_check_gpu_refuses_a_host_without_the_uvm_device(check_gpu: tuple[Path, dict[str, str]]) -> None:
    script, env = check_gpu
    run = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 1
    assert "check-gpu: /dev/nvidia-uvm is missing: nvidia-uvm is not loaded" in run.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private /dev")
def test_check_gpu_passes_once_the_uvm_device_exists(check_gpu: tuple[Path, dict[str, str]]) -> None:
    script, env = check_gpu
    # a private mount namespace with its own /dev holding a character node named nvidia-uvm
    inner = f"mount -t tmpfs none /dev && mknod /dev/nvidia-uvm c 1 3 && sh {script}"
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                         capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("check-gpu: ok: 1 GPU(s), driver 610.43.02, open kernel module")


@pytest.mark.parametrize(("package", "installed", "status"), [
    ("nvidia-fabricmanager", "580.65.06-1", 1),  # the driver before an upgrade to 610.43.02
    ("nvidia-fabricmanager", "610.43.02-1", 0),  # NVIDIA's CUDA repository's revision
    ("nvidia-fabricmanager-610", "1:610.43.02-0ubuntu1", 0),  # an epoch and Ubuntu's revision
])
def test_check_gpu_refuses_a_fabric_manager_of_another_version(tmp_path: Path, package: str, installed: str,
                                                                status: int) -> None:
    """install.fabricmanager: true; the real dpkg-query reads a database holding the fabric manager at
    ``installed`` against the recorded driver 610.43.02 (NVIDIA: the versions must be the same)."""
    from tests.install.test_fabricmanager import dpkg_tree

    profile = make_profile(tmp_path, {"hardware.gpus": [{"model": "rtx-pro-6000-blackwell", "count": 1}],
                                      "install.fabricmanager": True})
    # the uvm node is check-gpu's business before this part (tested above): here one that exists
    text = _files(profile)["/opt/provision/bin/llm-server-check-gpu.sh"].replace("[ -c /dev/nvidia-uvm ]",
                                                                                 "[ -c /dev/null ]")
    script = tmp_path / "check-gpu.sh"
    script.write_text(text)
    dpkg_tree(tmp_path / "host", [(package, installed, "hold ok installed")])
    tools = tmp_path / "bin"
    tools.mkdir()
    stand_ins = {"nvidia-smi": f"echo '{SMI_ROW}'",
                 "systemctl": 'test "$*" = "is-active --quiet nvidia-fabricmanager.service"',
                 "dpkg-query": f'exec {shutil.which("dpkg-query")} --admindir={tmp_path}/host/var/lib/dpkg "$@"'}
    for name, body in stand_ins.items():
        (tools / name).write_text(f"#!/bin/sh\n{body}\n")
        (tools / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}
    run = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == status, run.stderr
    if status:
        assert run.stderr == (f"check-gpu: {package} {installed} does not match driver 610.43.02: "
                              "the fabric manager must be the driver's exact version (apply with "
                              "install.fabricmanager installs it)\n")
    else:
        assert run.stdout.endswith("open kernel module, fabric manager 610.43.02 running\n")
