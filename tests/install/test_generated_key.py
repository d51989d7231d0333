"""secrets.api_key.generate: a random key made on the host once, 0600, never overwritten
and never printed; the unit loads it as a credential; apply ends with the next steps;
apply --verify fails the apply's exit code when the endpoint is wrong."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from provisioner.profile.loader import load_profile
from tests.conftest import make_profile
from tests.install.test_flow import cli

KEY = "etc/provision/llm-server/api-key"


def _generating(tmp_path: Path) -> Path:
    return make_profile(tmp_path, {"secrets": {"api_key": {"generate": True}}})


def _everything_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and not p.is_symlink())


def test_the_key_is_made_once_0600_and_never_shown(tmp_path: Path) -> None:
    root = tmp_path / "image"
    profile = _generating(tmp_path)
    applied = cli("apply", str(profile), "--root", str(root), "--yes")
    assert applied.returncode == 0, applied.stderr
    key_file = root / KEY
    key = key_file.read_text()
    assert len(key) == 64 and int(key, 16) >= 0  # 32 random bytes, hex
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert key not in applied.stdout + applied.stderr
    assert key.encode() not in _everything_under(root / "var/lib/provision")  # no manifest or backup holds it
    unit = (root / "etc/systemd/system/llm-server.service").read_text()
    assert "LoadCredential=api-key:/etc/provision/llm-server/api-key" in unit
    assert 'cat "${CREDENTIALS_DIRECTORY:?no credentials directory}/api-key"' in \
        (root / "opt/provision/bin/llm-server-run.sh").read_text()
    assert ("the API key is in /etc/provision/llm-server/api-key (0600, never printed): "
            "read it with `sudo cat /etc/provision/llm-server/api-key`") in applied.stderr

    again = cli("apply", str(profile), "--root", str(root), "--yes", "--json")
    assert again.returncode == 0, again.stderr
    assert key_file.read_text() == key and key not in again.stdout
    [host] = json.loads(again.stdout)["hosts"]
    assert host["installs"] == [] and host["next_steps"][-1].startswith("check it: provision verify ")


def test_a_key_already_there_is_kept(tmp_path: Path) -> None:
    root = tmp_path / "image"
    (root / KEY).parent.mkdir(parents=True)
    (root / KEY).write_text("the-admins-own-key")
    applied = cli("apply", str(_generating(tmp_path)), "--root", str(root), "--yes", "--json")
    assert applied.returncode == 0, applied.stderr
    assert (root / KEY).read_text() == "the-admins-own-key"
    assert (root / KEY).stat().st_mode & 0o777 == 0o600, "the key the admin left readable is made 0600"
    again = cli("apply", str(_generating(tmp_path)), "--root", str(root), "--yes", "--json")
    assert "secret:api-key" not in [i["name"] for i in json.loads(again.stdout)["hosts"][0]["installs"]]


def test_an_empty_key_file_is_replaced_by_a_key(tmp_path: Path) -> None:
    """An empty key would reach the engine as an empty API key: vLLM and llama-server then
    serve without auth. It is no key, so apply generates one in its place."""
    root = tmp_path / "image"
    (root / KEY).parent.mkdir(parents=True)
    (root / KEY).write_text("")
    applied = cli("apply", str(_generating(tmp_path)), "--root", str(root), "--yes")
    assert applied.returncode == 0, applied.stderr
    assert len((root / KEY).read_text()) == 64 and (root / KEY).stat().st_mode & 0o777 == 0o600


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
