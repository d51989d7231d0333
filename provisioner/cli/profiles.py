"""`provision profiles list|show`: the library of known-good profiles."""

from __future__ import annotations

import click

from provisioner.cli._common import EXIT_OK, command
from provisioner.cli._output import Result, Stdout, lines
from provisioner.units import format_size


@click.group("profiles")
def profiles() -> None:
    """The library of known-good profiles: hardware + model combinations with
    sources, measured speeds, pitfalls and what `provision fit` predicts.

    \b
    Example:
      provision profiles list
      provision profiles show rtx-pro-6000-qwen3-235b-q3-llamacpp
    """


def _gib_text(num: int) -> str:
    gib = num / 2**30
    return f"{gib:.0f} GiB" if gib == int(gib) else format_size(num)


@command("list", group="profiles")
def profiles_list(as_json: bool) -> Result:
    """List the library profiles: GPU, RAM, model and quant, engine, context and the
    decode speed `provision fit` predicts (one stream, short prompt).

    \b
    Example:
      provision profiles list
      provision profiles list --json
    """
    from provisioner.fit.library import list_profiles  # loads and fits every profile: only when run

    rows = list_profiles()
    table = [["name", "GPU", "RAM", "model", "engine", "context", "tok/s"]]
    table += [[r["name"], r["gpu"], _gib_text(r["ram_bytes"]), f"{r['model']} {r['quant']}",
               f"{r['engine']} {r['engine_version']}", str(r["context"]),
               f"{r['decode_tokens_per_s']:.1f}" + ("" if r["fits"] else " (does NOT fit)")] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    said = [f"{len(rows)} library profiles; tok/s: decode predicted by `provision fit` (one stream, short prompt)"]
    said += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in table]
    return Result(EXIT_OK, {"profiles": rows}, (lines(*said),))


@command("show", group="profiles")
@click.argument("name")
def profiles_show(name: str, as_json: bool) -> Result:
    """Print the library profile NAME (sources, measured speed, pitfalls) followed by
    what `provision fit` says about it, as YAML comments. Use it with `extends: NAME`.

    \b
    Example:
      provision profiles show rtx-4090-qwen3-30b-a3b-llamacpp
      provision profiles show cpu-only-256g-qwen3-235b-llamacpp > my.yaml
    """
    from provisioner.fit.library import entry, fit_summary, show_profile

    e = entry(name)
    return Result(EXIT_OK, {"profile": e.as_dict(), "text": e.path.read_text(encoding="utf-8"),
                            "summary": fit_summary(e)}, (Stdout(show_profile(name)),))


profiles.add_command(profiles_list)
profiles.add_command(profiles_show)
