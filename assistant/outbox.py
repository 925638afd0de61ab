"""What the chain produced and the request thread has not yet taken: bounded.

The chain (on the I/O loop) puts items; the request thread takes them and
writes them to the client. When the client reads slowly, or not at all, the
request thread is stuck in a write and items pile up here. Past `limit`
characters of chunk text held here (queued, or framed by the loop and not
yet written: below) the chain waits (`room()`) before it reads
the upstream any further, so the provider's own socket fills and TCP slows
it down: a reply holds at most about `limit` characters here, whatever the
client does (README "Slow, stuck and greedy clients"). A client that never reads again is
ended by the send timeout on the request thread (or, when half of the
threads already wait on clients, a far shorter one: limits.py), which
cancels the chain while it waits here.

Outcomes and other items are never held back: only text counts.

The request thread may take every chunk already waiting at once
(`next_chunk()`), so that one wake-up writes them all: each is still its
own frame, and none waits for another.

While the request thread has lent the client's socket to the loop
(`attach()`, direct.py), a chunk does not wait for the request thread: its
frame is written by the loop at the end of the loop step it arrived in, with
the frames of the other chunks that came in the same upstream read (each
still its own event, none held back for a later one: the busier the
instance, the more reads carry several chunks, and the fewer writes it
makes). What that write could not send is kept here, the socket goes back
to the request thread, and `UNSENT` in the queue wakes it to send the rest;
a write that failed puts `WRITE_FAILED` there. Writes happen under the
lock, so once `detach()` returns the loop writes nothing more; and
`detach()` hands back what the loop left (the rest of a write, frames not
yet written), which the request thread sends before anything of its own:
the queue alone could not order them, as a step's frames are written after
items it queued (its outcome, say).

While the loop writes the chunks, the reply needs no thread at all: under
the server it lets go of its request thread (parking.py) until something is
queued here for it (`park()`), or a time it names has passed.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .chain import Chunk, Item

DEFAULT_LIMIT_CHARS = 64 * 1024


class Unsent:
    """The loop left part of a write unsent: take it (`take_unsent()`) and send it."""


class WriteFailed:
    """A write from the loop failed: the client is gone."""


UNSENT = Unsent()
WRITE_FAILED = WriteFailed()

Entry = Item | Unsent | WriteFailed


@dataclass(frozen=True)
class DirectWrites:
    """What the loop needs to write chunks itself."""

    frame: Callable[[Chunk], bytes]  # a chunk's SSE frame (the reply records its text)
    write: Callable[[bytes], bytes]  # frames written now; returns the bytes the socket did not take


class Outbox:
    def __init__(self, limit_chars: int = DEFAULT_LIMIT_CHARS) -> None:
        self._items: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        self._limit = limit_chars
        self._lock = threading.Lock()
        # Chunk text held here: queued and not taken, framed by the loop and not
        # written, or (bytes) the unsent rest of its last write.
        self._chars = 0
        self._frames_chars = 0  # of it, in `_frames`
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._held: Entry | None = None  # taken by next_chunk() and not a chunk: get() gives it
        self._direct: DirectWrites | None = None  # set: the loop writes chunks itself
        self._frames: list[bytes] = []  # frames of this loop step, not yet written
        self._flush_due = False
        self._unsent = b""  # the rest of the loop's last write, as the socket must get it
        self._output_waiting = 0  # chunks in the queue, and the unsent rest: the loop must wait
        self.last_direct_write = 0.0  # time.monotonic() of the loop's last write
        self._wake: Callable[[], None] | None = None  # a parked reader's (`park()`)
        self._wake_for_chunks = True  # else the parked reader wakes for the rest, or for room

    def put(self, item: Item) -> None:
        """The chain, on the loop; never blocks (it calls `room()` first when it can wait).

        While attached, a chunk's frame waits for the end of this loop step.
        """
        with self._lock:
            if isinstance(item, Chunk):
                if self._direct is not None:
                    self._frames.append(self._direct.frame(item))  # counted once it is made
                    self._chars += len(item.text)
                    self._frames_chars += len(item.text)
                    if not self._flush_due:
                        self._flush_due = True
                        asyncio.get_running_loop().call_soon(self._flush)
                    return
                self._chars += len(item.text)
                self._output_waiting += 1
            wake = self._queue(item)
        if wake is not None:
            wake()

    def _queue(self, entry: Entry) -> Callable[[], None] | None:
        """`entry` queued for the request thread; returns the parked reader's wake-up,
        for the caller to call once it has let go of the lock. Under the lock."""
        self._items.put(entry)
        if isinstance(entry, Chunk) and not self._wake_for_chunks:
            return None  # taken with the rest, or when the chain needs room (`room()`)
        wake, self._wake = self._wake, None
        return wake

    def attach(self, direct: DirectWrites) -> bool:
        """The request thread: let the loop write chunks itself from now on.

        Only when no output waits here (it must go out first, in order);
        False otherwise.
        """
        with self._lock:
            if self._output_waiting:
                return False
            self._direct = direct
            return True

    def detach(self) -> tuple[bytes, bytes]:
        """The request thread: take the socket back. When this returns no write is
        under way. It returns what the loop left, to send first, in this order:
        the rest of its last write (bytes for the socket as they are) and the
        frames it has not written yet (to be written like any frame)."""
        with self._lock:
            self._direct = None
            frames, self._frames = self._frames, []
            self._chars -= self._frames_chars
            self._frames_chars = 0
            unsent = self._take_unsent()
            waiter = self._room_made()
        _wake_threadsafe(waiter)
        return unsent, b"".join(frames)

    def take_unsent(self) -> bytes:
        """The request thread, woken by UNSENT: the rest of the loop's last write
        (b"" if `detach()` already took it)."""
        with self._lock:
            unsent = self._take_unsent()
            waiter = self._room_made()
        _wake_threadsafe(waiter)
        return unsent

    def _take_unsent(self) -> bytes:
        unsent, self._unsent = self._unsent, b""
        if unsent:
            self._output_waiting -= 1
            self._chars -= len(unsent)
        return unsent

    def _room_made(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None:
        """The wait for room, taken off if there is room now: the caller ends it once it
        has let go of the lock. Under the lock."""
        if self._waiter is None or self._chars >= self._limit:
            return None
        waiter, self._waiter = self._waiter, None
        return waiter

    def _flush(self) -> None:
        """On the loop, once per step with chunks: their frames in one write."""
        wake = None
        with self._lock:
            self._flush_due = False
            if self._direct is None or not self._frames:
                return  # detached meanwhile: the request thread took the frames
            data = b"".join(self._frames)
            self._frames = []
            self._chars -= self._frames_chars
            self._frames_chars = 0
            try:
                rest = self._direct.write(data)
            except OSError:
                self._direct = None
                wake = self._queue(WRITE_FAILED)
            else:
                self.last_direct_write = time.monotonic()
                if rest:  # held here until the request thread takes it: it counts
                    self._direct = None
                    self._unsent = rest
                    self._chars += len(rest)
                    self._output_waiting += 1
                    wake = self._queue(UNSENT)
            waiter = self._room_made()
        if waiter is not None:
            _done(waiter[1])  # this is its loop
        if wake is not None:
            wake()

    def room(self) -> asyncio.Future[None] | None:
        """On the loop, before each chunk: None while fewer than `limit` characters
        wait to be sent, else a future done once that is so. (A future, not a
        coroutine: a chain cancelled before it awaits it leaves nothing
        unawaited; and None, no object at all, while there is room. Read without
        the lock first: a stale count only moves the wait by a chunk, and the
        wait itself counts again under the lock.)"""
        if self._chars < self._limit:
            return None
        with self._lock:
            if self._chars < self._limit:
                return None
            loop = asyncio.get_running_loop()
            room: asyncio.Future[None] = loop.create_future()
            self._waiter = (loop, room)
            wake, self._wake = self._wake, None  # a reader parked past chunks takes them
        if wake is not None:
            wake()
        return room

    def discard(self) -> None:
        """Drop whatever is still waiting (the reply ended: nobody will take it), and
        free a wait for room: nothing will be taken to free it otherwise. (Every caller
        cancels the chain first; one still running would go on queueing here, for
        nobody, and could wait for room again.)"""
        self.detach()
        self._held = None
        self._wake = None
        with self._lock:
            waiter, self._waiter = self._waiter, None
            self._chars = 0
        _wake_threadsafe(waiter)
        while True:
            try:
                self._items.get_nowait()
            except queue.Empty:
                return

    def get(self, timeout: float) -> Entry:
        """The request thread: the next item; queue.Empty after `timeout` seconds."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self._taken(self._items.get(timeout=timeout))

    def take(self) -> Entry | None:
        """The request thread: the next item, or None if there is none yet; never waits."""
        try:
            return self.get(timeout=0)
        except queue.Empty:
            return None

    def park(self, wake: Callable[[], None], chunks: bool = True) -> bool:
        """The request thread, letting go of its thread (parking.py): `wake` is called
        once, on the loop, as soon as something is queued here; with `chunks` False,
        as soon as something other than a chunk is, or the chunks fill the room (a
        JSON reply, which writes nothing before its end: woken for each chunk, it
        cost a thread's wake-up a chunk, 40% more CPU than waiting on a thread).
        False (and nothing kept) when something is queued already: take it instead."""
        with self._lock:
            if self._held is not None or not self._items.empty():
                return False
            self._wake, self._wake_for_chunks = wake, chunks
            return True

    def next_chunk(self) -> Chunk | None:
        """The request thread: the next item if it is a chunk already waiting; never waits."""
        if self._held is not None:
            return None
        try:
            item = self._taken(self._items.get_nowait())
        except queue.Empty:
            return None
        if isinstance(item, Chunk):
            return item
        self._held = item  # the next get() returns it, in order
        return None

    def _taken(self, item: Entry) -> Entry:
        if isinstance(item, Chunk):
            with self._lock:
                self._output_waiting -= 1
                self._chars -= len(item.text)
                waiter = self._room_made()
            _wake_threadsafe(waiter)
        return item


def _wake_threadsafe(
    waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None,
) -> None:
    if waiter is not None:
        loop, room = waiter
        loop.call_soon_threadsafe(_done, room)


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled with the chain that waited for it
        future.set_result(None)
