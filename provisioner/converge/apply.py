"""Plan -> ONE POSIX sh script that converges a host, fed on stdin.

Order, so that a kill at any moment leaves every file entirely old or new and
a failed check changes nothing:

1. take the lock (flock on the state dir), or fail naming the holder;
2. check every path still has the hash the plan saw ("changed since plan");
3. write each new file to a temp file in its own directory, fsync, validate;
   any failure removes the temps and exits before anything is replaced;
3b. run the install snippets (packages in one apt-get, venvs, builds,
   downloads), each leaving its old or new state; a failed one removes the
   temps and exits before any file is replaced or a generation recorded;
4. record the generation (backups of what is replaced, manifest, the handlers
   now owed) and make it the last one;
5. rename each temp over its target, delete what the profile no longer has,
   fsync the directories, mark the generation complete;
6. run the handlers in order, each struck from the owed list when done.

``PROVISION_FAILPOINT=N`` in the script's environment kills it with SIGKILL at
step N (tests use it to prove step 5's promise for every N).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from provisioner.converge.guard import guards, install_paths
from provisioner.converge.plan import Change, Plan, sha256
from provisioner.converge.shwrite import lines_to, write_bytes
from provisioner.facts.gather import PathState
from provisioner.install import EXIT_INSTALL, InstallChange
from provisioner.install.packages import merged

# Exit codes of the script (mapped to messages by the caller).
EXIT_LOCKED, EXIT_CHANGED, EXIT_INVALID, EXIT_HANDLER, EXIT_NOT_READY = 3, 4, 5, 6, 7


@dataclass(frozen=True)
class ApplyInputs:
    plan: Plan
    root: str  # "" for the live system, else the tree managed as /
    state_dir: str  # provision's state dir on the host
    generation: int  # the number this apply records
    expected_last: int  # the last generation the plan saw
    profile_name: str
    time: str  # ISO time for the manifest (state, never a managed file)
    wait_lock: float = 0.0
    run_builtin_handlers: bool = True


def q(text: str) -> str:
    return shlex.quote(text)


def _old_json(state: PathState) -> dict[str, Any] | None:
    if state.kind != "file":
        return None
    return {"sha256": state.sha256, "mode": f"{state.mode or 0:04o}", "owner": state.owner,
            "group": state.group}


def manifest(inputs: ApplyInputs) -> dict[str, Any]:
    plan = inputs.plan
    return {
        "generation": inputs.generation,
        "time": inputs.time,
        "profile": inputs.profile_name,
        "files": {path: {"sha256": sha256(f.content), "mode": f.mode_text, "owner": f.owner,
                         "group": f.group, "secret": f.secret, "notify": list(f.notify)}
                  for path, f in sorted(plan.files.items()) if f.managed},
        "changes": [{"path": c.path, "action": c.action, "old": _old_json(c.old)}
                    for c in plan.changes],
        "handlers": list(plan.handlers),
        "handler_commands": plan.handler_table,
        "installs": plan.install_records,
        "install_changes": [c.listing() for c in plan.runnable_installs],
    }


def apply_script(inputs: ApplyInputs) -> str:
    """The script; its body is one function called on its last line, so a script cut
    short in transit (sh runs what it has read) is a syntax error and does nothing."""
    return "provision_apply() {\n" + _body(inputs) + "}\nprovision_apply\n"


def _body(inputs: ApplyInputs) -> str:
    plan, root = inputs.plan, inputs.root
    out = [_PRELUDE.replace("@ROOT@", q(root)).replace("@STATE@", q(inputs.state_dir))
           .replace("@GUARDS@", guards(root, inputs.state_dir, [c.path for c in plan.changes]
                                       + install_paths([c.record for c in plan.runnable_installs])))]
    lock = f"flock -w {inputs.wait_lock:g} 9" if inputs.wait_lock else "flock -n 9"
    out.append(f"""exec 9>>"$state/lock"
if ! {lock}; then
    echo "@error locked by another apply (pid $(cat "$state/lock.pid" 2>/dev/null || echo unknown))"
    exit {EXIT_LOCKED}
