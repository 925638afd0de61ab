"""Anthropic Messages API, streamed natively (`POST /v1/messages`, `stream: true`).

Each SSE event is handled by the entry for its name in `_HANDLERS`; names we
do not know are skipped, as Anthropic asks clients to do. Every delta of every
event is kept. `event: error` is a failure even though the status was 200,
and a stream that ends without `message_stop` is incomplete.
`message_delta.usage.output_tokens` is cumulative, so it is assigned, never
added.

Tools (README "Tools and structured output"). A call streams as its own content block: a
`content_block_start` of type `tool_use` (id, name, `input: {}`), then
`input_json_delta` deltas whose `partial_json` fragments are joined (pings
and other events may come between), then `content_block_stop`: only there is
the call whole, and it is yielded as one `ToolCall`. Parallel calls are
several such blocks, in order. Text blocks before or between them stream as
usual.

Extended thinking with tools. Anthropic wants the thinking blocks of the
assistant turn that made the calls back, verbatim with their signatures, in
the next request of the tool loop. We have nowhere to keep them but the call
itself, so each call's opaque `signature` carries the thinking (and
redacted_thinking) blocks that came before it in the stream and after the
previous call: `anthropic:` + base64 of their JSON. Coming back in
chat_history they are turned into blocks again, ahead of that call's
`tool_use` (the first call's ahead of the turn's text, where the API wants
them), and only while thinking is on: a signature that is not ours (a
Gemini `thoughtSignature`, say) is ignored.

Deliberate choices:
- A tool loop keeps the thinking setting it began with: the API wants one
  setting per assistant turn, and the thinking blocks of a loop that thinks
  back in each of its requests. So thinking is off when the loop being
  continued has no thinking blocks to send back (its calls came from another
  provider, or from a turn made without thinking), and stays on in a loop
  that thinks even when the request forces a tool call (`toolChoice`
  "required" or a name): the API refuses forced tool use with thinking on,
  so there the choice is left to the model ("auto"). A new turn that forces
  a call goes without thinking: the forced call is what the caller asked for.
- `toolChoice` "auto" sends no `tool_choice` (the API's default).
- A history with tool calls in a request that offers no tools: the API
  refuses `tool_use` blocks without `tools`, so the tools the history called
  are declared (by name, any arguments) with `tool_choice` none.
- A tool result and the user's text in one turn: the `tool_result` blocks
  first, then the text, as the API requires.
- Tools and `output_config.format` go together in one request (Anthropic
  takes both), so `schema_with_tools` stays True. A model older than Claude
  4.5 takes no `output_config` (`SCHEMA_FROM`): the schema is not sent.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..config import (
    claude_at_least,
    claude_version,
    preserves_thinking,
    refuses_a_forced_call,
    thinks_adaptively,
    thinks_always,
)
from ..request import shows_nothing
from ..tools import NamedTool, ToolCall, parse_arguments, with_nothing_refused_at_the_top
from .anthropic_schema import compiled_form
from .base import (
    CALL_BEGAN,
    THINKING_ENDED,
    WORKING,
    Event,
    HttpProvider,
    Message,
    Prompt,
    ProviderError,
    StopReason,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolResult,
    Usage,
    called_in,
    changed_call_id,
    conversation,
    keeps_call_id,
    normalised_stop_reason,
    token_count,
)
from .error_text import error_detail
from .per_prompt import PerPrompt
from .sse_decoder import ServerSentEvent
from .sse_events import SseReader, json_object, require_event_stream, rest_of

API_VERSION = "2023-06-01"
SIGNATURE_PREFIX = "anthropic:"  # not in the base64 alphabet: another provider's never starts so

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_use",
    "refusal": "content_filter",
    # The context window filled before max_tokens: the reply is cut off all the same.
    "model_context_window_exceeded": "max_tokens",
}


@dataclass
class _Call:
    """A tool_use block still streaming its arguments."""

    id: str
    name: str
    fragments: list[str] = field(default_factory=list)
    thinking: list[dict[str, Any]] = field(default_factory=list)  # the blocks before it
    given: str = ""  # arguments whole at the start (a gateway's): taken if none stream


@dataclass
class _State:
    model: str
    input_tokens: int | None = None
    input_parts: dict[str, Any] = field(default_factory=dict)  # its counts, by field
    output_tokens: int | None = None
    thinking_tokens: int | None = None  # of output_tokens, when the API counts them apart
    stop_reason: str | None = None
    finished: bool = False
    out: list[Event] = field(default_factory=list)
    # Blocks still open, by index: a thinking block being gathered, or a call.
    thinking: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: dict[int, _Call] = field(default_factory=dict)
    done_thinking: list[dict[str, Any]] = field(default_factory=list)  # since the last call
    called: bool = False  # a call was handed on


def _usage(state: _State) -> Usage:
    return Usage(state.input_tokens, state.output_tokens, state.thinking_tokens)


def _on_message_start(data: dict[str, Any], state: _State) -> None:
    message = data.get("message") or {}
    state.model = message.get("model") or state.model
    usage = message.get("usage") or {}
    _count_input(usage, state)
    # Its output_tokens is a placeholder (1): a reply cut before message_delta reported
    # it as what the reply cost. The count comes with message_delta.
    if (thinking_tokens := _thinking_tokens(usage)) is not None:
        state.thinking_tokens = thinking_tokens


def _thinking_tokens(usage: dict[str, Any]) -> int | None:
    details = usage.get("output_tokens_details")
    return token_count(details.get("thinking_tokens")) if isinstance(details, dict) else None


def _count_input(usage: dict[str, Any], state: _State) -> None:
    """The prompt's tokens, cached or not: the sum of its parts, each the latest given (a
    `message_delta` may give some, or none: a gateway's gives `input_tokens` alone, and
    the cache's parts counted at the start still count). Parts that are no count leave
    the sum as it was (a negative or a true in it would make a wrong number)."""
    parts = {
        **state.input_parts,
        **{name: usage[name] for name in _INPUT_PARTS if usage.get(name) is not None},
    }
    counts = [token_count(part) for part in parts.values()]
    if parts and None not in counts:
        state.input_parts = parts
        state.input_tokens = token_count(sum(count or 0 for count in counts))


_INPUT_PARTS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _index(data: dict[str, Any]) -> int:
    index = data.get("index")
    return index if isinstance(index, int) else -1


def _on_block_start(data: dict[str, Any], state: _State) -> None:
    # A block may open with text already in it; usually it is empty.
    block = data.get("content_block") or {}
    index = _index(data)
    kind = block.get("type")
    if kind == "text" and block.get("text"):
        state.out.append(TextDelta(block["text"]))
    elif kind == "thinking":
        # The model is thinking, shown or not (a model that thinks unasked streams a
        # block with no text until its signature): the wait for a first chunk restarts.
        state.out.append(WORKING)
        state.thinking[index] = {
            "type": "thinking",
            "thinking": block.get("thinking") or "",
            "signature": block.get("signature") or "",
        }
        if block.get("thinking"):
            state.out.append(ThinkingDelta(block["thinking"]))
    elif kind == "redacted_thinking":
        state.thinking[index] = {"type": "redacted_thinking", "data": block.get("data") or ""}
    elif kind == "server_tool_use" or str(kind).endswith("_tool_result"):
        state.out.append(CALL_BEGAN)  # a tool the provider runs (a web search): pings meanwhile
    elif kind == "tool_use":
        state.out.append(CALL_BEGAN)  # its arguments stream in next
        call = _Call(str(block.get("id") or ""), str(block.get("name") or ""))
        given = block.get("input")
        if isinstance(given, dict) and given:  # arguments whole at the start
            call.given = json.dumps(given, ensure_ascii=False)
        state.calls[index] = call


def _on_block_delta(data: dict[str, Any], state: _State) -> None:
    delta = data.get("delta") or {}
    kind = delta.get("type")
    index = _index(data)
    if kind == "text_delta" and delta.get("text"):
        state.out.append(TextDelta(delta["text"]))
    elif kind == "thinking_delta" and delta.get("thinking"):
        state.out.append(ThinkingDelta(delta["thinking"]))
        if index in state.thinking:
            state.thinking[index]["thinking"] += delta["thinking"]
    elif kind == "signature_delta" and index in state.thinking:
        state.thinking[index]["signature"] = delta.get("signature") or ""  # replaces
    elif kind == "input_json_delta":
        state.out.append(WORKING)  # a piece of a call's arguments (ours or a server tool's)
        if index in state.calls:
            state.calls[index].fragments.append(delta.get("partial_json") or "")
    # citations_delta and others: nothing to show.


def _on_block_stop(data: dict[str, Any], state: _State) -> None:
    index = _index(data)
    if index in state.thinking:
        state.done_thinking.append(state.thinking.pop(index))
        # The next thinking block (after a redacted one, say) is another: glued on, the
        # two read as one ("First part.Second part.": a reviewer's).
        state.out.append(THINKING_ENDED)
    elif index in state.calls:
        _emit_call(state.calls.pop(index), state)


def _emit_call(call: _Call, state: _State) -> None:
    # What streamed wins over what came at the start, as Anthropic's SDK reads it: a
    # gateway sends both, and joined they were two objects, the arguments lost (a
    # reviewer's).
    # Those given stand in for none streamed, or for streamed ones cut short.
    streamed = "".join(call.fragments)
    args, error = parse_arguments(streamed)
    if call.given and (error is not None or not streamed.strip()):
        args, error = parse_arguments(call.given)
    signature = encode_thinking(state.done_thinking) if state.done_thinking else None
    state.done_thinking = []
    state.out.append(ToolCall(call.id, call.name, args, signature, error))
    state.called = True


def _on_message_delta(data: dict[str, Any], state: _State) -> None:
    state.stop_reason = (data.get("delta") or {}).get("stop_reason") or state.stop_reason
    usage = data.get("usage") or {}
    output_tokens = usage.get("output_tokens")
    if isinstance(output_tokens, int):
        state.output_tokens = output_tokens  # cumulative: assign, never add
    if (thinking_tokens := _thinking_tokens(usage)) is not None:
        state.thinking_tokens = thinking_tokens  # cumulative too
    # Cumulative too, when given: a server tool (web search) grows the input mid-turn.
    _count_input(usage, state)


def _on_message_stop(data: dict[str, Any], state: _State) -> None:
    # A call whose block never closed is still a call the model made: keep it.
    for index in sorted(state.calls):
        _emit_call(state.calls.pop(index), state)
    state.finished = True


def _on_error(data: dict[str, Any], state: _State) -> None:
    error = data.get("error")
    kind = error.get("type") if isinstance(error, dict) else error  # a proxy's: a string
    raise ProviderError("upstream_error", error_detail(kind, "error event"))


_HANDLERS: dict[str, Callable[[dict[str, Any], _State], None]] = {
    "message_start": _on_message_start,
    "content_block_start": _on_block_start,
    "content_block_delta": _on_block_delta,
    "content_block_stop": _on_block_stop,
    "message_delta": _on_message_delta,
    "message_stop": _on_message_stop,
    "error": _on_error,
}


# -- thinking blocks carried in a call's signature ------------------------------------------


def encode_thinking(blocks: list[dict[str, Any]]) -> str:
    """Thinking blocks as a ToolCall signature: opaque to everyone but us."""
    raw = json.dumps(blocks, separators=(",", ":"), ensure_ascii=False).encode()
    return SIGNATURE_PREFIX + base64.b64encode(raw).decode("ascii")


def decode_thinking(signature: str | None) -> list[dict[str, Any]]:
    """The thinking blocks a signature of ours carries; none for anything else."""
    if not signature or not signature.startswith(SIGNATURE_PREFIX):
        return []
    try:
        blocks = json.loads(base64.b64decode(signature[len(SIGNATURE_PREFIX) :], validate=True))
    except (binascii.Error, ValueError):
        return []
    if not isinstance(blocks, list):
        return []
    return [b for b in blocks if isinstance(b, dict) and _is_thinking_block(b)]


def _is_thinking_block(block: dict[str, Any]) -> bool:
    if block.get("type") == "thinking":
        return isinstance(block.get("thinking"), str) and isinstance(block.get("signature"), str)
    return block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str)


# -- the request ------------------------------------------------------------------------------


def _content(message: Message, thinking: bool) -> str | list[dict[str, Any]]:
    """A message's content: a plain string when it is only text, else blocks."""
    if not message.calls and not message.results:
        return message.text
    if message.role == "user":
        # tool_result blocks must come first; the user's text after them.
        results = [_result_block(result) for result in message.results]
        texts = [{"type": "text", "text": part} for part in message.parts if isinstance(part, str)]
        return results + texts
    leading: list[dict[str, Any]] = []  # thinking must open the message
    blocks: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, str):
            blocks.append({"type": "text", "text": part})
        elif isinstance(part, ToolCall):
            carried = decode_thinking(part.signature) if thinking else []
            # The first call's thinking came before everything; a later call's
            # (interleaved thinking) goes right before it.
            calls_before = any(block["type"] == "tool_use" for block in blocks)
            (blocks if calls_before else leading).extend(carried)
            blocks.append(_tool_use_block(part))
    return leading + blocks


