"""Command line. The ONE place that turns errors into messages and exit codes.

Exit codes (the same for every command): 0 ok / nothing to do; 2 a finding
(changes pending, does not fit, a check failed); 1 an error.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from provisioner import __version__
from provisioner.errors import Problem, ProvisionError

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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
            built = build(path)
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
@json_option
@handle_errors("render")
def render(profile: Path, out_dir: Path, overwrite: bool, as_json: bool) -> int:
    """Write the files PROFILE would install into OUT, byte for byte, with modes.

    Nothing else is touched. Owners are listed (and kept in JSON), not set.

    \b
    Example:
      provision render examples/quickstart.yaml --out ./rendered
      provision render examples/quickstart.yaml --out ./rendered --overwrite --json
    """
    from provisioner.pipeline import build, write_tree
    from provisioner.report import envelope, print_json, print_table, say

    built = build(profile)
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
