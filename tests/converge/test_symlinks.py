"""--root and symlinks: every managed folder and state path tried as a link to outside the
root; nothing may land outside it, neither when plan sees the link nor when it appears
between plan and apply (the apply script's own walk)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest

from provisioner.converge.run import apply_plan, plan_host
from provisioner.errors import ProvisionError
from provisioner.install import InstallChange
from provisioner.render.pipeline import build
from provisioner.transport.local import LocalTransport
from tests.conftest import ROOT, make_profile

QUICKSTART = ROOT / "examples" / "quickstart.yaml"
STATE = "var/lib/provision"


def _managed_dirs() -> list[str]:
    dirs = {str(parent).lstrip("/") for f in build(QUICKSTART).rendered.files
            for parent in PurePosixPath(f.path).parents if str(parent) != "/"}
    return sorted(dirs | {"var", "var/lib", STATE, f"{STATE}/generations"})


STATE_FILES = [f"{STATE}/{name}" for name in ("last", "lock", "lock.pid", "pending-handlers")]


def _everything(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _link(root: Path, rel: str, outside: Path, relative: bool) -> None:
    link = root / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    target = Path(os.path.relpath(outside, link.parent)) if relative else outside
    link.symlink_to(target)


def test_the_reported_layout_writes_nothing_outside(tmp_path: Path) -> None:
    """The reproduction: R/etc -> victim made `apply --root R --yes` exit 0 with 8 files in victim/."""
    root, victim = tmp_path / "R", tmp_path / "victim"
    victim.mkdir()
    root.mkdir()
    (root / "etc").symlink_to(victim)
    proc = subprocess.run([sys.executable, "-m", "provisioner", "apply", str(QUICKSTART), "--root", str(root),
                           "--yes"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "symlink" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _everything(victim) == {}


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
@pytest.mark.parametrize("rel", _managed_dirs())
def test_linked_folder_is_refused_by_plan(tmp_path: Path, rel: str, relative: bool) -> None:
    root, victim = tmp_path / "R", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("theirs\n")
    _link(root, rel, victim, relative)
    transport = LocalTransport(root)
    with pytest.raises(ProvisionError, match="is a symlink"):
        plan_host(build(QUICKSTART).rendered, transport, service="llm-server")
    assert _everything(victim) == {"keep": b"theirs\n"}


@pytest.mark.parametrize("rel", _managed_dirs() + STATE_FILES)
def test_link_made_between_plan_and_apply_is_refused_by_the_script(tmp_path: Path, rel: str) -> None:
    root, victim = tmp_path / "R", tmp_path / "victim"
    victim.mkdir()
    root.mkdir()
    transport = LocalTransport(root)
    plan, gathered = plan_host(build(QUICKSTART).rendered, transport, service="llm-server")
    outside = victim / "file" if rel in STATE_FILES else victim
    if rel in STATE_FILES:
        outside.write_text("theirs\n")
    _link(root, rel, outside, relative=False)
    before = _everything(victim)
    with pytest.raises(ProvisionError, match="symlink"):
        apply_plan(plan, gathered, transport, profile_name="t")
    assert _everything(victim) == before
    written = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not written, "nothing is written, not even inside the root"


def test_deletion_through_a_linked_folder_is_refused(tmp_path: Path) -> None:
    """Profile A's file, its folder then swapped for a link to a copy outside: B drops the file."""
    a = make_profile(tmp_path, {"files": [{"template": "a.j2", "dest": "/etc/custom/a.conf"}]},
                     {"a.j2": "a\n"}, name="a.yaml")
    b = make_profile(tmp_path, name="b.yaml")
    root, victim = tmp_path / "R", tmp_path / "victim"
    transport = LocalTransport(root)
    plan, gathered = plan_host(build(a).rendered, transport, service="llm-server")
    apply_plan(plan, gathered, transport, profile_name="a")
    (root / "etc/custom").rename(victim)
    (root / "etc/custom").symlink_to(victim)
    with pytest.raises(ProvisionError, match="symlink"):
        plan_host(build(b).rendered, transport, service="llm-server")
    assert (victim / "a.conf").read_text() == "a\n"


def test_an_install_destination_behind_a_linked_folder_is_refused(tmp_path: Path) -> None:
    """A download into R/srv/models where R/srv links out would fill the controller's own /srv."""
    root, victim = tmp_path / "R", tmp_path / "victim"
    victim.mkdir()
    root.mkdir()
    transport = LocalTransport(root)
    plan, gathered = plan_host(build(QUICKSTART).rendered, transport, service="llm-server")
    fetch = InstallChange("download:model", "download", "download", "one file",
                          'mkdir -p "$root/srv/models" && echo weights > "$root/srv/models/m.gguf"',
                          {"files": [{"dest": "/srv/models/m.gguf"}]})
    plan = dataclasses.replace(plan, installs=(fetch,))
    (root / "srv").symlink_to(victim)
    with pytest.raises(ProvisionError, match="symlink"):
        apply_plan(plan, gathered, transport, profile_name="t")
    assert _everything(victim) == {}


def test_plan_reports_a_linked_folder_on_the_way_to_a_download(tmp_path: Path) -> None:
    data = b"weights"
    mirror = tmp_path / "mirror.gguf"
    mirror.write_bytes(data)
    model = {"path": "/srv/models/q/model-00001-of-00001.gguf", "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest(), "url": f"file://{mirror}"}
    profile = make_profile(tmp_path, {"model.source": {"files": [model]}, "install": {"model": True}})
    root, victim = tmp_path / "R", tmp_path / "victim"
    victim.mkdir()
    root.mkdir()
    (root / "srv").symlink_to(victim)
    with pytest.raises(ProvisionError, match="srv is a symlink"):
        plan_host(build(profile).rendered, LocalTransport(root), service="llm-server")
    assert _everything(victim) == {}
