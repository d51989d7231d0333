"""Every bundled profile renders into files that their own tools accept:
systemd-analyze verify for units, shellcheck and sh -n for scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.render.files import model_path
from provisioner.render.pipeline import build, write_tree
from tests.conftest import good_profiles

PROFILES = good_profiles()
SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def _stub(root: Path, path: str) -> None:
    target = root / path.lstrip("/")
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/sh\nexit 0\n")
    target.chmod(0o755)


@pytest.fixture(params=PROFILES, ids=[p.name for p in PROFILES])
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    built = build(request.param)
    write_tree(built.rendered, tmp_path, overwrite=True)
    units = [f.path for f in built.rendered.files if f.validate == "systemd-unit"
             and f.path.endswith((".service", ".timer"))]
    scripts = [f.path for f in built.rendered.files if f.validate == "sh"]
    # The binaries the units start: stubs, so that verify checks the units themselves.
    for stub in ("/usr/bin/nvidia-smi", "/usr/local/bin/llama-server", "/usr/local/bin/vllm",
                 "/usr/local/bin/ollama", "/bin/sh", "/usr/bin/sh"):
        _stub(tmp_path, stub)
    return tmp_path, units, scripts


def test_units_pass_systemd_analyze_verify(tree: tuple[Path, list[str], list[str]]) -> None:
    root, units, _ = tree
    assert units, "every profile renders at least the server unit"
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing: scripts/test installs it (package systemd)")
    for unit in units:
        problems = verify_problems(root, unit)
        assert not problems, f"{unit}:\n" + "\n".join(problems)


def verify_problems(root: Path, unit: str) -> list[str]:
    tool = shutil.which("systemd-analyze") or "systemd-analyze"
    result = subprocess.run(
        [tool, "verify", f"--root={root}", "--man=no", "--generators=no", unit],
        capture_output=True, text=True, check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    return [line for line in result.stderr.splitlines() if _real_problem(line)]


def test_verify_filter_still_catches_real_errors(tree: tuple[Path, list[str], list[str]]) -> None:
    """The filter above must not hide real errors: break a unit on purpose."""
    root, units, _ = tree
    unit = root / units[-1].lstrip("/")
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nBogusKey=1\nRestart=sometimes\n", 1))
    problems = verify_problems(root, units[-1])
    assert any("BogusKey" in line for line in problems)
    assert any("sometimes" in line for line in problems)


def _real_problem(line: str) -> bool:
    """Parse errors and unknown settings count; a missing host dependency does not."""
    ignorable = (
        "Failed to open /dev/", "Failed to setup", "multi-user.target",
        "network-online.target", "nvidia-persistenced.service", "Cannot add dependency",
        "Failed to create", "tuned.service", "-.slice", "systemd-journald",
        "Failed to connect", "bus", "cgroup", "not running in a container",
        "Unit is bound to inactive",
    )
    if not line.strip() or any(text in line for text in ignorable):
        return False
    markers = ("Unknown key", "Unknown section", "Failed to parse", "Invalid", "is not",
               "Missing", "bad", "error", "Error", "ignoring", "Ignoring")
    return any(marker in line for marker in markers)


def test_scripts_pass_shellcheck(tree: tuple[Path, list[str], list[str]]) -> None:
    root, _, scripts = tree
    assert scripts, "every profile renders a run script"
    for script in scripts:
        path = root / script.lstrip("/")
        assert os.access(path, os.X_OK), f"{script} is not executable"
        syntax = subprocess.run(["sh", "-n", str(path)], capture_output=True, text=True,
                                check=False)
        assert syntax.returncode == 0, syntax.stderr
        result = subprocess.run([SHELLCHECK, "--shell=sh", "--severity=style", str(path)],
                                capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{script}:\n{result.stdout}{result.stderr}"


def test_same_profile_same_bytes(tmp_path: Path) -> None:
    """Another process, another hash seed, another time zone: the same bytes."""
    for profile in PROFILES[:3]:
        here = tmp_path / "here"
        write_tree(build(profile).rendered, here, overwrite=True)
        there = tmp_path / "there"
        env = {**os.environ, "PYTHONHASHSEED": "12345", "TZ": "Asia/Kathmandu"}
        subprocess.run([sys.executable, "-m", "provisioner", "render", str(profile),
                        "--out", str(there), "--overwrite"], check=True, env=env,
                       capture_output=True)
        ours = {p.relative_to(here): p.read_bytes() for p in here.rglob("*") if p.is_file()}
        theirs = {p.relative_to(there): p.read_bytes() for p in there.rglob("*") if p.is_file()}
        assert ours == theirs


def test_vllm_takes_the_model_as_serves_positional_argument(tmp_path: Path) -> None:
    """`vllm serve MODEL`: the model directory is the first argument after `serve`, never
    `--model` (deprecated with `vllm serve` upstream; the positional form is what every
    pinned release accepts)."""
    root = Path(__file__).resolve().parents[2]
    built = build(root / "profiles" / "rtx-pro-6000-gpt-oss-120b-vllm.yaml")
    write_tree(built.rendered, tmp_path, overwrite=False)
    script = (tmp_path / "opt/provision/bin/llm-server-run.sh").read_text()
    sets = [line for line in script.splitlines() if line.startswith('set -- "$@" ')]
    model_dir = model_path(built.spec)
    assert model_dir.startswith("/srv/models/")
    assert sets[0].startswith(f'set -- "$@" {model_dir}  # the model directory')
    assert "--model" not in script and script.rstrip().endswith('serve "$@"')


def test_the_first_boot_key_unit_and_its_script_pass_their_tools(tmp_path: Path) -> None:
    """secrets.api_key.generate renders a oneshot and its script (no bundled profile uses it)."""
    from tests.conftest import make_profile

    built = build(make_profile(tmp_path, {"secrets": {"api_key": {"generate": True}}}), network=False)
    root = tmp_path / "tree"
    write_tree(built.rendered, root, overwrite=False)
    for stub in ("/usr/bin/nvidia-smi", "/usr/local/bin/llama-server", "/bin/sh", "/usr/bin/sh"):
        _stub(root, stub)
    unit, script = "/etc/systemd/system/llm-server-api-key.service", "/opt/provision/bin/llm-server-api-key.sh"
    assert {unit, script} <= {f.path for f in built.rendered.files}
    for name in (unit, "/etc/systemd/system/llm-server.service"):
        problems = verify_problems(root, name)
        assert not problems, f"{name}:\n" + "\n".join(problems)
    result = subprocess.run([SHELLCHECK, "--shell=sh", "--severity=style", str(root / script.lstrip("/"))],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
