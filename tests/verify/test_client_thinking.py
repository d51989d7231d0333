"""verify's chat turns thinking off per request, the only way each engine allows: the
chat template's enable_thinking for llama.cpp and vLLM, reasoning_effort "none" for Ollama
(no server-wide switch: engines.yaml ollama `think`). A loopback server records the bodies."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from provisioner.profile.loader import load_profile
from provisioner.profile.resolve import resolve
from provisioner.verify.client import ChatRun, Client
from tests.conftest import ROOT

ANSWER = {"choices": [{"message": {"content": "ok"}}], "usage": {"completion_tokens": 1}}


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    bodies: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            data = json.dumps(ANSWER).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("profile", "expected"), [
    ("rtx-4090-qwen3-30b-ollama.yaml", {"reasoning_effort": "none"}),
    ("4x-h100-qwen3-235b-fp8-vllm.yaml", {"chat_template_kwargs": {"enable_thinking": False}}),
])
def test_each_engine_gets_its_own_thinking_off(recorder: tuple[str, list[dict[str, Any]]],
                                               profile: str, expected: dict[str, Any]) -> None:
    url, bodies = recorder
    spec = resolve(load_profile(ROOT / "profiles" / profile))
    ChatRun(spec, Client(url, None, 10.0), "m").chat("hi", 4)
    (body,) = bodies
    assert expected.items() <= body.items()
    other = {"reasoning_effort", "chat_template_kwargs"} - expected.keys()
    assert not other & body.keys()
