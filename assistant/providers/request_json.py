"""A request body as it goes to a provider: one writer for the request and for what the
log compares an error body with (error_text.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import orjson


def upstream_json(body: Mapping[str, Any]) -> bytes:
    """A request body as httpx's `json=` would send it: compact JSON in UTF-8.

    No NaN can be in it (request.py refuses NaN and infinities). orjson
    refuses integers past 64 bits, which a tool's JSON schema may hold
    (request.py takes numbers up to 40 digits): those bodies go through `json`.
    """
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
