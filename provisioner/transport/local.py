"""This machine, or a tree on it managed as if it were / (``--root DIR``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from provisioner.errors import UsageError
from provisioner.facts.gather import STATE_DIR
from provisioner.transport import Completed


class LocalTransport:
    def __init__(self, root: Path | None = None, state_dir: str | None = None) -> None:
        self.name = "local" if root is None else f"local:{root}"
        if root is None:
            self.root = ""
        else:
            resolved = root.resolve()
            if resolved == Path("/"):
                raise UsageError("--root / is the live system: leave out --root instead")
            if resolved.exists() and not resolved.is_dir():
                raise UsageError(f"--root {root} is not a folder")
            self.root = str(resolved)
        self.state_dir = state_dir or self.root + STATE_DIR

    def run(self, script: str, env: dict[str, str] | None = None) -> Completed:
        # no folder is made here: plan and generations only read, and apply's script makes the
        # state folder (and with it the root) once it has checked the way there
        # bytes, decoded as the SSH transports do: text=True would turn a bare \r from a
        # host's file into a line end (universal newlines), and a line into two
        result = subprocess.run(["sh", "-s"], input=script.encode(), capture_output=True,
                                check=False, env={**os.environ, **(env or {})})
        return Completed(result.returncode, result.stdout.decode(errors="replace"),
                         result.stderr.decode(errors="replace"))

    def close(self) -> None:
        """Nothing to drop: every run is its own process."""
