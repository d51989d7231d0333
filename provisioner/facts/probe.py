"""A probe: a POSIX sh snippet that reads something on a host, and the pure parser
of the lines it prints.

Every line a probe prints starts with its marker, ``@NAME `` (``@gpu ``, ``@init ``,
...), so any number of probes ride in one script and one exec per host (the
gather, facts/gather.py) and each parser takes its own lines out of the shared
output. Long snippets are files in provisioner/facts/snippets/, shipped in the
wheel, which shellcheck checks (tests/facts/test_probe.py).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from importlib import resources
from typing import Generic, TypeVar

Result_co = TypeVar("Result_co", covariant=True)
Result = TypeVar("Result")


@dataclass(frozen=True)
class Probe(Generic[Result_co]):
    name: str  # the marker without "@": every line the snippet prints starts with "@NAME "
    snippet: str  # POSIX sh; no Python needed on the host
    parse: Callable[[list[str]], Result_co]  # this probe's lines, the marker removed -> what they say

    @property
    def marker(self) -> str:
        return f"@{self.name} "

    def lines(self, output: str) -> list[str]:
        """This probe's lines of ``output`` (a script's whole output), without the marker."""
        # "\n" only: str.splitlines() also splits at \r, \f, \x1c-\x1e, U+0085 and U+2028, which a
        # host's text (a log line, a file name) may hold: one line must not become a forged other
        return [line[len(self.marker):] for line in output.split("\n") if line.startswith(self.marker)]

    def read(self, output: str) -> Result_co:
        """What this probe's lines in ``output`` say (other lines are ignored)."""
        return self.parse(self.lines(output))


def load_snippet(name: str) -> str:
    """The text of provisioner/facts/snippets/NAME.sh."""
    return resources.files("provisioner.facts").joinpath("snippets", f"{name}.sh").read_text(encoding="utf-8")


def shell_inputs(**inputs: str) -> str:
    """Lines assigning shell variables, each value quoted: how a snippet gets its inputs."""
    return "".join(f"{name}={shlex.quote(value)}\n" for name, value in inputs.items())


def with_inputs(probe: Probe[Result], **inputs: str) -> Probe[Result]:
    """``probe`` with its inputs set: shell variables assigned before its snippet."""
    return replace(probe, snippet=shell_inputs(**inputs) + probe.snippet)


def snippets(probes: Iterable[Probe[object]]) -> str:
    """The snippets of ``probes`` one after the other, as one piece of a script."""
    return "".join(p.snippet if p.snippet.endswith("\n") else p.snippet + "\n" for p in probes)