def _result_block(result: ToolResult) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _call_id(result.call_id)}
    if not shows_nothing(result.content):  # text of whitespace alone is refused (a 400)
        block["content"] = result.content
    return block


# The API's pattern for a tool_use id: an OpenAI-compatible server's `functions.weather:0`,
# say, is refused.
_CALL_ID = re.compile(r"[a-zA-Z0-9_-]+")


def _call_id(call_id: str) -> str:
    if _CALL_ID.fullmatch(call_id) and keeps_call_id(call_id):
        return call_id
    return changed_call_id(call_id, re.sub(r"[^a-zA-Z0-9_-]", "_", call_id))


def _tool_use_block(call: ToolCall) -> dict[str, Any]:
    # Arguments that were not JSON when the model sent them go back as none.
    args = dict(call.args) if call.args is not None else {}
    return {"type": "tool_use", "id": _call_id(call.id), "name": call.name, "input": args}


def _tool_choice(prompt: Prompt) -> dict[str, Any] | None:
    choice = prompt.tool_choice
    if isinstance(choice, NamedTool):
        return {"type": "tool", "name": choice.name}
    return {"none": {"type": "none"}, "required": {"type": "any"}}.get(choice)


def _forces_a_call(prompt: Prompt) -> bool:
    return bool(prompt.tools) and (
        prompt.tool_choice == "required" or isinstance(prompt.tool_choice, NamedTool)
    )


