"""`provision validate`: schema, catalog, fit and render of each profile; no host touched."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from provisioner.cli._common import EXIT_ERROR, EXIT_OK, command
from provisioner.cli._output import Result, lines, problem_json
from provisioner.errors import Problem, ProvisionError


@command("validate")
@click.argument("profiles", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(profiles: tuple[Path, ...], as_json: bool) -> Result:
    """Check PROFILES: schema, catalog, fit and render. No host is touched.

    Exit 0 if every profile is valid, 1 if not (every problem is listed, one
    line each, with file:line:column).

    \b
    Example:
      provision validate examples/quickstart.yaml profiles/*.yaml
    """
    from provisioner.render.cached import BuildRequest, cached_build  # pydantic and Jinja2 only on a miss

    results: list[dict[str, Any]] = []
    problems: list[Problem] = []
    said: list[str] = []
    for path in profiles:
        try:
            # validate never asks a hub for a file list (network=False)
            built = cached_build(BuildRequest(str(path), model_root="", network=False)).summary
        except ProvisionError as exc:
            problems += exc.problems
            results.append({"profile": str(path), "ok": False, "errors": [problem_json(p) for p in exc.problems]})
            continue
        rendered = built.rendered
        results.append({"profile": str(path), "ok": True, "errors": [], "files": len(rendered.files),
                        "warnings": list(rendered.warnings)})
        said.append(f"ok: {path}: {built.model} {built.quant} on {built.engine} "
                    f"{built.runtime_version}, {len(rendered.files)} files")
        said += [f"warning: {path}: {warning}" for warning in rendered.warnings]
    said += [f"error: {problem.one_line()}" for problem in problems]
    return Result(EXIT_ERROR if problems else EXIT_OK, {"profiles": results}, (lines(*said),),
                  ok=not problems, error=problems[0] if problems else None)
