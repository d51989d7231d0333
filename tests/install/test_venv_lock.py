"""A hash-locked venv built for real: the closure resolved against a loopback index,
then Venv's build script run with sh into a temp dir. Installed are exactly the locked
files (not what the index would give now); a file that does not hash right, or a host
that is not the lock's, stops the build with one @error line and leaves no half venv."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.install.venv import Venv
from provisioner.lock.wheels import resolve_venv
from provisioner.profile.install_section import VenvEngine
from tests.support.http_standin import HttpStandin
from tests.support.pypi_standin import serve_index, wheel

PYTHON = "/usr/bin/python3"
SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
pytestmark = pytest.mark.skipif(not os.access(PYTHON, os.X_OK), reason="builds a venv with /usr/bin/python3")


def host_target() -> tuple[str, str, str]:
    """This machine as resolve_for would name it, asked of the interpreter the venv is made with."""
    shown = subprocess.run([PYTHON, "-c", "import platform, sys; print('%d.%d' % sys.version_info[:2], "
                                          "platform.libc_ver()[1], platform.machine())"],
                           capture_output=True, text=True, check=True).stdout.split()
    return shown[0], shown[1], shown[2]


@pytest.fixture
def index() -> Iterator[tuple[HttpStandin, str]]:
    with HttpStandin() as standin:
        yield standin, serve_index(standin, [wheel("provision-demo-a", "1.0", ("provision-demo-b>=1",)),
                                             wheel("provision-demo-b", "1.0")])


def locked_venv(tmp_path: Path, index_url: str, target: tuple[str, str, str]) -> Venv:
    """The lock made with the controller's pip for this host, as the lead's select.py passes it."""
    python, glibc, machine = target
    engine = VenvEngine.model_validate({"method": "venv", "requirements": ["provision-demo-a==1.0"],
                                        "index_url": index_url,
                                        "resolve_for": {"python": python, "glibc": glibc, "machine": machine}})
    pinned = resolve_venv(engine)  # the demo wheels have no markers: any target python resolves here
    return Venv(str(tmp_path / "venvs" / "vllm"), tuple(engine.requirements), PYTHON, index_url, label="vllm",
                wheels=pinned.wheel_rows, target=target)


def run(venv: Venv, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    change = venv.change({}, "")
    assert change is not None
    script = tmp_path / f"build-{venv.digest}.sh"
    script.write_text(f"set -eu\nroot=''\n{change.script}\n")
    subprocess.run([SHELLCHECK, "-s", "sh", str(script)], check=True)  # every severity: none is expected
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=300, check=False)


def installed(link: Path) -> dict[str, str]:
    shown = subprocess.run([str(link / "bin" / "python"), "-m", "pip", "list", "--format=freeze",
                            "--disable-pip-version-check"], capture_output=True, text=True, check=True).stdout
    return dict(line.split("==", 1) for line in shown.split() if line.startswith("provision"))


def verified(venv: Venv) -> dict[str, tuple[str, str]]:
    probe = subprocess.run(["sh", "-c", venv.verify_probe("")], capture_output=True, text=True, check=True).stdout
    found = {key: value for _, _, key, value in (line.split(" ", 3) for line in probe.splitlines())}
    return {c.id: (c.status, c.observed) for c in venv.verify_checks(found)}


def test_the_locked_files_are_installed_not_what_the_index_has_now(index: tuple[HttpStandin, str],
                                                                   tmp_path: Path) -> None:
    standin, url = index
    venv = locked_venv(tmp_path, url, host_target())
    assert [w[:2] for w in venv.wheels] == [("provision-demo-a", "1.0"), ("provision-demo-b", "1.0")]
    serve_index(standin, [wheel("provision-demo-a", "1.0", ("provision-demo-b>=1",)), wheel("provision-demo-b", "1.0"),
                          wheel("provision-demo-b", "1.1")])  # b 1.1 appears after the lock
    done = run(venv, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    link = Path(venv.path)
    assert installed(link) == {"provision-demo-a": "1.0", "provision-demo-b": "1.0"}
    assert not standin.to("/simple/provision-demo-b/")[1:]  # the build asked no index: the lock's one visit only
    written = (link / ".provision-requirements.txt").read_text()
    assert written.splitlines()[1] == f"provision-demo-b @ {venv.wheels[1][2]} --hash=sha256:{venv.wheels[1][3]}"
    # verify checks every locked wheel, the dependency too
    assert verified(venv) == {"install.venv:vllm.provision-demo-a": ("pass", "provision-demo-a 1.0"),
                              "install.venv:vllm.provision-demo-b": ("pass", "provision-demo-b 1.0")}
    subprocess.run([str(link / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--index-url", url,
                    "provision-demo-b==1.1"], capture_output=True, check=True)
    assert verified(venv)["install.venv:vllm.provision-demo-b"] == ("fail", "provision-demo-b 1.1")


def test_a_tampered_wheel_stops_the_build_and_leaves_the_old_venv(index: tuple[HttpStandin, str],
                                                                  tmp_path: Path) -> None:
    standin, url = index
    first = locked_venv(tmp_path, url, host_target())
    assert run(first, tmp_path).returncode == 0
    link = Path(first.path)
    before = os.readlink(link)
    # a new lock of the same pins: b now 1.1, whose file the server corrupts on the way
    serve_index(standin, [wheel("provision-demo-a", "1.0", ("provision-demo-b>=1",)), wheel("provision-demo-b", "1.1")])
    second = locked_venv(tmp_path, url, host_target())
    assert second.digest != first.digest
    b = next(w for w in second.wheels if w[0] == "provision-demo-b")
    standin.files[b[2].removeprefix(standin.url())].wrong = True
    done = run(second, tmp_path)
    assert done.returncode == 1
    [error] = [line for line in done.stdout.splitlines() if line.startswith("@error")]
    assert error.startswith("@error venv:vllm: pip install failed: ERROR: THESE PACKAGES DO NOT MATCH THE HASHES")
    assert not Path(second.directory).exists()  # no half venv
    assert os.readlink(link) == before and installed(link)["provision-demo-b"] == "1.0"
    assert Path(second.directory + ".failed.log").is_file()


def test_a_host_other_than_the_locks_is_refused_before_pip_runs(index: tuple[HttpStandin, str],
                                                                 tmp_path: Path) -> None:
    standin, url = index
    python, glibc, machine = host_target()
    venv = locked_venv(tmp_path, url, ("3.1", glibc, machine))
    asked = len(standin.requests)
    done = run(venv, tmp_path)
    assert done.returncode == 1
    assert done.stdout.strip() == (f"@error venv:vllm: the lock resolved wheels for Python 3.1, glibc >= {glibc}, "
                                   f"{machine}; this host has Python {python}, glibc {glibc}, {machine} (hint: set "
                                   "install.engine.resolve_for to this host and run provision lock)")
    assert len(standin.requests) == asked  # pip never ran: no wheel was fetched
    assert not Path(venv.directory).exists() and not Path(venv.path).exists()


def test_a_newer_glibc_than_the_hosts_is_refused(index: tuple[HttpStandin, str], tmp_path: Path) -> None:
    _, url = index
    python, glibc, machine = host_target()
    newer = f"2.{int(glibc.split('.')[1]) + 1}"
    done = run(locked_venv(tmp_path, url, (python, newer, machine)), tmp_path)
    assert done.returncode == 1 and f"for Python {python}, glibc >= {newer}, {machine}; this host has" in done.stdout


def test_without_a_lock_the_venv_is_as_before() -> None:
    plain = Venv("/opt/provision/venvs/vllm", ("vllm==0.11.0",), label="vllm")
    locked = Venv("/opt/provision/venvs/vllm", ("vllm==0.11.0",), label="vllm",
                  wheels=(("vllm", "0.11.0", "https://files.example/vllm-0.11.0-py3-none-any.whl", "a" * 64),),
                  target=("3.12", "2.39", platform.machine()))
    assert "wheels" not in plain.inputs and plain.digest != locked.digest
    assert "--require-hashes" not in plain.build_script() and " vllm==0.11.0 " in plain.build_script() + " "
    assert "pip freeze" in plain.verify_probe("") and "pip list --format=freeze" in locked.verify_probe("")
