"""One asyncio loop per process, on a daemon thread, where all upstream I/O runs.

Why a loop and not a thread per stream: a thread blocked in a socket read
cannot be interrupted when the client leaves, and a sync read has no deadline
for "first chunk". On the loop a reply is a task; cancelling it interrupts
its await at once and closes the upstream connection. Request threads talk to
it through `submit()` and thread-safe queues, never by sharing a client.

Created lazily in the process that uses it, so a gunicorn worker forked after
import gets its own loop and its own connection pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx

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
            _loop = asyncio.new_event_loop()
            _loop_pid = os.getpid()
            _clients.clear()
            thread = threading.Thread(target=_loop.run_forever, name="upstream-io", daemon=True)
            thread.start()
        return _loop


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Run `coro` on the I/O loop; the future is safe to wait on from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, _running_loop())


def http_client(timeouts: Timeouts) -> httpx.AsyncClient:
    """The shared client for these timeouts (one pool per process). Call on the loop."""
    client = _clients.get(timeouts)
    if client is None:
        client = httpx.AsyncClient(
            verify=_TLS,
            timeout=httpx.Timeout(
                connect=timeouts.connect,
                read=timeouts.idle,  # any byte, ping included, proves the upstream alive
                write=timeouts.connect,
                pool=timeouts.connect,
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )
        _clients[timeouts] = client
    return client
