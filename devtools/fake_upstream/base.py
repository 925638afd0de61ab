"""The interface of a wire format (one module per provider implements it) and its framing."""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from .script import FakeCall, Script

Frames = list[bytes]
Problem = tuple[int, str] | None


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def compact(obj: Any) -> str:
    """`obj` as compact JSON; a lone UTF-16 surrogate in a string (a script's way to ask
    for one) as the `\\ud800` escape a provider's encoder would write, not a character
    that UTF-8 cannot hold."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return _LONE_SURROGATE.sub(lambda match: f"\\u{ord(match[0]):04x}", text)


def sse(data: Any, event: str | None = None, eol: str = "\n") -> bytes:
    head = f"event: {event}{eol}" if event else ""
    return f"{head}data: {compact(data)}{eol}{eol}".encode()


class Format:
    """One provider's wire format: request checks, error bodies, and the frames of one reply.

    A new instance serves each response (it holds ids, counters, block state). Frames are
    complete wire events (bytes); each goes out as its own HTTP chunk.
    """

    path: ClassVar[re.Pattern[str]]
    content_type: ClassVar[str] = "text/event-stream; charset=utf-8"
    messages_key: ClassVar[str] = "messages"
    required: ClassVar[tuple[tuple[str, type], ...]] = (("model", str), ("messages", list))
    keepalive: ClassVar[bytes | None] = None
    stop_reasons: ClassVar[dict[str, str]] = {}

    def __init__(self, script: Script, body: dict[str, Any]) -> None:
        self.script, self.body = script, body
        self.counts = {"text": 0, "thinking": 0}  # pieces sent, by kind

    @property
    def sent(self) -> int:
        return sum(self.counts.values())

    @property
    def stop_reason(self) -> str:
        reason = self.script.stop_reason
        if self.script.tool_calls and reason == "end_turn":
            reason = "tool_use"  # what a model that called tools says
        return self.stop_reasons.get(reason, reason)

    @classmethod
    def check_auth(cls, headers: dict[str, str], query: dict[str, list[str]]) -> Problem:
        return None

    @classmethod
    def check_for_model(cls, model: str | None, body: dict[str, Any]) -> Problem:
        """(status, message) when the request is one `model` would refuse (after check())."""
        return None

    @classmethod
    def check(cls, headers: dict[str, str], body: Any, query: dict[str, list[str]]) -> Problem:
        """(status, message) when the request is one the real API would refuse."""
        problem = cls.check_auth(headers, query)
        if problem:
            return problem
        if not isinstance(body, dict):
            return 400, "request body must be a JSON object"
        for key, kind in cls.required:
            if not isinstance(body.get(key), kind):
                return 400, f"{key}: field required ({kind.__name__})"
        return None

    @classmethod
    def error_json(cls, status: int, message: str) -> Any:
        """The JSON body of an HTTP error response."""
        raise NotImplementedError

    def start(self) -> Frames:
        """Sent with the headers, before any wait."""
        return []

    def delta(self, kind: str, piece: str) -> Frames:
        """One "thinking" or "text" piece."""
        raise NotImplementedError

    def end_block(self, kind: str) -> Frames:
        """After the last piece of a run of one kind."""
        return []

    def tool_call(self, call: FakeCall) -> Frames:
        """One whole tool call, after the text (its argument fragments, where the format
        streams them)."""
        raise NotImplementedError

    def finish(self) -> Frames:
        """The end of a complete reply: stop reason, usage, end marker."""
        raise NotImplementedError

    def error(self, framed: bool) -> Frames:
        """The in-stream error; `framed` asks for it as an event where the format has both."""
        raise NotImplementedError
