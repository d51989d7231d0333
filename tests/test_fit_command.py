"""`provision fit` as a function: exit codes, JSON shape, suggestions that really fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioner.fit_command import fit_command
from tests.conftest import good_profiles, make_profile


def test_quickstart_fits_and_reports_speed(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parent.parent
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
