"""verify's install checks: every install item is as the profile says.

The item's own probe runs in verify's one gather and its own ``change()`` is
asked what apply would do: nothing means pass, anything is a failed check
naming it (a package unheld or at another version, a venv or build whose link
points elsewhere or whose stamp is missing, a download whose size or checksum
no longer matches). Items with a deeper look of their own (``verify_probe`` /
``verify_checks``: a venv's installed package versions, a build's binaries)
add it.
"""

from __future__ import annotations

from typing import Any

from provisioner.errors import ProvisionError
from provisioner.facts.check import Check
from provisioner.install import for_host, parse_install_lines


def probes(installs: tuple[Any, ...], root: str) -> list[str]:
    out = [item.probe(root) for item in installs]
    out += [item.verify_probe(root) for item in installs if hasattr(item, "verify_probe")]
    return out


def checks(installs: tuple[Any, ...], output: str, root: str, facts: dict[str, str] | None = None) -> list[Check]:
    states = parse_install_lines(output)
    out: list[Check] = []
    for item in (for_host(i, facts or {}) for i in installs):
        if getattr(item, "probe_only", False):
            continue
        found = states.of(item.name)
        try:
            change = item.change(found, root)
        except ProvisionError as exc:
            out.append(Check(f"install.{item.name}", "fail", exc.first.message, hint=exc.first.hint))
            continue
        if change is None:
            out.append(Check(f"install.{item.name}", "pass"))
            if hasattr(item, "verify_checks"):
                out += item.verify_checks(found)
        elif change.pending:
            out.append(Check(f"install.{item.name}", "skip", change.summary,
                             hint="not installed under --root: the host installs it on its first live apply"))
        else:
            out.append(Check(f"install.{item.name}", "fail", f"apply would {change.action}: {change.summary}",
                             hint="run `provision apply` to install it as the profile says"))
    return out
