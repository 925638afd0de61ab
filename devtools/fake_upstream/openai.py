"""OpenAI Chat Completions, ``POST /v1/chat/completions``.

Needs ``authorization: Bearer <key>`` (else 401 ``invalid_api_key``) and ``model``,
``messages``. ``data: <chunk>`` events, no ``event:`` lines: a
``{"role": "assistant", "content": ""}`` chunk right after the headers,
``delta.reasoning_content`` (thinking) and ``delta.content`` pieces, a chunk with an empty delta
and ``finish_reason``, then - only with ``stream_options.include_usage`` - a chunk with
``"choices": []`` and ``usage`` (every other chunk then carries ``"usage": null``, as the real
API does), then ``data: [DONE]``. Error event: a ``data: {"error": ...}`` frame. Keep-alive:
the comment line ``: keep-alive``.

Tool calls (after the text), as the real API streams them: per call, a first
``delta.tool_calls`` fragment ``{"index", "id", "type": "function", "function": {"name",
"arguments": ""}}`` (with ``"content": null`` beside it), then one fragment per argument piece
with only ``index`` and ``function.arguments``; ids in OpenAI's style (``call_`` and 24
letters and digits) unless the script gives one; the stop reason is then ``tool_calls``.
A JSON-schema reply (``json``) is plain ``content`` text. Requests the real API refuses with a
400 are refused here too: a ``tool_choice`` without ``tools``, a tool that is not
``{"type": "function", "function": {"name", ...}}``, a ``role: tool`` message that answers no
call of the assistant message before it, an assistant message whose calls are not each
answered by the ``role: tool`` messages right after it, a call id over 40 characters, a
tool's parameters with ``oneOf``, ``anyOf``, ``allOf``, ``enum``, ``not`` or ``const`` at their
top, and an array schema without ``items`` in a tool's parameters or the response format.
"""

from __future__ import annotations

import random
import re
import string
import time
import uuid
from typing import Any

from .base import Format, Frames, Problem, sse
from .script import FakeCall, Script

OPENAI_ERRORS = {  # status -> (type, code)
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class OpenAI(Format):
    path = re.compile(r"/v1/chat/completions")
    keepalive = b": keep-alive\n\n"
    stop_reasons = {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "max_tokens": "length",
        "tool_use": "tool_calls",
        "refusal": "content_filter",
    }

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.id, self.created = f"chatcmpl-fake{uuid.uuid4().hex[:20]}", int(time.time())
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme == "Bearer" and key.strip():
            return None
        return 401, "You didn't provide an API key (Authorization: Bearer YOUR_KEY)."

    @classmethod
    def check(cls, headers: dict[str, str], body: Any, query: dict[str, list[str]]) -> Problem:
        return super().check(headers, body, query) or _check_tools(body) or _check_format(body)

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        default = ("server_error" if status >= 500 else "invalid_request_error", None)
        error_type, code = OPENAI_ERRORS.get(status, default)
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}

    def _chunk(
        self, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any
    ) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.script.model,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return sse({**chunk, **extra})

    def start(self) -> Frames:
        return [self._chunk({"role": "assistant", "content": ""})]

    def delta(self, kind: str, piece: str) -> Frames:
        return [self._chunk({"reasoning_content" if kind == "thinking" else "content": piece})]

    def tool_call(self, call: FakeCall) -> Frames:
        call_id = call.id or "call_" + "".join(random.choices(_ID_CHARS, k=24))
        first = {
            "index": call.index,
            "id": call_id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        frames = [self._chunk({"content": None, "tool_calls": [first]})]
        for piece in call.pieces:
            if piece:
                fragment = {"index": call.index, "function": {"arguments": piece}}
                frames.append(self._chunk({"tool_calls": [fragment]}))
        return frames

    def finish(self) -> Frames:
        frames = [self._chunk({}, self.stop_reason)]
        if self.include_usage:
            prompt, completion = self.script.input_tokens, self.sent
            usage = {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "completion_tokens_details": {"reasoning_tokens": self.counts["thinking"]},
            }
            frames.append(self._chunk(None, usage=usage))
        return [*frames, b"data: [DONE]\n\n"]

    def error(self, framed: bool) -> Frames:
        return [sse({"error": {"message": "The server had an error", "type": "server_error"}})]


_ID_CHARS = string.ascii_letters + string.digits
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


_NOT_AT_THE_TOP = ("oneOf", "anyOf", "allOf", "enum", "not", "const")


def _check_tools(body: dict[str, Any]) -> Problem:
    """The tool-related 400s of the real API (its own wording, where we know it)."""
    tools = body.get("tools")
    if "tool_choice" in body and not tools:
        return 400, (
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' "
            "are specified."
        )
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        tool = tool if isinstance(tool, dict) else {}
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            return 400, f"Invalid value for 'tools[{i}]': expected a function tool."
        if not _TOOL_NAME.fullmatch(str(function.get("name", ""))):
            return 400, f"Invalid 'tools[{i}].function.name': string does not match pattern."
        parameters = function.get("parameters")
        if isinstance(parameters, dict) and set(_NOT_AT_THE_TOP) & set(parameters):
            return 400, (
                f"Invalid schema for function '{function['name']}': schema must have type "
                "'object' and not have 'oneOf'/'anyOf'/'allOf'/'enum'/'not' at the top level."
            )
        where = _array_without_items(parameters, ())
        if where is not None:
            return 400, (
                f"Invalid schema for function '{function['name']}': In context={where!r}, "
                "array schema missing items."
            )
    return _check_tool_messages(body["messages"])


def _check_format(body: dict[str, Any]) -> Problem:
    json_schema = (body.get("response_format") or {}).get("json_schema") or {}
    where = _array_without_items(json_schema.get("schema"), ())
    if where is None:
        return None
    return 400, (
        f"Invalid schema for response_format '{json_schema.get('name')}': In context={where!r}, "
        "array schema missing items."
    )


def _array_without_items(node: Any, where: tuple[str, ...]) -> tuple[str, ...] | None:
    """Where in a schema an array says nothing of its items (which the real API refuses)."""
    if isinstance(node, list):
        found = (_array_without_items(child, where) for child in node)
        return next((place for place in found if place is not None), None)
    if not isinstance(node, dict):
        return None
    kind = node.get("type")
    if (kind == "array" or (isinstance(kind, list) and "array" in kind)) and "items" not in node:
        return where
    for key, value in node.items():
        if key in ("enum", "const", "required", "default", "examples"):
            continue  # values, not schemas
        place = _array_without_items(value, (*where, key))
        if place is not None:
            return place
    return None


def _check_tool_messages(messages: list[Any]) -> Problem:
    waiting: list[str] = []  # ids of the last assistant message's calls not yet answered
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role == "tool":
            if message.get("tool_call_id") not in waiting:
                return 400, (
                    f"Invalid parameter: messages with role 'tool' must be a response to a "
                    f"preceeding message with 'tool_calls'. (messages[{i}])"
                )
            waiting.remove(message["tool_call_id"])
            continue
        if waiting:
            return 400, (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(waiting)}"
            )
        if role == "assistant":
            calls = message.get("tool_calls") or []
            for j, call in enumerate(calls):
                if isinstance(call, dict) and len(str(call.get("id"))) > 40:
                    return 400, (
                        f"Invalid 'messages[{i}].tool_calls[{j}].id': string too long. "
                        "Expected a string with maximum length 40."
                    )
            waiting = [call.get("id") for call in calls if isinstance(call, dict)]
    if waiting:
        return 400, f"tool_call_ids did not have response messages: {', '.join(waiting)}"
    return None
