"""Store writes run off the stream's path, each waited for no longer than a bound.

The user message starts at once on a small thread pool, in parallel with the
provider call, so it adds nothing to the time to first chunk. The assistant
message is written at the end; the reply waits for both at most
`timeout` seconds in all, then goes on: a slow or unreachable database costs
the final frame `persist_failed: true`, never a stalled or broken stream.
A write still under way when the wait ends may land later (ids are
idempotent): the store gives each of its calls `timeout` at most. The user
message is written once more within the wait if its write failed; whatever
the wait could not write is tried again after the reply (late_saves.py).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar, cast

from .late_saves import UNDER_WAY, Step, late_saves, never_taken
from .request import AssistantRequest, Turn, shows_nothing
from .sse import json_text
from .store import (
    AssistantMessage,
    Author,
    MessageStore,
    MessageTaken,
    TraceIdKept,
    UserMessage,
)
from .tracing import RequestLog

T = TypeVar("T")


class _Writes:
    """The store's calls, on a small pool of threads, counted while they run: a stopping
    worker drops those not begun and waits for the rest a while (`stop`). A call that
    succeeds means the database answers: what waits to be written late goes at once."""

    def __init__(self, threads: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="store")
        self._running = 0
        self._changed = threading.Condition()

    def submit(self, call: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        return self._pool.submit(self._counted, call, *args)

    def stop(self, seconds: float) -> bool:
        """No call begins from now on; True once none runs, within `seconds`."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        end = time.monotonic() + seconds
        with self._changed:
            while self._running and (left := end - time.monotonic()) > 0:
                self._changed.wait(left)
            return self._running == 0

    def _counted(self, call: Callable[..., T], *args: Any) -> T:
        with self._changed:
            self._running += 1
        try:
            result = call(*args)
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()
        late_saves.nudge()
        return result


_pool = _Writes(threads=8)


def stop_writes(seconds: float) -> bool:
    """For a worker on its way out (worker.py): True once no store call runs, within
    `seconds`; calls not begun are dropped (what they were for is logged by then)."""
    return _pool.stop(seconds)


@dataclass(frozen=True)
class Pending:
    """A step of `Saver.finishing()`: wait for `write` at most `seconds`, then look again
    (a stream sends a heartbeat in between if one is due)."""

    write: concurrent.futures.Future[str]
    seconds: float

    def wait(self, seconds: float | None = None) -> None:
        """Wait here, with the thread, until the write is done or `seconds` (at most
        the step's own) pass."""
        timeout = self.seconds if seconds is None else min(seconds, self.seconds)
        concurrent.futures.wait((self.write,), timeout=timeout)


