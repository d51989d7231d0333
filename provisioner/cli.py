"""Command line. The ONE place that turns errors into messages and exit codes.

Exit codes (the same for every command): 0 ok / nothing to do; 2 a finding
(changes pending, does not fit, a check failed); 1 an error.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from provisioner import __version__
from provisioner.errors import Problem, ProvisionError

# pydantic scans every installed package's entry points for plugins at import
# (about 20 ms); provision uses none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

EXIT_OK, EXIT_ERROR, EXIT_FINDING = 0, 1, 2
F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(command: str) -> Callable[[F], F]:
    """Known errors -> one line each (or the JSON envelope) and exit 1; never a traceback."""

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            as_json = bool(kwargs.get("as_json"))
            try:
                code = func(*args, **kwargs)
            except ProvisionError as exc:
                _report_error(command, exc.problems, as_json)
                sys.exit(EXIT_ERROR)
            except KeyboardInterrupt:
                _report_error(command, [Problem("interrupted")], as_json)
                sys.exit(130)
            except OSError as exc:
                problem = Problem(f"{exc.strerror or exc}", file=exc.filename and str(exc.filename),
                                  hint="check the path and permissions")
                _report_error(command, [problem], as_json)
                sys.exit(EXIT_ERROR)
            sys.exit(code or EXIT_OK)

        return run  # type: ignore[return-value]

    return wrap


def _report_error(command: str, problems: list[Problem], as_json: bool) -> None:
    from provisioner.report import envelope, print_json, say

    if as_json:
        data = envelope(command, False, problems[0] if problems else Problem("error"))
        data["errors"] = [p.as_json() for p in problems]
        print_json(data)
    for problem in problems:
        say(f"error: {problem.one_line()}")


json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object (the envelope of the README) on stdout.")


class _Provision(click.Group):
    """click's usage errors (a missing argument, an unknown option) exit 2 with a usage
    block; here 2 means "a finding" (changes pending), so they become one line and exit 1,
    with the JSON envelope under --json, like every other bad input."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(args) if args is not None else sys.argv[1:]
        try:
            return super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Abort:
            _report_error("provision", [Problem("aborted")], "--json" in argv)
            sys.exit(EXIT_ERROR)
        except click.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and isinstance(exc, click.UsageError) and exc.ctx:
                click.echo(exc.ctx.get_help())  # `provision` alone: its help, as a request for it
                sys.exit(EXIT_OK)
            where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "provision"
            command = where.split(" ", 1)[1] if " " in where else "provision"
            _report_error(command, [Problem(exc.format_message().rstrip("."), hint=f"see `{where} --help`")],
                          "--json" in argv)
            sys.exit(EXIT_ERROR)


@click.group(cls=_Provision, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="provision")
def main() -> None:
    """Provision machines for local LLM inference.

    \b
    Example:
      provision validate examples/quickstart.yaml
      provision render examples/quickstart.yaml --out ./rendered
    """


@main.command()
@click.argument("profiles", nargs=-1, required=True, type=click.Path(path_type=Path))
@json_option
@handle_errors("validate")
def validate(profiles: tuple[Path, ...], as_json: bool) -> int:
    """Check PROFILES: schema, catalog, fit and render. No host is touched.

    Exit 0 if every profile is valid, 1 if not (every problem is listed, one
    line each, with file:line:column).

    \b
    Example:
      provision validate examples/quickstart.yaml profiles/*.yaml
    """
    from provisioner.pipeline import build
    from provisioner.report import envelope, print_json, say

    results: list[dict[str, Any]] = []
    problems: list[Problem] = []
    for path in profiles:
        try:
            built = build(path, model_root="", network=False)  # validate never asks a hub for a file list
        except ProvisionError as exc:
            problems += exc.problems
            results.append({"profile": str(path), "ok": False,
                            "errors": [p.as_json() for p in exc.problems]})
            continue
        results.append({"profile": str(path), "ok": True, "errors": [],
                        "files": len(built.rendered.files),
                        "warnings": list(built.rendered.warnings)})
        if not as_json:
            say(f"ok: {path}: {built.spec.model.name} {built.spec.profile.model.quant} on "
                f"{built.spec.engine.name} {built.spec.profile.runtime.version}, "
                f"{len(built.rendered.files)} files")
            for warning in built.rendered.warnings:
                say(f"warning: {path}: {warning}")
    if as_json:
        print_json(envelope("validate", not problems, problems[0] if problems else None,
                            profiles=results))
    else:
        for problem in problems:
            say(f"error: {problem.one_line()}")
    return EXIT_ERROR if problems else EXIT_OK


