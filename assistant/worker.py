"""The gunicorn worker the service runs in: gthread, hardened against slow and broken clients.

functions-framework runs gunicorn's gthread worker; assistant/server.py makes
it run this subclass instead. Ten things differ from gthread as gunicorn
27.0.1 ships it (issues 8 and 11 measured them):

1. **A request costs no thread until it has arrived.** gthread hands each
   new connection to a pool thread at once, which waits up to 5 s for a
   first byte and then reads the request line, headers and body with
   blocking reads: a client that sends nothing, or a byte a second, holds a
   thread, and a few dozen of them hold every thread (`/health` waits too).
   Here a request is read on the main loop's poller, as gthread already
   does for idle keep-alive connections, and goes to the thread pool once
   it is all there: the head, then the body its Content-Length or chunked
   framing announces (`_Arrival`). A kept-alive connection's next request
   is read as soon as the poller reports the connection readable (that is
   why it is), and waited for only if it is not whole yet; one read with the
   request before it (pipelined) is waited for the same way. The bytes read
   are handed to gunicorn's parser, which parses them as if it had read
   them itself, a socket read's worth at a time (`_ReadFirst`): what the
   poller works out is only when to stop waiting, never what the request
   means.
   Bounds: a head over HEAD_BUFFER_BYTES, a body over BODY_BUFFER_BYTES,
   a Content-Length over the app's MAX_BODY_BYTES (refused unread, at once),
   all waiting requests together over BUFFERED_BYTES, a framing the poller
   does not follow, or `Expect: 100-continue` (the client waits for our
   answer before it sends the body) send the request to a thread as it is,
   to be read there on the clock of point 2.
2. **A request must arrive within REQUEST_READ_TIMEOUT_SECONDS** of waiting
   for its client. The clock runs while the request is awaited on the
   poller (not all there in time: the connection is closed), and again
   whenever a thread waits for more of it: gunicorn reading a head too
   large for the poller, or the app inside a read of `wsgi.input`. One
   watchdog thread per worker shuts down (SHUT_RDWR) the socket of a
   request whose time ran out in a thread: the blocked recv() returns at
   once, gunicorn and the app see a client that left, and the thread is
   free.
   - The app's own time (auth, a certificate fetch, the provider, a reply
     that streams for minutes) is never on the clock, nor is time spent
     queued for a thread: nothing the server does can make the deadline cut
     an honest request. And the app has nothing to call: the worker sees
     the body being read through the `wsgi.input` it hands the app.
   - A watchdog and shutdown(), not socket timeouts: a per-read timeout does
     not bound a client that sends a byte just before each one expires, and
     shutdown() ends whichever read is blocked (gunicorn reads the body, chunk
     sizes and trailers in several places). The socket's own timeout stays
     the app's (http.py bounds its writes with one).
   - The connection is dropped, not answered with a 408: a client this slow
     is broken, gone, or attacking.
3. **No 2 s stall per `Connection: close` client.** gthread closes such a
   connection gracefully (RFC 9112 §9.6: send FIN, then read until the
   client's FIN, for up to 2 s) on the worker's main thread, one socket at a
   time: every client that does not close its end stops accept() and all
   keep-alive connections for 2 s. Here the FIN goes out the same way, and
   the wait for the client's FIN is one more socket on the poller.
4. **gunicorn's own refusals are our JSON errors** (`refusal()`): a
   malformed or oversize request line or header, a bad Content-Length, an
   unsupported Transfer-Encoding get `{"error", "code", "trace_id"}` with
   a 400, 414 or 431 instead of gunicorn's HTML page, and a
   `request.refused` log line like the app's.

5. **No `Connection: keep-alive` header on HTTP/1.1 answers.** An HTTP/1.1
   connection persists unless one side says `close`, so gthread's
   `Connection: keep-alive` on every answer says nothing, and it is a
   hop-by-hop header a stream's answer is not to carry (README "Choices where
   the API's rules are silent").
   `Connection: close`, which does say something, is still sent when the
   connection will close; HTTP/1.0 answers keep gthread's headers. And a
   request whose Connection options hold `close` anywhere (`keep-alive,
   close`, or a second Connection header) has its connection closed after
   its answer, as RFC 9112 §9.6 wants (`_asks_to_close`).

6. **Parking: a response can let go of its thread while it waits.** A body
   item that is not bytes but a `Parkable` (the app's `parking.Park`) means
   "nothing to write until I call you": the worker calls its `arm(resume)`
   and the thread goes back to the pool, the connection still open and
   counted; `resume()`, called once from any thread, hands the response to a
   pool thread again, which goes on writing it where it stopped (`_Exchange`)
   and then ends it as gthread would (close, keep-alive). A streaming reply
   whose chunks the I/O loop writes (direct.py) parks between the things it
   writes itself, so an instance streams more replies than it has threads:
   its CPU, not THREADS, says how many. It parks while it waits for its
   first chunk too, its status not yet decided: an `Instead` body item
   (status, headers, body) then answers in place of the response begun, as
   a WSGI app's second `start_response` may while no head is out (a 502
   when every provider failed). The app sees `PARKING` in the environ, and
   `HEAD`: a callable that gives it the head to send itself, with the first
   frame its I/O loop writes while the response is parked (gunicorn then
   sends no head).
   A stopping worker waits for parked responses like any other: those
   still under way `stop_end_seconds()` after the signal are ended by the
   app (`STOP_EARLY`): a stream with a terminal frame, one still waiting
   for its first chunk (its head not out) with a 503 `overloaded`, their
   text saved, and so are replies still in the app's call (a JSON reply,
   which holds its thread to its end: a 503 `overloaded`); for
   STOP_SAVE_SECONDS at most: those still parked then are ended as if their
   client had left (upstream cancelled, what arrived saved), before Cloud
   Run's kill 10 s after SIGTERM (or gunicorn's, at its graceful timeout)
   would lose them; one whose head is still not out is answered 503
   `overloaded` by the worker itself.
7. **`/health` and CORS preflights have threads of their own**
   (`RESERVED_THREADS`): a request whose head the poller read, `GET` or
   `HEAD /health` or any `OPTIONS`, goes to a small pool of its own, so that
   requests keeping every thread busy (a burst of them on their way in, say)
   never keep a liveness check or a preflight waiting. Same handling, same
   app: only the thread differs.
8. **gunicorn's settings are read once.** gunicorn reads about twenty of
   them per request through `Config.__getattr__` (0.5 µs each); the
   worker's copy keeps each value once read (`_SettledConfig`). A worker's
   settings never change: a reload starts new workers.
9. **Nothing is handed to the main thread after its queue is closed.** A
   pool thread can outlive gunicorn's graceful wait (a request still
   running); gthread closes the pipe its pool threads wake the main thread
   through, and such a thread's end still wrote a byte to the pipe's
   descriptor number, by then possibly another file's or socket's
   (`_MethodQueue`).
10. **A body is not read, nor asked for, before the app wants it.**
   functions-framework's app reads the whole request body into memory
   before any answer that is not streamed (its `read_request`), however
   large the body says it is: a refusal sent before the body is read (401,
   413, 415...) cost as much memory as the client cared to send (400 MB for
   one request, measured), and a client that waits to send its body got no
   answer at all. That step is taken off the app (`_without_body_reads`):
   gthread already drains an unread body of less than 64 KiB to keep the
   connection, else closes it gracefully. And gunicorn sends
   `100 Continue` before the app runs, inviting a body the app may refuse
   unread: here it goes out when the app first reads the body
   (`_Continue`), and a request answered without it is closed (its client
   may still send the body).

This serves plain HTTP/1.1, which is what functions-framework configures and
Cloud Run speaks to a container; with TLS or cleartext HTTP/2 turned on the
worker refuses to start rather than read bytes it cannot parse.
"""

# gunicorn ships no type information: its classes are Any to mypy, and
# subclassing them is what this module is for.
# mypy: disallow-subclassing-any=False

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import selectors
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from http import HTTPStatus
from typing import Any, Protocol, cast

import functions_framework
from gunicorn import util  # type: ignore[import-untyped]
from gunicorn.config import Config  # type: ignore[import-untyped]
from gunicorn.http import errors, wsgi  # type: ignore[import-untyped]
from gunicorn.http.unreader import SocketUnreader  # type: ignore[import-untyped]
from gunicorn.workers.gthread import (  # type: ignore[import-untyped]
    STOP_KEEPALIVE_LINGER,
    PollableMethodQueue,
    TConn,
    ThreadWorker,
)
from werkzeug.datastructures import Headers

