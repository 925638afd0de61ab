"""Persistence interface: what a reply hands over to be saved, and who saves it.

A reply writes at most two messages, with ids derived from the trace id
(`{traceId}-user`, `{traceId}-assistant`) so a retried request overwrites
instead of duplicating. Only the same user's: a trace id is the caller's to
choose, and one whose messages belong to another user is not written to
(`MessageTaken`), so nobody can replace someone else's history with theirs.
Nor is a complete reply replaced by a retry's incomplete one, nor a trace
id's question and reply by another question's (`TraceIdKept`).
The user message is written in parallel with the provider call; the
assistant message once, after the stream, before the final frame. Writes
are blocking calls on a small thread pool, never on the I/O loop, and the
reply waits for them no longer than its persist timeout.

A request with `save_to_history` false gives its reply no store (None):
nothing is written and no message ids are reported (a history read, with
`read_from_history`, still uses one).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import config, sse
from .request import Turn
from .tools import without_fence


@dataclass(frozen=True)
class Author:
    """Who sent the user message; `user_id` is what rules and history queries key on."""

    user_id: str | None
    email: str | None
    name: str | None


@dataclass(frozen=True)
class UserMessage:
    assistant_id: str
    trace_id: str
    thread_id: str | None
    author: Author
    content: str
    # The service dates its messages (saving.py: the request's time), so one that lands
    # late keeps its place in the history; None: the database's time at the write.
    created_at: datetime.datetime | None = None

    @property
    def message_id(self) -> str:
        return f"{self.trace_id}-user"


@dataclass(frozen=True)
class AssistantMessage:
    assistant_id: str
    trace_id: str
    thread_id: str | None
    author: Author  # the user this reply answers, so their history query finds it
    content: str  # visible text, thinking removed
    thinking_content: str
    status: str  # "complete" | "incomplete"
    provider: str | None
    model: str | None
    model_version: str | None = None
    usage: dict[str, int | None] = field(default_factory=dict)
    stop_reason: str | None = None
    structured_output: Any = None
    tools_to_use: tuple[dict[str, Any], ...] = ()
    question: str | None = None  # the user input it answers: a retry's is the same
    created_at: datetime.datetime | None = None  # as UserMessage's

    @property
    def message_id(self) -> str:
        return f"{self.trace_id}-assistant"


# Writes of one reply that may meet the same user's other retries of it (each round of
# conditional writes lets one through).
WRITE_ATTEMPTS = 3


class MessageTaken(Exception):
    """The message's id (its trace id's) holds another user's message, left as it is."""

    def __init__(self, message_id: str, note: str = "") -> None:
        super().__init__(f"{message_id} belongs to another user{note}")


class TraceIdKept(Exception):
    """A retry's message is not written over what its trace id holds: another question
    (the id was reused for a new one), or a complete reply (this one is incomplete)."""


class MessageStore(Protocol):
    def save_user_message(self, message: UserMessage) -> str:
        """Write the user message (a retry keeps the first); returns its id. Raises on failure,
        MessageTaken if the id holds another user's message."""
        ...

    def save_assistant_message(self, message: AssistantMessage, user_saved: bool = False) -> str:
        """Write (or overwrite, for the same user) the assistant message; returns its id.
        Raises on failure, MessageTaken if the trace id's messages are another user's
        (`user_saved`: this request saved the user message, so they are not), and
        TraceIdKept if what its id holds stays (README "Persistence")."""
        ...

    def recent_turns(
        self,
        assistant_id: str,
        user_id: str,
        thread_id: str | None,
        limit: int,
        trace_id: str,
        deadline: float | None = None,
    ) -> tuple[Turn, ...]:
        """The user's last `limit` turns, oldest first, by `deadline` (time.monotonic()) if
        given. Raises on failure."""
        ...


_REPLY_FIELDS = ("provider", "model", "usage", "stopReason", "structuredOutput", "toolsToUse")


