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


# shorter than this a file is not taken as a key (an empty one would disable auth); an
# admin's own key of this length or more is kept
MIN_KEY_CHARS = 16


def _holds_a_key(target: str) -> str:
    """sh test: ``target`` (quoted) is a file of at least MIN_KEY_CHARS bytes; stat, not a
    read, so a plan without root still sees it."""
    return f"[ -s {target} ] && [ \"$(stat -c %s {target})\" -ge {MIN_KEY_CHARS} ]"


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
        # a key is there only when it is the full key, 0600 and root's: an empty file would
        # give the engine an empty key, which vLLM and llama.cpp take as "no auth"
        target = q(root + self.path)
        return (f"if {_holds_a_key(target)} && [ \"$(stat -c %a:%u {target})\" = 600:0 ]; then "
                f"printf '@install %s exists yes\\n' {q(self.name)}; "
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
                # ln never replaces: a full key already there (another apply won the race, or the
                # admin's) stays, made 0600 root; an empty or short file is no key and is replaced
                f"if {_holds_a_key(target)}; then\n"
                f"    rm -f \"$temp\"; chown 0:0 {target}; chmod 0600 {target}\n"
                f"else\n"
                f"    ln \"$temp\" {target} 2>/dev/null || mv -f \"$temp\" {target}\n"
                f"    rm -f \"$temp\"\n"
                f"fi")
