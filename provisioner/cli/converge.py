"""`provision plan`, `apply`, `generations` and `rollback`: converge targets to a profile."""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli import _output
from provisioner.cli._common import (
    EXIT_ERROR,
    EXIT_FINDING,
    EXIT_OK,
    NO_PROFILE,
    command,
    ignore_fit_option,
    target_options,
    targets,
)
from provisioner.cli._output import Result, Table, host_json, lines, plan_text
from provisioner.errors import Problem, ProvisionError, UsageError

if TYPE_CHECKING:
    from provisioner.converge.fleet import Outcome, Target
    from provisioner.converge.plan import Plan
    from provisioner.facts.gather import Gathered
    from provisioner.transport import Transport


def run_fleet(profile: Path | None, opts: dict[str, Any], *, apply: bool, show_diff: bool,
              as_json: bool) -> Result:
    """Plan or apply on every target; each host's text is shown as it finishes."""
    from provisioner.converge.fleet import RunOptions, run  # pydantic, Jinja2: only when run

    color = sys.stderr.isatty()
    if opts.pop("update_lock", False) and profile is not None:
        from provisioner.cli.lock import write_profile_lock

        write_profile_lock(profile)
    verify_command = _verify_command(profile, opts) if apply else ""

    fleet = targets(profile, opts)
    many = len(fleet) > 1  # a fleet's next steps are listed once, after every host

    def report(outcome: Outcome) -> None:
        if not as_json:
            _output.show(_outcome_text(outcome, show_diff=show_diff, color=color,
                                       verify="" if many else verify_command))

    options = RunOptions(apply=apply, restart=opts.get("restart", False), wait_lock=opts.get("wait_lock", 0.0),
                         ignore_fit=opts["ignore_fit"], forks=opts["forks"])
    outcomes = run(fleet, options, report)
    errored = [o for o in outcomes if not o.ok]
    changed = any(o.changed for o in outcomes)
    hosts = [{**host_json(o.name, o.result.plan, generation=o.result.generation),
              **({"next_steps": [*o.next_steps, verify_command]} if apply else {})}
             if o.result is not None
             else host_json(o.name, None, ok=False, error=o.error[0] if o.error else None) for o in outcomes]
    human: tuple[_output.Block, ...] = ()
    if many:
        human = (*_fleet_next_steps(outcomes, verify_command),
                 lines(f"{len(outcomes)} hosts: {len(outcomes) - len(errored)} ok, {len(errored)} failed"
                       + (f" ({', '.join(o.name for o in errored)})" if errored else "")))
    code = EXIT_ERROR if errored else EXIT_FINDING if not apply and changed else EXIT_OK
    first = errored[0].error[0] if errored and errored[0].error else None
    return Result(code, {"changed": changed, "hosts": hosts}, human, ok=not errored, error=first)


def _verify_command(profile: Path | None, opts: dict[str, Any]) -> str:
    """The `provision verify` that checks what this run applied, with the same target."""
    words = ["provision", "verify"]
    if profile is not None:
        words.append(str(profile))
    # every target option verify shares, so the command runs as shown (a fleet's known_hosts too)
    for option in ("root", "host", "inventory", "limit", "known_hosts", "jump", "transport", "node"):
        if opts.get(option):
            words += [f"--{option.replace('_', '-')}", str(opts[option])]
    if opts.get("become"):
        words.append("--become")
    return "check it: " + " ".join(shlex.quote(w) for w in words)


def _fleet_next_steps(outcomes: list[Outcome], verify: str) -> tuple[_output.Block, ...]:
    """Each step once, in the order hosts gave them, naming the hosts when not all of them
    need it; then the verify command, which checks them all."""
    done = [o for o in outcomes if o.result is not None]
    if not verify or not done:
        return ()
    order: list[str] = []  # every host's steps keep their order (a secret before the restart)
    hosts: dict[str, list[str]] = {}
    for outcome in done:
        own = list(outcome.next_steps)
        for i, step in enumerate(own):
            hosts.setdefault(step, []).append(outcome.name)
            if step not in order:
                after = [order.index(later) for later in own[i + 1:] if later in order]
                order.insert(min(after), step) if after else order.append(step)
    steps = [step if len(hosts[step]) == len(done) else f"{step} ({', '.join(sorted(hosts[step]))})"
             for step in order]
    return (lines("next steps:", *(f"  {number}. {step}" for number, step in enumerate([*steps, verify], 1))),)


