"""`provision init --gpu ... --model ...` drafts without a host: the best usable quant that
fits, the top three with their predicted speed, a profile that validates, extends a library
profile with install and an hf source, generates the API key, and `provision lock` resolves
(against the Hub stand-in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from provisioner.lock import ModelLock, read_lock
from provisioner.lock.engine import PinnedFile
from provisioner.profile.loader import load_profile
from tests.conftest import ROOT
from tests.support.bare_box import SDIST_SHA256
from tests.support.http_standin import HttpStandin, Served
from tests.support.hub_standin import HubRepo, serve_repo

ARGS = ["init", "--gpu", "rtx-pro-6000-blackwell", "--ram", "192GiB", "--cores", "24", "--model", "qwen3-235b-a22b",
        "--context", "65536", "--mode", "non-thinking"]


def provision(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, check=False)


def test_the_draft_is_the_best_usable_quant_and_a_complete_profile_lock_resolves(tmp_path: Path) -> None:
    drafted = provision(*ARGS, "--json")
    assert drafted.returncode == 0, drafted.stderr
    data = json.loads(drafted.stdout)
    choices = data["choices"]
    assert 1 <= len(choices) <= 3 and data["quant"] == choices[0]["quant"]
    usable = [c for c in choices if c["decode_tokens_per_s"] >= 10]
    assert usable and choices[0] == max(usable, key=lambda c: c["bits_per_weight"])
    profile = tmp_path / "box.yaml"
    profile.write_text(data["profile"])
    assert provision("validate", str(profile)).returncode == 0

    loaded = load_profile(profile).profile
    assert loaded.model.quant == data["quant"] and loaded.model.context == 65536
    assert loaded.model.mode == "non-thinking"
    assert loaded.secrets.api_key is not None and loaded.secrets.api_key.generate
    assert loaded.install.engine is not None and loaded.install.model
    hf = loaded.model.source.hf
    assert hf is not None and hf.revision == "main"

    quant = data["quant"]
    shards = {f"{quant}/Qwen3-235B-A22B-{quant}-0000{i}-of-00003.gguf": bytes([i]) * 4096 for i in (1, 2, 3)}
    with HttpStandin() as hub:
        serve_repo(hub, HubRepo(hf.repo, "0123456789abcdef0123456789abcdef76543210",
                                {**shards, "README.md": b"card\n"}, lfs=frozenset(shards)), branch="main")
        # PyPI's page for the engine's sdist, as https://pypi.org/simple/llama-cpp-python/ lists it (PEP 691)
        hub.serve("/simple/llama-cpp-python/", Served(json.dumps({"meta": {"api-version": "1.1"}, "files": [
            {"filename": "llama_cpp_python-0.3.36.tar.gz", "url": SDIST_URL, "size": 76589250,
             "hashes": {"sha256": SDIST_SHA256}}]}).encode()))
        locked = provision("lock", str(profile), env={"HF_ENDPOINT": hub.url(),
                                                      "PROVISION_PYPI_INDEX": hub.url("/simple")})
    assert locked.returncode == 0, locked.stderr
    lock = read_lock(tmp_path / "box.lock")
    assert lock is not None and isinstance(lock.model, ModelLock)
    assert sorted(f.path for f in lock.model.files) == sorted(shards)
    assert lock.engine == PinnedFile("pypi:llama-cpp-python==0.3.36", SDIST_URL, SDIST_SHA256, 76589250)


SDIST_URL = ("https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
             "llama_cpp_python-0.3.36.tar.gz")


def test_the_text_says_the_top_three_and_the_next_step() -> None:
    drafted = provision(*ARGS)
    assert drafted.returncode == 0, drafted.stderr
    assert "# Next: provision lock THIS.yaml" in drafted.stdout
    assert "<- chosen (most bits per weight that fits)" in drafted.stderr


def test_gpu_without_the_rest_is_one_line_exit_1() -> None:
    refused = provision("init", "--gpu", "rtx-pro-6000-blackwell", "--model", "qwen3-235b-a22b")
    assert refused.returncode == 1
    assert "init --gpu drafts without a host: it needs --ram, --cores and --model too" in refused.stderr
    assert "Traceback" not in refused.stderr
