"""Anthropic Messages, ``POST /v1/messages``.

Needs ``x-api-key`` (else 401) and ``model``, ``messages``, ``max_tokens``. SSE with ``event:``
lines: ``message_start`` and ``ping`` right after the headers, a ``content_block_start`` sent
together with a block's first delta, ``thinking_delta`` pieces then one uncounted
``signature_delta``, ``text_delta`` pieces, ``message_delta`` (cumulative ``output_tokens``) and
``message_stop``. Error event: ``event: error`` with ``overloaded_error``. Keep-alive:
``event: ping``.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from .base import Format, Frames, Problem, sse
from .script import Script

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
PING = {"type": "ping"}
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


class Anthropic(Format):
    path = re.compile(r"/v1/messages")
    required = (("model", str), ("messages", list), ("max_tokens", int))
    keepalive = sse(PING, "ping")

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.index, self.open = 0, False

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        return None if headers.get("x-api-key") else (401, "x-api-key header is required")

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

    def finish(self) -> Frames:
        message_delta = {
            "type": "message_delta",
            "usage": {"output_tokens": self.sent},
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
        }
        return [sse(message_delta, "message_delta"), sse({"type": "message_stop"}, "message_stop")]

    def error(self, framed: bool) -> Frames:
        return [sse(OVERLOADED, "error")]
