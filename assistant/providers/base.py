"""What every provider yields and raises, so the chain can treat them alike.

A provider `open()`s its request and gives a `Decoder` for the answer, which
turns the body, read by read, into events: `TextDelta` and `ThinkingDelta`
as the model writes, a `ToolCall` once each call the model makes is whole
(its arguments joined and parsed), then exactly one `StreamEnd` when the
upstream said it was finished. The decoder is plain code, fed by whoever
reads the body: the chain feeds it from the socket's own callback, with no
task woken per read (aio.BodyFeed). Every failure is a `ProviderError`:

    ProviderError              code + a message safe to show + detail for the log
      (codes) upstream_unreachable  connect failed
              upstream_timeout      connect / first chunk / idle timeout
              upstream_status       a 4xx / 5xx answer (status set)
              upstream_error        an error event inside a 200 stream
              upstream_empty        the stream ended with no text at all
              upstream_refused      ... declining: a content filter, a blocked prompt
              upstream_incomplete   the stream ended without its end marker
              upstream_protocol     a body we could not read
      and two the chain raises itself: reply_too_long (MAX_REPLY_SECONDS past) and
      overloaded (the instance is stopping)

httpx errors are translated in one place (`translate_http_error`), so the
chain never sees a third-party exception.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import dataclasses
import functools
import hashlib
import html
import json
import re
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx
import orjson

from ..config import ProviderSettings
from ..errors import MESSAGES, UpstreamCode
from ..request import Turn
from ..tools import ToolCall, ToolChoice, ToolSpec
from .echoes import PIECE, Echoes, TooCostly, Work, echoes_of

# The stop reasons every provider's own are mapped to (metadata `stop_reason`).
StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "content_filter", "other"
]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


def token_count(value: Any) -> int | None:
    """A provider's token count if it is one (a whole number, 0 to 2**63 - 1), else None:
    a string or a negative number in its usage is no count, and must not reach the
    final frame, the saved message, or arithmetic."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return value
    return None


@dataclass(frozen=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    thinking_tokens: int | None = None  # only where the provider reports it apart

    def __post_init__(self) -> None:
        for name in ("input_tokens", "output_tokens", "thinking_tokens"):
            object.__setattr__(self, name, token_count(getattr(self, name)))

    def as_dict(self) -> dict[str, int | None]:
        """Input and output always (null when the provider said nothing, as when a
        reply failed before its end), thinking only where the provider counts it apart."""
        counts = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.thinking_tokens is not None:
            counts["thinking_tokens"] = self.thinking_tokens
        return counts


@dataclass(frozen=True)
class Working:
    """The model made progress that is not output yet: a tool call began or a piece of
    its arguments came, or a tool the provider runs itself (a web search) began or
    answered. The wait for the first chunk starts over (pings are no progress).
    `began`: a call or a tool began here (or a thinking block ended), so thinking after
    it is another block."""

    began: bool = False


WORKING = Working()
CALL_BEGAN = Working(began=True)
THINKING_ENDED = CALL_BEGAN  # a block of its own: two in a row ran together


@dataclass(frozen=True)
class StreamEnd:
    stop_reason: StopReason | None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str | None):  # a provider's odd field: no model name
            object.__setattr__(self, "model", None)


Event = TextDelta | ThinkingDelta | Working | ToolCall | StreamEnd


@dataclass(frozen=True)
class Prompt:
    """What every provider sends, in its own wire format."""

    system: str | None
    turns: tuple[Turn, ...]  # oldest first; the last one is the user's new message
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    response_schema: Mapping[str, Any] | None = None  # ask for JSON matching it


@dataclass(frozen=True)
class ToolResult:
    """A tool's result from chat_history, sent back with the call it answers."""

    call_id: str
    name: str
    content: str


Part = str | ToolCall | ToolResult


