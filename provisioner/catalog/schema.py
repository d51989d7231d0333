"""Typed models of the bundled catalog (gpus.yaml, models.yaml, engines.yaml).

Every entry carries ``sources``: the URLs its numbers come from.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from provisioner.units import parse_size

Bytes = Annotated[int, BeforeValidator(parse_size)]
Architecture = Literal["turing", "ampere", "ada", "hopper", "blackwell"]
KernelModule = Literal["open", "proprietary"]
# GpuSpec fields a source must name; the rest (name, sources) describe the entry itself
GPU_SOURCED_FIELDS = frozenset({
    "architecture", "compute_capability", "vram", "memory_bandwidth_gb_s", "unified_memory",
    "fp16_dense_tflops", "fp8_dense_tflops", "fp4_dense_tflops", "pci_device_ids", "pci_subsystem_ids",
    "min_driver", "kernel_modules", "power_default_w", "power_min_w", "power_max_w", "pcie_gen",
    "pcie_lanes", "nvlink", "nvlink_gb_s",
})
QuantFormat = Literal["gguf", "safetensors", "ollama"]


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GpuSpec(_Entry):
    """One board. ``sources`` maps each URL to the fields it gives (gpus.yaml header)."""

    name: str
    architecture: Architecture
    compute_capability: str = Field(pattern=r"^[0-9]+\.[0-9]+$")
    vram: Bytes
    memory_bandwidth_gb_s: float = Field(gt=0)
    # one pool shared by weights, KV cache and the OS (Jetson, DGX Spark): vram is that
    # pool, memory_bandwidth_gb_s its bandwidth, and no PCIe link sits between CPU and GPU
    unified_memory: bool = False
    fp16_dense_tflops: float = Field(gt=0, description="dense FP16/BF16 tensor TFLOPS")
    fp8_dense_tflops: float | None = Field(default=None, gt=0)  # Ada, Hopper, Blackwell
    fp4_dense_tflops: float | None = Field(default=None, gt=0)  # Blackwell
    pci_device_ids: list[str] = Field(default_factory=list)  # "0x2bb1" as nvidia-smi prints
    # "10de:129e" (subsystem vendor:device) where boards share a device id
    pci_subsystem_ids: list[str] = Field(default_factory=list)
    # None: the board's driver comes with its Jetson Linux (JetPack) release
    min_driver: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+){0,2}$")
    # True: min_driver is not the board's first driver (not recorded) but a floor known to
    # support it (515.48.07, the first README with a Compatible GPUs list): an older driver
    # may well run the board, so validate, verify and check-gpu warn instead of refusing
    min_driver_floor: bool = False
    kernel_modules: list[KernelModule] = Field(default_factory=list)
    power_default_w: int | None = Field(default=None, gt=0)  # None: not known per GPU
    power_min_w: int | None = Field(default=None, gt=0)  # None: the range is not known
    power_max_w: int | None = Field(default=None, gt=0)
    pcie_gen: int | None = Field(default=None, ge=3, le=6)  # None: no PCIe hop (unified memory)
    pcie_lanes: int | None = Field(default=None, ge=1, le=16)
    nvlink: bool | None = None  # None: not recorded
    nvlink_gb_s: float | None = Field(default=None, gt=0)  # total per GPU, both directions
    sources: dict[str, list[str]] = Field(min_length=1)
    # described in a profile (hardware.gpus[].spec), not the catalog: no driver minimum is known
    inline: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> GpuSpec:
        unknown = {f for fields in self.sources.values() for f in fields} - GPU_SOURCED_FIELDS
        if unknown:
            raise ValueError(f"sources name unknown fields: {', '.join(sorted(unknown))}")
        if (self.pcie_gen is None) != (self.pcie_lanes is None):
            raise ValueError("pcie_gen and pcie_lanes are given together or not at all")
        if self.pcie_gen is None and not self.unified_memory:
            raise ValueError("a board without unified memory needs pcie_gen and pcie_lanes")
        if not self.pci_device_ids and not self.unified_memory:
            raise ValueError("a discrete board needs pci_device_ids")
        if not self.unified_memory and ((self.min_driver is None and not self.inline) or not self.kernel_modules):
            raise ValueError("a discrete board needs min_driver and kernel_modules")
        if self.min_driver_floor and self.min_driver is None:
            raise ValueError("min_driver_floor needs the min_driver it qualifies")
        if self.nvlink_gb_s is not None and self.nvlink is not True:
            raise ValueError("nvlink_gb_s needs nvlink: true")
        return self

    @property
    def sourced_fields(self) -> frozenset[str]:
        return frozenset(f for fields in self.sources.values() for f in fields)


class SamplingSpec(_Entry):
    temperature: float = Field(ge=0, le=2)
    top_p: float = Field(gt=0, le=1)
    top_k: int = Field(ge=0)
    min_p: float = Field(ge=0, le=1)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)


class QuantSpec(_Entry):
    format: QuantFormat
    bytes: Bytes  # total size of the weight files
    # False: a figure recalled from the cited page and not re-read there. fit shows it as an
    # estimate and uses a PROFILE.lock's (or the profile's files') real sizes when it has them
    # (profile/weights_size.py); it never becomes an exact size in a rendered file or check.
    bytes_verified: bool = True
    bits_per_weight: float = Field(gt=0, le=32)
    repo: str | None = None  # where this quantisation is published
    # safetensors: config.json's quantization_config.quant_method, or the dtype (bf16)
    method: str | None = None
    sources: list[str] = Field(min_length=1)


class ModelSpec(_Entry):
    name: str
    hf_repo: str
    architecture: str  # GGUF general.architecture, e.g. qwen3moe
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    attention: Literal["gqa", "mla", "gqa-sliding"]
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    # MLA (DeepSeek): the cache holds kv_lora_rank + qk_rope_head_dim per token and layer
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    # sliding window (gpt-oss): that many of the layers only keep `sliding_window` tokens
    sliding_window: int | None = None
    sliding_window_layers: int = 0
    params_total: int = Field(gt=0)
    params_active: int = Field(gt=0)
    experts_total: int = Field(default=0, ge=0)
    experts_active: int = Field(default=0, ge=0)
    expert_params_fraction: float = Field(
        default=0.0, ge=0, lt=1, description="share of all weights in routed experts"
    )
    native_context: int = Field(gt=0)
    max_context: int = Field(gt=0, description="with the model card's rope scaling (YaRN)")
    yarn_factor: float | None = None
    modes: list[Literal["thinking", "non-thinking"]] = Field(min_length=1)
    sampling: dict[str, SamplingSpec]
    reasoning_parser: str | None = None  # vLLM --reasoning-parser
    tool_call_parser: str | None = None  # vLLM --tool-call-parser
    quants: dict[str, QuantSpec] = Field(min_length=1)
    sources: list[str] = Field(min_length=1)

    @property
    def is_moe(self) -> bool:
        return self.experts_total > 0


class EngineFlag(_Entry):
    """One engine setting under a logical name, as the given version spells it."""

    flag: str | None = None  # command-line flag, e.g. --ctx-size
    off_flag: str | None = None  # the switch's "off" spelling, e.g. --no-context-shift
    env: str | None = None  # or an environment variable (Ollama)
    default: Any = None  # the version's own default, null if none/derived
    values: list[str] | None = None  # the accepted values when it is an enum
    note: str | None = None


class EngineVersion(_Entry):
    released: str
    checked_in: str  # where the flags were checked (URL of that version's --help or source)
    flags: dict[str, EngineFlag]
    kv_cache_types: list[str] = Field(min_length=1)
    quantized_v_needs_flash_attention: bool = False
    architectures: list[Architecture]  # GPU architectures this version supports
    # safetensors checkpoints it loads: config.json quant_method values and unquantised dtypes
    # (QuantSpec.method); None where the engine loads no safetensors (llama.cpp, Ollama)
    quant_methods: list[str] | None = None
    binary: str  # what the run script executes


class EngineSpec(_Entry):
    name: str
    weights_format: QuantFormat
    health_path: str = "/health"  # answers 200 once the model is loaded (apply --restart waits on it)
    versions: dict[str, EngineVersion] = Field(min_length=1)
    sources: list[str] = Field(min_length=1)


class Catalog(_Entry):
    gpus: dict[str, GpuSpec]
    models: dict[str, ModelSpec]
    engines: dict[str, EngineSpec]
