"""Fuzzing the way in: whatever the file holds, the only exception is a ProvisionError.

Random bytes, random text, YAML-ish structures built from the profile's real keys,
and mutations of examples/quickstart.yaml (keys deleted, types swapped, unicode and
control characters inserted, lines duplicated into duplicate keys, tabs) are written
to a file and fed to ``load_profile`` and, when that succeeds, to ``build`` (resolve,
fit, render). Bounded and derandomized so CI is fast and reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from provisioner.errors import ProvisionError
from provisioner.profile.loader import load_profile
from provisioner.profile.models import Profile, _model_in
from provisioner.render.pipeline import build

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_TEXT = (ROOT / "examples" / "quickstart.yaml").read_text(encoding="utf-8")
QUICKSTART = yaml.safe_load(QUICKSTART_TEXT)

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _profile_keys(model: type[BaseModel], seen: set[type[BaseModel]] | None = None) -> set[str]:
    """Every field name anywhere in the profile schema."""
    seen = seen if seen is not None else set()
    if model in seen:
        return set()
    seen.add(model)
    keys = set(model.model_fields)
    for info in model.model_fields.values():
        inner = _model_in(info.annotation)
        if inner is not None:
            keys |= _profile_keys(inner, seen)
    return keys


KEYS = sorted(_profile_keys(Profile) | {"extends", "vm.swappiness", "kernel.numa_balancing", "<<"})


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz") / "profile.yaml"


def _feed(path: Path, content: bytes) -> None:
    """Load and build ``content``; anything but a ProvisionError fails the test."""
    path.write_bytes(content)
    try:
        load_profile(path)
    except ProvisionError as exc:
        _check_problems(exc)
        return
    try:
        build(path)
    except ProvisionError as exc:
        _check_problems(exc)


def _check_problems(exc: ProvisionError) -> None:
    assert exc.problems, "a ProvisionError must carry at least one problem"
    for problem in exc.problems:
        assert problem.message
        assert "\n" not in problem.one_line(), f"an error must be one line: {problem.one_line()!r}"


# --- strategies --------------------------------------------------------------

# text that exercises the dangerous corners: controls, line separators, NUL, BOM, quotes
_NASTY = st.sampled_from(["\n", "\r", "\t", "\x00", "\x1b[2J", "\x85", "\u2028", "\ufeff",
                          "%", "$", "'", '"', "\\", "..", "/", " ", "#", ":", "-", "&a", "*a", "!!str",
                          "\U0001f600", "é", "Ω"])
_TEXT = st.one_of(st.text(max_size=40), st.lists(_NASTY, max_size=4).map("".join),
                  st.builds(lambda a, b, c: a + b + c, st.text(max_size=10), _NASTY, st.text(max_size=10)))
_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), _TEXT,
    st.sampled_from(["192GiB", "96GB", "192G", "-1GiB", "0", "5000TiB", "unlimited", "auto", "on", "off",
                     "yes", "no", "0.0.0.0", "127.0.0.1",  # noqa: S104 - data, not a bind
                     "::1", "/srv/models/x.gguf", "../x", "sk-123",
                     "rtx-pro-6000-blackwell", "qwen3-235b-a22b", "UD-Q3_K_XL", "llama.cpp", "vllm",
                     "ollama", "b11312", "q8_0", "f16", "open", "proprietary", "2MiB", "1GiB"]),
)
_KEY = st.one_of(st.sampled_from(KEYS), st.text(min_size=1, max_size=12))
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEY, inner, max_size=5)),
    max_leaves=25,
)
_STRUCTURE = st.dictionaries(st.sampled_from(KEYS), _VALUE, min_size=1, max_size=12)


def _leaves(data: Any) -> list[Any]:
    if isinstance(data, dict):
        return [leaf for value in data.values() for leaf in _leaves(value)]
    if isinstance(data, list):
        return [leaf for value in data for leaf in _leaves(value)]
    return [data]


_REAL_SCALAR = st.one_of(st.sampled_from(_leaves(QUICKSTART)), _SCALAR)


def _shaped(model: type[BaseModel], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    """Mappings shaped like ``model``: its real keys (required ones always), random values."""
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in model.model_fields.items():
        inner = _model_in(info.annotation)
        if inner is not None and depth < 4:
            shaped = _shaped(inner, depth + 1)
            # mostly the right shape, so that values deeper down get checked too
            value: st.SearchStrategy[Any] = st.one_of(shaped, shaped, shaped, st.lists(shaped, max_size=2),
                                                      _REAL_SCALAR)
        else:
            value = st.one_of(_REAL_SCALAR, _REAL_SCALAR, _VALUE)
        (required if info.is_required() else optional)[name] = value
    extra = st.dictionaries(_KEY, _VALUE, max_size=1)  # now and then a key the model does not have
    return st.builds(lambda known, more: {**known, **more},
                     st.fixed_dictionaries(required, optional=optional), extra)


_SHAPED_PROFILE = _shaped(Profile)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value in nested dicts/lists."""
    out: list[tuple[Any, ...]] = []
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


