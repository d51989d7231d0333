"""An Ollama tag put on the host as `ollama pull` leaves it, from PROFILE.lock, without Ollama.

The lock (lock/ollama.py) holds the tag's manifest, byte for byte, and the blobs it lists.
The snippet downloads each blob by digest into OLLAMA_MODELS/blobs/sha256-HEX (a
``Download``: a ``.provision-part`` temp name, resumed, sha256 checked, renamed; a blob
already there and stamped, or whose checksum passes, is kept), then writes the manifest
to OLLAMA_MODELS/manifests/HOST/NAMESPACE/MODEL/TAG last, checked against the locked
digest, so Ollama never lists a tag whose blobs are not all in place. Everything it
writes is owned by the service user (its uid and gid read from the target's own
/etc/passwd and /etc/group, so an image tree gets its users' ids). The layout and why the
manifest's bytes are its ID: install/ollama_registry.py.

Ollama's server removes, at start, blobs no manifest names (``server/images.go``
``PruneLayers``, unless OLLAMA_NOPRUNE): a blob of an earlier lock is left to it.
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
    def blobs(self) -> Download:
        files = tuple(RemoteFile(url=blob_url(self.base_url, self.pinned.name, b),
                                 dest=f"{self.models}/blobs/{b.file_name}", size=b.size, sha256=b.hex)
                      for b in self.pinned.blobs)
        return Download(name=self.name, files=files)

    def probe(self, root: str) -> str:
        path = _q(root + self.manifest_file)
        return (self.blobs.probe(root) + "\n"
                f"if [ -f {path} ]; then echo \"@install {self.name} manifest $(sha256sum < {path} | cut -c1-64)\"; "
                f"else echo '@install {self.name} manifest missing'; fi\n")

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        blobs = self.blobs.change(found, root)
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
                "manifest": self.manifest_file, "models": self.models, **self.blobs.record()}

    def script(self, root: str) -> str:
        return self.blobs.script(root, finish=self._manifest_sh(root))

    def _manifest_sh(self, root: str) -> str:
        """Own the blobs, then write the manifest beside them: checked, owned, renamed into place."""
        final = _q(root + self.manifest_file)
        part = _q(root + self.manifest_file + ".provision-part")
        name = self.pinned.name
        dirs = [self.models, f"{self.models}/blobs", f"{self.models}/manifests",
                f"{self.models}/manifests/{name.host}", f"{self.models}/manifests/{name.host}/{name.namespace}",
                f"{self.models}/manifests/{name.host}/{name.namespace}/{name.model}"]
        blobs = [f"{self.models}/blobs/{b.file_name}" for b in self.pinned.blobs]
        out = [f"must mkdir -p {_q(root + dirs[-1])}",
               # the registry's bytes (UTF-8 JSON, no NUL: parse_manifest) through printf, unchanged
               f"printf '%s' {_q(self.pinned.manifest.decode('utf-8'))} > {part} || "
               f"fail {_q('cannot write ' + self.manifest_file)}",
               f"[ \"$(sha256sum < {part} | cut -c1-64)\" = {self.pinned.digest} ] || {{ rm -f {part}; "
               f"fail {_q(self.manifest_file + ': the bytes written are not the locked manifest')}; }}",
               f"must chmod 0644 {part}"]
        if self.owner is not None:
            out.append(self._own(root, [*dirs, *blobs], part))
        out.append(f"must mv -f {part} {final}")
        return "\n".join(out)

    def _own(self, root: str, paths: list[str], part: str) -> str:
        assert self.owner is not None
        user, group = self.owner
        files = " ".join(_q(root + p) for p in paths) + " " + part
        return "\n".join([
            f"uid=$(awk -F: -v u={_q(user)} '$1 == u {{ print $3; exit }}' \"$root/etc/passwd\" 2>/dev/null || true)",
            f"gid=$(awk -F: -v g={_q(group)} '$1 == g {{ print $3; exit }}' \"$root/etc/group\" 2>/dev/null || true)",
            f"[ -n \"$uid\" ] && [ -n \"$gid\" ] || "
            f"fail {_q(f'the service user {user}:{group} is not in the target: its /etc/passwd or /etc/group')}",
            f"if ! chown \"$uid:$gid\" {files} 2>\"$tmp/err\"; then",
            f"    if [ -n \"$root\" ]; then echo \"@warn the Ollama model under $root is left owned by $(id -un): "
            f"$(head -c 200 \"$tmp/err\")\"; else fail \"chown {user}: $(head -c 200 \"$tmp/err\")\"; fi",
            "fi"])
