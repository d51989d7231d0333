"""`provision export ansible`: what it writes, without a host (the SSH round trip is
in test_export_ansible.py). The validators run for real on good and bad files."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.converge.plan import HANDLER_ORDER
from provisioner.errors import RenderError
from provisioner.export import export_path, handler_chain, refuse_secrets
from provisioner.export.ansible import ExportUnit, export_tree, validate_command
from provisioner.render.pipeline import build
from provisioner.render.resources import File, Rendered
from tests.conftest import make_profile

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _AnsibleLike(yaml.SafeLoader):
    """Reads `!unsafe` as a plain string, as Ansible does (without templating it)."""


_AnsibleLike.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))  # type: ignore[arg-type]


def load(path: Path) -> Any:
    """A SafeLoader that also knows `!unsafe`: no arbitrary objects."""
    return yaml.load(path.read_text(), Loader=_AnsibleLike)  # noqa: S506


def _tasks(out: Path, role: str) -> list[dict[str, Any]]:
    loaded = load(out / "roles" / role / "tasks" / "main.yml")
    assert isinstance(loaded, list)
    return loaded


def test_export_is_the_rendered_files_byte_for_byte_and_deterministic(tmp_path: Path) -> None:
    first = provision("export", "ansible", str(QUICKSTART), "--out", str(tmp_path / "a"), "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["command"] == "export" and data["ok"] and data["error"] is None
    assert data["roles"] == [{"role": "provision_quickstart", "profile": "quickstart", "hosts": ["all"],
                              "files": 12}]
    second = provision("export", "ansible", str(QUICKSTART), "--out", str(tmp_path / "b"))
    assert second.returncode == 0, second.stderr
    assert tree(tmp_path / "a") == tree(tmp_path / "b")  # same input, same bytes

    rendered = provision("render", str(QUICKSTART), "--out", str(tmp_path / "r"))
    assert rendered.returncode == 0, rendered.stderr
    role = tmp_path / "a" / "roles" / "provision_quickstart"
    assert tree(role / "files") == tree(tmp_path / "r")
    copies = {t["ansible.builtin.copy"]["dest"]: t["ansible.builtin.copy"]
              for t in _tasks(tmp_path / "a", "provision_quickstart") if "ansible.builtin.copy" in t}
    for path, content in tree(tmp_path / "r").items():
        copy = copies["{{ provision_root_prefix }}/" + path]
        assert (role / "files" / copy["src"]).read_bytes() == content
        assert int(copy["mode"], 8) == (tmp_path / "r" / path).stat().st_mode & 0o7777
        assert (copy["owner"], copy["group"]) == ("root", "root")

    again = provision("export", "ansible", str(QUICKSTART), "--out", str(tmp_path / "a"))
    assert again.returncode == 1
    assert "is not empty" in again.stderr and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_handlers_are_defined_in_provisions_order(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {
        "files": [{"template": "a.j2", "dest": "/etc/a.conf", "notify": ["zz-last", "aa-first"]}],
        "handlers": {"zz-last": {"command": "true"}, "aa-first": {"command": "true"}},
        "verify.monitor": True})
    (tmp_path / "a.j2").write_text("a\n")
    out = tmp_path / "out"
    result = provision("export", "ansible", str(profile), "--out", str(out))
    assert result.returncode == 0, result.stderr
    loaded = load(out / "roles/provision_quickstart/handlers/main.yml")
    topics: list[str] = []
    for handler in loaded:
        if handler["listen"] not in topics:
            topics.append(handler["listen"])
    builtin = [h for h in HANDLER_ORDER if h in topics]
    # Ansible runs notified handlers in definition order: provision's, then the profile's in its order
    assert topics == [*builtin, "zz-last", "aa-first"]
    assert builtin == ["sysusers", "daemon-reload", "sysctl", "tmpfiles", "initramfs", "gpu-settings", "enable-server",
                       "enable-metrics", "restart-server"]


def _validate(command: str, path: Path, env: dict[str, str] | None = None) -> int:
    """Run a copy validate: command the way the copy module does (%s, no shell)."""
    return subprocess.run(shlex.split(command % str(path)), capture_output=True, check=False,
                          env={**os.environ, **(env or {})}).returncode


def test_validators_accept_the_rendered_files_and_refuse_broken_ones(tmp_path: Path) -> None:
    rendered = build(QUICKSTART).rendered
    checked = set()
    for item in rendered.files:
        command = validate_command(item)
        if not command:
            continue
        good = tmp_path / f"good{Path(item.path).suffix}"
        good.write_bytes(item.content)
        assert _validate(command, good, {"PROVISION_ROOT": str(tmp_path)}) == 0, item.path
        checked.add(item.validate)
        bad = tmp_path / f"bad{Path(item.path).suffix}"
        broken = {"sh": b"if then fi\n", "env": b"not a setting\n", "sysctl": b"vm.no_such_key_here = 1\n",
                  "systemd-unit": b"[Service]\nNoSuchKey=1\nExecStart=/bin/true\n"}[item.validate]
        bad.write_bytes(broken)
        live = {"PROVISION_ROOT": ""}
        assert _validate(command, bad, live) != 0, item.path
    assert checked == {"sh", "env", "sysctl", "systemd-unit"}
    # like apply --root: sysctl keys are only checked against /proc/sys on a live system
    sysctl = next(f for f in rendered.files if f.validate == "sysctl")
    (tmp_path / "keys").write_bytes(b"vm.no_such_key_here = 1\n")
    assert _validate(validate_command(sysctl), tmp_path / "keys", {"PROVISION_ROOT": "/srv/tree"}) == 0


def test_a_drop_in_has_no_standalone_unit_check() -> None:
    drop_in = File("/etc/systemd/system/x.service.d/10-a.conf", b"[Service]\n", validate="systemd-unit")
    assert validate_command(drop_in) == ""


def test_secret_files_and_templated_paths_are_refused() -> None:
    secret = Rendered(files=(File("/etc/provision/x/token", b"hunter2\n", mode=0o600, secret=True),))
    with pytest.raises(RenderError, match="would be written in clear"):
        refuse_secrets(secret, "Ansible")
    with pytest.raises(RenderError, match="in clear"):
        export_tree([ExportUnit("x", "x", secret)])
    with pytest.raises(RenderError, match="cannot be exported"):
        export_path("/etc/{{ lookup('pipe', 'id') }}", "Ansible")
    assert export_path("/etc/systemd/system/a@b.service", "Ansible") == "/etc/systemd/system/a@b.service"


def test_modprobe_changes_owe_initramfs_like_plan(tmp_path: Path) -> None:
    rendered = build(QUICKSTART).rendered
    assert "initramfs" in handler_chain(rendered)
    cpu_only = make_profile(tmp_path, {"hardware.gpus": []})
    assert "initramfs" not in handler_chain(build(cpu_only).rendered)


def test_inventory_hosts_with_the_same_result_share_a_role(tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    lines = ["hosts:",
             f"  a: {{address: 10.0.0.1, user: admin, become: true, profile: {profile}}}",
             f"  b: {{address: 10.0.0.2, port: 2200, profile: {profile}, root: /srv/image}}",
             f"  c: {{address: 10.0.0.3, profile: {profile}, overrides: {{runtime: {{port: 8081}}}}}}",
             "groups:", "  gpus: {hosts: [a, c]}"]
    (tmp_path / "inv.yaml").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = provision("export", "ansible", "-i", str(tmp_path / "inv.yaml"), "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    roles = json.loads(result.stdout)["roles"]
    assert [r["hosts"] for r in roles] == [["a", "b"], ["c"]]
    assert roles[0]["role"] != roles[1]["role"]
    inventory = load(out / "inventory.yml")["all"]
    assert inventory["hosts"]["a"] == {"ansible_host": "10.0.0.1", "ansible_user": "admin", "ansible_become": True}
    assert inventory["hosts"]["b"] == {"ansible_host": "10.0.0.2", "ansible_port": 2200,
                                       "provision_root_prefix": "/srv/image"}
    assert set(inventory["children"][roles[1]["role"]]["hosts"]) == {"c"}
    assert set(inventory["children"]["gpus"]["hosts"]) == {"a", "c"}
    run = "files/opt/provision/bin/llm-server-run.sh"
    assert b"8081" in (out / "roles" / roles[1]["role"] / run).read_bytes()
    assert b"8081" not in (out / "roles" / roles[0]["role"] / run).read_bytes()
    plays = yaml.safe_load((out / "site.yml").read_text())
    assert [p["hosts"] for p in plays] == [r["role"] for r in roles]


def test_a_template_reading_host_facts_is_refused(tmp_path: Path) -> None:
    """apply renders again with each host's facts; an export cannot, so it says so."""
    profile = make_profile(tmp_path, {"files": [{"template": "t.j2", "dest": "/etc/t.conf"}]},
                           files={"t.j2": "threads={{ cpus }}\n"})
    for command in (["ansible", str(profile), "--out", str(tmp_path / "a")],
                    ["cloud-init", str(profile), "--out", str(tmp_path / "u.yaml")]):
        result = provision("export", *command)
        assert result.returncode == 1
        assert result.stderr.startswith("error: /etc/t.conf (template t.j2) reads the host's facts")
        assert "(hint: write the value into the profile" in result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "u.yaml").exists()


