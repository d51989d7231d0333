"""The profile's ``runtime:`` section: the engine and its version, where it listens,
how it places the layers (``offload``) and the extra arguments it gets (never a secret).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag, ValidationInfo, field_validator

from provisioner.profile.field_types import Bytes, ProfileModel, Text, not_a_float


class Offload(ProfileModel):
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


class Runtime(ProfileModel):
    engine: Literal["llama.cpp", "vllm", "ollama"]
    """The inference engine: llama.cpp, vllm or ollama."""
    version: Annotated[Text, BeforeValidator(not_a_float)]
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
