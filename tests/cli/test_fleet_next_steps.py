"""A fleet apply lists its next steps once, after every host: each step once, with the
hosts it concerns when not all of them, then the verify command that checks them all."""

from __future__ import annotations

from typing import Any, cast

from provisioner.cli._output import Lines
from provisioner.cli.converge import _fleet_next_steps
from provisioner.converge.fleet import Outcome
from provisioner.errors import Problem

APPLIED = cast(Any, object())  # a host result: only its presence matters here
VERIFY = "check it: provision verify -i fleet.yaml"


def _text(outcomes: list[Outcome]) -> list[str]:
    blocks = _fleet_next_steps(outcomes, VERIFY)
    assert all(isinstance(b, Lines) for b in blocks)
    return [line for block in blocks if isinstance(block, Lines) for line in block.lines]


def test_each_step_once_naming_the_hosts_it_concerns() -> None:
    outcomes = [Outcome("b", APPLIED, None, ("reboot: the driver changed", "set the key")),
                Outcome("a", APPLIED, None, ("set the key",)),
                Outcome("c", None, [Problem("c: unreachable")])]  # a failed host has no steps
    assert _text(outcomes) == ["next steps:", "  1. reboot: the driver changed (b)", "  2. set the key",
                               f"  3. {VERIFY}"]


def test_every_hosts_steps_keep_their_order() -> None:
    outcomes = [Outcome("a", APPLIED, None, ("restart the server",)),
                Outcome("b", APPLIED, None, ("write the token", "restart the server"))]
    assert _text(outcomes) == ["next steps:", "  1. write the token (b)", "  2. restart the server",
                               f"  3. {VERIFY}"]


def test_a_plan_or_a_fleet_where_nothing_applied_lists_nothing() -> None:
    assert _fleet_next_steps([Outcome("a", APPLIED, None)], "") == ()
    assert _fleet_next_steps([Outcome("a", None, [Problem("a: unreachable")])], VERIFY) == ()
