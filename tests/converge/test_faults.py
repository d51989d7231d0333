"""The failpoint sweep: a kill (SIGKILL, ``PROVISION_FAILPOINT``) at every step of a
create, an update, a delete and a rollback run. After each, the next run converges:
``plan`` is empty, no temp file is left, no file the profile dropped remains."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provisioner.converge.apply import ApplyInputs, apply_script
from provisioner.converge.run import HostResult, apply_plan, plan_host, plan_rollback
from provisioner.errors import ProvisionError
from provisioner.render.pipeline import build
from provisioner.transport.local import LocalTransport
from tests.conftest import make_profile

CUSTOM = "/etc/custom/a.conf"
# The service user's install step writes the tree's account database (systemd-sysusers
# --root, or useradd --root): files the user's creation owns, not rendered files.
ACCOUNT_FILES = {"/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/.pwd.lock"}


def converge(profile: Path, root: Path, failpoint: int | None = None) -> HostResult:
    transport = LocalTransport(root)
    plan, gathered = plan_host(build(profile).rendered, transport, service="llm-server")
    return apply_plan(plan, gathered, transport, profile_name=profile.stem, failpoint=failpoint)


def steps_of(profile: Path, root: Path) -> int:
    transport = LocalTransport(root)
    plan, gathered = plan_host(build(profile).rendered, transport, service="llm-server")
    script = apply_script(ApplyInputs(plan, transport.root, transport.state_dir, gathered.last_generation + 1,
                                      gathered.last_generation, "t", "now"))
    return script.count("\nfp ")


def files(root: Path) -> dict[str, bytes]:
    return {"/" + str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not str(p.relative_to(root)).startswith("var/lib/provision")}


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".provision-new-" in p.name]


@pytest.fixture
def profiles(tmp_path: Path) -> dict[str, Path]:
    a = make_profile(tmp_path, {"files": [{"template": "a.j2", "dest": CUSTOM}]}, {"a.j2": "a\n"}, name="a.yaml")
    a2 = make_profile(tmp_path, {"files": [{"template": "a2.j2", "dest": CUSTOM}]}, {"a2.j2": "a2\n"},
                      name="a2.yaml")
    return {"a": a, "a2": a2, "b": make_profile(tmp_path, name="b.yaml")}


def test_a_kill_after_the_generation_is_recorded_keeps_the_deletion(profiles: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    """The reproduction: profile B drops a.conf; killed after the generation flips, the next
    apply of B said "nothing to do" and a.conf stayed, no longer managed."""
    template = tmp_path / "template"
    converge(profiles["a"], template)
    steps = steps_of(profiles["b"], template)
    for step in range(1, steps + 1):
        root = tmp_path / f"run-{step}"
        shutil.copytree(template, root, symlinks=True)
        with pytest.raises(ProvisionError):
            converge(profiles["b"], root, failpoint=step)
        converge(profiles["b"], root)
        assert not (root / CUSTOM.lstrip("/")).exists(), f"step {step}: the dropped file stayed"
        again = converge(profiles["b"], root)
        assert again.plan.nothing_to_do, f"step {step}"
        assert not temps(root), f"step {step}"


@pytest.mark.parametrize("run", ["create", "update", "delete"])
def test_kill_at_every_failpoint_then_converge(profiles: dict[str, Path], tmp_path: Path, run: str) -> None:
    start, goal = {"create": (None, "a"), "update": ("a", "a2"), "delete": ("a", "b")}[run]
    template = tmp_path / "template"
    template.mkdir()
    if start:
        converge(profiles[start], template)
    wanted = build(profiles[goal]).rendered.files
    steps = steps_of(profiles[goal], template)
    for step in range(1, steps + 1):
        root = tmp_path / f"{run}-{step}"
        shutil.copytree(template, root, symlinks=True)
        with pytest.raises(ProvisionError):
            converge(profiles[goal], root, failpoint=step)
        converge(profiles[goal], root)
        assert converge(profiles[goal], root).plan.nothing_to_do, f"step {step}"
        assert not temps(root), f"step {step}: a temp file is left"
        assert set(files(root)) - ACCOUNT_FILES == {f.path for f in wanted}, f"step {step}: an unmanaged file remains"
        assert (root / "etc/passwd").read_text().count("\nllm:") + (root / "etc/passwd").read_text().startswith(
            "llm:") == 1, f"step {step}: the service user is not created exactly once"


def test_kill_at_every_failpoint_of_a_rollback(profiles: dict[str, Path], tmp_path: Path) -> None:
    """A rollback killed mid-way: the next rollback (or apply) sweeps the temps it left."""
    template = tmp_path / "template"
    converge(profiles["a"], template)
    converge(profiles["a2"], template)
    transport = LocalTransport(template)
    plan, gathered, _ = plan_rollback(transport, None)
    script = apply_script(ApplyInputs(plan, transport.root, transport.state_dir, 3, 2, "t", "now"))
    for step in range(1, script.count("\nfp ") + 1):
        root = tmp_path / f"rollback-{step}"
        shutil.copytree(template, root, symlinks=True)
        transport = LocalTransport(root)
        plan, gathered, _ = plan_rollback(transport, None)
        with pytest.raises(ProvisionError):
            apply_plan(plan, gathered, transport, profile_name="rollback", failpoint=step)
        status = converge(profiles["a2"], root)  # the profile again: files back to a2, temps swept
        assert not temps(root), f"step {step}: {status.plan.stale_temps}"
        assert converge(profiles["a2"], root).plan.nothing_to_do
        assert (root / CUSTOM.lstrip("/")).read_text() == "a2\n"


def test_a_hand_edited_deletes_list_never_deletes_a_foreign_file(profiles: dict[str, Path], tmp_path: Path) -> None:
    """Only deletions the killed generation's manifest also lists are redone."""
    root = tmp_path / "root"
    foreign = root / "etc/sysctl.d/10-mine.conf"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("vm.dirty_ratio = 5\n")
    converge(profiles["a"], root)
    transport = LocalTransport(root)
    plan, _gathered = plan_host(build(profiles["b"]).rendered, transport, service="llm-server")
    script = apply_script(ApplyInputs(plan, transport.root, transport.state_dir, 2, 1, "t", "now")).splitlines()
    recorded = next(i for i, line in enumerate(script) if '"$state/last.new" "$state/last"' in line)
    step = int(script[recorded + 1].removeprefix("fp "))
    with pytest.raises(ProvisionError):
        converge(profiles["b"], root, failpoint=step)
    deletes = root / "var/lib/provision/generations/2/deletes"
    assert deletes.read_text() == CUSTOM + "\n"
    deletes.write_text(CUSTOM + "\n/etc/sysctl.d/10-mine.conf\n")
    converge(profiles["b"], root)
    assert not (root / CUSTOM.lstrip("/")).exists()
    assert foreign.read_text() == "vm.dirty_ratio = 5\n"
