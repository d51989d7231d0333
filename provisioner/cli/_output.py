"""The one place that prints: human text on stderr (rich tables, lazily) or the
JSON envelope on stdout, and the JSON shape of every domain value.

Commands return a ``Result``; ``emit`` turns it into one JSON object (the
envelope: command, ok, error, then the command's own fields) or into text for
a person. Streaming commands (plan/apply per host, monitor) call ``show`` as
results arrive. Domain modules never print and have no ``as_json``: their JSON
shape is defined here, once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from provisioner.errors import Problem
from provisioner.units import format_size

if TYPE_CHECKING:  # types only: importing them at run time would load pydantic for --help
    from rich.table import Table as RichTable

    from provisioner.converge.generations import Generation
    from provisioner.converge.plan import Change, Plan
    from provisioner.facts.check import Check
    from provisioner.facts.gpu import Gpu
    from provisioner.facts.sample import Sample
    from provisioner.fit.placement import Device
    from provisioner.fit.predict import Prediction
    from provisioner.install import InstallChange


# --------------------------------------------------------------------------- what commands return

@dataclass(frozen=True)
class Table:
    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Lines:
    """Lines for a person (stderr)."""

    lines: tuple[str, ...]


@dataclass(frozen=True)
class Stdout:
    """The command's product for a pipe (a profile's YAML): stdout, as is."""

    text: str


Block = Table | Lines | Stdout


@dataclass(frozen=True)
class Result:
    """A command's outcome: its exit code, its JSON fields and its human rendering."""

    code: int
    fields: dict[str, Any] = field(default_factory=dict)
    human: tuple[Block, ...] = ()
    ok: bool = True
    error: Problem | None = None


def lines(*text: str) -> Lines:
    return Lines(tuple(text))


# --------------------------------------------------------------------------- writing

def envelope(command: str, ok: bool, error: Problem | None = None, **fields: Any) -> dict[str, Any]:
    """The envelope of every --json output: command, ok, error, then the command's own fields."""
    return {"command": command, "ok": ok, "error": problem_json(error) if error else None, **fields}


def emit(command: str, result: Result, as_json: bool) -> None:
    if as_json:
        print_json(envelope(command, result.ok, result.error, **result.fields))
    else:
        show(result.human)


def show(blocks: Iterable[Block]) -> None:
    for block in blocks:
        if isinstance(block, Table):
            print_table(block.title, list(block.columns), [list(row) for row in block.rows])
        elif isinstance(block, Lines):
            for line in block.lines:
                say(line)
        else:
            sys.stdout.write(block.text)
            sys.stdout.flush()


def print_json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")


def print_json_line(data: dict[str, Any]) -> None:
    """One compact object per line (monitor's stream of samples)."""
    sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def say(text: str) -> None:
    """A line for a person, on stderr so stdout stays parseable."""
    sys.stderr.write(text + "\n")


def report_error(command: str, problems: list[Problem], as_json: bool) -> None:
    if as_json:
        data = envelope(command, False, problems[0] if problems else Problem("error"))
        data["errors"] = [problem_json(p) for p in problems]
        print_json(data)
    for problem in problems:
        say(f"error: {problem.one_line()}")


_EMOJI_CODE = re.compile(r":[^\s:]*[A-Za-z][^\s:]*:")  # rich knows emoji by name, never digits alone


def plain_table(title: str, columns: list[str], rows: list[list[str]]) -> str | None:
    """The table as rich draws it without a terminal (no box, two blanks between columns,
    every line as wide as the table), for the tables that need none of rich's layout: plain
    ASCII cells without markup brackets, a title no wider than the table. None otherwise."""
    cells = [title, *columns, *(cell for row in rows for cell in row)]
    # rich reads "[...]" as markup and ":name:" as an emoji code: those stay rich's to draw
    if not all(cell.isascii() and cell.isprintable() and "[" not in cell and not _EMOJI_CODE.search(cell)
               for cell in cells):
        return None
    widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(columns)]
    total = sum(widths) + 2 * (len(columns) - 1)
    if len(title) > total or total > 200:
        return None
    lines = [title.ljust(total)] if title else []
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              for row in [columns, *rows]]
    return "\n".join(lines)


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    if not sys.stderr.isatty() and not os.environ.get("FORCE_COLOR"):  # rich (~60 ms to import) only if needed
        text = plain_table(title, columns, rows)
        if text is not None:
            say(text)
            return
    from rich.console import Console  # rich only when a table is drawn (start-up time)

    table, width = rich_table(title, columns, rows)
    Console(stderr=True, highlight=False, soft_wrap=False, width=width).print(table)


