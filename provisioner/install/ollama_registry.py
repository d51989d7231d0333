"""An Ollama tag -> its manifest from the registry, on the controller, as Ollama itself pulls it.

Checked against Ollama's own source (github.com/ollama/ollama at
fb30760996871fa9460115c753afd2c60d4ab0f7, August 2026, unless a commit is named):

- Names: ``types/model/name.go`` ``ParseNameBare`` + ``DefaultName``: ``[host/][namespace/]model[:tag]``,
  host ``registry.ollama.ai``, namespace ``library``, tag ``latest``, scheme https (the same
  defaults as ``server/modelpath.go`` ``ParseModelPath`` before it moved, v0.14.3).
- The manifest: ``server/images.go`` ``pullModelManifest`` GETs
  ``{scheme}://{host}/v2/{namespace}/{model}/manifests/{tag}`` with
  ``Accept: application/vnd.docker.distribution.manifest.v2+json``; a 404 is "not found"
  (``makeRequestWithRetry``). Its ``config`` and ``layers`` (``manifest/layer.go`` ``Layer``:
  mediaType, digest, size) are the blobs ``PullModel`` downloads, each from
  ``/v2/{namespace}/{model}/blobs/{digest}`` (``server/download.go`` ``downloadBlob``).
- The ID ``ollama list`` shows is the first 12 hex of ``Manifest.Digest()``: the sha256 of the
  manifest file's bytes as ``manifest/manifest.go`` ``ParseNamedManifest`` reads them (its
  JSON decoder tees into sha256; a file holding one JSON document and nothing after it is
  hashed whole). Since v0.19.0 (commit 3824e380a82d3368855cc1c5b9d128cc2849c4f6, "preserve raw
  manifest bytes during pull") ``PullModel`` writes the registry's bytes verbatim; before, it
  wrote Go's re-encoding (``json.Marshal``), whose sha256 differs from the registry's. provision
  writes the registry's bytes verbatim, so the ID is the locked digest on every Ollama version.

What a manifest may hold is narrower than what a registry can send, since its text reaches
the terminal (`provision lock` lists the blobs) and the lock: each mediaType must be a bare
RFC 6838 ``type/subtype`` (restricted-name characters only, so no control byte or newline
gets through), and a digest listed twice must carry one size (one digest is one blob; keeping
either entry would download or check against the wrong size). Anything else is refused in
one line.

``PROVISION_OLLAMA_REGISTRY`` (a base URL such as ``http://127.0.0.1:8080``) sends every
request to a mirror instead of ``https://{host}``, as ``HF_ENDPOINT`` does for the hub; the
name, and so the manifest's path on the host, keeps its host.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from provisioner.errors import ProvisionError

ENV_REGISTRY = "PROVISION_OLLAMA_REGISTRY"
DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG = "registry.ollama.ai", "library", "latest"
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
# RFC 6838 section 4.2 restricted-name: type/subtype, no parameters; a registry's text reaches the
# terminal and the lock, so nothing else (control bytes, newlines) gets through
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
# types/model/name.go isValidPart: host allows ":" (a port), the others not
_PART = {"host": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}$"),
         "namespace": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,79}$"),
         "model": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$"),
         "tag": re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")}
_MAX_MANIFEST = 4 * 2**20  # a manifest lists a few layers; more is not one


@dataclass(frozen=True)
class OllamaName:
    host: str
    namespace: str
    model: str
    tag: str

    @staticmethod
    def parse(text: str) -> OllamaName:
        """As ``model.ParseName``: the tag after the last ':' that follows the last '/'."""
        rest, tag = text, DEFAULT_TAG
        if rest.rfind(":") > rest.rfind("/"):
            rest, tag = rest.rsplit(":", 1)
        parts = rest.split("/")
        if len(parts) > 3:
            raise ProvisionError(f"Ollama name {text!r} has more than host/namespace/model",
                                 hint="write it as model:tag, namespace/model:tag or host/namespace/model:tag")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            model = parts[0]
        name = OllamaName(host, namespace, model, tag)
        for kind, pattern in _PART.items():
            if not pattern.match(getattr(name, kind)):
                raise ProvisionError(f"Ollama name {text!r}: {kind} {getattr(name, kind)!r} is not valid",
                                     hint="letters, digits, '_', '-' and '.' (types/model/name.go)")
        return name

    @property
    def repository(self) -> str:
        return f"{self.namespace}/{self.model}"

    @property
    def manifest_path(self) -> str:
        """Below OLLAMA_MODELS/manifests (``Name.Filepath``)."""
        return f"{self.host}/{self.namespace}/{self.model}/{self.tag}"

    @property
    def display(self) -> str:
        """How ``ollama list`` names it (``Name.DisplayShortest``)."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str  # sha256:<64 hex>
    size: int

    @property
    def hex(self) -> str:
        return self.digest.removeprefix("sha256:")

    @property
    def file_name(self) -> str:
        """Its name under OLLAMA_MODELS/blobs (``manifest.BlobsPath``: ':' becomes '-')."""
        return self.digest.replace(":", "-")


