"""The command line contract: exit codes, the JSON envelope, --help examples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from provisioner.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "examples" / "quickstart.yaml")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True,
                          text=True, check=False, cwd=ROOT)


def test_validate_ok_exit_0() -> None:
    result = run("validate", QUICKSTART)
    assert result.returncode == 0, result.stderr
    assert "ok: " in result.stderr
    assert result.stdout == ""


def test_validate_json_envelope() -> None:
    result = run("validate", QUICKSTART, "--json")
    data = json.loads(result.stdout)
    assert data["command"] == "validate" and data["ok"] is True and data["error"] is None
    assert data["profiles"][0]["ok"] is True


def test_validate_missing_file_is_one_line_exit_1(tmp_path: Path) -> None:
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.stderr


def test_validate_many_reports_each(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: provision/v1\nmetadata: {name: x}\nbogus: 1\n")
    result = run("validate", QUICKSTART, str(bad), "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert [p["ok"] for p in data["profiles"]] == [True, False]
    assert data["error"]["file"] == str(bad)


def test_render_writes_tree_with_modes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["render", QUICKSTART, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] is True
    for item in data["files"]:
        path = out / item["path"].lstrip("/")
        assert path.is_file()
        assert f"{path.stat().st_mode & 0o7777:04o}" == item["mode"]
    run_script = out / "opt/provision/bin/llm-server-run.sh"
    assert os.access(run_script, os.X_OK)


def test_render_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    result = run("render", QUICKSTART, "--out", str(tmp_path))
    assert result.returncode == 1
    assert "not empty" in result.stderr and "--overwrite" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "etc").exists()
    again = run("render", QUICKSTART, "--out", str(tmp_path), "--overwrite")
    assert again.returncode == 0
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_library_profile_by_name(tmp_path: Path) -> None:
    names = sorted(p.stem for p in (ROOT / "profiles").glob("*.yaml"))
    assert names
    result = run("validate", names[0])
    assert result.returncode == 0, result.stderr


def _command_paths(group: click.Group, prefix: list[str]) -> list[list[str]]:
    """Every command and group under ``group``, walked from click's own tree (a new
    command cannot be forgotten here)."""
    paths = [prefix]
    context = click.Context(group)
    for name in group.list_commands(context):  # click's API: main loads each command's module on demand
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            paths += _command_paths(command, [*prefix, name])
        else:
            paths.append([*prefix, name])
    return paths


ALL_COMMANDS = _command_paths(main, [])


def test_the_command_walk_sees_every_command() -> None:
    names = {" ".join(path) for path in ALL_COMMANDS}
    assert {"validate", "fit", "apply", "export ansible", "export cloud-init", "profiles show"} <= names


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda c: " ".join(c) or "provision")
def test_every_help_has_an_example(command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output and "provision " in result.output


def test_validate_is_fast_enough_to_use_interactively() -> None:
    """Heavy modules are imported lazily: --help must not import pydantic or jinja."""
    code = ("import sys; from provisioner import cli; "
            "print(sorted(m for m in ('pydantic', 'jinja2', 'rich', 'yaml') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("args", "message"), [
    (["fit"], "error: Missing argument 'PROFILE' (hint: see `provision fit --help`)"),
    (["export", "ansible", "examples/quickstart.yaml"], "error: Missing option '--out'"),
    (["rollback", "--to", "x"], "error: Invalid value for '--to': 'x' is not a valid integer"),
    (["plan", "--bogus", "x.yaml"], "error: No such option '--bogus'"),
])
def test_usage_errors_are_one_line_and_exit_1_not_2(args: list[str], message: str) -> None:
    """click exits 2 on usage errors; 2 means "a finding" here (CI reads it as changes
    pending), so a usage error is bad input like any other: one line, exit 1."""
    result = run(*args)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr
    as_json = run(*args, "--json")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["ok"] is False


def test_provision_alone_prints_its_help() -> None:
    result = run()
    assert result.returncode == 0 and "Usage: provision" in result.stdout


def test_verify_groups_in_help_are_the_checks_groups() -> None:
    """cli/verify.py spells the groups out so --help stays light; they must be verify's."""
    from provisioner.cli.verify import GROUPS as SHOWN
    from provisioner.verify.run import GROUPS

    assert SHOWN == GROUPS
