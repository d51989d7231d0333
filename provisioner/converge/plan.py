"""Desired files + what the host has -> Plan: changes, diffs, handlers (pure).

The plan is exact: a handler in it will run, a handler not in it will not.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from provisioner.errors import ProvisionError
from provisioner.facts.gather import Gathered, PathState, visible
from provisioner.install import InstallChange, fabricmanager, for_host, parse_install_lines
from provisioner.install.packages import unhold_change
from provisioner.render.resources import File, Rendered

Action = Literal["create", "update", "delete"]
REDACTED = "<redacted>"
# Built-in handlers run in this order, then the profile's own in profile order.
HANDLER_ORDER = ("sysusers", "daemon-reload", "sysctl", "tmpfiles", "tuned", "initramfs", "gpu-settings",
                 "enable-server", "enable-metrics", "restart-server")
# Changing these needs the initramfs rebuilt and a reboot to take effect.
REBOOT_PREFIXES = ("/etc/modprobe.d/",)


@dataclass(frozen=True)
class Change:
    path: str
    action: Action
    old: PathState
    new: File | None
    diff: str | None
    mode: tuple[str, str] | None  # (old, new) when it changes
    owner: tuple[str, str] | None  # ("root:root", "llm:llm") when it changes



@dataclass(frozen=True)
class Plan:
    changes: tuple[Change, ...]
    handlers: tuple[str, ...]  # the ones that will run (exact)
    handler_commands: dict[str, str]
    restart_pending: tuple[str, ...]  # changed, but not restarted without --restart
    reboot_required: bool
    pending_builtin: tuple[str, ...] = ()  # --root: system handlers listed, not run
    files: dict[str, File] = field(default_factory=dict)  # the whole desired set
    handler_table: dict[str, str] = field(default_factory=dict)  # every handler's command
    readiness: tuple[str, int] | None = None  # set when restart-server must wait for the server
    warnings: tuple[str, ...] = ()
    installs: tuple[InstallChange, ...] = ()  # in the order apply runs them; pending ones are not run
    install_records: dict[str, Any] = field(default_factory=dict)  # the manifest's installs after apply
    stale_temps: tuple[str, ...] = ()  # temp files a killed run left beside managed paths: removed

    @property
    def nothing_to_do(self) -> bool:
        return not self.changes and not self.handlers and not self.runnable_installs and not self.stale_temps

    @property
    def runnable_installs(self) -> tuple[InstallChange, ...]:
        return tuple(c for c in self.installs if not c.pending)

    @property
    def changed(self) -> bool:
        return not self.nothing_to_do


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hidden(secret: bool, *modes: int | None) -> bool:
    """A diff is shown only of a file anyone on the host may read: a secret, or a file whose
    old or new mode keeps others out (0600, 0640), is redacted from plan and its JSON."""
    return secret or any(mode is not None and not mode & 0o004 for mode in modes)


def _diff(path: str, old: bytes | None, new: bytes | None, secret: bool) -> str | None:
    if secret:
        return REDACTED
    try:
        before = (old or b"").decode("utf-8").splitlines(keepends=True)
        after = (new or b"").decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return "binary file differs"
    text = "".join(difflib.unified_diff(before, after, f"a{path}", f"b{path}"))
    return text or None


def _owner(state: PathState) -> str:
    return f"{state.owner}:{state.group}"


def file_change(item: File, current: PathState, *, allow_symlink: bool = False) -> Change | None:
    """The change that makes ``current`` into ``item``, or None."""
    if current.kind == "dir":
        raise ProvisionError(f"{item.path} is a directory on the target, provision would write a file there",
                             hint="move the directory away or change the destination")
    if current.kind == "symlink" and not allow_symlink:
        raise ProvisionError(f"{item.path} is a symlink (to {current.link_target}) on the target",
                             hint="provision does not write through symlinks: remove the link first")
    if current.kind == "other":
        raise ProvisionError(f"{item.path} exists on the target and is not a regular file")
    want_mode, want_owner = item.mode_text, f"{item.owner}:{item.group}"
    hidden = _hidden(item.secret, item.mode, current.mode)
    if current.kind == "missing":
        return Change(item.path, "create", current, item,
                      _diff(item.path, None, item.content, hidden), None, None)
    same_content = current.sha256 == sha256(item.content)
    mode = None if current.mode == item.mode else (f"{current.mode or 0:04o}", want_mode)
    owner = None if _owner(current) == want_owner else (_owner(current), want_owner)
    if same_content and mode is None and owner is None:
        return None
    diff = None
    if not same_content:
        diff = (_diff(item.path, current.content, item.content, hidden)
                if current.content is not None else "content differs (file too large to show)")
    return Change(item.path, "update", current, item, diff, mode, owner)


def install_plan(rendered: Rendered, gathered: Gathered, root: str
                 ) -> tuple[tuple[InstallChange, ...], dict[str, Any], tuple[str, ...]]:
    """Install changes (the profile's items, then undoing what it dropped), the
    records the new generation's manifest keeps, and notes (DKMS, Secure Boot)."""
    previous: dict[str, Any] = dict((gathered.manifest or {}).get("installs", {}))
    states = parse_install_lines(gathered.output)
    changes: list[InstallChange] = []
    records: dict[str, Any] = {}
    installs = [for_host(item, gathered.facts.values) for item in rendered.installs]
    for item in installs:
        change = item.change(states.of(item.name), root)
        if change is None:
            if not getattr(item, "probe_only", False):  # the DKMS/Secure Boot probe installs nothing
                # already as wanted: the earlier record, else the item's own (installed by an apply
                # that died before recording it), so rollback and unhold know it
                records[item.name] = (getattr(item, "kept_record", None) or previous.get(item.name)
                                      or (item.record() if hasattr(item, "record") else {"kind": item.kind}))
            continue
        changes.append(change)
        if not change.pending:
            records[item.name] = change.record
        elif item.name in previous:
            records[item.name] = previous[item.name]
    wanted = {item.name for item in installs if not getattr(item, "probe_only", False)}
    for name in sorted(set(previous) - wanted):
        record = previous[name]
        if record.get("kind") in ("package", "fabricmanager"):
            undo = unhold_change(record) if record["kind"] == "package" else fabricmanager.unhold_change(record)
            if undo is not None:
                changes.append(undo if not root else InstallChange(
                    undo.name, undo.kind, undo.action, undo.summary + " (pending: not run under --root)",
                    undo.script, undo.record, pending=True))
        # a venv, build or download the profile dropped stays on disk (no longer managed)
    driver = any(c.reboot for c in changes)
    notes = [note for item in installs if hasattr(item, "notes")
             for note in item.notes(states.of(item.name), driver)]
    return tuple(changes), records, tuple(notes)


def make_plan(rendered: Rendered, gathered: Gathered, *, root_mode: bool,
              restart: bool = False, server_active: bool = False, server_enabled: bool | None = None,
              root: str = "") -> Plan:
    """``server_enabled`` False (systemd runs, the unit is not enabled) owes enable-server:
    the first apply on a machine enables and starts the model server."""
    installs, install_records, install_notes = install_plan(rendered, gathered, root)
    changes: list[Change] = []
    for item in rendered.files:
        change = file_change(item, gathered.paths.get(item.path, PathState("missing")))
        if change is not None:
            changes.append(change)
    recorded: dict[str, Any] = (gathered.manifest or {}).get("files", {})
    previous = set(recorded) | _unfinished_deletes(gathered)
    for path in sorted(previous - {f.path for f in rendered.files}):
        current = gathered.paths.get(path, PathState("missing"))
        if current.kind == "file":
            hidden = _hidden(bool(recorded.get(path, {}).get("secret")), current.mode)
            changes.append(Change(path, "delete", current, None,
                                  _diff(path, current.content, None, hidden), None, None))
    owed: set[str] = set(gathered.pending_handlers)
    installed = (gathered.manifest or {}).get("files", {})
    for change in changes:
        if change.new is not None:
            notify = change.new.notify
        else:
            notify = tuple(installed.get(change.path, {}).get("notify", ())) or _notify_of_deleted(change.path)
        owed.update(notify)
        if change.path.startswith(REBOOT_PREFIXES):
            owed.add("initramfs")
    # an installed engine is picked up by restarting the server, if provision manages one
    serves = any("restart-server" in f.notify for f in rendered.files)
    for install in installs:
        if not install.pending:
            owed.update(h for h in install.notify if h != "restart-server" or serves)
    if server_enabled is False and not root_mode:
        owed.add("enable-server")
    if "enable-server" in owed:
        owed.discard("restart-server")  # enable --now starts it with the new files already
    reboot = "initramfs" in owed or any(c.reboot for c in installs if not c.pending)
    ordered = [h for h in HANDLER_ORDER if h in owed]
    ordered += [h for h in rendered.handlers if h in owed and h not in HANDLER_ORDER]
    restart_pending: tuple[str, ...] = ()
    if "restart-server" in ordered and server_active and not restart:
        ordered.remove("restart-server")
        restart_pending = ("restart-server",)
    pending_builtin: tuple[str, ...] = ()
    if root_mode:
        pending_builtin = tuple(h for h in ordered if h in HANDLER_ORDER)
        ordered = [h for h in ordered if h not in HANDLER_ORDER]
    table = {**_BUILTIN_EXTRA, **rendered.handlers}
    commands = {name: table.get(name, "") for name in ordered}
    unknown = [name for name in ordered if not commands[name]]
    if unknown:
        raise ProvisionError(f"handler {unknown[0]!r} is owed (state file pending-handlers) but has no command",
                             hint="it was notified by an earlier run; add it back under handlers")
    readiness = rendered.readiness if restart and server_active and "restart-server" in ordered else None
    return Plan(tuple(sorted(changes, key=lambda c: c.path)), tuple(ordered), commands,
                restart_pending, reboot, pending_builtin,
                {f.path: f for f in rendered.files}, table, readiness, rendered.warnings + install_notes,
                installs, install_records, _own_temps(gathered, root))


def _unfinished_deletes(gathered: Gathered) -> set[str]:
    """The deletions a killed generation owed: listed in its deletes file AND as deletions in
    its manifest, so a hand-edited list can never name a file provision did not manage."""
    owed = {c.get("path") for c in (gathered.manifest or {}).get("changes", []) if c.get("action") == "delete"}
    return set(gathered.unfinished_deletes) & {p for p in owed if isinstance(p, str)}


def _own_temps(gathered: Gathered, root: str) -> tuple[str, ...]:
    """Temp files a killed apply or rollback left (paths as managed, without the root)."""
    return tuple(visible(t, root) for t in gathered.stale_temps)


_BUILTIN_EXTRA = {"initramfs": "update-initramfs -u 2>/dev/null || dracut -f"}


def _notify_of_deleted(path: str) -> tuple[str, ...]:
    """A deleted file owes the handler its kind of file would notify."""
    if path.startswith("/etc/systemd/"):
        return ("daemon-reload",)
    if path.startswith("/etc/sysctl.d/"):
        return ("sysctl",)
    if path.startswith("/etc/tuned/"):
        return ("tuned",)
    return ()
