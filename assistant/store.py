"""Persistence interface: what a reply hands over to be saved, and who saves it.

A reply writes at most two messages, with ids derived from the trace id
(`{traceId}-user`, `{traceId}-assistant`) so a retried request overwrites
instead of duplicating. The user message is written in parallel with the
provider call; the assistant message once, after the stream, before the
final frame. Writes are blocking calls on a small thread pool, never on the
I/O loop, and the reply waits for them no longer than its persist timeout.

A request with `save_to_history` false has no store at all (None): nothing
is written and no message ids are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Author:
    """Who sent the user message; `user_id` is what rules and history queries key on."""

    user_id: str | None
    email: str | None
    name: str | None


@dataclass(frozen=True)
class UserMessage:
    assistant_id: str
    trace_id: str
    thread_id: str | None
    author: Author
    content: str

    @property
    def message_id(self) -> str:
        return f"{self.trace_id}-user"


@dataclass(frozen=True)
class AssistantMessage:
    assistant_id: str
    trace_id: str
    thread_id: str | None
    author: Author  # the user this reply answers, so their history query finds it
    content: str  # visible text, thinking removed
    thinking_content: str
    status: str  # "complete" | "incomplete"
    provider: str | None
    model: str | None
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: str | None = None
    structured_output: Any = None
    tools_to_use: tuple[str, ...] = ()

    @property
    def message_id(self) -> str:
        return f"{self.trace_id}-assistant"


class MessageStore(Protocol):
    def save_user_message(self, message: UserMessage) -> str:
        """Write (or overwrite) the user message; returns its id. Raises on failure."""
        ...

    def save_assistant_message(self, message: AssistantMessage) -> str:
        """Write (or overwrite) the assistant message; returns its id. Raises on failure."""
        ...