class Saver:
    def __init__(self, store: MessageStore, timeout: float, log: RequestLog) -> None:
        self._store = store
        self._timeout = timeout
        self._log = log
        self._user: concurrent.futures.Future[str] | None = None
        self._user_message: UserMessage | None = None  # for a second write

    def start_user_message(self, message: UserMessage) -> None:
        # Dated by us, not by the database: a write that lands late keeps its place.
        message = dataclasses.replace(message, created_at=message.created_at or _now())
        self._user_message = message
        self._user = _pool.submit(self._store.save_user_message, message)

    def finishing(
        self,
        assistant_message: AssistantMessage | None,
        beat: float | None,
        within: float | None = None,
    ) -> Generator[Pending, None, tuple[dict[str, str], bool]]:
        """Wait for the user message, then write the reply; returns (message ids, failed).
        The wait is PERSIST_TIMEOUT_SECONDS, or `within` seconds if that is less.

        A step at a time: with a `beat`, it does not wait itself but yields what to
        wait for and for how long at most (a stream waits, or lets go of its thread,
        and sends a heartbeat if one is due); `drive()` runs it through with `beat`
        None, and then it waits itself.

        The reply is written only after the user message landed (each is dated by
        this service: the question with the request's time, the reply with the
        time it ended), so a history read keeps the two in order.
        A user message whose write failed (the database was away when the
        request came, and a reply can take minutes), before this wait or during
        it, is written once more while the wait lasts: what the user typed is
        not lost to an outage the reply outlived. What the wait could not write
        goes to `late_saves`, the question before its reply, to be written after
        the reply: not lost to an outage that outlived the wait either.
        """
        # Its time and its wait's end from now, not from its first step: one driven later
        # (its client left: `drive_unwaited`) is dated when the reply ended, not after
        # the user's next question, and waits no longer than it would have.
        wait = self._timeout if within is None else min(self._timeout, within)
        deadline = time.monotonic() + wait
        answered_at = _now()  # the reply's time: its createdAt, and its answeredAt
        return self._finishing(assistant_message, beat, wait, deadline, answered_at)

    def _finishing(
        self,
        assistant_message: AssistantMessage | None,
        beat: float | None,
        wait: float,
        deadline: float,
        answered_at: datetime.datetime,
    ) -> Generator[Pending, None, tuple[dict[str, str], bool]]:
        ids: dict[str, str] = {}
        ok = True
        late: list[Step] = []  # what the wait could not write, for late_saves
        if self._user is not None:
            retried = False
            while True:
                if not retried and self._user_write_failed():  # an outage: once more
                    retried = True
                    assert self._user is not None and self._user_message is not None
                    failure = self._user.exception()
                    reason = f"{type(failure).__name__}: {failure}"
                    self._log.warning("persist.retry", role="user", reason=reason)
                    self._user = _pool.submit(self._store.save_user_message, self._user_message)
                ok = yield from self._waiting("user", self._user, deadline, wait, ids, beat)
                out_of_time = time.monotonic() >= deadline
                if ok or retried or out_of_time or not self._user_write_failed():
                    break
            user_failure = _failure(self._user)
            if isinstance(user_failure, TraceIdKept | MessageTaken):
                # The trace id's question is another, or the id another user's (their
                # message came first, or at once, and this one was taken back): the
                # reply is not written without its question.
                return ids, True
            if never_taken(user_failure):
                # Refused as it is (too large for a document): lost, and the reply,
                # which waited behind it for nothing, is written now.
                reason = f"{type(user_failure).__name__}: {user_failure}"
                self._log.error("persist.lost", role="user", reason=reason)
            elif not ok:  # an outage: later
                assert self._user_message is not None
                write_user = partial(self._store.save_user_message, self._user_message)
                late.append(Step("user", write_user, under_way=self._user))
        if assistant_message is not None:
            # Dated with the time it ended, on time or late: the history keeps its place,
            # and of a retry's two replies the later one stands (store.py). Written late,
            # the store reads its question to keep it after that one.
            reply = dataclasses.replace(assistant_message, created_at=answered_at)
            write_late = partial(self._store.save_assistant_message, reply, False)
            if late or time.monotonic() >= deadline:
                # Its question is not written yet, or the wait went to it: the reply is
                # written after it, later, so that it never lands before its question.
                if not late:
                    self._log.error("persist.timeout", role="assistant", timeout_s=wait)
                late.append(Step("assistant", write_late))
                ok = False
            else:
                # Its question written by this request: the trace id is this user's.
                user_saved = "user" in ids
                write = partial(self._store.save_assistant_message, reply, user_saved)
                future = _pool.submit(write)
                saved = yield from self._waiting("assistant", future, deadline, wait, ids, beat)
                ok = saved and ok
                if not saved and not isinstance(_failure(future), MessageTaken | TraceIdKept):
                    late.append(Step("assistant", write_late, under_way=future))
        if late:
            late_saves.add(late, _chars(self._user_message, assistant_message), self._log)
        return ids, not ok

    def _user_write_failed(self) -> bool:
        """The user message's write ended in a failure worth a second try: not another
        user's trace id, nor another question's (those are answers, not outages), nor a
        write the database refuses as it is (a second would be refused the same)."""
        failure = None if self._user is None else _failure(self._user)
        if failure is None or isinstance(failure, MessageTaken | TraceIdKept):
            return False
        return not never_taken(failure)

    def _waiting(
        self,
        role: str,
        future: concurrent.futures.Future[str],
        deadline: float,
        wait: float,
        ids: dict[str, str],
        beat: float | None,
    ) -> Generator[Pending, None, bool]:
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            if beat is not None and remaining > 0 and not future.done():
                yield Pending(future, min(beat, remaining))
                continue
            try:
                ids[role] = future.result(timeout=remaining)
                return True
            except concurrent.futures.TimeoutError:
                self._log.error("persist.timeout", role=role, timeout_s=wait)
            except (MessageTaken, TraceIdKept) as exc:  # the caller's trace id: no outage
                self._log.warning("persist.kept", role=role, reason=str(exc))
            except Exception as exc:  # any store failure: reported, never raised into the stream
                self._log.error("persist.failed", role=role, reason=f"{type(exc).__name__}: {exc}")
            return False


