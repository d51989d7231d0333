"""The Ansible export on a live system (no root prefix), without harming the test
machine: the private mount namespace and handler shims of test_live.py. Ansible's
first run must run the same system handlers, in the same order, as provision's
own first live apply; after it `provision plan` has nothing to do; a later change
to a running server's files holds its restart unless provision_restart is set."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import make_profile
from tests.converge.test_live import live

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"

pytestmark = [pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace"),
              pytest.mark.slow]


def system_calls(log: Path) -> list[str]:
    """The handler commands the shims recorded, without the read-only probes."""
    return [line for line in log.read_text().splitlines()
            if not line.startswith(("systemctl is-", "systemctl --version"))]


def test_ansible_runs_provisions_handlers_live_and_provision_agrees(tmp_path: Path) -> None:
    # /proc/sys/kernel/numa_balancing may not exist in a container: only a key every kernel has
    profile = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 10}}, name="base.yaml")
    moved = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 10}, "runtime.port": 18451}, name="moved.yaml")
    threads = make_profile(tmp_path, {"os.sysctl": {"vm.swappiness": 10}, "runtime.port": 18451,
                                      "runtime.threads": 4}, name="threads.yaml")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "health").write_text("ok\n")  # a stand-in server's health endpoint
    env = {"FAKE_SYSTEMD": "1"}

    reference = tmp_path / "provision"
    reference.mkdir()
    applied = live(reference, "apply", str(profile), "--yes", "--json", env_extra=env)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["hosts"][0]["handlers"][-1] == "enable-server"

    for name, source in (("first", profile), ("moved", moved), ("threads", threads)):
        exported = subprocess.run([sys.executable, "-m", "provisioner", "export", "ansible", str(source),
                                   "--out", str(tmp_path / name)], capture_output=True, text=True, check=False)
        assert exported.returncode == 0, exported.stderr
    box = tmp_path / "ansible"
    box.mkdir()
    assert live(box, "--version", env_extra=env).returncode == 0  # writes the shims and the sandbox script
    play = (f"ANSIBLE_HOME={box}/home ANSIBLE_LOCAL_TEMP={box}/home/tmp ANSIBLE_REMOTE_TMP={box}/home/remote "
            f"ANSIBLE_NOCOLOR=1 {shlex.quote(str(PLAYBOOK))} -c local -i localhost, "
            f"-e ansible_python_interpreter={shlex.quote(sys.executable)}")
    py = f"{shlex.quote(sys.executable)} -m provisioner"
    story = box / "story.sh"
    # One namespace for the whole story, so /etc and the shims' state survive between the runs.
    story.write_text(f"""set -u
cd {shlex.quote(str(ROOT))}
{play} {tmp_path}/first/site.yml > {box}/1.out 2>&1; echo $? > {box}/1.code
cp {box}/handlers.log {box}/handlers-1.log
{py} plan {profile} --json > {box}/plan.json 2> {box}/plan.err; echo $? > {box}/plan.code
{play} {tmp_path}/first/site.yml --check --diff > {box}/2.out 2>&1; echo $? > {box}/2.code
{play} {tmp_path}/moved/site.yml > {box}/3.out 2>&1; echo $? > {box}/3.code
cp {box}/handlers.log {box}/handlers-3.log
{shlex.quote(sys.executable)} -m http.server 18451 --bind 127.0.0.1 --directory {tmp_path}/www > /dev/null 2>&1 &
server=$!
{play} {tmp_path}/threads/site.yml -e provision_restart=true > {box}/4.out 2>&1; echo $? > {box}/4.code
kill $server
""")
    done = subprocess.run(["unshare", "-m", "sh", str(box / "sandbox.sh"), str(box / "work"), "sh", str(story)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": f"{box / 'shims'}:{os.environ['PATH']}", **env})
    assert done.returncode == 0, done.stderr

    def read(name: str) -> str:
        return (box / name).read_text()

    assert read("1.code").strip() == "0", read("1.out")[-3000:]
    # the same system handlers, the same commands, the same order as provision's own first apply
    assert system_calls(box / "handlers-1.log") == system_calls(reference / "handlers.log") == [
        "systemctl daemon-reload", "sysctl --system", "systemd-tmpfiles --create", "update-initramfs -u",
        "systemctl restart nvidia-gpu-settings.service",
        "systemctl enable --now nvidia-gpu-settings.service llm-server.service"]
    assert read("plan.code").strip() == "0", read("plan.json") + read("plan.err")
    assert json.loads(read("plan.json"))["hosts"][0]["handlers"] == []

    assert read("2.code").strip() == "0", read("2.out")[-3000:]
    assert "changed=0" in read("2.out") and "failed=0" in read("2.out")

    # the server now runs: its changed files are installed, its restart held, as apply without --restart
    assert read("3.code").strip() == "0", read("3.out")[-3000:]
    later = system_calls(box / "handlers-3.log")[len(system_calls(box / "handlers-1.log")):]
    assert later == [], later  # only the run script changed: it owes restart-server alone, held
    assert "restart pending: the model server's files changed" in read("3.out")

    # -e provision_restart=true is apply --restart: restart, then wait for the health endpoint
    assert read("4.code").strip() == "0", read("4.out")[-3000:]
    last = system_calls(box / "handlers.log")[len(system_calls(box / "handlers-3.log")):]
    assert last == ["systemctl try-restart llm-server.service"], last
    assert re.search(r"restart-server: wait until the server answers\] \**\nok: \[localhost\]", read("4.out"))
