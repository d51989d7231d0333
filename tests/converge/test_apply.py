"""plan / apply / rollback against real temp root trees (``--root``)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.converge.apply import ApplyInputs, apply_script
from provisioner.converge.run import HostResult, apply_plan, plan_host, plan_rollback
from provisioner.errors import ProvisionError
from provisioner.render.pipeline import build
from provisioner.render.resources import File, Rendered
from provisioner.transport.local import LocalTransport
from tests.conftest import make_profile

SYSCTL = "/etc/sysctl.d/90-provision-llm-server.conf"
RUN = "/opt/provision/bin/llm-server-run.sh"


def converge(profile: Path, root: Path, **kwargs: object) -> HostResult:
    built = build(profile)
    transport = LocalTransport(root)
    plan, gathered = plan_host(built.rendered, transport, service="llm-server")
    return apply_plan(plan, gathered, transport, profile_name="t", **kwargs)  # type: ignore[arg-type]


# The account database the service user is created in: an install (kept by a rollback, as a
# build is), not one of the files a generation replaces.
ACCOUNTS = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/.pwd.lock")


def tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file outside provision's state dir and the account database: content and mode."""
    out: dict[str, tuple[bytes, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = "/" + str(path.relative_to(root))
        if path.is_file() and not rel.startswith(("/var/lib/provision", *ACCOUNTS)):
            out[rel] = (path.read_bytes(), path.stat().st_mode & 0o7777)
    return out


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return make_profile(tmp_path, name="base.yaml")


@pytest.fixture
def changed(tmp_path: Path) -> Path:
    return make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 5, "kernel.numa_balancing": 0}},
                        name="changed.yaml")


