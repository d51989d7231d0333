"""Every `provision ... --help` block shown in docs/ is what that command prints now.
After changing a command's options or text: `scripts/update-doc-help`."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import click
from click.testing import CliRunner

from provisioner.cli import main
from tests.conftest import ROOT

BLOCK = re.compile(r"```\n\$ provision (?P<args>[^\n]*--help)\n(?P<body>.*?)```", re.S)


def help_text(args: str) -> str:
    result = CliRunner().invoke(main, shlex.split(args), terminal_width=100, prog_name="provision")
    assert result.exit_code == 0, result.output
    return result.output


def refreshed(text: str) -> str:
    return BLOCK.sub(lambda m: f"```\n$ provision {m['args']}\n{help_text(m['args'])}```", text)


def test_help_blocks_in_the_docs_are_current() -> None:
    stale = []
    for page in [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]:
        text = page.read_text()
        new = refreshed(text)
        if os.environ.get("PROVISION_UPDATE_DOCS") and new != text:
            page.write_text(new)
        stale += [f"{page.relative_to(ROOT)}: provision {m['args']}" for m in BLOCK.finditer(text)
                  if m["body"] != help_text(m["args"])]
    assert not stale, "run scripts/update-doc-help:\n" + "\n".join(stale)


def test_the_docs_show_every_commands_help() -> None:
    shown = {m["args"] for page in (ROOT / "docs").glob("*.md") for m in BLOCK.finditer(page.read_text())}
    context = click.Context(main)
    for name in main.list_commands(context):
        command = main.get_command(context, name)
        subs = getattr(command, "commands", None)
        wanted = [f"{name} {sub} --help" for sub in subs] if subs else [f"{name} --help"]
        missing = [w for w in wanted if w not in shown]
        assert not missing, f"docs/ shows no help for: {missing}"


def test_a_stale_block_is_found(tmp_path: Path) -> None:
    page = "```\n$ provision validate --help\nUsage: an old text\n```\n"
    assert refreshed(page) != page and "Usage: provision validate" in refreshed(page)
