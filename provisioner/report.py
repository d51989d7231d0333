"""Output: the JSON envelope on stdout, human text on stderr (rich, lazily)."""

from __future__ import annotations

import json
import sys
from typing import Any

from provisioner.errors import Problem


def envelope(command: str, ok: bool, error: Problem | None = None,
             **fields: Any) -> dict[str, Any]:
    """DESIGN.md's envelope: command, ok, error, then the command's own fields."""
    return {"command": command, "ok": ok, "error": error.as_json() if error else None, **fields}


def print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def say(text: str) -> None:
    """A line for a person, on stderr so stdout stays parseable."""
    sys.stderr.write(text + "\n")


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    Console(stderr=True, highlight=False, soft_wrap=False, width=120).print(table)