@dataclass(frozen=True)
class Message:
    """One turn as providers want it: a role that alternates, and its parts in order."""

    role: Literal["user", "assistant"]
    parts: tuple[Part, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(part for part in self.parts if isinstance(part, str))

    @property
    def calls(self) -> list[ToolCall]:
        return [part for part in self.parts if isinstance(part, ToolCall)]

    @property
    def results(self) -> list[ToolResult]:
        return [part for part in self.parts if isinstance(part, ToolResult)]


class ProviderError(Exception):
    """A provider failed. `message` is safe to show; `detail` is for the log only."""

    def __init__(
        self,
        code: UpstreamCode,
        detail: str = "",
        status: int | None = None,
        key_refused: bool = False,
    ) -> None:
        # The detail may echo the prompt (scrubbed later, on `detail`): never in the
        # exception's own text, which a traceback would log.
        super().__init__(code)
        self.code: UpstreamCode = code
        self.message = MESSAGES[code]
        self.detail = detail
        self.status = status
        self.key_refused = key_refused  # the provider refused our key: worth re-reading it


def translate_http_error(exc: httpx.HTTPError) -> ProviderError:
    """The one place where httpx's exceptions become ours."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return ProviderError("upstream_timeout", "connect timeout")
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("upstream_timeout", "no data within the idle timeout")
    if isinstance(exc, httpx.ConnectError):
        return ProviderError("upstream_unreachable", type(exc).__name__)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ProviderError("upstream_incomplete", f"connection dropped: {type(exc).__name__}")
    return ProviderError("upstream_protocol", type(exc).__name__)


class Decoder(Protocol):
    """One answer's body -> events, read by read. `feed()` and `end()` append the events
    they complete to `out` as they go, so that those before a failure are in it when
    it is raised (a ProviderError, or any exception for a body the parser choked on)."""

    @property
    def finished(self) -> bool:
        """The upstream's end marker came: nothing after it is needed."""
        ...

    def feed(self, data: bytes, out: list[Event]) -> None:
        """The events the body's next bytes complete."""
        ...

    def end(self, out: list[Event]) -> None:
        """The body ended, or `finished`: what its last bytes held, then the StreamEnd;
        upstream_incomplete (or the upstream's error) if the answer was not whole."""
        ...

    def salvage(self, out: list[Event]) -> None:
        """The answer failed (an error, a cut, a timeout): what it holds whole that was
        not handed on yet, as a failure keeps what arrived (OpenAI's calls), then a
        StreamEnd with no stop reason carrying the usage and model reported so far."""
        ...


class EndsBeforeItsBody(Protocol):
    """A decoder whose answer can be whole before its body ends (Gemini's: the
    finishReason, after which the body may still hold an error)."""

    @property
    def answered(self) -> bool:
        """The answer's end marker came; the body may say more, or nothing."""
        ...


class Provider(Protocol):
    name: str
    model: str
    settings: ProviderSettings
    api_key: str
    # False: a request with tools cannot also ask for a response schema, so the
    # provider sends the tools alone (README "Tools and structured output").
    schema_with_tools: bool

    def schema_left_out(self, prompt: Prompt) -> str | None:
        """Why its request for `prompt` does not ask for the response schema asked for
        (None: it does, or none was asked for): the end of "<provider> ..."."""
        ...

    def open(
        self, client: httpx.AsyncClient, prompt: Prompt
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """The streaming answer to `prompt` (closed on exit); upstream_status for
        anything but a 200."""
        ...

    def decoder(self, response: httpx.Response) -> Decoder:
        """A decoder for `response`'s body; upstream_protocol if it is of the wrong type
        (for the SSE providers: Ollama's NDJSON comes under more than one type)."""
        ...


class HttpProvider:
    """What every provider module shares: its settings, its key, one POST that streams."""

    name = ""
    schema_with_tools = True

    def __init__(self, settings: ProviderSettings, api_key: str) -> None:
        self.settings = settings
        self.model = settings.model
        self.api_key = api_key  # never logged; the class has no repr that shows it

    def open(
        self, client: httpx.AsyncClient, prompt: Prompt
    ) -> AbstractAsyncContextManager[httpx.Response]:
        url, body, headers = self._request(prompt)
        return self._post(client, url, body, headers, prompt)

    def _request(self, prompt: Prompt) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The URL, the JSON body and the headers of the request for `prompt`."""
        raise NotImplementedError

    def decoder(self, response: httpx.Response) -> Decoder:
        raise NotImplementedError

    def schema_left_out(self, prompt: Prompt) -> str | None:
        if prompt.response_schema is None or self.schema_with_tools:
            return None
        if not self._sends_tools(prompt):
            return None
        return (
            "cannot take tools and a response schema in one request: "
            "the tools were sent, the schema was not"
        )

    def sends_schema(self, prompt: Prompt) -> bool:
        """Whether its request for `prompt` asks for the response schema."""
        return prompt.response_schema is not None and self.schema_left_out(prompt) is None

    def _sends_tools(self, prompt: Prompt) -> bool:
        # A provider that takes no schema beside tools leaves them out when none may be
        # called and a schema is asked for: the schema goes, and the answer is structured.
        if not prompt.tools:
            return False
        return self.schema_with_tools or prompt.tool_choice != "none" or not prompt.response_schema

    @asynccontextmanager
    async def _post(
        self,
        client: httpx.AsyncClient,
        url: str,
        body: dict[str, Any],
        headers: dict[str, str],
        prompt: Prompt,
    ) -> AsyncIterator[httpx.Response]:
        """The streaming response, or upstream_status for anything but a 200.

        The URL is parsed once per process and the body encoded with orjson:
        httpx parsing the URL again and encoding with `json` cost ~30 µs per
        request (bench/results/). The request is an `httpx.Request` sent with
        the client's `send()`, its headers merged here with the client's
        defaults (kept per client): `client.stream()` merges them through
        httpx's `Headers` every time, which cost ~20 µs more per request
        (bench/upstream_request.py). Its body goes as a stream with the Host
        and Content-Length headers already set, which httpx would otherwise add
        by rebuilding the headers a second time (16 µs a request, against 4).
        """
        target = _parsed(url)
        content = upstream_json(body)
        fields = {**_default_headers(client), **headers, "content-type": "application/json"}
        request = httpx.Request(
            "POST",
            target,
            headers=[
                ("host", target.netloc.decode("ascii")),
                *fields.items(),
                ("content-length", str(len(content))),
            ],
            stream=httpx.ByteStream(content),
            extensions={"timeout": client.timeout.as_dict()},
        )
        response = await client.send(request, stream=True)
        async with contextlib.aclosing(response):
            if response.status_code != 200:
                answer = await error_bytes(response)
                raise ProviderError(
                    "upstream_status",
                    error_text(answer, response, headers, prompt),
                    status=response.status_code,
                    # On the body as it came: scrubbed, a prompt that quoted the error's
                    # words (API_KEY_INVALID) had taken them out.
                    key_refused=self._refuses_key(response.status_code, answer),
                )
            if coding := compressed(response):
                # Asked for none (aio.py): inflated, 400 KB came to 419 MB at once.
                raise ProviderError("upstream_protocol", f"a {coding} body, asked for none")
            yield response

    def _refuses_key(self, status: int, body: bytes) -> bool:
        """Whether an error answer means "your key is wrong" (worth re-reading it)."""
        return status == 401


@functools.lru_cache(maxsize=8)
def _default_headers(client: httpx.AsyncClient) -> dict[str, str]:
    """The client's own headers (user agent, accepted encodings), to merge ours into."""
    return {name.lower(): value for name, value in client.headers.items()}


@functools.lru_cache(maxsize=64)
def _parsed(url: str) -> httpx.URL:
    return httpx.URL(url)


# The shape of an id `changed_call_id` made: an id of this shape is changed too, so a
# changed id never equals one sent as it was.
_CHANGED_CALL_ID = re.compile(r".*_[0-9a-f]{10}", re.DOTALL)


def keeps_call_id(call_id: str) -> bool:
    """Whether `call_id` can go as it is where a provider takes it (not of a changed id's
    shape: see `changed_call_id`)."""
    return not _CHANGED_CALL_ID.fullmatch(call_id)


def changed_call_id(call_id: str, kept: str) -> str:
    """An id a provider would refuse, in a form it takes: `kept` (what of the id it
    takes, cut to 29 characters) and a digest of the whole id, so two different ids stay
    different (40 characters at most), the same on a call and its result."""
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:10]
    return f"{kept[:29]}_{digest}"


def upstream_json(body: Mapping[str, Any]) -> bytes:
    """A request body as httpx's `json=` would send it: compact JSON in UTF-8.

    No NaN can be in it (request.py refuses NaN and infinities). orjson
    refuses integers past 64 bits, which a tool's JSON schema may hold
    (request.py takes numbers up to 40 digits): those bodies go through `json`.
    """
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def normalised_stop_reason(
    raw: str | None, table: Mapping[str, StopReason], made_calls: bool = False
) -> StopReason | None:
    """A provider's stop reason in our vocabulary; None while the reply has none.

    A reply that made tool calls and then simply stopped ends with `tool_use` on
    every provider: Gemini and Ollama say "stop" after calls, and some
    OpenAI-compatible servers say "stop" or nothing. One that made none never does,
    whatever the provider said: a frontend that sees `tool_use` looks for a call.
    """
    reason: StopReason | None = None
    if isinstance(raw, str):
        reason = table.get(raw, "other")
    elif raw is not None:  # not a string at all (a provider's odd field): a stop, of no kind known
        reason = "other"
    if made_calls and reason in (None, "end_turn"):
        return "tool_use"
    if not made_calls and reason == "tool_use":
        return "other"
    return reason


def conversation(turns: tuple[Turn, ...]) -> list[Message]:
    """Turns as providers want them: alternating, and starting with the user.

    Tool results are user-side parts (Anthropic and Gemini put them in a user
    turn; OpenAI and Ollama split them out again as `role: tool` messages).
    Consecutive turns of one role are joined: their texts with a blank line,
    their parts in order. Leading assistant turns (a UI's greeting, or a
    history window that starts after a question) are dropped: providers
    refuse a conversation that opens with the assistant.

    Calls and results must pair up, the results right after their call's
    turn (Anthropic and OpenAI refuse anything else): a call's first result
    later in the history is moved up to follow it, ahead of whatever the user
    and the assistant said in between (a result answers the latest call with
    its id that no result answered yet); a call no result answers (the user
    typed instead) is left out, and so is a second call with the same id in
    one turn; and a result that answers no earlier call (its call fell
    outside the history window, or it repeats a result already given) goes
    as the user's text, "Result of <tool>: ...".
    """
    start = next((i for i, turn in enumerate(turns) if turn.role != "assistant"), len(turns))
    turns = turns[start:]
    results = _results_by_call_turn(turns)
    placed = {result for answers in results.values() for result in answers}
    messages: list[Message] = []
    for index, turn in enumerate(turns):
        if turn.role == "tool":
            if index in placed:
                continue  # already sent right after its call
            turn = Turn("user", f"Result of {turn.tool_name}: {turn.content}")
        answers = [turns[result] for result in results.get(index, [])]
        if turn.tool_calls:
            answered = {result.tool_call_id for result in answers}
            turn = dataclasses.replace(turn, tool_calls=_answered_once(turn.tool_calls, answered))
        for each in (turn, *answers):
            _append(messages, each)
    return _unique_call_ids(messages)


def _unique_call_ids(messages: list[Message]) -> list[Message]:
    """The messages, a call whose id an earlier call had given a new one, on its results
    too (in the message after its own): Anthropic refuses an id twice in one request,
    and some OpenAI-compatible servers call every turn's first call `call_0`."""
    seen: set[str] = set()
    renamed: dict[str, str] = {}  # of the latest calls: their results follow them
    unique: list[Message] = []
    for message in messages:
        if message.role == "assistant":
            renamed = {}
        parts: list[Part] = []
        for part in message.parts:
            if isinstance(part, ToolCall):
                if part.id in seen:
                    new_id = changed_call_id(f"{part.id}\n{len(seen)}", part.id)
                    renamed[part.id] = new_id
                    part = dataclasses.replace(part, id=new_id)
                seen.add(part.id)
            elif isinstance(part, ToolResult) and part.call_id in renamed:
                part = dataclasses.replace(part, call_id=renamed[part.call_id])
            parts.append(part)
        unique.append(Message(message.role, tuple(parts)) if renamed else message)
    return unique


def _results_by_call_turn(turns: tuple[Turn, ...]) -> dict[int, list[int]]:
    """Indices: for each turn that made calls, the tool turns that answer them (for
    each call, the first tool turn after it with its id), in the order of the calls,
    whatever the order they came back in: Gemini and older Ollama servers get no ids
    with the results, so a result's place is all that says which call it answers (a
    frontend running two calls at once sends back first the one that ended first)."""
    waiting: dict[str, int] = {}  # call id -> the latest turn that made it, unanswered
    results: dict[int, list[int]] = {}
    for index, turn in enumerate(turns):
        for call in turn.tool_calls:
            waiting[call.id] = index
        if turn.role == "tool" and turn.tool_call_id in waiting:
            results.setdefault(waiting.pop(turn.tool_call_id), []).append(index)
    for index, answers in results.items():
        place: dict[str | None, int] = {}
        for position, call in enumerate(turns[index].tool_calls):
            place.setdefault(call.id, position)
        answers.sort(key=lambda answer: place[turns[answer].tool_call_id])
    return results


def _answered_once(calls: tuple[ToolCall, ...], answered: set[str | None]) -> tuple[ToolCall, ...]:
    """The answered calls, each id once (providers refuse an id twice in a turn): its
    first occurrence, in order."""
    kept: dict[str, ToolCall] = {}
    for call in calls:
        if call.id in answered:
            kept.setdefault(call.id, call)
    return tuple(kept.values())


def _append(messages: list[Message], turn: Turn) -> None:
    role: Literal["user", "assistant"] = "assistant" if turn.role == "assistant" else "user"
    parts = _parts(turn)
    if not parts:
        return  # an assistant turn of unanswered calls alone
    if messages and messages[-1].role == role:
        messages[-1] = Message(role, _joined(messages[-1].parts, parts))
    else:
        messages.append(Message(role, parts))


def _parts(turn: Turn) -> tuple[Part, ...]:
    if turn.role == "tool":
        assert turn.tool_call_id is not None and turn.tool_name is not None  # request.py
        return (ToolResult(turn.tool_call_id, turn.tool_name, turn.content),)
    text: tuple[Part, ...] = (turn.content,) if turn.content.strip() else ()
    return (*text, *turn.tool_calls)


def _joined(before: tuple[Part, ...], after: tuple[Part, ...]) -> tuple[Part, ...]:
    if before and after and isinstance(before[-1], str) and isinstance(after[0], str):
        return (*before[:-1], f"{before[-1]}\n\n{after[0]}", *after[1:])
    return (*before, *after)


# Codings that compress (httpx inflates the first four). Any other name is read as it
# comes, as httpx does: `Content-Encoding: none` is an SSE server's way to keep
# compression middleware off its stream.
_COMPRESSING = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd", "compress", "x-compress"})


def compressed(response: httpx.Response) -> str | None:
    """The compressing coding a response's body came in, if any: as its content coding,
    or as a transfer coding before `chunked` (`Transfer-Encoding: gzip, chunked`, which
    the transport de-chunks and leaves compressed)."""
    headers = response.headers
    codings = f"{headers.get('content-encoding', '')},{headers.get('transfer-encoding', '')}"
    for coding in codings.split(","):
        if (name := coding.strip().lower()) in _COMPRESSING:
            return str(name)
    return None


ERROR_BODY_BYTES = 2048  # of an upstream's error answer, for the log
_KEY_ROOM_BYTES = 512  # read past the cut, so that a key across it is found whole
# What an error in a stream keeps of what the upstream said: cut to ERROR_BODY_BYTES
# once the chain has scrubbed it (a key across a cut made before was half left).
ERROR_DETAIL_CHARS = ERROR_BODY_BYTES + _KEY_ROOM_BYTES


def error_detail(value: Any, default: str = "error") -> str:
    """What a provider's error value says, as a failure's detail (cut to
    ERROR_DETAIL_CHARS): a string as it is, anything else as JSON, cut as it is
    written (`str()` of a 10 MB list held the I/O loop a quarter second before its
    cut); `default` for none."""
    if not value:
        return default
    if isinstance(value, str):
        return value[:ERROR_DETAIL_CHARS]
    try:
        written = orjson.dumps(value)
    except TypeError:  # orjson's error: too deep, an integer past 64 bits
        return f"a {type(value).__name__}"
    return written[:ERROR_DETAIL_CHARS].decode("utf-8", "ignore")


_KEY_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "api-key"})


