"""A Python venv with exact pins (vLLM and its torch), switched by a symlink.

A venv is not relocatable (its scripts' shebangs hold its path), so it is
built in place in a versioned dir named by the hash of its inputs,
``PATH-<12 hex>``, and the stable ``PATH`` is a symlink switched atomically
(``ln -s`` to a temp name, ``mv -T``). The run script uses the stable path. The
stamp file is written last inside the versioned dir: a dir without it is a
build that died and is started over. The previous dir stays for rollback.

pip flags as ``pip install --help`` of pip 23.0.1 (Debian 12's python3-pip)
lists them: ``--no-input``, ``--disable-pip-version-check``, ``--no-cache-dir``,
``--index-url``, ``--extra-index-url``; ``pip freeze`` prints ``name==version``.

With a lock's ``wheels`` (lock/wheels.py resolved the whole closure on the controller)
the build first checks that the host is the one the lock was resolved for, then
installs exactly those files: a requirements file of ``NAME @ URL --hash=sha256:HEX``
lines with ``--require-hashes --no-deps --only-binary=:all: --no-index``, so pip
neither resolves nor consults an index, and a file that does not hash right stops the
build. ``pip freeze`` shows such installs as ``NAME @ URL``; verify reads versions
from ``pip list --format=freeze`` instead (``name==version`` for every package).
"""

from __future__ import annotations

import abc
import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from provisioner.errors import ProvisionError
from provisioner.facts.check import Check
from provisioner.install import InstallChange, InstallKind

STAMP = ".provision-stamp"
LOCKED_REQUIREMENTS = ".provision-requirements.txt"
# Run by the venv's python with the lock's python, glibc and machine: prints what the host
# has, exits 1 unless it is that python, a glibc at least that new, and that machine.
HOST_CHECK = """import platform, sys
want_python, want_glibc, want_machine = sys.argv[1:4]
python = "%d.%d" % sys.version_info[:2]
libc, glibc = platform.libc_ver()
machine = platform.machine()
print("Python %s, %s, %s" % (python, "glibc " + glibc if libc == "glibc" else "no glibc", machine))
def version(text): return tuple(int(part) for part in text.split("."))
sys.exit(0 if python == want_python and libc == "glibc" and version(glibc) >= version(want_glibc)
         and machine == want_machine else 1)
"""


def q(text: str) -> str:
    return shlex.quote(text)


def inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:12]


def probe_versioned(name: str, link: str, want: str, root: str) -> str:
    """sh: where the stable link points, that target's stamp, and whether ``want`` is built."""
    n, lk, w = q(name), q(root + link), q(root + want)
    return (f"if [ -L {lk} ]; then printf '@install %s link %s\\n' {n} \"$(readlink {lk})\"; "
            f"elif [ -e {lk} ]; then printf '@install %s link not-a-symlink\\n' {n}; fi\n"
            f"if [ -L {lk} ] && [ -r {lk}/{STAMP} ]; then\n"
            f"    printf '@install %s current %s\\n' {n} \"$(sed -n 's/^summary=//p' {lk}/{STAMP} | head -n 1)\"\n"
            f"fi\n"
            f"if [ -r {w}/{STAMP} ]; then printf '@install %s built %s\\n' {n} "
            f"\"$(sed -n 's/^hash=//p' {w}/{STAMP} | head -n 1)\"; fi")


def switch_link(link: str, target: str) -> str:
    """sh: point ``$root``+link at target (a dir beside it) atomically. The link holds the
    target's bare name: it resolves the same inside an image tree and from outside it."""
    lk = q(link)
    return (f"mkdir -p \"$(dirname \"$root\"{lk})\"\n"
            f"ln -sfn {q(PurePosixPath(target).name)} \"$root\"{q(link + '.provision-new')}\n"
            f"mv -T \"$root\"{q(link + '.provision-new')} \"$root\"{lk}")


def stamp_text(digest: str, summary: str, inputs: dict[str, Any]) -> str:
    return f"hash={digest}\nsummary={summary}\ninputs={json.dumps(inputs, sort_keys=True)}\n"


