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

Format 2 adds ``model.ollama``; a format 1 lock (``model.hf`` only, the same fields)
is still read.
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
from provisioner.lock import ollama
from provisioner.profile.loader import LoadedProfile
from provisioner.profile.model_section import HfSource
from provisioner.profile.quant_paths import hf_include

VERSION = 2
_READS = (1, 2)  # format 1 had only model.hf, as format 2 writes it
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


Lock = ModelLock | PinnedOllama


def read_lock(path: Path) -> Lock | None:
    """The lock at ``path``, or None when there is none."""
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("version") not in _READS:
            raise _bad(path, f"lock format {data.get('version')!r}, this provision reads "
                             f"{' and '.join(map(str, _READS))}")
        if "ollama" in data["model"]:
            return ollama.from_data(data["model"]["ollama"])
        model = data["model"]["hf"]
        files = tuple(LockedFile(str(f["path"]), int(f["size"]), str(f.get("sha256", "")),
                                 str(f.get("git_blob", ""))) for f in model["files"])
        lock = ModelLock(str(model["repo"]), str(model["revision"]), tuple(str(i) for i in model["include"]),
                         str(model["commit"]), files)
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise _bad(path, f"not a lock file provision can read ({type(exc).__name__}: {exc})") from None
    if not _COMMIT.match(lock.commit):
        raise _bad(path, f"commit {lock.commit!r} is not a 40-hex commit")
    for f in files:
        parts = PurePosixPath(f.path).parts
        if (f.path.startswith("/") or ".." in parts or not _SAFE_PATH.match(f.path)
                or not (_HEX64.match(f.sha256) or f.git_blob)):
            raise _bad(path, f"file {f.path!r} has an unsafe path or no checksum")
    return lock


def write_lock(path: Path, lock: Lock, profile_name: str) -> None:
    data: dict[str, Any] = {"version": VERSION, "model": (
        {"ollama": ollama.to_data(lock)} if isinstance(lock, PinnedOllama) else {"hf": {
            "repo": lock.repo, "revision": lock.revision, "include": list(lock.include), "commit": lock.commit,
            "files": [{"path": f.path, "size": f.size, **({"sha256": f.sha256} if f.sha256 else {}),
                       **({"git_blob": f.git_blob} if f.git_blob else {})} for f in lock.files]}})}
    header = (f"# Written by `provision lock` for {profile_name}: the exact files plan and apply install.\n"
              "# Commit it next to the profile; `provision lock` (or plan/apply --update-lock) renews it.\n")
    temp = path.with_name(f".{path.name}.provision-tmp")
    temp.write_text(header + yaml.safe_dump(data, sort_keys=False, width=200), encoding="utf-8")
    temp.replace(path)


def resolve_lock(loaded: LoadedProfile, *, endpoint: str | None, token: str | None) -> Lock:
    """Ask the hub (or the Ollama registry) what the profile's source is now (one request)."""
    if loaded.profile.model.source.ollama is not None:
        return ollama.resolve(loaded)
    hf = loaded.profile.model.source.hf
    if hf is None:
        raise ProfileError(loaded.problem(("model", "source"), "only hf and ollama model sources are locked",
                                          "files carry their own sha256; a model directory is placed by other means"))
    include = hf_include(loaded.profile)
    listing = list_files(hf.repo, hf.revision, include, endpoint=endpoint, token=token)
    if not listing["files"]:
        raise ProfileError(loaded.problem(("model", "source", "hf"),
                                          f"no file of {hf.repo}@{hf.revision} matches {include}",
                                          "check model.quant, or give hf.include globs"))
    files = tuple(LockedFile(f["path"], int(f["size"]), f["sha256"], f["git_blob"]) for f in listing["files"])
    return ModelLock(hf.repo, hf.revision, tuple(include), listing["commit"], files)


def apply_lock(loaded: LoadedProfile, lock: Lock | None, *, required: bool) -> LoadedProfile:
    """The profile as the lock pins it (hf.file from the lock when the profile names none; an
    Ollama tag's digest); ``required``: refuse a missing or stale lock (plan, apply), else ignore
    it (validate, render)."""
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
    """The lock beside the profile, read only for the sources a lock pins (hf, ollama): a
    stray NAME.lock beside a files or directory profile is not read."""
    source = loaded.profile.model.source
    return read_lock(lock_path(loaded.path)) if source.hf is not None or source.ollama is not None else None


def locked(loaded: LoadedProfile) -> LoadedProfile:
    """The profile as a fresh PROFILE.lock beside it pins it (a preview: fit); a missing or
    stale lock is ignored, as validate ignores it."""
    return apply_lock(loaded, profile_lock(loaded), required=False)