from .config import ConfigError, ServerSettings, Settings, cors_origins, request_settings
from .cors import cors_headers
from .direct import briefly
from .errors import MESSAGES, ErrorCode
from .late_saves import late_saves
from .limits import STOPPING_RETRY_AFTER_SECONDS, replies_in_flight
from .saving import finish_unwaited, stop_writes
from .tracing import RequestLog, new_trace_id, process_log, trace_id_from_headers

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# The environ keys this worker sets for the app (point 6 above): a body may yield a
# Parkable; and a callable that hands the app the response's head, to write it itself.
PARKING = "assistant.parking"
HEAD = "assistant.head"
# What gthread drains of a body the app left unread, to keep the connection (its
# parser's _DRAIN_MAX_BYTES): a body that reaches it closes the connection after its wait.
UNREAD_BODY_DRAIN_BYTES = 64 * 1024
CONTINUE = "assistant.continue"  # a `_Continue` still to send, for the body's first read (10)
# Set by the app: the request's trace id, for the worker's own log lines about it.
TRACE_ID = "assistant.trace_id"
# Set by the app: a callable that ends its reply now, with a terminal frame (point 6).
STOP_EARLY = "assistant.stop_early"
_TOLD_TO_STOP = "assistant.told_to_stop"  # STOP_EARLY was called: once is enough
_CUT_AT_THE_STOP = "assistant.cut_at_the_stop"  # its socket shut at the abandon: once
_SEND_BOUNDED_HERE = "assistant.send_bounded_here"  # the worker gave its answer a send timeout

# Threads for /health and preflights alone (point 7 above), and how their heads begin.
RESERVED_THREADS = 2
# How long their answers wait on a client to take them: a client that sends preflights and
# reads nothing filled its socket's buffers and held both threads (/health unanswered).
RESERVED_SEND_SECONDS = 2.0
_RESERVED_REQUESTS = (b"GET /health ", b"GET /health?", b"HEAD /health ", b"HEAD /health?",
                      b"OPTIONS ")  # fmt: skip


def _reserved_request(head: bytes | None) -> bool:
    """A /health or preflight request whose head the poller read whole, with no body:
    nothing left to read, so it holds its reserved thread for no client (a body, or
    `Expect`, goes to the other threads, where the read clock bounds it)."""
    if head is None or not head.startswith(_RESERVED_REQUESTS):
        return False
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return False
    fields = head[:end] + b"\r\n"
    return not any(
        pattern.search(fields) for pattern in (_A_BODY_LENGTH, _ANY_TRANSFER_ENCODING, _EXPECT)
    )


class Parkable(Protocol):
    def arm(self, resume: Callable[[], None]) -> None:
        """Call `resume` once, from any thread, when the body has more to give."""


@dataclass(frozen=True)
class Instead:
    """A body item that answers the request in place of the response begun: its status,
    headers and whole body. Only before the response's head is out (point 6 above)."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes


_PARKED = object()  # handle()'s result for a response that let go of its thread

# How long a stopping worker lets parked replies run on (point 6 above): Cloud Run
# kills an instance 10 s after SIGTERM, and ending one takes up to ~1 s, its save more.
STOP_SAVE_SECONDS = 7.0
# Replies still streaming this long after the stop signal end with a terminal frame
# (`overloaded`: the client may retry on another instance) and their text saved: at
# most this, and early enough that a whole save wait (PERSIST_TIMEOUT_SECONDS) and a
# second more fit before STOP_SAVE_SECONDS (`stop_end_seconds`); those still parked
# then are abandoned.
STOP_END_SECONDS = 4.0
# What a read from a client may take once the streams are ended at a stop: a request
# whose bytes are in is answered, one still coming is not waited for.
STOP_READ_SECONDS = 1.0
# Messages that could not be saved within their replies' waits get one more try on the
# way out, begun this long after the stop signal at the latest (late_saves.py).
LATE_SAVES_BY_SECONDS = 9.0

# gunicorn's limits on a head (server.py gives them to it).
LIMIT_REQUEST_LINE = 8190
LIMIT_REQUEST_FIELDS = 100
LIMIT_REQUEST_FIELD_SIZE = 8190
# What the poller holds of requests still arriving (see point 1 above): a
# head up to HEAD_BUFFER_BYTES, one byte past what gunicorn's parsers take of
# an unfinished head (its C parser counts the request line in): one still
# unfinished then is refused on the poller (431), never handed to a thread,
# where gunicorn would read on before it measured (at 32 KiB, eight unfinished
# heads of 40 KB, sent a byte a second and no token needed, held eight
# threads for REQUEST_READ_TIMEOUT_SECONDS);
# a body up to BODY_BUFFER_BYTES after its head (the default MAX_BODY_BYTES,
# and room for a chunked body's framing); and all of them together up to
# BUFFERED_BYTES (a worst case of memory, not a typical one).
HEAD_BUFFER_BYTES = (
    LIMIT_REQUEST_FIELDS * (LIMIT_REQUEST_FIELD_SIZE + 2) + 4 + LIMIT_REQUEST_LINE + 1
)
BODY_BUFFER_BYTES = 1024 * 1024 + 32 * 1024
BUFFERED_BYTES = 32 * 1024 * 1024

# The graceful close as gunicorn's util.close_graceful does it: wait this long
# for the client's FIN, reading at most this much it still sends.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 65536

_BARE_LF = re.compile(rb"(?<!\r)\n")
# Header lines of a head (from its request line to before its blank line).
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([0-9]{1,15})[ \t]*(?=\r\n|$)", re.I)
_ANY_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:", re.I)
# The framings gunicorn accepts: chunked, last, after any of its known codings.
_CHUNKED = re.compile(
    rb"\r\ntransfer-encoding[ \t]*:[ \t]*(?:(?:gzip|deflate|compress)[ \t]*,[ \t]*)*"
    rb"chunked[ \t]*(?=\r\n|$)",
    re.I,
)
# A Content-Length that announces a body (`Content-Length: 0` is none: a probe's GET may
# send it, and waited behind busy threads for a reserved one's answer).
_A_BODY_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:(?![ \t]*0+[ \t]*\r\n)", re.I)
_ANY_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.I)
_EXPECT = re.compile(rb"\r\nexpect[ \t]*:", re.I)
_HEX = frozenset(b"0123456789abcdefABCDEF")
_CR = ord("\r")
_LF = ord("\n")

# A header name short enough, and shaped like one (gunicorn upper-cases the
# names it parsed), to be named in an error without echoing a stray line.
_HEADER_NAME = re.compile(r"[A-Z0-9!#$%&'*+.^_`|~-]{1,40}")


# -- the read clock


class _ReadClock:
    """One request's time left waiting for its client, counted down by the watchdog."""

    def __init__(self, watchdog: _Watchdog, conn: TConn, remaining: float) -> None:
        self.watchdog = watchdog
        self.conn = conn
        self.remaining = remaining
        self.expires = math.inf  # while running; read and written under the watchdog's lock
        self.reading = "head"  # for the log line: "head" until the app runs, then "body"
        self.environ: Mapping[str, Any] = {}  # the app's, once it runs (its trace id)

    def run(self) -> None:
        self.watchdog.run(self)

    def stop(self) -> None:
        self.watchdog.stop(self)


