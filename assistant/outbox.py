"""What the chain produced and the request thread has not yet taken: bounded.

The chain (on the I/O loop) puts items; the request thread takes them and
writes them to the client. When the client reads slowly, or not at all, the
request thread is stuck in a write and items pile up here. Past `limit`
characters of unsent chunk text the chain waits (`room()`) before it reads
the upstream any further, so the provider's own socket fills and TCP slows
it down: a reply holds at most about `limit` characters here, whatever the
client does (README "Slow, stuck and greedy clients"). A client that never reads again is
ended by the send timeout on the request thread, which cancels the chain
while it waits here.

Outcomes and other items are never held back: only text counts.

The request thread may take every chunk already waiting at once
(`next_chunk()`), so that one wake-up writes them all: each is still its
own frame, and none waits for another.
"""

from __future__ import annotations

import asyncio
import queue
import threading

from .chain import Chunk, Item

DEFAULT_LIMIT_CHARS = 64 * 1024


class Outbox:
    def __init__(self, limit_chars: int = DEFAULT_LIMIT_CHARS) -> None:
        self._items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._limit = limit_chars
        self._lock = threading.Lock()
        self._chars = 0  # chunk text put and not yet taken
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._held: Item | None = None  # taken by next_chunk() and not a chunk: get() gives it

    def put(self, item: Item) -> None:
        """Any thread; never blocks (the chain calls `room()` first when it can wait)."""
        if isinstance(item, Chunk):
            with self._lock:
                self._chars += len(item.text)
        self._items.put(item)

    async def room(self) -> None:
        """On the loop: return once fewer than `limit` characters are waiting to be sent."""
        while True:
            with self._lock:
                if self._chars < self._limit:
                    return
                event = asyncio.Event()
                self._waiter = (asyncio.get_running_loop(), event)
            await event.wait()

    def discard(self) -> None:
        """Drop whatever is still waiting (the reply ended: nobody will take it)."""
        self._held = None
        while True:
            try:
                self._items.get_nowait()
            except queue.Empty:
                return

    def get(self, timeout: float) -> Item:
        """The request thread: the next item; queue.Empty after `timeout` seconds."""
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self._taken(self._items.get(timeout=timeout))

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

    def _taken(self, item: Item) -> Item:
        if isinstance(item, Chunk):
            with self._lock:
                self._chars -= len(item.text)
                waiter = self._waiter if self._chars < self._limit else None
                if waiter is not None:
                    self._waiter = None
            if waiter is not None:
                loop, event = waiter
                loop.call_soon_threadsafe(event.set)
        return item
