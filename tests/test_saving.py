"""The save pool's and the late writes' own rules, with stores and writes that answer
slowly or fail (saving against the Firestore emulator is in test_store.py)."""

from __future__ import annotations

import concurrent.futures
import datetime
import threading
import time
from collections.abc import Generator

import pytest
from google.api_core.exceptions import (
    DeadlineExceeded,
    PermissionDenied,
    RetryError,
    ServiceUnavailable,
)

from assistant import saving
from assistant.late_saves import UNDER_WAY, LateSaves, Step
from assistant.request import AssistantRequest, Turn
from assistant.store import AssistantMessage, Author, MessageTaken, UserMessage
from assistant.tracing import RequestLog

from .conftest import log_lines

AUTHOR = Author("ada@example.com", "ada@example.com", None)


class SlowHistory:
    """A message store whose history read takes `seconds`: a database in trouble."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.reads_begun = 0
        self._lock = threading.Lock()

    def recent_turns(
        self,
        assistant_id: str,
        user_id: str,
        thread_id: str | None,
        limit: int,
        trace_id: str,
        deadline: float | None = None,
    ) -> tuple[Turn, ...]:
        with self._lock:
            self.reads_begun += 1
        time.sleep(self.seconds)
        return ()

    def save_user_message(self, message: UserMessage) -> str:
        return message.message_id

    def save_assistant_message(self, message: AssistantMessage, user_saved: bool = False) -> str:
        return message.message_id


@pytest.mark.parametrize(
    ("failure", "said", "logged"),
    [
        (DeadlineExceeded("deadline"), saving.HISTORY_TIMEOUT, "history.timeout"),
        (RetryError("out of time", cause=None), saving.HISTORY_TIMEOUT, "history.timeout"),
        (RetryError("out", cause=DeadlineExceeded("x")), saving.HISTORY_TIMEOUT, "history.timeout"),
        # Retried until its time was up, a database that takes no connection: refused.
        (RetryError("out", cause=ServiceUnavailable("x")), saving.HISTORY_FAILED, "history.failed"),
        (PermissionDenied("no"), saving.HISTORY_FAILED, "history.failed"),
        (None, saving.HISTORY_NO_USER, None),
    ],
)
def test_a_history_read_that_failed_says_why(failure, said, logged, capsys) -> None:
    """A read that ran out of its time as it ran is a timeout, as one not done in time is
    (it was logged history.failed); any other failure is one; no user, no read. Each is
    said to the reply, which is made without the history."""
    reading: concurrent.futures.Future[tuple[Turn, ...]] | None = None
    if failure is not None:
        reading = concurrent.futures.Future()
        reading.set_exception(failure)
    read = saving.history_read(reading, 1.0, 1.0, RequestLog("t-history"))
    assert read == saving.History(error=said)
    lines = log_lines(capsys.readouterr().out)
    assert [line["message"] for line in lines] == ([logged] if logged else [])
    assert all(type(failure).__name__ + ": " in line["reason"] for line in lines)  # and why


def test_a_history_read_given_up_before_it_began_never_runs() -> None:
    """Reads nobody waits for any more do not take the pool's threads from the saves
    queued behind them (a reviewer saw a user message's write wait 1.2 s behind 16 such
    reads)."""
    store = SlowHistory(seconds=0.5)
    request = AssistantRequest(assistant_id="a", user_input="hi", read_from_history=True)
    log = RequestLog("t-history")

    def read() -> None:
        reading = saving.start_history(store, request, AUTHOR, "t-history", 0.05, log)
        assert saving.history_read(reading, 0.05, 0.05, log) == saving.History(
            error=saving.HISTORY_TIMEOUT
        )

    readers = [threading.Thread(target=read) for _ in range(16)]  # twice the pool's threads
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    time.sleep(1.5)  # every read begun has ended
    assert store.reads_begun <= 8  # the ones already on a thread when given up


class Flaky:
    """A write that fails `failures` times, then returns its id; every call noted."""

    def __init__(self, message_id: str, calls: list[str], failures: int = 0) -> None:
        self.message_id, self.calls, self.failures = message_id, calls, failures

    def __call__(self) -> str:
        self.calls.append(self.message_id)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database is away")
        return self.message_id


def _wait_until_idle(saves: LateSaves) -> None:
    deadline = time.monotonic() + 10
    while saves.count() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert saves.count() == 0


def test_late_writes_go_in_order_and_are_tried_again(capsys) -> None:
    calls: list[str] = []
    saves = LateSaves(delays=(0.05, 0.05))
    steps = [
        Step("user", Flaky("t-user", calls, failures=1)),
        Step("assistant", Flaky("t-assistant", calls)),
    ]
    saves.add(steps, 10, RequestLog("t"))
    _wait_until_idle(saves)
    assert calls == ["t-user", "t-user", "t-assistant"]  # the reply never before its question
    lines = [(line["message"], line.get("role")) for line in log_lines(capsys.readouterr().out)]
    assert lines == [
        ("persist.late_failed", "user"),
        ("persist.saved_late", "user"),
        ("persist.saved_late", "assistant"),
    ]


def test_an_answer_of_the_store_is_not_tried_again(capsys) -> None:
    """Another user's trace id, or another question under it: not an outage."""
    calls: list[str] = []

    def taken() -> str:
        calls.append("user")
        raise MessageTaken("t-user")

    saves = LateSaves(delays=(0.01,))
    saves.add(
        [Step("user", taken), Step("assistant", Flaky("t-assistant", calls))], 1, RequestLog("t")
    )
    _wait_until_idle(saves)
    assert calls == ["user"]
    assert [line["message"] for line in log_lines(capsys.readouterr().out)] == ["persist.kept"]


