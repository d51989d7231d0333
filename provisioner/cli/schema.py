"""`provision schema`: the profile's JSON Schema, for editors and other tools."""

from __future__ import annotations

import click


@click.command("schema")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON envelope, with the schema under `schema`.")
def schema(as_json: bool) -> None:
    """Print the JSON Schema of a profile (draft 2020-12) on stdout. Exit 0.

    Save it beside your profiles and start a profile with the line
    `# yaml-language-server: $schema=profile.schema.json`: editors that use
    yaml-language-server (VS Code's YAML extension) then complete keys, show
    each field's description and flag unknown keys. Field by field: docs/profile.md.

    \b
    Example:
      provision schema > profile.schema.json
    """
    # imported here: the other commands' --help must not pay for pydantic
    from provisioner.cli._output import envelope, print_json
    from provisioner.profile.reference import profile_json_schema

    document = profile_json_schema()
    print_json(envelope("schema", True, schema=document) if as_json else document)
