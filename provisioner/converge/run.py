"""The two functions that touch a host (gather, apply) and the glue around them.

Everything they call to decide is pure: facts.parse_gather, plan.make_plan,
apply.apply_script, generations.rollback_files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from provisioner.converge.apply import (
    EXIT_CHANGED,
    EXIT_HANDLER,
    EXIT_INVALID,
    EXIT_LOCKED,
    EXIT_NOT_READY,
    ApplyInputs,
    apply_script,
)
from provisioner.converge.generations import (
    Generation,
    choose_target,
    generations_script,
    parse_generations,
    rollback_installs,
    rollback_reads,
    rollback_rendered,
)
from provisioner.converge.guard import EXIT_LINKED, install_guards
from provisioner.converge.plan import Plan, make_plan
from provisioner.errors import ProvisionError
from provisioner.facts.collect import run_gather
from provisioner.facts.gather import Gathered
from provisioner.install import EXIT_INSTALL
from provisioner.render.resources import Rendered
from provisioner.transport import Transport


@dataclass(frozen=True)
class HostResult:
    host: str
    plan: Plan
    gathered: Gathered
    applied: bool = False
    generation: int | None = None
    handlers_run: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default_factory=tuple)
    installed: tuple[str, ...] = ()  # install steps that ran ("packages", "venv:vllm", ...)


def gather(transport: Transport, paths: list[str], service: str = "",
           host_paths: list[str] | None = None, extra: str = "", known: dict[str, bytes] | None = None) -> Gathered:
    """Round trip 1: facts, every managed path, provision's state."""
    return run_gather(transport, paths=paths, service=service, host_paths=host_paths, extra=extra, known=known)


def plan_host(rendered: Rendered, transport: Transport, *, service: str, restart: bool = False,
              rerender: Callable[[dict[str, str]], Rendered] | None = None) -> tuple[Plan, Gathered]:
    """Gather, then plan. ``rerender`` renders again with the host's facts (the
    destinations never depend on facts, so the first render names the paths)."""
    probes = "\n".join([item.probe(transport.root) for item in rendered.installs]
                       + [install_guards(transport.root, rendered.installs)])
    # a converged host sends back no file: each has the bytes of this render (one whose
    # template reads facts may differ after rerender; its diff then uses the bytes sent or known)
    gathered = gather(transport, [f.path for f in rendered.files], service, extra=probes,
                      known={f.path: f.content for f in rendered.files})
    if rerender is not None:
        rendered = rerender(gathered.facts.values)
    plan = make_plan(rendered, gathered, root_mode=bool(transport.root), restart=restart,
                     server_active=gathered.facts.get("server_active") == "yes",
                     server_enabled={"yes": True, "no": False}.get(gathered.facts.get("server_enabled") or ""),
                     root=transport.root)
    return plan, gathered


def apply_plan(plan: Plan, gathered: Gathered, transport: Transport, *, profile_name: str,
               wait_lock: float = 0.0, failpoint: int | None = None) -> HostResult:
    """Round trip 2: the batched script. Nothing to do means no round trip."""
    if not plan.changed:
        return HostResult(transport.name, plan, gathered, applied=False)
    generation = gathered.last_generation + 1 if plan.changes or plan.runnable_installs else None
    inputs = ApplyInputs(
        plan=plan, root=transport.root, state_dir=transport.state_dir,
        generation=generation or gathered.last_generation,
        expected_last=gathered.last_generation, profile_name=profile_name,
        time=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(), wait_lock=wait_lock)
    env = {"PROVISION_FAILPOINT": str(failpoint)} if failpoint is not None else None
    result = transport.run(apply_script(inputs), env)
    lines = result.stdout.split("\n")  # a host's answer: \n ends a line, nothing else
    warnings = tuple(line.removeprefix("@warn ") for line in lines if line.startswith("@warn "))
    ran = tuple(line.split()[1] for line in lines if line.startswith("@handler-ok "))
    installed = tuple(line.split()[1] for line in lines if line.startswith("@install-ok "))
    if result.returncode != 0 or "@ok" not in lines:
        raise _apply_error(result.returncode, lines, result.stderr, transport.name)
    return HostResult(transport.name, plan, gathered, applied=True, generation=generation,
                      handlers_run=ran, warnings=warnings, installed=installed)


# exit code of the apply script -> (what it means when it printed no @error, hint)
_EXIT_MEANING = {
    EXIT_LOCKED: ("locked", "wait for the other apply, or pass --wait-lock SECONDS"),
    EXIT_NOT_READY: ("the restarted server never became ready",
                     "the previous generation is back and running; read the server's journal "
                     "(journalctl -u SERVICE) for why the new one did not start"),
    EXIT_HANDLER: ("a handler failed", "fix the cause; the next apply runs the owed handlers"),
    EXIT_LINKED: ("a folder under the root is a symlink; nothing was written",
                  "replace the link with a real folder, or give --root the tree it points to"),
}


def _apply_error(code: int, lines: list[str], stderr: str, host: str) -> ProvisionError:
    errors = [line.removeprefix("@error ") for line in lines if line.startswith("@error ")]
    invalid = [line.removeprefix("@invalid ") for line in lines if line.startswith("@invalid ")]
    if code in _EXIT_MEANING:
        default, meaning_hint = _EXIT_MEANING[code]
        return ProvisionError(f"{host}: {errors[0] if errors else default}", hint=meaning_hint)
    if code == EXIT_CHANGED:
        return ProvisionError(f"{host}: {errors[0] if errors else 'changed since plan'}; nothing was replaced",
                              hint="re-run: the plan is made again from what is there now")
    if code == EXIT_INVALID:
        return ProvisionError([ProvisionError(f"{host}: validation failed, nothing was replaced: {msg}")
                               .first for msg in invalid] or
                              [ProvisionError(f"{host}: validation failed, nothing was replaced").first])
    if code == EXIT_INSTALL:
        why = "; ".join(e for e in errors if not e.startswith("install ")) or (errors[0] if errors else "")
        return ProvisionError(f"{host}: install failed, no file was replaced: {why}",
                              hint="fix the cause (see the log it names) and apply again; installs that "
                              "finished are kept and not redone")
    detail = (errors[0] if errors else stderr.strip().splitlines()[-1] if stderr.strip()
              else f"exit code {code}")
    hint = "is the disk full or the target read-only?" if "No space" in stderr else \
        "check permissions on the target" if "ermission denied" in stderr else None
    return ProvisionError(f"{host}: apply failed: {detail}", hint=hint)


def read_generations(transport: Transport) -> tuple[int, list[Generation]]:
    result = transport.run(generations_script(transport.state_dir))
    return parse_generations(result.stdout)


def plan_rollback(transport: Transport, to: int | None) -> tuple[Plan, Gathered, int]:
    """Round trips: the generations, then the affected files and their backups."""
    last, generations = read_generations(transport)
    target = choose_target(last, generations, to)
    paths, backups = rollback_reads(generations, target, transport.state_dir)
    installs = rollback_installs(generations, target)
    gathered = gather(transport, paths, host_paths=backups,
                      extra="\n".join(item.probe(transport.root) for item in installs))
    rendered = rollback_rendered(generations, target, gathered, transport.state_dir, transport.root, installs)
    plan = make_plan(rendered, gathered, root_mode=bool(transport.root), root=transport.root)
    return plan, gathered, target
