"""An Ollama tag in PROFILE.lock, through the CLI, against a registry stand-in on loopback
serving a real tiny GGUF: plan refuses an unlocked or stale tag; `provision lock` records
the manifest's digest and its blobs; apply puts the blobs and then the manifest, byte for
byte, where `ollama pull` would, owned by the service user (under --root and over SSH);
a second apply does nothing; a corrupt blob fails the apply and leaves no manifest.

No `ollama` binary runs here (none is installed on the test machine): what `ollama list`
would show is checked as Ollama computes it, the sha256 of the manifest file's bytes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.errors import ProfileError
from provisioner.install.ollama_registry import PinnedOllama
from provisioner.lock import Lock, LockedFile, ModelLock, read_lock, write_lock
from tests.conftest import ROOT
from tests.support import sshd
from tests.support.http_standin import HttpStandin, Served
from tests.support.ollama_standin import MANIFEST_TYPE, OllamaTag, digest_of, manifest_path, serve_tag

MODELS = "var/lib/ollama/models"


@pytest.fixture(scope="module")
def tiny_gguf(llama_server_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    from tests.support.tinymodel import write_tiny_model

    vocab = llama_server_binary.parents[6] / "models" / "ggml-vocab-qwen2.gguf"
    return write_tiny_model(vocab, tmp_path_factory.mktemp("tiny") / "tiny.gguf").read_bytes()


@pytest.fixture
def tag(tiny_gguf: bytes) -> OllamaTag:
    return OllamaTag("library/tiny-qwen2", "f32", tiny_gguf)


@pytest.fixture
def registry(tag: OllamaTag) -> Iterator[HttpStandin]:
    with HttpStandin() as standin:
        serve_tag(standin, tag)
        yield standin


def provision(registry: HttpStandin, *args: str, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PROVISION_OLLAMA_REGISTRY": registry.url(), "PROVISION_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)


def _profile(tmp_path: Path, source: str = "tiny-qwen2:f32", extra: str = "") -> Path:
    path = tmp_path / "p.yaml"
    path.write_text("extends: rtx-4090-qwen3-30b-ollama\nmetadata: {name: p}\n"
                    f"model:\n  source: {{ollama: \"{source}\"{extra}}}\ninstall: {{model: true}}\n")
    return path


def _uid(root: Path, user: str) -> int:
    line = next(x for x in (root / "etc/passwd").read_text().splitlines() if x.startswith(f"{user}:"))
    return int(line.split(":")[2])


def test_lock_pins_the_manifest_and_apply_installs_exactly_it(tmp_path: Path, registry: HttpStandin,
                                                             tag: OllamaTag) -> None:
    profile, root, cache = _profile(tmp_path), tmp_path / "image", tmp_path / "cache"
    refused = provision(registry, "plan", str(profile), "--root", str(root), "--ignore-fit", cache=cache)
    assert refused.returncode == 1
    assert "model.source.ollama: the model source has no lock" in refused.stderr
    assert f"run `provision lock {profile}`" in refused.stderr and "Traceback" not in refused.stderr

    locked = provision(registry, "lock", str(profile), cache=cache)
    assert locked.returncode == 0, locked.stderr
    pinned = read_lock(tmp_path / "p.lock")
    assert pinned is not None and isinstance(pinned.model, PinnedOllama)
    lock = pinned.model
    assert lock.digest == hashlib.sha256(tag.manifest).hexdigest() and lock.manifest == tag.manifest
    assert (lock.name.host, lock.name.repository, lock.name.tag) == ("registry.ollama.ai", "library/tiny-qwen2", "f32")
    assert [(b.media_type, b.digest, b.size) for b in lock.layers] == [
        (m, digest_of(c), len(c)) for m, c in tag.layers]
    assert lock.config.digest == digest_of(tag.config)
    assert yaml.safe_load((tmp_path / "p.lock").read_text())["version"] == 3
    # fit places the locked model layer's bytes, not the catalog's size for the tag
    sized = provision(registry, "fit", str(profile), "--ignore-fit", "--json", cache=cache)
    assert sized.returncode == 0, sized.stderr
    fitted = json.loads(sized.stdout)
    assert fitted["weights_from"] == f"p.lock (tiny-qwen2:f32 at {lock.digest[:12]})"
    assert fitted["weights_size"] == {"bytes": len(tag.gguf), "exact": True, "note": None}

    planned = provision(registry, "plan", str(profile), "--root", str(root), "--ignore-fit", "--json", cache=cache)
    assert planned.returncode == 2, planned.stderr
    [host] = json.loads(planned.stdout)["hosts"]
    [download] = [i for i in host["installs"] if i["name"] == "download:model"]
    assert download["bytes"] == sum(len(c) for c in tag.blobs.values())
    applied = provision(registry, "apply", str(profile), "--root", str(root), "--ignore-fit", "--yes", cache=cache)
    assert applied.returncode == 0, applied.stderr

    models = root / MODELS
    manifest = models / "manifests/registry.ollama.ai/library/tiny-qwen2/f32"
    assert manifest.read_bytes() == tag.manifest  # the registry's bytes: `ollama list` shows this id
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == lock.digest
    assert sorted(p.name for p in (models / "blobs").iterdir()) == sorted(
        d.replace(":", "-") for d in tag.blobs)
    for digest, content in tag.blobs.items():
        assert (models / "blobs" / digest.replace(":", "-")).read_bytes() == content
    uid = _uid(root, "ollama")
    assert {p.stat().st_uid for p in [models, manifest, *models.rglob("*")]} == {uid}
    assert f'OLLAMA_MODELS="/{MODELS}"' in (root / "etc/default/ollama").read_text().splitlines()
    # what runs is what was reviewed: the manifest was asked once, by `provision lock`
    assert len(registry.to(manifest_path(tag))) == 1

    again = provision(registry, "plan", str(profile), "--root", str(root), "--ignore-fit", "--json", cache=cache)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["hosts"][0]["installs"] == []
    checked = provision(registry, "verify", str(profile), "--root", str(root), "--ignore-fit", "--json", cache=cache)
    assert {c["id"]: c["status"] for c in json.loads(checked.stdout)["hosts"][0]["checks"]}[
        "install.download:model"] == "pass"


def test_a_changed_tag_or_digest_needs_a_new_lock(tmp_path: Path, registry: HttpStandin, tag: OllamaTag) -> None:
    cache, root = tmp_path / "cache", tmp_path / "image"
    assert provision(registry, "lock", str(_profile(tmp_path)), cache=cache).returncode == 0
    stale = provision(registry, "plan", str(_profile(tmp_path, "tiny-qwen2:q8")), "--root", str(root),
                      "--ignore-fit", cache=cache)
    assert stale.returncode == 1
    assert "the model source changed since p.lock was made (it locks tiny-qwen2:f32)" in stale.stderr
    assert "provision lock" in stale.stderr

    other = "0" * 12 if not hashlib.sha256(tag.manifest).hexdigest().startswith("0" * 12) else "1" * 12
    pinned = _profile(tmp_path, extra=f", ollama_digest: \"{other}\"")
    disagrees = provision(registry, "plan", str(pinned), "--root", str(root), "--ignore-fit", cache=cache)
    assert disagrees.returncode == 1
    assert f"ollama_digest {other} is not the id" in disagrees.stderr
    relock = provision(registry, "lock", str(pinned), cache=cache)
    assert relock.returncode == 1 and "tiny-qwen2:f32 is now id" in relock.stderr
    agrees = _profile(tmp_path, extra=f", ollama_digest: \"{hashlib.sha256(tag.manifest).hexdigest()[:12]}\"")
    assert provision(registry, "lock", str(agrees), cache=cache).returncode == 0


def test_an_unknown_tag_is_one_line(tmp_path: Path, registry: HttpStandin) -> None:
    missing = provision(registry, "lock", str(_profile(tmp_path, "tiny-qwen2:nope")), cache=tmp_path / "cache")
    assert missing.returncode == 1
    assert "tiny-qwen2:nope: no such model or tag" in missing.stderr and "HTTP 404" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "p.lock").exists()


def _served_manifest(tag: OllamaTag, edit: Callable[[dict[str, Any]], None]) -> bytes:
    doc = json.loads(tag.manifest)
    edit(doc)
    return json.dumps(doc, separators=(",", ":")).encode()


def _hostile_type(doc: dict[str, Any]) -> None:
    doc["layers"][1]["mediaType"] = "application/vnd.ollama.image.template\x1b[2J\n@install download:model ok"


def _one_digest_two_sizes(doc: dict[str, Any]) -> None:
    doc["layers"].append({**doc["layers"][1], "size": doc["layers"][1]["size"] + 1})


@pytest.mark.parametrize(("edit", "said"), [
    (_hostile_type, "is not a media type (type/subtype, RFC 6838)"),
    (_one_digest_two_sizes, "twice, as"),
])
def test_a_manifest_provision_would_not_pull_is_refused_in_one_line(
        tmp_path: Path, tag: OllamaTag, edit: Callable[[dict[str, Any]], None], said: str) -> None:
    """A registry's manifest whose mediaType carries terminal escapes and a newline, or that
    lists one digest with two sizes: `provision lock` refuses it, prints no raw byte of it and
    writes no lock."""
    with HttpStandin() as registry:
        serve_tag(registry, tag)
        registry.serve(manifest_path(tag), Served(_served_manifest(tag, edit), content_type=MANIFEST_TYPE))
        refused = provision(registry, "lock", str(_profile(tmp_path)), cache=tmp_path / "cache")
    assert refused.returncode == 1
    assert [line for line in refused.stderr.splitlines() if said in line] == [refused.stderr.splitlines()[0]]
    assert "\x1b" not in refused.stdout + refused.stderr and "@install" not in refused.stdout
    assert "Traceback" not in refused.stderr and not (tmp_path / "p.lock").exists()


def test_a_corrupt_blob_fails_the_apply_in_one_line_and_the_next_apply_completes(tmp_path: Path,
                                                                                  tag: OllamaTag) -> None:
    profile, root, cache = _profile(tmp_path), tmp_path / "image", tmp_path / "cache"
    bad = digest_of(tag.gguf).replace(":", "-")
    models = root / MODELS
    with HttpStandin() as registry:
        serve_tag(registry, tag, wrong=frozenset({digest_of(tag.gguf)}))
        assert provision(registry, "lock", str(profile), cache=cache).returncode == 0
        failed = provision(registry, "apply", str(profile), "--root", str(root), "--ignore-fit", "--yes",
                           cache=cache)
        assert failed.returncode != 0
        # the failed apply itself leaves no manifest and no bad blob
        assert not (models / "manifests").exists() and not (models / "blobs" / bad).exists()
        serve_tag(registry, tag)  # the registry serves the right bytes again
        fixed = provision(registry, "apply", str(profile), "--root", str(root), "--ignore-fit", "--yes",
                          cache=cache)
    errors = [line for line in failed.stderr.splitlines() if "checksum mismatch" in line]
    assert len(errors) == 1 and bad in errors[0], failed.stderr
    assert fixed.returncode == 0, fixed.stderr
    manifest = models / "manifests/registry.ollama.ai/library/tiny-qwen2/f32"
    assert manifest.read_bytes() == tag.manifest and (models / "blobs" / bad).read_bytes() == tag.gguf


@pytest.mark.parametrize("planted", ["manifests/registry.ollama.ai", "blobs"])
def test_a_symlink_the_service_user_plants_is_refused_and_its_target_untouched(
        tmp_path: Path, registry: HttpStandin, planted: str) -> None:
    """The service user owns OLLAMA_MODELS: a dir it swaps for a symlink to a root-owned dir
    must not make the next (root) apply write into, or chown, that dir."""
    profile, root, cache = _profile(tmp_path), tmp_path / "image", tmp_path / "cache"
    assert provision(registry, "lock", str(profile), cache=cache).returncode == 0
    first = provision(registry, "apply", str(profile), "--root", str(root), "--ignore-fit", "--yes", cache=cache)
    assert first.returncode == 0, first.stderr
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    before = {p.name: (p.stat().st_uid, p.stat().st_gid, p.read_bytes()) for p in victim.iterdir()}
    owner = (victim.stat().st_uid, victim.stat().st_gid)
    link = root / MODELS / planted
    shutil.rmtree(link)
    link.symlink_to(victim)

    second = provision(registry, "apply", str(profile), "--root", str(root), "--ignore-fit", "--yes", cache=cache)
    assert second.returncode != 0
    said = [line for line in second.stderr.splitlines() if "is a symlink" in line]
    assert len(said) == 1 and f"{MODELS}/{planted} is a symlink" in said[0], second.stderr
    assert "Traceback" not in second.stderr
    assert {p.name: (p.stat().st_uid, p.stat().st_gid, p.read_bytes()) for p in victim.iterdir()} == before
    assert (victim.stat().st_uid, victim.stat().st_gid) == owner


def test_a_dir_that_was_there_keeps_its_owner(tmp_path: Path, registry: HttpStandin, tag: OllamaTag) -> None:
    """Only what an apply makes is chowned to the service user: not a dir that was already there."""
    profile, root, cache = _profile(tmp_path), tmp_path / "image", tmp_path / "cache"
    assert provision(registry, "lock", str(profile), cache=cache).returncode == 0
    assert provision(registry, "apply", str(profile), "--root", str(root), "--ignore-fit", "--yes",
                     cache=cache).returncode == 0
    manifests = root / MODELS / "manifests"
    manifest = manifests / "registry.ollama.ai/library/tiny-qwen2/f32"
    manifest.unlink()
    os.chown(manifests, 0, 0)
    again = provision(registry, "apply", str(profile), "--root", str(root), "--ignore-fit", "--yes", cache=cache)
    assert again.returncode == 0, again.stderr
    assert manifest.read_bytes() == tag.manifest and manifest.stat().st_uid == _uid(root, "ollama")
    assert (manifests.stat().st_uid, manifests.stat().st_gid) == (0, 0)


def test_a_hand_edited_lock_is_refused_and_format_1_is_still_read(tmp_path: Path, registry: HttpStandin) -> None:
    profile = _profile(tmp_path)
    assert provision(registry, "lock", str(profile), cache=tmp_path / "cache").returncode == 0
    lock_file = tmp_path / "p.lock"
    data = yaml.safe_load(lock_file.read_text())
    data["model"]["ollama"]["layers"][0]["size"] += 1
    lock_file.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="config and layers differ from what the manifest lists"):
        read_lock(lock_file)
    data["model"]["ollama"]["layers"][0]["size"] -= 1
    data["model"]["ollama"]["manifest"] = data["model"]["ollama"]["manifest"].replace("f32", "F32") + " "
    lock_file.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="the manifest's bytes hash to"):
        read_lock(lock_file)

    hf = tmp_path / "hf.lock"
    write_lock(hf, Lock(ModelLock("o/r", "main", ("*.gguf",), "a" * 40, (LockedFile("m.gguf", 1, "b" * 64),))), "hf")
    old = yaml.safe_load(hf.read_text())
    assert old["version"] == 3
    for version in (1, 2):
        hf.write_text(yaml.safe_dump({**old, "version": version}))
        read = read_lock(hf)
        assert read is not None and isinstance(read.model, ModelLock)
    hf.write_text(yaml.safe_dump({**old, "version": 4}))
    with pytest.raises(ProfileError, match="lock format 4, this provision reads 1, 2, 3"):
        read_lock(hf)


@pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))
@pytest.mark.usefixtures("ssh_transport")
def test_apply_over_ssh_installs_the_tag(tmp_path: Path, registry: HttpStandin, tag: OllamaTag) -> None:
    farm = sshd.start_farm(tmp_path / "ssh", 1)
    try:
        [host] = farm.hosts
        profile, cache = _profile(tmp_path), tmp_path / "cache"
        assert provision(registry, "lock", str(profile), cache=cache).returncode == 0
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(f"hosts:\n  h: {{address: {host.address}, port: {sshd.PORT}, user: root, "
                             f"key: {farm.client_key}, root: {tmp_path}/far, profile: {profile}}}\n")
        known = str(farm.known_hosts)
        applied = provision(registry, "apply", "-i", str(inventory), "--known-hosts", known, "--ignore-fit",
                            "--yes", cache=cache)
        assert applied.returncode == 0, applied.stderr
        manifest = tmp_path / "far" / MODELS / "manifests/registry.ollama.ai/library/tiny-qwen2/f32"
        assert manifest.read_bytes() == tag.manifest
        assert manifest.stat().st_uid == _uid(tmp_path / "far", "ollama")
        noop = provision(registry, "apply", "-i", str(inventory), "--known-hosts", known, "--ignore-fit",
                         "--yes", "--json", cache=cache)
        assert noop.returncode == 0, noop.stderr
        assert not json.loads(noop.stdout)["changed"]
    finally:
        farm.stop()


def test_the_lock_is_the_id_verify_expects(tmp_path: Path, registry: HttpStandin, tag: OllamaTag,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """plan/apply/verify build with require_lock: ollama_digest is the lock's digest, and the
    model.ollama check passes for a listing with that ID (Manifest.Digest()[:12]) only."""
    from provisioner.facts.model_files import ModelDir
    from provisioner.render.pipeline import build
    from provisioner.verify.model import ollama_checks
    from tests.verify.test_model_dirs import OLLAMA_LIST

    monkeypatch.setenv("PROVISION_CACHE", str(tmp_path / "cache"))
    profile = _profile(tmp_path)
    assert provision(registry, "lock", str(profile), cache=tmp_path / "cache").returncode == 0
    source = build(profile, ignore_fit=True, network=False, require_lock=True).spec.profile.model.source
    digest = hashlib.sha256(tag.manifest).hexdigest()
    assert source.ollama_digest == f"sha256:{digest}"
    header, *_ = OLLAMA_LIST.splitlines()
    listed = ModelDir(ollama="0", ollama_lines=[header, f"tiny-qwen2:f32    {digest[:12]}    5.1 MB  now"])
    assert ollama_checks("tiny-qwen2:f32", listed, source.ollama_digest)[0].status == "pass"
    other = ModelDir(ollama="0", ollama_lines=[header, "tiny-qwen2:f32    a6990ed6be41    5.1 MB  now"])
    [check] = ollama_checks("tiny-qwen2:f32", other, source.ollama_digest)
    assert check.status == "fail" and "provision lock" in (check.hint or "")
