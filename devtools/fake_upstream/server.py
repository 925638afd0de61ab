"""The HTTP side: `FakeUpstream` (start/stop, the script queue, the recorded requests) and the
handler that routes each request to a wire format, plays the next script in it, and serves the
control API (``POST /_fake/scripts``, ``GET /_fake/requests``, ``GET /_fake/health``).

Deliberate choices:

* Streams use ``Transfer-Encoding: chunked``, one chunk per event (SSE event or NDJSON line),
  written straight to the socket with ``TCP_NODELAY`` set on every accepted connection, so each
  event leaves immediately (no Nagle / delayed-ACK stalls of ~40 ms).
* The request is always streamed, whatever its ``"stream"`` flag says. Rejected requests
  (401 / 403 / 400) are recorded but do not consume a queued script. Each recorded request has
  ``model``: from the Gemini path, else the body.
* While waiting, the handler polls the socket every 50 ms: EOF means the client left
  (``client_closed``); ``stop()`` makes every wait end and shuts down idle keep-alive sockets,
  so it never hangs. Failure modes always close the connection afterwards; a stream whose
  script can fail says ``connection: close`` up front, so that a pooling client never sends
  its next request down a connection the fake is about to drop.
"""

from __future__ import annotations

import contextlib
import json
import math
import select
import socket
import socketserver
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .anthropic import Anthropic
from .base import Format, Frames
from .gemini import Gemini
from .ollama import Ollama
from .openai import OpenAI
from .script import Script, calls_of, pieces_of

POLL = 0.05  # seconds between client-gone / server-stopping checks while waiting
FORMATS: tuple[type[Format], ...] = (Anthropic, OpenAI, Gemini, Ollama)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    client_closed: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    model: str | None = None


