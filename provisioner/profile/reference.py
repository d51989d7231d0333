"""The profile's JSON Schema and docs/profile.md, both generated from the pydantic models.

The Markdown is made from the JSON Schema, so the page and what an editor checks
against cannot disagree; a field's description is its docstring in models.py or a *_section.py.
``scripts/gen-profile-doc`` writes the page and a test fails when it is stale.
"""

from __future__ import annotations

import json
import re
from typing import Any

from provisioner.profile.field_types import SIZE_JSON
from provisioner.profile.models import Profile

# Draft 7: yaml-language-server (VS Code's YAML extension) "supports JSON Schema 7 and
# below" (its README). Nothing pydantic emits here needs a later draft; its "#/$defs/..."
# references are plain JSON pointers, which draft 7 resolves.
JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"

# The loader takes `extends:` off the document before the models see it.
_EXTENDS = {
    "type": "string",
    "minLength": 1,
    "description": ("A library profile's name (profiles/NAME.yaml) or a path beside this file (./base.yaml): "
                    "mappings merge deeply, lists and scalars of this file replace the base's."),
}


def profile_json_schema() -> dict[str, Any]:
    """The JSON Schema of a profile document (draft 7), `extends:` included."""
    schema = Profile.model_json_schema()
    schema["properties"] = {"extends": _EXTENDS, **schema["properties"]}
    return {"$schema": JSON_SCHEMA_DIALECT, **schema}


_INTRO = """\
# Profile reference

<!-- Generated from provisioner/profile/ (models.py, *_section.py) by scripts/gen-profile-doc: edit those. -->

A profile is one YAML document describing a machine and the model it serves (see
[examples/quickstart.yaml](../examples/quickstart.yaml) and the library in
[profiles/](../profiles/)): `metadata`, `hardware` (GPUs from the catalog with counts,
RAM, memory type and channels or a measured bandwidth, CPU cores and NUMA nodes),
`driver` (kernel module flavour, version, persistence, power limit), `os` (sysctl, THP,
hugepages, memlock, swap policy, CPU governor, and who owns the tuning: `sysctl`
(sysctl.d + tmpfiles.d) or `tuned`, never both), `model` (catalog id, quant, source:
GGUF `files` with exact bytes and sha256, a Hugging Face repo at a pinned revision, a
vLLM directory or an Ollama tag; context, KV cache type, thinking/non-thinking mode),
`runtime` (engine and its pinned version, port, bind (loopback unless `expose: true`),
parallel slots, offload `auto` or explicit, threads, flash attention, extra args),
`secrets` (`from_env` or `from_file`, never inline), `service` (name, user, restart
policy, start timeout), `files` and `handlers` (your own templates and commands, the
escape hatch), `vars` (variables for your templates), `verify`, `cluster` (several
machines, one model: [cluster.md](cluster.md)) and `install` ([install.md](install.md)).

Unknown keys, duplicate keys, tabs, YAML tags, merge keys, anchors that multiply
("alias bombs"), deep nesting, files over 1 MiB, binary or non-UTF-8 files, inline
secrets and control characters in any value are refused with the position and a hint.
`yes`/`no`/`on`/`off` are not booleans by accident: they stay words and each field
decides. Bad profiles and the exact messages they produce:
[tests/cases/bad_profiles.yaml](../tests/cases/bad_profiles.yaml) and
[examples/negative/](../examples/negative/).

`192GiB` is 192 x 2^30 bytes, `96GB` is 96 x 10^9 bytes; a bare `192G` is refused.

`extends: NAME` builds on the library profile `profiles/NAME.yaml`; `extends:
./base.yaml` on a file beside this one. Mappings merge deeply; lists and scalars of the
extending file replace the base's; a cycle is an error. Every command that takes a
profile also takes a library profile's name.

## Completion and checks in your editor

`provision schema` prints this reference as a JSON Schema (draft 7, the draft
yaml-language-server supports). Save it beside your profiles and name it in the
profile's first line:

```
provision schema > profile.schema.json
```

```yaml
# yaml-language-server: $schema=profile.schema.json
apiVersion: provision/v1
kind: MachineProfile
```

Editors that use yaml-language-server (VS Code's YAML extension by Red Hat, and
others) then complete keys, show each field's description and flag unknown keys and
wrong types as you type. The schema describes a complete profile: in a profile with
`extends:`, required keys its base supplies are reported missing by the editor.
`provision validate` stays the authority (the catalog, fit and cross-field rules are
not in a schema).

## Fields

"Required" fields have no default. A size is bytes or a number with its unit
(`192GiB`, `96GB`). Patterns are regular expressions the whole value must match.
"""


def profile_reference() -> str:
    """docs/profile.md: the introduction, then one table per section of the profile."""
    schema = profile_json_schema()
    writer = _Writer(schema["$defs"])
    writer.section("top level", "top-level", schema, "The document's top-level keys.")
    return _INTRO + "".join(writer.out)