class _Watchdog:
    """Shuts down the socket of each request whose read clock ran out (one thread per worker)."""

    def __init__(self, seconds: float, project_id: str) -> None:
        self.seconds = seconds
        self._project_id = project_id
        self._running: set[_ReadClock] = set()
        self._changed = threading.Condition()
        self._wake_at = math.inf
        self._most_seconds = math.inf  # a stopping worker's (`end_reads_within`)

    def start(self) -> None:
        threading.Thread(target=self._watch, name="read-deadlines", daemon=True).start()

    def end_reads_within(self, seconds: float) -> None:
        """Every read from a client, under way or yet to come, takes `seconds` at most
        from now on (a stopping worker's: a request whose bytes are in is answered, one
        still coming is not waited for)."""
        with self._changed:
            self._most_seconds = min(self._most_seconds, seconds)
            until = time.monotonic() + seconds
            for clock in self._running:
                clock.expires = min(clock.expires, until)
            self._changed.notify()

    def run(self, clock: _ReadClock) -> None:
        with self._changed:
            clock.expires = time.monotonic() + min(clock.remaining, self._most_seconds)
            self._running.add(clock)
            if clock.expires < self._wake_at:  # else the watchdog wakes in time anyway
                self._changed.notify()

    def stop(self, clock: _ReadClock) -> None:
        """Stopped, with the time left kept; once this returns, the socket is never shut down."""
        with self._changed:
            if clock in self._running:
                self._running.remove(clock)
                clock.remaining = max(0.0, clock.expires - time.monotonic())

    def _watch(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                expired = [clock for clock in self._running if clock.expires <= now]
                for clock in expired:
                    self._running.remove(clock)
                    clock.remaining = 0.0
                    # Under the lock: a clock stopped a moment ago is never shut down.
                    with contextlib.suppress(OSError):
                        clock.conn.sock.shutdown(socket.SHUT_RDWR)
                self._wake_at = min((clock.expires for clock in self._running), default=math.inf)
                if not expired:
                    wait = self._wake_at - now
                    self._changed.wait(None if wait == math.inf else wait)
                    continue
            for clock in expired:
                # No trace id yet while gunicorn reads a head: one of its own, as every line has.
                trace_id = clock.environ.get(TRACE_ID) or new_trace_id()
                log = RequestLog(trace_id, self._project_id)
                log.warning("request.read_timeout", reading=clock.reading, seconds=self.seconds)


# The trace headers a head's lines may name (any case), as trace_id_from_headers asks for them.
_TRACE_HEADERS = {"traceparent": "traceparent", "x-cloud-trace-context": "X-Cloud-Trace-Context"}


_NO_REQUEST_BEGUN = (b"", b"\r")  # empty lines are dropped as they come (`_Arrival.add`)
_EMPTY_LINES = re.compile(rb"(?:\r?\n)*")


def _empty_lines(data: bytearray) -> int:
    """How many bytes of empty lines `data` begins with."""
    match = _EMPTY_LINES.match(data)
    return match.end() if match is not None else 0


def _head_trace_id(data: bytes) -> str:
    """The trace id in the header lines of a request that arrived in part (its head
    whole or not), else a new one: the line that says it timed out has one, as every
    line about a request does."""
    fields: dict[str, str] = {}
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        known = _TRACE_HEADERS.get(name.strip().lower().decode("latin-1"))
        if colon and known:
            fields.setdefault(known, value.decode("latin-1"))
    return trace_id_from_headers(fields) or new_trace_id()


class _Continue:
    """`100 Continue`, sent when the app first reads the body (point 10)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sent = False

    def send(self) -> None:
        if not self.sent:
            self.sent = True
            self._sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")


class _ClockedInput:
    """The request body as the app reads it: the read clock runs inside each read, only,
    and there only while the socket is waited on when the parser's reader is ours (the
    parsing of bytes the poller read is not the client's time: a fast client's body of
    small chunks was cut by it); the first read sends the `100 Continue` a client may
    be waiting for."""

    def __init__(
        self,
        stream: Any,
        clock: _ReadClock,
        invitation: _Continue | None,
        reader: _ReadFirst | None,
    ) -> None:
        self._stream = stream
        self._clock = clock
        self._invitation = invitation
        self._reader = reader
        self.touched = False  # the app read (or tried to)
        self.ended = False  # the app read to the body's end

    def read(self, size: int | None = None) -> bytes:
        data: bytes = self._timed(self._stream.read, size)
        if size is None or size < 0 or len(data) < size:
            self.ended = True
        return data

    def readline(self, size: int | None = None) -> bytes:
        line: bytes = self._timed(self._stream.readline, size)
        if not line and size != 0:
            self.ended = True
        return line

    def readlines(self, hint: int | None = None) -> list[bytes]:
        lines: list[bytes] = self._timed(self._stream.readlines, hint)
        if hint is None or hint <= 0:
            self.ended = True
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _timed(self, read: Callable[[int | None], Any], size: int | None) -> Any:
        self.touched = True
        if self._invitation is not None:
            self._invitation.send()
        if self._reader is not None:  # always, but for a parser `handle` did not reach
            self._reader.clock = self._clock
            try:
                return read(size)
            finally:
                self._reader.clock = None
        self._clock.run()
        try:
            return read(size)
        finally:
            self._clock.stop()


# -- connections


class _ChunkScan:
    """Where a chunked body ends, found as its bytes arrive, each looked at once.

    It judges nothing: anything it does not expect ends the wait, and
    gunicorn's parser, which reads every byte again, says what is wrong.
    """

    def __init__(self, start: int) -> None:
        self.pos = start  # the next byte not yet looked at
        self.state = "size"  # size line, data, the CRLF after it, trailers
        self.left = 0  # bytes of the current chunk still to come
        self.trailers = 0  # where the trailer section starts, once it does
        # A line ended by a bare LF, or a CR alone: the body's end, for gunicorn too,
        # which would wait for a CRLF (`_ReadFirst.hold`).
        self.cut_short = False
        self.ended = False  # the body is all in, or the scan cannot go on

    def complete(self, data: bytearray) -> bool:
        """True once the body is all in `data`, or once the scan cannot go on."""
        self.ended = self._ended(data)
        return self.ended

    def _ended(self, data: bytearray) -> bool:
        while True:
            if self.state == "size":
                end = data.find(b"\n", self.pos)
                if _bare_cr(data, self.pos, len(data) if end < 0 else end):
                    self.cut_short = True  # a CR alone: no line ends there (a reviewer's)
                    return True
                if end < 0:
                    # Longer than gunicorn takes (it refuses the line): no size line.
                    return len(data) - self.pos > _LONGEST_SIZE_LINE
                if end == self.pos or data[end - 1] != _CR:
                    self.cut_short = True  # a line ended by a bare LF: all that comes
                    return True
                end -= 1
                digits = bytes(data[self.pos : end]).split(b";", 1)[0].rstrip(b" \t")
                if not digits or not set(digits) <= _HEX:
                    return True
                self.left, self.pos = int(digits, 16), end + 2
                self.state = "data" if self.left else "trailers"
                self.trailers = self.pos
            elif self.state == "data":
                taken = min(self.left, len(data) - self.pos)
                self.left -= taken
                self.pos += taken
                if self.left:
                    return False
                self.state = "crlf"
            elif self.state == "crlf":
                if len(data) - self.pos < 2:
                    if len(data) > self.pos and data[self.pos] == _LF:
                        self.cut_short = True  # a bare LF, as above
                        return True
                    return False
                if data[self.pos : self.pos + 2] != b"\r\n":
                    return True
                self.pos += 2
                self.state = "size"
            else:  # trailers: none (CRLF), or header lines ending with a blank line
                if data[self.trailers : self.trailers + 2] == b"\r\n":
                    return True
                if data.find(b"\r\n\r\n", self.pos) >= 0:
                    return True
                line_end = data.find(b"\n", self.pos)
                while line_end >= 0:
                    if line_end == self.trailers or data[line_end - 1] != _CR:
                        self.cut_short = True  # a line ended by a bare LF, as above
                        return True
                    line_end = data.find(b"\n", line_end + 1)
                if _bare_cr(data, self.pos, len(data)):
                    self.cut_short = True  # a CR alone, as above
                    return True
                self.pos = max(self.pos, len(data) - 3)  # look at each byte once
                return False

    def forget_read(self, data: bytearray) -> None:
        """`data` without what the scan will not look at again (it goes on past what the
        poller held, on the request's thread: `_ReadFirst`)."""
        done = self.trailers if self.state == "trailers" else self.pos
        del data[:done]
        self.pos -= done
        self.trailers -= done


def _bare_cr(data: bytearray, start: int, stop: int) -> bool:
    """Whether a CR in `data[start:stop]` is followed by a byte other than LF (gunicorn,
    looking for a CRLF, waits past it for the read timeout)."""
    at = data.find(b"\r", start, stop)
    while 0 <= at < len(data) - 1:
        if data[at + 1] != _LF:
            return True
        at = data.find(b"\r", at + 1, stop)
    return False


# A chunk's size line gunicorn takes at most (its limit on a request line, and extensions
# of a kilobyte and more are legal): past it, the scan stops.
_LONGEST_SIZE_LINE = 8192


class _ReadFirst(SocketUnreader):
    """gunicorn's socket reader, handing out what the poller read before what the
    socket holds, in pieces no larger than a read of the socket would be.

    Handed whole (`unread`), a chunked body of many small chunks was parsed in time
    quadratic in its size: gunicorn's chunk parser copies what is left of its read
    after each chunk (a reviewer's 1 MiB in 1,000 small chunks cost 10 s of CPU, and
    the read deadline cut it with no answer). A piece is at most a socket read, so
    the copies are bounded by it, as when gunicorn reads the socket itself.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        self._held = b""
        self._at = 0  # what of `_held` was handed out
        self._held_is_all = False  # nothing to read past `_held` (`hold`)
        # A chunked body the poller did not see end: its scan goes on over what is read,
        # and a bare LF past what the poller held ends it as one within did (a reviewer's
        # 900 KB body waited out the read timeout).
        self._scan: _ChunkScan | None = None
        self._scanned = bytearray()
        self.clock: _ReadClock | None = None  # run while the socket is read (a body's)

    @classmethod
    def on(cls, parser: Any) -> _ReadFirst:
        """The parser's reader, made one of these (what it holds kept, first)."""
        reader = parser.unreader
        if not isinstance(reader, cls):
            ours = cls(reader.sock)
            ours.unread(reader.take_buffered())
            reader = parser.unreader = ours
        return reader

    def hold(self, data: bytes, scan: _ChunkScan | None = None) -> None:
        """`data` to be read before anything read already and put back, or held; with
        `scan`, the scan of a chunked body in `data`, cut short on a bare LF (nothing is
        read after it: gunicorn's parser, looking for a CRLF there, waited out the read
        timeout and the client had no answer, a reviewer's; it is refused as malformed)
        or not seen to its end (it goes on over what is read)."""
        self.buf.seek(0, os.SEEK_END)
        self._held = data + self.take_buffered() if self.buf.tell() or self._held else data
        self._at = 0
        self._scan, self._scanned, self._held_is_all = scan, bytearray(), False
        if scan is not None:
            # The poller may have stopped before it scanned its last read (its hold full),
            # or not scanned at all (a client waiting for "100 Continue"): on from there.
            self._scanned = bytearray(data)
            self._scan_on()

    def chunk(self, size_hint: int | None = None) -> bytes:
        size = max(self.mxchunk, min(size_hint or 0, self.max_body_chunk))
        if self._at < len(self._held):
            piece = self._held[self._at : self._at + size]
            self._at += len(piece)
            return piece
        self._held, self._at = b"", 0
        if self._held_is_all:
            raise errors.ChunkMissingTerminator(b"a bare LF")
        return self._scanned_on(self._read(size, size_hint))

    def _read(self, size: int, size_hint: int | None) -> bytes:
        clock = self.clock
        if clock is None:
            return cast(bytes, super().chunk(size_hint))
        if clock.remaining <= 0:
            return b""  # its time is up (the watchdog shut the socket down): no more of it
        if self.sock.gettimeout() is None:
            # What the socket holds already is no wait for the client: under load, the
            # wait for the interpreter after a read was charged to it (fast clients cut).
            with contextlib.suppress(BlockingIOError, InterruptedError):
                return cast(bytes, self.sock.recv(size, socket.MSG_DONTWAIT))
        clock.run()
        try:
            return cast(bytes, super().chunk(size_hint))
        finally:
            clock.stop()

    def _scanned_on(self, piece: bytes) -> bytes:
        """`piece`, read, after the scan of the body it belongs to looked at it."""
        if self._scan is not None and piece:
            self._scanned += piece
            self._scan_on()
        return piece

    def _scan_on(self) -> None:
        """The scan, over what it has not looked at: at the body's end, cut short there,
        nothing is read past it (`hold`)."""
        assert self._scan is not None
        if self._scan.ended or self._scan.complete(self._scanned):
            self._held_is_all = self._scan.cut_short
            self._scan, self._scanned = None, bytearray()
        else:
            self._scan.forget_read(self._scanned)

    def take_buffered(self) -> bytes:
        """What was put back, then what is still held (gunicorn reads them so): a next
        request read with the last (`Worker.finish_request`)."""
        held, self._held, self._at = self._held[self._at :], b"", 0
        return cast(bytes, super().take_buffered()) + held


class _Arrival:
    """A request arriving on the poller: its bytes so far, and whether a thread can take it."""

    def __init__(self, conn: _Connection, since: float, body_limit: int) -> None:
        self.conn = conn
        self.since = since
        self.body_limit = body_limit  # a larger Content-Length: to a thread unread
        self.data = bytearray()
        self.head_end: int | None = None  # offset of the body, once the head is in
        self.body_left: int | None = None  # a Content-Length body: bytes still to come
        self.chunks: _ChunkScan | None = None  # a chunked body
        self.done = False

    def room(self) -> int:
        """How much to read next: no more than a head, or a request, may take."""
        return min(65536, self._limit() - len(self.data))

    def _limit(self) -> int:
        """What the poller holds of this request at most (HEAD_BUFFER_BYTES)."""
        return HEAD_BUFFER_BYTES if self.head_end is None else self.head_end + BODY_BUFFER_BYTES

    def add(self, data: bytes) -> bool:
        """The next bytes; True when the request is ready for a thread."""
        start = len(self.data)
        self.data += data
        if self.head_end is None and (empty := _empty_lines(self.data)):
            # Empty lines before a request line are ignored (RFC 9112 2.2), a bare LF's
            # too: some clients end a body with a line break they do not count.
            del self.data[:empty]
            start = max(0, start - empty)
        if self.head_end is not None and len(self.data) >= self._limit():
            return True
        if self.head_end is None:
            # Only the new bytes (and the three before them) are searched: a
            # head sent a byte at a time must not cost time quadratic in its size.
            searched = max(0, start - 3)
            end = self.data.find(b"\r\n\r\n", searched)
            if end < 0:
                return (
                    _BARE_LF.search(self.data, searched) is not None  # the parser refuses it
                    or len(self.data) >= HEAD_BUFFER_BYTES
                )
            self.head_end = end + 4
            if not self._expect_body(bytes(self.data[:end])):
                return True
            start = self.head_end
        if self.body_left is not None:
            self.body_left -= len(self.data) - start
            return self.body_left <= 0
        assert self.chunks is not None
        return self.chunks.complete(self.data)

    def _expect_body(self, head: bytes) -> bool:
        """Whether to wait for a body, and which; no for anything gunicorn will refuse."""
        lengths = _CONTENT_LENGTH.findall(head)  # the well-formed ones
        length_fields = len(_ANY_CONTENT_LENGTH.findall(head))
        coding_fields = len(_ANY_TRANSFER_ENCODING.findall(head))
        chunked = coding_fields == 1 and not length_fields and _CHUNKED.search(head)
        if chunked:
            # Scanned here, or, for a client that waits for "100 Continue", on the thread
            # (`_ReadFirst.hold`): a bare LF in it waited out the read timeout (a reviewer's).
            self.chunks = _ChunkScan(len(head) + 4)
        if _EXPECT.search(head):
            return False  # the client may be waiting for "100 Continue" first
        if chunked:
            return True
        if length_fields == 1 and not coding_fields and len(lengths) == 1:
            length = int(lengths[0])
            if 0 < length <= self.body_limit:  # larger: the app refuses it unread
                self.body_left = length
                return True
        return False


@dataclass(eq=False)
class _Exchange:
    """A response under way: what a pool thread needs to go on writing it (parking)."""

    req: Any
    conn: _Connection
    resp: Any  # gunicorn's wsgi.Response
    environ: dict[str, Any]
    respiter: Iterable[Any]
    started: datetime

    def __post_init__(self) -> None:
        self.items: Iterator[Any] = iter(self.respiter)


@dataclass(eq=False)
class _Linger:
    """A closing connection on the poller until the client's FIN."""

    sock: socket.socket
    until: float
    drained: int = 0
    done: bool = False


class _Connection(TConn):
    """gthread's connection, with the head the poller read; its graceful close is the worker's."""

    def __init__(self, linger: Callable[[socket.socket], None], *args: Any) -> None:
        super().__init__(*args)
        self._linger = linger
        self.head: bytes | None = None  # what the poller read of the request, for the parser
        self.head_scan: _ChunkScan | None = None  # a chunked body's, if it did not end
        self.head_wait = 0.0  # seconds that took

    def close(self, graceful: bool = False) -> None:
        if graceful:
            self._linger(self.sock)
        else:
            super().close()


class _SettledConfig(Config):
    """gunicorn's settings, each kept once read (point 8 above). Properties (`is_ssl`,
    `worker_class`, ...) are found before `__getattr__` and stay as they are."""

    def __getattr__(self, name: str) -> Any:
        value = super().__getattr__(name)
        self.__dict__[name] = value  # Config refuses setattr for a setting's name
        return value


class _MethodQueue(PollableMethodQueue):
    """gthread's queue of work for the main thread, except that what is deferred once it
    is closed is dropped: nobody would run it, and the byte that wakes the main thread
    would go to a descriptor number that may be another file's by then."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = threading.Lock()  # defer() and close() from different threads
        self._closed = False

    def defer(self, callback: Callable[..., Any], *args: Any) -> None:
        with self._closing:
            if not self._closed:
                super().defer(callback, *args)

    def close(self) -> None:
        with self._closing:
            self._closed = True
            super().close()


class Worker(ThreadWorker):
    """gthread with heads read on the poller, a read deadline, a non-blocking close, JSON errors."""

    wsgi: WsgiApp  # set by gunicorn's load_wsgi(); wrapped by ours
    alive: bool  # gunicorn's: False once the worker is stopping

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cfg.__class__ = _SettledConfig  # this process's copy (point 8 above)
        self.method_queue = _MethodQueue()  # point 9 above
        if self.cfg.is_ssl or self.cfg.http2_cleartext != "off":
            raise RuntimeError("assistant.worker.Worker serves plain HTTP/1.1 only")
        # Already read (and checked) once by the application at startup.
        self.server_settings = ServerSettings.from_env()
        self._read_timeout = self.server_settings.request_read_timeout_seconds
        self._watchdog = _Watchdog(self._read_timeout, self.server_settings.project_id)
        # The read clock of the request this thread serves, and its head as the poller took
        # it until gunicorn has parsed it.
        self._serving = threading.local()
        # Both in the order they time out: every wait lasts as long.
        self._arrivals: deque[_Arrival] = deque()
        self._lingering: deque[_Linger] = deque()
        self._buffered = 0  # bytes held by the arrivals
        self._lock = threading.Lock()  # for _parked, _writing and _in_app (pool threads)
        self._parked: set[_Exchange] = set()  # responses waiting for their resume()
        # Responses a pool thread writes now: a stopping worker ends them too, and at the
        # abandon cuts their sockets (a client that reads nothing held a write, and the
        # worker, up to SEND_TIMEOUT_SECONDS: past Cloud Run's kill, its reply unsaved).
        self._writing: set[_Exchange] = set()
        # The environs of requests whose app call runs on a pool thread (a JSON reply holds
        # its thread to the end), by id: a stopping worker ends their replies early too.
        self._in_app: dict[int, dict[str, Any]] = {}
        self._reserved: futures.ThreadPoolExecutor | None = None  # point 7 above
        self._stopping_since: float | None = None  # time.monotonic() of the stop signal
        app_settings = _app_settings()
        self._persist_timeout = app_settings.persist_timeout_seconds
        self._send_timeout = app_settings.send_timeout_seconds
        # The largest body the poller waits for: a larger one the app refuses unread (413),
        # at once, to a client that may wait for that before it sends the body.
        self._body_limit = min(BODY_BUFFER_BYTES, app_settings.max_body_bytes)
        self._stopped = False  # the main loop has ended
        self._arrivals_end_at: float | None = None  # a stopping worker's (`murder_pending`)
        self._abandoning: list[threading.Thread] = []  # ending parked replies, at the stop

    def run(self) -> None:
        self._watchdog.start()  # here, in the worker process: a thread does not survive a fork
        self._reserved = futures.ThreadPoolExecutor(RESERVED_THREADS, "reserved")
        try:
            super().run()
        finally:
            self._reserved.shutdown(wait=False)
            for arrival in self._arrivals:
                util.close(arrival.conn.sock)
            for linger in self._lingering:
                util.close(linger.sock)
            self._stopped = True  # the main loop is over: nothing more is deferred to it
            self._abandon_parked()  # any left once gunicorn's graceful wait is over
            for thread in self._abandoning:  # their saves, before the writes stop
                thread.join(self._time_left_to_save())
            finish_unwaited(self._time_left_to_save())  # those of clients that left
            late_saves.close(self._time_left_to_save())
            if not stop_writes(self._time_left_to_save()):
                # A store call that hangs, which Python would wait for at exit, past the
                # kill: what it was for is logged by now, and nothing else is left.
                process_log().error("worker.exit_with_writes_under_way")
                _exit_now()
        # Python's own exit waits for every thread that is no daemon, and one may still be
        # in a store call that hangs, outside the writes counted above (a reviewer saw a
        # worker log 55 s after the stop signal with the database hung, once): past
        # Cloud Run's kill. What each was for is logged by now; nothing else is left.
        self.log.info("Worker exiting (pid: %s)", os.getpid())  # gunicorn's line, skipped
        _exit_now()

    def _time_left_to_save(self) -> float:
        """How long messages no save wait could write (late_saves.py) may still be tried:
        until LATE_SAVES_BY_SECONDS after the stop signal, or a save wait's time."""
        if self._stopping_since is None:
            return self._persist_timeout
        until = min(LATE_SAVES_BY_SECONDS, float(self.cfg.graceful_timeout) - 1)
        return max(0.0, until - (time.monotonic() - self._stopping_since))

    # -- requests arriving, on the poller (main thread)

    def accept(self, listener: socket.socket) -> None:
        """gthread's accept(), except that the request is awaited on the poller."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        # (TConn makes the socket non-blocking; a thread makes it blocking again.)
        conn = _Connection(self._linger, self.cfg, client_sock, client_addr, listener.getsockname())
        self._await_request(conn)

    def on_client_socket_readable(self, conn: _Connection, client: socket.socket) -> None:
        """A kept-alive connection's next request: read now, as it is why the connection is
        readable (behind Cloud Run's front end, most requests come so); the rest, if any,
        is awaited on the poller."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_request(conn, readable=True)

    def _await_request(self, conn: _Connection, readable: bool = False) -> None:
        # Not read at once on a new connection: its request was there in 3 of 10
        # accepts at C=200, and the other 7 would pay a read that finds nothing.
        arrival = _Arrival(conn, time.monotonic(), self._body_limit)
        self._arrivals.append(arrival)
        if not (readable and self._receive(arrival, conn.sock)):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._receive, arrival))

    def _receive(self, arrival: _Arrival, _sock: socket.socket) -> bool:
        """What arrived; True once the arrival is over (its request whole, or its client
        gone)."""
        try:
            data = arrival.conn.sock.recv(arrival.room())
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:  # the client left before its request was complete
            self._end_arrival(arrival)
            self.nr_conns -= 1
            arrival.conn.close()
            return True
        return self._arrived(arrival, data)

    def _arrived(self, arrival: _Arrival, data: bytes) -> bool:
        """`data` of `arrival`; True once the request is whole (on its way to a thread),
        refused here, or not begun after all (idle again)."""
        held = len(arrival.data)
        ready = arrival.add(data)
        self._buffered += len(arrival.data) - held
        if not ready and arrival.head_end is None and not arrival.data:  # empty lines alone
            self._end_arrival(arrival)
            self._idle_again(arrival.conn)
            return True
        if ready or self._buffered > BUFFERED_BYTES:
            head = self._end_arrival(arrival)
            if arrival.head_end is None and len(head) >= HEAD_BUFFER_BYTES:
                # Refused here: gunicorn's parsers read on before they measure a head, so
                # on a thread one that stopped at this size held it for the read timeout.
                too_large = errors.LimitRequestHeaders("max buffer headers")
                self._serving.head = head  # its trace headers, for the refusal's trace id
                try:
                    self.handle_error(None, arrival.conn.sock, arrival.conn.client, too_large)
                finally:
                    self._serving.head = None
                self.nr_conns -= 1
                arrival.conn.close(graceful=True)  # the client may still send: it reads the 431
                return True
            arrival.conn.head = head
            arrival.conn.head_scan = arrival.chunks
            arrival.conn.head_wait = time.monotonic() - arrival.since
            self.enqueue_req(arrival.conn)
            return True
        return False

    def _idle_again(self, conn: _Connection) -> None:
        """A connection that sent only empty lines: kept alive, as after a response (it
        was held the read timeout, not the keep-alive's, and then logged as a request
        that timed out), its keep-alive counted from when it went idle: armed again
        with each empty line, one every second held a connection for ever (a
        reviewer's: 300 of them), and a stopping worker past Cloud Run's kill (another:
        30 s). On a stopping worker, no later than the stop's keep-alive linger from
        the stop; closed at once, a request the client sent right after an empty line
        went unanswered (another)."""
        if conn.timeout is None:  # a new connection's first empty lines: idle from now
            conn.set_timeout()
        if not self.alive:
            stop = self._stopping_since if self._stopping_since is not None else time.monotonic()
            conn.timeout = min(conn.timeout, stop + STOP_KEEPALIVE_LINGER)
        # In its place by deadline: behind a later one (a stream's, ended after it went
        # idle), the sweep reached it only after that one's (a reviewer).
        later = (at for at, kept in enumerate(self.keepalived_conns) if kept.timeout > conn.timeout)
        self.keepalived_conns.insert(next(later, len(self.keepalived_conns)), conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_client_socket_readable, conn)
        )

    def enqueue_req(self, conn: _Connection) -> None:
        """gthread's, except that /health and preflights go to their own threads (point 7)."""
        if self._reserved is None or not _reserved_request(conn.head):
            super().enqueue_req(conn)
            return
        self._submit(self._reserved, conn, self.handle, conn)

    def _submit(
        self, pool: futures.Executor, conn: _Connection, work: Callable[[Any], Any], arg: Any
    ) -> None:
        """`work(arg)` on `pool`, then gthread's finish_request for `conn` on the main
        thread, as gthread's enqueue_req does. RuntimeError: the pool is shut down."""
        future = pool.submit(work, arg)
        future.add_done_callback(
            lambda done: self.method_queue.defer(self.finish_request, conn, done)
        )

    def _end_arrival(self, arrival: _Arrival) -> bytes:
        """Off the poller, with what had arrived; the arrival keeps none of it (it can stay
        queued behind an older one until the sweep reaches it)."""
        arrival.done = True
        data, arrival.data = bytes(arrival.data), bytearray()
        self._buffered -= len(data)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(arrival.conn.sock)
        return data

    def murder_pending(self) -> None:
        """gthread's sweep of deferred connections, then ours of arrivals and closes that timed out.

        The main loop calls it on every turn, at least once a second.
        """
        super().murder_pending()
        now = time.monotonic()
        stopping_for = None if self._stopping_since is None else now - self._stopping_since
        abandons_at = min(STOP_SAVE_SECONDS, max(0.0, self.cfg.graceful_timeout - 3))
        ends_at = stop_end_seconds(abandons_at, self._persist_timeout)
        stopped_reading = False
        if stopping_for is not None and stopping_for >= ends_at:
            self._end_streams_early()  # every turn: a stream busy on a thread the last time
            replies_in_flight.end_stuck()  # their clients take nothing: ended now, saved
            # Requests still arriving too (a connection that sent nothing, a head or body
            # half sent): each kept the worker REQUEST_READ_TIMEOUT_SECONDS from when it
            # began, past Cloud Run's kill, and the late saves, tried after the last
            # connection closed, had no time left (a reviewer). A stopping worker would
            # answer them 503 anyway.
            self._watchdog.end_reads_within(STOP_READ_SECONDS)
            if self._arrivals_end_at is None:  # a whole request still comes in that second
                self._arrivals_end_at = now + STOP_READ_SECONDS
            stopped_reading = now >= self._arrivals_end_at
        if stopping_for is not None and stopping_for >= abandons_at:
            self._abandon_parked()
        while self._arrivals and (
            stopped_reading
            or self._arrivals[0].done
            or self._arrivals[0].since + self._read_timeout <= now
        ):
            arrival = self._arrivals.popleft()
            if not arrival.done:
                received = self._end_arrival(arrival)
                self.nr_conns -= 1
                arrival.conn.close()
                # One that never sent a byte is only idle: closed quietly, as gthread does;
                # so is one that sent the empty line HTTP lets a server ignore before a
                # request line (some clients end a body with a CRLF they do not count).
                if received not in _NO_REQUEST_BEGUN:
                    log = RequestLog(_head_trace_id(received), self.server_settings.project_id)
                    reading = "head" if arrival.head_end is None else "body"
                    seconds = self._read_timeout
                    if arrival.since + seconds <= now:
                        log.warning("request.read_timeout", reading=reading, seconds=seconds)
                    else:
                        log.warning("request.ended_at_the_stop", reading=reading)
        while self._lingering and (self._lingering[0].done or self._lingering[0].until <= now):
            self._end_linger(self._lingering.popleft())

    # -- the read deadline (pool threads)

    def handle(self, conn: _Connection) -> Any:
        clock = _ReadClock(self._watchdog, conn, max(0.0, self._read_timeout - conn.head_wait))
        self._serving.clock = clock
        clock.run()  # for a head the poller did not read whole, or pipelined requests
        try:
            if conn.head is not None:
                # The parser reads what the poller read first; gthread's handle()
                # then finds the connection initialized and does not wait for data.
                conn.init()
                _ReadFirst.on(conn.parser).hold(conn.head, conn.head_scan)
                # Kept for a refusal's trace id: gunicorn's errors carry no headers.
                self._serving.head = conn.head
                conn.head, conn.head_wait, conn.head_scan = None, 0.0, None
            elif conn.parser is not None:
                # Defensive: a request read with the last one comes through the poller
                # (`finish_request`); should one come here, it is parsed a read at a time.
                _ReadFirst.on(conn.parser).hold(b"")
            return super().handle(conn)
        finally:
            clock.stop()
            self._serving.clock = self._serving.head = None

    def load_wsgi(self) -> None:
        super().load_wsgi()
        _without_body_reads(self.wsgi)
        self.wsgi = self._clocked(self.wsgi)

    def _clocked(self, app: WsgiApp) -> WsgiApp:
        def clocked_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            self._serving.head = None  # parsed: a refusal from here on has its headers
            clock: _ReadClock | None = getattr(self._serving, "clock", None)
            if clock is not None:
                clock.stop()  # the head is in; the app's own time is not the client's
                clock.reading = "body"
                clock.environ = environ
                invitation = environ.get(CONTINUE)
                parser = getattr(clock.conn, "parser", None)
                reader = getattr(parser, "unreader", None)
                environ["wsgi.input"] = _ClockedInput(
                    environ["wsgi.input"],
                    clock,
                    invitation,
                    reader if isinstance(reader, _ReadFirst) else None,
                )
            _without_keep_alive_header(start_response)
            if not environ.get("PATH_INFO"):  # `GET http://host`: `/` (RFC 9112 3.2.2),
                environ["PATH_INFO"] = "/"  # which Flask redirected to in HTML
            return app(environ, start_response)

        return clocked_app

    # -- parking (point 6 above)

    def handle_request(self, req: Any, conn: _Connection) -> Any:
        """gthread's, with the body written by `_write_body`, which may park it."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            started = datetime.now()
            # `100 Continue` when the app reads the body, not before it runs (point 10).
            awaits_continue = getattr(req, "_expected_100_continue", False) is True
            if awaits_continue:
                req._expected_100_continue = False
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            if awaits_continue:
                environ[CONTINUE] = _Continue(conn.sock)
            environ["wsgi.multithread"] = True
            environ[PARKING] = True
            environ[HEAD] = partial(_head_for_the_app, resp)
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            full = len(self.keepalived_conns) >= self.max_keepalived
            if not self.alive or not self.cfg.keepalive or full or _asks_to_close(req):
                resp.force_close()
            with self._lock:
                self._in_app[id(environ)] = environ
            try:
                respiter = self.wsgi(environ, resp.start_response)
            finally:
                with self._lock:
                    self._in_app.pop(id(environ), None)
            # A body left unread that must not be drained, or one gunicorn could not read
            # (its framing broken: where a next request would start is unknown).
            unread = _body_left_unread(environ, self._body_limit)
            if unread or getattr(req.body, "failed", False) is True:
                resp.force_close()
        except BaseException:
            self._post_request(req, environ, resp)
            raise
        return self._write_body(_Exchange(req, conn, resp, environ, respiter, started))

    def _write_body(self, exchange: _Exchange) -> Any:
        """Write the body on until it ends (whether the connection may serve another
        request, as gthread's handle_request says) or parks (`_PARKED`)."""
        with self._lock:
            self._writing.add(exchange)
        result = None
        try:
            result = self._write_body_on(exchange)
            return result
        finally:
            if result is not _PARKED:  # parked, it left _writing in _park(): it may be
                with self._lock:  # resumed, and written by another thread, already
                    self._writing.discard(exchange)
                if exchange.environ.get(_SEND_BOUNDED_HERE):
                    with contextlib.suppress(OSError):
                        exchange.conn.sock.settimeout(None)

    def _write_body_on(self, exchange: _Exchange) -> Any:
        resp = exchange.resp
        sock = exchange.conn.sock
        if sock.gettimeout() is None:  # no send timeout of the app's (the assistant route's)
            # gthread's sockets block without end: an answer to a client that reads nothing
            # (a preflight, a refusal) held its thread for ever. Only for this answer: the
            # connection's next request may read its body on the read clock's time.
            reserved = threading.current_thread().name.startswith("reserved")
            sock.settimeout(RESERVED_SEND_SECONDS if reserved else self._send_timeout)
            exchange.environ[_SEND_BOUNDED_HERE] = True
        try:
            if isinstance(exchange.respiter, exchange.environ["wsgi.file_wrapper"]):
                resp.write_file(exchange.respiter)
            else:
                for item in exchange.items:
                    if hasattr(item, "arm"):
                        self._park(exchange, item)
                        return _PARKED
                    if isinstance(item, Instead):
                        item = _answer_instead(resp, item)
                    resp.write(item)
            _close_body(resp, sock)
        except TimeoutError as exc:
            # A client that took no write in time (the send timeout, or the brief one
            # past half of THREADS: limits.py) is a client gone, said in a line of ours
            # with its trace id, not a traceback of gunicorn's.
            self._end_quietly(exchange)
            RequestLog(exchange.environ.get(TRACE_ID), self.server_settings.project_id).warning(
                "response.cut", reason="the client took no write in time"
            )
            raise BrokenPipeError(errno.EPIPE, "the client took no write in time") from exc
        except OSError:
            self._end_quietly(exchange)
            raise
        except (Exception, SystemExit):
            self._end_quietly(exchange)
            if resp.headers_sent:  # a 500 now would corrupt the response
                self.log.exception("Error handling request")
                util.close_graceful(exchange.conn.sock)
                raise StopIteration() from None
            raise
        try:
            self._end(exchange)
        except Exception:  # the response went out whole: no 500 after it
            self.log.exception("Error handling request")
            util.close_graceful(exchange.conn.sock)
            raise StopIteration() from None
        return not resp.should_close()

    def _park(self, exchange: _Exchange, parkable: Parkable) -> None:
        with self._lock:
            self._parked.add(exchange)
            self._writing.discard(exchange)
        try:
            parkable.arm(partial(self._resume, exchange))
        except BaseException:
            with self._lock:
                self._parked.discard(exchange)  # never to be resumed: ended by the caller
            raise

    def _end(self, exchange: _Exchange) -> None:
        """gthread's end of a response: the access log, the app's close, post_request."""
        self.log.access(exchange.resp, exchange.req, exchange.environ,
                        datetime.now() - exchange.started)  # fmt: skip
        try:
            if hasattr(exchange.respiter, "close"):
                exchange.respiter.close()
        finally:
            self._post_request(exchange.req, exchange.environ, exchange.resp)

    def _end_quietly(self, exchange: _Exchange) -> None:
        """`_end()` for a response already failing: its own failure is only logged."""
        try:
            self._end(exchange)
        except Exception:
            self.log.exception("Error closing the response")

    def _post_request(self, req: Any, environ: dict[str, Any], resp: Any) -> None:
        try:
            self.cfg.post_request(self, req, environ, resp)
        except Exception:
            self.log.exception("Exception in post_request hook")

    def _resume(self, exchange: _Exchange) -> None:
        """A parked response has more to write: back to a pool thread (from any thread)."""
        with self._lock:
            if exchange not in self._parked:
                return  # ended at the worker's stop
            self._parked.remove(exchange)
        try:
            self._submit(self.tpool, exchange.conn, self._go_on, exchange)
        except RuntimeError:  # the pool is shut down: the worker is stopping
            self._abandon_aside(exchange)

    def _go_on(self, exchange: _Exchange) -> Any:
        """gthread's handle() for a parked response, on a pool thread."""
        try:
            return self._keepalive_after(exchange.conn, self._write_body(exchange))
        except StopIteration:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            return False
        except Exception:
            self.log.exception("Error handling request")
            return False

    def _end_streams_early(self) -> None:
        """The replies under way end now through the app's own way (`STOP_EARLY`): the
        parked responses (streams: a terminal frame, then [DONE]; one still waiting for
        its first chunk, its head not out: 503 `overloaded`, before a first chunk could
        open it only to end it) and those still in the app's call (a JSON reply: 503
        `overloaded`), their text saved. Each is told once, those a pool thread writes
        now too."""
        with self._lock:
            environs = [exchange.environ for exchange in (*self._parked, *self._writing)]
            environs += self._in_app.values()
        for environ in environs:
            stop = environ.get(STOP_EARLY)
            if stop is not None and not environ.get(_TOLD_TO_STOP):
                environ[_TOLD_TO_STOP] = True
                try:
                    stop()
                except Exception:
                    self.log.exception("Error ending a reply early")

    def _abandon_parked(self) -> None:
        """The replies parked now end as a client that left would (upstream cancelled,
        what arrived saved), side by side; so do those a pool thread still writes (to a
        client that takes nothing): their sockets shut, the write fails at once."""
        with self._lock:
            parked, self._parked = self._parked, set()
            writing = list(self._writing)
        for exchange in parked:
            self._abandon_aside(exchange)
        for exchange in writing:
            if exchange.environ.get(_CUT_AT_THE_STOP):
                continue
            exchange.environ[_CUT_AT_THE_STOP] = True
            RequestLog(exchange.environ.get(TRACE_ID), self.server_settings.project_id).warning(
                "response.cut", reason="the worker is stopping and the client took no write"
            )
            with contextlib.suppress(OSError):
                exchange.conn.sock.shutdown(socket.SHUT_RDWR)

    def _abandon_aside(self, exchange: _Exchange) -> None:
        """End a parked response that will not be resumed, as a client that left, on a
        thread of its own: never on the I/O loop (the reply waits for its chain, which
        runs there, then saves), and side by side with the others; the worker's end
        waits for it while there is time to save (`run`)."""
        thread = threading.Thread(target=self._abandon, args=(exchange,), name="abandon")
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: here, then
            self._abandon(exchange)
        else:
            self._abandoning.append(thread)

    def _abandon(self, exchange: _Exchange) -> None:
        resp = exchange.resp
        if not resp.headers_sent:  # a reply still waiting for its first chunk: nothing shown
            close = getattr(exchange.respiter, "close", None)
            try:
                if close is not None:
                    close()  # the app first: nothing of its is written after this
                if not resp.headers_sent:
                    _answer_stopping(resp, self.server_settings.project_id)
            except Exception:
                self.log.exception("Error ending a parked response")
        self._end_quietly(exchange)
        util.close(exchange.conn.sock)
        # Counted off on the main thread, which counts connections (and waits for them
        # to stop), unless its loop is over (its queue is closed then).
        if not self._stopped:
            self.method_queue.defer(self._connection_ended)

    def _connection_ended(self) -> None:
        self.nr_conns -= 1

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._stopping_since is None:
            self._stopping_since = time.monotonic()
            replies_in_flight.stopping = True  # a reply asked for now: 503 at once
        super().handle_exit(sig, frame)

    def _keepalive_after(self, conn: _Connection, keepalive: Any) -> Any:
        """gthread's, which drains a body the app left unread; a body whose framing breaks
        in that drain closes the connection. gthread let the parse error through, and
        its handler answered it: a second response to one request (point 10)."""
        if keepalive is _PARKED:
            return _PARKED
        try:
            return super()._keepalive_after(conn, keepalive)
        except errors.ParseException:
            return False

    def finish_request(self, conn: _Connection, fs: Any) -> None:
        """gthread's, except for a response that parked (it is still under way), and a
        kept-alive connection whose next request was read already (pipelined)."""
        kept = not fs.cancelled() and fs.exception() is None and fs.result()
        if kept is _PARKED:
            return
        if kept is True and conn.parser is not None:
            read_ahead = conn.parser.unreader.take_buffered()
            if read_ahead:
                self._await_read_ahead(conn, read_ahead)
                return
        super().finish_request(conn, fs)

    def _await_read_ahead(self, conn: _Connection, read_ahead: bytes) -> None:
        """A connection's next request, of which `read_ahead` was read with the last one,
        awaited on the poller as any request is (point 1). gthread gave it to a thread at
        once, which waited for the rest of it: a reviewer's requests trickled behind
        others held every thread, each piece with a read clock of its own."""
        conn.sock.setblocking(False)
        # Idle, if empty lines were all it read, from this response's end (`_idle_again`
        # keeps a deadline it finds: the last response's had passed, and a client that
        # ends each body with a stray CRLF had its connection closed: a reviewer's).
        conn.set_timeout()
        arrival = _Arrival(conn, time.monotonic(), self._body_limit)
        self._arrivals.append(arrival)
        if not self._arrived(arrival, read_ahead):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._receive, arrival))

    # -- the graceful close, on the poller (main thread)

    def _linger(self, sock: socket.socket) -> None:
        """Close the way util.close_graceful does, without waiting for the client here.

        Our FIN goes out now; the socket then waits on the poller until the
        client's FIN, LINGER_MAX_BYTES of leftovers, or LINGER_SECONDS.
        Closing with request bytes unread would send a reset, which can cut
        the response short for the client.
        """
        linger = _Linger(sock, time.monotonic() + LINGER_SECONDS)
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ, partial(self._drain, linger))
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self._lingering.append(linger)

    def _drain(self, linger: _Linger, _sock: socket.socket) -> None:
        try:
            data = linger.sock.recv(LINGER_MAX_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        linger.drained += len(data)
        if not data or linger.drained >= LINGER_MAX_BYTES:
            self._end_linger(linger)

    def _end_linger(self, linger: _Linger) -> None:
        if linger.done:
            return
        linger.done = True
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(linger.sock)
        util.close(linger.sock)

    # -- refusals

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """Our JSON error instead of gunicorn's HTML page, then the connection closes."""
        status, code, message = refusal(exc, self.cfg)
        parsed = getattr(req, "headers", None) or getattr(getattr(exc, "req", None), "headers", [])
        headers = cast("Mapping[str, str]", Headers(parsed))  # gets names in any case
        # Refused before its headers were parsed (a 431), a request's trace headers are
        # read from the bytes of its head the poller took, if any.
        trace_id = trace_id_from_headers(headers) or _head_trace_id(
            getattr(self._serving, "head", None) or b""
        )
        log = RequestLog(trace_id, self.server_settings.project_id)
        if (status, code, message) == _INTERNAL:
            log.exception("request.crashed", exc)
        else:
            log.info("request.refused", status=status, code=code, reason=message)
        body = _error_json(message, code, trace_id)
        # A page reads the refusal, not a network error: gunicorn refuses a request
        # before its headers are all parsed, so its Origin is known only sometimes; with
        # every origin allowed (the default) none is needed.
        origins = cors_origins()
        origin = headers.get("Origin") or ("null" if "*" in origins else None)
        cors = "".join(
            f"{name}: {value}\r\n" for name, value in cors_headers(origin, origins).items()
        )
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            "Connection: close\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"{cors}"
            f"X-Trace-Id: {trace_id}\r\n\r\n"
        )
        with contextlib.suppress(Exception):  # the client may be gone; nothing else to do
            util.write_nonblock(client, head.encode("latin-1") + body)


