"""Upstream SSE decoding: an httpx response's bytes -> lines -> events.

The spec's decoder is ours (sse_decoder.py, adapted from httpx-sse); this
module feeds it a body's bytes as they come (lines are split before they are decoded
as UTF-8, so a character split between reads is decoded whole), and holds providers to the
right content type. An event left unterminated at EOF is dropped by `flush()`,
as the spec says; the providers' `end()` takes it (`rest_of`), as a gateway
that closes a stream right after its last field leaves the end marker there;
providers that need an unframed tail read it themselves (`unframed`).
Our tests (tests/test_sse_events.py) hold it to the spec's cases.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from ..tools import without_lone_surrogates
from .base import ProviderError
from .sse_decoder import EventDecoder, LineDecoder, ServerSentEvent

_LONG_NUMBER = re.compile(r"\d{19}")
_DIGITS = b"0123456789"
_FIELDS = frozenset({"data", "event", "id", "retry"})
# One whole event, an optional `event:` line and one `data:` line, each ended by LF
# or CRLF, then a blank line: what most reads of a provider's stream are.
_ONE_EVENT = re.compile(rb"(?:event: ?([^\r\n]*)\r?\n)?data: ?([^\r\n]*)\r?\n\r?\n")


def require_event_stream(response: httpx.Response) -> None:
    """A provider's answer must be `text/event-stream`; anything else is a protocol error."""
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type.lower() != "text/event-stream":  # a media type's case says nothing
        raise ProviderError("upstream_protocol", f"content-type {content_type or 'none'}")


class SseReader:
    """A body's bytes, read by read, -> the events they complete.

    Lines that are no SSE field at all (Gemini may end a stream with a bare
    JSON error) are ignored, as the spec says. Given `unframed`, it holds
    those lines since the last event dispatched: at the end of the stream,
    that is the unframed tail. `flush()` at the body's end decodes a last
    line with no line end; with no blank line after it, its event is never
    dispatched.
    """

    def __init__(self, unframed: UnframedTail | None = None) -> None:
        self._lines = LineDecoder()
        self._events = EventDecoder()
        self._unframed = unframed

    def feed(self, data: bytes) -> list[ServerSentEvent]:
        one = _ONE_EVENT.fullmatch(data)
        if one is not None and self._lines.between_lines and self._events.between_events:
            # A read that is one whole event, between two others: its fields read at
            # once, for a third of the spec decoder's cost (the same event: the tests
            # feed every case both ways).
            name, value = one.groups()
            if self._unframed is not None:
                self._unframed.clear()
            event = name.decode("utf-8", "replace") if name else "message"
            text = value.decode("utf-8", "replace")
            return [ServerSentEvent(event, text, self._events.last_event_id)]
        if self._unframed is None:
            return self._events.decode(self._lines.decode(data))
        return self._framed(self._lines.decode(data))

    def end(self) -> list[ServerSentEvent]:
        """The body's last line, and the event its end left undispatched (no blank
        line after its fields): the spec drops it. The unframed lines after its fields
        stay the tail (Gemini's error after its last event)."""
        return self._framed(self._lines.flush()) + self._events.decode([""])

    def _framed(self, lines: list[str]) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        for line in lines:
            if self._unframed is not None:
                self._unframed.note(line)
            for event in self._events.decode([line]):
                if self._unframed is not None:
                    self._unframed.clear()
                events.append(event)
        return events


def rest_of(reader: SseReader, handle: Callable[[list[ServerSentEvent]], None]) -> None:
    """The body ended: its last events handed to `handle`, the one it left undispatched
    too. A gateway may close a stream right after the last field (`data: [DONE]`, no
    blank line: openai-node reads it so): dropped, as the spec says, it turned a whole
    answer into an incomplete one. An event the body's end cut in two does not parse:
    that is the stream cut short, not a provider that wrote what is not JSON."""
    try:
        handle(reader.end())
    except ProviderError as exc:
        if exc.code != "upstream_protocol":
            raise
        raise ProviderError("upstream_incomplete", "stream ended inside an event") from None


# Gemini's error tail is an error object of a few hundred bytes; lines outside the
# framing past this are no error we could read, and would hold their memory.
MOST_TAIL_CHARS = 64 * 1024


class UnframedTail:
    """The lines that are no SSE field since the last event (Gemini may end a stream with
    a bare JSON error), while they come to at most MOST_TAIL_CHARS; past it, none."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._size = 0

    def note(self, line: str) -> None:
        field = line.partition(":")[0]
        if field and field not in _FIELDS:
            self._size += len(line)
            if self._size <= MOST_TAIL_CHARS:
                self.lines.append(line)
            else:
                self.lines.clear()

    def clear(self) -> None:
        self.lines.clear()
        self._size = 0


def json_object(data: str) -> dict[str, Any]:
    """An event's data as a JSON object, or a protocol error."""
    try:
        # orjson is several times faster per event; but it reads an integer past
        # 64 bits as a float, so data with 19 digits in a row goes to json. The
        # digits are counted first (at C speed): the search alone cost five times
        # the parse, and most events have fewer than 19 digits in all.
        raw = data.encode("utf-8", "surrogatepass")
        if len(raw) - len(raw.translate(None, _DIGITS)) >= 19 and _LONG_NUMBER.search(data):
            raise orjson.JSONDecodeError("", "", 0)
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # also what orjson refuses and json takes (NaN, Infinity, a lone surrogate)
            value = without_lone_surrogates(json.loads(data), data)
        except (ValueError, RecursionError):  # not JSON, a number past the digit limit, too deep
            raise ProviderError("upstream_protocol", "event data is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderError("upstream_protocol", "event data is not a JSON object")
    return value