@main.command()
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder to write the tree into (as if it were /).")
@click.option("--overwrite", is_flag=True, help="Write into a folder that is not empty.")
@click.option("--node", default=None, metavar="NAME",
              help="A cluster profile: render this node's files (default: the head's).")
@json_option
@handle_errors("render")
def render(profile: Path, out_dir: Path, overwrite: bool, node: str | None, as_json: bool) -> int:
    """Write the files PROFILE would install into OUT, byte for byte, with modes.

    Nothing else is touched. Owners are listed (and kept in JSON), not set.

    \b
    Example:
      provision render examples/quickstart.yaml --out ./rendered
      provision render examples/quickstart.yaml --out ./rendered --overwrite --json
      provision render examples/cluster/two-node-qwen3-235b-fp8-vllm.yaml --node w1 --out ./w1
    """
    from provisioner.cluster import chosen_node
    from provisioner.pipeline import build, node_rendered, write_tree
    from provisioner.report import envelope, print_json, print_table, say

    built = build(profile, model_root="", network=False)
    if node is not None:
        built = type(built)(built.spec, built.placement, node_rendered(built, chosen_node(built.spec, node)))
    written = write_tree(built.rendered, out_dir, overwrite=overwrite)
    files: list[dict[str, Any]] = [
        {"path": f.path, "mode": f.mode_text, "owner": f"{f.owner}:{f.group}",
         "bytes": len(f.content), "notify": list(f.notify)} for f in built.rendered.files]
    if as_json:
        print_json(envelope("render", True, None, out=str(out_dir), files=files,
                            warnings=list(built.rendered.warnings)))
    else:
        print_table(f"{len(written)} files rendered into {out_dir}",
                    ["path", "mode", "owner", "bytes"],
                    [[f["path"], f["mode"], f["owner"], str(f["bytes"])] for f in files])
        for warning in built.rendered.warnings:
            say(f"warning: {warning}")
    return EXIT_OK


root_option = click.option("--root", "root", type=click.Path(path_type=Path), default=None,
                           help="Manage the tree under DIR as if it were / (image builds, chroots, tests).")
ignore_fit_option = click.option("--ignore-fit", is_flag=True,
                                 help="Go on even if fit says the model does not fit.")


def _transport(root: Path | None) -> Any:
    from provisioner.transport.local import LocalTransport

    return LocalTransport(root)


