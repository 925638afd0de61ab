"""The bounded outbox between the chain (on a loop) and the request thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from assistant.chain import ChainSucceeded, Chunk, Item
from assistant.outbox import UNSENT, WRITE_FAILED, DirectWrites, Outbox, Unsent, WriteFailed


def test_room_waits_until_the_reader_takes_enough() -> None:
    outbox = Outbox(limit_chars=10)
    waited = threading.Event()
    taken: list[object] = []

    async def producer() -> None:
        outbox.put(Chunk("0123456789"))  # at the limit: no room
        full = outbox.room()
        assert full is not None
        room = asyncio.ensure_future(full)
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
    assert outbox.room() is None


class Writes:
    """A stand-in for the client's socket: records each write, leaves `rest` unsent."""

    def __init__(self, rest: bytes = b"", fail: bool = False) -> None:
        self.writes: list[bytes] = []
        self.rest = rest
        self.fail = fail

    def direct(self) -> DirectWrites:
        return DirectWrites(frame=lambda chunk: chunk.text.encode() + b";", write=self.write)

    def write(self, data: bytes) -> bytes:
        if self.fail:
            raise BrokenPipeError("the client left")
        self.writes.append(data)
        return self.rest


def on_loop(outbox: Outbox, *steps: list[Item]) -> None:
    """Put each step's items on a loop, one loop step after another."""

    async def run() -> None:
        for items in steps:
            for item in items:
                outbox.put(item)
            await asyncio.sleep(0)  # the step ends: its frames are written
            await asyncio.sleep(0)

    asyncio.run(run())


def test_attached_chunks_are_written_by_the_loop_one_write_per_step() -> None:
    outbox = Outbox()
    writes = Writes()
    assert outbox.attach(writes.direct())
    on_loop(outbox, [Chunk("a"), Chunk("b")], [Chunk("c")], [ChainSucceeded()])
    assert writes.writes == [b"a;b;", b"c;"]  # chunks of one upstream read: one write
    assert outbox.last_direct_write > 0
    assert outbox.get(timeout=1) == ChainSucceeded()  # not text: still the request thread's


def test_attach_waits_until_queued_output_is_taken() -> None:
    outbox = Outbox()
    outbox.put(Chunk("queued"))
    writes = Writes()
    assert not outbox.attach(writes.direct())  # "queued" must go out first
    assert outbox.get(timeout=1) == Chunk("queued")
    assert outbox.attach(writes.direct())


def test_a_write_the_socket_took_in_part_hands_the_rest_and_the_socket_back() -> None:
    outbox = Outbox()
    writes = Writes(rest=b"tail")
    assert outbox.attach(writes.direct())
    # "a" is written in part; from then on the loop no longer writes: "b" is queued.
    on_loop(outbox, [Chunk("a")], [Chunk("b")])
    assert writes.writes == [b"a;"]
    assert isinstance(outbox.get(timeout=1), Unsent)  # the request thread is woken...
    assert not outbox.attach(Writes().direct())  # (the rest must go out first)
    assert outbox.take_unsent() == b"tail"  # ...and sends the rest itself
    assert outbox.take_unsent() == b""
    assert not outbox.attach(Writes().direct())  # "b" still waits
    assert outbox.get(timeout=1) == Chunk("b")
    assert outbox.attach(Writes().direct())


def test_the_rest_of_a_write_goes_before_an_outcome_queued_in_the_same_step() -> None:
    """The loop step that ends a reply queues its outcome before its frames are
    written: whatever the socket did not take must still go out before the final
    frame. detach() hands it back first."""
    outbox = Outbox()
    assert outbox.attach(Writes(rest=b"tail").direct())
    on_loop(outbox, [Chunk("a"), ChainSucceeded()])  # one step: "a" then the outcome
    assert outbox.get(timeout=1) == ChainSucceeded()  # the outcome is ahead of UNSENT
    assert outbox.detach() == (b"tail", b"")  # before the final frame: the rest
    assert isinstance(outbox.get(timeout=1), Unsent)
    assert outbox.take_unsent() == b""  # already sent


def test_a_failed_write_says_the_client_left_and_stops_writing() -> None:
    outbox = Outbox()
    assert outbox.attach(Writes(fail=True).direct())
    on_loop(outbox, [Chunk("a")], [Chunk("b")])
    assert isinstance(outbox.get(timeout=1), WriteFailed)
    assert outbox.get(timeout=1) == Chunk("b")


def test_detach_hands_back_the_frames_not_yet_written_and_stops_the_loop() -> None:
    outbox = Outbox()
    writes = Writes()
    assert outbox.attach(writes.direct())

    async def run() -> tuple[bytes, bytes]:
        outbox.put(Chunk("a"))  # its write is due at the end of this step...
        left = outbox.detach()  # ...but the request thread takes the socket back first
        await asyncio.sleep(0)
        outbox.put(Chunk("b"))
        return left

    assert asyncio.run(run()) == (b"", b"a;")
    assert writes.writes == []
    assert outbox.get(timeout=1) == Chunk("b")


def test_frames_the_loop_has_not_written_count_against_the_limit() -> None:
    """A read can carry far more than `limit` characters (a backlog of upstream
    bytes, a busy loop): while attached its frames wait for the step's end, and
    the chain must still find no room past the limit (in CI, a client that read
    nothing held 7 MB of them). The step's write frees it."""
    outbox = Outbox(limit_chars=10)
    writes = Writes()
    assert outbox.attach(writes.direct())

    async def run() -> None:
        outbox.put(Chunk("01234"))
        assert outbox.room() is None
        outbox.put(Chunk("56789"))
        full = outbox.room()
        assert full is not None  # no room until the step's write
        await asyncio.wait_for(full, timeout=5)
        assert writes.writes == [b"01234;56789;"]
        assert outbox.room() is None

    asyncio.run(run())


