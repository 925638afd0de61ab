"""Routes, the Accept branch, status codes, CORS and JSON errors.

Everything a request can be refused for is checked here, in the order of
README "Who may call", before any provider is called or anything is read or written:
route (404/405), preflight, a setting that is wrong (500 `config_error`), auth
(401/503), the user's and the instance's replies in flight (429 / 503),
assistant id (400), media type (415), a `Content-Length` over the limit
(413), `Transfer-Encoding` (400), `Content-Encoding` (415), the body read
within its limit (413), JSON and fields (400), providers (409). In the iam
and none modes the body names the user, so the replies in flight are counted
after the body's checks (`_assistant`).

The SSE route holds its status until the first chunk or HEARTBEAT_SECONDS,
whichever comes first, so a chain that fails fast gets a real 502.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, cast

import flask
from werkzeug.datastructures import Headers
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import ClosingIterator

from . import __version__, sse
from .auth import caller
from .config import (
    ConfigError,
    Settings,
    cors_origins,
    project_id,
    request_settings,
    shown_url,
)
from .cors import cors_headers
from .direct import briefly, client_socket
from .errors import MESSAGES, ErrorCode, RequestError
from .limits import STOPPING_RETRY_AFTER_SECONDS, Slot, pieces, replies_in_flight
from .parking import Park
from .providers import configured_providers, with_fresh_key
from .providers.base import Provider
from .reply import CLIENT_POLL_SECONDS, ClientGone, Refused, Reply
from .request import (
    AssistantRequest,
    Turn,
    body_trace_id,
    body_user_id,
    body_user_name,
    build_request,
    check_assistant_id,
    check_media_type,
    parse_body,
)
from .saving import History, history_read, save_question, start_history, user_message
from .store import Author, FirestoreStore, MessageStore
from .tracing import RequestLog, new_trace_id, trace_id_from_headers
from .worker import (
    HEAD,
    PARKING,
    STOP_EARLY,
    TRACE_ID,
    Instead,
    body_refusal,
)

# Any id, a line break too (a decoded %0A): check_assistant_id says what is wrong with it.
_ASSISTANT_ROUTE = re.compile(r"/vac/assistant/(?P<id>.*?)(?P<sse>/sse)?", re.DOTALL)
_ESCAPED_SLASH = re.compile("%2f", re.IGNORECASE)
_ALLOWED_METHODS = "POST, OPTIONS"
_HEALTH_METHODS = "GET, HEAD, OPTIONS"
_ALLOWED_HEADERS = "Content-Type, Accept, Authorization, traceparent, X-Cloud-Trace-Context"
FIRST_STEP_WAIT_SECONDS = 0.01  # at most, for the loop to send the upstream request

SSE_HEADERS = {
    "Cache-Control": "no-cache, no-transform",
    "X-Accel-Buffering": "no",
}


def handle(request: flask.Request) -> flask.Response:
    started = time.monotonic()
    # werkzeug's Headers: a case-insensitive lookup, though not a registered Mapping.
    headers = cast("Mapping[str, str]", request.headers)
    trace_id = trace_id_from_headers(headers) or new_trace_id()
    request.environ[TRACE_ID] = trace_id  # for the worker's lines about this request
    settings: Settings | None
    try:
        settings = request_settings()
    except ConfigError as exc:
        # Every request is refused (500 config_error), after the route and preflight
        # (§9), which need no setting: CORS_ORIGINS is read on its own (it has no
        # invalid value), so a page sees the code rather than a network error.
        RequestLog(trace_id, project_id()).error("config.invalid", reason=str(exc))
        settings = None
    origins = cors_origins() if settings is None else settings.cors_origins
    project = project_id() if settings is None else settings.project_id
    log = RequestLog(trace_id, project)
    cors = cors_headers(headers.get("Origin"), origins, preflight=request.method == "OPTIONS")
    try:
        response = _route(request, headers, origins, settings, trace_id, log, started)
    except RequestError as exc:
        if exc.trace_id:
            trace_id, log = exc.trace_id, RequestLog(exc.trace_id, project)
            request.environ[TRACE_ID] = trace_id  # the worker's lines too
        why = exc.for_log if exc.reason is None else exc.reason
        log.info("request.refused", status=exc.status, code=exc.code, reason=why)
        response = _error(exc.status, exc.code, exc.message, trace_id)
        response.headers.update(exc.headers)
    except Exception:
        log.exception("request.crashed")
        response = _error(500, "internal_error", MESSAGES["internal_error"], trace_id)
    response.headers.update(cors)
    return response


def _route(
    request: flask.Request,
    headers: Mapping[str, str],
    origins: tuple[str, ...],
    settings: Settings | None,  # None: a setting is wrong
    trace_id: str,
    log: RequestLog,
    started: float,
) -> flask.Response:
    written, path = _paths(request)
    if path == "/health":
        # A preflight too: a page whose fetch adds a header (traceparent, say) asks first.
        if request.method == "OPTIONS":
            return _preflight(headers, origins, _HEALTH_METHODS, trace_id)
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed(_HEALTH_METHODS, trace_id)
        if settings is None:
            return _config_error(trace_id)
        return _json(200, {"status": "ok", "version": __version__}, trace_id)
    match = _ASSISTANT_ROUTE.fullmatch(path)
    if match is None:
        return _error(404, "not_found", f"no route for {written[:200]}", trace_id)
    if request.method == "OPTIONS":
        return _preflight(headers, origins, _ALLOWED_METHODS, trace_id)
    if request.method != "POST":
        return _method_not_allowed(_ALLOWED_METHODS, trace_id)
    if settings is None:
        return _config_error(trace_id)
    return _assistant(request, headers, match, settings, trace_id, log, started)


def _paths(request: flask.Request) -> tuple[str, str]:
    """The request's path as its client wrote it, and as it is routed: unescaped but
    for its escaped slashes, each of which becomes a NUL (refused in an id, in no
    route), so that a route is told by the `/`s its client wrote. From Flask's path,
    unescaped whole, `/vac/assistant/demo%2Fsse` was the SSE route of assistant `demo`
    (a JSON caller got a stream), and `/%2Fhealth` or `//health` was `/health`
    (werkzeug drops leading slashes). The raw path is gunicorn's and the test client's
    RAW_URI."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if not isinstance(raw, str) or not raw:
        return request.path, request.path
    if not raw.startswith("/"):  # absolute-form (`POST http://host/path`), or `*`
        raw = urllib.parse.urlsplit(raw).path or "/"
    written = raw.partition("?")[0].partition("#")[0]
    return written, "\0".join(_unescaped(piece) for piece in _ESCAPED_SLASH.split(written))


