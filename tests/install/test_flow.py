"""The whole flow through the CLI: the quickstart profile with an engine and its
model to install, planned (JSON with versions, sizes, reboot) and applied into
a --root tree, then a no-op; Ollama from a release archive; bad install input."""

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

from tests.conftest import ROOT, make_profile
from tests.install.test_install import _c_project

needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None,
                                 reason="needs cmake and a C compiler")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT)


def _model_file(tmp_path: Path, size: int = 300_000) -> dict[str, Any]:
    data = os.urandom(size)
    path = tmp_path / "mirror" / "model-00001-of-00001.gguf"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return {"path": "/srv/models/q/model-00001-of-00001.gguf", "bytes": size,
            "sha256": hashlib.sha256(data).hexdigest(), "url": f"file://{path}"}


@needs_cmake
def test_quickstart_with_engine_and_model_plans_json_applies_into_root_then_noop(tmp_path: Path) -> None:
    url, digest = _c_project(tmp_path)
    model = _model_file(tmp_path)
    profile = make_profile(tmp_path, {
        "model.source": {"files": [model]},
        "install": {"packages": [{"name": "nvidia-driver-580-open", "version": "580.95.05-0ubuntu1"}],
                    "engine": {"method": "source", "url": url, "sha256": digest, "targets": ["greet"]},
                    "model": True}})
    root = tmp_path / "image"
    planned = cli("plan", str(profile), "--root", str(root), "--json")
    assert planned.returncode == 2, planned.stderr
    [host] = json.loads(planned.stdout)["hosts"]
    by_name = {i["name"]: i for i in host["installs"]}
    assert set(by_name) == {"package:nvidia-driver-580-open", "user:llm", "build:llama.cpp", "download:model"}
    driver = by_name["package:nvidia-driver-580-open"]
    assert driver["pending"] and driver["reboot"] and "-> 580.95.05-0ubuntu1, held" in driver["summary"]
    engine = by_name["build:llama.cpp"]
    assert engine["action"] == "build" and engine["summary"].startswith("llama.cpp b11312 (")
    assert by_name["download:model"]["bytes"] == model["bytes"]

    applied = cli("apply", str(profile), "--root", str(root), "--yes")
    assert applied.returncode == 0, applied.stderr
    assert "* build build:llama.cpp" in applied.stderr and ". install package:nvidia-driver-580-open" in applied.stderr
    placed = root / model["path"].lstrip("/")
    assert hashlib.sha256(placed.read_bytes()).hexdigest() == model["sha256"]
    assert (root / "opt/provision/builds/llama.cpp/bin/greet").is_file()
    manifest = json.loads((root / "var/lib/provision/generations/1/manifest.json").read_text())
    assert set(manifest["installs"]) == {"user:llm", "build:llama.cpp", "download:model"}  # the pending package is not

    again = cli("plan", str(profile), "--root", str(root), "--json")
    assert again.returncode == 0, again.stderr  # only the pending package is left, and it is not a change
    assert [i["name"] for i in json.loads(again.stdout)["hosts"][0]["installs"]] == ["package:nvidia-driver-580-open"]


def _ollama_tarball(tmp_path: Path) -> tuple[Path, str]:
    archive = tmp_path / "ollama-linux-amd64.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        body = b"#!/bin/sh\necho 'ollama version is 0.12.3'\n"
        info = tarfile.TarInfo("bin/ollama")
        info.size, info.mode = len(body), 0o755
        tar.addfile(info, io.BytesIO(body))
    return archive, hashlib.sha256(archive.read_bytes()).hexdigest()


def test_ollama_from_a_release_archive_into_root(tmp_path: Path) -> None:
    archive, digest = _ollama_tarball(tmp_path)
    data = yaml.safe_load((ROOT / "profiles" / "rtx-4090-qwen3-30b-ollama.yaml").read_text())
    data["install"] = {"engine": {"method": "archive", "url": f"file://{archive}", "sha256": digest,
                                  "size": archive.stat().st_size}}
    profile = tmp_path / "ollama.yaml"
    profile.write_text(yaml.safe_dump(data))
    root = tmp_path / "image"
    applied = cli("apply", str(profile), "--root", str(root), "--yes", "--json")
    assert applied.returncode == 0, applied.stderr
    [install] = [i for i in json.loads(applied.stdout)["hosts"][0]["installs"] if i["kind"] != "user"]
    assert install["kind"] == "archive" and install["bytes"] == archive.stat().st_size
    binary = root / "opt/provision/ollama/bin/ollama"
    assert subprocess.run([str(binary)], capture_output=True, text=True, check=True).stdout.startswith("ollama")
    run = next((root / "opt/provision/bin").glob("*-run.sh")).read_text()
    assert "exec /opt/provision/ollama/bin/ollama \"$@\"" in run
    assert cli("plan", str(profile), "--root", str(root)).returncode == 0


