"""secrets.api_key.generate: a random key made on the machine itself once, 0600, never
overwritten and never printed: by a live apply, or, in an image (--root), by each machine at
its first boot (the oneshot llm-server-api-key.service), so clones never share a key; the
unit loads it as a credential; apply ends with the next steps; apply --verify fails the
apply's exit code when the endpoint is wrong."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from provisioner.converge.next_steps import next_steps
from provisioner.converge.plan import Plan
from provisioner.install.secret import GeneratedKey, secrets_owed
from provisioner.profile.loader import load_profile
from provisioner.render.pipeline import build
from tests.conftest import make_profile
from tests.install.test_flow import cli
from tests.support.unit_server import unit_lines

KEY = "etc/provision/llm-server/api-key"
UNIT = "/etc/systemd/system/llm-server-api-key.service"


def _generating(tmp_path: Path) -> Path:
    return make_profile(tmp_path, {"secrets": {"api_key": {"generate": True}}})


def _everything_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink())


def _in_tree(tree: Path, words: list[str]) -> list[str]:
    """The unit's absolute paths, taken inside ``tree`` (a leading ! kept)."""
    return [w[:w.index("/")] + str(tree / w[w.index("/"):].lstrip("/")) if "/" in w and w.lstrip("!").startswith("/")
            else w for w in words]


def first_boot(tree: Path) -> subprocess.CompletedProcess[str]:
    """What systemd does when the oneshot starts, from its own lines, the paths taken inside
    ``tree``: its Condition*=/Assert*= evaluated by systemd itself (`systemd-analyze condition`)
    and its ExecCondition= run, either of them skipping it as systemd would; then its ExecStart=
    under its UMask=."""
    unit = unit_lines(tree / UNIT.lstrip("/"))
    assert unit["Type"] == ["oneshot"] and unit["UMask"] == ["0077"]
    conditions = [f"{key}={_in_tree(tree, [value])[0]}" for key, values in unit.items()
                  if key.startswith(("Condition", "Assert")) for value in values]
    if conditions:
        evaluated = subprocess.run(["systemd-analyze", "condition", *conditions], capture_output=True, text=True,
                                   check=False)
        if evaluated.returncode != 0:
            return subprocess.CompletedProcess([], 0, "", "skipped: " + evaluated.stdout)
    for condition in unit.get("ExecCondition", []):
        if subprocess.run(_in_tree(tree, shlex.split(condition)), check=False).returncode != 0:
            return subprocess.CompletedProcess([], 0, "", f"skipped: {condition}")
    [exec_start] = unit["ExecStart"]
    return subprocess.run(["sh", "-c", 'umask 0077; exec "$@"', "sh", *_in_tree(tree, shlex.split(exec_start))],
                          capture_output=True, text=True, check=False)


def _probe_says(tree: Path) -> dict[str, str]:
    """plan's probe of the key item, run on ``tree``: its ``@install secret:api-key KEY VALUE`` lines."""
    key = GeneratedKey("/" + KEY, "llm-server-api-key.service")
    out = subprocess.run(["sh", "-c", key.probe(str(tree))], capture_output=True, text=True, check=True).stdout
    return {line.split()[2]: line.split()[3] for line in out.splitlines() if line.startswith("@install ")}


