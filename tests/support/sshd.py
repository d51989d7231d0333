"""Real sshd instances on loopback for the tests: own host keys, own client key,
key-only root login, DEBUG1 logs to count connections and exec requests.

Host i listens on 127.0.0.(40+i):2222 ($PROVISION_TEST_SSH_PORT). Stopped by PID, never by name.
Every test that talks to them runs once per SSH transport (the ``ssh_transport`` fixture);
the openssh transport's masters are stopped after each test with ``ssh -O exit``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# Another checkout running its tests at the same time sets its own port.
PORT = int(os.environ.get("PROVISION_TEST_SSH_PORT", "2222"))
EXEC = re.compile(r"session_input_channel_req: session \d+ req exec")
CONNECTION = re.compile(r"Connection from 127\.0\.0\.\d+ port \d+")
TRANSPORTS = ("fabric", "openssh")


@dataclass
class Sshd:
    index: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.{40 + self.index}"

    @property
    def log(self) -> Path:
        return self.folder / "sshd.log"

    def execs(self) -> int:
        return len(EXEC.findall(self.log.read_text(errors="replace"))) if self.log.exists() else 0

    def connections(self) -> int:
        return len(CONNECTION.findall(self.log.read_text(errors="replace"))) if self.log.exists() else 0

    def session_children(self) -> list[int]:
        """PIDs of the per-connection sshd processes (to drop a connection)."""
        assert self.process is not None
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True,
                             text=True, check=False).stdout
        return [int(p) for p in out.split()]


@dataclass
class SshFarm:
    folder: Path
    hosts: list[Sshd]
    client_key: Path
    known_hosts: Path

    def stop(self) -> None:
        for host in self.hosts:
            if host.process is None:
                continue
            for child in host.session_children():
                _kill(child)
            host.process.terminate()
            try:
                host.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                host.process.kill()
            host.process = None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def available() -> str | None:
    """None if sshd can run here, else the reason."""
    if not Path(SSHD).exists():
        return "sshd is not installed (scripts/test installs openssh-server)"
    if os.geteuid() != 0:
        return "the test sshd needs root (privilege separation, root login)"
    return None


def keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True)


def start_farm(folder: Path, count: int) -> SshFarm:
    folder.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    client_key = folder / "client_key"
    keygen(client_key, "provision-tests")
    authorized = folder / "authorized_keys"
    shutil.copy(client_key.with_suffix(".pub"), authorized)
    authorized.chmod(0o600)
    known_hosts = folder / "known_hosts"
    lines = []
    hosts = []
    for index in range(1, count + 1):
        host = Sshd(index, folder / f"h{index}")
        host.folder.mkdir()
        key = host.folder / "host_key"
        keygen(key, f"provision-h{index}")
        config = host.folder / "sshd_config"
        config.write_text(f"""ListenAddress {host.address}:{PORT}
HostKey {key}
PidFile {host.folder}/sshd.pid
AuthorizedKeysFile {authorized} .ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
StrictModes no
PrintMotd no
MaxSessions 64
MaxStartups 100
LogLevel DEBUG1
SetEnv SHLVL=1
""")
        # -D: stay in the foreground so the fixture owns the PID; -E: log to a file.
        host.process = subprocess.Popen([SSHD, "-D", "-f", str(config), "-E", str(host.log)])
        public = key.with_suffix(".pub").read_text().split()
        lines.append(f"[{host.address}]:{PORT} {public[0]} {public[1]}")
        hosts.append(host)
    known_hosts.write_text("\n".join(lines) + "\n")
    farm = SshFarm(folder, hosts, client_key, known_hosts)
    deadline = time.monotonic() + 10
    for host in hosts:
        while "Server listening" not in (host.log.read_text(errors="replace") if host.log.exists() else ""):
            if (host.process is not None and host.process.poll() is not None) or time.monotonic() > deadline:
                farm.stop()
                raise RuntimeError(f"sshd h{host.index} did not start: {host.log.read_text(errors='replace')}")
            time.sleep(0.05)
    return farm


def master_sockets(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_socket())


def stop_masters(folder: Path) -> int:
    """Stop every SSH master whose control socket is under ``folder`` (ssh -O exit) and
    wait for their sockets to go; how many there were."""
    sockets = master_sockets(folder)
    for path in sockets:
        subprocess.run(["ssh", "-o", f"ControlPath={path}", "-o", "LogLevel=ERROR", "-O", "exit", "stop"],
                       capture_output=True, check=False, timeout=10)
    deadline = time.monotonic() + 5
    while master_sockets(folder) and time.monotonic() < deadline:  # a master unlinks its socket as it exits
        time.sleep(0.02)
    return len(sockets)


@contextlib.contextmanager
def ssh_masters() -> Iterator[Path]:
    """A short private folder to be XDG_RUNTIME_DIR, so the openssh transport puts its
    control sockets there; on the way out every master in it is stopped, and none may be left."""
    folder = Path(tempfile.mkdtemp(prefix="pv-ssh-"))  # short: a socket's path must fit in 108 bytes
    try:
        yield folder
    finally:
        stop_masters(folder)
        left = master_sockets(folder)
        shutil.rmtree(folder, ignore_errors=True)
        assert not left, f"SSH masters still up after ssh -O exit: {left}"