fi
echo $$ > "$state/lock.pid"
trap 'rm -f $temps' EXIT
fp 1""")
    out.append(f'[ "$(cat "$state/last" 2>/dev/null || echo 0)" = {inputs.expected_last} ] '
               f'|| changed "$state/last"')
    out.append(_checks(plan.changes, root))
    if plan.stale_temps:  # left by a killed run whose plan is no longer the current one
        out.append("rm -f " + " ".join(q(root + t) for t in plan.stale_temps))
    if not plan.changes and not plan.runnable_installs:  # only handlers owed by an earlier run that died
        out.append(_handlers(inputs))
        out.append("echo @ok")
        return "\n".join(out) + "\n"
    # Temp files of an earlier run killed mid-way (SIGKILL skips the trap).
    dirs = sorted({str(PurePosixPath(root + c.path).parent) for c in plan.changes})
    out.append("rm -f " + " ".join(f"{q(d)}/.*.provision-new-*" for d in dirs) + " 2>/dev/null || true")
    new_dirs = sorted({str(PurePosixPath(root + c.path).parent) for c in plan.changes if c.new is not None})
    if new_dirs:
        out.append("mkdir -p " + " ".join(q(d) for d in new_dirs))
    step = 1
    temps: list[tuple[Change, str]] = []
    for index, change in enumerate(c for c in plan.changes if c.new is not None):
        temp = _temp_path(root + change.path, index)
        temps.append((change, temp))
        out.append(_write(change, temp))
        step += 1
        out.append(f"fp {step}")
    out.append(_modes_owners_sync(temps, root))
    out.extend(_validate(c.new.validate, t, c.path, root) for c, t in temps if c.new is not None)
    out.append(_validate_units(plan, temps, root))
    out.append('[ "$invalid" = 0 ] || { rm -f $temps; exit ' + str(EXIT_INVALID) + "; }")
    for name, snippet in install_steps(plan.runnable_installs):
        out.append(_install(name, snippet))
        step += 1
        out.append(f"fp {step}")
    out.append(_record_generation(inputs))
    step += 1
    out.append(f"fp {step}")
    for change, temp in temps:
        target = q(root + change.path)
        out.append(f"mv -f {q(temp)} {target}")
        step += 1
        out.append(f"fp {step}")
    for change in plan.changes:
        if change.action == "delete":
            out.append(f"rm -f {q(root + change.path)}")
            step += 1
            out.append(f"fp {step}")
    if not root and temps:
        # Files written under a temp name carry the temp's SELinux label: restore the policy's.
        targets = " ".join(q(c.path) for c, _ in temps)
        out.append(f"if command -v selinuxenabled >/dev/null 2>&1 && selinuxenabled; then "
                   f"restorecon -F {targets} || true; fi")
    if dirs:
        out.append("sync " + " ".join(q(d) for d in dirs) + " 2>/dev/null || sync")
    out.append('touch "$gen/complete"; sync "$gen" "$state" 2>/dev/null || true')
    step += 1
    out.append(f"fp {step}")
    out.append(_handlers(inputs))
    out.append("echo @ok")
    return "\n".join(out) + "\n"


_PRELUDE = r"""set -eu
umask 022
LC_ALL=C
export LC_ALL
root=@ROOT@
state=@STATE@
temps=""
invalid=0
fp() { if [ "${PROVISION_FAILPOINT:-0}" = "$1" ]; then kill -9 $$; fi; }
changed() { echo "@error changed since plan: ${1#"$root"}"; exit 4; }
bad() { echo "@invalid $1: $2"; invalid=1; }
hash_of() { if [ -L "$1" ]; then echo symlink; elif [ -f "$1" ]; then sha256sum < "$1" | cut -c1-64; \
    elif [ -e "$1" ]; then echo other; else echo absent; fi; }
