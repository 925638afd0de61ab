"""The bounded outbox between the chain (on a loop) and the request thread."""

from __future__ import annotations

import asyncio
import threading

from assistant.chain import ChainSucceeded, Chunk
from assistant.outbox import Outbox


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
