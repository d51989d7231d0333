"""A server started as its systemd unit would start it, from the unit file in a --root
tree: its User=, Group=, EnvironmentFile=, Environment=, LoadCredential=,
WorkingDirectory= and ExecStart=, in a mount namespace of its own where the tree's
/opt/provision and /srv are mounted at their places and /var/lib, /var/cache and /run
are fresh (StateDirectory=, CacheDirectory=, the credentials directory). No sandboxing,
DeviceAllow or supplementary groups: what a CPU server does not need.

Needs root, unshare(1) and setpriv(1). Used by tests/test_bare_box.py and by the docs'
recorder (scripts/doc_setups.py), which show the same flow."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path

from tests.verify.test_endpoint import wait_until_healthy


def unit_lines(path: Path) -> dict[str, list[str]]:
    """KEY -> its values, in order, of a unit file's assignments."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def environment_of(unit: dict[str, list[str]], root: Path, credentials: str) -> dict[str, str]:
    """What systemd gives ExecStart: EnvironmentFile= (a leading "-": optional), Environment=,
    and CREDENTIALS_DIRECTORY for LoadCredential= (systemd.exec(5))."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "CREDENTIALS_DIRECTORY": credentials}
    for name in unit.get("EnvironmentFile", []):
        path = root / name.lstrip("-").lstrip("/")
        if not path.exists() and name.startswith("-"):
            continue
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = shlex.split(value)[0] if value else ""
    for assignment in unit.get("Environment", []):
        key, value = assignment.split("=", 1)
        env[key] = value
    return env


SANDBOX = r"""set -eu
root=$1; uid=$2; gid=$3; credential=$4; shift 4
mount --make-rprivate /
for dir in /opt /srv /var/lib /var/cache /run; do
    mount -t tmpfs tmpfs "$dir"
done
mkdir -p /opt/provision /srv "/var/lib/$SERVICE" "/var/cache/$SERVICE" "$CREDENTIALS_DIRECTORY"
mount --bind "$root/opt/provision" /opt/provision
mount --bind "$root/srv" /srv
chown "$uid:$gid" "/var/lib/$SERVICE" "/var/cache/$SERVICE"  # StateDirectory=, CacheDirectory=
# LoadCredential=: systemd copies the file into the unit's credentials directory, readable by its user
cp "$credential" "$CREDENTIALS_DIRECTORY/api-key"
chown "$uid" "$CREDENTIALS_DIRECTORY/api-key"
chmod 0400 "$CREDENTIALS_DIRECTORY/api-key"
cd "/var/lib/$SERVICE"  # WorkingDirectory=
exec setpriv --reuid "$uid" --regid "$gid" --clear-groups --no-new-privs env -i "$@"
"""


def start_as_the_unit(root: Path, service: str, work: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """The unit ``service`` of the tree ``root`` started, healthy on ``port``; its sandbox
    script and its log (returned) in ``work``."""
    unit = unit_lines(root / f"etc/systemd/system/{service}.service")
    [user], [group] = unit["User"], unit["Group"]
    passwd = {f.split(":")[0]: f.split(":") for f in (root / "etc/passwd").read_text().splitlines()}
    groups = {f.split(":")[0]: f.split(":") for f in (root / "etc/group").read_text().splitlines()}
    uid, gid = passwd[user][2], groups[group][2]
    [credential] = unit["LoadCredential"]
    name, source = credential.split(":", 1)
    assert name == "api-key"
    credentials = f"/run/credentials/{service}.service"  # where systemd puts them (systemd.exec(5))
    env = environment_of(unit, root, credentials)
    [exec_start] = unit["ExecStart"]
    assert unit["WorkingDirectory"] == [f"/var/lib/{service}"]
    sandbox = work / "sandbox.sh"
    sandbox.write_text(SANDBOX)
    log = work / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["unshare", "-m", "sh", str(sandbox), str(root), uid, gid, str(root / source.lstrip("/")),
             *[f"{k}={v}" for k, v in env.items()], *shlex.split(exec_start)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "SERVICE": service, "CREDENTIALS_DIRECTORY": credentials})
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}", log, timeout_s=120)
    except BaseException:
        stop(process)
        raise
    return process, log


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
