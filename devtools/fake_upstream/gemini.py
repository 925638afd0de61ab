"""Gemini, ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``.

Needs ``x-goog-api-key`` (else 403 ``PERMISSION_DENIED``; the ``?key=`` form is not accepted)
and ``contents``; without ``alt=sse`` it answers 400, as the JSON-array stream is not served.
``data: <json>`` events ended by CRLF CRLF, no ``[DONE]``, nothing before the first piece. Each
piece is one event with one part (``"thought": true`` for thinking); the last event has
``finishReason`` and the full ``usageMetadata`` and a content with NO parts. Error event: an
unframed, pretty-printed JSON array tail at EOF (``fail="error_data"`` frames it as
``data: {"error": ...}`` instead). No keep-alive: ``ping_every`` does nothing.

Tool calls come whole, never in fragments: one event per call (after the text) whose part is
``{"functionCall": {"name", "args"}}``, with ``"id"`` only when the script gives one (2.5 models
give none) and ``"thoughtSignature"`` next to ``functionCall`` when the script gives one.
``args`` is the parsed object; argument text that is not JSON goes as a JSON string (the real
API never sends that: it ends with ``MALFORMED_FUNCTION_CALL`` instead). The finish reason stays
``STOP`` after calls, as the real API's does. Refused as the real API refuses them (400): tools
together with ``responseMimeType: application/json`` (by models before Gemini 3), a declaration
with both ``parameters`` and ``parametersJsonSchema``, a ``functionResponse.response`` that is
no object, a ``$ref`` beside keywords not starting with ``$`` in a ``parametersJsonSchema`` or
the ``responseJsonSchema`` (Google's documentation says none may be set), and, by Gemini 3, a
``functionResponse`` naming no declared function (as others report the real API does).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .base import Format, Frames, Problem, sse
from .script import FakeCall, Script

GEMINI_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
JSON = "application/json"
# Gemini 3 on, and the aliases that name them (gemini-flash-latest): tools beside a JSON answer
_GEMINI_3_ON = re.compile(r"gemini-([3-9]|[1-9][0-9]|(?:[a-z]+-)+latest$)")
GEMINI_OVERLOADED = {
    "code": 503,
    "message": "The model is overloaded. Please try again later.",
    "status": "UNAVAILABLE",
}


class Gemini(Format):
    path = re.compile(r"/v1beta/models/(?P<model>[^/:]+):streamGenerateContent")
    content_type = "text/event-stream"
    messages_key = "contents"
    required = (("contents", list),)
    stop_reasons = {
        "end_turn": "STOP",
        "stop_sequence": "STOP",
        "max_tokens": "MAX_TOKENS",
        "tool_use": "STOP",  # Gemini has no reason of its own for calls
        "refusal": "SAFETY",
    }

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.id = uuid.uuid4().hex[:22]

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        if not headers.get("x-goog-api-key"):
            return 403, "Method doesn't allow unregistered callers: send an x-goog-api-key header."
        if query.get("alt") != ["sse"]:
            return 400, "this fake serves only ?alt=sse streams"
        return None

    @classmethod
    def check_for_model(cls, model: str | None, body: dict[str, Any]) -> Problem:
        declarations = [
            declaration
            for tool in _dicts(body.get("tools"))
            for declaration in _dicts(tool.get("functionDeclarations"))
        ]
        config = body.get("generationConfig") or {}
        json_answer = config.get("responseMimeType") == "application/json"
        if declarations and json_answer and not _GEMINI_3_ON.match(model or ""):
            return 400, f"Function calling with a response mime type: {JSON!r} is unsupported"
        declared = {declaration.get("name") for declaration in declarations}
        for content in _dicts(body.get("contents")):
            for part in _dicts(content.get("parts")):
                response = part.get("functionResponse")
                named = response.get("name") if isinstance(response, dict) else None
                if named is not None and named not in declared and _GEMINI_3_ON.match(model or ""):
                    return 400, "Request contains an invalid argument."
        return None

    @classmethod
    def check(cls, headers: dict[str, str], body: Any, query: dict[str, list[str]]) -> Problem:
        problem = super().check(headers, body, query)
        if problem:
            return problem
        declarations = [
            declaration
            for tool in _dicts(body.get("tools"))
            for declaration in _dicts(tool.get("functionDeclarations"))
        ]
        for declaration in declarations:
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                return 400, "parameters and parametersJsonSchema are mutually exclusive"
        config = body.get("generationConfig")
        schemas = [d.get("parametersJsonSchema") for d in declarations]
        schemas.append(config.get("responseJsonSchema") if isinstance(config, dict) else None)
        if any(_ref_beside_others(schema) for schema in schemas):
            return 400, "a sub-schema with $ref may set no other properties but $ ones"
        for content in _dicts(body["contents"]):
            for part in _dicts(content.get("parts")):
                response = part.get("functionResponse")
                if isinstance(response, dict) and not isinstance(response.get("response"), dict):
                    return 400, "functionResponse.response must be an object"
        return None

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        return {
            "error": {
                "code": status,
                "message": message,
                "status": GEMINI_STATUSES.get(status, "UNKNOWN"),
            }
        }

    def _event(self, candidate: dict[str, Any], usage: dict[str, int]) -> bytes:
        event = {
            "candidates": [{**candidate, "index": 0}],
            "usageMetadata": usage,
            "modelVersion": self.script.model,
            "responseId": self.id,
        }
        return sse(event, eol="\r\n")

    def delta(self, kind: str, piece: str) -> Frames:
        part = {"text": piece, **({"thought": True} if kind == "thinking" else {})}
        prompt = self.script.input_tokens  # real streams give the full counts only at the end
        usage = {"promptTokenCount": prompt, "totalTokenCount": prompt}
        return [self._event({"content": {"parts": [part], "role": "model"}}, usage)]

    def tool_call(self, call: FakeCall) -> Frames:
        function: dict[str, Any] = {"name": call.name, "args": call.args}
        if call.id is not None:
            function = {"id": call.id, **function}
        part: dict[str, Any] = {"functionCall": function}
        if call.signature is not None:
            part["thoughtSignature"] = call.signature
        prompt = self.script.input_tokens
        usage = {"promptTokenCount": prompt, "totalTokenCount": prompt}
        return [self._event({"content": {"parts": [part], "role": "model"}}, usage)]

    def finish(self) -> Frames:
        prompt, text, thoughts = (
            self.script.input_tokens,
            self.counts["text"],
            self.counts["thinking"],
        )
        usage = {
            "promptTokenCount": prompt,
            "candidatesTokenCount": text,
            "thoughtsTokenCount": thoughts,
            "totalTokenCount": prompt + text + thoughts,
        }
        candidate = {"content": {"role": "model"}, "finishReason": self.stop_reason}
        return [self._event(candidate, usage)]

    def error(self, framed: bool) -> Frames:
        if framed:
            return [sse({"error": GEMINI_OVERLOADED}, eol="\r\n")]
        return [f"[{json.dumps({'error': GEMINI_OVERLOADED}, indent=2)}\n]".encode()]


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects in a JSON list (nothing, if it is no list)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _ref_beside_others(node: Any) -> bool:
    """Whether a schema has a `$ref` beside keywords that do not start with `$` anywhere
    in it (a property named `$ref` is a schema, not a string: not taken for one)."""
    if isinstance(node, list):
        return any(_ref_beside_others(child) for child in node)
    if not isinstance(node, dict):
        return False
    if isinstance(node.get("$ref"), str) and any(not key.startswith("$") for key in node):
        return True
    return any(_ref_beside_others(child) for child in node.values())
