"""The store's Firestore client finds a database that was away as soon as it is back."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import grpc_helpers
from google.auth.credentials import AnonymousCredentials

from assistant.firestore_client import QuickToReconnect
from assistant.store import Author, FirestoreStore, UserMessage

from .database_relay import DatabaseRelay
from .emulator import PROJECT


@pytest.fixture
def unplugged(firestore_emulator: Any, firestore: Any) -> Iterator[DatabaseRelay]:
    relay = DatabaseRelay(firestore_emulator.host)
    os.environ["FIRESTORE_EMULATOR_HOST"] = relay.address
    yield relay
    relay.close()


def _question(trace_id: str) -> UserMessage:
    return UserMessage("test-assistant", trace_id, None, Author("u1", None, None), "Hello?")


def _writes_again_within(store: FirestoreStore, seconds: float) -> None:
    back = time.monotonic()
    while True:
        try:
            store.save_user_message(_question("t-after"))
            return
        except Exception:
            assert time.monotonic() - back < seconds, "the database is back, writes still fail"
            time.sleep(0.1)


def _fail_for(store: FirestoreStore, seconds: float) -> None:
    outage_ends = time.monotonic() + seconds
    for attempt in range(100):
        if time.monotonic() > outage_ends:
            return
        with pytest.raises(Exception):  # noqa: B017 (unavailable or out of time)
            store.save_user_message(_question(f"t-away-{attempt}"))
        time.sleep(0.5)


def test_a_database_back_after_an_outage_takes_writes_within_a_second_or_two(
    unplugged: DatabaseRelay,
) -> None:
    """gRPC waited longer and longer between its tries to reconnect: after a ten-second
    outage, writes went on failing for 4-7 s more with the database back (16 s after a
    40 s one), each failing at once without a try."""
    store = FirestoreStore("assistants", timeout=1)
    store.save_user_message(_question("t-before"))
    unplugged.unplug()
    _fail_for(store, 10)
    unplugged.plug()
    _writes_again_within(store, 3)


def test_a_database_the_network_lost_is_found_within_a_second_or_two_of_its_return(
    unplugged: DatabaseRelay,
) -> None:
    """A network that drops packets says nothing: one attempt to connect waits while
    the kernel sends its SYN again 1, 3, 7 and 15 s after the first, and gRPC let an
    attempt take 20 s: with the way back at 12 s, writes failed 8.5-8.9 s more (a
    reviewer saw a reply's save fail 5 s after the database's return). Attempts of
    10 s start over sooner: 1.5-2.1 s here."""
    unplugged.blackhole()  # before the first connection
    store = FirestoreStore("assistants", timeout=1)
    _fail_for(store, 12)
    unplugged.plug()
    _writes_again_within(store, 5)


def test_a_database_slow_to_answer_a_new_connection_is_still_reached(
    unplugged: DatabaseRelay,
) -> None:
    """An attempt to connect cut short (at 5 s) never reached a database whose
    handshake took 6 s, and its messages were lost (a reviewer); gRPC's 20 s only
    found a database back from a network outage late. At 10 s, both."""
    unplugged.answer_after(6)
    FirestoreStore("assistants", timeout=9).save_user_message(_question("t-slow"))


def test_the_channel_to_googles_servers_reconnects_as_quickly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Off the emulator the library builds its channel elsewhere, with its own options:
    ours are added there too, and the library's kept (the channel is made here, at
    api_core's boundary, where no connection is made)."""
    made: list[list[tuple[str, Any]]] = []
    real = grpc_helpers.create_channel

    def recorded(target: str, **kwargs: Any) -> Any:
        made.append(list(kwargs["options"]))
        return real(target, **kwargs)

    monkeypatch.setattr(grpc_helpers, "create_channel", recorded)
    client = QuickToReconnect(project=PROJECT, credentials=AnonymousCredentials())
    assert client._firestore_api is not None
    (options,) = made
    assert ("grpc.max_reconnect_backoff_ms", 1000) in options
    assert ("grpc.keepalive_time_ms", 30000) in options
