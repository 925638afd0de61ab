"""Upstream SSE decoding: bytes -> text -> lines -> events, by httpx-sse.

httpx-sse follows the spec where hand-written parsers slip: only CR, LF and
CRLF end a line (not U+2028, which model text can contain), a CR at the end of
one read is held until the next, multi-line `data:` is joined with LF,
comments are skipped, and UTF-8 split across reads is decoded whole. We use its
line and field decoders and add the two rules it misses (see `iter_sse`). Our
tests (tests/test_sse_events.py) hold it to those cases. An event left
unterminated at EOF is dropped, as the spec says; providers that need such a
tail read it themselves.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import ServerSentEvent
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from .base import ProviderError

_FIELDS = frozenset({"data", "event", "id", "retry"})


async def iter_sse(
    response: httpx.Response, unframed: list[str] | None = None
) -> AsyncIterator[ServerSentEvent]:
    """Events of a `text/event-stream` response; anything else is a protocol error.

    Two spec rules httpx-sse 0.4.3 misses are kept here: a leading BOM is
    dropped, and an event with no `data:` line is not dispatched (its decoder
    would dispatch one with data "" after an `id:` or `event:` line).

    Lines that are no SSE field at all (Gemini may end a stream with a bare
    JSON error) are ignored, as the spec says. When the caller passes
    `unframed`, it holds those lines since the last event dispatched: at the
    end of the stream, that is the unframed tail.
    """
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "text/event-stream":
        raise ProviderError("upstream_protocol", f"content-type {content_type or 'none'}")
    event_decoder = SSEDecoder()
    has_data = False
    async for line in _lines(response):
        field = line.partition(":")[0]
        has_data = has_data or field == "data"
        if unframed is not None and line and field and field not in _FIELDS:
            unframed.append(line)
        event = event_decoder.decode(line)
        if event is not None:
            if has_data:
                if unframed:
                    unframed.clear()
                yield event
            has_data = False


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    """The body's lines: always UTF-8 (per spec), one leading BOM dropped.

    A last line with no line end is yielded too; with no blank line after it,
    its event is never dispatched: an unterminated event at EOF is dropped.
    """
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    line_decoder = SSELineDecoder()
    first = True
    async for raw in response.aiter_bytes():
        text = text_decoder.decode(raw)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        if text:
            for line in line_decoder.decode(text):
                yield line
    tail = text_decoder.decode(b"", final=True)
    for line in (line_decoder.decode(tail) if tail else []) + line_decoder.flush():
        yield line


def json_object(data: str) -> dict[str, Any]:
    """An event's data as a JSON object, or a protocol error."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        raise ProviderError("upstream_protocol", "event data is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderError("upstream_protocol", "event data is not a JSON object")
    return value
