"""`provision facts`: what provision sees on a host."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from provisioner.cli._common import EXIT_ERROR, EXIT_OK, NO_PROFILE, command, target_options, targets
from provisioner.cli._output import Result, Table, lines, problem_json
from provisioner.errors import Problem, ProvisionError

if TYPE_CHECKING:
    from provisioner.converge.fleet import Target
    from provisioner.transport import Transport


@command("facts")
@target_options
def facts(as_json: bool, **opts: Any) -> Result:
    """Print what provision sees on a host: memory, CPUs, kernel, distro,
    systemd, SELinux, NVIDIA driver and kernel module flavour, generation.

    \b
    Example:
      provision facts
      provision facts --host admin@gpu-box --json
      provision facts -i examples/fleet/inventory.yaml --limit gpu1
    """
    from provisioner.converge.fleet import map_targets
    from provisioner.converge.run import gather

    def work(target: Target, transport: Transport) -> dict[str, Any]:
        gathered = gather(transport, [])
        values = {k: v for k, v in gathered.facts.values.items() if k != "root"}
        return {"host": target.name, "ok": True, "facts": values, "generation": gathered.last_generation,
                "error": None}

    def on_error(target: Target, exc: ProvisionError) -> dict[str, Any]:
        return {"host": target.name, "ok": False, "facts": {}, "generation": None, "error": exc.first}

    hosts = map_targets(targets(NO_PROFILE, opts), opts["forks"], work, on_error)
    failed: list[Problem] = [h["error"] for h in hosts if not h["ok"]]
    human: list[Table | Any] = []
    for host in hosts:
        if not host["ok"]:
            human.append(lines(f"error: {host['host']}: {host['error'].message}"))
            continue
        rows = [[k, v] for k, v in sorted(host["facts"].items())] + [["generation", str(host["generation"])]]
        human.append(Table(host["host"], ["fact", "value"], rows))
    fields = {"hosts": [{**h, "error": problem_json(h["error"]) if h["error"] else None} for h in hosts]}
    return Result(EXIT_ERROR if failed else EXIT_OK, fields, tuple(human), ok=not failed,
                  error=failed[0] if failed else None)
