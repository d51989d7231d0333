"""The Ollama part of PROFILE.lock: a tag resolved to its manifest's digest.

``provision lock`` asks the registry for the tag's manifest (install/ollama_registry.py)
and records the registry host, the name, the tag, the manifest's sha256 (the ID `ollama
list` shows), its config and layers (mediaType, digest, size) and the manifest's own
bytes, which apply writes to the host verbatim. Reading a lock checks that the bytes
hash to the digest and list exactly the recorded blobs, so a hand edit cannot slip a
blob past the review.

A fresh lock pins the profile: ``model.source.ollama_digest`` becomes the lock's digest
(verify compares the tag's ID with it); a digest the profile gives must agree with the
lock, and with what the registry says when the lock is made.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from provisioner.errors import ProfileError, ProvisionError
from provisioner.install.ollama_registry import Blob, OllamaName, PinnedOllama, fetch_manifest, parse_manifest
from provisioner.profile.loader import LoadedProfile


def from_data(section: dict[str, Any]) -> PinnedOllama:
    """The lock's ``model.ollama``; ValueError when it does not hold together."""
    namespace, _, model = str(section["name"]).partition("/")
    name = OllamaName(str(section["registry"]), namespace, model, str(section["tag"]))
    try:
        OllamaName.parse(f"{name.host}/{name.namespace}/{name.model}:{name.tag}")
        pinned = parse_manifest(name, str(section["manifest"]).encode("utf-8"))
    except ProvisionError as exc:
        raise ValueError(exc.first.message) from None
    if f"sha256:{pinned.digest}" != section["digest"]:
        raise ValueError(f"the manifest's bytes hash to sha256:{pinned.digest}, not the digest {section['digest']}")
    listed = (_blob(section["config"]), tuple(_blob(layer) for layer in section["layers"]))
    if listed != (pinned.config, pinned.layers):
        raise ValueError("config and layers differ from what the manifest lists")
    return pinned


def _blob(entry: dict[str, Any]) -> Blob:
    return Blob(str(entry["mediaType"]), str(entry["digest"]), int(entry["size"]))


def to_data(pinned: PinnedOllama) -> dict[str, Any]:
    def blob(b: Blob) -> dict[str, Any]:
        return {"mediaType": b.media_type, "digest": b.digest, "size": b.size}

    name = pinned.name
    return {"registry": name.host, "name": name.repository, "tag": name.tag, "digest": f"sha256:{pinned.digest}",
            "config": blob(pinned.config), "layers": [blob(b) for b in pinned.layers],
            "manifest": pinned.manifest.decode("utf-8")}


def _agrees(pinned: PinnedOllama, profile_digest: str | None) -> bool:
    """The profile's ollama_digest (an ID's 12 hex or the full digest) names the locked manifest."""
    return profile_digest is None or pinned.digest.startswith(profile_digest.removeprefix("sha256:"))


def resolve(loaded: LoadedProfile) -> PinnedOllama:
    """What the profile's tag is on the registry now (one request)."""
    source = loaded.profile.model.source
    assert source.ollama is not None
    pinned = fetch_manifest(OllamaName.parse(source.ollama))
    if not _agrees(pinned, source.ollama_digest):
        raise ProfileError(loaded.problem(
            ("model", "source", "ollama_digest"),
            f"{pinned.name.display} is now id {pinned.digest[:12]} on the registry, the profile pins "
            f"{source.ollama_digest}", "the tag moved: review the new build and update ollama_digest, "
            "or drop it and let the lock pin the tag"))
    return pinned


def apply(loaded: LoadedProfile, pinned: PinnedOllama | None, *, lock_name: str, required: bool,
          needed: bool) -> LoadedProfile:
    """The profile with ollama_digest from a fresh lock; ``required`` and ``needed`` (install.model):
    refuse a missing or stale lock, or one that disagrees with the profile's digest."""
    source = loaded.profile.model.source
    assert source.ollama is not None
    hint = f"run `provision lock {loaded.path}` (or pass --update-lock) and review the manifest it pins"
    fresh = pinned is not None and pinned.for_tag(source.ollama)
    if not fresh:
        if required and needed:
            said = ("has no lock" if pinned is None else
                    f"changed since {lock_name} was made (it locks {pinned.name.display})")
            raise ProfileError(loaded.problem(("model", "source", "ollama"), f"the model source {said}", hint))
        return loaded
    assert pinned is not None
    if not _agrees(pinned, source.ollama_digest):
        if not required:
            return loaded
        raise ProfileError(loaded.problem(
            ("model", "source", "ollama_digest"),
            f"ollama_digest {source.ollama_digest} is not the id {pinned.digest[:12]} {lock_name} pins", hint))
    pinned_source = source.model_copy(update={"ollama_digest": f"sha256:{pinned.digest}"})
    model = loaded.profile.model.model_copy(update={"source": pinned_source})
    return dataclasses.replace(loaded, profile=loaded.profile.model_copy(update={"model": model}))
