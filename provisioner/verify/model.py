"""The model on disk: every shard with its exact size and sha256, and the GGUF
header (read with the ``gguf`` package) against the profile and the catalog.

Hashing runs on the target (sha256sum, streamed) and is cached in the state
dir by path, size and mtime, so a second verify does not read 100 GB again.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.resolve import Spec
from provisioner.verify import Check


def model_probe(paths: list[str], root: str, state_dir: str) -> str:
    """sh printing ``@model B64PATH SIZE SHA256`` or ``@model B64PATH missing`` per file."""
    quoted = " ".join(shlex.quote(root + p) for p in paths)
    return f"""cache={shlex.quote(state_dir)}/sha256-cache
mkdir -p {shlex.quote(state_dir)} 2>/dev/null || true
for p in {quoted}; do
    rel=${{p#"$root"}}
    if [ -f "$p" ]; then
        size=$(stat -c '%s' "$p"); mtime=$(stat -c '%Y' "$p")
        sum=$(awk -v s="$size" -v m="$mtime" -v p="$p" '$1 == s && $2 == m && $3 == p {{print $4}}' \\
            "$cache" 2>/dev/null | tail -n 1)
        if [ -z "$sum" ]; then
            sum=$(sha256sum < "$p" | cut -c1-64)
            printf '%s %s %s %s\\n' "$size" "$mtime" "$p" "$sum" >> "$cache" 2>/dev/null || true
        fi
        printf '@model %s %s %s\\n' "$(b64 "$rel")" "$size" "$sum"
    else
        printf '@model %s missing\\n' "$(b64 "$rel")"
    fi
done
"""


@dataclass(frozen=True)
class OnDisk:
    size: int | None  # None: missing
    sha256: str | None


def parse_model(output: str) -> dict[str, OnDisk]:
    found: dict[str, OnDisk] = {}
    for line in output.splitlines():
        if not line.startswith("@model "):
            continue
        parts = line.split(" ")
        path = base64.b64decode(parts[1]).decode()
        found[path] = OnDisk(None, None) if parts[2] == "missing" else OnDisk(int(parts[2]), parts[3])
    return found


def file_checks(spec: Spec, on_disk: dict[str, OnDisk]) -> list[Check]:
    files = spec.profile.model.source.files or []
    out: list[Check] = []
    for item in files:
        seen = on_disk.get(item.path, OnDisk(None, None))
        name = Path(item.path).name
        if seen.size is None:
            out.append(Check(f"model.file:{name}", "fail", "missing", f"{item.bytes} bytes",
                             f"download it to {item.path}"))
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
    from gguf import GGUFReader

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
