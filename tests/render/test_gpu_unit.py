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


def test_multi_gpu_units_want_the_fabric_manager_and_single_gpu_ones_do_not() -> None:
    multi = _files(ROOT / "profiles" / "4x-h100-qwen3-235b-fp8-vllm.yaml")["/etc/systemd/system/llm-server.service"]
    single = _files(ROOT / "examples" / "quickstart.yaml")["/etc/systemd/system/llm-server.service"]
    assert "Wants=network-online.target nvidia-gpu-settings.service nvidia-fabricmanager.service" in multi
    assert "fabricmanager" not in single


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
