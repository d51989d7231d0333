"""The machine profile: pydantic models, frozen, unknown keys refused.

Only structure and single-field rules live here. Rules that need the catalog
(is this GPU known, does the context exceed the model's maximum) live in
``resolve.py`` so that this module stays a plain description of the format.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from provisioner.profile.thresholds import threshold_names
from provisioner.units import parse_size

# --- scalar types -----------------------------------------------------------

# C0 and C1 controls, and the Unicode line/paragraph separators (line breaks to YAML and Python)
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# How a validator's ValueError carries its own hint ("message | hint: what to do"); the
# loader splits it off into the error's hint.
HINT_MARK = " | hint: "


def _not_a_float(value: Any) -> Any:
    """YAML reads `2.10` as the number 2.1: a version written so would silently change."""
    if isinstance(value, float):
        raise ValueError(f"{value!r} was read as a number, which drops trailing zeros"
                         f"{HINT_MARK}write the version in quotes, e.g. \"2.10\"")
    return value


def _no_control(value: str) -> str:
    if CONTROL_CHARS.search(value):
        raise ValueError("must not contain newlines or control characters")
    return value


_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./@+:,=-]+$")


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if not _SAFE_PATH.match(value):
        # Paths land in unit files and shell scripts: no spaces, quotes, '%' or '$'.
        raise ValueError(f"path {value!r} may only contain letters, digits and _./@+:,=-")
    if any(part == ".." for part in value.split("/")):
        raise ValueError(f"must not contain '..', got {value!r}")
    return value


def _dest_path(value: str) -> str:
    """A file's destination, written one way only: two spellings of one path would be two
    files to the duplicate check, and a folder-like one cannot be a file at all."""
    parts = value.split("/")[1:]
    if value == "/" or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"destination {value!r} must name a file: no trailing '/', no '//', '.' or '..'"
                         f"{HINT_MARK}write it as {'/' + '/'.join(p for p in parts if p not in ('', '.'))!r}")
    return value


def _rel_path(value: str) -> str:
    if value.startswith("/") or any(part == ".." for part in value.split("/")):
        raise ValueError(f"must be a relative path inside the profile's folder, got {value!r}")
    return value


def _memlock(value: object) -> object:
    if value == "unlimited":
        return value
    if isinstance(value, str) and not value.strip()[:1].isdigit():
        raise ValueError(f"expected 'unlimited' or a size such as 64GiB, got {value!r}")
    return parse_size(value)


_SYSCTL_TEXT = re.compile(r"^[A-Za-z0-9_.:/ -]{1,256}$")


def _sysctl_value(value: object) -> int | str:
    """A number, or a word/list of words; one clear message instead of one per union member."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError(f"a sysctl value is a number or text, got {type(value).__name__}")
    _no_control(value)
    if not _SYSCTL_TEXT.match(value):
        raise ValueError(f"sysctl value {value!r} may only contain letters, digits, spaces and _.:/- "
                         "(at most 256 characters)")
    return value


# What parse_size takes, for the JSON Schema only (validation is parse_size's): bytes, or
# a number with a unit; the loader still refuses a bare G and fractions of a byte.
SIZE_JSON: dict[str, Any] = {"anyOf": [
    {"type": "integer", "minimum": 0},
    {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([KkMmGgTt][Ii]?[Bb]|[Bb])?\s*$"},
]}

Text = Annotated[str, AfterValidator(_no_control)]
Bytes = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(SIZE_JSON)]
AbsPath = Annotated[str, AfterValidator(_no_control), AfterValidator(_abs_path),
                    WithJsonSchema({"type": "string", "pattern": "^/[A-Za-z0-9_./@+:,=-]*$"})]
