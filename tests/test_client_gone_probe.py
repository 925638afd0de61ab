"""The client-gone probe on a socket with a send timeout (as `_bound_sending` leaves it):
a quiet client is still there, at once; a closed one is gone."""

from __future__ import annotations

import socket
import threading
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


def test_two_threads_may_probe_at_once() -> None:
    """The request thread probes once a second and the I/O loop before a next provider:
    at the same moment, poll() refused the second ("concurrent poll() invocation") and
    a healthy reply ended as internal_error, its fall-through lost (a reviewer's)."""
    ours, client = socket.socketpair()
    ours.settimeout(5)
    gone = _client_gone_probe({"gunicorn.socket": ours})
    answers: list[bool] = []
    failures: list[BaseException] = []

    def probe() -> None:
        try:
            answers.extend(gone() for _ in range(20_000))
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=probe) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        ours.close()
        client.close()
    assert failures == [] and answers == [False] * 40_000