def target_options(func: F) -> F:
    """Where to converge: this machine, --root DIR, --host, or -i INVENTORY."""
    options = [
        click.option("--host", "host", default=None, metavar="[USER@]HOST[:PORT]",
                     help="Converge this host over SSH."),
        click.option("-i", "--inventory", type=click.Path(path_type=Path), default=None,
                     help="Converge the hosts of this inventory (ours or an Ansible YAML one)."),
        click.option("--limit", default=None, help="Only these hosts/groups (comma-separated, globs)."),
        click.option("--forks", type=click.IntRange(1, 500), default=20, show_default=True,
                     help="Hosts worked on in parallel."),
        click.option("--accept-new-host-key", is_flag=True,
                     help="Trust and record a host key seen for the first time (a changed key always fails)."),
        click.option("--known-hosts", default=None, help="known_hosts file (default ~/.ssh/known_hosts)."),
        click.option("--become", is_flag=True, help="Become root with sudo on the hosts."),
        click.option("--ask-become-pass", "-K", is_flag=True,
                     help="Ask for the sudo password (or set PROVISION_BECOME_PASSWORD); never on the command line."),
        click.option("--jump", default=None, metavar="[USER@]HOST", help="Reach the hosts through this jump host."),
        click.option("--connect-timeout", type=float, default=10.0, show_default=True, help="SSH connect timeout (s)."),
        click.option("--node", default=None, metavar="NAME",
                     help="A cluster profile: the node this target is (an inventory finds it by host)."),
        root_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _targets(profile: Path | None, opts: dict[str, Any]) -> list[Any]:
    from provisioner.errors import UsageError
    from provisioner.fleet import Target, ssh_target
    from provisioner.inventory import host_from_arg, load_inventory, select

    password = os.environ.get("PROVISION_BECOME_PASSWORD")
    if opts["ask_become_pass"]:
        password = click.prompt("sudo password", hide_input=True, err=True)
    ssh_kwargs = {"accept_new_host_key": opts["accept_new_host_key"], "known_hosts": opts["known_hosts"],
                  "become_password": password,
                  "become": opts["become"], "jump": opts["jump"], "connect_timeout": opts["connect_timeout"],
                  "root": str(opts["root"]) if opts["root"] is not None else None}
    if opts["inventory"] is not None:
        hosts = select(load_inventory(opts["inventory"]), opts["limit"])
        targets = []
        for host in hosts:
            chosen = profile or (Path(host.profile) if host.profile else None)
            if chosen is None:
                raise UsageError(f"host {host.name} names no profile in the inventory",
                                 hint="give PROFILE on the command line or `profile:` for the host")
            targets.append(ssh_target(host, chosen, **ssh_kwargs))
        return targets
    if profile is None:
        raise UsageError("PROFILE is missing", hint="give a profile file or a library profile name")
    node = opts.get("node")
    if opts["host"] is not None:
        return [dataclasses.replace(ssh_target(host_from_arg(opts["host"]), profile, **ssh_kwargs), node=node)]
    root = opts["root"]
    name = "local" if root is None else f"local:{root}"
    return [Target(name, profile, lambda: _transport(root), model_root=str(root) if root is not None else "",
                   node=node)]


def _one_target(profile: Path, opts: dict[str, Any], what: str) -> Any:
    """The single target `fit --host` and `init` read; more than one is a usage error."""
    from provisioner.errors import UsageError

    targets = _targets(profile, opts)
    if len(targets) != 1:
        raise UsageError(what, hint="give --host HOST (or --limit to one inventory host)")
    return targets[0]


def _run_fleet(command: str, profile: Path | None, opts: dict[str, Any], *, apply: bool,
               show_diff: bool, as_json: bool, collect: dict[str, Any] | None = None) -> int:
    """Plan or apply on every target; with ``collect``, the JSON goes there instead of stdout."""
    from provisioner.fleet import RunOptions, run
    from provisioner.report import envelope, host_json, plan_text, print_json, say

    targets = _targets(profile, opts)
    color = sys.stderr.isatty()

    def report(outcome: Any) -> None:
        if as_json:
            return
        if outcome.error:
            for problem in outcome.error:
                say(f"error: {problem.one_line()}")
            return
        result = outcome.result
        say(plan_text(outcome.name, result.plan, show_diff=show_diff, color=color))
        for warning in result.warnings:
            say(f"  warning: {warning}")
        if result.applied:
            say(f"{outcome.name}: applied" + (f", generation {result.generation}" if result.generation else "")
                + (f", handlers run: {', '.join(result.handlers_run)}" if result.handlers_run else ""))

    options = RunOptions(apply=apply, restart=opts.get("restart", False), wait_lock=opts.get("wait_lock", 0.0),
                         ignore_fit=opts["ignore_fit"], forks=opts["forks"])
    outcomes = run(targets, options, report)
    errored = [o for o in outcomes if not o.ok]
    changed = any(o.changed for o in outcomes)
    if as_json:
        hosts = []
        for o in outcomes:
            if o.error:
                hosts.append(host_json(o.name, None, ok=False, error=o.error[0]))
            else:
                assert o.result is not None
                hosts.append(host_json(o.name, o.result.plan, generation=o.result.generation))
        first = errored[0].error[0] if errored and errored[0].error else None
        data = envelope(command, not errored, first, changed=changed, hosts=hosts)
        if collect is not None:
            collect.update(data)
        else:
            print_json(data)
    elif len(outcomes) > 1:
        say(f"{len(outcomes)} hosts: {len(outcomes) - len(errored)} ok, {len(errored)} failed"
            + (f" ({', '.join(o.name for o in errored)})" if errored else ""))
    if errored:
        return EXIT_ERROR
    if not apply and changed:
        return EXIT_FINDING
    return EXIT_OK


@main.command()
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
@json_option
@ignore_fit_option
@handle_errors("plan")
def plan(profile: Path | None, as_json: bool, **opts: Any) -> int:
    """Show what `apply` would change, with diffs. Touches nothing.

    Exit 0 nothing to do, 2 changes pending, 1 error (use it in CI to catch drift).
    Over a fleet: 1 if any host errored, else 2 if any host has changes, else 0.

    \b
    Example:
      provision plan examples/quickstart.yaml --root ./demo
      provision plan examples/quickstart.yaml --host admin@gpu-box --become
      provision plan -i examples/fleet/inventory.yaml --limit workstations --json
    """
    return _run_fleet("plan", profile, opts, apply=False, show_diff=True, as_json=as_json)


@main.command()
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
@click.option("--dry-run", is_flag=True, help="Only show the plan (same as `provision plan`).")
@click.option("--diff", "show_diff", is_flag=True, help="Show unified diffs of the changes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; needed without a terminal.")
@click.option("--restart", is_flag=True, help="Restart the model server if it runs and its files changed.")
@click.option("--wait-lock", type=float, default=0.0, metavar="SECONDS",
              help="Wait this long for another apply's lock instead of failing at once.")
@click.option("--verify", "then_verify", is_flag=True,
              help="Run `provision verify` after a successful apply (exit 2 if a check fails).")
@json_option
@ignore_fit_option
@handle_errors("apply")
def apply(profile: Path | None, dry_run: bool, show_diff: bool, yes: bool, then_verify: bool, as_json: bool,
          **opts: Any) -> int:
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
        return _run_fleet("apply", profile, opts, apply=False, show_diff=True, as_json=as_json)
    if not yes:
        from provisioner.errors import UsageError

        if not sys.stdin.isatty():
            raise UsageError("apply needs --yes when there is no terminal to ask on",
                             hint="review with `provision plan`, then apply with --yes")
        code = _run_fleet("apply", profile, opts, apply=False, show_diff=True, as_json=False)
        if code != EXIT_FINDING:
            return code
        if not click.confirm("Apply these changes?", err=True):
            return EXIT_ERROR
    if not then_verify:
        return _run_fleet("apply", profile, opts, apply=True, show_diff=show_diff, as_json=as_json)
    from provisioner.report import print_json
    from provisioner.verify.run import VerifyOptions

    applied: dict[str, Any] = {}
    code = _run_fleet("apply", profile, opts, apply=True, show_diff=show_diff, as_json=as_json, collect=applied)
    if code == EXIT_OK:
        checked: dict[str, Any] = {}
        code = _run_verify(profile, opts, VerifyOptions(), as_json, collect=checked)
        applied["verify"] = checked
    if as_json:
        print_json(applied)
    return code


@main.command()
@root_option
@json_option
@handle_errors("generations")
def generations(root: Path | None, as_json: bool) -> int:
    """List the generations applied to this machine (or the tree under --root).

    \b
    Example:
      provision generations --root ./demo
    """
    from provisioner.engine import read_generations
    from provisioner.report import envelope, print_json, print_table

    transport = _transport(root)
    last, found = read_generations(transport)
    if as_json:
        print_json(envelope("generations", True, None, current=last,
                            generations=[g.as_json() for g in found]))
    else:
        rows = [[("* " if g.number == last else "  ") + str(g.number), g.time, g.profile,
                 str(len(g.manifest.get("changes", []))), "" if g.complete else "incomplete"]
                for g in found]
        print_table(f"{len(found)} generation(s), current {last}",
                    ["number", "time", "profile", "files changed", ""], rows)
    return EXIT_OK


@main.command()
@root_option
@click.option("--to", "to", type=int, default=None, help="Generation to restore (default: the previous one).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask; needed without a terminal.")
@json_option
@handle_errors("rollback")
def rollback(root: Path | None, to: int | None, yes: bool, as_json: bool) -> int:
    """Restore an earlier generation exactly; the rollback is itself a generation.

    Files created since are removed, files replaced or deleted since come back
    byte for byte with their modes and owners.

    \b
    Example:
      provision rollback --root ./demo --yes
      provision rollback --to 1 --yes
    """
    from provisioner.engine import apply_plan, plan_rollback
    from provisioner.errors import UsageError
    from provisioner.report import envelope, host_json, plan_text, print_json, say

    transport = _transport(root)
    plan_, gathered, target = plan_rollback(transport, to)
    if plan_.changed and not yes:
        if not sys.stdin.isatty():
            raise UsageError("rollback needs --yes when there is no terminal to ask on")
        say(plan_text(transport.name, plan_, show_diff=True, color=sys.stderr.isatty()))
        if not click.confirm(f"Roll back to generation {target}?", err=True):
            return EXIT_ERROR
    result = apply_plan(plan_, gathered, transport, profile_name=f"rollback to {target}")
    if as_json:
        print_json(envelope("rollback", True, None, changed=plan_.changed, target=target,
                            hosts=[host_json(transport.name, plan_, generation=result.generation)]))
    else:
        say(plan_text(transport.name, plan_, show_diff=False, color=sys.stderr.isatty()))
        say(f"{transport.name}: rolled back to generation {target}"
            + (f" (recorded as generation {result.generation})" if result.generation else ""))
    return EXIT_OK


@main.command()
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--context", type=click.IntRange(256, 10_000_000), default=None,
              help="Fit at this context instead of the profile's.")