def _unescaped(raw: str) -> str:
    """A raw path's piece unescaped as werkzeug unescapes a path (a WSGI string holds
    the request's bytes as Latin-1; they are UTF-8, anything else replaced)."""
    escaped = raw.encode("latin-1", "replace")
    return urllib.parse.unquote_to_bytes(escaped).decode("utf-8", "replace")


def _config_error(trace_id: str) -> flask.Response:
    return _error(500, "config_error", MESSAGES["config_error"], trace_id)


def _assistant(
    request: flask.Request,
    headers: Mapping[str, str],
    match: re.Match[str],
    settings: Settings,
    trace_id: str,
    log: RequestLog,
    started: float,
) -> flask.Response:
    """POST on an assistant route: every refusal first, in the order of §9, then the reply.

    A verified caller (firebase) takes their slot before the body is read; in
    iam / none the body names the user, so it is checked first. The slot is
    held until the response is closed, however the reply ends. Once the body
    is read, its trace id wins over the headers' for whatever follows: the
    reply, or a refusal (`RequestError.trace_id`, answered by `handle`).
    """
    verified = caller(headers, settings.auth)
    limits = (settings.auth.max_streams_per_user, settings.max_streams)
    slot = replies_in_flight.take(verified.user_id, *limits) if verified else None
    body_trace: str | None = None
    try:
        assistant_id = check_assistant_id(match["id"])
        check_media_type(request.content_type)  # before the body is asked for
        body = parse_body(_read_body(request, settings.max_body_bytes), request.content_type)
        body_trace = body_trace_id(body)
        if body_trace and body_trace != trace_id:
            trace_id, log = body_trace, RequestLog(body_trace, settings.project_id)
            request.environ[TRACE_ID] = trace_id  # the worker's lines too
        assistant_request = build_request(
            assistant_id,
            body,
            max_input_chars=settings.max_input_chars,
            max_history_messages=settings.max_history_messages,
        )
        author = verified or _author(assistant_request)
        if slot is None:
            slot = replies_in_flight.take(author.user_id, *limits)
        response = _answer(
            request, match, assistant_request, author, slot, settings, trace_id, log, started
        )
    except BaseException as exc:
        if slot is not None:
            slot.release()
        if isinstance(exc, RequestError):
            exc.trace_id = exc.trace_id or body_trace
        raise
    if not response.is_streamed:  # a stream's reply releases the slot when it ends
        slot.release()
    return response


