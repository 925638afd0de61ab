"""Messages a reply could not save within its wait, written after it: an outage loses none.

Why: a reply waits for its messages at most PERSIST_TIMEOUT_SECONDS (saving.py),
so that a slow or unreachable database never stalls a stream; the final frame
then says `persist_failed: true`. Before this module a database away for longer
than that wait lost the messages. Here a reply's unsaved messages wait in
memory and are written again, in order, the question before its reply: at
once, then RETRY_DELAYS later, until an attempt succeeds (logged
`persist.saved_late`) or the last one fails (`persist.lost`). A write still
under way when the reply's wait ended is waited for first: it may yet land,
and a second write beside it could put the reply before its question.

Written late, a message keeps the time it was meant to be written at
(`created_at`, saving.py), not the database's time of the late write: the
history reads in `createdAt` order, and the user's next turns, saved on time
meanwhile, stay after it. And a late reply never replaces one written under
its id since (a retry's, newer): the store compares their `answeredAt`.

What is not an outage is not tried again: a trace id that holds another
user's messages (MessageTaken) or another question (TraceIdKept), and a write
Firestore refuses as it is or does not let us make (`never_taken`).

Bounds: at most MAX_WAITING replies' messages and MAX_WAITING_CHARS characters
of their text wait; past either, the oldest is given up (`persist.lost`). One
thread per process, started on first use. A stopping worker gives what still
waits more tries before it exits (`close`, worker.py), within what is left
of its stop (a write that hangs is not waited for past it); what is left then
is logged lost. On Cloud Run with CPU
allocated only during requests, the attempts between requests wait for the
instance's next request (README "Persistence").
"""

from __future__ import annotations

import collections
import concurrent.futures
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .store import MessageTaken, TraceIdKept
from .tracing import RequestLog

RETRY_DELAYS = (5.0, 30.0, 120.0)  # after the first attempt, made at once
# The reason logged for a message whose write was still under way when the worker
# stopped: it was not known to be written, and may yet be.
UNDER_WAY = "the worker stopped during its write, which may still land"
MAX_WAITING = 1000
# A stopping worker's pause between its rounds of attempts (`close`).
CLOSING_PAUSE_SECONDS = 0.25
MAX_WAITING_CHARS = 16_000_000


@dataclass
class Step:
    """One message to write: `write()` writes it and returns its id. `under_way` is the
    write the reply began, if it had not ended when the reply's wait did."""

    role: str
    write: Callable[[], str]
    under_way: concurrent.futures.Future[str] | None = None


@dataclass
class _Waiting:
    steps: list[Step]  # the ones not yet written, in order
    chars: int
    log: RequestLog
    attempts: int = 0
    due: float = field(default_factory=time.monotonic)
    given_up: bool = False  # logged lost by `close` while its write was under way
    nudged: bool = False  # due early: another call succeeded (`nudge`)
    # Tried early and failed since its last attempt on time: not nudged again before that
    # (a write that keeps failing on a busy instance was tried after every other call's
    # success, never given up).
    early_failed: bool = False


