"""Provider keys: an environment variable wins; else Secret Manager, cached with a TTL.

A key is never logged, never put in an error, a repr or metadata: only its
name (`ANTHROPIC_API_KEY`) and an error's class ever leave this module.

Deliberate choices, so nobody "fixes" them:

- The environment wins, always, even with Secret Manager on: a local run needs
  no cloud, and an operator can pin a key on one service without touching the
  secret. It is read on every call (a dict lookup), so a changed variable
  counts at once.
- The Secret Manager library (~0.5 s and ~58 MB to import) and its retry
  helpers are imported, and the client created, on first need, once per
  process and under a lock; a request whose key is in the environment never
  pays for them. `key_store(settings)` keeps one `KeyStore` per process.
- A read is bounded by `timeout` in total: one `google.api_core` Retry (for
  transient errors only) whose deadline is that timeout, and the per-attempt
  timeout the client derives from it.
- A secret that does not exist, that the service account may not read, or
  whose latest version is disabled or destroyed, is an answer, not a failure:
  None is cached for the full TTL with one warning, so an unconfigured
  provider costs no call per request.
- Any other failure (unreachable, timeout, ServiceUnavailable, RetryError,
  anything the client raises) never drops a key we already had: a stale key
  keeps being served. With no key at all, the failure itself is remembered
  for `failure_ttl`: one read per window, not one per request. Either way the
  next read is tried after that window; while a secret that never answered is
  read, the requests that come wait for that read (up to `timeout`): its key
  may be a moment away, and the provider would be skipped without it.
- When a cached answer is stale and another thread is already reading the
  secret, callers get it (the stale key, or none) at once rather than waiting
  on the read; only a secret that never answered yet (never read, or every
  read failed) is waited for.
- `refresh()` (after a provider's 401) bypasses the cache, but at most one
  read per name per `failure_ttl`: threads that hit 401 together share one
  read, and each gets that read's result. A confirmed read replaces the
  cached key (a deleted secret replaces it with None); a failed one keeps it.
  The result may equal the key that got the 401 (the secret was not
  rotated): retrying with it is then pointless, and that is the caller's call.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .config import ProviderSettings, Settings, shown_key_name
from .tracing import process_log

_RETRY_INITIAL_DELAY = 0.1
_RETRY_MAX_DELAY = 1.0


@dataclass(frozen=True)
class _Entry:
    """What is known about one secret, replaced whole (so a reader without a lock
    sees one consistent state). The key is kept out of the repr."""

    key: str | None = field(default=None, repr=False)
    checked_at: float | None = None  # when Secret Manager last gave an answer
    failed_at: float | None = None  # last failed read since that answer
    refreshed_at: float | None = None  # when the last refresh() read ended
    refresh_result: str | None = field(default=None, repr=False)


class KeyStore:
    """Provider keys: env var wins; else Secret Manager, cached with a TTL."""

    def __init__(
        self,
        *,
        use_secret_manager: bool,
        project: str,
        ttl: float,
        timeout: float,
        client_factory: Callable[[], Any] | None = None,
        failure_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.enabled = use_secret_manager and bool(project)
        self.project = project
        self.ttl = ttl
        self.timeout = timeout
        self.failure_ttl = failure_ttl
        self._client_factory = client_factory or _default_client
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._name_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards _name_locks
        self._retry: Any = None  # a race makes two equal ones: harmless

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"KeyStore(secret_manager={state}, project={self.project!r}, ttl={self.ttl})"

    def get(self, name: str) -> str | None:
        """The key named `name`, or None when there is none to be had."""
        from_env = _env_key(name)
        if from_env or not self.enabled or not name:
            return from_env
        entry = self._entries.get(name)
        if entry is not None and self._usable(entry, self._clock()):
            return entry.key
        lock = self._name_lock(name)
        if entry is not None and entry.checked_at is not None:
            # A stale answer: serve it rather than queue behind a read already under
            # way, a key or none (a secret that was missing, or unreadable, when last
            # asked: all requests waited on its next read, every provider's key being
            # asked for). A failure alone is no answer: that read is waited for.
            if not lock.acquire(blocking=False):
                return entry.key
        else:
            lock.acquire()
        try:
            entry = self._entries.get(name)
            if entry is not None and self._usable(entry, self._clock()):
                return entry.key
            return self._read(name)
        finally:
            lock.release()

    def refresh(self, name: str) -> str | None:
        """Re-read `name` past the cache (after a 401); the env var, if set, still wins."""
        from_env = _env_key(name)
        if from_env or not self.enabled or not name:
            return from_env
        called_at = self._clock()
        with self._name_lock(name):
            entry = self._entries.get(name) or _Entry()
            last = entry.refreshed_at
            # A refresh that ended while we waited, or lately, answers for this one too;
            # a read since it (the TTL's, shorter than the window) is newer than its result.
            if last is not None and (last >= called_at or called_at - last < self.failure_ttl):
                if entry.checked_at is not None and entry.checked_at > last:
                    return entry.key
                return entry.refresh_result
            ok, key = self._read_outcome(name)
            result = key if ok else None
            self._entries[name] = replace(
                self._entries[name], refreshed_at=self._clock(), refresh_result=result
            )
            return result

    def _usable(self, entry: _Entry, now: float) -> bool:
        if entry.checked_at is not None and now - entry.checked_at < self.ttl:
            return True
        return entry.failed_at is not None and now - entry.failed_at < self.failure_ttl

    def _name_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._name_locks.setdefault(name, threading.Lock())

    def _read(self, name: str) -> str | None:
        """One read, under the name's lock: the key to use now (stale if the read failed)."""
        ok, key = self._read_outcome(name)
        return key if ok else self._entries[name].key

    def _read_outcome(self, name: str) -> tuple[bool, str | None]:
        """(whether Secret Manager answered, the key it gave); updates the cache entry."""
        entry = self._entries.get(name) or _Entry()
        log = process_log()
        secret = shown_key_name(name)
        try:
            key = self._fetch(name)
        except Exception as exc:  # classified below; only the class is ever logged
            from google.api_core import exceptions as google_errors

            error = type(exc).__name__
            # An answer: no such secret, no right to read it, or its latest version
            # disabled or destroyed (FailedPrecondition), the usual way to withdraw one.
            answers = (
                google_errors.NotFound,
                google_errors.PermissionDenied,
                google_errors.FailedPrecondition,
            )
            if isinstance(exc, answers):
                log.warning("secret.missing", secret=secret, error=error)
                self._entries[name] = replace(
                    entry, key=None, checked_at=self._clock(), failed_at=None
                )
                return True, None
            self._entries[name] = replace(entry, failed_at=self._clock())
            if entry.key is not None:
                log.warning("secret.stale", secret=secret, error=error)
            else:
                log.warning("secret.unavailable", secret=secret, error=error)
            return False, None
        if key is None:
            log.warning("secret.missing", secret=secret, error="EmptyOrNotUtf8")
        elif not _sendable(key):
            log.warning(
                "secret.missing",
                secret=secret,
                source="secret_manager",
                error="NotAHeaderValue",
            )
            key = None
        self._entries[name] = replace(entry, key=key, checked_at=self._clock(), failed_at=None)
        return True, key

    def _fetch(self, name: str) -> str | None:
        """The latest version's text (None if empty or not UTF-8); raises what the client raises."""
        client = self._client_factory()
        response = client.access_secret_version(
            request={"name": f"projects/{self.project}/secrets/{name}/versions/latest"},
            timeout=Deadline(self.timeout),
            retry=self._bounded_retry(),
        )
        try:
            return bytes(response.payload.data).decode("utf-8").strip() or None
        except UnicodeDecodeError:
            return None  # the error would carry the bytes: drop it

    def _bounded_retry(self) -> Any:
        """Transient errors retried, all attempts together within `timeout`; made once."""
        if self._retry is None:
            from google.api_core.retry import Retry, if_transient_error  # ~0.3 s: not at import

            self._retry = Retry(
                predicate=if_transient_error,
                initial=_RETRY_INITIAL_DELAY,
                maximum=_RETRY_MAX_DELAY,
                timeout=self.timeout,
            )
        return self._retry


