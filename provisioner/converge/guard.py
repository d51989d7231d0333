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

from provisioner.facts.gather import GUARD_FUNCTION

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
