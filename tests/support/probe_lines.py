"""Recorded raw outputs (tests/cases/) wrapped in a probe's line format, exactly as its
snippet prints them, for the parser tests of facts/ and the checks of verify/."""

from __future__ import annotations

import re
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


def sample_lines(*, time_s: float = 100.0, gpu: tuple[str, str] | None = None, dmon: str = "", vmstat: str = "",
               psi_memory: str = "", status: str = "", stat: str = "", server: str = "systemd",
               pid: int | None = None, meminfo: str = "") -> str:
    """Recorded raw outputs in the sample probe's line format (facts/sample.py)."""
    out = [f"@mon time {time_s}", "@mon pagesize 4096"]
    if gpu is not None:
        header, row = gpu
        names = [re.sub(r" \[.*\]$", "", n.strip()) for n in header.split(", ")]
        out += ["@mon smi present", f"@mon gpu-fields {','.join(names)}", f"@mon gpu |{row}"]
        out += [f"@mon dmon |{line}" for line in dmon.splitlines()]
    else:
        out.append("@mon smi missing")
    out += [f"@mon vmstat {line}" for line in vmstat.splitlines()
            if line.split(" ")[0] in {"pswpin", "pswpout", "pgmajfault"}]
    out += [f"@mon psi-memory |{line}" for line in psi_memory.splitlines()]
    out += [f"@mon meminfo {line}" for line in meminfo.splitlines()]
    out += ["@mon service llm-server", f"@mon server {server}"]
    if pid is not None:
        out.append(f"@mon pid {pid}")
        out += [f"@mon status |{line}" for line in status.splitlines()
                if line.split(":")[0] in {"Name", "VmRSS", "VmLck", "VmSwap"}]
        out += [f"@mon stat |{line}" for line in stat.splitlines()]
    return "unrelated line\n" + "\n".join(out) + "\n"