async def read_error_body(
    response: httpx.Response, headers: Mapping[str, str], prompt: Prompt | None = None
) -> str:
    """The start of an error body, for the log only (`error_text`)."""
    return error_text(await error_bytes(response), response, headers, prompt)


async def error_bytes(response: httpx.Response) -> bytes:
    """The start of an error body, as much as `error_text` may use (b"" if compressed)."""
    body = b""
    if compressed(response):
        return body
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= ERROR_BODY_BYTES + _KEY_ROOM_BYTES:
            break
    return body


def error_text(
    body: bytes, response: httpx.Response, headers: Mapping[str, str], prompt: Prompt | None
) -> str:
    """An error body's start (`error_bytes`) for the log only. It may echo our request (an
    OpenAI-compatible server's 422 quotes the body it refused): never the key its
    headers carried, looked for in the bytes before they are cut, nor the prompt's text."""
    if coding := compressed(response):  # asked for none: inflated, 64 KB came to 64 MB to scrub
        return f"a {coding} body, asked for none"
    sent: list[tuple[str, str]] = list(headers.items())
    with contextlib.suppress(RuntimeError):  # a response made without its request (tests)
        # As sent: httpx adds a URL's user and password as Basic auth (an Ollama behind
        # a proxy that asks for a login), which `headers` never held.
        sent += response.request.headers.items()
    secrets = request_secrets(sent)
    for secret in secrets:
        body = body.replace(secret, b"[redacted]")
    # Only what is kept is scrubbed: a first read can hold a MB, and the scrub of a MB
    # against a long history's texts held the I/O loop (every stream) 6.4 s a failure.
    kept = _whole_characters(body[: ERROR_BODY_BYTES + _KEY_ROOM_BYTES])
    readings = _as_texts(kept, response.charset_encoding)
    if not readings:
        return f"a body of {len(body)}{'+' if len(body) > len(kept) else ''} bytes, not text"
    scrubbed = []
    work = Work()  # for its readings in all
    for text in readings:
        text = without_secrets(text, secrets)  # in a body cut short, say
        scrubbed.append(text if prompt is None else without_prompt(text, prompt, work))
    # The reading the prompt was found in, if one; of two, the one it took most from (the
    # other shows its bytes as mojibake, between runs of the prompt's ASCII).
    found = [text for text in scrubbed if "[prompt]" in text]
    # Again once read back: a key an escape had hidden is one now.
    chosen = without_secrets(min(found, key=len) if found else scrubbed[0], secrets)
    return chosen[:ERROR_BODY_BYTES]