RelPath = Annotated[str, AfterValidator(_no_control), AfterValidator(_rel_path)]
DestPath = Annotated[AbsPath, AfterValidator(_dest_path)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
UnixName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
SysctlKey = Annotated[str, Field(pattern=r"^[a-z0-9_]+([./][a-z0-9_-]+)+$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Mode = Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")]


_NUMBERS = (int, float, int | None, float | None)


class _Model(BaseModel):
    # numbers become strings where a string is expected: `version: 575` is "575"
    # .inf / .nan are never a sensible number in a profile
    # a field's docstring is its description (the JSON Schema and docs/profile.md)
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        """pydantic reads `true` as 1 where a number is meant: `cores: true` is a mistake, not 1."""
        if isinstance(data, dict):
            for name, value in data.items():
                field_info = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field_info is not None and field_info.annotation in _NUMBERS:
                    raise ValueError(f"{name}: expected a number, got {str(value).lower()}")
        return data


# --- sections ---------------------------------------------------------------


class Metadata(_Model):
    name: Name
    """The profile's name: file names, unit descriptions and the library use it."""
    description: Text = ""
    """One line saying what the profile is for."""
    sources: list[Annotated[str, Field(pattern=r"^https?://\S+$")]] = []
    """URLs that back the profile's numbers (model card, vendor page, measurement)."""


# What `provision init` writes for a number nvidia-smi cannot report; validate refuses it.
PLACEHOLDER = "FILL-IN"


def _filled(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(PLACEHOLDER):
        what = value.removeprefix(PLACEHOLDER).lstrip(": ") or "this number"
        raise ValueError(f"not filled in yet ({PLACEHOLDER}){HINT_MARK}put {what} here")
    return value


Measured = Annotated[float, BeforeValidator(_filled), Field(gt=0, le=100_000)]


class InlinePcie(_Model):
    gen: Annotated[int, BeforeValidator(_filled), Field(ge=3, le=6)]
    """PCIe generation of the slot the GPU runs at (nvidia-smi pcie.link.gen.max)."""
    lanes: Annotated[int, BeforeValidator(_filled), Field(ge=1, le=16)]
    """PCIe lanes (nvidia-smi pcie.link.width.max)."""


class InlineGpu(_Model):
    """A GPU the catalog lacks, described in the profile (checked like a catalog entry by
    profile/inline_gpu.py): the numbers fit needs, from the board's data sheet."""

    name: Text
    """The board's name, as nvidia-smi prints it."""
    memory: Annotated[int, BeforeValidator(parse_size), BeforeValidator(_filled), Field(gt=0)]  # last runs first
    """Memory size, e.g. 20GiB."""
    bandwidth_gb_s: Measured
    """Memory bandwidth in GB/s, from the data sheet."""
    bf16_tflops: Measured
    """Dense (not sparse) BF16/FP16 tensor TFLOPS, from the data sheet."""
    fp8_tflops: Measured | None = None
    """Dense FP8 tensor TFLOPS where the board has FP8 (Ada, Hopper, Blackwell)."""
    compute_capability: Annotated[str, BeforeValidator(_filled), Field(pattern=r"^[0-9]+\.[0-9]+$")]
    """CUDA compute capability, e.g. "8.9" (nvidia-smi compute_cap)."""
    pcie: InlinePcie | None = None
    """The PCIe link; leave it out only with unified_memory."""
    unified_memory: bool = False
    """One memory pool shared with the CPU and the OS (GB10, Jetson): no PCIe hop."""
    pci_device_id: Annotated[str, Field(pattern=r"^0x[0-9a-f]{4}$")] | None = None
    """The PCI device id ("0x2684"), so verify can match the board."""
    sources: list[Annotated[str, Field(pattern=r"^https?://\S+$")]] = []
    """URLs of the data sheet the numbers come from."""


class GpuEntry(_Model):
    """A catalog GPU by id (``model``) or one described inline (``spec``)."""

    model: Text | None = None
    """A GPU id from the catalog (provisioner/catalog/gpus.yaml), e.g. rtx-pro-6000-blackwell."""
    spec: InlineGpu | None = None
    """A GPU the catalog lacks, described from its data sheet (docs/models.md)."""
    count: int = Field(default=1, ge=1, le=16)
    """How many of this GPU the machine (or node) has."""

    @model_validator(mode="after")
    def _one(self) -> GpuEntry:
        if (self.model is None) == (self.spec is None):
            raise ValueError("give exactly one of model (a catalog id) or spec (the GPU described inline)")
        return self


class Memory(_Model):
    """RAM for the roofline: a type and channel count, or a measured bandwidth."""

    type: Annotated[str, Field(pattern=r"^(ddr4|ddr5|lpddr5x?|hbm[0-9e]*)-[0-9]{3,5}$")] | None = None
    """Memory type and speed in MT/s, e.g. ddr5-5600: with channels, the theoretical bandwidth."""
    channels: int | None = Field(default=None, ge=1, le=24)
    """Populated memory channels (with type)."""
    bandwidth_gb_s: float | None = Field(default=None, gt=0, le=20000)
    """A measured RAM bandwidth in GB/s; used instead of type x channels."""

    @model_validator(mode="after")
    def _type_or_measured(self) -> Memory:
        if self.bandwidth_gb_s is None and (self.type is None or self.channels is None):
            raise ValueError("give either type and channels (ddr5-5600, 2) or bandwidth_gb_s")
        return self

    def bandwidth(self) -> float:
        """Bandwidth in GB/s: measured if given, else the theoretical peak."""
        if self.bandwidth_gb_s is not None:
            return self.bandwidth_gb_s
        assert self.type is not None and self.channels is not None
        mt_s = int(self.type.rsplit("-", 1)[1])
        return mt_s * 8 * self.channels / 1000  # 64-bit channel: 8 bytes per transfer


class Cpu(_Model):
    cores: int = Field(ge=1, le=1024)
    """Physical CPU cores: the engine's default thread count and fit's CPU compute."""
    numa_nodes: int = Field(default=1, ge=1, le=64)
    """NUMA nodes; above 1 the run script adds --numa distribute when weights sit in RAM."""


class Hardware(_Model):
    gpus: list[GpuEntry] = []
    """The machine's GPUs by catalog id and count; empty for CPU only (and for a cluster, whose nodes list theirs)."""
    ram: Bytes
    """Installed system RAM, a size with its unit: 192GiB (2^30) or 96GB (10^9); a bare 192G is refused."""
    memory: Memory
    """The RAM's type and channels, or its measured bandwidth (fit's CPU speed model)."""
    cpu: Cpu
    """The CPU's cores and NUMA nodes."""

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)


class Driver(_Model):
    kernel_module: Literal["open", "proprietary"] = "open"
    """NVIDIA kernel module flavour (open or proprietary); checked against what each GPU supports."""
    version: Annotated[str, BeforeValidator(_not_a_float), Field(pattern=r"^[0-9]+(\.[0-9]+){0,2}$")] | None = None
    """The NVIDIA driver version, quoted ("580.95.05"); checked against each GPU's minimum."""
    persistence: bool = True
    """Turn on NVIDIA persistence mode at boot (nvidia-smi --persistence-mode=1)."""
    power_limit_w: int | None = Field(default=None, ge=50, le=2000)
    """GPU power limit in watts set at boot (nvidia-smi --power-limit); checked against the GPU's range."""


class Hugepages(_Model):
    size: Literal["2MiB", "1GiB"] = "2MiB"
    """Hugepage size to reserve: 2MiB (vm.nr_hugepages) or 1GiB (sysfs at boot)."""
    count: int = Field(default=0, ge=0, le=10_000_000)
    """How many hugepages to reserve; fit takes them out of the RAM the model can use."""

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)

    @property
    def total_bytes(self) -> int:
        return self.size_bytes * self.count