class FirestoreStore:
    """Messages in `{collection}/{assistantId}/messages/{messageId}` on Firestore.

    The client library is imported and its client created on first use, once
    per process: a request that saves nothing never pays for them. Each call
    carries a deadline of `timeout`; a save makes a few calls (the trace id's check,
    the write, a retry's read and rewrite), so it can hold a pool thread a few times
    that, never without end.
    """

    def __init__(
        self,
        collection: str,
        timeout: float,
        project: str | None = None,
        database: str = "(default)",
    ) -> None:
        """`project`: the settings' (config.py), by default as the environment gives it."""
        self._collection = collection
        self._timeout = timeout
        self._project = config.project_id() if project is None else project
        self._database = database

    def _client(self) -> Any:
        return _firestore_client(self._project, self._database)

    def _messages(self, assistant_id: str) -> Any:
        return (
            self._client()
            .collection(self._collection)
            .document(assistant_id)
            .collection("messages")
        )

    def _call_options(self) -> dict[str, Any]:
        from google.api_core.retry import Retry

        return {
            "retry": Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=self._timeout),
            "timeout": self._timeout,
        }

    def save_user_message(self, message: UserMessage) -> str:
        from google.api_core.exceptions import AlreadyExists
        from google.cloud.firestore import SERVER_TIMESTAMP

        document = {
            "role": "user",
            "content": message.content,
            "status": "complete",
            "createdAt": message.created_at or SERVER_TIMESTAMP,
            **_common_fields(message.trace_id, message.thread_id, message.author),
            # The contract names these for every message; a question has no value for
            # them (one the frontend saves itself has only what firestore.rules allow).
            **dict.fromkeys(_REPLY_FIELDS),
        }
        _, reply = self._check_trace(message.assistant_id, message.trace_id, message.author)
        reference = self._messages(message.assistant_id).document(message.message_id)
        for _ in range(WRITE_ATTEMPTS):
            try:
                written = reference.create(document, **self._call_options())
                if not reply.exists:
                    self._unless_taken_since(message, reference, written, "assistant")
                return message.message_id
            except AlreadyExists:  # a retried request: the first write stands, with its createdAt
                existing = self._owned(reference, message.author, message.message_id)
                if existing.exists:
                    if _asks_another(existing, message.content, message.thread_id):
                        # Not a retry but a reused trace id: its question and reply stay
                        # together, and this request's are not saved (the reply's too).
                        raise TraceIdKept(f"{message.message_id} holds another question") from None
                    thread = message.thread_id
                    if (
                        thread is not None
                        and _threadless(existing)
                        and (not reply.exists or _field(reply, "threadId") == thread)
                    ):
                        # The frontend's, saved with no thread (and the request did not say
                        # so): filed with the reply to come, as `save_assistant_message`
                        # files one it reads. Not if a reply stands in another thread.
                        self._file_in_thread(existing, thread)
                    return message.message_id
                # Deleted since create() found it: create it again.
        raise RuntimeError(f"{message.message_id} kept changing while it was written")

    def save_assistant_message(self, message: AssistantMessage, user_saved: bool = False) -> str:
        from google.cloud.firestore import SERVER_TIMESTAMP

        # What the model and its provider made: as Firestore can hold it, else as JSON
        # text, the fields so saved named (a string output and an output saved as its
        # text read alike: a reviewer's).
        made = {
            "model": message.model,
            "modelVersion": message.model_version,
            "usage": message.usage,
            "stopReason": message.stop_reason,
            "structuredOutput": message.structured_output,
            "toolsToUse": list(message.tools_to_use),
        }
        document = {
            "role": "assistant",
            "content": message.content,
            "thinkingContent": message.thinking_content,
            "status": message.status,
            "provider": message.provider,
            **{name: as_stored(value) for name, value in made.items()},
            "createdAt": message.created_at or SERVER_TIMESTAMP,
            # When the reply ended: of two replies under one id (a retry's), the later
            # one stands, whichever write lands last.
            "answeredAt": message.created_at,
            **_common_fields(message.trace_id, message.thread_id, message.author),
        }
        document = _within_size(document, message.tools_to_use)
        # Named once the size trims are done: one may have taken a text out (a reviewer's).
        as_text = [n for n in made if isinstance(document[n], str) and not isinstance(made[n], str)]
        if as_text:
            document["savedAsJsonText"] = as_text
        question: Any = None  # the trace id's user message as read, if it was
        if not user_saved:  # else the user message's write checked the trace id (one read less)
            question, _ = self._check_trace(message.assistant_id, message.trace_id, message.author)
            if _another_question(question, message):  # the frontend saved it, for another
                raise TraceIdKept(f"{message.trace_id}-user holds another question")
            asked_at = _field(question, "createdAt") if question is not None else None
            if message.created_at is not None and isinstance(asked_at, datetime.datetime):
                # The reply's own time, but never before its question's (one the
                # frontend saved has the database's time).
                after = asked_at + datetime.timedelta(microseconds=1)
                document["createdAt"] = max(message.created_at, after)
        self._write_reply(message, document, question)
        if message.thread_id is not None and _threadless(question):
            # Only once the reply is in that thread: a retry refused for another thread's
            # reply had moved the question there, the pair split between two threads.
            self._file_in_thread(question, message.thread_id)
        return message.message_id

    def _write_reply(
        self, message: AssistantMessage, document: dict[str, Any], question: Any
    ) -> None:
        """`save_assistant_message`'s write: created, or an earlier reply under its id
        replaced (TraceIdKept when that one stands)."""
        from google.api_core.exceptions import AlreadyExists, FailedPrecondition
        from google.cloud.firestore import DELETE_FIELD

        reference = self._messages(message.assistant_id).document(message.message_id)
        options = self._call_options()
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                written = reference.create(document, **options)
                if question is not None and not question.exists:
                    self._unless_taken_since(message, reference, written, "user")
                return
            except AlreadyExists:  # a retried request replaces its earlier reply
                existing = self._owned(reference, message.author, message.message_id)
            if not existing.exists:
                continue  # deleted since create() found it: create it again
            if _field(existing, "threadId") != message.thread_id:
                # Another exchange's (a question the frontend saved with no thread is in
                # any): replaced, its reply would move to this request's thread.
                raise TraceIdKept(f"{message.message_id} holds another thread's reply")
            answered_at = _field(existing, "answeredAt")
            timed = message.created_at is not None and isinstance(answered_at, datetime.datetime)
            if timed and answered_at == message.created_at:  # this reply: its own write landed
                return
            # A complete reply over an incomplete one, whichever ended later and whichever
            # write lands first (a retry cut off after the first try's complete reply, its
            # write landing first, took that reply's place); else the later one stands.
            statuses = (_field(existing, "status"), message.status)
            if statuses == ("complete", "incomplete"):
                raise TraceIdKept(f"{message.message_id} holds a complete reply, kept")
            if (
                timed
                and statuses != ("incomplete", "complete")
                and answered_at > message.created_at
            ):
                raise TraceIdKept(f"{message.message_id} holds a newer reply, kept")
            # Only if nobody wrote it since it was read: another user's write cannot get
            # in between, and the same user's other retry makes this one read again.
            unchanged = self._client().write_option(last_update_time=existing.update_time)
            # The reply keeps its place in the history: after its question, before the
            # next ones (a late retry's new time put it after them); one that ended
            # before the reply it replaces (a complete one over a later, cut one) takes
            # its own, earlier place.
            replacement = {name: value for name, value in document.items() if name != "createdAt"}
            created, placed = document["createdAt"], _field(existing, "createdAt")
            if _both_times(created, placed) and created < placed:
                replacement["createdAt"] = created
            # An update keeps the fields it does not name: the earlier reply's flag too.
            replacement.setdefault("structuredOutputInContent", DELETE_FIELD)
            replacement.setdefault("toolSignaturesLeftOut", DELETE_FIELD)
            replacement.setdefault("savedAsJsonText", DELETE_FIELD)
            try:
                reference.update(replacement, option=unchanged, **options)
                return
            except FailedPrecondition:
                if attempt == WRITE_ATTEMPTS:
                    raise
        raise RuntimeError(f"{message.message_id} kept changing while it was written")

    def _file_in_thread(self, question: Any, thread_id: str) -> None:
        """The frontend saved the question with no thread, and asked in `thread_id`: the
        question goes there with its reply (left out, the thread's history read had the
        reply alone, merged with the reply before it). Not if it changed since it was
        read (it is then as its writer left it)."""
        from google.api_core.exceptions import FailedPrecondition, NotFound

        unchanged = self._client().write_option(last_update_time=question.update_time)
        with contextlib.suppress(FailedPrecondition, NotFound):
            question.reference.update(
                {"threadId": thread_id}, option=unchanged, **self._call_options()
            )

    def _check_trace(self, assistant_id: str, trace_id: str, author: Author) -> tuple[Any, Any]:
        """MessageTaken if either of the trace id's messages is another user's: a reply is
        not attached to someone else's question, nor a question to their reply. Returns
        the two messages' snapshots as read (user, assistant).

        Read just before the write: another user starting on the same trace id within
        those milliseconds gets past it, and `_unless_taken_since` looks again after.
        """
        messages = self._messages(assistant_id)
        references = [messages.document(f"{trace_id}-{role}") for role in ("user", "assistant")]
        read = {}
        for snapshot in self._client().get_all(references, **self._call_options()):
            if _someone_elses(snapshot, author):
                raise MessageTaken(snapshot.id)
            read[snapshot.id] = snapshot
        return read[f"{trace_id}-user"], read[f"{trace_id}-assistant"]

    def _unless_taken_since(
        self, message: UserMessage | AssistantMessage, written: Any, result: Any, other: str
    ) -> None:
        """After writing one of the trace id's messages, with the `other` missing when it
        was checked: if another user's has come since (a second user starting on the
        same trace id in those milliseconds: a reviewer did, 8 times in 60), this write
        is taken back (only if nothing changed it since) and MessageTaken raised, so
        two users' messages are never left paired. Should both look at once, both go:
        neither was asked first."""
        options = self._call_options()
        paired = self._messages(message.assistant_id).document(f"{message.trace_id}-{other}")
        snapshot = paired.get(**options)
        if _someone_elses(snapshot, message.author):
            unchanged = self._client().write_option(last_update_time=result.update_time)
            try:
                written.delete(option=unchanged, **options)
            except Exception as exc:  # still another user's id: no outage to try again
                note = f"; {written.id} could not be taken back ({type(exc).__name__}: {exc})"
                raise MessageTaken(snapshot.id, note) from exc
            raise MessageTaken(snapshot.id)

    def _owned(self, reference: Any, author: Author, message_id: str) -> Any:
        """The existing message, if it is this author's; MessageTaken if it is another user's."""
        existing = reference.get(**self._call_options())
        if _someone_elses(existing, author):
            raise MessageTaken(message_id)
        return existing

    def recent_turns(
        self,
        assistant_id: str,
        user_id: str,
        thread_id: str | None,
        limit: int,
        trace_id: str,
        deadline: float | None = None,
    ) -> tuple[Turn, ...]:
        """This user's last `limit` messages (of the thread, if given), oldest first,
        as many of the newest as MAX_HISTORY_CHARS of text holds.

        Messages of `trace_id` itself are left out: on a retried request they
        would repeat the question being asked now. Only the fields a turn needs are
        read (a reply's thinking can be most of its document), and the read stops
        at the budget: 500 messages of a megabyte would be half a gigabyte in memory
        and in the provider's request.
        """
        from google.cloud.firestore import FieldFilter, Query

        # The caller's (its wait began when it asked: this may have waited for a thread of
        # the store's, and a lookup that went past it lost the whole history), else as
        # long as a call may take.
        deadline = deadline or time.monotonic() + self._timeout
        query = self._messages(assistant_id).where(filter=FieldFilter("userId", "==", user_id))
        if thread_id is not None:
            query = query.where(filter=FieldFilter("threadId", "==", thread_id))
        # Two more: the trace id's own messages (a retry's, or a question the frontend
        # saved itself) are left out after the query, and must not shorten the history.
        query = query.order_by("createdAt", direction=Query.DESCENDING).limit(limit + 2)
        query = query.select(["role", "content", "traceId"])
        newest_first: list[tuple[Turn, Any]] = []  # with each one's trace id
        chars = 0
        for snapshot in query.stream(**self._call_options()):
            data = snapshot.to_dict() or {}
            if data.get("traceId") == trace_id or data.get("role") not in ("user", "assistant"):
                continue
            text = _text(data.get("content"))
            chars += len(text)
            if chars > MAX_HISTORY_CHARS or len(newest_first) == limit:
                break  # the rest is older
            newest_first.append((Turn(data["role"], text), data.get("traceId")))
        oldest_first = self._whole_exchanges(assistant_id, user_id, newest_first[::-1], deadline)
        return _questions_before_their_replies(oldest_first)

    def _whole_exchanges(
        self, assistant_id: str, user_id: str, turns: list[tuple[Turn, Any]], deadline: float
    ) -> list[tuple[Turn, Any]]:
        """`turns` without the questions whose reply the store holds outside them. One
        dated after its reply (a question the frontend saved itself, landing late) may be
        in the window while its reply is not: kept alone, it was merged with the next
        question, or with the one asked now. Their replies are looked up by id, in one
        call, only when a question in the window has none there (a 502's question, say),
        the newest first, in the time the read has left: a lookup that fails or has no
        time left keeps `turns` as they are (their history is not lost for it)."""
        from google.api_core.retry import Retry

        replied = {trace for turn, trace in turns if turn.role == "assistant"}
        alone = [
            trace for turn, trace in turns if turn.role == "user" and trace and trace not in replied
        ][-MOST_QUESTIONS_LOOKED_UP:]
        left = deadline - time.monotonic() - LOOKUP_MARGIN_SECONDS
        if not alone or left <= 0:
            return turns
        messages = self._messages(assistant_id)
        references = [messages.document(f"{trace}-assistant") for trace in alone]
        retry = Retry(initial=0.1, maximum=1.0, multiplier=2.0, timeout=left)
        try:
            elsewhere = {
                snapshot.id.removesuffix("-assistant")
                for snapshot in self._client().get_all(
                    references, field_paths=["userId"], retry=retry, timeout=left
                )
                if snapshot.exists and (snapshot.to_dict() or {}).get("userId") == user_id
            }
        except Exception:  # any store failure: the window as it was read
            return turns
        return [
            (turn, trace) for turn, trace in turns if turn.role != "user" or trace not in elsewhere
        ]


