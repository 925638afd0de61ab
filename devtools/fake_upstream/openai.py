"""OpenAI Chat Completions, ``POST /v1/chat/completions``.

Needs ``authorization: Bearer <key>`` (else 401 ``invalid_api_key``) and ``model``,
``messages``. ``data: <chunk>`` events, no ``event:`` lines: a
``{"role": "assistant", "content": ""}`` chunk right after the headers,
``delta.reasoning_content`` (thinking) and ``delta.content`` pieces, a chunk with an empty delta
and ``finish_reason``, then - only with ``stream_options.include_usage`` - a chunk with
``"choices": []`` and ``usage`` (every other chunk then carries ``"usage": null``, as the real
API does), then ``data: [DONE]``. Error event: a ``data: {"error": ...}`` frame. Keep-alive:
the comment line ``: keep-alive``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from .base import Format, Frames, Problem, sse
from .script import Script

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
    stop_reasons = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

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
