"""`aio.body_chunks()`: a response our transport made is read straight from
the connection, and decodes to the same events, and fails the same way, as through
httpx's `aiter_bytes()` (which tests/test_sse_events.py drives)."""

from __future__ import annotations

import httpx
import pytest

from assistant import aio
from assistant.config import Timeouts
from assistant.providers.base import translate_http_error
from assistant.providers.ndjson import iter_ndjson
from assistant.providers.sse_events import iter_sse

from .raw_http import one_answer

TIMEOUTS = Timeouts(connect=2, first_chunk=5, idle=5, reply=10)


def _events(url: str) -> tuple[bool, list[tuple[str, str]]]:
    async def read() -> tuple[bool, list[tuple[str, str]]]:
        client = aio.http_client(TIMEOUTS)
        async with client.stream("POST", url, content=b"{}") as response:
            raw = not isinstance(aio.body_chunks(response), type(response.aiter_bytes()))
            return raw, [(event.event, event.data) async for event in iter_sse(response)]

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
    import gzip

    head = SSE_HEAD.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip\r\n\r\n")
    with one_answer(head, [gzip.compress(STREAM.encode())]) as url:
        raw, events = _events(url)
    assert not raw
    assert events == EXPECTED


def test_a_body_cut_short_is_the_same_error() -> None:
    head = SSE_HEAD.replace(b"connection: close", b"content-length: 1000")

    async def read(url: str) -> None:
        client = aio.http_client(TIMEOUTS)
        async with client.stream("POST", url, content=b"{}") as response:
            async for _ in iter_sse(response):
                pass

    with (
        one_answer(head, [b"data: one\n\n"]) as url,
        pytest.raises(httpx.HTTPError) as caught,
    ):
        aio.submit(read(url)).result(timeout=10)
    assert translate_http_error(caught.value).code == "upstream_incomplete"


def test_ndjson_reads_raw_too() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n"
    data = '{"a": "\u00e9"}\n{"b": 2}\n'.encode()

    async def read(url: str) -> list[dict[str, object]]:
        client = aio.http_client(TIMEOUTS)
        async with client.stream("POST", url, content=b"{}") as response:
            return [line async for line in iter_ndjson(response)]

    with one_answer(head, [data[i : i + 3] for i in range(0, len(data), 3)]) as url:
        assert aio.submit(read(url)).result(timeout=10) == [{"a": "\u00e9"}, {"b": 2}]