def rich_table(title: str, columns: list[str], rows: list[list[str]]) -> tuple[RichTable, int]:
    """The table print_table draws through rich, and the console width it draws it at."""
    from rich.table import Table  # rich only when a table is drawn (start-up time)

    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    for index, column in enumerate(columns):
        # every column but the last keeps its cells on one line; the last wraps if it must
        table.add_column(column, no_wrap=index < len(columns) - 1, overflow="fold")
    for row in rows:
        table.add_row(*row)
    widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(columns)]
    return table, min(max(sum(widths) + 2 * len(columns), len(title) + 2, 60), 220)


def first_line(text: str | None) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= 60 else line[:57] + "..."


# --------------------------------------------------------------------------- JSON of domain values

def problem_json(problem: Problem) -> dict[str, Any]:
    return {"message": problem.message, "hint": problem.hint, "file": problem.file, "line": problem.line,
            "column": problem.column, "field": problem.field}


def check_json(check: Check) -> dict[str, Any]:
    return {"id": check.id, "status": check.status, "observed": check.observed,
            "expected": check.expected, "hint": check.hint}


def device_json(device: Device) -> dict[str, Any]:
    return {"name": device.name, "capacity_bytes": device.capacity_bytes,
            "weights_bytes": device.weights_bytes, "kv_cache_bytes": device.kv_cache_bytes,
            "buffers_bytes": device.buffers_bytes, "free_bytes": device.free_bytes,
            **({"node": device.node} if device.node else {})}


def prediction_json(speed: Prediction) -> dict[str, Any]:
    return {"decode_tokens_per_s": round(speed.decode_tokens_per_s, 1),
            "decode_tokens_per_s_at_context": round(speed.decode_tokens_per_s_at_context, 1),
            "prefill_tokens_per_s": round(speed.prefill_tokens_per_s, 1),
            "bottleneck": speed.bottleneck, "streams": speed.streams,
            "decode_aggregate_tokens_per_s": round(speed.decode_aggregate_tokens_per_s, 1),
            "decode_per_stream_tokens_per_s": round(speed.decode_per_stream_tokens_per_s, 1)}


def change_json(change: Change) -> dict[str, Any]:
    return {"path": change.path, "action": change.action,
            "mode": list(change.mode) if change.mode else None,
            "owner": list(change.owner) if change.owner else None, "diff": change.diff}


def install_json(change: InstallChange) -> dict[str, Any]:
    return change.listing()


def generation_json(generation: Generation) -> dict[str, Any]:
    changes = generation.manifest.get("changes", [])
    return {"number": generation.number, "time": generation.time, "profile": generation.profile,
            "complete": generation.complete, "files_changed": len(changes), "changes": changes}


def dataclass_json(value: Any) -> dict[str, Any]:
    """A plain record (monitor samples and rates): its fields, as they are."""
    return dataclasses.asdict(value)


def sample_json(sample: Sample) -> dict[str, Any]:
    """A monitor sample: its fields, each GPU with what the sample probe reads."""
    return {**dataclass_json(sample), "gpus": [monitor_gpu_json(g) for g in sample.gpus]}


def monitor_gpu_json(gpu: Gpu) -> dict[str, Any]:
    """A GPU in monitor's JSON: the values the sample probe reads (facts.sample)."""
    return {"index": gpu.index, "temperature_c": gpu.temperature_c, "power_w": gpu.power_w,
            "power_limit_w": gpu.power_limit_w, "sm_clock_mhz": gpu.sm_clock_mhz, "clock_reasons": gpu.clock_reasons,
            "clock_mask": gpu.clock_mask, "memory_used_mib": gpu.memory_used_mib,
            "memory_total_mib": gpu.memory_total_mib, "utilization_pct": gpu.utilization_pct,
            "pcie_gen": gpu.pcie_gen_current, "pcie_width": gpu.pcie_width_current, "pcie_rx_mbs": gpu.pcie_rx_mbs,
            "pcie_tx_mbs": gpu.pcie_tx_mbs}