def _answer(
    request: flask.Request,
    match: re.Match[str],
    assistant_request: AssistantRequest,
    author: Author,
    slot: Slot,
    settings: Settings,
    trace_id: str,
    log: RequestLog,
    started: float,
) -> flask.Response:
    """The reply to a request that passed every check: 409, or the stream / JSON answer."""
    providers, skipped = configured_providers(settings)
    _announce_providers(settings, [provider.name for provider in providers], skipped, log)
    if not providers:
        log.error("request.no_provider", skipped=skipped)
        return _error(409, "no_provider", MESSAGES["no_provider"], trace_id)

    streaming = bool(match["sse"]) or _wants_event_stream(request)
    store = _store_for(assistant_request, settings)
    read_history = bool(
        store and assistant_request.read_from_history and not assistant_request.chat_history
    )
    accepted = _Accepted(
        request.environ,
        assistant_request,
        author,
        slot,
        settings,
        trace_id,
        log,
        started,
        providers,
        store,
        streaming,
        read_history,
        _client_gone_probe(request.environ),
    )
    if not (store and read_history and not accepted.client_gone()):  # gone while queued
        return accepted.begin(None)
    # The whole save wait, even past a stream's status window (which counts from the
    # request, reply.py: the stream opens at once after a slow read): a reply without its
    # history would answer out of context.
    timeout = settings.persist_timeout_seconds
    reading = start_history(store, assistant_request, author, trace_id, timeout, log)
    if reading is None or not request.environ.get(PARKING):
        return accepted.begin(history_read(reading, timeout, timeout, log))
    return _after_history(reading, timeout, accepted)


@dataclasses.dataclass(frozen=True)
class _Accepted:
    """A request that passed every check, and what its reply begins from once its
    history (when one is read) is in hand."""

    environ: dict[str, Any]
    request: AssistantRequest
    author: Author
    slot: Slot
    settings: Settings
    trace_id: str
    log: RequestLog
    started: float
    providers: list[Provider]
    store: MessageStore | None
    streaming: bool
    read_history: bool
    client_gone: Callable[[], bool]

    def keep_question(self) -> None:
        """The question of a reply that never begins, saved all the same (off the
        thread), as when its client leaves mid-reply."""
        asked = self.request
        if self.store and asked.save_to_history and not asked.user_message_already_saved:
            question = user_message(asked, self.trace_id, self.author, self.started)
            save_question(self.store, question, self.log)

    def begin(self, history: History | None) -> flask.Response:
        """The reply begun, its history (if one was read) in hand: the stream or the JSON
        answer; or a 499 for a client that left before it began, a 503 if the worker
        began to stop meanwhile."""
        if history is None:
            return _begin(self, self.request, None)
        turns = history.before(self.request.user_input)
        asked = dataclasses.replace(self.request, chat_history=turns)
        return _begin(self, asked, history.error)


