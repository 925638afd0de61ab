"""A scriptable fake Anthropic Messages API (streaming) for tests, smoke runs and benchmarks.

`FakeUpstream` is a real HTTP/1.1 server on 127.0.0.1 that answers ``POST /v1/messages`` with
an Anthropic-style SSE stream, driven by `Script` objects queued with `push()` (FIFO; the
`default` script is used when the queue is empty). A separate process can script it over
HTTP: ``POST /_fake/scripts`` (JSON list of script dicts), ``GET /_fake/requests``,
``GET /_fake/health``. ``python -m devtools.fake_upstream`` runs it in the foreground.

Deliberate choices:

* stdlib only (`ThreadingHTTPServer`, daemon threads): no extra dependency for dev tooling.
* Streams use ``Transfer-Encoding: chunked``, one chunk per SSE event, written straight to
  the socket with ``TCP_NODELAY`` set on every accepted connection, so each event leaves
  immediately (no Nagle / delayed-ACK stalls of ~40 ms).
* Timing model: every failure (``fail`` and ``fail_after``) happens at the moment the next
  delta would have been sent, i.e. after the ``ttft`` / ``interval`` wait. ``content_block_start``
  is sent together with a block's first delta, as the real API does in practice.
* Deltas counted by ``fail_after`` and by ``usage.output_tokens`` are the thinking_delta and
  text_delta events; the single signature_delta is not counted. In "inline" thinking mode the
  ``<thinking>`` and ``</thinking>`` tags are separate text deltas (and count).
* ``fail_after`` larger than the number of deltas never fires; equal to it fires after the
  last delta, before ``message_delta``. An empty reply has no text block.
* Precedence: ``raw`` > ``fail`` > ``echo`` > ``tokens`` > ``text``; ``raw`` honours only
  ``ttft`` and ``interval``.
* The request is always streamed, whatever its ``"stream"`` flag says. Rejected requests
  (401 / 400) are recorded but do not consume a queued script.
* While waiting, the handler polls the socket every 50 ms: EOF means the client left
  (``client_closed``); ``stop()`` makes every wait end and shuts down idle keep-alive sockets,
  so it never hangs. Failure modes always close the connection afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import select
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

POLL = 0.05  # seconds between client-gone / server-stopping checks while waiting
PING = {"type": "ping"}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
FAILS = ("error_event", "hang", "hang_headers", "empty", "no_text", "cut", "no_stop")
FAIL_MODES = ("error_event", "cut", "hang", "no_stop")


@dataclass
class Script:
    """What the fake answers to one /v1/messages request (see the module docstring)."""

    text: str = "Hello from the fake upstream."
    tokens: list[str] | None = None
    thinking: list[str] | None = None
    thinking_mode: str = "native"
    echo: bool = False
    ttft: float = 0.0
    interval: float = 0.0
    fail: str | None = None
    fail_after: int | None = None
    fail_mode: str = "error_event"
    ping_every: float | None = None
    model: str = "fake-claude"
    input_tokens: int = 12
    stop_reason: str = "end_turn"
    raw: list[bytes] | None = None

    def __post_init__(self) -> None:
        if self.fail is not None and not (self.fail.isdigit() or self.fail in FAILS):
            raise ValueError(f"unknown fail {self.fail!r}")
        if self.fail_mode not in FAIL_MODES:
            raise ValueError(f"unknown fail_mode {self.fail_mode!r}")
        if self.thinking_mode not in ("native", "inline"):
            raise ValueError(f"unknown thinking_mode {self.thinking_mode!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Script:
        if not isinstance(d, dict):
            raise ValueError("a script must be a JSON object")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown script keys: {sorted(unknown)}")
        d = dict(d)
        if d.get("raw") is not None:
            d["raw"] = [c.encode() if isinstance(c, str) else bytes(c) for c in d["raw"]]
        return cls(**d)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None
    client_closed: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


class _Abort(Exception):
    """The client went away or the server is stopping: drop the connection."""


def split_words(text: str) -> list[str]:
    """'Hello from it' -> ['Hello ', 'from ', 'it']."""
    return re.findall(r"\S+\s*|\s+", text)


def error_body(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
    }


def last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages", [])):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            return "".join(
                b.get("text", "")
                for b in content or []
                if isinstance(b, dict) and b.get("type") == "text"
            )
    return ""


def check_request(headers: dict[str, str], body: Any) -> tuple[int, str] | None:
    """(status, message) when the request is one the real API would refuse."""
    if not headers.get("x-api-key"):
        return 401, "x-api-key header is required"
    if not isinstance(body, dict):
        return 400, "request body must be a JSON object"
    for key, kind in (("model", str), ("messages", list), ("max_tokens", int)):
        if not isinstance(body.get(key), kind):
            return 400, f"{key}: field required ({kind.__name__})"
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    rec: RecordedRequest
    script: Script

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
        if data:  # an empty chunk would be the terminator
            self._write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end(self) -> None:
        self._write(b"0\r\n\r\n")

    def _event(self, name: str, data: dict[str, Any]) -> None:
        payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        self._chunk(f"event: {name}\ndata: {payload}\n\n".encode())

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
        """Sleep, sending pings if scripted; _Abort if the client leaves or the server stops."""
        if seconds <= 0:
            return
        every = self.script.ping_every if ping else None
        now = time.monotonic()
        deadline, next_ping = now + seconds, now + every if every else math.inf
        while now < deadline:
            if self.stopping:
                raise _Abort
            if now >= next_ping:
                self._event("ping", PING)
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
        self._route({"/v1/messages": self._messages, "/_fake/scripts": self._push_scripts})

    def _route(self, table: dict[str, Callable[[], None]]) -> None:
        handler = table.get(self.path.split("?", 1)[0])
        if handler is not None:
            return handler()
        self._read_body()
        self._send_json(404, error_body(404, f"{self.command} {self.path} not found"))

    def _list_requests(self) -> None:
        reqs = list(self.server.upstream.requests)
        self._send_json(200, [{"path": r.path, "headers": r.headers, "body": r.body} for r in reqs])

    def _push_scripts(self) -> None:
        try:
            items = json.loads(self._read_body())
            items = items if isinstance(items, list) else [items]
            scripts = [Script.from_dict(d) for d in items]
        except (ValueError, TypeError) as exc:
            return self._send_json(400, error_body(400, f"bad scripts: {exc}"))
        self.server.upstream.push(*scripts)
        self.send_response(204)
        self.end_headers()

    # -- /v1/messages -----------------------------------------------------------------
    def _messages(self) -> None:
        try:
            body = json.loads(self._read_body())
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.rec = RecordedRequest(self.path, headers, body if isinstance(body, dict) else None)
        self.script = Script()  # used by _wait until the real script is known
        upstream = self.server.upstream
        upstream._record(self.rec)
        try:
            problem = check_request(headers, body)
            if problem:
                return self._send_json(problem[0], error_body(*problem))
            self.script = upstream._next_script()
            self._run(body)
        except _Abort:
            self.close_connection = True
        finally:
            self.rec.finished.set()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("cache-control", "no-cache")
        self.send_header("transfer-encoding", "chunked")
        try:
            self.end_headers()
        except OSError:
            self._gone()

    def _run(self, body: dict[str, Any]) -> None:
        s = self.script
        if s.fail and s.fail.isdigit():
            status = int(s.fail)
            return self._send_json(status, error_body(status, f"fake upstream failure {status}"))
        if s.fail == "hang_headers":
            return self._wait(math.inf, ping=False)
        self._start_stream()
        if s.raw is not None:
            for i, chunk in enumerate(s.raw):
                self._wait(s.interval if i else s.ttft)
                self._chunk(chunk)
            return self._end()
        if s.fail == "empty":
            return self._end()
        self._event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"msg_fake_{uuid.uuid4().hex[:24]}",
                    "type": "message",
                    "role": "assistant",
                    "model": s.model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": s.input_tokens, "output_tokens": 1},
                },
            },
        )
        self._event("ping", PING)
        if s.fail:
            self._wait(s.ttft)
            return self._fail(s.fail, 0)
        self._stream_blocks(body)

    def _stream_blocks(self, body: dict[str, Any]) -> None:
        s = self.script
        if s.echo:
            pieces = split_words(f"You said: {last_user_text(body)}")
        else:
            pieces = s.tokens if s.tokens is not None else split_words(s.text)
        blocks: list[tuple[dict[str, Any], list[tuple[dict[str, Any], bool]]]] = []
        if s.thinking and s.thinking_mode == "native":
            deltas = [({"type": "thinking_delta", "thinking": p}, True) for p in s.thinking]
            deltas.append(({"type": "signature_delta", "signature": "fake-sig"}, False))
            blocks.append(({"type": "thinking", "thinking": ""}, deltas))
        elif s.thinking:
            pieces = ["<thinking>", *s.thinking, "</thinking>", *pieces]
        if pieces:  # an empty reply has no text block at all
            blocks.append(
                (
                    {"type": "text", "text": ""},
                    [({"type": "text_delta", "text": p}, True) for p in pieces],
                )
            )
        sent = 0
        for index, (block, deltas) in enumerate(blocks):
            for n, (delta, counted) in enumerate(deltas):
                if counted:
                    self._wait(s.interval if sent else s.ttft)
                    if sent == s.fail_after:
                        return self._fail(s.fail_mode, sent)
                    sent += 1
                if n == 0:
                    self._event(
                        "content_block_start",
                        {"type": "content_block_start", "index": index, "content_block": block},
                    )
                self._event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            self._event("content_block_stop", {"type": "content_block_stop", "index": index})
        if sent == s.fail_after:
            return self._fail(s.fail_mode, sent)
        self._finish_message(sent)

    def _finish_message(self, sent: int) -> None:
        self._event(
            "message_delta",
            {
                "type": "message_delta",
                "usage": {"output_tokens": sent},
                "delta": {"stop_reason": self.script.stop_reason, "stop_sequence": None},
            },
        )
        self._event("message_stop", {"type": "message_stop"})
        self._end()

    # -- failures (the connection is closed after each one) -----------------------------
    def _fail(self, mode: str, sent: int) -> None:
        self.close_connection = True
        behaviours: dict[str, Callable[[], None]] = {
            "error_event": self._error_event,
            "cut": lambda: None,  # return without the chunked terminator; the socket closes
            "hang": lambda: self._wait(math.inf),
            "no_stop": self._end,
            "no_text": lambda: self._finish_message(sent),
        }
        behaviours[mode]()

    def _error_event(self) -> None:
        self._event("error", OVERLOADED)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1957)
    parser.add_argument("--ttft", type=float, default=0.0)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--thinking", help='thinking pieces, "|"-separated')
    parser.add_argument("--echo", action="store_true")
    args = parser.parse_args(argv)
    default = Script(
        ttft=args.ttft,
        interval=args.interval,
        echo=args.echo,
        thinking=args.thinking.split("|") if args.thinking else None,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    with FakeUpstream(args.host, args.port, default, verbose=True) as upstream:
        print(f"fake upstream listening on {upstream.url}", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
