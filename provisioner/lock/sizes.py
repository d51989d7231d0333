"""The quant's weights at the sizes a fresh PROFILE.lock pins, or a cached Hub listing gives."""

from __future__ import annotations

from pathlib import Path

from provisioner.install.hf import cached_listing
from provisioner.install.ollama_registry import PinnedOllama
from provisioner.install.select import hf_cache_dir
from provisioner.lock import Lock, lock_path
from provisioner.profile.quant_paths import hf_include
from provisioner.profile.resolve import Spec
from provisioner.profile.weights_size import sized_by_files, with_size

# the layer that holds the GGUF weights in an Ollama manifest (Ollama's server/images.go names
# its layers by media type; the projector, template, params and license layers are not weights)
_OLLAMA_WEIGHTS = "application/vnd.ollama.image.model"


def real_size(spec: Spec, pinned: Lock | None, cache_dir: Path | None = None) -> Spec:
    """``spec`` with exact weight sizes: a lock made for the profile's source first (every
    file it pins is what plan downloads), else the Hub listing an earlier plan cached for a
    source pinned to a commit (no lock needed there; read under ``cache_dir``, no network),
    else the profile's own files' bytes, else as is."""
    tag = spec.profile.model.source.ollama
    lock = pinned.model if pinned is not None else None
    if isinstance(lock, PinnedOllama):
        weights = [b.size for b in lock.layers if b.media_type == _OLLAMA_WEIGHTS]
        if tag is not None and lock.for_tag(tag) and weights:
            where = f"{lock_path(spec.loaded.path).name} ({tag} at {lock.digest[:12]})"
            return with_size(spec, weights, where)
        return sized_by_files(spec)
    hf = spec.profile.model.source.hf
    include = hf_include(spec.profile) if hf is not None else []
    if hf is not None and lock is not None and lock.for_source(hf, include):
        weights = [f.size for f in lock.files if _loaded(f.path)]
        if weights:
            where = f"{lock_path(spec.loaded.path).name} ({len(weights)} file(s) at {lock.commit[:12]})"
            return with_size(spec, weights, where)
    if hf is not None:
        listing = cached_listing(hf.repo, hf.revision, include, endpoint=None, cache_dir=cache_dir or hf_cache_dir())
        weights = [int(f["size"]) for f in (listing or {}).get("files", []) if _loaded(str(f["path"]))]
        if weights:
            return with_size(spec, weights, f"the cached Hub listing of {hf.repo}@{hf.revision[:12]} "
                                            f"({len(weights)} file(s))")
    return sized_by_files(spec)


def _loaded(path: str) -> bool:
    """A weight file the engine loads: any pinned GGUF (quants sit in QUANT/ folders), but only
    top-level safetensors: vLLM reads the model folder's own, and repos keep other formats of
    the same weights in subfolders (gpt-oss's original/)."""
    return path.endswith(".gguf") or (path.endswith(".safetensors") and "/" not in path)
