"""PROFILE.lock: what a profile names loosely, resolved once and reviewed.

A profile names a Hugging Face repo at a branch or tag and the quant it wants;
``provision lock`` asks the hub (``install.hf.list_files``: the LFS metadata)
which commit that is and which files the quant's include globs select, with
each file's size and sha256, and writes them to ``NAME.lock`` beside the
profile (YAML, to be committed). ``plan`` and ``apply`` download exactly those
files from that commit and check those checksums: no placeholder, and no file
the reviewer did not see, reaches a host.

A lock belongs to the source it was made for: when the profile's repo,
revision or include (the quant, when include is left out) differ from the
lock's, plan refuses with the command that makes a new one. A profile pinned
to a 40-hex commit needs no lock (the hub lists that commit's files, cached).

An Ollama tag is locked to its manifest's digest and blobs (lock/ollama.py); with
install.model, apply puts exactly that manifest and those blobs on the host.

The engine a profile names by version, URL, ref or tag is pinned in ``engine``
(lock/engine.py: an sdist's or archive's URL, sha256 and size, a git commit, a container
digest); a fresh lock rewrites ``install.engine`` to that exact form.

Format 3 adds ``engine`` and makes ``model`` optional (a profile whose files carry their
own sha256 may lock only its engine); format 2 added ``model.ollama``; formats 1 and 2 are
still read.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from provisioner.errors import Problem, ProfileError
from provisioner.install.hf import list_files
from provisioner.install.ollama_registry import PinnedOllama
from provisioner.lock import engine as engine_lock
from provisioner.lock import ollama
from provisioner.profile.loader import LoadedProfile
from provisioner.profile.model_section import HfSource
from provisioner.profile.quant_paths import hf_include

VERSION = 3
_READS = (1, 2, 3)  # format 1 had only model.hf, as later formats write it; 2 had no engine
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# what a repo path in a lock may hold: it ends up in a run script and a download
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+@=,-]*(/[A-Za-z0-9_][A-Za-z0-9_.+@=,-]*)*$")


@dataclass(frozen=True)
class LockedFile:
    path: str  # inside the repo
    size: int
    sha256: str  # "" for a small non-LFS file: then git_blob is its check
    git_blob: str = ""


@dataclass(frozen=True)
class ModelLock:
    repo: str
    revision: str  # as the profile names it
    include: tuple[str, ...]
    commit: str  # what the revision was when locked
    files: tuple[LockedFile, ...]

    def for_source(self, hf: HfSource, include: list[str]) -> bool:
        return (self.repo, self.revision, self.include) == (hf.repo, hf.revision, tuple(include))

    def first_gguf(self) -> str | None:
        """The file llama.cpp is given: the first shard (llama.cpp finds the others beside it)."""
        ggufs = sorted(f.path for f in self.files if f.path.endswith(".gguf"))
        return ggufs[0] if ggufs else None


def lock_path(profile_path: Path) -> Path:
    return profile_path.with_name(f"{profile_path.stem}.lock")


def needs_lock(loaded: LoadedProfile) -> bool:
    """A model download from a branch or tag (an Ollama tag is always one): the files must be
    pinned by a lock."""
    source = loaded.profile.model.source
    hf = source.hf
    return loaded.profile.install.model and (source.ollama is not None or
                                             (hf is not None and not _COMMIT.match(hf.revision)))


def _bad(path: Path, why: str) -> ProfileError:
    return ProfileError(Problem(f"{path}: {why}", file=str(path),
                                hint=f"make it again: provision lock {path.with_suffix('.yaml')}"))


ModelPin = ModelLock | PinnedOllama


@dataclass(frozen=True)
class Lock:
    """PROFILE.lock: the model's pin and the engine's, each there when the profile needs it."""

    model: ModelPin | None = None
    engine: engine_lock.EngineLock | None = None


def read_lock(path: Path) -> Lock | None:
    """The lock at ``path``, or None when there is none."""
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") not in _READS:
            version = data.get("version") if isinstance(data, dict) else None
            raise _bad(path, f"lock format {version!r}, this provision reads "
                             f"{', '.join(map(str, _READS))}")
        engine = engine_lock.from_data(data["engine"]) if data.get("engine") is not None else None
        model = _read_model(path, data["model"]) if data.get("model") is not None else None
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"not a lock file provision can read ({type(exc).__name__}: {exc})") from None
    return Lock(model, engine)


def _read_model(path: Path, section: dict[str, Any]) -> ModelPin:
    if "ollama" in section:
        return ollama.from_data(section["ollama"])
    model = section["hf"]
    files = tuple(LockedFile(str(f["path"]), int(f["size"]), str(f.get("sha256", "")),
                             str(f.get("git_blob", ""))) for f in model["files"])
    lock = ModelLock(str(model["repo"]), str(model["revision"]), tuple(str(i) for i in model["include"]),
                     str(model["commit"]), files)
    if not _COMMIT.match(lock.commit):
        raise _bad(path, f"commit {lock.commit!r} is not a 40-hex commit")
    for f in files:
        parts = PurePosixPath(f.path).parts
        if (f.path.startswith("/") or ".." in parts or not _SAFE_PATH.match(f.path)
                or not (_HEX64.match(f.sha256) or f.git_blob)):
            raise _bad(path, f"file {f.path!r} has an unsafe path or no checksum")
    return lock


def write_lock(path: Path, lock: Lock, profile_name: str) -> None:
    data: dict[str, Any] = {"version": VERSION}
    if isinstance(lock.model, PinnedOllama):
        data["model"] = {"ollama": ollama.to_data(lock.model)}
    elif lock.model is not None:
        m = lock.model
        data["model"] = {"hf": {
            "repo": m.repo, "revision": m.revision, "include": list(m.include), "commit": m.commit,
            "files": [{"path": f.path, "size": f.size, **({"sha256": f.sha256} if f.sha256 else {}),
                       **({"git_blob": f.git_blob} if f.git_blob else {})} for f in m.files]}}
    if lock.engine is not None:
        data["engine"] = engine_lock.to_data(lock.engine)
    header = (f"# Written by `provision lock` for {profile_name}: the exact files plan and apply install.\n"
              "# Commit it next to the profile; `provision lock` (or plan/apply --update-lock) renews it.\n")
    temp = path.with_name(f".{path.name}.provision-tmp")
    temp.write_text(header + yaml.safe_dump(data, sort_keys=False, width=200), encoding="utf-8")
    temp.replace(path)


def model_lockable(loaded: LoadedProfile) -> bool:
    source = loaded.profile.model.source
    return source.hf is not None or source.ollama is not None


def engine_wanted(loaded: LoadedProfile) -> str | None:
    """What the profile's engine needs a lock for (lock/engine.py), or None."""
    engine = loaded.profile.install.engine
    return engine_lock.wanted(engine) if engine is not None else None


