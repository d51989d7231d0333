"""The build cache: a hit only while every input is as it was; damaged entries rebuilt;
what a hit imports (a subprocess, ``sys.modules`` at exit)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioner.render.cached import BuildRequest, CachedBuild, cached_build
from provisioner.render.cachestore import builds_dir
from tests.conftest import ROOT, make_profile
from tests.support.imports import HEAVY, imported

TEMPLATES = {"templates/motd.j2": "{% include 'templates/part.j2' %} {{ greeting }} on {{ cpus }}\n",
             "templates/part.j2": "part one\n",
             "base.yaml": "vars: {greeting: hello}\n"}


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("PROVISION_CACHE", str(folder))
    return folder


def _profile(tmp_path: Path) -> Path:
    """The quickstart with a template that includes another and an extends of a local file."""
    path = make_profile(tmp_path, {"files": [{"template": "templates/motd.j2", "dest": "/etc/motd"}]},
                        files=TEMPLATES)
    path.write_text("extends: base.yaml\n" + path.read_text())
    return path


def _motd(built: CachedBuild) -> bytes:
    return built.summary.rendered.file("/etc/motd").content


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def test_a_second_build_is_a_hit_with_the_same_result(tmp_path: Path) -> None:
    request = BuildRequest(str(_profile(tmp_path)))
    first = cached_build(request)
    again = cached_build(request)
    assert not first.hit and again.hit
    assert again.summary == first.summary
    assert _motd(again) == b"part one\n hello on 24\n"


@pytest.mark.parametrize(("changed", "old", "new", "motd"), [
    ("p.yaml", "name: quickstart", "name: quickstart-2", b"part one\n hello on 24\n"),  # the profile itself
    ("base.yaml", "hello", "bonjour", b"part one\n bonjour on 24\n"),  # what it extends
    ("templates/motd.j2", "{{ greeting }}", "{{ greeting }}!", b"part one\n hello! on 24\n"),  # its template
    ("templates/part.j2", "one", "two", b"part two\n hello on 24\n"),  # a template that one includes
])
def test_an_edit_to_any_input_misses(tmp_path: Path, changed: str, old: str, new: str, motd: bytes) -> None:
    request = BuildRequest(str(_profile(tmp_path)))
    cached_build(request)
    assert cached_build(request).hit
    _edit(tmp_path / changed, old, new)
    rebuilt = cached_build(request)
    assert not rebuilt.hit
    assert _motd(rebuilt) == motd
    assert cached_build(request).hit and _motd(cached_build(request)) == motd


def test_going_back_to_an_earlier_profile_finds_its_build(tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    request = BuildRequest(str(profile))
    first = cached_build(request)
    text = profile.read_text()
    profile.write_text(text.replace("name: quickstart", "name: quickstart-2"))
    assert not cached_build(request).hit
    profile.write_text(text)
    back = cached_build(request)
    assert back.hit and back.summary == first.summary


def test_a_file_that_appears_beside_the_profile_misses(tmp_path: Path) -> None:
    """A file the loader would read if it were there (a lock file) did not exist when the
    entry was made: its appearing changes the folder, and the build runs again."""
    profile = _profile(tmp_path)
    request = BuildRequest(str(profile))
    cached_build(request)
    assert cached_build(request).hit
    (tmp_path / "p.lock").write_text("{}\n")
    assert not cached_build(request).hit
    assert cached_build(request).hit


def test_the_same_bytes_written_again_still_hit(tmp_path: Path) -> None:
    """Inputs are known by content: a tool that writes the profile before each run loses nothing."""
    profile = _profile(tmp_path)
    request = BuildRequest(str(profile))
    cached_build(request)
    profile.write_text(profile.read_text())
    assert cached_build(request).hit


def test_a_model_file_that_appears_misses(tmp_path: Path) -> None:
    """fit reads the GGUF header when the profile's files are here: their presence is an input."""
    root = tmp_path / "image"
    request = BuildRequest(str(_profile(tmp_path)), model_root=str(root))
    cached_build(request)
    assert cached_build(request).hit
    shard = root / "srv/models/qwen3-235b-a22b/UD-Q3_K_XL/Qwen3-235B-A22B-UD-Q3_K_XL-00001-of-00003.gguf"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"GGUF")
    assert not cached_build(request).hit


def test_the_request_is_part_of_the_key(tmp_path: Path) -> None:
    profile = str(_profile(tmp_path))
    cached_build(BuildRequest(profile))
    assert not cached_build(BuildRequest(profile, overrides=json.dumps({"runtime": {"port": 8081}}))).hit
    assert not cached_build(BuildRequest(profile, network=False)).hit
    assert not cached_build(BuildRequest(profile, model_root="")).hit


