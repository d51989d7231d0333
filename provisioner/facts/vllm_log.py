"""What a vLLM server said at start-up about its memory, read from the journal of the
unit's current run (snippets/vllm_log.sh; pure parser).

vLLM sizes its KV cache pool at start-up from what the GPUs hold after loading the
weights and one profiling forward pass; fit can only estimate that remainder (the
kernels and sampler vLLM picks depend on the packages installed, docs/fit.md). The
server's own lines are the measurement. Their wording, in the pinned releases
(vllm-0.11.0 and vllm-0.33.0 wheels from PyPI):

- ``Available KV cache memory: 8.11 GiB`` (vllm/v1/worker/gpu_worker.py, per TP worker)
- ``GPU KV cache size: 178,880 tokens`` (vllm/v1/core/kv_cache_utils.py; 0.33.0 puts it
  and the next on one line)
- ``Maximum concurrency for 40,960 tokens per request: 4.37x``
- ``Model loading took 54.9511 GiB and 31.2 seconds`` (0.11.0; 0.33.0 says
  ``GiB memory and``; vllm/v1/worker/gpu_model_runner.py)
- the start-up refusal: ``To serve at least one request with the model's max seq len
  (262144), (24.00 GiB KV cache is needed, which is larger than the available KV cache
  memory (3.18 GiB). Based on the available memory, the estimated maximum model length is
  34736.`` (0.11.0 spells it ``models's``; vllm/v1/core/kv_cache_planning.py in 0.33.0)
- ``No available memory for the cache blocks.``

Lines:

    @vllm-log none WHY          nothing to read (no journalctl, unit never ran, unreadable)
    @vllm-log line TEXT         a matching start-up line of the run, as logged
    @vllm-log run ID            the systemd invocation the lines belong to
    @vllm-log unit KEY=VALUE    the unit's ActiveState, SubState and NRestarts
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provisioner.facts.probe import Probe, load_snippet, with_inputs
from provisioner.units import GIB

_AVAILABLE = re.compile(r"Available KV cache memory: (-?\d+(?:\.\d+)?) GiB")
_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: (\d+(?:\.\d+)?)x")
_LOADED = re.compile(r"Model loading took (\d+(?:\.\d+)?) GiB")
_REFUSED = re.compile(r"max seq len \((\d+)\), \((\d+(?:\.\d+)?) GiB KV cache is needed, which is larger than "
                      r"the available KV cache memory \((-?\d+(?:\.\d+)?) GiB\)")
_ESTIMATED = re.compile(r"estimated maximum model length is (\d+)", re.IGNORECASE)
_NO_MEMORY = "No available memory for the cache blocks"


@dataclass(frozen=True)
class VllmStartup:
    """One run's memory lines; None where the run did not log it (yet)."""

    run: str | None = None  # systemd invocation id; None: nothing was read (see ``unread``)
    unread: str | None = None  # why nothing was read
    kv_pool_bytes: int | None = None  # per GPU: the smallest any worker reported
    kv_tokens: int | None = None  # the whole pool, in tokens
    max_model_len: int | None = None
    concurrency: float | None = None  # sequences of max_model_len the pool holds
    weights_bytes: int | None = None  # per GPU, as loaded
    refused: str | None = None  # vLLM refused to start for want of KV memory: its reason
    active: str = ""  # the unit's ActiveState ("active", "activating", "failed", ...)
    sub: str = ""  # its SubState ("running", "auto-restart", ...)
    restarts: int = 0  # NRestarts: automatic restarts (systemd keeps counting across some starts)


def _gib(text: str) -> int:
    return int(float(text) * GIB)


def _refusal(text: str) -> str | None:
    if m := _REFUSED.search(text):
        estimated = _ESTIMATED.search(text)
        return (f"{m[2]} GiB of KV cache needed for one sequence of {int(m[1]):,} tokens, {m[3]} GiB available"
                + (f"; vLLM estimates {int(estimated[1]):,} tokens would fit" if estimated else ""))
    if _NO_MEMORY in text:
        return "no GPU memory left for the KV cache after the weights and the profiling run"
    return None


def parse(lines: list[str]) -> VllmStartup:
    run: str | None = None
    pools: list[int] = []
    tokens = max_len = weights = None
    concurrency: float | None = None
    refused = None
    unit: dict[str, str] = {}
    for line in lines:
        kind, _, text = line.partition(" ")
        if kind == "none":
            return VllmStartup(unread=text or "nothing read")
        if kind == "run":
            run = text.strip()
        elif kind == "unit":
            key, _, value = text.partition("=")
            unit[key] = value.strip()
        if kind != "line":
            continue
        if m := _AVAILABLE.search(text):
            pools.append(_gib(m[1]))
        if m := _TOKENS.search(text):
            tokens = int(m[1].replace(",", ""))
        if m := _CONCURRENCY.search(text):
            max_len, concurrency = int(m[1].replace(",", "")), float(m[2])
        if m := _LOADED.search(text):
            weights = max(_gib(m[1]), weights or 0)
        if m := _REFUSED.search(text):
            max_len = int(m[1])
        refused = _refusal(text) or refused
    if run is None:
        return VllmStartup(unread="the host's answer had no run of the unit")
    restarts = unit.get("NRestarts", "")
    return VllmStartup(run=run, kv_pool_bytes=min(pools) if pools else None, kv_tokens=tokens,
                       max_model_len=max_len, concurrency=concurrency, weights_bytes=weights, refused=refused,
                       active=unit.get("ActiveState", ""), sub=unit.get("SubState", ""),
                       restarts=int(restarts) if restarts.isdigit() else 0)


VLLM_LOG_PROBE: Probe[VllmStartup] = Probe("vllm-log", load_snippet("vllm_log"), parse)


def vllm_log_probe(service: str) -> Probe[VllmStartup]:
    """The probe for the profile's server unit."""
    return with_inputs(VLLM_LOG_PROBE, VLLM_UNIT=f"{service}.service")
