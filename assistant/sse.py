"""Server-Sent Events frames, as the frontend reads them.

Only `data:` lines, never `event:` names: the frontend dispatches on the JSON
inside. JSON is compact and keeps non-ASCII text as is (`ensure_ascii=False`):
smaller frames, and JSON escapes every CR and LF, so one payload is always one
`data:` line. SSE ends lines only at CR and LF, but clients that split lines
the way Python's `str.splitlines` does (httpx's `iter_lines`, for one) also
break at U+2028, U+2029 and U+0085, which JSON leaves raw: those three are
escaped too (`\u2028`), so every client reads one frame as one line.
"""

from __future__ import annotations

import json
from typing import Any

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


_LINE_BREAKS = {0x2028: "\\u2028", 0x2029: "\\u2029", 0x85: "\\u0085"}


def frame(payload: Any) -> bytes:
    """One `data:` event carrying `payload` as JSON."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():
        text = text.translate(_LINE_BREAKS)
    return b"data: " + text.encode("utf-8") + b"\n\n"


def chunk_frame(text: str) -> bytes:
    return frame({"chunk": text})
