"""Where the bundled templates and library profiles are.

In a wheel they sit inside the package (``provisioner/_data/``); in a source
checkout (editable install, tests) they are the top-level folders.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def data_dir(name: str) -> Path:
    """``templates`` or ``profiles``."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled folder {name!r} not found next to {_PACKAGE}")


def library_profiles() -> dict[str, Path]:
    """Library profile name -> file."""
    return {p.stem: p for p in sorted(data_dir("profiles").glob("*.yaml"))}


def cache_dir() -> Path:
    """The controller's cache: resolved Hub listings, model shapes, the llama-server build."""
    return Path(os.environ.get("PROVISION_CACHE") or Path.home() / ".cache" / "provision")