def test_cold_apply_creates_files_with_modes_then_noop(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = converge(base, root)
    assert first.applied and first.generation == 1
    built = build(base)
    for item in built.rendered.files:
        target = root / item.path.lstrip("/")
        assert target.read_bytes() == item.content
        assert target.stat().st_mode & 0o7777 == item.mode
    assert {c.action for c in first.plan.changes} == {"create"}
    assert "daemon-reload" in first.plan.pending_builtin
    second = converge(base, root)
    assert not second.applied and not second.plan.changes and not second.plan.handlers
    assert (root / "var/lib/provision/last").read_text().strip() == "1"


def test_one_value_change_is_exactly_one_line_and_one_file(base: Path, changed: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    converge(base, root)
    before = {p: (root / p.lstrip("/")).stat().st_mtime_ns for p in tree(root)}
    result = converge(changed, root)
    assert [c.path for c in result.plan.changes] == [SYSCTL]
    diff = result.plan.changes[0].diff or ""
    removed = [line for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    assert removed == ["-vm.swappiness = 10"] and added == ["+vm.swappiness = 5"]
    assert result.plan.pending_builtin == ("sysctl",)
    after = {p: (root / p.lstrip("/")).stat().st_mtime_ns for p in tree(root)}
    assert [p for p in after if after[p] != before[p]] == [SYSCTL]


def test_dropped_file_is_deleted_foreign_file_never_touched(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    foreign = root / "etc/sysctl.d/10-mine.conf"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("vm.dirty_ratio = 5\n")
    converge(base, root)
    no_sysctl = make_profile(tmp_path, {"os.sysctl": {}, "os.swap": "keep"}, name="nosysctl.yaml")
    result = converge(no_sysctl, root)
    assert [(c.path, c.action) for c in result.plan.changes] == [(SYSCTL, "delete")]
    assert not (root / SYSCTL.lstrip("/")).exists()
    assert foreign.read_text() == "vm.dirty_ratio = 5\n"


def test_rollback_restores_byte_for_byte(base: Path, changed: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    mine = root / "etc/default/llm-server"
    mine.parent.mkdir(parents=True)
    mine.write_text("MINE=1\n")
    mine.chmod(0o600)
    pristine = tree(root)
    converge(base, root)
    after_one = tree(root)
    converge(changed, root)
    transport = LocalTransport(root)
    plan, gathered, target = plan_rollback(transport, None)
    assert target == 1
    apply_plan(plan, gathered, transport, profile_name="rollback")
    assert tree(root) == after_one
    plan, gathered, target = plan_rollback(transport, 0)
    result = apply_plan(plan, gathered, transport, profile_name="rollback")
    assert result.generation == 4
    assert tree(root) == pristine  # the file that was there before comes back, the rest goes
    # ... and provision does not count it as its own: a new apply updates it, a rollback restores it.
    assert converge(base, root).plan.changes[0].action in {"create", "update"}


def _run_with_failpoint(profile: Path, root: Path, failpoint: int) -> None:
    built = build(profile)
    transport = LocalTransport(root)
    plan, gathered = plan_host(built.rendered, transport, service="llm-server")
    with pytest.raises(ProvisionError):
        apply_plan(plan, gathered, transport, profile_name="t", failpoint=failpoint)


def _steps(profile: Path, root: Path) -> int:
    built = build(profile)
    transport = LocalTransport(root)
    plan, gathered = plan_host(built.rendered, transport, service="llm-server")
    script = apply_script(ApplyInputs(plan, transport.root, transport.state_dir, gathered.last_generation + 1,
                                      gathered.last_generation, "t", "now"))
    return sum(1 for line in script.splitlines() if line.startswith("fp "))


@pytest.mark.parametrize("start", ["empty", "generation-1"])
def test_kill_at_every_step_leaves_each_file_old_or_new(base: Path, changed: Path, tmp_path: Path,
                                                        start: str) -> None:
    template = tmp_path / "template"
    template.mkdir()
    if start == "generation-1":
        converge(base, template)
    old = tree(template)
    target_profile = changed if start == "generation-1" else base
    new_files = {f.path: (f.content, f.mode) for f in build(target_profile).rendered.files}
    steps = _steps(target_profile, template)
    assert steps >= 5
    for step in range(1, steps + 1):
        root = tmp_path / f"run-{step}"
        shutil.copytree(template, root, symlinks=True)
        _run_with_failpoint(target_profile, root, step)
        for path, state in tree(root).items():
            if ".provision-new-" not in path:  # a temp of the killed run, never a target
                assert state in (old.get(path), new_files.get(path)), f"step {step}: {path} is torn"
        # The next apply converges, and then there is nothing left to do.
        converge(target_profile, root)
        assert not [p for p in tree(root) if ".provision-new-" in p]
        assert tree(root) == {**old, **new_files} | {k: v for k, v in tree(root).items() if k not in new_files}
        again = converge(target_profile, root)
        assert not again.plan.changes and not again.plan.handlers, f"step {step}"


def test_owed_handler_runs_on_next_apply_after_a_kill(tmp_path: Path) -> None:
    marker = "echo ran >> \"$PROVISION_ROOT/handler.log\""
    profile = make_profile(tmp_path, {
        "files": [{"template": "extra.j2", "dest": "/etc/extra.conf", "notify": ["mark"]}],
        "handlers": {"mark": {"command": marker}}}, {"extra.j2": "port={{ profile.runtime.port }}\n"})
    root = tmp_path / "root"
    steps = _steps(profile, root)
    _run_with_failpoint(profile, root, steps)  # the last step: files in place, handlers not run
    assert not (root / "handler.log").exists()
    result = converge(profile, root)
    assert not result.plan.changes and result.plan.handlers == ("mark",)
    assert (root / "handler.log").read_text() == "ran\n"
    assert not converge(profile, root).plan.handlers
    assert (root / "handler.log").read_text() == "ran\n"


def test_custom_handler_runs_once_only_when_its_file_changes(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {
        "files": [{"template": "extra.j2", "dest": "/etc/extra.conf", "notify": ["mark"]}],
        "handlers": {"mark": {"command": "echo ran >> \"$PROVISION_ROOT/handler.log\""}}},
        {"extra.j2": "x\n"})
    root = tmp_path / "root"
    assert converge(profile, root).handlers_run == ("mark",)
    assert converge(profile, root).handlers_run == ()
    (tmp_path / "extra.j2").write_text("y\n")
    assert converge(profile, root).handlers_run == ("mark",)
    assert (root / "handler.log").read_text() == "ran\nran\n"


def test_changed_since_plan_replaces_nothing(base: Path, changed: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    converge(base, root)
    built = build(changed)
    transport = LocalTransport(root)
    plan, gathered = plan_host(built.rendered, transport, service="llm-server")
    (root / SYSCTL.lstrip("/")).write_text("edited by hand\n")
    snapshot = tree(root)
    with pytest.raises(ProvisionError, match="changed since plan"):
        apply_plan(plan, gathered, transport, profile_name="t")
    assert tree(root) == snapshot


def test_second_apply_fails_at_once_naming_the_lock_holder(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    state = root / "var/lib/provision"
    state.mkdir(parents=True)
    with (state / "lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        (state / "lock.pid").write_text("4242\n")
        with pytest.raises(ProvisionError, match="pid 4242"):
            converge(base, root)
    assert not (root / "etc").exists()


def test_validation_failure_replaces_nothing(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    converge(base, root)
    snapshot = tree(root)
    rendered = build(base).rendered
    broken = File(path=RUN, content=b"#!/bin/sh\nif then fi\n", mode=0o755, validate="sh")
    files = tuple(broken if f.path == RUN else f for f in rendered.files)
    changed_sysctl = tuple(File(f.path, f.content + b"vm.dirty_ratio = 5\n", f.mode, validate="sysctl")
                           if f.path == SYSCTL else f for f in files)
    transport = LocalTransport(root)
    plan, gathered = plan_host(Rendered(changed_sysctl, handlers=rendered.handlers), transport,
                               service="llm-server")
    assert {c.path for c in plan.changes} == {RUN, SYSCTL}
    with pytest.raises(ProvisionError, match="validation failed"):
        apply_plan(plan, gathered, transport, profile_name="t")
    assert tree(root) == snapshot
    assert not list(root.rglob("*.provision-new-*")), "temp files are cleaned up"


@pytest.mark.parametrize("obstacle", ["directory", "symlink"])
def test_directory_or_symlink_at_target_is_refused(base: Path, tmp_path: Path, obstacle: str) -> None:
    root = tmp_path / "root"
    target = root / SYSCTL.lstrip("/")
    target.parent.mkdir(parents=True)
    if obstacle == "directory":
        target.mkdir()
    else:
        (tmp_path / "elsewhere").write_text("x")
        target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ProvisionError, match=obstacle):
        converge(base, root)
    assert (tmp_path / "elsewhere").read_text() == "x" if obstacle == "symlink" else target.is_dir()


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "mnt"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_is_one_clear_error_and_nothing_half_written(base: Path, small_mount: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "provisioner", "apply", str(base), "--root",
                             str(small_mount), "--yes"], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "disk full" in errors[0], result.stderr
    for path in small_mount.rglob("*"):
        assert ".provision-new" not in path.name


def test_read_only_target_is_one_clear_error(base: Path, small_mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)
    result = subprocess.run([sys.executable, "-m", "provisioner", "apply", str(base), "--root",
                             str(small_mount), "--yes"], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "read-only" in result.stderr.lower(), result.stderr


def test_plan_and_apply_json_shape(base: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    plan = subprocess.run([sys.executable, "-m", "provisioner", "plan", str(base), "--root", str(root),
                           "--json"], capture_output=True, text=True, check=False)
    assert plan.returncode == 2
    data = json.loads(plan.stdout)
    assert data["command"] == "plan" and data["ok"] is True and data["changed"] is True
    host = data["hosts"][0]
    assert set(host) >= {"host", "ok", "changes", "handlers", "reboot_required", "restart_pending",
                         "generation", "error"}
    change = host["changes"][0]
    assert set(change) == {"path", "action", "mode", "owner", "diff"}
    applied = subprocess.run([sys.executable, "-m", "provisioner", "apply", str(base), "--root", str(root),
                              "--json", "--yes"], capture_output=True, text=True, check=False)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["hosts"][0]["generation"] == 1
    again = subprocess.run([sys.executable, "-m", "provisioner", "plan", str(base), "--root", str(root),
                            "--json"], capture_output=True, text=True, check=False)
    assert again.returncode == 0
    assert json.loads(again.stdout)["changed"] is False


def test_apply_without_terminal_needs_yes(base: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "provisioner", "apply", str(base), "--root",
                             str(tmp_path / "root")], capture_output=True, text=True, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "--yes" in result.stderr
    assert not (tmp_path / "root" / "etc").exists()