@click.option("--here", is_flag=True, help="Use this machine's real GPUs, RAM and cores instead of the profile's.")
@target_options
@json_option
@ignore_fit_option
@handle_errors("fit")
def fit(profile: Path, context: int | None, here: bool, as_json: bool, ignore_fit: bool, **opts: Any) -> int:
    """Where every byte goes and how fast it will run.

    Prints the placement per device (weights, KV cache, buffers, free) for each
    GPU and for system RAM, the engine flags chosen (the same ones the run
    script states), and the predicted decode speed (short prompt, and with the
    cache filled to the context) and prefill speed, with the bottleneck. When
    the model does not fit, says how much is missing and the cheapest changes
    that would fit (smaller quant, shorter context, fewer slots, experts on the
    CPU, quantised KV cache, another engine), each checked.

    With --host (or -i with --limit, or --here for this machine) the host's real
    GPUs (by PCI device id), installed RAM, cores and NUMA nodes replace the
    profile's hardware numbers: will it fit *that* box. What other processes
    hold on each GPU (not the profile's own server and its children) and RAM
    reserved as hugepages are subtracted; GPU pairs without peer-to-peer
    access are reported and priced. Model files on this machine (or under
    --root) give the real per-layer sizes from their GGUF header.

    Exit codes: 0 fits, 2 does not fit, 1 bad input.

    \b
    Example:
      provision fit examples/quickstart.yaml
      provision fit profiles/rtx-3090-gpt-oss-120b-llamacpp.yaml --context 65536 --json
      provision fit rtx-4090-qwen3-30b-a3b-llamacpp --host admin@gpu-box   # that box's GPUs and RAM
      provision fit examples/quickstart.yaml --here   # this machine, minus what others hold
      provision fit examples/cluster/two-node-qwen3-235b-fp8-vllm.yaml --json   # devices per node
    """
    from provisioner.fit_command import fit_command, gather_fit_host

    root = str(opts["root"]) if opts.get("root") else ""
    if not here and opts["host"] is None and opts["inventory"] is None:
        return fit_command(profile, context, as_json, ignore_fit, root=root)
    target = _one_target(profile, opts, "fit reads one host's hardware")
    with target.opened() as transport:
        facts, output = gather_fit_host(transport, profile)
    return fit_command(profile, context, as_json, ignore_fit, host_facts=facts, host=target.name,
                       host_output=output, root=root, read_model_files=here or bool(root))


