"""Ollama, streamed natively (`POST {base}/api/chat`, NDJSON).

One JSON object per line: `message.content` is text, `message.thinking` is
reasoning. `think` is sent, true only when thinking is on (left out, a model
that can think does: Ollama turns it on for such a model; a model that
cannot refuses only `think: true`), except `false` beside a response schema
(see `_body`). The last line has `done: true`,
`done_reason` and token counts; a stream that ends without it is
incomplete. `{"error": "..."}` lines arrive with status 200 and are failures.
Ollama needs no key: it is configured by `OLLAMA_BASE_URL` alone.

Tools (README "Tools and structured output"):
- Offered as `tools: [{"type": "function", "function": {name, description,
  parameters}}]`. Ollama has no tool choice field at all: "required" and a
  named tool are sent as "auto" (the tools offered, the model free to call
  one or not); "none" sends no tools, so the model cannot call one.
- Calls never arrive in fragments: Ollama parses the model's output and
  sends each call whole, `message.tool_calls: [{"id"?, "function": {"index"?,
  "name", "arguments"}}]`, in a `done: false` line of its own (several calls
  may share a line, or come in lines one after another), or, with a model
  whose parser flushes at the end, in the `done: true` line itself. Each is
  yielded as it is read, after the text and thinking of its line. Servers
  since v0.12.10 give an `id` (`call_` and 8 characters); for older ones we
  make one, unique per reply (and, being random, across replies).
  `arguments` is an object; a string (some compatible servers) is parsed as
  streamed argument text, anything else keeps the call with `args_error`.
  `done_reason` stays "stop" after calls, so a reply that made calls and
  stopped ends with `tool_use`.
- History: an assistant turn is `{"role": "assistant", "content", "tool_calls":
  [{"id", "function": {"index", "name", "arguments": {...}}}]}`; each result is
  its own `{"role": "tool", "content", "tool_name", "tool_call_id"}` message
  (older servers read `tool_name` and ignore the id), a user text after results
  its own user message, in the order they came.
- Response schema: `format: <the JSON Schema>`. Not alongside tools: Ollama
  takes both but turns `format` into a grammar that every token must match, so
  the model can no longer write a call (ollama/ollama#8095, #11037); the tools
  are sent and the schema is not.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from ..tools import ToolCall, ToolSpec, arguments_value
from .base import (
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
    conversation,
    normalised_stop_reason,
)
from .error_text import error_detail
from .ndjson import NdjsonReader
from .sse_events import json_object

_STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens"}


class OllamaProvider(HttpProvider):
    name = "ollama"
    # `format` is a grammar over the whole reply: with it, no call can be written.
    schema_with_tools = False

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        for message in conversation(prompt.turns):
            messages += _messages(message)
        options: dict[str, Any] = {"num_predict": self.settings.max_tokens}
        if self.settings.temperature is not None:
            options["temperature"] = self.settings.temperature
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "stream": True,
            "options": options,
        }
        # No tool choice field: "required" and {"name"} go as "auto"; "none" offers nothing.
        if self._sends_tools(prompt):
            body["tools"] = [_declaration(tool) for tool in prompt.tools]
        # The schema goes only when no tools do (the chain reports it the same way).
        if prompt.response_schema is not None and self.sends_schema(prompt):
            body["format"] = dict(prompt.response_schema)
        # Said, or a model that can think does (Ollama's default for one); but not false
        # beside a schema: Ollama (up to 0.20) applies a thinking model's format only
        # after its thinking, and with none the schema was ignored (ollama#14645,
        # #15260). Its thinking, if any, then comes as thinking.
        if self.settings.thinking or "format" not in body:
            body["think"] = self.settings.thinking
        return body

    def _sends_tools(self, prompt: Prompt) -> bool:
        return bool(prompt.tools) and prompt.tool_choice != "none"

    def _request(self, prompt: Prompt) -> tuple[str, dict[str, Any], dict[str, str]]:
        return f"{self.settings.base_url}/api/chat", self._body(prompt), {}

    def decoder(self, response: httpx.Response) -> _Decoder:
        return _Decoder(self.settings.model)


class _Decoder:
    """Ollama's lines -> our events (base.Decoder); `done: true` ends the answer."""

    def __init__(self, model: str) -> None:
        self._lines = NdjsonReader()
        self._model: Any = model
        self._reply = uuid.uuid4().hex[:8]  # our call ids: unique per reply, and across replies
        self._calls = 0
        self._end: StreamEnd | None = None

    @property
    def finished(self) -> bool:
        return self._end is not None

    def feed(self, data: bytes, out: list[Event]) -> None:
        for line in self._lines.feed(data):
            self._handle(json_object(line), out)
            if self._end is not None:
                return

    def salvage(self, out: list[Event]) -> None:
        """No call held back (each comes whole, in one line): the model its lines named
        (usage comes only with the last one)."""
        out.append(StreamEnd(None, Usage(), self._model))

    def end(self, out: list[Event]) -> None:
        if self._end is None:
            for line in self._lines.flush():
                self._handle(line, out)
        if self._end is None:
            raise ProviderError("upstream_incomplete", "stream ended without done: true")
        out.append(self._end)

    def _handle(self, line: dict[str, Any], out: list[Event]) -> None:
        if line.get("error") is not None:  # `"error": null` is no error
            raise ProviderError("upstream_error", error_detail(line["error"]))
        self._model = line.get("model") or self._model  # an odd one: StreamEnd drops it
        message = line.get("message") or {}
        thinking, content = message.get("thinking"), message.get("content")
        if isinstance(thinking, str) and thinking:
            out.append(ThinkingDelta(thinking))
        if isinstance(content, str) and content:
            out.append(TextDelta(content))
        for call in message.get("tool_calls") or []:
            self._calls += 1
            out.append(_tool_call(call, f"call_{self._reply}_{self._calls}"))
        if line.get("done") is True:
            usage = Usage(
                input_tokens=line.get("prompt_eval_count"),
                output_tokens=line.get("eval_count"),
            )
            reason = line.get("done_reason") or "stop"
            stop = normalised_stop_reason(reason, _STOP_REASONS, bool(self._calls))
            self._end = StreamEnd(stop, usage, self._model)


