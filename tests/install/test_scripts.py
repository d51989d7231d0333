"""The sh that installs: the gather probes and apply's whole batched script with every
kind of install change pass sh -n and shellcheck, and a profile value cannot break out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from provisioner.converge.apply import ApplyInputs, apply_script, install_steps
from provisioner.converge.plan import Plan
from provisioner.facts.gather import gather_script
from provisioner.install import InstallChange, fabricmanager
from provisioner.install.build import Build
from provisioner.install.packages import Package, unhold_change
from provisioner.install.venv import Venv

SHELLCHECK = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")

ITEMS = (Package("nvidia-driver-580-open", "580.95.05-0ubuntu1"), Package("hello", "2.10-3", hold=False),
         Venv("/opt/provision/venvs/vllm", ("vllm==0.11.0", "torch==2.8.0"), index_url="https://example.invalid/cu128",
              extra_index_urls=("https://example.invalid/x",), label="vllm"),
         Build("/opt/provision/builds/llama.cpp", url="https://example.invalid/llama.cpp-b6000.tar.gz", sha256="a" * 64,
               subdir="vendor/llama.cpp", cmake_options=("-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=120;89"),
               targets=("llama-server", "llama-bench"), label="llama.cpp"),
         Build("/opt/provision/builds/ik", git="https://example.invalid/ik_llama.cpp.git", commit="b" * 40,
               label="ik"),
         fabricmanager.FabricManager(True, "580.65.06"), fabricmanager.FabricManager("auto"))


def _changes(root: str) -> tuple[InstallChange, ...]:
    out = [item.change({"manager": "apt"}, root) for item in ITEMS]
    undo = unhold_change({"kind": "package", "package": "old-driver", "version": "1", "hold": True})
    fabric = fabricmanager.unhold_change({"kind": "fabricmanager", "hold": True})
    return tuple(c for c in [*out, undo, fabric] if c is not None)


def _check(path: Path) -> None:
    subprocess.run(["sh", "-n", str(path)], check=True)
    # SC2043/SC2157: the gather's own template fills in a literal path list and service name
    subprocess.run([SHELLCHECK, "-s", "sh", "-S", "warning", "-e", "SC2043,SC2157", str(path)], check=True)


def test_gather_with_every_probe_passes_shellcheck(tmp_path: Path) -> None:
    for root in ("", "/mnt/image"):
        probes = "\n".join(item.probe(root) for item in ITEMS)
        probes += "\n" + "\n".join(item.verify_probe(root) for item in ITEMS if hasattr(item, "verify_probe"))
        path = tmp_path / f"gather{len(root)}.sh"
        path.write_text(gather_script(["/etc/x.conf"], root, "llm-server", extra=probes))
        _check(path)


def test_apply_script_with_every_install_passes_shellcheck(tmp_path: Path) -> None:
    plan = Plan(changes=(), handlers=("restart-server",), handler_commands={"restart-server": "true"},
                restart_pending=(), reboot_required=True, installs=_changes(""))
    assert [name for name, _ in install_steps(plan.installs)] == ["packages", "venv:vllm", "build:llama.cpp",
                                                                  "build:ik", "fabricmanager:nvidia",
                                                                  "fabricmanager:nvidia"]
    script = apply_script(ApplyInputs(plan=plan, root="", state_dir="/var/lib/provision", generation=1,
                                      expected_last=0, profile_name="t", time="t"))
    path = tmp_path / "apply.sh"
    path.write_text(script)
    _check(path)
    # one apt-get for every package change, then the holds and unholds; the fabric manager's own
    # apt-get runs after it (its version is the driver's, which that one may install)
    assert script.count("apt-get install -y") == 2
    assert script.index("nvidia-driver-580-open=580.95.05-0ubuntu1") < script.index('"$fm_pick"')
    assert "--force-confold nvidia-driver-580-open=580.95.05-0ubuntu1 hello=2.10-3 " in script
    assert "apt-mark hold nvidia-driver-580-open" in script
    assert "apt-mark unhold hello old-driver" in script


def test_a_hostile_cmake_option_stays_one_word(tmp_path: Path) -> None:
    """The schema refuses blanks and $ in options; the snippet still quotes each (defence in depth):
    a real build of a generated project runs with the option as one -D value, nothing else."""
    from tests.install.test_install import _c_project

    url, digest = _c_project(tmp_path)
    marker = tmp_path / "pwned"
    item = Build(str(tmp_path / "b"), url=url, sha256=digest, cmake_options=(f"-DX=1;touch {marker}",),
                 targets=("greet",))
    change = item.change({}, "")
    assert change is not None
    result = subprocess.run(["sh", "-c", f"root=''\nstate={tmp_path}\n( set -eu\n{change.script}\n)"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "b" / "bin" / "greet").is_file()
    assert not marker.exists()


def test_a_failing_command_inside_a_snippet_stops_it_and_the_apply(tmp_path: Path) -> None:
    """set -e holds inside install snippets (sh would ignore it in an `if` condition)."""
    from provisioner.converge.run import apply_plan
    from provisioner.errors import ProvisionError
    from provisioner.facts.gather import Facts, Gathered
    from provisioner.transport.local import LocalTransport

    marker = tmp_path / "reached"
    change = InstallChange("build:x", "build", "build", "x", f"false\necho reached > {marker}", {"kind": "build"})
    plan = Plan(changes=(), handlers=(), handler_commands={}, restart_pending=(), reboot_required=False,
                installs=(change,), install_records={"build:x": {"kind": "build"}})
    gathered = Gathered(facts=Facts({}), paths={}, last_generation=0, manifest=None, pending_handlers=())
    root = tmp_path / "image"
    try:
        apply_plan(plan, gathered, LocalTransport(root), profile_name="t")
    except ProvisionError as exc:
        assert "install failed, no file was replaced" in exc.first.message
    else:
        raise AssertionError("the apply must fail")
    assert not marker.exists()
    assert not (root / "var/lib/provision/last").exists()



def test_the_token_wrapper_passes_shellcheck(tmp_path: Path) -> None:
    from provisioner.install.token import WithToken, token_from_file, token_from_secrets_env

    inner = Build("/opt/b/x", url="https://example.invalid/x.tgz", sha256="d" * 64, label="x")
    for token_sh in (token_from_file("/etc/hf token"), token_from_secrets_env("/etc/provision/s/secrets.env", "T")):
        change = WithToken(inner, "/run/provision/s-hf-header", token_sh, "there").change({}, "")
        assert change is not None
        path = tmp_path / "wrapped.sh"
        path.write_text(f"#!/bin/sh\nset -eu\nroot=''\nstate=/var/lib/provision\nexport root state\n"
                        f"( set -eu\n{change.script}\n)\n")
        _check(path)