def test_a_damaged_or_foreign_entry_is_rebuilt(tmp_path: Path) -> None:
    request = BuildRequest(str(_profile(tmp_path)))
    cached_build(request)
    folder = builds_dir()
    assert folder is not None
    entry = folder / f"{request.entry_name()}.json"
    entry.write_bytes(entry.read_bytes()[:100])  # torn
    assert not cached_build(request).hit
    assert cached_build(request).hit
    data = json.loads(entry.read_text())
    data["summary"]["c"] = "os:system"  # an entry that would run anything else is no entry
    entry.write_text(json.dumps(data))
    rebuilt = cached_build(request)
    assert not rebuilt.hit and _motd(rebuilt) == b"part one\n hello on 24\n"


def test_renders_with_a_hosts_facts_are_cached_too(tmp_path: Path) -> None:
    request = BuildRequest(str(_profile(tmp_path)))
    cached_build(request)
    hit = cached_build(request)
    facts = {"mem_total_kb": "16000000", "cpus": "2"}
    rendered = hit.rendered_for(facts)
    assert not hit.hit  # the first render with these facts needed the full build
    again = cached_build(request)
    assert again.rendered_for(facts) == rendered and again.hit
    assert rendered.file("/etc/motd").content == b"part one\n hello on 2\n"  # the host's, not the profile's


def test_concurrent_runs_leave_one_whole_entry(tmp_path: Path, cache: Path) -> None:
    profile = _profile(tmp_path)
    runs = [subprocess.Popen([sys.executable, "-m", "provisioner", "validate", str(profile)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(4)]
    assert all(run.wait(timeout=120) == 0 for run in runs)
    entries = list((cache / "builds").glob("*.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["summary"]
    assert not list((cache / "builds").glob(".*.tmp"))


def test_validate_and_a_cached_plan_import_nothing_heavy(tmp_path: Path, cache: Path) -> None:
    env = {**os.environ, "PROVISION_CACHE": str(cache)}
    bundled = str(ROOT / "profiles" / "rtx-4090-qwen3-30b-a3b-llamacpp.yaml")
    root = tmp_path / "image"
    plan = ["plan", str(ROOT / "examples" / "quickstart.yaml"), "--root", str(root)]
    missed = imported(["validate", bundled], tmp_path, env)
    assert "pydantic" in missed  # the miss builds
    assert not missed & {"gguf", "numpy"}  # no model file on this machine: no header to read
    assert "jinja2" in imported(plan, tmp_path, env)  # renders with this machine's facts
    assert not imported(["validate", bundled], tmp_path, env) & HEAVY
    assert not imported(plan, tmp_path, env) & HEAVY


def test_a_cached_apply_that_changes_files_builds_nothing(tmp_path: Path, cache: Path) -> None:
    """Its next steps come from the cache too: a change on a host is not a reason for the schema,
    the catalog or the GGUF reader (they cost more than the apply on a small fleet)."""
    env = {**os.environ, "PROVISION_CACHE": str(cache)}
    root = tmp_path / "image"
    apply = ["apply", str(ROOT / "examples" / "quickstart.yaml"), "--root", str(root), "--yes"]
    assert "pydantic" in imported(apply, tmp_path, env)  # the miss builds
    (root / "etc/sysctl.d/90-provision-llm-server.conf").unlink()  # a change for the next apply
    assert not imported(apply, tmp_path, env) & {"pydantic", "gguf", "numpy", "yaml"}
    assert (root / "etc/sysctl.d/90-provision-llm-server.conf").is_file()


def test_no_home_means_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOME pointing nowhere: nothing is cached, and the home folder is not created."""
    monkeypatch.delenv("PROVISION_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "gone"))
    request = BuildRequest(str(_profile(tmp_path)))
    assert not cached_build(request).hit and not cached_build(request).hit
    assert not (tmp_path / "gone").exists()


def test_xdg_cache_home_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROVISION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    request = BuildRequest(str(_profile(tmp_path)))
    cached_build(request)
    assert cached_build(request).hit
    assert list((tmp_path / "xdg" / "provision" / "builds").glob("*.json"))


def test_the_package_fingerprint_follows_the_catalog_and_the_version(tmp_path: Path) -> None:
    """A copy of provision: editing its catalog or its version changes the key's first part."""
    copy = tmp_path / "copy"
    for name in ("provisioner", "templates", "profiles"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import provisioner.render.inputs as i; "
            f"assert i.__file__.startswith({str(copy)!r}); print(i.package_fingerprint())")

    def fingerprint() -> str:
        env = {**os.environ, "PYTHONPATH": str(copy)}
        result = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True,
                                text=True, check=True)
        return result.stdout.strip()

    first = fingerprint()
    assert fingerprint() == first
    catalog = copy / "provisioner" / "catalog" / "models.yaml"
    catalog.write_text(catalog.read_text() + "\n# an edit\n")
    second = fingerprint()
    assert second != first
    init = copy / "provisioner" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "9'))
    assert fingerprint() != second
