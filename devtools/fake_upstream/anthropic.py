"""Anthropic Messages, ``POST /v1/messages``.

Needs ``x-api-key`` (else 401) and ``model``, ``messages``, ``max_tokens``. SSE with ``event:``
lines: ``message_start`` and ``ping`` right after the headers, a ``content_block_start`` sent
together with a block's first delta, ``thinking_delta`` pieces then one uncounted
``signature_delta``, ``text_delta`` pieces, ``message_delta`` (cumulative ``output_tokens``) and
``message_stop``. Error event: ``event: error`` with ``overloaded_error``. Keep-alive:
``event: ping``.

Tool calls come after the text, each its own block: ``content_block_start`` of type
``tool_use`` (``id`` like ``toolu_01`` + 22 letters and digits unless scripted, ``name``,
``input: {}``), an ``input_json_delta`` with an empty ``partial_json`` and then one per
fragment, ``content_block_stop``; the stop reason is ``tool_use``. A structured-output reply
(``json``) is plain text, as from the real API.

Requests the real API refuses with a 400 are refused here too: malformed ``tools`` /
``tool_choice`` / ``output_config``, a tool's ``input_schema`` with ``oneOf``, ``allOf`` or
``anyOf`` at its top, ``tool_use`` or ``tool_result`` blocks without
``tools``, a ``tool_use`` id outside ``[a-zA-Z0-9_-]``, a forced ``tool_choice`` (``any``,
``tool``) with thinking on (before Claude 5) or at all (Claude 5.5 on, Fable and Mythos from
5.1), ``tool_result`` blocks that do not come first in their message or answer no
``tool_use`` of the message before, ``tool_use`` blocks left without a result in the next
message, and, with thinking on (before Claude 5), a tool loop whose assistant
message does not start with a thinking block.
"""

from __future__ import annotations

import random
import re
import string
import uuid
from typing import Any

from .base import Format, Frames, Problem, sse
from .script import FakeCall, Script

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
ANTHROPIC_BLOCKS = {  # kind -> (content_block, delta type)
    "thinking": ({"type": "thinking", "thinking": ""}, "thinking_delta"),
    "text": ({"type": "text", "text": ""}, "text_delta"),
}
THINKING_BLOCKS = ("thinking", "redacted_thinking")
PING = {"type": "ping"}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def _thinks(body: dict[str, Any]) -> bool:
    """Thinking on: with a budget, or adaptive (Claude 4.6 on)."""
    return (body.get("thinking") or {}).get("type") in ("enabled", "adaptive")


# Claude's version in a model's name (claude-opus-5-5, claude-fable-5), and what comes of it
# by Anthropic's migration guides: Claude 5 on think unasked, and a forced call there skips
# the thinking (so a loop of theirs may start with its call); 5.5 on (but Haiku), and Fable
# and Mythos from 5.1, refuse a forced call.
_VERSION = re.compile(r"claude-(?:[a-z]+-)*(\d+)(?:[-.](\d{1,2})(?!\d))?")


def _version(model: Any) -> tuple[int, int]:
    named = _VERSION.search(model) if isinstance(model, str) else None
    return (int(named[1]), int(named[2] or 0)) if named else (0, 0)


def _thinks_unasked(model: Any) -> bool:
    return _version(model) >= (5, 0)


def _refuses_a_forced_call(model: Any) -> bool:
    version, line = _version(model), str(model)
    if "haiku" in line:  # Haiku 5.5 takes one, and answers it without thinking
        return False
    return version >= (5, 5) or (version >= (5, 1) and ("fable" in line or "mythos" in line))