def _outcome_text(outcome: Outcome, *, show_diff: bool, color: bool, verify: str) -> tuple[_output.Block, ...]:
    if outcome.error or outcome.result is None:
        return (lines(*(f"error: {problem.one_line()}" for problem in outcome.error or [])),)
    result = outcome.result
    out = [plan_text(outcome.name, result.plan, show_diff=show_diff, color=color)]
    out += [f"  warning: {warning}" for warning in result.warnings]
    if result.applied:
        out.append(f"{outcome.name}: applied" + (f", generation {result.generation}" if result.generation else "")
                   + (f", handlers run: {', '.join(result.handlers_run)}" if result.handlers_run else ""))
    if verify:  # an apply, even one with nothing to do: what is left is still left
        out.append("next steps:")
        out += [f"  {number}. {step}" for number, step in enumerate([*outcome.next_steps, verify], 1)]
    return (lines(*out),)


_update_lock = click.option("--update-lock", is_flag=True,
                            help="Pin the model source anew into PROFILE.lock first (see `provision lock`).")


@command("plan")
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
@_update_lock
@ignore_fit_option
def plan(profile: Path | None, as_json: bool, **opts: Any) -> Result:
    """Show what `apply` would change, with diffs. Touches nothing.

    Exit 0 nothing to do, 2 changes pending, 1 error (use it in CI to catch drift).
    Over a fleet: 1 if any host errored, else 2 if any host has changes, else 0.

    \b
    Example:
      provision plan examples/quickstart.yaml --root ./demo
      provision plan examples/quickstart.yaml --host admin@gpu-box --become
      provision plan -i examples/fleet/inventory.yaml --limit workstations --json
    """
    return run_fleet(profile, opts, apply=False, show_diff=True, as_json=as_json)


@command("apply")
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
@_update_lock
@click.option("--dry-run", is_flag=True, help="Only show the plan (same as `provision plan`).")
@click.option("--diff", "show_diff", is_flag=True, help="Show unified diffs of the changes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; needed without a terminal.")
@click.option("--restart", is_flag=True, help="Restart the model server if it runs and its files changed.")
@click.option("--wait-lock", type=click.FloatRange(min=0, max=86400), default=0.0, metavar="SECONDS",
              help="Wait this long for another apply's lock instead of failing at once.")
@click.option("--verify", "then_verify", is_flag=True,
              help="Run `provision verify` after a successful apply (exit 2 if a check fails).")
@click.option("--endpoint", "verify_endpoint", default=None, metavar="URL",
              help="With --verify: check the server at this URL (needed for a --root tree).")
@ignore_fit_option
def apply(profile: Path | None, dry_run: bool, show_diff: bool, yes: bool, then_verify: bool, as_json: bool,
          verify_endpoint: str | None, **opts: Any) -> Result:
    """Converge this machine, a --root tree, a --host or an inventory to PROFILE.

    Every file is written to a temp file, validated, then renamed over the old
    one; each apply that changes something is a generation you can roll back.

    \b
    Example:
      provision apply examples/quickstart.yaml --root ./demo --yes
      provision apply examples/quickstart.yaml --diff
      provision apply -i examples/fleet/inventory.yaml --forks 10 --yes
      provision apply -i examples/cluster/inventory.yaml --yes   # each host gets its cluster node's files
    """
    if dry_run:
        return run_fleet(profile, opts, apply=False, show_diff=True, as_json=as_json)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("apply needs --yes when there is no terminal to ask on",
                             hint="review with `provision plan`, then apply with --yes")
        planned = run_fleet(profile, opts, apply=False, show_diff=True, as_json=False)
        _output.show(planned.human)
        if planned.code != EXIT_FINDING:
            return Result(planned.code, planned.fields, ok=planned.ok, error=planned.error)
        if not click.confirm("Apply these changes?", err=True):
            return Result(EXIT_ERROR, planned.fields, ok=False)
    applied = run_fleet(profile, opts, apply=True, show_diff=show_diff, as_json=as_json)
    if not then_verify or applied.code != EXIT_OK:
        return applied
    from provisioner.cli.verify import run_verify
    from provisioner.verify.run import VerifyOptions

    checked = run_verify(profile, opts, VerifyOptions(endpoint=verify_endpoint))
    verified = _output.envelope("verify", checked.ok, checked.error, **checked.fields)
    return Result(checked.code, {**applied.fields, "verify": verified}, applied.human + checked.human,
                  ok=applied.ok, error=applied.error)


@command("generations")
@target_options
def generations(as_json: bool, **opts: Any) -> Result:
    """List the generations applied to this machine, a --root tree, a --host or an inventory.

    \b
    Example:
      provision generations --root ./demo
      provision generations --host admin@gpu-box --become
      provision generations -i examples/fleet/inventory.yaml --limit workstations --json
    """
    from provisioner.converge.fleet import map_targets
    from provisioner.converge.run import read_generations

    def work(target: Target, transport: Transport) -> _HostOutcome:
        last, found = read_generations(transport)
        rows = [[("* " if g.number == last else "  ") + str(g.number), g.time, g.profile,
                 str(len(g.manifest.get("changes", []))), "" if g.complete else "incomplete"] for g in found]
        table = Table(f"{target.name}: {len(found)} generation(s), current {last}",
                      ["number", "time", "profile", "files changed", ""], rows)
        fields = {"current": last, "generations": [_output.generation_json(g) for g in found]}
        return _HostOutcome(target.name, fields, (table,), top=fields)

    chosen = targets(NO_PROFILE, opts)
    outcomes = map_targets(chosen, opts["forks"], work, _failed)
    return _fleet_result(outcomes, EXIT_OK)