SysctlValue = Annotated[int | str, BeforeValidator(_sysctl_value)]


class Os(_Model):
    tuning: Literal["sysctl", "tuned"] = "sysctl"
    """Who owns the kernel tuning: sysctl (sysctl.d + tmpfiles.d) or a tuned profile, never both."""
    tuned_base: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = "throughput-performance"
    """The tuned profile provision's own tuned profile includes (tuning: tuned)."""
    sysctl: dict[SysctlKey, SysctlValue] = {}
    """Kernel parameters written to sysctl.d (key: value); on a live apply every key must exist under /proc/sys."""
    transparent_hugepages: Literal["always", "madvise", "never"] = "madvise"
    """Transparent hugepages mode (/sys/kernel/mm/transparent_hugepage/enabled)."""
    hugepages: Hugepages = Hugepages()
    """Hugepages reserved for the machine."""
    memlock: Annotated[Literal["unlimited"] | int, BeforeValidator(_memlock),
                       WithJsonSchema({"anyOf": [{"const": "unlimited"}, *SIZE_JSON["anyOf"]]})] = "unlimited"
    """Locked-memory limit of the server (LimitMEMLOCK, limits.d): unlimited or a size; mlock needs it."""
    swap: Literal["keep", "avoid"] = "avoid"
    """avoid sets vm.swappiness=1 (swap only to escape the OOM killer); keep leaves swappiness alone."""
    cpu_governor: Literal["performance", "schedutil", "ondemand", "powersave"] | None = None
    """CPU frequency governor set at boot (scaling_governor); monitor warns when it changes."""


class ModelFile(_Model):
    path: AbsPath
    """Where the file is (or will be) on the host: an absolute path."""
    bytes: int | None = Field(default=None, gt=0)
    """The file's exact size in bytes (fit, verify and the download check it); leave it
    out, with sha256, for a file you place yourself and have no checksum for."""
    sha256: Sha256 | None = None
    """The file's sha256 (64 hex digits): verify and the download check it. Never write a
    made-up one: leave it out (verify then says the file is unchecked), or use an hf source
    and `provision lock`, which records the hub's own checksums."""
    url: Annotated[str, Field(pattern=r"^(https?|file)://[A-Za-z0-9_./@+:,=%~?&-]+$")] | None = None
    """Where install.model downloads it from (https, or file:// for a local mirror)."""

    @model_validator(mode="after")
    def _checked_download(self) -> ModelFile:
        if self.url is not None and (self.sha256 is None or self.bytes is None):
            raise ValueError("a file with a url needs its bytes and sha256: a download is checked against both")
        return self