def _after_history(
    reading: concurrent.futures.Future[tuple[Turn, ...]], timeout: float, accepted: _Accepted
) -> flask.Response:
    """Under our worker (`PARKING`), the wait for the history read is the response's
    own, as a reply's waits are: its thread goes back to the pool meanwhile (a hanging
    database's PERSIST_TIMEOUT_SECONDS held one per request, and every parked stream's
    pings, final frames and departure checks waited for the threads). Then the reply
    begins, and its response is this one's: its items in turn, or, if it is no stream
    (a 499), its answer in place of this one. Its headers are those the reply's own will
    have (the worker writes a stream's head from them), CORS added to them by `handle`."""
    streaming, environ, trace_id = accepted.streaming, accepted.environ, accepted.trace_id
    headers = {**SSE_HEADERS, "X-Trace-Id": trace_id} if streaming else {"X-Trace-Id": trace_id}
    response = flask.Response(
        status=200,
        content_type="text/event-stream; charset=utf-8" if streaming else None,
        headers=headers,
        direct_passthrough=True,
    )
    begun: list[flask.Response] = []
    wakes: list[Callable[[], None]] = []
    stopping: list[bool] = []

    def read_or_stop(wake: Callable[[], None]) -> bool:
        reading.add_done_callback(lambda _done: wake())
        wakes.append(wake)
        return True

    def stop_early() -> None:
        """The worker is stopping: the read is not waited for (the reply would only be
        refused once it ends, its question's write begun late in the stop's time)."""
        stopping.append(True)
        reading.cancel()
        for wake in wakes:
            wake()

    environ[STOP_EARLY] = stop_early  # the reply's own, once it begins

    def items() -> Generator[bytes | Park | Instead, None, None]:
        # A look for the client every CLIENT_POLL_SECONDS as the read goes on: one that
        # left is let go of within a second (`close`: its question kept, its slot given
        # back), not when a hanging database's read gives up (its user's next requests
        # were refused 429 meanwhile).
        deadline = time.monotonic() + timeout
        while not (reading.done() or stopping):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            yield Park(min(left, CLIENT_POLL_SECONDS), read_or_stop)
            if accepted.client_gone():
                accepted.log.info("request.client_gone", during="history")
                return
        try:
            if stopping:  # not waited for: its reply is refused as it begins (`_begin`)
                accepted.log.info("history.given_up", reason="the worker is stopping")
                reply = accepted.begin(History())
            else:
                reply = accepted.begin(history_read(reading, 0.0, timeout, accepted.log))
        except Exception:  # a bug of ours: answered as `handle` answers one
            accepted.log.exception("request.crashed")
            reply = _error(500, "internal_error", MESSAGES["internal_error"], trace_id)
        begun.append(reply)
        for name, value in response.headers.items():  # CORS, from `handle`
            if name not in reply.headers and (reply.is_streamed or name not in SSE_HEADERS):
                reply.headers[name] = value
        if not reply.is_streamed:  # a refusal: in place of the response begun
            yield Instead(reply.status, reply.headers.to_wsgi_list(), reply.get_data())
            return
        yield from cast("Iterator[bytes | Park | Instead]", reply.response)

    def close() -> None:
        """However this response ended: what the reply begun holds is given back (its
        own closing), or, if none began or it is no stream, the user's slot. One ended
        while it waited for the read (its client gone, the worker stopping) keeps its
        question, as one whose client left as it began does."""
        if not begun:
            reading.cancel()
            accepted.keep_question()
        if begun and begun[0].is_streamed:
            begun[0].close()
        else:
            accepted.slot.release()

    response.response = ClosingIterator(cast("Iterator[bytes]", items()), close)
    return response


def _begin(
    accepted: _Accepted, assistant_request: AssistantRequest, history_error: str | None
) -> flask.Response:
    """`_Accepted.begin`, with the request as its history made it (and why it has none,
    if the read failed)."""
    environ, slot, settings = accepted.environ, accepted.slot, accepted.settings
    trace_id, log, providers = accepted.trace_id, accepted.log, accepted.providers
    streaming, client_gone = accepted.streaming, accepted.client_gone
    # A client that left before its reply begins (while its history was read, the whole
    # save wait with a hanging database; or while its request waited for a thread) gets
    # no provider call made for nobody. Its question is kept, as when it leaves mid-reply.
    if client_gone():
        during = "history" if accepted.read_history else "start"
        log.info("request.client_gone", during=during)
        accepted.keep_question()
        return _error(499, "client_gone", MESSAGES["client_gone"], trace_id)
    if replies_in_flight.stopping:  # since its history read began: no provider asked
        log.info("request.refused", status=503, code="overloaded", reason="the worker is stopping")
        accepted.keep_question()
        return _reply_json(503, _overloaded(trace_id), trace_id)

    log.info(
        "request.accepted",
        assistant_id=assistant_request.assistant_id,
        streaming=streaming,
        input_chars=len(assistant_request.user_input),
        history_turns=len(assistant_request.chat_history),
        providers=[provider.name for provider in providers],
    )
    # Before client_socket(): the send timeout is what makes the socket non-blocking.
    _bound_sending(environ, settings.send_timeout_seconds)
    reply = Reply(
        assistant_request,
        trace_id=trace_id,
        settings=settings,
        providers=providers,
        store=accepted.store if assistant_request.save_to_history else None,
        author=accepted.author,
        log=log,
        streaming=streaming,
        client_gone=client_gone,
        client_socket=(
            client_socket(
                environ.get("gunicorn.socket"),
                environ.get("SERVER_PROTOCOL"),
                slot,
                head=environ.get(HEAD),
            )
            if streaming
            else None
        ),
        parking=bool(environ.get(PARKING)),
        refresh_key=functools.partial(with_fresh_key, settings),
        started=accepted.started,
        history_error=history_error,
        # A JSON answer is written after its reply ends: its slot is given back when its
        # response is closed (`_json_reply`), a stream's when the reply ends.
        on_end=slot.release if streaming else _nothing,
    )
    slot.evict = _hang_up(environ)
    environ[STOP_EARLY] = reply.stop_early  # for a stopping worker (worker.py, 6)
    # Alone on the instance, this thread lets the loop send the upstream request before it
    # goes back through Flask: idle, the first chunk comes ~0.2 ms sooner. Not when others
    # stream: the wait's wake-up cost 5% of the CPU at C=200 (README "Speed", round 9).
    alone = replies_in_flight.count() == 1
    reply.start(first_step_wait=FIRST_STEP_WAIT_SECONDS if alone else 0.0)
    try:
        if not streaming:
            return _json_reply(reply, slot, environ.get("gunicorn.socket"), trace_id)
        return _sse_reply(reply, slot, environ.get("gunicorn.socket"), trace_id)
    except ClientGone:
        # Nobody will read this; 499 is the conventional "client closed request" in logs.
        return _error(499, "client_gone", MESSAGES["client_gone"], trace_id)


