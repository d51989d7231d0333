"""llama.cpp's physical batch (-ub), chosen by the prefill model within the VRAM its
compute buffer takes (pure).

A larger ubatch feeds the GPU's matrix units better and, with weights in RAM, copies
them over PCIe fewer times per prompt (prefill rises); its compute buffer grows with it
and can push layers or experts off the GPU (decode falls). fit weighs the sizes in
catalog/fit.yaml (``ubatch_candidates``) and keeps the fastest prefill whose decode
stays within ``ubatch_decode_loss`` of the default ubatch's; every size weighed is
reported, so the trade-off is visible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from provisioner.fit.placement import Placement, llama_ubatch, params
from provisioner.fit.predict import predict
from provisioner.profile.resolve import Spec


@dataclass(frozen=True)
class UbatchOption:
    ubatch: int
    fits: bool
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    gpu_buffer_bytes: int  # per GPU: CUDA context + compute buffer at this ubatch


def chooses_ubatch(spec: Spec) -> bool:
    """fit picks the ubatch for llama.cpp on GPUs when the profile does not state one."""
    p = spec.profile
    return p.runtime.engine == "llama.cpp" and bool(spec.gpus) and p.runtime.ubatch is None and p.cluster is None


def with_ubatch(spec: Spec, size: int) -> Spec:
    runtime = spec.profile.runtime.model_copy(update={"ubatch": size})
    profile = spec.profile.model_copy(update={"runtime": runtime})
    return dataclasses.replace(spec, loaded=dataclasses.replace(spec.loaded, profile=profile))


def choose(spec: Spec, place: Callable[[Spec], Placement]) -> Placement:
    """The placement at the chosen ubatch, carrying every option weighed."""
    table = params()["speed"]
    options: list[tuple[UbatchOption, Placement]] = []
    for size in table["ubatch_candidates"]:
        variant = with_ubatch(spec, int(size))
        placement = place(variant)
        speed = predict(variant, placement)
        options.append((UbatchOption(int(size), placement.fits, speed.prefill_tokens_per_s,
                                     speed.decode_tokens_per_s, placement.gpus[0].buffers_bytes), placement))
    default = int(table["llama_cpp_ubatch"])
    base = next(o for o, _ in options if o.ubatch == default)
    floor = base.decode_tokens_per_s * (1 - float(table["ubatch_decode_loss"]))
    allowed = [(o, p) for o, p in options
               if o.ubatch == default or (o.fits and o.decode_tokens_per_s >= floor)]
    best, placement = max(allowed, key=lambda pair: (pair[0].prefill_tokens_per_s, -pair[0].ubatch))
    return dataclasses.replace(placement, ubatch=best.ubatch, ubatch_options=tuple(o for o, _ in options))


def placement_ubatch(spec: Spec, placement: Placement) -> int:
    """The -ub the run script states and prefill is priced at."""
    return placement.ubatch or llama_ubatch(spec)
