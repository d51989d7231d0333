"""A model the catalog lacks (or a quant it lacks): its shape from the model's own files.

``model.id`` names a catalog model, or a Hugging Face repo (``org/name``) or anything
else when ``model.source`` points at files on this machine. Where the numbers come from:

- ``source.files`` (GGUF shards) that exist here: their headers;
- ``source.directory`` with ``config.json``: it and the safetensors headers;
- otherwise the Hub repo (``model.id``, or ``source.hf.repo`` for a catalog model's
  GGUF quant): read once by ``install/model_fetch.py`` (config.json, the GGUF header
  through HTTP range requests, the file listing for the sizes) into the cache below.

Every result is a *record* (plain JSON data: the ModelSpec fields, the quant, the
GGUF's per-layer sizes, where it came from) kept under the cache directory
(``model-shapes/``), so validate, plan and apply read it offline and fast.
``shape_record(spec)`` gives the record of a resolved profile (for a lock file).
Nothing here touches the network.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from provisioner.catalog import Catalog, ModelSpec, QuantSpec
from provisioner.datadir import cache_dir
from provisioner.errors import Problem, ProvisionError
from provisioner.facts.gguf_layout import TensorLayout, layout_of
from provisioner.facts.model_shape import from_config, from_gguf
from provisioner.facts.weights_header import (
    BadHeader,
    GgufHeader,
    Tensor,
    Truncated,
    parse_gguf,
    parse_safetensors,
)
from provisioner.profile.loader import LoadedProfile
from provisioner.profile.models import Profile

RECORD_VERSION = 2  # 2: bits per weight from the tensors, not the file size
_FIRST_READ = 4 * 2**20


def shapes_dir() -> Path:
    return cache_dir() / "model-shapes"


def is_repo_id(model_id: str) -> bool:
    parts = model_id.split("/")
    return len(parts) == 2 and all(parts)


def hub_target(profile: Profile) -> tuple[str, str, str | None] | None:
    """(repo, revision, first GGUF file or None) the Hub record of this profile is read
    from, or None when the profile's own files are the source."""
    m = profile.model
    hf = m.source.hf
    if hf is not None:  # what the engine serves is what fit sizes
        return hf.repo, hf.revision, hf.file if (hf.file or "").endswith(".gguf") else None
    if is_repo_id(m.id):
        return m.id, "main", None
    return None


def hub_key(repo: str, revision: str, quant: str, file: str | None) -> str:
    return _digest(["hub", repo, revision, quant, file or ""])