def test_past_its_bounds_the_oldest_is_given_up(capsys) -> None:
    saves = LateSaves(delays=(60.0,), max_waiting=1)
    tried = threading.Event()

    def failing() -> str:
        tried.set()
        raise ConnectionError("away")

    saves.add([Step("user", failing)], 1, RequestLog("t-old"))
    assert tried.wait(5) and saves.wait_idle(5)  # its first attempt failed: it waits again
    saves.add([Step("user", failing)], 1, RequestLog("t-new"))
    lost = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    assert [line["trace_id"] for line in lost] == ["t-old"]
    saves.close(0.0)


def test_a_write_still_under_way_when_the_worker_stops_is_logged_lost_if_it_fails(capsys) -> None:
    release = threading.Event()

    def hanging() -> str:
        release.wait(5)
        raise ConnectionError("away")

    saves = LateSaves(delays=(60.0,))
    saves.add([Step("assistant", hanging)], 1, RequestLog("t-hung"))
    time.sleep(0.1)  # the thread is in the write
    saves.close(0.05)  # gives up waiting for it
    release.set()
    assert saves.wait_idle(5)
    lost = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    # Logged once, when `close` gave up on it: it may still land.
    assert [(line["trace_id"], line["reason"]) for line in lost] == [("t-hung", UNDER_WAY)]


def test_a_stopping_worker_tries_what_waits_again_until_the_database_is_back(capsys) -> None:
    """The database is back a moment after the stop, its client still failing a write
    or two as it reconnects: what waits is tried again until its time is up (it was
    tried once and logged lost with seconds to spare, a reviewer)."""
    back_at = time.monotonic() + 0.5

    def write() -> str:
        if time.monotonic() < back_at:
            raise ConnectionError("failed to connect")
        return "t-back-assistant"

    saves = LateSaves(delays=(60.0,))
    saves.add([Step("assistant", write)], 1, RequestLog("t-back"))
    time.sleep(0.1)
    assert saves.wait_idle(5)  # its first attempt failed: the next in a minute
    saves.close(3.0)
    messages = [line["message"] for line in log_lines(capsys.readouterr().out)]
    assert "persist.saved_late" in messages and "persist.lost" not in messages


def test_a_write_under_way_at_the_stop_that_fails_is_tried_again(capsys) -> None:
    """The thread's write was under way when the worker began to stop, and failed: it was
    logged lost at once, never tried again in the stop's time (a reviewer lost two of
    four replies, the database back 3 s into a 9 s stop)."""
    release = threading.Event()
    tries: list[int] = []

    def write() -> str:
        tries.append(1)
        if len(tries) == 1:
            release.wait(5)
            raise ConnectionError("failed to connect")
        return "t-under-way-assistant"

    saves = LateSaves(delays=(60.0,))
    saves.add([Step("assistant", write)], 1, RequestLog("t-under-way"))
    time.sleep(0.1)  # the thread is in the write
    threading.Timer(0.3, release.set).start()
    saves.close(3.0)
    messages = [line["message"] for line in log_lines(capsys.readouterr().out)]
    assert len(tries) == 2
    assert "persist.saved_late" in messages and "persist.lost" not in messages


