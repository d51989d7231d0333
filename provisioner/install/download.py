"""Downloads: a set of files (model shards) and release archives (Ollama), checked by checksum.

``Download`` fetches a shard set as ONE item: each file goes to ``DEST.provision-part``, or
to ``$stage/PART_NAME`` when the file names one (a directory the caller's ``stage`` sh picks:
Ollama's server deletes foreign names in its blobs/ at start), resumed after a dropped
connection, and is checked against its sha256; only when every file of the set is checked
are they renamed into place and stamped (a caller's ``guard`` sh runs right before the
first write and again right before the renames). A stamp
(``$state/downloads/KEY.ok``) holds the size and mtime the file had when its
checksum passed: the next gather sees "done" from a ``stat``, not a 100 GB rehash.

``Archive`` fetches a release tarball the same way, unpacks it into ``DEST-<12 hex
of sha256>`` (via ``.provision-new``) and switches the symlink ``DEST`` to it
atomically (``ln -sfn`` + ``mv -T``); the old version stays on disk.

Flags, checked against the tools' own docs (and ``curl --help all`` of 7.88.1,
``wget --help`` of 1.21.3, Debian 12):
- curl ``--continue-at -`` resumes from the output file's size
  (https://everything.curl.dev/usingcurl/downloads/resume); ``--header @file``
  reads headers from a file, so a token is never on a command line
  (https://raw.githubusercontent.com/curl/curl/curl-8_21_0/docs/cmdline-opts/header.md);
  ``--location`` keeps a custom Authorization header to the first host since
  7.58.0 (https://curl.se/docs/CVE-2018-1000007.html); ``--speed-limit`` +
  ``--speed-time`` abort a stalled transfer, which we then resume.
- wget only when curl is missing, and never with a header file (Wget 1.21.3
  sends a ``--header`` Authorization on to the host a redirect names: the
  hub's CDN; a test shows it) nor a file:// URL: ``--continue`` with
  ``--output-document`` (https://gitlab.com/gnuwget/wget2/-/merge_requests/85),
  ``--tries``, ``--timeout`` (https://gnu.org/software/wget/manual/html_node/Download-Options.html).
- GNU tar ``-x -f FILE -C DIR --strip-components=N`` detects gzip/xz/zstd from
  the content (Ollama ships ``ollama-linux-amd64.tar.zst`` holding bin/ and
  lib/ollama, https://docs.ollama.com/linux.md).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from provisioner.errors import ProvisionError
from provisioner.install import InstallAction, InstallChange, InstallKind
from provisioner.units import format_size

_URL = re.compile(r"^(https?|file)://[^\s\x00-\x1f\x7f]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,199}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
ATTEMPTS = 5  # per file; each attempt resumes where the last one stopped
_q = shlex.quote


def _check_path(path: str, what: str) -> None:
    if (not path.startswith("/") or path.endswith("/") or ".." in PurePosixPath(path).parts
            or any(ord(c) < 32 or ord(c) == 127 for c in path)):
        raise ProvisionError(f"{what} {path!r} is not a clean absolute file path",
                             hint="use an absolute path without '..', control characters or a trailing '/'")


def _check_url(url: str) -> None:
    if not _URL.match(url):
        raise ProvisionError(f"download URL {url!r} is not an http(s):// or file:// URL without blanks",
                             hint="percent-encode blanks; other schemes are not fetched")


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ProvisionError(f"install item name {name!r} must be one word of letters, digits and ._:@/+-")


@dataclass(frozen=True)
class RemoteFile:
    url: str
    dest: str  # absolute path on the host (without the --root prefix)
    size: int
    sha256: str  # "" when the source knows none (small non-LFS hub files): then git_blob, else size only
    git_blob: str = ""  # the git blob id (sha1 of "blob SIZE\\0" + content) the hub lists for a non-LFS file
    part_name: str = ""  # set: the partial is "$stage"/PART_NAME (Download.stage), not DEST.provision-part

    def __post_init__(self) -> None:
        _check_url(self.url)
        _check_path(self.dest, "download destination")
        if self.size < 0:
            raise ProvisionError(f"{self.dest}: size {self.size} is negative")
        if self.sha256 and not _HEX64.match(self.sha256):
            raise ProvisionError(f"{self.dest}: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if self.git_blob and not _HEX40.match(self.git_blob):
            raise ProvisionError(f"{self.dest}: git blob id {self.git_blob!r} is not 40 lowercase hex digits")
        if self.part_name and not _PART_NAME.match(self.part_name):
            raise ProvisionError(f"{self.dest}: partial file name {self.part_name!r} is not one plain file name")

    def part(self, root: str) -> str:
        """The partial file as one sh word (the staged one expands $stage)."""
        return f'"$stage"/{_q(self.part_name)}' if self.part_name else _q(root + self.dest + ".provision-part")

    @property
    def stamp_key(self) -> str:
        """Names the stamp: the same content at two paths gets two stamps."""
        return hashlib.sha256(f"{self.dest}\0{self.sha256}\0{self.git_blob}\0{self.size}".encode()).hexdigest()


# sh for probes and snippets: `dl_fstat` prints "SIZE MTIME" (ns where stat has %.9Y) for probe and stamp alike
_FSTAT = """dl_fstat() { stat -c '%s %.9Y' "$1" 2>/dev/null || stat -c '%s %Y' "$1" 2>/dev/null || echo '- -'; }"""

_HELPERS = "# shellcheck disable=SC2329\n" + _FSTAT + r"""
fail() { echo "@error $name: $*"; exit 1; }
fsize() { stat -c %s "$1" 2>/dev/null || echo 0; }
human() { awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u, " "); i = 1
    while (b >= 1024 && i < 5) { b /= 1024; i++ }
    if (i == 1) printf "%d B", b; else printf "%.1f %s", b, u[i] }'; }
