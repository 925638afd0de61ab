"""Anthropic Messages API, streamed natively (`POST /v1/messages`, `stream: true`).

Each SSE event is handled by the entry for its name in `_HANDLERS`; names we
do not know are skipped, as Anthropic asks clients to do. Every delta of every
event is kept. `event: error` is a failure even though the status was 200,
and a stream that ends without `message_stop` is incomplete.
`message_delta.usage.output_tokens` is cumulative, so it is assigned, never
added.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .base import (
    Event,
    HttpProvider,
    Prompt,
    ProviderError,
    StopReason,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    Usage,
    merged_turns,
    normalised_stop_reason,
)
from .sse_events import iter_sse, json_object

API_VERSION = "2023-06-01"

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": "end_turn",
    "max_tokens": "max_tokens",
    "stop_sequence": "stop_sequence",
    "tool_use": "tool_use",
    "refusal": "content_filter",
}


@dataclass
class _State:
    model: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    finished: bool = False
    out: list[Event] = field(default_factory=list)


def _on_message_start(data: dict[str, Any], state: _State) -> None:
    message = data.get("message") or {}
    state.model = message.get("model") or state.model
    usage = message.get("usage") or {}
    state.input_tokens = _input_tokens(usage)
    state.output_tokens = usage.get("output_tokens", state.output_tokens)


def _input_tokens(usage: dict[str, Any]) -> int | None:
    parts = [
        usage.get(name)
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    counted = [part for part in parts if isinstance(part, int)]
    return sum(counted) if counted else None


def _on_block_start(data: dict[str, Any], state: _State) -> None:
    # A block may open with text already in it; usually it is empty.
    block = data.get("content_block") or {}
    if block.get("type") == "text" and block.get("text"):
        state.out.append(TextDelta(block["text"]))
    elif block.get("type") == "thinking" and block.get("thinking"):
        state.out.append(ThinkingDelta(block["thinking"]))


def _on_block_delta(data: dict[str, Any], state: _State) -> None:
    delta = data.get("delta") or {}
    kind = delta.get("type")
    if kind == "text_delta" and delta.get("text"):
        state.out.append(TextDelta(delta["text"]))
    elif kind == "thinking_delta" and delta.get("thinking"):
        state.out.append(ThinkingDelta(delta["thinking"]))
    # signature_delta, input_json_delta, citations_delta: nothing to show.


def _on_message_delta(data: dict[str, Any], state: _State) -> None:
    state.stop_reason = (data.get("delta") or {}).get("stop_reason") or state.stop_reason
    output_tokens = (data.get("usage") or {}).get("output_tokens")
    if isinstance(output_tokens, int):
        state.output_tokens = output_tokens  # cumulative: assign, never add


def _on_message_stop(data: dict[str, Any], state: _State) -> None:
    state.finished = True


def _on_error(data: dict[str, Any], state: _State) -> None:
    error = data.get("error") or {}
    raise ProviderError("upstream_error", str(error.get("type") or "error event"))


_HANDLERS: dict[str, Callable[[dict[str, Any], _State], None]] = {
    "message_start": _on_message_start,
    "content_block_start": _on_block_start,
    "content_block_delta": _on_block_delta,
    "message_delta": _on_message_delta,
    "message_stop": _on_message_stop,
    "error": _on_error,
}


class AnthropicProvider(HttpProvider):
    name = "anthropic"

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "max_tokens": self.settings.max_tokens,
            "stream": True,
            "messages": [
                {"role": turn.role, "content": turn.content} for turn in merged_turns(prompt.turns)
            ],
        }
        if prompt.system:
            body["system"] = prompt.system
        if self.settings.thinking:
            # Extended thinking takes no temperature; config keeps max_tokens above the budget.
            body["thinking"] = {"type": "enabled", "budget_tokens": self.settings.thinking_budget}
        elif self.settings.temperature is not None:
            body["temperature"] = self.settings.temperature
        return body

    async def stream(
        self, client: httpx.AsyncClient, prompt: Prompt
    ) -> AsyncGenerator[Event, None]:
        headers = {
            "x-api-key": self.api_key,
            "anthropic-version": API_VERSION,
            "accept": "text/event-stream",
        }
        url = f"{self.settings.base_url}/v1/messages"
        state = _State(model=self.settings.model)
        async with self._post(client, url, self._body(prompt), headers) as response:
            async for event in iter_sse(response):
                handler = _HANDLERS.get(event.event)
                if handler is None:
                    continue  # ping and event types added after this was written
                handler(json_object(event.data), state)
                for delta in state.out:
                    yield delta
                state.out.clear()
                if state.finished:
                    break
        if not state.finished:
            raise ProviderError("upstream_incomplete", "stream ended without message_stop")
        usage = Usage(input_tokens=state.input_tokens, output_tokens=state.output_tokens)
        stop_reason = normalised_stop_reason(state.stop_reason, _STOP_REASONS)
        yield StreamEnd(stop_reason=stop_reason, usage=usage, model=state.model)
