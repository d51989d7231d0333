"""Connecting fails in one line that says what happened, never a paramiko traceback
nor the library's wording ("[Errno None] Unable to connect", "No existing session")."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIBRARY_WORDS = ("Errno None", "No existing session", "Traceback", "paramiko")


def plan_on(host: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", "plan", str(ROOT / "examples/quickstart.yaml"),
                           "--host", host, "--known-hosts", str(tmp_path / "known_hosts"),
                           "--connect-timeout", "5"],
                          capture_output=True, text=True, check=False, env={**os.environ, "HOME": str(tmp_path)})


@pytest.fixture
def not_ssh() -> Iterator[int]:
    """A loopback port that accepts TCP and answers like a web server."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                continue
            with client:
                client.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    listener.close()


def test_a_port_that_does_not_speak_ssh(not_ssh: int, tmp_path: Path) -> None:
    proc = plan_on(f"root@127.0.0.1:{not_ssh}", tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr
    assert "does not speak SSH" in proc.stderr
    assert not any(word in proc.stderr for word in LIBRARY_WORDS), proc.stderr


def test_a_port_nothing_listens_on(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port just freed: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = plan_on(f"root@127.0.0.1:{port}", tmp_path)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"nothing accepts connections on 127.0.0.1:{port}" in proc.stderr
    assert not any(word in proc.stderr for word in LIBRARY_WORDS), proc.stderr