@dataclass(frozen=True)
class PinnedOllama:
    """A tag's manifest as the registry served it: its exact bytes and what they list."""

    name: OllamaName
    digest: str  # sha256 hex of ``manifest``: the ID `ollama list` shows, in full
    config: Blob
    layers: tuple[Blob, ...]
    manifest: bytes

    def for_tag(self, text: str) -> bool:
        try:
            return OllamaName.parse(text) == self.name
        except ProvisionError:
            return False

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Every blob the tag needs, once each: the config, then the layers."""
        seen: dict[str, Blob] = {}
        for blob in (self.config, *self.layers):
            seen.setdefault(blob.digest, blob)
        return tuple(seen.values())


def parse_manifest(name: OllamaName, data: bytes) -> PinnedOllama:
    """The manifest's blobs; ProvisionError when it is not a manifest Ollama would pull."""
    where = f"the manifest of {name.display}"
    try:
        doc = json.loads(data.decode("utf-8"))
        config = _blob(doc["config"])
        layers = tuple(_blob(layer) for layer in doc["layers"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ProvisionError(f"{where} is not an image manifest ({type(exc).__name__}: {exc})",
                             hint="an Ollama registry answers /v2/NAMESPACE/MODEL/manifests/TAG with one") from None
    if "\0" in data.decode("utf-8") or not layers:
        raise ProvisionError(f"{where} lists no layers or holds a NUL byte")
    sizes: dict[str, int] = {}
    for blob in (config, *layers):
        if sizes.setdefault(blob.digest, blob.size) != blob.size:
            raise ProvisionError(f"{where} lists {blob.digest} twice, as {sizes[blob.digest]} and {blob.size} bytes",
                                 hint="one digest is one blob of one size: the registry served a broken manifest")
    return PinnedOllama(name, hashlib.sha256(data).hexdigest(), config, layers, data)


def _blob(entry: Any) -> Blob:
    digest, size = entry["digest"], entry["size"]
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise ValueError(f"digest {digest!r} is not sha256:<64 hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError(f"size {size!r} of {digest} is not a byte count")
    media_type = entry["mediaType"]
    if not isinstance(media_type, str) or not _MEDIA_TYPE.match(media_type):
        shown = repr(media_type[:60]) + ("..." if len(media_type) > 60 else "") if isinstance(media_type, str) \
            else type(media_type).__name__
        raise ValueError(f"mediaType {shown} of {digest} is not a media type (type/subtype, RFC 6838)")
    return Blob(media_type, digest, size)


def registry_base(name: OllamaName) -> str:
    """Where requests for the name go: the mirror PROVISION_OLLAMA_REGISTRY, else https://HOST."""
    return (os.environ.get(ENV_REGISTRY) or f"https://{name.host}").rstrip("/")


def blob_url(base: str, name: OllamaName, blob: Blob) -> str:
    return f"{base}/v2/{quote(name.repository)}/blobs/{blob.digest}"


def fetch_manifest(name: OllamaName) -> PinnedOllama:
    """What the tag is now (one GET, never cached: a tag moves; `provision lock` records it)."""
    url = f"{registry_base(name)}/v2/{quote(name.repository)}/manifests/{quote(name.tag)}"
    request = urllib.request.Request(url, headers={"Accept": MANIFEST_TYPE,  # noqa: S310 - https or a mirror
                                                   "User-Agent": "provision"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - https or a loopback mirror
            data = bytes(response.read(_MAX_MANIFEST + 1))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ProvisionError(f"{name.display}: no such model or tag on {registry_base(name)} ({url}: HTTP 404)",
                                 hint="check model.source.ollama against the model's tags on ollama.com") from None
        raise ProvisionError(f"{url}: HTTP {exc.code}",
                             hint="a private namespace needs `ollama pull` with its key; "
                                  "provision reads public tags") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ProvisionError(f"cannot reach {url}: {exc}",
                             hint=f"check the network or {ENV_REGISTRY} (a lock is read from the registry once; "
                                  "after that plan needs no network)") from None
    if len(data) > _MAX_MANIFEST:
        raise ProvisionError(f"{url}: more than {_MAX_MANIFEST} bytes is not a manifest")
    return parse_manifest(name, data)