def _whole_characters(cut: bytes) -> bytes:
    """`cut` without a UTF-8 character our cut split at its end: read so, a UTF-8 body
    was no UTF-8, and logged in Windows-1252's letters (a reviewer's `ParamÃ¨tre`)."""
    try:
        cut.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason == "unexpected end of data":
            return cut[: error.start]
    return cut


def _as_texts(body: bytes, charset: str | None) -> list[str]:
    """An error body's readings as text for the scrubs to look through, the likelier
    first; none for one that is no text they can: UTF-16, UTF-32 or binary (NULs: a
    prompt with none in its letters went unfound), or compressed (a gzip body with no
    Content-Encoding was logged as Latin-1, its key and prompt there for anyone who
    inflated it: more than 1% control characters). Its size is logged instead.

    UTF-8 when it is that (and, for another label, in that charset too: UTF-7 is
    ASCII). Else in the charset its label names, whole, when that reads it (KOI8-R,
    EUC-KR: read in part as UTF-8, "всё" was other letters and the prompt's echo went
    unfound); and as UTF-8 with the bytes that make no UTF-8
    character read in that charset (Windows-1252 for a Latin-1 label, or none, as
    browsers read them): an echo of our request in UTF-8 inside a proxy's page in
    another charset is then the prompt's own text, which the scrub finds (read as the
    page's charset, it was mojibake: "mÃ©decin"), and a Windows-1252 page reads as
    itself (its quotes read as Latin-1 were control characters)."""
    body = body.removeprefix(codecs.BOM_UTF8)
    if b"\x00" in body or body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return []
    try:
        named = codecs.lookup(charset).name if charset else "cp1252"
    except (LookupError, ValueError):
        named = "cp1252"
    if named in ("utf-8", "utf-8-sig", "ascii", "iso8859-1") or named.startswith(
        ("utf-16", "utf-32")
    ):
        named = "cp1252"
    whole: list[str] = []
    with contextlib.suppress(LookupError, UnicodeError, ValueError):
        whole.append(body.decode(named))  # UTF-7 and HZ are ASCII: UTF-8 too
    try:
        readings = [body.decode("utf-8"), *(whole if named != "cp1252" else [])]
    except UnicodeDecodeError:
        readings = [*whole, body.decode("utf-8", _reading_the_rest_in(named))]
    return [text for text in readings if sum(map(text.count, _CONTROLS)) * 100 <= len(text)]