class HfSource(_Model):
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    """The Hugging Face repository, owner/name."""
    revision: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")]
    """A 40-hex commit, or a branch or tag that `provision lock` pins to a commit in PROFILE.lock."""
    include: list[Text] = []
    """Glob patterns of the repository's files to use (Hugging Face allow-pattern semantics); empty: all."""
    dest: AbsPath
    """The folder on the host the files go into."""
    file: RelPath | None = None
    """For llama.cpp: the GGUF (first shard) it loads, relative to dest, e.g. Q8_0/x-00001-of-00006.gguf."""


class ModelSource(_Model):
    """Exactly one of: GGUF files (shards), a Hugging Face repo at a pinned
    revision, a vLLM model directory, or an Ollama tag."""

    files: list[ModelFile] | None = None
    """GGUF files (each shard) with their exact size and sha256."""
    hf: HfSource | None = None
    """A Hugging Face repository at a pinned revision."""
    directory: AbsPath | None = None
    """A model directory on the host (vLLM: config.json and safetensors)."""
    ollama: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")] | None = None
    """An Ollama model tag, e.g. qwen3:30b-a3b."""
    ollama_digest: Annotated[str, Field(pattern=r"^(sha256:)?[0-9a-f]{12,64}$")] | None = None
    """The build an Ollama tag must point at: the ID `ollama list` shows, or the full sha256 digest."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        given = [k for k in ("files", "hf", "directory", "ollama") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of files, hf, directory, ollama"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if self.files is not None and not self.files:
            raise ValueError("files must list at least one file")
        if self.ollama_digest is not None and self.ollama is None:
            raise ValueError("ollama_digest pins an Ollama tag: give ollama too")
        return self

    @property
    def kind(self) -> str:
        for key in ("files", "hf", "directory", "ollama"):
            if getattr(self, key) is not None:
                return key
        raise AssertionError("validated to have one")  # pragma: no cover


KvType = Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]


class ModelSection(_Model):
    id: Text
    """A model id from the catalog (provisioner/catalog/models.yaml), e.g. qwen3-235b-a22b."""
    quant: Text
    """The quantisation, as the catalog names it for that model (UD-Q3_K_XL, Q8_0, FP8, ...)."""
    source: ModelSource
    """Where the weights come from: exactly one of files, hf, directory or ollama."""
    context: int = Field(ge=256, le=10_000_000)
    """Context length in tokens per sequence (checked against the model's maximum)."""
    kv_cache: KvType = "f16"
    """KV cache type of the keys (and of the values unless kv_cache_v), one the engine version lists."""
    kv_cache_v: KvType | None = None
    """KV cache type of the values; default: kv_cache."""
    mode: Literal["thinking", "non-thinking"] = "non-thinking"
    """thinking or non-thinking: picks the model card's sampling settings and the reasoning flags."""

    @property
    def kv_cache_k(self) -> str:
        return self.kv_cache

    @property
    def kv_cache_value(self) -> str:
        return self.kv_cache_v or self.kv_cache


class Offload(_Model):
    """Explicit placement; ``auto`` (the default) lets fit choose."""

    gpu_layers: int | None = Field(default=None, ge=0, le=1000)
    """Layers on the GPU (llama.cpp --n-gpu-layers); default: fit chooses."""
    cpu_moe_layers: int | None = Field(default=None, ge=0, le=1000)
    """Layers whose MoE experts stay in system RAM (llama.cpp --n-cpu-moe); default: fit chooses."""
    override_tensors: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.*+?()\[\]|\\^$-]+=[A-Za-z0-9_]+$")]] = []
    """llama.cpp --override-tensor rules, PATTERN=BUFFER (e.g. exps=CPU)."""
    cpu_offload: Bytes | None = None
    """vLLM --cpu-offload-gb: weights moved to pinned RAM per GPU, a size."""


# Flags whose value is a secret: a profile names where a secret comes from (secrets:), never the
# value. Spelled as the engines' parsers accept them: llama.cpp (common/arg.cpp) turns '_' into '-'
# in a '--' flag and knows -hft as --hf-token; vLLM (FlexibleArgumentParser, vllm/utils/
# argparse_utils.py) does the same '_' -> '-', takes --flag=value, and argparse's allow_abbrev
# (on by default) accepts any unambiguous prefix. Ollama reads no key from its command line.
_SECRET_FLAGS = ("--api-key", "--hf-token")
_SECRET_SHORT = frozenset({"-hft"})
# Public token formats: a value shaped like one is refused wherever it appears in extra_args.
_TOKEN_SHAPE = re.compile(r"(^|=)(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{16,}"
                          r"|github_pat_[A-Za-z0-9_]{16,}|xox[abpr]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16})")


