"""How scripts reach a host. Plan/apply code does not know which one it talks to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


class Transport(Protocol):
    """Runs a POSIX sh script (given on stdin) on the target."""

    name: str
    root: str  # "" for the real /, else the tree managed as /
    state_dir: str  # provision's state (lock, generations) as a path on the host

    def run(self, script: str, env: dict[str, str] | None = None) -> Completed: ...

    def close(self) -> None:
        """Drop the connection (if any); the transport is not used afterwards."""
