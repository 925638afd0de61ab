"""Newline-delimited JSON decoding (Ollama's stream): bytes -> lines -> objects.

Lines end at LF only (CRLF tolerated): never `str.splitlines`, which also
splits on U+2028 that model text can contain when a server does not escape
it. Bytes are split before decoding, so a UTF-8 character split across reads
is decoded whole. A last line without its LF is still a line if it is whole
JSON; otherwise the body was cut inside it, which makes the stream incomplete.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..aio import body_chunks
from .base import ProviderError
from .sse_events import json_object


async def iter_ndjson(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """JSON objects, one per non-blank line; anything else is a protocol error."""
    buffer = b""
    async for raw in body_chunks(response):
        buffer += raw
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield json_object(line.decode("utf-8", "replace"))
    if buffer.strip():
        try:
            last = json_object(buffer.decode("utf-8", "replace"))
        except ProviderError:
            # Not a whole line without its LF, but a line the body was cut in.
            raise ProviderError("upstream_incomplete", "body ended inside a line") from None
        yield last
