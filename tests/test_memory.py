"""assistant/memory.py: giving memory back is safe to call any time, and does give it back."""

from __future__ import annotations

import gc
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from assistant import memory
from assistant.limits import replies_in_flight

GLIBC = platform.libc_ver()[0] == "glibc"
ROOT = Path(__file__).resolve().parent.parent
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


def test_a_worker_freezes_its_startup_objects_and_collects_young_ones_less_often() -> None:
    """In a process of its own: freezing is for the whole process."""
    script = (
        "import gc, json; from assistant import memory; memory.start_in_worker(None); "
        "print(json.dumps([gc.get_freeze_count(), gc.get_threshold()]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    frozen, thresholds = json.loads(done.stdout)
    assert frozen > 1_000  # everything imported: no collection walks it again
    assert tuple(thresholds) == memory.GC_THRESHOLDS
    assert memory.GC_THRESHOLDS[0] > gc.get_threshold()[0]  # this process: Python's own