def _questions_before_their_replies(turns: list[tuple[Turn, Any]]) -> tuple[Turn, ...]:
    """`turns` (oldest first, with their trace ids), each reply right after its question.

    A question the frontend saves itself (`user_message_already_saved`) is dated by
    the database when its write lands: one that lands after the reply ended came after
    it in `createdAt` order, and the history gave the model the reply before its
    question, the question merged with the next one. Two exchanges of one thread that
    overlapped (two tabs) are dated question, question, reply, reply: each reply now
    follows its own question (they came merged, a reply under the other's question).
    A reply whose question is not among `turns` (past the window) is left out: the
    model would read it as the answer to the question before it."""
    questions = {trace: turn for turn, trace in turns if turn.role == "user" and trace}
    replies = {trace: turn for turn, trace in turns if turn.role == "assistant" and trace}
    placed: set[Any] = set()  # trace ids whose exchange is in `ordered`
    ordered: list[Turn] = []
    for turn, trace in turns:
        if not trace:  # no id to pair it by: where it is
            ordered.append(turn)
        elif trace in questions and trace not in placed:
            placed.add(trace)
            ordered.append(questions[trace])
            if trace in replies:
                ordered.append(replies[trace])
    return tuple(ordered)


# Questions without their reply in a history's window whose reply is looked up, at most
# (the newest), and the time the lookup leaves the read's caller, which waits as long.
MOST_QUESTIONS_LOOKED_UP = 100
LOOKUP_MARGIN_SECONDS = 0.1
# Text a history read gives the model at most, newest messages first: what a request's
# body could carry in chat_history (MAX_BODY_BYTES' default).
MAX_HISTORY_CHARS = 1_000_000
# A document is at most 1 MiB (1,048,576 bytes), its name and field names included;
# this leaves room for those. And it holds at most 40,000 index entries: each value
# is indexed (a map's fields, an array's elements, a single-field index each way),
# so a document of more values than this cannot be written either.
MAX_DOCUMENT_BYTES = 1_000_000
MAX_STORED_VALUES = 15_000


