"""What is left for a person after an apply: a reboot the driver needs, the secrets the
profile reads and provision does not write, where a generated API key is, and the
restart a running server still owes. The command line adds `provision verify`."""

from __future__ import annotations

from provisioner.converge.plan import Plan
from provisioner.install.secret import SecretPlace, SecretsOwed, generated_key_path, key_unit, read_hint


def _secret_step(place: SecretPlace, env_file: str) -> str | None:
    if place.from_env:
        return (f"write {place.from_env}=... ({place.name}) into {env_file} (mode 0600, root): "
                "the server reads it from there at start")
    if place.from_file:
        return f"write the {place.name} into {place.from_file} (mode 0600, root)"
    return None


def _generated_key_step(service: str, root: str, host: str | None) -> str:
    """Where the generated key is: made by this apply on a live host; in an image, made by
    each machine at its first boot (install/secret.py), so the image holds none."""
    path = generated_key_path(service)
    if root:
        return (f"the image holds no API key: each machine booted from it makes its own into {path} "
                f"(0600, never printed) at first boot ({key_unit(service)}); read it there with "
                f"`{read_hint(path)}`")
    if host:
        return f"the API key is in {path} on {host} (0600, never printed): read it there with `{read_hint(path)}`"
    return f"the API key is in {path} (0600, never printed): read it with `{read_hint(path)}`"


def next_steps(owed: SecretsOwed, plan: Plan, root: str, host: str | None = None) -> tuple[str, ...]:
    """The steps in the order to take them (``owed``: install.secret.secrets_owed of the
    profile); ``root`` non-empty: an image tree; ``host``: the name of a host reached over
    SSH (None: this machine)."""
    service = owed.service
    env_file = f"/etc/provision/{service}/secrets.env"
    steps = [step for place in owed.places if (step := _secret_step(place, env_file)) is not None]
    if any(place.generate for place in owed.places):
        steps.append(_generated_key_step(service, root, host))
    if plan.reboot_required:
        steps.append("reboot: a driver or kernel module change takes effect only after one")
    if plan.restart_pending:
        steps.append(f"restart the server to load the changes: systemctl restart {service} "
                     "(or apply again with --restart)")
    if root:
        steps.append(f"boot the image: its system handlers ({', '.join(plan.pending_builtin) or 'none'}) "
                     "and the first start of the server happen there")
    return tuple(steps)