def resolve_lock(loaded: LoadedProfile, *, endpoint: str | None, token: str | None,
                 pip_python: str | None = None, only: str | None = None, previous: Lock | None = None) -> Lock:
    """Ask the hub (or the Ollama registry) what the model source is now, and the engine's
    source what the engine is (one request or download each). ``only`` ("engine", "model")
    renews that part and keeps the other as ``previous`` has it: a new vLLM pin does not
    move the model's commit."""
    key = engine_wanted(loaded)
    if not model_lockable(loaded) and key is None:
        raise ProfileError(loaded.problem(
            ("model", "source"), "nothing here for a lock to pin: the model source is "
            f"{loaded.profile.model.source.kind} and install.engine names no version, URL, ref or tag",
            "a lock pins hf and ollama sources and an engine named loosely; files carry their own sha256"))
    if only == "engine" and key is None:
        raise ProfileError(loaded.problem(("install", "engine"), "--only engine: install.engine needs no lock",
                                          "it is pinned in the profile itself (sha256, commit, @sha256:), or absent"))
    if only == "model" and not model_lockable(loaded):
        raise ProfileError(loaded.problem(("model", "source"), "--only model: the model source needs no lock",
                                          "only hf and ollama sources are locked"))
    kept = previous or Lock()
    model = kept.model if only == "engine" else (
        _resolve_model(loaded, endpoint=endpoint, token=token) if model_lockable(loaded) else None)
    engine = kept.engine if only == "model" else (_resolve_engine(loaded, pip_python) if key is not None else None)
    return Lock(model, engine)


def _resolve_engine(loaded: LoadedProfile, pip_python: str | None) -> engine_lock.EngineLock:
    from provisioner.lock.engine_resolve import resolve_engine  # noqa: PLC0415 - network clients: lock only

    assert loaded.profile.install.engine is not None
    return resolve_engine(loaded.profile.install.engine, pip_python=pip_python)


