"""`provision init`: read a host's facts, pick the best-fitting library profile, print a
commented profile that `extends:` it with the host's hardware.

    gather_host (facts/collect.py: the GPU and host probes)  -->  HostFacts (facts/host.py)
    HostFacts + library  --choose_profile-->  Choice  --render_init_profile-->  YAML text

Choosing: every library profile (serving ``--model`` if given) is re-targeted at
the host's hardware (GPUs, RAM, cores, NUMA nodes, memory type where readable)
and must then pass what `provision validate` checks (schema, catalog, fit,
render). A profile written for exactly this hardware (same GPU catalog ids and
counts, RAM at least the profile's) wins over one adapted to it; among equals
the biggest model that still decodes at a usable speed, then the fastest.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.version import InvalidVersion, Version

from provisioner.catalog import load_catalog
from provisioner.errors import ProvisionError, UsageError
from provisioner.facts.gpu import Gpu
from provisioner.facts.host import HostFacts
from provisioner.fit.library import Entry, entries
from provisioner.fit.predict import predict
from provisioner.profile.hardware_section import PLACEHOLDER
from provisioner.render.pipeline import build
from provisioner.units import GIB, format_size

# below this predicted decode speed a bigger model is not preferred over a faster one
MIN_USABLE_TOKENS_PER_S = 10.0
PLACEHOLDER_SHA = re.compile(r"ffff0{8}")


# --------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Candidate:
    """A library profile re-targeted at the host, and what validate/fit said about it."""

    base: Entry
    text: str
    ok: bool
    problem: str | None
    decode_tokens_per_s: float
    decode_tokens_per_s_at_context: float
    bottleneck: str
    exact: bool  # written for this hardware: same GPUs and counts, RAM at least the profile's
    distance: tuple[int, int, int]  # (GPU model: 0 same / 1 same VRAM / 2 other, |count diff|, RAM short)


@dataclass(frozen=True)
class Choice:
    facts: HostFacts
    chosen: Candidate
    model: str | None
    others: tuple[Candidate, ...] = field(default_factory=tuple)  # other candidates that validate

    @property
    def base(self) -> str:
        return self.chosen.base.name

    @property
    def adapted(self) -> bool:
        return not self.chosen.exact


def _matches_model(e: Entry, model: str) -> bool:
    wanted = model.strip().lower()
    return wanted in {e.spec.model_id.lower(), e.spec.model.name.lower(), e.spec.model.hf_repo.lower()}


def _distance(e: Entry, facts: HostFacts) -> tuple[int, int, int]:
    host = dict(facts.gpu_groups)
    base = {g.id: g.count for g in e.spec.gpus}
    if set(host) == set(base):
        kind = 0
    else:
        catalog = load_catalog().gpus
        host_vram = {catalog[g].vram for g in host}
        kind = 1 if host and base and host_vram == {g.spec.vram for g in e.spec.gpus} else 2
    count = abs(sum(host.values()) - sum(base.values()))
    short = 1 if facts.ram_bytes < e.spec.profile.hardware.ram else 0
    return kind, count, short


def _best_key(c: Candidate, facts: HostFacts) -> tuple[float, float, float, float]:
    """Bigger is better: usable speed, model size, speed, then the library RAM nearest the host's."""
    usable = 1.0 if c.decode_tokens_per_s >= MIN_USABLE_TOKENS_PER_S else 0.0
    ram_gap = abs(facts.ram_bytes - c.base.spec.profile.hardware.ram) / GIB
    return usable, float(c.base.spec.model.params_total), round(c.decode_tokens_per_s, 1), -ram_gap


def _evaluate(e: Entry, facts: HostFacts, folder: Path) -> Candidate:
    distance = _distance(e, facts)
    exact = distance == (0, 0, 0)
    text = _profile_text(e, facts, exact=exact, note=None)
    path = folder / f"{e.name}.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        built = build(path, network=False)  # a draft is checked and fitted; it asks no hub
    except ProvisionError as exc:
        return Candidate(e, text, False, exc.first.message, 0.0, 0.0, "", exact, distance)
    speed = predict(built.spec, built.placement)
    return Candidate(e, text, True, None, speed.decode_tokens_per_s, speed.decode_tokens_per_s_at_context,
                     speed.bottleneck, exact, distance)


