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

import contextlib
import dataclasses
import functools
import hashlib
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from ..config import ProviderSettings
from ..errors import MESSAGES, UpstreamCode
from ..request import Turn, shows_nothing
from ..tools import ToolCall, ToolChoice, ToolSpec
from .error_text import compressed, error_bytes, error_text
from .request_json import upstream_json

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


def normalised_stop_reason(
    raw: object, table: Mapping[str, StopReason], made_calls: bool = False
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


def called_in(messages: list[Message]) -> list[str]:
    """The names of the tools `messages` called, each once, in order. Anthropic and
    Gemini 3 refuse calls in a request that declares no tools: they are sent these,
    callable by none."""
    return list(dict.fromkeys(call.name for message in messages for call in message.calls))


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
    first occurrence, in order. A signature of ours (what the turn needs back: Anthropic's
    thinking, the reasoning DeepSeek wants) on a call dropped goes to the first call kept:
    it went with it (a reviewer's). Gemini's own signatures (base64, no `name:` prefix as
    ours have) stay on the call they came with."""
    kept: dict[str, ToolCall] = {}
    for call in calls:
        if call.id in answered:
            kept.setdefault(call.id, call)
    calls_kept = list(kept.values())
    ours = [call.signature for call in calls if call.signature and ":" in call.signature]
    dropped = ours and ours[0] not in (call.signature for call in calls_kept)
    if calls_kept and dropped and not calls_kept[0].signature:
        calls_kept[0] = dataclasses.replace(calls_kept[0], signature=ours[0])
    return tuple(calls_kept)


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
    text: tuple[Part, ...] = () if shows_nothing(turn.content) else (turn.content,)
    return (*text, *turn.tool_calls)


def _joined(before: tuple[Part, ...], after: tuple[Part, ...]) -> tuple[Part, ...]:
    if before and after and isinstance(before[-1], str) and isinstance(after[0], str):
        return (*before[:-1], f"{before[-1]}\n\n{after[0]}", *after[1:])
    return (*before, *after)