_INTERNAL: tuple[int, ErrorCode, str] = (500, "internal_error", MESSAGES["internal_error"])

_MALFORMED: dict[type[BaseException], str] = {
    errors.InvalidRequestLine: "the request line is malformed",
    errors.InvalidRequestMethod: "the request method is invalid",
    errors.InvalidHTTPVersion: "the HTTP version is not supported",
    errors.InvalidHeaderName: "a header name is invalid",
    errors.ObsoleteFolding: "a header is folded over several lines",
    errors.InvalidSchemeHeaders: "the scheme headers contradict each other",
    errors.InvalidChunkSize: "the chunked body is malformed",
    errors.ChunkMissingTerminator: "the chunked body is malformed",
    errors.InvalidChunkExtension: "the chunked body is malformed",
}


def _error_json(message: str, code: ErrorCode, trace_id: str) -> bytes:
    """Our JSON error body (the app's, assistant/http.py)."""
    payload = {"error": message, "code": code, "trace_id": trace_id}
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


# Kept from the app's answer when the worker answers in its place (CORS, the trace).
_KEPT_HEADERS = re.compile(r"access-control-.*|vary|x-trace-id", re.I)


def _close_body(resp: Any, sock: socket.socket) -> None:
    """gunicorn's end of a response, which writes a chunked body's last chunk: a write
    like any other, one of the half of THREADS that may wait on clients, else brief
    (limits.py). It waited the whole send timeout uncounted: clients that took nothing
    past their final frame held every thread (a reviewer)."""
    writers = replies_in_flight.writers
    if writers.acquire():
        try:
            resp.close()
        finally:
            writers.release()
        return
    with briefly(sock):
        resp.close()


