"""Rendered -> a self-contained Ansible playbook and role (pure).

One role per distinct rendered result; each file is an ``ansible.builtin.copy``
of a ``src:`` file in the role (the exact bytes; copy never templates a src),
with provision's mode, owner, validation and handlers. Handlers are defined in
provision's order (plan.HANDLER_ORDER, then the profile's own) because Ansible
runs notified handlers in the order they are defined, not notified.

``provision_root_prefix`` (default "") is prepended to every destination, like
``apply --root``: then provision's system handlers (daemon-reload, sysctl, ...)
are reported as pending by a debug handler instead of run, and the profile's
own handlers run with PROVISION_ROOT set, as under ``apply --root``.

Every string from the profile or inventory that Ansible would otherwise
template (handler commands, validation scripts, inventory values) is written
with the ``!unsafe`` tag, so a ``{{`` in it stays literal text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from provisioner import __version__
from provisioner.converge.inventory import Host
from provisioner.export import (
    export_path,
    handler_chain,
    handler_command,
    is_system_handler,
    notify_of,
    refuse_secrets,
)
from provisioner.render.resources import File, Rendered

ROOT = "{{ provision_root_prefix }}"
LIVE = "provision_root_prefix | length == 0"
TREE = "provision_root_prefix | length > 0"
ENABLE_CHECK = "provision_server_enabled"  # registered by the enable check task

# The same checks as apply.py's, in the form copy's validate: wants: one command
# with %s for the temp file, run without a shell (so `sh -c SCRIPT validate %s`),
# and no other percent sign (copy formats the string with %).
_VALIDATE = {
    "sh": "sh -n %s",
    "env": "sh -c '! grep -v -e \"^#\" -e \"^$\" \"$1\" | grep -qv \"^[A-Za-z_][A-Za-z0-9_]*=\"' validate %s",
    # like apply: every key must exist under /proc/sys, except in a tree
    "sysctl": ("sh -c '[ -z \"$PROVISION_ROOT\" ] || exit 0; "
               "for key in $(sed -n \"s/^\\([a-z0-9_.\\/-]*\\) *=.*/\\1/p\" \"$1\"); do "
               "[ -e \"/proc/sys/$(echo \"$key\" | tr . /)\" ] || { echo \"unknown sysctl key $key\" >&2; exit 1; }; "
               "done' validate %s"),
}
# A unit is verified under its own name in a scratch root (copy's temp file is
# called .source.service), failing on the same messages apply.py fails on.
_VALIDATE_UNIT = ("sh -c 'command -v systemd-analyze >/dev/null 2>&1 || exit 0; vr=$(mktemp -d); "
                  "mkdir -p \"$vr$2\" && cp \"$1\" \"$vr$2/$3\" || exit 1; "
                  "out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --root=\"$vr\" --man=no --generators=no "
                  "\"$2/$3\" 2>&1); rm -rf \"$vr\"; "
                  "if echo \"$out\" | grep -E \"Unknown key|Unknown section|Failed to parse|Invalid|Missing\" >&2; "
                  "then exit 1; fi' validate %s {folder} {name}")


class Unsafe(str):
    """A string Ansible must not template: dumped as ``!unsafe 'text'``."""


class _Dumper(yaml.SafeDumper):
    pass


def _represent_unsafe(dumper: yaml.SafeDumper, value: Unsafe) -> yaml.ScalarNode:
    return dumper.represent_scalar("!unsafe", str(value), style="'")


_Dumper.add_representer(Unsafe, _represent_unsafe)


def dump(data: Any, header: str = "") -> bytes:
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100000,
                     allow_unicode=True, explicit_start=True)
    return (header + text).encode("utf-8")


@dataclass(frozen=True)
class ExportUnit:
    """One distinct rendered result and the inventory hosts that get it."""

    profile_name: str
    service: str
    rendered: Rendered
    hosts: tuple[str, ...] = ()  # empty: the play targets `all`


def digest(rendered: Rendered) -> str:
    """Identity of a rendered result: two hosts with the same digest get the same role."""
    sha = hashlib.sha256()
    for item in rendered.files:
        sha.update(repr((item.path, item.mode, item.owner, item.group, item.validate, item.notify)).encode())
        sha.update(hashlib.sha256(item.content).digest())
    sha.update(repr((rendered.directories, sorted(rendered.handlers.items()), rendered.readiness)).encode())
    return sha.hexdigest()


def role_names(units: list[ExportUnit]) -> list[str]:
    """provision_<profile>; a digest suffix only where two results share a profile name."""
    base = [f"provision_{re.sub(r'[^a-z0-9_]', '_', u.profile_name.lower())}" for u in units]
    return [name if base.count(name) == 1 else f"{name}_{digest(u.rendered)[:8]}"
            for name, u in zip(base, units, strict=True)]


def export_tree(units: list[ExportUnit], hosts: list[Host] | None = None) -> dict[str, bytes]:
    """The whole export: relative path -> bytes. Same input, same bytes."""
    names = role_names(units)
    out: dict[str, bytes] = {}
    plays = []
    for name, unit in zip(names, units, strict=True):
        refuse_secrets(unit.rendered, "Ansible")
        out.update(role_files(name, unit))
        plays.append({"name": f"provision: {unit.profile_name}",
                      "hosts": name if hosts is not None else "all",
                      "gather_facts": False,
                      "roles": [name]})
    header = (f"# Generated by `provision export ansible` (provision {__version__}): the files provision\n"
              "# renders, with its modes, owners, validation and handlers. Regenerate, do not edit.\n"
              "# -e provision_root_prefix=DIR installs under DIR (system handlers reported, not run);\n"
              "# -e provision_restart=true restarts a running model server whose files changed.\n")
    out["site.yml"] = dump(plays, header)
    if hosts is not None:
        out["inventory.yml"] = inventory(hosts, units, names)
    return out


def role_files(role: str, unit: ExportUnit) -> dict[str, bytes]:
    rendered = unit.rendered
    base = f"roles/{role}"
    out = {f"{base}/files/{item.path.lstrip('/')}": item.content for item in rendered.files}
    out[f"{base}/defaults/main.yml"] = dump({"provision_root_prefix": "", "provision_restart": False})
    out[f"{base}/tasks/main.yml"] = dump(tasks(unit))
    out[f"{base}/handlers/main.yml"] = dump(handlers(unit))
    return out


def _server_unit(unit: ExportUnit) -> str | None:
    path = f"/etc/systemd/system/{unit.service}.service"
    return path if any(f.path == path for f in unit.rendered.files) else None


def tasks(unit: ExportUnit) -> list[dict[str, Any]]:
    rendered = unit.rendered
    out: list[dict[str, Any]] = []
    own = {d.path for d in rendered.directories}
    parents = sorted({str(PurePosixPath(f.path).parent) for f in rendered.files} - own)
    if parents:
        # like apply's mkdir -p: created when missing, an existing folder left as it is
        out.append({"name": "folders of the managed files",
                    "ansible.builtin.file": {"path": ROOT + "{{ item }}", "state": "directory"},
                    "loop": [export_path(p, "Ansible") for p in parents]})
    for directory in rendered.directories:
        out.append({"name": f"folder {directory.path}",
                    "ansible.builtin.file": {"path": ROOT + export_path(directory.path, "Ansible"),
                                             "state": "directory", "mode": directory.mode_text,
                                             "owner": directory.owner, "group": directory.group}})
    out += [copy_task(item) for item in rendered.files]
    if _server_unit(unit) is not None:
        # plan owes enable-server on a live systemd host whose server is not enabled
        script = '[ ! -d /run/systemd/system ] || systemctl is-enabled --quiet "$1"'
        out.append({"name": f"is {unit.service}.service enabled (the first apply enables and starts it)",
                    "ansible.builtin.command": {"argv": ["sh", "-c", script, "sh", f"{unit.service}.service"]},
                    "register": ENABLE_CHECK, "changed_when": f"{ENABLE_CHECK}.rc != 0",
                    "failed_when": False, "check_mode": False, "when": LIVE, "notify": ["enable-server"]})
    return out


def copy_task(item: File) -> dict[str, Any]:
    path = export_path(item.path, "Ansible")
    args: dict[str, Any] = {"src": path.lstrip("/"), "dest": ROOT + path, "mode": item.mode_text,
                            "owner": item.owner, "group": item.group}
    check = validate_command(item)
    if check:
        args["validate"] = Unsafe(check)
    task: dict[str, Any] = {"name": f"install {path}", "ansible.builtin.copy": args,
                            "environment": {"PROVISION_ROOT": ROOT}}
    if notify_of(item):
        task["notify"] = list(notify_of(item))
    return task


def validate_command(item: File) -> str:
    if item.validate == "systemd-unit":
        if not item.path.endswith((".service", ".timer")):
            return ""  # a drop-in is verified with its unit by apply; alone it is not a unit
        path = PurePosixPath(item.path)
        return _VALIDATE_UNIT.format(folder=path.parent, name=path.name)
    return _VALIDATE.get(item.validate, "")


def handlers(unit: ExportUnit) -> list[dict[str, Any]]:
    rendered = unit.rendered
    chain = handler_chain(rendered, ("enable-server",) if _server_unit(unit) is not None else ())
    out: list[dict[str, Any]] = []
    for name in chain:
        command = Unsafe(handler_command(rendered, name))
        run = {"ansible.builtin.command": {"argv": ["sh", "-c", command]},
               "environment": {"PROVISION_ROOT": ROOT}}
        if not is_system_handler(name):
            out.append({"name": name, "listen": name, **run})
            continue
        pending = {"name": f"{name} (pending)", "listen": name, "when": TREE,
                   "ansible.builtin.debug": {"msg": f"system handler {name} pending (not run under a root prefix)"}}
        if name == "restart-server":
            out += restart_handlers(unit, run, pending)
            continue
        out.append({"name": name, "listen": name, "when": LIVE, **run})
        out.append(pending)
        if name == "initramfs":
            out.append({"name": "reboot required", "listen": name,
                        "ansible.builtin.debug": {"msg": "reboot required: a kernel module option changed"}})
    return out


def restart_handlers(unit: ExportUnit, run: dict[str, Any], pending: dict[str, Any]) -> list[dict[str, Any]]:
    """restart-server as apply runs it: only with provision_restart (apply --restart),
    never when enable-server just started the server with the new files, then
    waiting for the engine's health endpoint for the service's start timeout."""
    enabled_now = f"not ({ENABLE_CHECK} is defined and {ENABLE_CHECK} is changed)"
    live = [LIVE, enabled_now]
    out = [{"name": "restart-server", "listen": "restart-server", "when": [*live, "provision_restart | bool"], **run}]
    if unit.rendered.readiness is not None:
        url, seconds = unit.rendered.readiness
        out.append({"name": "restart-server: wait until the server answers", "listen": "restart-server",
                    "when": [*live, "provision_restart | bool"],
                    "ansible.builtin.uri": {"url": Unsafe(url), "status_code": 200},
                    "register": "provision_ready", "until": "provision_ready.status == 200",
                    "retries": seconds, "delay": 1})
    out.append({"name": "restart-server (held)", "listen": "restart-server",
                "when": [*live, "not (provision_restart | bool)"],
                "ansible.builtin.debug": {"msg": "restart pending: the model server's files changed; "
                                                 "run again with -e provision_restart=true to restart it"}})
    out.append(pending)
    return out


def inventory(hosts: list[Host], units: list[ExportUnit], names: list[str]) -> bytes:
    """Our inventory as Ansible's: connection settings per host, one group per role,
    and the inventory's own groups."""
    entries: dict[str, dict[str, Any]] = {}
    for host in hosts:
        values: dict[str, Any] = {"ansible_host": Unsafe(host.address)}
        if host.port is not None:
            values["ansible_port"] = host.port
        if host.user:
            values["ansible_user"] = Unsafe(host.user)
        if host.key:
            values["ansible_ssh_private_key_file"] = Unsafe(host.key)
        if host.become:
            values["ansible_become"] = True
        if host.jump:
            values["ansible_ssh_common_args"] = Unsafe(f"-J {host.jump}")
        if host.root:
            values["provision_root_prefix"] = Unsafe(host.root)
        entries[host.name] = values
    children: dict[str, Any] = {}
    for name, unit in zip(names, units, strict=True):
        children[name] = {"hosts": {h: None for h in unit.hosts}}
    groups = sorted({g for host in hosts for g in host.groups})
    for group in groups:
        children.setdefault(group, {"hosts": {h.name: None for h in hosts if group in h.groups}})
    header = "# Generated by `provision export ansible -i`: one group per distinct rendered result.\n"
    return dump({"all": {"hosts": entries, "children": children}}, header)
