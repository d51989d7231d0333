"""Where the quality canary's fingerprints live, and the setup each one records.

- The host's **baseline**: ``STATE/quality/SERVICE.fingerprint.json`` in provision's state
  dir on the host (``/var/lib/provision``; ``DIR/var/lib/provision`` under ``--root DIR``),
  beside ``generations/``; the fingerprint names the generation it was taken at. The
  first verify that passes writes it; ``verify --rebaseline`` replaces it and keeps the
  one it replaced as ``SERVICE.fingerprint.previous.json``. Read and written with sh
  through the transport, like everything else on the host.
- A **reviewed** fingerprint shipped beside the profile: ``PROFILE.fingerprint.json``
  (for ``my.yaml``, ``my.fingerprint.json``). Same format; a copy of a host's baseline
  someone checked. When the lock file arrives it can carry the same object.
- A higher-precision **reference** for the same model: ``PROFILE.reference.fingerprint.json``,
  e.g. a baseline taken from the BF16 file on another host or published by the model's
  quantizer; verify reports this quant's KL divergence against it.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.facts.model_files import MODEL_DIR_PROBE, MODEL_FILES_PROBE
from provisioner.verify.quality import Fingerprint, dump_fingerprint, parse_fingerprint

if TYPE_CHECKING:
    from provisioner.facts.gather import Gathered
    from provisioner.fit import Placement
    from provisioner.profile.resolve import Spec
    from provisioner.transport import Transport

REVIEWED_SUFFIX = ".fingerprint.json"
REFERENCE_SUFFIX = ".reference.fingerprint.json"


def state_path(state_dir: str, service: str) -> str:
    return f"{state_dir}/quality/{service}.fingerprint.json"


@dataclass(frozen=True)
class Loaded:
    """A fingerprint file: absent (both None), read, or unreadable (``error``, one line)."""

    fingerprint: Fingerprint | None = None
    error: str | None = None
    where: str = ""


def read_script(path: str) -> str:
    q = shlex.quote(path)
    return f"""if [ -f {q} ]; then
    printf '@fingerprint '
    base64 < {q} | tr -d '\\n'
    printf '\\n'
else
    echo '@fingerprint missing'
fi
"""


def read_baseline(transport: Transport, service: str) -> Loaded:
    path = state_path(transport.state_dir, service)
    where = f"{transport.name}:{path}"
    result = transport.run(read_script(path))
    line = next((ln for ln in result.stdout.split("\n") if ln.startswith("@fingerprint ")), None)
    if result.returncode != 0 or line is None:
        detail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        return Loaded(error=f"{where}: could not be read: {detail}", where=where)
    value = line.split(" ", 1)[1]
    if value == "missing":
        return Loaded(where=where)
    try:
        text = base64.b64decode(value).decode("utf-8")
        return Loaded(parse_fingerprint(text, where), where=where)
    except (ValueError, UnicodeDecodeError) as exc:
        return Loaded(error=str(exc), where=where)


def write_script(path: str, text: str) -> str:
    q = shlex.quote(path)
    folder = shlex.quote(path.rsplit("/", 1)[0])
    previous = shlex.quote(path.removesuffix(".json") + ".previous.json")
    tmp = shlex.quote(path + ".tmp")
    data = base64.encodebytes(text.encode("utf-8")).decode("ascii")
    return f"""set -eu
umask 022
mkdir -p {folder}
base64 -d > {tmp} <<'PROVISION_FINGERPRINT'
{data}PROVISION_FINGERPRINT
if [ -f {q} ]; then mv -f {q} {previous}; fi
mv -f {tmp} {q}
"""


def write_baseline(transport: Transport, service: str, fingerprint: Fingerprint) -> str | None:
    """Write the host's baseline; None, or what went wrong (one line)."""
    path = state_path(transport.state_dir, service)
    result = transport.run(write_script(path, dump_fingerprint(fingerprint)))
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        return f"{transport.name}:{path}: could not be written: {detail}"
    return None