def _json_reply(reply: Reply, slot: Slot, sock: object, trace_id: str) -> flask.Response:
    """The answer, written as a stream's frames are: piece by piece, each with the whole
    send timeout (limits.WRITE_PIECE_BYTES), the slot told while a write is under way
    and given back when the response is closed. The slot went back when the reply
    ended, before its answer was written: one user's requests whose clients took
    nothing each held a thread SEND_TIMEOUT_SECONDS, past their limit and past the
    threads that may wait on clients (every other user's requests waited 28 s).

    Under our worker (`PARKING`) the wait for the answer is the response's own, as a
    stream's status window is (`_sse_reply`): its thread goes back while the model
    writes, and the answer goes out in place of the response begun (`worker.Instead`:
    its status and headers, then its body as frames). Elsewhere it waits here."""
    if not reply.parks:
        status, payload = reply.json_answer()
        response = _reply_json(status, payload, trace_id)
        slot.last_write_begins()  # the answer is all there is to write
        writes = _marking_writes(_one_frame(response.get_data()), slot, sock)
        response.response = ClosingIterator(cast("Iterator[bytes]", writes), slot.release)
        return response
    response = flask.Response(status=200, headers={"X-Trace-Id": trace_id}, direct_passthrough=True)
    answer = _answer_instead(reply, response.headers, trace_id, slot.last_write_begins)
    frames = _marking_writes(answer, slot, sock)
    # A reply that did not end (the server closed what it was given) is abandoned.
    closing = [reply.close, slot.release]
    response.response = ClosingIterator(cast("Iterator[bytes]", frames), closing)
    return response


def _answer_instead(
    reply: Reply, headers: Headers, trace_id: str, last_write_begins: Callable[[], None]
) -> Generator[bytes | Park | Instead, None, None]:
    """The parks of a JSON reply's wait, then its answer in place of the response begun:
    its status and headers (with those `handle` gave the response: CORS), then its body,
    a frame whose write the slot is told of (a large answer to a client that takes
    nothing is evictable)."""
    try:
        status, payload = yield from reply.json_steps()
        answer = _reply_json(status, payload, trace_id)
    except ClientGone:  # what arrived was saved; a client that only half-closed reads this
        answer = _error(499, "client_gone", MESSAGES["client_gone"], trace_id)
    for name, value in headers.items():
        if name not in answer.headers:
            answer.headers[name] = value
    last_write_begins()  # the answer is all there is to write
    yield Instead(answer.status, answer.headers.to_wsgi_list(), b"")
    yield answer.get_data()


def _one_frame(body: bytes) -> Generator[bytes | Park | Instead, None, None]:
    yield body


def _nothing() -> None:
    pass


