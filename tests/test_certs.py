"""The token certs cache (README "Who may call"): one fetch per max-age, one rate-limited early
re-fetch on an unknown key id, stale certs kept through an outage, and a
503 only when none were ever had. A real certs endpoint on loopback; only
the clock is ours, so max-age can pass without waiting for it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from assistant.certs import (
    DEFAULT_MAX_AGE_SECONDS,
    EARLY_REFETCH_SECONDS,
    RETRY_AFTER_FAILURE_SECONDS,
    CertCache,
    CertsUnavailable,
    max_age,
)

from .firebase_tokens import CertsServer, SigningKey


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
    return CertCache(server.url, clock=clock)


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
    "body", [b"not json", b"[]", b"{}", b'{"k1": 5}'], ids=["text", "list", "empty", "non-pem"]
)
def test_a_malformed_certs_answer_is_unavailable(cache: CertCache, server, body: bytes) -> None:
    server.raw_body = body
    with pytest.raises(CertsUnavailable):
        cache.cert_for("k1")
