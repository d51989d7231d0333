"""The engine part of PROFILE.lock: what ``install.engine`` names loosely, pinned.

A profile may name its engine by version or by a name that can move; ``provision lock``
resolves it once (lock/engine_resolve.py) and the lock records exactly what that is:

- ``source`` with ``pypi: NAME==VERSION``: the sdist's URL, sha256 and size, as the
  project's page of PyPI's simple index lists them (PEP 691, sizes per PEP 700);
- ``source`` or ``archive`` with a ``url`` and no sha256: the sha256 and size of the file the
  URL served when the lock was made (apply checks both, so a changed file stops the install);
- ``source`` with ``git`` and a ``ref`` (a tag or branch): the commit it points at;
- ``container`` with ``NAME:TAG``: the registry's digest for the tag (the index of a
  multi-platform image, so each host still pulls its own platform);
- ``venv``: every wheel of the closure pip resolves for ``resolve_for`` (lock/wheels.py),
  which apply installs by URL with ``--require-hashes --no-deps``: a venv always needs a
  lock, since ``==`` pins only the top of its dependencies;

A lock belongs to what the profile names: when the pin, URL, ref, image or requirements
differ from what the lock was made for, plan refuses with the command that makes a new one.
A fresh lock rewrites the profile's engine to the pinned form (url + sha256 + size, commit,
NAME@sha256:DIGEST), so render, plan, apply and export all see one exact engine. A profile
that pins its engine itself (sha256, commit, digest) needs no lock for it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from provisioner.errors import ProfileError
from provisioner.lock.wheels import PinnedVenv
from provisioner.lock.wheels import from_data as venv_from_data
from provisioner.lock.wheels import to_data as venv_to_data
from provisioner.profile.install_section import (
    GIT_REF_PATTERN,
    PYPI_PIN_PATTERN,
    URL_PATTERN,
    ArchiveEngine,
    ContainerEngine,
    SourceEngine,
    VenvEngine,
)
from provisioner.profile.loader import LoadedProfile

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# what the profile's fields allow, for a hand-edited lock: a locked URL reaches a shell script
# (quoted) and the terminal
_URL = re.compile(URL_PATTERN)
_PYPI_FOR = re.compile("^pypi:" + PYPI_PIN_PATTERN.removeprefix("^"))
_GIT_REF = re.compile(GIT_REF_PATTERN)


@dataclass(frozen=True)
class PinnedFile:
    """A source tarball or release archive: ``wanted`` is what the profile names (``pypi:NAME==V``
    or the URL itself), ``url`` where the file is, with its sha256 and size."""

    wanted: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class PinnedGit:
    git: str
    ref: str
    commit: str


@dataclass(frozen=True)
class PinnedImage:
    image: str  # NAME:TAG as the profile names it
    digest: str  # sha256:<64 hex>

    @property
    def pinned(self) -> str:
        """NAME@sha256:DIGEST: Podman refuses a reference with both a tag and a digest
        (containers/image: "Docker references with both a tag and digest are currently not
        supported"), so the tag goes."""
        return f"{image_name(self.image)}@{self.digest}"


EngineLock = PinnedFile | PinnedGit | PinnedImage | PinnedVenv
Engine = VenvEngine | SourceEngine | ArchiveEngine | ContainerEngine


def image_name(image: str) -> str:
    """NAME of NAME:TAG (a registry's port is a ':' before the last '/')."""
    last = image.rfind("/")
    colon = image.rfind(":")
    return image[:colon] if colon > last else image


def wanted(engine: Engine) -> str | None:
    """What the lock must have been made for, or None when the profile pins the engine itself."""
    if isinstance(engine, VenvEngine):
        return "venv"
    if engine.pinned:
        return None
    if isinstance(engine, SourceEngine):
        return (f"pypi:{engine.pypi}" if engine.pypi is not None else
                f"git:{engine.git}#{engine.ref}" if engine.git is not None else engine.url)
    if isinstance(engine, ArchiveEngine):
        return engine.url
    return f"image:{engine.image}"


def made_for(lock: EngineLock) -> str:
    """The same key, read from a lock."""
    if isinstance(lock, PinnedFile):
        return lock.wanted
    if isinstance(lock, PinnedGit):
        return f"git:{lock.git}#{lock.ref}"
    if isinstance(lock, PinnedImage):
        return f"image:{lock.image}"
    return "venv"


def pinned_for(lock: EngineLock) -> str:
    """What the lock was made for, in words."""
    if isinstance(lock, PinnedVenv):
        return (f"{' '.join(lock.requirements)} for Python {lock.python}, glibc {lock.glibc}, {lock.machine}"
                + (f", from {lock.index_url}" if lock.index_url else ""))
    return made_for(lock)


def fresh_for(engine: Engine, lock: EngineLock | None) -> bool:
    key = wanted(engine)
    if key is None or lock is None or made_for(lock) != key:
        return False
    return not isinstance(engine, VenvEngine) or (isinstance(lock, PinnedVenv) and lock.for_engine(engine))


def pinned_engine(engine: Engine, lock: EngineLock) -> Engine:
    """The profile's engine as a fresh lock pins it."""
    if isinstance(lock, PinnedFile) and isinstance(engine, SourceEngine):
        return engine.model_copy(update={"pypi": None, "url": lock.url, "sha256": lock.sha256})
    if isinstance(lock, PinnedFile) and isinstance(engine, ArchiveEngine):
        return engine.model_copy(update={"sha256": lock.sha256, "size": lock.size})
    if isinstance(lock, PinnedGit) and isinstance(engine, SourceEngine):
        return engine.model_copy(update={"commit": lock.commit})
    if isinstance(lock, PinnedImage) and isinstance(engine, ContainerEngine):
        return engine.model_copy(update={"image": lock.pinned})
    return engine  # a venv: its wheels go to the install item (install_items takes the lock)


def apply(loaded: LoadedProfile, lock: EngineLock | None, *, lock_name: str, required: bool) -> LoadedProfile:
    """The profile with its engine pinned by a fresh lock; ``required`` (plan, apply): refuse
    an engine that needs a lock and has no fresh one."""
    engine = loaded.profile.install.engine
    if engine is None or wanted(engine) is None:
        return loaded
    if not fresh_for(engine, lock):
        if required:
            said = ("has no lock" if lock is None else
                    f"changed since {lock_name} was made (it pins {pinned_for(lock)})")
            raise ProfileError(loaded.problem(
                ("install", "engine"), f"install.engine ({describe(engine)}) {said}",
                f"run `provision lock {loaded.path}` (--only engine keeps the model's pin; or pass "
                "--update-lock) and review what it pins"))
        return loaded
    assert lock is not None
    install = loaded.profile.install.model_copy(update={"engine": pinned_engine(engine, lock)})
    return dataclasses.replace(loaded, profile=loaded.profile.model_copy(update={"install": install}))


def describe(engine: Engine) -> str:
    """The engine as the profile names it, for messages."""
    if isinstance(engine, SourceEngine):
        return engine.pypi or engine.url or f"{engine.git}@{engine.ref or engine.commit}"
    if isinstance(engine, ArchiveEngine):
        return engine.url
    if isinstance(engine, ContainerEngine):
        return engine.image
    return " ".join(sorted(engine.requirements))


def to_data(lock: EngineLock) -> dict[str, Any]:
    if isinstance(lock, PinnedFile):
        return {"file": {"for": lock.wanted, "url": lock.url, "sha256": lock.sha256, "size": lock.size}}
    if isinstance(lock, PinnedGit):
        return {"git": {"repository": lock.git, "ref": lock.ref, "commit": lock.commit}}
    if isinstance(lock, PinnedImage):
        return {"image": {"name": lock.image, "digest": lock.digest}}
    return {"venv": venv_to_data(lock)}


def from_data(data: Any) -> EngineLock:
    """The lock's ``engine`` section; ValueError when it does not hold together."""
    if not isinstance(data, dict) or len(data) != 1:
        raise ValueError("engine must hold exactly one of file, git, image, venv")
    [(kind, section)] = data.items()
    if not isinstance(section, dict):
        raise ValueError(f"engine.{kind} is not a mapping")
    if kind == "file":
        pinned = PinnedFile(str(section["for"]), str(section["url"]), str(section["sha256"]), int(section["size"]))
        if not (_URL.match(pinned.wanted) or _PYPI_FOR.match(pinned.wanted)):
            raise ValueError(f"engine.file 'for' {pinned.wanted[:80]!r} is neither a URL nor pypi:NAME==VERSION")
        if not _URL.match(pinned.url) or not _HEX64.match(pinned.sha256) or pinned.size <= 0:
            raise ValueError(f"engine.file {pinned.url!r}: an unsafe URL, a sha256 that is not 64 hex, or no size")
        if not pinned.wanted.startswith("pypi:") and pinned.url != pinned.wanted:
            # a URL the profile names is hashed where it is: a lock that downloads elsewhere was edited
            raise ValueError(f"engine.file was made for {pinned.wanted!r} but downloads {pinned.url!r}")
        return pinned
    if kind == "git":
        git = PinnedGit(str(section["repository"]), str(section["ref"]), str(section["commit"]))
        if not _URL.match(git.git) or not _COMMIT.match(git.commit) or not _GIT_REF.match(git.ref):
            raise ValueError(f"engine.git {git.git[:80]!r}: an unsafe URL or ref, or a commit that is not 40 hex")
        return git
    if kind == "image":
        image = PinnedImage(str(section["name"]), str(section["digest"]))
        for reference in (image.image, image.pinned):  # the profile's own rule for an image
            ContainerEngine(method="container", image=reference)
        if "@" in image.image:
            raise ValueError(f"engine.image {image.image[:80]!r} is already pinned by digest")
        return image
    if kind == "venv":
        return venv_from_data(section)
    raise ValueError(f"engine.{kind} is not a kind of engine lock (file, git, image, venv)")