def user_message(
    request: AssistantRequest, trace_id: str, author: Author, asked: float
) -> UserMessage:
    """The request's question as the store saves it, dated when it was `asked` (its
    time.monotonic()): not when its write begins, which a history read puts up to
    PERSIST_TIMEOUT_SECONDS later (a question dated after the user's next turns would
    read after them in the history)."""
    return UserMessage(
        assistant_id=request.assistant_id,
        trace_id=trace_id,
        thread_id=request.thread_id,
        author=author,
        content=request.user_input,
        created_at=_now() - datetime.timedelta(seconds=time.monotonic() - asked),
    )


def save_question(store: MessageStore, message: UserMessage, log: RequestLog) -> None:
    """A question no reply follows (its client left before a provider was asked): it is
    written all the same, off the caller's thread (nobody waits for it: waited for, a
    hanging database held the request's thread and its user's slot a whole save wait
    more), a failed write tried again late. What the user typed is kept, as it is when
    a client leaves mid-reply."""
    message = dataclasses.replace(message, created_at=message.created_at or _now())
    write = partial(store.save_user_message, message)

    def settled(future: concurrent.futures.Future[str]) -> None:
        failure = _failure(future)
        if isinstance(failure, MessageTaken | TraceIdKept):  # the trace id's: no outage
            log.warning("persist.kept", role="user", reason=str(failure))
        elif failure is not None:
            reason = f"{type(failure).__name__}: {failure}"
            if never_taken(failure):  # a second write would be refused the same
                log.error("persist.lost", role="user", reason=reason)
            else:
                log.error("persist.failed", role="user", reason=reason)
                late_saves.add([Step("user", write)], len(message.content), log)

    question = _pool.submit(write)
    _track_unwaited(question, log, "user")
    question.add_done_callback(settled)


# Saves nobody waits for (a reply whose client left), driven off the request threads;
# those under way or queued (and questions no reply follows), with their logs and what
# they hold, for a worker on its way out.
_unwaited = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="unwaited-save")
_unwaited_saves: dict[concurrent.futures.Future[Any], tuple[RequestLog, str]] = {}
_unwaited_lock = threading.Lock()


def drive_unwaited(
    steps: Generator[Pending, None, T], then: Callable[[T], None], log: RequestLog
) -> None:
    """`steps` run to their end on a thread of their own, `then` given their result:
    nobody waits for them, and a request thread held for a hanging database's
    PERSIST_TIMEOUT_SECONDS was one fewer for every parked reply's pings, final frame
    and departure check. Begun already (`Saver.finishing` is dated, and its wait counted,
    from when it was called), they wait no longer queued here."""

    def run() -> None:
        try:
            result = drive(steps)
        except Exception as exc:  # a bug of ours: said, never lost silently
            log.exception("persist.crashed", exc)
            return
        then(result)

    _track_unwaited(_unwaited.submit(run), log, "reply")


def _track_unwaited(future: concurrent.futures.Future[Any], log: RequestLog, role: str) -> None:
    with _unwaited_lock:
        _unwaited_saves[future] = (log, role)
    future.add_done_callback(_forget_unwaited)


def _forget_unwaited(future: concurrent.futures.Future[Any]) -> None:
    with _unwaited_lock:
        _unwaited_saves.pop(future, None)


def finish_unwaited(seconds: float) -> None:
    """For a worker on its way out, before `late_saves` closes: the saves nobody waits
    for are given `seconds` to end (what their wait could not write is in `late_saves`
    by then, its last try and its `persist.lost` line to come); one still waiting then
    is said lost (the worker exits before its wait ends), never dropped silently."""
    with _unwaited_lock:
        under_way = list(_unwaited_saves)
    concurrent.futures.wait(under_way, timeout=seconds)
    with _unwaited_lock:
        left = list(_unwaited_saves.values())
    for log, role in left:
        log.error("persist.lost", role=role, reason=UNDER_WAY)