def _exit_now() -> None:
    """The worker's end, without Python's: what is written is out, no thread waited for."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


def _answer_stopping(resp: Any, project_id: str) -> None:
    """A stopping worker's answer to a request whose response has no head out yet: 503
    `overloaded` with Retry-After (another instance may take it), with the app's CORS
    headers and trace id, in place of the response begun."""
    kept = [(name, value) for name, value in resp.headers if _KEPT_HEADERS.fullmatch(name)]
    trace_id = next((value for name, value in kept if name.lower() == "x-trace-id"), None)
    trace_id = trace_id or new_trace_id()
    body = _error_json(MESSAGES["overloaded"], "overloaded", trace_id)
    RequestLog(trace_id, project_id).info(
        "request.refused", status=503, code="overloaded", reason="the worker is stopping"
    )
    headers = [*kept, ("Content-Type", "application/json"),
               ("Retry-After", str(STOPPING_RETRY_AFTER_SECONDS)),
               ("Content-Length", str(len(body)))]  # fmt: skip
    resp.force_close()
    with contextlib.suppress(OSError):
        resp.write(_answer_instead(resp, Instead("503 Service Unavailable", headers, body)))


def stop_end_seconds(abandons_at: float, persist_timeout: float) -> float:
    """When a stopping worker ends the streams still under way: STOP_END_SECONDS at most,
    and early enough that their save wait and a second more end before they would be
    abandoned (`abandons_at`)."""
    return max(0.0, min(STOP_END_SECONDS, abandons_at - persist_timeout - 1.0))


def _app_settings() -> Settings:
    """The app's settings (their defaults when they are invalid: the app then refuses
    every request anyway)."""
    try:
        return request_settings()
    except ConfigError:
        return Settings.from_env({})


def _asks_to_close(req: Any) -> bool:
    """Whether `close` is among the request's Connection options, wherever it stands
    (point 5): gunicorn heeds only a first such header whose whole value is `close`."""
    return any(
        name == "CONNECTION" and "close" in (option.strip() for option in value.lower().split(","))
        for name, value in req.headers
    )


def _body_left_unread(environ: Mapping[str, Any], body_limit: int) -> bool:
    """Whether the app answered without reading a body it should not be drained for
    (point 10): one it did not ask for (`Expect: 100-continue`), whose client may send
    it all the same; one the poller did not wait for (over `body_limit`), which gthread
    would wait for with the thread, its client perhaps waiting for our answer first;
    one of UNREAD_BODY_DRAIN_BYTES or more, which gthread's drain would read before it
    closes anyway (it gives up on reaching that cap); or a chunked one not read to its end
    (a refusal before it, or a 413 midway), whose size nobody knows (gthread gives up
    on it after 64 KiB, and closed with no `Connection: close` said)."""
    invitation = environ.get(CONTINUE)
    if invitation is not None and not invitation.sent:
        return True
    body = environ.get("wsgi.input")
    if not isinstance(body, _ClockedInput) or body.ended:
        return False
    declared = environ.get("CONTENT_LENGTH") or ""
    if declared.isdigit():
        length = int(declared)
        return not body.touched and (length > body_limit or length >= UNREAD_BODY_DRAIN_BYTES)
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def _without_body_reads(app: Any) -> None:
    """functions-framework's `read_request` taken off its app's after-request steps
    (point 10); an app without it is left as it is."""
    steps = getattr(app, "after_request_funcs", {}).get(None, [])
    if functions_framework.read_request in steps:
        steps.remove(functions_framework.read_request)


def _head_for_the_app(resp: Any) -> bytes:
    """The response's head as gunicorn would send it, for the app to send itself (with
    its first frame, from its I/O loop, while the response is parked); gunicorn then
    sends no head of its own. Only once the status is final; b"" if the head is out."""
    if resp.headers_sent:
        return b""
    lines = resp.default_headers()
    lines.extend(f"{name}: {value}\r\n" for name, value in resp.headers)
    lines.append("\r\n")
    resp.headers_sent = True
    return "".join(lines).encode("latin-1")


def _answer_instead(resp: Any, instead: Instead) -> bytes:
    """`resp` turned into `instead`, as the app's second start_response would (WSGI allows
    it before the head is out); the body to write."""
    if resp.headers_sent:
        raise RuntimeError("a response can change only before its head is sent")
    resp.status, resp.headers, resp.response_length = None, [], None
    resp.start_response(instead.status, instead.headers)
    return instead.body


def _without_keep_alive_header(start_response: Callable[..., Any]) -> None:
    """No `Connection: keep-alive` on an HTTP/1.1 answer (point 5 above).

    gunicorn makes its response object before the app runs; its class is
    changed, not a method set on it, which would tie the two in a reference
    cycle that only the cyclic collector frees.
    """
    response: Any = getattr(start_response, "__self__", None)
    if type(response) is wsgi.Response and response.req.version >= (1, 1):
        response.__class__ = _KeepAliveImplied


class _KeepAliveImplied(wsgi.Response):
    """gunicorn's response, without `Connection: keep-alive`."""

    def default_headers(self) -> list[str]:
        headers: list[str] = super().default_headers()
        return [line for line in headers if line != "Connection: keep-alive\r\n"]


