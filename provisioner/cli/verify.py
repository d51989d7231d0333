"""`provision verify`: prove a box is right (GPU and driver, drift, model files, the endpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from provisioner.cli._common import (
    EXIT_ERROR,
    EXIT_FINDING,
    EXIT_OK,
    command,
    ignore_fit_option,
    target_options,
    targets,
)
from provisioner.cli._output import Result, Table, check_json, first_line, lines, problem_json
from provisioner.errors import Problem, ProvisionError, UsageError

if TYPE_CHECKING:
    from provisioner.converge.fleet import Target
    from provisioner.facts.check import Check
    from provisioner.transport import Transport
    from provisioner.verify.run import VerifyOptions

# verify/run.py's GROUPS, spelled here so --help does not import the checks (a test keeps them equal)
GROUPS = ("gpu", "drift", "model", "install", "endpoint", "cluster", "quality")


@command("verify")
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
@click.option("--endpoint", default=None, metavar="URL",
              help="The model server to check (default: the profile's address, on this machine).")
@click.option("--only", default=None, metavar="GROUPS", help=f"Comma-separated: {','.join(GROUPS)}.")
@click.option("--no-needle", is_flag=True, help="Skip the long-prompt needle check (slow on big contexts).")
@click.option("--rebaseline", is_flag=True,
              help="Accept today's setup on purpose: record the quality fingerprint again (docs/verify.md).")
@ignore_fit_option
def verify(profile: Path | None, endpoint: str | None, only: str | None, no_needle: bool, rebaseline: bool,
           as_json: bool, **opts: Any) -> Result:
    """Prove the box is right: GPU and driver, drift, model files, the live endpoint.

    Exit 0 every check passed (warnings allowed), 2 a check failed, 1 could not run.

    \b
    Example:
      provision verify examples/quickstart.yaml
      provision verify examples/quickstart.yaml --root ./demo --only drift,model
      provision verify my.yaml --host admin@gpu-box --endpoint http://127.0.0.1:8080 --json
    """
    from provisioner.verify.run import VerifyOptions

    groups = frozenset(g.strip() for g in (only or ",".join(GROUPS)).split(",") if g.strip())
    unknown = groups - set(GROUPS)
    if unknown:
        raise UsageError(f"--only: unknown group {sorted(unknown)[0]!r}", hint=f"groups: {', '.join(GROUPS)}")
    return run_verify(profile, opts, VerifyOptions(only=groups, endpoint=endpoint, needle=not no_needle,
                                                   rebaseline=rebaseline))


def run_verify(profile: Path | None, opts: dict[str, Any], options: VerifyOptions) -> Result:
    """verify every target, in parallel; a host that cannot be read is an error, not a finding."""
    from provisioner.converge.fleet import map_targets
    from provisioner.facts.check import failures_first, worst
    from provisioner.verify.run import verify_target

    chosen = targets(profile, opts)
    builds = {t.key: t.build(opts["ignore_fit"]) for t in chosen}

    def work(target: Target, transport: Transport) -> tuple[str, list[Check] | Problem]:
        built = builds[target.key]
        return target.name, failures_first(verify_target(built, transport, options, target.node_of(built.nodes)))

    def on_error(target: Target, exc: ProvisionError) -> tuple[str, list[Check] | Problem]:
        return target.name, exc.first

    hosts = map_targets(chosen, opts["forks"], work, on_error)
    errored = [problem for _, problem in hosts if isinstance(problem, Problem)]
    failed = [checks for _, checks in hosts if not isinstance(checks, Problem) and worst(checks) == "fail"]
    fields = {"hosts": [{"host": name, "ok": not isinstance(got, Problem),
                         "error": problem_json(got) if isinstance(got, Problem) else None,
                         "checks": [] if isinstance(got, Problem) else [check_json(c) for c in got]}
                        for name, got in hosts]}
    human: list[Table | Any] = []
    for name, got in hosts:
        if isinstance(got, Problem):
            human.append(lines(f"error: {got.one_line()}"))
            continue
        rows = [[c.id, c.status, first_line(c.observed), first_line(c.expected), c.hint or ""] for c in got]
        human.append(Table(f"{name}: {worst(got)}", ["check", "status", "observed", "expected", "hint"], rows))
    code = EXIT_ERROR if errored else EXIT_FINDING if failed else EXIT_OK
    return Result(code, fields, tuple(human), ok=not errored, error=errored[0] if errored else None)