@GUARDS@
mkdir -p "$state/generations"
"""


def install_steps(installs: tuple[InstallChange, ...]) -> list[tuple[str, str]]:
    """(name, sh) in run order: every package change merged into one apt-get, first
    (a driver before the engine that needs it), then the other items in order."""
    packages = [c for c in installs if c.kind == "package"]
    steps = [("packages", merged(packages))] if packages else []
    return steps + [(c.name, c.script) for c in installs if c.kind != "package"]


def _install(name: str, snippet: str) -> str:
    """One install snippet in a subshell: its failure stops the apply before any file is replaced.

    The subshell runs as a plain command, not as an ``if`` condition: sh ignores
    ``set -e`` inside a condition (POSIX, "set -e"), and a snippet relies on it. It runs
    without the lock's fd 9: a process it leaves behind for a moment (a download's progress
    ticker is in a ``sleep``) would otherwise hold the lock after the apply ended."""
    return (f"echo {q('@install-start ' + name)}\n"
            f"set +e\n"
            f"( set -eu\n{snippet}\n) 9>&-\n"
            f"rc=$?\n"
            f"set -e\n"
            f"if [ \"$rc\" = 0 ]; then\n"
            f"    echo {q('@install-ok ' + name)}\n"
            f"else\n"
            f"    echo {q('@error install ' + name + ' failed; no file was replaced')}\n"
            f"    rm -f $temps\n"
            f"    exit {EXIT_INSTALL}\n"
            f"fi")


def _checks(changes: tuple[Change, ...], root: str) -> str:
    """Every path still as the plan saw it: one sha256sum -c for all files, builtins for the rest."""
    lines = []
    hashed = [(c.old.sha256, root + c.path) for c in changes if c.old.kind == "file"]
    for change in changes:
        path = q(root + change.path)
        if change.old.kind == "file":
            lines.append(f"[ -L {path} ] && changed {path}")
        else:
            lines.append(f"{{ [ -e {path} ] || [ -L {path} ]; }} && changed {path}")
    if hashed:
        listing = "\n".join(f"{digest}  {path}" for digest, path in hashed)
        # On a mismatch, name the file (the slow path runs only when something changed).
        lines.append(f"if ! printf '%s\\n' {q(listing)} | sha256sum -c --status 2>/dev/null; then")
        lines += [f'    [ "$(hash_of {q(path)})" = {digest} ] || changed {q(path)}' for digest, path in hashed]
        lines.append("fi")
    return "\n".join(lines)


def _temp_path(target: str, index: int) -> str:
    path = PurePosixPath(target)
    return str(path.parent / f".{path.name}.provision-new-{index}")


def _write(change: Change, temp: str) -> str:
    assert change.new is not None
    return f'temps="$temps {q(temp)}"\n' + write_bytes(change.new.content, q(temp))


def _modes_owners_sync(temps: list[tuple[Change, str]], root: str) -> str:
    """chmod and chown grouped by value, one sync for all: one fork per distinct value."""
    by_mode: dict[str, list[str]] = {}
    by_owner: dict[tuple[str, str], list[str]] = {}
    for change, temp in temps:
        assert change.new is not None
        by_mode.setdefault(change.new.mode_text, []).append(q(temp))
        by_owner.setdefault((change.new.owner, change.new.group), []).append(q(temp))
    lines = [f"chmod {mode} {' '.join(files)}" for mode, files in sorted(by_mode.items())]
    for (owner, group), files in sorted(by_owner.items()):
        chown = f"chown {q(owner)}:{q(group)} {' '.join(files)}"
        if root:
            # An image tree's users may not exist on the building host yet.
            lines.append(f"if id -u {q(owner)} >/dev/null 2>&1 && getent group {q(group)} >/dev/null 2>&1; "
                         f"then {chown}; else echo {q(f'@warn {owner}:{group} does not exist here; left as')} "
                         f"\"$(id -un)\"; fi")
        else:
            lines.append(chown)
    if temps:
        lines.append("sync " + " ".join(q(t) for _, t in temps) + " 2>/dev/null || true")
    return "\n".join(lines)


def _validate(kind: str, temp: str, dest: str, root: str) -> str:
    t, d = q(temp), q(dest)
    if kind == "sh":
        return f"sh -n {t} 2>/dev/null || bad {d} 'shell syntax error (sh -n)'"
    if kind == "env":
        return (f"if grep -v -e '^#' -e '^$' {t} | grep -qv '^[A-Za-z_][A-Za-z0-9_]*='; then "
                f"bad {d} 'not KEY=value lines'; fi")
    if kind == "quadlet":
        # Podman's own parser, where installed: QUADLET_UNIT_DIRS=DIR podman-system-generator --dryrun
        # (podman-systemd.unit(5), "Debugging a limited set of unit files"); skipped without podman.
        name = q(PurePosixPath(dest).name)
        return (f"for g in ${{PROVISION_QUADLET:-}} /usr/lib/systemd/system-generators/podman-system-generator "
                f"/usr/libexec/podman/quadlet; do [ -x \"$g\" ] && break; g=; done\n"
                f"if [ -n \"$g\" ]; then vq=$(mktemp -d); cp {t} \"$vq\"/{name}; "
                f"if ! QUADLET_UNIT_DIRS=\"$vq\" \"$g\" --dryrun >/dev/null 2>\"$vq/err\"; then "
                f"bad {d} \"quadlet: $(grep -v '^$' \"$vq/err\" | head -n 1)\"; fi; rm -rf \"$vq\"; fi")
    if kind == "sysctl" and not root:
        return (f"for key in $(sed -n 's/^\\([a-z0-9_.\\/-]*\\) *=.*/\\1/p' {t}); do "
                f"[ -e \"/proc/sys/$(echo \"$key\" | tr . /)\" ] || bad {d} \"unknown sysctl key $key\"; done")
    return ""


def _validate_units(plan: Plan, temps: list[tuple[Change, str]], root: str) -> str:
    """systemd-analyze verify every service with its new drop-ins, in a scratch root."""
    units = [f for f in plan.files.values() if f.validate == "systemd-unit"]
    if not units:
        return ""
    temp_of = {c.path: t for c, t in temps}
    lines = ["if command -v systemd-analyze >/dev/null 2>&1; then",
             "    vr=$(mktemp -d)"]
    for item in units:
        source = temp_of.get(item.path, root + item.path)
        lines.append(f"    mkdir -p \"$vr\"{q(str(PurePosixPath(item.path).parent))}")
        lines.append(f"    cp {q(source)} \"$vr\"{q(item.path)}")
    for item in units:
        if item.path.endswith((".service", ".timer")):
            lines.append(
                f"    out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --root=\"$vr\" --man=no "
                f"--generators=no {q(item.path)} 2>&1 || true)\n"
                f"    if printf '%s\\n' \"$out\" | grep -E 'Unknown key|Unknown section|Failed to parse|"
                f"Invalid|Missing' >/dev/null; then bad {q(item.path)} \"$(printf '%s' \"$out\" | "
                f"grep -E 'Unknown|Failed to parse|Invalid|Missing' | head -n 1)\"; fi")
    lines.append('    rm -rf "$vr"')
    lines.append("fi")
    return "\n".join(lines)


def _record_generation(inputs: ApplyInputs) -> str:
    plan, root = inputs.plan, inputs.root
    data = json.dumps(manifest(inputs), indent=1, sort_keys=True).encode()  # ASCII: ensure_ascii
    lines = [f'gen="$state/generations/{inputs.generation}"', 'rm -rf "$gen"',
             'mkdir -p "$gen/backup"']
    for change in plan.changes:
        if change.old.kind == "file":
            backup = f'"$gen/backup"{q(change.path)}'
            lines.append(f'mkdir -p "$(dirname {backup})" && cp -p {q(root + change.path)} {backup}')
    paths = sorted(p for p, f in plan.files.items() if f.managed)
    # the deletions this generation owes: a kill before they are done must not lose them
    deletes = [c.path for c in plan.changes if c.action == "delete"]
    owed = list(plan.handlers)  # --root's system handlers are reported, never owed
    lines += [write_bytes(data, '"$gen/manifest.json"'),
              lines_to(paths, '"$gen/paths"'), lines_to(deletes, '"$gen/deletes"'),
              lines_to(owed, '"$state/pending-handlers"') if owed else 'rm -f "$state/pending-handlers"',
              'sync "$gen/manifest.json" 2>/dev/null || true',
              f'echo {inputs.generation} > "$state/last.new" && mv -f "$state/last.new" "$state/last"']
    return "\n".join(lines)


_WAIT_READY = r"""wait_ready() {
    url=$1; limit=${PROVISION_READY_TIMEOUT:-$2}; waited=0
    while [ "$waited" -lt "$limit" ]; do
        if command -v curl >/dev/null 2>&1; then
            curl -fsS -o /dev/null --max-time 5 "$url" 2>/dev/null && return 0
        elif command -v wget >/dev/null 2>&1; then
            wget -q -O /dev/null -T 5 "$url" 2>/dev/null && return 0
        else
            echo "@warn neither curl nor wget on the host: did not wait for $url"
            return 0
        fi
        sleep 1
        waited=$((waited + 1))
    done
    return 1
}"""


def _restore(inputs: ApplyInputs) -> str:
    """Put back what this generation replaced, rerun the handlers, restart the old server."""
    plan, root = inputs.plan, inputs.root
    lines = []
    for change in plan.changes:
        target = q(root + change.path)
        if change.old.kind == "file":
            temp = q(_temp_path(root + change.path, 9999))
            lines.append(f'    cp -p "$gen/backup"{q(change.path)} {temp} && mv -f {temp} {target}')
        else:
            lines.append(f"    rm -f {target}")
    lines.append(f'    echo {inputs.expected_last} > "$state/last"')
    lines.append(f'    mv "$gen" "$state/generations/failed-{inputs.generation}-$$"')
    for name in plan.handlers:
        if name != "restart-server":
            lines.append(f"    PROVISION_ROOT=\"$root\" sh -c {q(plan.handler_commands[name])} || true")
    lines.append(f"    PROVISION_ROOT=\"$root\" sh -c {q(plan.handler_commands['restart-server'])} || true")
    lines.append('    rm -f "$state/pending-handlers"')
    return "\n".join(lines)


def _handlers(inputs: ApplyInputs) -> str:
    plan = inputs.plan
    lines: list[str] = []
    if plan.readiness is not None:
        lines.append(_WAIT_READY)
    for name in plan.handlers:
        command = plan.handler_commands[name]
        if name == "restart-server" and plan.readiness is not None:
            url, seconds = plan.readiness
            lines.append(_restart_and_wait(inputs, command, url, seconds))
            continue
        # Run only while still owed: another apply may have run it since the plan.
        lines.append(
            f"if ! grep -qx {q(name)} \"$state/pending-handlers\" 2>/dev/null; then\n"
            f"    echo {q('@handler-skip ' + name)}\n"
            f"elif PROVISION_ROOT=\"$root\" sh -c {q(command)}; then\n"
            # Struck from the owed list before reporting: a dropped connection
            # (SIGPIPE on echo) must not make the next apply run it twice.
            f"    grep -vx {q(name)} \"$state/pending-handlers\" > \"$state/pending.new\" || true\n"
            f"    mv -f \"$state/pending.new\" \"$state/pending-handlers\"\n"
            f"    echo {q('@handler-ok ' + name)}\n"
            f"else\n"
            f"    echo {q(f'@error handler {name} failed; it stays owed and runs on the next apply')}\n"
            f"    exit {EXIT_HANDLER}\n"
            f"fi")
    if plan.pending_builtin:
        lines.append("# --root: system handlers are not run here; they stay listed as pending")
    else:
        lines.append('[ -s "$state/pending-handlers" ] || rm -f "$state/pending-handlers"')
    return "\n".join(lines)


def _restart_and_wait(inputs: ApplyInputs, command: str, url: str, seconds: int) -> str:
    """--restart: restart, wait for readiness; if it never comes, restore and restart the old."""
    restore = _restore(inputs) if inputs.plan.changes else "    :"
    failed = q(f"@error the model server did not answer {url} within {seconds}s; "
               f"restored generation {inputs.expected_last} and restarted it")
    return (
        f"if PROVISION_ROOT=\"$root\" sh -c {q(command)} && wait_ready {q(url)} {seconds}; then\n"
        f"    grep -vx restart-server \"$state/pending-handlers\" > \"$state/pending.new\" || true\n"
        f"    mv -f \"$state/pending.new\" \"$state/pending-handlers\"\n"
        f"    echo '@handler-ok restart-server'\n"
        f"else\n"
        f"{restore}\n"
        f"    echo {failed}\n"
        f"    exit {EXIT_NOT_READY}\n"
        f"fi")
