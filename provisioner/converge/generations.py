"""Generations: list them, and compute what restores an earlier one (pure).

Generation N's manifest lists every file it manages (sha256, mode, owner) and
every change it made with the state it replaced; its ``backup/`` folder holds
the replaced contents. Rolling back to M restores, for each path changed after
M, the state before the earliest of those changes: a file created after M is
removed, a replaced or deleted one comes back byte for byte.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from provisioner.errors import ProvisionError, UsageError
from provisioner.facts.gather import Gathered, PathState, checked_manifest, last_number, visible
from provisioner.install import Install
from provisioner.install.rollback import rollback_items
from provisioner.render.resources import File, Rendered


@dataclass(frozen=True)
class Generation:
    number: int
    complete: bool
    manifest: dict[str, Any]

    @property
    def time(self) -> str:
        return str(self.manifest.get("time", ""))

    @property
    def profile(self) -> str:
        return str(self.manifest.get("profile", ""))



def generations_script(state_dir: str) -> str:
    state = shlex.quote(state_dir)
    return f"""set -u
state={state}
last=$(cat "$state/last" 2>/dev/null || echo 0)
echo "@last $last"
for dir in "$state"/generations/*/; do
    [ -r "$dir/manifest.json" ] || continue
    n=$(basename "$dir")
    case "$n" in *[!0-9]*) continue ;; esac  # failed-N: an apply --restart that was undone
    if [ -e "$dir/complete" ]; then c=complete; else c=incomplete; fi
    printf '@gen %s %s %s\\n' "$n" "$c" "$(base64 < "$dir/manifest.json" | tr -d '\\n')"
done
echo @done
"""


def parse_generations(output: str) -> tuple[int, list[Generation]]:
    last = 0
    found: list[Generation] = []
    for line in output.split("\n"):  # a host's answer: \n ends a line, nothing else
        if line.startswith("@last "):
            last = last_number(line.removeprefix("@last "))
        elif line.startswith("@gen "):
            _, number, complete, data = line.split(" ", 3)
            found.append(Generation(int(number), complete == "complete", checked_manifest(data, int(number))))
    if "@done" not in output:
        raise ProvisionError("could not read the generations", hint="is the state dir readable?")
    return last, sorted(found, key=lambda g: g.number)


def backup_path(state_dir: str, generation: int, path: str) -> str:
    """Where generation N keeps the file it replaced at ``path`` (a host path)."""
    return f"{state_dir}/generations/{generation}/backup{path}"


def rollback_reads(generations: list[Generation], target: int, state_dir: str) -> tuple[list[str], list[str]]:
    """What the rollback gather reads: managed paths, and backups (host paths)."""
    later = [g for g in generations if g.number > target]
    paths: set[str] = set()
    backups: set[str] = set()
    for gen in generations:
        if gen.number == target or gen.number == generations[-1].number:
            paths.update(gen.manifest.get("files", {}))
    for gen in later:
        for change in gen.manifest.get("changes", []):
            paths.add(change["path"])
            if change.get("old"):
                backups.add(backup_path(state_dir, gen.number, change["path"]))
    return sorted(paths), sorted(backups)


def choose_target(last: int, generations: list[Generation], to: int | None) -> int:
    numbers = {g.number for g in generations}
    if last == 0 or not numbers:
        raise UsageError("there is no generation to roll back", hint="apply a profile first")
    target = last - 1 if to is None else to
    if target < 0 or target >= last:
        raise UsageError(f"--to {target} must be below the current generation {last}",
                         hint=f"generations: {', '.join(str(n) for n in sorted(numbers))}")
    if target != 0 and target not in numbers:
        raise UsageError(f"generation {target} does not exist",
                         hint=f"generations: {', '.join(str(n) for n in sorted(numbers))}")
    missing = [n for n in range(target + 1, last + 1) if n not in numbers]
    if missing:
        raise UsageError(f"generation {missing[0]} is missing: cannot roll back past it")
    return target


def rollback_installs(generations: list[Generation], target: int) -> tuple[Install, ...]:
    """The install items that take the installs back to generation ``target`` (see install/rollback.py)."""
    by_number = {g.number: g for g in generations}
    wanted = by_number[target].manifest.get("installs", {}) if target else {}
    last = by_number[max(by_number)].manifest.get("installs", {})
    return rollback_items(wanted, last)


def rollback_rendered(generations: list[Generation], target: int, gathered: Gathered, state_dir: str,
                      root: str, installs: tuple[Install, ...] = ()) -> Rendered:
    """The desired state that equals generation ``target`` (``installs``: rollback_installs's)."""
    by_number = {g.number: g for g in generations}
    target_files: dict[str, Any] = by_number[target].manifest["files"] if target else {}
    earliest_old: dict[str, tuple[int, dict[str, Any] | None]] = {}
    for number in sorted(n for n in by_number if n > target):
        for change in by_number[number].manifest.get("changes", []):
            earliest_old.setdefault(change["path"], (number, change.get("old")))
    files: list[File] = []
    for path in sorted(set(target_files) | set(earliest_old)):
        meta = target_files.get(path)
        if path in earliest_old:
            number, old = earliest_old[path]
            if old is None:
                continue  # created after the target: it goes
            content = _content(gathered, visible(backup_path(state_dir, number, path), root))
            mode, owner, group = old["mode"], old["owner"], old["group"]
        else:
            assert meta is not None
            content = _content(gathered, path)
            mode, owner, group = meta["mode"], meta["owner"], meta["group"]
        files.append(File(path=path, content=content, mode=int(mode, 8), owner=owner, group=group,
                          secret=bool(meta and meta.get("secret")),
                          notify=tuple(meta.get("notify", ())) if meta else (),
                          managed=meta is not None))
    last = max(by_number)
    commands = dict(by_number[last].manifest.get("handler_commands", {}))
    return Rendered(files=tuple(files), handlers=commands, installs=installs)


def _content(gathered: Gathered, path: str) -> bytes:
    state = gathered.paths.get(path, PathState("missing"))
    if state.kind != "file" or state.content is None:
        raise ProvisionError(f"cannot roll back {path}: its saved copy is missing or too large",
                             hint="the generation's backup folder was changed by hand")
    return state.content
