"""SseReader / require_event_stream / json_object: the upstream SSE decoding every
provider stands on.

Each case feeds a sequence of byte reads through a real `httpx.Response` (its
`stream` is a tiny `httpx.AsyncByteStream`), so the UTF-8 decoding and our
spec decoder (sse_decoder.py) both run, exactly as on a live socket.
Read boundaries are the point: a CR that ends one read and the LF that starts
the next are one line end, and a UTF-8 character may arrive in pieces.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from assistant.providers import sse_events
from assistant.providers.base import ProviderError
from assistant.providers.sse_decoder import ServerSentEvent
from assistant.providers.sse_events import (
    MOST_TAIL_CHARS,
    SseReader,
    UnframedTail,
    json_object,
    require_event_stream,
)

from .provider_support import chunked_response, one_byte_reads, utf8_split_cases

SSE = "text/event-stream"

Seen = tuple[str, str, str, int | None]  # (event, data, id, retry)


def read_events(
    chunks: list[bytes], content_type: str | None = SSE, unframed: UnframedTail | None = None
) -> list[ServerSentEvent]:
    """The events of a body that arrives in these reads, as a provider's decoder reads
    them: the content type checked, each read fed as it comes, then its end (`end()`,
    which `rest_of` gives a provider)."""

    async def collect() -> list[ServerSentEvent]:
        response = chunked_response(chunks, content_type)
        require_event_stream(response)
        reader = SseReader(unframed)
        events = [event async for data in response.aiter_bytes() for event in reader.feed(data)]
        return events + reader.end()

    return asyncio.run(collect())


def decode(chunks: list[bytes], content_type: str | None = SSE) -> list[Seen]:
    return [(e.event, e.data, e.id, e.retry) for e in read_events(chunks, content_type)]


def ev(data: str, event: str = "message", id: str = "", retry: int | None = None) -> Seen:
    return (event, data, id, retry)


# -- line endings ---------------------------------------------------------------------

STREAM = "event: greet\ndata: one\ndata: two\n\n: note\ndata: three\n\n"
STREAM_EVENTS = [ev("one\ntwo", event="greet"), ev("three")]


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("reads", ["one_read", "byte_by_byte"])
def test_every_line_ending_gives_the_same_events(eol: str, reads: str) -> None:
    text = STREAM.replace("\n", eol)
    chunks = [text.encode()] if reads == "one_read" else one_byte_reads(text)
    assert decode(chunks) == STREAM_EVENTS


@pytest.mark.parametrize(
    "chunks, expected",
    [
        # Read as two line ends, "a" and "b" would come out as two events.
        pytest.param([b"data: a\r", b"\ndata: b\r\n\r\n"], [ev("a\nb")], id="cr|lf-one-line-end"),
        pytest.param(
            [b"data: a\r", b"\n", b"data: b\r", b"\n\r", b"\n"], [ev("a\nb")], id="cr|lf-repeated"
        ),
        pytest.param([b"data: a\r", b"", b"\ndata: b\r\n\r\n"], [ev("a\nb")], id="cr|empty|lf"),
        pytest.param(
            [b"", b"data: a\r", b"\n\r\ndata: b\r\nd", b"ata: c\r\n\r\n"],
            [ev("a"), ev("b\nc")],
            id="httpx-style-boundaries",
        ),
        # CR then CR: a line end and then an empty line, which dispatches.
        pytest.param([b"data: a\r", b"\r"], [ev("a")], id="cr|cr-dispatches"),
        pytest.param([b"data: a\r\r", b"data: b\n\r\n"], [ev("a"), ev("b")], id="mixed"),
    ],
)
def test_cr_at_the_end_of_a_read(chunks: list[bytes], expected: list[Seen]) -> None:
    assert decode(chunks) == expected


def test_an_event_ended_by_crs_comes_with_its_own_read() -> None:
    # A stream of bare CRs: held for a possible LF, the event waited for the next read,
    # which a live stream may send only after a long pause (or never, at its end).
    reader = SseReader()
    assert reader.feed(b'data: {"a":1}\r\r') == [ServerSentEvent(data='{"a":1}')]
    assert reader.feed(b'\ndata: {"a":2}\r\r') == [ServerSentEvent(data='{"a":2}')]


# -- fields ---------------------------------------------------------------------------

FIELD_CASES = [
    pytest.param("data: a\ndata: b\ndata: c\n\n", [ev("a\nb\nc")], id="multi-line-data"),
    pytest.param("data:\n\n", [ev("")], id="one-empty-data-line"),
    pytest.param("data: a\ndata:\ndata: b\n\n", [ev("a\n\nb")], id="empty-data-line-inside"),
    pytest.param("data\n\n", [ev("")], id="data-without-colon"),
    pytest.param("data: a\ndata: \n\n", [ev("a\n")], id="trailing-empty-data-line"),
    pytest.param(
        ": ping\n\ndata: a\n: in the middle\ndata: b\n\n:\n\n", [ev("a\nb")], id="comments"
    ),
    pytest.param("\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n\n", [ev("a"), ev("b")], id="blank-lines"),
    pytest.param(
        "id: 42\ndata: a\n\ndata: b\n\nid: 43\ndata: c\n\nid:\ndata: d\n\n",
        [ev("a", id="42"), ev("b", id="42"), ev("c", id="43"), ev("d", id="")],
        id="id-kept-across-events",
    ),
    pytest.param(
        "id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n",
        [ev("a", id="1"), ev("b", id="1")],
        id="id-with-nul-ignored",
    ),
    pytest.param(
        "retry: 2500\ndata: a\n\ndata: b\n\n",
        [ev("a", retry=2500), ev("b")],
        id="retry",
    ),
    pytest.param("retry: soon\ndata: a\n\n", [ev("a")], id="retry-not-a-number"),
    pytest.param(
        "foo: bar\nevent: x\nEvent: y\nDATA: no\nbaz\ndata: a\n\n",
        [ev("a", event="x")],
        id="unknown-fields-ignored",
    ),
    pytest.param(
        'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n',
        [ev('{"type":"error","error":{"type":"overloaded_error"}}', event="error")],
        id="event-error",
    ),
    pytest.param("event: one\ndata: a\n\ndata: b\n\n", [ev("a", "one"), ev("b")], id="event-reset"),
    pytest.param("data:a\n\n", [ev("a")], id="no-space-after-colon"),
    pytest.param("event:ping\ndata:  a \n\n", [ev(" a ", "ping")], id="only-one-space-removed"),
    pytest.param("data: a: b:c\n\n", [ev("a: b:c")], id="colons-in-value"),
]


@pytest.mark.parametrize("text, expected", FIELD_CASES)
def test_fields(text: str, expected: list[Seen]) -> None:
    assert decode([text.encode()]) == expected
    assert decode(one_byte_reads(text)) == expected


# -- UTF-8 and line separators that are not line ends -----------------------------------


@pytest.mark.parametrize("chunks, expected", utf8_split_cases(b"data: ", b"\n\n"))
def test_utf8_split_across_reads(chunks: list[bytes], expected: str) -> None:
    assert decode(chunks) == [ev(expected)]


@pytest.mark.parametrize(
    "separator",
    ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"],
    ids=["U+2028", "U+2029", "NEL", "VT", "FF", "FS", "GS", "RS"],
)
def test_only_cr_and_lf_end_lines(separator: str) -> None:
    # str.splitlines() would split on each of these; model text can contain them.
    text = f"data: a{separator}b\ndata: c{separator}\n\n"
    assert decode([text.encode()]) == [ev(f"a{separator}b\nc{separator}")]
    assert decode(one_byte_reads(text)) == [ev(f"a{separator}b\nc{separator}")]


# -- read sizes and the end of the stream ----------------------------------------------


def test_many_events_in_one_read() -> None:
    text = "".join(f"event: e{i}\ndata: {i}\n\n" for i in range(200))
    assert decode([text.encode()]) == [ev(str(i), event=f"e{i}") for i in range(200)]


def test_one_event_across_many_reads() -> None:
    text = 'event: message_start\ndata: {"text": "héllo € 😀"}\r\n\r\n'
    assert decode(one_byte_reads(text)) == [ev('{"text": "héllo € 😀"}', "message_start")]


@pytest.mark.parametrize(
    "chunks, data",
    [
        pytest.param([b"data: a\n\ndata: b"], ["a", "b"], id="no-line-end"),
        pytest.param([b"data: a\n\ndata: b\n"], ["a", "b"], id="no-blank-line"),
        pytest.param([b"data: a\n\ndata: b\r\n"], ["a", "b"], id="no-blank-line-crlf"),
        pytest.param([b"data: a\n\n", b"event: x\r"], ["a"], id="no-data-line"),
        pytest.param([b"data: a\n\nevent: error\ndata: {}", b"\n"], ["a", "{}"], id="error-event"),
    ],
)
def test_an_event_the_body_ends_without_its_blank_line_still_counts(
    chunks: list[bytes], data: list[str]
) -> None:
    # The spec drops it; a gateway that closes right after `data: [DONE]` made a whole
    # answer incomplete (an event cut in two is told apart by the provider: rest_of).
    assert [seen[1] for seen in decode(chunks)] == data


def test_empty_body_gives_no_events() -> None:
    assert decode([]) == []
    assert decode([b""]) == []


# -- the spec's own examples (WHATWG HTML, "Server-sent events", §9.2.6) ----------------


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("data: YHOO\ndata: +2\ndata: 10\n\n", [ev("YHOO\n+2\n10")], id="stock-ticker"),
        pytest.param(
            ": test stream\n\ndata: first event\nid: 1\n\n"
            "data:second event\nid\n\ndata:  third event\n",
            # The third never ends: the spec drops it, a provider's end keeps it (above).
            [ev("first event", id="1"), ev("second event", id=""), ev(" third event", id="")],
            id="ids-and-comments",
        ),
        pytest.param("data\n\ndata\ndata\n\ndata:", [ev(""), ev("\n"), ev("")], id="empty-data"),
        pytest.param("data:test\n\ndata: test\n\n", [ev("test"), ev("test")], id="one-space"),
    ],
)
def test_the_specs_examples(text: str, expected: list[Seen]) -> None:
    assert decode([text.encode()]) == expected


# -- where httpx-sse 0.4.3 strayed from the spec, and our decoder does not ---------------


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(
            "id: 1\ndata: a\n\n\n\ndata: b\n\n",
            [ev("a", id="1"), ev("b", id="1")],
            id="blank-lines-after-an-id",
        ),
        pytest.param("event: ping\n\ndata: a\n\n", [ev("a")], id="event-without-data"),
    ],
)
def test_blank_line_without_data_dispatches_nothing(text: str, expected: list[Seen]) -> None:
    assert decode([text.encode()]) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param('error: {"code": 500}\n\n', [ev('{"code": 500}', event="error")], id="alone"),
        pytest.param("data: a\nerror: x\n\n", [ev("a")], id="beside-data"),
        pytest.param("error: x\n\ndata: b\n\n", [ev("x", event="error"), ev("b")], id="then"),
    ],
)
def test_an_error_line_is_an_error_event(text: str, expected: list[Seen]) -> None:
    """Outside the spec, for llama.cpp's server, which fails a stream so."""
    assert decode([text.encode()]) == expected


