"""install.engine.method container: the Podman Quadlet file replacing server.service.

Podman here is Debian 12's 4.3.1, older than Quadlet (podman 4.4), so its
generator cannot run: the [Container] keys are checked against podman's own
key table (tests/cases/install/quadlet-container-keys.yaml, with its source),
the sections systemd reads by systemd-analyze, and apply's generator dry-run
step with a stand-in generator.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provisioner.render.pipeline import build
from tests.conftest import ROOT, make_profile

IMAGE = "ghcr.io/ggml-org/llama.cpp@sha256:" + "ab" * 32
KEYS = yaml.safe_load((ROOT / "tests/cases/install/quadlet-container-keys.yaml").read_text())
CONTAINER = "/etc/containers/systemd/llm-server.container"


def _profile(tmp_path: Path, engine: dict[str, Any] | None = None) -> Path:
    return make_profile(tmp_path, {"install": {"engine": {"method": "container", "image": IMAGE, **(engine or {})}}})


def _sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit syntax: sections of (key, value) in order, keys repeated."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            out[current] = []
        else:
            key, value = line.split("=", 1)
            out[current].append((key, value))
    return out


def test_container_replaces_the_bare_service_and_uses_only_quadlet_keys(tmp_path: Path) -> None:
    rendered = build(_profile(tmp_path)).rendered
    paths = {f.path for f in rendered.files}
    assert CONTAINER in paths and "/etc/systemd/system/llm-server.service" not in paths
    text = rendered.file(CONTAINER).content.decode()
    sections = _sections(text)
    assert set(sections) == {"Unit", "Container", "Service", "Install"}
    unknown = {k for k, _ in sections["Container"]} - set(KEYS["container_keys"])
    assert unknown == set()
    assert {k for k, _ in sections["Install"]} <= set(KEYS["install_keys"])
    container = dict(sections["Container"])
    assert container["Image"] == IMAGE and container["Network"] == "host"
    assert ("AddDevice", "nvidia.com/gpu=all") in sections["Container"]  # the profile has a GPU
    assert ("Volume", "/srv/models/qwen3-235b-a22b/UD-Q3_K_XL:/srv/models/qwen3-235b-a22b/UD-Q3_K_XL:ro") \
        in sections["Container"]
    # the same run script, exec'ing the image's llama-server
    run = rendered.file("/opt/provision/bin/llm-server-run.sh").content.decode()
    assert run.rstrip().endswith('exec /app/llama-server "$@"')
    assert rendered.handlers["enable-server"] == ("systemctl enable --now nvidia-gpu-settings.service && "
                                                  "systemctl start llm-server.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_sections_systemd_reads_verify(tmp_path: Path) -> None:
    """Quadlet passes [Unit]/[Service]/[Install] to systemd: verify them as a service."""
    text = build(_profile(tmp_path)).rendered.file(CONTAINER).content.decode()
    kept, skip = [], False
    for line in text.splitlines():
        if line.startswith("["):
            skip = line == "[Container]"
        if not skip:
            kept.append(line)
    unit = tmp_path / "vr" / "etc/systemd/system/llm-server.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("\n".join(kept).replace("[Service]", "[Service]\nExecStart=/bin/true") + "\n")
    out = subprocess.run(["systemd-analyze", "verify", f"--root={tmp_path / 'vr'}", "--man=no", "--generators=no",
                          "/etc/systemd/system/llm-server.service"], capture_output=True, text=True, check=False)
    assert not any(w in out.stderr for w in ("Unknown key", "Unknown section", "Failed to parse")), out.stderr


def _generator(tmp_path: Path, ok: bool) -> Path:
    """A stand-in for podman-system-generator: checks the dry-run protocol, fails when told to."""
    script = tmp_path / ("gen-ok" if ok else "gen-bad")
    script.write_text("#!/bin/sh\n"
                      '[ "$1" = --dryrun ] || exit 9\n'
                      'ls "$QUADLET_UNIT_DIRS"/*.container >/dev/null || exit 9\n'
                      + ("exit 0\n" if ok else 'echo "converting \\"llm-server.container\\": unsupported key '
                                               '\'Entrypoint\' in group \'Container\'" >&2; exit 1\n'))
    script.chmod(0o755)
    return script


def test_apply_runs_the_quadlet_dry_run_and_a_refusal_replaces_nothing(tmp_path: Path) -> None:
    profile = _profile(tmp_path)
    root = tmp_path / "image"
    env = {**os.environ, "PROVISION_QUADLET": str(_generator(tmp_path, ok=False))}
    refused = subprocess.run([sys.executable, "-m", "provisioner", "apply", str(profile), "--root", str(root),
                              "--yes"], capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    assert refused.returncode == 1
    assert "quadlet: converting" in refused.stderr and "unsupported key 'Entrypoint'" in refused.stderr
    assert not (root / CONTAINER.lstrip("/")).exists()
    assert not (root / "var/lib/provision/last").exists()
    env["PROVISION_QUADLET"] = str(_generator(tmp_path, ok=True))
    applied = subprocess.run([sys.executable, "-m", "provisioner", "apply", str(profile), "--root", str(root),
                              "--yes", "--json"], capture_output=True, text=True, check=False, cwd=ROOT, env=env)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["hosts"][0]["generation"] == 1
    assert (root / CONTAINER.lstrip("/")).read_text().count("Image=" + IMAGE) == 1


def test_container_needs_the_binary_for_engines_without_a_known_image(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "profiles" / "rtx-pro-6000-gpt-oss-120b-vllm.yaml").read_text())
    data["install"] = {"engine": {"method": "container", "image": "docker.io/vllm/vllm-openai@sha256:" + "cd" * 32}}
    profile = tmp_path / "vllm.yaml"
    profile.write_text(yaml.safe_dump(data))
    result = subprocess.run([sys.executable, "-m", "provisioner", "validate", str(profile)], capture_output=True,
                            text=True, check=False, cwd=ROOT)
    assert result.returncode == 1
    assert "where is vllm's binary inside docker.io/vllm/vllm-openai@sha256:" in result.stderr
    assert "set install.engine.binary" in result.stderr


def test_container_refuses_an_api_key_from_a_credential_file(tmp_path: Path) -> None:
    profile = make_profile(tmp_path, {"secrets.api_key": {"from_file": "/etc/llm/key"},
                                      "install": {"engine": {"method": "container", "image": IMAGE}}})
    result = subprocess.run([sys.executable, "-m", "provisioner", "validate", str(profile)], capture_output=True,
                            text=True, check=False, cwd=ROOT)
    assert result.returncode == 1 and "a container cannot read secrets.api_key.from_file" in result.stderr


def test_configparser_reads_it_too(tmp_path: Path) -> None:
    """Duplicate-key tolerant parse (Volume= repeats): no stray line outside a section."""
    text = build(_profile(tmp_path)).rendered.file(CONTAINER).content.decode()
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    assert parser["Container"]["Image"] == IMAGE
