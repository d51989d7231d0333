"""Profile + catalog -> Spec: every rule that needs the catalog, all problems at once.

A ``Spec`` is what the rest of the tool works from: the profile with its
catalog entries looked up, so nobody downstream looks anything up by name.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from provisioner.catalog import (
    Catalog,
    EngineSpec,
    EngineVersion,
    GpuSpec,
    ModelSpec,
    QuantSpec,
    load_catalog,
)
from provisioner.errors import Problem, ProfileError
from provisioner.facts.gguf_layout import TensorLayout
from provisioner.facts.host_load import HostLoad
from provisioner.profile.hardware_section import GpuEntry
from provisioner.profile.inline_gpu import gpu_spec, inline_id
from provisioner.profile.loader import LoadedProfile
from provisioner.profile.model_source import lookup_model
from provisioner.profile.models import BUILTIN_HANDLERS, Profile
from provisioner.profile.quant_paths import quant_path_rules

# Sources each engine can serve from (docs/profile.md, model.source).
_SOURCES_FOR_ENGINE = {
    "llama.cpp": {"files", "hf"},
    "vllm": {"hf", "directory"},
    "ollama": {"ollama"},
}
_UNQUANTISED_KV = {"f32", "f16", "bf16", "auto"}


@dataclass(frozen=True)
class GpuGroup:
    spec: GpuSpec
    id: str
    count: int


@dataclass(frozen=True)
class Spec:
    loaded: LoadedProfile
    gpus: tuple[GpuGroup, ...]
    model: ModelSpec
    model_id: str
    quant: QuantSpec
    engine: EngineSpec
    engine_version: EngineVersion
    # fit --host/--here: memory other processes hold, hugepages, GPU peer access
    host: HostLoad | None = None
    # the GGUF header of the real model file, when it is on this machine
    layout: TensorLayout | None = None
    # a cluster profile: node name -> that node's GPUs (``gpus`` holds them all, in node order)
    node_gpus: tuple[tuple[str, tuple[GpuGroup, ...]], ...] = ()
    # set on the view of one node (cluster.node_spec): whose files are rendered
    node: str = ""
    # where quant.bytes was read when not from the catalog (profile/weights_size.py)
    weights_size_from: str = ""

    @property
    def profile(self) -> Profile:
        return self.loaded.profile

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)

    @property
    def min_driver(self) -> str:
        """The newest of the GPUs' known minimum drivers ("" without one): older is refused."""
        return _newest(g.spec.min_driver for g in self.gpus if not g.spec.min_driver_floor)

    @property
    def driver_floor(self) -> str:
        """The newest driver floor (catalog min_driver_floor) above ``min_driver``, else "":
        a driver older than it may run the GPUs; it is warned about, not refused."""
        floor = _newest(g.spec.min_driver for g in self.gpus if g.spec.min_driver_floor)
        return floor if floor and (not self.min_driver or _older(self.min_driver, floor)) else ""

    @property
    def vram_bytes(self) -> int:
        return sum(g.spec.vram * g.count for g in self.gpus)


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(close)}?"
    return f"known: {', '.join(sorted(known))}"


