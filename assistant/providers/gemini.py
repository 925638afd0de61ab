"""Gemini, streamed natively (`:streamGenerateContent?alt=sse`).

Each event is a whole `GenerateContentResponse`. There is no `[DONE]`: a
stream is complete when a candidate carried a `finishReason`, and that last
event may have no `parts` at all, only the reason and `usageMetadata`.
Thought parts carry `thought: true`; that flag alone decides (a
`thoughtSignature` appears on other parts too). An error can arrive as a
`data:` event or as a bare JSON tail at EOF, outside any SSE framing; both
are failures. A prompt blocked by safety settings has no candidates and a
`promptFeedback.blockReason`.
"""

from __future__ import annotations

import json
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
    "STOP": "end_turn",
    "MAX_TOKENS": "max_tokens",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


class GeminiProvider(HttpProvider):
    name = "gemini"

    def _refuses_key(self, status: int, body: str) -> bool:
        # Gemini answers a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
        return status == 401 or (status == 400 and "API_KEY_INVALID" in body)

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "contents": [
                {
                    "role": "model" if t.role == "assistant" else "user",
                    "parts": [{"text": t.content}],
                }
                for t in merged_turns(prompt.turns)
            ],
            "generationConfig": {"maxOutputTokens": self.settings.max_tokens},
        }
        if prompt.system:
            body["systemInstruction"] = {"parts": [{"text": prompt.system}]}
        config = body["generationConfig"]
        if self.settings.temperature is not None:
            config["temperature"] = self.settings.temperature
        if self.settings.thinking:
            config["thinkingConfig"] = {
                "includeThoughts": True,
                "thinkingBudget": self.settings.thinking_budget,
            }
        return body

    async def stream(
        self, client: httpx.AsyncClient, prompt: Prompt
    ) -> AsyncGenerator[Event, None]:
        headers = {"x-goog-api-key": self.api_key, "accept": "text/event-stream"}
        url = (
            f"{self.settings.base_url}/v1beta/models/{self.settings.model}"
            ":streamGenerateContent?alt=sse"
        )
        model, raw_stop, usage = self.settings.model, None, Usage()
        unframed: list[str] = []
        async with self._post(client, url, self._body(prompt), headers) as response:
            async for event in iter_sse(response, unframed):
                chunk = json_object(event.data)
                _raise_if_error(chunk)
                model = chunk.get("modelVersion") or model
                if chunk.get("usageMetadata"):
                    usage = _usage(chunk["usageMetadata"])
                for candidate in chunk.get("candidates") or []:
                    raw_stop = candidate.get("finishReason") or raw_stop
                    for part in (candidate.get("content") or {}).get("parts") or []:
                        text = part.get("text")
                        if isinstance(text, str) and text:
                            yield (
                                ThinkingDelta(text)
                                if part.get("thought") is True
                                else TextDelta(text)
                            )
        if unframed:
            _raise_if_error(_bare_json("\n".join(unframed)))  # the lines after the last event
        if raw_stop is None:
            raise ProviderError("upstream_incomplete", "stream ended without a finishReason")
        yield StreamEnd(normalised_stop_reason(raw_stop, _STOP_REASONS), usage, model)


def _raise_if_error(chunk: Any) -> None:
    if isinstance(chunk, list):  # a bare tail is a JSON array of error objects
        for item in chunk:
            _raise_if_error(item)
        return
    if not isinstance(chunk, dict):
        return
    error = chunk.get("error")
    if isinstance(error, dict):
        status = error.get("code") if isinstance(error.get("code"), int) else None
        raise ProviderError("upstream_error", str(error.get("status") or "error"), status=status)
    block = (chunk.get("promptFeedback") or {}).get("blockReason")
    if block and not chunk.get("candidates"):
        raise ProviderError("upstream_error", f"prompt blocked: {block}")


def _bare_json(text: str) -> Any:
    """A JSON tail outside any SSE framing, or None if it is not JSON."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _usage(metadata: dict[str, Any]) -> Usage:
    # candidatesTokenCount leaves thoughts out; output counts them, as the others do.
    thoughts = metadata.get("thoughtsTokenCount")
    candidates = metadata.get("candidatesTokenCount")
    output = (
        None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    )
    return Usage(
        input_tokens=metadata.get("promptTokenCount"),
        output_tokens=output,
        thinking_tokens=thoughts,
    )