def _sse_reply(reply: Reply, slot: Slot, sock: object, trace_id: str) -> flask.Response:
    """The status waits for the first chunk, or HEARTBEAT_SECONDS, whichever comes first.

    Under our worker (`PARKING`) that wait is the response's own: it is
    returned at once, its thread goes back to the pool while the upstream
    thinks, and a reply refused meanwhile (a 502, say) is written instead of
    it (`worker.Instead`), its head not being out yet. Elsewhere (a test
    client) the wait is here, before the response exists.
    """
    stream = reply.sse_stream()
    if not reply.parks:
        first = next(stream)
        if isinstance(first, Refused):
            stream.close()
            return _reply_json(first.status, first.payload, trace_id)
        stream = _starting_with(first, stream)
    response = flask.Response(
        status=200,
        content_type="text/event-stream; charset=utf-8",
        headers={**SSE_HEADERS, "X-Trace-Id": trace_id},
        # A Park or an Instead is no frame: Flask passes it through untouched,
        # and the worker acts on it (worker.py "parking").
        direct_passthrough=True,
    )
    # The server closes what it was given (WSGI): a reply that did not end is then
    # abandoned, and its place in the limits given back, however the response ended
    # (one closed before its first frame never runs the generators' `finally`s).
    # Not `call_on_close`: werkzeug never calls it for a `direct_passthrough` body.
    frames = _marking_writes(_refusals_instead(stream, response.headers, trace_id), slot, sock)
    response.response = ClosingIterator(cast("Iterator[bytes]", frames), reply.close)
    return response


def _starting_with(
    first: bytes | Park | Refused, rest: Generator[bytes | Park | Refused, None, None]
) -> Generator[bytes | Park | Refused, None, None]:
    try:
        yield first
        yield from rest
    finally:
        rest.close()


def _refusals_instead(
    stream: Generator[bytes | Park | Refused, None, None], headers: Headers, trace_id: str
) -> Generator[bytes | Park | Instead, None, None]:
    """The stream, with a refusal turned into the answer the worker writes instead: its
    status and JSON error, with the headers `handle` gave the stream (CORS) but not
    those that describe a stream."""
    try:
        for item in stream:
            if not isinstance(item, Refused):
                yield item
                continue
            answer = _reply_json(item.status, item.payload, trace_id)
            for name, value in headers.items():
                if name not in answer.headers and name not in SSE_HEADERS:
                    answer.headers[name] = value
            yield Instead(answer.status, answer.headers.to_wsgi_list(), answer.get_data())
    finally:
        stream.close()


_announced: tuple[object, ...] | None = None


def _announce_providers(
    settings: Settings, names: list[str], skipped: dict[str, str], log: RequestLog
) -> None:
    """One log line per process (and per change) saying which providers answer, and where,
    in the log of the request that first saw them (every line a request writes has its trace).

    Locally this is where a run against the fake upstream shows: its base URL
    is on 127.0.0.1.
    """
    global _announced
    used = {
        name: f"{settings.providers[name].model} @ {shown_url(settings.providers[name].base_url)}"
        for name in names
    }
    summary = (tuple(used.items()), tuple(skipped.items()))
    if summary != _announced:
        _announced = summary
        log.info("providers.configured", order=used, skipped=skipped)


def _store_for(assistant_request: AssistantRequest, settings: Settings) -> MessageStore | None:
    if not (assistant_request.save_to_history or assistant_request.read_from_history):
        return None
    return FirestoreStore(
        settings.collection,
        settings.persist_timeout_seconds,
        project=settings.project_id,
        database=settings.database,
    )


def _author(assistant_request: AssistantRequest) -> Author:
    user = assistant_request.user
    user_id = body_user_id(user)
    return Author(user_id=user_id, email=user_id, name=body_user_name(user))