def test_leading_bom_is_stripped() -> None:
    assert decode([b"\xef\xbb\xbfdata: a\n\n"]) == [ev("a")]


# -- content type ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [SSE, "text/event-stream; charset=utf-8", "Text/Event-Stream; charset=UTF-8"],  # any case
)
def test_event_stream_content_types_are_read(content_type: str) -> None:
    assert decode([b"data: a\n\n"], content_type) == [ev("a")]


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "text/html; charset=utf-8", None]
)
def test_other_content_types_are_a_protocol_error(content_type: str | None) -> None:
    with pytest.raises(ProviderError) as caught:
        decode([b'{"type":"error","error":{"message":"secret body"}}'], content_type)
    assert caught.value.code == "upstream_protocol"
    assert "secret body" not in caught.value.message
    assert caught.value.message == "The model provider sent a reply that could not be read."


# -- json_object -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, expected",
    [
        ('{"type": "ping"}', {"type": "ping"}),
        ('{"text": "caf\\u00e9 \u2028"}', {"text": "café \u2028"}),
        ("  {}\n", {}),
        # Lone surrogates, anywhere: U+FFFD (a pair stays one character).
        (
            '{"t\\udc00": ["a\\ud800", {"b": "\\ud83d\\ude00 \\ude00"}], "n": 1}',
            {"t\ufffd": ["a\ufffd", {"b": "\U0001f600 \ufffd"}], "n": 1},
        ),
    ],
)
def test_json_object_reads_objects(data: str, expected: dict[str, object]) -> None:
    assert json_object(data) == expected


