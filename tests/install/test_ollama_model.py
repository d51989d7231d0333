"""The Ollama install item's sh (probe and apply snippet) passes sh -n and shellcheck, and
Ollama names split as types/model/name.go splits them (the defaults it merges in)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.converge.apply import ApplyInputs, apply_script
from provisioner.converge.plan import Plan
from provisioner.errors import ProvisionError
from provisioner.facts.gather import gather_script
from provisioner.install.ollama_model import OllamaModel
from provisioner.install.ollama_registry import OllamaName, parse_manifest
from tests.install.test_scripts import SHELLCHECK
from tests.support.http_standin import HttpStandin
from tests.support.ollama_standin import OllamaTag, serve_tag

TAG = OllamaTag("library/tiny", "f32", b"GGUF" + bytes(range(256)) * 64)


def _item(base_url: str = "http://127.0.0.1:9", owner: tuple[str, str] = ("ollama", "ollama")) -> OllamaModel:
    pinned = parse_manifest(OllamaName.parse("tiny:f32"), TAG.manifest)
    return OllamaModel(pinned, "/var/lib/ollama/models", base_url, owner)


@pytest.mark.parametrize(("text", "parts", "shown"), [
    ("qwen3", ("registry.ollama.ai", "library", "qwen3", "latest"), "qwen3:latest"),
    ("qwen3:30b-a3b", ("registry.ollama.ai", "library", "qwen3", "30b-a3b"), "qwen3:30b-a3b"),
    ("someone/model:q4", ("registry.ollama.ai", "someone", "model", "q4"), "someone/model:q4"),
    ("example.com/ns/m:v1.2", ("example.com", "ns", "m", "v1.2"), "example.com/ns/m:v1.2"),
])
def test_names_take_ollamas_defaults(text: str, parts: tuple[str, str, str, str], shown: str) -> None:
    name = OllamaName.parse(text)
    assert (name.host, name.namespace, name.model, name.tag) == parts
    assert name.display == shown and name.manifest_path == "/".join(parts)


def test_a_name_with_four_parts_is_refused() -> None:
    with pytest.raises(ProvisionError, match="more than host/namespace/model"):
        OllamaName.parse("a/b/c/d:e")


def test_probe_and_snippet_pass_shellcheck(tmp_path: Path) -> None:
    item = _item()
    for root in ("", "/mnt/image"):
        gather = tmp_path / f"gather{len(root)}.sh"
        gather.write_text(gather_script(["/etc/x.conf"], root, "ollama", extra=item.probe(root)))
        change = item.change({}, root)
        assert change is not None and change.bytes == sum(b.size for b in item.pinned.blobs)
        plan = Plan(changes=(), handlers=(), handler_commands={}, restart_pending=(), reboot_required=False,
                    installs=(change,))
        script = tmp_path / f"apply{len(root)}.sh"
        script.write_text(apply_script(ApplyInputs(plan=plan, root=root, state_dir="/var/lib/provision",
                                                   generation=1, expected_last=0, profile_name="t", time="t")))
        for path in (gather, script):
            subprocess.run(["sh", "-n", str(path)], check=True)
            subprocess.run([SHELLCHECK, "-s", "sh", "-S", "warning", "-e", "SC2043,SC2157", str(path)], check=True)


def test_nothing_to_do_once_the_manifest_and_stamped_blobs_are_there() -> None:
    item = _item()
    assert item.change({}, "") is not None
    # the manifest alone is not enough: a blob that is not there (or not stamped) is fetched
    assert item.change({"manifest": item.pinned.digest}, "") is not None
    stamped = {f"{key}.{i}": "10 1.5" for i in range(len(item.pinned.blobs)) for key in ("file", "stamp")}
    sized = {k: f"{item.pinned.blobs[int(k.split('.')[1])].size} 1.5" for k in stamped}
    assert item.change({**sized, "manifest": "0" * 64}, "") is not None
    assert item.change({**sized, "manifest": item.pinned.digest}, "") is None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1): the live snippet writes /var/lib in a private mount namespace")
def test_the_live_snippet_writes_blobs_then_manifest_owned_by_the_user(tmp_path: Path) -> None:
    """root "" (a live host): /var/lib is a tmpfs of the test's own mount namespace, the owner a
    user every Debian has (nobody:nogroup), its ids read from the real /etc/passwd and /etc/group."""
    with HttpStandin() as registry:
        serve_tag(registry, TAG)
        item = _item(registry.url(), ("nobody", "nogroup"))
        change = item.change({}, "")
        assert change is not None
        snippet = tmp_path / "snippet.sh"
        snippet.write_text(change.script)
        out = tmp_path / "out"
        run = subprocess.run(
            ["unshare", "-m", "sh", "-euc",
             'mount -t tmpfs provision-test /var/lib; root= state=/var/lib/provision; export root state\n'
             'mkdir -p "$state"; sh -eu "$1"; cp -a /var/lib/ollama "$2"', "sh", str(snippet), str(out)],
            capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "@install-ok download:model" in run.stdout
    manifest = out / "models/manifests/registry.ollama.ai/library/tiny/f32"
    assert manifest.read_bytes() == TAG.manifest
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() == item.pinned.digest
    for digest, content in TAG.blobs.items():
        assert (out / "models/blobs" / digest.replace(":", "-")).read_bytes() == content
    uid = next(x for x in Path("/etc/passwd").read_text().splitlines() if x.startswith("nobody:")).split(":")[2]
    gid = next(x for x in Path("/etc/group").read_text().splitlines() if x.startswith("nogroup:")).split(":")[2]
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in [out / "models", *(out / "models").rglob("*")]}
    assert owners == {(int(uid), int(gid))}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1): the live snippet writes /var/lib in a private mount namespace")
@pytest.mark.parametrize("planted", ["models/manifests/registry.ollama.ai", "models/blobs", "models"])
def test_the_live_snippet_refuses_a_symlink_the_service_user_planted(tmp_path: Path, planted: str) -> None:
    """After a first apply the service user owns /var/lib/ollama: a dir it swaps for a symlink
    to a root-owned dir (here one outside /var/lib) stops the next apply, which writes and
    chowns nothing there. Without root, only the snippet's own check stands between them."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("root's\n")
    with HttpStandin() as registry:
        serve_tag(registry, TAG)
        change = _item(registry.url(), ("nobody", "nogroup")).change({}, "")
        assert change is not None
        snippet = tmp_path / "snippet.sh"
        snippet.write_text(change.script)
        run = subprocess.run(
            ["unshare", "-m", "sh", "-uc",
             'mount -t tmpfs provision-test /var/lib; root= state=/var/lib/provision; export root state\n'
             'mkdir -p "$state"; sh -eu "$1" >/dev/null || exit 9\n'
             'rm -rf "/var/lib/ollama/$3"; ln -s "$2" "/var/lib/ollama/$3"; rm -f "$state"/downloads/*.ok\n'
             'sh -eu "$1"', "sh", str(snippet), str(victim), planted],
            capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    errors = [line for line in run.stdout.splitlines() if line.startswith("@error")]
    assert errors == [f"@error download:model: /var/lib/ollama/{planted} is a symlink: provision writes the "
                      "Ollama model only through real directories (the service user can plant one; "
                      "remove it and apply again)"]
    assert [(p.name, p.stat().st_uid, p.read_text()) for p in victim.iterdir()] == [("keep", 0, "root's\n")]
    assert victim.stat().st_uid == 0


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1): the live snippet writes /var/lib in a private mount namespace")
def test_partials_stay_out_of_blobs_and_off_another_filesystem(tmp_path: Path) -> None:
    """/var/lib/ollama a filesystem of its own (a tmpfs here): a rename from provision's state
    dir would be a copy, so the partials go to a root-only .provision-partial beside blobs/;
    blobs/ never holds a name Ollama's PruneLayers would delete."""
    with HttpStandin() as registry:
        serve_tag(registry, TAG)
        change = _item(registry.url(), ("nobody", "nogroup")).change({}, "")
        assert change is not None
        snippet = tmp_path / "snippet.sh"
        snippet.write_text(change.script.replace(
            'must mv -f "$stage"', 'echo "@blobs-before-rename $(ls -A /var/lib/ollama/models/blobs)"; '
                                   'must mv -f "$stage"', 1))
        out = tmp_path / "out"
        run = subprocess.run(
            ["unshare", "-m", "sh", "-euc",
             'mount -t tmpfs provision-test /var/lib; mkdir /var/lib/ollama\n'
             'mount -t tmpfs provision-models /var/lib/ollama; root= state=/var/lib/provision; export root state\n'
             'mkdir -p "$state"; sh -eu "$1"; cp -a /var/lib/ollama "$2"', "sh", str(snippet), str(out)],
            capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    # right before the first rename, blobs/ held nothing: no partial there
    assert "@install-ok download:model" in run.stdout
    assert [line for line in run.stdout.splitlines() if line.startswith("@blobs")] == ["@blobs-before-rename "]
    stage = out / "models/.provision-partial"
    assert stage.is_dir() and stage.stat().st_uid == 0 and stage.stat().st_mode & 0o777 == 0o700
    assert list(stage.iterdir()) == []
    assert sorted(p.name for p in (out / "models/blobs").iterdir()) == sorted(d.replace(":", "-") for d in TAG.blobs)
