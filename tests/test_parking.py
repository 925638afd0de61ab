"""Parked waits (assistant/parking.py) on the real I/O loop: each resumed once, by what
it waits for or by its time, whichever comes first."""

from __future__ import annotations

import concurrent.futures
import random
import threading
import time

from assistant import aio
from assistant.chain import ChainSucceeded, Item
from assistant.outbox import Outbox
from assistant.parking import Park, until_done

from .test_outbox import Wakes


def test_a_park_resumes_once_at_its_time_or_at_an_item() -> None:
    """`Park.arm()` on the real I/O loop: the timer, or an item first (then the timer is
    spent on nothing)."""
    timed, outbox = Wakes(), Outbox()
    Park(0.05, outbox.park).arm(timed)
    assert timed.called.wait(5)
    early, outbox = Wakes(), Outbox()
    Park(0.2, outbox.park).arm(early)
    aio.submit(_put(outbox, ChainSucceeded())).result(timeout=5)
    assert early.called.wait(5)
    time.sleep(0.4)  # past the timer
    assert (timed.calls, early.calls) == (1, 1)
    at_once = Wakes()
    Park(60, outbox.park).arm(at_once)  # the outcome still waits: resumed now
    assert at_once.calls == 1


def test_a_park_on_a_store_write_resumes_once_when_it_is_done_or_its_time_is_up() -> None:
    write: concurrent.futures.Future[str] = concurrent.futures.Future()
    done, slow = Wakes(), Wakes()
    until_done(write, 60).arm(done)
    until_done(concurrent.futures.Future(), 0.05).arm(slow)  # never done
    write.set_result("id")
    assert done.called.wait(5) and slow.called.wait(5)
    finished = Wakes()
    until_done(write, 60).arm(finished)  # done already: resumed now
    assert (done.calls, slow.calls, finished.calls) == (1, 1, 1)


def test_many_parks_from_many_threads_each_end_once_at_their_time() -> None:
    """One clock keeps every deadline: parks armed from several threads at once, in any
    order of their times, all end, each once, none before its time (less EARLY_SECONDS)."""
    ends: dict[int, float] = {}
    lock = threading.Lock()
    armed: dict[int, float] = {}

    def arm(n: int, seconds: float) -> None:
        def resume() -> None:
            with lock:
                assert n not in ends
                ends[n] = time.monotonic()

        armed[n] = time.monotonic() + seconds
        Park(seconds, Outbox().park).arm(resume)

    times = [random.uniform(0.01, 0.3) for _ in range(200)]
    threads = [threading.Thread(target=lambda k=k: [arm(n, times[n]) for n in range(k, 200, 4)])
               for k in range(4)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.6)
    assert sorted(ends) == list(range(200))
    assert all(ends[n] >= armed[n] - 0.011 for n in ends)


def test_a_resume_that_fails_does_not_cost_the_others_due_with_it(capsys) -> None:
    resumed = threading.Event()

    def failing() -> None:
        raise RuntimeError("can't start new thread")

    never = Outbox().park  # nothing is ever queued: the clock ends both
    Park(0.05, never).arm(failing)
    Park(0.05, never).arm(resumed.set)
    assert resumed.wait(5)
    assert "park.resume_failed" in capsys.readouterr().out


async def _put(outbox: Outbox, item: Item) -> None:
    outbox.put(item)