@pytest.mark.parametrize(
    "data",
    ["", "not json", '{"open": ', "[DONE]", "{'single': 1}", "NaN}"],
)
def test_json_object_refuses_invalid_json(data: str) -> None:
    with pytest.raises(ProviderError) as caught:
        json_object(data)
    assert caught.value.code == "upstream_protocol"
    assert caught.value.detail == "event data is not JSON"


@pytest.mark.parametrize("data", ["[1, 2]", "1", "null", '"text"', "true", "[]"])
def test_json_object_refuses_non_objects(data: str) -> None:
    with pytest.raises(ProviderError) as caught:
        json_object(data)
    assert caught.value.code == "upstream_protocol"
    assert caught.value.detail == "event data is not a JSON object"


def test_unframed_holds_the_lines_after_the_last_event() -> None:
    """A stray line mid-stream is forgotten at the next event; a bare tail at EOF is kept."""
    body = b'stray line\ndata: {"a": 1}\n\n[{\n  "error": {"code": 503}\n}\n]\n'
    unframed = UnframedTail()
    assert [event.data for event in read_events([body], SSE, unframed)] == ['{"a": 1}']
    assert unframed.lines == ["[{", '  "error": {"code": 503}', "}", "]"]


def test_unframed_lines_past_the_bound_are_no_tail() -> None:
    """An error tail is a few hundred bytes: 131 MB of such lines were held whole."""
    line = b"x" * 1000 + b"\n"
    unframed = UnframedTail()
    count = MOST_TAIL_CHARS // 1000 + 1
    assert read_events([b'data: {"a": 1}\n\n', line * count], SSE, unframed) != []
    assert unframed.lines == []
    within = UnframedTail()
    assert read_events([b'data: {"a": 1}\n\n', line * (count - 1)], SSE, within) != []
    assert len(within.lines) == count - 1