def _within_size(document: dict[str, Any], calls: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    """The reply's document, without what it holds twice when that is more than a
    document holds, least lost first:
    - its structured output (the text in `content`, the parsed object in
      `structuredOutput`): the text alone is kept, and `structuredOutputInContent`
      says the object is the content parsed (a reply of half a megabyte of JSON, or
      of many small numbers, 8 bytes each to Firestore, was not saved at all);
    - its tool calls' signatures (Anthropic's carries the reply's thinking blocks
      again, which `thinkingContent` holds), from `calls`, the reply's own (the
      document may hold them as JSON text): the calls are kept without them, and
      `toolSignaturesLeftOut` says so (a call after a long thinking was not saved);
    - both. Else the document as it is, which the write then refuses."""
    if _fits(document):
        return document
    # `content` is then the JSON itself, not a ```json fence the model put around it.
    as_text = {
        "content": without_fence(document["content"].strip()),
        "structuredOutput": None,
        "structuredOutputInContent": True,
    }
    unsigned = {
        "toolsToUse": as_stored([_without(call, "signature") for call in calls]),
        "toolSignaturesLeftOut": True,
    }
    trims = []
    if document["structuredOutput"] is not None:
        trims.append(as_text)
    if any("signature" in call for call in calls):
        trims.append(unsigned)
        if document["structuredOutput"] is not None:
            trims.append({**as_text, **unsigned})
    for trim in trims:
        if _fits(trimmed := {**document, **trim}):
            return trimmed
    return document


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in mapping.items() if name != key}


