"""The engine's command line and environment, spelled per engine version (pure).

Every setting that matters is stated explicitly, so a changed default in a new
engine release cannot change what runs. Flags are looked up by logical name in
the catalog entry of the pinned version: a logical setting the version does
not know is an error here, never a flag the engine would reject at start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from provisioner.errors import RenderError
from provisioner.fit.placement import VLLM_DEFAULT_UTILIZATION, Placement, llama_ubatch, params
from provisioner.fit.rope import yarn_factor
from provisioner.install.ollama_model import models_dir
from provisioner.install.select import installed_binary
from provisioner.profile.cluster import address_env, gpus_per_node, head_address, rpc_servers
from provisioner.profile.resolve import Spec
from provisioner.units import GIB


@dataclass(frozen=True)
class Arg:
    """One flag with its value(s) and why it is there (a comment in the script)."""

    words: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class EngineCommand:
    binary: str
    args: tuple[Arg, ...]
    env: dict[str, str]  # non-secret settings for the environment file
    api_key_env: str | None  # the variable the engine reads its key from


def _binary(spec: Spec) -> str:
    """The engine binary: inside what install.engine installs (a stable link), else on PATH."""
    return installed_binary(spec.profile, spec.engine_version.binary)


class _Builder:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.version = spec.engine_version
        self.args: list[Arg] = []
        self.env: dict[str, str] = {}

    def _flag(self, name: str) -> str:
        entry = self.version.flags.get(name)
        if entry is None or entry.flag is None:
            raise RenderError(
                f"{self.spec.engine.name} {self.spec.profile.runtime.version} has no flag for "
                f"{name!r}", hint="pick an engine version that supports it, or drop the setting")
        return entry.flag

    def has(self, name: str) -> bool:
        entry = self.version.flags.get(name)
        return entry is not None and (entry.flag is not None or entry.env is not None)

    def flag(self, name: str, value: object | None, why: str) -> None:
        words: tuple[str, ...] = (self._flag(name),)
        if value is not None:
            words += (_text(value),)
        self.args.append(Arg(words, why))

    def choice(self, name: str, wanted: str, why: str) -> None:
        entry = self.version.flags.get(name)
        if entry is not None and entry.values is not None and wanted not in entry.values:
            raise RenderError(f"{self.spec.engine.name} {self.spec.profile.runtime.version}: "
                              f"{name} does not accept {wanted!r} (accepts "
                              f"{', '.join(entry.values)})")
        self.flag(name, wanted, why)

    def setenv(self, name: str, value: object) -> None:
        entry = self.version.flags.get(name)
        if entry is None or entry.env is None:
            raise RenderError(f"{self.spec.engine.name} {self.spec.profile.runtime.version} has "
                              f"no environment variable for {name!r}")
        self.env[entry.env] = _text(value)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def engine_command(spec: Spec, placement: Placement, model_path: str) -> EngineCommand:
    engine = spec.profile.runtime.engine
    if engine == "llama.cpp":
        return _llama_cpp(spec, placement, model_path)
    if engine == "vllm":
        return _vllm(spec, placement, model_path)
    return _ollama(spec)


def chosen_flags(spec: Spec, placement: Placement, model_path: str) -> dict[str, Any]:
    """The engine's flags (and environment) as fit chose them: flag -> value (True for a switch)."""
    command = engine_command(spec, placement, model_path)
    out: dict[str, Any] = {}
    for arg in command.args:
        if not arg.words or not arg.words[0].startswith("-"):
            continue
        out[arg.words[0]] = True if len(arg.words) == 1 else " ".join(arg.words[1:])
    out.update(command.env)
    return out


def _sampling(spec: Spec) -> dict[str, float]:
    """The model card's sampling for the mode; {} for a model read from its own files
    (no card in the catalog): the engine then keeps the model's own defaults."""
    sampling = spec.model.sampling.get(spec.profile.model.mode)
    return sampling.model_dump() if sampling is not None else {}


