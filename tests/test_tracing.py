"""Log lines (tracing.py): one JSON object per line, with the request's fields; never a crash."""

from __future__ import annotations

import io
import sys

import pytest

from assistant.tracing import RequestLog, trace_id_from_headers

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


TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": f"00-{TRACE}-{PARENT}-01"}, TRACE),
        ({"traceparent": f" 00-{TRACE}-{PARENT}-01 "}, TRACE),
        ({"traceparent": f"00-{TRACE}-{PARENT}-01-more"}, None),  # version 00 has four fields
        ({"traceparent": f"01-{TRACE}-{PARENT}-01-more"}, TRACE),  # a later one may add some
        ({"traceparent": f"01-{TRACE}-{PARENT}-01"}, TRACE),
        ({"traceparent": f"01-{TRACE}-{PARENT}-01more"}, None),
        ({"traceparent": f"ff-{TRACE}-{PARENT}-01"}, None),
        ({"traceparent": f"00-{'0' * 32}-{PARENT}-01"}, None),
        ({"traceparent": f"00-{TRACE}-{'0' * 16}-01"}, None),
        ({"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"}, None),
        ({"X-Cloud-Trace-Context": f"{TRACE.upper()}/1;o=1"}, TRACE),
        ({"X-Cloud-Trace-Context": f"{TRACE};o=1"}, TRACE),  # no span id
        ({"X-Cloud-Trace-Context": TRACE}, TRACE),
        ({"X-Cloud-Trace-Context": f"{TRACE}x"}, None),
        ({"X-Cloud-Trace-Context": "0" * 32}, None),
        ({"traceparent": "junk", "X-Cloud-Trace-Context": f"{TRACE}/2"}, TRACE),
    ],
)
def test_trace_ids_from_headers(headers: dict[str, str], expected: str | None) -> None:
    assert trace_id_from_headers(headers) == expected


def test_only_http_blanks_around_a_trace_header_are_dropped() -> None:
    """As the JavaScript kit reads them (clients/js): Python's strip() also took U+0085
    and U+001C-U+001F, and the two read one header two ways."""
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_from_headers({"traceparent": f" \t00-{trace}-00f067aa0ba902b7-01\t "}) == trace
    assert trace_id_from_headers({"traceparent": f"\x8500-{trace}-00f067aa0ba902b7-01"}) is None
