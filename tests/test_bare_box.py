"""The last mile, end to end: from an empty --root, one `provision apply --yes` on a CPU
profile ends in a server that `provision verify` passes.

Real: provision, the build, llama-server, the tree's accounts. Stood in: the hub (a loopback
stand-in, tests/support/hub_standin.py) and systemd, whose part the test plays from the unit
file's lines (no sandboxing, DeviceAllow or supplementary groups, which a CPU server does not
need):
- `provision lock` pins the stand-in repo's commit and the quant's file with its sha256;
- apply creates the service user in the tree's passwd (systemd-sysusers --root), builds
  llama-server through the build resource from the pinned llama-cpp-python sdist (the
  same inputs as scripts/build-llama-server, in a fresh tree: a full build), downloads
  the tiny model from the stand-in and checks it against the lock, and writes the units;
  the image holds no API key: the test plays the first boot's oneshot that makes it;
- the test then starts the server as the unit would (its User=, EnvironmentFile=,
  Environment=, LoadCredential=, WorkingDirectory= and ExecStart=) in a mount namespace
  of its own, where the tree's /opt/provision, /srv, /var/lib and /var/cache are mounted
  at their places, and `provision verify --endpoint` must exit 0;
- a second apply is a no-op; a changed quant is refused until `provision lock`, then
  plan shows the new download and --model path, and apply and verify pass again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.install.test_generated_key import first_boot
from tests.support import bare_box
from tests.support.bare_box import COMMIT, DEST, SDIST_SHA256, SERVICE, write_profile
from tests.support.http_standin import HttpStandin
from tests.support.hub_standin import serve_repo
from tests.support.unit_server import start_as_the_unit, stop
from tests.verify.test_endpoint import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("setpriv") is None,
                       reason="needs root, unshare(1) and setpriv(1): the server runs as the unit's user "
                              "in a mount namespace of the test's own"),
]


@pytest.fixture(scope="module")
def quants(llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    vocab = llama_server_binary.parents[6] / "models" / "ggml-vocab-qwen2.gguf"
    return bare_box.quants(vocab, tmp_path_factory.mktemp("quants"))


@pytest.fixture(scope="module")
def hub(quants: dict[str, bytes]) -> Iterator[HttpStandin]:
    with HttpStandin() as standin:
        serve_repo(standin, bare_box.hub_repo(quants), branch="main")
        yield standin


class Box:
    def __init__(self, directory: Path, hub: HttpStandin) -> None:
        self.directory = directory
        self.root = directory / "root"
        self.env = {**os.environ, "HF_ENDPOINT": hub.url(), "PROVISION_CACHE": str(directory / "cache")}

    def provision(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                              env=self.env, cwd=self.directory, check=False)


def verify(box: Box, profile: Path, port: int) -> subprocess.CompletedProcess[str]:
    # The tree is an image, not the machine the server runs on: the GPU group belongs to the
    # booted image. --no-needle: the tiny model's weights are random, so it cannot recall a
    # fact (tests/verify/test_endpoint.py shows the needle failing on it for that reason).
    return box.provision("verify", str(profile), "--root", str(box.root), "--endpoint",
                         f"http://127.0.0.1:{port}", "--only", "drift,model,install,endpoint", "--no-needle",
                         "--json")


def not_passed(verified: subprocess.CompletedProcess[str]) -> list[object]:
    try:
        hosts = json.loads(verified.stdout)["hosts"]
    except (ValueError, KeyError):
        return [verified.stdout[-3000:]]
    return [c for h in hosts for c in h.get("checks") or [h] if c.get("status", "fail") != "pass"]


def test_one_apply_on_a_bare_tree_ends_in_a_verified_server(tmp_path: Path, hub: HttpStandin,
                                                              quants: dict[str, bytes],
                                                              llama_server_binary: Path) -> None:
    sdist = llama_server_binary.parents[6] / "sdist" / "llama_cpp_python-0.3.36.tar.gz"
    assert hashlib.sha256(sdist.read_bytes()).hexdigest() == SDIST_SHA256
    port = free_port()
    box = Box(tmp_path, hub)
    profile = write_profile(tmp_path, sdist, port, "F32")

    refused = box.provision("plan", str(profile), "--root", str(box.root))
    assert refused.returncode == 1 and "has no lock" in refused.stderr, refused.stderr
    locked = box.provision("lock", str(profile))
    assert locked.returncode == 0, locked.stderr
    assert f"is commit {COMMIT}" in locked.stdout + locked.stderr

    applied = box.provision("apply", str(profile), "--root", str(box.root), "--yes", "--json")
    assert applied.returncode == 0, applied.stdout[-3000:] + applied.stderr[-3000:]
    [host] = json.loads(applied.stdout)["hosts"]
    assert {i["name"] for i in host["installs"]} >= {"user:llm", "secret:api-key", "build:llama.cpp",
                                                     "download:model"}
    # the service user, in the tree's own account database
    assert re.search(r"^llm:x:\d+:\d+:", (box.root / "etc/passwd").read_text(), re.MULTILINE)
    # the engine, built by the build resource
    server = box.root / "opt/provision/builds/llama.cpp/bin/llama-server"
    version = subprocess.run([str(server), "--version"], capture_output=True, text=True, check=False)
    assert version.returncode == 0 and "11312" in version.stdout + version.stderr
    # the model, from the stand-in, as the lock pinned it
    model = box.root / DEST.lstrip("/") / "tiny-qwen2-F32.gguf"
    assert model.read_bytes() == quants["tiny-qwen2-F32.gguf"]
    # no key in the image (each machine makes its own): the test plays the first boot, which
    # runs the oneshot the server unit requires; the key is then 0600 and was never printed
    key_file = box.root / f"etc/provision/{SERVICE}/api-key"
    assert not key_file.exists() and "makes its own into" in applied.stdout
    booted = first_boot(box.root)
    assert booted.returncode == 0, booted.stderr
    key = key_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key) and key_file.stat().st_mode & 0o777 == 0o600
    assert key not in applied.stdout + applied.stderr + booted.stdout + booted.stderr
    assert f"--model {DEST}/tiny-qwen2-F32.gguf" in (box.root / "opt/provision/bin/llm-server-run.sh").read_text()

    process, log = start_as_the_unit(box.root, SERVICE, box.directory, port)
    try:
        checked = verify(box, profile, port)
        assert checked.returncode == 0, f"{not_passed(checked)}\n{checked.stderr[-2000:]}\n{log.read_text()[-2000:]}"
    finally:
        stop(process)

    again = box.provision("apply", str(profile), "--root", str(box.root), "--yes")
    assert again.returncode == 0 and "nothing to do" in again.stderr, again.stderr

    # another quant: refused until it is locked, then a new download and a new --model path
    profile.write_text(profile.read_text().replace("quant: F32", "quant: Q8_0"))
    stale = box.provision("plan", str(profile), "--root", str(box.root))
    assert stale.returncode == 1 and "changed since box.lock was made" in stale.stderr, stale.stderr
    assert "provision lock" in stale.stderr
    assert box.provision("lock", str(profile)).returncode == 0
    planned = box.provision("plan", str(profile), "--root", str(box.root))
    assert planned.returncode == 2, planned.stderr
    assert "download:model" in planned.stderr and f"--model {DEST}/tiny-qwen2-Q8_0.gguf" in planned.stderr
    assert "build:llama.cpp" not in planned.stderr  # the engine is built already
    reapplied = box.provision("apply", str(profile), "--root", str(box.root), "--yes")
    assert reapplied.returncode == 0, reapplied.stdout[-3000:] + applied.stderr[-3000:]
    assert (box.root / DEST.lstrip("/") / "tiny-qwen2-Q8_0.gguf").read_bytes() == quants["tiny-qwen2-Q8_0.gguf"]
    assert key_file.read_text().strip() == key, "the generated key is never overwritten"

    process, log = start_as_the_unit(box.root, SERVICE, box.directory, port)
    try:
        checked = verify(box, profile, port)
        assert checked.returncode == 0, f"{not_passed(checked)}\n{checked.stderr[-2000:]}\n{log.read_text()[-2000:]}"
        assert "tiny-qwen2-Q8_0" in log.read_text() or "Q8_0" in log.read_text()
    finally:
        stop(process)
