"""Install items through the real plan/apply: apt on this Debian, a venv from
a loopback index, a CMake build of a generated C project; --root staging; failures that
leave every file as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from provisioner.converge.run import HostResult, apply_plan, plan_host
from provisioner.errors import ProvisionError
from provisioner.render.pipeline import build
from provisioner.transport.local import LocalTransport
from tests.conftest import make_profile
from tests.support.http_standin import HttpStandin
from tests.support.pypi_standin import serve_index, wheel

needs_root_apt = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("apt-get") is None or shutil.which("dpkg-query") is None,
    reason="installs a real package: needs root and apt/dpkg")


@pytest.fixture(autouse=True)
def no_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Live applies here run handlers (restart-server): a PATH shim records them instead."""
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "handlers.log"
    for name in ("systemctl", "sysctl", "systemd-tmpfiles", "update-initramfs", "dracut"):
        (shims / name).write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n')
        (shims / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    return log


def verify_installs(profile: Path, *, root: Path | None = None, state: Path | None = None) -> dict[str, Any]:
    """verify --only install on this machine (or a tree): check id -> (status, observed)."""
    from provisioner.verify.run import VerifyOptions, verify_target

    transport = LocalTransport(root, state_dir=str(state) if state else None)
    found = verify_target(build(profile), transport, VerifyOptions(only=frozenset({"install"})))
    return {c.id: (c.status, c.observed) for c in found}


def converge(profile: Path, *, root: Path | None = None, state: Path | None = None,
             do_apply: bool = True) -> HostResult:
    built = build(profile)
    transport = LocalTransport(root, state_dir=str(state) if state else None)
    plan, gathered = plan_host(built.rendered, transport, service="llm-server")
    if not do_apply:
        return HostResult(transport.name, plan, gathered)
    return apply_plan(plan, gathered, transport, profile_name="t")


def only_installs(tmp_path: Path, install: dict[str, object], name: str = "p.yaml",
                  extra: dict[str, object] | None = None) -> Path:
    """The quickstart profile managing no files: only what install: says."""
    return make_profile(tmp_path, {"builtin_files": False, "install": install, **(extra or {})}, name=name)


# --- packages: apt on this machine ---------------------------------------------


def _candidate(package: str) -> str:
    def read() -> str:
        out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.strip().startswith("Candidate:"):
                value = line.split(":", 1)[1].strip()
                return "" if value == "(none)" else value
        return ""

    found = read()
    if not found:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        found = read()
    if not found:
        pytest.skip(f"apt has no candidate for {package} (no reachable mirror)")
    return found


def _dpkg_status(package: str) -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Status}|${Version}", package],
                          capture_output=True, text=True, check=False).stdout


