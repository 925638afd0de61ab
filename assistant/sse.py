"""Server-Sent Events frames, as the frontend reads them.

Only `data:` lines, never `event:` names: the frontend dispatches on the JSON
inside. JSON is compact and keeps non-ASCII text as is (`ensure_ascii=False`):
smaller frames, and JSON escapes every CR and LF, so one payload is always one
`data:` line. U+2028 may appear raw; SSE ends lines only at CR and LF.
"""

from __future__ import annotations

import json
from typing import Any

PING = b": ping\n\n"
DONE = b"data: [DONE]\n\n"


def frame(payload: Any) -> bytes:
    """One `data:` event carrying `payload` as JSON."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return b"data: " + text.encode("utf-8") + b"\n\n"


def chunk_frame(text: str) -> bytes:
    return frame({"chunk": text})