def _read_body(request: flask.Request, limit: int) -> bytes:
    """The body, or 413. Never reads more than limit+1 bytes, even with no Content-Length."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    # gunicorn takes a content coding before `chunked` (gzip, deflate, compress) and
    # hands the body on still coded: the only coding we read is chunked alone.
    codings = request.headers.get("Transfer-Encoding")
    if codings is not None and codings.strip().lower() != "chunked":
        raise RequestError("Transfer-Encoding must be chunked")
    # Nor any Content-Encoding: a gzip body would be refused as "not UTF-8", and one
    # labelled br but sent as it is taken, both misleading.
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise RequestError(
            f"Content-Encoding {coding[:40]!r} is not accepted: send the body uncompressed",
            415,
            "unsupported_media_type",
        )
    try:
        raw = request.stream.read(limit + 1)
    except (OSError, ClientDisconnected):
        # A body cut off: gunicorn's NoMoreData (chunked), or werkzeug's wrapping of it
        # (with a Content-Length). Its client has left; not a bug of ours.
        raise RequestError("request body ended before it was complete") from None
    except Exception as exc:  # a chunk size, a chunk's end or a trailer gunicorn refuses
        problem = body_refusal(exc)
        if problem is None:
            raise
        raise RequestError(problem) from None
    if len(raw) > limit:  # chunked, with no Content-Length to refuse up front
        raise _too_large(limit)
    if request.content_length is not None and len(raw) < request.content_length:
        # gunicorn's reader of a Content-Length body hands it back short, with no
        # error, when its client stops sending (werkzeug checks none: gunicorn says
        # its input is terminated): a cut body that still parses was a question.
        raise RequestError("request body ended before it was complete")
    return raw


def _too_large(limit: int) -> RequestError:
    return RequestError(f"request body is larger than {limit} bytes", 413, "payload_too_large")


def _wants_event_stream(request: flask.Request) -> bool:
    """True only when Accept names text/event-stream itself (`*/*` is not a request for it)
    with a weight above 0. Read here, not by werkzeug, which drops an entry whose weight
    is RFC 9110's `1.` or `0.` and takes `q = 0` (spaces around `=`) for 1; a quoted
    parameter's commas and semicolons are its own. Only spaces and tabs are trimmed (HTTP's
    whitespace, and all the JS kit's reading trims alike)."""
    for entry in _outside_quotes(",", ",".join(request.headers.getlist("Accept"))):
        media_type, _, rest = entry.partition(";")  # no quote in a media type
        if media_type.strip(_HTTP_SPACE).lower() != "text/event-stream":
            continue
        weights = [
            value.strip(_HTTP_SPACE)
            for name, _, value in (
                parameter.partition("=") for parameter in _outside_quotes(";", rest)
            )
            if name.strip(_HTTP_SPACE).lower() == "q"
        ]
        if not weights or (_WEIGHT.fullmatch(weights[0]) and float(weights[0]) > 0):
            return True
    return False


def _outside_quotes(separator: str, text: str) -> list[str]:
    """`text`'s parts between each `separator` not inside a quoted string (RFC 9110's,
    with its backslash escapes; one left open runs to the end), empty ones left out."""
    return _PARTS[separator].findall(text)


_PARTS = {separator: re.compile(rf'(?:[^{separator}"]|"(?:[^"\\]|\\.)*"?)+') for separator in ",;"}
_WEIGHT = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")  # RFC 9110's qvalue
_HTTP_SPACE = " \t"


SEND_BUFFER_BYTES = 64 * 1024


def _marking_writes(
    frames: Generator[bytes | Park | Instead, None, None], slot: Slot, sock: object
) -> Iterator[bytes | Park | Instead]:
    """The frames, with the slot told when a write is under way.

    gunicorn writes a frame (or a piece of a large one) between our `yield` and its
    next request for one, so a write that is still "under way" after seconds is a
    client that takes
    nothing: what a full instance may evict (limits.py). A `Park` is no write (nor an
    `Instead`: it is written before the stream's first frame, where nothing waits).
    When as many threads as may wait on clients already do (limits.py), the
    write waits BRIEF_WRITE_SECONDS at most instead.
    """
    try:
        for frame in frames:
            if isinstance(frame, Park | Instead):
                yield frame
                continue
            if frame.endswith(sse.DONE):  # a stream's terminal frame
                slot.last_write_begins()
            if slot.write_begins():
                try:
                    for piece in pieces(frame):  # each piece has the whole send timeout
                        yield piece
                        slot.write_moved_on()
                finally:
                    slot.write_ends()
            elif isinstance(sock, socket.socket):
                with briefly(sock):
                    yield frame
            else:
                yield frame
    finally:
        frames.close()  # the reply's own `finally` runs now, not whenever it is collected