def _open_loop_thinks(messages: list[Message]) -> bool | None:
    """Whether the tool loop the conversation continues began with thinking; None if
    it continues none.

    A tool loop is one assistant turn, with one thinking setting throughout: the
    first response of the loop decides it (without interleaved thinking, the later
    responses of a loop that thinks carry no thinking of their own).
    """
    first = None
    end = len(messages)
    while end >= 2 and messages[end - 1].results and messages[end - 2].calls:
        first = messages[end - 2]
        end -= 2
    return None if first is None else bool(decode_thinking(first.calls[0].signature))


_PLANS: PerPrompt[tuple[str | None, dict[str, Any] | None]] = PerPrompt()


def _schema_plan(prompt: Prompt) -> tuple[str | None, dict[str, Any] | None]:
    """Why the prompt's response schema is not sent (None: it is), and what is sent:
    worked out once per prompt, on the request's thread first (`Chain.prepare`): on the
    I/O loop, a reviewer's schema held every stream for a minute."""
    assert prompt.response_schema is not None
    schema = prompt.response_schema
    return _PLANS.get(prompt, lambda: compiled_form(schema))


def _thinking(model: str, budget: int) -> dict[str, Any]:
    """The `thinking` field of a request that thinks. Claude 4.6 on decide how much to
    think ("adaptive"): a fixed budget is deprecated there and refused from Opus 4.7 on
    (every request a 400), and from 4.7 on their thinking is left out of the stream
    unless asked for ("summarized"). Older models, and names that say no version, take
    the budget."""
    if preserves_thinking("anthropic", model):
        # A block sent back whose conversation changed before it (the history the
        # frontend keeps, the tools it offers now, the order of thinking and text, which
        # a call's signature does not keep) is dropped, not a 400 on every later question.
        return {**_ADAPTIVE, "block_binding": {"prefix_mismatch_behavior": "drop_block"}}
    if thinks_adaptively("anthropic", model):
        return dict(_ADAPTIVE)
    return {"type": "enabled", "budget_tokens": budget}


