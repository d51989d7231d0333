"""The machine profile: the top-level ``Profile`` and the small sections (metadata,
driver, OS, secrets, service, files, handlers, verify). The larger sections have modules
of their own (hardware_section, model_section, runtime_section, cluster_section,
install_section), all built on field_types.

Only structure and single-field rules live here. Rules that need the catalog
(is this GPU known, does the context exceed the model's maximum) live in
``resolve.py`` so that the schema stays a plain description of the format.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, WithJsonSchema, field_validator, model_validator

from provisioner.profile.cluster_section import Cluster
from provisioner.profile.field_types import (
    CONTROL_CHARS,
    SAFE_PATH,
    SIZE_JSON,
    DestPath,
    EnvName,
    Mode,
    Name,
    ProfileModel,
    RelPath,
    Text,
    UnixName,
    no_control,
    not_a_float,
)
from provisioner.profile.hardware_section import Hardware
from provisioner.profile.install_section import InstallSection
from provisioner.profile.model_section import ModelSection
from provisioner.profile.runtime_section import Runtime
from provisioner.profile.thresholds import threshold_names
from provisioner.units import parse_size


class Metadata(ProfileModel):
    name: Name
    """The profile's name: file names, unit descriptions and the library use it."""
    description: Text = ""
    """One line saying what the profile is for."""
    sources: list[Annotated[str, Field(pattern=r"^https?://\S+$")]] = []
    """URLs that back the profile's numbers (model card, vendor page, measurement)."""


class Driver(ProfileModel):
    kernel_module: Literal["open", "proprietary"] = "open"
    """NVIDIA kernel module flavour (open or proprietary); checked against what each GPU supports."""
    version: Annotated[str, BeforeValidator(not_a_float), Field(pattern=r"^[0-9]+(\.[0-9]+){0,2}$")] | None = None
    """The NVIDIA driver version, quoted ("580.95.05"); checked against each GPU's minimum."""
    persistence: bool = True
    """Turn on NVIDIA persistence mode at boot (nvidia-smi --persistence-mode=1)."""
    power_limit_w: int | None = Field(default=None, ge=50, le=2000)
    """GPU power limit in watts set at boot (nvidia-smi --power-limit); checked against the GPU's range."""


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
    no_control(value)
    if not _SYSCTL_TEXT.match(value):
        raise ValueError(f"sysctl value {value!r} may only contain letters, digits, spaces and _.:/- "
                         "(at most 256 characters)")
    return value


class Hugepages(ProfileModel):
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


SysctlKey = Annotated[str, Field(pattern=r"^[a-z0-9_]+([./][a-z0-9_-]+)+$")]
SysctlValue = Annotated[int | str, BeforeValidator(_sysctl_value)]


class Os(ProfileModel):
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


def _secret_file(value: str) -> str:
    """Like AbsPath, but an error never repeats the value: a secret pasted here by mistake."""
    if not value.startswith("/") or CONTROL_CHARS.search(value) or not SAFE_PATH.match(value) \
            or ".." in value.split("/"):
        raise ValueError("from_file must be an absolute path of letters, digits and _./@+:,=- "
                         "(the value given is not repeated: it may be the secret itself)")
    return value


class SecretRef(ProfileModel):
    """Where a secret comes from at run time; the value never enters a profile."""

    from_env: EnvName | None = None
    """An environment variable, set in /etc/provision/SERVICE/secrets.env (0600, yours to write)."""
    from_file: Annotated[str, AfterValidator(_secret_file)] | None = None
    """A file on the host (an absolute path), passed to the server as a systemd credential."""
    generate: bool = False
    """api_key only: a random key in /etc/provision/SERVICE/api-key (0600), made once on the machine
    itself (by a live or SSH apply; in an image, by each machine at its first boot), never
    overwritten, never printed."""

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


class Secrets(ProfileModel):
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


class Service(ProfileModel):
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


class ExtraFile(ProfileModel):
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


class Handler(ProfileModel):
    command: Text = Field(min_length=1, max_length=4096)
    """The shell command run once when a file notifying it changed (after the built-in handlers)."""


class Verify(ProfileModel):
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


class Profile(ProfileModel):
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
