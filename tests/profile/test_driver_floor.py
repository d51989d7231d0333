"""A board's min_driver is either its first driver (older is refused) or only a floor known to
support it (catalog min_driver_floor: the first README with a Compatible GPUs list, the
board's own first driver not recorded). Below a floor validate warns, and the rendered
check-gpu script (run for real with a stand-in nvidia-smi printing the recorded A16 row)
starts anyway, while below a known minimum both still refuse."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from provisioner.catalog import load_catalog
from provisioner.errors import ProfileError
from provisioner.render.pipeline import build
from tests.conftest import ROOT, make_profile

# tests/cases/gpu/a16-470-vgpu-host.yaml: an A16 on the vGPU host driver 470.129.04
A16_ROW = "NVIDIA A16, 470.129.04"
README_515 = "https://github.com/NVIDIA/open-gpu-kernel-modules/blob/515.48.07/README.md"


def _profile(tmp_path: Path, gpu: str, version: str) -> Path:
    return make_profile(tmp_path, {"hardware.gpus": [{"model": gpu, "count": 1}], "driver.version": version,
                                   "driver.power_limit_w": None})


def test_every_floor_is_the_first_readme_with_a_compatible_gpus_list() -> None:
    floors = {gpu_id: gpu for gpu_id, gpu in load_catalog().gpus.items() if gpu.min_driver_floor}
    assert "a16" in floors and "rtx-pro-6000-blackwell" not in floors
    for gpu_id, gpu in floors.items():
        assert gpu.min_driver == "515.48.07", gpu_id
        assert "min_driver" in gpu.sources.get(README_515, []), gpu_id


def test_validate_warns_below_a_floor_and_refuses_below_a_known_minimum(tmp_path: Path) -> None:
    built = build(_profile(tmp_path, "a16", "470.129.04"), ignore_fit=True, network=False)
    assert built.spec.min_driver == "" and built.spec.driver_floor == "515.48.07"
    [note] = [w for w in built.rendered.warnings if w.startswith("driver 470.129.04")]
    assert "older than 515.48.07, the oldest driver known to list NVIDIA A16" in note
    with pytest.raises(ProfileError, match="the first that supports NVIDIA RTX PRO 6000"):
        build(_profile(tmp_path, "rtx-pro-6000-blackwell", "470.129.04"), ignore_fit=True, network=False)


def _check_gpu(tmp_path: Path, gpu: str, row: str) -> subprocess.CompletedProcess[str]:
    files = {f.path: f.content.decode()
             for f in build(_profile(tmp_path, gpu, "610.43.02"), ignore_fit=True, network=False).rendered.files}
    script = tmp_path / "check-gpu.sh"
    script.write_text(files["/opt/provision/bin/llm-server-check-gpu.sh"])
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    (tools / "nvidia-smi").write_text(f"#!/bin/sh\necho '{row}'\n")
    (tools / "nvidia-smi").chmod(0o755)
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}"}, cwd=ROOT)


def test_check_gpu_starts_an_a16_on_470_with_a_warning(tmp_path: Path) -> None:
    run = _check_gpu(tmp_path, "a16", A16_ROW)
    assert ("check-gpu: warning: driver 470.129.04 is older than 515.48.07, the oldest driver known to list "
            "these GPUs") in run.stderr
    assert "the minimum for these GPUs" not in run.stderr
    # past the driver line: ok, or (without a GPU here) the nvidia-uvm check after it
    assert run.returncode == 0 or "nvidia-uvm" in run.stderr, run.stderr


def test_check_gpu_refuses_a_driver_below_a_known_minimum(tmp_path: Path) -> None:
    row = "NVIDIA RTX PRO 6000 Blackwell Workstation Edition, 470.129.04"
    run = _check_gpu(tmp_path, "rtx-pro-6000-blackwell", row)
    assert run.returncode == 1
    assert "check-gpu: driver 470.129.04 is older than 570.123.07, the minimum for these GPUs" in run.stderr


def test_init_notes_say_floor_or_first_driver(tmp_path: Path) -> None:
    """`provision init` on a host whose driver is older: upgrade first below a known minimum,
    "it may run" below a floor."""
    from provisioner.draft.host import _driver_notes
    from provisioner.facts.host import HostFacts
    from provisioner.fit.library import Entry

    facts = HostFacts(mem_total_kb=1, cpus=1, nvidia_driver="470.129.04", nvidia_module="proprietary")

    def notes(gpu: str) -> str:
        built = build(_profile(tmp_path, gpu, "610.43.02"), ignore_fit=True, network=False)
        entry = Entry(gpu, tmp_path, built.spec, built.placement, None)  # type: ignore[arg-type]
        return "\n".join(_driver_notes(facts, entry))

    assert "the oldest driver known to list NVIDIA A16 (its first is not recorded): it may run" in notes("a16")
    assert "the first driver for NVIDIA RTX PRO 6000" in notes("rtx-pro-6000-blackwell")
