"""Trace ids and structured JSON log lines that carry them.

One JSON object per line on stdout is what Cloud Logging parses into a
structured entry: `severity` and `message` are its fields, and
`logging.googleapis.com/trace` ties the line to the request's trace when the
project id is known. Prompts and keys are never logged: callers pass sizes
and ids, not text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

TRACE_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/.*)?")


def trace_id_from_headers(headers: Mapping[str, str]) -> str | None:
    """The trace id a W3C `traceparent` or Google `X-Cloud-Trace-Context` header carries."""
    parent = _TRACEPARENT.fullmatch(headers.get("traceparent", "").strip())
    if parent and parent.group(1) != "0" * 32:
        return parent.group(1)
    cloud = _CLOUD_TRACE.fullmatch(headers.get("X-Cloud-Trace-Context", "").strip())
    if cloud and cloud.group(1) != "0" * 32:
        return cloud.group(1).lower()
    return None


def new_trace_id() -> str:
    return uuid.uuid4().hex


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            # The stack goes to the log only, never to a client.
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class _StdoutHandler(logging.Handler):
    """Writes to whatever sys.stdout is now, flushed per line so no entry waits in a buffer."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def _make_logger() -> logging.Logger:
    logger = logging.getLogger("assistant")
    if not logger.handlers:
        handler = _StdoutHandler()
        handler.setFormatter(_JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


_logger = _make_logger()


class RequestLog:
    """Log lines for one request, each stamped with its trace id."""

    def __init__(self, trace_id: str | None, project_id: str = "") -> None:
        self.trace_id = trace_id
        self._fields: dict[str, str] = {"trace_id": trace_id} if trace_id else {}
        if trace_id and project_id:
            self._fields["logging.googleapis.com/trace"] = (
                f"projects/{project_id}/traces/{trace_id}"
            )

    def _log(
        self, level: int, message: str, fields: dict[str, Any], exc: BaseException | bool = False
    ) -> None:
        _logger.log(level, message, extra={"fields": {**self._fields, **fields}}, exc_info=exc)

    def info(self, message: str, **fields: Any) -> None:
        self._log(logging.INFO, message, fields)

    def warning(self, message: str, **fields: Any) -> None:
        self._log(logging.WARNING, message, fields)

    def error(self, message: str, **fields: Any) -> None:
        self._log(logging.ERROR, message, fields)

    def exception(self, message: str, exc: BaseException | None = None, **fields: Any) -> None:
        """An unexpected failure (the current one, or `exc`): the stack goes to the log only."""
        self._log(logging.ERROR, message, fields, exc=exc or True)


def process_log() -> RequestLog:
    """Log lines that belong to no request (startup, configuration)."""
    return RequestLog(None)