def _digest(parts: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()


def save_record(key: str, record: dict[str, Any]) -> Path:
    path = shapes_dir() / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": RECORD_VERSION, **record}, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path


def cached_record(key: str) -> dict[str, Any] | None:
    path = shapes_dir() / f"{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("version") == RECORD_VERSION else None


# --------------------------------------------------------------------------- records


def gguf_record(headers: Sequence[GgufHeader], sizes: Sequence[int], *, name: str, repo: str,
                files: str, sources: list[str]) -> dict[str, Any]:
    """Shards' headers (the first holds the metadata) and file sizes -> a record;
    ``files`` names the shards for the output ("GGUF header of FILES")."""
    source = f"GGUF header of {files}"
    tensors = tuple(t for h in headers for t in h.tensors)
    merged = GgufHeader(headers[0].metadata, tensors, headers[0].header_bytes)
    model = from_gguf(merged, name, source)
    layout = layout_of(((t.name, t.nbytes) for t in tensors), files)
    total = sum(sizes)
    # per weight: the tensors' own bytes; the file also holds the vocabulary and metadata, which
    # for a small model are a large share (a 151936-token vocabulary is ~6 MB)
    bits = (sum(t.nbytes for t in tensors) or total) * 8 / model["params_total"]
    return {"model": {**model, "hf_repo": repo, "sources": sources},
            "quant": {"format": "gguf", "bytes": total, "bits_per_weight": round(bits, 3),
                      "repo": repo or None, "sources": sources},
            "layout": {"dense": list(layout.dense), "experts": list(layout.experts), "outside": layout.outside,
                       "files": files},
            "tensor_types": sorted({t.dtype for t in tensors}), "source": source}


def safetensors_record(config: dict[str, Any], tensors: Sequence[Tensor], sizes: Sequence[int], *, name: str,
                       repo: str, source: str, sources: list[str]) -> dict[str, Any]:
    model = from_config(config, tensors, name, source)
    total = sum(sizes)
    return {"model": {**model, "hf_repo": repo, "sources": sources},
            "quant": {"format": "safetensors", "bytes": total, "method": quant_method(config),
                      "bits_per_weight": round(min(total * 8 / model["params_total"], 32.0), 3),
                      "repo": repo or None, "sources": sources},
            "layout": None, "tensor_types": sorted({t.dtype for t in tensors}), "source": source}


def quant_method(config: dict[str, Any]) -> str:
    """config.json's quantization_config.quant_method (fp8, awq, gptq, compressed-tensors,
    mxfp4, ...), or the unquantised dtype (bf16, f16, f32)."""
    q = config.get("quantization_config") or {}
    if q.get("quant_method"):
        return str(q["quant_method"]).lower()
    dtype = str(config.get("torch_dtype") or config.get("dtype") or (config.get("text_config") or {}).get(
        "torch_dtype") or "bfloat16")
    return {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}.get(dtype, dtype)


# --------------------------------------------------------------------------- local files


def read_prefix(path: Path, parse: Any) -> Any:
    """Parse a header from the start of a file, reading more until it is complete."""
    size = _FIRST_READ
    with path.open("rb") as handle:
        while True:
            handle.seek(0)
            data = handle.read(size)
            try:
                return parse(data)
            except Truncated as short:
                if len(data) < size:  # the whole file was read
                    raise BadHeader("the file ends inside its header") from None
                size = max(size * 2, short.need + 2**20)


def _local_record(profile: Profile, root: str) -> dict[str, Any] | None:
    if profile.model.source.files:
        return _local_gguf(profile, root)
    if profile.model.source.directory:
        return _local_directory(profile, root)
    return None


def _local_gguf(profile: Profile, root: str) -> dict[str, Any] | None:
    m = profile.model
    assert m.source.files is not None
    paths = [Path(root + f.path) for f in m.source.files]
    if not all(p.is_file() for p in paths):
        return None
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    key = _digest(["gguf", m.id, stats])
    cached = cached_record(key)
    if cached is not None:
        return cached
    try:
        headers = [read_prefix(p, parse_gguf) for p in paths]
    except (BadHeader, OSError) as exc:
        raise ProvisionError(f"cannot read the GGUF header of {paths[0]}: {exc}",
                             hint="is it a complete GGUF file? `provision verify` checks size and sha256") from None
    names = ", ".join(p.name for p in paths)
    record = gguf_record(headers, [s for _, s, _ in stats], name=m.id, repo=m.id if "/" in m.id else "",
                         files=names, sources=[str(paths[0])])
    save_record(key, record)
    return record


def _local_directory(profile: Profile, root: str) -> dict[str, Any] | None:
    m = profile.model
    assert m.source.directory is not None
    folder = Path(root + m.source.directory)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return None
    shards = sorted(folder.glob("*.safetensors"))
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in [config_path, *shards]]
    key = _digest(["safetensors", m.id, stats])
    cached = cached_record(key)
    if cached is not None:
        return cached
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        tensors = [t for p in shards for t in read_prefix(p, parse_safetensors)]
    except (BadHeader, OSError, ValueError) as exc:
        raise ProvisionError(f"cannot read the model in {folder}: {exc}",
                             hint="a safetensors model directory holds config.json and *.safetensors") from None
    record = safetensors_record(config, tensors, [p.stat().st_size for p in shards], name=m.id,
                                repo=m.id if "/" in m.id else "", source=f"config.json and safetensors "
                                f"headers in {folder}", sources=[str(config_path)])
    save_record(key, record)
    return record


def own_record(profile: Profile, root: str = "") -> dict[str, Any] | None:
    """The record of the profile's model from its local files, else the cache (None: not
    read yet, `provision fit` reads it from the Hub). Raises ProvisionError for a file
    that cannot be read or an architecture fit refuses."""
    local = _local_record(profile, root)
    if local is not None:
        return local
    target = hub_target(profile)
    if target is None:
        return None
    repo, revision, file = target
    return cached_record(hub_key(repo, revision, profile.model.quant, file))


# --------------------------------------------------------------------------- the Spec's view


def model_of(record: dict[str, Any], profile: Profile, catalog_model: ModelSpec | None) -> ModelSpec:
    """The catalog's model with this quant added, or a ModelSpec from the record alone
    (its modes: the profile's own, which fit cannot check; no model-card sampling)."""
    quant = QuantSpec.model_validate({k: v for k, v in record["quant"].items()})
    if catalog_model is not None:
        return catalog_model.model_copy(update={"quants": {**catalog_model.quants, profile.model.quant: quant}})
    fields = dict(record["model"])
    fields.setdefault("name", profile.model.id)
    return ModelSpec.model_validate({**fields, "modes": [profile.model.mode], "sampling": {},
                                     "quants": {profile.model.quant: quant}})


