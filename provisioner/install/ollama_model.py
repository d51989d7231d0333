"""An Ollama tag put on the host as `ollama pull` leaves it, from PROFILE.lock, without Ollama.

The lock (lock/ollama.py) holds the tag's manifest, byte for byte, and the blobs it lists.
The snippet downloads each blob by digest (a ``Download``: resumed, sha256 checked; a blob
already there and stamped, or whose checksum passes, is kept) and renames it to
OLLAMA_MODELS/blobs/sha256-HEX, then writes the manifest to
OLLAMA_MODELS/manifests/HOST/NAMESPACE/MODEL/TAG last, checked against the locked digest,
so Ollama never lists a tag whose blobs are not all in place. The layout and why the
manifest's bytes are its ID: install/ollama_registry.py.

Partials are staged outside blobs/: Ollama's server, at every start, deletes from blobs/
each name that is not a digest and each blob no manifest names (``server/images.go``
``PruneLayers``, unless OLLAMA_NOPRUNE; newer versions spare a file modified within
``layerPruneGracePeriod``), so a partial there would not survive a restart.
The stage is provision's own state dir ($state/downloads, root's) when it is on the
models' filesystem (a rename there is atomic), else OLLAMA_MODELS/.provision-partial, made
0700 and refused unless the applying user owns it. A blob of an earlier lock is left to
``PruneLayers``.

The service user owns OLLAMA_MODELS after the first apply (the unit's StateDirectory=
chowns it to User=), and the snippet runs as root, so it trusts nothing in that tree: right
before the first write and again right before the renames into place it refuses, in one
line, when any directory from OLLAMA_MODELS down to the manifest's directory, blobs/ or the
fallback stage is a symlink (a planted link to /etc would have root write and chown there).
It chowns (``chown -h``, never through a link) only what this run made: the directories
that were not there, the blobs it fetched and the manifest, to the service user (uid and
gid read from the target's own /etc/passwd and /etc/group, so an image tree gets its users'
ids); a directory that was there keeps its owner. The check and the write are separate
steps: a user racing the apply in between is not excluded by sh, only a link planted
before it.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from provisioner.install import InstallChange, InstallKind
from provisioner.install.download import Download, RemoteFile
from provisioner.install.ollama_registry import PinnedOllama, blob_url
from provisioner.profile.resolve import Spec

_q = shlex.quote
FALLBACK_STAGE = ".provision-partial"  # under OLLAMA_MODELS: Ollama prunes only blobs/ and manifests/


def models_dir(spec: Spec) -> str:
    """OLLAMA_MODELS of the unit: under its StateDirectory, where the run script sets it;
    an Ollama without the variable uses $HOME/.ollama/models (envconfig/config.go ``Models``),
    and the unit's HOME is that StateDirectory too."""
    home = f"/var/lib/{spec.profile.service.name}"
    models = spec.engine_version.flags.get("models")
    return f"{home}/models" if models is not None and models.env is not None else f"{home}/.ollama/models"


