"""``secrets.api_key: {generate: true}``: a random API key made on the host, once.

The key never passes through the controller, a plan, a diff, a generation's
backup or a log: the snippet makes it on the host from ``/dev/urandom`` into a
temp file created under ``umask 077`` and links it into place with ``ln``,
which fails rather than replace an existing key (a second apply, or a key the
admin wrote there, is kept). The unit reads it as a systemd credential
(``LoadCredential=api-key:PATH``), as it does ``from_file``. A rollback leaves
it, like every install.

32 random bytes, hex-encoded (64 characters): the size of the keys
``openssl rand -hex 32`` makes, and free of characters that a header or an
environment file would need to quote.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from provisioner.install import InstallChange, InstallKind

q = shlex.quote
KEY_BYTES = 32


def generated_key_path(service: str) -> str:
    return f"/etc/provision/{service}/api-key"


def read_hint(path: str) -> str:
    return f"sudo cat {path}"


@dataclass(frozen=True)
class GeneratedKey:
    path: str

    @property
    def name(self) -> str:
        return "secret:api-key"

    @property
    def kind(self) -> InstallKind:
        return "secret"

    def probe(self, root: str) -> str:
        target = q(root + self.path)
        return (f"if [ -s {target} ]; then printf '@install %s exists yes\\n' {q(self.name)}; "
                f"else printf '@install %s exists no\\n' {q(self.name)}; fi")

    def record(self) -> dict[str, object]:
        return {"kind": "secret", "path": self.path}  # where it is, never what it is

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        if found.get("exists") == "yes":
            return None
        summary = f"generate an API key into {self.path} (0600, root; never shown)"
        return InstallChange(self.name, "secret", "install", summary, self.script(), self.record())

    def script(self) -> str:
        target = f'"$root"{q(self.path)}'
        return (f"mkdir -p \"$(dirname {target})\"\n"
                f"temp={target}.provision-new-$$\n"
                f"( umask 077; od -An -tx1 -N{KEY_BYTES} /dev/urandom | tr -d ' \\n' > \"$temp\" )\n"
                f"[ \"$(wc -c < \"$temp\")\" -eq {2 * KEY_BYTES} ] || "
                f"{{ rm -f \"$temp\"; echo '@error {self.name}: could not read /dev/urandom'; exit 1; }}\n"
                # ln never replaces: a key already there (another apply won the race, or the admin's) stays
                f"ln \"$temp\" {target} 2>/dev/null || true\n"
                f"rm -f \"$temp\"")
