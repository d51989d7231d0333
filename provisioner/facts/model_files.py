"""The model on a host's disk, for verify: the probes and their pure parsers.

``model_files_probe`` (snippets/model_files.sh) sizes and hashes the files a profile
lists. Hashing runs on the target (sha256sum, streamed) and is cached in the state
dir by path, size and mtime (``size mtime path sha256`` lines, the format
verify/model.py's prehash writes too), so a second verify does not read 100 GB again:

    @model B64PATH SIZE SHA256
    @model B64PATH missing

``model_dir_probe`` (snippets/model_dir.sh) reads a vLLM model directory
(model.source.directory, or model.source.hf's dest) and ``ollama_probe``
(snippets/ollama.sh) the tags of an Ollama server:

    @modeldir dir B64PATH present | missing
    @modeldir config missing | B64(config.json)
    @modeldir index missing | B64(model.safetensors.index.json)   (a few MB at most: the weight map)
    @modeldir file B64NAME SIZE                                    (every *.safetensors in the directory)
    @modeldir gguf B64NAME SIZE | B64NAME missing                  (hf.file: the GGUF llama.cpp loads)
    @modeldir ollama missing | present RC
    @modeldir ollama-line |TEXT
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace

from provisioner.facts.probe import Probe, load_snippet, with_inputs


@dataclass(frozen=True)
class OnDisk:
    size: int | None  # None: missing
    sha256: str | None


def parse_model_lines(lines: list[str]) -> dict[str, OnDisk]:
    """The files probe's lines (marker removed) -> {path as the profile names it: what is there}."""
    found: dict[str, OnDisk] = {}
    for line in lines:
        parts = line.split(" ")
        path = base64.b64decode(parts[0]).decode()
        found[path] = OnDisk(None, None) if parts[1] == "missing" else OnDisk(int(parts[1]), parts[2])
    return found


MODEL_FILES_PROBE: Probe[dict[str, OnDisk]] = Probe("model", load_snippet("model_files"), parse_model_lines)


def model_files_probe(paths: list[str], root: str, state_dir: str) -> Probe[dict[str, OnDisk]]:
    """The files probe for ``paths`` (as the profile names them) under ``root``; ``state_dir``
    holds the hash cache."""
    return with_inputs(MODEL_FILES_PROBE, MODEL_ROOT=root, MODEL_FILES="\n".join(paths), MODEL_STATE=state_dir)


@dataclass(frozen=True)
class ModelDir:
    present: bool | None = None  # None: not gathered
    config: bytes | None = None
    config_missing: bool = False
    index: bytes | None = None
    files: dict[str, int] = field(default_factory=dict)  # *.safetensors name -> bytes
    gguf: tuple[str, int | None] | None = None  # hf.file: name, size (None: missing)
    ollama: str | None = None  # "missing" or the exit code of ollama list
    ollama_lines: list[str] = field(default_factory=list)


def parse_model_dir_lines(lines: list[str]) -> ModelDir:
    """The directory and Ollama probes' lines (marker removed) -> ModelDir."""
    found = ModelDir()
    blobs: dict[str, bytes | None] = {}
    files: dict[str, int] = {}
    ollama_lines: list[str] = []
    for line in lines:
        if line.startswith("ollama-line |"):
            ollama_lines.append(line.removeprefix("ollama-line |"))
            continue
        kind, *rest = line.split(" ")
        if kind == "dir":
            found = replace(found, present=rest[1] == "present")
        elif kind in {"config", "index"}:
            blobs[kind] = None if rest[:1] == ["missing"] else base64.b64decode(rest[0] if rest else "")
        elif kind == "file":
            files[base64.b64decode(rest[0]).decode()] = int(rest[1])
        elif kind == "gguf":
            found = replace(found, gguf=(base64.b64decode(rest[0]).decode(),
                                         None if rest[1] == "missing" else int(rest[1])))
        elif kind == "ollama":
            found = replace(found, ollama=rest[1] if rest[0] == "present" else "missing")
    return replace(found, config=blobs.get("config"), config_missing="config" in blobs and blobs["config"] is None,
                   index=blobs.get("index"), files=files, ollama_lines=ollama_lines)


MODEL_DIR_PROBE: Probe[ModelDir] = Probe("modeldir", load_snippet("model_dir"), parse_model_dir_lines)
OLLAMA_PROBE: Probe[ModelDir] = Probe("modeldir", load_snippet("ollama"), parse_model_dir_lines)


def model_dir_probe(directory: str, root: str, gguf: str | None = None) -> Probe[ModelDir]:
    """The directory probe for ``directory`` (as the profile names it) under ``root``; ``gguf``:
    a GGUF file inside it that llama.cpp loads (hf.file)."""
    return with_inputs(MODEL_DIR_PROBE, MODEL_ROOT=root, MODEL_DIR=directory, MODEL_GGUF=gguf or "")


def ollama_probe(host: str) -> Probe[ModelDir]:
    """``ollama list`` against the server at ``host`` (host:port)."""
    return with_inputs(OLLAMA_PROBE, MODEL_OLLAMA_HOST=host)