def _no_secret_flag(arg: str) -> str:
    name = arg.split("=", 1)[0]
    spelled = name.replace("_", "-") if name.startswith("--") else name
    if spelled in _SECRET_SHORT or (len(spelled) > 3 and any(f.startswith(spelled) for f in _SECRET_FLAGS)):
        raise ValueError(f"{name} in extra_args would write a secret into the run script; "
                         "name where it comes from under secrets: (from_env or from_file)")
    if _TOKEN_SHAPE.search(arg):
        # the message never repeats the value: it is likely the secret itself
        raise ValueError("an extra_args value looks like an access token; a secret never goes into the "
                         "run script: name where it comes from under secrets: (from_env or from_file)")
    return arg


ExtraArg = Annotated[str, Field(pattern=r"^[A-Za-z0-9_./:=,+@%-]{1,256}$"), AfterValidator(_no_secret_flag)]

# `offload: auto` or a mapping: a tagged union, so a bad mapping reports its own keys only
OffloadChoice = Annotated[
    Annotated[Literal["auto"], Tag("auto")] | Annotated[Offload, Tag("explicit")],
    Discriminator(lambda value: "auto" if isinstance(value, str) else "explicit"),
]


class Runtime(_Model):
    engine: Literal["llama.cpp", "vllm", "ollama"]
    """The inference engine: llama.cpp, vllm or ollama."""
    version: Annotated[Text, BeforeValidator(_not_a_float)]
    """The engine version as the catalog keys it (b11312, "0.11.0"); flags are spelled as that version spells them."""
    port: int = Field(default=8080, ge=1, le=65535)
    """TCP port the server listens on."""
    expose: bool = False  # before bind: bind's check reads it
    """Allow bind to listen beyond loopback (set an API key too)."""
    bind: Text = "127.0.0.1"
    """The IP address the server binds; beyond loopback only with expose: true."""
    parallel: int = Field(default=1, ge=1, le=256)
    """Concurrent sequences: llama.cpp slots (-np, each the full context), vLLM --max-num-seqs, Ollama's."""
    offload: OffloadChoice = "auto"
    """auto lets fit place the layers; a mapping states the placement."""
    threads: int | None = Field(default=None, ge=1, le=1024)
    """CPU threads for the engine; default: the physical cores."""
    flash_attention: Literal["auto", "on", "off"] = "on"
    """Flash attention: on, off or auto (the engine decides)."""
    gpu_memory_utilization: float | None = Field(default=None, gt=0.1, le=0.99)
    """vLLM --gpu-memory-utilization, the share of each GPU's memory vLLM takes; default 0.9."""
    ubatch: int | None = Field(default=None, ge=1, le=65536)
    """llama.cpp/Ollama physical batch (--ubatch-size): prompt tokens per GPU pass; default: fit picks it."""
    extra_args: list[ExtraArg] = []
    """More engine arguments, appended to the command line as given (secret flags are refused)."""

    @property
    def local_address(self) -> str:
        """Where a client on the host itself reaches the server (a wildcard bind -> loopback)."""
        return "127.0.0.1" if self.bind in {"0.0.0.0", "::"} else self.bind  # noqa: S104 - a comparison

    @field_validator("bind")
    @classmethod
    def _public_needs_expose(cls, bind: str, info: ValidationInfo) -> str:
        try:
            address = ipaddress.ip_address(bind)
        except ValueError as exc:
            raise ValueError(f"bind must be an IP address, got {bind!r}") from exc
        if "%" in bind:  # ipaddress takes any text after % as an IPv6 scope id
            raise ValueError(f"bind must be a plain IP address, without a scope id (%...), got {bind!r}")
        if not address.is_loopback and not info.data.get("expose", False):
            raise ValueError(
                f"bind {bind} listens beyond this machine; set runtime.expose: true "
                "if that is intended (and set an API key)"
            )
        return bind


def _secret_file(value: str) -> str:
    """Like AbsPath, but an error never repeats the value: a secret pasted here by mistake."""
    if not value.startswith("/") or CONTROL_CHARS.search(value) or not _SAFE_PATH.match(value) \
            or ".." in value.split("/"):
        raise ValueError("from_file must be an absolute path of letters, digits and _./@+:,=- "
                         "(the value given is not repeated: it may be the secret itself)")
    return value


class SecretRef(_Model):
    """Where a secret comes from at run time; the value never enters a profile."""

    from_env: EnvName | None = None
    """An environment variable, set in /etc/provision/SERVICE/secrets.env (0600, yours to write)."""
    from_file: Annotated[str, AfterValidator(_secret_file)] | None = None
    """A file on the host (an absolute path), passed to the server as a systemd credential."""
    generate: bool = False
    """api_key only: the first apply writes a random key to /etc/provision/SERVICE/api-key (0600),
    never overwrites it and never prints it."""

    @model_validator(mode="before")
    @classmethod
    def _not_inline(cls, data: Any) -> Any:
        if not isinstance(data, dict | SecretRef):
            # the message never repeats the value: it may be the secret itself
            raise ValueError("an inline secret is refused: name where it comes from, "
                             "{from_env: VAR} or {from_file: /path}, never the secret itself")
        return data

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if [self.from_env is not None, self.from_file is not None, self.generate].count(True) != 1:
            raise ValueError("give exactly one of from_env, from_file or generate: true (never the secret itself)")
        return self