_ADAPTIVE = {"type": "adaptive", "display": "summarized"}
# The beta that lets a request say what becomes of such a block (`block_binding`).
BINDING_BETA = "thinking-binding-controls-2026-08-01"


# Claude Opus 4.7 refuses a temperature ("`temperature` is deprecated for this model", a
# 400 on every request): from 4.7 on none is sent.
NO_TEMPERATURE_FROM = (4, 7)

# Structured outputs (`output_config.format`) came with Claude 4.5 (Opus, Sonnet, Haiku):
# an older model refuses the field, a 400 on every request with a schema. A name that
# says no version is sent it.
SCHEMA_FROM = (4, 5)


class AnthropicProvider(HttpProvider):
    name = "anthropic"

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        messages = conversation(prompt.turns)
        loop_thinks = _open_loop_thinks(messages)
        # A loop keeps the setting it began with; a new turn forced to call goes without.
        # Claude 5 on think whatever is asked: asked to, their thinking streams.
        always = thinks_always(self.name, self.settings.model)
        thinking = always or (
            self.settings.thinking
            and (loop_thinks if loop_thinks is not None else not _forces_a_call(prompt))
        )
        body: dict[str, Any] = {
            "model": self.settings.model,
            "max_tokens": self.settings.max_tokens,
            "stream": True,
            "messages": [{"role": m.role, "content": _content(m, thinking)} for m in messages],
        }
        if prompt.system:
            body["system"] = prompt.system
        if thinking:
            # Extended thinking takes no temperature; config keeps max_tokens above the budget.
            body["thinking"] = _thinking(self.settings.model, self.settings.thinking_budget)
        elif self.settings.temperature is not None and not claude_at_least(
            self.name, self.settings.model, NO_TEMPERATURE_FROM
        ):
            body["temperature"] = self.settings.temperature
        if prompt.tools:
            body["tools"] = [
                _tool(spec.name, spec.description, spec.parameters)
                for spec in map(with_nothing_refused_at_the_top, prompt.tools)
            ]
            # With thinking on, the API refuses a forced call (Claude 5 on take one, but
            # most from 5.5 on none at all): the model is left to choose ("auto").
            refused = refuses_a_forced_call(self.name, self.settings.model) if always else thinking
            choice = None if refused and _forces_a_call(prompt) else _tool_choice(prompt)
            if choice is not None:
                body["tool_choice"] = choice
        elif called := called_in(messages):
            # The API refuses tool_use blocks in a request that declares no tools: the
            # tools the history called are declared, and none may be called now.
            body["tools"] = [_tool(name, "", {"type": "object"}) for name in called]
            body["tool_choice"] = {"type": "none"}
        if prompt.response_schema is not None and self.sends_schema(prompt):
            format_ = {"type": "json_schema", "schema": _schema_plan(prompt)[1]}
            body["output_config"] = {"format": format_}
        return body

    def schema_left_out(self, prompt: Prompt) -> str | None:
        if prompt.response_schema is None:
            return None
        version = claude_version(self.name, self.settings.model)
        if version is not None and version < SCHEMA_FROM:
            return "takes a response schema from Claude 4.5 on: it was not sent"
        why = _schema_plan(prompt)[0]
        if why is None:
            return None
        return f"cannot hold this response schema ({why}): it was not sent"

    def _request(self, prompt: Prompt) -> tuple[str, dict[str, Any], dict[str, str]]:
        headers = {
            "x-api-key": self.api_key,
            "anthropic-version": API_VERSION,
            "accept": "text/event-stream",
        }
        if preserves_thinking(self.name, self.settings.model):
            headers["anthropic-beta"] = BINDING_BETA
        return f"{self.settings.base_url}/v1/messages", self._body(prompt), headers

    def decoder(self, response: httpx.Response) -> _Decoder:
        require_event_stream(response)
        return _Decoder(self.settings.model)


