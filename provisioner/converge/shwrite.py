"""sh that writes bytes on a host with the shell's own printf where it can: each program
the apply script starts (base64, grep) is a fork and an exec on the host, and a fleet's
hosts share their cores with sshd."""

from __future__ import annotations

import base64
from shlex import quote as q


def write_bytes(content: bytes, target: str) -> str:
    """sh that writes ``content`` to ``target`` (already quoted) byte for byte: ASCII text by
    the printf builtin (no fork on the host), anything else through base64 -d."""
    if content.isascii() and b"\0" not in content:
        # dash's printf reports a failed write as "I/O error" alone: one byte more written by
        # head puts the reason ("No space left on device") on stderr for the error message
        return (f"printf '%s' {q(content.decode('ascii'))} > {target} "
                f"|| {{ head -c 1 /dev/zero >> {target}; exit 1; }}")
    data = base64.encodebytes(content).decode("ascii")
    return "\n".join([f"base64 -d > {target} <<'PROVISION_EOF'", data.rstrip("\n"), "PROVISION_EOF"])


def lines_to(lines: list[str], target: str) -> str:
    """sh writing the non-empty ``lines`` to ``target`` (an empty file for none), builtins only."""
    kept = [line for line in lines if line]
    return f"printf '%s\\n' {' '.join(q(line) for line in kept)} > {target}" if kept else f": > {target}"
