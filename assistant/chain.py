"""The provider chain: try providers in order, fall through only before text.

Rules (README "How the pieces fit"):
- Before a provider's first chunk, any failure (connect, timeout, 4xx/5xx,
  an error event, an empty stream) moves on to the next provider silently.
- After it, the provider is committed: a failure ends the reply with an
  error, never a retry elsewhere, because the user has already seen its text.
  A JSON caller has seen nothing until the end, so in `commit_on_first_chunk=
  False` mode even a late failure falls through, and so does an answer of
  thinking or blanks alone (`upstream_empty`); `Restart` tells the reply to
  set the failed attempt's text aside (it is what arrived, should every
  provider fail).
- A refused key (401; Gemini's 400 API_KEY_INVALID) re-reads that
  provider's key once (it may have been rotated) and tries the provider again
  before moving on.
- Native thinking deltas become text wrapped in `<thinking>` tags here, so
  everything downstream sees one format.
- A tool call (README "Tools and structured output") is output like text: it commits the provider,
  and it is handed on as a `ToolCall` item, never as text. Until it is whole, each sign of
  progress (`Working`: the call's start, a piece of its arguments, a tool the provider runs)
  restarts the wait for the first chunk without committing: a slow but live call is not
  cut, one that stalls (pings only) still is, and either falls through to the next provider.

The chain runs on the I/O loop and hands what it produces to `emit`, a
thread-safe callable. Its attributes (attempts, provider, model, ...) are
written only on the loop; its outcome carries a `ChainReport` of them, and
a reply whose client left reads `report()` once `finished` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx

from . import aio
from .config import Timeouts
from .providers.base import (
    EndsBeforeItsBody,
    Event,
    Prompt,
    Provider,
    ProviderError,
    StopReason,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    Usage,
    Working,
    translate_http_error,
)
from .providers.error_text import (
    ERROR_BODY_BYTES,
    ERROR_DETAIL_CHARS,
    provider_secrets,
    without_prompt,
    without_secrets,
)
from .request import shows_nothing
from .thinking import ThinkingTagger, without_thinking
from .tools import ToolCall

# How long a body may stay silent once its answer's end came, for what could still
# follow it (Gemini: an error tail after the finishReason, which its own servers send
# at once): past it, the answer is whole (an upstream or proxy that holds the
# connection open cost a whole idle gap, then the reply as upstream_timeout).
ANSWERED_QUIET_SECONDS = 0.5
# A read of SSE comments (pings) and line ends alone, with any line ending.
_ONLY_PINGS = re.compile(rb"(?:[\r\n]|:[^\r\n]*)*")


@dataclass(frozen=True)
class Chunk:
    """Text to show: the reply's own, or thinking already wrapped in its tags."""

    text: str


@dataclass(frozen=True)
class Attempt:
    provider: str
    outcome: str  # "ok", "client_gone", "reply_too_long" or a ProviderError code
    ms: int
    status: int | None = None

    def as_dict(self) -> dict[str, object]:
        # "name", as docs/API.md "Metadata" words it: each provider tried, its name, outcome and ms.
        entry: dict[str, object] = {
            "name": self.provider,
            "outcome": self.outcome,
            "ms": self.ms,
        }
        if self.status is not None:
            entry["status"] = self.status
        return entry


@dataclass(frozen=True)
class ChainReport:
    """What the chain learned, as it stood when it ended: handed over with its outcome."""

    provider: str | None = None  # the provider committed to (None: none showed text)
    model: str | None = None  # the model we asked it for (its settings)
    model_version: str | None = None  # the model it said answered, if it said
    usage: Usage = field(default_factory=Usage)
    stop_reason: StopReason | None = None
    attempts: tuple[Attempt, ...] = ()
    first_chunk_at: float | None = None  # time.monotonic() of the first chunk
    # Why the provider was not asked for the response schema (None: it was, or none asked).
    schema_left_out: str | None = None