class _Decoder:
    """Anthropic's events -> ours (base.Decoder); message_stop ends the answer."""

    def __init__(self, model: str) -> None:
        self._state = _State(model=model)
        self._sse = SseReader()

    @property
    def finished(self) -> bool:
        return self._state.finished

    def feed(self, data: bytes, out: list[Event]) -> None:
        self._handle(self._sse.feed(data), out)

    def salvage(self, out: list[Event]) -> None:
        """No call held back (each is handed on at its block's end): message_start's
        usage and model."""
        state = self._state
        usage = _usage(state)
        out.append(StreamEnd(stop_reason=None, usage=usage, model=state.model))

    def end(self, out: list[Event]) -> None:
        state = self._state
        if not state.finished:
            rest_of(self._sse, lambda events: self._handle(events, out))
        if not state.finished:
            raise ProviderError("upstream_incomplete", "stream ended without message_stop")
        usage = _usage(state)
        stop_reason = normalised_stop_reason(state.stop_reason, _STOP_REASONS, state.called)
        out.append(StreamEnd(stop_reason=stop_reason, usage=usage, model=state.model))

    def _handle(self, events: list[ServerSentEvent], out: list[Event]) -> None:
        state = self._state
        state.out = out  # the handlers append to it
        for event in events:
            handler = _HANDLERS.get(event.event)
            if handler is None:
                # A name a proxy left blanks around ("content_block_delta "): its text was
                # dropped unseen. Else: ping, and event types added after this was written.
                handler = _HANDLERS.get(event.event.strip())
                if handler is None:
                    continue
            handler(json_object(event.data), state)
            if state.finished:
                return


def _tool(name: str, description: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": name}
    if description:
        tool["description"] = description
    tool["input_schema"] = dict(parameters)
    return tool
