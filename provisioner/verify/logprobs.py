"""Asking each engine for the same positions' top-k log-probabilities, at temperature 0
with the prompt cache off: llama-server's /completion n_probs, vLLM's prompt_logprobs,
Ollama's logprobs option. Field names per engine version come from
canary_data/logprob_api.yaml, each with the server source it was read in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from provisioner.verify.client import Answer, Client, HttpError, as_int
from provisioner.verify.quality import (
    Position,
    Prompt,
    PromptPrint,
    limits,
    logprob_apis,
)

if TYPE_CHECKING:
    from provisioner.profile.resolve import Spec


SEED = 1234


# -- requests ----------------------------------------------------------------------------------

def chat(client: Client, engine: str, model: str, prompt: str, max_tokens: int, *, thinking: bool,
          cache_prompt: bool = False) -> Answer:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": SEED,
                            "stream": False}
    if engine in ("llama.cpp", "vllm"):
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    if engine == "llama.cpp":
        body["cache_prompt"] = cache_prompt
        body["top_k"] = 1
    if engine == "ollama":
        # Ollama 0.33 openai/openai.go thinkFromReasoningEffort: "none" turns thinking off
        body["reasoning_effort"] = "medium" if thinking else "none"
    start = time.monotonic()
    data = client.post("/v1/chat/completions", body)
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    usage = data.get("usage") or {}
    return Answer(content=str(message.get("content") or ""),
                   reasoning=str(message.get("reasoning_content") or message.get("reasoning") or ""),
                   prompt_tokens=as_int(usage.get("prompt_tokens")),
                   completion_tokens=as_int(usage.get("completion_tokens")),
                   timings=data.get("timings") or {}, seconds=time.monotonic() - start)


class LogprobApi(Protocol):
    name: str

    def measure(self, prompt: Prompt, tokens: int, k: int) -> PromptPrint | None:
        """The prompt's fingerprint; None when it does not fit the served context."""

    def aligned(self, base: PromptPrint, k: int, measured: PromptPrint | None
                ) -> tuple[list[Position | None], list[Position | None]]:
        """The server's positions after exactly the baseline's tokens: generated, prompt."""


class NotAvailable(Exception):
    pass


@dataclass
class _LlamaCpp:
    """llama-server /completion (logprob_api.yaml: llama.cpp-completion). Request fields from
    tools/server/server-schema.cpp, answer fields from tools/server/server-task.cpp
    (to_json_non_oaicompat, probs_vector_to_json), /tokenize from server-context.cpp, all at
    llama.cpp b11312; n_probs are the softmax of the raw logits (populate_token_probs)."""

    client: Client
    context: int
    realign: int  # divergences to continue past, per prompt
    chunk: int  # tokens per request after a divergence
    name: str = "llama.cpp-completion"

    def _tokenize(self, text: str) -> tuple[int, ...]:
        data = self.client.post("/tokenize", {"content": text, "add_special": True})
        return tuple(int(t) for t in data.get("tokens") or [])

    def _complete(self, ids: Sequence[int], n: int, k: int) -> list[Position]:
        body = {"prompt": list(ids), "n_predict": n, "temperature": 0.0, "top_k": 1, "seed": SEED,
                "n_probs": k, "cache_prompt": False, "ignore_eos": True, "return_tokens": True, "stream": False}
        data = self.client.post("/completion", body)
        tokens = [int(t) for t in data.get("tokens") or []]
        out = [Position(token=t) for t in tokens]
        # Entries skip tokens that end inside a UTF-8 character (server-context.cpp process_token):
        # each entry belongs to the next generated token with its id.
        j = 0
        for entry in data.get("completion_probabilities") or []:
            tok = int(entry["id"])
            while j < len(tokens) and tokens[j] != tok:
                j += 1
            if j == len(tokens):
                break
            top = tuple((int(t["id"]), round(float(t["logprob"]), 6)) for t in entry.get("top_logprobs") or [])
            out[j] = Position(token=tok, top=top or None)
            j += 1
        return out

    def measure(self, prompt: Prompt, tokens: int, k: int) -> PromptPrint | None:
        ids = self._tokenize(prompt.text)
        if len(ids) + tokens > self.context:
            return None
        return PromptPrint(id=prompt.id, sha256=prompt.sha256, prompt_ids=ids,
                           generated=tuple(self._complete(ids, tokens, k)))

    def aligned(self, base: PromptPrint, k: int, measured: PromptPrint | None
                ) -> tuple[list[Position | None], list[Position | None]]:
        n = len(base.generated)
        out: list[Position | None] = [None] * n
        start, divergences = 0, 0
        first: list[Position] | None = (list(measured.generated) if measured is not None
                                        and measured.prompt_ids == base.prompt_ids else None)
        while start < n:
            if first is not None:
                got, first = first, None  # the same request was just made
            else:
                # after a divergence, continue from exactly the baseline's tokens, a short stretch at
                # a time: what follows the next divergence would be thrown away
                prefix = base.prompt_ids + tuple(int(p.token) for p in base.generated[:start])
                got = self._complete(prefix, min(self.chunk, n - start), k)
            if not got:
                break
            diverged = None
            for j, pos in enumerate(got[:n - start]):
                out[start + j] = pos
                if pos.token != base.generated[start + j].token:
                    diverged = start + j
                    break
            if diverged is None:
                start += len(got)
                continue
            divergences += 1
            if divergences > self.realign:
                break
            start = diverged + 1
        return out, []


