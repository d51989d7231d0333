"""A live apply (no --root) without harming the test machine: inside a private
mount namespace, /etc, /opt and /var/lib are throwaway copies or tmpfs, and PATH
shims record the system handlers (systemctl, sysctl, ...) instead of running them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_profile

ROOT = Path(__file__).resolve().parent.parent
SHIMS = ("systemctl", "sysctl", "systemd-tmpfiles", "update-initramfs", "dracut", "nvidia-smi")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) for a private mount namespace")

SANDBOX = r"""set -eu
work=$1; shift
mount --make-rprivate /
mkdir -p "$work/etc" "$work/opt"
cp -a /etc/. "$work/etc/"
mount --bind "$work/etc" /etc
mount -t tmpfs tmpfs /opt
mount -t tmpfs tmpfs /var/lib
exec "$@"
"""


def live(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    log = tmp_path / "handlers.log"
    for name in SHIMS:
        shim = shims / name
        shim.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        shim.chmod(0o755)
    script = tmp_path / "sandbox.sh"
    script.write_text(SANDBOX)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    command = [sys.executable, "-m", "provisioner", *args]
    inner = (f"cd {shlex.quote(str(ROOT))} && \"$@\"; code=$?; "
             f"ls /etc/sysctl.d > {shlex.quote(str(tmp_path / 'sysctl-listing'))} 2>&1; exit $code")
    return subprocess.run(["unshare", "-m", "sh", str(script), str(tmp_path / "work"), "sh", "-c", inner,
                           "sandbox", *command], capture_output=True, text=True, check=False, env=env)


def test_live_apply_runs_system_handlers_in_order_and_touches_nothing_outside(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 10}})
    target = Path("/etc/sysctl.d/90-provision-llm-server.conf")
    assert not target.exists(), "the real machine must not have our file before"
    result = live(tmp_path, "apply", str(profile), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    host = data["hosts"][0]
    assert host["generation"] == 1 and host["pending_handlers"] == []
    assert host["handlers"] == ["daemon-reload", "sysctl", "tmpfiles", "initramfs", "gpu-settings",
                                "restart-server"]
    ran = (tmp_path / "handlers.log").read_text().splitlines()
    assert [line for line in ran if not line.startswith("systemctl --version")] == [
        "systemctl daemon-reload", "sysctl --system", "systemd-tmpfiles --create", "update-initramfs -u",
        "systemctl restart nvidia-gpu-settings.service", "systemctl try-restart llm-server.service"]
    assert host["reboot_required"] is True
    assert not target.exists(), "the real /etc is untouched"


def test_live_apply_refuses_an_unknown_sysctl_key_and_changes_nothing(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 10, "vm.no_such_setting": 1}})
    result = live(tmp_path, "apply", str(profile), "--yes")
    assert result.returncode == 1
    assert "unknown sysctl key vm.no_such_setting" in result.stderr
    assert "nothing was replaced" in result.stderr
    assert not (tmp_path / "handlers.log").exists() or "sysctl --system" not in (
        tmp_path / "handlers.log").read_text()
    assert "90-provision" not in (tmp_path / "sysctl-listing").read_text()  # seen from inside
