"""Hand what provision renders to other engines: Ansible and cloud-init.

The exports are pure functions of ``Rendered`` (the same files, bytes, modes,
owners and handlers that ``provision render`` and ``apply`` use), so they
cannot drift from provision's own result. What both need lives here: the
handler chain in provision's order, and writing an export deterministically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from provisioner.converge.plan import HANDLER_ORDER, REBOOT_PREFIXES, Plan, make_plan
from provisioner.errors import RenderError, UsageError
from provisioner.facts.gather import Facts, Gathered
from provisioner.render.files import profile_facts, render
from provisioner.render.pipeline import Built
from provisioner.render.resources import File, Rendered

# A path we put inside another engine's templated string: the characters of
# systemd unit paths (docs/safety.md, "What reaches a file"), nothing Jinja reads.
_EXPORT_PATH = re.compile(r"^/[A-Za-z0-9_./@+:,=-]{1,4095}$")


def export_path(path: str, engine: str) -> str:
    if not _EXPORT_PATH.match(path) or "/../" in path or path.endswith("/.."):
        raise RenderError(f"{path!r} cannot be exported to {engine}: only letters, digits and _./@+:,=- "
                          "are allowed in exported paths",
                          hint="rename the destination under files: (no spaces, braces or percent signs)")
    return path


def refuse_secrets(rendered: Rendered, engine: str) -> None:
    """A file marked secret would sit in clear in the export: refuse it.

    provision's own templates never hold a secret (the run script reads it from
    the environment or a systemd credential at run time), so this only stops a
    file a later feature marks secret from leaking into a playbook or user-data."""
    for item in rendered.files:
        if item.secret:
            raise RenderError(f"{item.path} holds a secret and would be written in clear into the {engine} export",
                              hint="name the secret under secrets: (from_env or from_file) so the file "
                              "reads it at run time instead of holding it")


def refuse_unexported(built: Built, engine: str) -> None:
    """What an export does not carry yet must stop it, not vanish from it: the items of
    `install:` (packages, engine, model download) and a cluster's per-node files."""
    profile = built.spec.profile
    # the service user travels as its sysusers.d file and the sysusers handler; a probe-only item
    # (the fabric manager on auto: the export cannot see the host's NVSwitches) installs nothing
    items = [item.name for item in built.rendered.installs
             if item.kind != "user" and not getattr(item, "probe_only", False)]
    if items:
        raise RenderError(f"{profile.metadata.name} installs {', '.join(items)} (install:), which the {engine} "
                          "export does not carry: the exported host would lack them",
                          hint="converge with `provision apply` (it installs them), or export a profile "
                          "without install: and install those by other means")
    if profile.cluster is not None:
        raise RenderError(f"{profile.metadata.name} is a cluster of {len(profile.cluster.nodes)} nodes, each "
                          f"with its own files; the {engine} export renders one result",
                          hint="converge a cluster with `provision apply -i INVENTORY` (each host gets its "
                          "node's files)")


def refuse_host_facts(built: Built) -> None:
    """An export is rendered once, without a host, like `provision render`; apply renders
    again with each host's facts. A template reading facts (cpus, mem_total_kb) would
    give a host other bytes than the export: found by rendering with other facts."""
    facts = profile_facts(built.spec)
    other = {name: str(int(value) * 2 + 1) for name, value in facts.items()}
    again = render(built.spec, built.placement, other)
    for before, after in zip(built.rendered.files, again.files, strict=True):
        if before.content != after.content:
            raise RenderError(f"{before.path} (template {before.template}) reads the host's facts, so each host "
                              "would get other bytes than an export made without a host",
                              hint="write the value into the profile (vars:, hardware:) instead of reading "
                              "facts, or converge with `provision apply`")


def notify_of(item: File) -> tuple[str, ...]:
    """The handlers a change of this file owes, as plan.make_plan counts them."""
    notify = list(item.notify)
    if item.path.startswith(REBOOT_PREFIXES) and "initramfs" not in notify:
        notify.append("initramfs")
    return tuple(notify)


def handler_chain(rendered: Rendered, owed: tuple[str, ...] = ()) -> list[str]:
    """Every handler a new file notifies (and ``owed``), in provision's run order:
    plan.HANDLER_ORDER, then the profile's own in profile order (make_plan decides)."""
    notified = list(first_apply(rendered, server_enabled=None).handlers)
    wanted = set(notified) | set(owed)
    return ([name for name in HANDLER_ORDER if name in wanted]
            + [name for name in notified if name not in HANDLER_ORDER]
            + [name for name in owed if name not in HANDLER_ORDER and name not in notified])


def first_apply(rendered: Rendered, *, server_enabled: bool | None) -> Plan:
    """provision's own plan for a live machine that has none of the files yet
    (``server_enabled`` False: systemd runs and the server is not enabled)."""
    fresh = Gathered(Facts({}), {}, 0, None, ())
    return make_plan(rendered, fresh, root_mode=False, server_enabled=server_enabled)


def handler_command(rendered: Rendered, name: str) -> str:
    table = first_apply(rendered, server_enabled=None).handler_table
    if name not in table:
        raise RenderError(f"handler {name!r} is notified but has no command",
                          hint="define it under handlers: in the profile")
    return table[name]


def is_system_handler(name: str) -> bool:
    """provision's own handlers touch the running system (systemd, sysctl): under a
    root prefix they are reported as pending, never run; the profile's run always."""
    return name in HANDLER_ORDER


def write_export(files: dict[str, bytes], out_dir: Path, *, overwrite: bool) -> list[Path]:
    """Write ``files`` (relative path -> bytes) under out_dir, 0644 (0755 for folders)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UsageError(f"--out {out_dir} is not empty", hint="choose an empty folder or pass --overwrite")
    written = []
    for relative, data in sorted(files.items()):
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.provision-tmp")
        temp.write_bytes(data)
        os.chmod(temp, 0o644)
        os.replace(temp, target)
        written.append(target)
    return written
