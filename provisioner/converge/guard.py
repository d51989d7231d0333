"""The apply script's refusal to write through a symlink under --root.

Every folder between the root and a path the script touches, and every state file,
must be a real one: ``apply --root`` on an image tree whose ``etc`` links to
``/etc`` (an absolute link there points at this machine's own /) would otherwise
write outside the tree. The walk is the gather script's (facts.gather.GUARD_FUNCTION),
so ``plan`` reports the same link first; here it runs under the lock, before the
first write, and stops the script.
"""

from __future__ import annotations

import shlex
from typing import Any

from provisioner.facts.gather import GUARD_FUNCTION
from provisioner.install import Install

EXIT_LINKED = 9  # 8 is install's EXIT_INSTALL
STATE_FILES = ("", "/generations", "/last", "/lock", "/lock.pid", "/last.new", "/pending-handlers",
               "/pending.new")


def guards(root: str, state_dir: str, paths: list[str]) -> str:
    """sh that exits EXIT_LINKED naming the first symlinked folder or state file; nothing without a root."""
    if not root:
        return ""
    refuse = (r'echo "@error ${d#"$root"} is a symlink (to $(readlink "$d")) inside the root: '
              r'provision writes nothing through it"; exit ' + str(EXIT_LINKED))
    lines = [GUARD_FUNCTION.replace("@ON_LINK@", refuse)]
    lines += [f"guard {shlex.quote(state_dir + name)} state" for name in STATE_FILES]
    lines += [f"guard {shlex.quote(root + path)}" for path in sorted(set(paths))]
    return "\n".join(lines)


def install_paths(records: list[dict[str, Any]]) -> list[str]:
    """Where install snippets write, as their records name it (a venv's or build's ``path``
    and ``dir``, an archive's ``dest``, each downloaded file's ``dest``): their folders
    are walked like a managed file's."""
    found: list[str] = []
    for record in records:
        values = [record.get(key) for key in ("path", "dir", "dest")]
        values += [f.get("dest") for f in record.get("files", []) if isinstance(f, dict)]
        found += [v for v in values if isinstance(v, str) and v.startswith("/")]
    return found


def install_guards(root: str, installs: tuple[Install, ...]) -> str:
    """For the gather script (which defines ``guard``): report a link on the way to where an
    install item will write, so plan refuses it before apply does."""
    if not root:
        return ""
    records = [item.record() for item in installs if callable(getattr(item, "record", None))]  # type: ignore[attr-defined]
    return "\n".join(f"guard {shlex.quote(root + path)}" for path in sorted(set(install_paths(records))))
