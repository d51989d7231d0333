"""The machine profile: pydantic models, frozen, unknown keys refused.

Only structure and single-field rules live here. Rules that need the catalog
(is this GPU known, does the context exceed the model's maximum) live in
``checks.py`` so that this module stays a plain description of the format.
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


Text = Annotated[str, AfterValidator(_no_control)]
Bytes = Annotated[int, BeforeValidator(parse_size)]
AbsPath = Annotated[str, AfterValidator(_no_control), AfterValidator(_abs_path)]
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
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False)

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
    description: Text = ""
    sources: list[Annotated[str, Field(pattern=r"^https?://\S+$")]] = []


class GpuEntry(_Model):
    model: Text
    count: int = Field(default=1, ge=1, le=16)


class Memory(_Model):
    """RAM for the roofline: a type and channel count, or a measured bandwidth."""

    type: Annotated[str, Field(pattern=r"^(ddr4|ddr5|lpddr5x?|hbm[0-9e]*)-[0-9]{3,5}$")] | None = None
    channels: int | None = Field(default=None, ge=1, le=24)
    bandwidth_gb_s: float | None = Field(default=None, gt=0, le=20000)

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
    numa_nodes: int = Field(default=1, ge=1, le=64)


class Hardware(_Model):
    gpus: list[GpuEntry] = []
    ram: Bytes
    memory: Memory
    cpu: Cpu

    @property
    def gpu_count(self) -> int:
        return sum(g.count for g in self.gpus)


class Driver(_Model):
    kernel_module: Literal["open", "proprietary"] = "open"
    version: Annotated[str, BeforeValidator(_not_a_float), Field(pattern=r"^[0-9]+(\.[0-9]+){0,2}$")] | None = None
    persistence: bool = True
    power_limit_w: int | None = Field(default=None, ge=50, le=2000)


class Hugepages(_Model):
    size: Literal["2MiB", "1GiB"] = "2MiB"
    count: int = Field(default=0, ge=0, le=10_000_000)

    @property
    def size_bytes(self) -> int:
        return parse_size(self.size)

    @property
    def total_bytes(self) -> int:
        return self.size_bytes * self.count


SysctlValue = Annotated[int | str, BeforeValidator(_sysctl_value)]


class Os(_Model):
    tuning: Literal["sysctl", "tuned"] = "sysctl"
    tuned_base: Annotated[str, Field(pattern=r"^[a-z0-9-]+$")] = "throughput-performance"
    sysctl: dict[SysctlKey, SysctlValue] = {}
    transparent_hugepages: Literal["always", "madvise", "never"] = "madvise"
    hugepages: Hugepages = Hugepages()
    memlock: Annotated[Literal["unlimited"] | int, BeforeValidator(_memlock)] = "unlimited"
    swap: Literal["keep", "avoid"] = "avoid"
    cpu_governor: Literal["performance", "schedutil", "ondemand", "powersave"] | None = None


class ModelFile(_Model):
    path: AbsPath
    bytes: int = Field(gt=0)
    sha256: Sha256
    # where install.model downloads it from (https, or a local mirror)
    url: Annotated[str, Field(pattern=r"^(https?|file)://[A-Za-z0-9_./@+:,=%~?&-]+$")] | None = None


class HfSource(_Model):
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    revision: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")]
    include: list[Text] = []
    dest: AbsPath
    # llama.cpp loads one file: the GGUF (first shard) inside dest, e.g. Q8_0/x-00001-of-00006.gguf
    file: RelPath | None = None


class ModelSource(_Model):
    """Exactly one of: GGUF files (shards), a Hugging Face repo at a pinned
    revision, a vLLM model directory, or an Ollama tag."""

    files: list[ModelFile] | None = None
    hf: HfSource | None = None
    directory: AbsPath | None = None
    ollama: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9._-]+)?$")] | None = None
    # the build an Ollama tag must point at: the ID `ollama list` shows, or the full sha256 digest
    ollama_digest: Annotated[str, Field(pattern=r"^(sha256:)?[0-9a-f]{12,64}$")] | None = None

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
    quant: Text
    source: ModelSource
    context: int = Field(ge=256, le=10_000_000)
    kv_cache: KvType = "f16"
    kv_cache_v: KvType | None = None  # defaults to kv_cache
    mode: Literal["thinking", "non-thinking"] = "non-thinking"

    @property
    def kv_cache_k(self) -> str:
        return self.kv_cache

    @property
    def kv_cache_value(self) -> str:
        return self.kv_cache_v or self.kv_cache


class Offload(_Model):
    """Explicit placement; ``auto`` (the default) lets fit choose."""

    gpu_layers: int | None = Field(default=None, ge=0, le=1000)
    cpu_moe_layers: int | None = Field(default=None, ge=0, le=1000)
    override_tensors: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.*+?()\[\]|\\^$-]+=[A-Za-z0-9_]+$")]] = []
    cpu_offload: Bytes | None = None  # vLLM --cpu-offload-gb


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
    version: Annotated[Text, BeforeValidator(_not_a_float)]
    port: int = Field(default=8080, ge=1, le=65535)
    expose: bool = False  # before bind: bind's check reads it
    bind: Text = "127.0.0.1"
    parallel: int = Field(default=1, ge=1, le=256)
    offload: OffloadChoice = "auto"
    threads: int | None = Field(default=None, ge=1, le=1024)
    flash_attention: Literal["auto", "on", "off"] = "on"
    gpu_memory_utilization: float | None = Field(default=None, gt=0.1, le=0.99)
    extra_args: list[ExtraArg] = []

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
    from_file: Annotated[str, AfterValidator(_secret_file)] | None = None

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
        if (self.from_env is None) == (self.from_file is None):
            raise ValueError("give exactly one of from_env or from_file (never the secret itself)")
        return self


class Secrets(_Model):
    api_key: SecretRef | None = None
    hf_token: SecretRef | None = None


class Service(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = "llm-server"
    user: UnixName = "llm"
    group: UnixName | None = None
    restart: Literal["no", "on-failure", "always"] = "on-failure"
    start_timeout_s: int = Field(default=1800, ge=10, le=86400)


class ExtraFile(_Model):
    template: RelPath
    dest: DestPath
    mode: Mode = "0644"
    owner: UnixName = "root"
    group: UnixName = "root"
    notify: list[Name] = []


class Handler(_Model):
    command: Text = Field(min_length=1, max_length=4096)


class Verify(_Model):
    min_tokens_per_s: float | None = Field(default=None, gt=0)
    context_probe: bool = True
    determinism: bool = True
    # install a service + timer that writes Prometheus metrics for node_exporter's textfile collector
    monitor: bool = False
    # `provision monitor` thresholds replacing the defaults, e.g. {swap_fail_mbs: 5, gpu_temp_warn_c: 80}
    thresholds: dict[Annotated[str, Field(pattern=r"^[a-z0-9_]+$")], float] = {}

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
    host: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]  # the inventory host's name
    address: Text
    role: Literal["head", "worker"]
    gpus: list[GpuEntry] = Field(min_length=1)

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
    gbit_s: float = Field(gt=0, le=3200)


class Cluster(_Model):
    """One model served by several machines: vLLM on Ray (tensor parallel inside a
    node, pipeline parallel across nodes) or llama.cpp RPC (workers lend their GPUs
    to the head's llama-server)."""

    backend: Literal["ray", "rpc"]
    nodes: list[ClusterNode] = Field(min_length=2, max_length=64)
    interconnect: Interconnect
    # Ray's GCS port on the head (ray start --port) or each worker's rpc-server port
    port: int | None = Field(default=None, ge=1024, le=65535)
    # The RPC server and Ray's ports have no authentication: listening beyond loopback
    # must be asked for, like runtime.expose.
    trusted_network: bool = False

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
# --- install: what gets onto the host (issue 8) --------------------------------

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
    """A distribution package at an exact version (apt, dnf where apt is absent)."""

    name: PackageName
    version: PackageVersion
    # apt-mark hold / dnf versionlock: unattended upgrades cannot move it
    hold: bool = True


class VenvEngine(_Model):
    """The engine (vLLM) in a Python venv with exact pins; rebuilt only when they change."""

    method: Literal["venv"]
    path: AbsPath | None = None  # the stable symlink; default /opt/provision/venvs/<engine>
    requirements: list[Requirement] = Field(min_length=1)
    index_url: Url | None = None  # e.g. the PyTorch index of the GPU's CUDA (cu128)
    extra_index_urls: list[Url] = []
    python: AbsPath = "/usr/bin/python3"


class SourceEngine(_Model):
    """llama.cpp / ik_llama.cpp built from a pinned tarball (sha256) or git commit."""

    method: Literal["source"]
    path: AbsPath | None = None  # the stable symlink; default /opt/provision/builds/<engine>
    url: Url | None = None  # a tarball (.tar.gz/.tgz/.tar.xz/.tar.bz2)
    sha256: Sha256 | None = None
    git: Url | None = None
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None
    subdir: RelPath | None = None  # where CMakeLists.txt is inside the sources
    cmake_options: list[CmakeOption] = []
    targets: list[BuildTarget] = ["llama-server"]
    # CUDA architectures; default: from the profile's GPUs (catalog compute capability)
    cuda_architectures: list[Annotated[str, Field(pattern=r"^[0-9]{2,3}[a-z]?$")]] | None = None
    jobs: int = Field(default=2, ge=1, le=256)

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
    url: Url
    sha256: Sha256
    size: Bytes = Field(gt=0)
    dest: AbsPath = "/opt/provision/ollama"
    strip_components: int = Field(default=0, ge=0, le=8)


class ContainerEngine(_Model):
    """The server as a Podman Quadlet container instead of a bare process."""

    method: Literal["container"]
    # pinned by digest: a tag can move under the same name
    image: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")]
    gpus: Literal["all", "none"] = "all"  # NVIDIA CDI device nvidia.com/gpu=all
    volumes: list[Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./@+-]*:/[A-Za-z0-9_./@+-]*(:(ro|rw|z|Z))?$")]] = []
    # the engine binary inside the image (the run script execs it); default known for llama.cpp only
    binary: AbsPath | None = None


EngineInstall = Annotated[VenvEngine | SourceEngine | ArchiveEngine | ContainerEngine,
                          Field(discriminator="method")]


class InstallSection(_Model):
    """What apply installs besides files. Absent: nothing is installed."""

    packages: list[PackagePin] = []
    engine: EngineInstall | None = None
    model: bool = False  # download model.source (hf, or files with url + sha256) to its dest

    @field_validator("packages")
    @classmethod
    def _unique(cls, packages: list[PackagePin]) -> list[PackagePin]:
        names = [p.name for p in packages]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"package {twice[0]!r} is listed twice")
        return packages


class Profile(_Model):
    apiVersion: Literal["provision/v1"] = "provision/v1"
    kind: Literal["MachineProfile"] = "MachineProfile"
    metadata: Metadata
    hardware: Hardware
    driver: Driver = Driver()
    os: Os = Os()
    model: ModelSection
    runtime: Runtime
    secrets: Secrets = Secrets()
    service: Service = Service()
    files: list[ExtraFile] = []
    handlers: dict[Name, Handler] = {}
    # false: install only the profile's own `files:` (provision as a plain,
    # transactional file deployer; the model sections are still checked).
    builtin_files: bool = True
    # Variables for the profile's own templates (files:), as top-level names.
    vars: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], Any] = {}
    verify: Verify = Verify()
    # several machines serving one model; hardware.gpus stays empty, each node lists its own
    cluster: Cluster | None = None
    install: InstallSection = InstallSection()
    # files[].notify naming an undefined handler is checked in resolve.py, where the
    # problem can point at the name itself


BUILTIN_HANDLERS = frozenset(
    {"daemon-reload", "sysctl", "tmpfiles", "tuned", "initramfs", "gpu-settings", "enable-server",
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
