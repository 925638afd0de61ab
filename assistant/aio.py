"""One asyncio loop per process, on a daemon thread, where all upstream I/O runs.

Why a loop and not a thread per stream: a thread blocked in a socket read
cannot be interrupted when the client leaves, and a sync read has no deadline
for "first chunk". On the loop a reply is a task; cancelling it interrupts
its await at once and closes the upstream connection. Request threads talk to
it through `submit()` and thread-safe queues, never by sharing a client.

Created lazily in the process that uses it, so a gunicorn worker forked after
import gets its own loop and its own connection pool.

Speed (README "Speed", bench/stream_cpu.py): the loop is uvloop's, and
httpx sends through `http1.Http1Transport`, our own HTTP/1.1 under the
httpx API, instead of httpcore on anyio (or aiohttp, rounds 2 to 9). Measured
on one core, the upstream side was most of the CPU a relayed chunk costs,
and most of that was the HTTP stack's layers per read. It raises the httpx
exceptions httpcore raises for the same failures, so nothing above this
module can tell them apart.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import httpx
import uvloop

from .config import Timeouts
from .http1 import RAW_BODY, Body, Http1Transport

T = TypeVar("T")

# The first request should not pay for what every request needs: the CA bundle
# (~50 ms to load) is read here, at import, before gunicorn forks its worker.
_TLS = httpx.create_ssl_context()

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
    """Close the pools' idle connections at exit."""
    loop = _loop
    if loop is None or _loop_pid != os.getpid() or not loop.is_running():
        return
    for client in list(_clients.values()):
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=1)


def submit(
    coro: Coroutine[Any, Any, T], first_step_wait: float = 0.0
) -> concurrent.futures.Future[T]:
    """Run `coro` on the I/O loop; the future is safe to wait on from any thread.

    With `first_step_wait`, return once the loop has run `coro` to its first
    real wait, or after that many seconds: for a reply, once the upstream
    request is out. The caller's thread would otherwise hold the GIL (and, on
    one core, the CPU) through the rest of its own work first, and the
    upstream's time to its first token would start that much later.
    """
    loop = _running_loop()
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    if first_step_wait > 0:
        stepped = threading.Event()
        # Queued behind the task's creation, which queues its first step: so this
        # set() runs after that step, whichever loop turn each lands in.
        loop.call_soon_threadsafe(loop.call_soon, stepped.set)
        stepped.wait(first_step_wait)
    return future


def call_soon(callback: Callable[..., object], *args: Any) -> None:
    """Call `callback(*args)` on the I/O loop; from any thread."""
    _running_loop().call_soon_threadsafe(callback, *args)


