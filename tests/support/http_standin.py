"""A small HTTP server on 127.0.0.1 serving generated files, for download tests.

Real enough for curl and wget to resume against: ``Range: bytes=N-`` gets a
206 with Content-Range (``bytes=N-M`` just those bytes), a range past the end a 416. A served file can

- drop the connection once after N bytes of a response (the body promised
  more: the client sees a partial transfer and must resume);
- send wrong bytes (same length, one byte flipped) to prove checksums bite;
- require a header (``Authorization: Bearer ...``), answering 401 without it;
- redirect (302) to another URL, e.g. a second stand-in playing a CDN.

Every request is logged (path, query, range start, bytes sent, headers), so a
test can prove what the client did, e.g. that the second request resumed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit


@dataclass
class Served:
    content: bytes
    drop_after: int | None = None  # drop the connection once, after this many body bytes
    wrong: bool = False  # flip the last byte of every response
    require: tuple[str, str] | None = None  # (header, value) the request must carry
    content_type: str = "application/octet-stream"
    redirect: str | None = None  # answer 302 to this URL instead (the hub sends LFS files to a CDN)
    chunk_delay: float = 0.0  # seconds between 16 KiB chunks: a slow link, to kill a client mid-transfer
    headers: dict[str, str] = field(default_factory=dict)  # more response headers (a registry's digest)


@dataclass(frozen=True)
class Request:
    path: str
    query: str
    start: int  # first byte asked for (0 without a Range header)
    sent: int  # body bytes actually written
    status: int
    headers: dict[str, str]


@dataclass
class HttpStandin:
    files: dict[str, Served] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    # extra headers on a 401/404 under a path prefix (the hub's X-Error-Code)
    error_headers: dict[str, dict[str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set[socket.socket] = field(default_factory=set)

    def serve(self, path: str, served: Served) -> str:
        self.files[path] = served
        return self.url(path)

    def url(self, path: str = "") -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def start(self) -> HttpStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with standin._lock:
                    standin._open.add(self.connection)

            def finish(self) -> None:
                with standin._lock:
                    standin._open.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                standin.handle(self)

            def do_HEAD(self) -> None:
                standin.handle(self, body=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut kept-alive connections (a stopped server answers nothing)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                for conn in list(self._open):
                    with contextlib.suppress(OSError):  # already closed by the client
                        conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> HttpStandin:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def handle(self, h: BaseHTTPRequestHandler, body: bool = True) -> None:
        split = urlsplit(h.path)
        headers = {k.lower(): v for k, v in h.headers.items()}
        status, start, sent = self._answer(h, split.path, headers, body)
        self.log(Request(split.path, split.query, start, sent, status, headers))

    def _answer(self, h: BaseHTTPRequestHandler, path: str, headers: dict[str, str],
                body: bool) -> tuple[int, int, int]:
        """Write the response; (status, first byte, body bytes sent)."""
        served = self.files.get(path)
        refused = self._refusal(h, path, served, headers)
        if refused or served is None:
            return refused, 0, 0
        data = served.content
        if served.wrong and data:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        ranged = headers.get("range", "")
        first, _, last = ranged[len("bytes="):].partition("-") if ranged.startswith("bytes=") else ("", "", "")
        start = int(first) if first.isdigit() else 0
        if ranged and start >= len(data):
            return self._plain(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"}), start, 0
        # "bytes=N-M" ends at M (inclusive, RFC 9110), "bytes=N-" at the end of the file
        rest = data[start:int(last) + 1] if last.isdigit() else data[start:]
        status = 206 if ranged else 200
        h.send_response(status)
        h.send_header("Content-Type", served.content_type)
        h.send_header("Content-Length", str(len(rest)))
        h.send_header("Accept-Ranges", "bytes")
        for key, value in served.headers.items():
            h.send_header(key, value)
        if ranged:
            h.send_header("Content-Range", f"bytes {start}-{start + len(rest) - 1}/{len(data)}")
        h.end_headers()
        if not body:
            return status, start, 0
        if served.drop_after is not None and served.drop_after < len(rest):
            cut = served.drop_after
            served.drop_after = None  # once
            h.wfile.write(rest[:cut])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)  # the client sees the body end early
            return status, start, cut
        if served.chunk_delay:
            sent = 0
            try:
                for offset in range(0, len(rest), 16384):
                    h.wfile.write(rest[offset:offset + 16384])
                    h.wfile.flush()
                    sent += len(rest[offset:offset + 16384])
                    time.sleep(served.chunk_delay)
            except OSError:
                pass  # the client went away (killed): log what it got
            return status, start, sent
        h.wfile.write(rest)
        return status, start, len(rest)

    def _refusal(self, h: BaseHTTPRequestHandler, path: str, served: Served | None, headers: dict[str, str]) -> int:
        """Answer 404 / 401 / 302 when that is the answer (its status), else 0."""
        extra = next((v for k, v in self.error_headers.items() if path.startswith(k)), {})
        if served is None:
            return self._plain(h, 404, b"not found\n", extra)
        if served.require is not None and headers.get(served.require[0].lower()) != served.require[1]:
            return self._plain(h, 401, b"unauthorized\n", extra)
        if served.redirect is not None:
            return self._plain(h, 302, b"", {"Location": served.redirect})
        return 0

    @staticmethod
    def _plain(h: BaseHTTPRequestHandler, status: int, text: bytes, extra: dict[str, str] | None = None) -> int:
        h.send_response(status)
        for key, value in (extra or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(text)))
        h.end_headers()
        h.wfile.write(text)
        return status