def test_an_image_holds_no_key_and_each_machine_makes_its_own_at_first_boot(tmp_path: Path) -> None:
    image = tmp_path / "image"
    applied = cli("apply", str(_generating(tmp_path)), "--root", str(image), "--yes", "--json")
    assert applied.returncode == 0, applied.stderr
    assert not (image / KEY).exists(), "a key in the image would be every clone's key"
    [host] = json.loads(applied.stdout)["hosts"]
    [key_item] = [i for i in host["installs"] if i["name"] == "secret:api-key"]
    assert key_item["pending"] and "made at first boot by llm-server-api-key.service" in key_item["summary"]
    assert host["next_steps"][0] == (
        "the image holds no API key: each machine booted from it makes its own into "
        "/etc/provision/llm-server/api-key (0600, never printed) at first boot (llm-server-api-key.service); "
        "read it there with `sudo cat /etc/provision/llm-server/api-key`")
    server = unit_lines(image / "etc/systemd/system/llm-server.service")
    assert "llm-server-api-key.service" in server["Requires"] and "llm-server-api-key.service" in server["After"]
    assert server["LoadCredential"] == ["api-key:/etc/provision/llm-server/api-key"]
    assert unit_lines(image / UNIT.lstrip("/"))["Before"] == ["llm-server.service"]

    keys = []
    for clone in ("clone-a", "clone-b"):
        shutil.copytree(image, tmp_path / clone, symlinks=True)
        booted = first_boot(tmp_path / clone)
        assert booted.returncode == 0, booted.stderr
        key_file = tmp_path / clone / KEY
        keys.append(key_file.read_text())
        assert re.fullmatch(r"[0-9a-f]{64}", keys[-1]) and key_file.stat().st_mode & 0o777 == 0o600
        assert (key_file.stat().st_uid, key_file.stat().st_gid) == (0, 0) or os.geteuid() != 0
        again = first_boot(tmp_path / clone)  # every boot runs it: it keeps the key it made
        assert again.returncode == 0 and not again.stderr and key_file.read_text() == keys[-1]
        assert _probe_says(tmp_path / clone)["exists"] == "yes" or os.geteuid() != 0
    assert keys[0] != keys[1], "two machines made from one image have two keys"

    again = cli("apply", str(_generating(tmp_path)), "--root", str(image), "--yes", "--json")
    assert again.returncode == 0 and not (image / KEY).exists()
    assert json.loads(again.stdout)["hosts"][0]["generation"] is None  # nothing ran: the key stays pending


# what an image tree may hold where the key goes: empty, a newline, one byte (no key: the engines
# would take it as "no auth"), a full key left world-readable, a full key as the probe wants it
KEY_FILES = [("", 0o600), ("\n", 0o600), ("x", 0o644), ("the-admins-own-key", 0o644), ("0" * 64, 0o600)]


@pytest.mark.parametrize(("content", "mode"), KEY_FILES)
def test_an_image_that_holds_any_key_file_is_warned_about(tmp_path: Path, content: str, mode: int) -> None:
    image = tmp_path / "image"
    (image / KEY).parent.mkdir(parents=True)
    (image / KEY).write_text(content)
    (image / KEY).chmod(mode)
    planned = cli("plan", str(_generating(tmp_path)), "--root", str(image))
    assert "the image holds an API key in /etc/provision/llm-server/api-key: every machine made from it " \
        "would share it" in planned.stderr
    assert "one key per machine" not in planned.stdout + planned.stderr


@pytest.mark.parametrize(("content", "mode"), KEY_FILES)
def test_the_boot_leaves_a_key_as_the_probe_wants_it_whatever_the_file_held(
        tmp_path: Path, content: str, mode: int) -> None:
    """The oneshot runs at every boot (a condition on the file would skip a one-byte file or a
    world-readable key): no key is replaced by a new one; a full key (16 bytes or more) is kept
    and made 0600 and root's. Then plan's own probe finds the key."""
    image = tmp_path / "image"
    assert cli("apply", str(_generating(tmp_path)), "--root", str(image), "--yes").returncode == 0
    (image / KEY).parent.mkdir(parents=True, exist_ok=True)
    (image / KEY).write_text(content)
    (image / KEY).chmod(mode)
    booted = first_boot(image)
    assert booted.returncode == 0 and "skipped" not in booted.stderr, booted.stderr
    made = (image / KEY).read_text()
    assert made == content if len(content) >= 16 else re.fullmatch(r"[0-9a-f]{64}", made)
    assert (image / KEY).stat().st_mode & 0o777 == 0o600
    assert [p.name for p in (image / KEY).parent.iterdir() if p.name.startswith("api-key")] == ["api-key"], \
        "no temp file is left"
    if os.geteuid() == 0:  # the probe wants root's: only root can make the file so
        assert _probe_says(image)["exists"] == "yes"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1): a live apply in a private mount namespace")