def host_json(host: str, plan: Plan | None, *, ok: bool = True, generation: int | None = None,
              error: Problem | None = None) -> dict[str, Any]:
    """One host's entry of plan/apply/rollback JSON."""
    return {
        "host": host,
        "ok": ok,
        "changes": [change_json(c) for c in plan.changes] if plan is not None else [],
        "handlers": list(plan.handlers) if plan is not None else [],
        "pending_handlers": list(plan.pending_builtin) if plan is not None else [],
        "reboot_required": bool(plan.reboot_required) if plan is not None else False,
        "restart_pending": list(plan.restart_pending) if plan is not None else [],
        "installs": [install_json(c) for c in plan.installs] if plan is not None else [],
        "stale_temps": list(plan.stale_temps) if plan is not None else [],
        "generation": generation,
        "error": problem_json(error) if error else None,
    }


# --------------------------------------------------------------------------- plan text

def plan_text(host: str, plan: Plan, *, show_diff: bool, color: bool) -> str:
    """The human summary of one host's plan, diffs included when asked."""
    out: list[str] = []
    counts = {a: sum(1 for c in plan.changes if c.action == a) for a in ("create", "update", "delete")}
    if plan.nothing_to_do:
        out.append(f"{host}: nothing to do")
    else:
        installs = len(plan.runnable_installs)
        out.append(f"{host}: {counts['create']} to create, {counts['update']} to update, "
                   f"{counts['delete']} to delete" + (f", {installs} to install" if installs else ""))
    out += _change_lines(plan, show_diff=show_diff, color=color)
    if plan.stale_temps:
        out.append(f"  {len(plan.stale_temps)} temp file(s) a killed run left, to remove: "
                   + ", ".join(plan.stale_temps[:3]) + (" ..." if len(plan.stale_temps) > 3 else ""))
    for install in plan.installs:
        size = f", {format_size(install.bytes)}" if install.bytes else ""
        reboot = ", needs a reboot" if install.reboot else ""
        text = f"  {'.' if install.pending else '*'} {install.action} {install.name}: {install.summary}{size}{reboot}"
        out.append(_color(text, "2" if install.pending else "36", color))
    if plan.handlers:
        out.append(f"  handlers that will run: {', '.join(plan.handlers)}")
    if plan.pending_builtin:
        out.append(f"  system handlers pending (not run under --root): {', '.join(plan.pending_builtin)}")
    if plan.restart_pending:
        out.append("  restart pending: the model server is running; pass --restart to restart it")
    if plan.reboot_required:
        why = ("a driver or kernel package changes" if any(c.reboot for c in plan.runnable_installs)
               else "a kernel module option changed")
        out.append(f"  reboot required: {why}")
    out += [f"  warning: {warning}" for warning in plan.warnings]
    return "\n".join(out)


def _change_lines(plan: Plan, *, show_diff: bool, color: bool) -> list[str]:
    marks = {"create": "+", "update": "~", "delete": "-"}
    paint = {"create": "32", "update": "33", "delete": "31"}
    out: list[str] = []
    for change in plan.changes:
        extra = []
        if change.mode:
            extra.append(f"mode {change.mode[0]} -> {change.mode[1]}")
        if change.owner:
            extra.append(f"owner {change.owner[0]} -> {change.owner[1]}")
        text = f"  {marks[change.action]} {change.path}" + (f" ({', '.join(extra)})" if extra else "")
        out.append(_color(text, paint[change.action], color))
        if show_diff and change.diff:
            for diff_line in change.diff.rstrip("\n").splitlines():
                code = "32" if diff_line.startswith("+") else "31" if diff_line.startswith("-") else ""
                out.append("      " + (_color(diff_line, code, color) if code else diff_line))
    return out


def _color(text: str, code: str, on: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if on and code else text


class LiveTable:
    """A table redrawn in place on a terminal (rich Live): one row per key, its latest values."""

    def __init__(self, title: str, columns: Sequence[str]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.title = title
        self.columns = tuple(columns)
        self.latest: dict[str, list[str]] = {}
        self.live = Live(console=Console(stderr=True), auto_refresh=False)
        self.live.start()

    def update(self, key: str, row: list[str]) -> None:
        from rich.table import Table as RichTable

        self.latest[key] = row
        table = RichTable(title=self.title, title_justify="left")
        for column in self.columns:
            table.add_column(column)
        for _, cells in sorted(self.latest.items()):
            table.add_row(*cells)
        self.live.update(table, refresh=True)

    def close(self) -> None:
        self.live.stop()
