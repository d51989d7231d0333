"""The Hugging Face token on the host, for a download only, never on a command line.

``secrets.hf_token`` names where the token lives on the host, as every secret
does: ``from_file`` a file there, ``from_env`` a variable of the service's
secrets file (``/etc/provision/SERVICE/secrets.env``, which the operator keeps;
it is read with sed, never sourced). ``WithToken`` wraps a download: right
before its snippet runs, a header file (``Authorization: Bearer ...``, mode
0600, in /run which is cleared at boot) is written from that source for curl's
``--header @file``; right after, it is removed, whether the download worked or
not. The token never enters a profile, a plan, a log or the manifest.

``controller_token`` is the same source read on the machine provision runs on, for
what the controller asks the hub itself (the file listing of plan, fit's shape read,
``provision lock``): ``from_env`` from its environment, ``from_file`` the file's first
line when it is readable there. Held in memory only, never written or printed.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provisioner.install import Install, InstallChange, InstallKind

if TYPE_CHECKING:
    from provisioner.profile.models import SecretRef


def header_path(service: str) -> str:
    return f"/run/provision/{service}-hf-header"


def controller_token(ref: SecretRef | None) -> str | None:
    """The profile's Hugging Face token as this machine holds it, or None (no secret named,
    the variable unset, the file missing or unreadable here: a public repo needs none)."""
    if ref is None:
        return None
    if ref.from_env:
        return os.environ.get(ref.from_env) or None
    if ref.from_file:
        try:
            # the first line, as the host's `head -n 1` reads it (token_from_file)
            text = Path(ref.from_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        return text.partition("\n")[0].strip() or None
    return None


def controller_token_place(ref: SecretRef) -> str:
    """Where controller_token looked, for a message (never the token)."""
    return f"${ref.from_env} of this shell" if ref.from_env else f"{ref.from_file} on this machine"


def token_from_file(path: str) -> str:
    """sh printing the token kept in a file (under ``$root`` for an image tree)."""
    return f"head -n 1 \"$root\"{shlex.quote(path)}"


def token_from_secrets_env(env_file: str, name: str) -> str:
    """sh printing VAR's value from a KEY=value file, its quotes removed; the file is never executed."""
    return (f"sed -n {shlex.quote(f's/^{name}=//p')} \"$root\"{shlex.quote(env_file)} | tail -n 1 | "
            "sed -e 's/^\"\\(.*\\)\"$/\\1/' -e \"s/^'\\(.*\\)'$/\\1/\"")


@dataclass(frozen=True)
class WithToken:
    inner: Install
    header_file: str  # the host path the inner download reads its header from
    token_sh: str  # sh printing the token
    where: str  # for messages: where the token was looked for

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def kind(self) -> InstallKind:
        return self.inner.kind

    def probe(self, root: str) -> str:
        return self.inner.probe(root)

    def record(self) -> dict[str, Any]:
        record = getattr(self.inner, "record", None)
        return dict(record()) if callable(record) else {"kind": self.kind}

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        change = self.inner.change(found, root)
        if change is None or change.pending:
            return change
        return replace(change, script=self.wrap(change.script))

    def wrap(self, script: str) -> str:
        header, error = shlex.quote(self.header_file), shlex.quote(f"@error {self.name}: no token in {self.where}")
        return "\n".join([
            f"mkdir -p {shlex.quote(self.header_file.rsplit('/', 1)[0])}",
            f"token=$({self.token_sh} 2>/dev/null) || token=",
            f"[ -n \"$token\" ] || {{ echo {error}; exit 1; }}",
            f"(umask 077; printf 'Authorization: Bearer %s\\n' \"$token\" > {header})",
            "unset token",
            "set +e",
            f"(\n{script}\n)",
            "rc=$?",
            "set -e",
            f"rm -f {header}",
            "exit \"$rc\""])
