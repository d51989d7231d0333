"""docs/profile.md and `provision schema` are generated from the models: the page is
current, every field is described, and the JSON Schema is valid and accepts the
bundled profiles while refusing what the loader refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from jsonschema import Draft7Validator

from provisioner.cli import main
from provisioner.errors import ProfileError
from provisioner.profile.loader import load_profile
from provisioner.profile.reference import profile_json_schema, profile_reference
from provisioner.profile.yamlread import load_yaml
from tests.conftest import good_profiles

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "profile.md"
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def _document(path: Path) -> Any:
    return load_yaml(path.read_text(), str(path))[0]


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    document = profile_json_schema()
    Draft7Validator.check_schema(document)
    return Draft7Validator(document)


def test_docs_profile_md_is_current() -> None:
    assert PAGE.read_text() == profile_reference(), (
        "docs/profile.md is stale: run ./scripts/gen-profile-doc and commit the result")


def _properties(node: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"{where}.{name}", prop) for name, prop in node.get("properties", {}).items()]
    for name, definition in node.get("$defs", {}).items():
        found += _properties(definition, name)
    return found


def test_every_field_has_a_description() -> None:
    fields = _properties(profile_json_schema(), "Profile")
    assert len(fields) > 100
    undescribed = [name for name, prop in fields if not prop.get("description")]
    assert not undescribed, f"give these fields a docstring in their model (provisioner/profile/): {undescribed}"


def test_the_page_has_a_section_for_every_nested_mapping() -> None:
    page = profile_reference()
    for anchor in ("hardware-gpus", "model-source-files", "runtime-offload", "cluster-nodes",
                   "install-engine-method-venv", "install-engine-method-container"):
        assert f'<a id="{anchor}"></a>' in page
        assert f"](#{anchor})" in page, f"nothing links to #{anchor}"


def test_the_schema_is_valid_json_schema(validator: Draft7Validator) -> None:
    document = profile_json_schema()
    assert document["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert document["additionalProperties"] is False
    assert "extends" in document["properties"]


@pytest.mark.parametrize("path", good_profiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_bundled_profiles_validate_against_the_schema(path: Path, validator: Draft7Validator) -> None:
    document = _document(path)
    if "extends" not in document:  # an extending file is partial: its base supplies the rest
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]
        assert not errors, errors
    # the loaded profile (extends merged, sizes as bytes) is accepted too
    merged = load_profile(path).profile.model_dump(mode="json")
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(merged)]
    assert not errors, errors


@pytest.mark.parametrize(("change", "where"), [
    (lambda d: d["runtime"].update(prot=8080), ["runtime"]),  # a misspelt key
    (lambda d: d["hardware"].update(ram="192G"), ["hardware", "ram"]),  # GB or GiB?
    (lambda d: d["runtime"].update(engine="llamacpp"), ["runtime", "engine"]),
    (lambda d: d["model"].pop("context"), ["model"]),
    (lambda d: d["secrets"].update(api_key="hunter2"), ["secrets", "api_key"]),
    (lambda d: d["model"]["source"]["files"][0].update(path="models/x.gguf"), ["model", "source", "files", 0, "path"]),
])
def test_the_schema_refuses_what_the_loader_refuses(change: Any, where: list[Any],
                                                    validator: Draft7Validator, tmp_path: Path) -> None:
    document = _document(QUICKSTART)
    change(document)
    errors = list(validator.iter_errors(document))
    assert errors, "the schema accepted it"
    for error in errors:  # at the bad value, or at the optional section holding it (anyOf with null)
        path = list(error.absolute_path)
        assert path and where[:len(path)] == path, (path, error.message)
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(document))  # JSON is YAML
    with pytest.raises(ProfileError):
        load_profile(bad)


def test_the_editor_header_line_is_a_plain_comment_to_the_loader(tmp_path: Path) -> None:
    profile = tmp_path / "box.yaml"
    profile.write_text("# yaml-language-server: $schema=profile.schema.json\n" + QUICKSTART.read_text())
    assert load_profile(profile).profile.metadata.name == "quickstart"


def test_schema_command_prints_the_schema() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == profile_json_schema()
    wrapped = CliRunner().invoke(main, ["schema", "--json"])
    assert wrapped.exit_code == 0
    data = json.loads(wrapped.output)
    assert (data["command"], data["ok"], data["error"]) == ("schema", True, None)
    assert data["schema"] == profile_json_schema()
    helped = CliRunner().invoke(main, ["schema", "--help"])
    assert helped.exit_code == 0 and "Example" in helped.output and "provision schema" in helped.output


def test_loader_hints_point_at_the_reference_page(tmp_path: Path) -> None:
    """A missing field's hint names docs/profile.md, which exists and documents the field."""
    document = _document(QUICKSTART)
    del document["model"]["context"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(document))
    with pytest.raises(ProfileError) as raised:
        load_profile(bad)
    hints = [p.hint or "" for p in raised.value.problems]
    assert any("docs/profile.md" in hint for hint in hints), hints
    assert "| `context` |" in PAGE.read_text()