def test_a_write_the_store_refuses_as_it_is_is_not_tried_again(capsys) -> None:
    """Too large, a value it cannot hold, a bug of ours: a later attempt would be refused
    the same, and hold the text in memory meanwhile."""
    calls: list[str] = []

    def refused() -> str:
        calls.append("assistant")
        raise ValueError("maximum entity size is 1048576 bytes")

    saves = LateSaves(delays=(0.01, 0.01))
    saves.add([Step("assistant", refused)], 1, RequestLog("t"))
    _wait_until_idle(saves)
    assert calls == ["assistant"]
    lost = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    assert [line["role"] for line in lost] == ["assistant"]
    assert "maximum entity size" in lost[0]["reason"]


def test_a_question_refused_as_it_is_does_not_take_its_reply_with_it(capsys) -> None:
    """A question too large for a document (MAX_INPUT_CHARS raised) was logged lost, and
    its short reply with it, never tried, under the question's reason (a reviewer's)."""
    calls: list[str] = []

    def too_large() -> str:
        calls.append("t-user")
        raise ValueError("maximum entity size is 1048576 bytes")

    saves = LateSaves(delays=(0.01, 0.01))
    steps = [Step("user", too_large), Step("assistant", Flaky("t-assistant", calls))]
    saves.add(steps, 2, RequestLog("t"))
    _wait_until_idle(saves)
    assert calls == ["t-user", "t-assistant"]
    lines = log_lines(capsys.readouterr().out)
    lost = [line["role"] for line in lines if line["message"] == "persist.lost"]
    saved = [line["role"] for line in lines if line["message"] == "persist.saved_late"]
    assert (lost, saved) == (["user"], ["assistant"])


def test_closing_takes_no_longer_than_it_is_given(capsys) -> None:
    """A stopping worker has until the kill: the last try of a write that hangs is not
    waited for past the time `close` is given (a save makes several calls, each with a
    deadline of its own: a reviewer's close(1.0) took 1.8 s)."""
    release = threading.Event()
    calls: list[str] = []

    def away_then_hanging() -> str:
        calls.append("user")
        if len(calls) == 1:
            raise ConnectionError("the database is away")
        release.wait(10)
        return "t-user"

    saves = LateSaves(delays=(60.0,))
    saves.add([Step("user", away_then_hanging)], 1, RequestLog("t-hangs"))
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert saves.wait_idle(5)  # its first attempt failed: it waits for the next
    started = time.monotonic()
    saves.close(0.3)
    took = time.monotonic() - started
    release.set()
    assert calls == ["user", "user"]  # tried once more on the way out
    assert took < 1.5
    lost = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    assert [line["trace_id"] for line in lost] == ["t-hangs"]


def test_a_call_the_database_answers_sends_what_waits_at_once() -> None:
    """The database is back: the next late attempt is not left to its time (up to 120 s
    away), so the user's next request finds the earlier turns in the history sooner."""
    calls: list[str] = []
    saves = LateSaves(delays=(60.0,))
    saves.add([Step("user", Flaky("t-user", calls, failures=1))], 1, RequestLog("t"))
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert saves.wait_idle(5) and saves.count() == 1  # failed once: 60 s to its next try
    saves.nudge()
    _wait_until_idle(saves)
    assert calls == ["t-user", "t-user"]