def resolve(loaded: LoadedProfile, catalog: Catalog | None = None, *, what_if_quant: bool = False) -> Spec:
    """Look up the catalog entries and check the cross-field rules.

    ``what_if_quant``: the quant was set for a what-if (``fit --set/--compare``), which
    prices the quant by its catalog sizes; the profile's files still name the quant it
    was written for, so the rule that files match the quant does not apply."""
    catalog = catalog or load_catalog()
    p = loaded.profile
    problems: list[Problem] = []

    gpus: list[GpuGroup] = []
    for i, entry in enumerate(p.hardware.gpus):
        problems += _gpu_group(loaded, catalog, entry, ("hardware", "gpus", i), gpus)

    node_gpus: list[tuple[str, tuple[GpuGroup, ...]]] = []
    if p.cluster is not None:
        problems += _cluster_rules(loaded, catalog, gpus, node_gpus)

    model, quant, layout, found = lookup_model(loaded, catalog)
    problems += found
    if model is not None:
        problems += _model_rules(loaded, model)
        if not what_if_quant:  # a what-if quant is priced, never served: no file to name
            problems += quant_path_rules(loaded, model) + _llama_model_file(loaded)

    engine = catalog.engines.get(p.runtime.engine)
    version: EngineVersion | None = None
    if engine is None:  # pragma: no cover - the schema's Literal and the catalog agree
        problems.append(loaded.problem(("runtime", "engine"), "engine missing from catalog"))
    else:
        version = engine.versions.get(p.runtime.version)
        if version is None:
            problems.append(loaded.problem(
                ("runtime", "version"),
                f"{engine.name} version {p.runtime.version!r} is not in the catalog",
                f"known versions: {', '.join(engine.versions)} (flags are checked per version)"))

    problems += _os_rules(loaded)
    problems += _gpu_rules(loaded, gpus)
    if engine is not None:
        problems += _engine_rules(loaded, engine, version, quant, gpus)

    if problems:
        raise ProfileError(problems)
    assert model is not None and quant is not None and engine is not None and version is not None
    return Spec(loaded=loaded, gpus=tuple(gpus), model=model, model_id=p.model.id, quant=quant,
                engine=engine, engine_version=version, node_gpus=tuple(node_gpus), layout=layout)


def _gpu_group(loaded: LoadedProfile, catalog: Catalog, entry: GpuEntry, where: tuple[str | int, ...],
               into: list[GpuGroup]) -> list[Problem]:
    """A catalog GPU by id, or one the profile describes (checked like a catalog entry)."""
    if entry.spec is not None:
        try:
            spec = gpu_spec(entry.spec, f"profile {loaded.path.name}")
        except ValueError as exc:
            message, _, hint = str(exc).partition(" | hint: ")
            return [loaded.problem((*where, "spec"), f"GPU {entry.spec.name!r}: {message}", hint or None)]
        into.append(GpuGroup(spec, inline_id(entry.spec), entry.count))
        return []
    assert entry.model is not None  # the schema wants model or spec
    gpu = catalog.gpus.get(entry.model)
    if gpu is None:
        return [loaded.problem((*where, "model"), f"unknown GPU {entry.model!r}",
                               _suggest(entry.model, list(catalog.gpus))
                               + "; or describe it inline: spec: {name, memory, bandwidth_gb_s, ...}")]
    into.append(GpuGroup(gpu, entry.model, entry.count))
    return []


_BACKEND_ENGINE = {"ray": "vllm", "rpc": "llama.cpp"}