@main.command()
@target_options
@json_option
@handle_errors("facts")
def facts(as_json: bool, **opts: Any) -> int:
    """Print what provision sees on a host: memory, CPUs, kernel, distro,
    systemd, SELinux, NVIDIA driver and kernel module flavour, generation.

    \b
    Example:
      provision facts
      provision facts --host admin@gpu-box --json
      provision facts -i examples/fleet/inventory.yaml --limit gpu1
    """

    from provisioner.engine import gather
    from provisioner.report import print_json, print_table, say

    placeholder = Path("-")  # facts need no profile; targets carry one for plan/apply only
    targets = _targets(placeholder, opts)

    def work(target: Any, transport: Any) -> dict[str, Any]:
        gathered = gather(transport, [])
        values = {k: v for k, v in gathered.facts.values.items() if k != "root"}
        return {"host": target.name, "ok": True, "facts": values, "generation": gathered.last_generation,
                "error": None}

    def on_error(target: Any, exc: ProvisionError) -> dict[str, Any]:
        return {"host": target.name, "ok": False, "facts": {}, "generation": None, "error": exc.first.as_json()}

    from provisioner.fleet import map_targets

    hosts = map_targets(targets, opts["forks"], work, on_error)
    failed = [h for h in hosts if not h["ok"]]
    if as_json:
        first = failed[0]["error"] if failed else None
        print_json({"command": "facts", "ok": not failed, "error": first, "hosts": hosts})
    else:
        for host in hosts:
            if not host["ok"]:
                say(f"error: {host['host']}: {host['error']['message']}")
                continue
            rows = [[k, v] for k, v in sorted(host["facts"].items())]
            rows.append(["generation", str(host["generation"])])
            print_table(host["host"], ["fact", "value"], rows)
    return EXIT_ERROR if failed else EXIT_OK


