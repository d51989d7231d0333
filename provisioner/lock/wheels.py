"""A venv's whole dependency closure, resolved once on the controller and hash-locked.

A venv engine pins only its top-level requirements (``vllm==0.11.0``); left to the
host, pip would pick every transitive dependency at apply time, so two applies a week
apart could install different code. ``provision lock`` resolves the closure here,
with the controller's own pip, for the host the profile names in ``resolve_for``
(python3 major.minor, glibc, machine), and records every wheel's name, version, URL
and sha256. Apply then installs exactly those files with ``--require-hashes``.

The resolve is ``pip install --dry-run --ignore-installed --report FILE`` (both options
since pip 22.2; the report's format is version "1" and stable since pip 23.0:
https://pip.pypa.io/en/stable/reference/installation-report/ ) with
``--only-binary=:all:`` and the target's ``--python-version``, ``--implementation cp``
and ``--platform`` tags (pip accepts --platform many times, and takes these only with
``--target``: an empty temp dir). Only wheels: a host building an sdist would run code
the lock never saw.

Two things pip does not do for a foreign target, and this module does instead:

- ``--platform manylinux_2_39_x86_64`` is taken literally: pip's
  ``_get_custom_platforms`` (src/pip/_internal/utils/compatibility_tags.py) expands
  only manylinux2014 and manylinux2010 to their older aliases, never manylinux_2_N
  to manylinux_2_(N-1). So every tag the host accepts is passed (``manylinux_platforms``).
- pip evaluates dependency markers (``python_version < "3.12"``,
  ``platform_machine == "x86_64"``) against the Python that runs it, not the target
  (https://github.com/pypa/pip/issues/11010). Every marker in the resolved closure is
  evaluated for both; where they disagree the resolve is refused, since the closure
  would be the controller's, not the host's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from provisioner.errors import ProvisionError
from provisioner.profile.install_section import (
    GLIBC_PATTERN,
    PYTHON_PATTERN,
    REQUIREMENT_PATTERN,
    URL_PATTERN,
    VenvEngine,
    WheelTarget,
)

RESOLVE_TIMEOUT = 900  # seconds: vLLM's closure is ~150 wheels' metadata from the index

# What a lock may hold: each ends up in a requirements file and a shell script.
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")  # PEP 508 names
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]{0,99}$")  # PEP 440, with a local "+cu128"
# the profile's URL characters: no blanks, quotes, '#' (a requirements-file comment) or '$'
_URL = re.compile(URL_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PYTHON = re.compile(PYTHON_PATTERN)
_GLIBC = re.compile(GLIBC_PATTERN)
_REQUIREMENT = re.compile(REQUIREMENT_PATTERN)
_MACHINES = ("x86_64", "aarch64")

# PEP 600: manylinux_2_5 is manylinux1 (PEP 513), manylinux_2_12 is manylinux2010
# (PEP 571), manylinux_2_17 is manylinux2014 (PEP 599); the first two are x86 only.
_LEGACY_ALIASES = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
# the oldest glibc each machine's manylinux tags go down to (PEP 599: aarch64 starts at 2014)
_OLDEST_GLIBC_MINOR = {"x86_64": 5, "aarch64": 17}
# markers resolve_for does not determine: the host's micro version, its kernel
_MICRO_VERSIONED = ("python_full_version", "implementation_version")
_KERNEL = ("platform_release", "platform_version")


@dataclass(frozen=True)
class PinnedWheel:
    name: str
    version: str
    url: str
    sha256: str


@dataclass(frozen=True)
class PinnedVenv:
    requirements: tuple[str, ...]  # sorted, as the profile's
    python: str
    glibc: str
    machine: str
    index_url: str | None
    extra_index_urls: tuple[str, ...]
    wheels: tuple[PinnedWheel, ...]  # sorted by name

    def for_engine(self, engine: VenvEngine) -> bool:
        """Whether this lock was made for the engine's pins, target host and indexes."""
        target = engine.resolve_for
        return (self.requirements == tuple(sorted(engine.requirements)) and target is not None
                and (self.python, self.glibc, self.machine) == (target.python, target.glibc, target.machine)
                and self.index_url == engine.index_url and self.extra_index_urls == tuple(engine.extra_index_urls))

    @property
    def wheel_rows(self) -> tuple[tuple[str, str, str, str], ...]:
        """The wheels as install.venv.Venv takes them: (name, version, url, sha256)."""
        return tuple((w.name, w.version, w.url, w.sha256) for w in self.wheels)

    @property
    def target(self) -> tuple[str, str, str]:
        """The host as install.venv.Venv takes it: (python, glibc, machine)."""
        return (self.python, self.glibc, self.machine)


