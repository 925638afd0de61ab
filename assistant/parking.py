"""What a reply yields to the server instead of a frame when it would wait with its thread.

Under our gunicorn worker (worker.py "parking") the request thread then goes
back to the pool; the worker calls `arm(resume)`, and `resume` is called once,
from whichever thread sees it first, when the wait is over: what the reply
waits for is there, or `seconds` have passed (a timer on the I/O loop). A pool
thread then goes on with the reply, which looks again: an early or spurious
resume only means another look.

The times are kept by one clock per process (`_Clock`): a heap of deadlines
and a single timer on the loop for the earliest. Parking then costs the loop
nothing in the usual case, where a new deadline is later than one already
due: a timer per park had to be made on the loop (a wake-up of it through
its self-pipe) and woke it again when it ran out, for nothing when the reply
had been resumed by then (its outcome came first: most streams).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

from . import aio
from .tracing import process_log

# Deadlines this close together are one timer's: a wait may end this much early (or late).
EARLY_SECONDS = 0.01

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
        _clock.add(self._seconds, once)


def until_done(future: concurrent.futures.Future[Any], seconds: float) -> Park:
    """A park until `future` is done, or `seconds` pass."""

    def watch(wake: Callable[[], None]) -> bool:
        future.add_done_callback(lambda _done: wake())  # at once if it is done already
        return True

    return Park(seconds, watch)


class _Once:
    """`resume`, called the first time only (a wake-up and the clock may both come);
    it lets go of `resume` (and what it holds) then."""

    __slots__ = ("_lock", "_resume")

    def __init__(self, resume: Callable[[], None]) -> None:
        self._resume: Callable[[], None] | None = resume
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            resume, self._resume = self._resume, None
        if resume is not None:
            resume()


class _Clock:
    """Parked waits' deadlines: a heap, and one timer on the loop for the earliest."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, _Once]] = []
        self._order = itertools.count()  # ties broken by arrival, never by _Once
        self._due: float | None = None  # when the loop's timer fires (or will); None: no timer
        self._timer: asyncio.TimerHandle | None = None  # the loop's alone

    def add(self, seconds: float, once: _Once) -> None:
        """From any thread: call `once` after `seconds`."""
        deadline = time.monotonic() + seconds
        with self._lock:
            heapq.heappush(self._heap, (deadline, next(self._order), once))
            sooner = self._due is None or deadline < self._due - EARLY_SECONDS
            if sooner:
                self._due = deadline
        if sooner:  # the timer must move up: only the loop may touch it
            aio.call_soon(self._set_timer)

    def _set_timer(self) -> None:
        """On the loop: the timer, for the earliest deadline."""
        with self._lock:
            due = self._heap[0][0] if self._heap else None
            self._due = due
        self._restart(due)

    def _fire(self) -> None:
        """On the loop: the waits due now (or within EARLY_SECONDS) end."""
        now = time.monotonic()
        ended = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now + EARLY_SECONDS:
                ended.append(heapq.heappop(self._heap)[2])
            due = self._heap[0][0] if self._heap else None
            self._due = due
        self._timer = None
        self._restart(due)
        for once in ended:
            try:
                once()
            except Exception as exc:  # one resume that fails must not cost the others theirs
                process_log().exception("park.resume_failed", exc=exc)

    def _restart(self, due: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if due is not None:
            delay = max(0.0, due - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._fire)


_clock = _Clock()