def _llama_cpp(spec: Spec, placement: Placement, model_path: str) -> EngineCommand:
    p = spec.profile
    b = _Builder(spec)
    slots = p.runtime.parallel
    b.flag("model", model_path, "the model file (first shard; the others are found by name)")
    b.flag("alias", spec.model_id, "the model name clients send")
    b.flag("host", p.runtime.bind, "listen address")
    b.flag("port", p.runtime.port, "listen port")
    b.flag("ctx_size", placement.context * slots,
           f"total KV cache: {placement.context} tokens for each of {slots} slot(s)")
    b.flag("parallel", slots, "server slots: concurrent requests")
    b.flag("gpu_layers", placement.gpu_layers if spec.gpus else 0,
           "layers on the GPU (chosen by fit)" if spec.gpus else "CPU only: no GPU layers")
    if placement.cpu_moe_layers:
        b.flag("n_cpu_moe", placement.cpu_moe_layers,
               "layers whose MoE experts stay in system RAM (chosen by fit)")
    if p.cluster is not None:
        b.flag("rpc", rpc_servers(spec), "the workers' rpc-servers: their GPUs hold layers too")
    for pattern in _override_tensors(spec):
        b.flag("override_tensor", pattern, "explicit tensor placement from the profile")
    b.choice("flash_attn", p.runtime.flash_attention, "flash attention")
    b.flag("cache_type_k", p.model.kv_cache_k, "KV cache type (K)")
    b.flag("cache_type_v", p.model.kv_cache_value, "KV cache type (V)")
    _cpu_tuning(b, spec, placement)
    b.flag("jinja", None, "use the model's chat template (tool calls, reasoning)")
    _switch_off(b, "context_shift", "never silently drop the start of a long conversation")
    _switch_off(b, "kv_unified", "each slot owns its own context (not one shared pool)")
    if b.has("fit"):
        b.choice("fit", "off", "these flags are authoritative: no automatic refitting at start")
    sampling = _sampling(spec)
    if sampling:
        b.flag("temperature", sampling["temperature"], f"{p.model.mode} sampling (model card)")
        b.flag("top_p", sampling["top_p"], "model card")
        b.flag("top_k", sampling["top_k"], "model card")
        b.flag("min_p", sampling["min_p"], "model card")
    if sampling.get("presence_penalty") and b.has("presence_penalty"):
        b.flag("presence_penalty", sampling["presence_penalty"], "model card")
    if b.has("reasoning") and len(spec.model.modes) > 1:
        b.choice("reasoning", "on" if p.model.mode == "thinking" else "off",
                 f"{p.model.mode} mode, set on the server (hybrid model)")
    if p.model.mode == "thinking" and b.has("reasoning_format"):
        b.choice("reasoning_format", "deepseek",
                 "return the reasoning in reasoning_content, not in the answer")
    factor = yarn_factor(spec, placement.context)
    if factor is not None:
        b.choice("rope_scaling", "yarn", "context beyond the native length: YaRN (static: only when needed)")
        b.flag("rope_scale", factor, "YaRN factor: context / native length (model card)")
        b.flag("yarn_orig_ctx", spec.model.native_context, "native context length")
    if b.has("load_mode"):
        pinned = spec.profile.os.memlock == "unlimited" and placement.devices[-1].weights_bytes > 0
        b.choice("load_mode", "mmap+mlock" if pinned else "mmap",
                 "weights in RAM are locked: the OS cannot page them out under pressure" if pinned
                 else "map the model file (weights are read once into VRAM)" if spec.gpus
                 else "map the model file; memlock is not unlimited, so pages are not locked")
    if b.has("metrics"):
        b.flag("metrics", None, "Prometheus metrics at /metrics")
    _extra(b, spec)
    api = spec.engine_version.flags.get("api_key")
    return EngineCommand(_binary(spec), tuple(b.args), b.env,
                         api.env if api is not None else None)


def _cpu_tuning(b: _Builder, spec: Spec, placement: Placement) -> None:
    """Threads, NUMA policy, batch sizes and the GPU split: stated, never left to defaults."""
    p = spec.profile
    cores = p.runtime.threads or p.hardware.cpu.cores
    nodes = p.hardware.cpu.numa_nodes
    in_ram = placement.devices[-1].weights_bytes > 0
    spread = nodes > 1 and in_ram and b.has("numa")
    b.flag("threads", cores, f"generation threads: the {cores} physical cores"
           + (f" of all {nodes} NUMA nodes (weights in RAM are spread over them)" if spread else ""))
    b.flag("threads_batch", cores, "prompt-processing threads (physical cores; stated, not left to --threads)")
    if spread:
        b.choice("numa", "distribute", f"spread threads evenly over the {nodes} NUMA nodes that hold the "
                 "weights (drop the page cache before the first start so pages spread too)")
    speed = params()["speed"]
    physical = placement.ubatch or llama_ubatch(spec)
    b.flag("batch_size", max(int(speed["llama_cpp_batch"]), physical),
           "logical batch: tokens per prompt-processing step")
    b.flag("ubatch_size", physical,
           "physical batch: with weights in RAM each ubatch streams them over PCIe once (fit's prefill model)"
           if in_ram and spec.gpus else "physical batch (fit's prefill model and compute buffer assume it)")
    if placement.tensor_split and b.has("tensor_split"):
        b.choice("split_mode", "layer", "whole layers per GPU (the split fit planned)")
        shares = ",".join(f"{share * 100:.0f}" for share in placement.tensor_split)
        b.flag("tensor_split", shares, "share of the layers per GPU (in CUDA_DEVICE_ORDER=PCI_BUS_ID order), "
               "by the memory each has free")


def _switch_off(b: _Builder, name: str, why: str) -> None:
    """State a switch as off, in whichever spelling the version has."""
    entry = b.version.flags.get(name)
    if entry is None or entry.flag is None:
        return  # the version has no such behaviour
    if entry.flag.startswith("--no-"):
        b.args.append(Arg((entry.flag,), why))
    elif entry.off_flag is not None:
        b.args.append(Arg((entry.off_flag,), why))
    elif entry.default in (False, None):
        b.args.append(Arg((), f"{name}: off by default; this version has no off switch to state"))
    else:
        raise RenderError(f"{b.spec.engine.name} {b.spec.profile.runtime.version} turns {name} on "
                          "by default and has no switch to turn it off")


