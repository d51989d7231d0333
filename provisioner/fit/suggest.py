"""What would fit: cheaper variants of a profile that does not, each checked by re-fitting (pure).

Ranked by what a user gives up least first: a smaller quant of the same format,
a shorter context, fewer parallel slots, more experts on the CPU, a quantised KV
cache (with its quality warning), another engine.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from provisioner.catalog import load_catalog
from provisioner.fit import fit
from provisioner.fit.placement import Placement
from provisioner.fit.predict import predict
from provisioner.profile.models import Profile
from provisioner.profile.resolve import Spec
from provisioner.profile.weights_size import size_label

_CONTEXTS = (262144, 131072, 65536, 32768, 16384, 8192, 4096)


def _with(spec: Spec, *, model: dict[str, Any] | None = None, runtime: dict[str, Any] | None = None,
          cluster: dict[str, Any] | None = None, **fields: Any) -> Spec:
    p = spec.profile
    update: dict[str, Any] = {
        "model": p.model.model_copy(update=model or {}),
        "runtime": p.runtime.model_copy(update=runtime or {}),
    }
    if cluster and p.cluster is not None:
        update["cluster"] = p.cluster.model_copy(update=cluster)
    profile: Profile = p.model_copy(update=update)
    loaded = dataclasses.replace(spec.loaded, profile=profile)
    if "quant" in fields:
        fields.setdefault("layout", None)  # the file read is the old quant's: estimate the new one
        fields.setdefault("weights_size_from", "")  # so is the size a lock or the files gave
    return dataclasses.replace(spec, loaded=loaded, **fields)


def _entry(change: str, spec: Spec, placement: Placement, note: str | None = None) -> dict[str, Any]:
    speed = predict(spec, placement)
    out: dict[str, Any] = {"change": change, "fits": placement.fits,
                           "decode_tokens_per_s": round(speed.decode_tokens_per_s, 1)}
    if note:
        out["note"] = note
    return out


def suggestions(spec: Spec, placement: Placement) -> list[dict[str, Any]]:
    if placement.fits:
        return []
    p = spec.profile
    out: list[dict[str, Any]] = []
    ctx = placement.context

    # 1. the largest smaller quant of the same format that fits
    smaller = sorted((q for q in spec.model.quants.items()
                      if q[1].format == spec.quant.format and q[1].bytes < spec.quant.bytes),
                     key=lambda item: -item[1].bytes)
    for name, quant in smaller:
        candidate = _with(spec, model={"quant": name}, quant=quant)
        fitted = fit(candidate, ctx)
        if fitted.fits:
            out.append(_entry(f"model.quant: {name} ({size_label(quant)} instead of "
                              f"{size_label(spec.quant)})", candidate, fitted,
                              "fewer bits per weight: some quality loss"))
            break
    # 2. the longest shorter context that fits
    for shorter in (c for c in _CONTEXTS if c < ctx):
        candidate = _with(spec, model={"context": shorter})
        fitted = fit(candidate)
        if fitted.fits:
            out.append(_entry(f"model.context: {shorter}", candidate, fitted))
            break
    # 3. fewer parallel slots
    for slots in range(p.runtime.parallel - 1, 0, -1):
        candidate = _with(spec, runtime={"parallel": slots})
        fitted = fit(candidate, ctx)
        if fitted.fits:
            out.append(_entry(f"runtime.parallel: {slots}", candidate, fitted))
            break
    # 4. more experts on the CPU: let fit choose instead of explicit offload numbers
    if p.runtime.offload != "auto" and spec.model.is_moe:
        candidate = _with(spec, runtime={"offload": "auto"})
        fitted = fit(candidate, ctx)
        if fitted.fits:
            out.append(_entry(f"runtime.offload: auto (--n-cpu-moe {fitted.cpu_moe_layers})",
                              candidate, fitted, "more experts in system RAM: slower decode"))
    # 5. quantised KV cache
    if p.model.kv_cache_k not in {"q8_0", "fp8", "q4_0"}:
        kv = "fp8" if p.runtime.engine == "vllm" else "q8_0"
        if kv in spec.engine_version.kv_cache_types:
            candidate = _with(spec, model={"kv_cache": kv, "kv_cache_v": None})
            fitted = fit(candidate, ctx)
            if fitted.fits:
                out.append(_entry(f"model.kv_cache: {kv}", candidate, fitted,
                                  "half the KV memory; small quality loss on long reasoning"))
    # 6. another engine: llama.cpp with a GGUF quant can keep experts or layers in RAM
    if p.runtime.engine != "llama.cpp":
        out += _llama_cpp(spec, ctx)
    return out


def _llama_cpp(spec: Spec, ctx: int) -> list[dict[str, Any]]:
    engine = load_catalog().engines["llama.cpp"]
    version = list(engine.versions)[-1]
    ggufs = sorted(((n, q) for n, q in spec.model.quants.items() if q.format == "gguf"),
                   key=lambda item: -item[1].bytes)
    for name, quant in ggufs:
        # a vLLM cluster becomes a llama.cpp RPC cluster on the same nodes
        rpc = {"backend": "rpc"} if spec.profile.cluster is not None else None
        candidate = _with(spec, model={"quant": name, "kv_cache": "f16", "kv_cache_v": None},
                          runtime={"engine": "llama.cpp", "version": version, "offload": "auto"},
                          cluster=rpc, quant=quant, engine=engine, engine_version=engine.versions[version])
        fitted = fit(candidate, ctx)
        if fitted.fits:
            also = ", cluster.backend: rpc" if rpc else ""
            return [_entry(f"runtime.engine: llama.cpp {version} with model.quant {name}{also}",
                           candidate, fitted, "GGUF weights; experts/layers may live in RAM")]
    return []
