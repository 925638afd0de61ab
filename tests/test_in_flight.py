"""The instance's count of replies in flight, with evicted ones counted apart (limits.py)."""

from __future__ import annotations

import time

import pytest

from assistant.errors import RequestError
from assistant.limits import LAST_WRITE_GRACE_SECONDS, STUCK_SECONDS, InFlight, Slot


def _stuck(slot: Slot, evicted: list[Slot]) -> None:
    slot.writing_since = time.monotonic() - STUCK_SECONDS - 1
    slot.evict = lambda: evicted.append(slot)


def _refused(in_flight: InFlight) -> int:
    with pytest.raises(RequestError) as refused:
        in_flight.take("someone", per_user=10, total=2)
    return refused.value.status


def test_an_evicted_reply_frees_its_place_once_and_only_once() -> None:
    in_flight, evicted = InFlight(), []
    first, second = (in_flight.take("someone", per_user=10, total=2) for _ in range(2))
    _stuck(first, evicted)

    third = in_flight.take("someone", per_user=10, total=2)  # first gives its place
    assert evicted == [first]
    assert in_flight.count() == 3  # first holds its slot until its response closes
    assert _refused(in_flight) == 503  # two live replies: full, and none other is stuck

    first.release()
    first.release()  # harmless: counted once
    assert in_flight.count() == 2
    assert _refused(in_flight) == 503  # still two live: its release freed no second place

    second.release()
    fourth = in_flight.take("someone", per_user=10, total=2)
    assert in_flight.count() == 2
    for slot in (third, fourth):
        slot.release()
    assert in_flight.count() == 0
    assert in_flight.take("someone", per_user=10, total=2) is not None


def test_waiting_writers_are_capped_at_half_the_threads() -> None:
    in_flight = InFlight()
    slots = [in_flight.take("someone", per_user=10, total=10) for _ in range(4)]
    assert all(slot.write_begins() for slot in slots)  # in-process: no cap
    for slot in slots:
        slot.write_ends()
    in_flight.set_threads(4)
    assert [slot.write_begins() for slot in slots] == [True, True, False, False]
    slots[0].write_ends()
    slots[0].write_ends()  # harmless: given back once
    assert slots[2].write_begins()
    assert not slots[3].write_begins()


def test_a_write_whose_pieces_go_out_is_not_stuck() -> None:
    """A long write to a slow but steady reader: each piece that goes out restarts the
    clock, so a full instance does not evict it as a client that takes nothing."""
    slot = Slot(lambda slot: None)
    assert slot.write_begins()
    _stuck(slot, [])
    assert slot.stuck(time.monotonic())
    slot.write_moved_on()  # a piece of it went out
    assert not slot.stuck(time.monotonic())
    slot.write_ends()
    slot.write_moved_on()  # no write under way: nothing to move on
    assert slot.writing_since is None


def test_a_reply_taking_its_last_write_counts_off_its_users_limit_briefly() -> None:
    """A client that read `[DONE]` and asked again at once was refused 429 now and then:
    the slot goes back only after the server's write returns. One that does not take
    its last write counts again after LAST_WRITE_GRACE_SECONDS."""
    in_flight = InFlight()
    first = in_flight.take("ada", per_user=1, total=3)
    first.last_write_begins()
    second = in_flight.take("ada", per_user=1, total=3)  # let in beside it
    assert in_flight.count() == 2  # the instance counts both
    with pytest.raises(RequestError) as refused:
        in_flight.take("ada", per_user=1, total=3)  # the second is no last write
    assert refused.value.code == "rate_limited"
    second.last_write_begins()  # two at once in their grace: one counted off, not both
    with pytest.raises(RequestError):
        in_flight.take("ada", per_user=1, total=3)
    first.last_write_since = time.monotonic() - LAST_WRITE_GRACE_SECONDS
    second.release()
    with pytest.raises(RequestError):
        in_flight.take("ada", per_user=1, total=3)  # the first's write, not taken, counts
    first.release()
    in_flight.take("ada", per_user=1, total=3).release()
    assert in_flight.count() == 0
