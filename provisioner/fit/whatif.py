"""What if: a profile with some fields changed, fitted without writing a file (pure:
cli/fit.py loads each variant and hands its Spec and Placement here).

``--set model.quant=Q4_K_M`` changes one field; ``--compare model.quant=A,B,C`` fits
every value (several ``--compare`` options: every combination) and returns one row
each, ordered the way a user picks: what fits first, then the better quant (more bits
per weight) among those entirely in VRAM before those partly in RAM, the longer
context and the faster decode.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any

from provisioner.errors import UsageError
from provisioner.fit.placement import Placement
from provisioner.fit.predict import predict
from provisioner.profile.loader import deep_merge
from provisioner.profile.resolve import Spec


def scalar(text: str) -> Any:
    """A command-line value: an integer, a number, true/false, else the text itself (YAML's
    own rules would read `on` as true, which flash_attention spells as a word)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text, text)


def _split(text: str, option: str) -> tuple[str, str]:
    field, sep, value = text.partition("=")
    if not sep or not field or not value or any(not part for part in field.split(".")):
        raise UsageError(f"{option} {text!r}: expected FIELD=VALUE with a dotted field",
                         hint=f"e.g. {option} model.quant=Q4_K_M")
    return field, value


def nested(field: str, value: Any) -> dict[str, Any]:
    """``a.b.c`` = v as {"a": {"b": {"c": v}}}."""
    out: Any = value
    for part in reversed(field.split(".")):
        out = {part: out}
    return dict(out)


def overrides_of(assignments: list[str], option: str = "--set") -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for text in assignments:
        field, value = _split(text, option)
        merged = deep_merge(merged, nested(field, scalar(value)))
    return merged


def sets_quant(overrides: dict[str, Any] | None) -> bool:
    """Whether a what-if changes the quant: the profile's model files are then another quant's."""
    return "quant" in ((overrides or {}).get("model") or {})


def combinations(compares: list[str]) -> list[tuple[tuple[str, Any], ...]]:
    """Every combination of the --compare options' values, in the order given."""
    axes: list[list[tuple[str, Any]]] = []
    for text in compares:
        field, values = _split(text, "--compare")
        axes.append([(field, scalar(v)) for v in values.split(",") if v])
    return list(itertools.product(*axes))


@dataclass(frozen=True)
class Row:
    settings: tuple[tuple[str, Any], ...]
    fits: bool
    margin_bytes: int  # least free memory on any device (negative: missing)
    decode_tokens_per_s: float  # one stream, short prompt
    decode_tokens_per_s_at_context: float
    prefill_tokens_per_s: float
    streams: int
    decode_aggregate_tokens_per_s: float
    decode_per_stream_tokens_per_s: float
    context: int
    bits_per_weight: float
    quality: str  # what the quant and the KV cache cost in quality
    weights_in_ram_bytes: int = 0  # with GPUs: the part of the model read from system RAM

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["settings"] = dict(self.settings)
        return out


def with_settings(base: dict[str, Any], settings: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """The --set overrides with one combination of --compare values on top."""
    overrides = base
    for field, value in settings:
        overrides = deep_merge(overrides, nested(field, value))
    return overrides


def row_of(spec: Spec, placement: Placement, settings: tuple[tuple[str, Any], ...]) -> Row:
    speed = predict(spec, placement)
    margin = (min(d.free_bytes for d in placement.devices if d.capacity_bytes)
              if placement.fits else -placement.missing_bytes)
    notes = [f"{spec.profile.model.quant}: {spec.quant.bits_per_weight:g} bits per weight"]
    notes += [w for w in placement.warnings if "quality" in w or "degrades" in w]
    return Row(settings, placement.fits, margin, speed.decode_tokens_per_s, speed.decode_tokens_per_s_at_context,
               speed.prefill_tokens_per_s, speed.streams, speed.decode_aggregate_tokens_per_s,
               speed.decode_per_stream_tokens_per_s, placement.context, spec.quant.bits_per_weight,
               "; ".join(notes), placement.ram.weights_bytes if spec.gpus else 0)


def ordered(rows: list[Row]) -> list[Row]:
    """What fits, entirely in VRAM before partly in RAM (several times slower), then the
    better quant, the longer context, the faster decode; what does not fit last, the
    nearest first."""
    def key(r: Row) -> tuple[Any, ...]:
        if not r.fits:
            return (2, 0, 0.0, 0, float(-r.margin_bytes))
        return (0 if not r.weights_in_ram_bytes else 1, 0, -r.bits_per_weight, -r.context, -r.decode_tokens_per_s)
    return sorted(rows, key=key)
