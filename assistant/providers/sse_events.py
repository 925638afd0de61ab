"""Upstream SSE decoding: bytes -> text -> lines -> events, by httpx-sse.

httpx-sse follows the spec where hand-written parsers slip: only CR, LF and
CRLF end a line (not U+2028, which model text can contain), a CR at the end of
one read is held until the next, multi-line `data:` is joined with LF,
comments are skipped, and UTF-8 split across reads is decoded whole. Our tests
(tests/test_sse_events.py) hold it to those cases. An event left unterminated
at EOF is dropped, as the spec says; providers that need such a tail read it
themselves.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError

from .base import ProviderError


async def iter_sse(response: httpx.Response) -> AsyncIterator[ServerSentEvent]:
    """Events of a `text/event-stream` response; anything else is a protocol error."""
    try:
        async for event in EventSource(response).aiter_sse():
            yield event
    except SSEError as exc:
        raise ProviderError("upstream_protocol", str(exc)) from None


def json_object(data: str) -> dict[str, Any]:
    """An event's data as a JSON object, or a protocol error."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        raise ProviderError("upstream_protocol", "event data is not JSON") from None
    if not isinstance(value, dict):
        raise ProviderError("upstream_protocol", "event data is not a JSON object")
    return value