class Anthropic(Format):
    path = re.compile(r"/v1/messages")
    required = (("model", str), ("messages", list), ("max_tokens", int))
    keepalive = sse(PING, "ping")
    stop_reasons = {"tool_use": "tool_use"}

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.index, self.open = 0, False

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        return None if headers.get("x-api-key") else (401, "x-api-key header is required")

    @classmethod
    def check(cls, headers: dict[str, str], body: Any, query: dict[str, list[str]]) -> Problem:
        problem = super().check(headers, body, query)
        if problem:
            return problem
        message = _tools_problem(body) or _history_problem(body)
        return (400, message) if message else None

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        error_type = ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": error_type, "message": message}}

    def start(self) -> Frames:
        message = {
            "id": f"msg_fake_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": self.script.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.script.input_tokens, "output_tokens": 1},
        }
        return [sse({"type": "message_start", "message": message}, "message_start"), self.keepalive]

    def _block_event(self, name: str, **data: Any) -> bytes:
        return sse({"type": name, "index": self.index, **data}, name)

    def delta(self, kind: str, piece: str) -> Frames:
        block, delta_type = ANTHROPIC_BLOCKS[kind]
        frames = (
            [] if self.open else [self._block_event("content_block_start", content_block=block)]
        )
        self.open = True
        frames.append(
            self._block_event("content_block_delta", delta={"type": delta_type, kind: piece})
        )
        return frames

    def end_block(self, kind: str) -> Frames:
        frames = []
        if kind == "thinking":
            signature = {"type": "signature_delta", "signature": "fake-sig"}
            frames.append(self._block_event("content_block_delta", delta=signature))
        frames.append(self._block_event("content_block_stop"))
        self.index, self.open = self.index + 1, False
        return frames

    def tool_call(self, call: FakeCall) -> Frames:
        tool_id = call.id or "toolu_01" + "".join(random.choices(ALPHANUMERIC, k=22))
        block = {"type": "tool_use", "id": tool_id, "name": call.name, "input": {}}
        frames = [self._block_event("content_block_start", content_block=block)]
        for piece in ["", *call.pieces]:
            delta = {"type": "input_json_delta", "partial_json": piece}
            frames.append(self._block_event("content_block_delta", delta=delta))
        frames.append(self._block_event("content_block_stop"))
        self.index += 1
        return frames

    def finish(self) -> Frames:
        message_delta = {
            "type": "message_delta",
            "usage": {"output_tokens": self.sent},
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
        }
        return [sse(message_delta, "message_delta"), sse({"type": "message_stop"}, "message_stop")]

    def error(self, framed: bool) -> Frames:
        return [sse(OVERLOADED, "error")]


ALPHANUMERIC = string.ascii_letters + string.digits


def _tools_problem(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list)
        and all(
            isinstance(tool, dict)
            and isinstance(tool.get("name"), str)
            and isinstance(tool.get("input_schema"), dict)
            for tool in tools
        )
    ):
        return "tools: each tool needs a name and an input_schema object"
    for i, tool in enumerate(tools or []):
        if {"oneOf", "allOf", "anyOf"} & set(tool["input_schema"]):
            return (
                f"tools.{i}.custom.input_schema: input_schema does not support oneOf, allOf, "
                "or anyOf at the top level"
            )
    names = {tool["name"] for tool in tools or []}
    choice = body.get("tool_choice")
    if choice is not None:
        if not tools:
            return "tool_choice may only be specified while providing tools"
        if not isinstance(choice, dict) or choice.get("type") not in (
            "auto",
            "any",
            "tool",
            "none",
        ):
            return "tool_choice.type: must be one of auto, any, tool, none"
        if choice["type"] == "tool" and choice.get("name") not in names:
            return "tool_choice.name: no tool of that name"
        forced = choice["type"] in ("any", "tool")
        if forced and _refuses_a_forced_call(body.get("model")):
            return "tool_choice: forced tool use is not supported for this model."
        if forced and _thinks(body) and not _thinks_unasked(body.get("model")):
            return "Thinking may not be enabled when tool_choice forces tool use."
    output = body.get("output_config")
    if output is not None:
        format_ = output.get("format") if isinstance(output, dict) else None
        if not (
            isinstance(format_, dict)
            and format_.get("type") == "json_schema"
            and isinstance(format_.get("schema"), dict)
        ):
            return "output_config.format: expected {type: json_schema, schema: {...}}"
        schema = format_["schema"]
        return _schema_problem(schema, "output_config.format.schema") or _dangling(schema)
    return None


def _dangling(schema: dict[str, Any]) -> str | None:
    """A local `$ref` that leads nowhere in the schema (the grammar cannot be built)."""
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#"):
                target: Any = schema
                for part in filter(None, reference[1:].split("/")):
                    key = part.replace("~1", "/").replace("~0", "~")
                    if isinstance(target, dict) and key in target:
                        target = target[key]
                    elif isinstance(target, list) and key.isdigit() and int(key) < len(target):
                        target = target[int(key)]
                    else:
                        return f"output_config.format.schema: $ref {reference} not found"
            stack.extend(node.values())
    return None


