"""A loopback stand-in of the two Ollama registry routes a pull uses (tests only).

- ``GET /v2/{namespace}/{model}/manifests/{tag}``: the manifest (``server/images.go``
  ``pullModelManifest`` in github.com/ollama/ollama), a Docker v2 image manifest whose
  ``config`` and ``layers`` name blobs by sha256;
- ``GET /v2/{namespace}/{model}/blobs/{digest}``: a blob (``server/download.go`` ``downloadBlob``),
  with Range support and faults (a flipped byte) from ``HttpStandin``.

Anything else, an unknown tag included, answers 404. The blobs are what ``ollama create``
writes for a GGUF (``server/create.go``): the model (``application/vnd.ollama.image.model``),
a template and the config (``application/vnd.docker.container.image.v1+json``, the
``types/model/config.go`` ``ConfigV2`` fields). Every digest is computed here from the bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tests.support.http_standin import HttpStandin, Served

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def digest_of(content: bytes) -> str:
    return f"sha256:{hashlib.sha256(content).hexdigest()}"


@dataclass(frozen=True)
class OllamaTag:
    repository: str  # namespace/model, e.g. library/tiny-qwen2
    tag: str
    gguf: bytes
    template: bytes = b"{{ .Prompt }}"

    @property
    def config(self) -> bytes:
        return json.dumps({"model_format": "gguf", "model_family": "qwen2", "model_families": ["qwen2"],
                           "model_type": "tiny", "file_type": "F32", "architecture": "amd64", "os": "linux",
                           "rootfs": {"type": "layers", "diff_ids": [digest_of(self.gguf)]}}).encode()

    @property
    def layers(self) -> list[tuple[str, bytes]]:
        return [("application/vnd.ollama.image.model", self.gguf),
                ("application/vnd.ollama.image.template", self.template)]

    @property
    def manifest(self) -> bytes:
        """Compact JSON, as a registry sends it (its digest is computed from these bytes)."""
        def entry(media_type: str, content: bytes) -> dict[str, object]:
            return {"mediaType": media_type, "digest": digest_of(content), "size": len(content)}

        return json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                           "config": entry("application/vnd.docker.container.image.v1+json", self.config),
                           "layers": [entry(m, c) for m, c in self.layers]}, separators=(",", ":")).encode()

    @property
    def blobs(self) -> dict[str, bytes]:
        """digest -> bytes of every blob the manifest names."""
        return {digest_of(c): c for c in (self.config, *(c for _, c in self.layers))}


def serve_tag(standin: HttpStandin, tag: OllamaTag, *, wrong: frozenset[str] = frozenset()) -> None:
    """Put the tag's manifest and blobs on the stand-in; a blob whose digest is in ``wrong``
    is served with its last byte flipped."""
    standin.serve(manifest_path(tag), Served(tag.manifest, content_type=MANIFEST_TYPE))
    for digest, content in tag.blobs.items():
        standin.serve(f"/v2/{tag.repository}/blobs/{digest}", Served(content, wrong=digest in wrong))


def manifest_path(tag: OllamaTag) -> str:
    return f"/v2/{tag.repository}/manifests/{tag.tag}"