def _cluster_rules(loaded: LoadedProfile, catalog: Catalog, gpus: list[GpuGroup],
                   node_gpus: list[tuple[str, tuple[GpuGroup, ...]]]) -> list[Problem]:
    """A cluster's GPUs are listed per node; fills ``gpus`` (all of them) and ``node_gpus``."""
    p = loaded.profile
    cluster = p.cluster
    assert cluster is not None
    out: list[Problem] = []
    if p.hardware.gpus:
        out.append(loaded.problem(("hardware", "gpus"), "a cluster profile lists its GPUs per node",
                                  "move them to cluster.nodes[].gpus and leave hardware.gpus empty"))
    wanted = _BACKEND_ENGINE[cluster.backend]
    if p.runtime.engine != wanted:
        out.append(loaded.problem(("cluster", "backend"),
                                  f"backend {cluster.backend} serves with {wanted}, not {p.runtime.engine}",
                                  f"set runtime.engine: {wanted}, or backend: "
                                  f"{'rpc' if cluster.backend == 'ray' else 'ray'}"))
    for i, node in enumerate(cluster.nodes):
        groups: list[GpuGroup] = []
        for j, entry in enumerate(node.gpus):
            out += _gpu_group(loaded, catalog, entry, ("cluster", "nodes", i, "gpus", j), groups)
        gpus.extend(groups)
        node_gpus.append((node.name, tuple(groups)))
    counts = {n.gpu_count for n in cluster.nodes}
    if cluster.backend == "ray" and len(counts) > 1:
        out.append(loaded.problem(("cluster", "nodes"),
                                  "vLLM runs one tensor-parallel group per node: every node needs the same "
                                  f"number of GPUs (got {', '.join(str(n.gpu_count) for n in cluster.nodes)})",
                                  "give each node the same GPU count, or use backend: rpc (llama.cpp splits "
                                  "layers by memory)"))
    # Ray's sockets live under --temp-dir (/var/lib/<service>/ray, render.py) in
    # session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (~64 characters), and an
    # AF_UNIX path holds at most 107 bytes: Ray refuses to start beyond that.
    socket_path = len(f"/var/lib/{p.service.name}/ray") + 64
    if cluster.backend == "ray" and socket_path > 107:
        out.append(loaded.problem(("service", "name"),
                                  f"service name {p.service.name!r} makes Ray's socket paths "
                                  f"{socket_path} bytes long; a UNIX socket path holds at most 107",
                                  f"use a service name of at most {107 - 64 - len('/var/lib//ray')} characters"))
    if p.runtime.engine == "vllm" and p.runtime.offload != "auto":
        out.append(loaded.problem(("runtime", "offload"), "a vLLM cluster keeps every weight on a GPU",
                                  "remove runtime.offload; add a node if it does not fit"))
    return out


def _model_rules(loaded: LoadedProfile, model: ModelSpec) -> list[Problem]:
    p = loaded.profile
    out: list[Problem] = []
    if p.model.context > model.max_context:
        out.append(loaded.problem(
            ("model", "context"),
            f"context {p.model.context} exceeds {model.name}'s maximum of {model.max_context}",
            f"use at most {model.max_context}"
            + (" (with YaRN)" if model.max_context > model.native_context else "")))
    if p.model.mode not in model.modes:
        out.append(loaded.problem(("model", "mode"),
                                  f"{model.name} has no {p.model.mode} mode",
                                  f"use {' or '.join(model.modes)}"))
    return out


def _os_rules(loaded: LoadedProfile) -> list[Problem]:
    p = loaded.profile
    out: list[Problem] = []
    if p.os.hugepages.total_bytes > p.hardware.ram:
        out.append(loaded.problem(
            ("os", "hugepages", "count"),
            f"{p.os.hugepages.count} hugepages of {p.os.hugepages.size} "
            f"({p.os.hugepages.total_bytes} bytes) exceed the machine's RAM ({p.hardware.ram})",
            "hugepages are reserved at boot and cannot be used for anything else: lower count"))
    if p.os.hugepages.count and "vm.nr_hugepages" in p.os.sysctl:
        out.append(loaded.problem(("os", "sysctl", "vm.nr_hugepages"),
                                  "vm.nr_hugepages is set both here and by os.hugepages",
                                  "set hugepages in one place: os.hugepages"))
    for i, extra in enumerate(p.files):
        source = loaded.base_dir / extra.template
        if not source.is_file():
            out.append(loaded.problem(("files", i, "template"),
                                      f"template not found: {extra.template}",
                                      f"paths are relative to {loaded.base_dir}"))
        elif not source.resolve().is_relative_to(loaded.base_dir.resolve()):
            # a link to a file elsewhere (a 0600 key) would be rendered into a world-readable file
            out.append(loaded.problem(("files", i, "template"),
                                      f"template {extra.template} leads outside the profile's folder",
                                      "copy the template into the profile's folder instead of linking it"))
        for j, name in enumerate(extra.notify):
            if name not in p.handlers and name not in BUILTIN_HANDLERS:
                out.append(loaded.problem(
                    ("files", i, "notify", j), f"notify names handler {name!r}, which is not defined",
                    f"define it under handlers, or use a built-in one: {', '.join(sorted(BUILTIN_HANDLERS))}"))
    if p.runtime.expose and p.secrets.api_key is None:
        out.append(loaded.problem(("runtime", "expose"),
                                  "the server is exposed beyond this machine without an API key",
                                  "set secrets.api_key: {from_env: LLM_API_KEY}"))
    return out


