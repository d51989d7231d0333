"""A check: one thing observed on a host held against what was expected.

verify, monitor and the install items all report in this one shape: an id, a
status, what was observed and expected, and a hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["pass", "warn", "fail", "skip"]
ORDER: dict[str, int] = {"fail": 0, "warn": 1, "skip": 2, "pass": 3}


@dataclass(frozen=True)
class Check:
    id: str  # dotted, group first: gpu.present, drift.files, model.sha256, endpoint.context
    status: Status
    observed: str | None = None
    expected: str | None = None
    hint: str | None = None  # what to do; for skip, why it was skipped
    # numbers the check measured (verify records the endpoint's speeds in the host's state)
    measured: tuple[tuple[str, float], ...] = ()



def worst(checks: list[Check]) -> Status:
    return min((c.status for c in checks), key=lambda s: ORDER[s], default="pass")


def failures_first(checks: list[Check]) -> list[Check]:
    return sorted(checks, key=lambda c: (ORDER[c.status], c.id))
