"""The public certificates that Firebase ID tokens are signed with, fetched and cached.

Google publishes them as a JSON map `{key id: X.509 PEM}` with a
`Cache-Control: max-age`. Each certs URL has one cache per process, so a
fetch happens once per max-age, never per request:

- Expired: fetched again in the background while the certs held keep
  serving, so that no request waits on Google (a slow or hanging endpoint
  made each waiting request fetch in turn, 5 s each, a reviewer found). If
  that fetch fails, the certs held keep working (stale beats refusing every
  user), and no fetch is tried for `RETRY_AFTER_FAILURE_SECONDS` from the
  failure's end.
- Never fetched: one request fetches, and the others that need certs wait
  for that same fetch (one fetch in flight at a time, whoever needs it).
- A token naming a key id we do not hold may mean Google rotated its keys
  before our max-age ran out: that earns one early re-fetch, at most once per
  `EARLY_REFETCH_SECONDS`, so a flood of forged key ids cannot make us hammer
  the endpoint. Such a token waits for a fetch already in flight when it may
  have one of its own, and past that when the early re-fetch is for its own
  key (the tokens of a key Google just rotated in), `MOST_WAITING_FOR_ITS_KEY`
  at once; the others do not wait.
- No certs at all and none to be had: `CertsUnavailable` (the caller's 503).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable

import httpx
from cryptography import x509

from .tracing import process_log

FETCH_TIMEOUT_SECONDS = 5.0
MOST_CERTS_BYTES = 1024 * 1024  # Google's are about 3.5 KB
EARLY_REFETCH_SECONDS = 60.0
# Tokens of the key an early re-fetch is for that wait for it at once, past its budget.
MOST_WAITING_FOR_ITS_KEY = 4
RETRY_AFTER_FAILURE_SECONDS = 1.0
DEFAULT_MAX_AGE_SECONDS = 3600.0  # when the response names none
MIN_MAX_AGE_SECONDS = 1.0  # `max-age=0` must not mean a fetch per request
# Google's say about six hours; a longer one kept a key Google dropped trusted as long (a
# 400-digit one, for ever).
MAX_MAX_AGE_SECONDS = 24 * 3600.0

# RFC 9111's max-age, quoted too; its value checked apart (one that is no number: stale).
_MAX_AGE = re.compile(r'(?:^|[,\s])max-age\s*=\s*("?)([^,\s"]*)\1', re.IGNORECASE)


class CertsUnavailable(RuntimeError):
    """No certificates could be fetched and none are cached."""


def max_age(cache_control: str | None) -> float:
    match = _MAX_AGE.search(cache_control or "")
    if match is None:
        return DEFAULT_MAX_AGE_SECONDS
    seconds = match.group(2)
    if not (seconds.isascii() and seconds.isdigit()):  # `-5`, `1e3`: stale, as RFC 9111 says
        return MIN_MAX_AGE_SECONDS
    return max(MIN_MAX_AGE_SECONDS, min(MAX_MAX_AGE_SECONDS, float(seconds)))


def fetch_certs(url: str) -> tuple[dict[str, str], float]:
    """(certs by key id, seconds they may be kept). Raises CertsUnavailable saying why.

    The whole fetch takes FETCH_TIMEOUT_SECONDS at most: httpx's timeout is per read,
    and an endpoint sending a byte a second held a fetch, and every request waiting on
    it, as long as it dribbled (its head for 226 s). So it runs on a thread of its
    own, waited for that long; one that outlives its wait is left to end by itself
    (a next fetch may find the endpoint well again), and while MOST_FETCH_THREADS
    still run no other is begun (each fails at once). A body past
    MOST_CERTS_BYTES, or a certificate that does not parse, is a failed fetch, not
    certs to replace the good ones held (a 200 of junk turned every user away for its
    max-age)."""
    outcome: list[tuple[dict[str, str], float] | CertsUnavailable] = []

    def fetch() -> None:
        try:
            outcome.append(_fetched(url))
        except CertsUnavailable as exc:
            outcome.append(exc)

    with _fetching_lock:
        _fetching_threads[:] = [thread for thread in _fetching_threads if thread.is_alive()]
        if len(_fetching_threads) >= MOST_FETCH_THREADS:
            raise CertsUnavailable("earlier fetches of the token certs still hang")
        thread = threading.Thread(target=fetch, name="token-certs-fetch", daemon=True)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had: the caller's 503, as any failed fetch
            raise CertsUnavailable("no thread to be had for the token certs fetch") from None
        _fetching_threads.append(thread)
    thread.join(FETCH_TIMEOUT_SECONDS)
    if not outcome:
        raise CertsUnavailable(f"the token certs took over {FETCH_TIMEOUT_SECONDS:g} s to come")
    if isinstance(outcome[0], CertsUnavailable):
        raise outcome[0]
    return outcome[0]


# Fetches past their wait, still running (each until its endpoint lets go): at most this
# many, so that an endpoint that dribbles every answer cannot pile threads up.
MOST_FETCH_THREADS = 4
_fetching_threads: list[threading.Thread] = []
_fetching_lock = threading.Lock()


def _fetched(url: str) -> tuple[dict[str, str], float]:
    """The fetch itself, on its thread. Its own deadline, looked at between the body's
    reads, ends the thread too (not only the caller's wait) for a body that dribbles."""
    deadline = time.monotonic() + FETCH_TIMEOUT_SECONDS
    try:
        with _http().stream("GET", url) as response:
            if response.status_code != 200:
                raise CertsUnavailable(
                    f"the token certs endpoint answered HTTP {response.status_code}"
                )
            body = bytearray()
            for piece in response.iter_bytes():
                body += piece
                if len(body) > MOST_CERTS_BYTES:
                    raise CertsUnavailable(f"the token certs are over {MOST_CERTS_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise CertsUnavailable(
                        f"the token certs took over {FETCH_TIMEOUT_SECONDS:g} s to come"
                    )
    except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:  # a host no lookup takes
        raise CertsUnavailable(f"{type(exc).__name__} fetching the token certs") from exc
    try:
        certs = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        certs = None
    if not (
        isinstance(certs, dict)
        and certs
        and all(isinstance(kid, str) and isinstance(pem, str) for kid, pem in certs.items())
    ):
        raise CertsUnavailable("the token certs endpoint did not answer a {key id: PEM} map")
    for kid, pem in certs.items():
        try:
            x509.load_pem_x509_certificate(pem.encode("utf-8", "surrogatepass"))
        except ValueError:
            raise CertsUnavailable(f"the token cert {kid[:40]!r} does not parse") from None
    return certs, max_age(response.headers.get("Cache-Control"))


_client: httpx.Client | None = None
_client_lock = threading.Lock()


def _http() -> httpx.Client:
    """One client per process, made on first use (most processes never verify a token)."""
    global _client
    with _client_lock:
        if _client is None:
            _client = httpx.Client(timeout=FETCH_TIMEOUT_SECONDS, follow_redirects=False)
        return _client


def _in_a_thread(run: Callable[[], None]) -> None:
    threading.Thread(target=run, name="token-certs", daemon=True).start()


class CertCache:
    def __init__(
        self,
        url: str,
        fetch: Callable[[str], tuple[dict[str, str], float]] = fetch_certs,
        clock: Callable[[], float] = time.monotonic,
        in_background: Callable[[Callable[[], None]], None] = _in_a_thread,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._clock = clock
        self._in_background = in_background
        self._lock = threading.Lock()  # the state below; never held during a fetch
        self._certs: dict[str, str] = {}
        self._expires_at = 0.0
        self._fetching: threading.Event | None = None  # set when the fetch in flight ends
        self._next_try_at = 0.0  # after a failed fetch, no new try before this
        self._failure = "no token certs fetched yet"  # why the last fetch failed
        self._early_refetch_at = -EARLY_REFETCH_SECONDS  # when the last early re-fetch began
        self._early_key: str | None = None  # the key id it is for, while it is in flight
        self._waiting = 0  # tokens of that key waiting for it past the early re-fetch's budget

    def cert_for(self, key_id: str) -> str | None:
        """The PEM certificate for `key_id`, or None if Google has no such key.

        Raises CertsUnavailable when no certs are cached and none can be fetched.
        """
        with self._lock:
            now = self._clock()
            refresh = bool(self._certs) and now >= self._expires_at and self._begin_fetch(now)
            cert = self._certs.get(key_id)
            may_fetch = not self._certs or now - self._early_refetch_at >= EARLY_REFETCH_SECONDS
            # A fetch in flight (the refresh's, or another's) may bring the key: waited for
            # within the early re-fetch's budget, and past it by the tokens of the key the
            # early re-fetch is for (those of a key Google had just rotated in were refused
            # while the fetch their first began still ran), MOST_WAITING_FOR_ITS_KEY at
            # once. Not by others: forged key ids, or one repeated, held every thread for
            # as long as a slow fetch took.
            same_key = key_id == self._early_key and self._waiting < MOST_WAITING_FOR_ITS_KEY
            joined = self._fetching if cert is None and (may_fetch or same_key) else None
            counted = joined is not None and not may_fetch
            self._waiting += counted
            runs = cert is None and joined is None and may_fetch and self._begin_fetch(now)
            if self._certs and (runs or (joined is not None and may_fetch)):
                # An early re-fetch (Google may have rotated), counted only if one is made
                # or joined: not within the pause after a failure.
                self._early_refetch_at, self._early_key = now, key_id
        if refresh:
            try:
                self._in_background(self._run_fetch)  # the held certs serve meanwhile
            except Exception as exc:  # no thread to be had: as a failed fetch, not stuck
                self._fetch_failed(f"{type(exc).__name__} starting the certs fetch")
        if cert is not None:
            return cert
        if runs:
            self._run_fetch()
        elif joined is not None:
            joined.wait(2 * FETCH_TIMEOUT_SECONDS)
            if counted:
                with self._lock:
                    self._waiting -= 1
        with self._lock:
            if not self._certs:
                raise CertsUnavailable(self._failure)
            return self._certs.get(key_id)

    def _begin_fetch(self, now: float) -> bool:
        """Whether this caller is to fetch: none in flight, no failure too recent."""
        if self._fetching is not None or now < self._next_try_at:
            return False
        self._fetching = threading.Event()
        return True

    def _run_fetch(self) -> None:
        try:
            certs, keep_for = self._fetch(self.url)
        except CertsUnavailable as exc:
            self._fetch_failed(str(exc))
        except BaseException:
            self._fetch_failed("the certs fetch crashed")
            raise
        else:
            with self._lock:
                self._certs, self._expires_at = certs, self._clock() + keep_for
            self._fetch_ended()

    def _fetch_failed(self, reason: str) -> None:
        with self._lock:
            self._next_try_at = self._clock() + RETRY_AFTER_FAILURE_SECONDS
            self._failure = reason
            kept = len(self._certs)
        process_log().error("auth.certs_failed", reason=reason, kept=kept)
        self._fetch_ended()

    def _fetch_ended(self) -> None:
        """No fetch in flight any more: whoever waits for it looks again."""
        with self._lock:
            done, self._fetching, self._early_key = self._fetching, None, None
        if done is not None:
            done.set()


_caches: dict[str, CertCache] = {}
_caches_lock = threading.Lock()


def cert_cache(url: str) -> CertCache:
    """The process's cache for `url`."""
    with _caches_lock:
        cache = _caches.get(url)
        if cache is None:
            cache = _caches[url] = CertCache(url)
        return cache
