"""`aio.BodyFeed` and `aio.body_chunks()`: a response our transport made is handed
to the reader straight from the connection (relay: in the socket's own callback,
no task woken per read), and decodes to the same events, and fails the same way,
as through httpx's `aiter_bytes()` (which tests/test_sse_events.py drives)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import httpx
import pytest

from assistant import aio
from assistant.config import Timeouts
from assistant.http1 import RAW_BODY
from assistant.providers.base import translate_http_error
from assistant.providers.ndjson import NdjsonReader
from assistant.providers.sse_events import SseReader

from .raw_http import one_answer

TIMEOUTS = Timeouts(connect=2, first_chunk=5, idle=5, reply=10)


def _relayed(url: str, stop: Callable[[bytes], bool] = lambda data: False) -> list[bytes]:
    """The reads `aio.BodyFeed` handed on, until `stop(read)` or the body's end; a second
    relay goes on after a stop (as the chain does after waiting for room)."""

    async def read() -> list[bytes]:
        reads: list[bytes] = []

        def sink(data: bytes) -> bool:
            reads.append(data)
            return stop(data)

        client = aio.http_client(TIMEOUTS)
        async with client.stream("POST", url, content=b"{}") as response:
            body = aio.BodyFeed(response)
            while await body.into(sink):
                reads.append(b"|")  # where a relay stopped
        return reads

    return aio.submit(read()).result(timeout=10)


def _events(url: str) -> tuple[bool, list[tuple[str, str]]]:
    async def read() -> tuple[bool, list[tuple[str, str]]]:
        reader = SseReader()
        events = []

        def sink(data: bytes) -> bool:
            events.extend((event.event, event.data) for event in reader.feed(data))
            return False

        client = aio.http_client(TIMEOUTS)
        async with client.stream("POST", url, content=b"{}") as response:
            raw = not isinstance(aio.body_chunks(response), type(response.aiter_bytes()))
            assert not await aio.BodyFeed(response).into(sink)
        events.extend((event.event, event.data) for event in reader.end())
        return raw, events

    return aio.submit(read()).result(timeout=10)


SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n"

STREAM = "data: one\r\n\r\nevent: e\rdata: tw\u00e9\u2028o\ndata: x\n\n: c\n\ndata: \U0001f600\n\n"
EXPECTED = [("message", "one"), ("e", "tw\u00e9\u2028o\nx"), ("message", "\U0001f600")]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_raw_reads_give_the_same_events_at_any_read_boundary(size: int) -> None:
    data = STREAM.encode()
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    with one_answer(SSE_HEAD, pieces) as url:
        raw, events = _events(url)
    assert raw
    assert events == EXPECTED


def test_a_coded_body_goes_through_httpx_decoding() -> None:
    head = SSE_HEAD.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip\r\n\r\n")
    with one_answer(head, [gzip.compress(STREAM.encode())]) as url:
        raw, events = _events(url)
    assert not raw
    assert events == EXPECTED


def test_a_relay_stops_when_its_reader_says_so_and_the_next_goes_on() -> None:
    """Each read reaches the reader once, in order, across a stop."""
    pieces = [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    with one_answer(SSE_HEAD, pieces) as url:
        reads = _relayed(url, stop=lambda data: b"2" in data)
    assert b"".join(read for read in reads if read != b"|") == b"".join(pieces)
    stopped_at = next(i for i, read in enumerate(reads) if b"2" in read)
    assert reads[stopped_at + 1] == b"|"


def test_what_the_reader_raises_reaches_the_relaying_task() -> None:
    def fail(data: bytes) -> bool:
        raise ValueError("not for us")

    with one_answer(SSE_HEAD, [b"data: 1\n\n"], then_wait=3) as url, pytest.raises(ValueError):
        _relayed(url, stop=fail)


def test_a_body_cut_short_is_the_same_error() -> None:
    head = SSE_HEAD.replace(b"connection: close", b"content-length: 1000")
    with (
        one_answer(head, [b"data: one\n\n"]) as url,
        pytest.raises(httpx.HTTPError) as caught,
    ):
        _relayed(url)
    assert translate_http_error(caught.value).code == "upstream_incomplete"


def test_a_body_from_elsewhere_is_relayed_from_its_iterator() -> None:
    """A response our transport did not make (here a MockTransport's) is read in the task."""
    body = b"data: a\n\ndata: b\n\n"
    transport = httpx.MockTransport(
        lambda request: httpx.Response(200, content=body, headers={"content-type": "x"})
    )

    async def read() -> tuple[bool, list[bytes]]:
        reads: list[bytes] = []
        async with (
            httpx.AsyncClient(transport=transport) as client,
            client.stream("POST", "http://upstream.test/", content=b"{}") as response,
        ):
            assert RAW_BODY not in response.extensions
            ended = not await aio.BodyFeed(response).into(lambda data: reads.append(data) or False)
        return ended, reads

    ended, reads = aio.submit(read()).result(timeout=10)
    assert ended
    assert b"".join(reads) == body


def test_ndjson_reads_raw_too() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n"
    data = '{"a": "\u00e9"}\n{"b": 2}\n'.encode()
    reader = NdjsonReader()
    with one_answer(head, [data[i : i + 3] for i in range(0, len(data), 3)]) as url:
        lines = [line for read in _relayed(url) for line in reader.feed(read)]
    assert lines == ['{"a": "\u00e9"}', '{"b": 2}']


def test_a_coded_body_goes_on_after_a_stop() -> None:
    """A gzip body is read through httpx's decoding, in one iterator across stops (a
    second `aiter_bytes()` would be refused: the chain stops each time the reply has
    no room)."""
    events = [b"data: %d\n\n" % n for n in range(3)]
    compressor = zlib.compressobj(wbits=31)  # gzip
    pieces = [compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH) for event in events]
    pieces.append(compressor.flush())
    head = SSE_HEAD.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip\r\n\r\n")
    with one_answer(head, pieces) as url:
        reads = _relayed(url, stop=lambda data: True)
    assert b"".join(read for read in reads if read != b"|") == b"".join(events)
    assert reads.count(b"|") >= 2
