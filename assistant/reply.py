"""One reply: the chain's output turned into SSE frames or a JSON answer.

The chain runs on the I/O loop and puts items in a bounded outbox (outbox.py:
past its limit the chain stops reading the upstream); this side, on the
request thread, waits on it with a timeout. The wait is what gives
heartbeats while the upstream is silent, and what lets us notice a client
that left (a failed write raises GeneratorExit; `client_gone` peeks at the
socket between waits) and cancel the upstream request at once.

Chunk frames are written by the loop itself while the client's socket takes
them (direct.py): under the server from the first, with the response's
head; elsewhere once this thread wrote the head and first frame. This thread then
wakes only for what is not text, heartbeats and the client check, and takes
the socket back before it writes anything. Under the server (`parking`) the
reply does not even hold a thread meanwhile: instead of waiting on the
outbox it yields a `Park`, and the server lets go of the thread until the
outbox has something or the wait would have ended (worker.py "parking").

Every stream ends with exactly one terminal frame (final answer or error)
and `[DONE]`, whatever happens; the record of what arrived is handed to the
store once, before the terminal frame, or in `finally` when the client left.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import queue
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any, cast

from . import aio, record, sse
from .chain import (
    Attempt,
    Chain,
    ChainCrashed,
    ChainFailed,
    ChainReport,
    ChainSucceeded,
    Chunk,
    Item,
    Outcome,
    Restart,
)
from .config import Settings
from .direct import ClientSocket
from .errors import MESSAGES, ErrorCode
from .outbox import DirectWrites, Outbox, Unsent, WriteFailed
from .parking import EARLY_SECONDS, Park, until_done
from .providers.base import Prompt, Provider, ProviderError
from .request import AssistantRequest, Turn
from .saving import Pending, Saver, drive, drive_unwaited, user_message
from .store import Author, MessageStore
from .thinking import ThinkingSplitter, with_thinking_closed
from .tools import ToolCall
from .tracing import RequestLog

# How often a waiting reply checks that its client is still there.
CLIENT_POLL_SECONDS = 1.0
# The longest a reply a stopping worker ended waits for its save: the worker lets go of
# what is still parked STOP_SAVE_SECONDS (7) after the signal and ends the streams at
# most a second after it when the save wait is longer (worker.stop_end_seconds). With
# PERSIST_TIMEOUT_SECONDS above 6 a stream's save outlasted that, and it ended with no
# terminal frame (a reviewer).
STOP_SAVE_WAIT_SECONDS = 5.0
# The shortest wait for the store at the end between looks whether a heartbeat is due
# (a quarter of the heartbeat, if that is shorter).
SHORTEST_LOOK_SECONDS = 0.25


def _nothing(_: object) -> None:
    pass


def failure_status(outcome: ChainFailed | ChainCrashed) -> int:
    """The HTTP status of a reply that failed before anything was shown (SSE) or at all (JSON)."""
    if isinstance(outcome, ChainCrashed):
        return 500
    if outcome.error is not None and outcome.error.code == "reply_too_long":
        return 504
    if outcome.error is not None and outcome.error.code == "overloaded":
        return 503  # the instance is stopping (`Reply.stop_early`): another one takes a retry
    return 502


class _Commit:
    """What `_sse_frames` hands on for an item that commits the reply but is no frame (a
    tool call): its status goes out now, with the frames the loop framed and had not
    written yet, or else with a `: ping` (a ping beside them was a stray one, sent at
    no heartbeat's time: a reviewer's)."""


_COMMIT = _Commit()


class ClientGone(Exception):
    """The client closed its connection; the reply was abandoned and what arrived saved."""


class Reply:
    def __init__(
        self,
        request: AssistantRequest,
        *,
        trace_id: str,
        settings: Settings,
        providers: Sequence[Provider],
        store: MessageStore | None,
        author: Author,
        log: RequestLog,
        streaming: bool,
        client_gone: Callable[[], bool] = lambda: False,
        client_socket: ClientSocket | None = None,
        parking: bool = False,
        refresh_key: Callable[[Provider], Provider | None] | None = None,
        started: float | None = None,
        history_error: str | None = None,
        on_end: Callable[[], None] = lambda: None,
    ) -> None:
        self._request = request
        self._history_error = history_error  # why the history asked for is not in the prompt
        self._trace_id = trace_id
        self._settings = settings
        self._log = log
        self._author = author
        self._client_gone = client_gone
        self._client_socket = client_socket  # None: the loop never writes to the client
        self._parking = parking  # the server can let go of the thread while it waits (`Park`)
        # When the client was last sent something (a frame handed on here, or a write
        # of the loop's): heartbeats go out after HEARTBEAT_SECONDS from it.
        self._last_sent = time.monotonic()
        self._head_sent = False  # True once this thread wrote the head (`_head_out()`)
        self._started = started or time.monotonic()
        self._on_end = on_end  # the reply's place in the limits, given back when it ends
        self._items = Outbox()
        self._parts: list[str] = []
        self._calls: list[ToolCall] = []
        self._splitter = ThinkingSplitter()
        # JSON mode: what the last failed attempt that sent anything sent (`Restart`).
        self._dropped: tuple[list[str], list[ToolCall]] | None = None
        self._saver = Saver(store, settings.persist_timeout_seconds, log) if store else None
        turns = (*request.chat_history, Turn("user", request.user_input))
        self._chain = Chain(
            providers=providers,
            prompt=Prompt(
                system=request.instructions,
                turns=turns,
                tools=request.tools,
                tool_choice=request.tool_choice,
                response_schema=request.response_schema,
            ),
            timeouts=settings.timeouts,
            emit=self._items.put,
            room=self._items.room,
            commit_on_first_chunk=streaming,
            # Not a bound method: the chain must not point back at the reply. That
            # cycle kept every ended reply's text alive until a full GC (measured:
            # ~17 MB per 62 abandoned streams, bench/abuse.py non-readers).
            on_attempt=functools.partial(_log_attempt, log),
            refresh_key=refresh_key,
            client_gone=client_gone,
        )
        self._future: concurrent.futures.Future[None] | None = None
        self._done = False  # concluding or abandoned: nothing more arrives
        self._saved = False  # the record went to the store (or there is none)
        self._save_by: float | None = None  # a stopping worker's (`stop_early`)

    # -- lifecycle ---------------------------------------------------------

    def start(self, first_step_wait: float = 0.0) -> None:
        """The user message's write and the chain begin; with `first_step_wait`, this
        returns once the chain's upstream request is out (or that many seconds have
        passed: `aio.submit`)."""
        if self._saver and not self._request.user_message_already_saved:
            self._saver.start_user_message(
                user_message(self._request, self._trace_id, self._author, self._started)
            )
        self._chain.prepare()
        self._future = aio.submit(self._chain.run(), first_step_wait)

    def stop_early(self) -> None:
        """The instance is stopping: the reply ends now with what it has (`overloaded`:
        a stream's error frame, a JSON reply's 503; its text saved), from any thread;
        told before its chain began, the chain ends as soon as it does. Its save is
        waited for STOP_SAVE_WAIT_SECONDS at most from here, whatever
        PERSIST_TIMEOUT_SECONDS says."""
        self._save_by = time.monotonic() + STOP_SAVE_WAIT_SECONDS
        if not self._done:
            self._chain.stop_early()

    def close(self) -> None:
        """Called when the response is closed: a reply that did not end is abandoned,
        and its place in the limits is given back.

        This also covers a stream the server closed before reading a frame,
        where the generator's own `finally` never runs.
        """
        try:
            if not self._done:
                self._abandon()
        finally:
            self._on_end()
            self._let_go()

    @property
    def parks(self) -> bool:
        """Whether the reply's waits are `Park`s (the server lets go of its thread)."""
        return self._parking

    # -- SSE ---------------------------------------------------------------

    def sse_stream(self) -> Generator[bytes | Park | Refused, None, None]:
        """The SSE answer: what decides its status, then its frames.

        The status waits for the chain's first item, or HEARTBEAT_SECONDS
        without one. A chain that fails within that window with nothing shown
        is `Refused` (a real status and error body, nothing streamed), and so
        is a client that left meanwhile (499) or a bug of ours (500); anything
        else opens the stream. With `parking` the reply waits for its first
        item as for the others, with `Park`s: it holds no thread at all while
        the upstream thinks, and the loop writes the head with the first
        chunk if it can (direct.py): the first item here is then what came
        after the text. A refused reply gives its place in the limits back
        before its answer goes out, as a refusal before it does.
        """
        # The status window counts from the request: a history read came out of it.
        heartbeat = self._settings.heartbeat_seconds
        waiting = self._wait(None, heartbeat=heartbeat, parks=self._parking, since=self._started)
        refused = None
        try:
            first = yield from _past_parks(waiting)
            if isinstance(first, ChainFailed | ChainCrashed) and not (self._parts or self._calls):
                # Nothing was shown, so the loop wrote nothing either: not even the head.
                # Within the status window: its saves are waited for only as long as the
                # window lasts (a hung database held the 502 PERSIST_TIMEOUT_SECONDS past
                # it, nothing sent meanwhile); what is left then is written late.
                window_left = heartbeat - (time.monotonic() - self._started)
                payload = yield from self._concluded(first, within=max(0.0, window_left))
                refused = Refused(failure_status(first), self._error_body(payload))
        except ClientGone:
            left = self._items.detach()  # first: the loop writes nothing after this
            self._abandon()
            if self._head_out():  # the loop wrote the head and chunks: the stream ends here
                yield from self._last_frame(left, self._gone_ending())
                return
            # Nothing sent yet: a 499 (what a JSON caller gets), read by a client that
            # only half-closed, and the log's for one gone.
            refused = Refused(499, self._refusal("client_gone"))
        except Exception as exc:
            left = self._items.detach()  # first: the loop writes nothing (a head) after this
            ending = self._crash_ending(exc)
            if self._head_out():
                yield from self._last_frame(left, ending)
                return
            refused = Refused(500, self._refusal("internal_error"))
        finally:
            waiting.close()
        if refused is not None:
            self._on_end()
            yield refused
            return
        yield from self._sse_frames_from(first)

    def _last_frame(
        self, detached: tuple[bytes, bytes], ending: dict[str, Any]
    ) -> Generator[bytes, None, None]:
        """The terminal frame and [DONE] after what the loop left (`detached`), when the
        loop wrote the head and something went wrong before this thread took over."""
        unsent, left = detached
        try:
            if unsent:
                self._send_unsent(unsent)
        except ClientGone:
            return
        yield left + sse.frame(ending) + sse.DONE

    def _refusal(self, code: ErrorCode) -> dict[str, Any]:
        return {"error": MESSAGES[code], "code": code, "trace_id": self._trace_id}

    def _sse_frames_from(self, first: Item | None) -> Generator[bytes | Park, None, None]:
        """Frames from `first` (None: the status window passed with nothing) to [DONE],
        and a `Park` wherever the reply would wait with its thread (`parking` only).

        The loop may write chunk frames itself in between (direct.py): it is
        stopped before each frame this thread hands on, which is then
        written while this generator is suspended.
        """
        frames = self._sse_frames(first)
        try:
            for data in frames:
                if isinstance(data, Park):  # the loop goes on writing meanwhile
                    yield data
                    continue
                # What the loop left goes first: the rest of its last write, then
                # frames it had not written yet (in one write with this one).
                unsent, left = self._items.detach()
                if unsent:
                    self._send_unsent(unsent)
                if isinstance(data, _Commit):  # out with the loop's frames, or already out
                    data = b"" if left or self._head_out() else sse.PING
                    if not left + data:
                        continue
                yield left + data
                self._head_sent = True
        except ClientGone:
            pass  # closing `frames` abandons the reply
        finally:
            frames.close()

    def _sse_frames(self, first: Item | None) -> Generator[bytes | Park | _Commit, None, None]:
        gone: dict[str, Any] | None = None
        try:
            if first is None:
                yield sse.PING
            heartbeat = self._settings.heartbeat_seconds
            for item in self._wait(first, heartbeat=heartbeat, parks=self._parking):
                frame: bytes | _Commit | None = None
                if isinstance(item, Park):
                    yield item
                    continue
                if item is None:
                    frame = sse.PING
                elif isinstance(item, Chunk):
                    frame = self._chunk_frames(item)
                elif isinstance(item, ToolCall):
                    self._calls.append(item)  # shown in the final metadata, not as text
                    if not self._head_out():
                        frame = _COMMIT  # it commits the reply: its status goes out now
                elif isinstance(item, Outcome):
                    # Saving can take up to PERSIST_TIMEOUT_SECONDS: heartbeats meanwhile.
                    steps = self._concluding(item, beat=self._settings.heartbeat_seconds)
                    final = yield from self._with_heartbeats(steps, heartbeat)
                    yield sse.frame(final) + sse.DONE  # one write
                    return
                if frame is not None:
                    yield frame
                    self._last_sent = time.monotonic()
        except ClientGone:
            self._abandon()
            gone = self._gone_ending()
        except Exception as exc:
            yield sse.frame(self._crash_ending(exc)) + sse.DONE
        finally:
            self.close()
        if gone is not None:
            yield sse.frame(gone) + sse.DONE

    def _gone_ending(self) -> dict[str, Any]:
        """The terminal payload of a stream whose client is taken as gone, once the reply
        is abandoned: one that only half-closed still reads, and is told so (as a JSON
        caller is, by its 499), not sent a body that looks whole (a reviewer's); for one
        really gone, the write fails as the body's end would have. Its `partial` is what
        arrived and is saved, as an error frame's is (some of it not sent as chunks:
        what the client's check took, and what waited)."""
        return {
            "error": MESSAGES["client_gone"],
            "code": "client_gone",
            "partial": self._text(),
            "metadata": {"trace_id": self._trace_id},
        }

    def _crash_ending(self, exc: Exception) -> dict[str, Any]:
        """The terminal payload after our own bug on this side of the queue: the reply
        ends like a chain crash; if concluding is what failed, with a bare error
        frame (what it saved stays saved, nothing is saved twice): a stream always
        ends with a terminal frame."""
        if self._future is not None:
            self._future.cancel()  # the reply is over: so is its upstream request
        if not self._done:
            try:
                return self._conclude(ChainCrashed(exc))
            except Exception as again:
                exc = again
        self._log.exception("reply.crashed", exc=exc)
        if not self._saved:  # concluding failed before its save: what arrived is kept
            try:
                self._save_incomplete()
            except Exception as unsaved:
                self._log.exception("persist.failed", exc=unsaved, role="assistant")
        return {
            "error": MESSAGES["internal_error"],
            "code": "internal_error",
            "partial": self._text(),
            "metadata": {"trace_id": self._trace_id},
        }

    # -- JSON --------------------------------------------------------------

    def json_answer(self) -> tuple[int, dict[str, Any]]:
        """Wait for the whole reply here (a reply without `parking`): (200, answer), or the
        failure's status and error body. Raises ClientGone."""
        steps = self.json_steps()
        try:
            next(steps)
        except StopIteration as end:
            return cast("tuple[int, dict[str, Any]]", end.value)
        raise AssertionError("a reply without parking parked")

    def json_steps(self) -> Generator[Park, None, tuple[int, dict[str, Any]]]:
        """`json_answer()` a step at a time: with `parking` each wait is a `Park` yielded,
        its final save's too (the thread goes back meanwhile, as a stream's does: a JSON
        reply held its thread to its end, and `THREADS` of them left no thread for any
        parked stream's heartbeat, final frame or departure check); without, it waits
        here. Raises ClientGone."""
        try:
            for item in self._wait(None, heartbeat=None, parks=self._parking, chunks=False):
                if isinstance(item, Park):
                    yield item
                    continue
                if isinstance(item, ChainSucceeded):
                    return 200, (yield from self._concluded(item))
                if isinstance(item, ChainFailed | ChainCrashed):
                    final = yield from self._concluded(item)
                    return failure_status(item), self._error_body(final)
                self._keep(item)
        except ClientGone:
            self._abandon()
            raise
        except GeneratorExit:  # closed while parked (the worker stopping): what arrived is saved
            if not self._done:
                self._abandon()
            raise
        except Exception as exc:  # our own bug: ended as a stream's is, what arrived saved
            return 500, self._error_body(self._crash_ending(exc))
        finally:
            self._let_go()
        raise AssertionError("the chain always ends with a terminal item")

    def _concluded(
        self, item: Outcome, within: float | None = None
    ) -> Generator[Park, None, dict[str, Any]]:
        """`_conclude()`, its waits for the store parked with `parking` (a JSON reply
        waiting for a hanging database held its thread PERSIST_TIMEOUT_SECONDS, and so
        did a stream's 502 within its status window)."""
        if not self._parking:
            return self._conclude(item, within)
        steps = self._concluding(item, beat=math.inf, within=within)
        # No heartbeat (nothing is written before the end): parks only.
        waits = self._with_heartbeats(steps, heartbeat=math.inf)
        return (yield from cast("Generator[Park, None, dict[str, Any]]", waits))

    def _error_body(self, final: dict[str, Any]) -> dict[str, Any]:
        body = {
            "error": final["error"],
            "code": final["code"],
            "trace_id": self._trace_id,
            "attempts": final["metadata"].get("attempts", []),  # none after a crash's
        }
        if final["partial"]:  # a JSON reply cut midway (its last provider, a stop): saved too
            # Shown whole, not streamed: a block the cut left open is closed.
            json = record.cut_json_reading(final["partial"], self._request.response_schema)
            body["partial"] = with_thinking_closed(final["partial"], json=json is not None)
        if calls := final["metadata"].get("tools_to_use"):  # saved with it: said with it
            body["tools_to_use"] = calls
        for name in ("message_ids", "persist_failed"):  # as a stream's error frame says them
            if name in final["metadata"]:  # (a crash's metadata has its trace id alone)
                body[name] = final["metadata"][name]
        return body

    # -- internals ---------------------------------------------------------

    def _wait(
        self,
        first: Item | None,
        heartbeat: float | None,
        parks: bool,
        since: float | None = None,
        chunks: bool = True,
    ) -> Generator[Item | Park | None, None, None]:
        """Items as they come; None when a heartbeat is due (`since` the last thing sent,
        or this time.monotonic()). Raises ClientGone.

        With `parks`, a wait is a `Park` yielded instead (the thread goes back
        to the server meanwhile); the checks after it are the same, and an
        early wake-up only means another look. With `chunks` False a park is not
        ended by a chunk (`Outbox.park`): they are taken with what ends it.
        What the loop wrote and the socket did not take is sent here, when UNSENT says so.
        """
        if first is not None:
            yield first
        self._last_sent = last_check = time.monotonic()
        if since is not None:
            self._last_sent = since
        direct = None
        direct_first = False  # the loop may write the first frame, and the head with it
        if self._client_socket is not None:
            direct = DirectWrites(self._recorded_frame, self._client_socket.write_now)
            direct_first = self._client_socket.sends_head
        while True:
            if direct is not None and (self._head_sent or direct_first):
                self._items.attach(direct)
            now = time.monotonic()
            wait = max(0.0, last_check + CLIENT_POLL_SECONDS - now)
            if heartbeat is not None:
                wait = min(wait, max(0.0, self._last_sent + heartbeat - now))
            if parks:
                item = self._items.take()
                if item is None and wait > 0:
                    watch = self._items.park if chunks else self._park_past_chunks
                    yield Park(wait, watch)
                    item = self._items.take()
            else:
                try:
                    item = self._items.get(timeout=wait)
                except queue.Empty:
                    item = None
            now = time.monotonic()
            self._last_sent = max(self._last_sent, self._items.last_direct_write)
            # Once a second whether or not items flow: a JSON caller is never
            # written to before the end, so only this notices that it left.
            if now - last_check >= CLIENT_POLL_SECONDS - EARLY_SECONDS:
                last_check = now
                # Found gone once the chain has ended, the reply is whole: concluded so
                # (its last write fails if the client has really gone), not as cut off.
                # A chain that ended for the client's going concludes nothing: waited
                # for, it held the reply and its slot for ever (a reviewer's).
                if self._client_gone() and not self._chain.concluded:
                    if item is not None:  # taken: saved with what still waits (`_abandon`)
                        self._keep(item)
                    raise ClientGone()
            if isinstance(item, WriteFailed):
                raise ClientGone()
            if isinstance(item, Unsent):
                if unsent := self._items.take_unsent():  # unless detach() took it first
                    self._send_unsent(unsent)
                    self._last_sent = time.monotonic()
            elif item is not None:
                if not isinstance(item, ToolCall):  # a call is not written: no sign of life
                    self._last_sent = now
                yield item
            elif heartbeat is not None and now - self._last_sent >= heartbeat - EARLY_SECONDS:
                self._last_sent = now
                yield None

    def _park_past_chunks(self, wake: Callable[[], None]) -> bool:
        return self._items.park(wake, chunks=False)

    def _head_out(self) -> bool:
        """Whether the response's head is out: written here, or by the loop with its first
        frame."""
        socket = self._client_socket
        return self._head_sent or (socket is not None and socket.wrote_head)

    def _let_go(self) -> None:
        """Drop the reply's text once it has been sent and saved.

        A reply object can outlive its request for a while in a reference
        cycle (exceptions' tracebacks, httpx's connection objects) until a
        full garbage collection; without this, each one kept its whole text
        alive with it, and RSS grew by that much per abandoned stream
        (bench/abuse.py, non-readers).
        """
        self._parts = []
        self._calls = []
        self._dropped = None
        self._splitter = ThinkingSplitter()
        self._items.discard()

    def _recorded_frame(self, chunk: Chunk) -> bytes:
        """`chunk` recorded, and its frame (on the loop too, while it holds the socket).
        The frame first: text that cannot be framed is not recorded as sent either."""
        frame = sse.chunk_frame(chunk.text)
        self._add(chunk.text)
        return frame

    def _send_unsent(self, data: bytes) -> None:
        assert self._client_socket is not None
        try:
            self._client_socket.send_all(data)
        except OSError:
            raise ClientGone() from None

    def _chunk_frames(self, chunk: Chunk) -> bytes:
        """`chunk`'s frame, and those of the chunks already waiting behind it: one
        write for all, each still its own `data:` event (a busy instance wakes
        its request threads once per batch, not once per chunk)."""
        frames = self._recorded_frame(chunk)
        while (more := self._items.next_chunk()) is not None:
            frames += self._recorded_frame(more)
        return frames

    def _add(self, text: str) -> None:
        self._parts.append(text)
        self._splitter.feed(text)

    def _text(self) -> str:
        return "".join(self._parts)

    def _with_heartbeats(
        self, steps: Generator[Pending, None, dict[str, Any]], heartbeat: float
    ) -> Generator[bytes | Park, None, dict[str, Any]]:
        """Run `steps` to their result, waiting for what each names (letting go of the
        thread meanwhile, with `parking`), with a ping whenever nothing was sent for
        `heartbeat` seconds (none at math.inf)."""
        while True:
            try:
                pending = next(steps)
            except StopIteration as end:
                return cast("dict[str, Any]", end.value)
            try:
                # Until the write is done or a heartbeat is due, whichever comes first,
                # and no look in between: a hanging database would otherwise wake each
                # reply waiting for it a few times a second, for nothing. Never less than
                # SHORTEST_LOOK_SECONDS (a ping comes that much late at most): at the
                # shortest heartbeats `due` is never above 0, and the wait would spin.
                self._last_sent = max(self._last_sent, self._items.last_direct_write)
                due = self._last_sent + heartbeat - EARLY_SECONDS - time.monotonic()
                shortest = min(SHORTEST_LOOK_SECONDS, heartbeat / 4)
                seconds = min(pending.seconds, max(shortest, due))
                if self._parking:  # with or without a head out: the worker parks either
                    yield until_done(pending.write, seconds)
                else:
                    pending.wait(seconds)
                if time.monotonic() - self._last_sent >= heartbeat - EARLY_SECONDS:
                    yield sse.PING
                    self._last_sent = time.monotonic()
            except GeneratorExit:  # closed meanwhile (the client left, the worker stops)
                self._save_apart(steps)
                raise

    def _save_apart(
        self, steps: Generator[Pending, None, object], then: Callable[[object], None] = _nothing
    ) -> None:
        """A save nobody waits for (its reply was closed, or its client left) goes to its
        end all the same, then `then` with its result: off this thread when it is every
        parked reply's (their pings, final frames and departure checks: it held one a
        whole save wait on a hanging database); on it otherwise, the thread this reply's
        alone either way."""
        if self._parking:
            drive_unwaited(steps, then, self._log)
        else:
            then(drive(steps))

    def _conclude(self, item: Outcome, within: float | None = None) -> dict[str, Any]:
        """Save what arrived and build the terminal payload; the saves are waited for
        `within` seconds at most, if given (else PERSIST_TIMEOUT_SECONDS)."""
        return drive(self._concluding(item, beat=None, within=within))

    def _concluding(
        self, item: Outcome, beat: float | None, within: float | None = None
    ) -> Generator[Pending, None, dict[str, Any]]:
        """`_conclude()` a step at a time: it yields what to wait for in the store, for
        `beat` seconds at most."""
        self._done = True
        if self._save_by is not None:  # ended by a stopping worker
            left = max(0.0, self._save_by - time.monotonic())
            within = left if within is None else min(within, left)
        if not isinstance(item, ChainSucceeded):
            self._take_back_dropped()
        self._splitter.finish()
        report = item.report
        complete = isinstance(item, ChainSucceeded)
        output = record.Output.of(self._splitter, self._calls)
        schema = self._request.response_schema
        if complete:
            output = record.with_structured_output(output, schema, report, self._text)
        else:
            output = record.with_cut_json_kept(output, schema, self._text)
        # Before the save: one the client left during goes on after the reply let go.
        text = self._text()
        ids, persist_failed = yield from self._saving(output, report, complete, beat, within)
        metadata = record.metadata(
            self._trace_id, output, report, self._started, ids, persist_failed, self._history_error
        )
        summary = record.log_summary(report)
        if isinstance(item, ChainSucceeded):
            self._log.info("reply.finished", status="complete", chars=len(text), **summary)
            return {"answer": text, "metadata": metadata}
        code: ErrorCode
        if isinstance(item, ChainCrashed):
            self._log.exception("reply.crashed", exc=item.exception)
            code = "internal_error"
        elif item.error is None:
            code = "providers_failed"
        else:
            code = item.error.code
        message = MESSAGES[code]
        if code == "providers_failed" and any(
            attempt.outcome == "upstream_refused" for attempt in report.attempts
        ):  # asking again will not help: the page says why, not "Please try again"
            message = MESSAGES["upstream_refused"]
        self._log.warning("reply.failed", code=code, chars=len(text), **summary)
        return {"error": message, "code": code, "partial": text, "metadata": metadata}

    def _start_over(self) -> None:
        """JSON mode: the attempt whose text was kept failed (`Restart`); the next begins.
        Its output is kept aside, should every other fail too (`_take_back_dropped`)."""
        if self._parts or self._calls:
            self._dropped = (self._parts, self._calls)
        self._parts = []
        self._calls = []
        self._splitter = ThinkingSplitter()

    def _take_back_dropped(self) -> None:
        """JSON mode, every provider failed: what the last attempt that sent anything
        sent is what arrived: reported (the error's `partial`) and saved `incomplete`,
        not lost."""
        if self._parts or self._calls or self._dropped is None:
            return
        parts, self._calls = self._dropped
        for text in parts:
            self._add(text)

    def _keep_what_waits(self) -> None:
        """What the chain handed on and this thread never took is the reply's all the
        same: chunks queued for a JSON caller, and a tool call handed on as the upstream
        was cancelled (OpenAI's, whose choice had not finished: `Decoder.salvage`)."""
        while (item := self._items.take()) is not None:
            self._keep(item)

    def _keep(self, item: object) -> None:
        """An item the thread took, into the reply: a chunk's text, a call, or (JSON
        mode) a `Restart`; anything else is not output."""
        if isinstance(item, Restart):
            self._start_over()
        elif isinstance(item, Chunk):
            self._add(item.text)
        elif isinstance(item, ToolCall):
            self._calls.append(item)

    def _abandon(self) -> None:
        """The client left: stop the upstream at once, then save what arrived."""
        self._done = True
        self._items.detach()  # the loop adds no more text from here
        if self._future is not None:
            self._future.cancel()
            self._chain.finished.wait(timeout=1.0)
        self._keep_what_waits()
        self._take_back_dropped()
        report, saving = self._incomplete_save()
        gone = {"chars": len(self._text()), **record.log_summary(report)}

        def saved(_: object) -> None:
            self._log.info("reply.client_gone", **gone)

        self._save_apart(saving, then=saved)

    def _save_incomplete(self) -> ChainReport:
        """Save what arrived as `incomplete`; the chain's report."""
        report, saving = self._incomplete_save()
        drive(saving)
        return report

    def _incomplete_save(self) -> tuple[ChainReport, Generator[Pending, None, object]]:
        """The chain's report (it has stopped: its last word), and the steps of saving
        what arrived as `incomplete`."""
        self._splitter.finish()
        report = self._chain.report()
        output = record.Output.of(self._splitter, self._calls)
        output = record.with_cut_json_kept(output, self._request.response_schema, self._text)
        return report, self._saving(output, report, complete=False, beat=None)

    def _saving(
        self,
        output: record.Output,
        report: ChainReport,
        complete: bool,
        beat: float | None,
        within: float | None = None,
    ) -> Generator[Pending, None, tuple[dict[str, str] | None, bool]]:
        """(message ids, persist failed), yielding what to wait for when `beat` is set;
        nothing arrived means no assistant message to keep. The message is made, and
        its save dated and begun, here, when called, not at the first step: one driven
        later (`drive_unwaited`) found the reply let go of by then, and saved nothing."""
        self._saved = True
        message = None
        if complete or self._parts or self._calls:
            message = record.assistant_message(
                self._request, self._trace_id, self._author, output, report, complete
            )
        return _message_ids(
            None if self._saver is None else self._saver.finishing(message, beat, within)
        )


@dataclasses.dataclass(frozen=True)
class Refused:
    """An SSE reply answered with a status and an error body instead: nothing was streamed."""

    status: int
    payload: dict[str, Any]


def _message_ids(
    finishing: Generator[Pending, None, tuple[dict[str, str], bool]] | None,
) -> Generator[Pending, None, tuple[dict[str, str] | None, bool]]:
    """The save's steps, its ids None for none saved; none at all without a store."""
    if finishing is None:
        return None, False
    ids, failed = yield from finishing
    return ids or None, failed


def _past_parks(waiting: Iterator[Item | Park | None]) -> Generator[Park, None, Item | None]:
    """The first item that is not a `Park`, yielding the parks before it."""
    for item in waiting:
        if not isinstance(item, Park):
            return item
        yield item
    raise AssertionError("a reply's wait ends only with its items")


def _log_attempt(log: RequestLog, attempt: Attempt, error: ProviderError | None) -> None:
    fields = {"provider": attempt.provider, "outcome": attempt.outcome, "ms": attempt.ms}
    if error is not None:
        log.warning("provider.failed", status=error.status, detail=error.detail[:300], **fields)
    else:
        log.info("provider.attempt", **fields)
