"""Replies in flight, counted per user on this instance (CONTRACT §9).

A user holds one slot per reply from the moment the request is let in until
its response is closed: the stream ended (answer, error frame), or the
client left, or the request was refused after the slot was taken. Requests
without a user share one anonymous bucket. Counts live in this process only:
with several instances, a user may have that many replies on each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .request import RequestError

RETRY_AFTER_SECONDS = 5
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
        self._lock = threading.Lock()

    def take(self, user_id: str | None, limit: int) -> Slot:
        """A slot for `user_id`, or 429 `rate_limited` when they already hold `limit`."""
        key = user_id or ANONYMOUS
        with self._lock:
            held = self._counts.get(key, 0)
            if held >= limit:
                raise RequestError(
                    f"this user already has {limit} replies in flight; "
                    "wait for one to finish, then try again",
                    429,
                    "rate_limited",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            self._counts[key] = held + 1
        return Slot(lambda: self._give_back(key))

    def held(self, user_id: str | None) -> int:
        with self._lock:
            return self._counts.get(user_id or ANONYMOUS, 0)

    def _give_back(self, key: str) -> None:
        with self._lock:
            left = self._counts[key] - 1
            if left:
                self._counts[key] = left
            else:
                del self._counts[key]  # no entry per user who ever called


user_replies = InFlight()
