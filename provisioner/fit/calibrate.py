"""Calibration from the host's own runs (opt-in: fit --host H --calibrate).

verify records, per run of the profile's server, the decode and prefill it measured and
what fit predicted for them (facts/speed_record.py). Runs of the same engine and version
on the same GPUs say how far this host sits from the published cases the factors were
fitted on (its clocks, power limit, RAM, kernels): the median measured/predicted ratio
scales the prediction, as if the efficiency factors were this host's. Runs of another
engine, version or GPU set are not used; the prediction says how many runs it used.

For vLLM, verify also records the KV pool per GPU the server's start-up log reported.
fit cannot know that remainder exactly (vLLM's profiled activation peak depends on the
kernels and sampler the installed packages provide), so the last run of the same engine,
version, GPUs, model, quant and memory settings replaces fit's pool with the measured one:
how many full-context sequences fit, and whether max_num_seqs of them do.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass

from provisioner.facts.speed_record import SpeedRecord
from provisioner.fit.placement import Placement
from provisioner.fit.predict import Prediction
from provisioner.profile.resolve import Spec
from provisioner.units import GIB


@dataclass(frozen=True)
class Calibration:
    decode_ratio: float | None  # median measured / predicted decode of the matching runs
    prefill_ratio: float | None
    decode_runs: int
    prefill_runs: int
    ignored: int  # runs of another engine, version or GPU set
    kv_pool_bytes_per_gpu: int | None = None  # vLLM: the last matching run's measured pool
    kv_pool_from: str = ""  # that run: "generation N, TIME"

    @property
    def note(self) -> str:
        parts = []
        if self.kv_pool_bytes_per_gpu is not None:
            parts.append(f"vLLM KV pool {self.kv_pool_bytes_per_gpu / GIB:.2f} GiB per GPU as the server logged it "
                         f"({self.kv_pool_from})")
        if self.decode_ratio is not None:
            parts.append(f"decode x {self.decode_ratio:.2f} (median of {self.decode_runs} run(s))")
        if self.prefill_ratio is not None:
            parts.append(f"prefill x {self.prefill_ratio:.2f} (median of {self.prefill_runs} run(s))")
        if not parts:
            return (f"calibration: no run of this engine, version and GPU set recorded on the host "
                    f"({self.ignored} other run(s)); run `provision verify` with the endpoint to record one")
        return ("calibrated with this host's own verify runs of the same engine, version and GPUs: "
                + ", ".join(parts) + (f"; {self.ignored} other run(s) not used" if self.ignored else ""))


def _gpu_ids(spec: Spec) -> tuple[str, ...]:
    return tuple(sorted(g.id for g in spec.gpus for _ in range(g.count)))


def memory_settings(spec: Spec, placement: Placement) -> str:
    """What vLLM sizes its KV pool with, besides the engine, GPUs, model and quant: a run
    with other values measured another pool. The context too: vLLM's profiling pass runs
    max_num_batched_tokens (vllm/v1/worker/gpu_model_runner.py profile_run), whose default
    EngineArgs derives from max_model_len in some configurations."""
    p = spec.profile
    return json.dumps({"context": placement.context, "max_num_seqs": p.runtime.parallel,
                       "gpu_memory_utilization": p.runtime.gpu_memory_utilization,
                       "kv_cache": [p.model.kv_cache_k, p.model.kv_cache_value],
                       "cpu_offload_gib": placement.cpu_offload_bytes // GIB,
                       "extra_args": list(p.runtime.extra_args)}, sort_keys=True)


def calibration(spec: Spec, placement: Placement, records: list[SpeedRecord]) -> Calibration:
    runtime = spec.profile.runtime
    same = [r for r in records if r.engine == runtime.engine and r.engine_version == runtime.version
            and tuple(sorted(r.gpus)) == _gpu_ids(spec)]
    model = spec.profile.model
    settings = memory_settings(spec, placement)
    last = max((r for r in same if r.kv_pool_gib_per_gpu is not None and r.model == model.id
                and r.quant == model.quant and r.memory_settings == settings),
               key=lambda r: (r.generation, r.time), default=None)
    decode = [r.decode_tokens_per_s / r.predicted_decode_tokens_per_s for r in same
              if r.decode_tokens_per_s and r.predicted_decode_tokens_per_s]
    prefill = [r.prefill_tokens_per_s / r.predicted_prefill_tokens_per_s for r in same
               if r.prefill_tokens_per_s and r.predicted_prefill_tokens_per_s]
    return Calibration(statistics.median(decode) if decode else None,
                       statistics.median(prefill) if prefill else None,
                       len(decode), len(prefill), len(records) - len(same),
                       int(last.kv_pool_gib_per_gpu * GIB) if last and last.kv_pool_gib_per_gpu is not None else None,
                       f"generation {last.generation}, {last.time or 'time not recorded'}" if last else "")


def calibrated_placement(spec: Spec, placement: Placement, cal: Calibration) -> Placement:
    """vLLM's placement with the KV pool its server measured on this host: the GPUs'
    buffers are what the server kept besides weights and pool; the sequences that fit
    follow. Unchanged without a measured pool (or for another engine)."""
    pool, per_sequence = cal.kv_pool_bytes_per_gpu, placement.kv_bytes_per_sequence_per_gpu
    if pool is None or not per_sequence or placement.kv_pool_bytes_per_gpu is None:
        return placement
    need = per_sequence * placement.parallel
    gpus = tuple(dataclasses.replace(d, buffers_bytes=d.capacity_bytes - d.weights_bytes - pool)
                 for d in placement.gpus)
    # as fit_vllm: the GPUs' shortfall (now the measured pool's) plus RAM's, or an offload
    # larger than the weights, whichever is more
    ram_short = max(placement.ram.used_bytes - placement.ram.capacity_bytes, 0)
    excess_offload = max(placement.cpu_offload_bytes - spec.quant.bytes // max(len(gpus), 1), 0)
    missing = max(max(need - pool, 0) * len(gpus) + ram_short, excess_offload)
    return dataclasses.replace(placement, devices=(*gpus, placement.ram), kv_pool_bytes_per_gpu=pool,
                               missing_bytes=missing, fits=missing == 0)


def calibrated(speed: Prediction, cal: Calibration) -> Prediction:
    """The prediction with this host's ratios applied (unchanged where it has none)."""
    d = cal.decode_ratio or 1.0
    p = cal.prefill_ratio or 1.0
    return dataclasses.replace(
        speed, decode_tokens_per_s=speed.decode_tokens_per_s * d,
        decode_tokens_per_s_at_context=speed.decode_tokens_per_s_at_context * d,
        decode_aggregate_tokens_per_s=speed.decode_aggregate_tokens_per_s * d,
        decode_per_stream_tokens_per_s=speed.decode_per_stream_tokens_per_s * d,
        prefill_tokens_per_s=speed.prefill_tokens_per_s * p)
