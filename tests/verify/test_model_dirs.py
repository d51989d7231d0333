"""verify for models that are not GGUF files: a vLLM model directory (model.source.directory or
model.source.hf's dest) and an Ollama tag. Real directories under a --root tree, the real command.

The safetensors files are small stand-ins: the checks read names and sizes (and the index's
weight_map), never tensors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.facts.model_files import MODEL_DIR_PROBE, ModelDir
from provisioner.verify.model import ollama_checks

ROOT = Path(__file__).resolve().parents[2]
VLLM_PROFILE = ROOT / "profiles" / "2x-h200-qwen3-235b-fp8-vllm.yaml"  # qwen3-235b-a22b-instruct-2507, 94 layers
OLLAMA_PROFILE = ROOT / "profiles" / "rtx-4090-qwen3-30b-ollama.yaml"
MODEL_DIR = "/srv/models/Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"
SHARDS = ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"]
# `ollama list` as printed in https://github.com/ollama/ollama/issues/4470 (copied verbatim)
OLLAMA_LIST = """NAME                            ID              SIZE    MODIFIED     
llama3:8b                       a6990ed6be41    4.7 GB  2 weeks ago 
llama3:latest                   a6990ed6be41    4.7 GB  25 hours ago
"""  # noqa: W291 - the trailing blanks are ollama's


def provision(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT, env=env, timeout=120)


def model_checks(profile: Path, root: Path | None = None,
                 env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, str]]]:
    where = ["--root", str(root)] if root is not None else []
    result = provision("verify", str(profile), *where, "--only", "model", "--json", env=env)
    assert result.returncode in {0, 2}, result.stdout + result.stderr
    checks = json.loads(result.stdout)["hosts"][0]["checks"]
    return result.returncode, {c["id"]: c for c in checks}


def write_profile(tmp_path: Path, base: Path, source: dict[str, Any]) -> Path:
    data = yaml.safe_load(base.read_text())
    data["model"]["source"] = source
    data.pop("install", None)  # the model is put in place by the test, not downloaded
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def model_dir(root: Path, rel: str = MODEL_DIR, layers: int = 94, shards: list[str] | None = None,
              sizes: dict[str, int] | None = None) -> Path:
    """A Hugging Face style model directory: config.json, the index, small shards."""
    directory = root / rel.lstrip("/")
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(
        {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_hidden_layers": layers,
         "num_experts": 128}))
    names = shards or SHARDS
    weight_map = {f"model.layers.{n}.mlp.gate.weight": name for n, name in enumerate(names)}
    weight_map["lm_head.weight"] = names[-1]
    sizes = sizes or {}
    for name in names:
        (directory / name).write_bytes(b"\0" * sizes.get(name, 4096))
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 3 * 4000}, "weight_map": weight_map}))
    return directory


def test_vllm_directory_passes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    model_dir(root)
    code, checks = model_checks(write_profile(tmp_path, VLLM_PROFILE, {"directory": MODEL_DIR}), root)
    assert code == 0, checks
    assert {k: v["status"] for k, v in checks.items()} == {
        "model.dir": "pass", "model.config": "pass", "model.shards": "pass"}
    assert checks["model.config"]["observed"] == "model_type qwen3_moe, num_hidden_layers 94"
    assert "layers compared" in checks["model.config"]["expected"]
    assert checks["model.shards"]["observed"] == "3 shard(s), 12288 bytes (tensors 12000)"


def test_missing_shard_fails(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (model_dir(root) / SHARDS[1]).unlink()
    code, checks = model_checks(write_profile(tmp_path, VLLM_PROFILE, {"directory": MODEL_DIR}), root)
    assert code == 2
    assert checks["model.shards"]["status"] == "fail"
    assert checks["model.shards"]["observed"] == f"missing: {SHARDS[1]}"
    assert checks["model.config"]["status"] == "pass"


def test_empty_and_truncated_shards_fail(tmp_path: Path) -> None:
    root = tmp_path / "root"
    model_dir(root, sizes={SHARDS[0]: 0})
    profile = write_profile(tmp_path, VLLM_PROFILE, {"directory": MODEL_DIR})
    code, checks = model_checks(profile, root)
    assert code == 2 and checks["model.shards"]["observed"].startswith(f"empty: {SHARDS[0]}")
    (root / MODEL_DIR.lstrip("/") / SHARDS[0]).write_bytes(b"\0" * 100)  # the download stopped early
    code, checks = model_checks(profile, root)
    assert code == 2 and "a shard is truncated" in checks["model.shards"]["observed"]


def test_missing_config_fails(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (model_dir(root) / "config.json").unlink()
    code, checks = model_checks(write_profile(tmp_path, VLLM_PROFILE, {"directory": MODEL_DIR}), root)
    assert code == 2
    assert checks["model.config"]["status"] == "fail"
    assert checks["model.config"]["observed"] == "config.json missing"
    assert checks["model.shards"]["status"] == "pass"


def test_another_models_config_fails_on_layers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    model_dir(root, layers=48)  # Qwen3-30B-A3B's 48 layers in the 235B's directory
    code, checks = model_checks(write_profile(tmp_path, VLLM_PROFILE, {"directory": MODEL_DIR}), root)
    assert code == 2 and checks["model.config"]["status"] == "fail"
    assert "another model" in checks["model.config"]["hint"]


def test_missing_directory_fails_alone(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    code, checks = model_checks(write_profile(tmp_path, VLLM_PROFILE, {"directory": MODEL_DIR}), root)
    assert code == 2
    assert {k: v["status"] for k, v in checks.items()} == {"model.dir": "fail"}


def test_single_file_model_without_index(tmp_path: Path) -> None:
    root = tmp_path / "root"
    directory = model_dir(root, shards=["model.safetensors"])
    (directory / "model.safetensors.index.json").unlink()
    code, checks = model_checks(write_profile(tmp_path, VLLM_PROFILE, {"directory": MODEL_DIR}), root)
    assert code == 0 and checks["model.shards"]["observed"] == "model.safetensors 4096 bytes"
    (directory / "model.safetensors").unlink()
    code, checks = model_checks(write_profile(tmp_path, VLLM_PROFILE, {"directory": MODEL_DIR}), root)
    assert code == 2 and checks["model.shards"]["observed"] == "no *.safetensors files"


def test_hf_dest_is_checked_like_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "root"
    dest = "/srv/models/hf/qwen3-235b-fp8"
    model_dir(root, rel=dest)
    source = {"hf": {"repo": "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8", "revision": "a" * 40, "dest": dest}}
    profile = write_profile(tmp_path, VLLM_PROFILE, source)
    code, checks = model_checks(profile, root)
    assert code == 0, checks
    assert checks["model.dir"]["expected"] == dest
    (root / dest.lstrip("/") / SHARDS[2]).unlink()
    code, checks = model_checks(profile, root)
    assert code == 2 and checks["model.shards"]["observed"] == f"missing: {SHARDS[2]}"


def test_ollama_under_root_skips_with_reason(tmp_path: Path) -> None:
    code, checks = model_checks(OLLAMA_PROFILE, tmp_path)
    assert code == 0
    assert checks["model.ollama"]["status"] == "skip" and "--root" in checks["model.ollama"]["hint"]


@pytest.mark.parametrize(("tag", "status"), [("llama3:8b", "pass"), ("llama3", "pass"), ("qwen3:30b-a3b", "fail")])
def test_ollama_tag_listed_by_a_stand_in_ollama(tmp_path: Path, tag: str, status: str) -> None:
    """The probe runs on this (local) target with an `ollama` on PATH printing a real `ollama list`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "list.txt").write_text(OLLAMA_LIST)
    fake = bin_dir / "ollama"
    fake.write_text(f'#!/bin/sh\n[ "$1" = list ] && exec cat {bin_dir / "list.txt"}\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    code, checks = model_checks(write_profile(tmp_path, OLLAMA_PROFILE, {"ollama": tag}), env=env)
    assert checks["model.ollama"]["status"] == status, checks
    if status == "pass":
        assert checks["model.ollama"]["observed"].endswith("id a6990ed6be41")
    else:
        assert code == 2 and "ollama pull qwen3:30b-a3b" in checks["model.ollama"]["hint"]
        assert "llama3:8b, llama3:latest" in checks["model.ollama"]["observed"]


def test_ollama_absent_or_failing() -> None:
    assert ollama_checks("qwen3:30b-a3b", ModelDir(ollama="missing"))[0].status == "skip"
    down = MODEL_DIR_PROBE.read("@modeldir ollama present 1\n"
                           "@modeldir ollama-line |Error: could not connect to ollama app, is it running?\n")
    (check,) = ollama_checks("qwen3:30b-a3b", down)
    assert check.status == "warn" and "could not connect" in (check.observed or "")


def test_hf_gguf_file_for_llama_cpp(tmp_path: Path) -> None:
    """llama.cpp with an hf source loads one GGUF inside dest: present and non-empty, then its header is read."""
    root = tmp_path / "root"
    source = {"hf": {"repo": "unsloth/Qwen3-235B-A22B-GGUF", "revision": "b" * 40, "dest": "/srv/models/q",
                     "file": "UD-Q3_K_XL/Qwen3-235B-A22B-UD-Q3_K_XL-00001-of-00003.gguf"}}
    profile = write_profile(tmp_path, ROOT / "examples" / "quickstart.yaml", source)
    root.mkdir()
    code, checks = model_checks(profile, root)
    name = "model.file:UD-Q3_K_XL/Qwen3-235B-A22B-UD-Q3_K_XL-00001-of-00003.gguf"
    assert code == 2 and checks[name]["observed"] == "missing"
    gguf = root / "srv/models/q" / source["hf"]["file"]
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"not a gguf file")
    code, checks = model_checks(profile, root)
    assert checks[name]["status"] == "pass"
    assert checks["model.header"]["status"] == "fail" and "not a readable GGUF" in checks["model.header"]["observed"]


def test_ollama_pinned_digest_must_match_the_listed_id() -> None:
    listing = "@modeldir ollama present 0\n" + "".join(f"@modeldir ollama-line |{line}\n"
                                                      for line in OLLAMA_LIST.splitlines())
    seen = MODEL_DIR_PROBE.read(listing)
    # a full digest that starts with the listed ID (the rest of it is made up: only the prefix is listed)
    digest = "sha256:a6990ed6be41" + "2c6a217614b0ec8e9cd6800a743d5dd7e1d7fbe3e0e6a8d3d0e3"
    (same,) = ollama_checks("llama3:8b", seen, digest)
    assert same.status == "pass"
    (moved,) = ollama_checks("llama3:8b", seen, "0123456789ab")
    assert moved.status == "fail" and "another build" in (moved.hint or "")


def test_ollama_digest_needs_an_ollama_source(tmp_path: Path) -> None:
    profile = write_profile(tmp_path, OLLAMA_PROFILE, {"directory": "/srv/models/x", "ollama_digest": "a6990ed6be41"})
    result = provision("validate", str(profile))
    assert result.returncode == 1 and "ollama_digest pins an Ollama tag" in result.stderr
