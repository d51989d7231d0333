"""``secrets.api_key: {generate: true}``: a random API key made on the machine itself, once.

The key never passes through the controller, a plan, a diff, a generation's
backup or a log: it is made on the host from ``/dev/urandom`` into a temp file
created under ``umask 077`` and linked into place with ``ln``, which fails
rather than replace an existing key (a second apply, or a key the admin wrote
there, is kept). The unit reads it as a systemd credential
(``LoadCredential=api-key:PATH``), as it does ``from_file``. A rollback leaves
it, like every install.

Two places make it, from the same sh (``key_script``):
- a live or SSH apply, so that apply can say where the key is;
- ``SERVICE-api-key.service``, a oneshot the server unit requires, at every
  boot, without a Condition: the script itself keeps a full key (and makes it
  0600, root's) and replaces an empty or short one, the rule the probe checks,
  where a ``ConditionFileNotEmpty=`` would skip it for a one-byte file or a
  world-readable key. An apply into an image tree (``--root``) makes no key: a
  key in the image would be shared by every machine made from it, so each one
  makes its own at first boot, and plan warns about any key file the tree holds.

32 random bytes, hex-encoded (64 characters): the size of the keys
``openssl rand -hex 32`` makes, and free of characters that a header or an
environment file would need to quote. ``od`` and ``tr`` (coreutils) are on
every Debian/Ubuntu base.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from provisioner.install import InstallChange, InstallKind

if TYPE_CHECKING:  # a cached apply reads these from the build cache: no schema loaded
    from provisioner.profile.models import Profile

q = shlex.quote
KEY_BYTES = 32


def generated_key_path(service: str) -> str:
    return f"/etc/provision/{service}/api-key"


def key_unit(service: str) -> str:
    """The oneshot that makes the key at a machine's first start without one."""
    return f"{service}-api-key.service"


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
    unit: str  # the first-boot oneshot that makes it where apply does not (key_unit)

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
        # in an image any file there is a key every clone would keep (the script keeps 16+ bytes)
        image = (f"printf '@install %s image yes\\n' {q(self.name)}; "
                 f"if [ -e {target} ] || [ -L {target} ]; then printf '@install %s file yes\\n' {q(self.name)}; fi; "
                 if root else "")
        return (f"{image}if {_holds_a_key(target)} && [ \"$(stat -c %a:%u {target})\" = 600:0 ]; then "
                f"printf '@install %s exists yes\\n' {q(self.name)}; "
                f"else printf '@install %s exists no\\n' {q(self.name)}; fi")

    def record(self) -> dict[str, object]:
        return {"kind": "secret", "path": self.path}  # where it is, never what it is

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        if found.get("exists") == "yes":
            return None
        if root:
            # a key made into an image would be the key of every machine made from it
            per_machine = ("one key per machine" if found.get("file") != "yes" else
                           "not one per machine while the image holds a file there: remove it")
            summary = (f"made at first boot by {self.unit} into {self.path}, {per_machine} "
                       "(pending: an image gets no key)")
            return InstallChange(self.name, "secret", "install", summary, "", self.record(), pending=True)
        summary = f"generate an API key into {self.path} (0600, root; never shown)"
        return InstallChange(self.name, "secret", "install", summary, self.script(), self.record())

    def notes(self, found: dict[str, str], driver_changes: bool) -> list[str]:
        """An image tree that holds a key file already (an older apply, or copied in), whatever is
        in it: every machine made from it would share that key, or start from it."""
        if found.get("image") == "yes" and (found.get("file") == "yes" or found.get("exists") == "yes"):
            return [f"the image holds an API key in {self.path}: every machine made from it would share it; "
                    f"delete it from the tree, and each machine makes its own at first boot ({self.unit})"]
        return []

    def script(self) -> str:
        return key_script(f'"$root"{q(self.path)}',
                          f"echo {q(f'@error {self.name}: could not read /dev/urandom')}; exit 1")


def key_script(target: str, fail: str) -> str:
    """sh that makes the key at ``target`` (an sh word, quoted) unless a full key is there;
    ``fail`` (sh, ends in exit) runs when /dev/urandom gave less than the key."""
    return (f"mkdir -p \"$(dirname {target})\"\n"
            f"temp={target}.provision-new-$$\n"
            f"( umask 077; od -An -tx1 -N{KEY_BYTES} /dev/urandom | tr -d ' \\n' > \"$temp\" )\n"
            f"[ \"$(wc -c < \"$temp\")\" -eq {2 * KEY_BYTES} ] || {{ rm -f \"$temp\"; {fail}; }}\n"
            # ln never replaces: a full key already there (another apply won the race, or the
            # admin's) stays, made 0600 root; an empty or short file is no key and is replaced
            f"if {_holds_a_key(target)}; then\n"
            f"    rm -f \"$temp\"; chown 0:0 {target}; chmod 0600 {target}\n"
            f"else\n"
            f"    ln \"$temp\" {target} 2>/dev/null || mv -f \"$temp\" {target}\n"
            f"    rm -f \"$temp\"\n"
            f"fi")


@dataclass(frozen=True)
class SecretPlace:
    """Where a secret the server reads comes from (a profile's SecretRef, as plain values)."""

    name: str  # "API key", "Hugging Face token"
    from_env: str | None
    from_file: str | None
    generate: bool


@dataclass(frozen=True)
class SecretsOwed:
    """What apply's next steps say about secrets: kept in the build cache, so an apply that
    changed something needs no full build to print them."""

    service: str
    places: tuple[SecretPlace, ...]


def secrets_owed(profile: Profile) -> SecretsOwed:
    # without the built-in files no server unit reads the API key: nothing to write for it
    api_key = profile.secrets.api_key if profile.builtin_files else None
    places = tuple(SecretPlace(name, ref.from_env, ref.from_file, ref.generate)
                   for name, ref in (("API key", api_key), ("Hugging Face token", profile.secrets.hf_token))
                   if ref is not None)
    return SecretsOwed(profile.service.name, places)
