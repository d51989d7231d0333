"""`provision plan`, `apply`, `generations` and `rollback`: converge targets to a profile."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli import _output
from provisioner.cli._common import (
    EXIT_ERROR,
    EXIT_FINDING,
    EXIT_OK,
    command,
    ignore_fit_option,
    local_transport,
    root_option,
    target_options,
    targets,
)
from provisioner.cli._output import Result, Table, host_json, lines, plan_text
from provisioner.errors import UsageError

if TYPE_CHECKING:
    from provisioner.converge.fleet import Outcome


def run_fleet(profile: Path | None, opts: dict[str, Any], *, apply: bool, show_diff: bool,
              as_json: bool) -> Result:
    """Plan or apply on every target; each host's text is shown as it finishes."""
    from provisioner.converge.fleet import RunOptions, run  # pydantic, Jinja2: only when run

    color = sys.stderr.isatty()

    def report(outcome: Outcome) -> None:
        if not as_json:
            _output.show(_outcome_text(outcome, show_diff=show_diff, color=color))

    options = RunOptions(apply=apply, restart=opts.get("restart", False), wait_lock=opts.get("wait_lock", 0.0),
                         ignore_fit=opts["ignore_fit"], forks=opts["forks"])
    outcomes = run(targets(profile, opts), options, report)
    errored = [o for o in outcomes if not o.ok]
    changed = any(o.changed for o in outcomes)
    hosts = [host_json(o.name, o.result.plan, generation=o.result.generation) if o.result is not None
             else host_json(o.name, None, ok=False, error=o.error[0] if o.error else None) for o in outcomes]
    human: tuple[_output.Block, ...] = ()
    if len(outcomes) > 1:
        human = (lines(f"{len(outcomes)} hosts: {len(outcomes) - len(errored)} ok, {len(errored)} failed"
                       + (f" ({', '.join(o.name for o in errored)})" if errored else "")),)
    code = EXIT_ERROR if errored else EXIT_FINDING if not apply and changed else EXIT_OK
    first = errored[0].error[0] if errored and errored[0].error else None
    return Result(code, {"changed": changed, "hosts": hosts}, human, ok=not errored, error=first)


def _outcome_text(outcome: Outcome, *, show_diff: bool, color: bool) -> tuple[_output.Block, ...]:
    if outcome.error or outcome.result is None:
        return (lines(*(f"error: {problem.one_line()}" for problem in outcome.error or [])),)
    result = outcome.result
    out = [plan_text(outcome.name, result.plan, show_diff=show_diff, color=color)]
    out += [f"  warning: {warning}" for warning in result.warnings]
    if result.applied:
        out.append(f"{outcome.name}: applied" + (f", generation {result.generation}" if result.generation else "")
                   + (f", handlers run: {', '.join(result.handlers_run)}" if result.handlers_run else ""))
    return (lines(*out),)


@command("plan")
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
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
@click.option("--dry-run", is_flag=True, help="Only show the plan (same as `provision plan`).")
@click.option("--diff", "show_diff", is_flag=True, help="Show unified diffs of the changes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; needed without a terminal.")
@click.option("--restart", is_flag=True, help="Restart the model server if it runs and its files changed.")
@click.option("--wait-lock", type=click.FloatRange(min=0, max=86400), default=0.0, metavar="SECONDS",
              help="Wait this long for another apply's lock instead of failing at once.")
@click.option("--verify", "then_verify", is_flag=True,
              help="Run `provision verify` after a successful apply (exit 2 if a check fails).")
@ignore_fit_option
def apply(profile: Path | None, dry_run: bool, show_diff: bool, yes: bool, then_verify: bool, as_json: bool,
          **opts: Any) -> Result:
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

    checked = run_verify(profile, opts, VerifyOptions())
    verified = _output.envelope("verify", checked.ok, checked.error, **checked.fields)
    return Result(checked.code, {**applied.fields, "verify": verified}, applied.human + checked.human,
                  ok=applied.ok, error=applied.error)


@command("generations")
@root_option
def generations(root: Path | None, as_json: bool) -> Result:
    """List the generations applied to this machine (or the tree under --root).

    \b
    Example:
      provision generations --root ./demo
    """
    from provisioner.converge.run import read_generations

    last, found = read_generations(local_transport(root))
    rows = [[("* " if g.number == last else "  ") + str(g.number), g.time, g.profile,
             str(len(g.manifest.get("changes", []))), "" if g.complete else "incomplete"] for g in found]
    table = Table(f"{len(found)} generation(s), current {last}", ["number", "time", "profile", "files changed", ""],
                  rows)
    return Result(EXIT_OK, {"current": last, "generations": [_output.generation_json(g) for g in found]}, (table,))


@command("rollback")
@root_option
@click.option("--to", "to", type=int, default=None, help="Generation to restore (default: the previous one).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; needed without a terminal.")
def rollback(root: Path | None, to: int | None, yes: bool, as_json: bool) -> Result:
    """Restore an earlier generation exactly; the rollback is itself a generation.

    Files created since are removed, files replaced or deleted since come back
    byte for byte with their modes and owners.

    \b
    Example:
      provision rollback --root ./demo --yes
      provision rollback --to 1 --yes
    """
    from provisioner.converge.run import apply_plan, plan_rollback

    transport = local_transport(root)
    planned, gathered, target = plan_rollback(transport, to)
    color = sys.stderr.isatty()
    if planned.changed and not yes:
        if not sys.stdin.isatty():
            raise UsageError("rollback needs --yes when there is no terminal to ask on")
        _output.show([lines(plan_text(transport.name, planned, show_diff=True, color=color))])
        if not click.confirm(f"Roll back to generation {target}?", err=True):
            return Result(EXIT_ERROR, ok=False)
    result = apply_plan(planned, gathered, transport, profile_name=f"rollback to {target}")
    said = lines(plan_text(transport.name, planned, show_diff=False, color=color),
                 f"{transport.name}: rolled back to generation {target}"
                 + (f" (recorded as generation {result.generation})" if result.generation else ""))
    return Result(EXIT_OK, {"changed": planned.changed, "target": target,
                            "hosts": [host_json(transport.name, planned, generation=result.generation)]}, (said,))