def write_stamp(directory: str, text: str) -> str:
    """sh: the stamp written last, through a temp name: it exists only for a finished dir."""
    d = q(directory)
    return (f"printf '%s' {q(text)} > \"$root\"{d}/{STAMP}.new\n"
            f"sync \"$root\"{d}/{STAMP}.new 2>/dev/null || true\n"
            f"mv -f \"$root\"{d}/{STAMP}.new \"$root\"{d}/{STAMP}")


def versioned_change(item: Any, found: dict[str, str], root: str, *, kind: InstallKind, directory: str,
                     digest: str, build: str, nbytes: int | None = None) -> InstallChange | None:
    """Shared by venv and build: nothing, a switch back to a built dir, or a build and a switch."""
    current = found.get("current", "")
    record = item.record()
    if found.get("link") == PurePosixPath(directory).name and found.get("built") == digest:
        return None
    if found.get("link") == "not-a-symlink":
        raise ProvisionError(f"{item.name}: {item.path} exists and is not a symlink",
                             hint="provision manages it as a link to a versioned dir: move it away")
    change = f"{current} -> {item.summary}" if current and current != item.summary else item.summary
    if found.get("built") == digest:
        return InstallChange(item.name, kind, "switch", f"{change} (switch to the built {directory})",
                             switch_link(item.path, directory), record, notify=("restart-server",))
    action: Any = "build" if kind == "build" else "install"
    pending = bool(root) and kind == "venv"
    summary = f"{change} into {directory}" + (" (pending: a venv is built on the host itself, "
                                              "not under --root)" if pending else "")
    return InstallChange(item.name, kind, action, summary, build + "\n" + switch_link(item.path, directory),
                         record, bytes=nbytes, notify=("restart-server",), pending=pending)


class VersionedDir(abc.ABC):
    """An install into ``PATH-<hash of its inputs>`` behind the stable link ``PATH``
    (venvs, builds): what the two share once each says its inputs and build script."""

    path: str

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @property
    @abc.abstractmethod
    def kind(self) -> InstallKind: ...

    @property
    @abc.abstractmethod
    def inputs(self) -> dict[str, Any]: ...

    @property
    @abc.abstractmethod
    def summary(self) -> str: ...

    @abc.abstractmethod
    def build_script(self) -> str: ...

    @property
    def digest(self) -> str:
        return inputs_hash(self.inputs)

    @property
    def directory(self) -> str:
        return f"{self.path}-{self.digest}"

    def probe(self, root: str) -> str:
        return probe_versioned(self.name, self.path, self.directory, root)

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": self.path, "dir": self.directory, "hash": self.digest,
                "summary": self.summary}

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        return versioned_change(self, found, root, kind=self.kind, directory=self.directory,
                                digest=self.digest, build=self.build_script())


