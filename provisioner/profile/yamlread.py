"""Safe, strict YAML reading that remembers where every value came from.

PyYAML's composer gives us nodes with line/column marks; we build plain
Python data from them ourselves so that we can refuse what ``safe_load``
silently accepts: duplicate keys (last one wins there), language tags,
alias bombs, absurd nesting, huge or binary files. ``yes``/``on`` stay
strings (YAML 1.1 would make them booleans: the "Norway problem").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provisioner.errors import Problem, ProfileError

MAX_FILE_BYTES = 1024 * 1024  # a profile is a page of text, not a data set
MAX_NODES = 50_000  # stops alias bombs ("billion laughs") long before memory does
MAX_DEPTH = 40

Key = str | int
Path_ = tuple[Key, ...]

_STR = "tag:yaml.org,2002:str"
_SCALAR_TAGS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    _STR,
}
_KEEP_AS_TEXT = {"tag:yaml.org,2002:timestamp"}
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"


@dataclass(frozen=True)
class Where:
    file: str
    line: int
    column: int


@dataclass
class Positions:
    """Where each value (and each mapping key) was written, by data path."""

    values: dict[Path_, Where] = field(default_factory=dict)
    keys: dict[Path_, Where] = field(default_factory=dict)

    def update(self, other: Positions) -> None:
        self.values.update(other.values)
        self.keys.update(other.keys)

    def find(self, path: Path_, *, key: bool = False) -> Where | None:
        """The closest recorded position at or above ``path``."""
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while True:
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return None
            probe = probe[:-1]


def _where(file: str, mark: yaml.Mark | None) -> Where:
    if mark is None:
        return Where(file, 1, 1)
    return Where(file, mark.line + 1, mark.column + 1)


def _fail(file: str, message: str, hint: str | None = None,
          mark: yaml.Mark | None = None, field: str | None = None) -> ProfileError:
    where = _where(file, mark)
    return ProfileError(Problem(message=message, hint=hint, file=file,
                                line=where.line if mark else None,
                                column=where.column if mark else None, field=field))


def read_text(path: Path, label: str) -> str:
    """The file as text, or one clear error: missing, too big, binary, not UTF-8."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(f"file not found: {label}", hint="check the path") from None
    except IsADirectoryError:
        raise ProfileError(f"{label} is a directory, not a profile file") from None
    except OSError as exc:
        raise ProfileError(f"cannot read {label}: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ProfileError(Problem(
            f"file is larger than {MAX_FILE_BYTES // 1024} KiB; a profile is a short text file",
            hint="did you pass a model or data file instead of the profile?", file=label))
    if b"\x00" in raw:
        raise ProfileError(Problem("file is binary (contains NUL bytes), not YAML text",
                                   hint="pass the profile .yaml file", file=label))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ProfileError(Problem(
            f"file is not valid UTF-8 (byte 0x{raw[exc.start]:02x})",
            hint="save the file as UTF-8", file=label, line=line, column=column)) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def load_yaml(text: str, label: str) -> tuple[Any, Positions]:
    """Parse one YAML document into plain data plus the position of every value."""
    try:
        _check_depth(text, label)  # before composing: the composer recurses once per level
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        problem = (exc.problem or "invalid YAML").strip()
        hint = "fix the YAML syntax at this position"
        if "\t" in (exc.problem or "") or "'\\t'" in problem or _tab_near(text, exc.problem_mark):
            hint = "YAML indentation must use spaces, not tabs"
        elif "expected a single document" in problem or "but found another document" in problem:
            hint = "a profile is one YAML document: remove the extra '---'"
        raise _fail(label, f"YAML syntax error: {problem}", hint, exc.problem_mark) from None
    except RecursionError:
        raise _fail(label, "YAML is nested too deeply",
                    f"a profile needs fewer than {MAX_DEPTH} levels") from None
    except yaml.reader.ReaderError as exc:  # a character YAML refuses anywhere (control, U+FFFE)
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        raise ProfileError(Problem(f"the file contains the character U+{code:04X}, which YAML does not allow",
                                   hint="remove it (control characters can only be written as escapes "
                                        "inside double quotes)", file=label, line=line, column=column)) from None
    except yaml.YAMLError as exc:
        raise _fail(label, "YAML error: " + " ".join(str(exc).split())) from None
    if node is None:
        raise _fail(label, "file is empty", "start from a profile in profiles/ or examples/")
    builder = _Builder(label)
    data = builder.build(node, (), 0)
    return data, builder.positions