def _fits(document: dict[str, Any]) -> bool:
    size, values = _stored_size(document)
    return size <= MAX_DOCUMENT_BYTES and values <= MAX_STORED_VALUES


def _stored_size(value: Any) -> tuple[int, int]:
    """(bytes, values) as Firestore counts a value's size: a string's UTF-8 bytes and one,
    8 for a number or a timestamp, 1 for a boolean or null, a map's keys (bytes and one)
    and values, an array's values. `as_stored` has bounded the nesting."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 1, 1
    if value is None or isinstance(value, bool):
        return 1, 1
    if isinstance(value, dict):
        size, values = 0, 0
        for key, item in value.items():
            item_size, item_values = _stored_size(item)
            size += len(str(key).encode("utf-8", "surrogatepass")) + 1 + item_size
            values += item_values
        return size, values
    if isinstance(value, list | tuple):
        sizes = [_stored_size(item) for item in value]
        return sum(size for size, _ in sizes), sum(values for _, values in sizes)
    return 8, 1  # a number, a timestamp, the server's time to come


def _both_times(*values: Any) -> bool:
    return all(isinstance(value, datetime.datetime) for value in values)


def _another_question(question: Any, message: AssistantMessage) -> bool:
    """The trace id's user message (as read, or None) asks another question than the
    one `message` answers."""
    return (
        question is not None
        and question.exists
        and message.question is not None
        and _asks_another(question, message.question, message.thread_id)
    )


def _asks_another(question: Any, content: str, thread_id: str | None) -> bool:
    """Whether a trace id's user message (as read, existing) is another exchange's than
    one asking `content` in `thread_id`: another question, or the same one in another
    thread (a retry's reply filed in its own thread left the exchange out of both
    threads' history). A question the frontend saved without a `threadId` is in any."""
    fields = question.to_dict() or {}
    return fields.get("content") != content or fields.get("threadId", thread_id) != thread_id


def _threadless(question: Any) -> bool:
    """Whether a trace id's user message (as read, or None) exists with no `threadId`."""
    return question is not None and question.exists and "threadId" not in question.to_dict()


def _text(content: Any) -> str:
    """A message's content as history: text, or nothing. The rules let a signed-in user
    write their own messages, and a map or a number there must not fail every later
    history read of theirs."""
    return content if isinstance(content, str) else ""


def _field(snapshot: Any, name: str) -> Any:
    return (snapshot.to_dict() or {}).get(name)


def _someone_elses(snapshot: Any, author: Author) -> bool:
    return bool(snapshot.exists) and (snapshot.to_dict() or {}).get("userId") != author.user_id


# Firestore's own limits on a field's value (measured on its emulator): containers
# nested 20 deep at most, no array directly in an array, integers of 64 bits, and
# map keys that are not empty, not `__like_this__`, and short (a field's whole path
# is at most 1,500 bytes; 1,400 leaves room for the path's dots and quotes).
MAX_STORED_DEPTH = 20
MAX_STORED_PATH_BYTES = 1_400
_RESERVED_KEY = re.compile(r"__.*__", re.DOTALL)


def as_stored(value: Any) -> Any:
    """`value` as it is when Firestore can hold it, else its JSON text (a string field).

    A model's structured output, a call's arguments or a provider's odd field can be
    perfectly good JSON that Firestore refuses (a matrix is arrays in an array), and one
    refused value fails the whole message's write: the reply's text with it.
    """
    return value if _storable(value, depth=0, path_bytes=0) else sse.json_text(value)


def _storable(value: Any, depth: int, path_bytes: int) -> bool:
    if isinstance(value, bool | float | str) or value is None:
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    if depth == MAX_STORED_DEPTH:
        return False
    if isinstance(value, list | tuple):
        return all(
            not isinstance(item, list | tuple) and _storable(item, depth + 1, path_bytes)
            for item in value
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key or _RESERVED_KEY.fullmatch(key):
                return False
            key_path = path_bytes + len(key.encode("utf-8", "surrogatepass")) + 3
            if key_path > MAX_STORED_PATH_BYTES or not _storable(item, depth + 1, key_path):
                return False
        return True
    return False


def _common_fields(trace_id: str, thread_id: str | None, author: Author) -> dict[str, Any]:
    return {
        "traceId": trace_id,
        "threadId": thread_id,
        "userId": author.user_id,
        "userEmail": author.email,
        "userName": author.name,
    }


_clients: dict[tuple[str, str, str | None], Any] = {}
_clients_lock = threading.Lock()


def _firestore_client(project: str, database: str) -> Any:
    """One client per process (per project, database and emulator host, so tests can
    switch)."""
    key = (project, database, os.environ.get("FIRESTORE_EMULATOR_HOST"))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            from .firestore_client import QuickToReconnect

            client = QuickToReconnect(project=project or None, database=database)
            _clients[key] = client
        return client
