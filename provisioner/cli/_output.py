"""Output: the JSON envelope on stdout, human text on stderr (rich, lazily)."""

from __future__ import annotations

import json
import sys
from typing import Any

from provisioner.errors import Problem
from provisioner.units import format_size


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
    for index, column in enumerate(columns):
        # every column but the last keeps its cells on one line; the last wraps if it must
        table.add_column(column, no_wrap=index < len(columns) - 1, overflow="fold")
    for row in rows:
        table.add_row(*row)
    widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(columns)]
    width = min(max(sum(widths) + 2 * len(columns), len(title) + 2, 60), 220)
    Console(stderr=True, highlight=False, soft_wrap=False, width=width).print(table)


def host_json(host: str, plan: Any, *, ok: bool = True, generation: int | None = None,
              error: Problem | None = None) -> dict[str, Any]:
    """One host's entry of plan/apply JSON (the shape of issue 4)."""
    return {
        "host": host,
        "ok": ok,
        "changes": [c.as_json() for c in plan.changes] if plan is not None else [],
        "handlers": list(plan.handlers) if plan is not None else [],
        "pending_handlers": list(plan.pending_builtin) if plan is not None else [],
        "reboot_required": bool(plan.reboot_required) if plan is not None else False,
        "restart_pending": list(plan.restart_pending) if plan is not None else [],
        "installs": [c.as_json() for c in plan.installs] if plan is not None else [],
        "generation": generation,
        "error": error.as_json() if error else None,
    }


def plan_text(host: str, plan: Any, *, show_diff: bool, color: bool) -> str:
    """The human summary of one host's plan, diffs included when asked."""
    lines: list[str] = []
    counts = {a: sum(1 for c in plan.changes if c.action == a) for a in ("create", "update", "delete")}
    if not plan.changes and not plan.handlers and not plan.runnable_installs:
        lines.append(f"{host}: nothing to do")
    else:
        installs = len(plan.runnable_installs)
        lines.append(f"{host}: {counts['create']} to create, {counts['update']} to update, "
                     f"{counts['delete']} to delete" + (f", {installs} to install" if installs else ""))
    marks = {"create": "+", "update": "~", "delete": "-"}
    paint = {"create": "32", "update": "33", "delete": "31"}
    for change in plan.changes:
        extra = []
        if change.mode:
            extra.append(f"mode {change.mode[0]} -> {change.mode[1]}")
        if change.owner:
            extra.append(f"owner {change.owner[0]} -> {change.owner[1]}")
        text = f"  {marks[change.action]} {change.path}" + (f" ({', '.join(extra)})" if extra else "")
        lines.append(_color(text, paint[change.action], color))
        if show_diff and change.diff:
            for diff_line in change.diff.rstrip("\n").splitlines():
                code = "32" if diff_line.startswith("+") else "31" if diff_line.startswith("-") else ""
                lines.append("      " + (_color(diff_line, code, color) if code else diff_line))
    for install in plan.installs:
        size = f", {format_size(install.bytes)}" if install.bytes else ""
        reboot = ", needs a reboot" if install.reboot else ""
        text = f"  {'.' if install.pending else '*'} {install.action} {install.name}: {install.summary}{size}{reboot}"
        lines.append(_color(text, "2" if install.pending else "36", color))
    if plan.handlers:
        lines.append(f"  handlers that will run: {', '.join(plan.handlers)}")
    if plan.pending_builtin:
        lines.append(f"  system handlers pending (not run under --root): {', '.join(plan.pending_builtin)}")
    if plan.restart_pending:
        lines.append("  restart pending: the model server is running; pass --restart to restart it")
    if plan.reboot_required:
        why = ("a driver or kernel package changes" if any(c.reboot for c in plan.runnable_installs)
               else "a kernel module option changed")
        lines.append(f"  reboot required: {why}")
    for warning in plan.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)


def _color(text: str, code: str, on: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if on and code else text