@needs_root_apt
def test_package_installed_held_noop_then_unheld_when_dropped(tmp_path: Path) -> None:
    version = _candidate("hello")
    state = tmp_path / "state"
    try:
        held = only_installs(tmp_path, {"packages": [{"name": "hello", "version": version}]})
        first = converge(held, state=state)
        assert first.applied and first.installed == ("packages",)
        [change] = first.plan.installs
        assert change.action in ("install", "hold", "upgrade", "downgrade")
        assert f"-> {version}, held" in change.summary or change.action == "hold"
        assert _dpkg_status("hello") == f"hold ok installed|{version}"
        assert subprocess.run(["hello"], capture_output=True, text=True, check=True).stdout.startswith("Hello")
        manifest = json.loads((state / "generations" / "1" / "manifest.json").read_text())
        assert manifest["installs"]["package:hello"] == {"kind": "package", "package": "hello",
                                                         "version": version, "hold": True}

        second = converge(held, state=state)
        assert not second.plan.changed and not second.applied  # no round trip, nothing run
        assert verify_installs(held, state=state) == {"install.package:hello": ("pass", None)}
        subprocess.run(["apt-mark", "unhold", "hello"], capture_output=True, check=True)  # by hand
        assert verify_installs(held, state=state) == {"install.package:hello": (
            "fail", f"apply would hold: hello {version}: hold")}
        subprocess.run(["apt-mark", "hold", "hello"], capture_output=True, check=True)

        dropped = only_installs(tmp_path, {"packages": []}, name="dropped.yaml")
        third = converge(dropped, state=state)
        [undo] = third.plan.installs
        assert (undo.action, undo.summary) == ("unhold", "hello: unhold (left installed)")
        assert _dpkg_status("hello") == f"install ok installed|{version}"  # unheld, still installed
        assert not converge(dropped, state=state).plan.changed
    finally:
        subprocess.run(["apt-mark", "unhold", "hello"], capture_output=True, check=False)
        subprocess.run(["apt-get", "purge", "-y", "-q", "hello"], capture_output=True, check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


@needs_root_apt
def test_unknown_package_version_fails_and_replaces_no_file(tmp_path: Path) -> None:
    dest = tmp_path / "etc" / "note.conf"
    profile = only_installs(tmp_path, {"packages": [{"name": "hello", "version": "0.0-not-there"}]},
                            extra={"files": [{"template": "note.j2", "dest": str(dest)}]})
    (tmp_path / "note.j2").write_text("managed\n")
    state = tmp_path / "state"
    with pytest.raises(ProvisionError) as raised:
        converge(profile, state=state)
    text = raised.value.first.one_line()
    assert "install failed, no file was replaced" in text and "apt-get install failed" in text
    assert not (state / "last").exists()  # no generation recorded
    assert list(dest.parent.iterdir()) == []  # the temp file is gone, nothing renamed
    assert "install ok installed" not in _dpkg_status("hello")


def test_packages_under_root_are_pending_and_not_counted_as_changes(tmp_path: Path) -> None:
    profile = only_installs(tmp_path, {"packages": [{"name": "nvidia-driver-570-open",
                                                      "version": "570.172.08-0ubuntu1"}]})
    result = converge(profile, root=tmp_path / "image", do_apply=False)
    [change] = result.plan.installs
    assert change.pending and change.reboot
    assert change.summary == ("nvidia-driver-570-open not installed -> 570.172.08-0ubuntu1, held "
                              "(pending: not run under --root)")
    assert not result.plan.changed and not result.plan.reboot_required


# --- venv: real wheels from a loopback index ---------------------------------


def vllm_profile(tmp_path: Path, install: dict[str, object], name: str = "vllm.yaml") -> Path:
    """The library's vLLM profile managing no files: only its engine venv."""
    import yaml

    from tests.conftest import ROOT

    data = yaml.safe_load((ROOT / "profiles" / "rtx-pro-6000-gpt-oss-120b-vllm.yaml").read_text())
    data.update(builtin_files=False, install=install)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def demo_index() -> Iterator[str]:
    """A loopback simple index with two versions of one pure-Python wheel."""
    with HttpStandin() as standin:
        yield serve_index(standin, [wheel("provision-demo-b", "1.0"), wheel("provision-demo-b", "2.0")])


def _demo_version(link: Path) -> str:
    shown = "import provision_demo_b; print(provision_demo_b.VERSION)"
    return subprocess.run([str(link / "bin" / "python"), "-c", shown], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_venv_pinned_noop_then_pin_change_switches_link_and_keeps_old(tmp_path: Path, demo_index: str) -> None:
    link = tmp_path / "venvs" / "vllm"
    venv = {"method": "venv", "path": str(link), "requirements": ["provision-demo-b==1.0"], "index_url": demo_index}
    first_profile = vllm_profile(tmp_path, {"engine": venv})
    state = tmp_path / "state"
    first = converge(first_profile, state=state)
    assert first.installed == ("venv:vllm",)
    old_dir = link.parent / os.readlink(link)
    assert old_dir.name.startswith("vllm-") and (old_dir / ".provision-stamp").exists()
    assert _demo_version(link) == "1.0"
    assert not converge(first_profile, state=state).plan.changed
    assert verify_installs(first_profile, state=state) == {
        "install.venv:vllm": ("pass", None), "install.venv:vllm.provision-demo-b": ("pass", "provision-demo-b 1.0")}
    # changed by hand inside the venv: the link and stamp are right, the installed version is not
    pip = [str(link / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--index-url", demo_index]
    subprocess.run([*pip, "provision-demo-b==2.0"], capture_output=True, check=True)
    assert verify_installs(first_profile, state=state)["install.venv:vllm.provision-demo-b"] == \
        ("fail", "provision-demo-b 2.0")
    subprocess.run([*pip, "provision-demo-b==1.0"], capture_output=True, check=True)

    newer = vllm_profile(tmp_path, {"engine": {**venv, "requirements": ["provision-demo-b==2.0"]}}, name="newer.yaml")
    planned = converge(newer, state=state, do_apply=False)
    [change] = planned.plan.installs
    assert change.summary.startswith("provision-demo-b==1.0 -> provision-demo-b==2.0 into ")
    assert planned.plan.handlers == ()  # no server managed here (builtin_files: false): nothing to restart
    converge(newer, state=state)
    assert link.parent / os.readlink(link) != old_dir and old_dir.is_dir()  # the old venv stays for rollback
    assert _demo_version(link) == "2.0"

    back = converge(first_profile, state=state, do_apply=False)  # the old pin again: only a switch
    [switch] = back.plan.installs
    assert switch.action == "switch" and switch.summary.startswith(
        "provision-demo-b==2.0 -> provision-demo-b==1.0 (switch to the built ")


def test_venv_under_root_is_pending(tmp_path: Path) -> None:
    profile = vllm_profile(tmp_path, {"engine": {"method": "venv", "requirements": ["provision-demo-b==1.0"]}})
    result = converge(profile, root=tmp_path / "image", do_apply=False)
    [change] = result.plan.installs
    assert change.pending and "/opt/provision/venvs/vllm-" in change.summary
    assert not result.plan.changed


# --- build: a generated C project with CMake ----------------------------------


def _c_project(tmp_path: Path, greeting: str = "hello from cmake") -> tuple[str, str]:
    src = tmp_path / "src" / "greet-1.0"
    src.mkdir(parents=True)
    (src / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.10)\nproject(greet C)\n"
        "option(GREET_LOUD \"shout\" OFF)\n"
        "add_executable(greet main.c)\n"
        "if(GREET_LOUD)\n  target_compile_definitions(greet PRIVATE LOUD=1)\nendif()\n")
    (src / "main.c").write_text(
        "#include <stdio.h>\nint main(void) {\n#ifdef LOUD\n  puts(\"LOUD\");\n#endif\n"
        f"  puts(\"{greeting}\");\n  return 0;\n}}\n")
    archive = tmp_path / "greet-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="greet-1.0")
    return f"file://{archive}", hashlib.sha256(archive.read_bytes()).hexdigest()


needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None,
                                 reason="needs cmake and a C compiler")


@needs_cmake
def test_build_cmake_project_stamped_noop_and_rebuilt_on_changed_option(tmp_path: Path) -> None:
    url, digest = _c_project(tmp_path)
    link = tmp_path / "builds" / "greet"
    engine = {"method": "source", "path": str(link), "url": url, "sha256": digest, "targets": ["greet"],
              "cmake_options": ["-DGREET_LOUD=OFF"]}
    profile = only_installs(tmp_path, {"engine": engine})
    state = tmp_path / "state"
    first = converge(profile, state=state)
    [change] = first.plan.installs
    # the user set no CUDA option: the profile's Blackwell card (compute capability 12.0) gives them
    assert change.action == "build" and "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=120" in change.script
    out = subprocess.run([str(link / "bin" / "greet")], capture_output=True, text=True, check=True).stdout
    assert out == "hello from cmake\n"
    built = link.parent / os.readlink(link)
    assert (built / "build.log").read_text().count("Built target greet") == 1
    assert not converge(profile, state=state).plan.changed
    assert verify_installs(profile, state=state) == {"install.build:llama.cpp": ("pass", None),
                                                     "install.build:llama.cpp.greet": ("pass", f"{link}/bin/greet")}
    (built / "bin" / "greet").unlink()
    assert verify_installs(profile, state=state)["install.build:llama.cpp.greet"][0] == "fail"

    loud = only_installs(tmp_path, {"engine": {**engine, "cmake_options": ["-DGREET_LOUD=ON"]}}, name="loud.yaml")
    again = converge(loud, state=state)
    assert again.installed == ("build:llama.cpp",)
    out = subprocess.run([str(link / "bin" / "greet")], capture_output=True, text=True, check=True).stdout
    assert out == "LOUD\nhello from cmake\n"
    assert built.is_dir() and link.parent / os.readlink(link) != built


@needs_cmake
def test_build_with_wrong_sha256_fails_keeps_log_and_replaces_nothing(tmp_path: Path) -> None:
    url, _ = _c_project(tmp_path)
    root = tmp_path / "image"
    profile = make_profile(tmp_path, {"install": {"engine": {"method": "source", "url": url, "sha256": "0" * 64,
                                                             "targets": ["greet"]}}})
    with pytest.raises(ProvisionError) as raised:
        converge(profile, root=root)
    assert "sha256 of file://" in raised.value.first.one_line()
    leftovers = [p for p in root.rglob("*") if p.is_file() and "/var/lib/provision/" not in str(p)]
    accounts = {"passwd", "group", "shadow", "gshadow", ".pwd.lock"}  # the service user, made before the build
    assert [p.name for p in leftovers if not p.name.endswith(".failed.log") and p.name not in accounts] == []
    assert not (root / "var/lib/provision/last").exists()


@needs_cmake
def test_build_runs_into_a_root_tree_and_the_run_script_uses_it(tmp_path: Path) -> None:
    url, digest = _c_project(tmp_path)
    root = tmp_path / "image"
    profile = make_profile(tmp_path, {"install": {"engine": {"method": "source", "url": url, "sha256": digest,
                                                             "targets": ["greet"]}}})
    result = converge(profile, root=root)
    assert result.installed == ("user:llm", "build:llama.cpp") and result.generation == 1
    link = root / "opt/provision/builds/llama.cpp"
    assert os.readlink(link).startswith("llama.cpp-")  # a bare name: the same inside the image and out
    assert (link / "bin/greet").is_file()
    run = (root / "opt/provision/bin/llm-server-run.sh").read_text()
    assert "exec /opt/provision/builds/llama.cpp/bin/llama-server " in run
    assert not converge(profile, root=root).plan.changed


# --- the real llama.cpp server build, from PyPI's llama-cpp-python sdist --------------

def test_real_llama_server_cpu_build_through_the_build_resource(llama_server_binary: Path) -> None:
    """scripts/build-llama-server builds the endpoint tests' llama-server b11312 with this
    resource (`provision apply --root` on a CPU profile whose engine is the sdist's vendored
    llama.cpp), so every session that runs the real server has run the real build once;
    here: what it left is what the resource promises, and a re-plan builds nothing."""
    dest = llama_server_binary.parents[6]
    tree = dest / "root"
    link = tree / "opt/provision/builds/llama.cpp"
    built = link.parent / os.readlink(link)
    assert os.readlink(link).startswith("llama.cpp-") and built.is_dir()  # a bare name, hash-named dir
    log = (built / "build.log").read_text(errors="replace")
    assert "-DGGML_CUDA=OFF" in (built / ".provision-stamp").read_text()  # CPU only: derived, no GPU in the profile
    assert "llama-server" in log
    version = subprocess.run([str(llama_server_binary), "--version"], capture_output=True, text=True, check=False)
    assert "(build 11312, commit 0c1e570)" in version.stdout + version.stderr  # release b11312
    plan = subprocess.run([sys.executable, "-m", "provisioner", "plan", str(dest / "profile.yaml"),
                           "--root", str(tree), "--json"], capture_output=True, text=True, check=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr  # stamped: nothing to rebuild
