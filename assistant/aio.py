"""One asyncio loop per process, on a daemon thread, where all upstream I/O runs.

Why a loop and not a thread per stream: a thread blocked in a socket read
cannot be interrupted when the client leaves, and a sync read has no deadline
for "first chunk". On the loop a reply is a task; cancelling it interrupts
its await at once and closes the upstream connection. Request threads talk to
it through `submit()` and thread-safe queues, never by sharing a client.

Created lazily in the process that uses it, so a gunicorn worker forked after
import gets its own loop and its own connection pool.

Speed (README "Speed", bench/stream_cpu.py): the loop is uvloop's, and
httpx sends through `AiohttpTransport`, aiohttp under the httpx API, instead
of httpcore on anyio. Measured on one core, the upstream side was most of
the CPU a relayed chunk costs, and most of that was httpcore's and anyio's
layers per read (an epoll re-registration per receive, a cancel scope per
read, h11's Python parser); aiohttp parses in C and reads straight from its
protocol's buffer. Its exceptions are translated here into the httpx ones
httpcore would have raised for the same failure, so nothing above this
module can tell the two apart.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
import ctypes
import importlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import aiohttp
import httpx
import uvloop

from .config import Timeouts

T = TypeVar("T")

# The first request should not pay for what every request needs: the CA bundle
# (~50 ms to load) and the async HTTP stack that httpx and anyio import lazily
# (~40 ms). Both are done here, at import, before gunicorn forks its worker.
_TLS = httpx.create_ssl_context()
for _module in ("httpcore", "h11", "anyio.abc", "anyio.streams.tls", "anyio._backends._asyncio"):
    with contextlib.suppress(
        ImportError
    ):  # a warm-up only: a renamed module costs time, not function
        importlib.import_module(_module)

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid: int | None = None
_clients: dict[Timeouts, httpx.AsyncClient] = {}


def _running_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    with _lock:
        if _loop is None or _loop_pid != os.getpid():
            _loop = uvloop.new_event_loop()
            _loop_pid = os.getpid()
            _clients.clear()
            thread = threading.Thread(target=_run, args=(_loop,), name="upstream-io", daemon=True)
            thread.start()
        return _loop


def _run(loop: asyncio.AbstractEventLoop) -> None:
    _name_os_thread(b"upstream-io")
    loop.run_forever()


def _name_os_thread(name: bytes) -> None:
    """Give the OS thread the name Python's has (3.11 does not): `top -H`, py-spy
    and bench/stream_cpu.py's per-thread split then tell the loop's CPU apart."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, ctypes.c_char_p(name[:15]))


_PR_SET_NAME = 15


@atexit.register
def _close_clients() -> None:
    """Close the pools at exit (aiohttp complains of a session left open)."""
    loop = _loop
    if loop is None or _loop_pid != os.getpid() or not loop.is_running():
        return
    for client in list(_clients.values()):
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=1)


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run `coro` on the I/O loop; the future is safe to wait on from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, _running_loop())


def call_soon(callback: Callable[..., object], *args: Any) -> None:
    """Call `callback(*args)` on the I/O loop; from any thread."""
    _running_loop().call_soon_threadsafe(callback, *args)


def http_client(timeouts: Timeouts) -> httpx.AsyncClient:
    """The shared client for these timeouts (one pool per process). Call on the loop."""
    client = _clients.get(timeouts)
    if client is None:
        client = _CookielessClient(
            transport=AiohttpTransport(keepalive_seconds=KEEPALIVE_SECONDS),
            verify=_TLS,
            timeout=httpx.Timeout(
                connect=timeouts.connect,
                # Any byte, ping included, proves the upstream alive. Until the
                # first chunk FIRST_CHUNK_TIMEOUT_SECONDS rules, so a longer one is
                # not cut short here; `streaming_started()` then sets the idle gap.
                read=max(timeouts.idle, timeouts.first_chunk),
                write=timeouts.connect,
                pool=timeouts.connect,
            ),
        )
        _clients[timeouts] = client
    return client


class _NoCookies(httpx.Cookies):
    """Cookies that are never kept.

    Provider APIs authenticate with keys, not cookies, and one client serves
    every user of the process: a cookie one reply's response set (a CDN's
    bot-management cookie, say) must not ride along on the next user's
    request.
    """

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set(self, name: str, value: str, domain: str = "", path: str = "/") -> None:
        return None


_NO_COOKIES = _NoCookies()


