"""A stand-in for a llama.cpp server that misbehaves on demand (tests only).

It speaks the parts of llama-server's API the endpoint checks use (GET
/v1/models, /props, /slots, POST /v1/chat/completions) on 127.0.0.1 with a free
port. Its "model" counts whitespace-separated words as tokens, answers a
question about a passphrase from the prompt it kept, and otherwise repeats a
fixed text. A mode makes it show one of the rare real-world faults:

- ok                      behaves
- truncation              serves only ``real_context`` tokens but claims the full
                          context: keeps the end of a long prompt (like Ollama past num_ctx)
- context-shift           keeps the token count but silently drops the start of a long
                          prompt (llama.cpp with context shift on)
- nondeterministic        every answer differs (a sampler ignoring temperature 0)
- leaked-template-tokens  answers continue past the end of turn with raw ChatML tokens
- slow                    decodes at ``slow_tps`` instead of ``tps``
- small-context           reports (and serves) ``real_context`` tokens
- auth                    requires ``api_key`` as a Bearer token (401 otherwise)
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODES = ("ok", "truncation", "context-shift", "nondeterministic", "leaked-template-tokens", "slow",
         "small-context", "auth")
_PASSPHRASE = re.compile(r"passphrase is (\S+?)\.?(?:\s|$)")
_DOOR_QUESTION = re.compile(r"passphrase for the (\w+) door, as stated")
_OVERHEAD = 10  # template tokens around the user's message


class StandinServer:
    def __init__(self, mode: str = "ok", *, model: str = "tiny-qwen2", context: int = 4096, slots: int = 1,
                 real_context: int | None = None, tps: float = 100.0, slow_tps: float = 10.0,
                 api_key: str = "sekrit") -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.mode = mode
        self.model = model
        self.context = context
        self.slots = slots
        self.real_context = real_context if real_context is not None else context // 2
        self.tps = slow_tps if mode == "slow" else tps
        self.api_key = api_key
        self.requests = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> StandinServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- what the server says ------------------------------------------------------------------

    @property
    def served_context(self) -> int:
        return self.real_context if self.mode == "small-context" else self.context

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "aliases": [],
                                            "meta": {"n_ctx": self.served_context}}]}

    def props(self) -> dict[str, Any]:
        return {"default_generation_settings": {"n_ctx": self.served_context, "params": {}},
                "total_slots": self.slots, "model_alias": self.model}

    def slot_list(self) -> list[dict[str, Any]]:
        return [{"id": i, "n_ctx": self.served_context, "is_processing": False} for i in range(self.slots)]

    def chat(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            self.requests += 1
            count = self.requests
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        words = prompt.split()
        max_tokens = int(body.get("max_tokens") or 16)
        n_prompt = len(words) + _OVERHEAD
        limit = self.served_context
        if n_prompt + max_tokens > limit and self.mode not in ("truncation", "context-shift"):
            return 400, {"error": {"code": 400, "type": "exceed_context_size_error",
                                   "message": f"request ({n_prompt} tokens) exceeds the available context "
                                              f"size ({limit} tokens)"}}
        kept = words
        if self.mode == "truncation" and n_prompt > self.real_context:
            kept = words[-(self.real_context - _OVERHEAD):]
            n_prompt = self.real_context
        elif self.mode == "context-shift" and n_prompt + max_tokens > self.real_context:
            kept = words[len(words) // 2:]  # the start is gone, the count stays
        text = self._answer(" ".join(kept), max_tokens, count)
        n_out = min(max_tokens, max(1, len(text.split())))
        if body.get("ignore_eos"):
            n_out = max_tokens
        return 200, {
            "id": f"chatcmpl-{count}", "object": "chat.completion", "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out},
            "timings": {"prompt_n": n_prompt, "predicted_n": n_out, "predicted_per_second": self.tps},
        }

    def _answer(self, kept: str, max_tokens: int, count: int) -> str:
        door = _DOOR_QUESTION.search(kept)
        if door:  # the quality canary's needles: one passphrase per door, asked about one door
            fact = re.search(rf"passphrase for the {door.group(1)} door is (\S+?)\.(?:\s|$)", kept)
            text = fact.group(1) if fact else "I do not know the passphrase."
        elif "passphrase" in kept.lower() and "?" in kept:
            found = _PASSPHRASE.search(kept)
            text = found.group(1) if found else "I do not know the passphrase."
        else:
            text = "The keeper climbs the stair, the lamp turns through the night, ships pass in the dark."
        if self.mode == "nondeterministic":
            text = f"{text} ({count})"
        if self.mode == "leaked-template-tokens":
            text = f"{text}<|im_end|>\n<|im_start|>user\nAnd then?<|im_end|>"
        return " ".join(text.split(" ")[:max(1, max_tokens)])


def _handler(server: StandinServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, payload: object) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _authorised(self) -> bool:
            if server.mode != "auth" or self.headers.get("Authorization") == f"Bearer {server.api_key}":
                return True
            self._send(401, {"error": {"code": 401, "message": "Invalid API Key", "type": "authentication_error"}})
            return False

        def do_GET(self) -> None:
            if not self._authorised():
                return
            routes: dict[str, object] = {"/v1/models": server.models(), "/props": server.props(),
                                         "/slots": server.slot_list(), "/health": {"status": "ok"}}
            if self.path in routes:
                self._send(200, routes[self.path])
            else:
                self._send(404, {"error": {"code": 404, "message": "File Not Found"}})

        def do_POST(self) -> None:
            if not self._authorised():
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"code": 404, "message": "File Not Found"}})
                return
            status, payload = server.chat(body)
            self._send(status, payload)

    return Handler