# -- one whole event per read: the reader's shortcut --------------------------------------

SHORTCUT_BODIES = [
    "event: a\ndata: 1\n\nevent: b\ndata: 2\n\ndata: 3\n\n",
    "data: x\r\n\r\nevent: e\r\ndata: y\r\n\r\n",  # CRLF (Gemini)
    "data:no space\n\nevent:nospace\ndata:  two spaces\n\nevent:\ndata: unnamed\n\n",
    "id: 7\ndata: a\n\ndata: keeps the id\n\nid: 8\ndata: b\n\ndata: c\n\n",
    "retry: 10\ndata: a\n\ndata: b\n\n: comment\n\ndata: c\n\n",
    "\ufeffdata: bom\n\ndata: caf\u00e9 \u2028 \U0001f600\n\ndata: [DONE]\n\n",
    "event: only an event\n\ndata: then data\n\n",
    'error: {"code": 500}\n\ndata: after\n\ndata: \n\n',
    "data: a\ndata: two lines\n\ndata: b\n\n",
    "data: a\n\rdata: lone CR\n\r\ndata: b\n\n",
]


def _blocks(body: bytes) -> list[bytes]:
    """`body` cut after each blank line: one event (or block) a read."""
    parts = body.replace(b"\r\n\r\n", b"\r\n\r\n\0").replace(b"\n\n", b"\n\n\0").split(b"\0")
    return [part for part in parts if part]


@pytest.mark.parametrize("text", SHORTCUT_BODIES)
def test_one_event_reads_give_what_the_spec_decoder_gives(text: str, monkeypatch) -> None:
    """Reads of one whole event take a shortcut (sse_events._ONE_EVENT); with it
    turned off, the spec decoder alone gives the same events, and so does every
    read boundary (one byte a read never matches)."""
    body = text.encode()
    unframed_fast = UnframedTail()
    fast = read_events(_blocks(body), SSE, unframed_fast)
    slow = read_events(one_byte_reads(body), SSE)
    monkeypatch.setattr(sse_events, "_ONE_EVENT", re.compile(rb"(?!)"))
    unframed_spec = UnframedTail()
    spec = read_events(_blocks(body), SSE, unframed_spec)
    assert fast == spec == slow
    assert unframed_fast.lines == unframed_spec.lines