class Secrets(_Model):
    api_key: SecretRef | None = None
    """The server's API key: where it comes from at run time."""
    hf_token: SecretRef | None = None
    """A Hugging Face token for gated downloads: where it comes from on the host."""

    @field_validator("hf_token")
    @classmethod
    def _not_generated(cls, ref: SecretRef | None) -> SecretRef | None:
        if ref is not None and ref.generate:
            raise ValueError("a Hugging Face token is issued by the hub, it cannot be generated: "
                             "use from_env or from_file")
        return ref


class Service(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = "llm-server"
    """The systemd unit and file names (NAME.service, NAME-run.sh)."""
    user: UnixName = "llm"
    """The user the server runs as."""
    group: UnixName | None = None
    """The group the server runs as; default: the user's name."""
    restart: Literal["no", "on-failure", "always"] = "on-failure"
    """systemd Restart= policy of the server."""
    start_timeout_s: int = Field(default=1800, ge=10, le=86400)
    """Seconds to wait for the server to load the model (TimeoutStartSec, apply --restart's health wait)."""


class ExtraFile(_Model):
    template: RelPath
    """A Jinja template beside the profile (sandboxed, StrictUndefined)."""
    dest: DestPath
    """Where the rendered file is installed (absolute, normalised, outside provision's state)."""
    mode: Mode = "0644"
    """File mode, octal text ("0644")."""
    owner: UnixName = "root"
    """File owner."""
    group: UnixName = "root"
    """File group."""
    notify: list[Name] = []
    """Handlers to run when the file changes (built-in names or the profile's handlers)."""


class Handler(_Model):
    command: Text = Field(min_length=1, max_length=4096)
    """The shell command run once when a file notifying it changed (after the built-in handlers)."""


class Verify(_Model):
    min_tokens_per_s: float | None = Field(default=None, gt=0)
    """Expected decode tok/s; init compares it with fit (verify's speed check uses fit's prediction)."""
    context_probe: bool = True
    """Accepted, not read yet: verify's long-context needle check runs unless --no-needle."""
    determinism: bool = True
    """Accepted, not read yet: verify always checks determinism at temperature 0."""
    monitor: bool = False
    """Install a service and timer writing Prometheus metrics for node_exporter's textfile collector."""
    thresholds: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")], float] = {}
    """provision monitor thresholds replacing the defaults, e.g. {swap_fail_mbs: 5, gpu_temp_warn_c: 80}."""

    @model_validator(mode="after")
    def _known_thresholds(self) -> Verify:
        known = threshold_names()
        for name in self.thresholds:
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(sorted(known))}"
                raise ValueError(f"unknown monitor threshold {name!r}{hint}")
        return self


class ClusterNode(_Model):
    """One machine of a cluster: an inventory host with its GPUs and the address the
    other nodes reach it at (an IP: it lands in unit files, scripts and --rpc lists)."""

    name: Name
    """The node's name (--node NAME)."""
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
    """The inventory host that is this node."""
    address: Text
    """The IP address the other nodes reach this one at."""
    role: Literal["head", "worker"]
    """head (serves the API) or worker; exactly one head."""
    gpus: list[GpuEntry] = Field(min_length=1)
    """This node's GPUs by catalog id and count."""

    @field_validator("address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"address must be an IP address, got {value!r}") from exc
        return value

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)


class Interconnect(_Model):
    """The network between the nodes: its type sets the per-message latency fit assumes."""

    type: Literal["ethernet", "infiniband", "roce"] = "ethernet"
    """ethernet, roce or infiniband: sets the per-message latency fit assumes (catalog/cluster.yaml)."""
    gbit_s: float = Field(gt=0, le=3200)
    """Link bandwidth in Gbit/s."""


