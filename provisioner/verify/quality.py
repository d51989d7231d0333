"""The quality canary's record and its maths, pure: no I/O beyond reading the bundled data.

A **fingerprint** is what a server said about fixed prompts: for each bundled prompt,
the greedy continuation (temperature 0) with the top-k log-probabilities at every
generated position (vLLM also at every prompt position), the answers to the reasoning
probes, and the setup it was taken with (engine, model file, KV type, offload split,
driver...). Two fingerprints of the same setup agree to within numerical noise; past
the limits in ``canary_data/thresholds.yaml`` the numbers changed.

Comparison is position by position on the *same prefix*: the HTTP side (canary.py)
asks the server for its distribution after exactly the baseline's tokens (vLLM:
the baseline's tokens as the prompt; llama.cpp: restarting from them after each
divergence), so ``compare`` sees, for each baseline position, what the server says
there now, or None where it could not be measured.

The file format (``FORMAT``) is the same for the baseline a host records in its state
dir, for a reviewed fingerprint shipped beside the profile (``PROFILE.fingerprint.json``)
and for a higher-precision reference (``PROFILE.reference.fingerprint.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

FORMAT: Literal["provision-fingerprint/1"] = "provision-fingerprint/1"
DATA = "canary_data"

# A token: its id where the engine reports ids (llama.cpp, vLLM), else its text (Ollama).
Token = int | str


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Position(_Frozen):
    """One position: the token greedy decoding takes there and the top-k (token, logprob),
    most likely first; ``top`` None where the server reported no distribution."""

    token: Token
    top: tuple[tuple[Token, float], ...] | None = None


class PromptPrint(_Frozen):
    id: str
    sha256: str  # of the prompt's text: another text is another prompt
    prompt_ids: tuple[int, ...] = ()  # the engine's tokenization (empty: Ollama cannot say)
    generated: tuple[Position, ...]
    prompt_positions: tuple[Position, ...] = ()  # vLLM prompt_logprobs (position 0 has none)


class ProbeAnswer(_Frozen):
    id: str
    answer: str | None  # the extracted final answer; None: the reply had none
    correct: bool


class Fingerprint(_Frozen):
    format: Literal["provision-fingerprint/1"] = FORMAT
    taken: str  # ISO 8601, UTC
    host: str = ""
    generation: int | None = None  # the host's generation when it was taken
    api: str  # how the numbers were read (logprob_api.yaml), e.g. llama.cpp-completion
    top_k: int = Field(ge=1)
    tokens: int = Field(ge=1)
    setup: dict[str, str]  # setup key -> value (SETUP_LABELS); what a hint compares
    prompts: tuple[PromptPrint, ...]
    probes: tuple[ProbeAnswer, ...] = ()

    def prompt(self, prompt_id: str) -> PromptPrint | None:
        return next((p for p in self.prompts if p.id == prompt_id), None)

    def probe(self, probe_id: str) -> ProbeAnswer | None:
        return next((p for p in self.probes if p.id == probe_id), None)


def parse_fingerprint(text: str, where: str) -> Fingerprint:
    """A fingerprint file's text; ValueError with one line saying where and what is wrong."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{where}: not a fingerprint (expected a JSON object with format {FORMAT!r})")
    if data.get("format") != FORMAT:
        raise ValueError(f"{where}: format {data.get('format')!r}, this provision reads {FORMAT!r}")
    try:
        return Fingerprint.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}: {field}: {first['msg']}") from exc


def dump_fingerprint(fingerprint: Fingerprint) -> str:
    return fingerprint.model_dump_json(indent=None) + "\n"


# -- what the setup is made of, in the order a hint names the differences ----------------------

SETUP_LABELS: tuple[tuple[str, str], ...] = (
    ("engine", "engine"),
    ("engine_version", "engine version"),
    ("engine_build", "engine build (as the server reports it)"),
    ("model", "model"),
    ("quant", "quant"),
    ("model_sha256", "model file sha256"),
    ("kv_cache_k", "KV cache type (K)"),
    ("kv_cache_v", "KV cache type (V)"),
    ("offload", "offload split"),
    ("flash_attention", "flash attention"),
    ("context", "context per sequence"),
    ("parallel", "parallel sequences"),
    ("extra_args", "extra engine flags"),
    ("driver", "NVIDIA driver"),
    ("gpus", "GPUs"),
    ("mode", "mode"),
)


