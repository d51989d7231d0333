"""The profile's ``install:`` section: what apply installs besides files, the distribution
packages at exact versions, the engine (a venv, a source build, a release archive or a
container image, each pinned) and the model's download.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from provisioner.profile.field_types import AbsPath, Bytes, ProfileModel, RelPath, Sha256, not_a_float

# Debian and RPM package names and versions: no blanks, quotes or shell characters.
PackageName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9+.-]{0,99}$")]
PackageVersion = Annotated[str, BeforeValidator(not_a_float), Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9.+~:_-]{0,99}$")]
# The patterns a lock file is read with too (lock/engine.py, lock/wheels.py): a hand-edited
# lock is held to the profile's own rules.
# An exact pin only: "name==1.2.3" (optionally with extras, "vllm[audio]==0.11.0").
REQUIREMENT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9_,.-]+\])?==[A-Za-z0-9.+!_-]+$"
URL_PATTERN = r"^(https?|file)://[A-Za-z0-9_./@+:,=%~?&-]+$"
# A PyPI project at an exact version, no extras: "llama-cpp-python==0.3.36"
PYPI_PIN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$"
# A git branch or tag (refs/... or a bare name); `provision lock` resolves it to a commit
GIT_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/+-]{0,199}$"
PYTHON_PATTERN = r"^3\.[0-9]{1,2}$"  # major.minor
GLIBC_PATTERN = r"^2\.[0-9]{1,3}$"
Requirement = Annotated[str, Field(pattern=REQUIREMENT_PATTERN)]
Url = Annotated[str, Field(pattern=URL_PATTERN)]
PypiPin = Annotated[str, Field(pattern=PYPI_PIN_PATTERN)]
GitRef = Annotated[str, Field(pattern=GIT_REF_PATTERN)]
# A container image by tag, NAME[:TAG], or by digest, NAME@sha256:DIGEST
ImageRef = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._/-]*(:[0-9]{1,5}/[a-z0-9._/-]+)?"
                                        r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(@sha256:[0-9a-f]{64})?"
                                        r"|@sha256:[0-9a-f]{64})$")]
# A CMake cache entry: -DNAME=VALUE (no blanks; the value is shell-quoted anyway)
CmakeOption = Annotated[str, Field(pattern=r"^-D[A-Za-z_][A-Za-z0-9_]*(:[A-Z]+)?=[A-Za-z0-9_.,;/+=-]*$")]
BuildTarget = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class PackagePin(ProfileModel):
    """A distribution package at an exact version (apt; dnf hosts are refused for now)."""

    name: PackageName
    """The package's name."""
    version: PackageVersion
    """The exact version, quoted ("2.10-3")."""
    hold: bool = True
    """Hold it at this version (apt-mark hold) so unattended upgrades cannot move it."""


class WheelTarget(ProfileModel):
    """The host the lock resolves wheels for: its python3 version, glibc version (ldd --version)
    and machine (uname -m); `provision lock` needs it."""

    python: Annotated[str, BeforeValidator(not_a_float), Field(pattern=PYTHON_PATTERN)]
    """The host's python3 major.minor, quoted ("3.12"): `python3 --version` on the host."""
    glibc: Annotated[str, BeforeValidator(not_a_float), Field(pattern=GLIBC_PATTERN)]
    """The host's glibc version, quoted ("2.39"): the first line of `ldd --version` on the host."""
    machine: Literal["x86_64", "aarch64"] = "x86_64"
    """The host's machine: `uname -m` on the host."""


class VenvEngine(ProfileModel):
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
    resolve_for: WheelTarget | None = None
    """The host the lock resolves wheels for: its python3 version, glibc version (ldd --version)
    and machine (uname -m); `provision lock` needs it."""