class _Writer:
    """Walks the schema depth first: a section's table, then the sections it links to."""

    def __init__(self, defs: dict[str, Any]) -> None:
        self.defs = defs
        self.anchors: dict[str, str] = {}  # definition name -> its section's anchor
        self.out: list[str] = []

    def section(self, title: str, anchor: str, node: dict[str, Any], fallback: str) -> None:
        pending: list[tuple[str, str, str]] = []  # (definition, path, field description)
        rows = []
        required = set(node.get("required", ()))
        for name, prop in node["properties"].items():
            path = name if anchor == "top-level" else f"{title}.{name}"
            kind = self._type(prop, path, pending, prop.get("description", ""))
            rows.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(prop, name in required))} | "
                        f"{_cell(prop.get('description', ''))} |\n")
        description = node.get("description") or fallback
        heading = "Top level" if anchor == "top-level" else f"`{title}`"
        self.out.append(f"\n<a id=\"{anchor}\"></a>\n\n### {heading}\n\n{_one_line(description)}\n\n"
                        "| field | type | default | description |\n|---|---|---|---|\n")
        self.out.extend(rows)
        for ref, path, field_description in pending:
            self.section(path, self.anchors[ref], self.defs[ref], field_description)

    def _type(self, node: dict[str, Any], path: str, pending: list[tuple[str, str, str]], about: str) -> str:
        """The type column; ``about`` is the field's description, for the sections it links to."""
        options = node.get("anyOf") or node.get("oneOf")
        if options is not None:
            return self._union(node, options, path, pending, about)
        if "$ref" in node:
            return self._ref(node["$ref"], path, pending, about)
        kind = node.get("type")
        if kind == "array":
            text = f"list of {self._type(node['items'], path + '[]', pending, about)}"
            return text + _count(node.get("minItems"), node.get("maxItems"), "item")
        if kind == "object":
            return self._mapping(node, path, pending, about)
        return _scalar(node)

    def _union(self, node: dict[str, Any], options: list[dict[str, Any]], path: str,
               pending: list[tuple[str, str, str]], about: str) -> str:
        """``or`` between the members; null is left out (the default column says "not set")."""
        options = [o for o in options if o != {"type": "null"} and o not in SIZE_JSON["anyOf"]]
        sized = ["size"] if any(o in SIZE_JSON["anyOf"] for o in node.get("anyOf", ())) else []
        several = sum("$ref" in o for o in options) > 1 or any("oneOf" in o for o in options)
        parts = [self._type(o, path, pending, about) if "$ref" not in o or not several
                 else self._ref(o["$ref"], path, pending, about, self._tag(o["$ref"]))
                 for o in options]
        return " or ".join(parts + sized)

    def _mapping(self, node: dict[str, Any], path: str, pending: list[tuple[str, str, str]], about: str) -> str:
        keys = node.get("patternProperties")
        if not keys:
            return "mapping"
        (pattern, value), = keys.items()
        return f"mapping of keys matching `{pattern}` to {self._type(value, path + '.KEY', pending, about)}"

    def _ref(self, ref: str, path: str, pending: list[tuple[str, str, str]], about: str, tag: str = "") -> str:
        """A link to the section of a nested mapping; ``tag`` names one member of a union
        (``method: venv``), which gets a section of its own."""
        name = _def_name(ref)
        if name not in self.anchors:
            self.anchors[name] = _anchor(f"{path} {tag}")
            pending.append((name, f"{path} ({tag})" if tag else path, about))
        return f"[{tag or 'mapping'}](#{self.anchors[name]})"

    def _tag(self, ref: str) -> str:
        """What tells a union's members apart: their constant field (``method: venv``)."""
        for key, prop in self.defs[_def_name(ref)]["properties"].items():
            if "const" in prop:
                return f"{key}: {prop['const']}"
        return _def_name(ref)


def _scalar(node: dict[str, Any]) -> str:
    if "const" in node:
        return f"`{json.dumps(node['const'])}`"
    if "enum" in node:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in node["enum"])
    kind = node.get("type")
    if kind == "string":
        text = "text"
        if "pattern" in node:
            text += f" matching `{node['pattern']}`"
        return text + _count(node.get("minLength"), node.get("maxLength"), "character")
    if kind in {"integer", "number"}:
        return str(kind) + _range(node)
    if kind == "boolean":
        return "`true` or `false`"
    return "any value"


def _def_name(ref: str) -> str:
    return ref.rsplit("/", 1)[1]


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def _count(low: int | None, high: int | None, unit: str) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f", at least {low} {unit}{'s' if low != 1 else ''}"
    return f", {low or 0} to {high} {unit}s"


def _range(node: dict[str, Any]) -> str:
    low, high = node.get("minimum"), node.get("maximum")
    if low is not None and high is not None:
        return f" {low} to {high}"
    bounds = [f"{sign} {node[key]}" for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                                                      ("maximum", "<="), ("exclusiveMaximum", "<"))
              if key in node]
    return (" " + " and ".join(bounds)) if bounds else ""


def _default(prop: dict[str, Any], required: bool) -> str:
    if "default" not in prop:
        return "required" if required else ""
    value = prop["default"]
    if value is None:
        return "not set"
    if isinstance(value, dict) and value and "$ref" in prop:
        return "the fields' defaults"
    return f"`{json.dumps(value)}`"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    """A table cell: one line, and a `|` (common in patterns) escaped, code spans included."""
    return _one_line(text).replace("|", "\\|")
