"""Ollama, ``POST /api/chat``.

No auth; needs ``model`` and ``messages``. NDJSON (``application/x-ndjson``), nothing before the
first piece, one line per piece with ``message.content`` or (thinking) ``message.thinking`` and
``done: false``; the last line has ``done: true``, ``done_reason``, counts and measured durations
in nanoseconds. Error event: a ``{"error": "..."}`` line (the status stays 200). No keep-alive.

Tool calls: each call whole in a ``done: false`` line of its own after the text, as Ollama's
server writes it since v0.12.10: ``message.tool_calls: [{"id": "call_<8 of a-z 0-9>",
"function": {"index", "name", "arguments": {...}}}]`` with ``content: ""`` (the scripted ``id``
if given). Arguments go as the object they are; scripted ``arguments`` that are not JSON go as
that string (what some compatible servers send). ``done_reason`` stays ``"stop"`` after calls.
A JSON-schema reply (``json``) is plain text pieces, as with ``format``.
"""

from __future__ import annotations

import random
import re
import string
import time
from datetime import UTC, datetime
from typing import Any

from .base import Format, Frames, compact
from .script import FakeCall, Script

_ID_CHARS = string.ascii_lowercase + string.digits


class Ollama(Format):
    path = re.compile(r"/api/chat")
    content_type = "application/x-ndjson"
    stop_reasons = {
        "end_turn": "stop",
        "stop_sequence": "stop",
        "max_tokens": "length",
        "tool_use": "stop",  # Ollama has no reason of its own for calls
    }

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        super().__init__(script, body)
        self.started, self.first = time.monotonic_ns(), 0

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        return {"error": message}

    def _line(self, **fields: Any) -> bytes:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        return f"{compact({'model': self.script.model, 'created_at': now, **fields})}\n".encode()

    def delta(self, kind: str, piece: str) -> Frames:
        self.first = self.first or time.monotonic_ns()
        message = {"role": "assistant", "content": piece}
        if kind == "thinking":
            message = {"role": "assistant", "content": "", "thinking": piece}
        return [self._line(message=message, done=False)]

    def tool_call(self, call: FakeCall) -> Frames:
        self.first = self.first or time.monotonic_ns()
        call_id = call.id or "call_" + "".join(random.choices(_ID_CHARS, k=8))
        function = {"index": call.index, "name": call.name, "arguments": call.args}
        message = {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": call_id, "function": function}],
        }
        return [self._line(message=message, done=False)]

    def finish(self) -> Frames:
        now = time.monotonic_ns()
        prompt_eval = (self.first or now) - self.started
        line = self._line(
            message={"role": "assistant", "content": ""},
            done=True,
            done_reason=self.stop_reason,
            total_duration=now - self.started,
            load_duration=0,
            prompt_eval_count=self.script.input_tokens,
            prompt_eval_duration=prompt_eval,
            eval_count=self.sent,
            eval_duration=now - (self.first or now),
        )
        return [line]

    def error(self, framed: bool) -> Frames:
        return [f"{compact({'error': 'model runner has unexpectedly stopped'})}\n".encode()]