def _gpu_rules(loaded: LoadedProfile, gpus: list[GpuGroup]) -> list[Problem]:
    p = loaded.profile
    out: list[Problem] = []
    for group in gpus:
        gpu = group.spec
        if not gpu.kernel_modules:
            out.append(loaded.problem(
                ("hardware", "gpus"),
                f"{gpu.name} has no discrete-GPU kernel module: its driver comes with its Jetson Linux release",
                "provision does not install that driver; keep the board's own"))
        elif p.driver.kernel_module not in gpu.kernel_modules:
            out.append(loaded.problem(
                ("driver", "kernel_module"),
                f"{gpu.name} cannot run the {p.driver.kernel_module} kernel module",
                f"use kernel_module: {' or '.join(gpu.kernel_modules)}"))
        if (p.driver.version is not None and gpu.min_driver is not None and not gpu.min_driver_floor
                and _older(p.driver.version, gpu.min_driver)):
            out.append(loaded.problem(
                ("driver", "version"),
                f"driver {p.driver.version} is older than {gpu.min_driver}, "
                f"the first that supports {gpu.name}",
                f"use driver {gpu.min_driver} or newer"))
        limit = p.driver.power_limit_w
        if (limit is not None and gpu.power_min_w is not None and gpu.power_max_w is not None
                and not gpu.power_min_w <= limit <= gpu.power_max_w):
            out.append(loaded.problem(
                ("driver", "power_limit_w"),
                f"power limit {limit} W is outside {gpu.name}'s range "
                f"{gpu.power_min_w}-{gpu.power_max_w} W",
                f"the default is {gpu.power_default_w} W"))
    return out


def _llama_model_file(loaded: LoadedProfile) -> list[Problem]:
    """llama-server loads one GGUF file: a run script given hf.dest, a folder, fails at start.
    hf.file names it, or a fresh PROFILE.lock does (lock.apply_lock fills hf.file with its first
    shard before this runs). Left open only where plan and apply demand that lock (install.model
    from a branch or tag), and where no run script is rendered (builtin_files: false)."""
    p = loaded.profile
    hf = p.model.source.hf
    if p.runtime.engine != "llama.cpp" or hf is None or hf.file is not None or not p.builtin_files:
        return []
    pinned = len(hf.revision) == 40 and all(c in "0123456789abcdef" for c in hf.revision)
    if p.install.model and not pinned:
        return []
    return [loaded.problem(
        ("model", "source", "hf"),
        f"llama.cpp loads one GGUF file and nothing names it: its --model would be the folder {hf.dest}",
        "name the first shard in hf.file (relative to dest, e.g. Q8_0/Qwen3-235B-A22B-Q8_0-00001-of-00006.gguf; "
        f"llama.cpp finds the others), or run `provision lock {loaded.path}`, which pins the files and "
        "gives llama.cpp the first shard")]


