"""What a finished reply amounts to: the metadata a client is shown and the message kept.

Functions of what the reply gathered (its text, split into content and
thinking) and what the chain reported (and the clock, for `timing`), so
that `reply.py` only moves items and frames, and these two shapes
(docs/API.md "Metadata"; README "Persistence") can be read in one place.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .chain import ChainReport
from .request import AssistantRequest
from .schema_kinds import may_be
from .store import AssistantMessage, Author
from .thinking import ThinkingSplitter, split_outside_json_strings
from .tools import ToolCall, json_reading, structured_output


@dataclass(frozen=True)
class Output:
    """What the model produced: its text (split into content and thinking), its tool
    calls, and the JSON the request asked for (README "Tools and structured output")."""

    content: str
    thinking: str
    calls: tuple[ToolCall, ...] = ()
    structured: Any = None
    structured_error: str | None = None

    @classmethod
    def of(cls, text: ThinkingSplitter, calls: list[ToolCall]) -> Output:
        return cls(text.content, text.thinking, tuple(calls))


def with_structured_output(
    output: Output,
    schema: Mapping[str, Any] | None,
    report: ChainReport,
    answer: Callable[[], str],
) -> Output:
    """A finished reply's content parsed and checked against the response schema. A tag
    inside a string of the JSON (`answer()`, the whole reply, tells) is the JSON's text,
    not thinking, wherever that reading is JSON (`json_reading`)."""
    if schema is None:
        return output
    read = json_reading(answer(), plain=(output.content, output.thinking))
    if read is not None:
        output = dataclasses.replace(output, content=read[0], thinking=read[1])
    value, error = structured_output(output.content, schema)
    if output.calls and error is not None:  # its text, if any, is a preamble to the calls
        error = "the reply is a tool call: the JSON answer comes after the tool results"
    if report.schema_left_out is not None:
        # Said even when the reply matches: the provider was not held to the schema. The
        # reply is checked all the same (a tool loop's answer after the results, say).
        left_out = f"{report.provider} {report.schema_left_out}"
        error = left_out if error is None else f"{left_out}; {error}"
    return dataclasses.replace(output, structured=value, structured_error=error)


def with_cut_json_kept(
    output: Output, schema: Mapping[str, Any] | None, answer: Callable[[], str]
) -> Output:
    """A reply cut short, asked for JSON: read as `cut_json_reading` tells, where it does."""
    read = cut_json_reading(answer(), schema)
    if read is None:
        return output
    return dataclasses.replace(output, content=read[0], thinking=read[1])


def cut_json_reading(answer: str, schema: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(content, thinking) of a reply cut short, asked for JSON, where it opens as JSON
    (`{`, `[` or a fence, and `"` where a string is asked for: prose opens with a quote
    too): a tag inside one of its strings is its text, as a whole reply's is
    (`with_structured_output`; cut JSON never parses, so its opening tells). A value
    that quoted `<think>` took the rest of the JSON for thinking, saved apart from the
    text the page showed (a reviewer's). None: read as ever."""
    if schema is None or ("<think" not in answer and "</think" not in answer):
        return None
    content, thinking = split_outside_json_strings(answer)
    openers = ("{", "[", "```", *(('"',) if may_be(schema, "string") else ()))
    return (content, thinking) if content.lstrip().startswith(openers) else None


def assistant_message(
    request: AssistantRequest,
    trace_id: str,
    author: Author,
    output: Output,
    report: ChainReport,
    complete: bool,
) -> AssistantMessage:
    """The assistant message to save: `complete`, or `incomplete` with what arrived."""
    return AssistantMessage(
        assistant_id=request.assistant_id,
        trace_id=trace_id,
        thread_id=request.thread_id,
        author=author,
        content=output.content,
        thinking_content=output.thinking,
        status="complete" if complete else "incomplete",
        provider=report.provider,
        model=report.model,
        model_version=report.model_version,
        usage=report.usage.as_dict(),
        stop_reason=report.stop_reason,
        structured_output=output.structured,
        tools_to_use=tuple(call.as_dict() for call in output.calls),
        question=request.user_input,
    )


def metadata(
    trace_id: str,
    output: Output,
    report: ChainReport,
    started: float,
    message_ids: dict[str, str] | None,
    persist_failed: bool,
    history_error: str | None = None,
) -> dict[str, Any]:
    """The final frame's `metadata` (also in an error frame and a JSON answer)."""
    first_chunk_ms = None
    if report.first_chunk_at is not None:
        first_chunk_ms = round((report.first_chunk_at - started) * 1000)
    fields: dict[str, Any] = {
        "trace_id": trace_id,
        "structured_output": output.structured,
        "tools_to_use": [call.as_dict() for call in output.calls],
        "thinking_content": output.thinking,
        "provider": report.provider,
        "model": report.model,
        "model_version": report.model_version,
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
    if output.structured_error is not None:
        fields["structured_output_error"] = output.structured_error
    if history_error is not None:
        fields["history_error"] = history_error
    return fields


def log_summary(report: ChainReport) -> dict[str, Any]:
    """The fields every end-of-reply log line carries."""
    return {
        "provider": report.provider,
        "model": report.model,
        "attempts": [attempt.as_dict() for attempt in report.attempts],
    }
