"""Trace ids and structured JSON log lines that carry them.

One JSON object per line on stdout is what Cloud Logging parses into a
structured entry: `severity` and `message` are its fields, and
`logging.googleapis.com/trace` ties the line to the request's trace when the
project id is known. Prompts and keys are never logged: callers pass sizes
and ids, not text.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import traceback
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

TRACE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# W3C Trace Context: version ff and an all-zero parent id are invalid (the trace id's zeros
# are checked below, for both headers). A later version than 00 may add fields after a
# dash: its first four are read as 00's.
_TRACEPARENT = re.compile(r"(?!ff)([0-9a-f]{2})-([0-9a-f]{32})-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACEPARENT_00_LENGTH = 55
# TRACE_ID/SPAN_ID;o=OPTIONS, each part after the trace id optional.
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:[/;].*)?")


def trace_id_from_headers(headers: Mapping[str, str]) -> str | None:
    """The trace id a W3C `traceparent` or Google `X-Cloud-Trace-Context` header carries."""
    value = headers.get("traceparent", "").strip(" \t")  # HTTP's own blanks only
    parent = _TRACEPARENT.match(value)
    if parent and parent.group(2) != "0" * 32 and _whole_traceparent(value, parent.group(1)):
        return parent.group(2)
    cloud = _CLOUD_TRACE.fullmatch(headers.get("X-Cloud-Trace-Context", "").strip(" \t"))
    if cloud and cloud.group(1) != "0" * 32:
        return cloud.group(1).lower()
    return None


def _whole_traceparent(value: str, version: str) -> bool:
    if len(value) == _TRACEPARENT_00_LENGTH:
        return True
    return version != "00" and value[_TRACEPARENT_00_LENGTH] == "-"


def new_trace_id() -> str:
    return uuid.uuid4().hex


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _dumps(entry: dict[str, Any]) -> str:
    try:
        return orjson.dumps(entry, default=str).decode()
    except orjson.JSONEncodeError:  # an integer past 64 bits, say
        return json.dumps(entry, ensure_ascii=False, default=str)


def _write(
    severity: str,
    message: str,
    fields: Mapping[str, Any],
    more: Mapping[str, Any],
    exc: BaseException | None,
) -> None:
    """One JSON line on whatever sys.stdout is now, flushed so that no entry waits in a buffer.

    Written here, not through `logging`: its records, handler lock and
    formatter cost ~9 µs a line against ~2 here, and a reply logs three
    lines (bench/results/). One `write()` per line: lines from several
    threads never interleave.
    """
    entry: dict[str, Any] = {"severity": severity, "message": message}
    entry["time"] = _timestamp(time.time())
    entry.update(fields)  # the request's (trace id), then the line's own
    entry.update(more)
    if exc is not None:
        # The stack goes to the log only, never to a client.
        entry["exception"] = "".join(traceback.format_exception(exc)).rstrip("\n")
    line = _dumps(entry) + "\n"
    out = sys.stdout
    with contextlib.suppress(OSError, ValueError):  # stdout closed: nowhere left to say it
        out.write(line)
        out.flush()


class RequestLog:
    """Log lines for one request, each stamped with its trace id."""

    def __init__(self, trace_id: str | None, project_id: str = "") -> None:
        self.trace_id = trace_id
        self._fields: dict[str, str] = {"trace_id": trace_id} if trace_id else {}
        if trace_id and project_id:
            self._fields["logging.googleapis.com/trace"] = (
                f"projects/{project_id}/traces/{trace_id}"
            )

    def info(self, message: str, **fields: Any) -> None:
        _write("INFO", message, self._fields, fields, None)

    def warning(self, message: str, **fields: Any) -> None:
        _write("WARNING", message, self._fields, fields, None)

    def error(self, message: str, **fields: Any) -> None:
        _write("ERROR", message, self._fields, fields, None)

    def exception(self, message: str, exc: BaseException | None = None, **fields: Any) -> None:
        """An unexpected failure (the current one, or `exc`): the stack goes to the log only."""
        _write("ERROR", message, self._fields, fields, exc or sys.exception())


def process_log() -> RequestLog:
    """Log lines that belong to no request (startup, configuration)."""
    return RequestLog(None)
