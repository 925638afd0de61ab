"""The token certs cache (README "Who may call"): one fetch per max-age, one rate-limited early
re-fetch on an unknown key id, stale certs kept through an outage, and a
503 only when none were ever had; no request waits on a refresh, and one
fetch at a time. A real certs endpoint on loopback; only the clock is ours,
so max-age can pass without waiting for it, and most tests run the
background refresh in the caller, to count its fetch at once.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from assistant import certs
from assistant.certs import (
    DEFAULT_MAX_AGE_SECONDS,
    EARLY_REFETCH_SECONDS,
    MOST_WAITING_FOR_ITS_KEY,
    RETRY_AFTER_FAILURE_SECONDS,
    CertCache,
    CertsUnavailable,
    fetch_certs,
    max_age,
)

from .firebase_tokens import CertsServer, SigningKey
from .raw_http import one_answer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> tuple[SigningKey, SigningKey]:
    return SigningKey("k1"), SigningKey("k2")


@pytest.fixture
def server(keys) -> Iterator[CertsServer]:
    with CertsServer(keys[0], max_age=600) as certs:
        yield certs


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(server: CertsServer, clock: Clock) -> CertCache:
    return CertCache(server.url, clock=clock, in_background=lambda run: run())


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("public, max-age=19204, must-revalidate, no-transform", 19204),
        ("max-age=60", 60),
        ("MAX-AGE = 7", 7),
        ("no-cache", DEFAULT_MAX_AGE_SECONDS),
        (None, DEFAULT_MAX_AGE_SECONDS),
        ("s-maxage=5", DEFAULT_MAX_AGE_SECONDS),
        ("max-age=0", 1),  # never a fetch per request
        ('max-age="60"', 60),  # RFC 9111's quoted form (read as the default)
        ("max-age=-5", 1),  # no number: stale (read as the default)
        ("max-age=1e3", 1),  # no number either
        ("max-age=" + "9" * 400, 24 * 3600),  # kept for ever, a dropped key trusted
    ],
)
def test_max_age_is_read_from_cache_control(header: str | None, seconds: float) -> None:
    assert max_age(header) == seconds


def test_one_fetch_per_max_age(cache: CertCache, server: CertsServer, clock: Clock, keys) -> None:
    assert cache.cert_for("k1") == keys[0].cert_pem
    clock.now += 599
    assert cache.cert_for("k1") == keys[0].cert_pem
    assert server.fetches == 1
    clock.now += 1  # max-age reached
    cache.cert_for("k1")
    assert server.fetches == 2


def test_unknown_key_ids_earn_one_early_refetch_per_interval(
    cache: CertCache, server: CertsServer, clock: Clock, keys
) -> None:
    cache.cert_for("k1")
    for _ in range(10):
        assert cache.cert_for("forged") is None
    assert server.fetches == 2
    server.certs["k2"] = keys[1].cert_pem  # Google rotates within the interval: not seen yet
    assert cache.cert_for("k2") is None
    clock.now += EARLY_REFETCH_SECONDS
    assert cache.cert_for("k2") == keys[1].cert_pem
    assert server.fetches == 3


def test_no_early_refetch_right_after_a_fetch(cache: CertCache, server: CertsServer) -> None:
    assert cache.cert_for("unknown") is None  # the first fetch had no such key: no second
    assert server.fetches == 1


def test_stale_certs_serve_through_an_outage(
    cache: CertCache, server: CertsServer, clock: Clock, keys
) -> None:
    cache.cert_for("k1")
    server.status = 503
    clock.now += 600
    assert cache.cert_for("k1") == keys[0].cert_pem  # expired, refresh failed, kept
    assert cache.cert_for("k1") == keys[0].cert_pem
    assert server.fetches == 2  # the failed try is not repeated at once
    clock.now += RETRY_AFTER_FAILURE_SECONDS
    server.status = 200
    cache.cert_for("k1")
    assert server.fetches == 3


def test_nothing_cached_and_nothing_to_fetch_is_unavailable(
    cache: CertCache, server: CertsServer, clock: Clock
) -> None:
    server.stop()
    with pytest.raises(CertsUnavailable):
        cache.cert_for("k1")
    with pytest.raises(CertsUnavailable):  # within the retry pause: refused without a fetch
        cache.cert_for("k1")


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b"{}", b'{"k1": 5}', b"[" * 100_000, b'{"k1": "not a certificate"}'],
    ids=["text", "list", "empty", "non-pem", "nested-too-deep", "pem-that-does-not-parse"],
)
def test_a_malformed_certs_answer_is_unavailable(cache: CertCache, server, body: bytes) -> None:
    server.raw_body = body
    with pytest.raises(CertsUnavailable):
        cache.cert_for("k1")


def test_a_refresh_of_junk_keeps_the_certs_held(
    cache: CertCache, server: CertsServer, clock: Clock, keys
) -> None:
    """A 200 whose certificates do not parse is a failed fetch: taken as certs, it
    turned every user away for its max-age."""
    cache.cert_for("k1")
    server.raw_body = b'{"k1": "not a certificate"}'
    clock.now += 600
    cache.cert_for("k1")  # expired: refreshed (here, before it returns)
    assert cache.cert_for("k1") == keys[0].cert_pem
    assert server.fetches == 2


def test_a_dribbling_answer_is_cut_at_the_fetch_deadline(
    server: CertsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx's timeout is per read: a byte every 0.2 s held a fetch (and whoever waited
    on it) as long as the body lasted."""
    monkeypatch.setattr(certs, "FETCH_TIMEOUT_SECONDS", 0.5)
    server.drip = 0.2
    started = time.monotonic()
    with pytest.raises(CertsUnavailable, match=r"took over 0\.5 s"):
        fetch_certs(server.url)
    assert time.monotonic() - started < 2  # the body alone takes minutes
    server.drip = 0.0  # well again: the next fetch gets the certs
    assert fetch_certs(server.url)[0] == server.certs


