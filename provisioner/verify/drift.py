"""Drift: the same plan code as apply (no second diff engine) for the files, and
the live values read back from the running system.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from provisioner.converge.plan import Plan
from provisioner.facts.check import Check
from provisioner.profile.resolve import Spec


def live_probe(spec: Spec, sysctl_keys: list[str]) -> str:
    """sh that prints the live values verify compares: ``@live NAME VALUE``."""
    service = spec.profile.service.name
    keys = " ".join(shlex.quote(k) for k in sysctl_keys)
    return f"""for key in {keys}; do
    file="/proc/sys/$(printf '%s' "$key" | tr . /)"
    if [ -r "$file" ]; then printf '@live sysctl %s %s\\n' "$key" "$(tr '\\t' ' ' < "$file")"; fi
done
if [ -r /sys/kernel/mm/transparent_hugepage/enabled ]; then
    printf '@live thp %s\\n' "$(sed 's/.*\\[\\(.*\\)\\].*/\\1/' /sys/kernel/mm/transparent_hugepage/enabled)"
fi
printf '@live hugepages %s\\n' "$(awk '/^HugePages_Total:/ {{print $2}}' /proc/meminfo)"
if [ -d /run/systemd/system ]; then
    printf '@live memlock %s\\n' "$(systemctl show -p LimitMEMLOCK --value {service}.service 2>/dev/null)"
    printf '@live enabled %s\\n' "$(systemctl is-enabled {service}.service 2>/dev/null || true)"
    printf '@live active %s\\n' "$(systemctl is-active {service}.service 2>/dev/null || true)"
fi
"""


@dataclass(frozen=True)
class Live:
    sysctl: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)


def parse_live(output: str) -> Live:
    sysctl: dict[str, str] = {}
    values: dict[str, str] = {}
    for line in output.split("\n"):  # a host's answer: \n ends a line, nothing else
        if line.startswith("@live sysctl "):
            _, _, key, *rest = line.split(" ", 3)
            sysctl[key] = " ".join(" ".join(rest).split())
        elif line.startswith("@live "):
            _, name, *rest = line.split(" ", 2)
            values[name] = rest[0].strip() if rest else ""
    return Live(sysctl, values)


def file_checks(plan: Plan) -> list[Check]:
    """Files changed by hand (or never applied), with the diff; exactly what plan shows."""
    if not plan.changes:
        return [Check("drift.files", "pass", f"{len(plan.files)} files as rendered", "no changes")]
    out = []
    for change in plan.changes:
        detail = change.diff or ""
        if change.mode:
            detail += f"\nmode {change.mode[0]} -> {change.mode[1]}"
        if change.owner:
            detail += f"\nowner {change.owner[0]} -> {change.owner[1]}"
        observed = {"create": "missing", "delete": "still there, no longer in the profile",
                    "update": "differs"}[change.action]
        out.append(Check(f"drift.file:{change.path}", "fail", f"{observed}{chr(10) + detail if detail else ''}",
                         "as rendered", "run `provision apply` (or `plan` to see the diff)"))
    return out


def live_checks(spec: Spec, wanted_sysctl: dict[str, str], live: Live, *, root_mode: bool) -> list[Check]:
    if root_mode:
        return [Check("drift.live", "skip", hint="--root: a tree has no running system to read back")]
    p = spec.profile
    out: list[Check] = []
    for key, want in sorted(wanted_sysctl.items()):
        got = live.sysctl.get(key)
        if got is None:
            out.append(Check(f"drift.sysctl:{key}", "fail", "no such key", want, "the kernel does not know it"))
        else:
            same = " ".join(got.split()) == " ".join(want.split())
            out.append(Check(f"drift.sysctl:{key}", "pass" if same else "fail", got, want,
                             None if same else "run `sysctl --system` (or reboot)"))
    if p.os.tuning == "sysctl":
        thp = live.values.get("thp")
        if thp is None:
            out.append(Check("drift.thp", "skip", hint="/sys/kernel/mm/transparent_hugepage is not readable"))
        else:
            ok = thp == p.os.transparent_hugepages
            out.append(Check("drift.thp", "pass" if ok else "fail", thp, p.os.transparent_hugepages,
                             None if ok else "run `systemd-tmpfiles --create`"))
    if p.os.hugepages.count and p.os.hugepages.size == "2MiB":
        got_pages = live.values.get("hugepages", "0")
        ok = got_pages.isdigit() and int(got_pages) >= p.os.hugepages.count
        out.append(Check("drift.hugepages", "pass" if ok else "fail", got_pages, str(p.os.hugepages.count),
                         None if ok else "memory is fragmented or reserved late: allocate at boot"))
    if "active" not in live.values:
        out.append(Check("drift.service", "skip", hint="systemd is not running here"))
        return out
    want_memlock = "infinity" if p.os.memlock == "unlimited" else str(p.os.memlock)
    memlock = live.values.get("memlock", "")
    out.append(Check("drift.memlock", "pass" if memlock == want_memlock else "fail", memlock, want_memlock,
                     "run `systemctl daemon-reload` and restart the server"))
    enabled = live.values.get("enabled", "")
    out.append(Check("drift.enabled", "pass" if enabled == "enabled" else "warn", enabled, "enabled",
                     f"systemctl enable {p.service.name}.service"))
    active = live.values.get("active", "")
    out.append(Check("drift.active", "pass" if active == "active" else "fail", active, "active",
                     f"journalctl -u {p.service.name}.service"))
    return out


