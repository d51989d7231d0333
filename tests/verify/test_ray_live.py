"""A real Ray head and worker (on CPU), started with the words of the run scripts that
provision renders for each node, joined over loopback, and seen by `provision verify`.

Everything runs in a network namespace the test creates (`unshare --net`): it has only
a loopback interface, so Ray cannot pick the machine's own address (given 127.0.0.1 for
a head, Ray resolves the host's routable IP instead) and nothing leaves 127.0.0.0/8.
Ray comes from the dev extra; `--num-gpus` makes Ray advertise the profile's GPUs on a
machine without any, which is what verify counts. Takes ~45 s on a 2-core machine."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from provisioner.render.files import render
from provisioner.render.pipeline import build
from tests.render.test_cluster import RAY_EXAMPLE, _profile, _run_script_words

RAY = Path(sys.executable).parent / "ray"


def _netns_available() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip missing (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "--net", "ip", "link", "set", "lo", "up"], capture_output=True, text=True,
                           check=False)
    return None if probe.returncode == 0 else f"cannot create a network namespace: {probe.stderr.strip()}"


def test_real_ray_head_and_worker_join_and_verify_sees_them(tmp_path: Path) -> None:
    if not RAY.exists():
        pytest.fail(f"{RAY} is missing: ray is a dev dependency (pip install -e '.[dev]')")
    reason = _netns_available()
    if reason is not None:
        pytest.skip(reason)
    profile = _profile(tmp_path, RAY_EXAMPLE, {
        "cluster.trusted_network": False, "cluster.port": 6380,
        "cluster.nodes.0.address": "127.0.0.1", "cluster.nodes.1.address": "127.0.0.2"})
    built = build(profile)
    head = render(built.spec, built.placement, node="head").file("/opt/provision/bin/llm-server-ray.sh")
    worker = render(built.spec, built.placement, node="w1").file("/opt/provision/bin/llm-server-run.sh")
    # AF_UNIX socket paths are limited to 107 bytes and Ray puts its sockets under
    # <temp-dir>/session_<date>_<time>_<pid>/sockets/: pytest's tmp_path is too long
    session = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    # the rendered head keeps its session under /var/lib/<service>; here it goes to tmp_path
    head_words = [f"--temp-dir={session}" if w.startswith("--temp-dir=") else w
                  for w in _run_script_words(head.content.decode())]
    worker_words = _run_script_words(worker.content.decode())
    assert head_words[0] == "--head" and "--block" in head_words and worker_words[0] == "--address=127.0.0.1:6380"
    cpus = ["--num-cpus=1"]  # a 2-core machine runs both nodes: one worker process each
    ray, py = shlex.quote(str(RAY)), shlex.quote(sys.executable)
    script = tmp_path / "cluster.sh"
    status = f"timeout 10 {ray} status --address=127.0.0.1:6380 2>/dev/null | grep -c '^ 1 node_'"
    script.write_text(f"""set -u
ip link set lo up
export RAY_ADDRESS=  # the test's environment must not point Ray elsewhere
setsid {ray} start {' '.join(map(shlex.quote, head_words + cpus))} > {tmp_path}/head.log 2>&1 &
head=$!
for _ in $(seq 30); do [ "$({status})" = 1 ] && break; sleep 1; done
setsid {ray} start {' '.join(map(shlex.quote, worker_words + cpus))} > {tmp_path}/worker.log 2>&1 &
worker=$!
for _ in $(seq 30); do [ "$({status})" = 2 ] && break; sleep 1; done
PATH={shlex.quote(str(RAY.parent))}:$PATH {py} -m provisioner verify {shlex.quote(str(profile))} --node head \\
    --only cluster --json > {tmp_path}/verify.json
echo "$head $worker" > {tmp_path}/groups
# stop only what this script started: each `ray start` leads its own process group
# (dash's builtin kill takes no `--`: the external one does)
env kill -s TERM -- -"$worker" -"$head" 2>/dev/null
sleep 3
env kill -s KILL -- -"$worker" -"$head" 2>/dev/null
true
""")
    runner = subprocess.Popen(["unshare", "--net", "sh", str(script)], cwd=Path(__file__).resolve().parents[2],
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runner.wait(timeout=300)
    finally:
        if runner.poll() is None:  # the whole namespace's process group: only what this test started
            os.killpg(runner.pid, signal.SIGKILL)
            runner.wait()
        survivors = _kill_groups(tmp_path / "groups")
        shutil.rmtree(session, ignore_errors=True)
    assert not survivors, f"Ray process groups left running: {survivors}"
    data = json.loads((tmp_path / "verify.json").read_text())
    checks = {c["id"]: c for c in data["hosts"][0]["checks"]}
    logs = (tmp_path / "head.log").read_text()[-2000:] + (tmp_path / "worker.log").read_text()[-2000:]
    assert checks["cluster.nodes"]["status"] == "pass", (checks, logs)
    assert checks["cluster.nodes"]["observed"] == "2 node(s) joined"
    assert checks["cluster.gpus"]["status"] == "pass"
    assert checks["cluster.gpus"]["observed"] == "4 GPU(s) in the cluster"


def _live_members(group: int) -> list[int]:
    """Processes of a process group that are still running (zombies awaiting their reaper
    do not count: killpg would still "succeed" on them)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def _kill_groups(listing: Path) -> list[int]:
    """Kill what is left running of the groups the script started; return those groups.
    A process killed a moment ago may still be unmapping Ray's object store: give each
    group a few seconds to finish dying before calling it a survivor."""
    import time

    left = []
    for text in (listing.read_text().split() if listing.exists() else []):
        group = int(text)
        deadline = time.monotonic() + 10
        while _live_members(group) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _live_members(group):
            left.append(group)
            os.killpg(group, signal.SIGKILL)
    return left
