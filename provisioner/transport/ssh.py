"""A host over SSH, through Fabric: ~/.ssh/config, keys, agent, jump hosts.

One connection per host, kept for the run; each script is ONE exec of
``sh -s`` (``sudo -n sh -s`` with become) with the script on stdin. Host keys
are checked against known_hosts: an unknown key fails with its fingerprint
unless ``accept_new_host_key`` (like OpenSSH's ``accept-new``); a changed key
always fails.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
from fabric import Config, Connection

from provisioner.errors import ProvisionError
from provisioner.facts.gather import STATE_DIR
from provisioner.transport import Completed
from provisioner.transport.remote import SshTarget, become_refused, remote_command


def fingerprint(key: Any) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class _HostKeyPolicy:
    """Unknown key: fail with the fingerprint, or record it when accepting new keys."""

    def __init__(self, target: SshTarget, known_hosts: Path) -> None:
        self.target = target
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        if not self.target.accept_new_host_key:
            raise ProvisionError(
                f"{self.target.name}: unknown host key {key.get_name()} {fingerprint(key)} for {hostname}",
                hint="check the fingerprint, then re-run with --accept-new-host-key (or add it to known_hosts)")
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with self.known_hosts.open("a", encoding="utf-8") as handle:
            handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def _connect_error(target: SshTarget, exc: BaseException) -> ProvisionError:
    """What went wrong when connecting, in words of SSH rather than of the library."""
    where = f"{target.address}:{target.port or 22}"
    text = str(exc)
    if isinstance(exc, paramiko.AuthenticationException) or "No existing session" in text \
            or "No authentication methods" in text:
        return ProvisionError(f"{target.name}: SSH login to {where} as {target.user or 'the current user'} "
                              "was refused: no key or agent offered was accepted",
                              hint="check the user and key (key: in the inventory, or ssh-agent)")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ProvisionError(f"{target.name}: connecting to {where} timed out",
                              hint="is the host up and the port right? (--connect-timeout to wait longer)")
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError | ConnectionRefusedError):
        return ProvisionError(f"{target.name}: nothing accepts connections on {where}",
                              hint="is sshd running there and the port right?")
    if isinstance(exc, EOFError) or "protocol banner" in text or "Connection reset" in text:
        return ProvisionError(f"{target.name}: {where} accepted the connection but does not speak SSH",
                              hint="is this the SSH port? (give it as HOST:PORT or port: in the inventory)")
    if isinstance(exc, socket.gaierror):
        return ProvisionError(f"{target.name}: cannot resolve the host name {target.address}",
                              hint="check the spelling, or give the address")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else text or type(exc).__name__
    return ProvisionError(f"{target.name}: cannot connect to {where}: {reason}",
                          hint="is the host up, sshd running and the port right?")


class _QuickAckSocket(socket.socket):
    """A socket that acknowledges every segment at once. sshd leaves Nagle's algorithm on
    for a non-interactive session, and after auth it sends a packet that needs no answer
    (OpenSSH's hostkeys-00 global request) followed by others: those wait in its send
    buffer for our ACK, which Linux delays by up to 40 ms when we have nothing to send.
    TCP_QUICKACK is not sticky (the kernel may fall back to delayed ACKs), so it is set
    again after each read."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        with contextlib.suppress(OSError):
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data


def _nodelay_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection with Nagle's algorithm off and, on Linux, ACKs sent at once.
    Paramiko leaves Nagle on, and then each of its small writes that follows another (key
    exchange, auth, exec + stdin + EOF) waits for the peer's delayed ACK, up to 40 ms on
    Linux: about 45 ms of a connect and 80 ms of every exec on loopback. The other
    direction stalls the same way (see _QuickAckSocket): 45 ms of every session open."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not hasattr(socket, "TCP_QUICKACK"):  # Linux only
        return sock
    quick = _QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    quick.settimeout(timeout)
    return quick


class SshTransport:
    def __init__(self, target: SshTarget) -> None:
        self.target = target
        self.name = target.name
        self.root = target.root
        self.state_dir = target.state_dir or target.root + STATE_DIR
        self._connection: Any = None

    def _connect(self) -> Any:
        if self._connection is not None:
            return self._connection
        # paramiko's transport thread logs a failed handshake with its traceback (to stderr
        # when nothing handles it); the error reaches the user once, as a ProvisionError
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        target = self.target
        config = Config(overrides={"load_ssh_configs": True})
        # --connect-timeout bounds the SSH greeting too (paramiko waits 15 s for it by default)
        kwargs: dict[str, Any] = {"banner_timeout": target.connect_timeout}
        if target.key:
            kwargs["key_filename"] = str(Path(target.key).expanduser())
        known = Path(target.known_hosts or "~/.ssh/known_hosts").expanduser()

        def checked(connection: Any) -> Any:
            """Host keys checked against known_hosts, for the host and the jump host alike."""
            client = connection.client
            client._host_keys = paramiko.HostKeys()  # forget Fabric's permissive defaults
            if known.is_file():
                client.load_host_keys(str(known))
            client.set_missing_host_key_policy(_HostKeyPolicy(target, known))
            return connection

        gateway = None
        if target.jump:
            gateway = checked(Connection(target.jump, config=config, connect_timeout=target.connect_timeout,
                                         connect_kwargs=dict(kwargs)))
        connection = checked(Connection(target.address, user=target.user, port=target.port, config=config,
                                        gateway=gateway, connect_timeout=target.connect_timeout,
                                        connect_kwargs=kwargs))
        try:
            if connection.gateway is None:
                connection.connect_kwargs["sock"] = _nodelay_socket(connection.host, connection.port,
                                                                    target.connect_timeout)
            connection.open()
        except ProvisionError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise ProvisionError(
                f"{target.name}: the host key of {exc.hostname} CHANGED (now {fingerprint(exc.key)}); refusing",
                hint="if the host was reinstalled, remove its old line from known_hosts; otherwise stop") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _connect_error(target, exc) from None
        transport = connection.client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        self._connection = connection
        return connection

    def run(self, script: str, env: dict[str, str] | None = None) -> Completed:
        connection = self._connect()
        command, stdin_prefix = remote_command(env, self.target.become, self.target.become_password)
        payload = stdin_prefix + script.encode()

        try:
            channel = connection.client.get_transport().open_session()
            channel.exec_command(command)
            channel.sendall(payload)
            channel.shutdown_write()
            stdout = channel.makefile("rb").read().decode(errors="replace")
            stderr = channel.makefile_stderr("rb").read().decode(errors="replace")
            code = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self.close()
            raise ProvisionError(f"{self.name}: the connection dropped: {exc}",
                                 hint="re-run: every file is old or new, and the next apply converges") from None
        if code == -1:
            self.close()
            raise ProvisionError(f"{self.name}: the connection dropped before the command finished",
                                 hint="re-run: every file is old or new, and the next apply converges")
        refused = become_refused(self.name, self.target.user, self.target.become, code, stderr)
        if refused is not None:
            raise refused
        return Completed(code, stdout, stderr)

    @contextlib.contextmanager
    def forward(self, remote_host: str, remote_port: int) -> Iterator[int]:
        """A local port on 127.0.0.1 tunnelled to remote_host:remote_port as seen from the
        host (like ssh -L): verify reaches a model server that listens on the host's loopback."""
        transport = self._connect().client.get_transport()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.2)
        stop = threading.Event()

        def bridge(client: socket.socket, channel: Any) -> None:
            with contextlib.closing(client), contextlib.closing(channel):
                while not stop.is_set():
                    ready, _, _ = select.select([client, channel], [], [], 0.5)
                    for source, sink in ((client, channel), (channel, client)):
                        if source in ready:
                            data = source.recv(65536)
                            if not data:
                                return
                            sink.sendall(data)

        def accept() -> None:
            while not stop.is_set():
                try:
                    client, peer = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                try:
                    channel = transport.open_channel("direct-tcpip", (remote_host, remote_port), peer)
                except Exception:
                    client.close()
                    continue
                threading.Thread(target=bridge, args=(client, channel), daemon=True).start()

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            yield listener.getsockname()[1]
        finally:
            stop.set()
            listener.close()
            acceptor.join(timeout=2)

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None