class _Abort(Exception):
    """The client went away or the server is stopping: drop the connection."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    rec: RecordedRequest
    script: Script
    fmt: Format | None = None

    # -- plumbing ---------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.upstream.verbose:
            sys.stderr.write(f"fake upstream: {format % args}\n")

    @property
    def stopping(self) -> bool:
        return self.server.upstream._stopping.is_set()

    def _gone(self) -> None:
        if not self.stopping:
            self.rec.client_closed.set()
        raise _Abort

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self._gone()

    def _chunk(self, data: bytes) -> None:
        size = self.script.split_bytes or len(data)
        for start in range(0, len(data), size or 1):  # an empty chunk would be the terminator
            piece = data[start : start + size]
            if start:
                time.sleep(0.002)  # its own read on the other side, not coalesced
            self._write(b"%x\r\n%s\r\n" % (len(piece), piece))

    def _send(self, frames: Frames) -> None:
        for frame in frames:
            self._chunk(frame)

    def _end(self) -> None:
        self._write(b"0\r\n\r\n")

    def _client_left(self, timeout: float) -> bool:
        try:
            if not select.select([self.connection], [], [], max(timeout, 0.0))[0]:
                return False
            if self.connection.recv(1, socket.MSG_PEEK):  # data, not EOF: keep waiting
                time.sleep(max(timeout, 0.0))
                return False
            return True
        except OSError:
            return True

    def _wait(self, seconds: float, ping: bool = True) -> None:
        """Sleep, sending keep-alives if scripted; _Abort if the client leaves or we stop."""
        if seconds <= 0:
            return
        keepalive = self.fmt.keepalive if ping and self.fmt else None
        every = self.script.ping_every if keepalive else None
        now = time.monotonic()
        deadline, next_ping = now + seconds, now + every if every else math.inf
        while now < deadline:
            if self.stopping:
                raise _Abort
            if keepalive and now >= next_ping:
                self._chunk(keepalive)
                next_ping += every or math.inf
            if self._client_left(min(deadline, next_ping, now + POLL) - now):
                self._gone()
            now = time.monotonic()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status, "Overloaded" if status == 529 else None)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self._write(data)

    # -- routing ----------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route(
            {
                "/_fake/requests": self._list_requests,
                "/_fake/health": lambda: self._send_json(200, {"status": "ok"}),
            }
        )

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        for fmt in FORMATS:
            if match := fmt.path.fullmatch(path):
                return self._generate(fmt, match.groupdict().get("model"))
        self._route({"/_fake/scripts": self._push_scripts})

    def _route(self, table: dict[str, Callable[[], None]]) -> None:
        handler = table.get(self.path.split("?", 1)[0])
        if handler is not None:
            return handler()
        self._read_body()
        message = f"{self.command} {self.path} not found"
        self._send_json(404, Anthropic.error_json(404, message))

    def _list_requests(self) -> None:
        reqs = list(self.server.upstream.requests)
        listed = [
            {"path": r.path, "headers": r.headers, "body": r.body, "model": r.model} for r in reqs
        ]
        self._send_json(200, listed)

    def _push_scripts(self) -> None:
        try:
            items = json.loads(self._read_body())
            items = items if isinstance(items, list) else [items]
            scripts = [Script.from_dict(d) for d in items]
        except (ValueError, TypeError) as exc:
            return self._send_json(400, Anthropic.error_json(400, f"bad scripts: {exc}"))
        self.server.upstream.push(*scripts)
        self.send_response(204)
        self.end_headers()

    # -- generation endpoints (every format) ------------------------------------------
    def _generate(self, fmt: type[Format], path_model: str | None) -> None:
        try:
            body = json.loads(self._read_body())
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else None
        headers = {k.lower(): v for k, v in self.headers.items()}
        model = path_model or (body or {}).get("model")
        self.rec = RecordedRequest(self.path, headers, body, model=model)
        self.script, self.fmt = Script(), None  # until the real script is known
        upstream = self.server.upstream
        upstream._record(self.rec)
        try:
            problem = fmt.check(headers, body, parse_qs(urlsplit(self.path).query))
            problem = problem or fmt.check_for_model(model, body)  # type: ignore[arg-type]
            if problem:
                return self._send_json(problem[0], fmt.error_json(*problem))
            assert body is not None  # check() refuses anything else
            self.script = upstream._next_script()
            self.fmt = fmt(self.script, body)
            self._run(self.fmt)
        except _Abort:
            self.close_connection = True
        finally:
            self.rec.finished.set()

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("content-type", content_type)
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        if self.script.fail or self.script.fail_after is not None:
            self.send_header("connection", "close")  # also sets close_connection
        try:
            self.end_headers()
        except OSError:
            self._gone()

    def _run(self, fmt: Format) -> None:
        s = self.script
        if s.fail and s.fail.isdigit():
            status = int(s.fail)
            message = f"fake upstream failure {status}"
            return self._send_json(status, s.error_body or fmt.error_json(status, message))
        if s.fail == "hang_headers":
            return self._wait(math.inf, ping=False)
        self._start_stream(fmt.content_type)
        if s.raw is not None:
            for i, chunk in enumerate(s.raw):
                self._wait(s.interval if i else s.ttft)
                self._chunk(chunk)
            return self._end()
        if s.fail == "empty":
            return self._end()
        self._send(fmt.start())
        if s.fail:
            self._wait(s.ttft)
            return self._fail(fmt, s.fail)
        for kind, pieces in pieces_of(s, fmt.body, fmt.messages_key):
            for piece in pieces:
                self._wait(s.interval if fmt.sent else s.ttft)
                if fmt.sent == s.fail_after:
                    return self._fail(fmt, s.fail_mode)
                self._send(fmt.delta(kind, piece))
                fmt.counts[kind] += 1
            self._send(fmt.end_block(kind))
        for call in calls_of(s):
            self._wait(s.interval if fmt.sent or call.index else s.ttft)
            self._send(fmt.tool_call(call))
        if fmt.sent == s.fail_after:
            return self._fail(fmt, s.fail_mode)
        self._finish_reply(fmt)

    def _finish_reply(self, fmt: Format) -> None:
        self._send(fmt.finish())
        self._end()

    # -- failures (the connection is closed after each one) -----------------------------
    def _fail(self, fmt: Format, mode: str) -> None:
        self.close_connection = True
        behaviours: dict[str, Callable[[], None]] = {
            "error_event": lambda: self._error(fmt, framed=False),
            "error_data": lambda: self._error(fmt, framed=True),
            "cut": lambda: None,  # return without the chunked terminator; the socket closes
            "hang": lambda: self._wait(math.inf),
            "no_stop": self._end,
            "no_text": lambda: self._finish_reply(fmt),
        }
        behaviours[mode]()

    def _error(self, fmt: Format, framed: bool) -> None:
        self._send(fmt.error(framed))
        self._end()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 256  # benchmarks open many streams at once; the default 5 resets them

    def __init__(self, address: tuple[str, int], upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a possibly slow reverse DNS lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a vanished client is not news
            super().handle_error(request, client_address)


class FakeUpstream:
    """The fake provider; `start()`/`stop()` or use it as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Script | None = None,
        *,
        verbose: bool = False,
    ) -> None:
        self.host, self.port = host, port
        self.default = default or Script()
        self.verbose = verbose
        self.requests: list[RecordedRequest] = []
        self._scripts: deque[Script] = deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeUpstream:
        if self._server is not None:
            raise RuntimeError("fake upstream already started")
        self._stopping.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(POLL,),
            name=f"fake-upstream-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()  # ends every wait/hang loop within POLL seconds
        server.shutdown()
        with server.lock:
            idle = list(server.connections)
        for sock in idle:  # wake handlers blocked reading the next keep-alive request
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for rec in list(self.requests):
            rec.finished.wait(timeout=1)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def push(self, *scripts: Script) -> None:
        with self._cond:
            self._scripts.extend(scripts)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[RecordedRequest]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"got {len(self.requests)} requests, wanted {n}")
            return list(self.requests)

    def _next_script(self) -> Script:
        with self._cond:
            return self._scripts.popleft() if self._scripts else self.default

    def _record(self, rec: RecordedRequest) -> None:
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