def test_an_unsent_rest_counts_against_the_limit_until_taken() -> None:
    outbox = Outbox(limit_chars=10)
    rest = b"0123456789;"
    assert outbox.attach(Writes(rest=rest).direct())
    taking = threading.Event()
    taken: list[bytes] = []

    def request_thread() -> None:
        assert isinstance(outbox.get(timeout=5), Unsent)
        time.sleep(0.05)  # the chain waits meanwhile
        taking.set()
        taken.append(outbox.take_unsent())

    async def run() -> None:
        outbox.put(Chunk("0123456789"))
        full = outbox.room()
        assert full is not None
        thread = threading.Thread(target=request_thread)
        thread.start()
        await asyncio.wait_for(full, timeout=5)  # not when written: when the rest is taken
        assert taking.is_set()
        assert outbox.room() is None
        thread.join(5)

    asyncio.run(run())
    assert taken == [rest]


class Wakes:
    """A parked reader's wake-up: counts its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.called = threading.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.called.set()


@pytest.mark.parametrize(
    ("writes", "steps", "expected"),
    [
        (None, [[ChainSucceeded()]], ChainSucceeded()),  # an outcome
        (None, [[Chunk("a")]], Chunk("a")),  # a chunk, while the loop does not write
        (Writes(rest=b"tail"), [[Chunk("a")]], UNSENT),  # the rest of a write
        (Writes(fail=True), [[Chunk("a")]], WRITE_FAILED),  # a write that failed
    ],
    ids=["outcome", "chunk", "unsent", "write-failed"],
)
def test_a_parked_reader_is_woken_once_by_whatever_is_queued_for_it(
    writes: Writes | None, steps: list[list[Item]], expected: object
) -> None:
    outbox = Outbox()
    if writes is not None:
        assert outbox.attach(writes.direct())
    wake = Wakes()
    assert outbox.park(wake)
    on_loop(outbox, *steps, [ChainSucceeded()])
    assert wake.calls == 1  # once, though more was queued after
    assert outbox.take() == expected


def test_written_chunks_do_not_wake_a_parked_reader() -> None:
    outbox = Outbox()
    writes = Writes()
    assert outbox.attach(writes.direct())
    wake = Wakes()
    assert outbox.park(wake)
    on_loop(outbox, [Chunk("a")], [Chunk("b")])
    assert writes.writes == [b"a;", b"b;"] and wake.calls == 0
    assert outbox.take() is None


def test_a_reader_parked_past_chunks_wakes_for_the_rest_or_for_room() -> None:
    """A JSON reply writes nothing before its end: woken for each chunk, it cost a
    thread's wake-up a chunk. Chunks wait; an outcome wakes it, and so does a chain that
    has no room left (else it would wait for a reader that waits for it)."""
    outbox = Outbox(limit_chars=10)
    wake = Wakes()
    assert outbox.park(wake, chunks=False)
    on_loop(outbox, [Chunk("a")], [Chunk("b")])
    assert wake.calls == 0
    on_loop(outbox, [ChainSucceeded()])
    assert wake.calls == 1
    assert [outbox.take() for _ in range(4)] == [Chunk("a"), Chunk("b"), ChainSucceeded(), None]
    full = Wakes()
    assert outbox.park(full, chunks=False)

    async def filled() -> None:
        outbox.put(Chunk("0123456789"))
        room = outbox.room()
        assert room is not None and full.calls == 1
        assert outbox.take() == Chunk("0123456789")
        await asyncio.wait_for(room, timeout=5)  # taken: room again

    asyncio.run(filled())


def test_there_is_no_parking_while_something_waits() -> None:
    outbox = Outbox()
    outbox.put(ChainSucceeded())
    assert not outbox.park(Wakes())
    assert outbox.take() == ChainSucceeded()
    assert outbox.take() is None


def test_a_wait_for_room_given_up_leaves_the_next_one_working() -> None:
    """A chain cancelled while the reply has no room never awaits its future (room()
    gives a future, not a coroutine, so nothing is left unawaited); a later wait is
    still woken once the reader takes enough."""
    outbox = Outbox(limit_chars=10)

    async def producer() -> None:
        outbox.put(Chunk("0123456789"))
        given_up = outbox.room()
        assert isinstance(given_up, asyncio.Future)
        given_up.cancel()  # as a task cancelled in the wait would leave it
        later = outbox.room()
        assert later is not None and later is not given_up
        loop = asyncio.get_running_loop()
        taken = loop.run_in_executor(None, outbox.get, 1)
        await asyncio.wait_for(later, timeout=5)
        assert await taken == Chunk("0123456789")

    asyncio.run(producer())


def test_a_wait_for_room_ends_when_the_reply_drops_its_output() -> None:
    """discard() (the reply is over) frees a chain waiting for room: no reader will."""
    outbox = Outbox(limit_chars=10)

    async def producer() -> None:
        outbox.put(Chunk("0123456789"))
        full = outbox.room()
        assert full is not None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, outbox.discard)
        await asyncio.wait_for(full, timeout=5)
        assert outbox.room() is None  # what was dropped no longer counts

    asyncio.run(producer())