@pytest.mark.parametrize(("install", "expected"), [
    ({"packages": [{"name": "hello; rm -rf /", "version": "1"}]}, "p.yaml:57:11: install.packages[0].name"),
    ({"packages": [{"name": "hello", "version": "1 2"}]}, "install.packages[0].version"),
    ({"packages": [{"name": "hello", "version": "1"}, {"name": "hello", "version": "2"}]}, "listed twice"),
    ({"engine": {"method": "venv", "requirements": ["vllm>=0.10"]}}, "install.engine.requirements[0]"),
    ({"engine": {"method": "venv", "requirements": ["six==1.16.0"]}}, "cannot install llama.cpp"),
    ({"engine": {"method": "source", "url": "https://example.invalid/x.tgz", "pypi": "x==1"}}, "exactly one of pypi"),
    ({"engine": {"method": "archive", "url": "https://example.invalid/x.tgz", "size": 5}}, "sha256 and size together"),
    ({"engine": {"method": "source", "git": "https://example.invalid/x.git", "commit": "v1"}},
     "install.engine.commit"),
    ({"engine": {"method": "source", "git": "https://example.invalid/x.git", "commit": "a" * 40,
                 "cmake_options": ["-DX=1 -DY=$(id)"]}}, "install.engine.cmake_options[0]"),
    ({"model": True}, "has no url"),
    ({"engine": {"method": "container", "image": "ghcr.io/ggml-org/llama.cpp"}}, "install.engine.image"),
    ({"engine": {"method": "container", "image": "ghcr.io/ggml-org/llama.cpp:server;id"}}, "install.engine.image"),
])
def test_bad_install_input_is_one_line_exit_1(tmp_path: Path, install: dict[str, Any], expected: str) -> None:
    profile = make_profile(tmp_path, {"install": install})
    result = cli("validate", str(profile))
    assert result.returncode == 1
    assert expected in result.stderr and "Traceback" not in result.stderr


@needs_cmake
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a private mount namespace")
def test_live_apply_builds_the_engine_in_the_one_batched_script(tmp_path: Path) -> None:
    """No --root: in tests/converge/test_live.py's sandbox (/opt and /var/lib are tmpfs, handlers are shims)."""
    from tests.converge.test_live import live

    url, digest = _c_project(tmp_path)
    profile = make_profile(tmp_path, {"install": {"engine": {"method": "source", "url": url, "sha256": digest,
                                                             "targets": ["greet"]}}})
    result = live(tmp_path, "apply", str(profile), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    [host] = json.loads(result.stdout)["hosts"]
    assert host["generation"] == 1
    assert [(i["name"], i["action"], i["pending"]) for i in host["installs"]] == [
        ("user:llm", "install", False), ("build:llama.cpp", "build", False)]
    assert host["handlers"][-1] == "restart-server"  # the new engine is picked up by the restart
    log = (tmp_path / "handlers.log").read_text()
    assert "systemctl daemon-reload" in log


@needs_cmake
def test_rollback_leaves_installs_and_keeps_their_records(tmp_path: Path) -> None:
    """A rollback restores files; the engine it built stays (its dir is the way back, not undone here)."""
    url, digest = _c_project(tmp_path)
    root = tmp_path / "image"
    first = make_profile(tmp_path, {"install": {"engine": {"method": "source", "url": url, "sha256": digest,
                                                           "targets": ["greet"]}}}, name="first.yaml")
    changed = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 5},
                                      "install": {"engine": {"method": "source", "url": url, "sha256": digest,
                                                             "targets": ["greet"]}}}, name="changed.yaml")
    assert cli("apply", str(first), "--root", str(root), "--yes").returncode == 0
    assert cli("apply", str(changed), "--root", str(root), "--yes").returncode == 0
    rolled = cli("rollback", "--root", str(root), "--yes", "--json")
    assert rolled.returncode == 0, rolled.stderr
    manifest = json.loads((root / "var/lib/provision/generations/3/manifest.json").read_text())
    assert list(manifest["installs"]) == ["build:llama.cpp", "user:llm"] and manifest["install_changes"] == []
    assert (root / "opt/provision/builds/llama.cpp/bin/greet").is_file()
    assert cli("plan", str(first), "--root", str(root)).returncode == 0  # back where the first apply left it


