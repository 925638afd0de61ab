"""Ollama, ``POST /api/chat``.

No auth; needs ``model`` and ``messages``. NDJSON (``application/x-ndjson``), nothing before the
first piece, one line per piece with ``message.content`` or (thinking) ``message.thinking`` and
``done: false``; the last line has ``done: true``, ``done_reason``, counts and measured durations
in nanoseconds. Error event: a ``{"error": "..."}`` line (the status stays 200). No keep-alive.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from .base import Format, Frames, compact
from .script import Script


class Ollama(Format):
    path = re.compile(r"/api/chat")
    content_type = "application/x-ndjson"
    stop_reasons = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

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
