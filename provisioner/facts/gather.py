"""Gathering: ONE POSIX sh script per host (snippets/gather.sh, with the probes a
caller picks: facts/collect.py) reads the facts, the state of every managed path
and provision's own state; pure functions parse its output.

No Python is needed on the target. Paths are written into the script
shell-quoted and come back base64-encoded, so no file name can confuse the
parser. Output lines:

    @fact NAME VALUE...
    @path B64PATH missing | file MODE OWNER GROUP SHA256 SIZE | dir MODE OWNER GROUP
          | symlink B64TARGET | other
    (file content follows a `file` line as base64 lines, closed by @end)
    @state last N | manifest-file PATH | pending NAME... | incomplete | delete PATH
    @stat MODE OWNER GROUP SIZE PATH, then @sums, sha256sum's lines, @sums-end, then @blob,
          the files' bytes in stat order as base64, @blob-end (the manifest-file among them)
    @linked B64TARGET PATH   (a symlinked folder or state file under a root: refused)
    @temp PATH               (a temp file a killed apply or rollback left)
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from provisioner.errors import ProvisionError
from provisioner.facts.probe import Probe, load_snippet, shell_inputs

STATE_DIR = "/var/lib/provision"
# Paths written into the gather script unquoted-safe: they never hold blanks or quotes.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./@+:,=-]*$")
_DIGEST = re.compile(r"[0-9a-f]{64}")

Kind = Literal["missing", "file", "dir", "symlink", "other"]
Result = TypeVar("Result")


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
    # deletions the last generation recorded but, killed before it completed, may not have done
    unfinished_deletes: tuple[str, ...] = ()
    stale_temps: tuple[str, ...] = ()  # temp files of a killed run, beside managed paths

    def read(self, probe: Probe[Result]) -> Result:
        """What ``probe`` (one that rode in this gather) read."""
        return probe.read(self.output)


# Gather bookkeeping, not facts about the machine: templates never see them.
_NOT_FACTS = frozenset({"root", "server_active", "server_enabled"})


def template_facts(facts: dict[str, str]) -> dict[str, str]:
    """The gathered values a template sees as ``facts``."""
    return {k: v for k, v in facts.items() if k not in _NOT_FACTS}


def visible(host_path: str, root: str) -> str:
    """How a host path appears in gather output: without the root prefix, if it has one."""
    return host_path[len(root):] if root and host_path.startswith(root + "/") else host_path


def gather_script(paths: list[str], root: str = "", service: str = "", state_dir: str | None = None,
                  host_paths: list[str] | None = None, extra: str = "", expect: dict[str, str] | None = None) -> str:
    """The one script that reads everything plan needs from a host.

    ``paths`` are managed paths (under ``root``); ``host_paths`` are read as they
    are (generation backups, wherever the state dir lives); ``extra`` is more sh
    (verify's live values, GPU and model probes) printing lines of its own marks.
    ``expect``: managed path -> the sha256 provision is about to write there; a file
    that already has it is stat'ed and summed but its bytes are not sent."""
    if service and not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", service):
        raise ProvisionError(f"bad service name {service!r}")
    every = [root + p for p in sorted(set(paths))] + sorted(set(host_paths or []))
    state_dir = state_dir or root + STATE_DIR
    unsafe = [p for p in [*every, state_dir] if not _SAFE_PATH.match(p)]
    if unsafe:
        raise ProvisionError(f"path {unsafe[0]!r} has characters provision does not manage",
                             hint="managed paths, roots and state dirs use letters, digits and _./@+:,=- only")
    inputs = shell_inputs(GATHER_ROOT=root, GATHER_ROOT_B64=base64.b64encode(root.encode()).decode(),
                          GATHER_STATE=state_dir, GATHER_SERVICE=service,
                          GATHER_PATHS=" ".join(every),
                          GATHER_EXPECT=" ".join(f"{digest}:{root}{path}"
                                                 for path, digest in sorted((expect or {}).items())
                                                 if _DIGEST.fullmatch(digest) and root + path in every))
    guard = GUARD_FUNCTION.replace("@ON_LINK@", _REPORT_LINK) + "\n"
    return inputs + guard + load_snippet("gather") + (extra.rstrip("\n") + "\n" if extra else "") + "echo '@done'\n"


# Under a root, every folder between the root and a path (and provision's state files) must
# be a real one: a symlink would carry a write outside the tree (an absolute link in an image
# tree points at this machine's own /). The apply script runs the same walk and refuses.
GUARD_FUNCTION = r"""guard() {
    case $1 in "$root"/*) ;; *) return 0 ;; esac
    [ -n "$root" ] || return 0
    rest=${1#"$root"/}
    d=$root
    while :; do
        case $rest in */*) ;; *) break ;; esac
        d="$d/${rest%%/*}"
        rest=${rest#*/}
        if [ -L "$d" ]; then @ON_LINK@; fi
    done
    if [ "${2:-}" = state ] && [ -L "$1" ]; then d=$1; @ON_LINK@; fi
}"""
_REPORT_LINK = r"""printf '@linked %s %s\n' "$(b64 "$(readlink "$d")")" "$d" """.rstrip()


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
    files = _FileLines()
    state = _StateLines()
    done = False
    for line in output.split("\n"):  # not splitlines(): see Probe.lines
        if files.take(line):
            pass
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
        elif state.take(line):
            pass
        elif line == "@done":
            done = True
    if not done:
        raise ProvisionError("gathering stopped before the end",
                             hint="the target's shell failed; run with a POSIX sh, stat, sha256sum, base64")
    paths.update(files.states())
    manifest = state.manifest_of(paths.pop(state.manifest_file, None) if state.manifest_file else None)
    root = _b64(facts.get("root", "")) if facts.get("root") else ""
    if state.linked:
        path, target = sorted(state.linked.items())[0]
        raise ProvisionError(f"{path} is a symlink (to {target}) inside the root {root}: provision writes "
                             "nothing through a symlinked folder or state file under --root",
                             hint="an absolute link in an image tree points at this machine's own /; "
                             "replace the link with a real folder, or give --root the tree it points to")
    paths = {visible(path, root): kind for path, kind in paths.items()}
    return Gathered(Facts(facts), paths, state.last, manifest, state.pending, output,
                    tuple(state.deletes) if state.incomplete else (), tuple(sorted(state.temps)))


class _FileLines:
    """The regular files of a gather output: @stat lines, the @sums block (sha256sum's
    lines), @send lines and the @blob of the sent files' bytes, in stat order."""

    def __init__(self) -> None:
        self.stats: list[tuple[str, int, str, str, int]] = []  # path, mode, owner, group, size
        self.sums: dict[str, str] = {}
        self.sent: set[str] = set()  # the files in the blob (the others had the expected digest)
        self.blob: list[str] = []
        self.block = ""  # "@sums" or "@blob" while inside one

    def take(self, line: str) -> bool:
        """Read ``line`` if it is one of these; False leaves it to the caller."""
        if self.block:
            if line == self.block + "-end":
                self.block = ""
            elif self.block == "@blob":
                self.blob.append(line)
            else:  # sha256sum's "DIGEST  PATH" (" *PATH" in binary mode)
                digest, _, path = line.partition(" ")
                self.sums[path.lstrip(" *")] = digest
        elif line in ("@sums", "@blob"):
            self.block = line
        elif line.startswith("@send "):
            self.sent.add(line.removeprefix("@send "))
        elif line.startswith("@stat "):
            _, mode_text, user, group_name, size_text, file_path = line.split(" ", 5)
            self.stats.append((file_path, int(mode_text, 8), user, group_name, int(size_text)))
        else:
            return False
        return True

    def states(self) -> dict[str, PathState]:
        data = base64.b64decode("".join(self.blob)) if self.blob else b""
        offset = 0
        found: dict[str, PathState] = {}
        for path, mode, owner, group, size in self.stats:
            content = None
            if path in self.sent:
                content = data[offset:offset + size] if len(data) >= offset + size else None
                offset += size
            found[path] = PathState("file", mode, owner, group, self.sums.get(path), size, content)
        return found


class _StateLines:
    """The @state, @linked and @temp lines of a gather output, as they are read."""

    def __init__(self) -> None:
        self.last = 0
        self.manifest_file = ""  # the last generation's manifest.json: read among the files
        self.pending: tuple[str, ...] = ()
        self.linked: dict[str, str] = {}
        self.temps: set[str] = set()
        self.deletes: list[str] = []
        self.incomplete = False

    def take(self, line: str) -> bool:
        """Read ``line`` if it is one of these; False leaves it to the caller."""
        if line.startswith("@state last "):
            self.last = last_number(line.removeprefix("@state last "))
        elif line.startswith("@state manifest-file "):
            self.manifest_file = line.removeprefix("@state manifest-file ")
        elif line.startswith("@state pending"):
            self.pending = tuple(line.split()[2:])
        elif line == "@state incomplete":
            self.incomplete = True
        elif line.startswith("@state delete "):
            self.deletes.append(line.removeprefix("@state delete "))
        elif line.startswith("@linked "):
            _, target, path = line.split(" ", 2)
            self.linked.setdefault(path, _b64(target))
        elif line.startswith("@temp "):
            self.temps.add(line.removeprefix("@temp "))
        else:
            return False
        return True

    def manifest_of(self, read: PathState | None) -> dict[str, Any] | None:
        """The last generation's manifest from its file as the gather read it (None: none)."""
        if not self.manifest_file:
            return None
        return manifest_content(read.content if read is not None else None, self.last)


def last_number(text: str) -> int:
    """The state's ``last`` file: a generation number, or a clear error naming the file."""
    text = text.strip()
    if not text.isdigit() or len(text) > 9:  # written by a rename, so never empty after a kill
        raise ProvisionError(f"provision's state file 'last' holds {text[:40]!r}, not a generation number",
                             hint="it was changed by hand or the disk is damaged; write the number of "
                             "the newest folder under generations/ into it (or 0)")
    return int(text)


def checked_manifest(data: str, last: int) -> dict[str, Any]:
    """Generation ``last``'s manifest.json given in base64, or a clear error naming it."""
    try:
        content: bytes | None = base64.b64decode(data, validate=True)
    except binascii.Error:
        content = None
    return manifest_content(content, last)


def manifest_content(data: bytes | None, last: int) -> dict[str, Any]:
    """Generation ``last``'s manifest.json (None: unreadable), or a clear error naming it."""
    try:
        manifest = json.loads(data) if data is not None else None
    except ValueError:
        manifest = None
    changes = manifest.get("changes", []) if isinstance(manifest, dict) else None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict) \
            or not isinstance(changes, list) or not all(isinstance(c, dict) and isinstance(c.get("path"), str)
                                                        for c in changes):
        raise ProvisionError(f"provision's state file generations/{last}/manifest.json is damaged "
                             "(not a JSON object with files)",
                             hint="restore it from a backup, or move generations/{last} away and write "
                             "the previous generation's number into 'last'".replace("{last}", str(last)))
    return manifest
