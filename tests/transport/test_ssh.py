"""plan/apply over real SSH to sshd instances on loopback started by the tests."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_profile
from tests.support import sshd
from tests.support.imports import HEAVY, imported

ROOT = Path(__file__).resolve().parents[2]
HOSTS = 10

pytestmark = [pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available())),
              pytest.mark.usefixtures("ssh_transport")]  # every test, once per SSH transport


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.SshFarm]:
    started = sshd.start_farm(tmp_path_factory.mktemp("ssh"), HOSTS)
    try:
        yield started
    finally:
        started.stop()


def inventory(tmp_path: Path, farm: sshd.SshFarm, profile: Path, count: int = HOSTS,
              down: int | None = None) -> Path:
    lines = ["hosts:"]
    for host in farm.hosts[:count]:
        address = "127.0.0.99" if host.index == down else host.address  # nothing listens there
        lines.append(f"  h{host.index}: {{address: {address}, port: {sshd.PORT}, user: root, "
                     f"key: {farm.client_key}, root: {tmp_path}/root-{host.index}, profile: {profile}}}")
    lines += ["groups:", "  first: {hosts: [h1], vars: {}}"]
    path = tmp_path / "inventory.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT, env={**os.environ, "HOME": "/nonexistent-home"})


def execs(farm: sshd.SshFarm, count: int = HOSTS) -> list[int]:
    return [h.execs() for h in farm.hosts[:count]]


def test_cold_noop_change_over_ssh_count_round_trips(farm: sshd.SshFarm, tmp_path: Path) -> None:
    base = make_profile(tmp_path, name="base.yaml")
    inv = inventory(tmp_path, farm, base)
    known = str(farm.known_hosts)
    before = execs(farm)
    cold = provision("apply", "-i", str(inv), "--known-hosts", known, "--yes", "--json")
    assert cold.returncode == 0, cold.stderr
    data = json.loads(cold.stdout)
    assert data["ok"] and all(h["generation"] == 1 for h in data["hosts"])
    assert [a - b for a, b in zip(execs(farm), before, strict=True)] == [2] * HOSTS  # gather + apply
    for host in farm.hosts:
        assert (tmp_path / f"root-{host.index}/etc/systemd/system/llm-server.service").is_file()

    before = execs(farm)
    noop = provision("apply", "-i", str(inv), "--known-hosts", known, "--yes", "--json")
    assert noop.returncode == 0, noop.stderr
    assert not json.loads(noop.stdout)["changed"]
    assert [a - b for a, b in zip(execs(farm), before, strict=True)] == [1] * HOSTS  # a no-op is one exec

    changed = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 5, "kernel.numa_balancing": 0}},
                           name="changed.yaml")
    inv = inventory(tmp_path, farm, changed)
    dry = provision("plan", "-i", str(inv), "--known-hosts", known, "--limit", "first", "--json")
    assert dry.returncode == 2
    host = json.loads(dry.stdout)["hosts"][0]
    assert [c["path"] for c in host["changes"]] == ["/etc/sysctl.d/90-provision-llm-server.conf"]
    assert host["pending_handlers"] == ["sysctl"]
    applied = provision("apply", "-i", str(inv), "--known-hosts", known, "--limit", "h1,h2", "--yes")
    assert applied.returncode == 0, applied.stderr
    # a fleet's next steps once, after every host, before the count: not one copy per host
    out = applied.stderr
    assert out.count("next steps:") == 1 and out.count("check it: provision verify") == 1
    last_host = max(out.index("h1: applied"), out.index("h2: applied"))
    assert last_host < out.index("next steps:") < out.index("2 hosts: 2 ok, 0 failed"), out
    text = (tmp_path / "root-2/etc/sysctl.d/90-provision-llm-server.conf").read_text()
    assert "vm.swappiness = 5" in text


def test_a_cached_noop_over_ssh_loads_neither_the_schema_nor_the_templates(farm: sshd.SshFarm,
                                                                            tmp_path: Path) -> None:
    """The second no-op finds its build, its render with the host's facts and its inventory
    in the cache: what is left heavy is the transport's own (Fabric's invoke reads YAML)."""
    profile = make_profile(tmp_path)
    inv = inventory(tmp_path, farm, profile, count=2)
    env = {**os.environ, "PROVISION_CACHE": str(tmp_path / "cache")}
    args = ["apply", "-i", str(inv), "--known-hosts", str(farm.known_hosts), "--yes"]
    assert "jinja2" in imported(args, tmp_path, env)  # cold: builds and renders
    before = execs(farm, 2)
    heavy = imported(args, tmp_path, env) & HEAVY
    if os.environ.get("PROVISION_TRANSPORT") == "fabric":
        assert "paramiko" in heavy and not heavy - {"paramiko", "cryptography", "fabric", "invoke", "yaml"}
    else:  # the ssh client is a program: nothing heavy is left in this process
        assert not heavy - {"yaml"}, heavy
    assert [a - b for a, b in zip(execs(farm, 2), before, strict=True)] == [1, 1]  # still one exec a host


def test_one_host_down_the_others_converge(farm: sshd.SshFarm, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    inv = inventory(tmp_path, farm, profile, count=3, down=2)
    result = provision("apply", "-i", str(inv), "--known-hosts", str(farm.known_hosts), "--yes",
                       "--connect-timeout", "3", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    outcome = {h["host"]: h["ok"] for h in data["hosts"]}
    assert outcome == {"h1": True, "h2": False, "h3": True}
    assert (tmp_path / "root-3/etc/systemd/system/llm-server.service").is_file()
    assert not (tmp_path / "root-2").exists()
    assert "Traceback" not in result.stderr


def test_unknown_host_key_fails_with_fingerprint_then_accept_new(farm: sshd.SshFarm, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    inv = inventory(tmp_path, farm, profile, count=1)
    known = tmp_path / "known_hosts"
    refused = provision("plan", "-i", str(inv), "--known-hosts", str(known))
    assert refused.returncode == 1
    real = subprocess.run(["ssh-keygen", "-l", "-f", str(farm.hosts[0].folder / "host_key.pub")],
                          capture_output=True, text=True, check=True).stdout.split()[1]
    assert f"unknown host key ssh-ed25519 {real} for [127.0.0.41]:{sshd.PORT}" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr  # one line, not ssh's own text
    assert "--accept-new-host-key" in refused.stderr
    accepted = provision("plan", "-i", str(inv), "--known-hosts", str(known), "--accept-new-host-key")
    assert accepted.returncode == 2, accepted.stderr
    recorded = subprocess.run(["ssh-keygen", "-F", f"[127.0.0.41]:{sshd.PORT}", "-f", str(known)],
                              capture_output=True, text=True, check=False)  # finds hashed lines too
    assert recorded.returncode == 0, known.read_text()
    again = provision("plan", "-i", str(inv), "--known-hosts", str(known))
    assert again.returncode == 2, again.stderr


def test_changed_host_key_always_fails(farm: sshd.SshFarm, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    inv = inventory(tmp_path, farm, profile, count=1)
    other = (farm.hosts[1].folder / "host_key.pub").read_text().split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[{farm.hosts[0].address}]:{sshd.PORT} {other[0]} {other[1]}\n")
    for extra in ([], ["--accept-new-host-key"]):
        result = provision("plan", "-i", str(inv), "--known-hosts", str(known), *extra)
        assert result.returncode == 1
        assert "CHANGED" in result.stderr
        assert result.stderr.count("\n") == 1 and "@@@" not in result.stderr, result.stderr


def test_dropped_connection_mid_apply_leaves_old_or_new_and_rerun_converges(
        farm: sshd.SshFarm, tmp_path: Path) -> None:
    base = make_profile(tmp_path, name="base.yaml")
    inv = inventory(tmp_path, farm, base, count=1)
    known = str(farm.known_hosts)
    assert provision("apply", "-i", str(inv), "--known-hosts", known, "--yes").returncode == 0
    # A slow custom handler gives the test a window to drop the session mid-apply.
    slow = make_profile(tmp_path, {
        "os.sysctl": {"vm.swappiness": 5, "kernel.numa_balancing": 0},
        "files": [{"template": "x.j2", "dest": "/etc/x.conf", "notify": ["slow"]}],
        "handlers": {"slow": {"command": "sleep 5; echo done >> \"$PROVISION_ROOT/slow.log\""}}},
        {"x.j2": "x\n"}, name="slow.yaml")
    inv = inventory(tmp_path, farm, slow, count=1)
    host = farm.hosts[0]
    root = tmp_path / "root-1"

    def drop() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if (root / "etc/x.conf").exists():
                for child in host.session_children():
                    sshd._kill(child)
                return
            time.sleep(0.02)

    killer = threading.Thread(target=drop)
    killer.start()
    dropped = provision("apply", "-i", str(inv), "--known-hosts", known, "--yes")
    killer.join()
    assert dropped.returncode == 1
    assert "Traceback" not in dropped.stderr
    assert "h1: the connection dropped" in dropped.stderr, dropped.stderr
    assert not (root / "slow.log").exists()
    sysctl = (root / "etc/sysctl.d/90-provision-llm-server.conf").read_text()
    assert "vm.swappiness = 5" in sysctl or "vm.swappiness = 10" in sysctl
    # The remote script outlives the dropped session and finishes under its lock;
    # the re-run waits for it, then converges whatever is left.
    rerun = provision("apply", "-i", str(inv), "--known-hosts", known, "--yes", "--wait-lock", "30")
    assert rerun.returncode == 0, rerun.stderr
    assert (root / "slow.log").read_text() == "done\n"  # the handler ran exactly once
    assert provision("plan", "-i", str(inv), "--known-hosts", known).returncode == 0


def test_ansible_inventory_is_read(farm: sshd.SshFarm, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    host = farm.hosts[0]
    inv = tmp_path / "hosts.yml"
    inv.write_text(f"""all:
  vars:
    ansible_user: root
    ansible_port: {sshd.PORT}
    ansible_ssh_private_key_file: {farm.client_key}
  children:
    gpus:
      hosts:
        box1:
          ansible_host: {host.address}
          provision_root: {tmp_path}/ansible-root
