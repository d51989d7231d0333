"""Profile file -> validated ``Profile``, with every error pointing at file:line:col.

``extends:`` names a library profile (``profiles/<name>.yaml``) or a path
relative to the extending file; mappings merge deeply, lists and scalars of
the extending file replace the base's. A mapping that is one of several kinds
(a secret from_env / from_file / generate, a model source, an engine method)
is replaced whole when the extending file picks another kind.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from provisioner.datadir import library_profiles
from provisioner.errors import Problem, ProfileError
from provisioner.profile.field_types import CONTROL_CHARS, HINT_MARK
from provisioner.profile.models import Profile, model_for_path
from provisioner.profile.yamlread import Path_, Positions, dotted, load_yaml, read_text

MAX_EXTENDS_DEPTH = 8


@dataclass(frozen=True)
class LoadedProfile:
    """A valid profile and where each of its values was written."""

    profile: Profile
    path: Path
    positions: Positions

    def problem(self, path: Path_, message: str, hint: str | None = None,
                *, key: bool = False) -> Problem:
        where = self.positions.find(path, key=key)
        return Problem(
            message=message, hint=hint, field=dotted(path) or None,
            file=where.file if where else str(self.path),
            line=where.line if where else None, column=where.column if where else None,
        )

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load_profile(path: Path | str, overrides: dict[str, Any] | None = None) -> LoadedProfile:
    """Read, merge ``extends`` and then ``overrides`` (an inventory host's), validate.
    Raises ``ProfileError`` with all problems."""
    path = Path(path)
    if not path.exists() and path.name == str(path) and path.suffix == "":
        path = library_profiles().get(path.name, path)  # a library profile by name
    data, positions = _read_with_extends(path, chain=())
    if overrides:
        data = deep_merge(data, overrides)
    try:
        profile = Profile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(_problems(exc, positions, str(path))) from None
    return LoadedProfile(profile=profile, path=path, positions=positions)


def _read_with_extends(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], Positions]:
    label = str(path)
    data, positions = load_yaml(read_text(path, label), label)
    if not isinstance(data, dict):
        where = positions.find(())
        kind = "an empty document" if data is None else (
            "a list" if isinstance(data, list) else "a single value")
        raise ProfileError(Problem(
            f"a profile is a mapping of sections, got {kind}",
            hint="start with 'apiVersion: provision/v1' and the sections of docs/profile.md",
            file=label, line=where.line if where else None,
            column=where.column if where else None))
    base_name = data.pop("extends", None)
    if base_name is None:
        return data, positions
    where = positions.find(("extends",))
    line, column = (where.line, where.column) if where else (None, None)
    if not isinstance(base_name, str) or not base_name:
        raise ProfileError(Problem("extends must name a library profile or a relative path",
                                   file=label, line=line, column=column, field="extends"))
    base_path = _resolve_base(base_name, path, label, line, column)
    resolved = base_path.resolve()
    if resolved in chain or resolved == path.resolve():
        cycle = " -> ".join(str(p) for p in (*chain, path.resolve(), resolved))
        raise ProfileError(Problem(f"extends cycle: {cycle}", hint="remove one of the extends",
                                   file=label, line=line, column=column, field="extends"))
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise ProfileError(Problem(f"extends chain deeper than {MAX_EXTENDS_DEPTH}",
                                   file=label, line=line, column=column, field="extends"))
    base_data, base_positions = _read_with_extends(base_path, (*chain, path.resolve()))
    merged = deep_merge(base_data, data)
    base_positions.update(positions)
    return merged, base_positions


def _resolve_base(name: str, path: Path, label: str, line: int | None,
                  column: int | None) -> Path:
    library = library_profiles()
    if "/" not in name and not name.endswith((".yaml", ".yml")):
        if name in library:
            return library[name]
        close = difflib.get_close_matches(name, list(library), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "see `provision profiles`"
        raise ProfileError(Problem(f"unknown library profile {name!r}", hint=hint,
                                   file=label, line=line, column=column, field="extends"))
    if name.startswith("/") or ".." in Path(name).parts:
        raise ProfileError(Problem(
            f"extends path {name!r} must stay inside the profile's folder",
            hint="use a library profile name or a relative path without '..'",
            file=label, line=line, column=column, field="extends"))
    candidate = path.parent / name
    if not candidate.is_file():
        raise ProfileError(Problem(f"extends file not found: {candidate}",
                                   file=label, line=line, column=column, field="extends"))
    return candidate


# mapping path -> the keys that say which kind it is
_ONE_OF: dict[tuple[str, ...], tuple[str, ...]] = {
    ("secrets", "api_key"): ("from_env", "from_file", "generate"),
    ("secrets", "hf_token"): ("from_env", "from_file"),
    ("model", "source"): ("files", "hf", "directory", "ollama"),
    ("install", "engine"): ("method",),
}


def _other_kind(path: tuple[str, ...], base: dict[str, Any], override: dict[str, Any]) -> bool:
    keys = _ONE_OF.get(path)
    if keys is None:
        return False
    if keys == ("method",):
        return "method" in override and override["method"] != base.get("method")
    return any(k in override for k in keys) and not any(k in override and k in base for k in keys)


# Where an engine's sources come from, each with the keys that pin it or point into it: one
# choice, so an extending profile that names a source (or re-pins one) drops the base's pins
# and its subdir (a folder of the other sources), never mixes them
_ENGINE_SOURCE = {"pypi": ("subdir",), "url": ("sha256", "size", "subdir"), "git": ("commit", "ref", "subdir")}
_SOURCE_KEYS = frozenset(_ENGINE_SOURCE).union(*_ENGINE_SOURCE.values())
_GIT_PIN = ("commit", "ref")


def _engine_source(merged: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    if any(k in override for k in _ENGINE_SOURCE):
        return {k: v for k, v in merged.items() if k in override or k not in _SOURCE_KEYS}
    if any(k in override for k in _GIT_PIN):
        return {k: v for k, v in merged.items() if k not in _GIT_PIN or k in override}
    return merged


def deep_merge(base: dict[str, Any], override: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        here = (*path, str(key))
        if (isinstance(value, dict) and isinstance(merged.get(key), dict)
                and not _other_kind(here, merged[key], value)):
            merged[key] = deep_merge(merged[key], value, here)
        else:
            merged[key] = value
    return _engine_source(merged, override) if path == ("install", "engine") else merged


# --- pydantic errors -> problems with positions --------------------------------


def _data_path(loc: tuple[Any, ...], data_keys: set[Path_]) -> Path_:
    """Drop pydantic's union/validator labels from ``loc``, keep real data keys."""
    path: Path_ = ()
    for part in loc:
        candidate = (*path, part)
        if candidate in data_keys:
            path = candidate
    return path


def _problems(exc: ValidationError, positions: Positions, label: str) -> list[Problem]:
    known = set(positions.values) | set(positions.keys)
    problems: list[Problem] = []
    seen: set[Path_] = set()
    for error in exc.errors():
        loc = tuple(error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            path = _data_path(loc, known)
            if not path or path[-1] != loc[-1]:
                # a key with no recorded position (an inventory host's overrides): name it anyway
                path = (*path, str(loc[-1]))
            where = positions.find(path, key=True)
            key = str(path[-1])
            owner = model_for_path(path[:-1])
            close = difflib.get_close_matches(key, list(owner.model_fields), n=1) if owner else []
            hint = f"did you mean `{close[0]}`?" if close else (
                f"allowed here: {', '.join(owner.model_fields)}" if owner else None)
            message = f"unknown key {key!r}"
        elif kind == "missing":
            parent = _data_path(loc[:-1], known)
            path = (*parent, str(loc[-1]))
            where = positions.find(parent)
            message = f"missing required field {loc[-1]!r}"
            hint = "add it (see docs/profile.md)"
        else:
            path = _data_path(loc, known)
            # a bad mapping key ("[key]" in loc) is reported where the key was written
            where = positions.find(path, key=bool(loc) and loc[-1] == "[key]")
            message = _clean(error["msg"]).replace("\n", " ")
            hint = _hint_for(error)
            if HINT_MARK in message:  # a validator's own hint: "message | hint: what to do"
                message, hint = message.split(HINT_MARK, 1)
            if kind == "string_pattern_mismatch" and CONTROL_CHARS.search(str(error.get("input", ""))):
                message = "must not contain newlines or control characters"
                hint = "one line of plain text: a newline could start another setting in the file it reaches"
            elif kind in {"model_type", "model_attributes_type", "dict_type"}:  # "instance of Cpu"
                message = f"expected a mapping (key: value), got {_kind_of(error.get('input'))}"
                hint = "write the section as indented key: value lines, or leave it out for the defaults"
        if path in seen:  # unions report one problem per member: keep the first
            continue
        seen.add(path)
        problems.append(Problem(
            message=message, hint=hint, field=dotted(path) or None,
            file=where.file if where else label,
            line=where.line if where else None, column=where.column if where else None))
    problems.sort(key=lambda p: (p.file or "", p.line or 0, p.column or 0))
    return problems


def _kind_of(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    return f"{value!r}" if isinstance(value, bool | int | float) else "text"


def _clean(message: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


# Hints by pydantic error type, for errors whose validator gives none of its own.
_HINTS_BY_KIND = {
    **dict.fromkeys(("int_parsing", "int_type", "float_parsing", "float_type", "finite_number"), "write a number"),
    **dict.fromkeys(("bool_parsing", "bool_type"), "write true or false"),
    **dict.fromkeys(("greater_than_equal", "less_than_equal", "greater_than", "less_than"),
                    "the value is out of range"),
    **dict.fromkeys(("value_error", "assertion_error", "literal_error", "enum", "missing", "none_required",
                     "list_type", "string_type", "too_short", "too_long"),
                    "see docs/profile.md; `provision profiles show NAME` prints working profiles"),
}


def _hint_for(error: Any) -> str | None:
    kind = error["type"]
    if kind == "string_pattern_mismatch":
        return f"the value must match {error['ctx']['pattern']}"
    if kind in {"union_tag_not_found", "union_tag_invalid"}:
        ctx = error.get("ctx", {})
        key = str(ctx.get("discriminator", "the kind")).replace("'", "")
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"set {key} to one of {expected}" if expected else f"add {key}: (see docs/profile.md)"
    return _HINTS_BY_KIND.get(kind)
