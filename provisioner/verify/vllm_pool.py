"""verify's endpoint.kv-pool: the KV pool a vLLM server sized at start-up (its own log
lines, facts/vllm_log.py) against what fit planned and the profile's max_num_seqs.

fit estimates vLLM's non-KV memory (docs/fit.md: the profiled activation peak depends on
the kernels and sampler installed), so the server's number is the one that holds: a pool
that takes fewer full-context sequences than runtime.parallel makes the rest queue, and
one that takes none makes vLLM refuse to start. The measured pool is recorded with the
speeds, and `fit --host H --calibrate` plans with it.
"""

from __future__ import annotations

from provisioner.facts.check import Check
from provisioner.facts.vllm_log import VllmStartup
from provisioner.fit.placement import Placement
from provisioner.units import GIB

ID = "endpoint.kv-pool"
_FIX = ("lower runtime.parallel or model.context, or raise runtime.gpu_memory_utilization; "
        "`provision fit --host H --calibrate` plans with the pool this server logged")


def _not_comparable(startup: VllmStartup, placement: Placement) -> str | None:
    """Why this run's pool says nothing about the profile (a skip), or None."""
    if startup.unread is not None:
        return f"vLLM's start-up log not read: {startup.unread}"
    if startup.active in {"inactive", "failed", "deactivating"} or startup.sub == "auto-restart":
        # between an exit and systemd's restart the unit is "activating/auto-restart" and the
        # run read is the one that ended
        return f"the server is not running (its unit is {startup.active}/{startup.sub})"
    if startup.max_model_len is not None and startup.max_model_len != placement.context:
        # an apply without --restart leaves the old server running: its pool is not this profile's
        return (f"the running server was started with max_model_len {startup.max_model_len:,}, the profile "
                f"says {placement.context:,}: restart it (provision apply --restart) and verify again")
    if startup.kv_pool_bytes is None:
        if startup.restarts:
            return (f"this run has not logged its KV pool yet, and systemd has restarted the server "
                    f"{startup.restarts} time(s): journalctl -u the unit says why")
        return "this run of the server has not logged its KV pool yet (still loading?)"
    return None


def pool_checks(startup: VllmStartup, placement: Placement) -> list[Check]:
    if startup.refused is not None:
        return [Check(ID, "fail", f"vLLM refused to start: {startup.refused}",
                      f"room for {placement.parallel} sequence(s) of {placement.context:,} tokens", hint=_FIX)]
    why = _not_comparable(startup, placement)
    if why is not None or startup.kv_pool_bytes is None:
        return [Check(ID, "skip", hint=why)]
    pool = startup.kv_pool_bytes
    per_sequence = placement.kv_bytes_per_sequence_per_gpu
    sequences = startup.concurrency if startup.concurrency is not None else (
        pool / per_sequence if per_sequence else None)
    planned = placement.kv_pool_bytes_per_gpu
    observed = f"{pool / GIB:.2f} GiB per GPU" + (
        f": {sequences:.1f} sequences of {placement.context:,} tokens" if sequences is not None else "")
    expected = (f"fit planned {planned / GIB:.2f} GiB"
                + (f" ({(pool / planned - 1) * 100:+.0f}%)" if planned and planned > 0 else "")
                + f"; runtime.parallel {placement.parallel}") if planned is not None else (
        f"runtime.parallel {placement.parallel}")
    measured = (("kv_pool_gib_per_gpu", pool / GIB),) + (
        (("predicted_kv_pool_gib_per_gpu", planned / GIB),) if planned is not None else ())
    if sequences is not None and sequences < placement.parallel:
        return [Check(ID, "warn", observed + f", fewer than runtime.parallel {placement.parallel}: "
                      "the other requests at full context queue", expected, hint=_FIX, measured=measured)]
    return [Check(ID, "pass", observed, expected, measured=measured)]
