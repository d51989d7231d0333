"""Inventories: hosts with address, port, user, key, profile, target root;
groups with shared settings. Our own format, or an Ansible YAML inventory.

Our format::

    hosts:
      gpu1: {address: 10.0.0.5, user: admin, become: true, profile: profiles/a.yaml}
      gpu2: {address: gpu2.lan}
    groups:
      workstations: {hosts: [gpu1, gpu2], vars: {port: 22, profile: rtx-4090-qwen3-30b-a3b-llamacpp}}

Ansible's (``all:`` with ``hosts``/``children``/``vars``; ``ansible_host``,
``ansible_port``, ``ansible_user``, ``ansible_ssh_private_key_file``,
``ansible_become``, and ``provision_profile`` / ``provision_root``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from provisioner.errors import ProfileError, UsageError
from provisioner.render.cached import cached_value

_HOST_KEYS = {"address", "port", "user", "key", "profile", "root", "state_dir", "become", "jump", "overrides"}
_ANSIBLE = {"ansible_host": "address", "ansible_port": "port", "ansible_user": "user",
            "ansible_ssh_private_key_file": "key", "ansible_become": "become",
            "provision_profile": "profile", "provision_root": "root", "provision_jump": "jump",
            "provision_state_dir": "state_dir", "provision_overrides": "overrides"}


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    port: int | None = None
    user: str | None = None
    key: str | None = None
    profile: str | None = None  # a path (relative to the inventory) or a library name
    root: str = ""
    state_dir: str | None = None  # default: <root>/var/lib/provision
    become: bool = False
    jump: str | None = None
    groups: tuple[str, ...] = field(default_factory=tuple)
    # merged over the host's profile (deeply, like extends): e.g. {runtime: {port: 8081}}
    overrides: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def load_inventory(path: Path) -> list[Host]:
    """The inventory's hosts; parsed once per content (a fleet's inventory rarely changes,
    and parsing it is most of what a no-op run spends in PyYAML)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return _parse(path)  # the parse names what is wrong with the path
    key = json.dumps([hashlib.sha256(raw).hexdigest(), str(path.resolve().parent), str(path)])
    return list(cached_value("inventory", key, lambda: tuple(_parse(path))))


def _parse(path: Path) -> list[Host]:
    from provisioner.profile.yamlread import load_yaml, read_text  # noqa: PLC0415 - PyYAML only when parsed

    label = str(path)
    data, _ = load_yaml(read_text(path, label), label)
    if not isinstance(data, dict):
        raise ProfileError("an inventory is a mapping (hosts:/groups:, or Ansible's all:)", file=label)
    hosts = _ansible(data, label) if "all" in data else _ours(data, label)
    base = path.parent
    resolved = []
    for host in hosts:
        profile = host.profile
        if profile and ("/" in profile or profile.endswith((".yaml", ".yml"))):
            profile = str(base / profile)
        resolved.append(replace(host, profile=profile))
    return resolved


# What each text setting may hold: they reach an SSH connection or a generated script.
_TEXT = {"address": re.compile(r"^[A-Za-z0-9_.:%-]{1,253}$"),
         "user": re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}$"),
         "jump": re.compile(r"^([A-Za-z0-9_.-]{1,32}@)?[A-Za-z0-9_.:-]{1,253}$"),
         "key": re.compile(r"^[^\x00-\x1f\x7f]{1,4096}$"), "profile": re.compile(r"^[^\x00-\x1f\x7f]{1,4096}$"),
         "root": re.compile(r"^/[A-Za-z0-9_./@+:,=-]*$"), "state_dir": re.compile(r"^/[A-Za-z0-9_./@+:,=-]*$")}
_TRUE, _FALSE = (True, "true", "True", "yes", "on"), (False, "false", "False", "no", "off")


def _host(name: str, values: dict[str, Any], groups: tuple[str, ...], label: str) -> Host:
    if not isinstance(name, str) or not _TEXT["address"].match(name):
        raise ProfileError(f"host name {name!r} is not a host name", hint="letters, digits and _.:- only",
                           file=label)
    if not isinstance(values, dict):
        raise ProfileError(f"host {name}: its settings must be a mapping (address:, port:, ...), "
                           f"got {type(values).__name__}", file=label)
    unknown = set(values) - _HOST_KEYS
    if unknown:
        raise ProfileError(f"host {name}: unknown setting {sorted(unknown)[0]!r}",
                           hint=f"allowed: {', '.join(sorted(_HOST_KEYS))}", file=label)
    text = {key: _text(name, key, values.get(key), label) for key in _TEXT}
    become = values.get("become", False)
    if become not in _TRUE + _FALSE:
        raise ProfileError(f"host {name}: become must be true or false, got {become!r}", file=label)
    return Host(name=name, address=text["address"] or name, port=_port(name, values.get("port"), label),
                user=text["user"], key=text["key"], profile=text["profile"],
                root=text["root"] or "", state_dir=text["state_dir"], become=become in _TRUE,
                jump=text["jump"], groups=groups, overrides=_overrides(name, values, label))


