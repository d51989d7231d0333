"""The Hugging Face token on the host, for a download only, never on a command line.

``secrets.hf_token`` names where the token lives on the host, as every secret
does: ``from_file`` a file there, ``from_env`` a variable of the service's
secrets file (``/etc/provision/SERVICE/secrets.env``, which the operator keeps;
it is read with sed, never sourced). ``WithToken`` wraps a download: right
before its snippet runs, a header file (``Authorization: Bearer ...``, mode
0600, in /run which is cleared at boot) is written from that source for curl's
``--header @file``; right after, it is removed, whether the download worked or
not. The token never enters a profile, a plan, a log or the manifest.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from typing import Any

from provisioner.install import Install, InstallChange, InstallKind


def header_path(service: str) -> str:
    return f"/run/provision/{service}-hf-header"


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