class Cluster(_Model):
    """One model served by several machines: vLLM on Ray (tensor parallel inside a
    node, pipeline parallel across nodes) or llama.cpp RPC (workers lend their GPUs
    to the head's llama-server)."""

    backend: Literal["ray", "rpc"]
    """ray (vLLM on Ray) or rpc (llama.cpp with rpc-server workers)."""
    nodes: list[ClusterNode] = Field(min_length=2, max_length=64)
    """The machines, head and workers (2 to 64)."""
    interconnect: Interconnect
    """The network between the nodes."""
    port: int | None = Field(default=None, ge=1024, le=65535)
    """Ray's GCS port on the head or each worker's rpc-server port; default: catalog/cluster.yaml."""
    # The RPC server and Ray's ports have no authentication: listening beyond loopback
    # must be asked for, like runtime.expose.
    trusted_network: bool = False
    """Ray's and rpc-server's ports have no authentication: node addresses beyond loopback need true."""

    @model_validator(mode="after")
    def _shape(self) -> Cluster:
        heads = [n.name for n in self.nodes if n.role == "head"]
        if len(heads) != 1:
            raise ValueError(f"a cluster has exactly one node with role: head (got {len(heads)})")
        for key in ("name", "host", "address"):
            values = [getattr(n, key) for n in self.nodes]
            dupes = sorted({v for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"two nodes share the {key} {dupes[0]!r}")
        public = [n.address for n in self.nodes if not ipaddress.ip_address(n.address).is_loopback]
        if public and not self.trusted_network:
            raise ValueError(f"node address {public[0]} is beyond loopback and "
                             f"{'rpc-server' if self.backend == 'rpc' else 'Ray'} has no authentication; "
                             "set cluster.trusted_network: true if this network is private")
        return self

    @property
    def head(self) -> ClusterNode:
        return next(n for n in self.nodes if n.role == "head")

    @property
    def workers(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.role == "worker"]

    def node_for_host(self, host: str) -> ClusterNode | None:
        """The node an inventory host name (or, for --host, its address) stands for."""
        return next((n for n in self.nodes if host in (n.host, n.address)), None)
# --- install: what gets onto the host --------------------------------------------

# Debian and RPM package names and versions: no blanks, quotes or shell characters.
PackageName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]{0,99}$")]
PackageVersion = Annotated[str, BeforeValidator(_not_a_float), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+~:_-]{0,99}$")]
# An exact pin only: "name==1.2.3" (optionally with extras, "vllm[audio]==0.11.0").
Requirement = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,.-]+\])?==[A-Za-z0-9.+!_-]+$")]
Url = Annotated[str, Field(pattern=r"^(https?|file)://[A-Za-z0-9_./@+:,=%~?&-]+$")]
# A CMake cache entry: -DNAME=VALUE (no blanks; the value is shell-quoted anyway)
CmakeOption = Annotated[str, Field(pattern=r"^-D[A-Za-z_][A-Za-z0-9_]*(:[A-Z]+)?=[A-Za-z0-9_.,;/+=-]*$")]
BuildTarget = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class PackagePin(_Model):
    """A distribution package at an exact version (apt; dnf hosts are refused for now)."""

    name: PackageName
    """The package's name."""
    version: PackageVersion
    """The exact version, quoted ("2.10-3")."""
    hold: bool = True
    """Hold it at this version (apt-mark hold) so unattended upgrades cannot move it."""


class VenvEngine(_Model):
    """The engine (vLLM) in a Python venv with exact pins; rebuilt only when they change."""

    method: Literal["venv"]
    """venv: a Python venv."""
    path: AbsPath | None = None
    """The stable symlink to the venv; default /opt/provision/venvs/ENGINE."""
    requirements: list[Requirement] = Field(min_length=1)
    """Exact pins only, name==version (e.g. vllm==0.11.0)."""
    index_url: Url | None = None
    """pip's index URL, e.g. the PyTorch index of the GPU's CUDA (cu128)."""
    extra_index_urls: list[Url] = []
    """More pip index URLs."""
    python: AbsPath = "/usr/bin/python3"
    """The Python interpreter that creates the venv."""


class SourceEngine(_Model):
    """llama.cpp / ik_llama.cpp built from a pinned tarball (sha256) or git commit."""

    method: Literal["source"]
    """source: a CMake build."""
    path: AbsPath | None = None
    """The stable symlink to the build; default /opt/provision/builds/ENGINE."""
    url: Url | None = None
    """A source tarball (.tar.gz/.tgz/.tar.xz/.tar.bz2), with sha256."""
    sha256: Sha256 | None = None
    """The tarball's sha256."""
    git: Url | None = None
    """A git repository, with commit."""
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None
    """The git commit, 40 hex digits (a tag can move)."""
    subdir: RelPath | None = None
    """Where CMakeLists.txt is inside the sources."""
    cmake_options: list[CmakeOption] = []
    """Extra CMake cache entries, -DNAME=VALUE; CUDA options come from the GPUs."""
    targets: list[BuildTarget] = ["llama-server"]
    """CMake targets to build; their binaries go to the build's bin/."""
    cuda_architectures: list[Annotated[str, Field(pattern=r"^[0-9]{2,3}[a-z]?$")]] | None = None
    """CUDA architectures to build for; default: the profile's GPUs (catalog compute capability)."""
    jobs: int = Field(default=2, ge=1, le=256)
    """Parallel build jobs (cmake --build -j)."""

    @model_validator(mode="after")
    def _one_source(self) -> SourceEngine:
        if (self.url is None) == (self.git is None):
            raise ValueError("give exactly one of url (+ sha256) or git (+ commit)")
        if self.url is not None and self.sha256 is None:
            raise ValueError("a source tarball needs its sha256")
        if self.git is not None and self.commit is None:
            raise ValueError("a git source needs commit: the 40-hex commit (a tag can move)")
        return self