def _engine_rules(loaded: LoadedProfile, engine: EngineSpec, version: EngineVersion | None,
                  quant: QuantSpec | None, gpus: list[GpuGroup]) -> list[Problem]:
    p = loaded.profile
    out: list[Problem] = []
    allowed = _SOURCES_FOR_ENGINE[p.runtime.engine]
    if p.model.source.kind not in allowed:
        out.append(loaded.problem(
            ("model", "source", p.model.source.kind),
            f"{engine.name} cannot serve a model from {p.model.source.kind}",
            f"use one of: {', '.join(sorted(allowed))}"))
    if p.runtime.engine == "ollama" and p.secrets.api_key is not None:
        out.append(loaded.problem(
            ("secrets", "api_key"), "Ollama has no API key: the key would be silently ignored",
            "keep runtime.bind on loopback and put an authenticating proxy in front"))
    if quant is not None and quant.format != engine.weights_format:
        out.append(loaded.problem(
            ("model", "quant"),
            f"{p.model.quant} is a {quant.format} quantisation; {engine.name} serves "
            f"{engine.weights_format}", "pick a quant of that format or another engine"))
    if p.runtime.engine == "vllm" and not gpus:
        out.append(loaded.problem(("runtime", "engine"), "vLLM needs a GPU in this profile",
                                  "use llama.cpp or Ollama for CPU-only machines"))
    if version is None:
        return out
    for field_name, kv in (("kv_cache", p.model.kv_cache_k), ("kv_cache_v", p.model.kv_cache_value)):
        if kv not in version.kv_cache_types:
            out.append(loaded.problem(
                ("model", field_name),
                f"{engine.name} {p.runtime.version} has no KV cache type {kv!r}",
                f"use one of: {', '.join(version.kv_cache_types)}"))
            break
    if (version.quantized_v_needs_flash_attention and p.runtime.flash_attention == "off"
            and p.model.kv_cache_value not in _UNQUANTISED_KV):
        out.append(loaded.problem(
            ("runtime", "flash_attention"),
            f"a quantised V cache ({p.model.kv_cache_value}) needs flash attention",
            "set runtime.flash_attention: on, or kv_cache f16"))
    method = quant.method if quant is not None else None
    if method is not None and version.quant_methods is not None and method not in version.quant_methods:
        out.append(loaded.problem(
            ("model", "quant"), f"{engine.name} {p.runtime.version} does not load {method} checkpoints "
            f"(config.json quant_method)", f"it loads: {', '.join(version.quant_methods)}"))
    for group in gpus:
        if group.spec.architecture not in version.architectures:
            out.append(loaded.problem(
                ("runtime", "version"),
                f"{engine.name} {p.runtime.version} does not support {group.spec.name} "
                f"({group.spec.architecture})", _architecture_hint(engine, group.spec.architecture)))
    return out


def _architecture_hint(engine: EngineSpec, architecture: str) -> str:
    """Where the refusal comes from, and the versions of this engine that do run the board."""
    runs = [v for v, spec in engine.versions.items() if architecture in spec.architectures]
    where = "catalog/engines.yaml cites the source of each version's architectures"
    if runs:
        return f"{engine.name} {', '.join(runs)} runs {architecture} boards ({where})"
    return f"no {engine.name} version in the catalog runs {architecture} boards: use another engine ({where})"


def _older(version: str, minimum: str) -> bool:
    try:
        return Version(version) < Version(minimum)
    except InvalidVersion:  # pragma: no cover - both are pattern-checked
        return False


def _newest(versions: Iterable[str | None]) -> str:
    return max((v for v in versions if v is not None), key=Version, default="")


def driver_floor_note(driver: str, floor: str, names: str) -> str:
    """What is said of a driver older than a floor (catalog min_driver_floor): a warning."""
    return (f"driver {driver} is older than {floor}, the oldest driver known to list {names}; their "
            f"first driver is not recorded, so it may run them: {floor} or newer is the safe choice")


def driver_floor_warnings(spec: Spec) -> list[str]:
    """The profile's driver.version against the GPUs' floors (refused minimums are rules)."""
    version, floor = spec.profile.driver.version, spec.driver_floor
    if version is None or not floor or not _older(version, floor):
        return []
    names = ", ".join(g.spec.name for g in spec.gpus if g.spec.min_driver_floor and g.spec.min_driver
                      and _older(version, g.spec.min_driver))
    return [driver_floor_note(version, floor, names)]
