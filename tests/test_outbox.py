"""The bounded outbox between the chain (on a loop) and the request thread."""

from __future__ import annotations

import asyncio
import threading

from assistant.chain import ChainSucceeded, Chunk
from assistant.outbox import Outbox, Unsent, WriteFailed


def test_room_waits_until_the_reader_takes_enough() -> None:
    outbox = Outbox(limit_chars=10)
    waited = threading.Event()
    taken: list[object] = []

    async def producer() -> None:
        outbox.put(Chunk("0123456789"))  # at the limit: no room
        room = asyncio.ensure_future(outbox.room())
        await asyncio.sleep(0.05)
        assert not room.done()
        waited.set()
        await asyncio.wait_for(room, timeout=5)  # freed by the reader's get()
        outbox.put(ChainSucceeded())  # outcomes are never held back

    def reader() -> None:
        assert waited.wait(5)
        taken.append(outbox.get(timeout=1))
        taken.append(outbox.get(timeout=5))

    thread = threading.Thread(target=reader)
    thread.start()
    asyncio.run(producer())
    thread.join(5)
    assert taken == [Chunk("0123456789"), ChainSucceeded()]


def test_room_is_immediate_below_the_limit() -> None:
    outbox = Outbox(limit_chars=10)
    outbox.put(Chunk("short"))
    asyncio.run(asyncio.wait_for(outbox.room(), timeout=1))


class Writes:
    """A stand-in for the loop's write to the client: records chunks, leaves `rest` unsent."""

    def __init__(self, rest: bytes = b"", fail: bool = False) -> None:
        self.written: list[str] = []
        self.rest = rest
        self.fail = fail

    def __call__(self, chunk: Chunk) -> bytes:
        if self.fail:
            raise BrokenPipeError("the client left")
        self.written.append(chunk.text)
        return self.rest


def test_attached_chunks_are_written_on_put_and_never_queued() -> None:
    outbox = Outbox()
    writes = Writes()
    assert outbox.attach(writes)
    outbox.put(Chunk("a"))
    outbox.put(Chunk("b"))
    outbox.put(ChainSucceeded())  # not text: still the request thread's
    assert writes.written == ["a", "b"]
    assert outbox.last_direct_write > 0
    assert outbox.get(timeout=1) == ChainSucceeded()


def test_attach_waits_until_queued_output_is_taken() -> None:
    outbox = Outbox()
    outbox.put(Chunk("queued"))
    writes = Writes()
    assert not outbox.attach(writes)  # "queued" must go out first
    assert outbox.get(timeout=1) == Chunk("queued")
    assert outbox.attach(writes)


def test_a_write_the_socket_took_in_part_hands_the_rest_and_the_socket_back() -> None:
    outbox = Outbox()
    writes = Writes(rest=b"tail")
    assert outbox.attach(writes)
    outbox.put(Chunk("a"))  # written in part
    outbox.put(Chunk("b"))  # the loop no longer writes: queued behind the rest
    assert writes.written == ["a"]
    assert outbox.get(timeout=1) == Unsent(b"tail")
    assert not outbox.attach(Writes())  # "b" still waits
    assert outbox.get(timeout=1) == Chunk("b")
    assert outbox.attach(Writes())


def test_a_failed_write_says_the_client_left_and_stops_writing() -> None:
    outbox = Outbox()
    assert outbox.attach(Writes(fail=True))
    outbox.put(Chunk("a"))
    outbox.put(Chunk("b"))
    assert isinstance(outbox.get(timeout=1), WriteFailed)
    assert outbox.get(timeout=1) == Chunk("b")


def test_after_detach_nothing_is_written() -> None:
    outbox = Outbox()
    writes = Writes()
    assert outbox.attach(writes)
    outbox.detach()
    outbox.put(Chunk("a"))
    assert writes.written == []
    assert outbox.get(timeout=1) == Chunk("a")