def test_fetches_left_hanging_are_few_and_the_endpoint_well_again_is_fetched_from(
    keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch past its wait runs on until its endpoint lets go (a head a byte at a
    time, for hours): the next one may find the endpoint well again (while one hung, the
    first version refused them all, 147 s after the endpoint was well), and past
    MOST_FETCH_THREADS still running none begins (no threads piling up)."""
    monkeypatch.setattr(certs, "FETCH_TIMEOUT_SECONDS", 0.3)
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    well = threading.Event()
    certificates = json.dumps({"k1": keys[0].cert_pem}).encode()

    def answer() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            if not well.is_set():  # a head begun, and never ended
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-")
                held.append(conn)
                continue
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(certificates)}\r\n\r\n"
            conn.sendall(head.encode() + certificates)
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/certs"
    try:
        for _ in range(certs.MOST_FETCH_THREADS):
            with pytest.raises(CertsUnavailable, match="took over"):
                fetch_certs(url)
        with pytest.raises(CertsUnavailable, match="earlier fetches of the token certs still hang"):
            fetch_certs(url)
        for conn in held[:1]:  # one lets go
            conn.close()
        certs._fetching_threads[0].join(5)
        well.set()
        assert fetch_certs(url)[0] == {"k1": keys[0].cert_pem}
    finally:
        listener.close()
        for conn in held:
            conn.close()
        for thread in list(certs._fetching_threads):
            thread.join(10)


@pytest.mark.parametrize("slow", ["head", "body"])
def test_a_head_that_dribbles_is_cut_at_the_fetch_deadline_too(
    slow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline was only looked at between the body's reads, each of which may wait
    httpx's 5 s: a head sent a byte a second held the first request 226 s."""
    monkeypatch.setattr(certs, "FETCH_TIMEOUT_SECONDS", 0.5)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    pieces = [head[:20]] if slow == "head" else [head, b"{"]  # then nothing for 5 s
    with one_answer(b"", pieces, then_wait=5) as url:
        started = time.monotonic()
        with pytest.raises(CertsUnavailable, match=r"took over 0\.5 s"):
            fetch_certs(url)
        assert time.monotonic() - started < 2


def _at_once(calls: int, call: Callable[[], object]) -> list[tuple[float, object]]:
    """`call` from `calls` threads at once: (seconds each took, what it returned or raised)."""
    results: list[tuple[float, object]] = []
    start = threading.Barrier(calls)

    def one() -> None:
        start.wait()
        began = time.monotonic()
        try:
            outcome: object = call()
        except CertsUnavailable as exc:
            outcome = exc
        results.append((time.monotonic() - began, outcome))

    threads = [threading.Thread(target=one) for _ in range(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_no_request_waits_on_a_slow_refresh(server: CertsServer, clock: Clock, keys) -> None:
    """Expired certs keep serving while one fetch, in the background, takes its time
    (a reviewer's hanging endpoint made each of six requests wait 5 s more than the last)."""
    cache = CertCache(server.url, clock=clock)
    assert cache.cert_for("k1") == keys[0].cert_pem
    server.delay = 3.0
    clock.now += 600
    results = _at_once(6, lambda: cache.cert_for("k1"))
    assert [outcome for _, outcome in results] == [keys[0].cert_pem] * 6
    assert max(seconds for seconds, _ in results) < server.delay / 2  # none waited for it
    deadline = time.monotonic() + 10
    while cache._fetching is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.fetches == 2  # one refresh for all six


def test_requests_with_no_certs_share_one_fetch(server: CertsServer, clock: Clock, keys) -> None:
    cache = CertCache(server.url, clock=clock)
    server.delay = 0.5
    results = _at_once(6, lambda: cache.cert_for("k1"))
    assert [outcome for _, outcome in results] == [keys[0].cert_pem] * 6
    assert server.fetches == 1


def test_tokens_of_a_key_rotated_in_wait_for_the_fetch_in_flight(
    server: CertsServer, clock: Clock, keys
) -> None:
    """Google signs with a new key: the first of its tokens begins the early re-fetch,
    and those that come while it runs wait for it (a reviewer's were refused 401 at
    once: the early re-fetch was spent); joining it spends nothing more."""
    cache = CertCache(server.url, clock=clock)
    assert cache.cert_for("k1") == keys[0].cert_pem
    server.certs["k2"] = keys[1].cert_pem
    server.delay = 1.0
    results = _at_once(4, lambda: cache.cert_for("k2"))
    assert [outcome for _, outcome in results] == [keys[1].cert_pem] * 4
    assert server.fetches == 2
    server.delay = 0.0
    clock.now += EARLY_REFETCH_SECONDS  # counted from the fetch made, not from each join
    assert cache.cert_for("forged") is None
    assert server.fetches == 3


def test_forged_key_ids_do_not_wait_for_an_early_refetch_for_another(
    server: CertsServer, clock: Clock, keys
) -> None:
    """A flood of forged key ids during a slow early re-fetch: refused at once, not held
    the fetch's time each (a reviewer's held every thread, a signed-in user waiting)."""
    cache = CertCache(server.url, clock=clock)
    assert cache.cert_for("k1") == keys[0].cert_pem
    server.certs["k2"] = keys[1].cert_pem
    server.delay = 1.0
    began = threading.Thread(target=cache.cert_for, args=("k2",))
    began.start()
    time.sleep(0.2)  # the early re-fetch for k2 is in flight
    results = _at_once(6, lambda: cache.cert_for(f"forged-{threading.get_ident()}"))
    began.join()
    assert [outcome for _, outcome in results] == [None] * 6
    assert max(seconds for seconds, _ in results) < server.delay / 2
    assert server.fetches == 2


def test_one_forged_key_id_repeated_holds_few_threads_for_a_slow_fetch(
    server: CertsServer, clock: Clock, keys
) -> None:
    """The key the early re-fetch is for, forged and repeated: the first few wait for the
    fetch, the rest are refused at once (a reviewer's held every thread again)."""
    cache = CertCache(server.url, clock=clock)
    assert cache.cert_for("k1") == keys[0].cert_pem
    server.delay = 1.0
    began = threading.Thread(target=cache.cert_for, args=("forged",))
    began.start()
    time.sleep(0.2)  # the early re-fetch for "forged" is in flight
    results = _at_once(10, lambda: cache.cert_for("forged"))
    began.join()
    assert [outcome for _, outcome in results] == [None] * 10
    waited = [seconds for seconds, _ in results if seconds > server.delay / 2]
    assert len(waited) == MOST_WAITING_FOR_ITS_KEY
    assert cache._waiting == 0


def test_an_unknown_key_id_in_the_pause_after_a_failure_keeps_its_early_refetch(
    cache: CertCache, server: CertsServer, clock: Clock, keys
) -> None:
    """A token with a rotated key id within the pause after a failed refresh gets no
    fetch, and does not use up the early re-fetch: the next one, past the pause, waits
    for the refresh it starts and finds the key (it was refused with the old certs)."""
    cache.cert_for("k1")
    server.status = 503
    clock.now += 600  # expired: the refresh fails
    assert cache.cert_for("k1") == keys[0].cert_pem
    server.status = 200
    server.certs["k2"] = keys[1].cert_pem  # Google rotated meanwhile
    assert cache.cert_for("k2") is None  # within the pause: no fetch
    assert server.fetches == 2
    clock.now += RETRY_AFTER_FAILURE_SECONDS
    assert cache.cert_for("k2") == keys[1].cert_pem
    assert server.fetches == 3


def test_a_failed_fetch_pauses_the_next_from_its_end(server: CertsServer, clock: Clock) -> None:
    """A fetch that failed after a long wait is not tried again at once by the next
    request: the pause counts from the failure, not from when the fetch began."""

    def slow_fetch(url: str) -> tuple[dict[str, str], float]:
        clock.now += 5.0  # the endpoint took its whole timeout
        return fetch_certs(url)

    cache = CertCache(server.url, fetch=slow_fetch, clock=clock)
    server.status = 503
    results = _at_once(4, lambda: cache.cert_for("k1"))
    assert all(isinstance(outcome, CertsUnavailable) for _, outcome in results)
    assert "HTTP 503" in str(results[0][1])
    with pytest.raises(CertsUnavailable):
        cache.cert_for("k1")
    assert server.fetches == 1  # the four shared it; the fifth came within the pause


def test_a_first_fetch_with_no_thread_to_be_had_is_certs_unavailable(
    server: CertsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's 503, as for any failed fetch, not a crash's 500 (a reviewer's)."""

    class NoThread(threading.Thread):
        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(certs.threading, "Thread", NoThread)
    with pytest.raises(CertsUnavailable, match="no thread"):
        CertCache(server.url).cert_for("k1")


def test_a_refresh_that_cannot_start_counts_as_a_failed_fetch(
    server: CertsServer, clock: Clock, keys
) -> None:
    """No thread to be had (a reviewer's probe): the held certs serve, and the next
    refresh is tried after the pause, instead of the fetch staying "in flight" forever."""

    def no_thread(run: Callable[[], None]) -> None:
        raise RuntimeError("can't start new thread")

    cache = CertCache(server.url, clock=clock, in_background=no_thread)
    assert cache.cert_for("k1") == keys[0].cert_pem  # none held: this request fetched
    clock.now += 600
    assert cache.cert_for("k1") == keys[0].cert_pem
    clock.now += RETRY_AFTER_FAILURE_SECONDS
    cache._in_background = lambda run: run()
    assert cache.cert_for("k1") == keys[0].cert_pem
    assert server.fetches == 2


def test_a_fetch_that_crashes_leaves_nobody_waiting(server: CertsServer, clock: Clock) -> None:
    def crashing_fetch(url: str) -> tuple[dict[str, str], float]:
        raise RecursionError("a certs answer nested too deep")

    cache = CertCache(server.url, fetch=crashing_fetch, clock=clock)
    with pytest.raises(RecursionError):
        cache.cert_for("k1")
    with pytest.raises(CertsUnavailable, match="crashed"):  # within the pause, at once
        cache.cert_for("k1")
