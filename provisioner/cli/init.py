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
@click.option("--gpu", default=None, metavar="ID",
              help="Draft for this hardware instead of reading a host: the catalog GPU (with --ram, --cores).")
@click.option("--gpu-count", type=click.IntRange(1, 16), default=1, show_default=True, help="With --gpu.")
@click.option("--ram", default=None, metavar="SIZE", help="With --gpu: the RAM, e.g. 192GiB.")
@click.option("--cores", type=click.IntRange(1, 1024), default=None, help="With --gpu: physical CPU cores.")
@click.option("--context", type=click.IntRange(256, 10_000_000), default=None, help="With --gpu: the context.")
@click.option("--mode", type=click.Choice(["thinking", "non-thinking"]), default=None, help="With --gpu.")
def init(model: str | None, as_json: bool, gpu: str | None, gpu_count: int, ram: str | None, cores: int | None,
         context: int | None, mode: str | None, **opts: Any) -> Result:
    """Read a host's facts (GPUs by PCI device id, RAM, cores, NUMA, memory type where
    readable) and print a commented profile extending the best-fitting library profile.

    A library profile written for this hardware (same GPU models and counts, at least
    its RAM) is used as is; otherwise the closest is adapted to the host's GPUs, RAM and
    cores and checked with fit. The printed profile passes `provision validate`.
    With --become, dmidecode gives the installed RAM and memory type.
    Exit 0 a profile was printed; 1 no library profile fits, or the host could not be read.

    \b
    With --gpu, --ram, --cores and --model no host is read: the best quant that fits
    that hardware is chosen (the top three shown with their predicted speed) and the
    profile asks for a generated API key; `provision lock` then pins its files.

    \b
    Example:
      provision init --gpu rtx-pro-6000-blackwell --ram 192GiB --cores 24 --model qwen3-235b-a22b > box.yaml
      provision init > my-box.yaml
      provision init --host admin@gpu-box --become --model gpt-oss-120b > gpu-box.yaml
      provision validate my-box.yaml && provision plan my-box.yaml
    """
    if gpu is not None:
        return _offline(gpu, gpu_count, ram, cores, model, context, mode)
    with one_target(NO_PROFILE, opts, "init reads one host").opened() as transport:
        return init_result(transport, model)


def _offline(gpu: str, count: int, ram: str | None, cores: int | None, model: str | None, context: int | None,
             mode: str | None) -> Result:
    from provisioner.draft.offline import draft_offline
    from provisioner.errors import UsageError
    from provisioner.units import parse_size

    if ram is None or cores is None or model is None:
        raise UsageError("init --gpu drafts without a host: it needs --ram, --cores and --model too",
                         hint="e.g. provision init --gpu rtx-pro-6000-blackwell --ram 192GiB --cores 24 "
                         "--model qwen3-235b-a22b")
    try:
        ram_bytes = parse_size(ram)
    except ValueError as exc:
        raise UsageError(f"--ram {ram!r}: {exc}", hint="a size such as 192GiB") from None
    draft = draft_offline(gpu, count, ram_bytes, cores, model, context=context, mode=mode)
    best = draft.choices[0]
    fields = {"base": draft.base, "quant": best.quant, "profile": draft.text,
              "choices": [{"quant": c.quant, "bits_per_weight": c.bits_per_weight,
                           "decode_tokens_per_s": round(c.decode_tokens_per_s, 1),
                           "decode_tokens_per_s_at_context": round(c.decode_tokens_per_s_at_context, 1)}
                          for c in draft.choices[:3]]}
    said = lines(*(f"init: {c.quant}: {c.decode_tokens_per_s:.1f} tok/s decode predicted"
                   + ("  <- chosen (most bits per weight that fits)" if c is best else "") for c in draft.choices[:3]))
    return Result(EXIT_OK, fields, (Stdout(draft.text), said))


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
