"""What a build read: every file it opened, so a cached result is used only while
each of them still holds what it held then.

A Python audit hook (``sys.addaudithook``) sees every ``open`` in the process;
while a build runs under ``recording()`` the opens of that thread are noted. So a
file the loader, a template ``{% include %}`` or any later reader opens is part
of the key without anyone listing it. Files of provision itself (its code, the
catalog, templates and library profiles) are covered by ``package_fingerprint``
instead (the size and mtime of each, read in about a millisecond).

Two things an open does not show are handled here too: a path whose absence or
presence changed the result (``consulted``: the model files fit reads when they
exist), and a build that asked the network or ran a program: its answer may
change without any file changing, so it is not cached (``Recording.pure``).

The inputs of every build of the process are kept together: a template that
Jinja already holds in memory is not opened again by a second profile's build,
so each build's key lists the files every build so far has read (more checks,
never a stale hit).
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioner import __version__
from provisioner.datadir import data_dir

# Above this size a file is known by its size, mtime and inode, not its bytes: hashing a
# model shard of many GB on every plan would cost more than the build it saves.
HASHED_UP_TO = 4 * 1024 * 1024
_PACKAGE = Path(__file__).resolve().parents[1]
_CODE_SUFFIXES = (".py", ".pyc", ".so", ".pth")
_SYSTEM = ("/proc/", "/sys/", "/dev/")
_IMPURE_EVENTS = frozenset({"socket.connect", "socket.getaddrinfo", "subprocess.Popen", "os.system",
                            "os.exec", "os.posix_spawn", "os.spawn", "os.fork"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


@dataclass
class Recording:
    """The files one build opened (in order) and whether it stayed pure."""

    files: dict[str, None] = field(default_factory=dict)
    impure: str = ""  # the first event that makes the result unrepeatable (network, a program)

    @property
    def pure(self) -> bool:
        return not self.impure


_local = threading.local()
_every_build: dict[str, None] = {}  # every input of every build of this process, in order
_hook_lock = threading.Lock()
_hooked = False


@functools.cache
def _own_files() -> tuple[str, ...]:
    """Folders whose files the package fingerprint covers (not recorded one by one)."""
    return tuple(str(p) + os.sep for p in {_PACKAGE, data_dir("templates"), data_dir("profiles")})


def _note_open(args: tuple[Any, ...], recording: Recording) -> None:
    path, mode, flags = (*args, None, None, None)[:3]
    if isinstance(path, int):
        return
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return
    if mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS:
        return
    try:
        text = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    if text.endswith(_CODE_SUFFIXES) or text.startswith(_SYSTEM) or text.startswith(_own_files()):
        return
    recording.files[text] = None
    _every_build[text] = None  # at once: a build in another thread may find it in Jinja's memory


def _hook(event: str, args: tuple[Any, ...]) -> None:
    recording: Recording | None = getattr(_local, "recording", None)
    if recording is None:
        return
    if event == "open":
        _note_open(args, recording)
    elif event in _IMPURE_EVENTS and not recording.impure:
        recording.impure = event


def _install_hook() -> None:
    global _hooked  # noqa: PLW0603 - an audit hook cannot be removed: it is added once per process
    with _hook_lock:
        if not _hooked:
            _own_files()  # resolved before any recording: the hook itself must open nothing
            sys.addaudithook(_hook)
            _hooked = True


@contextmanager
def recording() -> Iterator[Recording]:
    """Note what this thread opens until the block ends (other threads are not watched)."""
    _install_hook()
    record = Recording()
    outer = getattr(_local, "recording", None)
    _local.recording = record
    try:
        yield record
    finally:
        _local.recording = outer
        record.files = {**_every_build, **record.files}
        if outer is not None:
            outer.files.update(record.files)
            outer.impure = outer.impure or record.impure


def consulted(path: str | os.PathLike[str]) -> None:
    """A path the build looked at without opening it (``is_file``): its state joins the key."""
    record: Recording | None = getattr(_local, "recording", None)
    if record is not None:
        text = os.path.abspath(os.fspath(path))
        record.files[text] = None
        _every_build[text] = None


def with_siblings(files: list[str]) -> list[str]:
    """The files and, for each, ``FOLDER/STEM.*``: the names beside it that start as it
    does. A file that appears next to a profile (``p.lock`` beside ``p.yaml``, which the
    loader would read) changes that set, though nothing opened it when the entry was made."""
    patterns = dict.fromkeys(os.path.join(os.path.dirname(path), os.path.basename(path).split(".")[0] + ".*")
                             for path in files)
    return [*files, *patterns]


def _siblings_state(pattern: str) -> str:
    folder, start = os.path.dirname(pattern), os.path.basename(pattern)[:-1]  # "STEM." of "STEM.*"
    try:
        names = "\n".join(sorted(n for n in os.listdir(folder) if n.startswith(start)))
    except OSError:
        return "missing"
    return "names " + hashlib.sha256(names.encode()).hexdigest()


def file_state(path: str) -> str:
    """What the key holds for one file: its sha256, size+mtime+inode when large, or missing;
    for ``FOLDER/STEM.*`` (``with_siblings``), the sha256 of those names."""
    if path.endswith(".*"):
        return _siblings_state(path)
    try:
        info = os.stat(path)
    except OSError:
        return "missing"
    if not stat.S_ISREG(info.st_mode):
        return "not a file"
    if info.st_size > HASHED_UP_TO:
        return f"stat {info.st_size} {info.st_mtime_ns} {info.st_ino}"
    try:
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return "unreadable"


def settled(paths: list[str], since_ns: int) -> bool:
    """None of ``paths`` was modified at or after ``since_ns`` (the build's start): a file
    written while the build read it may hold bytes other than those it read."""
    for path in paths:
        try:
            if os.stat(path).st_mtime_ns >= since_ns:
                return False
        except OSError:
            continue
    return True


def _walk(folder: Path, digest: Any) -> None:
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name == "__pycache__":
                continue
            if entry.is_dir():
                _walk(Path(entry.path), digest)
            else:
                info = entry.stat()
                digest.update(f"{entry.path} {info.st_size} {info.st_mtime_ns}\n".encode())


_fingerprint: list[str] = []


def package_fingerprint() -> str:
    """provision's version and the size and mtime of each of its files (code, catalog,
    templates, library profiles): a new version or an edited checkout is another key."""
    if not _fingerprint:
        digest = hashlib.sha256(f"{__version__} {sys.version} {_PACKAGE}\n".encode())
        for folder in sorted({_PACKAGE, data_dir("templates"), data_dir("profiles")}):
            _walk(folder, digest)
        _fingerprint.append(digest.hexdigest())
    return _fingerprint[0]
