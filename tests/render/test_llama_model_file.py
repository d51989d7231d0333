"""llama-server loads one GGUF file: a run script never gets a folder as --model. An hf
source names the file in hf.file, or a fresh PROFILE.lock does (its first shard); without
either, validate and plan refuse at the profile's line, unless plan and apply will demand
the lock anyway (install.model from a branch), where the preview says so and export, like
plan, needs the lock. No hub is asked: the locks here are written as `provision lock` would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from provisioner.lock import Lock, LockedFile, ModelLock, lock_path, write_lock
from provisioner.profile.loader import load_profile
from provisioner.profile.quant_paths import hf_include
from tests.conftest import make_profile
from tests.install.test_flow import cli

REPO = "unsloth/Qwen3-235B-A22B-GGUF"
COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
DEST = "/srv/models/qwen3-235b-a22b"
SHARDS = [f"UD-Q3_K_XL/Qwen3-235B-A22B-UD-Q3_K_XL-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


def _hf_profile(tmp_path: Path, *, revision: str = "main", model: bool = False, **extra: object) -> Path:
    return make_profile(tmp_path, {"install": {"model": model},
                                   "model.source": {"hf": {"repo": REPO, "revision": revision, "dest": DEST}},
                                   **extra})


def _lock(profile: Path, paths: list[str]) -> None:
    loaded = load_profile(profile)
    files = tuple(LockedFile(p, 1000 + i, hashlib.sha256(p.encode()).hexdigest()) for i, p in enumerate(paths))
    write_lock(lock_path(profile), Lock(ModelLock(REPO, "main", tuple(hf_include(loaded.profile)), COMMIT, files)), "p")


def _run_script(rendered: Path) -> str:
    return (rendered / "opt/provision/bin/llm-server-run.sh").read_text()


def test_no_file_and_no_lock_is_refused_at_the_source_line(tmp_path: Path) -> None:
    for revision in ("main", COMMIT):  # a branch without install.model, or a pinned commit
        profile = _hf_profile(tmp_path, revision=revision)
        for command in (("validate", str(profile)), ("plan", str(profile), "--root", str(tmp_path / "image"))):
            refused = cli(*command)
            assert refused.returncode == 1, (command, refused.stderr)
            [line] = refused.stderr.strip().splitlines()
            assert line.startswith(f"error: {profile}:") and "model.source.hf: llama.cpp loads one GGUF file" in line
            assert f"its --model would be the folder {DEST}" in line
            assert "name the first shard in hf.file" in line and f"run `provision lock {profile}`" in line
            assert "Traceback" not in refused.stderr
    assert not (tmp_path / "image").exists()


def test_a_fresh_lock_gives_llama_cpp_its_first_shard_everywhere(tmp_path: Path) -> None:
    profile = _hf_profile(tmp_path)
    _lock(profile, [*reversed(SHARDS), "README.md"])
    first = f"--model {DEST}/{SHARDS[0]}"
    assert cli("validate", str(profile)).returncode == 0
    rendered = cli("render", str(profile), "--out", str(tmp_path / "out"))
    assert rendered.returncode == 0, rendered.stderr
    assert first in _run_script(tmp_path / "out") and f"--model {DEST} " not in _run_script(tmp_path / "out")
    planned = cli("plan", str(profile), "--root", str(tmp_path / "image"))
    assert planned.returncode == 2 and first in planned.stderr, planned.stderr
    fitted = cli("fit", str(profile), "--json")
    assert fitted.returncode == 0, fitted.stderr
    assert json.loads(fitted.stdout)["flags"]["--model"] == f"{DEST}/{SHARDS[0]}"


def test_a_lock_without_a_gguf_is_refused(tmp_path: Path) -> None:
    profile = _hf_profile(tmp_path, model=True)
    _lock(profile, ["README.md"])
    refused = cli("validate", str(profile))
    assert refused.returncode == 1
    assert "model.source.hf: p.lock pins no .gguf file, and llama.cpp loads one" in refused.stderr
    assert f"run `provision lock {profile}` again" in refused.stderr


def test_an_unlocked_branch_to_install_is_a_preview_only(tmp_path: Path) -> None:
    """plan and apply demand the lock here (tests/lock), and an export reaches hosts as they do."""
    profile = _hf_profile(tmp_path, model=True)
    checked = cli("validate", str(profile))
    assert checked.returncode == 0, checked.stderr
    assert f"llama.cpp's --model is the folder {DEST} until `provision lock` pins the files" in checked.stderr
    for kind, out in (("cloud-init", "user-data.yaml"), ("ansible", "ansible")):
        exported = cli("export", kind, str(profile), "--out", str(tmp_path / out))
        assert exported.returncode == 1, exported.stdout + exported.stderr
        assert "the model source has no lock" in exported.stderr and not (tmp_path / out).exists()


def test_the_build_scripts_profile_renders_no_run_script_and_stays_valid(tmp_path: Path) -> None:
    """scripts/build-llama-server's profile: the library profile's unlocked branch with install.model
    false, valid because builtin_files: false renders no run script to give a --model."""
    text = ("extends: cpu-only-256g-qwen3-235b-llamacpp\nmetadata: {name: build-llama-server}\n"
            "builtin_files: BUILTIN\ninstall: {model: false}\n")
    builds = tmp_path / "build.yaml"
    builds.write_text(text.replace("BUILTIN", "false"))
    assert cli("validate", str(builds)).returncode == 0
    serves = tmp_path / "serves.yaml"
    serves.write_text(text.replace("BUILTIN", "true"))
    refused = cli("validate", str(serves))
    assert refused.returncode == 1 and "llama.cpp loads one GGUF file" in refused.stderr