def _text(name: str, key: str, value: Any, label: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TEXT[key].match(value):
        shown = value if isinstance(value, str) and len(value) < 60 else type(value).__name__
        raise ProfileError(f"host {name}: {key} {shown!r} is not valid here", file=label,
                           hint="root and state_dir are absolute paths of letters, digits and _./@+:,=-; "
                           "address, user and jump are plain names" if key != "profile" else None)
    return value


def _port(name: str, value: Any, label: str) -> int | None:
    """1-65535, an int or digits: never a bool (YAML's yes) nor a number out of range."""
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit() and len(value) < 6:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ProfileError(f"host {name}: port must be a number from 1 to 65535, got {value!r}", file=label)
    return value


def _overrides(name: str, values: dict[str, Any], label: str) -> dict[str, Any]:
    overrides = values.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ProfileError(f"host {name}: overrides must be a mapping of profile sections", file=label)
    return overrides


def _ours(data: dict[str, Any], label: str) -> list[Host]:
    unknown = set(data) - {"hosts", "groups"}
    if unknown:
        raise ProfileError(f"unknown inventory key {sorted(unknown)[0]!r}", hint="use hosts: and groups:",
                           file=label)
    hosts: dict[str, Any] = {n: v or {} for n, v in _mapping(data.get("hosts"), "hosts", label).items()}
    membership: dict[str, list[str]] = {n: [] for n in hosts}
    merged: dict[str, dict[str, Any]] = {n: {} for n in hosts}
    for group, group_spec in _mapping(data.get("groups"), "groups", label).items():
        spec = _mapping(group_spec, f"group {group}", label)
        members = spec.get("hosts") or []
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise ProfileError(f"group {group}: hosts must be a list of host names", file=label)
        for name in members:
            if name not in hosts:
                raise ProfileError(f"group {group} names unknown host {name!r}", file=label)
            membership[name].append(group)
            merged[name].update(_mapping(spec.get("vars"), f"group {group}: vars", label))
    return [_host(n, {**merged[n], **hosts[n]} if isinstance(hosts[n], dict) else hosts[n],
                  tuple(membership[n]), label) for n in hosts]


def _mapping(value: Any, what: str, label: str) -> dict[str, Any]:
    """A section that must be a mapping (None is an empty one); a list or a word is one clear line."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProfileError(f"{what} must be a mapping of names, got a {type(value).__name__}",
                           hint="write `name: {settings}` lines under it, not a list", file=label)
    return value


def _ansible(data: dict[str, Any], label: str) -> list[Host]:
    found: dict[str, tuple[dict[str, Any], list[str]]] = {}

    def walk(group: str, node: Any, inherited: dict[str, Any]) -> None:
        node = _mapping(node, f"group {group}", label)
        variables = {**inherited, **_mapping(node.get("vars"), f"group {group}: vars", label)}
        for name, host_vars in _mapping(node.get("hosts"), f"group {group}: hosts", label).items():
            values, groups = found.setdefault(name, ({}, []))
            values.update({**variables, **_mapping(host_vars, f"host {name}", label)})
            groups.append(group)
        for child, child_node in _mapping(node.get("children"), f"group {group}: children", label).items():
            walk(child, child_node, variables)

    walk("all", data["all"], {})
    hosts = []
    for name, (values, groups) in found.items():
        ours = {_ANSIBLE[k]: v for k, v in values.items() if k in _ANSIBLE}
        hosts.append(_host(name, ours, tuple(g for g in groups if g != "all"), label))
    return hosts


def select(hosts: list[Host], limit: str | None) -> list[Host]:
    """``--limit a,b,group,gpu*``: names, groups or globs."""
    if not limit:
        return hosts
    patterns = [p.strip() for p in limit.split(",") if p.strip()]
    chosen = [h for h in hosts if any(fnmatch.fnmatch(h.name, p) or p in h.groups for p in patterns)]
    if not chosen:
        raise UsageError(f"--limit {limit} matches no host", hint=f"hosts: {', '.join(h.name for h in hosts)}")
    return chosen


def host_from_arg(text: str) -> Host:
    """``--host [user@]address[:port]``."""
    user = None
    if "@" in text:
        user, text = text.split("@", 1)
    port = None
    if text.count(":") == 1:
        text, port_text = text.split(":")
        if not port_text.isdigit() or not 1 <= int(port_text[:6]) <= 65535:
            raise UsageError(f"--host port must be a number from 1 to 65535, got {port_text!r}")
        port = int(port_text)
    return Host(name=text, address=text, port=port, user=user)
