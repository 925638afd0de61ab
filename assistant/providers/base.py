"""What every provider yields and raises, so the chain can treat them alike.

A provider's `stream()` is an async iterator of events: `TextDelta` and
`ThinkingDelta` as the model writes, then exactly one `StreamEnd` when the
upstream said it was finished. Every failure is a `ProviderError`:

    ProviderError              code + a message safe to show + detail for the log
      (codes) upstream_unreachable  connect failed
              upstream_timeout      connect / first chunk / idle timeout
              upstream_status       a 4xx / 5xx answer (status set)
              upstream_error        an error event inside a 200 stream
              upstream_empty        the stream ended with no text at all
              upstream_incomplete   the stream ended without its end marker
              upstream_protocol     a body we could not read

httpx errors are translated in one place (`translate_http_error`), so the
chain never sees a third-party exception.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from ..config import ProviderSettings
from ..errors import MESSAGES, UpstreamCode
from ..request import Turn

# The stop reasons every provider's own are mapped to (metadata `stop_reason`).
StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "content_filter", "other"
]


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class ThinkingDelta:
    text: str


@dataclass(frozen=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    thinking_tokens: int | None = None  # only where the provider reports it apart

    def as_dict(self) -> dict[str, int]:
        return {name: value for name, value in vars(self).items() if value is not None}


@dataclass(frozen=True)
class StreamEnd:
    stop_reason: StopReason | None
    usage: Usage = field(default_factory=Usage)
    model: str | None = None


Event = TextDelta | ThinkingDelta | StreamEnd


@dataclass(frozen=True)
class Prompt:
    """What every provider sends, in its own wire format."""

    system: str | None
    turns: tuple[Turn, ...]  # oldest first; the last one is the user's new message


class ProviderError(Exception):
    """A provider failed. `message` is safe to show; `detail` is for the log only."""

    def __init__(
        self,
        code: UpstreamCode,
        detail: str = "",
        status: int | None = None,
        key_refused: bool = False,
    ) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code: UpstreamCode = code
        self.message = MESSAGES[code]
        self.detail = detail
        self.status = status
        self.key_refused = key_refused  # the provider refused our key: worth re-reading it


def translate_http_error(exc: httpx.HTTPError) -> ProviderError:
    """The one place where httpx's exceptions become ours."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return ProviderError("upstream_timeout", "connect timeout")
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError("upstream_timeout", "no data within the idle timeout")
    if isinstance(exc, httpx.ConnectError):
        return ProviderError("upstream_unreachable", type(exc).__name__)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return ProviderError("upstream_incomplete", f"connection dropped: {type(exc).__name__}")
    return ProviderError("upstream_protocol", type(exc).__name__)


class Provider(Protocol):
    name: str
    model: str
    settings: ProviderSettings
    api_key: str

    def stream(self, client: httpx.AsyncClient, prompt: Prompt) -> AsyncGenerator[Event, None]:
        """Events of one reply; raises ProviderError on any failure. The caller
        closes it (`aclose`), which closes the upstream response."""
        ...


class HttpProvider:
    """What every provider module shares: its settings, its key, one POST that streams."""

    name = ""

    def __init__(self, settings: ProviderSettings, api_key: str) -> None:
        self.settings = settings
        self.model = settings.model
        self.api_key = api_key  # never logged; the class has no repr that shows it

    @asynccontextmanager
    async def _post(
        self, client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[httpx.Response]:
        """The streaming response, or upstream_status for anything but a 200."""
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                detail = await read_error_body(response)
                raise ProviderError(
                    "upstream_status",
                    detail,
                    status=response.status_code,
                    key_refused=self._refuses_key(response.status_code, detail),
                )
            yield response

    def _refuses_key(self, status: int, body: str) -> bool:
        """Whether an error answer means "your key is wrong" (worth re-reading it)."""
        return status == 401


def normalised_stop_reason(raw: str | None, table: Mapping[str, StopReason]) -> StopReason | None:
    """A provider's stop reason in our vocabulary; None while the reply has none."""
    if raw is None:
        return None
    return table.get(raw, "other")


def merged_turns(turns: tuple[Turn, ...]) -> list[Turn]:
    """Turns as providers want them: alternating, and starting with the user.

    Consecutive turns of one role are joined. Leading assistant turns (a UI's
    greeting, or a history window that starts after a question) are dropped:
    providers refuse a conversation that opens with the assistant.
    """
    merged: list[Turn] = []
    for turn in turns:
        if not merged and turn.role == "assistant":
            continue
        if merged and merged[-1].role == turn.role:
            merged[-1] = Turn(turn.role, f"{merged[-1].content}\n\n{turn.content}")
        else:
            merged.append(turn)
    return merged


async def read_error_body(response: httpx.Response, limit: int = 2048) -> str:
    """The start of an error body, for the log only (it may echo our request)."""
    body = b""
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) >= limit:
            break
    return body[:limit].decode("utf-8", "replace")
