"""Gathering: ONE POSIX sh script per host reads the facts, the state of every
managed path and provision's own state; pure functions parse its output.

No Python is needed on the target. Paths are written into the script
shell-quoted and come back base64-encoded, so no file name can confuse the
parser. Output lines:

    @fact NAME VALUE...
    @path B64PATH missing | file MODE OWNER GROUP SHA256 SIZE | dir MODE OWNER GROUP
          | symlink B64TARGET | other
    (file content follows a `file` line as base64 lines, closed by @end)
    @state last N | manifest B64JSON | pending NAME...
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Literal

from provisioner.errors import ProvisionError

STATE_DIR = "/var/lib/provision"
# Paths written into the gather script unquoted-safe: they never hold blanks or quotes.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./@+:,=-]*$")

Kind = Literal["missing", "file", "dir", "symlink", "other"]


@dataclass(frozen=True)
class PathState:
    kind: Kind
    mode: int | None = None
    owner: str | None = None
    group: str | None = None
    sha256: str | None = None
    size: int | None = None
    content: bytes | None = None  # None when too large to fetch
    link_target: str | None = None


@dataclass(frozen=True)
class Facts:
    values: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.values.get(name)


@dataclass(frozen=True)
class Gathered:
    facts: Facts
    paths: dict[str, PathState]
    last_generation: int
    manifest: dict[str, Any] | None  # the last generation's manifest
    pending_handlers: tuple[str, ...]
    output: str = ""  # the raw output, for the parsers of extra probes


# Gather bookkeeping, not facts about the machine: templates never see them.
_NOT_FACTS = frozenset({"root", "server_active", "server_enabled"})


def template_facts(facts: dict[str, str]) -> dict[str, str]:
    """The gathered values a template sees as ``facts``."""
    return {k: v for k, v in facts.items() if k not in _NOT_FACTS}


def visible(host_path: str, root: str) -> str:
    """How a host path appears in gather output: without the root prefix, if it has one."""
    return host_path[len(root):] if root and host_path.startswith(root + "/") else host_path


def gather_script(paths: list[str], root: str = "", service: str = "", state_dir: str | None = None,
                  host_paths: list[str] | None = None, extra: str = "") -> str:
    """The one script that reads everything plan needs from a host.

    ``paths`` are managed paths (under ``root``); ``host_paths`` are read as they
    are (generation backups, wherever the state dir lives); ``extra`` is more sh
    (verify's live values, GPU and model probes) printing lines of its own marks."""
    if service and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", service):
        raise ProvisionError(f"bad service name {service!r}")
    every = [root + p for p in sorted(set(paths))] + sorted(set(host_paths or []))
    unsafe = [p for p in every if not _SAFE_PATH.match(p)]
    if unsafe:
        raise ProvisionError(f"path {unsafe[0]!r} has characters provision does not manage",
                             hint="managed paths, roots and state dirs use letters, digits and _./@+:,=- only")
    quoted = " ".join(every)
    return (_GATHER.replace("@ROOT@", shlex.quote(root)).replace("@PATHS@", quoted)
            .replace("@STATE@", shlex.quote(state_dir or root + STATE_DIR))
            .replace("@SERVICE@", service).replace("@EXTRA@\n", extra.rstrip("\n") + "\n" if extra else ""))


_GATHER = r"""set -u
LC_ALL=C
export LC_ALL
root=@ROOT@
state=@STATE@
fact() { printf '@fact %s %s\n' "$1" "$2"; }
b64() { printf '%s' "$1" | base64 | tr -d '\n'; }
fact mem_total_kb "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo 2>/dev/null)"
fact cpus "$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 0)"
fact kernel "$(uname -r)"
fact arch "$(uname -m)"
if [ -r /etc/os-release ]; then
    fact distro "$(. /etc/os-release && printf '%s %s' "${ID:-unknown}" "${VERSION_ID:-}")"
fi
if command -v systemctl >/dev/null 2>&1; then
    fact systemd "$(systemctl --version 2>/dev/null | awk 'NR==1 {print $2}')"
fi
if [ -d /run/systemd/system ]; then fact init systemd; else fact init other; fi
if command -v getenforce >/dev/null 2>&1; then fact selinux "$(getenforce 2>/dev/null)"; else fact selinux absent; fi
if [ -r /proc/driver/nvidia/version ]; then
    fact nvidia_driver "$(sed -n 's/.*Kernel Module[^0-9]*\([0-9][0-9.]*\).*/\1/p' \
        /proc/driver/nvidia/version | head -n 1)"
    if grep -q 'Open Kernel Module' /proc/driver/nvidia/version; then
        fact nvidia_module open
    else
        fact nvidia_module proprietary
    fi
else
    fact nvidia_driver none
fi
fact root "$(b64 "$root")"
files=""
emit() {
    # Classify one path. Regular files are only collected here and read below in
    # one stat, one sha256sum and one cat for all of them: forks are the cost.
    p=$1
    if [ -L "$p" ]; then
        printf '@path symlink %s %s\n' "$(b64 "$(readlink "$p")")" "$p"
    elif [ -f "$p" ]; then
        files="$files $p"
    elif [ -d "$p" ]; then
        printf '@path dir - %s\n' "$p"
    elif [ -e "$p" ]; then
        printf '@path other - %s\n' "$p"
    else
        printf '@path missing - %s\n' "$p"
    fi
}
for p in @PATHS@; do
    emit "$p"
done
if [ -r "$state/last" ]; then
    last=$(cat "$state/last")
    printf '@state last %s\n' "$last"
    gen="$state/generations/$last"
    if [ -r "$gen/manifest.json" ]; then
        printf '@state manifest %s\n' "$(base64 < "$gen/manifest.json" | tr -d '\n')"
    fi
    if [ -r "$gen/paths" ]; then
        # the files the last generation installed: a profile that dropped one deletes it
        while IFS= read -r rel; do
            if [ -n "$rel" ]; then emit "$root$rel"; fi
        done < "$gen/paths"
    fi
else
    echo '@state last 0'
fi
if [ -r "$state/pending-handlers" ]; then
    printf '@state pending %s\n' "$(tr '\n' ' ' < "$state/pending-handlers")"
fi
if [ -n "$files" ]; then
    # shellcheck disable=SC2086 # the paths hold no blanks (provision checks them)
    set -- $files
    stat -c '@stat %a %U %G %s %n' "$@"
    sha256sum "$@" | sed 's/^/@sum /'
    echo '@blob'
    cat "$@" | base64
    echo '@blob-end'
fi
if [ -z "$root" ] && [ -n "@SERVICE@" ] && [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "@SERVICE@.service"; then fact server_active yes; else fact server_active no; fi
    if systemctl is-enabled --quiet "@SERVICE@.service"; then fact server_enabled yes; else fact server_enabled no; fi
else
    fact server_active no
fi
@EXTRA@
echo '@done'
"""


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProvisionError(f"gather output is garbled: {exc}",
                             hint="is the target's shell POSIX with base64 and sha256sum?") from None


def parse_gather(output: str) -> Gathered:
    """Pure parser of the gather script's output."""
    facts: dict[str, str] = {}
    paths: dict[str, PathState] = {}
    stats: list[tuple[str, int, str, str, int]] = []  # path, mode, owner, group, size: in cat order
    sums: dict[str, str] = {}
    blob: list[str] = []
    last = 0
    manifest: dict[str, Any] | None = None
    pending: tuple[str, ...] = ()
    done = False
    in_blob = False
    for line in output.splitlines():
        if in_blob:
            if line == "@blob-end":
                in_blob = False
            else:
                blob.append(line)
        elif line.startswith("@fact "):
            _, name, *rest = line.split(" ", 2)
            facts[name] = rest[0] if rest else ""
        elif line.startswith("@path "):
            _, kind, extra, path = line.split(" ", 3)
            if kind == "symlink":
                paths[path] = PathState("symlink", link_target=_b64(extra))
            elif kind in ("missing", "other", "dir"):
                paths[path] = PathState(kind)  # type: ignore[arg-type]
            else:
                raise ProvisionError(f"gather output has an unknown path kind {kind!r}")
        elif line.startswith("@stat "):
            _, mode_text, user, group_name, size_text, file_path = line.split(" ", 5)
            stats.append((file_path, int(mode_text, 8), user, group_name, int(size_text)))
        elif line.startswith("@sum "):
            _, digest, path = line.split(" ", 2)
            sums[path.lstrip(" *")] = digest
        elif line == "@blob":
            in_blob = True
        elif line.startswith("@state last "):
            last = int(line.split()[2] or 0)
        elif line.startswith("@state manifest "):
            manifest = json.loads(_b64(line.split()[2]))
        elif line.startswith("@state pending"):
            pending = tuple(line.split()[2:])
        elif line == "@done":
            done = True
    if not done:
        raise ProvisionError("gathering stopped before the end",
                             hint="the target's shell failed; run with a POSIX sh, stat, sha256sum, base64")
    data = base64.b64decode("".join(blob)) if blob else b""
    offset = 0
    for path, mode, owner, group, size in stats:
        content = data[offset:offset + size] if len(data) >= offset + size else None
        offset += size
        paths[path] = PathState("file", mode, owner, group, sums.get(path), size, content)
    root = _b64(facts.get("root", "")) if facts.get("root") else ""
    paths = {visible(path, root): state for path, state in paths.items()}
    return Gathered(Facts(facts), paths, last, manifest, pending, output)
