"""What render produces and plan/apply consume: typed, frozen resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # types only: a cached build's files load without the install modules
    from provisioner.install import Install

# How a file is checked before it replaces the old one (see apply).
Validator = Literal["none", "sh", "systemd-unit", "sysctl", "env", "tmpfiles", "modprobe",
                    "limits", "tuned", "quadlet"]


@dataclass(frozen=True)
class File:
    path: str  # absolute path on the target, e.g. /etc/sysctl.d/90-provision-llm.conf
    content: bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    validate: Validator = "none"
    notify: tuple[str, ...] = ()  # handlers to run when this file changes
    secret: bool = False  # never shown in a diff, log or JSON
    template: str = ""  # where it came from, for messages
    managed: bool = True  # False: restored by a rollback, but never provision's to delete

    @property
    def mode_text(self) -> str:
        return f"{self.mode:04o}"


@dataclass(frozen=True)
class Directory:
    path: str
    mode: int = 0o755
    owner: str = "root"
    group: str = "root"

    @property
    def mode_text(self) -> str:
        return f"{self.mode:04o}"


@dataclass(frozen=True)
class Rendered:
    """The whole desired state of one host for one profile."""

    files: tuple[File, ...]
    directories: tuple[Directory, ...] = ()
    handlers: dict[str, str] = field(default_factory=dict)  # name -> shell command
    warnings: tuple[str, ...] = ()
    # (URL, seconds): how apply --restart knows the restarted server is ready
    readiness: tuple[str, int] | None = None
    # what apply installs (provisioner/install: packages, venvs, builds, downloads), in order
    installs: tuple[Install, ...] = ()

    def file(self, path: str) -> File:
        for item in self.files:
            if item.path == path:
                return item
        raise KeyError(path)