@dataclass(frozen=True)
class Venv(VersionedDir):
    path: str  # the stable link, e.g. /opt/provision/venvs/vllm
    requirements: tuple[str, ...]
    python: str = "/usr/bin/python3"
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    label: str = "venv"
    # a lock's whole closure, (name, version, url, sha256) each; empty: pip resolves on the host
    wheels: tuple[tuple[str, str, str, str], ...] = ()
    # the host the lock resolved for: (python major.minor, glibc, machine)
    target: tuple[str, str, str] | None = None

    @property
    def name(self) -> str:
        return f"venv:{self.label}"

    @property
    def kind(self) -> InstallKind:
        return "venv"

    @property
    def inputs(self) -> dict[str, Any]:
        inputs: dict[str, Any] = {"python": self.python, "requirements": sorted(self.requirements),
                                  "index_url": self.index_url, "extra_index_urls": list(self.extra_index_urls)}
        if self.wheels:  # a new lock is a new venv
            inputs.update(wheels=[list(w) for w in self.wheels], target=list(self.target or ()))
        return inputs

    @property
    def summary(self) -> str:
        return " ".join(sorted(self.requirements))

    def verify_probe(self, root: str) -> str:
        """verify: what pip says is installed in the linked venv (one ``pin.NAME VERSION`` line each)."""
        python = q(root + self.path + "/bin/python")
        awk = "'NF == 2 { print \"@install \" n \" pin.\" tolower($1) \" \" $2 }'"
        listing = "list --format=freeze" if self.wheels else "freeze"
        return (f"if [ -x {python} ]; then {python} -m pip {listing} --disable-pip-version-check 2>/dev/null | "
                f"awk -F'==' -v n={q(self.name)} {awk}; fi")

    def verify_checks(self, found: dict[str, str]) -> list[Any]:
        out = []
        pins = ([f"{name}=={version}" for name, version, _, _ in sorted(self.wheels)] if self.wheels
                else sorted(self.requirements))
        for requirement in pins:
            name, version = requirement.split("==", 1)
            key = "pin." + re.sub(r"[-_.]+", "-", name.split("[", 1)[0]).lower()
            seen = found.get(key) or next((v for k, v in found.items()
                                           if re.sub(r"[-_.]+", "-", k) == key), None)
            out.append(Check(f"install.{self.name}.{name}", "pass" if seen == version else "fail",
                             f"{name} {seen or 'not installed'}", version,
                             None if seen == version else "the venv was changed by hand: provision apply "
                             "rebuilds it only when the profile changes; remove its stamp to force it"))
        return out

    def build_script(self) -> str:
        d = '"$root"' + q(self.directory)
        pip = [f"{d}/bin/python", "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
               "--no-cache-dir"]
        if self.wheels:
            pip += ["--require-hashes", "--no-deps", "--only-binary=:all:", "--no-index", "-r",
                    f"{d}/{LOCKED_REQUIREMENTS}"]
        else:
            if self.index_url:
                pip += ["--index-url", q(self.index_url)]
            for url in self.extra_index_urls:
                pip += ["--extra-index-url", q(url)]
            pip += [q(r) for r in sorted(self.requirements)]
        log = f"{d}/{'.provision-build.log'}"
        return "\n".join([
            f"rm -rf {d}  # no stamp: a build that died, start over",
            f"mkdir -p \"$(dirname {d})\"",
            f"if ! {q(self.python)} -m venv {d} >/dev/null 2>&1; then",
            f"    echo \"@error {self.name}: {self.python} -m venv failed (Debian: apt-get install python3-venv)\"",
            f"    rm -rf {d}; exit 1",
            "fi",
            *(self._locked_steps(d) if self.wheels else []),
            f"if ! {' '.join(pip)} > {log} 2>&1; then",
            f"    cp {log} \"$root\"{q(self.directory + '.failed.log')} 2>/dev/null || true",
            f"    echo \"@error {self.name}: pip install failed: $(grep -E 'ERROR' {log} | head -n 1) "
            f"(log: {self.directory}.failed.log)\"",
            f"    rm -rf {d}; exit 1",
            "fi",
            f"{d}/bin/python -m pip freeze --disable-pip-version-check > {d}/.provision-freeze.txt",
            write_stamp(self.directory, stamp_text(self.digest, self.summary, self.inputs)),
        ])

    def _locked_steps(self, d: str) -> list[str]:
        """sh: refuse a host other than the lock's, then write the hash-pinned requirements file."""
        if self.target is None:
            raise ProvisionError(f"{self.name}: locked wheels without the host they were resolved for",
                                 hint="make a new lock: provision lock")
        python, glibc, machine = self.target
        lines = "".join(f"{name} @ {url} --hash=sha256:{sha256}\n" for name, _, url, sha256 in sorted(self.wheels))
        wanted = f"Python {python}, glibc >= {glibc}, {machine}"
        return [
            f"if ! host=$({d}/bin/python -c {q(HOST_CHECK)} {q(python)} {q(glibc)} {q(machine)}); then",
            f"    echo \"@error {self.name}: the lock resolved wheels for {wanted}; this host has $host "
            f"(hint: set install.engine.resolve_for to this host and run provision lock)\"",
            f"    rm -rf {d}; exit 1",
            "fi",
            f"printf '%s' {q(lines)} > {d}/{LOCKED_REQUIREMENTS}",
        ]