@dataclass(frozen=True)
class Restart:
    """JSON mode only: the attempt that sent the chunks so far failed; they are set aside."""


# Outcomes compare by what happened, not by their report (timings differ run to run).


@dataclass(frozen=True)
class ChainFailed:
    """Every provider failed (committed=False), or the committed one did."""

    error: ProviderError | None  # None when every provider failed before text
    committed: bool
    report: ChainReport = field(default_factory=ChainReport, compare=False)


@dataclass(frozen=True)
class ChainSucceeded:
    report: ChainReport = field(default_factory=ChainReport, compare=False)


@dataclass(frozen=True)
class ChainCrashed:
    """A bug of ours (in the chain or the reply), not a provider failure: internal_error."""

    exception: Exception
    report: ChainReport = field(default_factory=ChainReport, compare=False)


Item = Chunk | ToolCall | Restart | ChainFailed | ChainSucceeded | ChainCrashed
Outcome = ChainFailed | ChainSucceeded | ChainCrashed


@dataclass
class Chain:
    providers: Sequence[Provider]
    prompt: Prompt
    timeouts: Timeouts
    emit: Callable[[Item], None]
    # Called before each chunk: None when the reply has room for more, else what to
    # await until it has (back-pressure; outbox.py). Until then the upstream is not
    # read further, and the rest of its last read waits in the chain.
    room: Callable[[], Awaitable[None] | None] | None = None
    commit_on_first_chunk: bool = True
    on_attempt: Callable[[Attempt, ProviderError | None], None] = lambda attempt, error: None
    # After a 401: the provider again with a freshly read key, or None if the key is unchanged.
    refresh_key: Callable[[Provider], Provider | None] | None = None
    # Whether the client has left: asked before the next provider is, which would be a
    # request paid for nobody (its reply notices within a second, and ends the chain).
    client_gone: Callable[[], bool] = lambda: False
    attempts: list[Attempt] = field(default_factory=list)
    provider: str | None = None
    model: str | None = None
    model_version: str | None = None
    usage: Usage = field(default_factory=Usage)
    stop_reason: StopReason | None = None
    first_chunk_at: float | None = None
    schema_left_out: str | None = None
    finished: threading.Event = field(default_factory=threading.Event)
    # Set as the outcome is handed on: a chain cancelled (its client found gone before a
    # next provider) finishes with none, and its reply must not wait for one.
    concluded: bool = False
    # JSON mode: the usage and model of the last attempt that showed text and failed,
    # whose text the reply keeps should every provider fail (`Reply._take_back_dropped`).
    _set_aside: tuple[Usage, str | None] = field(default=(Usage(), None), init=False, repr=False)
    _reply_deadline: asyncio.Timeout = field(init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)

    def prepare(self) -> None:
        """What each provider works out from the prompt alone (whether it sends the
        response schema, and in what form), worked out now, on the caller's thread: on
        the I/O loop, which runs every stream, a reviewer's schema held them all for a
        minute."""
        for provider in self.providers:
            # A failure here is met again in the run, which reports it as the reply's.
            with contextlib.suppress(Exception):
                provider.schema_left_out(self.prompt)

    def stop_early(self) -> None:
        """From any thread: end the reply now, as its time running out would, but as
        `overloaded` (the instance is stopping: a retry goes to another one)."""
        aio.call_soon(self._stop_early)

    def _stop_early(self) -> None:
        self._stopping = True
        deadline = getattr(self, "_reply_deadline", None)
        if deadline is not None and not deadline.expired():
            with contextlib.suppress(RuntimeError):  # the chain's run is already over
                deadline.reschedule(asyncio.get_running_loop().time())

    async def run(self) -> None:
        try:
            outcome: ChainSucceeded | ChainFailed | ChainCrashed
            try:
                async with asyncio.timeout(self.timeouts.reply) as self._reply_deadline:
                    if self._stopping:  # told before this began (once only): no provider asked
                        raise TimeoutError
                    outcome = await self._run()
            except TimeoutError:
                # Even a live stream ends here (pings from an upstream that never
                # finishes count as life for the idle timeout).
                detail = f"longer than {self.timeouts.reply}s in all"
                error = ProviderError("reply_too_long", detail)
                if self._stopping:
                    error = ProviderError("overloaded", "the instance is stopping")
                self.stop_reason = None  # the answer may have ended: the reply did not
                outcome = ChainFailed(error, committed=self.first_chunk_at is not None)
        except asyncio.CancelledError:
            raise  # the client left: nobody waits for an outcome
        except Exception as exc:
            outcome = ChainCrashed(exc)  # never leave the reply waiting
        finally:
            self.finished.set()
        self.concluded = True
        self.emit(dataclasses.replace(outcome, report=self.report()))

    def report(self) -> ChainReport:
        """What the chain knows now; once `finished` is set, what it learned in all."""
        return ChainReport(
            provider=self.provider,
            model=self.model,
            model_version=self.model_version,
            usage=self.usage,
            stop_reason=self.stop_reason,
            attempts=tuple(self.attempts),
            first_chunk_at=self.first_chunk_at,
            schema_left_out=self.schema_left_out,
        )

    async def _run(self) -> ChainFailed | ChainSucceeded:
        for index, provider in enumerate(self.providers):
            if index and self.client_gone():
                raise asyncio.CancelledError  # as when its reply ends the chain
            outcome = await self._try(provider)
            if outcome is not None:
                return outcome
        return ChainFailed(None, committed=False)

    async def _try(
        self, provider: Provider, key_refreshed: bool = False
    ) -> ChainFailed | ChainSucceeded | None:
        """One provider; None means "fall through to the next one"."""
        progress = _Progress(provider, time.monotonic())
        try:
            await self._attempt(progress)
        except ProviderError as error:
            # The log's detail may quote what the provider said back, the prompt in it (an
            # Ollama error line naming the user's text): never the prompt's texts.
            if error.detail:  # nor its key (an error line in the stream quoting our request)
                # Cut first to what may be kept and a key's room past it: a stream's
                # error may be megabytes, and the scrub runs on the loop (a reviewer's
                # 8 MB Gemini error held every stream on the worker 3-4 s).
                detail = without_prompt(error.detail[:ERROR_DETAIL_CHARS], self.prompt)
                detail = without_secrets(detail, provider_secrets(provider))
                error.detail = detail[:ERROR_BODY_BYTES]  # cut once scrubbed
            self._record(progress, error.code, error)
            # A failed attempt has no stop reason (Gemini's finishReason before an error
            # said end_turn), and one that falls through leaves no usage or model either:
            # the report is the next attempt's, or none if every one fails.
            self.stop_reason = None
            if progress.shown and self.commit_on_first_chunk:
                return ChainFailed(error, committed=True)
            if progress.shown:  # a JSON caller's: its text is set aside, its usage with it
                self._set_aside = (self.usage, self.model_version)
                self.emit(Restart())
                self.first_chunk_at = None  # the answer's first chunk is the next one's
            self.usage, self.model_version = self._set_aside
            if error.key_refused and not key_refreshed and self.refresh_key is not None:
                # A rotated key: read it again once (a blocking call, so off the loop).
                fresh = await asyncio.to_thread(self.refresh_key, provider)
                if fresh is not None:
                    return await self._try(fresh, key_refreshed=True)
            return None
        except asyncio.CancelledError:
            deadline = self._reply_deadline
            outcome = "reply_too_long" if deadline.expired() else "client_gone"
            self._record(progress, "overloaded" if self._stopping else outcome, None)
            raise
        self._record(progress, "ok", None)
        return ChainSucceeded()

    async def _attempt(self, progress: _Progress) -> None:
        """One provider, to its end; any failure comes out as a ProviderError."""
        provider = progress.provider
        relay: _Relay | None = None
        try:
            async with asyncio.timeout(self.timeouts.first_chunk) as first_chunk_deadline:
                client = aio.http_client(self.timeouts)
                try:
                    async with provider.open(client, self.prompt) as response:
                        relay = _Relay(self, progress, response, first_chunk_deadline)
                        body = aio.BodyFeed(response)
                        try:
                            while await body.into(relay.read) and relay.full is not None:
                                await relay.hand_on_waiting()  # the upstream waits meanwhile
                                if relay.finished:
                                    break
                        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError):
                            if not relay.answered:
                                raise  # else the body went quiet, or was cut, after the end
                    await relay.end()
                except BaseException:  # a failure, or a deadline's or the reply's cancellation
                    if relay is not None:
                        relay.salvage()  # a call that came counts, and commits, as output
                    raise
        except TimeoutError:
            detail = f"no text within {self.timeouts.first_chunk}s"
            raise ProviderError("upstream_timeout", detail) from None
        except httpx.HTTPError as exc:
            raise translate_http_error(exc) from None
        except (ProviderError, asyncio.CancelledError):
            raise
        except Exception as exc:
            # A body our parser choked on: this provider failed, the next may not. Where
            # it was raised goes to the log with it: a bug of ours in the decoding looks
            # the same from here, and the fall-through would otherwise hide it.
            where = traceback.extract_tb(exc.__traceback__)[-1]
            detail = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
            raise ProviderError("upstream_protocol", detail) from exc

    def _commit(self, provider: Provider) -> None:
        self.first_chunk_at = self.first_chunk_at or time.monotonic()
        self.provider = provider.name
        self.model = provider.model
        self.schema_left_out = provider.schema_left_out(self.prompt)

    def _finish(self, end: StreamEnd) -> None:
        self.model_version = end.model
        self.usage = end.usage
        self.stop_reason = end.stop_reason

    def _record(self, progress: _Progress, outcome: str, error: ProviderError | None) -> None:
        ms = round((time.monotonic() - progress.started) * 1000)
        attempt = Attempt(progress.provider.name, outcome, ms, error.status if error else None)
        self.attempts.append(attempt)
        self.on_attempt(attempt, error)


