"""What is left for a person after an apply: a reboot the driver needs, the secrets the
profile reads and provision does not write, where a generated API key is, and the
restart a running server still owes. The command line adds `provision verify`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner.converge.plan import Plan
from provisioner.install.secret import generated_key_path, key_unit, read_hint

if TYPE_CHECKING:  # a cached no-op loads neither the schema nor the catalog (tests/render/test_cached.py)
    from provisioner.profile.models import SecretRef
    from provisioner.profile.resolve import Spec


def _secret_step(name: str, ref: SecretRef, env_file: str) -> str | None:
    if ref.from_env:
        return (f"write {ref.from_env}=... ({name}) into {env_file} (mode 0600, root): "
                "the server reads it from there at start")
    if ref.from_file:
        return f"write the {name} into {ref.from_file} (mode 0600, root)"
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


def next_steps(spec: Spec, plan: Plan, root: str, host: str | None = None) -> tuple[str, ...]:
    """The steps in the order to take them; ``root`` non-empty: an image tree; ``host``: the
    name of a host reached over SSH (None: this machine)."""
    profile = spec.profile
    service = profile.service.name
    env_file = f"/etc/provision/{service}/secrets.env"
    steps: list[str] = []
    # without the built-in files no server unit reads the API key: nothing to write for it
    api_key = profile.secrets.api_key if profile.builtin_files else None
    for name, ref in (("API key", api_key), ("Hugging Face token", profile.secrets.hf_token)):
        if ref is not None:
            step = _secret_step(name, ref, env_file)
            if step is not None:
                steps.append(step)
    ref = api_key
    if ref is not None and ref.generate:
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
