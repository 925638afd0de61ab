"""Handing memory back to the OS once a burst is over: a janitor thread per worker.

Why (issue 8, `bench/abuse.py --attacks non-readers`): 100 clients that open
a 2 MB stream and never read it lifted the gunicorn worker's RSS from 47 to
63 MB, and it stayed there after they left. Nothing is leaked; two things
keep the memory:

1. **Cyclic garbage waits for a full collection.** Each reply ended while
   its client was stuck leaves its cancelled chain task in a reference cycle
   (its frames, from Chain.run down to Outbox.room, and their traceback
   hold each other, and with them the upstream request, response and
   connection objects and their buffers): about 10,000 objects per 62 such
   replies. Python collects the oldest generation
   only once the objects waiting for it reach a quarter of those that
   survived the last full collection, so on a quiet instance they can wait
   indefinitely. `gc.collect()` frees them.
2. **glibc keeps what was freed.** All upstream I/O runs on one thread (the
   asyncio loop, assistant/aio.py), so those buffers live in that thread's
   malloc arena, which grew to 15-20 MB. Freed chunks stay in the arena
   unless they are at its very top: a few small live objects allocated late
   pin the rest. `malloc_trim(0)` gives back every free page, wherever it is
   in an arena.

Measured, the worker's RSS after one round of that attack, against before it
(bench/results/abuse-2026-12-01-memory*.txt): +33 % as it was; `malloc_trim`
alone +16-20 %; `gc.collect()` alone +35 % (the memory is free, but not
given back); both +8 %, and later rounds +1 % each. Limiting the number of
arenas (M_ARENA_MAX 1 or 2), a lower M_MMAP_THRESHOLD or M_TRIM_THRESHOLD,
measured with and without the trim, changed nothing beyond the noise, so no
allocator option is set here.

When: a full collection holds the GIL for about 50 ms (56,000 objects, on
this 2-core machine) and the trim a few ms, so the janitor runs them only
when the worker is idle and there is something to gain. Every CHECK_SECONDS
it reads the worker's RSS; when no reply is in flight (assistant/limits.py:
whatever the replies held is garbage by then) and RSS is GROWTH above where
the last release left it, it collects and trims, once. It never runs while
replies stream: not during an attack that holds every stream place, and not
between the replies of a busy instance unless its memory grew. The check
costs a read of /proc/self/statm. On Cloud Run, where an instance gets CPU
only while it serves requests, a release that falls between requests waits
for the next one's CPU.

Without glibc (musl, macOS) or without /proc there is no trim and nothing to
read: `start()` does nothing.

**The collector's own CPU** (issue 11, README "Speed"). Under load the cyclic
collector ran often and long: at 200 and 500 streams it took ~12 % of the
worker's CPU (0.88 s of ~7 s; gc callbacks timing each collection), a third
of it in full collections that walked every object imported at start. So
each worker, once its app is loaded, freezes what exists then
(`gc.freeze()`: startup objects live as long as the process, and no
collection walks them again).

And it collects on a clock, not on a count (`Collector`). Python collects
its youngest generation every so many allocations; a stream's own objects
(its request, response, decoders, frames) live for the whole stream, so at
200 streams every such collection walked thousands of live objects only to
move them to the next generation, which then walked them again: still
~6 % of the CPU with a threshold of 5,000 (gen0 2.3 ms a run, gen1 19 ms,
bench/results/stream_cpu-round4.txt). Collected once a second instead, most
streams' objects are gone before any collection sees them, and a
collection walks only the streams alive at that moment. Every tenth
collection takes the middle generation too and every hundredth all of
them, the ratios Python's own thresholds (700, 10, 10) keep. Garbage cycles
wait up to a second (a reply leaves a few); an idle instance is still
collected in full by the janitor.
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from collections.abc import Callable

from .limits import replies_in_flight

CHECK_SECONDS = 1.0
GROWTH = 0.10  # RSS above where the last release left it, as a fraction of that
COLLECT_SECONDS = 1.0  # the young generation is collected this often
OLDER_EVERY = 10  # every 10th collection takes the middle generation too, every 100th all


def _libc_version() -> str | None:
    """The C library's version, as in "glibc 2.36"; None when it is not glibc."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None


def load_malloc_trim(libc_version: str | None) -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None when the C library (`_libc_version()`) is not glibc."""
    if not libc_version or not libc_version.startswith("glibc"):
        return None
    try:
        function = ctypes.CDLL(None).malloc_trim  # from the C library already loaded
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


_malloc_trim = load_malloc_trim(_libc_version())


def trim() -> bool:
    """Give the OS every free page of every malloc arena; False when it gave none
    back or this is not glibc."""
    return _malloc_trim is not None and bool(_malloc_trim(0))


def release() -> None:
    """Free the cyclic garbage, then give the freed memory back (see the module docstring)."""
    gc.collect()
    trim()


def rss_bytes() -> int | None:
    """This process's resident set, or None without /proc."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


class Janitor:
    """Calls `release()` once the worker is idle and its RSS has grown (module docstring)."""

    def __init__(
        self, idle: Callable[[], bool], check_seconds: float = CHECK_SECONDS,
        growth: float = GROWTH,
    ) -> None:  # fmt: skip
        self.idle, self.check_seconds, self.growth = idle, check_seconds, growth
        self.releases = 0
        self._floor = rss_bytes() or 0  # RSS where the last release (or the start) left it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One check (the thread makes one every `check_seconds`); True if it released."""
        rss = rss_bytes()
        if rss is None or rss < self._floor * (1 + self.growth) or not self.idle():
            return False
        release()
        self.releases += 1
        self._floor = rss_bytes() or rss
        return True

    def start(self) -> bool:
        """Start the thread; False (and no thread) where there is nothing to give back."""
        if _malloc_trim is None or rss_bytes() is None or self._thread is not None:
            return False
        self._thread = threading.Thread(target=self._run, name="memory-janitor", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.check_seconds):
            self.check()


def no_reply_in_flight() -> bool:
    """True when this worker holds no reply (assistant/limits.py's count)."""
    return replies_in_flight.count() == 0


class Collector:
    """The cyclic collector run on a clock, on a thread of its own (module docstring).

    `start()` turns Python's own collections off; `stop()` turns them back on.
    """

    def __init__(self, seconds: float = COLLECT_SECONDS) -> None:
        self.seconds = seconds
        self.collections = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        gc.disable()
        self._thread = threading.Thread(target=self._run, name="gc-collector", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        gc.enable()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            self.collections += 1
            if self.collections % (OLDER_EVERY * OLDER_EVERY) == 0:
                gc.collect(2)
            elif self.collections % OLDER_EVERY == 0:
                gc.collect(1)
            else:
                gc.collect(0)


def start_in_worker() -> None:
    """In each worker once its app is loaded (server.py's `post_worker_init`): what
    exists frozen, the collector on its clock, and one janitor."""
    gc.freeze()
    Collector().start()
    Janitor(no_reply_in_flight).start()