def _reading_the_rest_in(codec: str) -> str:
    """The name of a codec error handler that reads the bytes UTF-8 could not in
    `codec` (registered once per codec: those Python knows are a hundred or so), or in
    Windows-1252 where `codec` cannot (no text codec, as `base64`; a byte it refuses)."""
    name = f"assistant.rest_in.{codec}"
    if name not in _REGISTERED:

        def read_the_rest(error: UnicodeError) -> tuple[str, int]:
            assert isinstance(error, UnicodeDecodeError)
            rest = error.object[error.start : error.end]
            try:
                return rest.decode(codec), error.end
            except (LookupError, UnicodeError, ValueError):
                return rest.decode("cp1252", "replace"), error.end

        codecs.register_error(name, read_the_rest)
        _REGISTERED.add(name)
    return name


_REGISTERED: set[str] = set()


# What no text an error body is holds more than a few of (tab and line breaks excepted).
_CONTROLS = [
    chr(code)
    for code in (
        *range(0x01, 0x09),
        0x0B,
        0x0C,
        *range(0x0E, 0x20),
        0x7F,
        *range(0x80, 0xA0),
        0xFFFD,
    )
]


def request_secrets(headers: list[tuple[str, str]]) -> list[bytes]:
    """The keys a request's headers carry, as an echo of it would hold them: a bearer
    token or key as it is; Basic auth's base64 and the user:password in it. Those
    shorter than 8 characters are no secret worth a scrub (not every word "test"), but
    for a login's password of _SHORTEST_PASSWORD or more."""
    secrets: list[str] = []
    passwords: list[str] = []  # a login's: secrets however short (but _SHORTEST_PASSWORD)
    for name, value in headers:
        if name.lower() not in _KEY_HEADERS:
            continue
        scheme, _, credentials = value.strip().partition(" ")
        if name.lower() != "authorization" or not credentials:  # a key as it is, spaces too
            secrets.append(value.strip())
        elif scheme.lower() == "basic":
            secrets.append(credentials.strip())
            with contextlib.suppress(ValueError):
                login = base64.b64decode(credentials.strip(), validate=True).decode()
                _user, _, password = login.partition(":")
                if len(password) >= _SHORTEST_PASSWORD:  # none: a user name, no secret
                    secrets.append(login)
                    passwords.append(password)
        else:
            secrets.append(credentials.strip())
    # The longest first: a key that holds another (a login and its password) goes whole.
    kept = {secret for secret in secrets if len(secret) >= 8} | set(passwords)
    # A login whole as it is only: its password has its own forms, its user name none.
    logins = {secret for secret in kept if ":" in secret and secret.partition(":")[2] in passwords}
    written = {form for secret in kept - logins for form in _as_echoed(secret)} | logins
    return sorted((secret.encode() for secret in written), key=len, reverse=True)


