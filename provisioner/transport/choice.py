"""Which SSH transport reaches a host: the system ssh client (multiplexed) or Fabric."""

from __future__ import annotations

from collections.abc import Callable

from provisioner.errors import UsageError
from provisioner.transport import Transport
from provisioner.transport.openssh import OpensshTransport, ssh_binary
from provisioner.transport.remote import SshTarget

SSH_TRANSPORTS = ("openssh", "fabric")


def default_ssh_transport() -> str:
    """openssh where an ssh client is on PATH, else Fabric (pure Python, always there)."""
    return "openssh" if ssh_binary() is not None else "fabric"


def ssh_transport_factory(spec: SshTarget, choice: str | None) -> Callable[[], Transport]:
    """The transport for ``spec``, checked now (before any host is touched), opened later."""
    chosen = choice or default_ssh_transport()
    if chosen == "openssh":
        ssh = ssh_binary()
        if ssh is None:
            raise UsageError("--transport openssh: no `ssh` client on PATH",
                             hint="install the OpenSSH client, or use --transport fabric")
        return lambda: OpensshTransport(spec, ssh)
    if chosen == "fabric":
        from provisioner.transport.ssh import SshTransport  # noqa: PLC0415 - paramiko only when Fabric is chosen

        return lambda: SshTransport(spec)
    raise UsageError(f"unknown SSH transport {chosen!r}", hint=f"use one of: {', '.join(SSH_TRANSPORTS)}")
