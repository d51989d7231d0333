"""The bare box of tests/test_bare_box.py, shared with the README's tour that shows the
same flow (scripts/doc_setups.py): the CPU profile, the tiny model's two quants and the
Hub stand-in's repo serving them under a fixed commit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from gguf import GGMLQuantizationType

from tests.support.hub_standin import HubRepo
from tests.support.tinymodel import DEFAULT, write_tiny_model

ROOT = Path(__file__).resolve().parents[2]
REPO = "provision-tests/tiny-qwen2-GGUF"
COMMIT = "5eed20240611000000000000000000000000c0de"  # the stand-in's own commit id
DEST = "/srv/models/tiny-qwen2"
SERVICE = "llm-server"
# scripts/build-llama-server's pins: https://pypi.org/project/llama-cpp-python/0.3.36/#files
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_NAME = "llama_cpp_python-0.3.36.tar.gz"


def quants(vocab: Path, out: Path) -> dict[str, bytes]:
    """Two real quants of the tiny model: repeating layers in F32, and in Q8_0 (the same
    bytes on every call: tinymodel's weights come from a fixed seed)."""
    f32 = write_tiny_model(vocab, out / "f32.gguf")
    q8 = write_tiny_model(vocab, out / "q8.gguf", shape=type(DEFAULT)(layer_type=GGMLQuantizationType.Q8_0))
    return {"tiny-qwen2-F32.gguf": f32.read_bytes(), "tiny-qwen2-Q8_0.gguf": q8.read_bytes()}


def hub_repo(quant_files: dict[str, bytes]) -> HubRepo:
    files = {**quant_files, "README.md": b"# tiny-qwen2: random weights, for tests\n"}
    return HubRepo(REPO, COMMIT, files, lfs=frozenset(quant_files))


def profile(sdist: Path, port: int, quant: str) -> dict[str, Any]:
    """tests/cases/endpoint/tiny-cpu.yaml with the stand-in repo as its model source, a
    generated API key, and llama-server built from the sdist at ``sdist``."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "tests/cases/endpoint/tiny-cpu.yaml").read_text())
    data["metadata"]["name"] = "bare-box"
    data["model"] = {**data["model"], "id": REPO, "quant": quant,
                     "source": {"hf": {"repo": REPO, "revision": "main", "dest": DEST}}}
    data["runtime"]["port"] = port
    data["secrets"] = {"api_key": {"generate": True}}
    data["install"] = {"model": True, "engine": {
        "method": "source", "url": f"file://{sdist}", "sha256": SDIST_SHA256, "subdir": "vendor/llama.cpp",
        "cmake_options": ["-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                          "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                          "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON",
                          "-DLLAMA_BUILD_NUMBER=11312"],
        "targets": ["llama-server"], "jobs": 2}}
    return data


def write_profile(directory: Path, sdist: Path, port: int, quant: str) -> Path:
    path = directory / "box.yaml"
    path.write_text(yaml.safe_dump(profile(sdist, port, quant), sort_keys=False))
    return path
