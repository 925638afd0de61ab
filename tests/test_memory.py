"""assistant/memory.py: giving memory back is safe to call any time, and does give it back."""

from __future__ import annotations

import gc
import json
import os
import platform
import time
import weakref

import pytest

from assistant import memory
from assistant.limits import replies_in_flight

from .conftest import python_in_own_process

GLIBC = platform.libc_ver()[0] == "glibc"
MB = 1024 * 1024


def test_release_and_trim_can_be_called_again_and_again() -> None:
    for _ in range(3):
        memory.release()
        assert isinstance(memory.trim(), bool)


def test_trim_is_there_on_glibc_only() -> None:
    assert (memory.load_malloc_trim(memory._libc_version()) is not None) == GLIBC
    assert memory.load_malloc_trim(None) is None  # confstr has no glibc version: musl, macOS
    assert memory.load_malloc_trim("musl 1.2") is None


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="no /proc")
def test_rss_is_read_from_proc() -> None:
    rss = memory.rss_bytes()
    assert rss is not None and 10 * MB < rss < 10_000 * MB


@pytest.mark.skipif(not GLIBC, reason="the janitor runs on glibc only")
def test_the_janitor_gives_back_cyclic_garbage_once_idle() -> None:
    idle = False
    janitor = memory.Janitor(lambda: idle, growth=0.05)
    gc.disable()  # the garbage must wait for the janitor, as on a quiet worker
    try:
        # 100 MB of 1 KB buffers in reference cycles: freed only by a collection.
        for _ in range(100_000):
            cycle: list[object] = [bytearray(1000)]
            cycle.append(cycle)
        del cycle
        grown = memory.rss_bytes()
        assert grown is not None
        assert not janitor.check()  # busy: left alone, however large
        idle = True
        assert janitor.check()
        after = memory.rss_bytes()
        assert after is not None and after < grown - 50 * MB
        assert not janitor.check()  # nothing grew since: nothing to do
        assert janitor.releases == 1
    finally:
        gc.enable()


@pytest.mark.skipif(not GLIBC, reason="the janitor runs on glibc only")
def test_the_janitor_thread_starts_once_and_stops() -> None:
    janitor = memory.Janitor(lambda: True, check_seconds=0.01)
    assert janitor.start()
    assert not janitor.start()
    janitor.stop()
    janitor.stop()


def test_no_reply_in_flight_follows_the_slots_taken_and_released() -> None:
    assert memory.no_reply_in_flight()
    slot = replies_in_flight.take("memory-test-user", per_user=1, total=1)
    try:
        assert replies_in_flight.count() == 1
        assert not memory.no_reply_in_flight()
    finally:
        slot.release()
    assert memory.no_reply_in_flight() and replies_in_flight.count() == 0


def test_a_worker_freezes_its_startup_objects_and_collects_on_a_clock() -> None:
    """In a process of its own: freezing and the collector's mode are for the whole process."""
    script = (
        "import gc, json, threading; from assistant import memory; memory.start_in_worker(); "
        "names = [t.name for t in threading.enumerate()]; "
        "print(json.dumps([gc.get_freeze_count(), gc.isenabled(), names]))"
    )
    frozen, automatic, threads = json.loads(python_in_own_process(script))
    assert frozen > 1_000  # everything imported: no collection walks it again
    assert not automatic  # Python's own collections are off: the clock collects
    assert "gc-collector" in threads


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_the_collector_frees_garbage_cycles_on_its_clock_and_takes_older_generations_in_turn() -> (
    None
):
    generations: list[int] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            generations.append(info["generation"])

    collector = memory.Collector(seconds=0.001)
    gc.callbacks.append(note)
    try:
        collector.start()
        assert not gc.isenabled()
        cycle = weakref.ref(_Cycle())
        deadline = time.monotonic() + 10
        while (cycle() is not None or collector.collections < 100) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert cycle() is None  # garbage only a collection frees, freed without a count
    finally:
        collector.stop()
        gc.callbacks.remove(note)
    assert gc.isenabled()  # stop() gives the collections back to Python
    first_hundred = generations[:100]
    assert first_hundred.count(2) == 1 and first_hundred[99] == 2
    assert first_hundred.count(1) == 9 and first_hundred[9] == 1
    assert first_hundred.count(0) == 90
