"""Every mistake is reported precisely, and no traceback is reachable from bad input.

The cases are data: tests/cases/bad_profiles.yaml maps each case file in
tests/cases/bad_profiles/ to the error(s) `provision validate` must print, and
examples/negative/expected.yaml does the same for realistic profiles a user could
write. Each case runs in-process through click (fast, exit code and streams), and
all of them run once more in a real subprocess, batched into one `validate` call
per output mode, to prove real exit codes and that no traceback escapes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from provisioner.cli import main

ROOT = Path(__file__).resolve().parents[2]
CASES = ROOT / "tests" / "cases" / "bad_profiles"
TABLE = ROOT / "tests" / "cases" / "bad_profiles.yaml"
NEGATIVE = ROOT / "examples" / "negative"


@dataclass(frozen=True)
class Expected:
    message: str
    line: int | None
    column: int | None
    field: str | None
    hint: str | None
    file: str | None  # None: the case file itself

    def where(self, case: Path) -> str:
        path = str(case.parent / self.file) if self.file else str(case)
        if self.line is None:
            return path
        return f"{path}:{self.line}" if self.column is None else f"{path}:{self.line}:{self.column}"

    def prefix(self, case: Path) -> str:
        """How the error line must start: 'error: FILE:LINE:COL: field: '."""
        return f"error: {self.where(case)}: " + (f"{self.field}: " if self.field else "")


@dataclass(frozen=True)
class Case:
    name: str
    generate: str | None
    errors: tuple[Expected, ...]
    not_in_output: str | None


def _load_table() -> list[Case]:
    raw = yaml.safe_load(TABLE.read_text(encoding="utf-8"))
    cases = []
    for name, entry in raw.items():
        errors = tuple(
            Expected(message=e["message"], line=e.get("line"), column=e.get("column"),
                     field=e.get("field"), hint=e.get("hint"), file=e.get("file"))
            for e in entry["errors"])
        cases.append(Case(name, entry.get("generate"), errors, entry.get("not_in_output")))
    return cases


TABLE_CASES = _load_table()


# --- generated cases: written at test time, never committed ----------------


def _binary() -> bytes:
    return b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 16


def _non_utf8() -> bytes:
    return b"apiVersion: provision/v1\nmetadata:\n  name: caf\xe9\n"  # Latin-1 e-acute, line 3 column 12


def _deep_nesting() -> bytes:
    return b"[" * 10_000 + b"]" * 10_000 + b"\n"


def _write_huge(path: Path) -> None:
    chunk = b"# padding of a 50 MB file that is not a profile\n" * 21_846  # ~1 MiB
    with path.open("wb") as handle:
        for _ in range(50):
            handle.write(chunk)


def case_path(case: Case, tmp_dir: Path) -> Path:
    """The case's file: the committed one, or the generated one written into tmp_dir."""
    if case.generate is None:
        return CASES / case.name
    path = tmp_dir / case.name
    if not path.exists():
        if case.generate == "huge":
            _write_huge(path)
        else:
            makers = {"binary": _binary, "non-utf8": _non_utf8, "deep-nesting": _deep_nesting}
            path.write_bytes(makers[case.generate]())
    return path


# --- checks shared by every way of running a case -------------------------


def check_human_lines(lines: list[str], case_file: Path, errors: tuple[Expected, ...]) -> None:
    assert len(lines) == len(errors), f"{case_file}: expected {len(errors)} error line(s), got {lines}"
    for line, expected in zip(lines, errors, strict=True):
        prefix = expected.prefix(case_file)
        assert line.startswith(prefix), f"{line!r} does not start with {prefix!r}"
        assert expected.message in line[len(prefix):], f"{expected.message!r} not in {line!r}"
        if expected.hint is not None:
            assert "(hint: " in line and expected.hint in line.split("(hint: ", 1)[1], line


def check_json_error(error: dict[str, Any], case_file: Path, expected: Expected) -> None:
    assert expected.message in error["message"], error
    assert "\n" not in error["message"]
    assert error["line"] == expected.line, error
    assert error["column"] == expected.column, error
    assert error["field"] == expected.field, error
    assert error["file"] == (str(case_file.parent / expected.file) if expected.file else str(case_file))
    if expected.hint is not None:
        assert expected.hint in (error["hint"] or ""), error


def _run(args: list[str]) -> Any:
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    # click turns SystemExit into exit_code; any other exception is a bug (a traceback)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    return result


# --- the table is complete and consistent ---------------------------------


