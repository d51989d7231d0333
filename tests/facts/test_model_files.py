"""The model probes (files, a model directory, Ollama's tags) run through the real gather
on real files under a --root tree, and their parsers. The checks: tests/verify."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from provisioner.facts.collect import run_gather
from provisioner.facts.model_files import (
    MODEL_DIR_PROBE,
    MODEL_FILES_PROBE,
    OnDisk,
    model_dir_probe,
    model_files_probe,
    ollama_probe,
)
from provisioner.transport.local import LocalTransport

SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_files_are_sized_hashed_and_cached(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shard = root / "srv/models/m/a.gguf"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    spaced = root / "srv/models/m dir/b c.gguf"
    spaced.parent.mkdir(parents=True)
    spaced.write_bytes(b"GGUF")
    transport = LocalTransport(root)
    probe = model_files_probe(["/srv/models/m/a.gguf", "/srv/models/m dir/b c.gguf", "/srv/models/gone.gguf"],
                              transport.root, transport.state_dir)
    found = run_gather(transport, [probe]).read(MODEL_FILES_PROBE)
    digest = hashlib.sha256(shard.read_bytes()).hexdigest()
    assert found == {"/srv/models/m/a.gguf": OnDisk(shard.stat().st_size, digest),
                     "/srv/models/m dir/b c.gguf": OnDisk(4, hashlib.sha256(b"GGUF").hexdigest()),
                     "/srv/models/gone.gguf": OnDisk(None, None)}
    cache = Path(transport.state_dir) / "sha256-cache"
    first = cache.read_text().splitlines()[0]
    assert first == f"{shard.stat().st_size} {int(shard.stat().st_mtime)} {shard} {digest}"
    # the second run trusts the cache: a forged digest for the same size and mtime comes back
    cache.write_text(cache.read_text().replace(digest, "0" * 64))
    again = run_gather(transport, [probe]).read(MODEL_FILES_PROBE)
    assert again["/srv/models/m/a.gguf"].sha256 == "0" * 64


def _model_dir(directory: Path) -> None:
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "num_hidden_layers": 94}))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": SHARDS[0]}}))
    for name in SHARDS:
        (directory / name).write_bytes(b"\0" * 4096)


def test_model_directory_with_spaces(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _model_dir(root / "srv/m dir/x")
    gguf = root / "srv/m dir/x/Q8_0/x-00001-of-00002.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    transport = LocalTransport(root)
    gathered = run_gather(transport, [model_dir_probe("/srv/m dir/x", transport.root, "Q8_0/x-00001-of-00002.gguf")])
    assert not [line for line in gathered.output.splitlines() if line.startswith("@model ")]
    seen = gathered.read(MODEL_DIR_PROBE)
    assert seen.present is True and not seen.config_missing
    assert seen.config is not None and json.loads(seen.config)["num_hidden_layers"] == 94
    assert seen.index is not None and json.loads(seen.index)["weight_map"] == {"a": SHARDS[0]}
    assert seen.files == dict.fromkeys(SHARDS, 4096)
    assert seen.gguf == ("Q8_0/x-00001-of-00002.gguf", 4)


def test_missing_directory_and_gguf(tmp_path: Path) -> None:
    transport = LocalTransport(tmp_path / "root")
    seen = run_gather(transport, [model_dir_probe("/srv/none", transport.root, "x.gguf")]).read(MODEL_DIR_PROBE)
    assert (seen.present, seen.config, seen.files, seen.gguf) == (False, None, {}, ("x.gguf", None))
    plain = run_gather(transport, [model_dir_probe("/srv/none", transport.root)]).read(MODEL_DIR_PROBE)
    assert plain.gguf is None  # no hf.file: nothing asked


def test_ollama_probe_here(tmp_path: Path) -> None:
    seen = run_gather(LocalTransport(tmp_path / "root"), [ollama_probe("127.0.0.1:1")]).read(MODEL_DIR_PROBE)
    if shutil.which("ollama") is None:
        assert seen.ollama == "missing" and seen.ollama_lines == []
    else:  # nothing listens on port 1: ollama list fails
        assert seen.ollama not in {None, "missing", "0"}


def test_ollama_lines_keep_their_blanks() -> None:
    seen = MODEL_DIR_PROBE.read("@modeldir ollama present 0\n@modeldir ollama-line |NAME    ID   \n"
                                "@modeldir ollama-line |llama3:8b   a6990ed6be41 \n@fact kernel x\n")
    assert (seen.ollama, seen.ollama_lines) == ("0", ["NAME    ID   ", "llama3:8b   a6990ed6be41 "])
