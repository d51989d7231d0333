"""`provision lock`: pin what a profile names loosely into PROFILE.lock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from provisioner.cli._common import EXIT_OK, command
from provisioner.cli._output import Result, lines


def write_profile_lock(profile: Path) -> tuple[Path, dict[str, object]]:
    """Resolve the profile's model source on the hub and write its lock; what it pinned."""
    from provisioner.errors import ProvisionError
    from provisioner.install.model_fetch import fetch_model_shape
    from provisioner.install.ollama_registry import PinnedOllama
    from provisioner.install.token import controller_token, controller_token_place
    from provisioner.lock import apply_lock, lock_path, resolve_lock, write_lock  # the hub client: only when run
    from provisioner.profile.loader import load_profile
    from provisioner.units import format_size

    loaded = load_profile(profile)
    ref = loaded.profile.secrets.hf_token
    # the token as install reads it (from_env, from_file); in memory only, never printed
    token = controller_token(ref)
    try:
        lock = resolve_lock(loaded, endpoint=None, token=token)
        if not isinstance(lock, PinnedOllama):
            # a model the catalog lacks: its shape is read now, from the file the lock pins (as plan
            # will read it), and cached, so plan and apply need no hub
            fetch_model_shape(apply_lock(loaded, lock, required=False).profile, token=token)
    except ProvisionError as exc:
        if ref is None or token is not None:
            raise
        first, *rest = exc.problems
        hint = f"no token in {controller_token_place(ref)} (secrets.hf_token); {first.hint or 'a gated repo needs it'}"
        raise ProvisionError([dataclasses.replace(first, hint=hint), *rest]) from None
    path = lock_path(loaded.path)
    if isinstance(lock, PinnedOllama):
        write_lock(path, lock, loaded.profile.metadata.name)
        return path, {"lock": str(path), "ollama": lock.name.display, "registry": lock.name.host,
                      "digest": f"sha256:{lock.digest}",
                      "blobs": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in lock.blobs],
                      "total": format_size(sum(b.size for b in lock.blobs))}
    write_lock(path, lock, loaded.profile.metadata.name)
    total = sum(f.size for f in lock.files)
    return path, {"lock": str(path), "repo": lock.repo, "revision": lock.revision, "commit": lock.commit,
                  "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in lock.files],
                  "total": format_size(total)}


@command("lock")
@click.argument("profile", type=click.Path(path_type=Path))
def lock(profile: Path, as_json: bool) -> Result:
    """Pin the profile's model source: the commit its branch is at, and every file the quant
    selects with its size and sha256, into PROFILE.lock (commit it beside the profile). An
    Ollama tag is pinned to its manifest's digest (the ID `ollama list` shows) and blobs.

    plan and apply install exactly what the lock says; a changed quant or source needs a
    new lock. The hub is HF_ENDPOINT (default https://huggingface.co); an Ollama registry is
    PROVISION_OLLAMA_REGISTRY when set (a mirror), else the tag's host.

    \b
    Example:
      provision lock box.yaml
      provision plan box.yaml --root ./image --update-lock
    """
    path, fields = write_profile_lock(profile)
    if "ollama" in fields:
        blobs = fields["blobs"]
        assert isinstance(blobs, list)
        said = [f"wrote {path}: {fields['ollama']} on {fields['registry']} is {fields['digest']}, "
                f"{len(blobs)} blob(s), {fields['total']}"]
        said += [f"  {b['mediaType']}  {b['digest']}  {b['size']} bytes" for b in blobs]
        return Result(EXIT_OK, fields, (lines(*said),))
    files = fields["files"]
    assert isinstance(files, list)
    said = [f"wrote {path}: {fields['repo']}@{fields['revision']} is commit {fields['commit']}, "
            f"{len(files)} file(s), {fields['total']}"]
    said += [f"  {f['path']}  {f['size']} bytes  sha256 {f['sha256'] or '(git blob)'}" for f in files]
    return Result(EXIT_OK, fields, (lines(*said),))
