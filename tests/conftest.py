from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import sshd

ROOT = Path(__file__).resolve().parent.parent


def good_profiles() -> list[Path]:
    """Every bundled profile that must validate: the library and the examples."""
    found = sorted((ROOT / "profiles").glob("*.yaml")) + sorted(
        p for p in (ROOT / "examples").rglob("*.yaml")
        if "negative" not in p.parts and p.name != "inventory.yaml"
        and not p.name.startswith("_"))
    return found


@pytest.fixture(autouse=True)
def _no_public_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock resolved in a test must ask its own stand-in: the Hub, the Ollama registry, the
    public PyPI index and container registries are never reached (a closed loopback port
    answers instead)."""
    for name in ("HF_ENDPOINT", "PROVISION_OLLAMA_REGISTRY", "PROVISION_PYPI_INDEX", "PROVISION_CONTAINER_REGISTRY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # even over a developer's own setting


@pytest.fixture
def root_dir() -> Path:
    return ROOT


def make_profile(tmp_path: Path, patch: dict[str, object] | None = None,
                 files: dict[str, str] | None = None, name: str = "p.yaml") -> Path:
    """The quickstart profile with dotted-path values replaced (None deletes)."""
    import yaml

    data = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    for dotted, value in (patch or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    for rel, text in (files or {}).items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    """The CPU llama-server b11312 that scripts/build-llama-server builds with provision's own
    build resource (cached outside the repository: a second session builds nothing)."""
    missing = [tool for tool in ("cmake", "make", "c++") if shutil.which(tool) is None]
    if missing:
        message = f"building llama-server needs {', '.join(missing)} (Debian: apt-get install cmake make g++)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI the real-server tests must run
        pytest.skip(message)
    proc = subprocess.run([str(ROOT / "scripts" / "build-llama-server")], capture_output=True, text=True,
                          timeout=3600, check=False)
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-llama-server failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return Path(proc.stdout.strip().splitlines()[-2])


@pytest.fixture(params=sshd.TRANSPORTS)
def ssh_transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test that uses it runs once per SSH transport: PROVISION_TRANSPORT picks it for
    the `provision` runs, and the openssh masters they leave are stopped afterwards."""
    if request.param == "openssh" and shutil.which("ssh") is None:
        pytest.skip("no ssh client (scripts/test installs openssh-server, which brings it)")
    monkeypatch.setenv("PROVISION_TRANSPORT", request.param)
    with sshd.ssh_masters() as folder:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
        yield request.param
