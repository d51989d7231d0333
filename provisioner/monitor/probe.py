"""`provision monitor`: the rates between two samples of a host (the sample itself, its
probe and parser: facts/sample.py; checks: monitor/checks.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from provisioner.facts.sample import Sample


@dataclass(frozen=True)
class Rates:
    """What two samples of the same host say per second (None: not computable)."""

    interval_s: float | None = None
    swap_in_bps: float | None = None  # bytes/s
    swap_out_bps: float | None = None
    major_faults_per_s: float | None = None  # the server's, else the host's
    major_faults_of: Literal["server", "host"] | None = None


def rates(prev: Sample | None, cur: Sample) -> Rates:
    if prev is None or prev.time_s is None or cur.time_s is None or cur.time_s <= prev.time_s:
        return Rates()
    dt = cur.time_s - prev.time_s

    def per_s(a: int | None, b: int | None, scale: float = 1.0) -> float | None:
        if a is None or b is None or b < a:  # a counter going down: a reboot between samples
            return None
        return (b - a) * scale / dt

    swap_in = per_s(prev.pswpin, cur.pswpin, cur.page_size)
    swap_out = per_s(prev.pswpout, cur.pswpout, cur.page_size)
    if cur.server_pid is not None and prev.server_pid == cur.server_pid \
            and (faults := per_s(prev.server_majflt, cur.server_majflt)) is not None:
        return Rates(dt, swap_in, swap_out, faults, "server")
    host = per_s(prev.pgmajfault, cur.pgmajfault)
    return Rates(dt, swap_in, swap_out, host, "host" if host is not None else None)
