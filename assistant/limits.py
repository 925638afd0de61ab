"""Replies in flight on this instance, counted per user and in all (README "Who may call").

A reply holds one slot from the moment the request is let in until its
response is closed: the stream ended (answer, error frame), or the client
left, or the request was refused after the slot was taken. For its user's
limit, one reply whose last write began less than LAST_WRITE_GRACE_SECONDS
ago counts no more (`Slot.taking_its_last_write`). Requests without
a user share one anonymous bucket. Counts live in this process only: with
several instances, a user may have that many replies on each.

The instance limit (MAX_STREAMS) bounds the replies an instance streams at
once. A streaming reply holds no request thread while it waits for its first
chunk or the I/O loop writes its chunks (worker.py "parking"): it holds one on
its way in and whenever it writes itself; `/health` and preflights have threads of their
own (worker.py). A write to a client that takes nothing waits on its thread,
up to SEND_TIMEOUT_SECONDS; at most half of THREADS wait so at once
(`Slot.write_begins()`), and past that a write not done within
BRIEF_WRITE_SECONDS means the client is gone (a slow reader too, then, if a
frame does not fit its socket's buffer). Otherwise a few dozen
clients that never read would hold every thread for SEND_TIMEOUT_SECONDS.

When the instance is full, a reply whose client has taken no write for
STUCK_SECONDS gives its place to the newcomer: its connection is shut down,
which ends it like any client that left (upstream cancelled, what arrived
saved `incomplete`). Without this, clients that open streams and never read
them would hold every place for SEND_TIMEOUT_SECONDS, and shut out everyone
else (bench/abuse.py, non-readers); a reader that is merely slow keeps
taking writes and is never chosen. "No write" is as the kernel tells it: a
blocked send wakes once about a third of its buffer drained, so a reader
slower than a few KB/s behind a full socket may look stuck for STUCK_SECONDS
(a reviewer's 5 KB/s reader was evicted by a newcomer; 10 KB/s was not).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .errors import MESSAGES, RequestError

# A user's Stop then Send: the stopped reply's slot is free within a second of its
# client leaving (with 5, a frontend told its user to wait 5 s for it).
RETRY_AFTER_SECONDS = 1
OVERLOADED_RETRY_AFTER_SECONDS = 2  # another instance, or this one soon, will have room
STOPPING_RETRY_AFTER_SECONDS = 1  # a stopping instance's: a retry goes to another at once
STUCK_SECONDS = 2.0  # a write not taken for this long marks a client as stuck
BRIEF_WRITE_SECONDS = 0.1  # the longest a write may wait once half of THREADS wait on clients
LAST_WRITE_GRACE_SECONDS = 0.1  # a reply's last write counts off its user's limit this long
# A write goes to the socket in pieces of at most this many bytes, each with the whole send
# timeout: a socket timeout bounds a whole sendall(), so a slow but steady reader was cut
# in the middle of a frame it needed longer than the timeout for (a long final answer).
WRITE_PIECE_BYTES = 16 * 1024
ANONYMOUS = ""  # the bucket of requests that name no user


class Slot:
    """One reply's place in the counts; releasing it twice is harmless.

    The reply's response marks the writes it waits on (`writing_since`) and
    says how to end it (`evict`), so a full instance can tell a stuck client.
    """

    def __init__(
        self, release: Callable[[Slot], None], writers: Writers | None = None, user: str = ""
    ) -> None:
        self._release: Callable[[Slot], None] | None = release
        self._lock = threading.Lock()
        self._writers = writers or Writers()
        self.user = user
        self.writing_since: float | None = None  # time.monotonic() of the write in progress
        self.last_write_since: float | None = None  # of the reply's last write, once begun
        self.evict: Callable[[], None] | None = None
        self.evicted = False

    def last_write_begins(self) -> None:
        """The reply's last write (its terminal frame, its answer) is handed out."""
        self.last_write_since = time.monotonic()

    def taking_its_last_write(self, now: float) -> bool:
        """Whether its client may have all of its reply already: its last write began less
        than LAST_WRITE_GRACE_SECONDS ago. A user whose client read `[DONE]` and asked
        again at once was refused 429 now and then: the slot goes back only after the
        server's write returns, and its thread may wait for the interpreter's lock
        meanwhile. A last write its client does not take counts again after that."""
        since = self.last_write_since
        return since is not None and now - since < LAST_WRITE_GRACE_SECONDS

    def write_begins(self) -> bool:
        """Mark a write to the client as under way, one that may wait for the client up to
        the send timeout; False (nothing marked) when as many threads as may wait on
        clients already do: then the write waits BRIEF_WRITE_SECONDS at most."""
        if not self._writers.acquire():
            return False
        self.writing_since = time.monotonic()
        return True

    def write_moved_on(self) -> None:
        """A piece of the marked write went out: the client takes it, it is not stuck."""
        if self.writing_since is not None:
            self.writing_since = time.monotonic()

    def write_ends(self) -> None:
        """The write `write_begins()` marked is over (done, or failed)."""
        if self.writing_since is not None:
            self.writing_since = None
            self._writers.release()

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release(self)

    def stuck(self, now: float) -> bool:
        since = self.writing_since
        return since is not None and now - since >= STUCK_SECONDS and self.evict is not None