def test_validate_never_asks_the_hub_and_plan_reports_an_unreachable_one(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {
        "model.source": {"hf": {"repo": "unsloth/Qwen3-235B-A22B-GGUF", "revision": "a" * 40,
                                "include": ["UD-Q3_K_XL/*"], "dest": "/srv/models/q",
                                "file": "UD-Q3_K_XL/Qwen3-235B-A22B-UD-Q3_K_XL-00001-of-00003.gguf"}},
        "install": {"model": True}})
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "PROVISION_CACHE": str(tmp_path / "cache")}
    env.pop("HF_HUB_OFFLINE", None)
    validated = subprocess.run([sys.executable, "-m", "provisioner", "validate", str(profile)], capture_output=True,
                               text=True, check=False, cwd=ROOT, env=env)
    assert validated.returncode == 0, validated.stderr
    planned = subprocess.run([sys.executable, "-m", "provisioner", "plan", str(profile), "--root",
                              str(tmp_path / "image")], capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    assert planned.returncode == 1 and "Traceback" not in planned.stderr
    assert planned.stderr.startswith("error: ") and "unsloth/Qwen3-235B-A22B-GGUF" in planned.stderr


@needs_cmake
def test_rollback_switches_a_rebuilt_engine_back_to_the_kept_dir(tmp_path: Path) -> None:
    url, digest = _c_project(tmp_path)
    root = tmp_path / "image"
    engine = {"method": "source", "url": url, "sha256": digest, "targets": ["greet"]}
    quiet = make_profile(tmp_path, {"install": {"engine": engine}}, name="quiet.yaml")
    loud = make_profile(tmp_path, {"install": {"engine": {**engine, "cmake_options": ["-DGREET_LOUD=ON"]}}},
                        name="loud.yaml")
    link = root / "opt/provision/builds/llama.cpp"
    assert cli("apply", str(quiet), "--root", str(root), "--yes").returncode == 0
    first_dir = os.readlink(link)
    assert cli("apply", str(loud), "--root", str(root), "--yes").returncode == 0
    assert os.readlink(link) != first_dir
    greet = [str(link / "bin/greet")]
    assert subprocess.run(greet, capture_output=True, text=True, check=True).stdout.startswith("LOUD")
    rolled = cli("rollback", "--root", str(root), "--yes", "--json")
    assert rolled.returncode == 0, rolled.stderr
    [switch] = json.loads(rolled.stdout)["hosts"][0]["installs"]
    assert switch["action"] == "switch" and switch["summary"].endswith(f"-> {first_dir}")
    assert os.readlink(link) == first_dir
    assert subprocess.run(greet, capture_output=True, text=True, check=True).stdout == "hello from cmake\n"
    assert cli("plan", str(quiet), "--root", str(root)).returncode == 0  # as the first apply left it


def test_rollback_refuses_to_switch_to_a_dir_that_is_gone(tmp_path: Path) -> None:
    """A kept dir removed by hand: the rollback fails before replacing any file."""
    from provisioner.install.rollback import LinkBack

    item = LinkBack("build:x", {"kind": "build", "path": "/opt/b/x", "dir": "/opt/b/x-0123456789ab"})
    change = item.change({"link": "x-ba9876543210"}, str(tmp_path))
    assert change is not None and change.action == "switch"
    (tmp_path / "opt/b").mkdir(parents=True)
    os.symlink("x-ba9876543210", tmp_path / "opt/b/x")
    result = subprocess.run(["sh", "-c", f"root={tmp_path}\n( set -eu\n{change.script}\n)"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 1 and "x-0123456789ab is gone or incomplete" in result.stdout
    assert os.readlink(tmp_path / "opt/b/x") == "x-ba9876543210"


@needs_cmake
def test_killed_right_after_the_install_step_the_next_apply_finishes_without_redoing_it(tmp_path: Path) -> None:
    """PROVISION_FAILPOINT just after the install step: the engine is built, no file replaced, no
    generation recorded; the next apply writes the files and does not build again."""
    from provisioner.converge.run import apply_plan, plan_host
    from provisioner.errors import ProvisionError
    from provisioner.render.pipeline import build
    from provisioner.transport.local import LocalTransport

    url, digest = _c_project(tmp_path)
    profile = make_profile(tmp_path, {"install": {"engine": {"method": "source", "url": url, "sha256": digest,
                                                             "targets": ["greet"]}}})
    root = tmp_path / "image"
    built = build(profile)
    transport = LocalTransport(root)
    plan, gathered = plan_host(built.rendered, transport, service="llm-server")
    # fp 1, one per temp, one per install (the service user, the build)
    after_install = 1 + len([c for c in plan.changes if c.new is not None]) + 2
    with pytest.raises(ProvisionError):
        apply_plan(plan, gathered, transport, profile_name="t", failpoint=after_install)
    assert (root / "opt/provision/builds/llama.cpp/bin/greet").is_file()
    assert not (root / "opt/provision/bin/llm-server-run.sh").exists()
    assert not (root / "var/lib/provision/last").exists()
    plan, gathered = plan_host(built.rendered, transport, service="llm-server")
    assert plan.installs == () and plan.changes  # built already; the files are still owed
    result = apply_plan(plan, gathered, transport, profile_name="t")
    assert result.generation == 1 and result.installed == ()
    assert (root / "opt/provision/bin/llm-server-run.sh").is_file()
    # recorded all the same (from the item itself), so a later rollback can point its link back
    manifest = json.loads((root / "var/lib/provision/generations/1/manifest.json").read_text())
    assert manifest["installs"]["build:llama.cpp"]["dir"].startswith("/opt/provision/builds/llama.cpp-")