def http_client(timeouts: Timeouts) -> httpx.AsyncClient:
    """The shared client for these timeouts (one pool per process). Call on the loop."""
    client = _clients.get(timeouts)
    if client is None:
        client = _UpstreamClient(
            transport=Http1Transport(_TLS, keepalive_seconds=KEEPALIVE_SECONDS),
            # Bodies as sent: a gzip body was inflated whole with each read (a 326 KB
            # body held 449 MB), past every bound the stream's decoding keeps.
            headers={"accept-encoding": "identity"},
            timeout=httpx.Timeout(
                connect=timeouts.connect,
                # Any byte, ping included, proves the upstream alive. Until the
                # first chunk FIRST_CHUNK_TIMEOUT_SECONDS rules, so a longer one is
                # not cut short here; `allow_silence()` then sets the idle gap.
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


class _UpstreamClient(httpx.AsyncClient):
    """httpx's client, with `_NoCookies` for its cookies and a short way for a streamed
    request.

    Not only a jar that keeps nothing: httpx hands every response to its
    cookies, and building the urllib request and response a jar reads cost
    ~20 µs per request, with nothing to find (bench/results/).

    `send(request, stream=True)` of a request that carries its timeouts goes
    straight to the transport while the client has no auth, no redirects to
    follow and no event hooks (`http_client()` gives it none), and the URL no
    credentials (`https://user:pass@host`, which httpx's auth step sends as
    Basic auth: an Ollama behind a proxy, say): httpx's layers
    around the transport (the auth and redirect generators, the mounts'
    lookup, the timer, its log line) had nothing to do, and cost ~45 µs a
    request warm (bench/results/stream_cpu-round12.txt). What they give that a
    caller could see is kept: the response knows its request, and so does a
    failure. Anything else goes through httpx's `send()`.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("the upstream client keeps no cookies")

    async def send(
        self,
        request: httpx.Request,
        *,
        stream: bool = False,
        auth: Any = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: Any = httpx.USE_CLIENT_DEFAULT,
    ) -> httpx.Response:
        plain = (
            stream
            and auth is httpx.USE_CLIENT_DEFAULT
            and self.auth is None
            and follow_redirects is httpx.USE_CLIENT_DEFAULT
            and not self.follow_redirects
            and not any(self.event_hooks.values())
            and not request.url.userinfo  # httpx's auth step sends it as Basic auth
            and "timeout" in request.extensions
            and not self.is_closed
        )
        if not plain:
            return await super().send(
                request, stream=stream, auth=auth, follow_redirects=follow_redirects
            )
        try:
            response = await self._transport.handle_async_request(request)
        except httpx.RequestError as exc:
            if exc._request is None:  # what httpx's own send() does for its transports
                exc.request = request
            raise
        response.request = request
        response.default_encoding = self._default_encoding
        return response


# How long an idle upstream connection is kept for the next request (httpx's default).
KEEPALIVE_SECONDS = 5.0


def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """A streamed response's body as it arrives, read by read (the chain has the reads
    pushed to its decoder instead, `BodyFeed`; the transport's tests read through this).

    For a response our transport made, with no content coding, the bytes come
    straight from its connection: one await per read, where httpx's
    `aiter_bytes()` stacks four async generators (bytes, raw, the bound
    stream, ours) and a content decoder that has nothing to do. Failures are
    the same httpx exceptions either way, and closing the response still
    closes the body. Anything else (a gzip body, a test's
    `httpx.MockTransport`) goes through `aiter_bytes()`.
    """
    body = _raw_body(response)
    return body if body is not None else response.aiter_bytes()


class BodyFeed:
    """A response's body handed to a sink read by read, until the sink asks to stop; then
    again from where it stopped, as often as the reader wants.

    For a response our transport made, the sink runs in the connection's own
    callback as bytes arrive (`Body.push`): no task is woken, and no async
    generator resumed, per read, which was about a fifth of the loop's CPU per
    relayed chunk (bench/results/stream_cpu-round11.txt). Anything else (a
    gzip body, a test's MockTransport) is read with one `aiter_bytes()` in the
    reader's task. Failures are httpx's exceptions either way.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._body = _raw_body(response)
        self._chunks = response.aiter_bytes() if self._body is None else None

    async def into(self, sink: Callable[[bytes], bool]) -> bool:
        """Reads handed to `sink` until it returns True (then True) or the body ends
        (False)."""
        if self._body is not None:
            return await self._body.push(sink)
        assert self._chunks is not None
        async for data in self._chunks:  # leaving the loop does not close the iterator
            if sink(data):
                return True
        return False


def _raw_body(response: httpx.Response) -> Body | None:
    """The response's body as our transport gives it, if it needs no decoding."""
    body = response.extensions.get(RAW_BODY)
    if isinstance(body, Body) and "content-encoding" not in response.headers:
        return body
    return None


def allow_silence(response: httpx.Response, seconds: float) -> None:
    """From now on `response`'s socket may stay silent for `seconds` at most (pings
    count as life): the idle gap once its upstream sent its first chunk, or a short
    wait once the answer's end came (chain.ANSWERED_QUIET_SECONDS).

    Until then the socket waited as long as the first chunk may take
    (`http_client`), which can be longer. Nothing to do for a body our
    transport did not make (a test's MockTransport).
    """
    body = response.extensions.get(RAW_BODY)
    if isinstance(body, Body):
        body.read_timeout(seconds)
