"""`provision init`: read a host's facts, pick the best-fitting library profile, print a
commented profile that `extends:` it with the host's hardware.

    gather(GPU_GATHER + INIT_GATHER)  --host_facts-->  HostFacts
    HostFacts + library  --choose_profile-->  Choice  --render_init_profile-->  YAML text

Choosing: every library profile (serving ``--model`` if given) is re-targeted at
the host's hardware (GPUs, RAM, cores, NUMA nodes, memory type where readable)
and must then pass what `provision validate` checks (schema, catalog, fit,
render). A profile written for exactly this hardware (same GPU catalog ids and
counts, RAM at least the profile's) wins over one adapted to it; among equals
the biggest model that still decodes at a usable speed, then the fastest.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from provisioner.catalog import load_catalog
from provisioner.converge.run import gather
from provisioner.errors import ProvisionError, UsageError
from provisioner.facts.gather import Gathered, parse_gather
from provisioner.fit.library import Entry, entries
from provisioner.fit.predict import predict
from provisioner.profile.models import PLACEHOLDER
from provisioner.render.pipeline import build
from provisioner.units import format_size
from provisioner.verify.gpu import GPU_GATHER, parse_gpu

GIB = 2**30
KIB = 1024
# below this predicted decode speed a bigger model is not preferred over a faster one
MIN_USABLE_TOKENS_PER_S = 10.0
PLACEHOLDER_SHA = re.compile(r"ffff0{8}")

INIT_GATHER = r"""# --- provision init: host name, CPU cores, NUMA nodes, DIMMs (lines prefixed "@init ") ---
printf '@init hostname %s\n' "$(uname -n 2>/dev/null)"
init_cores=$(awk -F: '/^physical id/ {p=$2} /^core id/ {print p ":" $2}' /proc/cpuinfo 2>/dev/null | sort -u | wc -l)
printf '@init cores %s\n' "$init_cores"
init_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo 2>/dev/null | head -n 1)
printf '@init cpu_model %s\n' "$init_model"
init_numa=0
for init_node in /sys/devices/system/node/node[0-9]*; do
    if [ -d "$init_node" ]; then init_numa=$((init_numa + 1)); fi
done
printf '@init numa_nodes %s\n' "$init_numa"
if command -v dmidecode >/dev/null 2>&1 && init_dmi=$(dmidecode -t 17 2>/dev/null) && [ -n "$init_dmi" ]; then
    printf '%s\n' "$init_dmi" | grep -E '^[[:space:]]*(Size|Type|Speed|Configured Memory Speed):' \
        | sed 's/^[[:space:]]*/@init dimm /'
else
    echo '@init dimm unreadable'
fi
# what a GPU the catalog lacks is described with (hardware.gpus[].spec); compute_cap is a
# query field since driver 510, an older one prints nothing here
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=pci.bus_id,memory.total,compute_cap --format=csv,noheader,nounits 2>/dev/null \
        | sed 's/^/@init gpu /'
