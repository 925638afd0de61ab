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


async def iter_sse(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """Events of a `text/event-stream` response; anything else is a protocol error.

    Two spec rules httpx-sse 0.4.3 misses are kept here: a leading BOM is
    dropped, and an event with no `data:` line is not dispatched (its decoder
    would dispatch one with data "" after an `id:` or `event:` line).
    """
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "text/event-stream":
        raise ProviderError("upstream_protocol", f"content-type {content_type or 'none'}")
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # SSE is always UTF-8
    line_decoder = SSELineDecoder()
    event_decoder = SSEDecoder()
    has_data = False
    first = True
    async for raw in response.aiter_bytes():
        text = text_decoder.decode(raw)
        if first and text:
            text, first = text.removeprefix("\ufeff"), False
        for line in line_decoder.decode(text) if text else ():
            has_data = has_data or line.partition(":")[0] == "data"
            event = event_decoder.decode(line)
            if event is not None:
                if has_data:
                    yield event
                has_data = False
    # A CR held back at the end ends a real line; a last line with no line end
    # is read too, but without a blank line after it no event is dispatched:
    # an unterminated event at EOF is dropped, per spec.
    for line in line_decoder.flush():
        event = event_decoder.decode(line)
        if event is not None and has_data:
            yield event


def json_object(data: str) -> dict[str, Any]:
    """An event's data as a JSON object, or a protocol error."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        raise ProviderError("upstream_protocol", "event data is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderError("upstream_protocol", "event data is not a JSON object")
    return value
