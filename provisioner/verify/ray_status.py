"""verify on a Ray cluster's head: have all nodes joined, with their GPUs?

``ray status`` prints the autoscaler summary: a "Node status" section listing
nodes by type ("Active:" in Ray 2.x since the v2 autoscaler formatter, "Healthy:"
before it; one line " N <type or node id>" per group), "Pending:" and "Recent
failures:", then "Resources" with "Usage:" / "Total Usage:" lines such as
" 0.0/16.0 GPU". The parser is pure and tested on recorded outputs from Ray's and
vLLM's issue trackers (tests/cases/ray/). The probe runs ``ray status`` on the head
in the same gather as every other check.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from provisioner.facts.check import Check

MARK = "@ray-status"
_COUNT = re.compile(r"^\s+(\d+)\s+(\S+)")
_RESOURCE = re.compile(r"^\s+([0-9.]+)(?:[KMGT]?i?B)?/([0-9.]+)(?:[KMGT]?i?B)?\s+(\S+)")
_EMPTY = re.compile(r"^\s+\(no .*\)\s*$")


@dataclass(frozen=True)
class RayStatus:
    active_nodes: int  # nodes up (Active/Healthy; Idle nodes are up too)
    pending: tuple[str, ...]
    failures: tuple[str, ...]
    gpus_total: float  # from the cluster-wide usage line, 0 if none
    gpus_used: float


def probe(address: str, binary: str = "ray") -> str:
    """sh for the gather: the output of ``ray status`` (each line marked) and its exit code."""
    ray = shlex.quote(binary)
    return (f"if command -v {ray} >/dev/null 2>&1; then\n"
            f"    ray_out=$({ray} status --address={shlex.quote(address)} 2>&1) && ray_rc=0 || ray_rc=$?\n"
            f"    printf '%s\\n' \"$ray_out\" | sed 's/^/{MARK} | /'\n"
            f"    printf '%s rc %s\\n' {MARK} \"$ray_rc\"\n"
            f"else\n    printf '%s missing\\n' {MARK}\nfi\n")


def section_text(output: str) -> tuple[str | None, str]:
    """(state, text): state None = not probed, 'missing' = no ray binary, 'ok', 'failed'
    (``ray status`` exited non-zero: no head to talk to)."""
    lines = [ln for ln in output.split("\n") if ln.startswith(MARK)]  # \n only: see Probe.lines
    if not lines:
        return None, ""
    if f"{MARK} missing" in lines:
        return "missing", ""
    body = "\n".join(ln[len(MARK) + 3:] for ln in lines if ln.startswith(f"{MARK} | "))
    return ("ok" if f"{MARK} rc 0" in lines else "failed"), body


def parse(text: str) -> RayStatus:
    """The numbers verify needs from one ``ray status`` output."""
    section = ""
    subsection = ""
    active = 0
    pending: list[str] = []
    failures: list[str] = []
    gpus_total = gpus_used = 0.0
    usage_seen = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in {"Node status", "Resources"}:
            section, subsection = stripped, ""
            continue
        if stripped.startswith("Node:"):  # per-node breakdown (-v): totals were read already
            section = "per-node"
            continue
        if not line.startswith(" ") and stripped.endswith(":"):
            subsection = stripped[:-1]
            continue
        if not stripped or set(stripped) <= {"-", "="} or _EMPTY.match(line):
            continue
        if section == "Node status":
            count = _COUNT.match(line)
            if subsection in {"Active", "Healthy", "Idle"} and count:
                active += int(count.group(1))
            elif subsection == "Pending":
                pending.append(stripped)
            elif subsection == "Recent failures":
                failures.append(stripped)
        elif section == "Resources" and subsection in {"Usage", "Total Usage"} and not usage_seen:
            match = _RESOURCE.match(line)
            if match and match.group(3) == "GPU":
                gpus_used, gpus_total = float(match.group(1)), float(match.group(2))
        if section == "Resources" and subsection in {"Demands", "Total Demands", "Pending Demands",
                                                     "From request_resources"}:
            usage_seen = True
    return RayStatus(active, tuple(pending), tuple(failures), gpus_total, gpus_used)


def checks(output: str, nodes: int, gpus: int) -> list[Check]:
    """All nodes joined with every GPU; nothing pending or failing."""
    state, text = section_text(output)
    if state is None:
        return []
    if state == "missing":
        return [Check("cluster.ray", "fail", "no `ray` on the head's PATH", "Ray installed with vLLM",
                      "install vLLM (it brings Ray) in the environment the units run")]
    if state == "failed":
        first = text.strip().splitlines()[-1] if text.strip() else "no output"
        return [Check("cluster.ray", "fail", first[:200], "a running Ray head",
                      "the Ray head is not running: systemctl status of the head's -ray unit, journalctl -u it")]
    if "Node status" not in text:
        # Ray 2.60 prints "No cluster status. It may take a few seconds for the Ray internal
        # services to start up." (exit 0) until its autoscaler monitor has reported once.
        first = text.strip().splitlines()[0] if text.strip() else "no output"
        return [Check("cluster.ray", "fail", first[:200], "the autoscaler's node status",
                      "Ray's head has just started: run verify again in a few seconds")]
    status = parse(text)
    out = [Check("cluster.nodes", "pass" if status.active_nodes == nodes else "fail",
                 f"{status.active_nodes} node(s) joined", f"{nodes} nodes",
                 None if status.active_nodes == nodes else
                 "a worker has not joined: check its ray unit (journalctl -u) and that the head's port is reachable")]
    out.append(Check("cluster.gpus", "pass" if status.gpus_total >= gpus else "fail",
                     f"{status.gpus_total:g} GPU(s) in the cluster", f"{gpus} GPUs",
                     None if status.gpus_total >= gpus else
                     "a node offers fewer GPUs than its profile: driver, CUDA_VISIBLE_DEVICES or --num-gpus"))
    if status.pending or status.failures:
        out.append(Check("cluster.health", "warn", "; ".join((*status.pending, *status.failures))[:200],
                         "no pending or failed nodes", "see `ray status -v` on the head"))
    return out
