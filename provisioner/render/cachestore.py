"""The build cache on disk: where it lives, how an entry is written (whole or not at
all) and read (a damaged one is no entry), and the JSON form of its values.

Entries are JSON, not pickle: reading one can only rebuild provision's own frozen
dataclasses (``render.resources`` and the install items), never run code.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import importlib
import json
import os
import threading
from pathlib import Path
from typing import Any

FORMAT = 2  # bumped when the layout of an entry changes (2: Summary.secrets)
KEEP = 400  # entries kept per folder: a few profiles x hosts' facts x nodes, many times over


def cache_root() -> Path | None:
    """``$PROVISION_CACHE``, else ``$XDG_CACHE_HOME/provision``, else ``~/.cache/provision``
    (the folder the Hugging Face listings and the test llama-server share). None when
    that would mean creating the home folder itself (HOME set to a folder that is not there)."""
    if os.environ.get("PROVISION_CACHE"):
        return Path(os.environ["PROVISION_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "provision"
    home = Path.home()
    return home / ".cache" / "provision" if home.is_dir() else None


def builds_dir() -> Path | None:
    """Where built profiles are kept (None: nowhere, nothing is cached)."""
    root = cache_root()
    return root / "builds" if root is not None else None


def read_entry(path: Path) -> dict[str, Any] | None:
    """The entry at ``path``, or None when it is missing, damaged or of another format."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    return data


def write_entry(path: Path, data: dict[str, Any]) -> None:
    """Write to a temp file beside it and rename: a reader sees the old entry or the new,
    two writers race harmlessly (the last rename wins). A cache that cannot be written
    (read-only home, full disk) only costs the next run its time."""
    text = json.dumps({"format": FORMAT, **data}, separators=(",", ":"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        handle = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            os.replace(temp, path)
        except BaseException:
            os.unlink(temp)
            raise
    except OSError:
        return


def prune(folder: Path, keep: int = KEEP) -> None:
    """Drop all but the ``keep`` newest entries of ``folder`` and of each folder in it
    (renders, inventories). Run after a build was stored (a miss), never on a hit: a hit
    only reads."""
    try:
        places = [folder, *(Path(e.path) for e in os.scandir(folder) if e.is_dir())]
    except OSError:
        return
    for place in places:
        try:
            entries = [(e.stat().st_mtime_ns, e.path) for e in os.scandir(place) if e.is_file()]
        except OSError:
            continue
        for _, path in sorted(entries, reverse=True)[keep:]:
            with contextlib.suppress(OSError):
                os.unlink(path)


# --------------------------------------------------------------------------- values <-> JSON

class NotCacheable(TypeError):
    """A value the cache has no JSON form for: the result is simply not cached."""


def _frozen_dataclass(kind: Any) -> bool:
    params = getattr(kind, "__dataclass_params__", None)
    return isinstance(kind, type) and dataclasses.is_dataclass(kind) and bool(params and params.frozen)


def encode(value: Any) -> Any:
    """Plain JSON for a value made of frozen dataclasses of provision, tuples, bytes, dicts."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return {"t": [encode(v) for v in value]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise NotCacheable("a mapping with keys other than text")
        return {"d": {k: encode(v) for k, v in value.items()}}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        kind = type(value)
        if not kind.__module__.startswith("provisioner.") or not _frozen_dataclass(kind):
            raise NotCacheable(f"{kind.__qualname__} is not a frozen dataclass of provision")
        fields = dataclasses.fields(value)
        if not all(f.init for f in fields):
            raise NotCacheable(f"{kind.__qualname__} has fields set outside __init__")
        return {"c": f"{kind.__module__}:{kind.__qualname__}",
                "f": {f.name: encode(getattr(value, f.name)) for f in fields}}
    raise NotCacheable(f"no cache form for {type(value).__name__}")


def decode(data: Any) -> Any:
    """The inverse of ``encode``; only frozen dataclasses of provision's own modules come back."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "b" in data:
        return base64.b64decode(data["b"])
    if "t" in data:
        return tuple(decode(v) for v in data["t"])
    if "d" in data:
        return {k: decode(v) for k, v in data["d"].items()}
    module, _, name = str(data["c"]).partition(":")
    if not module.startswith("provisioner."):
        raise ValueError(f"cache entry names {module}, not a module of provision")
    kind: Any = getattr(importlib.import_module(module), name)
    if not _frozen_dataclass(kind):
        raise ValueError(f"cache entry names {name}, not a frozen dataclass")
    return kind(**{k: decode(v) for k, v in data["f"].items()})
