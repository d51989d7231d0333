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

ROOT = Path(__file__).resolve().parents[2]
SHIMS = ("systemctl", "sysctl", "systemd-tmpfiles", "update-initramfs", "dracut", "nvidia-smi", "curl")

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
if [ -n "${FAKE_SYSTEMD:-}" ]; then  # make it look like systemd runs (the shims answer)
    mount -t tmpfs tmpfs /run
    mkdir -p /run/systemd/system
fi
exec "$@"
"""


def live(tmp_path: Path, *args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    log = tmp_path / "handlers.log"
    for name in SHIMS:
        shim = shims / name
        body = f'echo "{name} $*" >> {log}\n'
        if name == "curl":  # the server is "ready" once the test creates this file
            body += f'[ -e {tmp_path / "ready"} ]\n'
        if name == "systemctl":  # a unit is enabled/active once the test or `enable --now` says so
            body += (f'case "$1" in\n'
                     f'  is-enabled) [ -e {tmp_path / "enabled"} ] ;;\n'
                     f'  is-active) [ -e {tmp_path / "active"} ] ;;\n'
                     f'  enable) touch {tmp_path / "enabled"} {tmp_path / "active"} ;;\n'
                     f'esac\n')
        shim.write_text("#!/bin/sh\n" + body)
        shim.chmod(0o755)
    script = tmp_path / "sandbox.sh"
    script.write_text(SANDBOX)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", **(env_extra or {})}
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
    assert host["handlers"] == ["sysusers", "daemon-reload", "sysctl", "tmpfiles", "initramfs", "gpu-settings",
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


def test_restart_waits_for_readiness_and_restores_the_old_generation_if_it_never_comes(tmp_path: Path) -> None:
    """--restart on a running server: restart, wait for /health; on a timeout, put the
    previous generation's files back, restart the old server, exit 1."""
    base = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 10}}, name="base.yaml")
    moved = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 10}, "runtime.port": 8081}, name="moved.yaml")
    env = {"FAKE_SYSTEMD": "1", "PROVISION_READY_TIMEOUT": "2"}
    # One namespace for the whole story, so /etc and the state survive between the applies.
    story = tmp_path / "story.sh"
    story.write_text(f"""set -u
py={shlex.quote(sys.executable)}
t={tmp_path}
$py -m provisioner apply {base} --yes --json > {tmp_path}/1.json 2> {tmp_path}/1.err; echo $? > {tmp_path}/1.code
cp /opt/provision/bin/llm-server-run.sh {tmp_path}/run-after-1.sh
$py -m provisioner apply {moved} --yes --restart --json > $t/2.json 2> $t/2.err; echo $? > $t/2.code
cp /opt/provision/bin/llm-server-run.sh {tmp_path}/run-after-2.sh
cat /var/lib/provision/last > {tmp_path}/last-after-2
touch {tmp_path}/ready
$py -m provisioner apply {moved} --yes --restart --json > $t/3.json 2> $t/3.err; echo $? > $t/3.code
cp /opt/provision/bin/llm-server-run.sh {tmp_path}/run-after-3.sh
""")
    (tmp_path / "enabled").touch()  # the server is installed, enabled and running
    (tmp_path / "active").touch()
    result = live(tmp_path, "--version", env_extra=env)  # prepares the shims
    assert result.returncode == 0
    script = tmp_path / "sandbox.sh"
    done = subprocess.run(["unshare", "-m", "sh", str(script), str(tmp_path / "work"), "sh", str(story)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": f"{tmp_path / 'shims'}:{os.environ['PATH']}", **env})
    assert done.returncode == 0, done.stderr
    first = json.loads((tmp_path / "1.json").read_text())["hosts"][0]
    assert first["restart_pending"] == ["restart-server"], "a running server is not restarted without --restart"
    assert (tmp_path / "2.code").read_text().strip() == "1"
    second = json.loads((tmp_path / "2.json").read_text())
    assert "did not answer http://127.0.0.1:8081/health within 1800s" in second["error"]["message"]
    assert "previous generation is back" in second["error"]["hint"]
    assert (tmp_path / "run-after-2.sh").read_bytes() == (tmp_path / "run-after-1.sh").read_bytes()
    assert (tmp_path / "last-after-2").read_text().strip() == "1"
    ran = (tmp_path / "handlers.log").read_text().splitlines()
    assert ran.count("systemctl try-restart llm-server.service") >= 2  # the new one, then the old one again
    assert (tmp_path / "3.code").read_text().strip() == "0", (tmp_path / "3.err").read_text()
    assert json.loads((tmp_path / "3.json").read_text())["hosts"][0]["generation"] == 2
    assert "--port 8081" in (tmp_path / "run-after-3.sh").read_text()


def test_first_live_apply_enables_and_starts_the_server_once(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 10}})
    story = tmp_path / "story.sh"
    py = shlex.quote(sys.executable)
    story.write_text(f"""set -u
{py} -m provisioner apply {profile} --yes --json > {tmp_path}/1.json
{py} -m provisioner apply {profile} --yes --json > {tmp_path}/2.json
""")
    live(tmp_path, "--version")  # prepares the shims
    env = {**os.environ, "PATH": f"{tmp_path / 'shims'}:{os.environ['PATH']}", "FAKE_SYSTEMD": "1"}
    done = subprocess.run(["unshare", "-m", "sh", str(tmp_path / "sandbox.sh"), str(tmp_path / "work"), "sh",
                           str(story)], capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 0, done.stderr
    first = json.loads((tmp_path / "1.json").read_text())["hosts"][0]
    assert "enable-server" in first["handlers"] and "restart-server" not in first["handlers"]
    second = json.loads((tmp_path / "2.json").read_text())["hosts"][0]
    assert second["handlers"] == [] and second["changes"] == []
    ran = (tmp_path / "handlers.log").read_text().splitlines()
    assert ran.count("systemctl enable --now nvidia-gpu-settings.service llm-server.service") == 1
