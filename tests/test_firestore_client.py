"""The store's Firestore client finds a database that was away as soon as it is back."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.api_core import grpc_helpers
from google.auth.credentials import AnonymousCredentials

from assistant.firestore_client import QuickToReconnect
from assistant.store import Author, FirestoreStore, UserMessage

from .emulator import PROJECT


class _Unplugged:
    """A TCP relay to the emulator whose port can refuse connections (`unplug`), as a
    database the network lost does, and take them again (`plug`)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._port = 0
        self._listener: socket.socket | None = None
        self._links: list[socket.socket] = []
        self.plug()
        self.address = f"127.0.0.1:{self._port}"

    def plug(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port))
        listener.listen(50)
        self._port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def unplug(self) -> None:
        assert self._listener is not None
        # shutdown, not close alone: a thread blocked in accept() keeps a closed socket
        # listening.
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for link in self._links:
            link.close()
        self._links = []

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            far = socket.create_connection(self._target)
            self._links += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass


@pytest.fixture
def unplugged(firestore_emulator: Any, firestore: Any) -> Iterator[_Unplugged]:
    relay = _Unplugged(firestore_emulator.host)
    os.environ["FIRESTORE_EMULATOR_HOST"] = relay.address
    yield relay
    relay.unplug()


def _question(trace_id: str) -> UserMessage:
    return UserMessage("test-assistant", trace_id, None, Author("u1", None, None), "Hello?")


def test_a_database_back_after_an_outage_takes_writes_within_a_second_or_two(
    unplugged: _Unplugged,
) -> None:
    """gRPC waited longer and longer between its tries to reconnect: after a ten-second
    outage, writes went on failing for 4-7 s more with the database back (16 s after a
    40 s one), each failing at once without a try."""
    store = FirestoreStore("assistants", timeout=1)
    store.save_user_message(_question("t-before"))
    unplugged.unplug()
    outage_ends = time.monotonic() + 10
    for attempt in range(100):
        if time.monotonic() > outage_ends:
            break
        with pytest.raises(Exception):  # noqa: B017 (unavailable or out of time)
            store.save_user_message(_question(f"t-away-{attempt}"))
        time.sleep(0.5)
    unplugged.plug()
    back = time.monotonic()
    while True:
        try:
            store.save_user_message(_question("t-after"))
            break
        except Exception:
            assert time.monotonic() - back < 3, "the database is back, writes still fail"
            time.sleep(0.1)


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
