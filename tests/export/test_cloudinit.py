"""`provision export cloud-init`: schema-valid user-data (cloud-init's own JSON schema,
vendored from its Debian package, see tests/cases/cloudinit/SOURCE.md), whose
write_files give the same tree as `provision render`, and whose runcmd runs the
handlers provision's own first apply on a fresh machine would run, in order."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from provisioner.converge.plan import make_plan
from provisioner.export.cloudinit import apply_write_files, first_boot_handlers, user_data
from provisioner.facts.gather import Facts, Gathered
from provisioner.profile.loader import load_profile
from provisioner.render.pipeline import build
from tests.conftest import make_profile

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
SCHEMA = json.loads((ROOT / "tests/cases/cloudinit/schema-cloud-config-v1.json").read_text())
# One per engine and tuning owner: llama.cpp (GPU), vLLM, Ollama, CPU only, tuned.
PROFILES = ["rtx-4090-qwen3-30b-a3b-llamacpp", "rtx-pro-6000-gpt-oss-120b-vllm", "rtx-4090-qwen3-30b-ollama",
            "cpu-only-256g-qwen3-235b-llamacpp"]


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT)


def schema_errors(text: str) -> list[str]:
    validator = jsonschema.Draft4Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(yaml.safe_load(text))]


def tree(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mode & 0o7777)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("profile", PROFILES)
def test_user_data_is_schema_valid_and_round_trips_to_the_rendered_tree(profile: str, tmp_path: Path) -> None:
    # cloud-init carries files and handlers, not builds or downloads: the library profile
    # without its install section (an export refuses one, test_export.py)
    bare = tmp_path / "bare.yaml"
    text = f"extends: {profile}\nmetadata: {{name: bare}}\ninstall: {{engine: null, model: false}}\n"
    base = load_profile(ROOT / "profiles" / f"{profile}.yaml").profile
    if base.runtime.engine == "llama.cpp" and base.model.source.hf is not None and base.model.source.hf.file is None:
        # llama.cpp loads one GGUF file, which hf.file or a lock names: a name of the test's own
        # (nothing is downloaded), with the quant in it as the quant's files have
        text += f"model: {{source: {{hf: {{file: test-{base.model.quant}.gguf}}}}}}\n"
    bare.write_text(text)
    profile = str(bare)
    out = tmp_path / "user-data.yaml"
    result = provision("export", "cloud-init", profile, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ok"]
    text = out.read_text()
    assert text.startswith("#cloud-config\n")
    assert schema_errors(text) == []

    rendered = provision("render", profile, "--out", str(tmp_path / "rendered"))
    assert rendered.returncode == 0, rendered.stderr
    apply_write_files(text, tmp_path / "booted")
    assert tree(tmp_path / "booted") == tree(tmp_path / "rendered")  # bytes and modes

    data = yaml.safe_load(text)
    assert all(entry["encoding"] == "b64" and entry["owner"] == "root:root" and "defer" not in entry
               for entry in data["write_files"])
    directories = build(Path(profile)).rendered.directories
    assert [cmd[-1] for cmd in data["runcmd"] if cmd[:2] == ["install", "-d"]] == [d.path for d in directories]
    for directory in directories:  # the folders `render --out` makes, with their modes
        made = tmp_path / "rendered" / directory.path.lstrip("/")
        assert made.is_dir() and made.stat().st_mode & 0o7777 == directory.mode

    again = tmp_path / "again.yaml"
    assert provision("export", "cloud-init", profile, "--out", str(again)).returncode == 0
    assert again.read_bytes() == out.read_bytes()  # same input, same bytes


def test_the_schema_check_catches_a_broken_user_data() -> None:
    """The validator is not a rubber stamp: keys and types cloud-init refuses are reported."""
    text = user_data(build(QUICKSTART).rendered, profile_name="quickstart", service="llm-server")
    data = yaml.safe_load(text)
    data["write_files"][0]["mode"] = "0644"  # cloud-init calls it permissions
    data["write_files"][1]["defer"] = "yes"
    data["runcmd"].append({"not": "a command"})
    errors = schema_errors(yaml.safe_dump(data))
    assert any("write_files.0" in e and "'mode' was unexpected" in e for e in errors), errors
    assert any("write_files.1.defer" in e for e in errors), errors
    assert any(e.startswith("runcmd.") for e in errors), errors


def test_runcmd_runs_what_provisions_first_apply_runs_in_order() -> None:
    built = build(QUICKSTART)
    fresh = Gathered(Facts({}), {}, 0, None, ())
    plan = make_plan(built.rendered, fresh, root_mode=False, server_enabled=False)
    assert first_boot_handlers(built.rendered, "llm-server") == list(plan.handlers)
    assert list(plan.handlers) == ["sysusers", "daemon-reload", "sysctl", "tmpfiles", "initramfs",
                                   "gpu-settings", "enable-server"]
    data = yaml.safe_load(user_data(built.rendered, profile_name="quickstart", service="llm-server"))
    commands = [cmd[2] for cmd in data["runcmd"] if cmd[:2] == ["sh", "-c"]]
    assert commands == [plan.handler_commands[name] for name in plan.handlers]


def test_a_file_owned_by_another_user_is_deferred(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"files": [{"template": "t.j2", "dest": "/etc/llm/t.conf", "owner": "llm",
                                                 "group": "llm", "mode": "0600"}]}, files={"t.j2": "x\n"})
    data = yaml.safe_load(user_data(build(profile).rendered, profile_name="q", service="llm-server"))
    entry = next(e for e in data["write_files"] if e["path"] == "/etc/llm/t.conf")
    assert (entry["owner"], entry["permissions"], entry["defer"]) == ("llm:llm", "0600", True)


def test_an_existing_file_is_kept_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "user-data.yaml"
    out.write_text("mine\n")
    result = provision("export", "cloud-init", str(QUICKSTART), "--out", str(out))
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert out.read_text() == "mine\n"


@pytest.mark.skipif(shutil.which("cloud-init") is None, reason="cloud-init is not installed here (the Debian "
                    "package pulls in DHCP and disk tools); the vendored schema check above runs instead")
def test_cloud_init_schema_command_accepts_it(tmp_path: Path) -> None:
    out = tmp_path / "user-data.yaml"
    assert provision("export", "cloud-init", str(QUICKSTART), "--out", str(out)).returncode == 0
    checked = subprocess.run(["cloud-init", "schema", "--config-file", str(out)], capture_output=True, text=True,
                             check=False)
    assert checked.returncode == 0 and "Valid" in checked.stdout, checked.stdout + checked.stderr
