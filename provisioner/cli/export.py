"""`provision export ansible|cloud-init`: hand the same rendered result to other engines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provisioner.cli._common import EXIT_OK, command
from provisioner.cli._output import Result, Table, lines
from provisioner.errors import UsageError


def export_ansible_result(profile: Path | None, inventory: Path | None, limit: str | None, out_dir: Path,
                          overwrite: bool) -> Result:
    from provisioner.export import write_export  # pydantic, Jinja2: only when run
    from provisioner.export.ansible import export_tree, role_names
    from provisioner.export.units import inventory_units, unit_of
    from provisioner.render.pipeline import build

    if inventory is None:
        if profile is None:
            raise UsageError("PROFILE is missing", hint="give a profile (file or library name), or -i INVENTORY")
        if limit:
            raise UsageError("--limit needs -i INVENTORY")
        units, hosts = [unit_of(build(profile, network=False, require_lock=True))], None
    else:
        units, hosts = inventory_units(profile, inventory, limit)
    tree = export_tree(units, hosts)
    write_export(tree, out_dir, overwrite=overwrite)
    roles: list[dict[str, Any]] = [{"role": name, "profile": u.profile_name, "hosts": list(u.hosts) or ["all"],
              "files": len(u.rendered.files)} for name, u in zip(role_names(units), units, strict=True)]
    written = lines(f"{out_dir}: site.yml and {len(roles)} role(s)" + (", inventory.yml" if hosts is not None else ""))
    table = Table("roles", ["role", "profile", "hosts", "files"],
                  [[r["role"], r["profile"], ",".join(r["hosts"]), str(r["files"])] for r in roles])
    run = lines(f"run: ansible-playbook -i {out_dir / 'inventory.yml' if hosts is not None else 'INVENTORY'} "
                f"{out_dir / 'site.yml'}")
    return Result(EXIT_OK, {"format": "ansible", "out": str(out_dir), "roles": roles, "written": sorted(tree)},
                  (written, table, run))


def export_cloudinit_result(profile: Path, out: Path, overwrite: bool) -> Result:
    from provisioner.export import refuse_host_facts, refuse_unexported, write_export
    from provisioner.export.cloudinit import first_boot_handlers, user_data
    from provisioner.render.pipeline import build

    built = build(profile, network=False, require_lock=True)
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
    said = lines(f"{out}: #cloud-config with {summary['files']} write_files; first boot runs "
                 f"{', '.join(handlers) or 'no handler'}")
    return Result(EXIT_OK, summary, (said,))


@click.group("export")
def export() -> None:
    """Hand the same result to other engines: an Ansible playbook or cloud-init user-data.

    \b
    Example:
      provision export ansible examples/quickstart.yaml --out ./ansible
      provision export cloud-init examples/quickstart.yaml --out user-data.yaml
    """


@command("ansible", group="export")
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@click.option("-i", "--inventory", type=click.Path(path_type=Path), default=None,
              help="Our (or an Ansible YAML) inventory: one role per distinct rendered result, inventory.yml beside.")
@click.option("--limit", default=None, help="Only these hosts/groups of the inventory (comma-separated, globs).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for site.yml, roles/ (and inventory.yml with -i).")
@click.option("--overwrite", is_flag=True, help="Write into a folder that is not empty.")
def export_ansible(profile: Path | None, inventory: Path | None, limit: str | None, out_dir: Path,
                   overwrite: bool, as_json: bool) -> Result:
    """Write a self-contained playbook and role installing exactly what PROFILE renders.

    Same bytes, modes and owners (ansible.builtin.copy with validate:), the same
    handlers in the same order. -e provision_root_prefix=DIR installs under DIR
    like apply --root; -e provision_restart=true is apply --restart.

    \b
    Example:
      provision export ansible examples/quickstart.yaml --out ./ansible
      ansible-playbook -i hosts.yaml ./ansible/site.yml --check --diff
      provision export ansible -i examples/fleet/inventory.yaml --out ./fleet-ansible
      ansible-playbook -i ./fleet-ansible/inventory.yml ./fleet-ansible/site.yml
    """
    return export_ansible_result(profile, inventory, limit, out_dir, overwrite)


@command("cloud-init", group="export")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The user-data file to write (#cloud-config).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
def export_cloud_init(profile: Path, out: Path, overwrite: bool, as_json: bool) -> Result:
    """Write #cloud-config user-data: write_files with every rendered file, runcmd with
    the handlers a first apply runs (daemon-reload, sysctl, ..., enable --now the server).

    \b
    Example:
      provision export cloud-init examples/quickstart.yaml --out user-data.yaml
      cloud-init schema --config-file user-data.yaml
    """
    return export_cloudinit_result(profile, out, overwrite)


export.add_command(export_ansible)
export.add_command(export_cloud_init)