def beside(profile: Path, suffix: str) -> Path:
    """``my.yaml`` -> ``my.fingerprint.json`` (suffix REVIEWED_SUFFIX or REFERENCE_SUFFIX)."""
    return profile.with_name(profile.name.removesuffix(profile.suffix) + suffix)


def read_beside(profile: Path, suffix: str) -> Loaded:
    path = beside(profile, suffix)
    if not path.is_file():
        return Loaded(where=str(path))
    try:
        return Loaded(parse_fingerprint(path.read_text(encoding="utf-8"), str(path)), where=str(path))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return Loaded(error=str(exc), where=str(path))


# -- the setup a fingerprint is taken with -----------------------------------------------------

def profile_setup(spec: Spec, placement: Placement, gathered: Gathered | None) -> dict[str, str]:
    """What a fingerprint's numbers depend on, from the profile, fit's placement and the
    gathered host (the served file's sha256, the driver); the engine's own build is added
    from the server by the canary. Keys: quality.SETUP_LABELS."""
    profile = spec.profile
    model, runtime = profile.model, profile.runtime
    setup = {
        "engine": runtime.engine,
        "engine_version": runtime.version,
        "model": spec.model_id,
        "quant": model.quant,
        "kv_cache_k": model.kv_cache_k,
        "kv_cache_v": model.kv_cache_value,
        "offload": _offload(spec, placement),
        "flash_attention": runtime.flash_attention,
        "context": str(placement.context),
        "parallel": str(runtime.parallel),
        "extra_args": " ".join(runtime.extra_args) or "(none)",
        "gpus": ", ".join(f"{g.count}x {g.id}" for g in spec.gpus) or "(none)",
        "mode": model.mode,
    }
    sha = _model_identity(spec, gathered)
    if sha:
        setup["model_sha256"] = sha
    driver = gathered.facts.get("nvidia_driver") if gathered is not None else None
    if driver:
        setup["driver"] = driver
    return setup


def _offload(spec: Spec, placement: Placement) -> str:
    runtime = spec.profile.runtime
    if runtime.engine == "vllm":
        parts = [f"tensor_parallel={'yes' if placement.tensor_parallel else 'no'}",
                 f"cpu_offload_bytes={placement.cpu_offload_bytes}"]
    else:
        parts = [f"gpu_layers={placement.gpu_layers}", f"cpu_moe_layers={placement.cpu_moe_layers}"]
        if placement.tensor_split:
            parts.append("tensor_split=" + ",".join(f"{s:.3f}" for s in placement.tensor_split))
    offload = runtime.offload
    if offload != "auto" and offload.override_tensors:
        parts.append("override_tensors=" + ",".join(offload.override_tensors))
    return " ".join(parts)


def _model_identity(spec: Spec, gathered: Gathered | None) -> str:
    """The served file's sha256 as the host has it (the model probe's), else as the profile
    declares it; an hf repo's revision; an Ollama tag's ID as `ollama list` shows it."""
    source = spec.profile.model.source
    output = gathered.output if gathered is not None else ""
    if source.files:
        seen = MODEL_FILES_PROBE.read(output)
        return ",".join((seen[f.path].sha256 if f.path in seen else None) or f.sha256 or f.path
                        for f in source.files)
    if source.hf is not None:
        return f"{source.hf.repo}@{source.hf.revision}" + (f"/{source.hf.file}" if source.hf.file else "")
    if source.ollama is not None:
        tag = source.ollama
        names = {tag, tag if ":" in tag else f"{tag}:latest"}
        for line in MODEL_DIR_PROBE.read(output).ollama_lines:
            cols = line.split()
            if len(cols) > 1 and cols[0] in names:
                return f"{tag} id {cols[1]}"
        return f"{tag} id {source.ollama_digest}" if source.ollama_digest else ""
    return ""
