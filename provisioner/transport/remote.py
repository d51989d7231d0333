"""What both SSH transports run on a host: one exec of ``sh -s`` with the script on
stdin, or with become, sudo in front of it.

The sudo password is never on a command line (here or on the host) nor in an
environment: it is the first line of the exec's stdin, read by a small wrapper
(``read -r`` stops at the newline, so not one byte of the script is taken), handed
to sudo on a pipe of its own, and the script's shell reads only what follows it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from provisioner.errors import ProvisionError


@dataclass(frozen=True)
class SshTarget:
    name: str  # the inventory name, used in reports
    address: str
    port: int | None = None
    user: str | None = None
    key: str | None = None
    root: str = ""  # manage this tree on the host instead of /
    state_dir: str | None = None  # default: <root>/var/lib/provision
    jump: str | None = None
    become: bool = False
    # never logged, never on a command line: it reaches sudo through a pipe of its own
    become_password: str | None = field(default=None, repr=False)
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts
    accept_new_host_key: bool = False
    connect_timeout: float = 10.0

WRONG_PASSWORD = 97
# sudo -v checks the password once (stdin holds exactly one line, so a wrong
# one is never retried); -k then makes sudo read it again for the command, so
# the script that follows on the same pipe is never taken for a password.
_SUDO_WRAPPER = """IFS= read -r pw
if sudo -n true 2>/dev/null; then
    exec sudo -n @SHELL@
fi
if ! printf '%s\\n' "$pw" | sudo -k -S -p '' -v 2>/dev/null; then
    echo '@become-refused' >&2
    exit 97
fi
{ printf '%s\\n' "$pw"; cat; } | sudo -k -S -p '' @SHELL@
"""


def remote_command(env: dict[str, str] | None, become: bool, password: str | None) -> tuple[str, bytes]:
    """The command line for the exec request, and what goes on its stdin before the script."""
    assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted((env or {}).items()))
    shell = f"env {assigns} sh -s" if assigns else "sh -s"
    if become and password is not None:
        return "sh -c " + shlex.quote(_SUDO_WRAPPER.replace("@SHELL@", shell)), password.encode() + b"\n"
    if become:
        return f"sudo -n {shell}", b""
    return shell, b""


def become_refused(name: str, user: str | None, become: bool, code: int, stderr: str) -> ProvisionError | None:
    """sudo said no: a wrong password (tried once) or none where one is needed."""
    if code == WRONG_PASSWORD and "@become-refused" in stderr:
        return ProvisionError(f"{name}: sudo refused the password for {user or 'this user'} "
                              "(one attempt, not retried)",
                              hint="check the password (--ask-become-pass or PROVISION_BECOME_PASSWORD)")
    if become and code == 1 and "password is required" in stderr:
        return ProvisionError(f"{name}: sudo needs a password for {user or 'this user'}",
                              hint="allow passwordless sudo (NOPASSWD) for this user, or connect as root")
    return None