def refusal(exc: BaseException, cfg: Config) -> tuple[int, ErrorCode, str]:
    """(status, code, message) for an error gunicorn raised before the app ran.

    414 `uri_too_long` for the request line (RFC 9112 §3 says MUST), 431
    `headers_too_large` for a header or all of them (RFC 6585), else 400
    `invalid_request`, also where gunicorn would say 501 (a transfer coding
    other than chunked: one answer for every framing we refuse) or 417 (an
    Expect other than 100-continue, which RFC 9110 lets us refuse with any
    4xx). Messages are fixed sentences that name the problem; they never
    repeat what the client sent beyond a header name.
    """
    if isinstance(exc, errors.LimitRequestLine):
        return (
            414,
            "uri_too_long",
            f"the request line is longer than {cfg.limit_request_line} bytes",
        )
    if isinstance(exc, errors.LimitRequestHeaders):
        return 431, "headers_too_large", _headers_too_large(str(exc), cfg)
    if isinstance(exc, errors.InvalidResponseHeader | errors.InvalidResponseHeaderName):
        return _INTERNAL  # a header the app tried to send: our fault
    if isinstance(exc, errors.InvalidHeader):
        return 400, "invalid_request", _invalid_header(exc)
    if isinstance(exc, errors.UnsupportedTransferCoding):
        return 400, "invalid_request", "Transfer-Encoding must be chunked"
    if isinstance(exc, errors.ExpectationFailed):
        return 400, "invalid_request", "the only Expect understood is 100-continue"
    if isinstance(exc, errors.ConfigurationProblem):
        return _INTERNAL
    if isinstance(exc, errors.ParseException):
        return 400, "invalid_request", _MALFORMED.get(type(exc), "the request is malformed")
    return _INTERNAL