def manylinux_platforms(glibc: str, machine: str) -> list[str]:
    """Every platform tag a Linux host with this glibc and machine installs, newest first,
    in the order packaging's ``_manylinux.platform_tags`` gives on the host: manylinux_2_N
    down to the machine's oldest, each legacy alias right after the tag it equals (PEP 600,
    599, 571, 513), then the plain ``linux_MACHINE`` that pip on the host also accepts."""
    if not _GLIBC.match(glibc) or machine not in _MACHINES:
        raise ValueError(f"glibc {glibc!r} / machine {machine!r}: expected e.g. 2.39 and x86_64 or aarch64")
    newest = int(glibc.split(".")[1])
    tags: list[str] = []
    for minor in range(newest, _OLDEST_GLIBC_MINOR[machine] - 1, -1):
        tags.append(f"manylinux_2_{minor}_{machine}")
        if minor in _LEGACY_ALIASES:
            tags.append(f"{_LEGACY_ALIASES[minor]}_{machine}")
    return [*tags, f"linux_{machine}"]


def pip_arguments(engine: VenvEngine, target: WheelTarget, workdir: str) -> list[str]:
    """``pip install`` resolving the engine's closure for the target, writing ``workdir/report.json``.
    pip takes --platform and --python-version only with --target (an empty dir: nothing is
    installed with --dry-run)."""
    args = ["install", "--dry-run", "--ignore-installed", "--report", f"{workdir}/report.json",
            "--target", f"{workdir}/target", "--quiet", "--only-binary=:all:",
            "--python-version", target.python, "--implementation", "cp"]
    for tag in manylinux_platforms(target.glibc, target.machine):
        args += ["--platform", tag]
    # no index_url: PyPI, or the mirror PROVISION_PYPI_INDEX names (as for a pypi: sdist)
    index = engine.index_url or os.environ.get("PROVISION_PYPI_INDEX")
    if index:
        args += ["--index-url", index]
    for url in engine.extra_index_urls:
        args += ["--extra-index-url", url]
    return [*args, "--no-input", "--disable-pip-version-check", *sorted(engine.requirements)]


