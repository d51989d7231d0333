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
from provisioner.profile.loader import load_profile
from provisioner.render.pipeline import build
from tests.conftest import make_profile
from tests.install.test_flow import cli

KEY = "etc/provision/llm-server/api-key"
UNIT = "/etc/systemd/system/llm-server-api-key.service"


def _generating(tmp_path: Path) -> Path:
    return make_profile(tmp_path, {"secrets": {"api_key": {"generate": True}}})


def _everything_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink())


def _unit_lines(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def first_boot(tree: Path) -> subprocess.CompletedProcess[str]:
    """What systemd does at a machine's first start, from the oneshot's own lines: skip it when
    ConditionFileNotEmpty=! finds a non-empty key file, else run its ExecStart under its UMask=,
    the paths taken inside ``tree``."""
    unit = _unit_lines(tree / UNIT.lstrip("/"))
    [condition] = unit["ConditionFileNotEmpty"]
    assert condition == "!/" + KEY and unit["Type"] == ["oneshot"] and unit["UMask"] == ["0077"]
    if (tree / KEY).is_file() and (tree / KEY).stat().st_size > 0:
        return subprocess.CompletedProcess([], 0, "", "skipped: the key is there")
    [exec_start] = unit["ExecStart"]
    script, path = shlex.split(exec_start)
    return subprocess.run(["sh", "-c", 'umask 0077; exec "$@"', "sh", str(tree / script.lstrip("/")),
                           str(tree / path.lstrip("/"))], capture_output=True, text=True, check=False)


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
    server = _unit_lines(image / "etc/systemd/system/llm-server.service")
    assert "llm-server-api-key.service" in server["Requires"] and "llm-server-api-key.service" in server["After"]
    assert server["LoadCredential"] == ["api-key:/etc/provision/llm-server/api-key"]
    assert _unit_lines(image / UNIT.lstrip("/"))["Before"] == ["llm-server.service"]

    keys = []
    for clone in ("clone-a", "clone-b"):
        shutil.copytree(image, tmp_path / clone, symlinks=True)
        booted = first_boot(tmp_path / clone)
        assert booted.returncode == 0, booted.stderr
        key_file = tmp_path / clone / KEY
        keys.append(key_file.read_text())
        assert re.fullmatch(r"[0-9a-f]{64}", keys[-1]) and key_file.stat().st_mode & 0o777 == 0o600
        assert (key_file.stat().st_uid, key_file.stat().st_gid) == (0, 0) or os.geteuid() != 0
        assert first_boot(tmp_path / clone).stdout == "" and key_file.read_text() == keys[-1]  # skipped
    assert keys[0] != keys[1], "two machines made from one image have two keys"

    again = cli("apply", str(_generating(tmp_path)), "--root", str(image), "--yes", "--json")
    assert again.returncode == 0 and not (image / KEY).exists()
    assert json.loads(again.stdout)["hosts"][0]["generation"] is None  # nothing ran: the key stays pending


def test_an_image_that_holds_a_key_is_warned_about(tmp_path: Path) -> None:
    image = tmp_path / "image"
    (image / KEY).parent.mkdir(parents=True)
    (image / KEY).write_text("0" * 64)
    (image / KEY).chmod(0o600)
    planned = cli("plan", str(_generating(tmp_path)), "--root", str(image))
    assert "the image holds an API key in /etc/provision/llm-server/api-key: every machine made from it " \
        "would share it" in planned.stderr


def _boot_script(tmp_path: Path) -> Path:
    rendered = tmp_path / "rendered"
    done = cli("render", str(_generating(tmp_path)), "--out", str(rendered))
    assert done.returncode == 0, done.stderr
    return rendered / "opt/provision/bin/llm-server-api-key.sh"


def test_a_key_already_there_is_kept_by_the_first_boot_script(tmp_path: Path) -> None:
    key = tmp_path / "etc/api-key"
    key.parent.mkdir(parents=True)
    key.write_text("the-admins-own-key")
    key.chmod(0o644)
    done = subprocess.run([str(_boot_script(tmp_path)), str(key)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert key.read_text() == "the-admins-own-key"
    assert key.stat().st_mode & 0o777 == 0o600, "the key the admin left readable is made 0600"
    assert [p.name for p in key.parent.iterdir()] == ["api-key"], "no temp file is left"


def test_an_empty_key_file_is_replaced_by_a_key(tmp_path: Path) -> None:
    """An empty key would reach the engine as an empty API key: vLLM and llama-server then
    serve without auth. It is no key: the first boot runs (its condition wants a non-empty
    file) and makes one in its place."""
    image = tmp_path / "image"
    assert cli("apply", str(_generating(tmp_path)), "--root", str(image), "--yes").returncode == 0
    (image / KEY).parent.mkdir(parents=True, exist_ok=True)
    (image / KEY).write_text("")
    booted = first_boot(image)
    assert booted.returncode == 0 and "skipped" not in booted.stderr, booted.stderr
    assert len((image / KEY).read_text()) == 64 and (image / KEY).stat().st_mode & 0o777 == 0o600


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
    # the oneshot is there too, and its condition skips it on this machine: the key exists
    assert (tmp_path / "work" / UNIT.lstrip("/")).is_file()
    assert first_boot(tmp_path / "work").stderr == "skipped: the key is there"


def test_next_steps_say_which_host_holds_the_key(tmp_path: Path) -> None:
    built = build(_generating(tmp_path), network=False)
    plan = Plan(changes=(), handlers=(), handler_commands={}, restart_pending=(), reboot_required=False)
    [over_ssh] = next_steps(built.spec, plan, "", "gpu-box-1")
    assert over_ssh == ("the API key is in /etc/provision/llm-server/api-key on gpu-box-1 (0600, never printed): "
                        "read it there with `sudo cat /etc/provision/llm-server/api-key`")
    [here] = next_steps(built.spec, plan, "")
    assert here == ("the API key is in /etc/provision/llm-server/api-key (0600, never printed): "
                    "read it with `sudo cat /etc/provision/llm-server/api-key`")
    [image, boot] = next_steps(built.spec, plan, "/srv/image")
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
