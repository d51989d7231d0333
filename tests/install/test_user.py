"""The service user: plan shows it, apply creates it in the tree's passwd (through the
real systemd-sysusers, or useradd where systemd is absent), a second plan has nothing to do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.install import parse_install_lines
from provisioner.install.user import ServiceUser
from tests.conftest import make_profile
from tests.install.test_flow import cli


def test_plan_shows_the_user_apply_creates_it_with_gpu_groups_then_noop(tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    root = tmp_path / "image"
    planned = cli("plan", str(profile), "--root", str(root), "--json")
    assert planned.returncode == 2, planned.stderr
    installs = json.loads(planned.stdout)["hosts"][0]["installs"]
    [user] = [i for i in installs if i["name"] == "user:llm"]
    assert user["summary"] == "user llm: create (home /var/lib/llm-server, groups video, render)"
    assert not user["pending"]  # created in the tree too: the image boots with its user

    applied = cli("apply", str(profile), "--root", str(root), "--yes")
    assert applied.returncode == 0, applied.stderr
    passwd = (root / "etc/passwd").read_text().splitlines()
    [entry] = [line for line in passwd if line.startswith("llm:")]
    assert entry.split(":")[5:] == ["/var/lib/llm-server", "/usr/sbin/nologin"]
    group_lines = (root / "etc/group").read_text().splitlines()
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in group_lines}
    assert "llm" in groups["video"] and "llm" in groups["render"]
    sysusers = (root / "etc/sysusers.d/provision-llm-server.conf").read_text()
    assert 'u llm - "LLM server llm-server" /var/lib/llm-server /usr/sbin/nologin' in sysusers
    assert "m llm render" in sysusers

    again = cli("plan", str(profile), "--root", str(root))
    assert again.returncode == 0, again.stderr


def test_a_cpu_profile_user_joins_no_gpu_group_and_a_separate_group_is_made(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"hardware.gpus": [], "service.group": "llmgroup"})
    root = tmp_path / "image"
    applied = cli("apply", str(profile), "--root", str(root), "--yes", "--ignore-fit")
    assert applied.returncode == 0, applied.stderr
    [entry] = [line for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("llm:")]
    group_line = next(line for line in (root / "etc/group").read_text().splitlines()
                      if line.startswith("llmgroup:"))
    assert entry.split(":")[3] == group_line.split(":")[2]  # the user's primary group is llmgroup
    assert "video" not in (root / "etc/group").read_text()


@pytest.mark.skipif(shutil.which("useradd") is None, reason="needs useradd (Debian: passwd)")
def test_without_systemd_sysusers_useradd_makes_the_same_user(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        (root / "etc" / name).touch()
    tools = tmp_path / "bin"  # a PATH with the shadow tools and no systemd-sysusers
    tools.mkdir()
    for tool in ("sh", "grep", "mkdir", "useradd", "groupadd", "usermod", "printf", "tail"):
        where = shutil.which(tool)
        assert where is not None, tool
        (tools / tool).symlink_to(where)
    user = ServiceUser("llm", "llm", "/var/lib/llm-server", ("video", "render"))
    env = {**os.environ, "PATH": str(tools), "root": str(root)}
    run = subprocess.run(["sh", "-eu", "-c", user.script()], capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    probe = subprocess.run(["sh", "-c", user.probe(str(root))], capture_output=True, text=True, check=True)
    found = parse_install_lines(probe.stdout).of("user:llm")
    assert found == {"exists": "yes", "member-video": "yes", "member-render": "yes"}
    assert user.change(found, str(root)) is None
