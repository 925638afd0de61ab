"""The client-gone probe on a socket with a send timeout (as `_bound_sending` leaves it):
a quiet client is still there, at once; a closed one is gone."""

from __future__ import annotations

import socket
import time

from assistant.http import _client_gone_probe


def test_a_quiet_client_is_not_gone_and_the_probe_does_not_wait() -> None:
    ours, client = socket.socketpair()
    ours.settimeout(5)
    try:
        gone = _client_gone_probe({"gunicorn.socket": ours})
        started = time.monotonic()
        assert gone() is False
        assert time.monotonic() - started < 0.5
        client.close()
        assert gone() is True
    finally:
        ours.close()


def test_a_client_that_sent_more_is_not_gone() -> None:
    ours, client = socket.socketpair()
    ours.settimeout(5)
    try:
        client.sendall(b"x")
        assert _client_gone_probe({"gunicorn.socket": ours})() is False
    finally:
        ours.close()
        client.close()
