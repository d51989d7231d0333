"""Ollama has no server-wide switch for thinking (engines.yaml ollama `think`): a
non-thinking profile on a hybrid model renders nothing that would pretend to turn it off,
and fit says what the clients must send instead."""

from __future__ import annotations

from provisioner.catalog import load_catalog
from provisioner.fit import fit
from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from provisioner.render.engine_command import engine_command
from provisioner.render.files import model_path
from tests.conftest import ROOT

PROFILE = ROOT / "profiles" / "rtx-4090-qwen3-30b-ollama.yaml"


def _warnings(mode: str) -> tuple[str, ...]:
    return fit(resolve(load_profile(PROFILE, {"model": {"mode": mode}}))).warnings


def test_non_thinking_on_a_hybrid_model_says_each_request_must_turn_it_off() -> None:
    said = [w for w in _warnings("non-thinking") if "Ollama thinks" in w]
    assert len(said) == 1 and '"think": false' in said[0] and '"reasoning_effort": "none"' in said[0]
    assert not any("Ollama thinks" in w for w in _warnings("thinking"))


def test_the_think_entry_is_per_request_only_so_nothing_is_rendered_for_it() -> None:
    think = load_catalog().engines["ollama"].versions["0.34.4"].flags["think"]
    assert think.flag is None and think.env is None
    spec = resolve(load_profile(PROFILE, {"model": {"mode": "non-thinking"}}))
    command = engine_command(spec, fit(spec), model_path(spec))
    assert not any("THINK" in name for name in command.env)
