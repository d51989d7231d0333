"""A stand-in for vLLM 0.11.0 and Ollama's log-probability APIs (tests only).

Neither engine runs here (vLLM needs its CUDA wheel, Ollama a release archive), so this
serves their response *shapes*, as their sources define them (see
provisioner/verify/canary_data/logprob_api.yaml), from a toy model on 127.0.0.1: words are
tokens (id = a hash of the word, over a 50-word vocabulary), and the next-token
distribution is a softmax of numbers drawn from a seed made of the last three tokens.
``drift`` adds noise of that size to every logit: a changed setup.

- vllm:   GET /v1/models (max_model_len), /version; POST /tokenize, /v1/completions
          (prompt as token ids, logprobs, prompt_logprobs, return_tokens_as_token_ids,
          return_token_ids, ignore_eos), /v1/chat/completions
- ollama: GET /v1/models, /api/version; POST /api/generate (raw, logprobs, top_logprobs),
          /v1/chat/completions; ``no_logprobs`` answers without them, like a version
          before v0.12.11
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VOCAB = [f"w{i}" for i in range(50)]


def _word_id(word: str) -> int:
    return int(hashlib.sha256(word.encode()).hexdigest(), 16) % len(VOCAB)


class LogprobStandin:
    def __init__(self, engine: str, *, model: str, context: int = 8192, drift: float = 0.0,
                 no_logprobs: bool = False) -> None:
        self.engine = engine
        self.model = model
        self.context = context
        self.drift = drift
        self.no_logprobs = no_logprobs
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> LogprobStandin:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # -- the toy model -------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return [_word_id(w) for w in text.split()]

    def logprobs(self, context: list[int]) -> list[float]:
        seed = int(hashlib.sha256(json.dumps(context[-3:]).encode()).hexdigest(), 16)
        rng = random.Random(seed)  # noqa: S311 - a toy model, not a secret
        logits = [rng.gauss(0.0, 3.0) for _ in VOCAB]
        if self.drift:
            noise = random.Random(seed + 1)  # noqa: S311 - a toy model, not a secret
            logits = [x + noise.gauss(0.0, self.drift) for x in logits]
        top = max(logits)
        total = math.log(sum(math.exp(x - top) for x in logits)) + top
        return [x - total for x in logits]

    def greedy(self, ids: list[int], n: int) -> tuple[list[int], list[list[float]]]:
        context, out, dists = list(ids), [], []
        for _ in range(n):
            lp = self.logprobs(context)
            tok = max(range(len(lp)), key=lp.__getitem__)
            out.append(tok)
            dists.append(lp)
            context.append(tok)
        return out, dists

    @staticmethod
    def top(lp: list[float], k: int) -> list[tuple[int, float]]:
        return sorted(enumerate(lp), key=lambda p: -p[1])[:k]

    # -- vLLM ------------------------------------------------------------------------------------

    def vllm_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = [int(t) for t in body["prompt"]]
        k, pk = int(body.get("logprobs") or 0), body.get("prompt_logprobs")
        gen, dists = self.greedy(ids, int(body.get("max_tokens") or 16))
        as_ids = body.get("return_tokens_as_token_ids")

        def name(tok: int) -> str:
            return f"token_id:{tok}" if as_ids else VOCAB[tok]

        choice: dict[str, Any] = {"index": 0, "text": " ".join(VOCAB[t] for t in gen), "finish_reason": "length"}
        if k:
            choice["logprobs"] = {
                "text_offset": [], "tokens": [name(t) for t in gen],
                "token_logprobs": [d[t] for t, d in zip(gen, dists, strict=True)],
                # the sampled token plus the top-k, as serving_completion builds it
                "top_logprobs": [{name(t): d[t], **{name(i): lp for i, lp in self.top(d, k)}}
                                 for t, d in zip(gen, dists, strict=True)]}
        if pk is not None:
            entries: list[Any] = [None]
            for i in range(1, len(ids)):
                d = self.logprobs(ids[:i])
                chosen = {ids[i]: d[ids[i]]}
                ranked = {tok: lp for tok, lp in self.top(d, int(pk))}
                entries.append({str(t): {"logprob": lp, "rank": 1 + sorted(d, reverse=True).index(lp),
                                         "decoded_token": VOCAB[t]} for t, lp in {**chosen, **ranked}.items()})
            choice["prompt_logprobs"] = entries
        if body.get("return_token_ids"):
            choice["prompt_token_ids"] = ids
            choice["token_ids"] = gen
        return {"id": "cmpl-1", "object": "text_completion", "model": self.model, "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(gen)}}

    # -- Ollama ----------------------------------------------------------------------------------

    def ollama_generate(self, body: dict[str, Any]) -> dict[str, Any]:
        ids = self.tokenize(str(body.get("prompt", "")))
        n = int((body.get("options") or {}).get("num_predict") or 16)
        gen, dists = self.greedy(ids, n)
        out: dict[str, Any] = {"model": self.model, "response": " ".join(VOCAB[t] for t in gen), "done": True}
        if body.get("logprobs") and not self.no_logprobs:
            k = int(body.get("top_logprobs") or 0)
            out["logprobs"] = [{"token": VOCAB[t], "logprob": d[t],
                                "top_logprobs": [{"token": VOCAB[i], "logprob": lp} for i, lp in self.top(d, k)]}
                               for t, d in zip(gen, dists, strict=True)]
        return out

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Working.\nANSWER: 18"}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 4}}


def _handler(server: LogprobStandin) -> type[BaseHTTPRequestHandler]:
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

        def do_GET(self) -> None:
            routes: dict[str, object] = {
                "/v1/models": {"object": "list", "data": [{"id": server.model, "object": "model",
                                                           "max_model_len": server.context}]},
                "/version": {"version": "0.11.0"}, "/api/version": {"version": "0.34.4"}}
            if self.path in routes:
                self._send(200, routes[self.path])
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if self.path == "/v1/chat/completions":
                self._send(200, server.chat(body))
            elif server.engine == "vllm" and self.path == "/tokenize":
                ids = server.tokenize(str(body.get("prompt", "")))
                self._send(200, {"tokens": ids, "count": len(ids), "max_model_len": server.context})
            elif server.engine == "vllm" and self.path == "/v1/completions":
                self._send(200, server.vllm_completion(body))
            elif server.engine == "ollama" and self.path == "/api/generate":
                self._send(200, server.ollama_generate(body))
            else:
                self._send(404, {"error": "not found"})

    return Handler
