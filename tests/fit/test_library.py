"""The library of known-good profiles: `provision profiles list` / `show`, and the fit
prediction written next to each profile's measured speed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from provisioner.cli import main
from provisioner.errors import UsageError
from provisioner.fit.library import (
    entry,
    list_profiles,
    show_profile,
)

ROOT = Path(__file__).resolve().parents[2]
LIBRARY = sorted((ROOT / "profiles").glob("*.yaml"))
PREDICTED = re.compile(r"^#\s+Predicted by provision fit: ([0-9.]+) tok/s decode", re.MULTILINE)


def test_every_library_profile_is_listed_with_a_positive_prediction() -> None:
    rows = list_profiles()
    assert [r["name"] for r in rows] == [p.stem for p in LIBRARY]
    for row in rows:
        assert row["fits"], row["name"]
        assert row["decode_tokens_per_s"] > 0, row["name"]
        assert row["decode_tokens_per_s_at_context"] > 0, row["name"]
        assert row["model"] and row["quant"] and row["engine"] and row["context"] > 0
        assert row["ram_bytes"] > 0 and row["sources"], row["name"]
        assert row["gpu"] == (" + ".join(f"{g['count']}x {g['model']}" for g in row["gpus"]) or "none")


def test_library_covers_the_issue() -> None:
    rows = {r["name"]: r for r in list_profiles()}
    gpus = {r["gpu"] for r in rows.values()}
    assert {"1x rtx-pro-6000-blackwell", "1x rtx-4080-super", "1x rtx-4090", "1x rtx-3090", "none"} <= gpus
    assert any(r["gpu"].endswith("h100-sxm") for r in rows.values())
    assert sum(r["engine"] == "ollama" for r in rows.values()) >= 2
    assert {"llama.cpp", "vllm", "ollama"} == {r["engine"] for r in rows.values()}


@pytest.mark.parametrize("path", LIBRARY, ids=[p.stem for p in LIBRARY])
def test_comment_states_the_fit_prediction_next_to_the_measured_number(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    found = PREDICTED.findall(text)
    assert len(found) == 1, f"{path.name}: add '#   Predicted by provision fit: N tok/s decode ...'"
    assert "measured:" in text.split("Predicted by provision fit:", 1)[1].split("\n#\n", 1)[0]
    now = entry(path.stem).prediction.decode_tokens_per_s
    # the comment is a record, not a live value; it must be refreshed when fit moves by >15%
    assert float(found[0]) == pytest.approx(now, rel=0.15), (
        f"{path.name}: the comment says {found[0]} tok/s, `provision fit` now says {now:.1f}")


def test_show_is_the_file_plus_the_fit_summary() -> None:
    name = "rtx-pro-6000-qwen3-235b-q3-llamacpp"
    shown = show_profile(name)
    original = (ROOT / "profiles" / f"{name}.yaml").read_text(encoding="utf-8")
    assert shown.startswith(original)
    assert yaml.safe_load(shown) == yaml.safe_load(original)  # the summary is comments only
    prediction = entry(name).prediction
    assert f"predicted: {prediction.decode_tokens_per_s:.1f} tok/s decode" in shown
    assert "GPU0 NVIDIA RTX PRO 6000" in shown and "fits" in shown


def test_show_unknown_name_suggests() -> None:
    with pytest.raises(UsageError) as info:
        show_profile("rtx-4090-qwen3-30b")
    assert "did you mean" in (info.value.first.hint or "")
    assert "rtx-4090-qwen3-30b-a3b-llamacpp" in (info.value.first.hint or "")


def _cli(*args: str) -> int | str | None:
    with pytest.raises(SystemExit) as done:
        main.main(list(args))
    return done.value.code


def test_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("profiles", "list") == 0
    out, err = capsys.readouterr()
    assert out == ""  # human output on stderr
    assert all(p.stem in err for p in LIBRARY)
    assert _cli("profiles", "list", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["command"] == "profiles" and data["ok"] is True and len(data["profiles"]) == len(LIBRARY)
    assert _cli("profiles", "show", "cpu-only-256g-qwen3-235b-llamacpp") == 0
    out, _ = capsys.readouterr()
    assert yaml.safe_load(out)["metadata"]["name"] == "cpu-only-256g-qwen3-235b-llamacpp"
    assert _cli("profiles", "show", "cpu-only-256g-qwen3-235b-llamacpp", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["profile"]["gpu"] == "none" and data["summary"]