def _hang_up(environ: Mapping[str, Any]) -> Callable[[], None] | None:
    """Ends this request's connection from another thread (its write fails at once)."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return None

    def hang_up() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    return hang_up


def _bound_sending(environ: Mapping[str, Any], seconds: float) -> None:
    """A client that accepts no write for `seconds` is a client that left; and a
    client that reads slowly is not sent more than a small buffer ahead.

    gunicorn writes each frame with one `sendall`, a large one piece by piece
    (limits.WRITE_PIECE_BYTES): the timeout bounds a whole `sendall`, and a slow but
    steady reader must not be cut in a long final answer. Frames the I/O loop writes
    itself never wait: direct.py hands back what the socket did not take, and
    the request thread sends it under the same timeout. With a socket timeout, a
    write the client does not take within it raises, gunicorn closes the
    response, and the reply is abandoned like any other (upstream cancelled,
    what arrived saved `incomplete`). gunicorn sets the socket back to
    blocking for its next request, so the timeout lasts this response only.

    Left to itself the kernel lets a send buffer grow to megabytes for a
    client that never reads (measured: ~2 MB each), all of it text the reply
    also keeps for its final answer. A token stream needs far less; with the
    outbox's bound (outbox.py) this caps what a stuck client costs us.
    """
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, socket.socket):
        sock.settimeout(seconds)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)


_HUNG_UP = getattr(select, "POLLRDHUP", 0)  # 0 where the system has none: the peek decides


def _client_gone_probe(environ: Mapping[str, Any]) -> Callable[[], bool]:
    """A check that the client closed its connection, without writing to it.

    Under gunicorn a closed client is otherwise noticed only on the second
    write after the close; peeking at the socket notices it between writes.
    """
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        return lambda: False

    # poll(), not select(), which fails for descriptors past 1024 (hundreds of
    # streams on one instance get there). And never a bare peek: the socket
    # has a timeout (`_bound_sending`), and Python waits for a socket with a
    # timeout to become readable before it reads, MSG_DONTWAIT or not, so a
    # peek at a quiet client blocked for the whole send timeout and then read
    # as a client that left.
    # POLLRDHUP (Linux): the client's FIN is seen even behind bytes it sent after its
    # request (a pipelined request, a stray CRLF), where a peek returns those bytes and
    # never the end; a half-close counts as gone (README "Choices").
    poller = select.poll()
    poller.register(sock, select.POLLIN | _HUNG_UP)
    # The request thread probes once a second and the I/O loop before a next provider:
    # a poll object refuses a second poll() while one runs ("concurrent poll()
    # invocation"), which ended a healthy reply as internal_error. Never waited for (the
    # I/O loop carries every stream): while the other probes, this one says "still
    # there", and the other's answer, or the next second's, tells.
    polling = threading.Lock()

    def gone() -> bool:
        if not polling.acquire(blocking=False):
            return False
        try:
            events = poller.poll(0)
            if not events:
                return False  # nothing to read, no hang-up: still connected
            if events[0][1] & (_HUNG_UP | select.POLLHUP | select.POLLERR):
                return True
            return sock.recv(1, socket.MSG_PEEK) == b""  # readable: returns at once
        except (OSError, ValueError):
            return True
        finally:
            polling.release()

    return gone


def _preflight(
    headers: Mapping[str, str], origins: tuple[str, ...], methods: str, trace_id: str
) -> flask.Response:
    response = flask.Response(status=204, headers={"X-Trace-Id": trace_id})
    del response.headers["Content-Type"]  # no body, so no type
    if "Access-Control-Allow-Origin" in cors_headers(headers.get("Origin"), origins):
        # An allowed origin may send the headers it asks for (a frontend's own
        # tracing headers, say); the origin list is the gate, not this one.
        asked = headers.get("Access-Control-Request-Headers", "")
        response.headers["Access-Control-Allow-Methods"] = methods
        response.headers["Access-Control-Allow-Headers"] = asked or _ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = "3600"
    return response


def _method_not_allowed(allowed: str, trace_id: str) -> flask.Response:
    response = _error(405, "method_not_allowed", f"use {allowed}", trace_id)
    response.headers["Allow"] = allowed
    return response


def _reply_json(status: int, payload: dict[str, Any], trace_id: str) -> flask.Response:
    """A reply's JSON answer, or its failure before anything was shown, with Retry-After
    when the instance is stopping (`overloaded`: another one takes a retry), as the
    worker's own answer to a reply it stops says it (worker.py, 6)."""
    response = _json(status, payload, trace_id)
    if payload.get("code") == "overloaded":
        response.headers["Retry-After"] = str(STOPPING_RETRY_AFTER_SECONDS)
    return response


def _overloaded(trace_id: str) -> dict[str, Any]:
    return {"error": MESSAGES["overloaded"], "code": "overloaded", "trace_id": trace_id}


def _error(status: int, code: ErrorCode, message: str, trace_id: str) -> flask.Response:
    return _json(status, {"error": message, "code": code, "trace_id": trace_id}, trace_id)


def _json(status: int, payload: dict[str, Any], trace_id: str | None = None) -> flask.Response:
    response = flask.Response(
        sse.json_text(payload),
        status=status,
        content_type="application/json",
    )
    if trace_id:
        response.headers["X-Trace-Id"] = trace_id
    return response
