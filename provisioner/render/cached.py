"""A build that is not made again while nothing it read has changed.

``cached_build`` looks the request up in the cache (``render/cachestore.py``); the
entry lists every file the build read (``render/inputs.py``) with what each held,
and it is used only if every one still holds that. A hit gives a ``Summary``:
what validate, plan and apply need of a build (names, cluster nodes, the rendered
files) without pydantic or Jinja2 being imported. A host whose facts differ from
the profile's gets its render from the cache too, keyed by those facts; only a
miss imports ``render.pipeline`` and builds.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from provisioner.install.secret import SecretsOwed, secrets_owed
from provisioner.profile.nodes import ClusterNodes
from provisioner.render.cachestore import (
    NotCacheable,
    builds_dir,
    decode,
    encode,
    prune,
    read_entry,
    write_entry,
)
from provisioner.render.inputs import file_state, package_fingerprint, recording, settled, with_siblings
from provisioner.render.resources import Rendered

if TYPE_CHECKING:
    from provisioner.render.pipeline import Built

T = TypeVar("T")
# Read by a build through the environment, not a file (install/hf.py): part of the key.
_ENVIRONMENT = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "PROVISION_OLLAMA_REGISTRY")


@dataclass(frozen=True)
class BuildRequest:
    """What ``pipeline.build`` is asked for."""

    profile: str  # a path, or a library profile's name
    overrides: str = ""  # an inventory host's overrides as sorted JSON ("" for none)
    model_root: str | None = None
    ignore_fit: bool = False
    network: bool = True
    require_lock: bool = False  # plan/apply/verify on a target: a branch or tag needs PROFILE.lock

    def lookup_key(self) -> str:
        path = Path(self.profile)
        named = os.path.abspath(path) if path.exists() else self.profile  # a library name stays a name
        fields = {"package": package_fingerprint(), "profile": named, "overrides": self.overrides,
                  "model_root": self.model_root, "ignore_fit": self.ignore_fit, "network": self.network,
                  "require_lock": self.require_lock,
                  "env": {name: os.environ.get(name) for name in _ENVIRONMENT}}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()

    def entry_name(self) -> str:
        """The request's key and the state of its profile file: a user going back to an
        earlier version of the profile (or a fleet with two of them) finds each one's build."""
        path = Path(self.profile)
        profile = file_state(os.path.abspath(path)) if path.exists() else "library"
        return f"{self.lookup_key()}-{hashlib.sha256(profile.encode()).hexdigest()[:16]}"

    def build(self) -> Built:
        from provisioner.render.pipeline import build  # noqa: PLC0415 - pydantic and Jinja2, only on a miss

        return build(Path(self.profile), ignore_fit=self.ignore_fit,
                     overrides=json.loads(self.overrides) if self.overrides else None,
                     model_root=self.model_root, network=self.network, require_lock=self.require_lock)


@dataclass(frozen=True)
class Summary:
    """What converge and validate use of a build."""

    build_id: str  # the request and the state of every input: names the renders made from it
    profile_name: str
    service: str
    model: str
    quant: str
    engine: str
    runtime_version: str
    nodes: ClusterNodes
    rendered: Rendered  # with the profile's own facts, for the head node of a cluster
    secrets: SecretsOwed  # what apply's next steps say about secrets

    @staticmethod
    def of(built: Built, build_id: str) -> Summary:
        spec = built.spec
        profile = spec.profile
        return Summary(build_id, profile.metadata.name, profile.service.name, spec.model.name,
                       profile.model.quant, spec.engine.name, profile.runtime.version, built.nodes, built.rendered,
                       secrets_owed(profile))