class _CookielessClient(httpx.AsyncClient):
    """httpx's client, with `_NoCookies` for its cookies.

    Not only a jar that keeps nothing: httpx hands every response to its
    cookies, and building the urllib request and response a jar reads cost
    ~20 µs per request, with nothing to find (bench/results/).
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("the upstream client keeps no cookies")


# How long an idle upstream connection is kept for the next request (httpx's default).
KEEPALIVE_SECONDS = 5.0


class AiohttpTransport(httpx.AsyncBaseTransport):
    """httpx requests sent with aiohttp: one session per transport, made on the loop.

    Written after httpx-aiohttp 0.2.0 (`httpx_aiohttp/transport.py`, by the
    OpenAI SDK's authors), which it replaces: that one maps a refused
    connection to `ConnectTimeout` and caps the pool at aiohttp's default of
    100 connections. Here the pool is unbounded (requests in flight are
    bounded by MAX_STREAMS) and every aiohttp failure becomes the httpx
    exception httpcore raises for it (`_translated`). Connections stay open
    for `keepalive_seconds` after use; the body is streamed as it arrives,
    whatever was buffered per read.
    """

    def __init__(self, keepalive_seconds: float) -> None:
        self._keepalive = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None

    def _session_here(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ssl=_TLS, keepalive_timeout=self._keepalive)
            self._session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx's client decides (it keeps none)
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout: dict[str, float | None] = request.extensions.get("timeout", {})
        body = request.content  # our requests are bytes, never a stream
        try:
            response = await self._session_here().request(
                request.method,
                str(request.url),
                headers=list(request.headers.multi_items()),
                data=body or None,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise _translated(exc, connecting=True) from exc
        stream = _Body(response)
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1", _RAW_BODY: stream}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=stream,
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


# The response extension that holds our `_Body`, for `body_chunks()`.
_RAW_BODY = "assistant.aiohttp_body"
# The body the current task reads (body_chunks() sets it, in the chain's task).
_reading: contextvars.ContextVar[_Body | None] = contextvars.ContextVar("reading", default=None)


def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """A streamed response's body as it arrives, for the providers' decoders.

    For a response our transport made, with no content coding, the bytes come
    straight from aiohttp's buffer: one await per read, where httpx's
    `aiter_bytes()` stacks four async generators (bytes, raw, the bound
    stream, ours) and a content decoder that has nothing to do. Failures are
    the same httpx exceptions either way (`_Body` translates them), and
    closing the response still closes the body. Anything else (a gzip body,
    a test's `httpx.MockTransport`) goes through `aiter_bytes()`.
    """
    body = response.extensions.get(_RAW_BODY)
    if isinstance(body, _Body):
        _reading.set(body)  # this task's upstream, for streaming_started()
        if "content-encoding" not in response.headers:
            return body
    return response.aiter_bytes()


def streaming_started(idle: float) -> None:
    """The current task's upstream sent its first chunk: from now on its socket may
    stay silent for `idle` seconds at most (pings count as life).

    Until then the socket waited as long as the first chunk may take
    (`http_client`), which can be longer. Nothing to do for a body our
    transport did not make (a test's MockTransport).
    """
    body = _reading.get()
    if body is not None:
        body.read_timeout(idle)


class _Body(httpx.AsyncByteStream):
    """A response body as it arrives. A class, not an async generator: a reply
    that stops reading early leaves nothing for the loop to finalise."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    def read_timeout(self, seconds: float) -> None:
        """From now on a read waits `seconds` at most (aiohttp's own per-socket timer)."""
        connection = self._response.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = seconds
            connection.protocol.start_timeout()  # counted from now, not from the last read

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        try:
            data = await self._response.content.readany()
        except (aiohttp.ClientError, OSError) as exc:
            raise _translated(exc, connecting=False) from exc
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        # A body not read to its end closes the connection (httpcore did the
        # same): the upstream stops at once, as a cancelled reply wants.
        if self._response.content.is_eof():
            self._response.release()
        else:
            self._response.close()


def _translated(exc: BaseException, connecting: bool) -> httpx.TransportError:
    """The httpx exception httpcore raises for the failure aiohttp reports as `exc`."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):  # refused, DNS, TLS handshake
        return httpx.ConnectError(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientResponseError):  # a status line or header we cannot read
        return httpx.RemoteProtocolError(message)
    if connecting and not isinstance(exc, aiohttp.ClientOSError):
        return httpx.ConnectError(message)
    return httpx.ReadError(message)
