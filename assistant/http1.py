"""HTTP/1.1 for the providers' requests, under httpx's API: a transport of our own.

Why not aiohttp (rounds 2 to 9 of issue 11) or httpcore: a provider's
stream is thousands of small chunked reads, and what a read costs is most of
what relaying a chunk costs. Per read aiohttp ran about fifteen Python
calls (its protocol, its parser's callbacks, a StreamReader, a timer
re-armed per read, flow control resumed per read), httpcore more. Here a
read is two: the connection's `data_received`, which undoes the chunked
framing as bytes arrive, and the body's `__anext__`, which takes whatever is
in; or one, when the reader pushes (`Body.push`): `data_received` hands the
bytes to the reader's sink itself, and no task wakes (round 11). The idle
timeout is one timer per connection, moved only when it fires (README
"Speed", round 10).

What it does, and no more, as the providers need: HTTP and HTTPS
(`ssl=` on the loop's own connection), a request whose body is bytes, a
response framed by `Transfer-Encoding: chunked`, `Content-Length` or the
connection's end, connections kept for `keepalive_seconds` for the next
request to the same origin (a request that a kept connection's server
closed on at once, with not a byte of an answer, is sent again once on a
new connection), no cookies, no proxies, no HTTP/2. Failures are
the httpx exceptions httpcore raises for the same ones, so the chain's error
codes (`translate_http_error`) do not depend on the transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
from collections.abc import Callable
from typing import Any

import aiohappyeyeballs
import httpx

# Whatever a response's head may take; a longer one is not an HTTP server we know.
MAX_HEAD_BYTES = 64 * 1024
# Unread body bytes at which the socket stops being read (a slow reply's
# client holds its chain back; the upstream then waits in TCP, not in memory).
MAX_UNREAD_BYTES = 1024 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NO_BODY_STATUS = frozenset({204, 304})
# How long a response its reader closed after the answer's last event may take
# to end its body (the chunked terminator usually comes a moment later).
DRAIN_SECONDS = 0.1

# How soon after a request went out on a kept connection a close with no answer says
# the server had closed it before the request came (the keep-alive race), not that it
# dropped a request it had begun on: a round trip, with room to spare.
STALE_CLOSE_SECONDS = 0.5

Origin = tuple[str, str, int]
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx requests over our `_Connection`s, one pool of idle ones per origin. Used on
    one event loop (the I/O loop's), as httpx's async transports are."""

    def __init__(self, tls: ssl.SSLContext, keepalive_seconds: float) -> None:
        self._tls = tls
        self._keepalive = keepalive_seconds
        self._idle: dict[Origin, list[_Connection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme, 80))
        body = await request.aread()  # our requests are bytes; a stream is read whole
        data = _request_head(request, body) + body
        no_body = request.method == "HEAD"
        kept = self._idle_connection(origin)
        if kept is not None:
            sent = asyncio.get_running_loop().time()
            try:
                return _response(request, kept, *await _exchange(kept, data, timeout, no_body))
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # A server may close a kept connection as the request goes out (its own
                # idle timeout ran out first): closed at once, with not a byte of an
                # answer, it never took the request up, and a new connection asks again.
                # Closed later, it may have begun the work: asking again could bill it
                # twice, so that is the provider's failure.
                waited = asyncio.get_running_loop().time() - sent
                if not kept.answered_nothing or waited > STALE_CLOSE_SECONDS:
                    raise
        connection = await self._connect(origin, timeout)
        return _response(request, connection, *await _exchange(connection, data, timeout, no_body))

    async def aclose(self) -> None:
        self._closed = True  # responses still being read close their connections after
        for connections in self._idle.values():
            for connection in connections:
                connection.abort()
        self._idle.clear()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def _idle_connection(self, origin: Origin) -> _Connection | None:
        """The newest idle connection to `origin` still open and within its keep-alive."""
        connections = self._idle.get(origin)
        deadline = asyncio.get_running_loop().time() - self._keepalive
        while connections:
            connection = connections.pop()
            if connection.reusable and connection.idle_since >= deadline and connection.quiet():
                return connection
            connection.abort()
        return None

    async def _connect(self, origin: Origin, timeout: dict[str, float | None]) -> _Connection:
        scheme, host, port = origin
        if scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"no {scheme!r} upstreams")
        tls = self._tls if scheme == "https" else None
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout.get("connect")):
                addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                # RFC 8305's happy eyeballs (uvloop's create_connection has none):
                # a host whose IPv6 route is broken still connects over IPv4 at once.
                sock = await aiohappyeyeballs.start_connection(addresses, happy_eyeballs_delay=0.25)
                _, connection = await loop.create_connection(
                    lambda: _Connection(self, origin),
                    sock=sock,
                    ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection to {host} within the timeout") from exc
        except (OSError, ssl.SSLError) as exc:  # refused, DNS, the TLS handshake
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return connection

    def keep(self, connection: _Connection) -> None:
        """`connection` finished a response and may carry the next request."""
        if self._closed:
            connection.abort()
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle.setdefault(connection.origin, []).append(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(self._keepalive, self._close_expired)

    def _close_expired(self) -> None:
        """Idle connections past their keep-alive are closed even with no request to
        notice them (one timer per transport, while any connection is idle)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self._keepalive
        for origin, connections in list(self._idle.items()):
            kept: list[_Connection] = []
            for connection in connections:
                if connection.reusable and connection.idle_since >= deadline:
                    kept.append(connection)
                else:
                    connection.abort()
            if kept:
                self._idle[origin] = kept
            else:
                del self._idle[origin]
        if self._idle:
            self._sweep = loop.call_later(self._keepalive, self._close_expired)


# The response extension that holds a response's `Body` (aio.BodyFeed, aio.body_chunks).
RAW_BODY = "assistant.http1_body"


def _request_head(request: httpx.Request, body: bytes) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (request.method.encode(), request.url.raw_path)]
    for name, value in request.headers.raw:
        if name.lower() == b"transfer-encoding":
            continue  # a streamed body (httpx framed it chunked) goes read whole, with its length
        if _breaks_a_line(name) or _breaks_a_line(value):
            # It would end the head early, or smuggle in a header of its own (a key
            # pasted with its newline, say): h11 refuses it too.
            raise httpx.LocalProtocolError(f"a line break or NUL in request header {name!r}")
        lines.append(b"%s: %s" % (name, value))
    if body and "content-length" not in request.headers:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _breaks_a_line(field: bytes) -> bool:
    return len(field.translate(None, b"\r\n\0")) != len(field)


class Body(httpx.AsyncByteStream):
    """A response's body as it arrives: each `__anext__` takes every byte that came
    since the last one (an empty read is the end). One per response: once closed,
    it reads nothing more, even while its connection carries the next one."""

    def __init__(self, connection: _Connection) -> None:
        self._connection = connection
        self._closed = False

    def read_timeout(self, seconds: float) -> None:
        """From now on a read waits `seconds` at most for the next byte."""
        if not self._closed:  # after the close, the connection's timer is its drain's
            self._connection.set_read_timeout(seconds)

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if self._closed:
            raise httpx.StreamClosed()
        connection = self._connection
        while not connection.pieces:
            waiter = connection.body_wait()
            if waiter is None:
                raise StopAsyncIteration
            await waiter
        return connection.take()

    async def push(self, sink: Callable[[bytes], bool]) -> bool:
        """Each read's bytes go to `sink` as they come, called from the connection's
        `data_received`: no task is woken per read (aio.BodyFeed). Returns True once
        `sink` returns True (it wants no more for now), False at the body's end;
        raises the connection's failure, or what `sink` raised."""
        if self._closed:
            raise httpx.StreamClosed()
        connection = self._connection
        if connection.pieces and sink(connection.take()):  # bytes that came before
            return True
        while True:
            waiter = connection.body_wait()
            if waiter is None:
                return False
            connection.sink = sink
            try:
                await waiter
            finally:
                connection.sink = None
            stopped, connection.sink_stopped = connection.sink_stopped, None
            if isinstance(stopped, Exception):
                raise stopped
            if stopped:
                return True

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._connection.done()


async def _exchange(
    connection: _Connection, data: bytes, timeout: dict[str, float | None], no_body: bool
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The request sent on `connection`, and its answer's head."""
    try:
        connection.send(data, timeout.get("read"))
        return await connection.head(no_body)
    except BaseException:
        connection.abort()  # cancelled or failed mid-exchange: nothing of it is reusable
        raise


def _response(
    request: httpx.Request,
    connection: _Connection,
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
) -> httpx.Response:
    extensions: dict[str, Any] = {"http_version": b"HTTP/1.1", RAW_BODY: connection.body}
    if reason:
        extensions["reason_phrase"] = reason
    return httpx.Response(
        status_code=status,
        headers=headers,
        stream=connection.body,
        request=request,
        extensions=extensions,
    )


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: a request, its response's head, then its body undone
    from its framing into `pieces`, as bytes arrive."""

    def __init__(self, transport_pool: Http1Transport, origin: Origin) -> None:
        self._pool = transport_pool
        self.origin = origin
        self.idle_since = 0.0
        self.body = Body(self)  # the current exchange's (send() makes each one's)
        self.pieces: list[bytes] = []  # body bytes not read yet
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._head: bytearray | None = None  # None: not waiting for a head
        self._parsed: tuple[int, bytes, list[tuple[bytes, bytes]]] | None = None
        self._no_body = False
        self._interim = 0  # bytes of informational answers (1xx) before this head
        self._framing = ""  # "chunked", "length" or "close", once the head is in
        self._left = 0  # bytes left in the current chunk, or in a Content-Length body
        self._carry = b""  # an unfinished chunk-size line or chunk end
        self._crlf_due = False  # a chunk's data was read; its CRLF comes next
        self._trailers = False  # the last chunk was read; trailers until a blank line
        self._keep_alive = False
        self._complete = False  # the whole response is in
        self._lost = False  # the connection is closed
        self._error: httpx.TransportError | None = None
        self._unread = 0
        self._paused = False
        self._draining = False  # closed by its reader before its end; waiting for the end
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout: float | None = None
        self._progress = 0.0  # when bytes last came, or a wait began
        self._timer: asyncio.TimerHandle | None = None
        # Body.push()'s reader, called with each read's bytes, and why it stopped.
        self.sink: Callable[[bytes], bool] | None = None
        self.sink_stopped: Exception | bool | None = None

    @property
    def reusable(self) -> bool:
        return not self._lost and self._transport is not None and not self._transport.is_closing()

    @property
    def answered_nothing(self) -> bool:
        """No byte of an answer to the request sent came (not even a 1xx)."""
        return self._head is not None and not self._head and not self._interim

    def quiet(self) -> bool:
        """Nothing waits unread in the kernel for an idle connection: bytes there mean
        the server closed or broke it, and the loop has not read that yet (httpcore
        checks the same before reusing a connection)."""
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is None:
            return True
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    # The loop's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # each chunk of the request and of the answer goes at once
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._progress = self._loop.time()
        if self._head is not None:
            data = self._head_received(data)
        if not data:
            pass
        elif self._framing == "chunked":
            self._chunked(data)
        elif self._framing == "length":
            self._fixed_length(data)
        elif self._framing == "close":
            self._add(data)
        elif self._framing == "none" and data.strip():
            self._keep_alive = False  # past a bodiless answer (a 204 with a body): not reused
        elif data.strip():  # bytes with no request asking for them
            self._fail(httpx.RemoteProtocolError("data after the end of a response"))
            return
        if self.sink is not None:
            if self.pieces:
                self._push()
            if self._complete:
                self._wake()
        elif self._waiter is not None:
            self._wake()
        elif self._draining:
            self._discard_unread()
            if self._complete:
                self._keep_or_close()

    def eof_received(self) -> bool | None:
        return None  # close our side too: HTTP/1.1 has no half-closed exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        unfinished = self._head is not None or (bool(self._framing) and not self._complete)
        if unfinished and exc is not None:  # reset, or a broken TLS record
            self._fail(httpx.ReadError(str(exc) or type(exc).__name__))
        elif self._framing == "close" and not self._complete:
            self._complete = True  # the connection's end is the body's
        elif unfinished:
            message = (
                "Server disconnected without sending a response."
                if self._head is not None and not self._head
                else "peer closed connection without sending complete message body"
            )
            self._fail(httpx.RemoteProtocolError(message))
        self._stop_timer()
        if self._waiter is not None:
            self._wake()

    # The request's side.

    def send(self, data: bytes, read_timeout: float | None) -> None:
        if self._transport is None or not self.reusable:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        self._head, self._parsed, self._framing, self._complete = bytearray(), None, "", False
        self._left, self._carry, self._error = 0, b"", None
        self._crlf_due = self._trailers = False
        self.sink, self.sink_stopped = None, None
        self._interim = 0
        self._read_timeout = read_timeout
        self.body = Body(self)
        self._transport.write(data)

    async def head(self, no_body: bool) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        """The response's status, reason and headers, once they are in."""
        self._no_body = no_body
        while self._parsed is None:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self._parsed

    def body_wait(self) -> asyncio.Future[None] | None:
        """What a body read with no bytes in awaits; None at the body's end. Raises
        the connection's failure. (A future, not a coroutine: a frame less per read.)"""
        if self._error is not None:
            raise self._error
        if self._complete:
            return None
        return self._new_waiter()

    def take(self) -> bytes:
        """The body's bytes that came and were not read yet."""
        pieces = self.pieces
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self.taken(len(data))
        return data

    def taken(self, size: int) -> None:
        self._unread -= size
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()

    def set_read_timeout(self, seconds: float) -> None:
        self._read_timeout = seconds
        self._progress = self._loop.time()  # counted from now, not from the last read
        self._stop_timer()
        if self._waiter is not None:
            self._timer = self._loop.call_at(self._progress + seconds, self._timed_out)

    def done(self) -> None:
        """The response is closed. Read to its end, the connection is kept for the next
        request. Closed by a cancelled reader (a client that left), it is closed at
        once: the upstream stops generating. Closed otherwise (the reader saw the
        answer's last event, or gave up on an answer it could not use), it waits a
        moment for the body's own end, which the upstream often sends in a write of
        its own: without that wait no connection would be reused."""
        self._stop_timer()
        self._waiter = None  # a read cancelled mid-wait leaves its future here
        task = asyncio.current_task()
        if self._complete:
            self._discard_unread()  # its reader stopped before the end; the end is in
            self._keep_or_close()
        elif self._error is None and self._head is None and not (task and task.cancelling()):
            self._draining = True
            self._discard_unread()
            self._timer = self._loop.call_later(DRAIN_SECONDS, self.abort)
        else:
            self.abort()

    def _keep_or_close(self) -> None:
        self._stop_timer()
        self._draining = False
        if self._keep_alive and not self.pieces and self.reusable:
            self._framing = ""
            self._pool.keep(self)
        else:
            self.abort()

    def _discard_unread(self) -> None:
        self.pieces.clear()
        self.taken(self._unread)

    def abort(self) -> None:
        self._stop_timer()
        if self._transport is not None:
            self._transport.abort()

    # Inside.

    async def _wait(self) -> None:
        try:
            await self._new_waiter()
        finally:
            self._waiter = None

    def _new_waiter(self) -> asyncio.Future[None]:
        """A future that the next bytes (or the failure, or the end) resolve; the read
        timeout counts from now (or from the last bytes, if later)."""
        waiter = self._waiter = self._loop.create_future()
        self._progress = self._loop.time()
        if self._timer is None and self._read_timeout is not None:
            self._timer = self._loop.call_at(self._progress + self._read_timeout, self._timed_out)
        return waiter

    def _push(self) -> None:
        """Hand what came to the reader's sink (Body.push); wake the reader if the sink
        stopped, or failed (the reader's task raises its exception)."""
        assert self.sink is not None
        try:
            stopped: Exception | bool = self.sink(self.take())
        except Exception as exc:
            stopped = exc
        if stopped is not False:
            self.sink, self.sink_stopped = None, stopped
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _timed_out(self) -> None:
        """The one timer: a wait with no byte for the read timeout fails; else it is
        moved to the newer deadline (cheaper than moving it for every read)."""
        self._timer = None
        if self._read_timeout is None:
            return
        deadline = self._progress + self._read_timeout
        if self._waiter is not None and self._loop.time() >= deadline:
            self._fail(httpx.ReadTimeout("no data within the read timeout"))
        elif self._waiter is not None:
            self._timer = self._loop.call_at(deadline, self._timed_out)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: httpx.TransportError) -> None:
        if self._error is None:
            self._error = error
        self._stop_timer()
        self._keep_alive = False
        if self._transport is not None:
            self._transport.abort()
        self._wake()

    def _add(self, data: bytes) -> None:
        self.pieces.append(data)
        self._unread += len(data)
        if self._unread > MAX_UNREAD_BYTES and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _head_received(self, data: bytes) -> bytes:
        """Adds `data` to the head; returns the body bytes after it, once it is whole.
        Informational answers (1xx) before it are read past, their bytes counted
        against MAX_HEAD_BYTES with the head's."""
        assert self._head is not None
        self._head += data
        while True:
            if self._head.startswith((b"\r", b"\n")):
                # Blank lines before a status line: a server's stray CRLF after its last
                # answer (or a 1xx), read past (RFC 9112 asks servers the same of a
                # request line).
                del self._head[: len(self._head) - len(self._head.lstrip(b"\r\n"))]
            if not b"HTTP/".startswith(bytes(self._head[:5])):
                # No answer begins so (bytes a server left after its last one, say): at
                # once, not after the wait for a head that would never come whole.
                self._fail(httpx.RemoteProtocolError("unreadable response head: no status line"))
                return b""
            end, blank = _head_end(self._head)
            if (end if end >= 0 else len(self._head)) + self._interim > MAX_HEAD_BYTES:
                self._fail(httpx.RemoteProtocolError("response head too long"))
                return b""
            if end < 0:
                return b""
            head, rest = bytes(self._head[:end]), bytes(self._head[end + blank :])
            try:
                version, status, reason, headers = _parse_head(head)
                if 100 <= status < 200:  # informational (103 Early Hints): the real head follows
                    self._interim += end + blank
                    self._head = bytearray(rest)
                    continue
                self._frame(version, status, headers)
            except ValueError as exc:
                self._fail(httpx.RemoteProtocolError(f"unreadable response head: {exc}"))
                return b""
            self._head = None
            self._parsed = (status, reason, headers)
            return rest

    def _frame(self, version: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """How the body ends, and whether the connection outlives it."""
        names = {name.lower(): value.lower() for name, value in headers}
        lengths = {value for name, value in headers if name.lower() == b"content-length"}
        if len(lengths) > 1:
            raise ValueError("conflicting Content-Length headers")
        connection = names.get(b"connection", b"")
        self._keep_alive = (
            b"keep-alive" in connection if version == b"HTTP/1.0" else b"close" not in connection
        )
        if self._no_body or status in _NO_BODY_STATUS:
            self._framing, self._complete = "none", True
        elif b"chunked" in names.get(b"transfer-encoding", b""):
            self._framing = "chunked"
        elif b"content-length" in names:
            length = names[b"content-length"].strip()
            if not length.isdigit():
                raise ValueError("a malformed Content-Length")
            self._framing, self._left = "length", int(length)
            self._complete = not self._left
        else:
            self._framing, self._keep_alive = "close", False

    def _fixed_length(self, data: bytes) -> None:
        if len(data) >= self._left:
            if len(data) > self._left:  # more than it announced: not a connection to reuse
                self._keep_alive = False
            data, self._complete = data[: self._left], True
        self._left -= len(data)
        if data:
            self._add(data)

    def _chunked(self, data: bytes) -> None:
        """Undoes the chunked framing of `data`."""
        if not (self._carry or self._left or self._crlf_due or self._trailers):
            # The usual read, taken in one step: one whole chunk (a size line, the
            # data, its CRLF). Anything else goes the general way below.
            line_end = data.find(b"\r\n")
            size_field = data[:line_end]
            if line_end > 0 and not size_field.strip(_HEX_DIGITS):
                end = line_end + 2 + int(size_field, 16)
                if end > line_end + 2 and len(data) == end + 2 and data.endswith(b"\r\n"):
                    self._add(data[line_end + 2 : end])
                    return
        if self._carry:
            data, self._carry = self._carry + data, b""
        at, size = 0, len(data)
        while at < size and not self._complete:
            if self._left:  # inside a chunk's data
                end = min(size, at + self._left)
                self._add(data[at:end] if at or end < size else data)
                self._left -= end - at
                self._crlf_due = not self._left
                at = end
                continue
            line_end = data.find(b"\r\n", at)
            if line_end < 0:
                self._carry = data[at:]
                if len(self._carry) > MAX_HEAD_BYTES:
                    self._fail(httpx.RemoteProtocolError("chunk size line too long"))
                return
            line, at = data[at:line_end], line_end + 2
            if self._crlf_due:  # the CRLF after a chunk's data
                self._crlf_due = False
                if line:
                    self._fail(httpx.RemoteProtocolError("malformed chunked encoding"))
                    return
            elif self._trailers:  # after the last chunk: trailer lines, then a blank one
                self._complete = not line
                if self._complete and at < size:  # bytes past the body's end: not reused
                    self._keep_alive = False
            else:
                size_field = line.partition(b";")[0].strip()
                if not size_field or size_field.strip(_HEX_DIGITS):
                    self._fail(httpx.RemoteProtocolError("malformed chunk size"))
                    return
                self._left = int(size_field, 16)
                self._trailers = not self._left


def _head_end(head: bytearray) -> tuple[int, int]:
    """Where the head ends (-1: not yet), and the length of the blank line after it:
    lines end in CRLF, or in a bare LF, which servers send and h11 accepts too."""
    ends = ((head.find(b"\r\n\r\n"), 4), (head.find(b"\n\n"), 2), (head.find(b"\n\r\n"), 3))
    found = [(at, blank) for at, blank in ends if at >= 0]
    return min(found) if found else (-1, 0)


def _parse_head(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    status_line, _, fields = head.replace(b"\r\n", b"\n").partition(b"\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError("not an HTTP/1.x status line")
    headers = []
    for line in fields.split(b"\n") if fields else ():
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise ValueError("a malformed header line")
        headers.append((name, value.strip()))
    return version, int(code), reason.strip(), headers