class ArchiveEngine(_Model):
    """A release archive (Ollama) with sha256, unpacked into a versioned dir."""

    method: Literal["archive"]
    """archive: a release archive."""
    url: Url
    """The release archive's URL."""
    sha256: Sha256
    """The archive's sha256."""
    size: Bytes = Field(gt=0)
    """The archive's exact size (a size with unit, or bytes)."""
    dest: AbsPath = "/opt/provision/ollama"
    """The stable symlink to the unpacked archive."""
    strip_components: int = Field(default=0, ge=0, le=8)
    """Leading path components to strip when unpacking (tar --strip-components)."""


class ContainerEngine(_Model):
    """The server as a Podman Quadlet container instead of a bare process."""

    method: Literal["container"]
    """container: a Podman Quadlet container."""
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")]
    """The image, pinned by digest: NAME@sha256:DIGEST (a tag can move)."""
    gpus: Literal["all", "none"] = "all"
    """all passes every NVIDIA GPU (CDI device nvidia.com/gpu=all); none passes none."""
    volumes: list[Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./@+-]*:/[A-Za-z0-9_./@+-]*(:(ro|rw|z|Z))?$")]] = []
    """More bind mounts, HOST:CONTAINER[:ro|rw|z|Z]."""
    binary: AbsPath | None = None
    """The engine binary inside the image (the run script execs it); default known for llama.cpp only."""


EngineInstall = Annotated[VenvEngine | SourceEngine | ArchiveEngine | ContainerEngine,
                          Field(discriminator="method")]


class InstallSection(_Model):
    """What apply installs besides files. Absent: nothing is installed."""

    packages: list[PackagePin] = []
    """Distribution packages at exact versions (apt), held by default."""
    engine: EngineInstall | None = None
    """How the engine gets onto the host; method must suit runtime.engine."""
    model: bool = False
    """Download model.source (hf, or files with url) to its destination."""

    @field_validator("packages")
    @classmethod
    def _unique(cls, packages: list[PackagePin]) -> list[PackagePin]:
        names = [p.name for p in packages]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"package {twice[0]!r} is listed twice")
        return packages


class Profile(_Model):
    """A machine profile: one YAML document describing a machine and the model it serves."""

    apiVersion: Literal["provision/v1"] = "provision/v1"
    """The profile format's version."""
    kind: Literal["MachineProfile"] = "MachineProfile"
    """What this document is."""
    metadata: Metadata
    """Name, description and sources."""
    hardware: Hardware
    """The machine: GPUs, RAM, memory bandwidth, CPU."""
    driver: Driver = Driver()
    """The NVIDIA driver: module flavour, version, persistence, power limit."""
    os: Os = Os()
    """Kernel and OS tuning."""
    model: ModelSection
    """The model, its quantisation, where the weights come from, context and KV cache."""
    runtime: Runtime
    """The engine and how it serves."""
    secrets: Secrets = Secrets()
    """Where secrets come from at run time; never inline."""
    service: Service = Service()
    """The systemd service that runs the server."""
    files: list[ExtraFile] = []
    """Your own templated files (the escape hatch)."""
    handlers: dict[Name, Handler] = {}
    """Your own handlers, by name: commands run when a file notifying them changes."""
    builtin_files: bool = True
    """false: install only the profile's own files, a plain file deployer (the model sections are still checked)."""
    vars: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], Any] = {}
    """Variables for the profile's own templates, as top-level names."""
    verify: Verify = Verify()
    """What verify and monitor expect."""
    cluster: Cluster | None = None
    """Several machines serving one model; hardware.gpus stays empty, each node lists its own."""
    install: InstallSection = InstallSection()
    """What apply installs besides files: packages, the engine, the model. Absent: nothing."""
    # files[].notify naming an undefined handler is checked in resolve.py, where the
    # problem can point at the name itself


BUILTIN_HANDLERS = frozenset(
    {"sysusers", "daemon-reload", "sysctl", "tmpfiles", "tuned", "initramfs", "gpu-settings", "enable-server",
     "enable-metrics", "enable-cluster", "restart-cluster", "restart-server"}
)


def field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def model_for_path(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the mapping at ``path`` (for key suggestions)."""
    current: type[BaseModel] = Profile
    for part in path:
        if isinstance(part, int):
            continue
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        found = _model_in(info.annotation)
        if found is None:
            return None
        current = found
    return current


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
