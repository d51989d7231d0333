"""verify: drift through the plan code, model files and GGUF headers, the command."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType

from provisioner.facts.check import Check
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from provisioner.verify.drift import Live, live_checks, parse_live
from provisioner.verify.model import header_checks, header_facts
from tests.conftest import make_profile
from tests.support.ggufs import write_llama8b_header

ROOT = Path(__file__).resolve().parents[2]


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "provisioner", *args], capture_output=True, text=True,
                          check=False, cwd=ROOT)


def checks_of(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, str]]:
    data = json.loads(result.stdout)
    return {c["id"]: c for c in data["hosts"][0]["checks"]}


def test_drift_pass_then_hand_edit_fails_with_the_diff(tmp_path: Path) -> None:
    profile = make_profile(tmp_path)
    root = tmp_path / "root"
    assert provision("apply", str(profile), "--root", str(root), "--yes").returncode == 0
    clean = provision("verify", str(profile), "--root", str(root), "--only", "drift", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert checks_of(clean)["drift.files"]["status"] == "pass"
    sysctl = root / "etc/sysctl.d/90-provision-llm-server.conf"
    sysctl.write_text(sysctl.read_text().replace("vm.swappiness = 10", "vm.swappiness = 60"))
    drifted = provision("verify", str(profile), "--root", str(root), "--only", "drift", "--json")
    assert drifted.returncode == 2
    check = checks_of(drifted)["drift.file:/etc/sysctl.d/90-provision-llm-server.conf"]
    assert check["status"] == "fail"
    assert "-vm.swappiness = 60" in check["observed"] and "+vm.swappiness = 10" in check["observed"]
    human = provision("verify", str(profile), "--root", str(root), "--only", "drift")
    assert human.returncode == 2
    first_row = next(line for line in human.stderr.splitlines() if line.startswith(("drift", "model", "gpu")))
    assert first_row.startswith("drift.file:"), "failures first"


def test_model_files_sha256_size_and_truncation(tmp_path: Path) -> None:
    root = tmp_path / "root"
    blob = root / "srv/models/m.gguf"
    blob.parent.mkdir(parents=True)
    data = b"GGUF" + bytes(range(256)) * 64
    blob.write_bytes(data)
    source = {"files": [{"path": "/srv/models/m.gguf", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}
    profile = make_profile(tmp_path, {"model.source": source})

    def model_check() -> dict[str, str]:
        result = provision("verify", str(profile), "--root", str(root), "--only", "model", "--json")
        return checks_of(result)["model.file:m.gguf"]

    assert model_check()["status"] == "pass"
    # The hash is cached by path, size and mtime in the state dir: a second verify does not read it again.
    assert "/srv/models/m.gguf" in (root / "var/lib/provision/sha256-cache").read_text()
    blob.write_bytes(data[:-10])
    truncated = model_check()
    assert truncated["status"] == "fail" and "truncated" in truncated["hint"]
    swapped = bytearray(data)
    swapped[100] ^= 1
    blob.write_bytes(bytes(swapped))
    corrupt = model_check()
    assert corrupt["status"] == "fail" and "corrupt" in corrupt["hint"]
    blob.unlink()
    assert model_check()["observed"] == "missing"


def _spec(tmp_path: Path, quant: str = "Q4_K_M", context: int = 8192) -> object:
    profile = make_profile(tmp_path, {
        "model": {"id": "llama-3.1-8b", "quant": quant, "context": context, "kv_cache": "f16",
                  "source": {"files": [{"path": "/srv/m.gguf", "bytes": 1, "sha256": "a" * 64}]}},
        "hardware.gpus": [{"model": "rtx-4090", "count": 1}], "driver.power_limit_w": None})
    return resolve(load_profile(profile))


def _status(checks: list[Check]) -> dict[str, str]:
    return {c.id: c.status for c in checks}


def test_gguf_header_of_a_full_size_sparse_8b_layout_matches(tmp_path: Path) -> None:
    path = tmp_path / "llama8b-q4k.gguf"
    write_llama8b_header(path)
    facts = header_facts(path)
    assert facts["architecture"] == "llama" and facts["block_count"] == 32
    statuses = _status(header_checks(_spec(tmp_path), facts, 1))  # type: ignore[arg-type]
    assert statuses == {"model.architecture": "pass", "model.layers": "pass", "model.context": "pass",
                        "model.quant_mix": "pass"}


@pytest.mark.parametrize(("change", "failing"), [
    ({"qtype": GGMLQuantizationType.Q8_0}, "model.quant_mix"),
    ({"layers": 30}, "model.layers"),
    ({"arch": "qwen2"}, "model.architecture"),
])
def test_gguf_header_mismatch_fails(tmp_path: Path, change: dict[str, object], failing: str) -> None:
    path = tmp_path / "other.gguf"
    write_llama8b_header(path, **change)  # type: ignore[arg-type]
    statuses = _status(header_checks(_spec(tmp_path), header_facts(path), 1))  # type: ignore[arg-type]
    assert statuses[failing] == "fail"


def test_gguf_trained_context_shorter_than_profile_passes_only_within_yarn(tmp_path: Path) -> None:
    path = tmp_path / "short.gguf"
    write_llama8b_header(path, context=4096)
    statuses = _status(header_checks(_spec(tmp_path, context=8192), header_facts(path), 1))  # type: ignore[arg-type]
    assert statuses["model.context"] == "pass"  # within the catalog's YaRN maximum: the script sets rope scaling


def test_live_values_compare_sysctl_thp_and_service(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    output = "\n".join(["@live sysctl vm.swappiness 60", "@live sysctl kernel.numa_balancing 0",
                        "@live thp always", "@live hugepages 0", "@live memlock infinity",
                        "@live enabled enabled", "@live active failed"])
    live = parse_live(output)
    checks = _status(live_checks(spec, {"vm.swappiness": "10", "kernel.numa_balancing": "0"},  # type: ignore[arg-type]
                                 live, root_mode=False))
    assert checks["drift.sysctl:vm.swappiness"] == "fail"
    assert checks["drift.sysctl:kernel.numa_balancing"] == "pass"
    assert checks["drift.thp"] == "fail"
    assert checks["drift.memlock"] == "pass" and checks["drift.active"] == "fail"
    skipped = live_checks(spec, {}, Live(), root_mode=True)  # type: ignore[arg-type]
    assert [c.status for c in skipped] == ["skip"]


def test_verify_help_and_bad_group() -> None:
    result = provision("verify", "examples/quickstart.yaml", "--only", "gpu,nope")
    assert result.returncode == 1 and "unknown group 'nope'" in result.stderr


def test_prehash_fills_the_probes_cache_and_the_probe_trusts_it(tmp_path: Path) -> None:
    """Local and --root targets hash shards here (with a progress bar on a terminal) into the
    cache the probe reads by size and mtime: a second verify reads nothing again."""
    from provisioner.verify.model import prehash

    root = tmp_path / "root"
    blob = root / "srv/models/m.gguf"
    blob.parent.mkdir(parents=True)
    data = b"GGUF" + bytes(range(256)) * 512
    blob.write_bytes(data)
    state = root / "var/lib/provision"
    assert prehash(["/srv/models/m.gguf"], str(root), str(state), show_progress=False) == 1
    assert prehash(["/srv/models/m.gguf"], str(root), str(state), show_progress=False) == 0  # cached
    cached = (state / "sha256-cache").read_text().split()
    assert cached[2] == str(blob) and cached[3] == hashlib.sha256(data).hexdigest()
    source = {"files": [{"path": "/srv/models/m.gguf", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}
    profile = make_profile(tmp_path, {"model.source": source})
    result = provision("verify", str(profile), "--root", str(root), "--only", "model", "--json")
    assert checks_of(result)["model.file:m.gguf"]["status"] == "pass"
    # The probe believes the cache for an unchanged size and mtime (that is what makes it instant):
    (state / "sha256-cache").write_text(" ".join([*cached[:3], "0" * 64]) + "\n")
    result = provision("verify", str(profile), "--root", str(root), "--only", "model", "--json")
    assert checks_of(result)["model.file:m.gguf"]["observed"] == "sha256 " + "0" * 64