@dataclass
class _Vllm:
    """vLLM /v1/completions with prompt_logprobs (logprob_api.yaml: vllm-completions). Fields from
    vllm/entrypoints/openai/protocol.py at v0.11.0 (CompletionRequest, CompletionLogProbs,
    CompletionResponseChoice, TokenizeCompletionRequest)."""

    client: Client
    model: str
    context: int
    name: str = "vllm-completions"

    def _request(self, ids: Sequence[int], n: int, k: int) -> dict[str, Any]:
        body = {"model": self.model, "prompt": list(ids), "max_tokens": n, "temperature": 0.0, "seed": SEED,
                "logprobs": k, "prompt_logprobs": k, "ignore_eos": True, "return_tokens_as_token_ids": True,
                "return_token_ids": True}
        choice: dict[str, Any] = (self.client.post("/v1/completions", body).get("choices") or [{}])[0]
        return choice

    def measure(self, prompt: Prompt, tokens: int, k: int) -> PromptPrint | None:
        data = self.client.post("/tokenize", {"model": self.model, "prompt": prompt.text})
        ids = tuple(int(t) for t in data.get("tokens") or [])
        if len(ids) + tokens > self.context:
            return None
        choice = self._request(ids, tokens, k)
        generated = tuple(int(t) for t in choice.get("token_ids") or [])
        tops = (choice.get("logprobs") or {}).get("top_logprobs") or []
        gen = tuple(Position(token=t, top=_vllm_top(tops[i] if i < len(tops) else None, k))
                    for i, t in enumerate(generated))
        prompt_positions = _vllm_prompt_positions(choice.get("prompt_logprobs") or [], k)
        return PromptPrint(id=prompt.id, sha256=prompt.sha256, prompt_ids=ids, generated=gen,
                           prompt_positions=tuple(p or Position(token=-1) for p in prompt_positions))

    def aligned(self, base: PromptPrint, k: int, measured: PromptPrint | None
                ) -> tuple[list[Position | None], list[Position | None]]:
        # the baseline's prompt and continuation as one prompt: the distribution at every
        # position after exactly the baseline's tokens, in one request
        ids = base.prompt_ids + tuple(int(p.token) for p in base.generated)
        positions = _vllm_prompt_positions(self._request(ids, 1, k).get("prompt_logprobs") or [], k)
        cut = len(base.prompt_ids)
        return positions[cut:cut + len(base.generated)], positions[:cut]