def choose_profile(facts: HostFacts, model: str | None = None) -> Choice:
    """The best-fitting library profile for this host (and model), re-targeted at its hardware.

    Raises UsageError for an unknown model, ProvisionError when no library profile
    can be made to fit (naming the closest and why)."""
    pool = [e for e in entries() if e.spec.profile.cluster is None]  # init describes one host
    if model is not None:
        pool = [e for e in pool if _matches_model(e, model)]
        if not pool:
            served = sorted({e.spec.model_id for e in entries()})
            raise UsageError(f"no library profile serves the model {model!r}",
                             hint=f"library models: {', '.join(served)}; or write a profile by hand "
                             "(`provision fit` checks it)")
    with tempfile.TemporaryDirectory(prefix="provision-init-") as tmp:
        candidates = [_evaluate(e, facts, Path(tmp)) for e in pool]
    good = [c for c in candidates if c.ok]
    if not good:
        closest = min(candidates, key=lambda c: (c.distance, -c.base.spec.model.params_total, c.base.name))
        raise ProvisionError(
            f"no library profile fits this host ({hardware_text(facts)}); closest: {closest.base.name}: "
            f"{closest.problem}",
            hint="`provision profiles show NAME` shows a profile; extend it by hand with a smaller quant "
            "or a shorter context and check it with `provision fit`")
    exact = [c for c in good if c.exact]
    if exact:
        chosen = max(exact, key=lambda c: _best_key(c, facts))
    else:
        nearest = min(c.distance for c in good)
        chosen = max((c for c in good if c.distance == nearest), key=lambda c: _best_key(c, facts))
    others = tuple(sorted((c for c in good if c is not chosen),
                          key=lambda c: (not c.exact, c.distance, [-x for x in _best_key(c, facts)])))
    note = (chosen, others, model)
    final = _profile_text(chosen.base, facts, exact=chosen.exact, note=note)
    with tempfile.TemporaryDirectory(prefix="provision-init-") as tmp:
        path = Path(tmp) / "init.yaml"
        path.write_text(final, encoding="utf-8")
        build(path, network=False)  # what is printed validates; a failure here is a bug, raised as an error
    if facts.unknown_gpus:  # printed with their inline specs, which wait for the user's numbers
        final = _profile_text(chosen.base, facts, exact=chosen.exact, note=note, inline=True)
    return Choice(facts, _replace_text(chosen, final), model, others)


def _replace_text(c: Candidate, text: str) -> Candidate:
    return Candidate(c.base, text, c.ok, c.problem, c.decode_tokens_per_s, c.decode_tokens_per_s_at_context,
                     c.bottleneck, c.exact, c.distance)


def render_init_profile(choice: Choice) -> str:
    """The commented YAML profile: `extends:` the chosen library profile, the host's hardware."""
    return choice.chosen.text


# --------------------------------------------------------------------------- rendering


def hardware_text(facts: HostFacts) -> str:
    gpus = ", ".join(f"{n}x {g}" for g, n in facts.gpu_groups) or "no known GPU"
    return f"{gpus}, {format_size(facts.ram_bytes)} RAM"


def _size_text(num: int) -> str:
    return f"{num // GIB}GiB" if num % GIB == 0 else f"{num // 2**20}MiB"


def _host_label(facts: HostFacts) -> str:
    """The host name, made safe for a profile name and a YAML scalar ("" if unknown)."""
    return re.sub(r"[^a-z0-9_.-]+", "-", (facts.hostname or "").lower()).strip("-._")


def _name(facts: HostFacts, base: str) -> str:
    host = _host_label(facts)
    name = f"{host}-{base}" if host else f"init-{base}"
    return name[:63].rstrip("-._")


def _profile_text(e: Entry, facts: HostFacts, *, exact: bool,
                  note: tuple[Candidate, tuple[Candidate, ...], str | None] | None, inline: bool = False) -> str:
    """The profile for this host; ``note`` (the chosen candidate, the others, the model asked
    for) adds the header comments and the verify floor of the final text."""
    p = e.spec.profile
    hw = p.hardware
    head: list[str] = []
    verify: list[str] = []
    if note is not None:
        chosen, others, model = note
        head = _header(e, facts, exact, chosen, others, model)
        floor = _verify_floor(chosen, p.verify.min_tokens_per_s)
        if floor is not None:
            verify = ["verify:", f"  min_tokens_per_s: {floor:g}  # half of fit's {chosen.decode_tokens_per_s:.1f} "
                      f"tok/s on this host; library: {p.verify.min_tokens_per_s:g}"]
    gpu_lines = _gpu_yaml(facts, e, inline)
    cores, cores_note = (facts.cores, f"/proc/cpuinfo: {facts.cores} physical cores, {facts.cpus} "
                         "logical CPUs") if facts.cores else (
        facts.cpus, f"getconf: {facts.cpus} logical CPUs (physical cores unreadable)")
    numa, numa_note = (facts.numa_nodes, "/sys/devices/system/node") if facts.numa_nodes else (
        hw.cpu.numa_nodes, "unreadable: the library's value")
    if facts.memory_type:
        channels = hw.memory.channels or 2
        memory = f"{{type: {facts.memory_type}, channels: {channels}}}"
        memory_note = (f"dmidecode: {facts.memory_type}; channels: the library's {channels} "
                       "(not readable: set the board's real count)")
    else:
        memory = _memory_yaml(e)
        memory_note = "the library's (type and speed need root to read: dmidecode -t 17)"
    body = [
        "apiVersion: provision/v1",
        "kind: MachineProfile",
        f"extends: {e.name}",
        "metadata:",
        f"  name: {_name(facts, e.name)}",
        f"  description: {e.name} on {_host_label(facts) or 'this host'} "
        f"({'as written' if exact else 'adapted'} by provision init)",
        "hardware:",
        *gpu_lines,
        f"  ram: {_size_text(facts.ram_bytes)}  # {facts.ram_source}; library: {_size_text(hw.ram)}",
        f"  cpu: {{cores: {cores}, numa_nodes: {numa}}}  # {cores_note}; NUMA: {numa_note}"
        + (f"; {_printable(facts.cpu_model)}" if facts.cpu_model else ""),
        f"  memory: {memory}  # {memory_note}",
    ]
    return "\n".join(head + body + verify) + "\n"


