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


def _host(name: str, values: dict[str, Any], groups: tuple[str, ...], label: str) -> Host:
    unknown = set(values) - _HOST_KEYS
    if unknown:
        raise ProfileError(f"host {name}: unknown setting {sorted(unknown)[0]!r}",
                           hint=f"allowed: {', '.join(sorted(_HOST_KEYS))}", file=label)
    try:
        port = int(values["port"]) if values.get("port") is not None else None
    except (TypeError, ValueError):
        raise ProfileError(f"host {name}: port must be a number", file=label) from None
    become = values.get("become", False)
    return Host(name=name, address=str(values.get("address") or name), port=port,
                user=values.get("user"), key=values.get("key"), profile=values.get("profile"),
                root=str(values.get("root") or ""), state_dir=values.get("state_dir"),
                become=become in (True, "true", "yes", "True"),
                jump=values.get("jump"), groups=groups, overrides=_overrides(name, values, label))


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
    hosts: dict[str, dict[str, Any]] = {n: dict(v or {}) for n, v in (data.get("hosts") or {}).items()}
    membership: dict[str, list[str]] = {n: [] for n in hosts}
    merged: dict[str, dict[str, Any]] = {n: {} for n in hosts}
    for group, group_spec in (data.get("groups") or {}).items():
        spec = group_spec or {}
        for name in spec.get("hosts", []):
            if name not in hosts:
                raise ProfileError(f"group {group} names unknown host {name!r}", file=label)
            membership[name].append(group)
            merged[name].update(spec.get("vars") or {})
    return [_host(n, {**merged[n], **hosts[n]}, tuple(membership[n]), label) for n in hosts]


def _ansible(data: dict[str, Any], label: str) -> list[Host]:
    found: dict[str, tuple[dict[str, Any], list[str]]] = {}

    def walk(group: str, node: dict[str, Any], inherited: dict[str, Any]) -> None:
        variables = {**inherited, **(node.get("vars") or {})}
        for name, host_vars in (node.get("hosts") or {}).items():
            values, groups = found.setdefault(name, ({}, []))
            values.update({**variables, **(host_vars or {})})
            groups.append(group)
        for child, child_node in (node.get("children") or {}).items():
            walk(child, child_node or {}, variables)

    walk("all", data["all"] or {}, {})
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
        if not port_text.isdigit():
            raise UsageError(f"--host port must be a number, got {port_text!r}")
        port = int(port_text)
    return Host(name=text, address=text, port=port, user=user)
