"""The profile schema's shared parts: the base every section's model derives from
(frozen, unknown keys refused) and the annotated field types the sections share
(text, sizes, paths, names), each with its single-field rule.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from provisioner.units import parse_size

# C0 and C1 controls, and the Unicode line/paragraph separators (line breaks to YAML and Python)
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# How a validator's ValueError carries its own hint ("message | hint: what to do"); the
# loader splits it off into the error's hint.
HINT_MARK = " | hint: "


def not_a_float(value: Any) -> Any:
    """YAML reads `2.10` as the number 2.1: a version written so would silently change."""
    if isinstance(value, float):
        raise ValueError(f"{value!r} was read as a number, which drops trailing zeros"
                         f"{HINT_MARK}write the version in quotes, e.g. \"2.10\"")
    return value


def no_control(value: str) -> str:
    if CONTROL_CHARS.search(value):
        raise ValueError("must not contain newlines or control characters")
    return value


SAFE_PATH = re.compile(r"^[A-Za-z0-9_./@+:,=-]+$")


def _abs_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"must be an absolute path, got {value!r}")
    if not SAFE_PATH.match(value):
        # Paths land in unit files and shell scripts: no spaces, quotes, '%' or '$'.
        raise ValueError(f"path {value!r} may only contain letters, digits and _./@+:,=-")
    if any(part == ".." for part in value.split("/")):
        raise ValueError(f"must not contain '..', got {value!r}")
    return value


def _dest_path(value: str) -> str:
    """A file's destination, written one way only: two spellings of one path would be two
    files to the duplicate check, and a folder-like one cannot be a file at all."""
    parts = value.split("/")[1:]
    if value == "/" or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"destination {value!r} must name a file: no trailing '/', no '//', '.' or '..'"
                         f"{HINT_MARK}write it as {'/' + '/'.join(p for p in parts if p not in ('', '.'))!r}")
    return value


def _rel_path(value: str) -> str:
    if value.startswith("/") or any(part == ".." for part in value.split("/")):
        raise ValueError(f"must be a relative path inside the profile's folder, got {value!r}")
    return value


# What parse_size takes, for the JSON Schema only (validation is parse_size's): bytes, or
# a number with a unit; the loader still refuses a bare G and fractions of a byte.
SIZE_JSON: dict[str, Any] = {"anyOf": [
    {"type": "integer", "minimum": 0},
    {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([KkMmGgTt][Ii]?[Bb]|[Bb])?\s*$"},
]}

Text = Annotated[str, AfterValidator(no_control)]
Bytes = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(SIZE_JSON)]
AbsPath = Annotated[str, AfterValidator(no_control), AfterValidator(_abs_path),
                    WithJsonSchema({"type": "string", "pattern": "^/[A-Za-z0-9_./@+:,=-]*$"})]
RelPath = Annotated[str, AfterValidator(no_control), AfterValidator(_rel_path)]
DestPath = Annotated[AbsPath, AfterValidator(_dest_path)]
Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]
UnixName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Mode = Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$")]


_NUMBERS = (int, float, int | None, float | None)


class ProfileModel(BaseModel):
    """The base of every model of the profile: frozen, unknown keys refused."""

    # numbers become strings where a string is expected: `version: 575` is "575"
    # .inf / .nan are never a sensible number in a profile
    # a field's docstring is its description (the JSON Schema and docs/profile.md)
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, data: Any) -> Any:
        """pydantic reads `true` as 1 where a number is meant: `cores: true` is a mistake, not 1."""
        if isinstance(data, dict):
            for name, value in data.items():
                field_info = cls.model_fields.get(name) if isinstance(name, str) else None
                if isinstance(value, bool) and field_info is not None and field_info.annotation in _NUMBERS:
                    raise ValueError(f"{name}: expected a number, got {str(value).lower()}")
        return data
