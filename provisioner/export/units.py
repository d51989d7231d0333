"""What an export carries: one unit per distinct rendered result (a profile with an
inventory host's overrides), with the hosts that share it."""

from __future__ import annotations

import json
from pathlib import Path

from provisioner.converge.inventory import Host, load_inventory, select
from provisioner.errors import UsageError
from provisioner.export import refuse_host_facts, refuse_unexported
from provisioner.export.ansible import ExportUnit, digest
from provisioner.render.pipeline import Built, build


def unit_of(built: Built, hosts: tuple[str, ...] = ()) -> ExportUnit:
    refuse_unexported(built, "Ansible")
    refuse_host_facts(built)
    profile = built.spec.profile
    return ExportUnit(profile.metadata.name, profile.service.name, built.rendered, hosts)


def inventory_units(profile: Path | None, inventory: Path, limit: str | None) -> tuple[list[ExportUnit], list[Host]]:
    """Each host's rendered result (its profile with its overrides), grouped: one unit
    per distinct result, in inventory order."""
    hosts = select(load_inventory(inventory), limit)
    built: dict[tuple[str, str], Built] = {}
    by_digest: dict[str, tuple[Built, list[str]]] = {}
    for host in hosts:
        chosen = profile or (Path(host.profile) if host.profile else None)
        if chosen is None:
            raise UsageError(f"host {host.name} names no profile in the inventory",
                             hint="give PROFILE on the command line or `profile:` for the host")
        key = (str(chosen), json.dumps(host.overrides, sort_keys=True) if host.overrides else "")
        if key not in built:
            # an export reaches hosts like apply: a branch needs its lock (what llama.cpp loads)
            built[key] = build(chosen, overrides=host.overrides or None, network=False, require_lock=True)
        result = built[key]
        by_digest.setdefault(digest(result.rendered), (result, []))[1].append(host.name)
    return [unit_of(b, tuple(names)) for b, names in by_digest.values()], hosts
