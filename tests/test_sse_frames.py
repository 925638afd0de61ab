"""The fast paths of the hot loop give what the plain ones gave: chunk frames
(orjson), upstream JSON (orjson, json as the fallback), and an outbox read
that takes every chunk already waiting."""

from __future__ import annotations

import json
import math

import pytest

from assistant import sse
from assistant.chain import ChainSucceeded, Chunk
from assistant.outbox import Outbox
from assistant.providers.base import ProviderError
from assistant.providers.sse_events import json_object


def test_chunk_frames_are_the_bytes_json_dumps_gave_for_every_code_point() -> None:
    characters = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for start in range(0, len(characters), 512):
        text = "".join(characters[start : start + 512])
        assert sse.chunk_frame(text) == sse.frame({"chunk": text})


def test_chunk_frames_escape_the_line_breaks_splitlines_knows() -> None:
    frame = sse.chunk_frame("a\u2028b\u2029c\x85d\ne")
    assert frame == b'data: {"chunk":"a\\u2028b\\u2029c\\u0085d\\ne"}\n\n'


@pytest.mark.parametrize(
    "data",
    [
        '{"n": 123456789012345678901234567890}',
        '{"n": 18446744073709551616}',  # 2**64: the first integer orjson reads as a float
        '{"n": -99999999999999999999, "t": "\u00e9"}',  # a sign, and text that is not ASCII
        '{"t": "éé", "n": [1, 12345678901234567890123]}',  # in a list, after UTF-8
    ],
)
def test_upstream_json_with_an_integer_past_64_bits_reads_it_exactly(data: str) -> None:
    assert json_object(data) == json.loads(data)


def test_upstream_json_that_only_json_reads_still_reads() -> None:
    assert math.isnan(json_object('{"x": NaN}')["x"])
    assert json_object('{"t": "\\u00e9\\ud83d\\ude00", "a": [1, 2.5, null]}') == {
        "t": "é😀",
        "a": [1, 2.5, None],
    }


@pytest.mark.parametrize(
    "data", ["not json", "[1, 2]", '"text"', "", '{"n": ' + "1" * 5000 + "}"]
)  # the last: past Python's digit limit
def test_upstream_data_that_is_no_json_object_is_a_protocol_error(data: str) -> None:
    with pytest.raises(ProviderError) as raised:
        json_object(data)
    assert raised.value.code == "upstream_protocol"


def test_next_chunk_takes_the_waiting_chunks_and_keeps_anything_else_in_order() -> None:
    outbox = Outbox(limit_chars=100)
    for item in (Chunk("a"), Chunk("b"), Chunk("c"), ChainSucceeded(), Chunk("late")):
        outbox.put(item)
    assert outbox.get(timeout=1) == Chunk("a")
    assert outbox.next_chunk() == Chunk("b")
    assert outbox.next_chunk() == Chunk("c")
    assert outbox.next_chunk() is None  # the outcome: held, not lost
    assert outbox.next_chunk() is None
    assert outbox.get(timeout=1) == ChainSucceeded()
    assert outbox.next_chunk() == Chunk("late")
    assert outbox.next_chunk() is None  # nothing waiting: no wait either


def test_next_chunk_frees_room_as_get_does() -> None:
    outbox = Outbox(limit_chars=4)
    outbox.put(Chunk("ab"))
    outbox.put(Chunk("cd"))
    assert outbox._chars == 4
    assert outbox.get(timeout=1) == Chunk("ab")
    assert outbox.next_chunk() == Chunk("cd")
    assert outbox._chars == 0