@pytest.mark.parametrize("example", ["examples/install/vllm-venv.yaml",
                                     "examples/cluster/two-node-qwen3-235b-fp8-vllm.yaml"])
def test_what_an_export_cannot_carry_is_refused_not_dropped(example: str, tmp_path: Path) -> None:
    """install: items and a cluster's per-node files are not in an export yet: one line
    saying so, exit 1, nothing written (an exported host must not silently lack them)."""
    assert (ROOT / example).exists()
    for command in (["ansible", example, "--out", str(tmp_path / "a")],
                    ["cloud-init", example, "--out", str(tmp_path / "u.yaml")]):
        result = provision("export", *command)
        assert result.returncode == 1, result.stdout + result.stderr
        assert len(result.stderr.splitlines()) == 1, result.stderr
        # a model from a branch needs its lock first, as plan does; with it, the download is
        # an install item the export refuses like the others
        unlocked = "model.source.hf: the model source has no lock" in result.stderr
        assert unlocked or ("(install:), which the" in result.stderr) or ("is a cluster of 2 nodes" in result.stderr)
        assert "(hint: converge" in result.stderr or (unlocked and "(hint: run `provision lock" in result.stderr)
    assert not (tmp_path / "a").exists() and not (tmp_path / "u.yaml").exists()
