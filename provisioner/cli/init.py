"""`provision init`: a commented profile for a host, from its facts and the library."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from provisioner.cli._common import EXIT_OK, NO_PROFILE, command, one_target, target_options
from provisioner.cli._output import Result, Stdout, emit, lines

if TYPE_CHECKING:
    from provisioner.transport import Transport


@command("init")
@target_options
@click.option("--model", default=None, metavar="ID",
              help="Only library profiles serving this catalog model id (e.g. qwen3-235b-a22b).")
def init(model: str | None, as_json: bool, **opts: Any) -> Result:
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
    with one_target(NO_PROFILE, opts, "init reads one host").opened() as transport:
        return init_result(transport, model)


def init_result(transport: Transport, model: str | None) -> Result:
    """Gather the host's facts (one round trip), choose, and the profile as text and JSON."""
    from provisioner.draft.host import choose_profile, gpu_label, hardware_text, render_init_profile
    from provisioner.facts.collect import gather_host

    facts = gather_host(transport)
    host = transport.name
    choice = choose_profile(facts, model)
    text = render_init_profile(choice)
    c = choice.chosen
    fields = {
        "host": host, "base": choice.base, "adapted": choice.adapted,
        "decode_tokens_per_s": round(c.decode_tokens_per_s, 1),
        "decode_tokens_per_s_at_context": round(c.decode_tokens_per_s_at_context, 1), "bottleneck": c.bottleneck,
        "facts": {"ram_bytes": facts.ram_bytes, "mem_total_kb": facts.mem_total_kb, "cpus": facts.cpus,
                  "cores": facts.cores, "numa_nodes": facts.numa_nodes, "memory_type": facts.memory_type,
                  "gpus": [{"name": gpu_label(g), "device_id": g.device_id, "model": g.catalog_id}
                           for g in facts.gpus]},
        "alternatives": [{"name": o.base.name, "adapted": not o.exact,
                          "decode_tokens_per_s": round(o.decode_tokens_per_s, 1)} for o in choice.others],
        "profile": text,
    }
    said = lines(f"init: {hardware_text(facts)} -> {choice.base}"
                 f"{' (adapted)' if choice.adapted else ''}, {c.decode_tokens_per_s:.1f} tok/s decode predicted")
    return Result(EXIT_OK, fields, (Stdout(text), said))


def init_command(transport: Transport, model: str | None, as_json: bool = False) -> int:
    """The command's body on an open transport: print and return the exit code."""
    result = init_result(transport, model)
    emit("init", result, as_json)
    return result.code