fi
"""


@dataclass(frozen=True)
class HostGpu:
    name: str
    device_id: str | None  # "0x2bb1", as the catalog stores it
    catalog_id: str | None  # None: not in the catalog
    # what nvidia-smi says of the board, for a GPU the catalog lacks (None: not reported)
    memory_mib: int | None = None
    compute_cap: str | None = None
    pcie_gen: int | None = None
    pcie_lanes: int | None = None


@dataclass(frozen=True)
class HostFacts:
    """What init needs to know about a host, from one gather round trip."""

    mem_total_kb: int
    cpus: int  # logical processors
    gpus: tuple[HostGpu, ...] = ()
    cores: int | None = None  # physical cores, None when unreadable
    numa_nodes: int | None = None
    cpu_model: str | None = None
    hostname: str | None = None
    memory_type: str | None = None  # "ddr5-5600" from dmidecode (needs root)
    dimm_bytes: int | None = None  # installed RAM from dmidecode
    dimms: int | None = None
    nvidia_driver: str | None = None
    nvidia_module: str | None = None
    smi: str = "not-gathered"  # nvidia-smi: ok, missing, failed, not-gathered

    @classmethod
    def from_gathered(cls, gathered: Gathered) -> HostFacts:
        """From a gather whose script included GPU_GATHER and INIT_GATHER (see gather_host)."""
        return host_facts(gathered.output)

    @property
    def mem_total_bytes(self) -> int:
        return self.mem_total_kb * KIB

    @property
    def ram_bytes(self) -> int:
        """Installed RAM: the DIMMs' sizes if readable, else MemTotal rounded up to the
        installed size (the kernel keeps a few GiB for itself), to whole GiB otherwise."""
        if self.dimm_bytes:
            return self.dimm_bytes
        total = self.mem_total_bytes
        for step in (8 * GIB, 4 * GIB):
            rounded = -(-total // step) * step
            # the kernel's share: ~2-3.5% of RAM; a bigger gap is not rounding, never claim it
            if rounded - total <= 0.035 * rounded + GIB // 4:
                return rounded
        return -(-total // GIB) * GIB

    @property
    def ram_source(self) -> str:
        if self.dimm_bytes:
            return f"dmidecode: {self.dimms} DIMMs, {format_size(self.dimm_bytes)}"
        return (f"MemTotal {self.mem_total_kb} kB ({format_size(self.mem_total_bytes)}) "
                "rounded up to the installed size")

    @property
    def gpu_groups(self) -> tuple[tuple[str, int], ...]:
        """(catalog id, count) of the known GPUs, in order of first appearance."""
        counts: dict[str, int] = {}
        for gpu in self.gpus:
            if gpu.catalog_id is not None:
                counts[gpu.catalog_id] = counts.get(gpu.catalog_id, 0) + 1
        return tuple(counts.items())

    @property
    def unknown_gpus(self) -> tuple[HostGpu, ...]:
        return tuple(g for g in self.gpus if g.catalog_id is None)


def catalog_gpu_id(device_id: str | None, name: str | None) -> str | None:
    """The catalog id of a GPU by PCI device id, else by its exact nvidia-smi name."""
    gpus = load_catalog().gpus
    if device_id:
        by_device = [key for key, spec in gpus.items() if device_id.lower() in (d.lower() for d in spec.pci_device_ids)]
        # boards that share a device id (Quadro RTX 6000/8000, A2/A16) are told apart by name
        named = [key for key in by_device if name and gpus[key].name.lower() == name.strip().lower()]
        if named or by_device:
            return (named or by_device)[0]
    if name:
        for key, spec in gpus.items():
            if spec.name.lower() == name.strip().lower():
                return key
    return None


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _dimm_size(text: str) -> int | None:
    """dmidecode prints "16384 MB"/"16 GB" (before 3.6) or "32 GiB" (3.6 and later)."""
    m = re.fullmatch(r"(\d+)\s*(MB|GB|TB|MiB|GiB|TiB)", text.strip())
    if not m:
        return None
    return int(m.group(1)) * {"M": 2**20, "G": 2**30, "T": 2**40}[m.group(2)[0]]


def _dimms(lines: list[str]) -> tuple[str | None, int | None, int | None]:
    """(memory type like ddr5-5600, installed bytes, populated DIMMs) from dmidecode -t 17.

    The speed is the slowest DIMM's "Configured Memory Speed" (what the controller runs:
    below the rating with two DIMMs per channel, above it with XMP/EXPO), else its
    rated "Speed" where the configured one is unknown."""
    sizes: list[int] = []
    types: set[str] = set()
    speeds: list[int] = []
    rated: int | None = None
    populated = False

    def close() -> None:  # the previous DIMM's speed, once its block is read
        nonlocal rated
        if rated is not None:
            speeds.append(rated)
        rated = None

    for line in lines:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        mts = re.match(r"(\d+)\s*MT/s", value)
        if key == "Size":
            close()
            size = _dimm_size(value)
            populated = size is not None
            if size is not None:
                sizes.append(size)
        elif populated and key == "Type" and re.fullmatch(r"(LP)?DDR[45]X?", value):
            types.add(value.lower())
        elif populated and key == "Speed" and mts:
            rated = int(mts.group(1))
        elif populated and key == "Configured Memory Speed" and mts:
            speeds.append(int(mts.group(1)))
            rated = None
    close()
    memory_type = f"{types.pop()}-{min(speeds)}" if len(types) == 1 and speeds else None
    return memory_type, (sum(sizes) or None), (len(sizes) or None)


def _boards(output: str) -> dict[str, tuple[int | None, str | None]]:
    """Bus id -> (memory.total MiB, compute capability) from the ``@init gpu`` lines."""
    out: dict[str, tuple[int | None, str | None]] = {}
    for line in output.splitlines():
        if line.startswith("@init gpu "):
            parts = [p.strip() for p in line.removeprefix("@init gpu ").split(",")]
            if len(parts) == 3:
                cap = parts[2] if re.fullmatch(r"[0-9]+\.[0-9]+", parts[2]) else None
                out[parts[0].lower()] = (_int(parts[1]), cap)
    return out


def host_facts(output: str) -> HostFacts:
    """Pure: the gather output (base facts + GPU_GATHER + INIT_GATHER lines) -> HostFacts."""
    values = parse_gather(output).facts.values
    init: dict[str, str] = {}
    dimm_lines: list[str] = []
    for line in output.splitlines():
        if line.startswith("@init dimm "):
            dimm_lines.append(line.removeprefix("@init dimm "))
        elif line.startswith("@init "):
            key, _, value = line.removeprefix("@init ").partition(" ")
            init[key] = value.strip()
    report = parse_gpu(output)
    boards = _boards(output)
    gpus = tuple(HostGpu(g.name or "unknown GPU", g.device_id, catalog_gpu_id(g.device_id, g.name),
                         *boards.get(g.bus_id.lower(), (None, None)), g.pcie_gen_max, g.pcie_width_max)
                 for g in report.gpus)
    memory_type, dimm_bytes, dimms = _dimms(dimm_lines)
    mem_total_kb = _int(values.get("mem_total_kb"))
    if not mem_total_kb:
        raise ProvisionError("the host's facts have no MemTotal", hint="is /proc/meminfo readable on the host?")
    driver = values.get("nvidia_driver")
    return HostFacts(
        mem_total_kb=mem_total_kb, cpus=_int(values.get("cpus")) or 1, gpus=gpus,
        cores=_int(init.get("cores")) or None, numa_nodes=_int(init.get("numa_nodes")) or None,
        cpu_model=init.get("cpu_model") or None, hostname=init.get("hostname") or None,
        memory_type=memory_type, dimm_bytes=dimm_bytes, dimms=dimms,
        nvidia_driver=driver if driver and driver != "none" else None,
        nvidia_module=values.get("nvidia_module"), smi=report.smi)


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
        built = build(path)
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
        build(path)  # what is printed validates; a failure here is a bug, raised as an error
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
        head.append(f"# GPU {_printable(gpu.name)!r} (PCI device {gpu.device_id or '?'}) is not in the catalog: "
                    "described inline under hardware.gpus from what nvidia-smi reports. Fill in each")
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
        if old:
            notes.append(f"#   {facts.nvidia_driver} is older than {group.spec.min_driver}, the first driver for "
                         f"{group.spec.name}: upgrade it before apply.")
    return notes


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
        lines.append(f"    - {{model: {gid}, count: {count}}}  # nvidia-smi: {count}x {_printable(found[0].name)} "
                     f"(pci.device_id {ids})")
    lines[0] += f"  # library: {library}"
    return lines


def _inline_gpus(facts: HostFacts) -> list[str]:
    """hardware.gpus[].spec of the GPUs the catalog lacks: nvidia-smi's numbers, and a
    placeholder validate refuses for what nvidia-smi cannot report."""
    groups: dict[HostGpu, int] = {}
    for gpu in facts.unknown_gpus:
        groups[gpu] = groups.get(gpu, 0) + 1
    lines: list[str] = []
    for gpu, count in groups.items():
        fill = f'"{PLACEHOLDER}: '
        memory = f"{gpu.memory_mib}MiB  # nvidia-smi memory.total" if gpu.memory_mib else \
            fill + 'the memory size, e.g. 24GiB"'
        cap = f'"{gpu.compute_cap}"  # nvidia-smi compute_cap' if gpu.compute_cap else \
            fill + 'the compute capability, e.g. 8.9 (developer.nvidia.com/cuda-gpus)"'
        gen = gpu.pcie_gen if gpu.pcie_gen else fill + 'PCIe generation"'
        lanes = gpu.pcie_lanes if gpu.pcie_lanes else fill + 'PCIe lanes"'
        lines += [f"    - spec:  # nvidia-smi: {count}x {_printable(gpu.name)} (pci.device_id {gpu.device_id or '?'}),"
                  " not in the catalog",
                  f"        name: {json.dumps(_printable(gpu.name))}",
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


# --------------------------------------------------------------------------- command


def gather_host(transport: Any) -> HostFacts:
    """One round trip: the base facts, the GPU probe and init's own probe."""
    return HostFacts.from_gathered(gather(transport, [], extra=GPU_GATHER + INIT_GATHER))
