"""Talking to a live OpenAI-compatible server (llama.cpp, vLLM, Ollama) with the
standard library only: JSON requests with the API key, errors as one readable line,
and chat completions at temperature 0 with their usage and timings.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from provisioner.profile.resolve import Spec


class HttpError(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Client:
    base_url: str
    api_key: str | None
    timeout_s: float

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.base_url.rstrip("/") + path
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - http(s) checked in endpoint_checks
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.api_key:
            req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - URL given by the user
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise HttpError(exc.code, f"HTTP {exc.code}: {error_message(detail) or exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise HttpError(None, f"no answer from {url}: {reason}") from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise HttpError(None, f"{url} did not answer JSON: {raw[:80]!r}") from exc

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)


def error_message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return text.strip()[:200]


@dataclass
class Answer:
    content: str
    reasoning: str
    prompt_tokens: int | None
    completion_tokens: int | None
    timings: dict[str, Any]
    seconds: float

    @property
    def text(self) -> str:
        return self.reasoning + self.content


@dataclass
class ChatRun:
    spec: Spec
    client: Client
    model: str
    answers: list[Answer] = field(default_factory=list)

    @property
    def engine(self) -> str:
        return self.spec.profile.runtime.engine

    def chat(self, prompt: str, max_tokens: int, *, ignore_eos: bool = False) -> Answer:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "top_p": 1.0,
            "seed": 1234,
            "stream": False,
        }
        if self.engine in ("llama.cpp", "vllm"):
            # short answers: no reasoning phase on hybrid models (ignored by other templates)
            body["chat_template_kwargs"] = {"enable_thinking": False}
        if self.engine == "ollama":
            # no server-wide switch (engines.yaml ollama `think`): ask per request
            body["reasoning_effort"] = "none"
        if self.engine == "llama.cpp":
            body["cache_prompt"] = False  # same work every time: determinism and honest timings
            body["top_k"] = 1
        if ignore_eos and self.engine in ("llama.cpp", "vllm"):
            body["ignore_eos"] = True
        start = time.monotonic()
        data = self.client.post("/v1/chat/completions", body)
        seconds = time.monotonic() - start
        choice = (data.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        usage = data.get("usage") or {}
        answer = Answer(
            content=str(message.get("content") or ""),
            reasoning=str(message.get("reasoning_content") or message.get("reasoning") or ""),
            prompt_tokens=as_int(usage.get("prompt_tokens")),
            completion_tokens=as_int(usage.get("completion_tokens")),
            timings=data.get("timings") or {},
            seconds=seconds,
        )
        self.answers.append(answer)
        return answer


def as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