""")
    result = provision("plan", str(profile), "-i", str(inv), "--known-hosts", str(farm.known_hosts),
                       "--limit", "gpus", "--json")
    assert result.returncode == 2, result.stderr
    assert json.loads(result.stdout)["hosts"][0]["host"] == "box1"


SUDO_USER = "provision-sudo"  # a throwaway account for the become tests
SUDO_PASSWORD = "correct horse 'battery' $staple"  # noqa: S105 - a throwaway test account


@pytest.fixture(scope="module")
def sudo_user(tmp_path_factory: pytest.TempPathFactory, farm: sshd.SshFarm) -> Iterator[Path]:
    """An unprivileged user who may sudo with a password, one try only, with a sudo log."""
    if shutil.which("sudo") is None or shutil.which("useradd") is None:
        pytest.skip("needs sudo and useradd (scripts/test installs sudo)")
    folder = tmp_path_factory.mktemp("sudo")
    log = folder / "sudo.log"
    if subprocess.run(["id", SUDO_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", SUDO_USER], check=True)
    subprocess.run(["chpasswd"], input=f"{SUDO_USER}:{SUDO_PASSWORD}\n", text=True, check=True)
    home = Path(f"~{SUDO_USER}").expanduser()
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    shutil.copy(farm.client_key.with_suffix(".pub"), home / ".ssh/authorized_keys")
    subprocess.run(["chown", "-R", f"{SUDO_USER}:", str(home / ".ssh")], check=True)
    sudoers = Path("/etc/sudoers.d/provision-tests")
    sudoers.write_text(f"Defaults:{SUDO_USER} passwd_tries=1, logfile={log}, !lecture\n"
                       f"{SUDO_USER} ALL=(ALL) ALL\n")
    sudoers.chmod(0o440)
    try:
        yield log
    finally:
        sudoers.unlink()
        subprocess.run(["sudo", "-K", "-u", SUDO_USER], check=False, capture_output=True)


def become_inventory(tmp_path: Path, farm: sshd.SshFarm, profile: Path) -> Path:
    host = farm.hosts[0]
    path = tmp_path / "become.yaml"
    path.write_text(f"hosts:\n  b1: {{address: {host.address}, port: {sshd.PORT}, user: {SUDO_USER}, "
                    f"key: {farm.client_key}, become: true, root: {tmp_path}/become-root, profile: {profile}}}\n")
    return path


def test_sudo_with_password_applies_and_never_leaks_it(farm: sshd.SshFarm, sudo_user: Path, tmp_path: Path,
                                                       ssh_transport: str) -> None:
    profile = make_profile(tmp_path)
    inv = become_inventory(tmp_path, farm, profile)
    env_password = {"PROVISION_BECOME_PASSWORD": SUDO_PASSWORD}
    # the ssh client found first on PATH logs its command line, then is the real one
    shims, argv_log = tmp_path / "bin", tmp_path / "ssh-argv.log"
    shims.mkdir()
    (shims / "ssh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\nexec {shutil.which("ssh")} "$@"\n')
    (shims / "ssh").chmod(0o755)
    path = f"{shims}{os.pathsep}{os.environ['PATH']}"
    result = subprocess.run([sys.executable, "-m", "provisioner", "apply", "-i", str(inv), "--known-hosts",
                             str(farm.known_hosts), "--yes"], capture_output=True, text=True, check=False,
                            cwd=ROOT, env={**os.environ, **env_password, "PATH": path})
    assert result.returncode == 0, result.stderr
    if ssh_transport == "openssh":
        argv = argv_log.read_text()
        assert len(argv.splitlines()) >= 3, argv  # the master, the gather, the apply
        assert SUDO_PASSWORD not in argv and "correct horse" not in argv
    unit = tmp_path / "become-root/etc/systemd/system/llm-server.service"
    assert unit.stat().st_uid == 0, "written as root through sudo"
    assert SUDO_PASSWORD not in result.stdout + result.stderr
    assert SUDO_PASSWORD not in farm.hosts[0].log.read_text(errors="replace")
    assert SUDO_PASSWORD not in sudo_user.read_text(errors="replace")


def test_wrong_sudo_password_fails_once_clearly(farm: sshd.SshFarm, sudo_user: Path, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    inv = become_inventory(tmp_path, farm, profile)
    before = sudo_user.read_text(errors="replace").count("incorrect password") if sudo_user.exists() else 0
    result = subprocess.run([sys.executable, "-m", "provisioner", "plan", "-i", str(inv), "--known-hosts",
                             str(farm.known_hosts)], capture_output=True, text=True, check=False, cwd=ROOT,
                            env={**os.environ, "PROVISION_BECOME_PASSWORD": "wrong"})
    assert result.returncode == 1
    assert "sudo refused the password" in result.stderr and "not retried" in result.stderr
    assert "Traceback" not in result.stderr
    after = sudo_user.read_text(errors="replace").count("incorrect password")
    assert after - before == 1, "exactly one attempt reaches sudo"
    assert not (tmp_path / "become-root").exists()


def test_become_without_password_says_what_to_do(farm: sshd.SshFarm, sudo_user: Path, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    inv = become_inventory(tmp_path, farm, profile)
    env = {k: v for k, v in os.environ.items() if k != "PROVISION_BECOME_PASSWORD"}
    result = subprocess.run([sys.executable, "-m", "provisioner", "plan", "-i", str(inv), "--known-hosts",
                             str(farm.known_hosts)], capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    assert result.returncode == 1
    assert "sudo needs a password" in result.stderr


def test_through_a_jump_host(farm: sshd.SshFarm, tmp_path: Path) -> None:
    """h2 reached through h1 (direct-tcpip), host keys checked on both."""
    profile = make_profile(tmp_path)
    jump, target = farm.hosts[0], farm.hosts[1]
    inv = tmp_path / "jump.yaml"
    inv.write_text(f"hosts:\n  far: {{address: {target.address}, port: {sshd.PORT}, user: root, "
                   f"key: {farm.client_key}, "
                   f"root: {tmp_path}/far-root, jump: 'root@{jump.address}:{sshd.PORT}', profile: {profile}}}\n")
    before = jump.connections()
    result = provision("apply", "-i", str(inv), "--known-hosts", str(farm.known_hosts), "--yes")
    assert result.returncode == 0, result.stderr
    assert jump.connections() == before + 1
    assert (tmp_path / "far-root/etc/systemd/system/llm-server.service").is_file()
    only_target = tmp_path / "known_target_only"
    only_target.write_text("".join(line + "\n" for line in farm.known_hosts.read_text().splitlines()
                                   if line.startswith(f"[{target.address}]")))
    unchecked = provision("plan", "-i", str(inv), "--known-hosts", str(only_target))
    assert unchecked.returncode == 1
    assert "unknown host key ssh-ed25519 SHA256:" in unchecked.stderr, unchecked.stderr
    assert f"[{jump.address}]:{sshd.PORT}" in unchecked.stderr, unchecked.stderr


def test_verify_over_ssh_finds_drift(farm: sshd.SshFarm, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    inv = inventory(tmp_path, farm, profile, count=1)
    known = str(farm.known_hosts)
    applied = provision("apply", "-i", str(inv), "--known-hosts", known, "--yes", "--json")
    assert applied.returncode == 0, applied.stderr
    # the verify apply suggests runs as printed: same hosts, same known_hosts
    suggested = shlex.split(json.loads(applied.stdout)["hosts"][0]["next_steps"][-1].removeprefix("check it: "))
    assert suggested[:2] == ["provision", "verify"]
    clean = provision(*suggested[1:], "--only", "drift", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    checks = {c["id"]: c for c in json.loads(clean.stdout)["hosts"][0]["checks"]}
    assert checks["drift.files"]["status"] == "pass"
    unit = tmp_path / "root-1/etc/systemd/system/llm-server.service"
    unit.write_text(unit.read_text().replace("Restart=on-failure", "Restart=no"))
    drifted = provision("verify", "-i", str(inv), "--known-hosts", known, "--only", "drift", "--json")
    assert drifted.returncode == 2
    ids = [c["id"] for c in json.loads(drifted.stdout)["hosts"][0]["checks"] if c["status"] == "fail"]
    assert ids == ["drift.file:/etc/systemd/system/llm-server.service"]


def test_per_host_overrides_merge_over_the_profile(farm: sshd.SshFarm, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    h1, h2 = farm.hosts[0], farm.hosts[1]
    common = f"port: {sshd.PORT}, user: root, key: {farm.client_key}, profile: {profile}"
    inv = tmp_path / "overrides.yaml"
    inv.write_text("hosts:\n"
                   f"  plain: {{address: {h1.address}, {common}, root: {tmp_path}/plain}}\n"
                   f"  moved: {{address: {h2.address}, {common}, root: {tmp_path}/moved,\n"
                   "          overrides: {runtime: {port: 8081}, service: {name: llm-b}}}\n")
    result = provision("apply", "-i", str(inv), "--known-hosts", str(farm.known_hosts), "--yes")
    assert result.returncode == 0, result.stderr
    assert "--port 8080" in (tmp_path / "plain/opt/provision/bin/llm-server-run.sh").read_text()
    assert "--port 8081" in (tmp_path / "moved/opt/provision/bin/llm-b-run.sh").read_text()
    bad = tmp_path / "bad-overrides.yaml"
    bad.write_text(f"hosts:\n  x: {{address: {h1.address}, {common}, overrides: {{runtime: {{prot: 1}}}}}}\n")
    refused = provision("plan", "-i", str(bad), "--known-hosts", str(farm.known_hosts))
    assert refused.returncode == 1
    assert "unknown key 'prot'" in refused.stderr and "did you mean `port`" in refused.stderr


def test_verify_reaches_the_model_server_on_the_hosts_loopback_through_ssh(
        farm: sshd.SshFarm, tmp_path: Path) -> None:
    """Without --endpoint, verify tunnels through the SSH connection (like ssh -L) to the
    profile's bind:port as the host sees it."""
    from tests.support.standin_server import StandinServer

    with StandinServer("ok", model="qwen3-235b-a22b", context=32768, slots=1, tps=60.0) as server:
        port = int(server.base_url.rsplit(":", 1)[1])
        profile = make_profile(tmp_path, {"runtime.port": port})
        host = farm.hosts[0]
        inv = tmp_path / "live.yaml"  # no root: the live host (verify only reads it)
        inv.write_text(f"hosts:\n  live: {{address: {host.address}, port: {sshd.PORT}, user: root, "
                       f"key: {farm.client_key}, profile: {profile}}}\n")
        before = farm.hosts[0].execs()
        result = subprocess.run([sys.executable, "-m", "provisioner", "verify", "-i", str(inv), "--known-hosts",
                                 str(farm.known_hosts), "--only", "endpoint", "--no-needle", "--json"],
                                capture_output=True, text=True, check=False, cwd=ROOT,
                                env={**os.environ, "LLM_API_KEY": "sekrit"})
    report = json.loads(result.stdout)["hosts"][0]
    assert report["ok"], result.stdout + result.stderr
    checks = {c["id"]: c["status"] for c in report["checks"]}
    assert checks.get("endpoint.answers") == "pass", result.stdout
    assert checks["endpoint.model_id"] == "pass" and checks["endpoint.context"] == "pass"
    assert checks["endpoint.deterministic"] == "pass"
    # the gather, plus the one write that appends measured speeds for fit --calibrate (a live host
    # with no generation yet keeps none: a skip that says so); the HTTP went through a forwarded channel
    recorded = next(c for c in report["checks"] if c["id"] == "endpoint.recorded")
    wrote = recorded["hint"] != "no speed was measured"
    assert farm.hosts[0].execs() - before == 1 + wrote, recorded


