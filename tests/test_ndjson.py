"""NdjsonReader: the newline-delimited JSON decoding Ollama's stream stands on.

Each case feeds a sequence of byte reads through a real `httpx.Response` (its
`stream` is a tiny `httpx.AsyncByteStream`), so httpx's own byte iteration runs
exactly as on a live socket. Read boundaries are the point: a line, a UTF-8
character, or a CR LF pair may arrive in pieces.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from assistant.providers.base import ProviderError
from assistant.providers.ndjson import NdjsonReader
from assistant.providers.sse_events import json_object

from .provider_support import chunked_response, one_byte_reads, utf8_split_cases

NDJSON = "application/x-ndjson"


def read_objects(chunks: list[bytes], seen: list[dict[str, Any]]) -> None:
    """The objects of a body that arrives in these reads, as Ollama's decoder reads
    them (each line parsed as it is handed on, the reader flushed at the end), into
    `seen` one by one: those before a failure are in it when it is raised."""

    async def collect() -> None:
        response = chunked_response(chunks, NDJSON)
        reader = NdjsonReader()
        async for data in response.aiter_bytes():
            for line in reader.feed(data):
                seen.append(json_object(line))
        seen.extend(reader.flush())

    asyncio.run(collect())


def decode(chunks: list[bytes]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    read_objects(chunks, seen)
    return seen


def decode_until_error(chunks: list[bytes]) -> tuple[list[dict[str, Any]], ProviderError]:
    """The objects yielded before the ProviderError, and the error."""
    seen: list[dict[str, Any]] = []

    with pytest.raises(ProviderError) as caught:
        read_objects(chunks, seen)
    return seen, caught.value


def line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


OBJECTS = [
    {"message": {"role": "assistant", "content": "Hel"}, "done": False},
    {"message": {"role": "assistant", "content": "lo"}, "done": False},
    {"message": {"role": "assistant", "content": ""}, "done": True, "eval_count": 2},
]
BODY = b"".join(line(obj) for obj in OBJECTS)


# -- lines and reads ----------------------------------------------------------------------


def test_one_object_per_line() -> None:
    assert decode([BODY]) == OBJECTS


def test_one_read_per_line() -> None:
    assert decode([line(obj) for obj in OBJECTS]) == OBJECTS


def test_a_line_split_across_reads() -> None:
    first = line(OBJECTS[0])
    cut = first.index(b'"content"') + 3
    assert (
        decode([first[:cut], first[cut:] + line(OBJECTS[1])[:5], line(OBJECTS[1])[5:]])
        == (OBJECTS[:2])
    )


def test_the_line_end_alone_in_the_next_read() -> None:
    first = line(OBJECTS[0])
    assert decode([first[:-1], b"\n", line(OBJECTS[1])]) == OBJECTS[:2]


def test_every_byte_its_own_read() -> None:
    assert decode(one_byte_reads(BODY)) == OBJECTS


def test_many_lines_in_one_read() -> None:
    objects = [{"i": i, "text": "é" * (i % 5)} for i in range(500)]
    assert decode([b"".join(line(obj) for obj in objects)]) == objects


def test_empty_reads_are_harmless() -> None:
    assert decode([b"", BODY[:10], b"", BODY[10:], b""]) == OBJECTS


def test_a_byte_order_mark_before_the_first_line_is_read_past() -> None:
    bom = "\ufeff".encode()
    assert decode([bom + BODY]) == OBJECTS
    assert decode(one_byte_reads(bom + BODY)) == OBJECTS  # the mark cut between reads too
    assert decode([bom[:2], bom[2:] + BODY]) == OBJECTS
    with pytest.raises(ProviderError):  # only before the first line: later it is no JSON
        decode([BODY + bom + line(OBJECTS[0])])


# -- UTF-8 and characters that are not line ends ----------------------------------------


@pytest.mark.parametrize("chunks, expected", utf8_split_cases(b'{"t":"', b'"}\n'))
def test_utf8_split_across_reads(chunks: list[bytes], expected: str) -> None:
    assert decode(chunks) == [{"t": expected}]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"], ids=["U+2028", "U+2029", "NEL"])
def test_unicode_line_separators_inside_a_string_do_not_split_the_line(separator: str) -> None:
    # Raw (unescaped) inside a JSON string, as a server that does not escape them sends
    # them; str.splitlines() would cut the object in two here.
    raw = f'{{"t":"a{separator}b"}}\n{{"t":"{separator}"}}\n'.encode()
    assert decode([raw]) == [{"t": f"a{separator}b"}, {"t": separator}]
    assert decode(one_byte_reads(raw)) == [{"t": f"a{separator}b"}, {"t": separator}]
    # And cut inside the separator's own UTF-8 bytes.
    cut = raw.index(separator.encode()) + 1
    assert decode([raw[:cut], raw[cut:]]) == [{"t": f"a{separator}b"}, {"t": separator}]


def test_escaped_newlines_inside_strings_are_text() -> None:
    assert decode([b'{"t":"one\\ntwo\\r\\n"}\n']) == [{"t": "one\ntwo\r\n"}]


# -- line ends, blank lines and the end of the stream -------------------------------------


def test_crlf_is_tolerated() -> None:
    crlf = BODY.replace(b"\n", b"\r\n")
    assert decode([crlf]) == OBJECTS
    assert decode(one_byte_reads(crlf)) == OBJECTS
    cut = crlf.index(b"\r\n") + 1  # CR ends one read, LF starts the next
    assert decode([crlf[:cut], crlf[cut:]]) == OBJECTS


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'\n\n{"a":1}\n\n\n{"b":2}\n\n', id="lf"),
        pytest.param(b'\r\n{"a":1}\r\n\r\n{"b":2}\r\n', id="crlf"),
        pytest.param(b'  \n{"a":1}\n \t \n{"b":2}\n   ', id="whitespace-only"),
    ],
)
def test_blank_lines_are_skipped(raw: bytes) -> None:
    assert decode([raw]) == [{"a": 1}, {"b": 2}]
    assert decode(one_byte_reads(raw)) == [{"a": 1}, {"b": 2}]


@pytest.mark.parametrize(
    "chunks",
    [
        pytest.param([b'{"a":1}\n{"b":2}'], id="one-read"),
        pytest.param([b'{"a":1}\n{"b"', b":2}"], id="split"),
        pytest.param([b'{"a":1}\n{"b":2}\r'], id="trailing-cr"),
        pytest.param([b'{"a":1}\n', b'{"b":2}  '], id="trailing-spaces"),
    ],
)
def test_a_last_line_without_its_line_end_is_still_read(chunks: list[bytes]) -> None:
    assert decode(chunks) == [{"a": 1}, {"b": 2}]


def test_empty_body_gives_no_objects() -> None:
    assert decode([]) == []
    assert decode([b""]) == []
    assert decode([b"\n\n", b"\r\n"]) == []


# -- what is not NDJSON --------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, detail",
    [
        pytest.param(b"not json", "event data is not JSON", id="text"),
        pytest.param(b'data: {"a":1}', "event data is not JSON", id="sse-frame"),
        pytest.param(b'{"a":1}{"b":2}', "event data is not JSON", id="two-on-a-line"),
        pytest.param(b"<html>502 Bad Gateway</html>", "event data is not JSON", id="html"),
        pytest.param(b"[1, 2]", "event data is not a JSON object", id="array"),
        pytest.param(b'"text"', "event data is not a JSON object", id="string"),
        pytest.param(b"42", "event data is not a JSON object", id="number"),
        pytest.param(b"null", "event data is not a JSON object", id="null"),
    ],
)
def test_a_line_that_is_not_a_json_object_is_a_protocol_error(bad: bytes, detail: str) -> None:
    seen, error = decode_until_error([b'{"a":1}\n', bad + b"\n", b'{"never":1}\n'])
    assert seen == [{"a": 1}]  # what came before is delivered, nothing after
    assert error.code == "upstream_protocol"
    assert error.detail == detail
    assert error.message == "The model provider sent a reply that could not be read."
