"""Replies in flight on this instance, counted per user and in all (CONTRACT §9).

A reply holds one slot from the moment the request is let in until its
response is closed: the stream ended (answer, error frame), or the client
left, or the request was refused after the slot was taken. Requests without
a user share one anonymous bucket. Counts live in this process only: with
several instances, a user may have that many replies on each.

The instance limit (MAX_STREAMS) sits below gunicorn's THREADS, so that a
thread is always left for `/health` and preflights, and a burst beyond what
the instance can stream is told so at once (503 `overloaded`) instead of
queueing for a thread with no answer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import MESSAGES, RequestError

RETRY_AFTER_SECONDS = 5  # a user's own replies take seconds to end
OVERLOADED_RETRY_AFTER_SECONDS = 2  # another instance, or this one soon, will have room
ANONYMOUS = ""  # the bucket of requests that name no user


class Slot:
    """One reply's place in its user's count; releasing it twice is harmless."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()


class InFlight:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def take(self, user_id: str | None, per_user: int, total: int) -> Slot:
        """A slot for `user_id`; 429 `rate_limited` when they already hold `per_user`,
        503 `overloaded` when the instance already holds `total`."""
        key = user_id or ANONYMOUS
        with self._lock:
            held = self._counts.get(key, 0)
            if held >= per_user:
                raise RequestError(
                    f"this user already has {per_user} replies in flight; "
                    "wait for one to finish, then try again",
                    429,
                    "rate_limited",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            if self._total >= total:
                raise RequestError(
                    MESSAGES["overloaded"],
                    503,
                    "overloaded",
                    headers={"Retry-After": str(OVERLOADED_RETRY_AFTER_SECONDS)},
                )
            self._counts[key] = held + 1
            self._total += 1
        return Slot(lambda: self._give_back(key))

    def held(self, user_id: str | None = None) -> int:
        """Slots held by `user_id`, or by everyone when None."""
        with self._lock:
            return self._counts.get(user_id, 0) if user_id is not None else self._total

    def _give_back(self, key: str) -> None:
        with self._lock:
            self._total -= 1
            left = self._counts[key] - 1
            if left:
                self._counts[key] = left
            else:
                del self._counts[key]  # no entry per user who ever called


replies_in_flight = InFlight()