@main.command()
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
@click.option("--endpoint", default=None, metavar="URL",
              help="The model server to check (default: the profile's address, on this machine).")
@click.option("--only", default=None, metavar="GROUPS",
              help="Comma-separated: gpu,drift,model,install,endpoint,cluster,quality.")
@click.option("--no-needle", is_flag=True, help="Skip the long-prompt needle check (slow on big contexts).")
@click.option("--rebaseline", is_flag=True,
              help="Record this run's quality fingerprint as the host's baseline (accept a change on purpose).")
@json_option
@ignore_fit_option
@handle_errors("verify")
def verify(profile: Path | None, endpoint: str | None, only: str | None, no_needle: bool, rebaseline: bool,
           as_json: bool, **opts: Any) -> int:
    """Prove the box is right: GPU and driver, drift, model files, the live endpoint.

    Exit 0 every check passed (warnings allowed), 2 a check failed, 1 could not run.

    \b
    Example:
      provision verify examples/quickstart.yaml
      provision verify examples/quickstart.yaml --root ./demo --only drift,model
      provision verify my.yaml --host admin@gpu-box --endpoint http://127.0.0.1:8080 --json
    """
    from provisioner.errors import UsageError
    from provisioner.verify.run import GROUPS, VerifyOptions

    groups = frozenset(g.strip() for g in (only or ",".join(GROUPS)).split(",") if g.strip())
    unknown = groups - set(GROUPS)
    if unknown:
        raise UsageError(f"--only: unknown group {sorted(unknown)[0]!r}", hint=f"groups: {', '.join(GROUPS)}")
    options = VerifyOptions(only=groups, endpoint=endpoint, needle=not no_needle, rebaseline=rebaseline)
    return _run_verify(profile, opts, options, as_json)


