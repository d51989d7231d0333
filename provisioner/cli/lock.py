"""`provision lock`: pin what a profile names loosely into PROFILE.lock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from provisioner.cli._common import EXIT_OK, command
from provisioner.cli._output import Result, lines


def write_profile_lock(profile: Path, pip_python: str | None = None,
                       only: str | None = None) -> tuple[Path, dict[str, object]]:
    """Resolve the profile's model source (hub, registry) and loosely named engine, and write
    its lock; what it pinned."""
    from provisioner.errors import ProvisionError
    from provisioner.install.model_fetch import fetch_model_shape
    from provisioner.install.ollama_registry import PinnedOllama
    from provisioner.install.token import controller_token, controller_token_place
    from provisioner.lock import apply_lock, lock_path, read_lock, resolve_lock, write_lock  # the hub client
    from provisioner.profile.loader import load_profile
    from provisioner.units import format_size

    loaded = load_profile(profile)
    ref = loaded.profile.secrets.hf_token
    # the token as install reads it (from_env, from_file); in memory only, never printed
    token = controller_token(ref)
    path = lock_path(loaded.path)
    try:
        previous = read_lock(path) if only else None
        lock = resolve_lock(loaded, endpoint=None, token=token, pip_python=pip_python, only=only, previous=previous)
        if only != "engine" and lock.model is not None and not isinstance(lock.model, PinnedOllama):
            # a model the catalog lacks: its shape is read now, from the file the lock pins (as plan
            # will read it), and cached, so plan and apply need no hub
            fetch_model_shape(apply_lock(loaded, lock, required=False).profile, token=token)
    except ProvisionError as exc:
        if ref is None or token is not None:
            raise
        first, *rest = exc.problems
        hint = f"no token in {controller_token_place(ref)} (secrets.hf_token); {first.hint or 'a gated repo needs it'}"
        raise ProvisionError([dataclasses.replace(first, hint=hint), *rest]) from None
    write_lock(path, lock, loaded.profile.metadata.name)
    fields: dict[str, object] = {"lock": str(path)}
    model = lock.model
    if isinstance(model, PinnedOllama):
        fields |= {"ollama": model.name.display, "registry": model.name.host, "digest": f"sha256:{model.digest}",
                   "blobs": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in model.blobs],
                   "total": format_size(sum(b.size for b in model.blobs))}
    elif model is not None:
        fields |= {"repo": model.repo, "revision": model.revision, "commit": model.commit,
                   "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in model.files],
                   "total": format_size(sum(f.size for f in model.files))}
    if lock.engine is not None:
        fields["engine"] = engine_fields(lock.engine)
    if only:
        fields["only"] = only
    return path, fields


def engine_fields(pinned: object) -> dict[str, object]:
    from provisioner.lock.engine import PinnedFile, PinnedGit, PinnedImage
    from provisioner.lock.wheels import PinnedVenv

    if isinstance(pinned, PinnedVenv):
        return {"kind": "venv", "requirements": list(pinned.requirements),
                "resolve_for": {"python": pinned.python, "glibc": pinned.glibc, "machine": pinned.machine},
                "wheels": [{"name": w.name, "version": w.version, "url": w.url, "sha256": w.sha256}
                           for w in pinned.wheels]}
    if isinstance(pinned, PinnedFile):
        return {"kind": "file", "for": pinned.wanted, "url": pinned.url, "sha256": pinned.sha256, "size": pinned.size}
    if isinstance(pinned, PinnedGit):
        return {"kind": "git", "repository": pinned.git, "ref": pinned.ref, "commit": pinned.commit}
    assert isinstance(pinned, PinnedImage)
    return {"kind": "image", "image": pinned.image, "digest": pinned.digest, "pinned": pinned.pinned}


def _engine_lines(engine: dict[str, object]) -> list[str]:
    if engine["kind"] == "file":
        named = str(engine["for"]).removeprefix("pypi:")
        return [f"  engine {named}: {engine['url']}", f"    {engine['size']} bytes  sha256 {engine['sha256']}"]
    if engine["kind"] == "venv":
        wheels, target = engine["wheels"], engine["resolve_for"]
        assert isinstance(wheels, list) and isinstance(target, dict) and isinstance(engine["requirements"], list)
        return [f"  engine {' '.join(engine['requirements'])} for Python {target['python']}, glibc "
                f"{target['glibc']}, {target['machine']}: {len(wheels)} wheel(s)",
                *(f"    {w['name']}=={w['version']}  sha256 {w['sha256']}" for w in wheels)]
    if engine["kind"] == "git":
        return [f"  engine {engine['repository']} {engine['ref']}: commit {engine['commit']}"]
    return [f"  engine {engine['image']}: {engine['digest']}"]


@command("lock")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--python", "pip_python", metavar="PATH",
              help="The Python whose pip resolves a venv's wheels (default: provision's own); give one of "
                   "the host's version when dependency markers name the Python version.")
@click.option("--only", type=click.Choice(["engine", "model"]),
              help="Renew only this part and keep the other as the lock has it (a new engine pin does not "
                   "move the model's commit).")
def lock(profile: Path, pip_python: str | None, only: str | None, as_json: bool) -> Result:
    """Pin the profile's model source: the commit its branch is at, and every file the quant
    selects with its size and sha256, into PROFILE.lock (commit it beside the profile). An
    Ollama tag is pinned to its manifest's digest (the ID `ollama list` shows) and blobs. An
    engine named loosely is pinned too: a PyPI sdist (pypi: NAME==VERSION) or a URL without
    sha256 to its URL, sha256 and size; a git ref to its commit; a container tag to its digest;
    a venv's requirements to every wheel of their closure, resolved by pip for resolve_for.

    plan and apply install exactly what the lock says; a changed quant or source needs a
    new lock. The hub is HF_ENDPOINT (default https://huggingface.co); an Ollama registry is
    PROVISION_OLLAMA_REGISTRY when set (a mirror), else the tag's host; PyPI's simple index is
    PROVISION_PYPI_INDEX (default https://pypi.org/simple); a container registry is
    PROVISION_CONTAINER_REGISTRY when set (a mirror), else the image's host.

    \b
    Example:
      provision lock box.yaml
      provision lock vllm-box.yaml --only engine --python /usr/bin/python3.12
      provision plan box.yaml --root ./image --update-lock
    """
    path, fields = write_profile_lock(profile, pip_python, only)
    said: list[str] = []
    if "ollama" in fields:
        blobs = fields["blobs"]
        assert isinstance(blobs, list)
        said = [f"wrote {path}: {fields['ollama']} on {fields['registry']} is {fields['digest']}, "
                f"{len(blobs)} blob(s), {fields['total']}"]
        said += [f"  {b['mediaType']}  {b['digest']}  {b['size']} bytes" for b in blobs]
    elif "repo" in fields:
        files = fields["files"]
        assert isinstance(files, list)
        said = [f"wrote {path}: {fields['repo']}@{fields['revision']} is commit {fields['commit']}, "
                f"{len(files)} file(s), {fields['total']}"]
        said += [f"  {f['path']}  {f['size']} bytes  sha256 {f['sha256'] or '(git blob)'}" for f in files]
    else:
        why = ("--only engine, and no model pin to keep" if "only" in fields else
               "the model's files carry their own sha256")
        said = [f"wrote {path}: the engine only ({why})"]
    engine = fields.get("engine")
    if isinstance(engine, dict):
        said += _engine_lines(engine)
    return Result(EXIT_OK, fields, (lines(*said),))
