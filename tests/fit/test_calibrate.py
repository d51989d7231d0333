"""Calibration from the host's own runs: verify's record in the host's state, read back by
fit's gather, applied only to runs of the same engine, version and GPUs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from provisioner.cli.fit import fit_command
from provisioner.facts.host import host_facts
from provisioner.facts.speed_record import READ_SNIPPET, SpeedRecord, parse_records, write_script
from provisioner.fit import fit
from provisioner.fit.calibrate import calibrated, calibration
from provisioner.fit.predict import predict
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from tests.conftest import ROOT

PROFILE = ROOT / "profiles" / "rtx-4090-qwen3-30b-a3b-llamacpp.yaml"


def _record(decode: float, predicted: float, **changes: object) -> SpeedRecord:
    base: dict[str, object] = dict(generation=0, engine="llama.cpp", engine_version="b11312", gpus=("rtx-4090",),
                                   model="qwen3-30b-a3b", quant="UD-Q4_K_XL", decode_tokens_per_s=decode,
                                   predicted_decode_tokens_per_s=predicted, prefill_tokens_per_s=3000.0,
                                   predicted_prefill_tokens_per_s=6000.0, prompt_tokens=29000)
    base.update(changes)
    return SpeedRecord(**base)  # type: ignore[arg-type]


def _sh(script: str) -> str:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=30).stdout


def test_verify_record_is_written_next_to_the_generation_and_read_back(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "generations" / "3").mkdir(parents=True)
    (state / "last").write_text("3\n")
    first, second = _record(150.0, 190.0), _record(160.0, 190.0, time="2026-12-03T08:00:00+00:00")
    assert "@recorded" in _sh(write_script(str(state), first))
    assert "@recorded" in _sh(write_script(str(state), second))
    assert len((state / "generations" / "3" / "speed.jsonl").read_text().splitlines()) == 2
    read = parse_records(_sh(f"state='{state}'\n{READ_SNIPPET}"))
    assert [r.generation for r in read] == [3, 3]
    assert read[0].decode_tokens_per_s == 150.0 and read[1].time == second.time
    assert read[0].gpus == ("rtx-4090",) and read[0].prompt_tokens == 29000


def test_no_applied_generation_means_nothing_is_recorded(tmp_path: Path) -> None:
    out = _sh(write_script(str(tmp_path / "empty"), _record(150.0, 190.0)))
    assert out.startswith("@not-recorded no applied generation")


def test_calibration_uses_only_the_same_engine_version_and_gpus() -> None:
    spec = resolve(load_profile(PROFILE))
    records = [_record(150.0, 200.0), _record(170.0, 200.0), _record(190.0, 200.0),
               _record(10.0, 200.0, engine_version="b9999"), _record(10.0, 200.0, gpus=("rtx-3090",)),
               _record(10.0, 200.0, engine="vllm")]
    cal = calibration(spec, fit(spec), records)
    assert cal.decode_ratio == pytest.approx(0.85) and cal.decode_runs == 3 and cal.ignored == 3
    assert cal.prefill_ratio == pytest.approx(0.5)
    speed = predict(spec, fit(spec))
    after = calibrated(speed, cal)
    assert after.decode_tokens_per_s == pytest.approx(speed.decode_tokens_per_s * 0.85)
    assert after.prefill_tokens_per_s == pytest.approx(speed.prefill_tokens_per_s * 0.5)
    assert "median of 3 run(s)" in cal.note and "3 other run(s) not used" in cal.note
    none = calibration(spec, fit(spec), [_record(10.0, 200.0, engine="vllm")])
    assert none.decode_ratio is None and calibrated(speed, none) == speed and "no run" in none.note


def test_fit_host_calibrate_says_so_and_scales_the_prediction(capsys: pytest.CaptureFixture[str]) -> None:
    case = yaml.safe_load((ROOT / "tests/cases/init/rtx-4090-64g.yaml").read_text())
    facts = host_facts(case["facts"])
    lines = "".join(f"@speed 2 {r.to_json()}\n" for r in (_record(100.0, 200.0), _record(120.0, 200.0)))
    output = case["facts"] + lines
    assert fit_command(PROFILE, None, True, host_facts=facts, host="desk", host_output=output) == 0
    plain = json.loads(capsys.readouterr().out)
    assert fit_command(PROFILE, None, True, host_facts=facts, host="desk", host_output=output, calibrate=True) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["calibration"]["decode_ratio"] == pytest.approx(0.55)
    assert tuned["decode_tokens_per_s"] == pytest.approx(plain["decode_tokens_per_s"] * 0.55, rel=0.01)
    assert plain["calibration"] is None
    assert any("calibrated with this host's own verify runs" in w for w in tuned["warnings"])


def test_verify_records_what_the_endpoint_checks_measured(tmp_path: Path) -> None:
    """verify's endpoint checks carry the numbers they measured; verify appends them, with
    fit's prediction for the measured prompt length, to the last generation's record."""
    from provisioner.facts.check import Check
    from provisioner.render.pipeline import build
    from provisioner.transport.local import LocalTransport
    from provisioner.verify.run import _record_speed
    from tests.conftest import make_profile

    built = build(make_profile(tmp_path, {"model.context": 8192}))
    state = tmp_path / "state"
    (state / "generations" / "1").mkdir(parents=True)
    (state / "last").write_text("1\n")
    checks = [Check("endpoint.speed", "pass", measured=(("decode_tokens_per_s", 41.5),
                                                        ("predicted_decode_tokens_per_s", 50.0))),
              Check("endpoint.needle", "pass", measured=(("prefill_tokens_per_s", 900.0), ("prompt_tokens", 7000.0)))]
    done = _record_speed(built, LocalTransport(state_dir=str(state)), checks)
    assert done.status == "pass" and "speed.jsonl" in (done.observed or "")
    [record] = parse_records(_sh(f"state='{state}'\n{READ_SNIPPET}"))
    assert record.decode_tokens_per_s == 41.5 and record.prompt_tokens == 7000
    assert record.predicted_prefill_tokens_per_s == pytest.approx(
        predict(built.spec, built.placement, prompt_tokens=7000).prefill_tokens_per_s)
    assert record.engine == built.spec.profile.runtime.engine and record.time
    assert _record_speed(built, LocalTransport(state_dir=str(state)), []).status == "skip"


def test_fit_host_calibrate_plans_with_the_kv_pool_vllm_logged(capsys: pytest.CaptureFixture[str]) -> None:
    """A pool recorded by verify (half of fit's own, as a server that kept more for itself
    would log) replaces fit's: the sequences that fit follow, and the note says where from."""
    from provisioner.fit.calibrate import memory_settings

    profile = ROOT / "profiles" / "rtx-pro-6000-gpt-oss-120b-vllm.yaml"
    case = yaml.safe_load((ROOT / "tests/cases/init/rtx-pro-6000-192g.yaml").read_text())
    facts = host_facts(case["facts"])
    assert fit_command(profile, None, True, host_facts=facts, host="box", host_output=case["facts"]) == 0
    plain = json.loads(capsys.readouterr().out)
    spec = resolve(load_profile(profile))
    placement = fit(spec)
    assert placement.kv_pool_bytes_per_gpu is not None
    half = placement.kv_pool_bytes_per_gpu / 2 / 2**30
    record = SpeedRecord(generation=4, engine="vllm", engine_version=spec.profile.runtime.version,
                         gpus=tuple(g.id for g in spec.gpus for _ in range(g.count)), model=spec.profile.model.id,
                         quant=spec.profile.model.quant, kv_pool_gib_per_gpu=half,
                         memory_settings=memory_settings(spec, placement))
    output = case["facts"] + f"@speed 4 {record.to_json()}\n"
    fit_command(profile, None, True, host_facts=facts, host="box", host_output=output, calibrate=True)
    tuned = json.loads(capsys.readouterr().out)
    assert tuned["max_concurrency"] == pytest.approx(plain["max_concurrency"] / 2, rel=0.01)
    assert tuned["calibration"]["kv_pool_bytes_per_gpu"] == int(half * 2**30)
    assert any("vLLM KV pool" in w and "generation 4" in w for w in tuned["warnings"])
