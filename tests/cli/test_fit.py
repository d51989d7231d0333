"""`provision fit` as a function: exit codes, JSON shape, suggestions that really fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.cli.fit import fit_command
from tests.conftest import good_profiles, make_profile


def test_quickstart_fits_and_reports_speed(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[2]
    assert fit_command(root / "examples" / "quickstart.yaml", None, True) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["command"] == "fit" and data["fits"] is True and data["error"] is None
    assert data["devices"][-1]["name"] == "CPU RAM"
    assert set(data["devices"][0]) == {"name", "capacity_bytes", "weights_bytes", "kv_cache_bytes",
                                       "buffers_bytes", "free_bytes"}
    assert data["flags"]["--n-cpu-moe"]
    assert data["decode_tokens_per_s"] > 0 and data["prefill_tokens_per_s"] > 0
    assert data["bottleneck"] in {"gpu-bandwidth", "cpu-ram-bandwidth", "pcie", "compute"}
    assert data["suggestions"] == []


def test_too_small_machine_exits_2_with_suggestions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_profile(tmp_path, {"hardware.ram": "32GiB", "model.quant": "Q4_K_M"})
    assert fit_command(path, None, True) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is False
    assert data["suggestions"], "a smaller quant should be offered"
    assert all(s["fits"] for s in data["suggestions"])
    assert data["suggestions"][0]["change"].startswith("model.quant")
    assert fit_command(path, None, True, ignore_fit=True) == 0


def test_human_output_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_profile(tmp_path, {"hardware.ram": "32GiB", "model.quant": "Q4_K_M"})
    assert fit_command(path, None, False) == 2
    err = capsys.readouterr().err
    assert "does NOT fit" in err and "would fit" in err


@pytest.mark.parametrize("profile", good_profiles(), ids=lambda p: p.name)
def test_every_bundled_profile_fits(profile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fit_command(profile, None, True) == 0


def test_fit_with_a_hosts_recorded_facts_replaces_the_profiles_hardware(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The recorded facts of an RTX 4090 + 64 GiB desktop (tests/cases/init/rtx-4090-64g.yaml)
    against the quickstart's Qwen3-235B profile written for an RTX PRO 6000 + 192 GiB."""
    import json

    import yaml

    from provisioner.cli.fit import fit_command
    from provisioner.facts.host import host_facts

    root = Path(__file__).resolve().parents[2]
    case = yaml.safe_load((root / "tests/cases/init/rtx-4090-64g.yaml").read_text())
    facts = host_facts(case["facts"])
    code = fit_command(root / "examples/quickstart.yaml", None, True, host_facts=facts, host="desk")
    data = json.loads(capsys.readouterr().out)
    assert data["hardware_from"] == "desk"
    assert data["hardware"]["gpus"] == [{"model": "rtx-4090", "count": 1}]
    assert data["hardware"]["ram"] == 64 * 2**30 and data["hardware"]["cpu"]["cores"] == 16
    assert data["devices"][0]["name"].startswith("GPU0 NVIDIA GeForce RTX 4090")
    assert code == 2 and not data["fits"]  # 235B at 3 bit needs more than 24 GB + 64 GiB
    same = fit_command(root / "profiles/rtx-4090-qwen3-30b-a3b-llamacpp.yaml", None, True, host_facts=facts,
                       host="desk")
    assert same == 0 and json.loads(capsys.readouterr().out)["fits"]