def body_refusal(exc: BaseException) -> str | None:
    """What is wrong with a request body whose chunked framing or trailers gunicorn
    refused while the app read it (a 400's message); None for any other error."""
    if isinstance(exc, errors.LimitRequestHeaders):
        return "the request's trailers are too large"
    if isinstance(exc, errors.ParseException):
        return _MALFORMED.get(type(exc), "the chunked body is malformed")
    return None


def _headers_too_large(detail: str, cfg: Config) -> str:
    if detail == "limit request headers fields":
        return f"more than {cfg.limit_request_fields} header fields"
    if detail == "limit request headers fields size":
        return f"a header field is longer than {cfg.limit_request_field_size} bytes"
    return "the request headers are too large"


def _invalid_header(exc: errors.InvalidHeader) -> str:
    name = str(exc.hdr)
    if name == "CONTENT-LENGTH":
        names = [field for field, _ in getattr(exc.req, "headers", [])]
        if "TRANSFER-ENCODING" in names:
            return "Content-Length and Transfer-Encoding must not both be sent"
        if names.count("CONTENT-LENGTH") > 1:
            return "Content-Length must be sent once"
        return "Content-Length must be a whole number of bytes"
    if name == "TRANSFER-ENCODING":
        return "Transfer-Encoding must be chunked, sent once, on HTTP/1.1"
    if _HEADER_NAME.fullmatch(name):
        return f"the {name.title()} header is invalid"
    return "a header line is malformed"
