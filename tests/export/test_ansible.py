"""The Ansible export, for real: ansible-playbook (ansible-core from PyPI) applies it
over SSH to loopback sshd hosts, into a root prefix per host; then `provision plan`
against the same hosts and trees must be empty, and `--check --diff` must change
nothing. The handlers Ansible ran must be provision's, in provision's order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_profile
from tests.support import sshd

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

pytestmark = [pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available())),
              pytest.mark.slow]


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshFarm]:
    started = sshd.start_farm(tmp_path_factory.mktemp("ssh-export"), 2)
    try:
        yield started
    finally:
        started.stop()


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT, env={**os.environ, "HOME": "/nonexistent-home"})


def ansible_playbook(farm: sshd.SshFarm, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    ssh_args = f"-o UserKnownHostsFile={farm.known_hosts} -o StrictHostKeyChecking=yes"
    env = {**os.environ, "ANSIBLE_HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_HOST_KEY_CHECKING": "1"}
    return subprocess.run([str(PLAYBOOK), *args, "-e", f"ansible_ssh_common_args='{ssh_args}'",
                           # the test sshd has no sftp subsystem
                           "-e", "ansible_ssh_transfer_method=piped",
                           "-e", "ansible_python_interpreter=auto_silent"],
                          capture_output=True, text=True, check=False, env=env, timeout=300)


def handlers_run(output: str) -> dict[str, list[str]]:
    """Host -> the handlers that ran (ok/changed, not skipped), in the order they ran."""
    ran: dict[str, list[str]] = {}
    name = None
    for line in output.splitlines():
        header = re.match(r"RUNNING HANDLER \[[^:\]]+ : (.+?)\] \*", line)
        if header:
            name = header.group(1)
            continue
        result = re.match(r"(ok|changed): \[([^\]]+)\]", line)
        if result and name is not None:
            ran.setdefault(result.group(2), []).append(name)
        if line.startswith(("TASK [", "PLAY [", "PLAY RECAP")):
            name = None
    return ran


def recap(output: str) -> dict[str, dict[str, int]]:
    hosts = {}
    for match in re.finditer(r"^(\S+)\s+: ((?:\w+=\d+\s*)+)$", output, re.MULTILINE):
        hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
    return hosts


def test_ansible_applies_the_export_and_provision_then_has_nothing_to_do(farm: sshd.SshFarm,
                                                                          tmp_path: Path) -> None:
    # A file of the profile's own with a handler whose command holds Jinja: it must run
    # as written (never templated by Ansible) with PROVISION_ROOT set, like apply --root.
    hook = "echo '{{ lookup(\"pipe\", \"id\") }}' >> \"$PROVISION_ROOT/hook-ran\""
    profile = make_profile(tmp_path, {
        "files": [{"template": "extra.conf.j2", "dest": "/etc/provision-extra/extra.conf", "mode": "0640",
                   "notify": ["record-hook"]}],
        "handlers": {"record-hook": {"command": hook}}},
        files={"extra.conf.j2": "model={{ model_id }} port={{ profile.runtime.port }}\n"})
    lines = ["hosts:"]
    for host in farm.hosts:
        overrides = ", overrides: {runtime: {port: 8081}}" if host.index == 2 else ""
        lines.append(f"  h{host.index}: {{address: {host.address}, port: {sshd.PORT}, user: root, "
                     f"key: {farm.client_key}, root: {tmp_path}/root-{host.index}, profile: {profile}{overrides}}}")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("\n".join(lines) + "\n")
    out = tmp_path / "export"
    exported = provision("export", "ansible", "-i", str(inventory), "--out", str(out), "--json")
    assert exported.returncode == 0, exported.stderr
    assert len(json.loads(exported.stdout)["roles"]) == 2  # h2's override renders differently

    home = tmp_path / "ansible-home"
    applied = ansible_playbook(farm, home, "-i", str(out / "inventory.yml"), str(out / "site.yml"))
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-2000:]
    assert all(counts["failed"] == 0 and counts["changed"] > 0 for counts in recap(applied.stdout).values())

    known = str(farm.known_hosts)
    for transport in sshd.TRANSPORTS:  # ansible's work, read back over each SSH transport
        with sshd.ssh_masters() as masters, pytest.MonkeyPatch.context() as env:
            env.setenv("XDG_RUNTIME_DIR", str(masters))
            plan = provision("plan", "-i", str(inventory), "--known-hosts", known, "--transport", transport, "--json")
        # every file is as provision renders it; the service user is left: under a root prefix the
        # export reports the sysusers handler that makes it (a system handler) instead of running it
        assert plan.returncode == 2, transport + plan.stdout + plan.stderr
        hosts = json.loads(plan.stdout)["hosts"]
        assert [h["changes"] for h in hosts] == [[], []], transport
        assert [[i["name"] for i in h["installs"]] for h in hosts] == [["user:llm"], ["user:llm"]], transport

    again = ansible_playbook(farm, home, "-i", str(out / "inventory.yml"), str(out / "site.yml"), "--check", "--diff")
    assert again.returncode == 0, again.stdout[-3000:]
    counts = recap(again.stdout)
    assert set(counts) == {"h1", "h2"}
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), again.stdout[-3000:]

    # The profile's handler ran once per host, as written, inside the tree.
    for host in farm.hosts:
        assert (tmp_path / f"root-{host.index}/hook-ran").read_text() == "{{ lookup(\"pipe\", \"id\") }}\n"
        extra = tmp_path / f"root-{host.index}/etc/provision-extra/extra.conf"
        assert extra.stat().st_mode & 0o7777 == 0o640

    # The same handlers, in the same order, as `provision apply --root` on a fresh tree:
    # system handlers reported as pending, the profile's run.
    fresh = provision("apply", str(profile), "--root", str(tmp_path / "fresh"), "--yes", "--json")
    assert fresh.returncode == 0, fresh.stderr
    host = json.loads(fresh.stdout)["hosts"][0]
    expected = host["pending_handlers"] + host["handlers"]
    assert expected[-1] == "record-hook" and "daemon-reload" in expected
    ran = handlers_run(applied.stdout)
    for name in ("h1", "h2"):
        assert [h.removesuffix(" (pending)") for h in ran[name] if h != "reboot required"] == expected
        assert "reboot required" in ran[name]  # a modprobe.d file changed, as provision reports
