"""Log lines (tracing.py): one JSON object per line, with the request's fields; never a crash."""

from __future__ import annotations

import io
import sys

import pytest

from assistant.tracing import RequestLog

from .conftest import log_lines


def test_a_line_carries_the_request_fields_then_its_own_and_any_value(capsys) -> None:
    log = RequestLog("trace-1", project_id="proj")
    log.info("reply.finished", chars=3, huge=10**30, text="é\u2028", other=object())
    (line,) = log_lines(capsys.readouterr().out)
    assert line["severity"] == "INFO" and line["message"] == "reply.finished"
    assert line["trace_id"] == "trace-1"
    assert line["logging.googleapis.com/trace"] == "projects/proj/traces/trace-1"
    assert (line["chars"], line["huge"], line["text"]) == (3, 10**30, "é\u2028")
    assert line["other"].startswith("<object object")  # anything else as its str()
    assert line["time"].endswith("Z")


def test_an_exception_goes_to_the_line_with_its_stack(capsys) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        RequestLog("trace-2").exception("request.crashed")
    (line,) = log_lines(capsys.readouterr().out)
    assert line["severity"] == "ERROR"
    assert line["exception"].startswith("Traceback") and "ValueError: boom" in line["exception"]


@pytest.mark.parametrize("broken", ["closed", "unwritable"])
def test_a_log_line_with_nowhere_to_go_never_breaks_the_request(
    monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    out = io.StringIO()
    if broken == "closed":
        out.close()  # write() raises ValueError
    else:
        monkeypatch.setattr(out, "write", _raise_os_error)
    monkeypatch.setattr(sys, "stdout", out)
    RequestLog("trace-3").warning("persist.failed", reason="disk full")  # no exception


def _raise_os_error(text: str) -> int:
    raise OSError("broken pipe")
