"""`provision init --gpu ... --model ...`: a profile for hardware that is not at hand.

The hardware is described on the command line instead of read from a host; the
library profile nearest to it is re-targeted exactly as ``init`` does for a live
host (draft/host.py). Then every quant of the model in the same format as the
library's is tried on that hardware (fit, and the roofline prediction): the
best quant that fits is the one with the most bits per weight among those
predicted usable (init's bar, 10 tok/s), and the three best are shown with
their predicted speed. The printed profile extends the
library profile (which says how the engine is installed and where the model
comes from), names the quant, context and mode, and asks apply to generate the
API key; ``provision lock`` then pins the quant's files.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from provisioner.catalog import load_catalog
from provisioner.draft.host import MIN_USABLE_TOKENS_PER_S, choose_profile
from provisioner.errors import ProvisionError, UsageError
from provisioner.facts.gpu import Gpu
from provisioner.facts.host import HostFacts
from provisioner.fit.predict import predict
from provisioner.render.pipeline import build

KIB = 1024


@dataclass(frozen=True)
class QuantChoice:
    quant: str
    bits_per_weight: float
    decode_tokens_per_s: float
    decode_tokens_per_s_at_context: float
    bottleneck: str


@dataclass(frozen=True)
class Draft:
    base: str  # the library profile extended
    text: str
    choices: tuple[QuantChoice, ...]  # fitting quants, best first


def described_facts(gpu: str, count: int, ram: int, cores: int) -> HostFacts:
    """A host as the command line describes it (no hostname, one NUMA node)."""
    catalog = load_catalog().gpus
    if gpu not in catalog:
        raise UsageError(f"unknown GPU {gpu!r}", hint="provisioner/catalog/gpus.yaml lists the ids (docs/catalog.md)")
    name = catalog[gpu].name
    gpus = tuple(Gpu(name=name) for _ in range(count))  # the catalog knows its boards by name too
    return HostFacts(mem_total_kb=ram // KIB, cpus=cores, gpus=gpus,
                     cores=cores, numa_nodes=1, dimm_bytes=ram, dimms=None)


def _body(host_text: str) -> str:
    """init's profile for a host without what only a host could say: its header comments (the
    library quant's speed), the facts' sources on the hardware lines, the verify floor."""
    out = []
    for line in host_text.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("verify:"):
            break
        bare = line.split("  # ", 1)[0]
        if line.startswith(("    - {model:", "  ram:", "  cpu:")):
            out.append(bare + "  # given on the command line")
        elif line.startswith("  memory:"):  # not described: the quant ranking above rests on it
            out.append(bare + "  # the library's, not described: put this box's type and channels here "
                       "(fit's speed depends on them)")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def _with_model(base_text: str, quant: str, context: int | None, mode: str | None,
                floor: float | None = None) -> str:
    lines = ["model:", f"  quant: {quant}"]
    if context is not None:
        lines.append(f"  context: {context}")
    if mode is not None:
        lines.append(f"  mode: {mode}")
    lines += ["secrets:",
              "  # a random key in /etc/provision/SERVICE/api-key (0600), never printed: apply makes it on a",
              "  # live host; an image gets none, each machine makes its own at first boot",
              "  api_key: {generate: true}"]
    if floor is not None:
        lines += ["verify:", f"  min_tokens_per_s: {floor:g}  # half of fit's prediction for this quant"]
    return base_text + "\n".join(lines) + "\n"


def _try(text: str, folder: Path, quant: str) -> QuantChoice | None:
    path = folder / f"{quant}.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        built = build(path, network=False)  # fit refuses what does not fit; no hub is asked
    except ProvisionError:
        return None
    speed = predict(built.spec, built.placement)
    return QuantChoice(quant, built.spec.quant.bits_per_weight, speed.decode_tokens_per_s,
                       speed.decode_tokens_per_s_at_context, speed.bottleneck)


def draft_offline(gpu: str, count: int, ram: int, cores: int, model: str, *,
                  context: int | None = None, mode: str | None = None) -> Draft:
    facts = described_facts(gpu, count, ram, cores)
    choice = choose_profile(facts, model)
    base = choice.chosen.base
    body = _body(choice.chosen.text)
    own = base.spec.quant
    # only quants the library profile's source publishes: the draft changes the quant, not the
    # repo (another repo's quant, e.g. ik_llama.cpp's IQ3_K, is not there to download)
    hf = base.spec.profile.model.source.hf
    quants = {q: s for q, s in base.spec.model.quants.items()
              if s.format == own.format and (hf is None or s.repo in (None, hf.repo))}
    with tempfile.TemporaryDirectory(prefix="provision-init-") as tmp:
        tried = [_try(_with_model(body, q, context, mode, 0.1), Path(tmp), q) for q in quants]
    # usable first (init's bar for a chat server), then the most bits per weight: the best quality that fits
    fitting = sorted((c for c in tried if c is not None),
                     key=lambda c: (c.decode_tokens_per_s < MIN_USABLE_TOKENS_PER_S, -c.bits_per_weight,
                                    -c.decode_tokens_per_s))
    if not fitting:
        raise ProvisionError(f"no {own.format} quant of {base.spec.model.name} fits {count}x {gpu} with "
                             f"{ram // 2**30} GiB RAM" + (f" at {context} tokens" if context else ""),
                             hint="a shorter --context, more RAM, or another model")
    best = fitting[0]
    top = "\n".join(f"#   {c.quant:<12} {c.bits_per_weight:>5.2f} bits/weight  {c.decode_tokens_per_s:6.1f} tok/s "
                    f"decode, {c.decode_tokens_per_s_at_context:6.1f} at the full context ({c.bottleneck})"
                    for c in fitting[:3])
    header = (f"# Drafted by `provision init` for {count}x {gpu}, {ram // 2**30} GiB RAM, {cores} cores (not read "
              f"from a host).\n# The best quant of {base.spec.model.name} that fits, and the next ones "
              f"(predicted by provision fit):\n{top}\n"
              "# Next: provision lock THIS.yaml (pins the model's files, the engine), then provision plan / apply.\n")
    floor = round(best.decode_tokens_per_s / 2, 1)
    text = header + _with_model(body, best.quant, context, mode, floor)
    return Draft(base.name, text, tuple(fitting))
