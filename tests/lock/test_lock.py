"""PROFILE.lock through the CLI, against the Hub stand-in on loopback: plan refuses an
unlocked branch; `provision lock` pins the commit and every shard of the quant with its
sha256; plan and apply use exactly those; a changed quant needs a new lock, which
--update-lock makes, and plan then shows the new download and the new --model path."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from provisioner.lock import ModelLock, read_lock
from tests.conftest import ROOT, make_profile
from tests.support.http_standin import HttpStandin
from tests.support.hub_standin import HubRepo, serve_repo

REPO = "unsloth/Qwen3-235B-A22B-GGUF"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
DEST = "/srv/models/qwen3-235b-a22b"



def _model(path: Path) -> ModelLock:
    """The Hugging Face pin of the lock at ``path``."""
    lock = read_lock(path)
    assert lock is not None and isinstance(lock.model, ModelLock)
    return lock.model

def _shards(quant: str, seed: int) -> dict[str, bytes]:
    return {f"{quant}/Qwen3-235B-A22B-{quant}-0000{i}-of-00003.gguf":
            hashlib.sha256(f"{seed}{i}".encode()).digest() * (40 + i) for i in (1, 2, 3)}


FILES = {**_shards("UD-Q3_K_XL", 3), **_shards("Q4_K_M", 4), "README.md": b"# a model card\n"}


def provision(hub: HttpStandin, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_ENDPOINT": hub.url(), "PROVISION_CACHE": str(Path(args[-1]).parent / "cache")}
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)


def _profile(tmp_path: Path, quant: str = "UD-Q3_K_XL") -> Path:
    return make_profile(tmp_path, {"model.quant": quant, "install": {"model": True},
                                   "model.source": {"hf": {"repo": REPO, "revision": "main", "dest": DEST}}})


def test_lock_pins_every_shard_and_plan_apply_follow_it_until_the_quant_changes(tmp_path: Path,
                                                                                 hub: HttpStandin) -> None:
    profile = _profile(tmp_path)
    root = tmp_path / "image"
    refused = provision(hub, "plan", str(profile), "--root", str(root), "--ignore-fit")
    assert refused.returncode == 1
    assert "model.source.hf: the model source has no lock" in refused.stderr
    assert f"run `provision lock {profile}`" in refused.stderr

    locked = provision(hub, "lock", str(profile))
    assert locked.returncode == 0, locked.stderr
    lock = _model(tmp_path / "p.lock")
    assert lock.commit == COMMIT and lock.revision == "main"
    wanted = _shards("UD-Q3_K_XL", 3)
    assert {f.path: f.sha256 for f in lock.files} == {p: hashlib.sha256(c).hexdigest() for p, c in wanted.items()}

    planned = provision(hub, "plan", str(profile), "--root", str(root), "--ignore-fit", "--json")
    assert planned.returncode == 2, planned.stderr
    [host] = json.loads(planned.stdout)["hosts"]
    [download] = [i for i in host["installs"] if i["name"] == "download:model"]
    assert download["bytes"] == sum(len(c) for c in wanted.values())
    first = f"{DEST}/UD-Q3_K_XL/Qwen3-235B-A22B-UD-Q3_K_XL-00001-of-00003.gguf"
    applied = provision(hub, "apply", str(profile), "--root", str(root), "--ignore-fit", "--yes")
    assert applied.returncode == 0, applied.stderr
    for path, content in wanted.items():
        assert (root / DEST.lstrip("/") / path).read_bytes() == content
    assert not (root / DEST.lstrip("/") / "Q4_K_M").exists()
    assert f"--model {first}" in (root / "opt/provision/bin/llm-server-run.sh").read_text()

    data = yaml.safe_load(profile.read_text())
    data["model"]["quant"] = "Q4_K_M"
    profile.write_text(yaml.safe_dump(data, sort_keys=False))
    stale = provision(hub, "plan", str(profile), "--root", str(root), "--ignore-fit")
    assert stale.returncode == 1
    assert "the model source changed since p.lock was made" in stale.stderr and "provision lock" in stale.stderr

    renewed = provision(hub, "plan", str(profile), "--root", str(root), "--ignore-fit", "--update-lock")
    assert renewed.returncode == 2, renewed.stderr
    assert "download:model" in renewed.stderr
    assert f"--model {DEST}/Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf" in renewed.stderr
    relocked = _model(tmp_path / "p.lock")
    assert sorted(f.path for f in relocked.files) == sorted(_shards("Q4_K_M", 4))


def test_a_hand_edited_lock_with_a_bad_checksum_is_refused(tmp_path: Path, hub: HttpStandin) -> None:
    profile = _profile(tmp_path)
    assert provision(hub, "lock", str(profile)).returncode == 0
    lock_file = tmp_path / "p.lock"
    lock_file.write_text(lock_file.read_text().replace("sha256: ", "sha256: x", 1))
    planned = provision(hub, "plan", str(profile), "--root", str(tmp_path / "image"), "--ignore-fit")
    assert planned.returncode == 1
    assert "has an unsafe path or no checksum" in planned.stderr and "provision lock" in planned.stderr


def test_validate_needs_no_lock_and_never_asks_the_hub(tmp_path: Path, hub: HttpStandin) -> None:
    checked = provision(hub, "validate", str(_profile(tmp_path)))
    assert checked.returncode == 0, checked.stderr
    assert hub.requests == []


GATED_TOKEN = "hf_gatedLOCKtoken0123456789"  # noqa: S105 (a test token)


@pytest.fixture
def gated_hub() -> Iterator[HttpStandin]:
    """The same repo, private: every route answers 401 without the bearer token."""
    with HttpStandin() as standin:
        serve_repo(standin, HubRepo(REPO, COMMIT, FILES, lfs=frozenset(p for p in FILES if p.endswith(".gguf")),
                                    token=GATED_TOKEN), branch="main")
        yield standin


def _gated_profile(tmp_path: Path, token_file: Path) -> Path:
    return make_profile(tmp_path, {"model.quant": "UD-Q3_K_XL", "install": {"model": True},
                                   "secrets.hf_token": {"from_file": str(token_file)},
                                   "model.source": {"hf": {"repo": REPO, "revision": "main", "dest": DEST}}})


def test_lock_reads_the_token_from_the_file_the_profile_names(tmp_path: Path, gated_hub: HttpStandin) -> None:
    token_file = tmp_path / "hf-token"
    token_file.write_text(GATED_TOKEN + "\n")
    token_file.chmod(0o600)
    profile = _gated_profile(tmp_path, token_file)
    locked = provision(gated_hub, "lock", str(profile), "--json")
    assert locked.returncode == 0, locked.stderr
    lock = _model(tmp_path / "p.lock")
    assert lock.commit == COMMIT
    assert sorted(f.path for f in lock.files) == sorted(_shards("UD-Q3_K_XL", 3))
    # the stand-in saw the bearer token; nothing provision wrote or printed holds it
    assert any(r.status == 200 for r in gated_hub.requests)
    for text in (locked.stdout, locked.stderr, (tmp_path / "p.lock").read_text()):
        assert GATED_TOKEN not in text


def test_lock_without_the_token_file_names_where_it_looked(tmp_path: Path, gated_hub: HttpStandin) -> None:
    missing = tmp_path / "no-such-token"
    refused = provision(gated_hub, "lock", str(_gated_profile(tmp_path, missing)))
    assert refused.returncode == 1
    assert f"no token in {missing} on this machine (secrets.hf_token)" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "p.lock").exists()
