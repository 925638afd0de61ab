"""Store writes run off the stream's path, each waited for no longer than a bound.

The user message starts at once on a small thread pool, in parallel with the
provider call, so it adds nothing to the time to first chunk. The assistant
message is written at the end; the reply waits for both at most
`timeout` seconds in all, then goes on: a slow or unreachable database costs
the final frame `persist_failed: true`, never a stalled or broken stream.
Writes that outlive the wait still land later (ids are idempotent).
"""

from __future__ import annotations

import concurrent.futures
import time

from .store import AssistantMessage, MessageStore, UserMessage
from .tracing import RequestLog

_pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="store")


class Saver:
    def __init__(self, store: MessageStore, timeout: float, log: RequestLog) -> None:
        self._store = store
        self._timeout = timeout
        self._log = log
        self._user: concurrent.futures.Future[str] | None = None

    def start_user_message(self, message: UserMessage) -> None:
        self._user = _pool.submit(self._store.save_user_message, message)

    def finish(self, reply: AssistantMessage | None) -> tuple[dict[str, str], bool]:
        """Wait for the user message, write the reply; returns (message ids, failed)."""
        deadline = time.monotonic() + self._timeout
        ids: dict[str, str] = {}
        failed = False
        writes = [("user", self._user)]
        if reply is not None:
            writes.append(("assistant", _pool.submit(self._store.save_assistant_message, reply)))
        for role, future in writes:
            if future is None:
                continue
            try:
                ids[role] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except concurrent.futures.TimeoutError:
                failed = True
                self._log.error("persist.timeout", role=role, timeout_s=self._timeout)
            except Exception as exc:  # any store failure: reported, never raised into the stream
                failed = True
                self._log.error("persist.failed", role=role, reason=f"{type(exc).__name__}: {exc}")
        return ids, failed