def resolve_venv(engine: VenvEngine, *, pip_python: str = sys.executable,
                 timeout: float = RESOLVE_TIMEOUT) -> PinnedVenv:
    """The engine's closure for its resolve_for host, from its indexes, resolved by ``pip_python -m
    pip`` (pip 23.0 or newer): this controller's own Python, or one of the host's version, whose
    markers then match the host's."""
    target = engine.resolve_for
    if target is None:
        raise ProvisionError("install.engine.resolve_for is not set: the lock cannot tell which host "
                             "to resolve wheels for",
                             hint="on the host run `python3 --version`, `ldd --version` and `uname -m`, and "
                                  "set resolve_for: {python: \"3.12\", glibc: \"2.39\", machine: x86_64} "
                                  "from them")
    # the profile alone says where wheels come from: no pip.conf or PIP_* from this machine
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    with tempfile.TemporaryDirectory(prefix="provision-lock-") as tmp:
        report_path = Path(tmp) / "report.json"
        try:
            done = subprocess.run([pip_python, "-m", "pip", *pip_arguments(engine, target, tmp)],
                                  capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise ProvisionError(f"pip did not resolve {' '.join(sorted(engine.requirements))} in {timeout:.0f} s",
                                 hint="check that the index is reachable from this machine") from None
        except OSError as exc:
            raise ProvisionError(f"cannot run {pip_python} -m pip: {exc.strerror}",
                                 hint="name a Python with pip on this machine") from None
        if done.returncode != 0 or not report_path.is_file():
            error = next((line.strip() for line in done.stderr.splitlines() if line.startswith("ERROR:")),
                         (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
            raise ProvisionError(f"pip could not resolve {' '.join(sorted(engine.requirements))} for Python "
                                 f"{target.python}, glibc {target.glibc}, {target.machine}: {error}",
                                 hint="check the pins, resolve_for and index_url; a lock takes wheels only, "
                                      "so a package with no wheel for that host (or only an sdist) shows "
                                      "as 'from versions: none'")
        report = json.loads(report_path.read_text(encoding="utf-8"))
    return _pinned(engine, target, report)


def _pinned(engine: VenvEngine, target: WheelTarget, report: dict[str, Any]) -> PinnedVenv:
    if str(report.get("version")) != "1" or not isinstance(report.get("install"), list):
        raise ProvisionError(f"pip wrote an installation report of version {report.get('version')!r}, "
                             "not 1", hint="upgrade pip on this machine (23.0 or newer)")
    _refuse_marker_drift(report, target)
    wheels = sorted((_wheel(item) for item in report["install"]), key=lambda w: canonicalize_name(w.name))
    return PinnedVenv(tuple(sorted(engine.requirements)), target.python, target.glibc, target.machine,
                      engine.index_url, tuple(engine.extra_index_urls), tuple(wheels))


def _wheel(item: dict[str, Any]) -> PinnedWheel:
    """One report item as a locked wheel; refused unless it is a wheel with a sha256."""
    metadata, info = item.get("metadata", {}), item.get("download_info", {})
    name, version = str(metadata.get("name", "?")), str(metadata.get("version", "?"))
    url = urlsplit(str(info.get("url", "")))._replace(fragment="").geturl()
    archive = info.get("archive_info", {})
    sha256 = archive.get("hashes", {}).get("sha256") or str(archive.get("hash", "")).removeprefix("sha256=")
    if not url.endswith(".whl"):
        raise ProvisionError(f"{name} {version} would come from {url or 'no URL'}, not a wheel",
                             hint="a lock holds wheels only: pin a version that has a wheel for this host")
    if not _SHA256.match(sha256 or ""):
        raise ProvisionError(f"{name} {version}: the index gave no sha256 for {url}",
                             hint="use an index that publishes hashes (PyPI, the PyTorch index do)")
    pinned = PinnedWheel(name, version, url, sha256)
    try:
        _check_wheel(pinned)
    except ValueError as exc:
        raise ProvisionError(f"{name} {version}: {exc}", hint="a lock holds plain http(s) URLs without "
                             "credentials: put the index's token elsewhere") from None
    return pinned


def _refuse_marker_drift(report: dict[str, Any], target: WheelTarget) -> None:
    """Refuse a closure whose dependency markers pick differently on the host than here."""
    here = {k: str(v) for k, v in report.get("environment", {}).items()}
    there = here | {"python_version": target.python, "platform_machine": target.machine, "sys_platform": "linux",
                    "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
                    "platform_python_implementation": "CPython"}
    # the host's micro version is unknown: a marker on it must pick the same for 3.12.0 and 3.12.999
    lowest, highest = ({key: f"{target.python}.{micro}" for key in _MICRO_VERSIONED} for micro in (0, 999))
    for item, requirement, extra in _dependency_markers(report["install"], there):
        marker = requirement.marker
        assert marker is not None
        picks = {marker.evaluate(there | bound | {"extra": extra}) for bound in (lowest, highest)}
        if any(key in str(marker) for key in _KERNEL) or picks != {marker.evaluate(here | {"extra": extra})}:
            name = item.get("metadata", {}).get("name", "?")
            raise ProvisionError(
                f"{name} requires '{requirement}': that marker may pick differently for Python {target.python} "
                f"on {target.machine} Linux than for this machine's Python {here.get('python_full_version')} on "
                f"{here.get('platform_machine')} {here.get('platform_system')}, and pip evaluates markers here",
                hint=f"let a Python {target.python} on Linux {target.machine} resolve: `provision lock "
                     f"--python /usr/bin/python{target.python} PROFILE`, or run it on the host itself")


def _dependency_markers(items: list[dict[str, Any]], there: dict[str, str]) -> list[tuple[dict[str, Any],
                                                                                           Requirement, str]]:
    """(item, dependency with a marker, extra) for every extra the closure asks of each item."""
    extras: dict[str, set[str]] = {}
    for item in items:
        extras.setdefault(canonicalize_name(str(item.get("metadata", {}).get("name", ""))), {""}).update(
            item.get("requested_extras") or [])
    parsed = [(item, _requirements(item)) for item in items]
    changed = True
    while changed:  # an extra a dependency is asked for can pull in more: until nothing new
        changed = False
        for item, requirements in parsed:
            mine = extras[canonicalize_name(str(item.get("metadata", {}).get("name", "")))]
            for requirement in requirements:
                wanted = extras.get(canonicalize_name(requirement.name))
                if wanted is None or not requirement.extras or requirement.extras <= wanted:
                    continue
                if requirement.marker is None or any(requirement.marker.evaluate(there | {"extra": e}) for e in mine):
                    wanted.update(requirement.extras)
                    changed = True
    return [(item, requirement, extra) for item, requirements in parsed for requirement in requirements
            if requirement.marker is not None
            for extra in sorted(extras[canonicalize_name(str(item.get("metadata", {}).get("name", "")))])]


def _requirements(item: dict[str, Any]) -> list[Requirement]:
    out = []
    for text in item.get("metadata", {}).get("requires_dist") or []:
        try:
            out.append(Requirement(str(text)))
        except InvalidRequirement:
            name = item.get("metadata", {}).get("name", "?")
            raise ProvisionError(f"{name} declares a dependency pip read but packaging cannot: {text!r}",
                                 hint="pin another version of it") from None
    return out


def _check_wheel(wheel: PinnedWheel) -> None:
    if not _NAME.match(wheel.name):
        raise ValueError(f"wheel name {wheel.name!r} is not a plain package name")
    if not _VERSION.match(wheel.version):
        raise ValueError(f"{wheel.name}: version {wheel.version!r} is not a plain version")
    if not _URL.match(wheel.url) or urlsplit(wheel.url).password is not None:
        raise ValueError(f"{wheel.name}: URL {wheel.url!r} is not a plain http(s)/file URL")
    if not wheel.url.endswith(".whl"):
        raise ValueError(f"{wheel.name}: URL {wheel.url!r} is not a wheel")
    if not _SHA256.match(wheel.sha256):
        raise ValueError(f"{wheel.name}: sha256 {wheel.sha256!r} is not 64 lowercase hex digits")


def to_data(pinned: PinnedVenv) -> dict[str, Any]:
    """The lock's ``engine.venv`` section."""
    return {"requirements": list(pinned.requirements),
            "resolve_for": {"python": pinned.python, "glibc": pinned.glibc, "machine": pinned.machine},
            "index_url": pinned.index_url, "extra_index_urls": list(pinned.extra_index_urls),
            "wheels": [{"name": w.name, "version": w.version, "url": w.url, "sha256": w.sha256}
                       for w in pinned.wheels]}


def from_data(section: dict[str, Any]) -> PinnedVenv:
    """The lock's ``engine.venv`` section read back; ValueError when anything is malformed."""
    if not isinstance(section, dict):
        raise ValueError("engine.venv is not a mapping")
    try:
        target, wheels = section["resolve_for"], section["wheels"]
        requirements = tuple(str(r) for r in section["requirements"])
        python, glibc, machine = str(target["python"]), str(target["glibc"]), str(target["machine"])
        index_url = section.get("index_url")
        extra = tuple(str(u) for u in section.get("extra_index_urls") or [])
        pinned = tuple(PinnedWheel(str(w["name"]), str(w["version"]), str(w["url"]), str(w["sha256"]))
                       for w in wheels)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"engine.venv lacks or misshapes {exc}") from None
    if not requirements or any(not _REQUIREMENT.match(r) for r in requirements) or list(requirements) != sorted(
            requirements):
        raise ValueError(f"requirements {list(requirements)!r} are not sorted exact pins (name==version)")
    if not _PYTHON.match(python) or not _GLIBC.match(glibc) or machine not in _MACHINES:
        raise ValueError(f"resolve_for {python!r}, {glibc!r}, {machine!r} is not e.g. 3.12, 2.39, x86_64")
    for url in ([] if index_url is None else [index_url]) + list(extra):
        if not isinstance(url, str) or not _URL.match(url):
            raise ValueError(f"index URL {url!r} is not a plain http(s)/file URL")
    if not pinned:
        raise ValueError("engine.venv lists no wheels")
    for wheel in pinned:
        _check_wheel(wheel)
    names = [canonicalize_name(w.name) for w in pinned]
    if len(set(names)) != len(names):
        raise ValueError(f"a package is listed twice among {', '.join(sorted(names))}")
    return PinnedVenv(requirements, python, glibc, machine, index_url, extra, pinned)