# sumok FILE SIZE SHA256 GITBLOB: the file is what the source promised
sumok() {
    [ -f "$1" ] && [ "$(fsize "$1")" = "$2" ] || return 1
    if [ -n "$3" ]; then [ "$(sha256sum < "$1" | cut -c1-64)" = "$3" ]; return; fi
    if [ -n "$4" ]; then [ "$({ printf 'blob %s\000' "$2"; cat "$1"; } | sha1sum | cut -c1-40)" = "$4" ]; return; fi
    return 0  # the source gave no checksum: the size is the check (see hf.py)
}
# stamped DEST STAMP: checked earlier and untouched since (archives do not use the stamps)
# shellcheck disable=SC2329
stamped() { [ -f "$1" ] && [ -f "$2" ] && [ "$(dl_fstat "$1")" = "$(cat "$2")" ]; }
# shellcheck disable=SC2329
stamp() { { dl_fstat "$1" > "$2.tmp" && mv -f "$2.tmp" "$2"; } || fail "cannot write the stamp $2"; }
# must CMD...: run it or fail naming it (apply runs snippets as an if condition, where set -e is off)
must() { "$@" || fail "failed: $*"; }
# spaceline DEST BYTES: "DEVICE AVAIL-KiB BYTES DIR" for the filesystem DEST will be on
spaceline() {
    d=$(dirname "$1"); while [ ! -d "$d" ]; do d=$(dirname "$d"); done
    echo "$(stat -c %d "$d") $(df -Pk "$d" | awk 'NR == 2 { print $4 }') $2 $d"
}
# spacecheck: refuse before anything is written when a filesystem is short
spacecheck() {
    short=$(printf '%s\n' "$space" | awk 'NF >= 4 { d = $4; for (i = 5; i <= NF; i++) d = d " " $i
            need[$1] += $3; avail[$1] = $2 * 1024; dir[$1] = d }
        END { for (k in need) if (need[k] > avail[k]) printf "%.0f %.0f %s\n", need[k], avail[k], dir[k] }' | head -n 1)
    if [ -n "$short" ]; then
        n=${short%% *}; rest=${short#* }; a=${rest%% *}; d=${rest#* }
        fail "not enough space on the filesystem of $d: need $(human "$n"), $(human "$a") free" \
            "(short by $(human $((n - a))))"
    fi
}
# fetch URL PART SIZE DONE-BEFORE: PART holds SIZE bytes when it returns, resumed across tries
fetch() {
    if [ "$3" = 0 ]; then : > "$2"; return 0; fi
    tries=0
    while :; do
        have=$(fsize "$2")
        if [ "$have" -gt "$3" ]; then must rm -f "$2"; have=0; fi
        [ "$have" -lt "$3" ] || return 0
        tries=$((tries + 1))
        [ "$tries" -le @ATTEMPTS@ ] ||
            fail "$1: still incomplete after @ATTEMPTS@ tries ($(human "$have") of $(human "$3"))"
        [ "$tries" = 1 ] || sleep $((tries - 1))
        (
            while kill -0 $$ 2>/dev/null && sleep 5 >/dev/null 2>&1; do
                echo "@progress $name $(($4 + $(fsize "$2"))) $total"
            done
        ) &
        ticker=$!
        rc=0
        if [ "$tool" = curl ]; then
            code=$(curl --silent --show-error --fail --location --proto =http,https,file --proto-redir =http,https \
                --connect-timeout 30 --speed-limit 1024 --speed-time 60 --write-out '%{http_code}' \
                --continue-at - --output "$2" ${hflag:+"$hflag"} ${harg:+"$harg"} "$1" 2>"$tmp/err") || rc=$?
        else
            wget --quiet --continue --tries=1 --timeout=60 --output-document="$2" "$1" 2>"$tmp/err" || rc=$?
            code=000
        fi
        kill "$ticker" 2>/dev/null || true
        wait "$ticker" 2>/dev/null || true
        case "$rc:$code" in
            0:*) ;;
            22:416|33:*) must rm -f "$2" ;;  # the server will not resume this part: start it over
            22:408|22:429|22:5*) ;;
            22:*) fail "$1: HTTP $code" ;;
            *) [ "$tries" -lt @ATTEMPTS@ ] || fail "$1: $tool exit $rc: $(head -c 300 "$tmp/err")" ;;
        esac
    done
}
tool=
if command -v curl >/dev/null 2>&1; then tool=curl
elif [ "$wget_ok" = yes ] && command -v wget >/dev/null 2>&1; then tool=wget
else fail "the host has no curl@WGET@ to download with"; fi
tmp=$(mktemp -d) || fail "mktemp -d failed"
trap 'rm -rf "$tmp"' EXIT
""".replace("@ATTEMPTS@", str(ATTEMPTS))


def _prelude(name: str, total: int, header_file: str | None, urls: list[str]) -> str:
    wget_ok = header_file is None and not any(u.startswith("file:") for u in urls)
    lines = [f"name={_q(name)}", f"total={total}", f"wget_ok={'yes' if wget_ok else 'no'}"]
    # the header file's path, never its content: the token reaches curl only through the file
    lines.append(f"hflag=--header harg={_q('@' + header_file)}" if header_file else "hflag='' harg=''")
    out = "\n".join(lines) + "\n" + _HELPERS.replace("@WGET@", " or wget" if wget_ok else "")
    if header_file:
        out += f"[ -r {_q(header_file)} ] || fail {_q('cannot read the header file ' + header_file)}\n"
    return out


def _probe_file(name: str, key: str, path: str, stamp: str, part: str) -> str:
    return (f"if [ -f {_q(path)} ]; then echo \"@install {name} file.{key} $(dl_fstat {_q(path)})\"; "
            f"else echo '@install {name} file.{key} missing'; fi\n"
            f"if [ -f {part} ]; then "
            f"echo \"@install {name} part.{key} $(stat -c %s {part} 2>/dev/null || echo 0)\"; fi\n"
            f"if [ -r {stamp} ]; then echo \"@install {name} stamp.{key} $(head -c 100 {stamp} | tr -d '\\n')\"; fi\n")


def _stamp_path(key: str, kind: str = "downloads") -> str:
    return f'"$state"/{kind}/{key}.ok'


def _int(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


@dataclass(frozen=True)
class Download:
    """A set of files fetched together (the shards of one model): all or none is new."""

    name: str
    files: tuple[RemoteFile, ...]
    header_file: str | None = None  # host path of HTTP header lines (curl -H @file), e.g. the HF token
    stage: str = ""  # sh that sets $stage, the directory of the files' part_name partials (run first)

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not self.files:
            raise ProvisionError(f"{self.name}: a download needs at least one file")
        if len({f.dest for f in self.files}) != len(self.files):
            raise ProvisionError(f"{self.name}: two files download to the same path")
        if self.header_file is not None:
            _check_path(self.header_file, "header file")
        if any(f.part_name for f in self.files) and not self.stage:
            raise ProvisionError(f"{self.name}: a partial file name needs the stage sh that sets its directory")

    @property
    def kind(self) -> InstallKind:
        return "download"

    def probe(self, root: str) -> str:
        out = [_FSTAT]
        for i, f in enumerate(self.files):
            part = f'"$state"/downloads/{_q(f.part_name)}' if f.part_name else f.part(root)  # stage's usual place
            out.append(_probe_file(self.name, str(i), root + f.dest, _stamp_path(f.stamp_key), part))
        return "\n".join(out)

    def _plan(self, found: dict[str, str]) -> tuple[list[int], list[int], int]:
        """(files to fetch, full-size files to re-check, bytes already there) from the probe."""
        fetch: list[int] = []
        recheck: list[int] = []  # full size but no stamp: checksum it where it is before fetching again
        there = 0
        for i, f in enumerate(self.files):
            state = found.get(f"file.{i}", "missing")
            size = _int(state.split(" ")[0]) if state != "missing" else -1
            if size == f.size and found.get(f"stamp.{i}") == state:
                continue
            if size == f.size:
                recheck.append(i)
            else:
                fetch.append(i)
                part = _int(found.get(f"part.{i}"))
                there += part if part <= f.size else 0
        return fetch, recheck, there

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        fetch, recheck, there = self._plan(found)
        if not fetch and not recheck:
            return None
        todo = sum(self.files[i].size for i in fetch)
        parts = []
        if fetch:
            parts.append(f"{len(fetch)} file{'s' if len(fetch) != 1 else ''}, {format_size(todo)}"
                         + (f" ({format_size(there)} already there)" if there else ""))
        if recheck:
            parts.append(f"{len(recheck)} to re-check by checksum "
                         f"({format_size(sum(self.files[i].size for i in recheck))})")
        return InstallChange(
            name=self.name, kind="download", action="download", summary="; ".join(parts),
            script=self.script(root), record=self.record(), bytes=todo - there)

    def record(self) -> dict[str, Any]:
        return {"files": [{"dest": f.dest, "url": f.url, "size": f.size, "sha256": f.sha256,
                           "git_blob": f.git_blob} for f in self.files]}

    def script(self, root: str, finish: str = "", guard: str = "") -> str:
        """The apply snippet (it re-decides from the host itself: the plan may be old);
        ``finish``: sh run once every file is in place (an Ollama manifest, written last);
        ``guard``: sh run right before the first write to a destination and again right
        before the renames into place (a check that the destination dirs are still safe)."""
        total = sum(f.size for f in self.files)
        out = [f"# download {self.name}: {len(self.files)} files, {format_size(total)}",
               _prelude(self.name, total, self.header_file, [f.url for f in self.files]),
               'must mkdir -p "$state/downloads"', *([self.stage] if self.stage else []), "space=", "todo="]
        # 1. what is there already: stamped, or full-size and its checksum passes now
        for i, f in enumerate(self.files):
            dest, stamp = _q(root + f.dest), _stamp_path(f.stamp_key)
            out.append(f"if stamped {dest} {stamp}; then :\n"
                       f"elif sumok {dest} {f.size} {_q(f.sha256)} {_q(f.git_blob)}; then stamp {dest} {stamp}\n"
                       f"else todo=\"$todo {i}\"; space=\"$space\n"
                       f"$(spaceline {dest} $(({f.size} - $(fsize {f.part(root)}))))\"; fi")
        # 2. room for what is missing, on each filesystem, before writing a byte
        out += ["spacecheck", *([guard] if guard else [])]
        # 3. fetch each missing file to its .provision-part and check it
        done_before = 0
        for i, f in enumerate(self.files):
            part = f.part(root)
            out.append(f"case \" $todo \" in *\" {i} \"*)\n"
                       f"    must mkdir -p {_q(str(PurePosixPath(root + f.dest).parent))}\n"
                       f"    fetch {_q(f.url)} {part} {f.size} {done_before}\n"
                       f"    sumok {part} {f.size} {_q(f.sha256)} {_q(f.git_blob)} || "
                       f"{{ rm -f {part}; fail {_q(f'{f.dest}: checksum mismatch (wrong bytes from {f.url})')}; }}\n"
                       f"    echo \"@progress $name {done_before + f.size} $total\" ;;\nesac")
            done_before += f.size
        # 4. every file of the set is checked: put them all in place, then stamp them
        parts = " ".join(f.part(root) for f in self.files)
        out.append(f"if [ -n \"$todo\" ]; then\n    for p in {parts}; do\n"
                   "        if [ -f \"$p\" ]; then sync \"$p\" 2>/dev/null || sync; fi\n    done\nfi")
        out += [guard] if guard else []
        for i, f in enumerate(self.files):
            dest = _q(root + f.dest)
            out.append(f"case \" $todo \" in *\" {i} \"*) must mv -f {f.part(root)} {dest}; "
                       f"stamp {dest} {_stamp_path(f.stamp_key)} ;; esac")
        if finish:
            out.append(finish)
        out.append('echo "@install-ok $name"')
        return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Archive:
    """A release tarball with sha256, unpacked to DEST-<12 hex>, DEST a symlink to it."""

    name: str
    url: str
    sha256: str
    size: int
    dest: str
    strip_components: int = 0

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_url(self.url)
        _check_path(self.dest, "archive destination")
        if not _HEX64.match(self.sha256):
            raise ProvisionError(f"{self.name}: sha256 {self.sha256!r} is not 64 lowercase hex digits")
        if self.size <= 0 or not 0 <= self.strip_components <= 8:
            raise ProvisionError(f"{self.name}: size must be > 0 and strip_components 0..8")

    @property
    def kind(self) -> InstallKind:
        return "archive"

    @property
    def version_dir(self) -> str:
        """Where this archive unpacks (the symlink DEST points here, by a relative name)."""
        return f"{self.dest}-{self.sha256[:12]}"

    def probe(self, root: str) -> str:
        link = _q(root + self.dest)
        stamp = _stamp_path(self.sha256, "archives")
        return (f"if [ -L {link} ]; then echo \"@install {self.name} link $(readlink {link})\"; "
                f"elif [ -e {link} ]; then echo '@install {self.name} link not-a-symlink'; "
                f"else echo '@install {self.name} link missing'; fi\n"
                f"if [ -d {_q(root + self.version_dir)} ]; then echo '@install {self.name} dir yes'; fi\n"
                f"if [ -r {stamp} ]; then echo \"@install {self.name} stamp $(head -c 300 {stamp})\"; fi\n")

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        link = found.get("link", "missing")
        target = PurePosixPath(self.version_dir).name
        if link == "not-a-symlink":
            raise ProvisionError(f"{root + self.dest} exists and is not a symlink, so provision did not make it",
                                 hint="move it away, or choose another install dest")
        if link == target and found.get("dir") == "yes" and found.get("stamp") == self.version_dir:
            return None
        was = "" if link == "missing" else f" (was {link})"
        unpacked = found.get("dir") == "yes"  # by an earlier apply (the dir is renamed in only when whole)
        action: InstallAction = "switch" if unpacked else "install" if link == "missing" else "upgrade"
        summary = (f"link -> {self.version_dir}, already unpacked{was}" if unpacked else
                   f"{PurePosixPath(self.url).name} {format_size(self.size)} -> {self.version_dir}{was}")
        return InstallChange(name=self.name, kind="archive", action=action, summary=summary,
                             script=self.script(root), record=self.record(), bytes=0 if unpacked else self.size)

    def record(self) -> dict[str, Any]:
        return {"url": self.url, "sha256": self.sha256, "size": self.size, "dest": self.dest,
                "dir": self.version_dir}

    def script(self, root: str) -> str:
        link, final = _q(root + self.dest), _q(root + self.version_dir)
        new, part = _q(root + self.version_dir + ".provision-new"), _q(root + self.version_dir + ".provision-part")
        stamp = _stamp_path(self.sha256, "archives")
        target = _q(PurePosixPath(self.version_dir).name)
        return "\n".join([
            f"# archive {self.name}: {self.url} -> {self.version_dir}",
            _prelude(self.name, self.size, None, [self.url]),
            f"if [ -e {link} ] && [ ! -L {link} ]; then fail {_q(self.dest + ' exists and is not a symlink')}; fi",
            'must mkdir -p "$state/archives"',
            f"if [ ! -d {final} ]; then",
            f"    space=$(spaceline {final} $(({self.size} - $(fsize {part}))))",
            "    spacecheck",
            f"    must mkdir -p {_q(str(PurePosixPath(root + self.dest).parent))}",
            f"    fetch {_q(self.url)} {part} {self.size} 0",
            f"    sumok {part} {self.size} {self.sha256} '' || "
            f"{{ rm -f {part}; fail {_q(f'{self.url}: checksum mismatch')}; }}",
            f"    must rm -rf {new}",
            f"    must mkdir -p {new}",
            f"    tar -x -f {part} -C {new} --strip-components={self.strip_components} 2>\"$tmp/err\" || "
            f"{{ rm -rf {new}; fail \"cannot unpack {self.url}: $(head -c 300 \"$tmp/err\")\"; }}",
            f"    must mv -T {new} {final}",
            f"    must rm -f {part}",
            "fi",
            f"must ln -sfn {target} {link}.provision-link",
            f"must mv -T {link}.provision-link {link}",
            f"{{ printf '%s\\n' {_q(self.version_dir)} > {stamp}.tmp && mv -f {stamp}.tmp {stamp}; }} || "
            f"fail 'cannot write the stamp'",
            'echo "@install-ok $name"',
        ]) + "\n"
