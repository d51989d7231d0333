"""DKMS and Secure Boot: parsers on recorded real outputs (tests/cases/install/, each
citing its source), the notes the plan shows, and the probe through a real gather."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from provisioner.converge.run import plan_host
from provisioner.install.kernel import MOK_HINT, newest_kernel, notes, parse_dkms_status, parse_sb_state
from provisioner.render.pipeline import build
from provisioner.transport.local import LocalTransport
from tests.conftest import make_profile

CASES = Path(__file__).resolve().parents[1] / "cases" / "install"


def _cases(prefix: str) -> list[Path]:
    return sorted(CASES.glob(f"{prefix}*.yaml"))


@pytest.mark.parametrize("case", _cases("dkms"), ids=lambda p: p.stem)
def test_dkms_status_recorded(case: Path) -> None:
    data = yaml.safe_load(case.read_text())
    assert data["source"].startswith("https://")
    parsed = [{"module": e.module, "version": e.version, "kernel": e.kernel, "state": e.state}
              for e in parse_dkms_status(data["output"])]
    assert parsed == data["expect"]


@pytest.mark.parametrize("case", _cases("sb"), ids=lambda p: p.stem)
def test_sb_state_recorded(case: Path) -> None:
    data = yaml.safe_load(case.read_text())
    assert data["source"].startswith("https://")
    assert parse_sb_state(data["output"]) == data["expect"]


def test_newest_kernel_compares_numbers_as_numbers() -> None:
    assert newest_kernel(["6.8.0-51-generic", "6.8.0-100-generic", "6.5.0-060500rc5-generic"]) == "6.8.0-100-generic"
    assert newest_kernel([]) == ""


def _recorded(name: str) -> str:
    return str(yaml.safe_load((CASES / name).read_text())["output"])


def test_notes_module_missing_for_the_newest_kernel_and_secure_boot() -> None:
    dkms = _recorded("dkms2-nvidia-396-three-kernels.yaml")
    kernels = ["4.17.11-200.fc28.x86_64", "4.17.14-202.fc28.x86_64", "4.18.5-200.fc28.x86_64"]
    found = notes(dkms, _recorded("sb-enabled.yaml"), "4.17.14-202.fc28.x86_64", kernels, driver_changes=False)
    assert found == [
        "the nvidia DKMS module is not built for the newest installed kernel 4.18.5-200.fc28.x86_64: the next "
        "boot has no GPU driver (dkms autoinstall -k 4.18.5-200.fc28.x86_64)",
        f"Secure Boot is on: an unsigned nvidia module will not load; {MOK_HINT}"]
    healthy = notes(dkms, _recorded("sb-disabled.yaml"), "4.17.14-202.fc28.x86_64", kernels[:2],
                    driver_changes=False)
    assert healthy == []


def test_notes_for_the_running_kernel_and_a_pending_driver_change() -> None:
    dkms = _recorded("dkms3-nvidia-535-one-kernel.yaml")
    assert notes(dkms, "", "6.8.0-51-generic", ["6.8.0-51-generic"], driver_changes=False) == [
        "the nvidia DKMS module is not installed for the running kernel 6.8.0-51-generic"]
    # while the driver itself changes, its module state is about to change too: only Secure Boot matters
    assert notes(dkms, _recorded("sb-enabled.yaml"), "6.8.0-51-generic", ["6.8.0-51-generic"],
                 driver_changes=True) == [f"Secure Boot is on: an unsigned nvidia module will not load; {MOK_HINT}"]


def test_probe_in_the_gather_reads_dkms_and_mokutil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shims print the recorded outputs; the real gather script runs them and plan shows the notes."""
    shims = tmp_path / "shims"
    shims.mkdir()
    (tmp_path / "dkms.out").write_text(_recorded("dkms3-nvidia-535-one-kernel.yaml"))
    (tmp_path / "sb.out").write_text(_recorded("sb-enabled.yaml"))
    for name, out in (("dkms", "dkms.out"), ("mokutil", "sb.out")):
        (shims / name).write_text(f"#!/bin/sh\ncat {tmp_path / out}\n")
        (shims / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    profile = make_profile(tmp_path, {"builtin_files": False, "install": {"packages": [
        {"name": "nvidia-driver-535", "version": "535.86.05-0ubuntu1"}]}})
    built = build(profile)
    plan, _ = plan_host(built.rendered, LocalTransport(state_dir=str(tmp_path / "state")), service="llm-server")
    assert f"Secure Boot is on: an unsigned nvidia module will not load; {MOK_HINT}" in plan.warnings
    # the driver is about to be installed (a reboot change): the module notes wait for it
    [driver] = plan.installs
    assert driver.reboot and plan.reboot_required
    assert not any("DKMS module" in w for w in plan.warnings)
