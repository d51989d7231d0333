"""The library of known-good profiles (``profiles/``): list them with what fit predicts,
show one with its fit summary. Pure apart from reading the bundled files.

Each entry goes through the same chain as every other profile
(load_profile -> resolve -> fit -> predict), so what `provision profiles list`
shows is what `provision fit NAME` would say.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.datadir import library_profiles
from provisioner.errors import UsageError
from provisioner.fit import fit
from provisioner.fit.placement import Placement
from provisioner.fit.predict import Prediction, predict
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import Spec, resolve
from provisioner.units import format_size


@dataclass(frozen=True)
class Entry:
    """One library profile, resolved, placed and predicted."""

    name: str
    path: Path
    spec: Spec
    placement: Placement
    prediction: Prediction

    @property
    def gpu_text(self) -> str:
        """"1x rtx-pro-6000-blackwell", "2x h100-sxm", or "none" (CPU only)."""
        return " + ".join(f"{g.count}x {g.id}" for g in self.spec.gpus) or "none"

    def as_dict(self) -> dict[str, Any]:
        p = self.spec.profile
        return {
            "name": self.name,
            "path": str(self.path),
            "description": p.metadata.description,
            "gpu": self.gpu_text,
            "gpus": [{"model": g.id, "count": g.count, "name": g.spec.name} for g in self.spec.gpus],
            "vram_bytes": self.spec.vram_bytes,
            "ram": format_size(p.hardware.ram),
            "ram_bytes": p.hardware.ram,
            "model": self.spec.model_id,
            "model_name": self.spec.model.name,
            "quant": p.model.quant,
            "engine": p.runtime.engine,
            "engine_version": p.runtime.version,
            "context": self.placement.context,
            "parallel": self.placement.parallel,
            "fits": self.placement.fits,
            "decode_tokens_per_s": round(self.prediction.decode_tokens_per_s, 1),
            "decode_tokens_per_s_at_context": round(self.prediction.decode_tokens_per_s_at_context, 1),
            "bottleneck": self.prediction.bottleneck,
            "sources": list(p.metadata.sources),
        }


@functools.cache
def _entry(name: str, path: Path, mtime_ns: int) -> Entry:
    spec = resolve(load_profile(path))
    placement = fit(spec)
    return Entry(name, path, spec, placement, predict(spec, placement))


def entry(name: str) -> Entry:
    """The library profile NAME (file stem). Raises UsageError naming close matches."""
    library = library_profiles()
    path = library.get(name)
    if path is None:
        close = difflib.get_close_matches(name, list(library), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else "`provision profiles list` shows them all"
        raise UsageError(f"no library profile named {name!r}", hint=hint)
    return _entry(name, path, path.stat().st_mtime_ns)


def entries() -> list[Entry]:
    """Every library profile, by name."""
    return [entry(name) for name in library_profiles()]


def list_profiles() -> list[dict[str, Any]]:
    """name, GPU (count x model), RAM, model id + quant, engine, context, predicted decode tok/s, ..."""
    return [e.as_dict() for e in entries()]


def fit_summary(e: Entry) -> list[str]:
    """What `provision fit` says about a library profile, as a few lines."""
    p = e.spec.profile
    lines = [f"{e.spec.model.name} {p.model.quant} on {p.runtime.engine} {p.runtime.version}, "
             f"{e.placement.context} tokens x {e.placement.parallel}, GPU {e.gpu_text}, "
             f"RAM {format_size(p.hardware.ram)}"]
    for d in e.placement.devices:
        lines.append(f"{d.name}: {format_size(d.weights_bytes)} weights + {format_size(d.kv_cache_bytes)} "
                     f"KV cache + {format_size(d.buffers_bytes)} buffers of {format_size(d.capacity_bytes)}, "
                     f"{format_size(d.free_bytes)} free")
    s = e.prediction
    lines.append(f"predicted: {s.decode_tokens_per_s:.1f} tok/s decode (short prompt), "
                 f"{s.decode_tokens_per_s_at_context:.1f} tok/s with {e.placement.context} tokens cached, "
                 f"{s.prefill_tokens_per_s:.0f} tok/s prefill; bottleneck: {s.bottleneck}")
    lines.append("fits" if e.placement.fits else
                 f"does NOT fit: {format_size(e.placement.missing_bytes)} missing")
    lines.extend(f"warning: {w}" for w in e.placement.warnings)
    return lines


def show_profile(name: str) -> str:
    """The library profile's file, then the fit summary as comments (still valid YAML)."""
    e = entry(name)
    text = e.path.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    summary = "\n".join(f"#   {line}" for line in fit_summary(e))
    return (f"{text}\n# --- provision fit {name} (computed now, not part of the file) ---\n{summary}\n"
            f"# Use it: `extends: {name}` in your profile, or `provision init` on the host.\n")