def _override_tensors(spec: Spec) -> list[str]:
    offload = spec.profile.runtime.offload
    return [] if isinstance(offload, str) else list(offload.override_tensors)


def _extra(b: _Builder, spec: Spec) -> None:
    if spec.profile.runtime.extra_args:
        b.args.append(Arg(tuple(spec.profile.runtime.extra_args), "extra_args from the profile"))


def _vllm(spec: Spec, placement: Placement, model_path: str) -> EngineCommand:
    p = spec.profile
    b = _Builder(spec)
    # `vllm serve MODEL`: the positional form every pinned release accepts (the model
    # flag's entry in engines.yaml); `--model` with `vllm serve` is deprecated upstream
    b.args.append(Arg((model_path,), "the model directory (vllm serve's positional MODEL)"))
    b.flag("served_model_name", spec.model_id, "the model name clients send")
    b.flag("host", p.runtime.bind, "listen address")
    b.flag("port", p.runtime.port, "listen port")
    b.flag("max_model_len", placement.context, "context per request")
    b.flag("max_num_seqs", p.runtime.parallel, "concurrent sequences")
    cluster = p.cluster
    if cluster is None:
        b.flag("tensor_parallel_size", max(spec.gpu_count, 1), "one shard per GPU")
    else:
        b.flag("tensor_parallel_size", gpus_per_node(spec), "tensor parallel inside a node: one shard per GPU")
        b.flag("pipeline_parallel_size", len(cluster.nodes),
               "pipeline parallel across nodes: one stage of layers per node")
        b.choice("distributed_executor_backend", "ray", "the workers run on the Ray cluster's nodes")
        b.env[address_env()] = head_address(spec)
    b.flag("gpu_memory_utilization", p.runtime.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION,
           "share of each GPU vLLM may take (fit planned with it)")
    kv = p.model.kv_cache_k
    b.flag("kv_cache_dtype", "auto" if kv in {"f16", "bf16", "auto"} else kv, "KV cache type")
    if placement.cpu_offload_bytes:
        b.flag("cpu_offload_gb", placement.cpu_offload_bytes // GIB,
               "weights kept in system RAM per GPU (chosen by fit)")
    if b.has("enable_prefix_caching"):
        b.flag("enable_prefix_caching", None, "reuse the KV cache of a shared prompt prefix")
    if b.has("seed"):
        b.flag("seed", 0, "fixed seed: temperature 0 is reproducible (the default changed between releases)")
    sampling = _sampling(spec)
    if sampling:  # else vLLM keeps the repo's generation_config.json
        if sampling["top_k"] == 0:
            sampling["top_k"] = -1  # vLLM spells "no top-k" as -1
        b.flag("generation_config", "vllm", "ignore the repo's generation_config.json")
        b.flag("override_generation_config", json.dumps(sampling, sort_keys=True),
               f"{p.model.mode} sampling (model card)")
    if spec.model.reasoning_parser and b.has("reasoning_parser"):
        b.flag("reasoning_parser", spec.model.reasoning_parser, "split out the reasoning")
    if spec.model.tool_call_parser and b.has("tool_call_parser"):
        b.flag("enable_auto_tool_choice", None, "tool calls")
        b.flag("tool_call_parser", spec.model.tool_call_parser, "tool call format")
    factor = yarn_factor(spec, placement.context)
    if factor is not None:
        rope = {"rope_scaling": {"rope_type": "yarn", "factor": factor,
                                 "original_max_position_embeddings": spec.model.native_context}}
        b.flag("hf_overrides", json.dumps(rope, sort_keys=True), "YaRN beyond native context")
    _extra(b, spec)
    api = spec.engine_version.flags.get("api_key")
    return EngineCommand(_binary(spec), tuple(b.args), b.env,
                         api.env if api is not None else None)


def _ollama(spec: Spec) -> EngineCommand:
    p = spec.profile
    b = _Builder(spec)
    b.setenv("host", f"{p.runtime.bind}:{p.runtime.port}")
    # Ollama's default context is small (and depends on VRAM): state it.
    b.setenv("context_length", p.model.context)
    # OLLAMA_NUM_PARALLEL multiplies the context memory: state it too.
    b.setenv("num_parallel", p.runtime.parallel)
    b.setenv("flash_attention", "1" if p.runtime.flash_attention != "off" else "0")
    b.setenv("kv_cache_type", p.model.kv_cache_k)
    if b.has("max_loaded_models"):
        b.setenv("max_loaded_models", 1)
    if b.has("keep_alive"):
        b.setenv("keep_alive", "-1")
    if b.has("models"):
        b.setenv("models", models_dir(spec))  # where install.model puts the locked tag
    return EngineCommand(_binary(spec), (Arg(("serve",), "the Ollama server"),),
                         b.env, None)