class Deadline:
    """One read's time, shared by its attempts: google-api-core's timeout decorator, the
    one a number becomes, gives an attempt begun with under a second left the whole
    timeout again, and a read that failed once, late, took nearly twice
    SECRET_TIMEOUT_SECONDS (a reviewer's). A decorator of the client's kind: made per
    call, the deadline set when the call begins."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, rpc: Callable[..., Any]) -> Callable[..., Any]:
        deadline = time.monotonic() + self.seconds

        @functools.wraps(rpc)
        def with_time_left(*args: Any, **kwargs: Any) -> Any:
            kwargs["timeout"] = max(_LEAST_ATTEMPT_SECONDS, deadline - time.monotonic())
            return rpc(*args, **kwargs)

        return with_time_left


_LEAST_ATTEMPT_SECONDS = 0.01  # gRPC takes no deadline of 0 or less


def _env_key(name: str) -> str | None:
    key = (os.environ.get(name, "").strip() or None) if name else None
    if key is not None and not _sendable(key):
        if (name, key) not in _unsendable_env_keys:  # once, not on every request
            _unsendable_env_keys.add((name, key))
            process_log().warning(
                "secret.missing",
                secret=shown_key_name(name),
                source="environment",
                error="NotAHeaderValue",
            )
        return None
    return key


# The environment's keys no header can carry, already logged (a few, fixed at start).
_unsendable_env_keys: set[tuple[str, str]] = set()


def _sendable(key: str) -> bool:
    """Whether `key` can go in a request header: printable ASCII, no line break inside (a
    secret pasted with one would fail every request as the provider's protocol error,
    with nothing saying why)."""
    return key.isascii() and key.isprintable()


_client: Any = None
_client_lock = threading.Lock()


def _default_client() -> Any:
    """The process's one Secret Manager client, created on first need (a failure is retried)."""
    global _client
    with _client_lock:
        if _client is None:
            from google.cloud import secretmanager

            _client = secretmanager.SecretManagerServiceClient()
        return _client


_store: KeyStore | None = None
_store_config: tuple[bool, str, float, float] | None = None
_store_lock = threading.Lock()


def key_store(settings: Settings) -> KeyStore:
    """The process's KeyStore, made anew only when its settings change."""
    global _store, _store_config
    config = (
        settings.secret_manager,
        settings.secrets_project,
        settings.key_cache_seconds,
        settings.secret_timeout_seconds,
    )
    with _store_lock:
        if _store is None or config != _store_config:
            if settings.secret_manager and not settings.secrets_project:
                process_log().warning(
                    "secret.no_project", hint="set SECRETS_PROJECT or GOOGLE_CLOUD_PROJECT"
                )
            _store = KeyStore(
                use_secret_manager=settings.secret_manager,
                project=settings.secrets_project,
                ttl=settings.key_cache_seconds,
                timeout=settings.secret_timeout_seconds,
            )
            _store_config = config
        return _store


def provider_key(settings: Settings, provider: ProviderSettings) -> str | None:
    """This provider's key; "" when it needs none, None when it has none (it is then skipped)."""
    if not provider.key_name:
        return ""
    return key_store(settings).get(provider.key_name)
