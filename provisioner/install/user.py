"""The service user the unit runs as (``User=``), created before anything uses it.

The same lines go two ways: a ``sysusers.d`` file (rendered, so an image built
with ``--root`` gets the user again from ``systemd-sysusers.service`` at boot,
and a later package cannot lose it), and this install item, which creates the
user at apply time so the very first start finds it. The snippet runs
``systemd-sysusers --root=DIR --inline LINE...`` (sysusers.d(5): ``u`` creates
the user and its group, ``m`` adds it to a group, creating the group if it is
missing; ``--root`` writes that tree's passwd/group/shadow) and falls back to
``useradd``/``usermod --root`` where systemd is absent.

A GPU's device nodes are ``root:video`` or ``root:render`` on distributions that
do not open them to everyone (NVIDIA's ``NVreg_DeviceFileGID``, Debian's udev
rules for render nodes), so a GPU profile's user joins both.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from provisioner.install import InstallChange, InstallKind

q = shlex.quote
GPU_GROUPS = ("video", "render")
NOLOGIN = "/usr/sbin/nologin"


@dataclass(frozen=True)
class ServiceUser:
    user: str
    group: str
    home: str
    groups: tuple[str, ...] = ()
    description: str = "LLM server"

    @property
    def name(self) -> str:
        return f"user:{self.user}"

    @property
    def kind(self) -> InstallKind:
        return "user"

    def sysusers_lines(self) -> list[str]:
        """sysusers.d(5) lines: the group (when it differs from the user's), the user, its groups."""
        lines = [] if self.group == self.user else [f"g {self.group} -"]
        uid = "-" if self.group == self.user else f"-:{self.group}"
        lines.append(f'u {self.user} {uid} "{self.description}" {self.home} {NOLOGIN}')
        lines += [f"m {self.user} {group}" for group in self.groups]
        return lines

    def probe(self, root: str) -> str:
        n = q(self.name)
        return (f"if grep -q '^{self.user}:' {q(root + '/etc/passwd')} 2>/dev/null; then\n"
                f"    printf '@install %s exists yes\\n' {n}\n"
                f"else\n"
                f"    printf '@install %s exists no\\n' {n}\n"
                f"fi\n"
                f"for g in {' '.join(q(g) for g in self.groups)}; do\n"
                f"    if grep -Eq \"^$g:[^:]*:[^:]*:(.*,)?{self.user}(,.*)?$\" {q(root + '/etc/group')} "
                f"2>/dev/null; then printf '@install %s member-%s yes\\n' {n} \"$g\"; fi\n"
                f"done")

    def record(self) -> dict[str, object]:
        return {"kind": "user", "user": self.user, "group": self.group, "home": self.home,
                "groups": list(self.groups)}

    def change(self, found: dict[str, str], root: str) -> InstallChange | None:
        exists = found.get("exists") == "yes"
        missing = [g for g in self.groups if found.get(f"member-{g}") != "yes"]
        if exists and not missing:
            return None
        if exists:
            summary = f"user {self.user}: add to {', '.join(missing)}"
        else:
            summary = (f"user {self.user}: create (home {self.home}"
                       + (f", groups {', '.join(self.groups)}" if self.groups else "") + ")")
        return InstallChange(self.name, "user", "install", summary, self.script(), self.record())

    def script(self) -> str:
        inline = " ".join(q(line) for line in self.sysusers_lines())
        prefix = '"$@"'  # --root DIR under --root, nothing live (useradd refuses an empty --root)
        groups = ",".join(self.groups)
        fallback = [f'grep -q \'^{self.group}:\' "$root/etc/group" 2>/dev/null || '
                    f'groupadd --system {prefix} {q(self.group)}',
                    f'grep -q \'^{self.user}:\' "$root/etc/passwd" 2>/dev/null || '
                    f'useradd --system {prefix} --gid {q(self.group)} --home-dir {q(self.home)} --no-create-home '
                    f'--shell {NOLOGIN} --comment {q(self.description)} {q(self.user)}']
        fallback += [f'grep -q \'^{g}:\' "$root/etc/group" 2>/dev/null || groupadd --system {prefix} {q(g)}'
                     for g in self.groups]
        if groups:
            fallback.append(f"usermod {prefix} --append --groups {q(groups)} {q(self.user)}")
        body = "\n".join(f"    {line}" for line in fallback)
        return (f'mkdir -p "$root/etc"\n'
                f'if [ -n "$root" ]; then set -- --root "$root"; else set --; fi\n'
                f"if command -v systemd-sysusers >/dev/null 2>&1; then\n"
                f'    out=$(systemd-sysusers --root="${{root:-/}}" --inline {inline} 2>&1) || {{\n'
                f'        echo "@error {self.name}: systemd-sysusers failed: $(printf \'%s\' "$out" | tail -n 1)"\n'
                f"        exit 1\n"
                f"    }}\n"
                f"else\n{body}\n"
                f"fi")
