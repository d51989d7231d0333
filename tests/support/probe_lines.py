"""Recorded raw outputs (tests/cases/) wrapped in a probe's line format, exactly as its
snippet prints them, for the parser tests of facts/ and the checks of verify/."""

from __future__ import annotations

from typing import Any

GPU_BLOCKS = ("smi-q", "proc-version", "uname", "vermagic", "modversion", "license", "loaded", "dkms",
              "reboot-pkgs", "xid")


def gpu_lines(raw: dict[str, Any]) -> str:
    """The recorded sections of a tests/cases/gpu case in the GPU probe's output format."""
    out: list[str] = []
    if "smi" in raw:
        out.append(f"@gpu smi {raw['smi']}")
    for csv in raw.get("csv", []):
        out += [f"@gpu rc {csv['name']} {csv.get('rc', 0)}", f"@gpu fields {csv['name']} {csv['fields']}"]
        out += [f"@gpu line {csv['name']} |{ln}" for ln in csv["rows"].splitlines()]
    for block in GPU_BLOCKS:
        if block in raw:
            out += [f"@gpu line {block} |{ln}" for ln in str(raw[block]).splitlines()]
    for status in ("modinfo", "reboot", "log"):
        if status in raw:
            out.append(f"@gpu {status} {raw[status]}")
    return "\n".join(out) + "\n"