class LateSaves:
    def __init__(
        self,
        delays: Sequence[float] = RETRY_DELAYS,
        max_waiting: int = MAX_WAITING,
        max_chars: int = MAX_WAITING_CHARS,
    ) -> None:
        self.delays = tuple(delays)
        self._max_waiting = max_waiting
        self._max_chars = max_chars
        self._changed = threading.Condition()
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._chars = 0
        self._busy: _Waiting | None = None  # the one the thread is writing
        self._closed = False
        self._thread: threading.Thread | None = None

    def add(self, steps: list[Step], chars: int, log: RequestLog) -> None:
        """Write `steps` in order, from now on, until they are written or given up."""
        waiting = _Waiting(list(steps), chars, log)
        with self._changed:
            if self._closed:
                _lost(waiting, "the worker stopped")
                return
            self._waiting.append(waiting)
            self._chars += chars
            # The oldest go first; never the one just added (the one being written is not
            # in the queue, and may be what holds the characters).
            while len(self._waiting) > 1 and (
                len(self._waiting) > self._max_waiting or self._chars > self._max_chars
            ):
                oldest = self._waiting.popleft()
                self._chars -= oldest.chars
                _lost(oldest, "too many messages wait to be written")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="late-saves", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def nudge(self) -> None:
        """The database answered another call: what waits for its next attempt goes now."""
        if not self._waiting:  # the usual case, without the lock: nothing waits
            return
        with self._changed:
            self._nudge()

    def _nudge(self) -> None:
        now = time.monotonic()
        for waiting in self._waiting:
            if waiting.due > now and not waiting.early_failed:
                waiting.due, waiting.nudged = now, True
        self._changed.notify_all()

    def count(self) -> int:
        """How many replies' messages wait, or are being written."""
        with self._changed:
            return len(self._waiting) + (self._busy is not None)

    def wait_idle(self, seconds: float) -> bool:
        """Wait, at most `seconds`, until no write is under way on the thread; True then."""
        end = time.monotonic() + seconds
        with self._changed:
            while self._busy is not None and (left := end - time.monotonic()) > 0:
                self._changed.wait(left)
            return self._busy is None

    def close(self, seconds: float) -> None:
        """For a worker on its way out: nothing more on the thread; what still waits,
        and the write under way there if it fails, is tried again and again until it is
        written or `seconds` are up, CLOSING_PAUSE_SECONDS between rounds (a database
        back from an outage may fail a write or two more while its client reconnects:
        a reply tried once, or one whose write was under way at the stop, was lost with
        seconds to spare). A write that hangs is left to the process's end; what is not
        written by then is logged lost."""
        end = time.monotonic() + seconds
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        failed: list[_Waiting] = []
        while True:
            with self._changed:
                # What waits, and what the thread's write handed back failed (`_run`).
                failed.extend(self._waiting)
                self._waiting.clear()
                if not failed and self._busy is None:
                    return
            if end - time.monotonic() <= 0:
                break
            # Beside the write under way on the thread, which may hang and would take the
            # whole time (messages are dated: the order of the writes is not the history's).
            trying, failed = failed, []
            for waiting in trying:
                written = _attempt_within(waiting, end - time.monotonic())
                if written is None:  # hangs: not tried beside itself
                    _lost(waiting, UNDER_WAY)
                elif not written:
                    failed.append(waiting)
            with self._changed:  # woken early by the thread's write ending
                self._changed.wait(max(0.0, min(CLOSING_PAUSE_SECONDS, end - time.monotonic())))
        with self._changed:
            failed.extend(self._waiting)  # handed back since the last look
            self._waiting.clear()
            for waiting in failed:
                _lost(waiting, "the worker stopped")
            if self._busy is not None:  # its write hangs: not waited for any longer
                self._busy.given_up = True
                _lost(self._busy, UNDER_WAY)

    def _run(self) -> None:
        while True:
            with self._changed:
                waiting = self._next_due()
                if self._closed:
                    return
                if waiting is None:
                    continue
                self._waiting.remove(waiting)
                self._busy = waiting
            done = _attempt(waiting)
            with self._changed:
                self._busy = None
                self._changed.notify_all()
                if done:
                    self._chars -= waiting.chars
                    if not waiting.steps:  # written: the database takes writes again
                        self._nudge()
                elif self._closed:  # on a stop: `close` tries it again while it has time
                    if not waiting.given_up:
                        self._waiting.append(waiting)
                elif waiting.nudged:  # tried early, and failed: it costs no attempt
                    waiting.nudged, waiting.early_failed = False, True
                    waiting.attempts -= 1
                    waiting.due = time.monotonic() + self.delays[waiting.attempts - 1]
                    self._waiting.append(waiting)
                elif waiting.attempts > len(self.delays):
                    self._chars -= waiting.chars
                    _lost(waiting, "the database did not take it")
                else:
                    waiting.early_failed = False
                    waiting.due = time.monotonic() + self.delays[waiting.attempts - 1]
                    self._waiting.append(waiting)

    def _next_due(self) -> _Waiting | None:
        """The waiting reply whose time has come; None after a wait (call under the lock)."""
        if self._closed:
            return None
        now = time.monotonic()
        soonest = min(self._waiting, key=lambda waiting: waiting.due, default=None)
        if soonest is not None and soonest.due <= now:
            return soonest
        self._changed.wait(None if soonest is None else soonest.due - now)
        return None


def _attempt_within(waiting: _Waiting, seconds: float) -> bool | None:
    """`_attempt`, given up after `seconds` (None then: it is still under way): a store
    call has a deadline of its own, but a save makes several, and a stopping worker has
    only until the kill."""
    if seconds <= 0:
        return False
    done: list[bool] = []
    thread = threading.Thread(
        target=lambda: done.append(_attempt(waiting)), name="late-saves-last", daemon=True
    )
    thread.start()
    thread.join(seconds)
    return done[0] if done else None


def _attempt(waiting: _Waiting) -> bool:
    """Write what is left of `waiting`, in order; True once nothing is left to try."""
    waiting.attempts += 1
    while waiting.steps:
        step = waiting.steps[0]
        try:
            message_id = _written(step)
        except (MessageTaken, TraceIdKept) as exc:  # an answer, not an outage
            waiting.log.warning("persist.kept", role=step.role, reason=str(exc))
            waiting.steps.clear()
            return True
        except Exception as exc:  # any store failure: the next attempt, later
            if never_taken(exc):  # no later attempt would be taken either: this one is
                # lost, not the steps after it (a question too large for a document took
                # its short reply with it)
                waiting.log.error("persist.lost", role=step.role, reason=_reason(exc))
                waiting.steps.pop(0)
                continue
            waiting.log.warning(
                "persist.late_failed",
                role=step.role,
                attempt=waiting.attempts,
                reason=_reason(exc),
            )
            return False
        waiting.log.info("persist.saved_late", role=step.role, message_id=message_id)
        waiting.steps.pop(0)
    return True


def _written(step: Step) -> str:
    """The step's message id once written: by the reply's own write, if it was still
    under way and lands, else by a write of ours."""
    under_way, step.under_way = step.under_way, None
    if under_way is not None:
        failure = under_way.exception()  # each store call carries its own deadline
        if failure is None:
            return under_way.result()
        if isinstance(failure, MessageTaken | TraceIdKept):
            raise failure
        if never_taken(failure):
            raise failure  # refused as it is: a write of ours would be refused the same
        # Else it failed after the reply's wait: a write of ours goes now.
    return step.write()


def _lost(waiting: _Waiting, reason: str) -> None:
    for step in waiting.steps:
        waiting.log.error("persist.lost", role=step.role, reason=reason)


def never_taken(exc: BaseException | None) -> bool:
    """A failure that is the write's own, not the database's state: Firestore refusing it
    as it is (too large, a value it cannot hold), or not letting us write at all, and a
    bug of ours. Trying it again later only holds its text in memory for nothing."""
    if isinstance(exc, ValueError | TypeError):
        return True
    exceptions = sys.modules.get("google.api_core.exceptions")  # loaded by the store
    return exceptions is not None and isinstance(
        exc, exceptions.InvalidArgument | exceptions.PermissionDenied
    )


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


late_saves = LateSaves()