def _as_echoed(secret: str) -> set[str]:
    """A secret as an echo may write it: as it is, URL-escaped (a query, a form, a path:
    a key with `/`, `+` or `=` was cut into runs too short to find), in base64, and
    JSON-escaped with its `/` as `\\/`."""
    return {
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret),  # a path's way, encodeURI's: its / kept
        urllib.parse.quote_plus(secret, safe=""),
        base64.b64encode(secret.encode()).decode(),
        json.dumps(secret)[1:-1].replace("/", "\\/"),  # PHP's json_encode writes / as \/
    }


_SHORTEST_PASSWORD = 4  # of a base URL's login, looked for in an error body ("hunter2")


def provider_secrets(provider: Provider) -> list[bytes]:
    """What a provider's error detail must not show, however it came (an error body, an
    error in the stream): its key, and a login in its base URL as httpx sends it."""
    headers = [("x-api-key", provider.api_key)]
    url = httpx.URL(provider.settings.base_url)
    if url.username or url.password:
        login = base64.b64encode(f"{url.username}:{url.password}".encode()).decode()
        headers += [("authorization", f"Basic {login}"), ("x-api-key", url.password)]
    return request_secrets(headers)


_SECRET_PIECE_CHARS = 12  # of a key, found anywhere in a text: no word holds so much of one
_PIECE_STRIDE = 4  # pieces looked for begin this far apart in the key (runs of 15 are found)


def without_secrets(text: str, secrets: list[bytes]) -> str:
    """`text` with each secret taken out, whole and in pieces; of a login
    `user:password`, only pieces that hold some of the password (a user name is no
    secret, and what an operator needs to read: "user ops-gateway-user may not...")."""
    keys = [secret.decode() for secret in secrets]
    for key in keys:
        text = text.replace(key, "[redacted]")
    for key in keys:
        text = _without_pieces(text, key, secret_from=key.find(":") + 1)
    return text


def _without_pieces(text: str, key: str, secret_from: int = 0) -> str:
    """`text` with every run of `key`'s characters as they stand in it, of
    _SECRET_PIECE_CHARS + _PIECE_STRIDE - 1 or more, taken out (an echo cut short, or cut
    in two, kept all of the key but a character); only runs that reach past
    `secret_from` in the key count. A find of every _PIECE_STRIDE-th piece of the key,
    each found run then followed to its ends: a few KB, once per failure, and a long
    key (a 2 KB token) costs no more than a few hundred finds."""
    # In either case: an echo upper-cased ("KEY SK-ANT-API03-...") kept the whole key.
    original, text, key = text, _lower_in_place(text), _lower_in_place(key)
    size = min(_SECRET_PIECE_CHARS, len(key))
    first = max(0, secret_from - size + 1)
    found: list[tuple[int, int]] = []
    for offset in range(first, len(key) - size + 1, _PIECE_STRIDE):
        piece = key[offset : offset + size]
        at = text.find(piece)
        while at != -1:
            run = next(((start, end) for start, end in found if start <= at < end), None)
            if run is not None:  # in a run followed already: on past it
                at = text.find(piece, run[1])
                continue
            start, end, in_key = at, at + size, offset
            while start > 0 and in_key > first and text[start - 1] == key[in_key - 1]:
                start, in_key = start - 1, in_key - 1
            while (
                end < len(text)
                and end - at + offset < len(key)
                and (text[end] == key[end - at + offset])
            ):
                end += 1
            found.append((start, end))
            at = text.find(piece, end)
    if not found:
        return original
    found.sort()
    kept: list[str] = []
    start, end = found[0]
    taken = 0  # where the text not yet kept begins
    for at, until in found[1:]:
        if at <= end:  # overlapping runs: one run of the key
            end = max(end, until)
            continue
        kept += [original[taken:start], "[redacted]"]
        taken, (start, end) = end, (at, until)
    kept += [original[taken:start], "[redacted]", original[end:]]
    return "".join(kept)


def _lower_in_place(text: str) -> str:
    """`text` in lower case, each character where it was (İ, whose lower case is two,
    as i: an İ anywhere left a whole text's case as it was)."""
    return text.translate(_ONE_FOR_TWO).lower()


_ONE_FOR_TWO = {0x130: "i"}  # the one character whose lower case is two


