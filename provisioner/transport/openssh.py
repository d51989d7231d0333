"""A host over SSH through the system ``ssh`` client, multiplexed as Ansible does by default.

The first run to a destination opens a ControlMaster; it stays up ``CONTROL_PERSIST``
after its last session ends, so a ``provision`` run within that time skips the TCP
connect, key exchange and authentication. Each script is ONE exec channel on the
master (``sh -s``, or sudo in front of it: see ``remote.py``), like the Fabric transport.

Master policy: ``close()`` leaves the master up (that is what makes the next run fast);
an idle master exits by itself after ``CONTROL_PERSIST``, and a dead connection is
noticed within 45 s (ServerAliveInterval 15, ServerAliveCountMax 3). ``ssh -O exit``
on a socket of ``control_dir()`` stops one sooner.

Host-key policy and identity reach ssh through a config file of ours (-F): ssh gives
the ssh it starts for the jump host (-J, ProxyJump) that -F file and none of the -o
options, so the jump host is checked against the same known_hosts in the same way. Our lines come
first and ssh keeps the first value it reads, so ~/.ssh/config and /etc/ssh/ssh_config,
included after them, still supply aliases and the like but cannot loosen host-key checks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from provisioner.errors import ProvisionError
from provisioner.facts.gather import STATE_DIR
from provisioner.transport import Completed
from provisioner.transport.remote import SshTarget, become_refused, remote_command

# as ansible-core's ssh connection plugin (its ssh_args default, "-C -o ControlMaster=auto
# -o ControlPersist=60s", in lib/ansible/plugins/connection/ssh.py)
CONTROL_PERSIST = "60s"
# sun_path holds 108 bytes with the NUL (Linux); ssh binds the socket at
# "<ControlPath>.<16 random characters>" first and then links it into place
# (muxserver_listen in OpenSSH's mux.c).
_SOCKET_PATH_MAX = 107 - 17
_NAME_LENGTH = 20  # hex digits of the destination's digest: the socket's name

_DROPPED_HINT = "re-run: every file is old or new, and the next apply converges"


def ssh_binary() -> str | None:
    return shutil.which("ssh")


def control_dir() -> Path:
    """Where the master sockets live: the user's runtime dir, else the cache dir, else a
    private folder in the temp dir; the first whose sockets fit in sun_path."""
    candidates: list[Path] = []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        candidates.append(Path(runtime) / "provision-ssh")
    cache = os.environ.get("XDG_CACHE_HOME")
    if cache and Path(cache).is_dir():
        candidates.append(Path(cache) / "provision" / "ssh")
    elif Path.home().is_dir():  # never create a home that is not there
        candidates.append(Path.home() / ".cache" / "provision" / "ssh")
    candidates.append(Path(tempfile.gettempdir()) / f"provision-ssh-{os.getuid()}")
    for folder in candidates:
        if len(str(folder)) + 1 + _NAME_LENGTH > _SOCKET_PATH_MAX:
            continue
        with contextlib.suppress(OSError):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(folder)
            # ours alone: another user who could write here could put a socket of theirs in our path
            if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
                return folder
    raise ProvisionError("no private folder with a path short enough for SSH control sockets",
                         hint="set XDG_RUNTIME_DIR to a short folder of yours (sockets need < 90 characters)")


def _quoted(value: str) -> str:
    """A path as a value in ssh_config and in -o: quoted, and % (ssh's token sign) doubled."""
    if '"' in value or "\n" in value:
        raise ProvisionError(f"SSH cannot be given the path {value!r}", hint="use a path without quotes")
    return '"' + value.replace("%", "%%") + '"'


def _last(pattern: str, text: str) -> re.Match[str] | None:
    found = list(re.finditer(pattern, text, re.MULTILINE))
    return found[-1] if found else None


_UP_AND_PORT = "is the host up and the port right?"
# ssh's complaints about a connection, the first that matches wins: (pattern, message,
# hint). The message's {0}, {1}... are the pattern's groups; {peer} is where ssh
# connected (the jump host, if that failed), {now} and {seen} the host key it was shown.
_COMPLAINTS: tuple[tuple[str, str, str], ...] = (
    (r"Host key for (\S+) has changed", "the host key of {0} CHANGED{now}; refusing",
     "if the host was reinstalled, remove its old line from known_hosts; otherwise stop"),
    (r"No (\S+) host key is known for (\S+) and", "unknown host key {seen} for {1}",
     "check the fingerprint, then re-run with --accept-new-host-key (or add it to known_hosts)"),
    # e.g. a revoked key, or a known_hosts that accept-new cannot write to
    (r"Host key verification failed", "host key verification failed for {address}",
     "check the host's lines in known_hosts (and that the file is writable for --accept-new-host-key)"),
    (r"^(\S+): Permission denied \(([^)]*)\)",
     "SSH login as {0} was refused: no key or agent offered was accepted (the server takes: {1})",
     "check the user and key (or ssh-agent)"),
    (r"timed out during banner exchange", "connection to {peer} timed out during the SSH greeting",
     _UP_AND_PORT),
    (r"timed out", "connection to {peer} timed out", _UP_AND_PORT),
    (r"Connection refused", "nothing accepts connections on {peer}",
     "is the host up, sshd running and the port right?"),
    (r"kex_exchange_identification|Bad protocol version|Invalid SSH identification",
     "{peer} does not speak SSH (it hung up before the greeting)",
     "is the port the one sshd listens on (and does that sshd accept this client)?"),
    (r"Could not resolve hostname (\S+?):? (.+)$", "cannot resolve {0}: {1}",
     "check the address (or the Host alias in ~/.ssh/config)"),
    (r"connect to host \S+ port \d+: (.+)$", "cannot connect to {peer}: {0}",
     "is the host up and reachable from here?"),
)


def connect_error(name: str, address: str, text: str) -> ProvisionError | None:
    """ssh's complaint about a connection as one line with a hint; None if ``text`` holds none."""
    key = _last(r"^debug1: Server host key: (\S+) (\S+)", text)
    # the last host ssh names (behind a jump host, the master says UNKNOWN for the jump's stdio)
    where = _last(r"(?:connect to host|Connection \w+ by|Connection to) (?!UNKNOWN )(\S+) port (\d+)", text)
    for pattern, message, hint in _COMPLAINTS:
        found = _last(pattern, text)
        if found is not None:
            groups = [g.strip() for g in found.groups()]
            text_now = f" (now {key.group(2)})" if key is not None else ""
            seen = f"{key.group(1)} {key.group(2)}" if key is not None else (groups[0] if groups else "")
            peer = f"{where.group(1)}:{where.group(2)}" if where is not None else address
            return ProvisionError(f"{name}: " + message.format(*groups, now=text_now, seen=seen, peer=peer,
                                                              address=address), hint=hint)
    return None


class OpensshTransport:
    def __init__(self, target: SshTarget, ssh: str) -> None:
        self.target = target
        self.name = target.name
        self.root = target.root
        self.state_dir = target.state_dir or target.root + STATE_DIR
        self.ssh = ssh  # the client binary
        self._lock = threading.Lock()
        self._ready = False
        self._socket: Path | None = None
        self._config: Path | None = None

    def destination_key(self) -> str:
        """What a master may be shared by: the destination, and what decided to trust it
        (a run with another known_hosts file or key must not ride on this master)."""
        target = self.target
        known = str(Path(target.known_hosts or "~/.ssh/known_hosts").expanduser().absolute())
        key = str(Path(target.key).expanduser().absolute()) if target.key else ""
        return "\0".join([f"{target.user or ''}@{target.address}:{target.port or ''}",
                          target.jump or "", known, key])

    def _config_text(self) -> str:
        target = self.target
        known = Path(target.known_hosts or "~/.ssh/known_hosts").expanduser().absolute()
        lines = ["# written by provision for one destination; its settings come first and so win",
                 "Host *",
                 f"    StrictHostKeyChecking {'accept-new' if target.accept_new_host_key else 'yes'}",
                 f"    UserKnownHostsFile {_quoted(str(known))}",
                 "    BatchMode yes",
                 f"    ConnectTimeout {max(1, math.ceil(target.connect_timeout))}",
                 "    ServerAliveInterval 15",
                 "    ServerAliveCountMax 3",
                 # the master's stderr shows the host key a failed check saw, for the message;
                 # the ssh of each run says -o LogLevel=ERROR, which wins, so scripts' stderr stays theirs
                 "    LogLevel DEBUG1"]
        if target.key:
            lines.append(f"    IdentityFile {_quoted(str(Path(target.key).expanduser().absolute()))}")
        lines += ["    Include ~/.ssh/config", "    Include /etc/ssh/ssh_config", ""]
        return "\n".join(lines)

    def _paths(self) -> tuple[Path, Path]:
        if self._socket is None or self._config is None:
            folder = control_dir()
            name = hashlib.sha256(self.destination_key().encode()).hexdigest()[:_NAME_LENGTH]
            self._socket = folder / name
            self._config = folder / f"{name}.config"
        return self._socket, self._config

    def _args(self, *options: str) -> list[str]:
        """ssh with our config, the control socket, and the destination last."""
        sock, config = self._paths()
        target = self.target
        args = [self.ssh, "-F", str(config), "-o", f"ControlPath={_quoted(str(sock))}", *options]
        if target.port:
            args += ["-p", str(target.port)]
        if target.user:
            args += ["-l", target.user]
        if target.jump:
            args += ["-J", target.jump]
        return [*args, "--", target.address]

    def master_alive(self) -> bool:
        sock, _ = self._paths()
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(sock))
        except OSError:
            return False
        finally:
            probe.close()
        return True

    def _write_config(self, config: Path) -> None:
        text = self._config_text()
        with contextlib.suppress(OSError):
            if config.read_text() == text:
                return
        # another run may be reading it this instant: it sees the old file or the new, whole
        partial = config.with_name(f"{config.name}.{os.getpid()}.{threading.get_ident()}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        partial.replace(config)

    def _connect(self) -> None:
        with self._lock:
            if self._ready:
                return
            sock, config = self._paths()
            self._write_config(config)
            if self.target.accept_new_host_key:  # ssh records the new key there, as the Fabric transport does
                Path(self.target.known_hosts or "~/.ssh/known_hosts").expanduser().parent.mkdir(
                    parents=True, exist_ok=True)
            if not self.master_alive():
                with open(f"{sock}.lock", "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)  # one master per destination, across processes too
                    if not self.master_alive():
                        sock.unlink(missing_ok=True)  # a dead master's leftover
                        self._start_master()
            self._ready = True

    def _start_master(self) -> None:
        """ssh -N with ControlPersist forks the master into the background once it is
        authenticated, and exits 0. Its stderr is a file, not a pipe, so that nothing the
        master leaves running can hold this call up waiting for the pipe to close."""
        target = self.target
        args = self._args("-o", "ControlMaster=yes", "-o", f"ControlPersist={CONTROL_PERSIST}", "-N", "-T")
        limit = (2 if target.jump else 1) * target.connect_timeout + 30
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors,
                                       start_new_session=True)  # a Ctrl-C of this run does not end the master
            try:
                code = process.wait(timeout=limit)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise ProvisionError(f"{self.name}: connection to {target.address} timed out",
                                     hint="is the host up and the port right?") from None
            errors.seek(0)
            text = errors.read().decode(errors="replace").replace("\r", "")
        if code == 0:
            return
        problem = (self._jump_complaint() if target.jump else None) or connect_error(self.name, target.address, text)
        if problem is not None:
            raise problem
        said = [line for line in text.splitlines() if line.strip() and not line.startswith("debug")]
        raise ProvisionError(f"{self.name}: cannot connect to {target.address}: "
                             f"{said[-1] if said else f'ssh exited {code}'}",
                             hint="is the host up, sshd running and the port right?")

    def _jump_complaint(self) -> ProvisionError | None:
        """What the jump host said. ssh sends the ProxyJump child's stderr to /dev/null when
        the master is to persist, so after a failure the jump hop alone is asked again, as
        ssh reaches it (-W to the target's port, no exec), with its messages kept."""
        target = self.target
        _, config = self._paths()
        *before, last = target.jump.split(",") if target.jump else [""]
        where = f"[{target.address}]:{target.port or 22}"
        args = [self.ssh, "-F", str(config), "-o", "ControlMaster=no", "-o", "ControlPath=none", "-W", where,
                *(["-J", ",".join(before)] if before else []), "--", f"ssh://{last}"]
        try:
            probe = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, check=False,
                                   timeout=(len(before) + 1) * target.connect_timeout + 30)
        except subprocess.TimeoutExpired:
            return None
        if probe.returncode == 0:
            return None
        return connect_error(self.name, last, probe.stderr.decode(errors="replace").replace("\r", ""))

    def run(self, script: str, env: dict[str, str] | None = None) -> Completed:
        self._connect()
        command, stdin_prefix = remote_command(env, self.target.become, self.target.become_password)
        # ControlMaster=no: if the master is gone, ssh connects on its own under the same policy
        args = self._args("-o", "ControlMaster=no", "-o", "LogLevel=ERROR", "-T")
        result = subprocess.run([*args, command], input=stdin_prefix + script.encode(), capture_output=True,
                                check=False)
        code = result.returncode
        stdout = result.stdout.decode(errors="replace")
        stderr = result.stderr.decode(errors="replace")
        if code == 255 and not self.master_alive():  # not the script's own 255: ssh lost the host
            self._ready = False
            raise connect_error(self.name, self.target.address, stderr) or ProvisionError(
                f"{self.name}: the connection dropped before the command finished", hint=_DROPPED_HINT)
        refused = _last(r"^mux_client\S*: (.+)$", stderr) if code == 255 else None
        if refused is not None:
            raise ProvisionError(f"{self.name}: the SSH master refused a session: {refused.group(1).strip()}",
                                 hint="raise MaxSessions in the host's sshd_config")
        refused_become = become_refused(self.name, self.target.user, self.target.become, code, stderr)
        if refused_become is not None:
            raise refused_become
        return Completed(code, stdout, stderr)

    @contextlib.contextmanager
    def forward(self, remote_host: str, remote_port: int) -> Iterator[int]:
        """A local port on 127.0.0.1 tunnelled to remote_host:remote_port as seen from the
        host (like ssh -L): each connection is one ``ssh -W`` on the master (a
        direct-tcpip channel, no exec), with the accepted socket as its stdin and stdout."""
        self._connect()
        where = f"[{remote_host}]:{remote_port}" if ":" in remote_host else f"{remote_host}:{remote_port}"
        args = self._args("-o", "ControlMaster=no", "-o", "LogLevel=ERROR", "-W", where)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.2)
        stop = threading.Event()
        bridges: list[subprocess.Popen[bytes]] = []

        def accept() -> None:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with client:  # the child holds its own copy of the socket
                    client.setblocking(True)
                    bridges.append(subprocess.Popen(args, stdin=client.fileno(), stdout=client.fileno(),
                                                    stderr=subprocess.DEVNULL))
                for done in [b for b in bridges if b.poll() is not None]:
                    bridges.remove(done)

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            listener.close()
            acceptor.join(timeout=2)
            for bridge in bridges:
                if bridge.poll() is None:
                    bridge.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    bridge.wait(timeout=5)

    def close(self) -> None:
        """The master stays up for the next run (see the module's master policy)."""
        self._ready = False

    def exit_master(self) -> None:
        """Stop this destination's master now (ssh -O exit)."""
        if self.master_alive():
            subprocess.run(self._args("-o", "LogLevel=ERROR", "-O", "exit"), capture_output=True, check=False)