def _resolve_model(loaded: LoadedProfile, *, endpoint: str | None, token: str | None) -> ModelPin:
    if loaded.profile.model.source.ollama is not None:
        return ollama.resolve(loaded)
    hf = loaded.profile.model.source.hf
    assert hf is not None
    include = hf_include(loaded.profile)
    listing = list_files(hf.repo, hf.revision, include, endpoint=endpoint, token=token)
    if not listing["files"]:
        raise ProfileError(loaded.problem(("model", "source", "hf"),
                                          f"no file of {hf.repo}@{hf.revision} matches {include}",
                                          "check model.quant, or give hf.include globs"))
    files = tuple(LockedFile(f["path"], int(f["size"]), f["sha256"], f["git_blob"]) for f in listing["files"])
    return ModelLock(hf.repo, hf.revision, tuple(include), listing["commit"], files)


def apply_lock(loaded: LoadedProfile, lock: Lock | None, *, required: bool) -> LoadedProfile:
    """The profile as the lock pins it: the engine (lock/engine.py), and the model (hf.file
    from the lock when the profile names none; an Ollama tag's digest); ``required``: refuse a
    missing or stale lock (plan, apply), else ignore it (validate, render)."""
    problems = []
    try:
        loaded = engine_lock.apply(loaded, lock.engine if lock else None, lock_name=lock_path(loaded.path).name,
                                   required=required)
    except ProfileError as exc:
        problems += exc.problems  # and the model's, when it has one too: one run says all a lock must pin
    try:
        loaded = _apply_model(loaded, lock.model if lock else None, required=required)
    except ProfileError as exc:
        problems += exc.problems
    if problems:
        raise ProfileError(problems)
    return loaded


def _apply_model(loaded: LoadedProfile, lock: ModelPin | None, *, required: bool) -> LoadedProfile:
    if loaded.profile.model.source.ollama is not None:
        return ollama.apply(loaded, lock if isinstance(lock, PinnedOllama) else None,
                            lock_name=lock_path(loaded.path).name, required=required, needed=needs_lock(loaded))
    hf = loaded.profile.model.source.hf
    if hf is None:
        return loaded
    if isinstance(lock, PinnedOllama):
        lock = None  # a lock made for an Ollama tag says nothing about this repo
    where = lock_path(loaded.path)
    fresh = lock is not None and lock.for_source(hf, hf_include(loaded.profile))
    # a named file the lock does not pin would be loaded but never downloaded
    unpinned = fresh and lock is not None and hf.file is not None and hf.file not in {f.path for f in lock.files}
    if not fresh or unpinned:
        if required and needs_lock(loaded):
            said = ("has no lock" if lock is None else
                    f"names hf.file {hf.file}, which {where.name} does not pin" if unpinned else
                    f"changed since {where.name} was made (it locks {lock.repo}@{lock.revision} {list(lock.include)})")
            hint = (f"point hf.file at a file the quant's include selects, or leave it out, then run "
                    f"`provision lock {loaded.path}`" if unpinned else
                    f"run `provision lock {loaded.path}` (or pass --update-lock) and review the files it pins")
            raise ProfileError(loaded.problem(("model", "source", "hf"), f"the model source {said}", hint))
        return loaded
    assert lock is not None
    if hf.file is not None:
        return loaded
    first = lock.first_gguf()
    if first is None:
        if loaded.profile.runtime.engine == "llama.cpp" and loaded.profile.builtin_files:
            raise ProfileError(loaded.problem(
                ("model", "source", "hf"), f"{where.name} pins no .gguf file, and llama.cpp loads one",
                f"check model.quant or hf.include (they chose {list(lock.include)}), then run "
                f"`provision lock {loaded.path}` again"))
        return loaded
    source = loaded.profile.model.source.model_copy(update={"hf": hf.model_copy(update={"file": first})})
    model = loaded.profile.model.model_copy(update={"source": source})
    return dataclasses.replace(loaded, profile=loaded.profile.model_copy(update={"model": model}))


def profile_lock(loaded: LoadedProfile) -> Lock | None:
    """The lock beside the profile, read only when the profile has something a lock pins (an
    hf or ollama source, an engine named loosely): a stray NAME.lock beside another profile
    is not read."""
    if not model_lockable(loaded) and engine_wanted(loaded) is None:
        return None
    return read_lock(lock_path(loaded.path))


def locked(loaded: LoadedProfile) -> LoadedProfile:
    """The profile as a fresh PROFILE.lock beside it pins it (a preview: fit); a missing or
    stale lock is ignored, as validate ignores it."""
    return apply_lock(loaded, profile_lock(loaded), required=False)