@dataclass(frozen=True)
class OllamaModel:
    pinned: PinnedOllama
    models: str  # OLLAMA_MODELS on the host
    base_url: str  # the registry (or its mirror) the blobs come from
    owner: tuple[str, str] | None = None  # (user, group) the files belong to
    name: str = "download:model"

    @property
    def kind(self) -> InstallKind:
        return "download"

    @property
    def manifest_file(self) -> str:
        return f"{self.models}/manifests/{self.pinned.name.manifest_path}"

    @property
    def dirs(self) -> list[str]:
        """Every directory from OLLAMA_MODELS down to the manifest's and blobs/, then the fallback stage."""
        name = self.pinned.name
        tree = f"{self.models}/manifests/{name.host}/{name.namespace}/{name.model}"
        return [self.models, f"{self.models}/blobs", f"{self.models}/manifests", f"{self.models}/manifests/{name.host}",
                f"{self.models}/manifests/{name.host}/{name.namespace}", tree, f"{self.models}/{FALLBACK_STAGE}"]

    def blobs(self, root: str) -> Download:
        files = tuple(RemoteFile(url=blob_url(self.base_url, self.pinned.name, b),
                                 dest=f"{self.models}/blobs/{b.file_name}", size=b.size, sha256=b.hex,
                                 part_name=f"{b.file_name}.ollama-part")
                      for b in self.pinned.blobs)
        return Download(name=self.name, files=files, stage=self._stage_sh(root))

    def probe(self, root: str) -> str:
        path = _q(root + self.manifest_file)
        return (self.blobs(root).probe(root) + "\n"
                f"if [ -f {path} ]; then echo \"@install {self.name} manifest $(sha256sum < {path} | cut -c1-64)\"; "
                f"else echo '@install {self.name} manifest missing'; fi\n")

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        blobs = self.blobs(root).change(found, root)
        seen = found.get("manifest", "missing")
        if blobs is None and seen == self.pinned.digest:
            return None
        was = "" if seen in ("missing", self.pinned.digest) else f", replacing id {seen[:12]}"
        summary = (f"{self.pinned.name.display} id {self.pinned.digest[:12]}: "
                   + (blobs.summary if blobs else "blobs in place") + f"; then its manifest{was}")
        return InstallChange(name=self.name, kind="download", action="download", summary=summary,
                             script=self.script(root), record=self.record(),
                             bytes=blobs.bytes if blobs else 0)

    def record(self) -> dict[str, Any]:
        return {"ollama": self.pinned.name.display, "digest": f"sha256:{self.pinned.digest}",
                "manifest": self.manifest_file, "models": self.models, **self.blobs("").record()}

    def script(self, root: str) -> str:
        return self.blobs(root).script(root, finish=self._manifest_sh(root), guard="ollama_guard")

    def _stage_sh(self, root: str) -> str:
        """Note which dirs are new (only those are chowned), refuse symlinked dirs, pick $stage:
        provision's state dir on the models' filesystem, else a root-only dir beside blobs/."""
        dirs = [_q(root + d) for d in self.dirs]
        fallback = dirs[-1]
        out = ["# shellcheck disable=SC2329",
               "ollama_guard() {",
               f"    for d in {' '.join(dirs)}; do",
               "        if [ -L \"$d\" ]; then fail \"$d is a symlink: provision writes the Ollama model only "
               "through real directories (the service user can plant one; remove it and apply again)\"; fi",
               "    done",
               "}",
               "ollama_guard"]
        out += [f"new{i}=no; [ -e {d} ] || new{i}=yes" for i, d in enumerate(dirs[:-1])]
        out += [f"d={dirs[0]}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done",
                'stage="$state/downloads"',
                'if [ "$(stat -c %d "$stage")" != "$(stat -c %d "$d")" ]; then',
                f"    stage={fallback}",
                f"    must mkdir -p {dirs[0]}",
                "    ollama_guard",
                '    [ -e "$stage" ] || must mkdir -m 0700 "$stage"',
                '    [ "$(stat -c %u "$stage")" = "$(id -u)" ] || fail "$stage is not owned by $(id -un): '
                'provision stages downloads only in a directory nobody else can write"',
                "fi"]
        return "\n".join(out)

    def _manifest_sh(self, root: str) -> str:
        """The manifest, staged beside the blobs' partials, checked, owned, renamed into place last."""
        final = _q(root + self.manifest_file)
        part = f'"$stage"/{_q(self.pinned.digest + ".manifest-part")}'
        out = ["ollama_guard",
               f"must mkdir -p {_q(root + self.dirs[-2])}",
               f"must rm -f {part}",
               # the registry's bytes (UTF-8 JSON, no NUL: parse_manifest) through printf, unchanged
               f"printf '%s' {_q(self.pinned.manifest.decode('utf-8'))} > {part} || "
               f"fail {_q('cannot write ' + self.manifest_file)}",
               f"[ \"$(sha256sum < {part} | cut -c1-64)\" = {self.pinned.digest} ] || {{ rm -f {part}; "
               f"fail {_q(self.manifest_file + ': the bytes written are not the locked manifest')}; }}",
               f"must chmod 0644 {part}"]
        if self.owner is not None:
            out.append(self._own(root, part))
        out += ["ollama_guard", f"must mv -fT {part} {final}"]
        return "\n".join(out)

    def _own(self, root: str, part: str) -> str:
        """chown -h only what this run made: the dirs that were not there, the blobs it fetched, the manifest."""
        assert self.owner is not None
        user, group = self.owner
        made = [f"[ \"$new{i}\" = no ] || set -- \"$@\" {_q(root + d)}" for i, d in enumerate(self.dirs[:-1])]
        fetched = [f"case \" $todo \" in *\" {i} \"*) set -- \"$@\" {_q(root + f.dest)} ;; esac"
                   for i, f in enumerate(self.blobs(root).files)]
        return "\n".join([
            f"uid=$(awk -F: -v u={_q(user)} '$1 == u {{ print $3; exit }}' \"$root/etc/passwd\" 2>/dev/null || true)",
            f"gid=$(awk -F: -v g={_q(group)} '$1 == g {{ print $3; exit }}' \"$root/etc/group\" 2>/dev/null || true)",
            f"[ -n \"$uid\" ] && [ -n \"$gid\" ] || "
            f"fail {_q(f'the service user {user}:{group} is not in the target: its /etc/passwd or /etc/group')}",
            f"set -- {part}", *made, *fetched,
            "if ! chown -h \"$uid:$gid\" \"$@\" 2>\"$tmp/err\"; then",
            f"    if [ -n \"$root\" ]; then echo \"@warn the Ollama model under $root is left owned by $(id -un): "
            f"$(head -c 200 \"$tmp/err\")\"; else fail \"chown {user}: $(head -c 200 \"$tmp/err\")\"; fi",
            "fi"])