def drive(steps: Generator[Pending, None, T]) -> T:
    """Run a step generator to its end (nobody to send heartbeats to); its result."""
    while True:
        try:
            pending = next(steps)
        except StopIteration as end:
            return cast(T, end.value)
        pending.wait()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _chars(user: UserMessage | None, assistant: AssistantMessage | None) -> int:
    """About what a reply's late writes hold in memory, in characters: the texts, and
    the structured output and calls as JSON."""
    chars = 0 if user is None else len(user.content)
    if assistant is not None:
        chars += len(assistant.content) + len(assistant.thinking_content)
        if assistant.structured_output is not None or assistant.tools_to_use:
            chars += len(json_text([assistant.structured_output, assistant.tools_to_use]))
    return chars


def _failure(future: concurrent.futures.Future[str]) -> BaseException | None:
    """The exception of a write that ended (None while it runs, or if it was cancelled)."""
    if not future.done() or future.cancelled():
        return None
    return future.exception()


def start_history(
    store: MessageStore,
    request: AssistantRequest,
    author: Author,
    trace_id: str,
    timeout: float,
    log: RequestLog,
) -> concurrent.futures.Future[tuple[Turn, ...]] | None:
    """The history read begun for `read_from_history`, to end within `timeout` seconds
    from now (`history_read` takes its turns); None: nobody's to read."""
    if author.user_id is None:
        log.warning("history.skipped", reason="no user to read the history of")
        return None
    return _pool.submit(
        store.recent_turns,
        request.assistant_id,
        author.user_id,
        request.thread_id,
        request.history_limit,
        trace_id,
        time.monotonic() + timeout,
    )


@dataclass(frozen=True)
class History:
    """What a history read gave the reply: its turns, or none and why (in one line, for
    the reply's metadata: a reply made without its history is told so)."""

    turns: tuple[Turn, ...] = ()
    error: str | None = None

    def before(self, question: str) -> tuple[Turn, ...]:
        """The turns to send before `question`, a question asked again right after it
        went unanswered (a 502's, retried under a new trace id) once: the two were read
        as one turn, the model sent "Q\n\nQ" (a reviewer). A reply with no text between
        them (one that only called a tool, whose calls the history does not hold) is none:
        it is left out here, as providers leave it out (base.py), or the two were joined."""
        turns = tuple(turn for turn in self.turns if not shows_nothing(turn.content))
        following = (*turns[1:], Turn("user", question))
        return tuple(
            turn
            # Not strict: with no turns, `following` holds the question alone.
            for turn, after in zip(turns, following, strict=False)
            if not _asked_again(turn, after)
        )


def _asked_again(turn: Turn, after: Turn) -> bool:
    return turn.role == after.role == "user" and turn.content.strip() == after.content.strip()


def history_read(
    reading: concurrent.futures.Future[tuple[Turn, ...]] | None,
    wait: float,
    timeout: float,
    log: RequestLog,
) -> History:
    """The turns `reading` read, waited for at most `wait` seconds here (none for a read
    waited for parked, up to its `timeout`); none if it failed or is not done by then
    (logged, and said): a reply without its history is better than no reply."""
    if reading is None:
        return History(error=HISTORY_NO_USER)
    try:
        turns = reading.result(timeout=wait)
    except concurrent.futures.TimeoutError:
        # Not begun yet (the pool busy with a slow database's calls): never begun, so
        # that the saves queued behind it do not wait for a read nobody waits for.
        reading.cancel()
        log.error("history.timeout", timeout_s=timeout)
        return History(error=HISTORY_TIMEOUT)
    except Exception as exc:  # any store failure: logged, the reply goes on without history
        reason = f"{type(exc).__name__}: {exc}"
        if _out_of_time(exc):  # the read's own deadline passed as it ran
            log.error("history.timeout", timeout_s=timeout, reason=reason)
            return History(error=HISTORY_TIMEOUT)
        log.error("history.failed", reason=reason)
        return History(error=HISTORY_FAILED)
    log.info("history.loaded", turns=len(turns))
    return History(turns)


def _out_of_time(exc: BaseException) -> bool:
    """A store call that failed because its deadline passed, not because the database
    refused it (retried until its time was up, a refusal is still one: a database that
    takes no connection is not slow). The client library's errors, imported only once
    a read failed."""
    from google.api_core.exceptions import DeadlineExceeded, RetryError

    if isinstance(exc, RetryError):
        return exc.cause is None or _out_of_time(exc.cause)
    return isinstance(exc, DeadlineExceeded | TimeoutError)


HISTORY_NO_USER = "the history was not read: the request names no user"
HISTORY_TIMEOUT = "the history could not be read in time: the reply was made without it"
HISTORY_FAILED = "the history could not be read: the reply was made without it"