def _run_verify(profile: Path | None, opts: dict[str, Any], options: Any, as_json: bool,
                collect: dict[str, Any] | None = None) -> int:
    """verify every target; with ``collect``, the JSON goes there instead of stdout."""

    from provisioner.report import print_json, print_table, say
    from provisioner.verify import failures_first, worst
    from provisioner.verify.run import verify_target

    targets = _targets(profile, opts)
    builds = {t.key: t.build(opts["ignore_fit"]) for t in targets}

    def work(target: Any, transport: Any) -> dict[str, Any]:

        built = builds[target.key]
        node = target.node_of(built)
        checks = failures_first(verify_target(built, transport, options, node))
        return {"host": target.name, "ok": True, "error": None, "checks": checks}

    def on_error(target: Any, exc: ProvisionError) -> dict[str, Any]:
        return {"host": target.name, "ok": False, "error": exc.first, "checks": []}

    from provisioner.fleet import map_targets

    hosts = map_targets(targets, opts["forks"], work, on_error)
    errored = [h for h in hosts if not h["ok"]]
    failed = [h for h in hosts if h["ok"] and worst(h["checks"]) == "fail"]
    if as_json:
        first = errored[0]["error"].as_json() if errored else None
        data = {"command": "verify", "ok": not errored, "error": first,
                "hosts": [{"host": h["host"], "ok": h["ok"], "error": h["error"].as_json() if h["error"] else None,
                           "checks": [c.as_json() for c in h["checks"]]} for h in hosts]}
        if collect is not None:
            collect.update(data)
        else:
            print_json(data)
    else:
        for host in hosts:
            if host["error"]:
                say(f"error: {host['error'].one_line()}")
                continue
            rows = [[c.id, c.status, _first_line(c.observed), _first_line(c.expected), c.hint or ""]
                    for c in host["checks"]]
            print_table(f"{host['host']}: {worst(host['checks'])}", ["check", "status", "observed", "expected",
                                                                      "hint"], rows)
    if errored:
        return EXIT_ERROR
    return EXIT_FINDING if failed else EXIT_OK


def _first_line(text: str | None) -> str:
    if not text:
        return ""
    line = text.splitlines()[0]
    return line if len(line) <= 60 else line[:57] + "..."


@main.group()
def profiles() -> None:
    """The library of known-good profiles: hardware + model combinations with
    sources, measured speeds, pitfalls and what `provision fit` predicts.

    \b
    Example:
      provision profiles list
      provision profiles show rtx-pro-6000-qwen3-235b-q3-llamacpp
    """


@profiles.command("list")
@json_option
@handle_errors("profiles")
def profiles_list(as_json: bool) -> int:
    """List the library profiles: GPU, RAM, model and quant, engine, context and the
    decode speed `provision fit` predicts (one stream, short prompt).

    \b
    Example:
      provision profiles list
      provision profiles list --json
    """
    from provisioner.library import profiles_list_command

    return profiles_list_command(as_json)


@profiles.command("show")
@click.argument("name")
@json_option
@handle_errors("profiles")
def profiles_show(name: str, as_json: bool) -> int:
    """Print the library profile NAME (sources, measured speed, pitfalls) followed by
    what `provision fit` says about it, as YAML comments. Use it with `extends: NAME`.

    \b
    Example:
      provision profiles show rtx-4090-qwen3-30b-a3b-llamacpp
      provision profiles show cpu-only-256g-qwen3-235b-llamacpp > my.yaml
    """
    from provisioner.library import profiles_show_command

    return profiles_show_command(name, as_json)


@main.command()
@target_options
@click.option("--model", default=None, metavar="ID",
              help="Only library profiles serving this catalog model id (e.g. qwen3-235b-a22b).")
