"""`provision lock` pins install.engine: a PyPI sdist, a URL, a git ref and a container tag.

Each source is real and on loopback: PyPI's JSON API and a registry with a bearer-token
challenge played by tests/support/http_standin.py, a git repository made here with git,
and the sdist a generated CMake project that apply really builds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.errors import ProfileError
from provisioner.lock import ModelLock, read_lock
from provisioner.lock.engine import PinnedFile, PinnedGit, PinnedImage
from provisioner.lock.engine_resolve import registry_of
from tests.conftest import ROOT, make_profile
from tests.install.test_install import _c_project, converge, needs_cmake, no_systemctl  # noqa: F401 - fixture
from tests.support.http_standin import HttpStandin, Served
from tests.support.ollama_standin import OllamaTag, serve_tag


def provision(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cache = Path(args[1]).parent / "cache"
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          env={**os.environ, "PROVISION_CACHE": str(cache), **(env or {})}, cwd=ROOT, check=False)


def _engine_profile(tmp_path: Path, engine: dict[str, Any], name: str = "p.yaml") -> Path:
    return make_profile(tmp_path, {"builtin_files": False, "install": {"engine": engine}}, name=name)


def _pypi(standin: HttpStandin, name: str, version: str, sdist: bytes) -> str:
    """Add a release to the project's simple-index page in JSON (PEP 691, sizes from PEP 700):
    its wheel and its sdist (relative URLs, as PEP 691 allows), beside an older sdist."""
    url = standin.serve(f"/files/{name}-{version}.tar.gz", Served(sdist))
    page_path = f"/simple/{name}/"
    served = standin.files.get(page_path)
    files = json.loads(served.content)["files"] if served else [
        {"filename": f"{name}-0.9.tar.gz", "url": "../../files/old.tar.gz", "hashes": {"sha256": "d" * 64}, "size": 9}]
    files += [
        {"filename": f"{name}-{version}-py3-none-any.whl", "url": f"../../files/{name}-{version}-py3-none-any.whl",
         "hashes": {"sha256": "c" * 64}, "size": 3},
        {"filename": f"{name}-{version}.tar.gz", "url": f"../../files/{name}-{version}.tar.gz",
         "hashes": {"sha256": hashlib.sha256(sdist).hexdigest()}, "size": len(sdist)}]
    page = {"meta": {"api-version": "1.1"}, "name": name, "files": files}
    standin.serve(page_path, Served(json.dumps(page).encode(), content_type="application/vnd.pypi.simple.v1+json"))
    return url


@needs_cmake
def test_a_pypi_sdist_is_locked_to_its_url_and_sha256_and_apply_builds_exactly_it(tmp_path: Path) -> None:
    url, digest = _c_project(tmp_path)
    sdist = Path(url.removeprefix("file://")).read_bytes()
    with HttpStandin() as pypi:
        served = _pypi(pypi, "greet", "1.0", sdist)
        env = {"PROVISION_PYPI_INDEX": pypi.url("/simple")}
        engine = {"method": "source", "pypi": "greet==1.0", "targets": ["greet"]}
        profile = _engine_profile(tmp_path, engine)
        root = tmp_path / "image"

        refused = provision("plan", str(profile), "--root", str(root), env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "install.engine (greet==1.0) has no lock" in refused.stderr
        assert f"run `provision lock {profile}`" in refused.stderr

        locked = provision("lock", str(profile), env=env)
        assert locked.returncode == 0, locked.stderr
        assert f"engine greet==1.0: {served}" in locked.stderr and digest in locked.stderr
        lock = read_lock(tmp_path / "p.lock")
        assert lock is not None and lock.model is None
        assert lock.engine == PinnedFile("pypi:greet==1.0", served, digest, len(sdist))

        result = converge(profile, root=root)
        assert "build:llama.cpp" in result.installed
        done = subprocess.run([str(root / "opt/provision/builds/llama.cpp/bin/greet")], capture_output=True,
                              text=True, check=True)
        assert done.stdout == "hello from cmake\n"
        assert pypi.to("/files/greet-1.0.tar.gz")  # fetched from where the lock says

        # the profile moved on: the lock is stale until it is made again
        newer = _engine_profile(tmp_path, {**engine, "pypi": "greet==1.1"})
        stale = provision("plan", str(newer), "--root", str(root), env=env)
        assert stale.returncode == 1
        assert "install.engine (greet==1.1) changed since p.lock was made (it pins pypi:greet==1.0)" in stale.stderr
        missing = provision("lock", str(newer), env=env)
        assert missing.returncode == 1 and "Traceback" not in missing.stderr
        assert "greet==1.1: http://127.0.0.1:" in missing.stderr and "lists 0 sdists of version 1.1" in missing.stderr


def _archive(tmp_path: Path, text: str) -> bytes:
    path = tmp_path / f"ollama-{len(text)}.tgz"
    body = f"#!/bin/sh\necho '{text}'\n".encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bin/ollama")
        info.size, info.mode = len(body), 0o755
        tar.addfile(info, io.BytesIO(body))
    return path.read_bytes()


def test_an_archive_url_without_sha256_is_hashed_once_and_a_changed_file_stops_apply(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "profiles" / "rtx-4090-qwen3-30b-ollama.yaml").read_text())
    first = _archive(tmp_path, "ollama version is 1")
    with HttpStandin() as releases:
        url = releases.serve("/download/ollama-linux-amd64.tgz", Served(first))
        # the profile's tag is locked too (its digest is what verify compares): the same stand-in plays the registry
        serve_tag(releases, OllamaTag("library/qwen3", "30b-a3b", b"GGUF stand-in weights"))
        env = {"PROVISION_OLLAMA_REGISTRY": releases.url()}
        data["install"] = {"engine": {"method": "archive", "url": url}}
        profile = tmp_path / "ollama.yaml"
        profile.write_text(yaml.safe_dump(data))

        locked = provision("lock", str(profile), "--json", env=env)
        assert locked.returncode == 0, locked.stderr
        pinned = json.loads(locked.stdout)
        engine = pinned["engine"]
        assert pinned["ollama"] == "qwen3:30b-a3b"
        assert engine == {"kind": "file", "for": url, "url": url, "sha256": hashlib.sha256(first).hexdigest(),
                          "size": len(first)}
        root = tmp_path / "image"
        applied = provision("apply", str(profile), "--root", str(root), "--yes", env=env)
        assert applied.returncode == 0, applied.stderr
        binary = root / "opt/provision/ollama/bin/ollama"
        assert subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout == \
            "ollama version is 1\n"

        # the URL now serves other bytes: the install stops, and the fresh tree gets nothing of it
        releases.serve("/download/ollama-linux-amd64.tgz", Served(_archive(tmp_path, "ollama version is 22")))
        other = tmp_path / "image2"
        refused = provision("apply", str(profile), "--root", str(other), "--yes", env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "archive:ollama" in refused.stderr
        assert not (other / "opt/provision/ollama").exists()


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=env).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_git_ref_is_locked_to_the_commit_an_annotated_tag_points_at(tmp_path: Path) -> None:
    repo = tmp_path / "llama.cpp"
    repo.mkdir()
    _git("init", "-q", "-b", "master", cwd=repo)
    (repo / "CMakeLists.txt").write_text("project(x C)\n")
    _git("add", ".", cwd=repo)
    _git("commit", "-q", "-m", "one", cwd=repo)
    _git("tag", "-a", "b1", "-m", "release b1", cwd=repo)  # annotated: its own object, peeled to the commit
    tagged = _git("rev-parse", "b1^{commit}", cwd=repo)
    assert _git("rev-parse", "b1", cwd=repo) != tagged
    (repo / "main.c").write_text("int main(void) { return 0; }\n")
    _git("add", ".", cwd=repo)
    _git("commit", "-q", "-m", "two", cwd=repo)

    profile = _engine_profile(tmp_path, {"method": "source", "git": f"file://{repo}", "ref": "b1"})
    locked = provision("lock", str(profile))
    assert locked.returncode == 0, locked.stderr
    lock = read_lock(tmp_path / "p.lock")
    assert lock is not None and lock.engine == PinnedGit(f"file://{repo}", "b1", tagged)
    planned = provision("plan", str(profile), "--root", str(tmp_path / "image"), "--json")
    assert planned.returncode == 2, planned.stderr  # 2: changes to make
    [engine] = [i for i in json.loads(planned.stdout)["hosts"][0]["installs"] if i["name"] == "build:llama.cpp"]
    assert f"({tagged[:12]}, " in engine["summary"]

    _git("branch", "b1", cwd=repo)  # now b1 is a branch and a tag
    ambiguous = provision("lock", str(profile))
    assert ambiguous.returncode == 1 and "Traceback" not in ambiguous.stderr
    assert "b1 names 2 refs" in ambiguous.stderr and "refs/tags/NAME or refs/heads/NAME" in ambiguous.stderr


def _registry(standin: HttpStandin, manifest: bytes, *, header: bool) -> str:
    """A registry that wants an anonymous bearer token (the Docker token protocol), as ghcr.io does."""
    anonymous = "anonymous-pull-token"
    standin.serve("/token", Served(json.dumps({"token": anonymous}).encode(), content_type="application/json"))
    challenge = f'Bearer realm="{standin.url("/token")}",service="standin",scope="repository:ggml-org/llama.cpp:pull"'
    standin.error_headers["/v2/"] = {"WWW-Authenticate": challenge}
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    standin.serve("/v2/ggml-org/llama.cpp/manifests/server", Served(
        manifest, require=("Authorization", f"Bearer {anonymous}"),
        content_type="application/vnd.oci.image.index.v1+json",
        headers={"Docker-Content-Digest": digest} if header else {}))
    return digest


@pytest.mark.parametrize("header", [True, False], ids=["digest-header", "hashed-body"])
def test_a_container_tag_is_locked_to_its_digest_and_the_quadlet_pulls_that(tmp_path: Path, header: bool) -> None:
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": []}).encode()
    with HttpStandin() as registry:
        digest = _registry(registry, index, header=header)
        env = {"PROVISION_CONTAINER_REGISTRY": registry.url()}
        profile = make_profile(tmp_path, {"install": {"engine": {"method": "container",
                                                                 "image": "ghcr.io/ggml-org/llama.cpp:server"}}})
        assert provision("plan", str(profile), "--root", str(tmp_path / "image"), env=env).returncode == 1
        locked = provision("lock", str(profile), env=env)
        assert locked.returncode == 0, locked.stderr
        assert f"engine ghcr.io/ggml-org/llama.cpp:server: {digest}" in locked.stderr
        lock = read_lock(tmp_path / "p.lock")
        assert lock is not None and lock.engine == PinnedImage("ghcr.io/ggml-org/llama.cpp:server", digest)
        assert [r.status for r in registry.to("/v2/ggml-org/llama.cpp/manifests/server")][:2] == [401, 200]

        rendered = provision("render", str(profile), "--out", str(tmp_path / "out"))
        assert rendered.returncode == 0, rendered.stderr
        quadlet = (tmp_path / "out/etc/containers/systemd/llm-server.container").read_text()
        assert f"Image=ghcr.io/ggml-org/llama.cpp@{digest}\n" in quadlet

        registry.files.pop("/v2/ggml-org/llama.cpp/manifests/server")
        gone = provision("lock", str(profile), env=env)
        assert gone.returncode == 1 and "HTTP 404" in gone.stderr and "check the image's name and tag" in gone.stderr


def test_docker_reference_normalisation() -> None:
    assert registry_of("ubuntu:24.04") == ("docker.io", "library/ubuntu", "24.04")
    assert registry_of("vllm/vllm-openai:v0.11.0") == ("docker.io", "vllm/vllm-openai", "v0.11.0")
    assert registry_of("ghcr.io/ggml-org/llama.cpp:server-cuda") == ("ghcr.io", "ggml-org/llama.cpp", "server-cuda")
    assert registry_of("localhost:5000/a/b:t") == ("localhost:5000", "a/b", "t")


def test_a_hand_edited_engine_lock_is_refused(tmp_path: Path) -> None:
    lock_file = tmp_path / "p.lock"
    pinned: dict[str, object] = {"for": "pypi:x==1", "url": "https://example.invalid/x-1.tar.gz",
                                 "sha256": "a" * 64, "size": 10}
    good = {"version": 3, "engine": {"file": pinned}}
    lock_file.write_text(yaml.safe_dump(good))
    assert read_lock(lock_file) is not None
    for bad, said in [({"sha256": "a" * 63}, "not 64 hex"), ({"url": "https://x/$(id)"}, "unsafe URL")]:
        lock_file.write_text(yaml.safe_dump({**good, "engine": {"file": {**pinned, **bad}}}))
        with pytest.raises(ProfileError, match="not a lock file provision can read") as raised:
            read_lock(lock_file)
        assert said in raised.value.first.one_line()
    moved = {**pinned, "for": "https://example.invalid/x-1.tar.gz", "url": "https://example.invalid/other.tar.gz"}
    lock_file.write_text(yaml.safe_dump({**good, "engine": {"file": moved}}))
    with pytest.raises(ProfileError, match=r"was made for 'https://example\.invalid/x-1\.tar\.gz' but downloads"):
        read_lock(lock_file)
    for engine in ({"git": {"repository": "https://example.invalid/r.git", "ref": "b1\n\x1b[2J", "commit": "a" * 40}},
                   {"file": {**pinned, "for": "pypi:x==1\n\x1b[2J"}},
                   {"image": {"name": "a:b\nc", "digest": "sha256:" + "a" * 64}}):
        lock_file.write_text(yaml.safe_dump({**good, "engine": engine}))
        with pytest.raises(ProfileError, match="not a lock file provision can read") as raised:
            read_lock(lock_file)
        assert "\x1b" not in raised.value.first.one_line()
    lock_file.write_text(yaml.safe_dump({**good, "engine": {"image": {"name": "a:b", "digest": "sha256:zz"}}}))
    with pytest.raises(ProfileError, match="not a lock file provision can read"):
        read_lock(lock_file)


def test_a_venv_is_locked_to_its_closure_and_plan_installs_exactly_those_wheels(tmp_path: Path) -> None:
    from provisioner.install.venv import Venv
    from provisioner.lock.wheels import PinnedVenv
    from provisioner.render.pipeline import build
    from tests.install.test_venv_lock import host_target
    from tests.support.pypi_standin import serve_index, wheel

    python, glibc, machine = host_target()
    with HttpStandin() as index:
        index_url = serve_index(index, [wheel("provision-demo-a", "1.0", ("provision-demo-b>=1",)),
                                        wheel("provision-demo-b", "1.0")])
        data = yaml.safe_load((ROOT / "profiles" / "rtx-pro-6000-gpt-oss-120b-vllm.yaml").read_text())
        engine = {"method": "venv", "requirements": ["provision-demo-a==1.0"], "index_url": index_url,
                  "resolve_for": {"python": python, "glibc": glibc, "machine": machine}}
        data.update(builtin_files=False, install={"engine": engine})
        data["model"]["source"] = {"directory": "/srv/models/gpt-oss-120b"}  # only the engine is locked here
        profile = tmp_path / "vllm.yaml"
        profile.write_text(yaml.safe_dump(data))
        root = tmp_path / "image"

        refused = provision("plan", str(profile), "--root", str(root))
        assert refused.returncode == 1 and "install.engine (provision-demo-a==1.0) has no lock" in refused.stderr
        locked = provision("lock", str(profile))
        assert locked.returncode == 0, locked.stderr
        assert f"engine provision-demo-a==1.0 for Python {python}, glibc {glibc}, {machine}: 2 wheel(s)" \
            in locked.stderr
        lock = read_lock(tmp_path / "vllm.lock")
        assert lock is not None and isinstance(lock.engine, PinnedVenv)
        assert [(w.name, w.version) for w in lock.engine.wheels] == [("provision-demo-a", "1.0"),
                                                                     ("provision-demo-b", "1.0")]
        if os.access("/usr/bin/python3", os.X_OK):  # another Python's pip (Debian's) resolves the same closure
            again = provision("lock", str(profile), "--python", "/usr/bin/python3", "--json")
            assert again.returncode == 0, again.stderr
            assert [w["sha256"] for w in json.loads(again.stdout)["engine"]["wheels"]] == \
                [w.sha256 for w in lock.engine.wheels]
        # a newer b on the index changes nothing: the lock, not the index, says what is installed
        index.files.clear()
        serve_index(index, [wheel("provision-demo-a", "1.0", ("provision-demo-b>=1",)),
                            wheel("provision-demo-b", "1.0"), wheel("provision-demo-b", "2.0")])
        [venv] = [i for i in build(profile, require_lock=True).installs if isinstance(i, Venv)]
        assert venv.wheels == lock.engine.wheel_rows and venv.target == (python, glibc, machine)
        assert "--require-hashes" in venv.build_script()
        planned = provision("plan", str(profile), "--root", str(root), "--json")
        assert planned.returncode in (0, 2), planned.stderr

        other = "3.99" if python != "3.99" else "3.98"
        data["install"]["engine"]["resolve_for"]["python"] = other
        profile.write_text(yaml.safe_dump(data))
        stale = provision("plan", str(profile), "--root", str(root))
        assert stale.returncode == 1 and "changed since vllm.lock was made" in stale.stderr


@needs_cmake
def test_only_engine_renews_the_engine_and_keeps_the_model_pin(tmp_path: Path, hub: HttpStandin) -> None:
    from tests.lock.test_lock import COMMIT, DEST, REPO

    url, _ = _c_project(tmp_path)
    sdist = Path(url.removeprefix("file://")).read_bytes()
    with HttpStandin() as pypi:
        _pypi(pypi, "greet", "1.0", sdist)
        newer = _pypi(pypi, "greet", "1.1", sdist + b"\0")
        env = {"PROVISION_PYPI_INDEX": pypi.url("/simple"), "HF_ENDPOINT": hub.url()}

        def profile(pin: str) -> Path:
            return make_profile(tmp_path, {"install": {"model": True, "engine": {
                "method": "source", "pypi": pin, "targets": ["greet"]}},
                "model.source": {"hf": {"repo": REPO, "revision": "main", "dest": DEST}}})

        assert provision("lock", str(profile("greet==1.0")), env=env).returncode == 0
        first = read_lock(tmp_path / "p.lock")
        assert first is not None and isinstance(first.model, ModelLock) and first.model.commit == COMMIT
        asked = len(hub.requests)
        renewed = provision("lock", str(profile("greet==1.1")), "--only", "engine", env=env)
        assert renewed.returncode == 0, renewed.stderr
        assert len(hub.requests) == asked  # the hub was not asked again
        second = read_lock(tmp_path / "p.lock")
        assert second is not None and second.model == first.model
        assert isinstance(second.engine, PinnedFile) and second.engine.url == newer
        assert provision("plan", str(tmp_path / "p.yaml"), "--root", str(tmp_path / "image"), env=env).returncode == 2

        pinned = make_profile(tmp_path, {"install": {"engine": {"method": "source", "url": url, "sha256": "0" * 64}},
                                         "model.source": {"hf": {"repo": REPO, "revision": "main", "dest": DEST}}},
                              name="q.yaml")
        refused = provision("lock", str(pinned), "--only", "engine", env=env)
        assert refused.returncode == 1 and "--only engine: install.engine needs no lock" in refused.stderr


@pytest.mark.parametrize("lock_file", sorted((ROOT / "examples").rglob("*.lock")), ids=lambda p: p.name)
def test_the_examples_locks_are_fresh_for_their_profiles(lock_file: Path) -> None:
    """A committed lock pins its profile as plan reads it, with no network (conftest closes it)."""
    from provisioner.render.pipeline import build

    built = build(lock_file.with_suffix(".yaml"), require_lock=True)
    engine = built.spec.profile.install.engine
    assert engine is not None and engine.method in ("source", "venv")
    if engine.method == "source":
        assert engine.sha256 is not None  # the lock's, in place of the pypi pin
    else:
        [venv] = [i for i in built.installs if i.name.startswith("venv:")]
        assert len(getattr(venv, "wheels", ())) > 100  # vLLM's closure, torch included


def _page(standin: HttpStandin, files: object) -> dict[str, str]:
    standin.serve("/simple/greet/", Served(json.dumps({"meta": {"api-version": "1.1"}, "files": files}).encode()))
    return {"PROVISION_PYPI_INDEX": standin.url("/simple")}


def _sdist_entry(**changed: object) -> dict[str, object]:
    return {"filename": "greet-1.0.tar.gz", "url": "../../files/greet-1.0.tar.gz", "hashes": {"sha256": "a" * 64},
            "size": 10, **changed}


@pytest.mark.parametrize(("files", "said"), [
    (None, "not a PEP 691 index page (no files list)"),
    ([_sdist_entry(size="big")], "has no url, sha256 or size"),
    ([_sdist_entry(hashes=["a" * 64])], "has no url, sha256 or size"),
    ([_sdist_entry(url=None)], "has no url, sha256 or size"),
    ([_sdist_entry(url="../../files/x-$(touch pwn)\n\x1b[31m/greet-1.0.tar.gz")], "cannot go into a lock"),
    ([_sdist_entry(url="../../files/other.tar.gz")], "does not name its file"),
    ([_sdist_entry(yanked="broken\n\x1b[2J")], "the release is yanked"),
], ids=["no-files", "size-text", "hashes-list", "no-url", "url-shell", "url-elsewhere", "yanked"])
def test_a_malformed_index_page_is_one_line_and_no_lock(tmp_path: Path, files: object, said: str) -> None:
    profile = _engine_profile(tmp_path, {"method": "source", "pypi": "greet==1.0"})
    with HttpStandin() as pypi:
        refused = provision("lock", str(profile), env=_page(pypi, files))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert said in refused.stderr and "\x1b" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.lock").exists()


def test_a_download_cut_short_is_never_locked(tmp_path: Path) -> None:
    with HttpStandin() as releases:
        url = releases.serve("/ollama.tgz", Served(b"x" * 300_000, drop_after=100_000))
        profile = _engine_profile(tmp_path, {"method": "source", "url": url})
        refused = provision("lock", str(profile))
        assert refused.returncode == 1 and "the connection ended after 100000 of 300000 bytes" in refused.stderr
        assert not (tmp_path / "p.lock").exists()
        assert provision("lock", str(profile)).returncode == 0  # dropped once: the second try gets it whole
    lock = read_lock(tmp_path / "p.lock")
    assert lock is not None and isinstance(lock.engine, PinnedFile) and lock.engine.size == 300_000


def test_switching_the_source_in_an_extending_profile_drops_the_bases_pins_and_subdir() -> None:
    from provisioner.profile.loader import deep_merge

    base = {"install": {"engine": {"method": "source", "pypi": "llama-cpp-python==0.3.36",
                                   "subdir": "vendor/llama.cpp", "targets": ["llama-server"]}}}
    child = deep_merge(base, {"install": {"engine": {"git": "https://example.invalid/llama.cpp.git", "ref": "b1"}}})
    assert child["install"]["engine"] == {"method": "source", "targets": ["llama-server"],
                                          "git": "https://example.invalid/llama.cpp.git", "ref": "b1"}
    repinned = deep_merge(child, {"install": {"engine": {"commit": "a" * 40}}})
    assert "ref" not in repinned["install"]["engine"] and repinned["install"]["engine"]["commit"] == "a" * 40
