"""The save pool's own rules, with a store that answers slowly (the rest, saving against
the Firestore emulator, is in test_store.py)."""

from __future__ import annotations

import threading
import time

from assistant import saving
from assistant.request import AssistantRequest, Turn
from assistant.store import AssistantMessage, Author, UserMessage
from assistant.tracing import RequestLog

AUTHOR = Author("ada@example.com", "ada@example.com", None)


class SlowHistory:
    """A message store whose history read takes `seconds`: a database in trouble."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.reads_begun = 0
        self._lock = threading.Lock()

    def recent_turns(
        self, assistant_id: str, user_id: str, thread_id: str | None, limit: int, trace_id: str
    ) -> tuple[Turn, ...]:
        with self._lock:
            self.reads_begun += 1
        time.sleep(self.seconds)
        return ()

    def save_user_message(self, message: UserMessage) -> str:
        return message.message_id

    def save_assistant_message(self, message: AssistantMessage, user_saved: bool = False) -> str:
        return message.message_id


def test_a_history_read_given_up_before_it_began_never_runs() -> None:
    """Reads nobody waits for any more do not take the pool's threads from the saves
    queued behind them (a reviewer saw a user message's write wait 1.2 s behind 16 such
    reads)."""
    store = SlowHistory(seconds=0.5)
    request = AssistantRequest(assistant_id="a", user_input="hi", read_from_history=True)
    log = RequestLog("t-history")

    def read() -> None:
        assert saving.load_history(store, request, AUTHOR, "t-history", 0.05, log) == ()

    readers = [threading.Thread(target=read) for _ in range(16)]  # twice the pool's threads
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    time.sleep(1.5)  # every read begun has ended
    assert store.reads_begun <= 8  # the ones already on a thread when given up
