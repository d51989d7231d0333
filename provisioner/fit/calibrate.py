"""Calibration from the host's own runs (opt-in: fit --host H --calibrate).

verify records, per run of the profile's server, the decode and prefill it measured and
what fit predicted for them (facts/speed_record.py). Runs of the same engine and version
on the same GPUs say how far this host sits from the published cases the factors were
fitted on (its clocks, power limit, RAM, kernels): the median measured/predicted ratio
scales the prediction, as if the efficiency factors were this host's. Runs of another
engine, version or GPU set are not used; the prediction says how many runs it used.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass

from provisioner.facts.speed_record import SpeedRecord
from provisioner.fit.predict import Prediction
from provisioner.profile.resolve import Spec


@dataclass(frozen=True)
class Calibration:
    decode_ratio: float | None  # median measured / predicted decode of the matching runs
    prefill_ratio: float | None
    decode_runs: int
    prefill_runs: int
    ignored: int  # runs of another engine, version or GPU set

    @property
    def note(self) -> str:
        parts = []
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


def calibration(spec: Spec, records: list[SpeedRecord]) -> Calibration:
    runtime = spec.profile.runtime
    same = [r for r in records if r.engine == runtime.engine and r.engine_version == runtime.version
            and tuple(sorted(r.gpus)) == _gpu_ids(spec)]
    decode = [r.decode_tokens_per_s / r.predicted_decode_tokens_per_s for r in same
              if r.decode_tokens_per_s and r.predicted_decode_tokens_per_s]
    prefill = [r.prefill_tokens_per_s / r.predicted_prefill_tokens_per_s for r in same
               if r.prefill_tokens_per_s and r.predicted_prefill_tokens_per_s]
    return Calibration(statistics.median(decode) if decode else None,
                       statistics.median(prefill) if prefill else None,
                       len(decode), len(prefill), len(records) - len(same))


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