def _vllm_top(entry: Any, k: int) -> tuple[tuple[int | str, float], ...] | None:
    """{"token_id:N": logprob} (return_tokens_as_token_ids) -> top-k, most likely first."""
    if not isinstance(entry, dict) or not entry:
        return None
    pairs = [(_vllm_token(name), float(lp)) for name, lp in entry.items()]
    return tuple((t, round(lp, 6)) for t, lp in sorted(pairs, key=lambda p: -p[1])[:k])


def _vllm_token(name: str) -> int | str:
    return int(name.split(":", 1)[1]) if name.startswith("token_id:") else name


def _vllm_prompt_positions(raw: Sequence[Any], k: int) -> list[Position | None]:
    """prompt_logprobs: per prompt position None or {token id: {logprob, rank, decoded_token}}."""
    out: list[Position | None] = []
    for entry in raw:
        if not isinstance(entry, dict) or not entry:
            out.append(None)
            continue
        pairs = sorted(((int(t), float(v.get("logprob", float("-inf")))) for t, v in entry.items()),
                       key=lambda p: -p[1])[:k]
        top = tuple((t, round(lp, 6)) for t, lp in pairs)
        out.append(Position(token=top[0][0], top=top))
    return out


@dataclass
class _Ollama:
    """Ollama /api/generate with logprobs (logprob_api.yaml: ollama-generate). Fields from
    api/types.go (GenerateRequest, GenerateResponse, Logprob, TokenLogprob) read at v0.33.0-rc2.
    Ollama takes no token ids, so positions after the first divergence are not compared."""

    client: Client
    model: str
    name: str = "ollama-generate"

    def measure(self, prompt: Prompt, tokens: int, k: int) -> PromptPrint | None:
        body = {"model": self.model, "prompt": prompt.text, "raw": True, "stream": False, "logprobs": True,
                "top_logprobs": k, "options": {"temperature": 0.0, "top_k": 1, "seed": SEED, "num_predict": tokens}}
        data = self.client.post("/api/generate", body)
        entries = data.get("logprobs") or []
        if not entries:
            raise NotAvailable("this Ollama answered /api/generate without logprobs")
        gen = tuple(Position(token=str(e.get("token", "")),
                             top=tuple((str(t.get("token", "")), round(float(t["logprob"]), 6))
                                       for t in e.get("top_logprobs") or []) or None)
                    for e in entries)
        return PromptPrint(id=prompt.id, sha256=prompt.sha256, generated=gen)

    def aligned(self, base: PromptPrint, k: int, measured: PromptPrint | None
                ) -> tuple[list[Position | None], list[Position | None]]:
        got = list(measured.generated) if measured is not None else []
        out: list[Position | None] = []
        for i, b in enumerate(base.generated):
            pos = got[i] if i < len(got) else None
            out.append(pos)
            if pos is None or pos.token != b.token:
                out += [None] * (len(base.generated) - i - 1)
                break
        return out, []


def api_for(spec: Spec, client: Client, model: str, context: int) -> LogprobApi | str:
    runtime = spec.profile.runtime
    entry = logprob_apis().get(runtime.engine, {}).get(runtime.version)
    if entry is None:
        checked = ", ".join(logprob_apis().get(runtime.engine, {})) or "none"
        return (f"the log-probability API of {runtime.engine} {runtime.version} was not checked "
                f"(checked: {checked}; provisioner/verify/canary_data/logprob_api.yaml)")
    if entry["api"] == "llama.cpp-completion":
        return _LlamaCpp(client, context, limits().realign, limits().realign_chunk)
    if entry["api"] == "vllm-completions":
        return _Vllm(client, model, context)
    return _Ollama(client, model)


def server_build(client: Client, engine: str) -> str | None:
    """The engine's own version string (llama.cpp /props build_info, vLLM /version, Ollama /api/version)."""
    path, key = {"llama.cpp": ("/props", "build_info"), "vllm": ("/version", "version"),
                 "ollama": ("/api/version", "version")}[engine]
    try:
        data = client.get(path)
    except HttpError:
        return None
    value = data.get(key) if isinstance(data, dict) else None
    return str(value) if value else None


