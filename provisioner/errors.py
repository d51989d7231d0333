"""The one error family of the tool.

Everything inside raises a ``ProvisionError`` (or a subclass); only ``cli.py``
turns it into a line of text, a JSON ``error`` object and an exit code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One thing wrong, with where it is and what to try."""

    message: str
    hint: str | None = None
    file: str | None = None
    line: int | None = None
    column: int | None = None
    field: str | None = None

    def location(self) -> str:
        if self.file is None:
            return ""
        if self.line is None:
            return self.file
        if self.column is None:
            return f"{self.file}:{self.line}"
        return f"{self.file}:{self.line}:{self.column}"

    def one_line(self) -> str:
        parts = []
        where = self.location()
        if where:
            parts.append(f"{where}:")
        if self.field:
            parts.append(f"{self.field}:")
        parts.append(self.message)
        text = " ".join(parts)
        if self.hint:
            text += f" (hint: {self.hint})"
        return text



@dataclass
class ProvisionError(Exception):
    """An error the user can act on. Carries one or more problems."""

    problems: list[Problem] = field(default_factory=list)

    def __init__(self, message: str | Problem | list[Problem], hint: str | None = None,
                 **where: Any) -> None:
        if isinstance(message, list):
            self.problems = list(message)
        elif isinstance(message, Problem):
            self.problems = [message]
        else:
            self.problems = [Problem(message=message, hint=hint, **where)]
        super().__init__(self.problems[0].one_line() if self.problems else "error")

    @property
    def first(self) -> Problem:
        return self.problems[0]

    def __str__(self) -> str:
        return "\n".join(p.one_line() for p in self.problems)


class ProfileError(ProvisionError):
    """The profile (or a file it names) is invalid."""


class CatalogError(ProvisionError):
    """The bundled catalog is broken: a bug of the tool, not of the user."""


class RenderError(ProvisionError):
    """A template could not be rendered, or a value cannot be written safely."""


class UsageError(ProvisionError):
    """The command line asked for something that cannot be done."""
