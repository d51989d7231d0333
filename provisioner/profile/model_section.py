"""The profile's ``model:`` section: which model and quant, where its weights come from
(GGUF files, a Hugging Face repo, a model directory or an Ollama tag), the context and
the KV cache.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from provisioner.profile.field_types import AbsPath, ProfileModel, RelPath, Sha256, Text


class ModelFile(ProfileModel):
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


class HfSource(ProfileModel):
    repo: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    """The Hugging Face repository, owner/name."""
    revision: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")]
    """A 40-hex commit, or a branch or tag that `provision lock` pins to a commit in PROFILE.lock."""
    include: list[Text] = []
    """Glob patterns of the repository's files to use (Hugging Face allow-pattern semantics); empty: all."""
    dest: AbsPath
    """The folder on the host the files go into."""
    file: RelPath | None = None
    """For llama.cpp: the GGUF (first shard) it loads, relative to dest, e.g. Q8_0/x-00001-of-00006.gguf.
    Left out, PROFILE.lock's first shard (`provision lock`); with neither, a profile that renders a
    run script is refused (llama.cpp cannot load the folder dest)."""


class ModelSource(ProfileModel):
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
    """The build an Ollama tag must point at: the ID `ollama list` shows, or the full sha256 digest;
    `provision lock` pins it in PROFILE.lock, and a digest given here must agree with the lock."""

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


class ModelSection(ProfileModel):
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
