"""The `export ansible` and `export cloud-init` commands: build, export, write, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from provisioner.cli._output import envelope, print_json, print_table, say
from provisioner.converge.inventory import Host, load_inventory, select
from provisioner.errors import UsageError
from provisioner.export import refuse_host_facts, refuse_unexported, write_export
from provisioner.export.ansible import ExportUnit, digest, export_tree, role_names
from provisioner.render.pipeline import Built, build


def _unit(built: Built, hosts: tuple[str, ...] = ()) -> ExportUnit:
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
            built[key] = build(chosen, overrides=host.overrides or None, network=False)
        result = built[key]
        by_digest.setdefault(digest(result.rendered), (result, []))[1].append(host.name)
    return [_unit(b, tuple(names)) for b, names in by_digest.values()], hosts


def export_ansible_command(profile: Path | None, inventory: Path | None, limit: str | None, out_dir: Path,
                           overwrite: bool, as_json: bool) -> int:
    if inventory is None:
        if profile is None:
            raise UsageError("PROFILE is missing", hint="give a profile (file or library name), or -i INVENTORY")
        if limit:
            raise UsageError("--limit needs -i INVENTORY")
        units, hosts = [_unit(build(profile, network=False))], None
    else:
        units, hosts = inventory_units(profile, inventory, limit)
    tree = export_tree(units, hosts)
    write_export(tree, out_dir, overwrite=overwrite)
    roles: list[dict[str, Any]] = [{"role": name, "profile": u.profile_name, "hosts": list(u.hosts) or ["all"],
              "files": len(u.rendered.files)} for name, u in zip(role_names(units), units, strict=True)]
    if as_json:
        print_json(envelope("export", True, None, format="ansible", out=str(out_dir), roles=roles,
                            written=sorted(tree)))
    else:
        say(f"{out_dir}: site.yml and {len(roles)} role(s)" + (", inventory.yml" if hosts is not None else ""))
        print_table("roles",
                    ["role", "profile", "hosts", "files"],
                    [[r["role"], r["profile"], ",".join(r["hosts"]), str(r["files"])] for r in roles])
        say(f"run: ansible-playbook -i {out_dir / 'inventory.yml' if hosts is not None else 'INVENTORY'} "
            f"{out_dir / 'site.yml'}")
    return 0


def export_cloudinit_command(profile: Path, out: Path, overwrite: bool, as_json: bool) -> int:
    from provisioner.export.cloudinit import first_boot_handlers, user_data

    built = build(profile, network=False)
    refuse_unexported(built, "cloud-init")
    refuse_host_facts(built)
    spec = built.spec
    text = user_data(built.rendered, profile_name=spec.profile.metadata.name, service=spec.profile.service.name)
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} exists", hint="choose a new file or pass --overwrite")
    write_export({out.name: text.encode("utf-8")}, out.parent, overwrite=True)
    handlers = first_boot_handlers(built.rendered, spec.profile.service.name)
    summary: dict[str, Any] = {"format": "cloud-init", "out": str(out), "files": len(built.rendered.files),
                               "runcmd_handlers": handlers, "bytes": len(text.encode("utf-8"))}
    if as_json:
        print_json(envelope("export", True, None, **summary))
    else:
        say(f"{out}: #cloud-config with {summary['files']} write_files; first boot runs "
            f"{', '.join(handlers) or 'no handler'}")
    return 0