QUICKSTART_PATHS = _paths(QUICKSTART)


def _copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_copy(v) for v in data]
    return data


@st.composite
def _mutated_data(draw: st.DrawFn) -> bytes:
    """quickstart.yaml with a few keys deleted, values replaced, keys added."""
    data = _copy(QUICKSTART)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(QUICKSTART_PATHS))
        parent: Any = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            action = draw(st.sampled_from(["delete", "replace", "retype", "add"]))
            if action == "delete":
                del parent[path[-1]]
            elif action == "replace":
                parent[path[-1]] = draw(_VALUE)
            elif action == "retype":  # a plausible value of another field: often well-formed
                parent[path[-1]] = draw(_REAL_SCALAR)
            elif isinstance(parent, dict):
                parent[draw(_KEY)] = draw(_VALUE)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced this path
    text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False,
                          default_flow_style=draw(st.sampled_from([False, None])))
    return text.encode("utf-8")


@st.composite
def _mutated_text(draw: st.DrawFn) -> bytes:
    """quickstart.yaml edited as text: lines duplicated, dropped, tabbed, characters inserted."""
    lines = QUICKSTART_TEXT.splitlines(keepends=True)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        action = draw(st.sampled_from(["duplicate", "drop", "tab", "insert", "truncate", "swap"]))
        if action == "duplicate":  # a repeated "key: value" line is a duplicate key
            lines.insert(i, lines[i])
        elif action == "drop" and len(lines) > 1:
            del lines[i]
        elif action == "tab":
            lines[i] = "\t" + lines[i].lstrip(" ")
        elif action == "insert":
            at = draw(st.integers(min_value=0, max_value=len(lines[i])))
            lines[i] = lines[i][:at] + draw(_NASTY | st.text(max_size=3)) + lines[i][at:]
        elif action == "truncate":
            lines[i] = lines[i][: draw(st.integers(min_value=0, max_value=len(lines[i])))]
        else:
            j = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines).encode("utf-8")


# --- tests -------------------------------------------------------------------


@FUZZ
@given(content=st.binary(max_size=2048))
def test_random_bytes(fuzz_file: Path, content: bytes) -> None:
    _feed(fuzz_file, content)


@FUZZ
@given(content=st.text(max_size=1024))
def test_random_text(fuzz_file: Path, content: str) -> None:
    _feed(fuzz_file, content.encode("utf-8"))


@FUZZ
@given(data=st.one_of(_STRUCTURE, _SHAPED_PROFILE), flow=st.sampled_from([False, None, True]))
def test_structures_from_profile_keys(fuzz_file: Path, data: dict[str, Any], flow: bool | None) -> None:
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False, default_flow_style=flow)
    _feed(fuzz_file, text.encode("utf-8"))


@settings(FUZZ, max_examples=600)
@given(content=st.one_of(_mutated_data(), _mutated_text()))
def test_mutated_quickstart(fuzz_file: Path, content: bytes) -> None:
    _feed(fuzz_file, content)


def test_quickstart_itself_builds(fuzz_file: Path) -> None:
    """The seed of the mutations is valid, so mutations probe one change at a time."""
    fuzz_file.write_text(QUICKSTART_TEXT, encoding="utf-8")
    build(fuzz_file)