def test_a_live_apply_makes_the_key_itself_and_says_where(tmp_path: Path) -> None:
    from tests.converge.test_live import live

    applied = live(tmp_path, "apply", str(_generating(tmp_path)), "--yes")
    assert applied.returncode == 0, applied.stderr
    key_file = tmp_path / "work" / KEY  # the namespace's /etc was this copy
    key = key_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", key) and key_file.stat().st_mode & 0o777 == 0o600
    assert key not in applied.stdout + applied.stderr
    assert ("the API key is in /etc/provision/llm-server/api-key (0600, never printed): "
            "read it with `sudo cat /etc/provision/llm-server/api-key`") in applied.stderr
    assert not Path("/" + KEY).exists(), "the real /etc is untouched"
    # the oneshot is there too (its script, in the namespace's /opt, is gone with it): at the next
    # boot it keeps that key, as the boot test shows for a full 0600 key
    assert (tmp_path / "work" / UNIT.lstrip("/")).is_file()


def test_next_steps_say_which_host_holds_the_key(tmp_path: Path) -> None:
    built = build(_generating(tmp_path), network=False)
    plan = Plan(changes=(), handlers=(), handler_commands={}, restart_pending=(), reboot_required=False)
    [over_ssh] = next_steps(secrets_owed(built.spec.profile), plan, "", "gpu-box-1")
    assert over_ssh == ("the API key is in /etc/provision/llm-server/api-key on gpu-box-1 (0600, never printed): "
                        "read it there with `sudo cat /etc/provision/llm-server/api-key`")
    [here] = next_steps(secrets_owed(built.spec.profile), plan, "")
    assert here == ("the API key is in /etc/provision/llm-server/api-key (0600, never printed): "
                    "read it with `sudo cat /etc/provision/llm-server/api-key`")
    [image, boot] = next_steps(secrets_owed(built.spec.profile), plan, "/srv/image")
    assert image.startswith("the image holds no API key") and boot.startswith("boot the image")


def test_from_env_still_works_and_the_next_steps_say_where_to_write_it(tmp_path: Path) -> None:
    root = tmp_path / "image"
    applied = cli("apply", str(make_profile(tmp_path)), "--root", str(root), "--yes")
    assert applied.returncode == 0, applied.stderr
    assert not (root / KEY).exists()
    assert "write LLM_API_KEY=... (API key) into /etc/provision/llm-server/secrets.env (mode 0600, root)" \
        in applied.stderr
    assert f"check it: provision verify {tmp_path / 'p.yaml'} --root {root}" in applied.stderr


def test_an_extending_profile_switches_the_secret_kind(tmp_path: Path) -> None:
    base = make_profile(tmp_path, name="base.yaml")  # api_key: {from_env: LLM_API_KEY}
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: ./{base.name}\nmetadata: {{name: child}}\nsecrets: {{api_key: {{generate: true}}}}\n")
    ref = load_profile(child).profile.secrets.api_key
    assert ref is not None and ref.generate and ref.from_env is None


def test_a_token_cannot_be_generated(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"secrets.hf_token": {"generate": True}})
    checked = cli("validate", str(profile))
    assert checked.returncode == 1
    assert "a Hugging Face token is issued by the hub, it cannot be generated" in checked.stderr


def test_apply_verify_fails_the_exit_code_when_the_endpoint_is_wrong(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = tmp_path / "image"
    applied = cli("apply", str(make_profile(tmp_path)), "--root", str(root), "--yes", "--verify",
                  "--endpoint", f"http://127.0.0.1:{port}", "--json")
    assert applied.returncode == 2, applied.stdout + applied.stderr
    verified = json.loads(applied.stdout)["verify"]
    failed = [c["id"] for h in verified["hosts"] for c in h["checks"] if c["status"] == "fail"]
    assert any(name.startswith("endpoint") for name in failed), failed
