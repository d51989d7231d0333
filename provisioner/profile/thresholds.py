"""The monitor thresholds a profile may set (``verify.thresholds``) and their defaults.

``provision monitor`` holds each sample against them; the profile only names them,
so the names live here, below both.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Thresholds:
    """When a sample warns or fails. Every default says why it is where it is."""

    # Decode reads every active weight per token: any steady swap traffic while serving
    # means weights or KV cache are on disk. 1 MB/s is noise-level background swapping;
    # 20 MB/s is a few thousand 4 KiB pages a second, enough to stall tokens for seconds.
    swap_warn_mbs: float = 1.0
    swap_fail_mbs: float = 20.0
    # A major fault is a disk read (~0.1 ms on NVMe, ~10 ms on a disk). RethinkDB's swap
    # detector (rethinkdb/rethinkdb#6020) flags ~3/s; a mapped model being re-read shows
    # hundreds per second.
    major_faults_warn_per_s: float = 10.0
    major_faults_fail_per_s: float = 200.0
    # GeForce boost targets ~83-84 C and slows down from "GPU Max Operating Temp", 90 C on the
    # RTX 4080 SUPER capture cited in the module docstring (Target 84 C, Slowdown 96 C).
    gpu_temp_warn_c: float = 83.0
    gpu_temp_fail_c: float = 90.0
    # Drawing >= 98% of the limit: the SW power cap decides the clocks (nvidia-smi is +/- 5 W).
    gpu_power_warn_fraction: float = 0.98
    # VRAM this full leaves no room for a longer context or a second sequence.
    gpu_memory_warn_fraction: float = 0.98
    # PSI memory, % of the last 10 s: "some" >= 10 means tasks wait on reclaim often enough to
    # be seen in latency; systemd-oomd's default DefaultMemoryPressureLimit is 60%, the point it
    # starts killing: fail there. "full" (every task stalled) >= 5 is thrashing (kernel PSI doc).
    psi_memory_some_warn: float = 10.0
    psi_memory_some_fail: float = 60.0
    psi_memory_full_warn: float = 5.0
    psi_memory_full_fail: float = 20.0
    # IO "full" >= 10%: the disk holds everything up (a model paged in from disk, swap).
    psi_io_full_warn: float = 10.0
    # The profile's promises: the engine locks the weights, the CPU governor, the GPU count.
    require_locked: bool = False
    cpu_governor: str | None = None
    gpus_expected: int = 0
    expect_server: bool = True


def threshold_names() -> frozenset[str]:
    """The numeric thresholds a profile may set (verify.thresholds)."""
    return frozenset(f.name for f in fields(Thresholds) if f.type in ("float", float))
