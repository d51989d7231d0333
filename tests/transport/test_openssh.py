"""Where the openssh transport keeps its control sockets (the SSH runs themselves are
in test_ssh.py, once per transport)."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.errors import ProvisionError
from provisioner.transport import openssh


@pytest.fixture
def short() -> Iterator[Path]:
    """A folder with a short path (pytest's own are too long to hold a socket)."""
    folder = Path(tempfile.mkdtemp(prefix="pv-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_sockets_go_under_the_runtime_dir_in_a_private_folder(short: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = short / "run"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    folder = openssh.control_dir()
    assert folder == runtime / "provision-ssh"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_a_runtime_dir_too_long_for_a_socket_falls_back_to_the_cache(short: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    deep = short / ("d" * 60)
    deep.mkdir(parents=True)
    cache = short / "c"
    cache.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    folder = openssh.control_dir()
    assert folder == cache / "provision" / "ssh"
    # the longest path ssh binds there, "<socket>.<16 random>", still fits in sun_path (108 bytes with NUL)
    assert len(str(folder / ("x" * 20))) + 17 + 1 <= 108


def test_a_folder_others_can_write_to_is_never_used(short: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = short / "run"
    (runtime / "provision-ssh").mkdir(parents=True)
    os.chmod(runtime / "provision-ssh", 0o777)  # noqa: S103 - the unsafe folder under test
    cache = short / "c"
    cache.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert openssh.control_dir() == cache / "provision" / "ssh"


def test_no_short_private_folder_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    monkeypatch.setenv("XDG_CACHE_HOME", str(deep))
    monkeypatch.setenv("TMPDIR", str(deep))
    monkeypatch.setattr("tempfile.tempdir", None)  # gettempdir() reads TMPDIR afresh
    with pytest.raises(ProvisionError) as caught:
        openssh.control_dir()
    assert "XDG_RUNTIME_DIR" in (caught.value.problems[0].hint or "")