def test_attempts_made_early_cost_none_of_the_schedule(capsys) -> None:
    """Reads succeed while writes still fail: a success sends what waits early, and a
    failed early attempt is not counted, or a busy instance would give a message up
    within seconds, not minutes; one such between two attempts on time, though."""
    calls: list[str] = []
    saves = LateSaves(delays=(60.0, 60.0, 60.0))
    saves.add([Step("user", Flaky("t-user", calls, failures=10))], 1, RequestLog("t"))
    for tries in range(1, 7):
        _wait_for_calls(calls, min(tries, 2))
        assert saves.wait_idle(5)
        saves.nudge()
    time.sleep(0.2)
    assert calls == ["t-user", "t-user"] and saves.count() == 1  # nothing given up
    assert not [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    saves.close(0.0)


def test_a_write_that_keeps_failing_is_given_up_however_often_the_database_answers(
    capsys,
) -> None:
    """Each early attempt that failed cost none of the schedule, and a busy instance's
    every other call sent it again: 27 attempts in 8 s, never given up, never logged."""
    calls: list[str] = []
    saves = LateSaves(delays=(0.2, 0.2, 0.2))
    saves.add([Step("user", Flaky("t-user", calls, failures=1000))], 1, RequestLog("t-never"))
    deadline = time.monotonic() + 10
    while saves.count() and time.monotonic() < deadline:
        saves.nudge()
        time.sleep(0.02)
    assert saves.count() == 0
    assert len(calls) <= 2 * (1 + 3)  # each attempt on time, and one early before it
    lost = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    assert [line["trace_id"] for line in lost] == ["t-never"]


def _wait_for_calls(calls: list[str], count: int) -> None:
    deadline = time.monotonic() + 5
    while len(calls) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= count


def test_closing_tries_what_waits_beside_a_write_that_hangs(capsys) -> None:
    """The thread's write hangs: the others still get their last try on a stop, rather
    than the hung one taking the whole time (a reviewer's B was never tried)."""
    release = threading.Event()
    calls: list[str] = []

    def hanging() -> str:
        calls.append("a-user")
        release.wait(10)
        return "a-user"

    saves = LateSaves(delays=(60.0,))
    saves.add([Step("user", Flaky("b-user", calls, failures=1))], 1, RequestLog("t-b"))
    _wait_for_calls(calls, 1)
    assert saves.wait_idle(5)  # B failed once: 60 s to its next try
    saves.add([Step("user", hanging)], 1, RequestLog("t-a"))
    _wait_for_calls(calls, 2)  # A's write hangs on the thread
    saves.close(1.0)
    release.set()
    assert calls == ["b-user", "a-user", "b-user"]
    lost = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    assert [(line["trace_id"], line["reason"]) for line in lost] == [("t-a", UNDER_WAY)]


def test_a_late_write_that_succeeds_sends_the_others_at_once() -> None:
    calls: list[str] = []
    saves = LateSaves(delays=(60.0,))
    saves.add([Step("user", Flaky("a-user", calls, failures=1))], 1, RequestLog("t-a"))
    _wait_for_calls(calls, 1)
    assert saves.wait_idle(5)  # A failed once: 60 s to its next try
    saves.add([Step("user", Flaky("b-user", calls))], 1, RequestLog("t-b"))
    _wait_until_idle(saves)  # B written: the database is back, so A goes at once
    assert calls == ["a-user", "b-user", "a-user"]


class TakenTraceId(SlowHistory):
    """A store whose user message finds the trace id another user's (their message came
    first, or at the same moment and both were taken back), and which notes what it is
    asked to write."""

    def __init__(self) -> None:
        super().__init__(seconds=0)
        self.replies: list[str] = []

    def save_user_message(self, message: UserMessage) -> str:
        raise MessageTaken(message.message_id)

    def save_assistant_message(self, message: AssistantMessage, user_saved: bool = False) -> str:
        self.replies.append(message.message_id)
        return message.message_id


def test_a_reply_is_not_written_when_its_question_was_not() -> None:
    """Two users on one trace id at once may both be taken back (store.py): the reply
    then found the id free and was saved without its question."""
    store = TakenTraceId()
    saver = saving.Saver(store, timeout=2, log=RequestLog("t-both"))
    saver.start_user_message(UserMessage("a", "t-both", None, AUTHOR, "hi"))
    reply = AssistantMessage("a", "t-both", None, AUTHOR, "hello", "", "complete", None, None)
    ids, failed = saving.drive(saver.finishing(reply, None))
    assert (ids, failed) == ({}, True)
    assert store.replies == []


class Recording:
    """A message store that keeps what it was asked to write."""

    def __init__(self) -> None:
        self.saved: list[AssistantMessage] = []

    def save_user_message(self, message: UserMessage) -> str:
        return message.message_id

    def save_assistant_message(self, message: AssistantMessage, user_saved: bool = False) -> str:
        self.saved.append(message)
        return message.message_id


def test_a_save_driven_later_is_dated_when_it_was_asked_for() -> None:
    """A reply whose client left is saved off its thread, maybe queued: dated when its
    first step ran, it came after the user's next question in the history (a reviewer)."""
    store = Recording()
    reply = AssistantMessage("a", "t-late", None, AUTHOR, "partial", "", "incomplete", None, None)
    asked = datetime.datetime.now(datetime.UTC)
    steps = saving.Saver(store, 5, RequestLog("t-late")).finishing(reply, None)  # type: ignore[arg-type]
    time.sleep(0.5)  # queued behind other saves
    saving.drive(steps)
    [saved] = store.saved
    assert saved.created_at is not None and saved.created_at - asked < datetime.timedelta(
        seconds=0.3
    )


def test_an_unwaited_save_still_under_way_when_the_worker_stops_is_said_lost(capsys) -> None:
    """Its wait outlasts the worker's time left: it is logged lost, not dropped silently
    at the exit (a reviewer, with PERSIST_TIMEOUT_SECONDS of 10)."""
    never: concurrent.futures.Future[str] = concurrent.futures.Future()

    def hanging() -> Generator[saving.Pending, None, None]:
        yield saving.Pending(never, 2.0)

    saving.drive_unwaited(hanging(), lambda _: None, RequestLog("t-unwaited"))
    saving.finish_unwaited(0.2)
    lost = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    # Under way: it may still land, as a late save's write under way at the exit may.
    assert [(line["trace_id"], line["reason"]) for line in lost] == [("t-unwaited", UNDER_WAY)]
    never.set_result("done")  # the thread goes back to the pool


def test_a_question_whose_write_hangs_when_the_worker_stops_is_said_lost(capsys) -> None:
    """A question no reply follows (its client left, the worker stopping) is written off
    the thread: one still hanging at the exit was in no list the exit looks at, and was
    dropped without a line naming it (a reviewer)."""
    written = threading.Event()

    class Hanging(Recording):
        def save_user_message(self, message: UserMessage) -> str:
            written.wait(5)
            return message.message_id

    question = UserMessage("a", "t-asked", None, AUTHOR, "asked at the stop")
    saving.save_question(Hanging(), question, RequestLog("t-asked"))  # type: ignore[arg-type]
    saving.finish_unwaited(0.2)
    written.set()
    lost = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "persist.lost"
    ]
    assert [(line["trace_id"], line["role"]) for line in lost] == [("t-asked", "user")]


