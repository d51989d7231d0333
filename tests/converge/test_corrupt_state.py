"""The corrupt-state table: each state file empty, junk, or the wrong JSON type, with every
command. A damaged file the command reads is one line naming it and exit 1, never a
traceback nor a raw exception name; a command that does not read it still works."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from provisioner.cli import main
from tests.conftest import make_profile

STATE = "var/lib/provision"
DAMAGE = {"empty": "", "junk": "abc\x00\n", "a list": "[1, 2]\n", "no files": '{"files": [1]}\n'}
# file -> the commands that read it (the others must not care)
READERS = {
    "last": {"plan", "apply", "generations", "rollback"},
    "generations/2/manifest.json": {"plan", "apply", "generations", "rollback"},
    "generations/1/manifest.json": {"generations", "rollback"},
    "pending-handlers": set(),  # names no handler has are not owed: junk there is ignored
}


@pytest.fixture(scope="module")
def two_generations(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("state")
    first = make_profile(folder, name="first.yaml")
    second = make_profile(folder, {"os.sysctl": {"vm.swappiness": 5}}, name="second.yaml")
    root = folder / "root"
    for profile in (first, second):
        result = CliRunner().invoke(main, ["apply", str(profile), "--root", str(root), "--yes"])
        assert result.exit_code == 0, result.output
    return root, second


def run(command: str, root: Path, profile: Path) -> tuple[int, str]:
    args = {"plan": ["plan", str(profile)], "apply": ["apply", str(profile), "--yes"],
            "generations": ["generations"], "rollback": ["rollback", "--yes"]}[command]
    result = CliRunner().invoke(main, [*args, "--root", str(root)])
    return result.exit_code, result.stderr


# 'last' holds a number, not JSON: its junk case covers a JSON object there
CASES = [(name, damage) for name in READERS for damage in DAMAGE if (name, damage) != ("last", "no files")]


@pytest.mark.parametrize(("name", "damage"), CASES)
def test_damaged_state_file(two_generations: tuple[Path, Path], tmp_path: Path, name: str, damage: str) -> None:
    template, profile = two_generations
    for command in ("plan", "apply", "generations", "rollback"):
        root = tmp_path / command
        shutil.copytree(template, root, symlinks=True)
        (root / STATE / name).write_text(DAMAGE[damage])
        code, stderr = run(command, root, profile)
        if command in READERS[name]:
            assert code == 1, f"{command}: {stderr}"
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), f"{command}: {stderr}"
            assert "Traceback" not in stderr and "Error:" not in stderr.split(": ", 1)[1][:40]
            assert name.rsplit("/", 1)[-1] in stderr, f"{command} does not name the file: {stderr}"
        else:
            assert code == 0, f"{command} reads no {name}, yet: {stderr}"


def test_reading_commands_create_nothing_and_wait_lock_is_not_negative(tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    for args in (["plan", str(profile)], ["generations"]):
        absent = tmp_path / f"absent-{args[0]}"
        result = CliRunner().invoke(main, [*args, "--root", str(absent)])
        assert result.exit_code in (0, 2), result.stderr
        assert not absent.exists(), f"{args[0]} made the folder it only reads"
    result = CliRunner().invoke(main, ["apply", str(profile), "--root", str(tmp_path / "r"), "--yes",
                                       "--wait-lock", "-5"])
    assert result.exit_code != 0 and "--wait-lock" in result.stderr
    assert not (tmp_path / "r").exists()
