"""The model on disk: every shard with its exact size and sha256, and the GGUF
header (read with the ``gguf`` package) against the profile and the catalog; a
vLLM model directory's config.json and safetensors index; an Ollama tag.

The probes that read them on the target and their parsers: facts/model_files.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from provisioner.facts.check import Check
from provisioner.facts.model_files import ModelDir, OnDisk
from provisioner.profile.resolve import Spec


def file_checks(spec: Spec, on_disk: dict[str, OnDisk]) -> list[Check]:
    files = spec.profile.model.source.files or []
    out: list[Check] = []
    for item in files:
        seen = on_disk.get(item.path, OnDisk(None, None))
        name = Path(item.path).name
        if seen.size is None:
            out.append(Check(f"model.file:{name}", "fail", "missing",
                             f"{item.bytes} bytes" if item.bytes is not None else "a file",
                             f"download it to {item.path}"))
            continue
        if item.bytes is None or item.sha256 is None:
            out.append(Check(f"model.file:{name}", "warn", f"{seen.size} bytes, sha256 {seen.sha256}",
                             "a checksum to compare", "the profile names no bytes/sha256 for it: add the "
                             "published ones, or use an hf source and `provision lock`"))
            continue
        if seen.size != item.bytes:
            hint = "truncated: the download stopped early" if seen.size < item.bytes else "not the file named"
            out.append(Check(f"model.file:{name}", "fail", f"{seen.size} bytes", f"{item.bytes} bytes", hint))
            continue
        ok = seen.sha256 == item.sha256
        out.append(Check(f"model.file:{name}", "pass" if ok else "fail", f"sha256 {seen.sha256}",
                         f"sha256 {item.sha256}", None if ok else "corrupt or a different file: download it again"))
    return out


def header_facts(path: Path) -> dict[str, Any]:
    """What the GGUF header says (no tensor data is read)."""
    from gguf import GGUFReader  # noqa: PLC0415 - numpy and gguf load only when a file is read

    reader = GGUFReader(str(path), "r")
    arch = _field(reader, "general.architecture")
    facts: dict[str, Any] = {"architecture": arch}
    for key in ("block_count", "context_length", "expert_count"):
        facts[key] = _field(reader, f"{arch}.{key}")
    facts["split_count"] = _field(reader, "split.count")
    elements = sum(int(t.n_elements) for t in reader.tensors)
    stored = sum(int(t.n_bytes) for t in reader.tensors)
    facts["bits_per_weight"] = stored * 8 / elements if elements else None
    facts["tensor_types"] = sorted({t.tensor_type.name for t in reader.tensors})
    return facts


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    return value


def header_checks(spec: Spec, facts: dict[str, Any], shard_count: int) -> list[Check]:
    model, p = spec.model, spec.profile
    out = [_equal("model.architecture", facts.get("architecture"), model.architecture),
           _equal("model.layers", facts.get("block_count"), model.layers)]
    if model.is_moe:
        out.append(_equal("model.experts", facts.get("expert_count"), model.experts_total))
    trained = facts.get("context_length")
    if trained is None:
        out.append(Check("model.context", "warn", "not in the header", str(p.model.context)))
    elif int(trained) >= p.model.context:
        out.append(Check("model.context", "pass", str(trained), f">= {p.model.context}"))
    elif p.model.context <= model.max_context:
        out.append(Check("model.context", "pass", f"{trained} (YaRN up to {model.max_context})",
                         f">= {p.model.context}", "the run script sets YaRN rope scaling"))
    else:
        out.append(Check("model.context", "fail", str(trained), f">= {p.model.context}",
                         "this file was trained for a shorter context"))
    split = facts.get("split_count")
    if split is not None and int(split) != shard_count:
        out.append(Check("model.shards", "fail", f"{shard_count} file(s) in the profile", f"{split} (split.count)",
                         "list every shard under model.source.files"))
    bpw, want = facts.get("bits_per_weight"), spec.quant.bits_per_weight
    if bpw is not None:
        ok = abs(bpw - want) <= 0.15 * want
        types = ", ".join(facts.get("tensor_types", []))
        out.append(Check("model.quant_mix", "pass" if ok else "fail", f"{bpw:.2f} bits/weight ({types})",
                         f"{want:.2f} bits/weight ({p.model.quant})",
                         None if ok else "the file is another quantisation than the profile says"))
    return out


def _equal(check_id: str, observed: Any, expected: Any) -> Check:
    ok = observed is not None and str(observed) == str(expected)
    return Check(check_id, "pass" if ok else "fail", str(observed), str(expected),
                 None if ok else "the file is not the model the profile names")


# --------------------------------------------------------------------------- model directories and Ollama tags


def dir_checks(spec: Spec, directory: str, seen: ModelDir) -> list[Check]:
    """model.dir, model.config (layers against the catalog), model.shards (the index's weight map on disk)."""
    if seen.present is None:
        return [Check("model.dir", "skip", hint="the model directory was not gathered")]
    if not seen.present:
        return [Check("model.dir", "fail", "missing", directory,
                      "download the model there (e.g. `hf download REPO --revision REV --local-dir DIR`)")]
    return [Check("model.dir", "pass", "present", directory), _config_check(spec, seen),
            _shards_check(seen)]


def _config_check(spec: Spec, seen: ModelDir) -> Check:
    layers = spec.model.layers
    # The catalog's architecture is the GGUF name (e.g. qwen3moe); HF's model_type (qwen3_moe) is another
    # vocabulary, so only the layer count is compared and model_type is reported.
    want = f"config.json with num_hidden_layers {layers} (layers compared; model_type reported, not compared)"
    if seen.config is None:
        return Check("model.config", "fail", "config.json missing", want,
                     "an incomplete download: fetch config.json (and the tokenizer files) into the directory")
    try:
        config = json.loads(seen.config)
    except ValueError as exc:
        return Check("model.config", "fail", f"config.json is not JSON: {exc}", want,
                     "the file is damaged: download it again")
    if not isinstance(config, dict):
        return Check("model.config", "fail", "config.json is not a JSON object", want, "download it again")
    nested = config.get("text_config")  # multimodal configs keep the language model's values here
    text: dict[str, Any] = nested if isinstance(nested, dict) else {}
    got = config.get("num_hidden_layers", text.get("num_hidden_layers"))
    model_type = config.get("model_type", text.get("model_type"))
    observed = f"model_type {model_type}, num_hidden_layers {got}"
    if got is None:
        return Check("model.config", "warn", observed, want, "config.json names no num_hidden_layers")
    if got != layers:
        return Check("model.config", "fail", observed, want,
                     f"this is not {spec.model.name} ({layers} layers): the directory holds another model")
    return Check("model.config", "pass", observed, want)


def _single_file_check(seen: ModelDir) -> Check:
    """No index: a small model is one model.safetensors."""
    want = "model.safetensors (no index: one file)"
    zero = sorted(n for n, size in seen.files.items() if size == 0)
    if not seen.files:
        return Check("model.shards", "fail", "no *.safetensors files", want, "download the weights")
    if zero:
        return Check("model.shards", "fail", f"empty: {', '.join(zero)}", want, "download them again")
    if "model.safetensors" not in seen.files:
        return Check("model.shards", "fail", f"{len(seen.files)} *.safetensors file(s), no index", want,
                     "model.safetensors.index.json is missing: download it")
    return Check("model.shards", "pass", f"model.safetensors {seen.files['model.safetensors']} bytes", want)


def _shards_check(seen: ModelDir) -> Check:
    if seen.index is None:
        return _single_file_check(seen)
    try:
        index = json.loads(seen.index)
        weight_map = index["weight_map"]
        names = sorted(set(weight_map.values()))
        total = int((index.get("metadata") or {}).get("total_size") or 0)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        return Check("model.shards", "fail", f"model.safetensors.index.json unreadable: {exc!r}",
                     "a weight_map naming every shard", "the index is damaged: download it again")
    want = f"the {len(names)} shard(s) named in model.safetensors.index.json, none empty"
    missing = [n for n in names if n not in seen.files]
    empty = [n for n in names if seen.files.get(n) == 0]
    on_disk = sum(seen.files.get(n, 0) for n in names)
    problems = []
    if missing:
        problems.append(f"missing: {', '.join(missing[:5])}" + (f" (+{len(missing) - 5})" if len(missing) > 5 else ""))
    if empty:
        problems.append(f"empty: {', '.join(empty[:5])}" + (f" (+{len(empty) - 5})" if len(empty) > 5 else ""))
    if not missing and total and on_disk < total:
        problems.append(f"{on_disk} bytes on disk < total_size {total}: a shard is truncated")
    if problems:
        return Check("model.shards", "fail", "; ".join(problems), want,
                     "an incomplete download: fetch the missing shards again (hf download resumes)")
    return Check("model.shards", "pass", f"{len(names)} shard(s), {on_disk} bytes"
                 + (f" (tensors {total})" if total else ""), want)


def gguf_file_check(name: str, size: int | None) -> Check:
    """hf.file: the GGUF llama.cpp loads, present and not empty (no size or hash is pinned for it)."""
    if size is None:
        return Check(f"model.file:{name}", "fail", "missing", "present", "download the repo's file into hf.dest")
    if size == 0:
        return Check(f"model.file:{name}", "fail", "0 bytes", "present", "an empty file: download it again")
    return Check(f"model.file:{name}", "pass", f"{size} bytes", "present")


def ollama_checks(tag: str, seen: ModelDir, digest: str | None = None) -> list[Check]:
    """model.ollama: the tag is listed by ``ollama list``; with a pinned digest, its ID (the
    digest's first 12 hex digits) must match: a re-pull can move a tag to another build."""
    pinned = digest.removeprefix("sha256:") if digest else None
    want = f"{tag} listed by `ollama list`" + (f" with id {pinned[:12]}" if pinned else "")
    if seen.ollama is None:
        return [Check("model.ollama", "skip", None, want, "ollama list was not gathered")]
    if seen.ollama == "missing":
        return [Check("model.ollama", "skip", None, want, "ollama is not installed on the target")]
    lines = [ln for ln in seen.ollama_lines if ln.strip()]
    if seen.ollama != "0":
        return [Check("model.ollama", "warn", f"ollama list failed: {lines[0] if lines else 'exit ' + seen.ollama}",
                      want, "is the Ollama server running? (the endpoint checks say more)")]
    full = tag if ":" in tag else f"{tag}:latest"
    for line in lines[1:] if lines and lines[0].startswith("NAME") else lines:
        cols = line.split()
        if cols and cols[0] in {tag, full}:
            ident = cols[1] if len(cols) > 1 else "?"
            if pinned and not (pinned.startswith(ident) or ident.startswith(pinned)):
                return [Check("model.ollama", "fail", f"{cols[0]} id {ident}", want,
                              "the tag points at another build than the profile or its lock pins: "
                              "`provision apply` with install.model writes the locked build; a new "
                              "build needs `provision lock`")]
            return [Check("model.ollama", "pass", f"{cols[0]} id {ident}", want)]
    listed = ", ".join(ln.split()[0] for ln in lines[1:] if ln.split()) or "none"
    return [Check("model.ollama", "fail", f"not listed (have: {listed})", want,
                  "set install.model and run `provision lock` and `provision apply` (it puts the locked "
                  f"build where Ollama reads it), or run `ollama pull {tag}`")]


def prehash(paths: list[str], root: str, state_dir: str, *, show_progress: bool) -> int:
    """Hash GGUF shards here, with a progress bar, into the same cache the probe reads
    (size, mtime, path, sha256), so the probe finds them hashed. Only for targets whose
    files this process can read (local and --root); returns how many files it hashed."""
    cache = Path(state_dir) / "sha256-cache"
    known: set[tuple[str, str, str]] = set()
    if cache.is_file():
        for line in cache.read_text(errors="replace").splitlines():
            parts = line.split(" ")
            if len(parts) == 4:
                known.add((parts[0], parts[1], parts[2]))
    todo = []
    for rel in paths:
        host_path = root + rel
        try:
            stat = os.stat(host_path)
        except OSError:
            continue
        key = (str(stat.st_size), str(int(stat.st_mtime)), host_path)
        if key not in known:
            todo.append((host_path, key, stat.st_size))
    if not todo:
        return 0
    from rich.progress import (  # noqa: PLC0415 - rich only for a progress bar on a terminal
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    cache.parent.mkdir(parents=True, exist_ok=True)
    with Progress(TextColumn("sha256 {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  disable=not show_progress, transient=True) as progress:
        for host_path, key, size in todo:
            task = progress.add_task(Path(host_path).name, total=size)
            digest = hashlib.sha256()
            with open(host_path, "rb") as handle:
                while chunk := handle.read(8 * 1024 * 1024):
                    digest.update(chunk)
                    progress.advance(task, len(chunk))
            with cache.open("a", encoding="utf-8") as out:
                out.write(f"{key[0]} {key[1]} {key[2]} {digest.hexdigest()}\n")
    return len(todo)