class CachedBuild:
    """A request's summary, and its renders with a host's facts (cached, or made by a
    full build, which is then kept for the other hosts of the run)."""

    def __init__(self, request: BuildRequest, summary: Summary, built: Built | None = None,
                 storable: bool = True) -> None:
        self.request = request
        self.summary = summary
        self._built = built
        self._storable = storable  # False: the build asked the network, so its renders are not kept either
        self._lock = threading.Lock()

    def full(self) -> Built:
        """The whole build (its Spec too): from this run when one ran, else made now."""
        with self._lock:
            if self._built is None:
                self.summary, self._built, self._storable = _build_and_store(self.request)
            return self._built

    @property
    def hit(self) -> bool:
        """True when no build ran in this process (so far)."""
        return self._built is None

    def rendered_for(self, facts: dict[str, str] | None = None, node: str | None = None) -> Rendered:
        """``facts``: a host's, as templates see them (``facts.gather.template_facts``)."""
        facts = facts or {}
        if not facts and node is None:
            return self.summary.rendered
        with self._lock:
            key = hashlib.sha256(json.dumps([self.summary.build_id, facts, node or ""],
                                            sort_keys=True).encode()).hexdigest()
            folder = builds_dir()
            path = folder / "renders" / f"{key}.json" if folder is not None else None
            found = _decoded(read_entry(path), "rendered") if path is not None else None
            if isinstance(found, Rendered):
                return found
            if self._built is None:
                summary, self._built, self._storable = _build_and_store(self.request)
                if summary.build_id != self.summary.build_id:  # an input changed since the lookup
                    self.summary = summary
                    return self._built.rendered_for(facts, node)
            rendered = self._built.rendered_for(facts, node)
            if path is not None and self._storable:
                _store(path, {"rendered": rendered})
            return rendered


def cached_build(request: BuildRequest) -> CachedBuild:
    """The request's build from the cache when every input is as it was, else built now
    (and stored, unless the build asked the network or ran a program)."""
    folder = builds_dir()
    entry = read_entry(folder / f"{request.entry_name()}.json") if folder is not None else None
    if entry is not None and _inputs_unchanged(entry.get("inputs")):
        summary = _decoded(entry, "summary")
        if isinstance(summary, Summary):
            return CachedBuild(request, summary)
    return CachedBuild(request, *_build_and_store(request))


def cached_value(kind: str, key: str, make: Callable[[], T]) -> T:
    """``make()``, kept under ``kind`` and ``key`` (which must name everything it depends on
    but provision's own files, which the package fingerprint adds): e.g. an inventory
    parsed from its bytes. A value with no cache form is simply made each time."""
    folder = builds_dir()
    digest = hashlib.sha256(json.dumps([package_fingerprint(), kind, key]).encode()).hexdigest()
    path = folder / kind / f"{digest}.json" if folder is not None else None
    found = _decoded(read_entry(path), "value") if path is not None else None
    if found is not None:
        return cast(T, found)
    value = make()
    if path is not None:
        _store(path, {"value": value})
    return value


def _inputs_unchanged(inputs: Any) -> bool:
    if not isinstance(inputs, list):
        return False
    return all(isinstance(item, list) and len(item) == 2 and file_state(str(item[0])) == item[1]
               for item in inputs)


def _decoded(entry: dict[str, Any] | None, name: str) -> Any:
    """The value under ``name`` of an entry, or None when the entry is damaged."""
    if entry is None or name not in entry:
        return None
    try:
        return decode(entry[name])
    except Exception:  # a damaged entry fails anywhere in decoding: it is no entry, and is rebuilt
        return None


def _build_and_store(request: BuildRequest) -> tuple[Summary, Built, bool]:
    """Build, and store the summary when the result depends on files alone (and none of
    them changed while it was read); the flag says whether it did."""
    lookup = request.lookup_key()
    started = time.time_ns()
    with recording() as record:
        built = request.build()
    inputs = [[path, file_state(path)] for path in with_siblings(list(record.files))]
    build_id = hashlib.sha256(json.dumps([lookup, inputs]).encode()).hexdigest()
    summary = Summary.of(built, build_id)
    folder = builds_dir()
    storable = record.pure and settled(list(record.files), started)
    if folder is not None and storable:
        _store(folder / f"{request.entry_name()}.json", {"inputs": inputs, "summary": summary})
        prune(folder)
    return summary, built, storable


def _store(path: Path, values: dict[str, Any]) -> None:
    try:
        encoded = {name: encode(value) for name, value in values.items()}
    except NotCacheable:
        return
    write_entry(path, encoded)
