"""What a finished reply amounts to: the metadata a client is shown and the message kept.

Pure functions of what the reply gathered (its text, split into content and
thinking) and what the chain reported, so that `reply.py` only moves items
and frames, and these two shapes (CONTRACT §3 metadata, §6 message fields)
can be read in one place.
"""

from __future__ import annotations

import time
from typing import Any

from .chain import ChainReport
from .request import AssistantRequest
from .store import AssistantMessage, Author
from .thinking import ThinkingSplitter


def assistant_message(
    request: AssistantRequest,
    trace_id: str,
    author: Author,
    text: ThinkingSplitter,
    report: ChainReport,
    complete: bool,
) -> AssistantMessage:
    """The assistant message to save: `complete`, or `incomplete` with what arrived."""
    return AssistantMessage(
        assistant_id=request.assistant_id,
        trace_id=trace_id,
        thread_id=request.thread_id,
        author=author,
        content=text.content,
        thinking_content=text.thinking,
        status="complete" if complete else "incomplete",
        provider=report.provider,
        model=report.model,
        usage=report.usage.as_dict(),
        stop_reason=report.stop_reason,
    )


def metadata(
    trace_id: str,
    text: ThinkingSplitter,
    report: ChainReport,
    started: float,
    message_ids: dict[str, str] | None,
    persist_failed: bool,
) -> dict[str, Any]:
    """The final frame's `metadata` (also in an error frame and a JSON answer)."""
    first_chunk_ms = None
    if report.first_chunk_at is not None:
        first_chunk_ms = round((report.first_chunk_at - started) * 1000)
    return {
        "trace_id": trace_id,
        "structured_output": None,
        "tools_to_use": [],
        "thinking_content": text.thinking,
        "provider": report.provider,
        "model": report.model,
        "usage": report.usage.as_dict(),
        "stop_reason": report.stop_reason,
        "attempts": [attempt.as_dict() for attempt in report.attempts],
        "timing": {
            "first_chunk_ms": first_chunk_ms,
            "total_ms": round((time.monotonic() - started) * 1000),
        },
        "message_ids": message_ids,
        "persist_failed": persist_failed,
    }


def log_summary(report: ChainReport) -> dict[str, Any]:
    """The fields every end-of-reply log line carries."""
    return {
        "provider": report.provider,
        "model": report.model,
        "attempts": [attempt.as_dict() for attempt in report.attempts],
    }