@command("rollback")
@target_options
@click.option("--to", "to", type=int, default=None, help="Generation to restore (default: the previous one).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; needed without a terminal.")
def rollback(to: int | None, yes: bool, as_json: bool, **opts: Any) -> Result:
    """Restore an earlier generation exactly; the rollback is itself a generation.

    Files created since are removed, files replaced or deleted since come back
    byte for byte with their modes and owners. Over an inventory each host
    rolls back its own history (--to names the same number on every host).

    \b
    Example:
      provision rollback --root ./demo --yes
      provision rollback --to 1 --yes
      provision rollback --host admin@gpu-box --become --yes
      provision rollback -i examples/fleet/inventory.yaml --limit ws1 --yes
    """
    from provisioner.converge.fleet import map_targets
    from provisioner.converge.run import apply_plan, plan_rollback

    color = sys.stderr.isatty()
    chosen = targets(NO_PROFILE, opts)
    plans: dict[str, tuple[Plan, Gathered, int]] = {}
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("rollback needs --yes when there is no terminal to ask on",
                             hint="review with `provision generations`, then roll back with --yes")

        def preview(target: Target, transport: Transport) -> _HostOutcome:
            plans[target.name] = planned = plan_rollback(transport, to)
            text = plan_text(target.name, planned[0], show_diff=True, color=color)
            return _HostOutcome(target.name, {}, (lines(text, f"  rolls back to generation {planned[2]}"),))

        previewed = map_targets(chosen, opts["forks"], preview, _failed)
        _output.show([block for o in previewed for block in o.human])
        if any(o.error for o in previewed) or not click.confirm("Roll back?", err=True):
            return _fleet_result(previewed, EXIT_OK) if any(o.error for o in previewed) else \
                Result(EXIT_ERROR, ok=False)

    def work(target: Target, transport: Transport) -> _HostOutcome:
        planned, gathered, target_number = plans.get(target.name) or plan_rollback(transport, to)
        result = apply_plan(planned, gathered, transport, profile_name=f"rollback to {target_number}")
        said = lines(plan_text(target.name, planned, show_diff=False, color=color),
                     f"{target.name}: rolled back to generation {target_number}"
                     + (f" (recorded as generation {result.generation})" if result.generation else ""))
        fields = {**host_json(target.name, planned, generation=result.generation), "target": target_number,
                  "changed": planned.changed}
        return _HostOutcome(target.name, fields, (said,), top={"changed": planned.changed, "target": target_number})

    outcomes = map_targets(chosen, opts["forks"], work, _failed)
    return _fleet_result(outcomes, EXIT_OK)


@dataclasses.dataclass(frozen=True)
class _HostOutcome:
    """One host's part of `generations` or `rollback`: its JSON, its text, or its error."""

    name: str
    fields: dict[str, Any]
    human: tuple[_output.Block, ...]
    error: Problem | None = None
    top: dict[str, Any] = dataclasses.field(default_factory=dict)  # the JSON's own fields for one target


def _failed(target: Target, exc: ProvisionError) -> _HostOutcome:
    return _HostOutcome(target.name, {"host": target.name, "ok": False}, (), exc.first)


def _fleet_result(outcomes: list[_HostOutcome], ok_code: int) -> Result:
    """One target: its fields at the top, as before fleets; more: a list and a summary line.
    Exit 1 if any host failed (each failure is one line), like plan and apply."""
    errored = [o for o in outcomes if o.error is not None]
    human: list[_output.Block] = []
    for outcome in outcomes:
        human += outcome.human if outcome.error is None else \
            (lines(f"error: {outcome.error.one_line()}"),)
    if len(outcomes) > 1:
        human.append(lines(f"{len(outcomes)} hosts: {len(outcomes) - len(errored)} ok, {len(errored)} failed"
                           + (f" ({', '.join(o.name for o in errored)})" if errored else "")))
    hosts = [{"host": o.name, "ok": o.error is None, **o.fields,
              "error": _output.problem_json(o.error) if o.error else None} for o in outcomes]
    fields: dict[str, Any] = dict(outcomes[0].top) if len(outcomes) == 1 else {}
    if any(o.fields.get("changed") for o in outcomes):
        fields["changed"] = True
    fields["hosts"] = hosts
    if len(outcomes) == 1 and errored:
        raise ProvisionError([errored[0].error]) if errored[0].error else ProvisionError("failed")
    return Result(EXIT_ERROR if errored else ok_code, fields, tuple(human), ok=not errored,
                  error=errored[0].error if errored else None)
