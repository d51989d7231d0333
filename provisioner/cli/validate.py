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
    from provisioner.render.pipeline import build  # pydantic and Jinja2 only once a command runs

    results: list[dict[str, Any]] = []
    problems: list[Problem] = []
    said: list[str] = []
    for path in profiles:
        try:
            built = build(path, model_root="", network=False)  # validate never asks a hub for a file list
        except ProvisionError as exc:
            problems += exc.problems
            results.append({"profile": str(path), "ok": False, "errors": [problem_json(p) for p in exc.problems]})
            continue
        results.append({"profile": str(path), "ok": True, "errors": [], "files": len(built.rendered.files),
                        "warnings": list(built.rendered.warnings)})
        spec = built.spec
        said.append(f"ok: {path}: {spec.model.name} {spec.profile.model.quant} on {spec.engine.name} "
                    f"{spec.profile.runtime.version}, {len(built.rendered.files)} files")
        said += [f"warning: {path}: {warning}" for warning in built.rendered.warnings]
    said += [f"error: {problem.one_line()}" for problem in problems]
    return Result(EXIT_ERROR if problems else EXIT_OK, {"profiles": results}, (lines(*said),),
                  ok=not problems, error=problems[0] if problems else None)
