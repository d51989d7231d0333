"""What apply says is left for a person, from the profile and the plan."""

from __future__ import annotations

from pathlib import Path

from provisioner.converge.next_steps import next_steps
from provisioner.converge.plan import Plan
from provisioner.install.secret import secrets_owed
from provisioner.render.pipeline import build
from tests.conftest import make_profile

NOTHING = Plan(changes=(), handlers=(), handler_commands={}, restart_pending=(), reboot_required=False)


def test_the_api_key_step_is_there_only_where_a_server_unit_reads_the_key(tmp_path: Path) -> None:
    served = build(make_profile(tmp_path), network=False)
    assert next_steps(secrets_owed(served.spec.profile), NOTHING, "") == (
        "write LLM_API_KEY=... (API key) into /etc/provision/llm-server/secrets.env (mode 0600, root): "
        "the server reads it from there at start",)
    packages_only = build(make_profile(tmp_path, {"builtin_files": False}), network=False)
    assert next_steps(secrets_owed(packages_only.spec.profile), NOTHING, "") == ()
