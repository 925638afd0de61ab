"""Ollama, streamed natively (`POST {base}/api/chat`, NDJSON).

One JSON object per line: `message.content` is text, `message.thinking` is
reasoning (sent only with `think: true`, which is set only when thinking is
on: models without it refuse the flag). The last line has `done: true`,
`done_reason` and token counts; a stream that ends without it is
incomplete. `{"error": "..."}` lines arrive with status 200 and are failures.
Ollama needs no key: it is configured by `OLLAMA_BASE_URL` alone.
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
from .ndjson import iter_ndjson

_STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens"}


class OllamaProvider(HttpProvider):
    name = "ollama"

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        messages += [{"role": t.role, "content": t.content} for t in merged_turns(prompt.turns)]
        options: dict[str, Any] = {"num_predict": self.settings.max_tokens}
        if self.settings.temperature is not None:
            options["temperature"] = self.settings.temperature
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "stream": True,
            "options": options,
        }
        if self.settings.thinking:
            body["think"] = True
        return body

    async def stream(
        self, client: httpx.AsyncClient, prompt: Prompt
    ) -> AsyncGenerator[Event, None]:
        url = f"{self.settings.base_url}/api/chat"
        async with self._post(client, url, self._body(prompt), {}) as response:
            async for line in iter_ndjson(response):
                if "error" in line:
                    raise ProviderError("upstream_error", str(line["error"])[:200])
                message = line.get("message") or {}
                thinking, content = message.get("thinking"), message.get("content")
                if isinstance(thinking, str) and thinking:
                    yield ThinkingDelta(thinking)
                if isinstance(content, str) and content:
                    yield TextDelta(content)
                if line.get("done") is True:
                    usage = Usage(
                        input_tokens=line.get("prompt_eval_count"),
                        output_tokens=line.get("eval_count"),
                    )
                    stop = normalised_stop_reason(line.get("done_reason") or "stop", _STOP_REASONS)
                    model = line.get("model") or self.settings.model
                    yield StreamEnd(stop, usage, model)
                    return
        raise ProviderError("upstream_incomplete", "stream ended without done: true")