def without_prompt(text: str, prompt: Prompt, work: Work | None = None) -> str:
    """`text` with what the prompt's texts put in it taken out: each echo of one, whole,
    cut short, a window of it, its case or whitespace changed (`echoes.py`).

    An echo may be escaped by any encoder, and more than once (JSON, with or without
    ASCII escapes, Go's `\u0026` for `&`, Python's repr, a proxy quoting a JSON body in
    its JSON): `text` is looked at as it is, then with its escapes read back once, twice
    and three times (`_unescaped_once`), each time for the prompt's texts as they are.
    An echo escaped k times is the text itself at the k-th look; reading the prompt's
    own backslashes back too would take it past its echo (a `\\` in a prompt quoted in
    JSON twice was left whole). A `text` the prompt is found in is logged as read at
    the depth the most of it was found (`_scrubbed`). Runs on the I/O loop, for every
    provider failure: the prompt's texts are indexed once (`echoes_of`), and each
    reading of a few KB (the caller cuts the detail first) looked through once; no
    text of the prompt is read back (one of 780 KB took 270 ms a failure)."""
    echoes = echoes_of(prompt, lambda: list(dict.fromkeys(_prompt_texts(prompt))))
    try:
        return _without_echoes(text, echoes, work or Work())
    except TooCostly:  # nothing of it is logged, rather than a stall or an echo
        return f"[prompt] (an error of {len(text)} characters, too costly to look through)"


def _without_echoes(text: str, echoes: Echoes, work: Work) -> str:
    plain, found = text, False
    # Then with HTML's entities read back (a proxy's error page: `don&#x27;t`) and with
    # a URL's escapes (a form or a header: a space as `+` or `%20`), when the prompt is
    # found only so: an echo of a text with an apostrophe or a space in its first words
    # was logged whole.
    for read_back in _READINGS:
        if read_back is _as_it_is:
            view = plain
        else:  # an escape the cut split, dropped: an echo's start is then seen at the end
            view = read_back(_PARTIAL_URL_OR_ENTITY.sub("", plain))
            if view == plain:
                continue
        scrubbed = _scrubbed(view, echoes, work)
        if scrubbed is not None:
            plain, found = scrubbed, True
    return plain if found else text


def _as_it_is(text: str) -> str:
    return text


def _url_and_html(text: str, unquote: Callable[[str], str]) -> str:
    return unquote(html.unescape(text))


# A URL escape or an HTML entity that a cut split at the text's end (`pin%2`, `&#x2`).
_PARTIAL_URL_OR_ENTITY = re.compile(r"(?:%[0-9A-Fa-f]?|&#?[0-9A-Za-z]{0,7})\Z")

# A proxy's page may escape both ways: `don&#x27;t%20share` (an apostrophe as an entity,
# a space as %20); and a path's or `encodeURI`'s escapes keep a prompt's own `+`.
_READINGS: tuple[Callable[[str], str], ...] = (
    _as_it_is,
    html.unescape,
    urllib.parse.unquote_plus,
    urllib.parse.unquote,
    functools.partial(_url_and_html, unquote=urllib.parse.unquote_plus),
    functools.partial(_url_and_html, unquote=urllib.parse.unquote),
)


def _scrubbed(text: str, echoes: Echoes, work: Work) -> str | None:
    """`without_prompt` on one reading of `text`; None if no text of the prompt is in it.

    Each escape pass reads back both what the best pass before it kept and `text`
    itself: a JSON-quoted text of many lines had its long lines scrubbed as they stood,
    and the short ones between them, read back, were no longer part of a whole text (a
    reviewer's form: its SSN line logged). The best is kept at the depth it was found
    at: read back further for nothing, a prompt's own backslashes (`\t` in a text
    HTML-escaped later) no longer matched, and an error's own paths were mangled."""
    best: str | None = None
    view = fresh = text
    for passes in range(_MOST_ESCAPE_PASSES + 1):
        if passes:
            if "\\" not in view and "\\" not in fresh:
                break
            view, fresh = _unescaped_once(view), _unescaped_once(fresh)
        found = [
            masked
            for masked in (_masked(one, echoes, work) for one in dict.fromkeys((view, fresh)))
            if masked is not None
        ]
        least = min(found, key=_shown, default=None)
        # Better only if it shows less than the best read back as far (`view`): read
        # back, a text is shorter for its escapes alone.
        if least is not None and (best is None or _shown(least) < _shown(view)):
            best = view = least  # read back from here on, its masks kept
    return best


def _masked(text: str, echoes: Echoes, work: Work) -> str | None:
    """`text` with each echo found in it as `[prompt]`; None for none."""
    # An escape our reading cut in two at the end is no character yet: an echo cut
    # there ends before it, and goes with it.
    partial = _PARTIAL_ESCAPE.search(text, max(0, len(text) - 10))
    whole = text if partial is None else text[: partial.start()]
    spans = echoes.spans(whole, work)
    if not spans:
        return None
    if spans[-1][1] == len(whole):
        spans[-1] = (spans[-1][0], len(text))
    kept: list[str] = []
    taken = 0
    for start, end in spans:
        kept += [text[taken:start], "[prompt]"]
        taken = end
    kept.append(text[taken:])
    return "".join(kept)


def _shown(text: str) -> int:
    """What of `text` is not `[prompt]`."""
    return len(text) - len("[prompt]") * text.count("[prompt]")


# An escape as JSON, Python or Go writes one: \uXXXX (either case), \xXX, \UXXXXXXXX,
# or a backslash and one other character (one cut short is left as it is).
_ESCAPE = re.compile(
    r"((?:\\x[0-9a-fA-F]{2})+)|\\(?:u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|([^uxU]))", re.DOTALL
)
_PARTIAL_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3}|x[0-9a-fA-F]?|U[0-9a-fA-F]{0,7})?\Z")
_ESCAPED_CHARS = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f"}
_MOST_ESCAPE_PASSES = 3  # escaped three times over: a proxy quoting a server quoting us