def test_monitor_once_over_ssh_is_one_exec_per_sample(farm: sshd.SshFarm, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    inv = inventory(tmp_path, farm, profile, count=2)
    before = execs(farm, 2)
    result = provision("monitor", "-i", str(inv), "--known-hosts", str(farm.known_hosts), "--once",
                       "--interval", "0.5", "--json")
    assert result.returncode in (0, 2), result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert {line["host"] for line in lines} == {"h1", "h2"}
    assert all(line["ok"] for line in lines)
    assert [a - b for a, b in zip(execs(farm, 2), before, strict=True)] == [2, 2]  # two samples, one exec each


def test_fit_against_a_hosts_real_hardware_over_ssh(farm: sshd.SshFarm, tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    inv = inventory(tmp_path, farm, profile, count=2)
    before = execs(farm, 2)
    result = provision("fit", str(profile), "-i", str(inv), "--known-hosts", str(farm.known_hosts), "--limit", "h1",
                       "--json")
    data = json.loads(result.stdout)
    assert data["hardware_from"] == "h1"
    assert data["hardware"]["gpus"] == []  # this machine has no GPU: the model cannot fit
    assert result.returncode == 2 and not data["fits"]
    # fit's own probe rode in the same gather: no nvidia-smi here, so no GPU processes
    assert data["host_load"]["other_processes"] == [] and data["host_load"]["p2p_missing"] is None
    assert data["weights_from"] == "catalog"  # a remote host's files are not read here
    assert [a - b for a, b in zip(execs(farm, 2), before, strict=True)] == [1, 0]  # one gather, h1 only


def test_two_gathers_in_a_row_make_one_connection_with_openssh(
        farm: sshd.SshFarm, tmp_path: Path, ssh_transport: str) -> None:
    """The openssh transport's master outlives the run, so the next run skips the
    handshake; Fabric connects anew each run."""
    profile = make_profile(tmp_path)
    inv = inventory(tmp_path, farm, profile, count=1)
    host = farm.hosts[0]
    connections, execs_before = host.connections(), host.execs()
    for _ in range(2):
        result = provision("plan", "-i", str(inv), "--known-hosts", str(farm.known_hosts))
        assert result.returncode == 2, result.stderr
    assert host.execs() - execs_before == 2  # one gather each
    masters = sshd.master_sockets(Path(os.environ["XDG_RUNTIME_DIR"]))
    if ssh_transport == "openssh":
        assert host.connections() - connections == 1
        assert len(masters) == 1  # up for the next run; the fixture stops it with ssh -O exit
    else:
        assert host.connections() - connections == 2
        assert masters == []


class Impostor:
    """A port on loopback that is no sshd: it hangs up at once, or accepts and says nothing."""

    def __init__(self, hang_up: bool) -> None:
        import socket

        self.hang_up = hang_up
        self.listener = socket.create_server(("127.0.0.49", 0))
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.hang_up:
                client.close()
            else:
                self.held.append(client)

    def close(self) -> None:
        self.listener.close()
        for client in self.held:
            client.close()


def free_port() -> int:
    import socket

    with socket.create_server(("127.0.0.49", 0)) as probe:
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("case", ["refused", "not-ssh", "silent", "wrong-key"])
def test_connection_errors_are_one_line_with_a_hint(farm: sshd.SshFarm, tmp_path: Path, ssh_transport: str,
                                                    case: str) -> None:
    profile = make_profile(tmp_path)
    address, port, key = "127.0.0.49", free_port(), farm.client_key
    impostor = None
    if case in ("not-ssh", "silent"):
        impostor = Impostor(hang_up=case == "not-ssh")
        port = impostor.port
    if case == "wrong-key":
        address, port, key = farm.hosts[0].address, sshd.PORT, tmp_path / "stranger_key"
        sshd.keygen(key, "not-authorized")
    inv = tmp_path / "bad.yaml"
    inv.write_text(f"hosts:\n  bad: {{address: {address}, port: {port}, user: root, key: {key}, "
                   f"root: {tmp_path}/root, profile: {profile}}}\n")
    try:
        started = time.monotonic()
        result = provision("plan", "-i", str(inv), "--known-hosts", str(farm.known_hosts), "--connect-timeout", "2")
        took = time.monotonic() - started
    finally:
        if impostor is not None:
            impostor.close()
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: bad: ") and "(hint: " in lines[0], result.stderr
    said = {  # what each transport's line must say
        "refused": {"openssh": f"nothing accepts connections on {address}:{port}",
                    "fabric": f"nothing accepts connections on {address}:{port}"},
        # paramiko words a failed greeting by how its threads raced: the line names the place
        "not-ssh": {"openssh": f"{address}:{port} does not speak SSH", "fabric": f"{address}:{port}"},
        "silent": {"openssh": f"connection to {address}:{port} timed out during the SSH greeting",
                   "fabric": f"{address}:{port}"},
        "wrong-key": {"openssh": f"SSH login as root@{address} was refused",
                      "fabric": f"SSH login to {address}:{port} as root was refused"},
    }[case][ssh_transport]
    assert said in lines[0], lines[0]
    assert took < 15, "--connect-timeout 2 bounds the wait"
