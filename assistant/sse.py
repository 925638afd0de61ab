"""Server-Sent Events frames, as the frontend reads them.

Only `data:` lines, never `event:` names: the frontend dispatches on the JSON
inside. JSON is compact and keeps non-ASCII text as is (`ensure_ascii=False`):
smaller frames, and JSON escapes every CR and LF, so one payload is always one
`data:` line. SSE ends lines only at CR and LF, but clients that split lines
the way Python's `str.splitlines` does (httpx's `iter_lines`, for one) also
break at U+2028, U+2029 and U+0085, which JSON leaves raw: those three are
escaped too (`\u2028`), so every client reads one frame as one line.

Chunk frames, one per token, are encoded with orjson (about 10 times faster
than `json.dumps` here, bench/results/): its output is the same bytes as
`json.dumps(..., ensure_ascii=False, separators=(",", ":"))` for every
string (checked for every code point in tests/test_sse_frames.py), and the three
line breaks are escaped in its UTF-8 bytes, where each has one spelling.
Every other frame (the final answer's metadata, errors) keeps `json.dumps`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


_LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


def frame(payload: Any) -> bytes:
    """One `data:` event carrying `payload` as JSON."""
    text = json_text(payload)
    if not text.isascii():
        text = text.translate(_LINE_BREAKS)
    return b"data: " + text.encode("utf-8") + b"\n\n"


def json_text(payload: Any) -> str:
    """`payload` as compact JSON, as every frame and JSON response writes it.

    Never NaN or Infinity, which a browser's `JSON.parse` refuses: an upstream
    may send them in an event (Python's parser takes them, and a tool call's
    arguments or the usage can carry them on), and here they go out as null.
    """
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(payload), ensure_ascii=False, separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


_UTF8_LINE_BREAKS = (
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
    (b"\xc2\x85", b"\\u0085"),
)


def chunk_frame(text: str) -> bytes:
    """`frame({"chunk": text})`, the same bytes, faster."""
    data = orjson.dumps({"chunk": text})
    if not data.isascii():
        for raw, escaped in _UTF8_LINE_BREAKS:
            data = data.replace(raw, escaped)
    return b"data: " + data + b"\n\n"