def _unescaped_once(text: str) -> str:
    """`text` with its escapes read back; surrogate pairs joined, a lone one U+FFFD."""
    text = _ESCAPE.sub(_escaped_char, text)
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _escaped_char(match: re.Match[str]) -> str:
    if (run := match.group(1)) is not None:
        # Python's repr of bytes writes UTF-8 as \xc3\xb6 (a body echoed with !r): read
        # as code points, one non-ASCII letter near a prompt's start hid its echo.
        raw = bytes.fromhex(run.replace("\\x", ""))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("latin-1")  # a str's repr: \xe9 is é
    code = match.group(2) or match.group(3)
    if code is not None:
        return chr(int(code, 16)) if int(code, 16) <= 0x10FFFF else "\ufffd"
    char = match.group(4)
    return _ESCAPED_CHARS.get(char, char)


# Values of the history's call arguments looked at, at most: a body can hold tens of
# thousands, and every provider failure would look for each.
_MOST_ARGUMENT_VALUES = 1000


def _prompt_texts(prompt: Prompt) -> list[str]:
    """The prompt's texts long enough to be told from the words of an error message: the
    system prompt, each turn's text, and the arguments of the calls in the history: the
    texts in them, and each call's whole (short values, numbers) as JSON and as Python
    writes it, when it is small enough to be seen whole (an echo may quote any); the
    first _MOST_ARGUMENT_VALUES values in all. Then the frontend's declarations: each
    tool's description and the words in its parameters' schema and the response schema
    (`_schema_texts`: a gateway refusing a tool quotes it, and a description may hold
    what the prompt does), among as many more. The newest turn first: the question's echo
    is the likeliest."""
    texts = [*(turn.content for turn in reversed(prompt.turns)), prompt.system or ""]
    budget = _MOST_ARGUMENT_VALUES
    for call in (call for turn in prompt.turns for call in turn.tool_calls):
        values = _values_in(call.args, budget)
        budget -= len(values)
        texts += (value for value in values if isinstance(value, str))
        if call.args and budget > 0:  # seen whole: small enough to write whole
            texts += _whole_forms(call.args)
        if budget <= 0:
            break
    texts += (tool.description for tool in prompt.tools)
    schemas = [*(tool.parameters for tool in prompt.tools), prompt.response_schema]
    texts += _schema_texts(schemas, _MOST_ARGUMENT_VALUES)
    return [text for text in texts if len(text) >= PIECE]


# Where a schema holds the frontend's own words: its descriptions and titles, and values.
# JSON Schema's `$comment`, OpenAPI's `example` and any `x-` extension too: free text a
# gateway's refusal quotes as readily (they were logged).
_DESCRIBING = frozenset({"description", "title", "$comment"})
_VALUES = frozenset({"enum", "const", "default", "examples", "example"})


def _schema_texts(schemas: list[Any], most: int) -> list[str]:
    """The texts of `schemas` that are words, not structure: descriptions, titles,
    comments and the strings among values (`enum`, `examples`, an `x-` extension's...),
    among their first `most` values. A `format`, `$ref`, `$schema` or `required` name
    is what a refusal names: scrubbed, "'format' value 'date-time' is not supported"
    told nothing. The keys of a map of names (`properties`...) are names, not keywords:
    a property named `example` is a schema, its format kept."""
    texts: list[str] = []
    stack: list[tuple[Any, bool]] = [(schema, False) for schema in schemas]
    seen = 0
    while stack and seen < most:
        node, names = stack.pop()
        seen += 1
        if isinstance(node, list):
            stack.extend((item, False) for item in node)
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if names:  # a name: its value is a schema
                    stack.append((value, False))
                elif key in _DESCRIBING and isinstance(value, str):
                    texts.append(value)
                elif key in _VALUES or (isinstance(key, str) and key.startswith("x-")):
                    values = _values_in(value, most - seen)
                    seen += len(values)
                    texts += (item for item in values if isinstance(item, str))
                elif isinstance(value, Mapping | list):
                    stack.append((value, key in _NAME_MAPS))
    return texts


# The keywords whose value maps names (of properties, definitions) to schemas.
_NAME_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)


_WHOLE_FORM_CHARS = ERROR_DETAIL_CHARS  # what an error body may hold whole


def _whole_forms(args: Mapping[str, Any]) -> list[str]:
    """A call's arguments written whole as a request body (`upstream_json`: orjson's
    compact UTF-8, its own floats) or OpenAI's `arguments` (`ToolCall.arguments_json`)
    holds them, as JSON with ASCII escapes writes them, with keys sorted, and as Python
    does. The body's own forms keep other characters than ASCII as they are: an echo
    of one was not found when only the escaped forms were looked for. None past
    _WHOLE_FORM_CHARS: no error body holds it whole (a 900 KB argument written seven
    ways took 100 ms to index on the I/O loop), and its texts are looked for apart."""
    written = upstream_json(args).decode()
    if len(written) > _WHOLE_FORM_CHARS:
        return []
    return [
        written,
        json.dumps(args, ensure_ascii=False),
        json.dumps(args),
        json.dumps(args, separators=(",", ":")),
        # Keys sorted, as a server that reads them into a map writes them back (Go's).
        json.dumps(args, sort_keys=True, ensure_ascii=False, separators=(",", ":")),
        json.dumps(args, sort_keys=True, ensure_ascii=False),
        repr(args),
    ]


def _values_in(value: Any, most: int) -> list[Any]:
    """The values in `value` (itself, and what its maps and lists hold), `most` at most."""
    seen: list[Any] = []
    stack = [value]
    while stack and len(seen) < most:
        item = stack.pop()
        seen.append(item)
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return seen