def setup_differences(before: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """``label: old -> new`` for every setup value that differs (a value missing on one
    side, e.g. a build the server did not report, is not a difference)."""
    out: list[str] = []
    known = [k for k, _ in SETUP_LABELS]
    for key, label in SETUP_LABELS + tuple((k, k) for k in sorted(set(before) | set(now)) if k not in known):
        old, new = before.get(key), now.get(key)
        if old is not None and new is not None and old != new:
            out.append(f"{label}: {_short(old)} -> {_short(new)}")
    return out


def _short(value: str) -> str:
    if re.fullmatch(r"[0-9a-f]{64}", value):
        return value[:12]
    return value if len(value) <= 60 else value[:57] + "..."


# -- the maths ---------------------------------------------------------------------------------

_FLOOR = 1e-12  # a probability the sums below may round to; keeps the logs finite


def position_kld(base: Sequence[tuple[Token, float]], now: Sequence[tuple[Token, float]]) -> float:
    """KL(base || now) in nats over the baseline's top-k tokens plus one bucket for the
    rest of the vocabulary, from two top-k lists of (token, logprob).

    A baseline token missing from ``now``'s top-k has at most the smaller of now's k-th
    probability and the mass now leaves outside its top-k; that bound is used, so the
    result never overstates the divergence. Identical inputs give exactly 0."""
    p = {tok: math.exp(lp) for tok, lp in base}
    q_top = {tok: math.exp(lp) for tok, lp in now}
    q_outside = max(0.0, 1.0 - sum(q_top.values()))
    q_missing = min(min(q_top.values(), default=0.0), q_outside)
    total = 0.0
    q_used = 0.0
    for tok, pt in p.items():
        qt = q_top.get(tok, q_missing)
        q_used += qt
        if pt > 0:
            total += pt * math.log(pt / max(qt, _FLOOR))
    p_rest = max(0.0, 1.0 - sum(p.values()))
    q_rest = max(0.0, 1.0 - q_used)
    if p_rest > _FLOOR:
        total += p_rest * math.log(p_rest / max(q_rest, _FLOOR))
    return max(total, 0.0)


@dataclass(frozen=True)
class PromptComparison:
    prompt: str
    positions: int  # baseline positions with a distribution on both sides
    klds: tuple[float, ...]
    top1_same: int
    first_divergence: int | None  # the first generated position whose greedy token differs
    unmeasured: int  # generated positions the server was not asked about (realignments ran out)


@dataclass(frozen=True)
class Comparison:
    prompts: tuple[PromptComparison, ...]

    @property
    def klds(self) -> list[float]:
        return [k for p in self.prompts for k in p.klds]

    @property
    def positions(self) -> int:
        return sum(p.positions for p in self.prompts)

    @property
    def mean_kld(self) -> float:
        values = self.klds
        return sum(values) / len(values) if values else 0.0

    @property
    def p99_kld(self) -> float:
        return percentile(self.klds, 0.99)

    @property
    def top1_agreement(self) -> float:
        total = self.positions
        return sum(p.top1_same for p in self.prompts) / total if total else 1.0

    @property
    def divergences(self) -> list[str]:
        return [f"{p.prompt}@{p.first_divergence}" for p in self.prompts if p.first_divergence is not None]


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def compare_positions(prompt: str, base: Sequence[Position], now: Sequence[Position | None],
                      *, generated: bool = True) -> PromptComparison:
    """``now[i]``: the server's position after the baseline's first i tokens (None: not asked)."""
    klds: list[float] = []
    same = 0
    first: int | None = None
    unmeasured = 0
    for i, b in enumerate(base):
        n = now[i] if i < len(now) else None
        if n is None:
            unmeasured += 1
            continue
        if generated and first is None and n.token != b.token:
            first = i
        if b.top and n.top:
            klds.append(position_kld(b.top, n.top))
            same += b.top[0][0] == n.top[0][0]
    return PromptComparison(prompt, len(klds), tuple(klds), same, first, unmeasured if generated else 0)


# -- limits and data ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    tokens: int
    top_k: int
    realign: int
    realign_chunk: int
    mean_kld_fail: float
    p99_kld_fail: float
    top1_agreement_fail: float


def _data(name: str) -> Any:
    text = resources.files("provisioner.verify").joinpath(f"{DATA}/{name}").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@cache
def limits() -> Limits:
    f = _data("thresholds.yaml")["fingerprint"]
    return Limits(int(f["tokens"]), int(f["top_k"]), int(f["realign"]), int(f["realign_chunk"]),
                  float(f["mean_kld_fail"]),
                  float(f["p99_kld_fail"]), float(f["top1_agreement_fail"]))


@cache
def quant_scale() -> tuple[str, dict[str, float], str]:
    """(model, quant -> mean KLD against FP16, the quant past which a cost warns)."""
    s = _data("thresholds.yaml")["quant_cost_scale"]
    return str(s["model"]), {str(k): float(v) for k, v in s["mean_kld"].items()}, str(s["warn_above"])


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    sha256: str


@cache
def prompts() -> tuple[Prompt, ...]:
    out = []
    for entry in _data("prompts.yaml")["prompts"]:
        text = resources.files("provisioner.verify").joinpath(f"{DATA}/{entry['file']}").read_text(encoding="utf-8")
        out.append(Prompt(str(entry["id"]), text, hashlib.sha256(text.encode()).hexdigest()))
    return tuple(out)


@dataclass(frozen=True)
class Probe:
    id: str
    question: str
    answer: str


@dataclass(frozen=True)
class Probes:
    instruction: str
    max_tokens: dict[str, int]
    items: tuple[Probe, ...]


@cache
def probes() -> Probes:
    data = _data("probes.yaml")
    return Probes(str(data["instruction"]), {str(k): int(v) for k, v in data["max_tokens"].items()},
                  tuple(Probe(str(p["id"]), str(p["question"]), str(p["answer"])) for p in data["probes"]))


@cache
def logprob_apis() -> dict[str, dict[str, dict[str, Any]]]:
    data: dict[str, dict[str, dict[str, Any]]] = _data("logprob_api.yaml")
    return data


# -- reasoning answers -------------------------------------------------------------------------

_ANSWER = re.compile(r"ANSWER\s*:\s*(.+)", re.IGNORECASE)


def extract_answer(reply: str) -> str | None:
    """The text after the reply's last ``ANSWER:``; else its last non-empty line; None if empty."""
    found = _ANSWER.findall(reply)
    if found:
        return str(found[-1]).strip() or None
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    return lines[-1] if lines else None


def normalise_answer(answer: str) -> str:
    text = answer.strip().strip("*_`").strip()
    text = re.sub(r"^\$|\.$", "", text).strip()
    text = text.replace(",", "") if re.fullmatch(r"[-+]?[\d,]+(\.\d+)?", text) else text
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text.casefold()
    return format(number.normalize(), "f")


def same_answer(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a is b
    return normalise_answer(a) == normalise_answer(b)
