"""generations and rollback go wherever apply goes: --host, -i/--limit and --become, over
real sshd instances on loopback, with plan/apply's exit codes and fleet summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_profile
from tests.support import sshd

ROOT = Path(__file__).resolve().parents[2]
SYSCTL = "etc/sysctl.d/90-provision-llm-server.conf"

pytestmark = pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshFarm]:
    started = sshd.start_farm(tmp_path_factory.mktemp("ssh-rollback"), 2)
    try:
        yield started
    finally:
        started.stop()


def provision(*args: str, home: str = "/nonexistent-home") -> subprocess.CompletedProcess[str]:
    # HOME steers where Fabric looks for ~/.ssh/id_ed25519; the ssh client reads the passwd
    # home instead, so these runs (about rollback, not key discovery) go through Fabric
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT, env={**os.environ, "HOME": home, "PROVISION_TRANSPORT": "fabric"})


def home_with_key(tmp_path: Path, farm: sshd.SshFarm) -> str:
    """--host takes no key: it is found where ssh looks for it, ~/.ssh/id_ed25519."""
    ssh = tmp_path / "home" / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "id_ed25519").write_bytes(farm.client_key.read_bytes())
    (ssh / "id_ed25519").chmod(0o600)
    return str(ssh.parent)


def write_inventory(tmp_path: Path, farm: sshd.SshFarm, profile: Path, down: bool = False) -> Path:
    lines = ["hosts:"]
    for host in farm.hosts:
        lines.append(f"  h{host.index}: {{address: {host.address}, port: {sshd.PORT}, user: root, "
                     f"key: {farm.client_key}, root: {tmp_path}/root-{host.index}, profile: {profile}}}")
    if down:  # nothing listens there
        lines.append(f"  down: {{address: 127.0.0.99, port: {sshd.PORT}, user: root, key: {farm.client_key}, "
                     f"root: {tmp_path}/root-down, profile: {profile}}}")
    path = tmp_path / ("inventory-down.yaml" if down else "inventory.yaml")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_generations_and_rollback_over_ssh(farm: sshd.SshFarm, tmp_path: Path) -> None:
    known = ["--known-hosts", str(farm.known_hosts)]
    base = make_profile(tmp_path, name="base.yaml")
    changed = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 5}}, name="changed.yaml")
    for profile in (base, changed):
        applied = provision("apply", "-i", str(write_inventory(tmp_path, farm, profile)), *known, "--yes")
        assert applied.returncode == 0, applied.stderr
    inventory = write_inventory(tmp_path, farm, changed)
    first_sysctl = "vm.swappiness = 10"
    assert first_sysctl not in (tmp_path / "root-1" / SYSCTL).read_text()

    listed = provision("generations", "-i", str(inventory), *known, "--json")
    assert listed.returncode == 0, listed.stderr
    hosts = json.loads(listed.stdout)["hosts"]
    assert [(h["host"], h["current"], len(h["generations"])) for h in hosts] == [("h1", 2, 2), ("h2", 2, 2)]

    rolled = provision("rollback", "-i", str(inventory), "--limit", "h1", *known, "--yes", "--json")
    assert rolled.returncode == 0, rolled.stderr
    [h1] = json.loads(rolled.stdout)["hosts"]
    assert (h1["host"], h1["target"], h1["generation"]) == ("h1", 1, 3)
    assert first_sysctl in (tmp_path / "root-1" / SYSCTL).read_text()
    assert first_sysctl not in (tmp_path / "root-2" / SYSCTL).read_text(), "--limit kept h2 as it was"

    # --host and --become (root's sudo -n): the same rollback, one host named on the command line
    host, home = farm.hosts[1], home_with_key(tmp_path, farm)
    one = provision("rollback", "--host", f"root@{host.address}:{sshd.PORT}", "--root", str(tmp_path / "root-2"),
                    "--become", *known, "--yes", home=home)
    assert one.returncode == 0, one.stderr
    assert first_sysctl in (tmp_path / "root-2" / SYSCTL).read_text()
    single = provision("generations", "--host", f"root@{host.address}:{sshd.PORT}", "--root",
                       str(tmp_path / "root-2"), *known, "--json", home=home)
    assert json.loads(single.stdout)["current"] == 3


def test_a_down_host_fails_alone_with_the_fleet_summary(farm: sshd.SshFarm, tmp_path: Path) -> None:
    known = ["--known-hosts", str(farm.known_hosts)]
    profile = make_profile(tmp_path)
    inventory = write_inventory(tmp_path, farm, profile, down=True)
    listed = provision("generations", "-i", str(inventory), *known)
    assert listed.returncode == 1
    assert "3 hosts: 2 ok, 1 failed (down)" in listed.stderr + listed.stdout
    errors = [line for line in listed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "down" in errors[0] and "Traceback" not in listed.stderr
    rolled = provision("rollback", "-i", str(inventory), "--limit", "down", *known, "--yes")
    assert rolled.returncode == 1 and len(rolled.stderr.strip().splitlines()) == 1, rolled.stderr


def test_login_refused_is_said_in_words_of_ssh(farm: sshd.SshFarm, tmp_path: Path) -> None:
    """No key and no agent: paramiko's "No existing session" became the message."""
    host = farm.hosts[0]
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    proc = subprocess.run([sys.executable, "-m", "provisioner", "generations", "--host",
                           f"root@{host.address}:{sshd.PORT}", "--known-hosts", str(farm.known_hosts)],
                          capture_output=True, text=True, check=False, cwd=ROOT, env={**env, "HOME": str(tmp_path)})
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "login" in proc.stderr and "No existing session" not in proc.stderr and "Errno" not in proc.stderr
