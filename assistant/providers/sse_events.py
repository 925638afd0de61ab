"""Upstream SSE decoding: an httpx response's bytes -> lines -> events.

The spec's decoder is ours (sse_decoder.py, adapted from httpx-sse); this
module feeds it a response's bytes (lines are split before they are decoded
as UTF-8, so a character split between reads is decoded whole), and holds providers to the
right content type. An event left unterminated at EOF is dropped, as the
spec says; providers that need such a tail read it themselves (`unframed`).
Our tests (tests/test_sse_events.py) hold it to the spec's cases.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from ..aio import body_chunks
from .base import ProviderError
from .sse_decoder import EventDecoder, LineDecoder, ServerSentEvent

_LONG_NUMBER = re.compile(r"\d{19}")
_DIGITS = b"0123456789"
_FIELDS = frozenset({"data", "event", "id", "retry"})


async def iter_sse(
    response: httpx.Response, unframed: list[str] | None = None
) -> AsyncIterator[ServerSentEvent]:
    """Events of a `text/event-stream` response; anything else is a protocol error.

    Lines that are no SSE field at all (Gemini may end a stream with a bare
    JSON error) are ignored, as the spec says. When the caller passes
    `unframed`, it holds those lines since the last event dispatched: at the
    end of the stream, that is the unframed tail.

    The body's bytes come from `aio.body_chunks()`: straight from the
    connection when our transport sent the request, which spares several async
    generator layers per read. A last line with no line end is decoded too;
    with no blank line after it, its event is never dispatched.
    """
    content_type = response.headers.get("content-type", "").partition(";")[0].strip()
    if content_type != "text/event-stream":
        raise ProviderError("upstream_protocol", f"content-type {content_type or 'none'}")
    events = EventDecoder()
    lines = LineDecoder()
    async for raw in body_chunks(response):
        if unframed is None:
            for event in events.decode(lines.decode(raw)):
                yield event
            continue
        for line in lines.decode(raw):
            _note_unframed(line, unframed)
            for event in events.decode([line]):
                unframed.clear()
                yield event
    for line in lines.flush():
        if unframed is not None:
            _note_unframed(line, unframed)
        for event in events.decode([line]):  # a lone CR at the very end ends the last event
            yield event


def _note_unframed(line: str, unframed: list[str]) -> None:
    if line:
        field = line.partition(":")[0]
        if field and field not in _FIELDS:
            unframed.append(line)


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
        try:  # also what orjson refuses and json takes (NaN, Infinity), as before
            value = json.loads(data)
        except (ValueError, RecursionError):  # not JSON, a number past the digit limit, too deep
            raise ProviderError("upstream_protocol", "event data is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderError("upstream_protocol", "event data is not a JSON object")
    return value