def _header(e: Entry, facts: HostFacts, exact: bool, chosen: Candidate, others: tuple[Candidate, ...],
            model: str | None) -> list[str]:
    p = e.spec.profile
    head = [f"# Written by `provision init` for {_host_label(facts) or 'this host'}; review it, then",
            "#   provision validate THIS.yaml && provision plan THIS.yaml",
            f"# Based on the library profile {e.name} (`provision profiles show {e.name}`):"]
    wanted = f" serving {model}" if model else ""
    if exact:
        head.append(f"#   written for this hardware{wanted}: {e.gpu_text}, at least "
                    f"{format_size(p.hardware.ram)} RAM; the host's values below replace the library's.")
    else:
        head.append(f"#   no library profile{wanted} is written for this host's hardware; this is the closest "
                    f"({e.gpu_text}, {format_size(p.hardware.ram)} RAM), adapted below and checked with fit.")
    head.append(f"# Predicted by provision fit on this host: {chosen.decode_tokens_per_s:.1f} tok/s decode "
                f"(short prompt), {chosen.decode_tokens_per_s_at_context:.1f} tok/s at "
                f"{p.model.context} tokens cached; bottleneck: {chosen.bottleneck}.")
    floor = _verify_floor(chosen, p.verify.min_tokens_per_s)
    if floor is not None:
        head.append(f"#   The library's verify.min_tokens_per_s ({p.verify.min_tokens_per_s:g}) is too close to "
                    f"or above that here: lowered to {floor:g} (half the prediction).")
    elif p.verify.min_tokens_per_s:
        head.append(f"#   `provision verify` expects at least {p.verify.min_tokens_per_s:g} tok/s "
                    "(the library's verify.min_tokens_per_s).")
    for gpu in facts.unknown_gpus:
        head.append(f"# GPU {_printable(gpu_label(gpu))!r} (PCI device {gpu.device_id or '?'}) is not in the "
                    "catalog: described inline under hardware.gpus from what nvidia-smi reports. Fill in each")
        head.append(f"#   {PLACEHOLDER} value from the board's data sheet (validate refuses the profile until "
                    "then); the library profile was chosen and fitted without this GPU.")
    head += _driver_notes(facts, e)
    if any(PLACEHOLDER_SHA.match(f.sha256 or "") for f in (p.model.source.files or [])):
        head.append("# The library's model file checksums are placeholders: put the real sha256 "
                    "under model.source before apply.")
    if others:
        head.append("# Other library profiles that validate on this host (fit's decode prediction):")
        head += [f"#   {c.base.name}: {c.base.spec.model.name} {c.base.spec.profile.model.quant}, "
                 f"{c.decode_tokens_per_s:.1f} tok/s{'' if c.exact else ' (adapted)'}" for c in others[:6]]
    return head


def _verify_floor(c: Candidate, library_min: float | None) -> float | None:
    """A lower verify.min_tokens_per_s when the library's is not clearly below the prediction here."""
    if library_min is None or c.decode_tokens_per_s >= 1.25 * library_min:
        return None
    return max(round(c.decode_tokens_per_s / 2, 1), 0.1)


