"""endpoint.kv-pool: the pool a vLLM server logged, against fit's plan and max_num_seqs;
and fit --calibrate planning with it. Pools and tokens are from vLLM issue 21348
(https://github.com/vllm-project/vllm/issues/21348: Qwen3-235B-A22B-FP8, 4x H100, TP 4,
40,960 tokens: "Available KV cache memory: 8.11 GiB", "GPU KV cache size: 178,880 tokens")."""

from __future__ import annotations

import dataclasses

import pytest

from provisioner.facts.speed_record import SpeedRecord
from provisioner.facts.vllm_log import VllmStartup
from provisioner.fit import fit
from provisioner.fit.calibrate import calibrated_placement, calibration, memory_settings
from provisioner.fit.placement import Placement
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import Spec, resolve
from provisioner.units import GIB
from provisioner.verify.vllm_pool import pool_checks
from tests.conftest import ROOT

MEASURED_POOL = int(8.11 * GIB)
MEASURED_SEQUENCES = 178_880 / 40_960  # vLLM's own tokens over the context: 4.37


def _planned(parallel: int) -> tuple[Spec, Placement]:
    spec = resolve(load_profile(ROOT / "profiles" / "4x-h100-qwen3-235b-fp8-vllm.yaml",
                                {"model": {"context": 40960},
                                 "runtime": {"parallel": parallel, "gpu_memory_utilization": 0.9}}))
    return spec, fit(spec)


def test_a_pool_that_holds_max_num_seqs_passes_and_is_measured() -> None:
    _, placement = _planned(2)
    [check] = pool_checks(VllmStartup(run="r", kv_pool_bytes=MEASURED_POOL, concurrency=4.37), placement)
    assert check.status == "pass" and "8.11 GiB per GPU: 4.4 sequences of 40,960 tokens" in (check.observed or "")
    assert placement.kv_pool_bytes_per_gpu is not None
    assert f"fit planned {placement.kv_pool_bytes_per_gpu / GIB:.2f} GiB" in (check.expected or "")
    assert dict(check.measured)["kv_pool_gib_per_gpu"] == pytest.approx(8.11)


def test_fewer_sequences_than_max_num_seqs_warns() -> None:
    _, placement = _planned(8)
    [check] = pool_checks(VllmStartup(run="r", kv_pool_bytes=MEASURED_POOL, concurrency=4.37), placement)
    assert check.status == "warn" and "fewer than runtime.parallel 8" in (check.observed or "")
    assert check.hint and "--calibrate" in check.hint


def test_a_server_started_with_other_settings_or_stopped_is_not_compared() -> None:
    """After an apply without --restart the old server still runs: its pool is not this
    profile's, and it must not be recorded as if it were."""
    _, placement = _planned(2)
    [stale] = pool_checks(VllmStartup(run="r", kv_pool_bytes=MEASURED_POOL, max_model_len=32_768,
                                      concurrency=5.0), placement)
    assert stale.status == "skip" and "max_model_len 32,768" in (stale.hint or "") and not stale.measured
    [stopped] = pool_checks(VllmStartup(run="r", kv_pool_bytes=MEASURED_POOL, active="failed"), placement)
    assert stopped.status == "skip" and "not running" in (stopped.hint or "")
    [between] = pool_checks(VllmStartup(run="r", kv_pool_bytes=MEASURED_POOL, active="activating",
                                        sub="auto-restart", restarts=2), placement)
    assert between.status == "skip" and "activating/auto-restart" in (between.hint or "")
    [looping] = pool_checks(VllmStartup(run="r", active="activating", sub="start", restarts=2), placement)
    assert looping.status == "skip" and "restarted the server 2 time(s)" in (looping.hint or "")


def test_a_refused_start_fails_and_nothing_read_skips() -> None:
    _, placement = _planned(2)
    [refused] = pool_checks(VllmStartup(run="r", refused="24.0 GiB of KV cache needed"), placement)
    assert refused.status == "fail" and "vLLM refused to start" in (refused.observed or "")
    [unread] = pool_checks(VllmStartup(unread="the host has no journalctl"), placement)
    assert unread.status == "skip" and "no journalctl" in (unread.hint or "")
    [loading] = pool_checks(VllmStartup(run="r"), placement)
    assert loading.status == "skip"


def _record(spec: Spec, placement: Placement, pool_gib: float, generation: int, **changes: object) -> SpeedRecord:
    fields: dict[str, object] = dict(
        generation=generation, engine="vllm", engine_version=spec.profile.runtime.version,
        gpus=tuple(g.id for g in spec.gpus for _ in range(g.count)), model=spec.profile.model.id,
        quant=spec.profile.model.quant, kv_pool_gib_per_gpu=pool_gib,
        memory_settings=memory_settings(spec, placement), time=f"2026-12-0{generation}T10:00:00+00:00")
    fields.update(changes)
    return SpeedRecord(**fields)  # type: ignore[arg-type]


def test_fit_calibrated_with_the_logged_pool_holds_what_vllm_said() -> None:
    spec, placement = _planned(2)
    records = [_record(spec, placement, 9.5, 1), _record(spec, placement, 8.11, 2),
               _record(spec, placement, 20.0, 3, memory_settings="{}"),  # other settings: another pool
               _record(spec, placement, 20.0, 4, quant="BF16")]
    cal = calibration(spec, placement, records)
    assert cal.kv_pool_bytes_per_gpu == MEASURED_POOL and "generation 2" in cal.kv_pool_from
    assert "vLLM KV pool 8.11 GiB per GPU" in cal.note
    tuned = calibrated_placement(spec, placement, cal)
    assert tuned.max_concurrency == pytest.approx(MEASURED_SEQUENCES, rel=0.02)  # fit's KV bytes are exact
    assert tuned.fits and all(d.free_bytes == pytest.approx(MEASURED_POOL - d.kv_cache_bytes, abs=1)
                              for d in tuned.gpus)
    crowded_spec, crowded = _planned(5)  # fit alone: room for 5.5 sequences
    short = calibrated_placement(crowded_spec, crowded,
                                 calibration(crowded_spec, crowded, [_record(crowded_spec, crowded, 8.11, 2)]))
    assert crowded.fits and not short.fits and short.missing_bytes > 0  # the logged pool holds 4.4
    assert calibrated_placement(spec, placement, dataclasses.replace(cal, kv_pool_bytes_per_gpu=None)) == placement
    # an offload larger than each GPU's share of the weights does not fit, whatever the pool
    weights_gpu = spec.quant.bytes // 4
    too_much = dataclasses.replace(placement, cpu_offload_bytes=weights_gpu + 3 * GIB)
    assert calibrated_placement(spec, too_much, cal).missing_bytes == 3 * GIB
    assert not calibrated_placement(spec, too_much, cal).fits
