"""What every command shares: exit codes, the ``command`` decorator (--json and the
one mapping of errors to a line and an exit code), and where to converge (targets).

Modules of the domain are imported inside the functions that need them: ``provision
--help`` and the click tree must not pay for pydantic, Jinja2, paramiko or rich.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from provisioner.cli import _output
from provisioner.errors import Problem, ProvisionError, UsageError

if TYPE_CHECKING:
    from provisioner.converge.fleet import Target
    from provisioner.converge.inventory import Host
    from provisioner.transport import Transport

EXIT_OK, EXIT_ERROR, EXIT_FINDING = 0, 1, 2
F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object (the envelope, docs/commands.md) on stdout.")
root_option = click.option("--root", "root", type=click.Path(path_type=Path), default=None,
                           help="Manage the tree under DIR as if it were / (image builds, chroots, tests).")
ignore_fit_option = click.option("--ignore-fit", is_flag=True,
                                 help="Go on even if fit says the model does not fit.")


def command(name: str, *, group: str | None = None, **attrs: Any) -> Callable[[Callable[..., Any]], click.Command]:
    """A click command with --json whose function returns an exit code or a ``Result``.

    Known errors become one line each (or the JSON envelope) and exit 1, never a
    traceback; a ``Result`` is printed by ``_output.emit``. ``group`` names the
    command in the envelope when it is a subcommand (``profiles``, ``export``)."""
    label = group or name

    def wrap(func: Callable[..., Any]) -> click.Command:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> None:
            as_json = bool(kwargs.get("as_json"))
            sys.exit(_run(label, func, as_json, args, kwargs))

        # --json comes last in --help, after the command's own options
        params = getattr(run, "__click_params__", [])
        run.__click_params__ = []  # type: ignore[attr-defined]
        json_option(run)
        run.__click_params__ = run.__click_params__ + params  # type: ignore[attr-defined]
        made: click.Command = click.command(name, **attrs)(run)  # type: ignore[no-untyped-call]
        return made

    return wrap


def _run(label: str, func: Callable[..., Any], as_json: bool, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    try:
        outcome = func(*args, **kwargs)
    except ProvisionError as exc:
        _output.report_error(label, exc.problems, as_json)
        return EXIT_ERROR
    except KeyboardInterrupt:
        _output.report_error(label, [Problem("interrupted")], as_json)
        return 130
    except OSError as exc:
        problem = Problem(f"{exc.strerror or exc}", file=exc.filename and str(exc.filename),
                          hint="check the path and permissions")
        _output.report_error(label, [problem], as_json)
        return EXIT_ERROR
    if isinstance(outcome, _output.Result):
        _output.emit(label, outcome, as_json)
        return outcome.code
    return int(outcome or EXIT_OK)


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
        click.option("--transport", type=click.Choice(["openssh", "fabric"]), default=None,
                     envvar="PROVISION_TRANSPORT", show_envvar=True,
                     help="SSH through the ssh client, its connection kept 60s for the next run "
                     "(default where ssh is on PATH), or through Fabric."),
        click.option("--node", default=None, metavar="NAME",
                     help="A cluster profile: the node this target is (an inventory finds it by host)."),
        root_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def local_transport(root: Path | None) -> Transport:
    from provisioner.transport.local import LocalTransport

    return LocalTransport(root)


@dataclasses.dataclass(frozen=True)
class SshOptions:
    """How to reach hosts over SSH, from the command line."""

    accept_new_host_key: bool
    known_hosts: str | None
    become: bool
    become_password: str | None
    jump: str | None
    connect_timeout: float
    root: str | None
    transport: str | None = None  # openssh | fabric; None: openssh where ssh is on PATH


def ssh_target(host: Host, profile: Path, ssh: SshOptions) -> Target:
    """A target reached over SSH (the transport is chosen now, connected later)."""
    import json

    from provisioner.converge.fleet import Target
    from provisioner.transport.choice import ssh_transport_factory
    from provisioner.transport.remote import SshTarget

    spec = SshTarget(name=host.name, address=host.address, port=host.port, user=host.user, key=host.key,
                     root=ssh.root if ssh.root is not None else host.root, state_dir=host.state_dir,
                     jump=ssh.jump or host.jump, become=ssh.become or host.become,
                     become_password=ssh.become_password, known_hosts=ssh.known_hosts,
                     accept_new_host_key=ssh.accept_new_host_key, connect_timeout=ssh.connect_timeout)
    overrides = json.dumps(host.overrides, sort_keys=True) if host.overrides else ""
    return Target(host.name, profile, ssh_transport_factory(spec, ssh.transport), overrides, per_host_node=True)


def targets(profile: Path | None, opts: dict[str, Any]) -> list[Target]:
    """The targets the options name: an inventory's hosts, one --host, or this machine (--root)."""
    from provisioner.converge.fleet import Target

    password = os.environ.get("PROVISION_BECOME_PASSWORD")
    if opts["ask_become_pass"]:
        password = click.prompt("sudo password", hide_input=True, err=True)
    ssh = SshOptions(accept_new_host_key=opts["accept_new_host_key"], known_hosts=opts["known_hosts"],
                     become=opts["become"], become_password=password, jump=opts["jump"],
                     connect_timeout=opts["connect_timeout"],
                     root=str(opts["root"]) if opts["root"] is not None else None, transport=opts.get("transport"))
    if opts["inventory"] is not None:
        from provisioner.converge.inventory import load_inventory, select  # YAML: only to read one

        found = []
        for host in select(load_inventory(opts["inventory"]), opts["limit"]):
            chosen = profile or (Path(host.profile) if host.profile else None)
            if chosen is None:
                raise UsageError(f"host {host.name} names no profile in the inventory",
                                 hint="give PROFILE on the command line or `profile:` for the host")
            found.append(ssh_target(host, chosen, ssh))
        return found
    if profile is None:
        raise UsageError("PROFILE is missing", hint="give a profile file or a library profile name")
    node = opts.get("node")
    if opts["host"] is not None:
        from provisioner.converge.inventory import host_from_arg

        return [dataclasses.replace(ssh_target(host_from_arg(opts["host"]), profile, ssh), node=node)]
    root = opts["root"]
    name = "local" if root is None else f"local:{root}"
    return [Target(name, profile, lambda: local_transport(root), model_root=str(root) if root is not None else "",
                   node=node)]


def one_target(profile: Path, opts: dict[str, Any], what: str) -> Target:
    """The single target `fit --host` and `init` read; more than one is a usage error."""
    found = targets(profile, opts)
    if len(found) != 1:
        raise UsageError(what, hint="give --host HOST (or --limit to one inventory host)")
    return found[0]


NO_PROFILE = Path("-")  # facts, init and monitor need no profile; a target carries one for plan/apply only