def layout_from(record: dict[str, Any]) -> TensorLayout | None:
    lay = record.get("layout")
    if not lay:
        return None
    return TensorLayout(tuple(lay["dense"]), tuple(lay["experts"]), int(lay["outside"]), str(lay["files"]))


def shape_record(spec: Any) -> dict[str, Any]:
    """What the resolved profile's model is, as data a lock file can record: the
    ModelSpec fields fit used and the quant (sizes, format, where they came from)."""
    quant = spec.quant.model_dump(mode="json")
    model = spec.model.model_dump(mode="json", exclude={"quants", "sampling"})
    return {"model_id": spec.model_id, "model": model, "quant": {"name": spec.profile.model.quant, **quant}}


# --------------------------------------------------------------------------- resolve's part


def _gguf_source(profile: Profile) -> bool:
    src = profile.model.source
    return bool(src.files) or (src.hf is not None and (src.hf.file or "").endswith(".gguf"))


def _own_files(profile: Profile) -> bool:
    """The profile names weight files a quant's size can be read from (GGUF, or a safetensors
    repo or folder: an AWQ/GPTQ/FP8 checkpoint of a catalog model)."""
    src = profile.model.source
    return _gguf_source(profile) or src.hf is not None or src.directory is not None


def _readable(profile: Profile) -> bool:
    src = profile.model.source
    return is_repo_id(profile.model.id) or bool(src.files) or src.directory is not None or src.hf is not None


def lookup_model(loaded: LoadedProfile, catalog: Catalog) -> tuple[
        ModelSpec | None, QuantSpec | None, TensorLayout | None, list[Problem]]:
    """The profile's model and quant: the catalog's, else read from the model's own files."""
    p = loaded.profile
    model = catalog.models.get(p.model.id)
    quant = model.quants.get(p.model.quant) if model is not None else None
    engine = catalog.engines.get(p.runtime.engine)
    wanted = engine.weights_format if engine is not None else None
    if model is not None and quant is not None and (quant.format == wanted or not _gguf_source(p)):
        return model, quant, None, []
    refused = _unreadable(loaded, catalog, model)
    if refused is not None:
        return model, None, None, [refused]
    try:
        record = own_record(p)
    except ProvisionError as exc:
        return None, None, None, [loaded.problem(("model", "id"), exc.first.message, exc.first.hint)]
    if record is None:
        return model, None, None, [_not_read(loaded, catalog, model)]
    try:
        spec = model_of(record, p, model)
    except ValueError as exc:
        return None, None, None, [loaded.problem(("model", "id"), f"{p.model.id}: the shape read from "
                                                 f"{record.get('source')} is not usable: {exc}")]
    return spec, spec.quants[p.model.quant], layout_from(record), []


def _not_read(loaded: LoadedProfile, catalog: Catalog, model: ModelSpec | None) -> Problem:
    p = loaded.profile
    reads = ("`provision fit PROFILE` reads config.json / the GGUF header from the Hub once (cached: then "
             "validate works offline)" if hub_target(p) is not None
             else "the files model.source names are not on this machine to read")
    if model is not None:
        return loaded.problem(("model", "quant"), f"unknown quant {p.model.quant!r} for {p.model.id}: not in "
                              "the catalog, and its files have not been read here yet",
                              f"{_suggest(p.model.quant, list(model.quants))}; {reads}")
    return loaded.problem(("model", "id"), f"unknown model {p.model.id!r}: not in the catalog, and its files "
                          "have not been read here yet", f"{_suggest(p.model.id, list(catalog.models))}; {reads}")


def _unreadable(loaded: LoadedProfile, catalog: Catalog, model: ModelSpec | None) -> Problem | None:
    """Why the model cannot be read from its own files, or None when it can."""
    p = loaded.profile
    if model is not None and not _own_files(p):
        return loaded.problem(
            ("model", "quant"), f"unknown quant {p.model.quant!r} for {p.model.id}",
            _suggest(p.model.quant, list(model.quants)) + "; or name its files (model.source.files, hf or "
            "directory): any quant is read from them")
    if model is not None or (_readable(p) and p.runtime.engine != "ollama"):
        return None
    hint = _suggest(p.model.id, list(catalog.models))
    if p.runtime.engine == "ollama":
        hint += "; a model outside the catalog is served by llama.cpp (GGUF) or vLLM (safetensors)"
    else:
        hint += "; or name a Hugging Face repo (org/name), or point model.source at the files"
    return loaded.problem(("model", "id"), f"unknown model {p.model.id!r}", hint)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(known))}"
