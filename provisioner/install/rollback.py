"""What ``rollback`` does to installs (pure): point the links back, leave packages.

A venv, build or archive lives in a versioned dir behind a stable link, and
the dir of every earlier generation stays on disk, so rolling back to
generation N switches each link back to the dir N's manifest recorded, if that
dir is still complete (its stamp, or for an archive the dir itself). Packages
are not downgraded: one held in N and still wanted stays as it is; one added
after N is unheld (never removed), as when a profile drops it. Downloaded
model files stay.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from provisioner.install import InstallChange, InstallKind
from provisioner.install.venv import STAMP, switch_link

LINKED = ("venv", "build", "archive")


def _kind(record: dict[str, Any]) -> str:
    if "kind" in record:
        return str(record["kind"])
    return "archive" if "dest" in record and "dir" in record else "other"  # part B's archive records


@dataclass(frozen=True)
class LinkBack:
    """The link of a venv, build or archive, back to the dir a generation recorded."""

    name: str
    record: dict[str, Any] = field(hash=False)

    @property
    def kind(self) -> InstallKind:
        kind = _kind(self.record)
        return kind if kind in LINKED else "build"  # type: ignore[return-value]

    @property
    def link(self) -> str:
        return str(self.record.get("path") or self.record.get("dest"))

    @property
    def directory(self) -> str:
        return str(self.record["dir"])

    def probe(self, root: str) -> str:
        link, name = shlex.quote(root + self.link), shlex.quote(self.name)
        return f"if [ -L {link} ]; then printf '@install %s link %s\\n' {name} \"$(readlink {link})\"; fi"

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        target = PurePosixPath(self.directory).name
        if found.get("link") == target:
            return None
        d = '"$root"' + shlex.quote(self.directory)
        complete = f"[ -r {d}/{STAMP} ]" if self.kind in ("venv", "build") else f"[ -d {d} ]"
        script = (f"{complete} || {{ echo {shlex.quote(f'@error {self.name}: {self.directory} is gone or incomplete')}"
                  f"; exit 1; }}\n" + switch_link(self.link, self.directory))
        was = found.get("link", "no link")
        return InstallChange(self.name, self.kind, "switch", f"{self.link}: {was} -> {target}", script,
                             self.record, notify=("restart-server",))


@dataclass(frozen=True)
class Kept:
    """An item the target and the last generation both have, left as it is (its record kept)."""

    name: str
    kept_record: dict[str, Any] = field(hash=False)
    probe_only = False

    @property
    def kind(self) -> InstallKind:
        kind = _kind(self.kept_record)
        return kind if kind in ("package", "download") else "download"  # type: ignore[return-value]

    def probe(self, root: str) -> str:
        return ""

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        return None


def rollback_items(target: dict[str, Any], last: dict[str, Any]) -> tuple[LinkBack | Kept, ...]:
    """Items that make the installs what generation N had (``target``: its manifest's installs,
    ``last``: the current generation's). Anything in ``last`` only is dropped by plan as usual."""
    items: list[LinkBack | Kept] = []
    for name, record in sorted(target.items()):
        if _kind(record) in LINKED and "dir" in record and (record.get("path") or record.get("dest")):
            items.append(LinkBack(name, record))
        elif name in last:
            items.append(Kept(name, last[name]))
    return tuple(items)
