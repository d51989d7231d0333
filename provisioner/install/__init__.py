"""Resources that install things: packages, Python venvs, source builds, downloads.

They join files in the same flow. Each install item

- adds a probe (POSIX sh) to the ONE gather script; the probe prints lines
  ``@install NAME KEY VALUE...`` and never fails the gather;
- turns what its probe found into an ``InstallChange`` (or None: nothing to do),
  purely, in ``plan``;
- carries the sh snippet that makes the change inside apply's ONE batched
  script. A snippet leaves the old or the new state, never a mix (build or
  download under a temp name, rename when checked), prints
  ``@install-ok NAME`` when done and ``@error ...`` + a non-zero exit if not;
- is recorded in the generation manifest (``installs``: NAME -> record), so a
  later apply sees what an earlier one installed and can undo it (unhold a
  package the profile dropped) and ``verify`` can check it.

``verify`` reuses the same two functions: an item whose probe, run again,
gives a change is not installed as the profile says (a failed check).

API notes for part B (downloads): InstallChange gained ``pending`` (True: shown
in the plan but not run, e.g. packages under ``--root``, where the build host's
package database is not the image's); plan formats ``bytes`` itself.
``change()`` gets ``root`` ("" live, else the tree's host path): prefix every
path the snippet touches with it. apply runs each snippet in a subshell
``( set -eu; SNIPPET )`` with ``$root`` and ``$state`` set; on failure the
snippet prints ``@error NAME: why`` and exits non-zero; apply then stops with
EXIT_INSTALL before any file is replaced. Quote every value with shlex.quote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

InstallKind = Literal["package", "venv", "build", "download", "archive", "user", "secret", "fabricmanager"]
# the apply script's exit code when an install snippet failed (no file was replaced)
EXIT_INSTALL = 8
InstallAction = Literal["install", "upgrade", "downgrade", "hold", "unhold", "build", "download", "remove",
                        "switch", "enable"]  # switch: a link back to an already built versioned dir


@dataclass(frozen=True)
class InstallChange:
    name: str  # the item's unique name, e.g. "package:nvidia-driver-570"
    kind: InstallKind
    action: InstallAction
    summary: str  # one line for plan: "hello 2.10-2 -> 2.10-3, held"
    script: str  # POSIX sh run by apply (see the module doc)
    record: dict[str, Any]  # written to the generation manifest under installs[name]
    bytes: int | None = None  # what it downloads or writes, when known (plan shows it)
    reboot: bool = False  # a driver/initramfs/kernel module change: takes effect after a reboot
    notify: tuple[str, ...] = ()  # handlers owed when it runs (e.g. restart-server)
    pending: bool = False  # listed, not run (packages under --root)

    def listing(self) -> dict[str, Any]:
        """The change as the generation manifest lists it (install_changes) and --json shows it."""
        return {"name": self.name, "kind": self.kind, "action": self.action, "summary": self.summary,
                "bytes": self.bytes, "reboot": self.reboot, "pending": self.pending}


class Install(Protocol):
    """One thing to install on a host (frozen dataclasses implement it)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> InstallKind: ...

    def probe(self, root: str) -> str:
        """sh for the gather script: prints ``@install NAME KEY VALUE`` lines."""

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        """What apply must do given what the probe found (KEY -> VALUE), or None."""


def for_host(item: Any, facts: dict[str, str]) -> Any:
    """``item`` completed with the host's gathered facts, if its change depends on them
    (``with_facts``: the fabric manager, wanted where the host has NVSwitches)."""
    return item.with_facts(facts) if hasattr(item, "with_facts") else item


@dataclass(frozen=True)
class InstallStates:
    """Every ``@install`` line of a gather, by item name."""

    by_name: dict[str, dict[str, str]] = field(default_factory=dict)

    def of(self, name: str) -> dict[str, str]:
        return self.by_name.get(name, {})


def parse_install_lines(output: str) -> InstallStates:
    """``@install NAME KEY VALUE...`` -> {NAME: {KEY: VALUE}} (the value may hold blanks)."""
    found: dict[str, dict[str, str]] = {}
    for line in output.split("\n"):  # a host's answer: \n ends a line, nothing else
        if line.startswith("@install "):
            parts = line.split(" ", 3)
            if len(parts) >= 3:
                found.setdefault(parts[1], {})[parts[2]] = parts[3] if len(parts) == 4 else ""
    return InstallStates(found)