# -- the request ---------------------------------------------------------------------------


def _declaration(tool: ToolSpec) -> dict[str, Any]:
    function = {"name": tool.name, "description": tool.description}
    return {"type": "function", "function": {**function, "parameters": dict(tool.parameters)}}


def _messages(message: Message) -> list[dict[str, Any]]:
    """One turn as Ollama's messages: an assistant message with its calls, or the user
    side split into a `tool` message per result and a user message per text."""
    if message.role == "assistant":
        rendered: dict[str, Any] = {"role": "assistant", "content": message.text}
        if message.calls:
            rendered["tool_calls"] = [
                {"id": call.id, "function": _function(call, index)}
                for index, call in enumerate(message.calls)
            ]
        return [rendered]
    return [_user_part(part) for part in message.parts]  # never empty: base._append


def _function(call: ToolCall, index: int) -> dict[str, Any]:
    # An earlier call whose arguments were not an object goes back with none.
    return {"index": index, "name": call.name, "arguments": dict(call.args or {})}


def _user_part(part: str | ToolCall | ToolResult) -> dict[str, Any]:
    if isinstance(part, ToolResult):
        return {
            "role": "tool",
            "content": part.content,
            "tool_name": part.name,  # what Ollama's templates read
            "tool_call_id": part.call_id,  # since v0.12.10; older servers ignore it
        }
    assert isinstance(part, str)  # conversation() puts calls in assistant turns only
    return {"role": "user", "content": part}


# -- the stream ----------------------------------------------------------------------------


def _tool_call(call: Any, our_id: str) -> ToolCall:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise ProviderError("upstream_protocol", "a tool call without a function")
    function: Mapping[str, Any] = call["function"]
    name, given_id = function.get("name"), call.get("id")
    args, error = arguments_value(function.get("arguments"))
    return ToolCall(
        id=given_id if isinstance(given_id, str) and given_id else our_id,
        name=name if isinstance(name, str) else "",
        args=args,
        args_error=error,
    )