@json_option
@handle_errors("init")
def init(model: str | None, as_json: bool, **opts: Any) -> int:
    """Read a host's facts (GPUs by PCI device id, RAM, cores, NUMA, memory type where
    readable) and print a commented profile extending the best-fitting library profile.

    A library profile written for this hardware (same GPU models and counts, at least
    its RAM) is used as is; otherwise the closest is adapted to the host's GPUs, RAM and
    cores and checked with fit. The printed profile passes `provision validate`.
    With --become, dmidecode gives the installed RAM and memory type.
    Exit 0 a profile was printed; 1 no library profile fits, or the host could not be read.

    \b
    Example:
      provision init > my-box.yaml
      provision init --host admin@gpu-box --become --model gpt-oss-120b > gpu-box.yaml
      provision validate my-box.yaml && provision plan my-box.yaml
    """
    from provisioner.init_command import init_command

    with _one_target(Path("-"), opts, "init reads one host").opened() as transport:
        return init_command(transport, model, as_json)


@main.command()
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@target_options
@click.option("--once", is_flag=True, help="Two samples INTERVAL apart, print, exit (2 if a check failed).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True, metavar="S",
              help="Seconds between samples.")
@click.option("--samples", type=click.IntRange(1), default=None, metavar="N", help="Stop after N samples per host.")
@json_option
@handle_errors("monitor")
def monitor(profile: Path | None, once: bool, interval: float, samples: int | None, as_json: bool,
            **opts: Any) -> int:
    """Watch the serving model: swap, memory/IO pressure, page cache vs model, the server's RSS,
    locked memory and major faults, GPU temperature, power vs limit, clocks and throttle reasons,
    VRAM, PCIe link and RX/TX, CPU governor. Each sample is pass/warn/fail with a hint.

    Without PROFILE the defaults apply and no server is expected. On a terminal a live view,
    otherwise one JSON object per sample and host. --once exits 0 ok, 2 a check failed,
    1 a host could not be read.

    \b
    Example:
      provision monitor examples/quickstart.yaml --once
      provision monitor --host admin@gpu-box --interval 2
      provision monitor -i examples/fleet/inventory.yaml --once --json
      provision monitor my.yaml --samples 10 --json > samples.jsonl
    """
    from provisioner.monitor import monitor_command

    targets = _targets(profile or Path("-"), opts)  # "-": no profile, like `facts`
    return monitor_command(targets, opts["forks"], once, interval, as_json, samples)


# --------------------------------------------------------------------------- export (issue 11)
@main.group()
def export() -> None:
    """Hand the same result to other engines: an Ansible playbook or cloud-init user-data.

    \b
    Example:
      provision export ansible examples/quickstart.yaml --out ./ansible
      provision export cloud-init examples/quickstart.yaml --out user-data.yaml
    """


@export.command("ansible")
@click.argument("profile", type=click.Path(path_type=Path), required=False)
@click.option("-i", "--inventory", type=click.Path(path_type=Path), default=None,
              help="Our (or an Ansible YAML) inventory: one role per distinct rendered result, inventory.yml beside.")
@click.option("--limit", default=None, help="Only these hosts/groups of the inventory (comma-separated, globs).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Folder for site.yml, roles/ (and inventory.yml with -i).")
@click.option("--overwrite", is_flag=True, help="Write into a folder that is not empty.")
@json_option
@handle_errors("export")
def export_ansible(profile: Path | None, inventory: Path | None, limit: str | None, out_dir: Path,
                   overwrite: bool, as_json: bool) -> int:
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
    from provisioner.export.command import export_ansible_command

    return export_ansible_command(profile, inventory, limit, out_dir, overwrite, as_json)


@export.command("cloud-init")
@click.argument("profile", type=click.Path(path_type=Path))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The user-data file to write (#cloud-config).")
@click.option("--overwrite", is_flag=True, help="Replace an existing file.")
@json_option
@handle_errors("export")
def export_cloud_init(profile: Path, out: Path, overwrite: bool, as_json: bool) -> int:
    """Write #cloud-config user-data: write_files with every rendered file, runcmd with
    the handlers a first apply runs (daemon-reload, sysctl, ..., enable --now the server).

    \b
    Example:
      provision export cloud-init examples/quickstart.yaml --out user-data.yaml
      cloud-init schema --config-file user-data.yaml
    """
    from provisioner.export.command import export_cloudinit_command

    return export_cloudinit_command(profile, out, overwrite, as_json)
