"""A scriptable fake LLM provider (Anthropic, OpenAI, Gemini, Ollama streams) for tests.

`FakeUpstream` is a real HTTP/1.1 server on 127.0.0.1 that answers each provider's native
streaming endpoint, driven by `Script` objects queued with `push()` (FIFO; the `default` script
is used when the queue is empty). One script queue serves every format: the request path picks
the wire format, the script says what to stream. A separate process can script it over HTTP:
``POST /_fake/scripts`` (JSON list of script dicts), ``GET /_fake/requests``,
``GET /_fake/health``. ``python -m devtools.fake_upstream`` runs it in the foreground.

Wire formats (one `Format` subclass each; the loop that drives a script is shared):

* Anthropic Messages, ``POST /v1/messages``: needs ``x-api-key`` (else 401) and ``model``,
  ``messages``, ``max_tokens``. SSE with ``event:`` lines: ``message_start`` and ``ping`` right
  after the headers, a ``content_block_start`` sent together with a block's first delta,
  ``thinking_delta`` pieces then one uncounted ``signature_delta``, ``text_delta`` pieces,
  ``message_delta`` (cumulative ``output_tokens``) and ``message_stop``. Error event:
  ``event: error`` with ``overloaded_error``. Keep-alive: ``event: ping``.
* OpenAI Chat Completions, ``POST /v1/chat/completions``: needs ``authorization: Bearer <key>``
  (else 401 ``invalid_api_key``) and ``model``, ``messages``. ``data: <chunk>`` events, no
  ``event:`` lines: a ``{"role": "assistant", "content": ""}`` chunk right after the headers,
  ``delta.reasoning_content`` (thinking) and ``delta.content`` pieces, a chunk with an empty
  delta and ``finish_reason``, then - only with ``stream_options.include_usage`` - a chunk with
  ``"choices": []`` and ``usage`` (every other chunk then carries ``"usage": null``, as the real
  API does), then ``data: [DONE]``. Error event: a ``data: {"error": ...}`` frame.
  Keep-alive: the comment line ``: keep-alive``.
* Gemini, ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``: needs
  ``x-goog-api-key`` (else 403 ``PERMISSION_DENIED``; the ``?key=`` form is not accepted) and
  ``contents``; without ``alt=sse`` it answers 400, as the JSON-array stream is not served.
  ``data: <json>`` events ended by CRLF CRLF, no ``[DONE]``, nothing before the first piece.
  Each piece is one event with one part (``"thought": true`` for thinking); the last event has
  ``finishReason`` and the full ``usageMetadata`` and a content with NO parts. Error event: an
  unframed, pretty-printed JSON array tail at EOF (``fail="error_data"`` frames it as
  ``data: {"error": ...}`` instead). No keep-alive: ``ping_every`` does nothing.
* Ollama, ``POST /api/chat``: no auth; needs ``model`` and ``messages``. NDJSON
  (``application/x-ndjson``), nothing before the first piece, one line per piece with
  ``message.content`` or (thinking) ``message.thinking`` and ``done: false``; the last line has
  ``done: true``, ``done_reason``, counts and measured durations in nanoseconds. Error event:
  a ``{"error": "..."}`` line (the status stays 200). No keep-alive.

Deliberate choices:

* stdlib only (`ThreadingHTTPServer`, daemon threads): no extra dependency for dev tooling.
* Streams use ``Transfer-Encoding: chunked``, one chunk per event (SSE event or NDJSON line),
  written straight to the socket with ``TCP_NODELAY`` set on every accepted connection, so each
  event leaves immediately (no Nagle / delayed-ACK stalls of ~40 ms).
* Timing model: a format's start frames (if any) go out with the headers; every failure
  (``fail`` and ``fail_after``) happens at the moment the next delta would have been sent, i.e.
  after the ``ttft`` / ``interval`` wait. So with a format that has no start frames (Gemini,
  Ollama) ``fail="error_event"`` sends the error alone; use ``fail_after`` for an error after
  some pieces.
* Deltas counted by ``fail_after`` and by the usage figures are the thinking and text pieces
  (Anthropic's signature_delta is not counted). In "inline" thinking mode the ``<thinking>`` and
  ``</thinking>`` tags are separate text deltas (and count as text); native thinking pieces are
  reported as reasoning / thoughts tokens where the format has such a figure.
* ``fail_after`` larger than the number of deltas never fires; equal to it fires after the
  last delta, before the finish frames. An empty reply has no text block / pieces.
* ``no_stop`` ends the body cleanly at that point, so no finish frame at all follows: no
  ``message_delta``/``message_stop``, no ``finish_reason`` chunk or ``[DONE]``, no
  ``finishReason`` event, no ``done`` line. ``error_data`` (an error framed as an event) differs
  from ``error_event`` only for Gemini: the other formats' error events are framed already.
* ``stop_reason`` is given in Anthropic terms and mapped per format ("end_turn" -> "stop" /
  "STOP", "max_tokens" -> "length" / "MAX_TOKENS"); an unmapped value is sent as it is.
  ``model`` is what every format reports, whatever the request asked for.
* Precedence: ``raw`` > ``fail`` > ``echo`` > ``tokens`` > ``text``; ``raw`` honours only
  ``ttft``, ``interval`` and the format's content type (and keep-alive, if scripted).
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
import re
import select
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

POLL = 0.05  # seconds between client-gone / server-stopping checks while waiting
FAILS = ("error_event", "error_data", "hang", "hang_headers", "empty", "no_text", "cut", "no_stop")
FAIL_MODES = ("error_event", "error_data", "cut", "hang", "no_stop")

Frames = list[bytes]
Problem = tuple[int, str] | None


@dataclass
class Script:
    """What the fake answers to one generation request (see the module docstring)."""

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
    error_body: dict[str, Any] | None = None  # with a numeric `fail`: this body, not the format's

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
    model: str | None = None


class _Abort(Exception):
    """The client went away or the server is stopping: drop the connection."""


def split_words(text: str) -> list[str]:
    """'Hello from it' -> ['Hello ', 'from ', 'it']."""
    return re.findall(r"\S+\s*|\s+", text)


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def sse(data: Any, event: str | None = None, eol: str = "\n") -> bytes:
    head = f"event: {event}{eol}" if event else ""
    return f"{head}data: {compact(data)}{eol}{eol}".encode()


def last_user_text(body: dict[str, Any], key: str = "messages") -> str:
    """The text of the last user turn: a string, or the text blocks / parts of a list."""
    for msg in reversed(body.get(key) or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content", msg.get("parts"))
            if isinstance(content, str):
                return content
            return "".join(
                b.get("text", "")
                for b in content or []
                if isinstance(b, dict) and b.get("type", "text") == "text"
            )
    return ""


def pieces_of(script: Script, body: dict[str, Any], key: str) -> list[tuple[str, list[str]]]:
    """The reply as runs of ("thinking" | "text", pieces); empty runs are left out."""
    s = script
    if s.echo:
        pieces = split_words(f"You said: {last_user_text(body, key)}")
    else:
        pieces = s.tokens if s.tokens is not None else split_words(s.text)
    runs: list[tuple[str, list[str]]] = []
    if s.thinking and s.thinking_mode == "native":
        runs.append(("thinking", s.thinking))
    elif s.thinking:
        pieces = ["<thinking>", *s.thinking, "</thinking>", *pieces]
    if pieces:
        runs.append(("text", pieces))
    return runs


# -- wire formats ---------------------------------------------------------------------------
class Format:
    """One provider's wire format: request checks, error bodies, and the frames of one reply.

    A new instance serves each response (it holds ids, counters, block state). Frames are
    complete wire events (bytes); each goes out as its own HTTP chunk.
    """

    path: ClassVar[re.Pattern[str]]
    content_type: ClassVar[str] = "text/event-stream; charset=utf-8"
    messages_key: ClassVar[str] = "messages"
    required: ClassVar[tuple[tuple[str, type], ...]] = (("model", str), ("messages", list))
    keepalive: ClassVar[bytes | None] = None
    stop_reasons: ClassVar[dict[str, str]] = {}

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        self.script, self.body = script, body
        self.counts = {"text": 0, "thinking": 0}  # pieces sent, by kind

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    @property
    def stop_reason(self) -> str:
        return self.stop_reasons.get(self.script.stop_reason, self.script.stop_reason)

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        return None

    @classmethod
    def check(cls, headers: dict[str, str], body: Any, query: dict[str, list[str]]) -> Problem:
        """(status, message) when the request is one the real API would refuse."""
        problem = cls.check_auth(headers, query)
        if problem:
            return problem
        if not isinstance(body, dict):
            return 400, "request body must be a JSON object"
        for key, kind in cls.required:
            if not isinstance(body.get(key), kind):
                return 400, f"{key}: field required ({kind.__name__})"
        return None

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        """The JSON body of an HTTP error response."""
        raise NotImplementedError

    def start(self) -> Frames:
        """Sent with the headers, before any wait."""
        return []

    def delta(self, kind: str, piece: str) -> Frames:
        """One "thinking" or "text" piece."""
        raise NotImplementedError

    def end_block(self, kind: str) -> Frames:
        """After the last piece of a run of one kind."""
        return []

    def finish(self) -> Frames:
        """The end of a complete reply: stop reason, usage, end marker."""
        raise NotImplementedError

    def error(self, framed: bool) -> Frames:
        """The in-stream error; `framed` asks for it as an event where the format has both."""
        raise NotImplementedError


ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ANTHROPIC_BLOCKS = {  # kind -> (content_block, delta type)
    "thinking": ({"type": "thinking", "thinking": ""}, "thinking_delta"),
    "text": ({"type": "text", "text": ""}, "text_delta"),
}
PING = {"type": "ping"}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


class Anthropic(Format):
    path = re.compile(r"/v1/messages")
    required = (("model", str), ("messages", list), ("max_tokens", int))
    keepalive = sse(PING, "ping")

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.index, self.open = 0, False

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        return None if headers.get("x-api-key") else (401, "x-api-key header is required")

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        error_type = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": error_type, "message": message}}

    def start(self) -> Frames:
        message = {
            "id": f"msg_fake_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": self.script.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.script.input_tokens, "output_tokens": 1},
        }
        return [sse({"type": "message_start", "message": message}, "message_start"), self.keepalive]

    def _block_event(self, name: str, **data: Any) -> bytes:
        return sse({"type": name, "index": self.index, **data}, name)

    def delta(self, kind: str, piece: str) -> Frames:
        block, delta_type = ANTHROPIC_BLOCKS[kind]
        frames = (
            [] if self.open else [self._block_event("content_block_start", content_block=block)]
        )
        self.open = True
        frames.append(
            self._block_event("content_block_delta", delta={"type": delta_type, kind: piece})
        )
        return frames

    def end_block(self, kind: str) -> Frames:
        frames = []
        if kind == "thinking":
            signature = {"type": "signature_delta", "signature": "fake-sig"}
            frames.append(self._block_event("content_block_delta", delta=signature))
        frames.append(self._block_event("content_block_stop"))
        self.index, self.open = self.index + 1, False
        return frames

    def finish(self) -> Frames:
        message_delta = {
            "type": "message_delta",
            "usage": {"output_tokens": self.sent},
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
        }
        return [sse(message_delta, "message_delta"), sse({"type": "message_stop"}, "message_stop")]

    def error(self, framed: bool) -> Frames:
        return [sse(OVERLOADED, "error")]


OPENAI_ERRORS = {  # status -> (type, code)
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class OpenAI(Format):
    path = re.compile(r"/v1/chat/completions")
    keepalive = b": keep-alive\n\n"
    stop_reasons = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.id, self.created = f"chatcmpl-fake{uuid.uuid4().hex[:20]}", int(time.time())
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme == "Bearer" and key.strip():
            return None
        return 401, "You didn't provide an API key (Authorization: Bearer YOUR_KEY)."

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        default = ("server_error" if status >= 500 else "invalid_request_error", None)
        error_type, code = OPENAI_ERRORS.get(status, default)
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}

    def _chunk(
        self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any
    ) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.script.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse({**chunk, **extra})

    def start(self) -> Frames:
        return [self._chunk({"role": "assistant", "content": ""})]

    def delta(self, kind: str, piece: str) -> Frames:
        return [self._chunk({"reasoning_content" if kind == "thinking" else "content": piece})]

    def finish(self) -> Frames:
        frames = [self._chunk({}, self.stop_reason)]
        if self.include_usage:
            prompt, completion = self.script.input_tokens, self.sent
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "completion_tokens_details": {"reasoning_tokens": self.counts["thinking"]},
            }
            frames.append(self._chunk(None, usage=usage))
        return [*frames, b"data: [DONE]\n\n"]

    def error(self, framed: bool) -> Frames:
        return [sse({"error": {"message": "The server had an error", "type": "server_error"}})]


GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
GEMINI_OVERLOADED = {
    "code": 503,
    "message": "The model is overloaded. Please try again later.",
    "status": "UNAVAILABLE",
}


class Gemini(Format):
    path = re.compile(r"/v1beta/models/(?P<model>[^/:]+):streamGenerateContent")
    content_type = "text/event-stream"
    messages_key = "contents"
    required = (("contents", list),)
    stop_reasons = {"end_turn": "STOP", "stop_sequence": "STOP", "max_tokens": "MAX_TOKENS"}

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.id = uuid.uuid4().hex[:22]

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        if not headers.get("x-goog-api-key"):
            return 403, "Method doesn't allow unregistered callers: send an x-goog-api-key header."
        if query.get("alt") != ["sse"]:
            return 400, "this fake serves only ?alt=sse streams"
        return None

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        return {
            "error": {
                "code": status,
                "message": message,
                "status": GEMINI_STATUSES.get(status, "UNKNOWN"),
            }
        }

    def _event(self, candidate: dict[str, Any], usage: dict[str, int]) -> bytes:
        event = {
            "candidates": [{**candidate, "index": 0}],
            "usageMetadata": usage,
            "modelVersion": self.script.model,
            "responseId": self.id,
        }
        return sse(event, eol="\r\n")

    def delta(self, kind: str, piece: str) -> Frames:
        part = {"text": piece, **({"thought": True} if kind == "thinking" else {})}
        prompt = self.script.input_tokens  # real streams give the full counts only at the end
        usage = {"promptTokenCount": prompt, "totalTokenCount": prompt}
        return [self._event({"content": {"parts": [part], "role": "model"}}, usage)]

    def finish(self) -> Frames:
        prompt, text, thoughts = (
            self.script.input_tokens,
            self.counts["text"],
            self.counts["thinking"],
        )
        usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": text,
            "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt + text + thoughts,
        }
        candidate = {"content": {"role": "model"}, "finishReason": self.stop_reason}
        return [self._event(candidate, usage)]

    def error(self, framed: bool) -> Frames:
        if framed:
            return [sse({"error": GEMINI_OVERLOADED}, eol="\r\n")]
        return [f"[{json.dumps({'error': GEMINI_OVERLOADED}, indent=2)}\n]".encode()]


class Ollama(Format):
    path = re.compile(r"/api/chat")
    content_type = "application/x-ndjson"
    stop_reasons = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.started, self.first = time.monotonic_ns(), 0

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        return {"error": message}

    def _line(self, **fields: Any) -> bytes:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return f"{compact({'model': self.script.model, 'created_at': now, **fields})}\n".encode()

    def delta(self, kind: str, piece: str) -> Frames:
        self.first = self.first or time.monotonic_ns()
        message = {"role": "assistant", "content": piece}
        if kind == "thinking":
            message = {"role": "assistant", "content": "", "thinking": piece}
        return [self._line(message=message, done=False)]

    def finish(self) -> Frames:
        now = time.monotonic_ns()
        prompt_eval = (self.first or now) - self.started
        line = self._line(
            message={"role": "assistant", "content": ""},
            done=True,
            done_reason=self.stop_reason,
            total_duration=now - self.started,
            load_duration=0,
            prompt_eval_count=self.script.input_tokens,
            prompt_eval_duration=prompt_eval,
            eval_count=self.sent,
            eval_duration=now - (self.first or now),
        )
        return [line]

    def error(self, framed: bool) -> Frames:
        return [f"{compact({'error': 'model runner has unexpectedly stopped'})}\n".encode()]


FORMATS: tuple[type[Format], ...] = (Anthropic, OpenAI, Gemini, Ollama)


# -- the server -----------------------------------------------------------------------------
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
        if data:  # an empty chunk would be the terminator
            self._write(b"%x\r\n%s\r\n" % (len(data), data))

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