# What Anthropic's structured outputs refuse in a schema, from its documentation's list
# of limits (the grammar holds no numeric bounds, string lengths, array constraints
# beyond minItems 0 or 1, complex enum values, or a $ref in an allOf). Its message, as
# the API words one: "For 'integer' type, property 'minimum' is not supported".
_REFUSED_KEYWORDS = frozenset(
    {
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "minLength", "maxLength", "maxItems", "uniqueItems", "contains", "minContains",
        "maxContains", "prefixItems", "minProperties", "maxProperties", "not",
    }
)  # fmt: skip


def _schema_problem(node: Any, where: str) -> str | None:
    if isinstance(node, list):
        return next(
            (why for index, item in enumerate(node)
             if (why := _schema_problem(item, f"{where}[{index}]")) is not None),
            None,
        )  # fmt: skip
    if not isinstance(node, dict):
        return None
    kind = node.get("type", "schema")
    for keyword in node:
        if keyword in _REFUSED_KEYWORDS:
            return f"{where}: For '{kind}' type, property '{keyword}' is not supported"
    if node.get("minItems", 0) not in (0, 1):
        return f"{where}: For 'array' type, 'minItems' values other than 0 or 1 are not supported"
    enum = node.get("enum")
    if isinstance(enum, list) and any(isinstance(value, dict | list) for value in enum):
        return f"{where}: enum values must be strings, numbers, booleans or null"
    branches = node.get("allOf")
    if isinstance(branches, list) and any(isinstance(b, dict) and "$ref" in b for b in branches):
        return f"{where}: allOf with $ref is not supported"
    for keyword, value in node.items():
        if keyword in ("enum", "const", "default", "examples", "required"):
            continue
        inner = (
            list(value.values())
            if keyword in ("properties", "$defs", "definitions") and (isinstance(value, dict))
            else value
        )
        if (why := _schema_problem(inner, f"{where}.{keyword}")) is not None:
            return why
    return None


def _blocks(message: Any, kind: str) -> list[dict[str, Any]]:
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == kind]


# The real API's pattern for a tool_use block's id.
_TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")


def _history_problem(body: dict[str, Any]) -> str | None:
    messages = body["messages"]
    for number, message in enumerate(messages):
        results = _blocks(message, "tool_result")
        content = message.get("content") if isinstance(message, dict) else None
        if results and content[: len(results)] != results:
            return f"messages.{number}: tool_result blocks must come first in the content"
        for block in _blocks(message, "tool_use"):
            if not _TOOL_USE_ID.fullmatch(str(block.get("id"))):
                return f"messages.{number}.content: tool_use.id: String should match pattern"
        calls = _blocks(messages[number - 1], "tool_use") if number else []
        asked = {call.get("id") for call in calls}
        answered = {result.get("tool_use_id") for result in results}
        if answered - asked:
            return (
                f"messages.{number}: unexpected tool_use_id found in tool_result blocks: "
                f"{sorted(map(str, answered - asked))[0]}"
            )
        if asked - answered:
            return (
                f"messages.{number - 1}: tool_use ids were found without tool_result blocks "
                f"immediately after: {sorted(map(str, asked - answered))[0]}"
            )
    if not body.get("tools") and any(_blocks(m, "tool_use") for m in messages):
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    thinking = _thinks(body)
    # The open tool loop is one assistant turn: its first response must start with its
    # thinking (later ones, without interleaved thinking, have none of their own).
    start = len(messages)
    while start >= 2 and _blocks(messages[start - 1], "tool_result"):
        start -= 2
    if thinking and start < len(messages) and not _thinks_unasked(body.get("model")):
        first = (messages[start].get("content") or [{}])[0]
        if not (isinstance(first, dict) and first.get("type") in THINKING_BLOCKS):
            return (
                f"messages.{start}.content.0.type: Expected `thinking` or "
                "`redacted_thinking`, but found another block. When `thinking` is enabled, "
                "a final `assistant` message must start with a thinking block."
            )
    return None
