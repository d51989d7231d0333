"""`provision schema`: the profile's JSON Schema, for editors and other tools."""

from __future__ import annotations

import click


@click.command("schema")
@click.option("--json", "as_json", is_flag=True,
              help="Print the JSON envelope, with the schema under `schema`.")
def schema(as_json: bool) -> None:
    """Print the JSON Schema of a profile (draft 7) on stdout. Exit 0.

    Editors that use yaml-language-server (VS Code's YAML extension) complete
    keys, show each field's description and flag unknown keys and wrong types
    in a profile whose first line names the schema. Field by field: docs/profile.md.

    \b
    Example:
      provision schema > profile.schema.json
      # then, as the first line of a profile beside it:
      # yaml-language-server: $schema=profile.schema.json
    """
    # imported here: the other commands' --help must not pay for pydantic
    from provisioner.cli._output import envelope, print_json
    from provisioner.profile.reference import profile_json_schema

    document = profile_json_schema()
    print_json(envelope("schema", True, schema=document) if as_json else document)
