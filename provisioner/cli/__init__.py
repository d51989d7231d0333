"""Command line: one module per command or group, registered on ``main`` here.

``_common`` holds the shared options and the ``command`` decorator (--json and the
one mapping of errors to a line and an exit code); ``_output`` is the one place that
prints text or the JSON envelope.

Exit codes (the same for every command): 0 ok / nothing to do; 2 a finding
(changes pending, does not fit, a check failed); 1 an error.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from provisioner import __version__
from provisioner.cli._common import EXIT_ERROR, EXIT_OK
from provisioner.cli._output import report_error
from provisioner.errors import Problem

# pydantic scans every installed package's entry points for plugins at import
# (about 20 ms); provision uses none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def _wants_json(argv: list[str]) -> bool:
    """--json for an error click raised before it parsed the options: the raw words say."""
    words = argv[:argv.index("--")] if "--" in argv else argv
    return "--json" in words


# command -> (module under provisioner.cli, function): a command's module is imported
# only when that command runs (or --help lists them all), so `provision validate`
# does not pay for the other thirteen.
COMMANDS = {
    "validate": ("validate", "validate"), "render": ("render", "render"), "plan": ("converge", "plan"),
    "apply": ("converge", "apply"), "generations": ("converge", "generations"),
    "rollback": ("converge", "rollback"), "fit": ("fit", "fit"), "facts": ("facts", "facts"),
    "verify": ("verify", "verify"), "profiles": ("profiles", "profiles"), "init": ("init", "init"),
    "monitor": ("monitor", "monitor"), "export": ("export", "export"), "schema": ("schema", "schema"),
    "lock": ("lock", "lock"),
}


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
            report_error("provision", [Problem("aborted")], _wants_json(argv))
            sys.exit(EXIT_ERROR)
        except click.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError" and isinstance(exc, click.UsageError) and exc.ctx:
                click.echo(exc.ctx.get_help())  # `provision` alone: its help, as a request for it
                sys.exit(EXIT_OK)
            where = exc.ctx.command_path if isinstance(exc, click.UsageError) and exc.ctx else "provision"
            command = where.split(" ", 1)[1] if " " in where else "provision"
            report_error(command, [Problem(exc.format_message().rstrip("."), hint=f"see `{where} --help`")],
                         _wants_json(argv))
            sys.exit(EXIT_ERROR)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, name = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(f"provisioner.cli.{module}"), name))
        return self.commands.get(cmd_name)


@click.group(cls=_Provision, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="provision")
def main() -> None:
    """Provision machines for local LLM inference.

    \b
    Example:
      provision validate examples/quickstart.yaml
      provision render examples/quickstart.yaml --out ./rendered
    """
