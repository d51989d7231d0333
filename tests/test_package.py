"""The wheel carries the templates and the library profiles, and installs a
working `provision` command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    wheels = list(out.glob("provision-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_ships_templates_profiles_and_catalog(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (ROOT / "templates").iterdir():
        assert f"provisioner/_data/templates/{template.name}" in names
    profiles = list((ROOT / "profiles").glob("*.yaml"))
    assert profiles
    for profile in profiles:
        assert f"provisioner/_data/profiles/{profile.name}" in names
    for part in ("gpus", "models", "engines"):
        assert f"provisioner/catalog/{part}.yaml" in names
    snippets = list((ROOT / "provisioner/facts/snippets").glob("*.sh"))
    assert snippets
    for snippet in snippets:  # the probes read them at run time
        assert f"provisioner/facts/snippets/{snippet.name}" in names
    assert "provisioner/facts/xid.yaml" in names
    canary = ROOT / "provisioner" / "verify" / "canary_data"
    for data in (p for p in canary.rglob("*") if p.is_file()):  # the quality canary's prompts, probes, limits
        assert f"provisioner/verify/canary_data/{data.relative_to(canary)}" in names
    assert any(n.endswith("entry_points.txt") for n in names)


def test_installed_wheel_renders_without_the_source_tree(wheel: Path, tmp_path: Path) -> None:
    """Installed outside the checkout, the command finds its bundled data."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import provisioner; print(provisioner.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True, env=env)
    assert where.stdout.startswith(str(site)), "the wheel's copy is the one imported"
    library = sorted((ROOT / "profiles").glob("*.yaml"))
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "provisioner", "render", library[0].name.
                             removesuffix(".yaml"), "--out", str(out)], cwd=tmp_path,
                            capture_output=True, text=True, check=False, env=env)
    assert result.returncode == 0, result.stderr
    assert (out / "etc/systemd/system").is_dir()