def _check_depth(text: str, label: str) -> None:
    """Refuse absurd nesting from the event stream (flat, no recursion), at its position."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark if isinstance(event.start_mark, yaml.Mark) else None
                raise _fail(label, "YAML is nested too deeply",
                            f"a profile needs fewer than {MAX_DEPTH} levels", mark)
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _tab_near(text: str, mark: yaml.Mark | None) -> bool:
    if mark is None:
        return False
    lines = text.splitlines()
    return 0 <= mark.line < len(lines) and "\t" in lines[mark.line]


class _Builder:
    def __init__(self, label: str) -> None:
        self.label = label
        self.positions = Positions()
        self.nodes = 0
        self.constructor = yaml.constructor.SafeConstructor()

    def build(self, node: yaml.Node, path: Path_, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _fail(self.label, f"YAML expands to more than {MAX_NODES} values",
                        "anchors/aliases that multiply (an 'alias bomb') are refused",
                        node.start_mark)
        if depth > MAX_DEPTH:
            raise _fail(self.label, "YAML is nested too deeply",
                        f"a profile needs fewer than {MAX_DEPTH} levels", node.start_mark)
        self.positions.values[path] = _where(self.label, node.start_mark)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise self._bad_tag(node)
            return [self.build(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node)

    def _mapping(self, node: yaml.MappingNode, path: Path_, depth: int) -> dict[str, Any]:
        if node.tag != _MAP:
            raise self._bad_tag(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == "<<" and key_node.style is None:
                raise _fail(self.label, "YAML merge keys ('<<') are not supported",
                            "use 'extends:' to build on another profile", key_node.start_mark)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALAR_TAGS | _KEEP_AS_TEXT:
                raise _fail(self.label, "mapping keys must be plain words",
                            "remove the '?' complex key or tag", key_node.start_mark)
            key = str(key_node.value)
            child = (*path, key)
            if key in result:
                first = self.positions.keys[child]
                raise _fail(self.label, f"duplicate key {key!r} (first at line {first.line})",
                            "each key may appear once; remove one of them",
                            key_node.start_mark, _dotted(child))
            self.positions.keys[child] = _where(self.label, key_node.start_mark)
            result[key] = self.build(value_node, child, depth + 1)
        return result

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        if node.tag in _KEEP_AS_TEXT:
            return node.value
        if node.tag not in _SCALAR_TAGS:
            raise self._bad_tag(node)
        if node.tag == "tag:yaml.org,2002:bool" and node.value.lower() not in {"true", "false"}:
            return node.value  # yes/no/on/off: a string; pydantic decides by field type
        try:
            return self.constructor.construct_object(node, deep=True)
        except ValueError:  # e.g. an integer of more than 4300 digits (Python's int() limit)
            raise _fail(self.label, f"cannot read the value {node.value[:40]!r}",
                        "write a plain number of reasonable size, or quote it", node.start_mark) from None

    def _bad_tag(self, node: yaml.Node) -> ProfileError:
        return _fail(self.label, f"YAML tag {node.tag!r} is not allowed",
                     "profiles are plain data: remove the tag", node.start_mark)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")


def _dotted(path: Path_) -> str:
    """hardware.gpus[0].model; odd keys quoted so a key can never break the line."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            text += f".{part}" if text else part
        else:
            text += f"[{json.dumps(part)}]"
    return text


dotted = _dotted