def _driver_notes(facts: HostFacts, e: Entry) -> list[str]:
    p = e.spec.profile
    if not facts.nvidia_driver or not e.spec.gpus:
        return []
    notes = [f"# Host's NVIDIA driver now: {facts.nvidia_driver}, {facts.nvidia_module or 'unknown'} kernel module."]
    if facts.nvidia_module and facts.nvidia_module != p.driver.kernel_module:
        notes.append(f"#   This profile configures the {p.driver.kernel_module} module "
                     f"(driver.kernel_module): switching from {facts.nvidia_module} needs a reboot.")
    for group in e.spec.gpus:
        if group.spec.min_driver is None:
            continue
        try:
            old = Version(facts.nvidia_driver) < Version(group.spec.min_driver)
        except InvalidVersion:
            continue
        if old and group.spec.min_driver_floor:
            notes.append(f"#   {facts.nvidia_driver} is older than {group.spec.min_driver}, the oldest driver known "
                         f"to list {group.spec.name} (its first is not recorded): it may run; upgrading is safer.")
        elif old:
            notes.append(f"#   {facts.nvidia_driver} is older than {group.spec.min_driver}, the first driver for "
                         f"{group.spec.name}: upgrade it before apply.")
    return notes


def gpu_label(gpu: Gpu) -> str:
    """A GPU's name as init prints it (nvidia-smi may not have named it)."""
    return gpu.name or "unknown GPU"


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:80]


def _gpu_yaml(facts: HostFacts, e: Entry, inline: bool) -> list[str]:
    library = e.gpu_text
    unknown = _inline_gpus(facts) if inline else []
    if not facts.gpu_groups and not unknown:
        why = ("nvidia-smi not found" if facts.smi == "missing" else
               "no GPU in the catalog" if facts.gpus else f"nvidia-smi: {facts.smi}, no GPU")
        return [f"  gpus: []  # {why}: CPU only; library: {library}"]
    lines = ["  gpus:", *unknown]
    for gid, count in facts.gpu_groups:
        found = [g for g in facts.gpus if g.catalog_id == gid]
        ids = ", ".join(sorted({g.device_id or "?" for g in found}))
        name = _printable(gpu_label(found[0]))
        lines.append(f"    - {{model: {gid}, count: {count}}}  # nvidia-smi: {count}x {name} (pci.device_id {ids})")
    lines[0] += f"  # library: {library}"
    return lines


def _inline_gpus(facts: HostFacts) -> list[str]:
    """hardware.gpus[].spec of the GPUs the catalog lacks: nvidia-smi's numbers, and a
    placeholder validate refuses for what nvidia-smi cannot report."""
    groups: dict[Gpu, int] = {}
    for gpu in facts.unknown_gpus:
        board = dataclasses.replace(gpu, index=None, bus_id=None)  # one group per kind of board
        groups[board] = groups.get(board, 0) + 1
    lines: list[str] = []
    fill = f'"{PLACEHOLDER}: '
    for gpu, count in groups.items():
        mib = int(gpu.memory_total_mib) if gpu.memory_total_mib else None
        memory = f"{mib}MiB  # nvidia-smi memory.total" if mib else fill + 'the memory size, e.g. 24GiB"'
        cap = f'"{gpu.compute_cap}"  # nvidia-smi compute_cap' if gpu.compute_cap else \
            fill + 'the compute capability, e.g. 8.9 (developer.nvidia.com/cuda-gpus)"'
        gen = gpu.pcie_gen_max if gpu.pcie_gen_max else fill + 'PCIe generation"'
        lanes = gpu.pcie_width_max if gpu.pcie_width_max else fill + 'PCIe lanes"'
        name = _printable(gpu_label(gpu))
        lines += [f"    - spec:  # nvidia-smi: {count}x {name} (pci.device_id {gpu.device_id or '?'}), "
                  "not in the catalog",
                  f"        name: {json.dumps(name)}",
                  f"        memory: {memory}",
                  f"        bandwidth_gb_s: {fill}the memory bandwidth in GB/s from the data sheet\"",
                  f"        bf16_tflops: {fill}the dense (not sparse) BF16 tensor TFLOPS from the data sheet\"",
                  f"        compute_capability: {cap}",
                  f"        pcie: {{gen: {gen}, lanes: {lanes}}}  # nvidia-smi pcie.link.gen.max, width.max",
                  *([f'        pci_device_id: "{gpu.device_id}"'] if gpu.device_id else []),
                  f"      count: {count}"]
    return lines


def _memory_yaml(e: Entry) -> str:
    m = e.spec.profile.hardware.memory
    parts: list[str] = []
    if m.type is not None:
        parts.append(f"type: {m.type}")
    if m.channels is not None:
        parts.append(f"channels: {m.channels}")
    if m.bandwidth_gb_s is not None:
        parts.append(f"bandwidth_gb_s: {m.bandwidth_gb_s:g}")
    return "{" + ", ".join(parts) + "}"