@dataclass
class _Progress:
    provider: Provider
    started: float
    shown: bool = False


class _Relay:
    """One attempt's answer, handed on as it is decoded.

    `read` is the body's sink (aio.BodyFeed): from our transport it runs in the
    socket's own callback, so everything it calls runs on the loop outside
    the chain's task, and what it raises reaches the task through the body.
    """

    def __init__(
        self,
        chain: Chain,
        progress: _Progress,
        response: httpx.Response,
        first_chunk_deadline: asyncio.Timeout,
    ) -> None:
        self._chain = chain
        self._progress = progress
        self._response = response
        self._decoder = progress.provider.decoder(response)
        self._first_chunk_deadline = first_chunk_deadline
        self._tagger = ThinkingTagger()
        # What this attempt showed, kept for a JSON caller only (`_empty_to_a_json_caller`).
        self._texts: list[str] | None = None if chain.commit_on_first_chunk else []
        self._called = False
        self._call_ids: set[str] = set()  # of the calls handed on (`_own_id`)
        # Leading blank text and thinking (whether thinking, and the text), held until
        # something else comes.
        self._blanks: list[tuple[bool, str]] = []
        self.full: Awaitable[None] | None = None  # the reply has no room: what to await
        self._waiting: list[Event] = []  # events decoded meanwhile, handed on after it
        self._failure: Exception | None = None  # the decoder's, raised after them
        decoder = self._decoder
        # By its class, not isinstance() with the runtime protocol: that cost ~10 µs a stream.
        answers = hasattr(type(decoder), "answered")
        self._answering = cast(EndsBeforeItsBody, decoder) if answers else None
        self._quiet_until: float | None = None  # once answered: when the wait after it ends

    @property
    def finished(self) -> bool:
        """The answer's end marker came (nothing after it is read)."""
        return self._decoder.finished

    @property
    def answered(self) -> bool:
        """The answer's end came, though its body may not have ended (EndsBeforeItsBody)."""
        return self._answering is not None and self._answering.answered

    def read(self, data: bytes) -> bool:
        """The events in the body's next bytes, handed on; True to stop reading: the
        answer is finished, or the reply has no room for more (`full`; the events
        after the one that found it full wait for `hand_on_waiting`)."""
        events: list[Event] = []
        try:
            self._decoder.feed(data, events)
            if self._decoder.finished:  # its end (the StreamEnd) with the read that ended it
                self._decoder.end(events)
        except Exception as exc:
            self._hand_on(events)  # what came before the failure, as room allows
            if self.full is None:
                raise
            self._failure = exc  # raised by hand_on_waiting, after the rest
            return True
        self._hand_on(events)
        if self._answering is not None and self._answering.answered:
            # A half-second wait from the answer's end, or from the last read after it
            # that was more than pings and blank lines (an error tail, say): those do
            # not lengthen it (a proxy sending them held a whole answer open until the
            # body ended: a reviewer's, to reply_too_long).
            now = time.monotonic()
            quiet = min(ANSWERED_QUIET_SECONDS, self._chain.timeouts.idle)
            if self._quiet_until is None or not _ONLY_PINGS.fullmatch(data):
                self._quiet_until = now + quiet
            if now >= self._quiet_until:
                return True  # the answer is whole, as when the body goes quiet
            aio.allow_silence(self._response, self._quiet_until - now)
        return self._decoder.finished or self.full is not None

    async def hand_on_waiting(self) -> None:
        """Once the reply has room again, the events that waited for it, as often as it
        fills up again; then the decoder's failure that came after them, if one did."""
        while self.full is not None:
            full, self.full = self.full, None
            await full
            waiting, self._waiting = self._waiting, []
            self._hand_on(waiting)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    async def end(self) -> None:
        """The body ended or the answer finished: the rest, the StreamEnd, or the failure."""
        events: list[Event] = []
        try:
            if not self._decoder.finished:  # else `read` called it (a failure ends there)
                self._decoder.end(events)
        finally:  # what came before a failure too, as room allows
            self._hand_on(events)
            await self.hand_on_waiting()
        self._close_thinking()
        if not self._progress.shown or self._empty_to_a_json_caller():
            raise _nothing_shown(self._chain.stop_reason)  # this attempt's (`_finish`)

    def _empty_to_a_json_caller(self) -> bool:
        """A JSON caller is shown nothing until the end: an answer of thinking alone
        (native or in tags), or of blanks, is as empty to them as no answer, and the
        next provider may answer."""
        if self._texts is None or self._called:
            return False
        return shows_nothing(without_thinking("".join(self._texts)))

    def _close_thinking(self) -> None:
        """The `</thinking>` of a block of native reasoning still open: the tag is ours,
        so an answer that ends or fails while the model thinks gets it (the chunks, the
        error's `partial` and what is set aside are whole)."""
        closing = self._tagger.close()
        if closing:
            self._emit_text(closing)

    def _emit_text(self, text: str) -> None:
        if self._texts is not None:
            self._texts.append(text)
        self._chain.emit(Chunk(text))

    def salvage(self) -> None:
        """The attempt failed or was cut short (its first-chunk wait over, the reply's
        time up): what the decoder holds whole is handed on, room allowing (with none,
        the reply's reader has stopped, and what waits is left). A client that left
        takes nothing more (its reply was detached). Once the answer's end came, its
        own end says it all. A block of native reasoning left open is closed."""
        if self.full is None and not self._decoder.finished:
            events: list[Event] = []
            with contextlib.suppress(Exception):  # the failure being raised is the one to tell
                self._decoder.salvage(events)
                self._hand_on(events, salvaging=True)
        self._close_thinking()

    def _hand_on(self, events: list[Event], salvaging: bool = False) -> None:
        """`events` to the reply, as long as it has room (asked before each chunk, as
        the reply's limit is counted in chunks); the rest wait in `_waiting`. What is
        salvaged counts even after the wait for a first chunk ran out."""
        chain, progress = self._chain, self._progress
        deadline = self._first_chunk_deadline
        for at, event in enumerate(events):
            if isinstance(event, StreamEnd):
                if progress.shown or not salvaging:  # a failed attempt that showed nothing
                    chain._finish(event)  # leaves the report to the provider that answers
                return
            if not progress.shown and deadline.expired() and not salvaging:
                return  # the wait for a first chunk is over: this attempt is being cancelled
            if isinstance(event, Working):
                if event.began:
                    # Thinking after a call (or a tool the provider runs) is another block.
                    # An OpenAI-compatible server's call comes whole only at its end, after
                    # the thinking that followed it: by then the two had run together.
                    self._tagger.end_block()
                if not progress.shown:  # progress, not output: the wait starts over
                    restart = asyncio.get_running_loop().time() + chain.timeouts.first_chunk
                    deadline.reschedule(restart)
                continue
            if not progress.shown:
                if isinstance(event, TextDelta | ThinkingDelta) and shows_nothing(event.text):
                    # Blanks alone are no answer yet: a provider that opens with "\n" (or
                    # a zero-width space: a reviewer's), as text or as thinking, and fails,
                    # or ends, has shown nothing, and the next one may answer. They go out
                    # with what comes after them.
                    self._blanks.append((type(event) is ThinkingDelta, event.text))
                    continue
                if not deadline.expired():
                    deadline.reschedule(None)  # from here only idle gaps count
                progress.shown = True
                # The socket may have waited longer for the first chunk (aio.py).
                aio.allow_silence(self._response, chain.timeouts.idle)
                chain._commit(progress.provider)
                for thinking, blank in self._blanks:
                    self._emit_text(self._tagger.wrap(thinking, blank))
            if chain.room is not None and (full := chain.room()) is not None:
                self.full = full
                self._waiting = events[at:]
                if isinstance(events[-1], StreamEnd):
                    chain._finish(events[-1])  # what it cost, kept should the reply end first
                return
            if isinstance(event, ToolCall):
                # Thinking after the call is another block, not more of the one before;
                # its close tag goes with the next piece (a tag never travels alone).
                self._tagger.end_block()
                self._called = True
                chain.emit(self._own_id(event))
            else:
                thinking = isinstance(event, ThinkingDelta)
                self._emit_text(self._tagger.wrap(thinking, event.text))

    def _own_id(self, call: ToolCall) -> ToolCall:
        """`call` with an id no other call of this answer has: one made up where the
        provider gave none (an Anthropic-compatible server's block without one gave "",
        a call no request could send back) or one it gave already (the frontend answers
        calls by id: two alike could not be told apart, and the second was dropped on
        its way back)."""
        if call.id and call.id not in self._call_ids:
            self._call_ids.add(call.id)
            return call
        own = f"call_{uuid.uuid4().hex[:24]}"
        self._call_ids.add(own)
        return dataclasses.replace(call, id=own)


def _nothing_shown(stop_reason: StopReason | None) -> ProviderError:
    """The failure of an attempt whose stream ended properly with nothing to show: a
    refusal (a content filter, whatever the provider calls it) is told apart, as asking
    again will not change it."""
    if stop_reason == "content_filter":
        return ProviderError("upstream_refused", "the model declined, with no text")
    return ProviderError(
        "upstream_empty", f"stream ended with no text or tool call (stop reason {stop_reason})"
    )