class SourceEngine(ProfileModel):
    """llama.cpp / ik_llama.cpp built from a PyPI sdist, a tarball or a git repository, each
    pinned: by PROFILE.lock (``provision lock``) or by the profile's own sha256 / commit."""

    method: Literal["source"]
    """source: a CMake build."""
    path: AbsPath | None = None
    """The stable symlink to the build; default /opt/provision/builds/ENGINE."""
    pypi: PypiPin | None = None
    """A PyPI project's sdist at an exact version (llama-cpp-python==0.3.36 vendors llama.cpp);
    `provision lock` pins its URL and sha256 from PyPI."""
    url: Url | None = None
    """A source tarball (.tar.gz/.tgz/.tar.xz/.tar.bz2); without sha256, `provision lock` pins it."""
    sha256: Sha256 | None = None
    """The tarball's sha256 (else the lock's)."""
    git: Url | None = None
    """A git repository, with commit or ref."""
    commit: Annotated[str, Field(pattern=r"^[0-9a-f]{40}$")] | None = None
    """The git commit, 40 hex digits."""
    ref: GitRef | None = None
    """A git tag or branch instead of commit (b6500, master); `provision lock` pins its commit."""
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

    @property
    def pinned(self) -> bool:
        """Exact as written (a sha256 or a commit); else PROFILE.lock pins it."""
        return self.sha256 is not None or self.commit is not None

    @model_validator(mode="after")
    def _one_source(self) -> SourceEngine:
        if [self.pypi, self.url, self.git].count(None) != 2:
            raise ValueError("give exactly one of pypi (name==version), url or git")
        if self.sha256 is not None and self.url is None:
            raise ValueError("sha256 belongs to url")
        if self.git is not None and (self.commit is None) == (self.ref is None):
            raise ValueError("a git source needs exactly one of commit (40 hex) or ref (a tag or branch "
                             "`provision lock` pins)")
        if self.git is None and (self.commit is not None or self.ref is not None):
            raise ValueError("commit and ref belong to git")
        return self


class ArchiveEngine(ProfileModel):
    """A release archive (Ollama) with sha256, unpacked into a versioned dir."""

    method: Literal["archive"]
    """archive: a release archive."""
    url: Url
    """The release archive's URL."""
    sha256: Sha256 | None = None
    """The archive's sha256; left out, `provision lock` pins it (and its size)."""
    size: Annotated[Bytes, Field(gt=0)] | None = None
    """The archive's exact size (a size with unit, or bytes); with sha256."""
    dest: AbsPath = "/opt/provision/ollama"
    """The stable symlink to the unpacked archive."""
    strip_components: int = Field(default=0, ge=0, le=8)
    """Leading path components to strip when unpacking (tar --strip-components)."""

    @property
    def pinned(self) -> bool:
        return self.sha256 is not None

    @model_validator(mode="after")
    def _both_or_none(self) -> ArchiveEngine:
        if (self.sha256 is None) != (self.size is None):
            raise ValueError("give sha256 and size together, or neither (then `provision lock` pins both)")
        return self


class ContainerEngine(ProfileModel):
    """The server as a Podman Quadlet container instead of a bare process."""

    method: Literal["container"]
    """container: a Podman Quadlet container."""
    image: ImageRef
    """The image: NAME:TAG, which `provision lock` pins to its digest, or NAME@sha256:DIGEST."""
    gpus: Literal["all", "none"] = "all"
    """all passes every NVIDIA GPU (CDI device nvidia.com/gpu=all); none passes none."""
    volumes: list[Annotated[str, Field(pattern=r"^/[A-Za-z0-9_./@+-]*:/[A-Za-z0-9_./@+-]*(:(ro|rw|z|Z))?$")]] = []
    """More bind mounts, HOST:CONTAINER[:ro|rw|z|Z]."""
    binary: AbsPath | None = None
    """The engine binary inside the image (the run script execs it); default known for llama.cpp only."""

    @property
    def pinned(self) -> bool:
        return "@" in self.image


EngineInstall = Annotated[VenvEngine | SourceEngine | ArchiveEngine | ContainerEngine,
                          Field(discriminator="method")]


class InstallSection(ProfileModel):
    """What apply installs besides files. Absent: nothing is installed."""

    packages: list[PackagePin] = []
    """Distribution packages at exact versions (apt), held by default."""
    engine: EngineInstall | None = None
    """How the engine gets onto the host; method must suit runtime.engine."""
    model: bool = False
    """Download model.source (hf, files with url, or an Ollama tag as PROFILE.lock pins it) to its destination."""
    fabricmanager: bool | Literal["auto"] = "auto"
    """NVIDIA Fabric Manager for NVSwitch boards, at the driver's exact version, held, enabled;
    auto: where the host has NVSwitches (never under --root); true under --root: the image
    build must have installed, held and enabled it, else plan refuses. The driver's packages
    of that version are held with it."""

    @field_validator("packages")
    @classmethod
    def _unique(cls, packages: list[PackagePin]) -> list[PackagePin]:
        names = [p.name for p in packages]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"package {twice[0]!r} is listed twice")
        return packages