def pieces(data: bytes) -> list[bytes]:
    """`data` as the writes of at most WRITE_PIECE_BYTES it goes out in."""
    if len(data) <= WRITE_PIECE_BYTES:
        return [data]
    return [data[at : at + WRITE_PIECE_BYTES] for at in range(0, len(data), WRITE_PIECE_BYTES)]


class Writers:
    """Request threads waiting on writes to clients: at most `cap` at once (None: no cap)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.cap: int | None = None
        self.waiting = 0

    def acquire(self) -> bool:
        with self._lock:
            if self.cap is not None and self.waiting >= self.cap:
                return False
            self.waiting += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.waiting -= 1


class InFlight:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._slots: set[Slot] = set()
        self._evicted = 0  # slots in _slots marked evicted: counted, not summed per request
        self._lock = threading.Lock()
        self.writers = Writers()
        # The worker is stopping (its signal handler sets it): a reply begun now would be
        # ended early, its provider called and its question saved for nothing.
        self.stopping = False

    def set_threads(self, threads: int) -> None:
        """The worker's request threads: half of them may wait on clients' writes (the
        other half serve everyone else: bench/abuse.py non-readers, README "Speed")."""
        self.writers.cap = max(1, threads // 2)

    def count(self) -> int:
        """Replies in flight now (evicted ones included until they end)."""
        with self._lock:
            return len(self._slots)

    def take(self, user_id: str | None, per_user: int, total: int) -> Slot:
        """A slot for `user_id`; 429 `rate_limited` when they already hold `per_user`,
        503 `overloaded` when the instance already holds `total` and no reply is stuck,
        or is stopping."""
        if self.stopping:
            refusal = RequestError(
                MESSAGES["overloaded"],
                503,
                "overloaded",
                headers={"Retry-After": str(STOPPING_RETRY_AFTER_SECONDS)},
            )
            refusal.reason = "the worker is stopping"
            raise refusal
        key = user_id or ANONYMOUS
        with self._lock:
            counted = held = self._counts.get(key, 0)
            if held >= per_user:
                # One such reply at most: counting each off, a user whose clients take
                # nothing chained them (each let in the next within its grace), and held
                # every thread with replies past its limit (a reviewer).
                now = time.monotonic()
                held -= any(
                    slot.user == key and slot.taking_its_last_write(now) for slot in self._slots
                )
            if held >= per_user:
                raise RequestError(
                    f"this user already has {per_user} "
                    f"{'reply' if per_user == 1 else 'replies'} in flight; "
                    "wait for one to finish, then try again",
                    429,
                    "rate_limited",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            full = len(self._slots) - self._evicted >= total
            stuck = self._stuck() if full else None
            if full and stuck is None:
                raise RequestError(
                    MESSAGES["overloaded"],
                    503,
                    "overloaded",
                    headers={"Retry-After": str(OVERLOADED_RETRY_AFTER_SECONDS)},
                )
            slot = Slot(lambda done: self._give_back(key, done), self.writers, key)
            self._counts[key] = counted + 1
            self._slots.add(slot)
        if stuck is not None and stuck.evict is not None:
            stuck.evict()  # it lets go of its slot as its response closes
        return slot

    def end_stuck(self) -> None:
        """Every reply whose client has taken no write for STUCK_SECONDS ends now, as one
        whose client left (a stopping worker's: its save must begin while there is time;
        at the abandon, with a database that hung, it came too late for the kill)."""
        with self._lock:
            stuck = self._stuck_now()
            for slot in stuck:
                self._mark_evicted(slot)
        for slot in stuck:
            if slot.evict is not None:
                slot.evict()

    def _stuck(self) -> Slot | None:
        """The reply stuck longest, marked evicted; None if none is stuck. Under the lock."""
        stuck = self._stuck_now()
        if not stuck:
            return None
        now = time.monotonic()
        chosen = min(stuck, key=lambda slot: slot.writing_since or now)
        self._mark_evicted(chosen)
        return chosen

    def _stuck_now(self) -> list[Slot]:
        """The replies stuck now and not yet evicted. Under the lock."""
        now = time.monotonic()
        return [slot for slot in self._slots if not slot.evicted and slot.stuck(now)]

    def _mark_evicted(self, slot: Slot) -> None:
        """Counted off the full instance's total until it ends. Under the lock."""
        slot.evicted = True
        self._evicted += 1

    def _give_back(self, key: str, slot: Slot) -> None:
        with self._lock:
            self._slots.discard(slot)
            if slot.evicted:
                self._evicted -= 1
            left = self._counts[key] - 1
            if left:
                self._counts[key] = left
            else:
                del self._counts[key]  # no entry per user who ever called


replies_in_flight = InFlight()
