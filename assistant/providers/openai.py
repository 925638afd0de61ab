"""OpenAI Chat Completions, streamed natively (`POST {base}/chat/completions`).

`OPENAI_BASE_URL` includes the version path, as in OpenAI's own SDK
(`https://api.openai.com/v1`), so any compatible server (vLLM, LiteLLM, a
local gateway) is one URL away. Events are bare `data:` JSON chunks ending
with `data: [DONE]`; a stream without `[DONE]` is incomplete. With
`stream_options.include_usage`, the usage arrives in a chunk whose `choices`
is empty. Reasoning text appears only on compatible servers, as
`delta.reasoning_content` or `delta.reasoning`, possibly in a chunk with no
content. `{"error": ...}` inside the 200 stream is a failure.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
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

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "content_filter",
}


def _reasoning_effort(budget: int) -> str:
    """OpenAI takes an effort level, not a token budget: the nearest level."""
    if budget <= 2048:
        return "low"
    return "medium" if budget <= 8192 else "high"


class OpenAIProvider(HttpProvider):
    name = "openai"

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        messages += [{"role": t.role, "content": t.content} for t in merged_turns(prompt.turns)]
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_completion_tokens": self.settings.max_tokens,
        }
        if self.settings.thinking:
            body["reasoning_effort"] = _reasoning_effort(self.settings.thinking_budget)
        elif self.settings.temperature is not None:
            body["temperature"] = self.settings.temperature
        return body

    async def stream(
        self, client: httpx.AsyncClient, prompt: Prompt
    ) -> AsyncGenerator[Event, None]:
        headers = {"authorization": f"Bearer {self.api_key}", "accept": "text/event-stream"}
        url = f"{self.settings.base_url}/chat/completions"
        model, raw_stop, usage, finished = self.settings.model, None, Usage(), False
        async with self._post(client, url, self._body(prompt), headers) as response:
            async for event in iter_sse(response):
                if event.data == "[DONE]":
                    finished = True
                    break
                chunk = json_object(event.data)
                if "error" in chunk:
                    raise ProviderError("upstream_error", _error_type(chunk["error"]))
                model = chunk.get("model") or model
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                for choice in chunk.get("choices") or []:
                    raw_stop = choice.get("finish_reason") or raw_stop
                    for delta in _deltas(choice.get("delta") or {}):
                        yield delta
        if not finished:
            raise ProviderError("upstream_incomplete", "stream ended without [DONE]")
        yield StreamEnd(normalised_stop_reason(raw_stop, _STOP_REASONS), usage, model)


def _deltas(delta: dict[str, Any]) -> list[Event]:
    """Reasoning before content: a chunk may carry both, and thinking comes first."""
    events: list[Event] = []
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        events.append(ThinkingDelta(reasoning))
    content = delta.get("content")
    if isinstance(content, str) and content:
        events.append(TextDelta(content))
    return events


def _usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        thinking_tokens=details.get("reasoning_tokens"),
    )


def _error_type(error: Any) -> str:
    if isinstance(error, dict):
        return str(error.get("type") or error.get("code") or "error")
    return "error"