def test_a_question_refused_as_it_is_after_the_wait_is_not_written_again(capsys) -> None:
    """Its write still under way when the wait ended, then refused as it is: the late
    write sent it again, to be refused the same (a reviewer's)."""
    calls: list[str] = []
    refused: concurrent.futures.Future[str] = concurrent.futures.Future()
    refused.set_exception(ValueError("maximum entity size is 1048576 bytes"))

    def again() -> str:
        calls.append("t-user")
        return "t-user"

    saves = LateSaves(delays=(0.01, 0.01))
    steps = [Step("user", again, under_way=refused), Step("assistant", Flaky("t-assistant", calls))]
    saves.add(steps, 2, RequestLog("t"))
    _wait_until_idle(saves)
    assert calls == ["t-assistant"]


def test_a_question_no_reply_follows_refused_as_it_is_is_not_queued(capsys) -> None:
    calls: list[str] = []

    class TooLarge(Recording):
        def save_user_message(self, message: UserMessage) -> str:
            calls.append(message.message_id)
            raise ValueError("maximum entity size is 1048576 bytes")

    question = UserMessage("a", "t-big", None, AUTHOR, "q" * 10)
    saving.save_question(TooLarge(), question, RequestLog("t-big"))  # type: ignore[arg-type]
    saving.finish_unwaited(2)
    time.sleep(0.2)  # a late write, were one queued, would have begun (its first is at once)
    assert calls == ["t-big-user"]
    lost = [
        line["role"]
        for line in log_lines(capsys.readouterr().out)
        if line["message"] == "persist.lost"
    ]
    assert lost == ["user"]


def test_a_stored_reply_that_shows_nothing_is_no_reply_between_a_question_asked_twice() -> None:
    """What shows nothing was told three ways: a stored reply of a zero-width space kept
    the question asked again apart, and the model was sent it twice (a reviewer's)."""
    stored = (Turn("user", "Q"), Turn("assistant", "\u200b"))
    assert saving.History(turns=stored).before("Q") == ()