def test_table_and_folder_agree() -> None:
    committed = {p.name for p in CASES.iterdir() if not p.name.startswith("_")}
    in_table = {c.name for c in TABLE_CASES if c.generate is None}
    generated = {c.name for c in TABLE_CASES if c.generate is not None}
    assert committed == in_table, "every case file needs a row in bad_profiles.yaml, and every row a file"
    assert not generated & committed, "generated cases must not be committed"
    assert all(c.errors for c in TABLE_CASES)


# --- each case, in-process: exit 1, exact error lines, JSON envelope -------


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c.name for c in TABLE_CASES])
def test_bad_profile_human(case: Case, tmp_path: Path) -> None:
    path = case_path(case, tmp_path)
    result = _run(["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    check_human_lines(result.stderr.splitlines(), path, case.errors)
    if case.not_in_output:
        assert case.not_in_output not in result.stderr


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c.name for c in TABLE_CASES])
def test_bad_profile_json(case: Case, tmp_path: Path) -> None:
    path = case_path(case, tmp_path)
    result = _run(["validate", "--json", str(path)])
    assert result.exit_code == 1
    data = json.loads(result.stdout)  # exactly one JSON document
    assert data["command"] == "validate"
    assert data["ok"] is False
    check_json_error(data["error"], path, case.errors[0])
    (profile,) = data["profiles"]
    assert len(profile["errors"]) == len(case.errors)
    for error, expected in zip(profile["errors"], case.errors, strict=True):
        check_json_error(error, path, expected)
    if case.not_in_output:
        assert case.not_in_output not in result.stdout + result.stderr


# --- all cases again in real subprocesses (batched: the suite runs on 2 cores) ---


def _provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, check=False)


@pytest.fixture(scope="module")
def all_case_files(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Case, Path]]:
    tmp_dir = tmp_path_factory.mktemp("generated")
    return [(case, case_path(case, tmp_dir)) for case in TABLE_CASES]


def test_subprocess_human_batch(all_case_files: list[tuple[Case, Path]]) -> None:
    proc = _provision("validate", *(str(p) for _, p in all_case_files))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    for case, path in all_case_files:  # validate reports profile after profile, in order
        mine, lines = lines[:len(case.errors)], lines[len(case.errors):]
        check_human_lines(mine, path, case.errors)
        if case.not_in_output:
            assert case.not_in_output not in proc.stderr
    assert lines == []


def test_subprocess_json_batch(all_case_files: list[tuple[Case, Path]]) -> None:
    proc = _provision("validate", "--json", *(str(p) for _, p in all_case_files))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    first_case, first_path = all_case_files[0]
    check_json_error(data["error"], first_path, first_case.errors[0])
    assert len(data["profiles"]) == len(all_case_files)
    for (case, path), result in zip(all_case_files, data["profiles"], strict=True):
        assert result["profile"] == str(path)
        assert result["ok"] is False
        for error, expected in zip(result["errors"], case.errors, strict=True):
            check_json_error(error, path, expected)
        if case.not_in_output:
            assert case.not_in_output not in proc.stdout


def test_subprocess_single_file_exit_code() -> None:
    """One bad file alone: exit 1, one line on stderr, nothing on stdout."""
    case = next(c for c in TABLE_CASES if c.name == "duplicate-key.yaml")
    path = CASES / case.name
    proc = _provision("validate", str(path))
    assert (proc.returncode, proc.stdout) == (1, "")
    check_human_lines(proc.stderr.splitlines(), path, case.errors)


# --- negative examples: realistic profiles that must be refused -----------


def _negative_table() -> dict[str, str]:
    data: dict[str, str] = yaml.safe_load((NEGATIVE / "expected.yaml").read_text(encoding="utf-8"))
    return data


NEGATIVE_CASES = sorted(_negative_table().items())


def test_negative_examples_listed() -> None:
    files = {p.name for p in NEGATIVE.glob("*.yaml") if p.name != "expected.yaml"}
    assert files == {name for name, _ in NEGATIVE_CASES}
    assert 5 <= len(files) <= 8
    for name in files:  # each says at its top why it is refused
        assert (NEGATIVE / name).read_text(encoding="utf-8").startswith("#"), name


@pytest.mark.parametrize(("name", "message"), NEGATIVE_CASES, ids=[n for n, _ in NEGATIVE_CASES])
def test_negative_example_refused(name: str, message: str) -> None:
    path = NEGATIVE / name
    result = _run(["validate", str(path)])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {path}:"), lines[0]
    assert message in lines[0], lines[0]
