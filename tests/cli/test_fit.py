"""`provision fit` as a function: exit codes, JSON shape, suggestions that really fit."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from provisioner.cli.fit import compare_command, fit_command
from provisioner.errors import UsageError
from provisioner.fit.whatif import combinations, overrides_of
from tests.conftest import good_profiles, make_profile

# the quant's own file (validate refuses a quant whose files name another); fit never reads it
Q4_K_M_FILES = {"model.source": {"files": [
    {"path": "/srv/models/qwen3-235b-a22b/Q4_K_M/Qwen3-235B-A22B-Q4_K_M-00001-of-00003.gguf",
     "bytes": 1, "sha256": "0" * 64}]}}

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
    path = make_profile(tmp_path, {"hardware.ram": "32GiB", "model.quant": "Q4_K_M", **Q4_K_M_FILES})
    assert fit_command(path, None, True) == 2
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is False
    assert data["suggestions"], "a smaller quant should be offered"
    assert all(s["fits"] for s in data["suggestions"])
    assert data["suggestions"][0]["change"].startswith("model.quant")
    assert fit_command(path, None, True, ignore_fit=True) == 0


def test_human_output_says_what_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_profile(tmp_path, {"hardware.ram": "32GiB", "model.quant": "Q4_K_M", **Q4_K_M_FILES})
    assert fit_command(path, None, False) == 2
    err = capsys.readouterr().err
    assert "does NOT fit" in err and "would fit" in err
    # no ubatch size fits here: the line must not call the flag's size a choice
    ubatch = next(line for line in err.splitlines() if line.startswith("ubatch "))
    assert "fit's choice" not in ubatch and "no size fits" in ubatch, ubatch


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


def test_set_changes_a_field_without_writing_the_profile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_profile(tmp_path)
    before = path.read_text()
    assert fit_command(path, None, True) == 0
    alone = json.loads(capsys.readouterr().out)
    assert fit_command(path, None, True, settings=overrides_of(["runtime.parallel=2"])) == 0
    two = json.loads(capsys.readouterr().out)
    assert path.read_text() == before
    assert alone["parallel"] == 1 and two["parallel"] == 2 and two["streams"] == 2
    # two streams share each step's weight reads: more in all, less each
    assert two["decode_aggregate_tokens_per_s"] > two["decode_tokens_per_s"] > two["decode_per_stream_tokens_per_s"]


def test_set_and_compare_refuse_a_malformed_assignment() -> None:
    for bad in (["model.quant"], ["=Q4_K_M"], ["model..quant=Q4_K_M"], ["model.quant="]):
        with pytest.raises(UsageError, match="FIELD=VALUE"):
            overrides_of(bad)
    with pytest.raises(UsageError, match="--compare"):
        combinations(["model.quant"])


def test_compare_prints_one_row_per_combination_best_pick_first(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = make_profile(tmp_path, {"hardware.ram": "32GiB"})
    quants = "model.quant=Q4_K_M,Q8_0,UD-Q2_K_XL"
    code = compare_command(path, {}, [quants, "model.context=8192,32768"], True)
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert code == 0 and len(rows) == 6
    assert {(r["settings"]["model.quant"], r["settings"]["model.context"]) for r in rows} == {
        (q, c) for q in ("Q4_K_M", "Q8_0", "UD-Q2_K_XL") for c in (8192, 32768)}
    fitting = [r for r in rows if r["fits"]]
    assert rows[:len(fitting)] == fitting, "what fits comes first"
    assert all(r["margin_bytes"] < 0 for r in rows[len(fitting):])
    for a, b in itertools.pairwise(fitting):  # VRAM-only first, then the better quant
        assert (a["weights_in_ram_bytes"] > 0, -a["bits_per_weight"]) <= (b["weights_in_ram_bytes"] > 0,
                                                                         -b["bits_per_weight"])
    # the same numbers as fitting that combination on its own
    first = rows[0]["settings"]
    assert fit_command(path, None, True, settings=overrides_of([f"{k}={v}" for k, v in first.items()])) in (0, 2)
    alone = json.loads(capsys.readouterr().out)
    assert alone["decode_tokens_per_s"] == pytest.approx(rows[0]["decode_tokens_per_s"], rel=1e-3)
    assert compare_command(path, {}, [quants], False) == 0
    err = capsys.readouterr().err
    assert "combinations, best pick" in err and "Q8_0" in err
