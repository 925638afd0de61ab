"""What a reply yields to the server instead of a frame when it would wait with its thread.

Under our gunicorn worker (worker.py "parking") the request thread then goes
back to the pool; the worker calls `arm(resume)`, and `resume` is called once,
from whichever thread sees it first, when the wait is over: what the reply
waits for is there, or `seconds` have passed (a timer on the I/O loop). A pool
thread then goes on with the reply, which looks again: an early or spurious
resume only means another look.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from . import aio

# Registers a wake-up to be called once what is awaited is there; False (nothing
# registered) when it is there already.
Watch = Callable[[Callable[[], None]], bool]


class Park:
    __slots__ = ("_seconds", "_watch")

    def __init__(self, seconds: float, watch: Watch) -> None:
        self._seconds = seconds
        self._watch = watch

    def arm(self, resume: Callable[[], None]) -> None:
        once = _Once(resume)
        if not self._watch(once):
            once()
            return
        aio.call_later(self._seconds, once)


def until_done(future: concurrent.futures.Future[Any], seconds: float) -> Park:
    """A park until `future` is done, or `seconds` pass."""

    def watch(wake: Callable[[], None]) -> bool:
        future.add_done_callback(lambda _done: wake())  # at once if it is done already
        return True

    return Park(seconds, watch)


class _Once:
    """`resume`, called the first time only (a wake-up and a timer may both come)."""

    __slots__ = ("_lock", "_resume")

    def __init__(self, resume: Callable[[], None]) -> None:
        self._resume: Callable[[], None] | None = resume
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            resume, self._resume = self._resume, None
        if resume is not None:
            resume()
