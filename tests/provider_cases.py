"""What each provider must do, as data: one `ProviderCase` per provider.

tests/test_all_providers.py runs every scenario that all four providers share
(fixture replays, statuses, stop reasons, thinking, every failure of the fake,
the chain's rules) once, parametrised over `CASES`; what differs between the
providers is here: their request paths, headers and bodies, their stop-reason
tables, their usage figures, what their recorded streams
(tests/fixtures/<provider>/) must come to. A provider's own wire quirks, tested
nowhere else, stay in its test file (test_anthropic.py, ...), which reads its
case from here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from assistant.config import ProviderSettings
from assistant.providers.anthropic import AnthropicProvider
from assistant.providers.base import (
    Event,
    HttpProvider,
    Prompt,
    Provider,
    ProviderError,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    Usage,
)
from assistant.providers.gemini import GeminiProvider
from assistant.providers.ollama import OllamaProvider
from assistant.providers.openai import OpenAIProvider
from assistant.request import Turn
from assistant.tools import ToolCall

from .provider_support import (
    PROMPT,
    awkward_gemini_chunks,
    awkward_ndjson_chunks,
    awkward_sse_chunks,
    named,
    provider_settings,
    stream_events,
)

FIXTURES = Path(__file__).parent / "fixtures"


@dataclasses.dataclass(frozen=True)
class Replay:
    """What a recorded stream comes to: its events, then the error it ends with, if any."""

    events: list[Event]
    code: str | None = None
    status: int | None = None  # the error's status, for in-stream errors that carry one


@dataclasses.dataclass(frozen=True)
class ProviderCase:
    """One provider: how to make it, and what the shared scenarios expect of it."""

    provider_class: type[HttpProvider]
    model: str  # the model its settings name
    path: str  # the path it posts to, "{model}" standing for the model
    headers: Mapping[str, str]  # headers every request carries (its auth header, if any)
    # REQUEST_PROMPT with model "model-x", 777 tokens and a temperature of 0.3:
    request_body: Mapping[str, Any]
    # A lone "hi" with no system prompt and the default settings:
    default_body: Mapping[str, Any]
    # What a temperature of 0 changes in default_body (0 is a value, not "unset"):
    zero_temperature: Mapping[str, Any]
    # What THINKING_ENV (model "model-y", 8000 tokens, thinking with a budget of 3000, and
    # a temperature of 0) changes in default_body:
    thinking: Mapping[str, Any]
    statuses: tuple[int, ...]  # error statuses it is tried with
    stop_reasons: Mapping[str, str]  # the fake's scripted stop reason -> ours
    replays: Mapping[str, Replay]  # every file in fixtures/<name>/
    one_byte: tuple[str, ...]  # fixtures also replayed one byte per read
    leaks: tuple[str, ...]  # upstream words in its error fixtures that no message may show
    keyless: bool = False  # it takes no key (Ollama)
    base_path: str = ""  # what its base URL adds to the fake's URL
    counts_thinking: bool = False  # its usage counts thinking tokens apart (0 for none)
    error_status: int | None = None  # the status its in-stream error carries
    keepalive: bool = False  # its format has keep-alives (the fake's `ping_every`)
    awkward_chunks: Callable[[bytes], list[bytes]] = awkward_sse_chunks  # cut a fixture

    @property
    def name(self) -> str:
        return self.provider_class.name

    @property
    def key(self) -> str:
        """The key it is given."""
        return "" if self.keyless else "test-key"

    @property
    def fixtures(self) -> Path:
        return FIXTURES / self.name

    def fixture(self, name: str) -> bytes:
        return (self.fixtures / name).read_bytes()

    def settings(self, url: str, **changes: Any) -> ProviderSettings:
        """Its settings against the fake at `url` (see `provider_settings` for defaults)."""
        key_name = "" if self.keyless else f"{self.name.upper()}_API_KEY"
        return provider_settings(self.name, url + self.base_path, self.model, key_name, **changes)

    def provider(self, url: str, name: str | None = None) -> Provider:
        """The provider against the fake at `url`, named `name` (else its own name)."""
        return named(self.provider_class(self.settings(url), self.key), name or self.name)

    def events(
        self, url: str, prompt: Prompt = PROMPT, read_timeout: float = 5, **changes: Any
    ) -> tuple[list[Event], ProviderError | None]:
        """Everything it yielded against the fake at `url`, and the error it ended with."""
        settings = self.settings(url, **changes)
        return stream_events(self.provider_class, settings, prompt, self.key, read_timeout)

    def request_path(self, model: str | None = None) -> str:
        return self.path.format(model=model or self.model)

    def usage(self, input_tokens: int, output_tokens: int, thinking_tokens: int = 0) -> Usage:
        """The usage it reports for these counts."""
        thinking = thinking_tokens if self.counts_thinking else None
        return Usage(input_tokens, output_tokens, thinking)

    def status_of(self, code: str | None) -> int | None:
        """The status an error with this code carries, when it comes from inside a stream."""
        return self.error_status if code == "upstream_error" else None


def texts(*pieces: str) -> list[Event]:
    return [TextDelta(piece) for piece in pieces]


def thoughts(*pieces: str) -> list[Event]:
    return [ThinkingDelta(piece) for piece in pieces]


def end(stop_reason: Any, model: str, *counts: int | None) -> StreamEnd:
    """The StreamEnd of a reply: why it stopped, its model, its usage (input, output[,
    thinking])."""
    return StreamEnd(stop_reason, Usage(*counts), model)


# The prompt of the request scenario: a UI greeting first (dropped), then turns of one
# role in a row (joined).
REQUEST_PROMPT = Prompt(
    system="You are terse.",
    turns=(
        Turn("assistant", "Hello! How can I help?"),
        Turn("user", "first"),
        Turn("user", "second"),
        Turn("assistant", "a1"),
        Turn("assistant", "a2"),
        Turn("user", "now"),
    ),
)
MERGED = [
    {"role": "user", "content": "first\n\nsecond"},
    {"role": "assistant", "content": "a1\n\na2"},
    {"role": "user", "content": "now"},
]
SYSTEM = {"role": "system", "content": "You are terse."}
HI = [{"role": "user", "content": "hi"}]
JSON = "application/json"
EVENT_STREAM = "text/event-stream"

# Every text_basic fixture holds this text: non-ASCII, and the JSON-legal line separators.
BASIC_TEXT = texts("Hello", ", café € 😀", " line\u2028sep\u2029end.")


# -- Anthropic --------------------------------------------------------------------------------

SONNET = "claude-sonnet-4-5-20250929"

ANTHROPIC = ProviderCase(
    AnthropicProvider,
    model="claude-test",
    path="/v1/messages",
    headers={
        "x-api-key": "test-key",
        "anthropic-version": "2023-06-01",
        "content-type": JSON,
        "accept": EVENT_STREAM,
    },
    request_body={
        "model": "model-x",
        "max_tokens": 777,
        "stream": True,
        "system": "You are terse.",
        "temperature": 0.3,
        "messages": MERGED,
    },
    default_body={"model": "claude-test", "max_tokens": 1024, "stream": True, "messages": HI},
    zero_temperature={"temperature": 0.0},
    # Extended thinking takes no temperature.
    thinking={
        "model": "model-y",
        "max_tokens": 8000,
        "thinking": {"type": "enabled", "budget_tokens": 3000},
    },
    statuses=(429, 500, 401, 529),
    stop_reasons={
        "end_turn": "end_turn",
        "max_tokens": "max_tokens",
        "stop_sequence": "stop_sequence",
        "tool_use": "other",  # with no call made (the fake's script has none)
        "refusal": "content_filter",
        "model_context_window_exceeded": "max_tokens",
        "something_new": "other",
    },
    keepalive=True,  # event: ping
    replays={
        "text_basic.sse": Replay([*BASIC_TEXT, end("end_turn", SONNET, 25, 15)]),
        "thinking.sse": Replay(
            [
                *thoughts(
                    "I need the GCD of 1071 and 462.\n\n1071 = 2 \u00d7 462 + 147",
                    "\n462 = 3 \u00d7 147 + 21\n147 = 7 \u00d7 21 \u2192 GCD is 21.",
                ),
                *texts("The greatest common divisor ", "of 1071 and 462 is **21**."),
                end("end_turn", "claude-opus-4-1-20250805", 58, 184),
            ]
        ),
        "error_overloaded.sse": Replay([], "upstream_error"),
        "error_after_text.sse": Replay(texts("Partial answer, "), "upstream_error"),
        "incomplete.sse": Replay(texts("Cut ", "short"), "upstream_incomplete"),
        "pings.sse": Replay([*texts("Still ", "here."), end("end_turn", SONNET, 9, 3)]),
        "unknown_event.sse": Replay([*texts("Known ", "text."), end("end_turn", SONNET, 11, 2)]),
        "tool_use.sse": Replay(
            [
                *texts("Okay, let's check ", "the weather for San Francisco, CA:"),
                ToolCall(
                    "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "get_weather",
                    {"location": "San Francisco, CA"},
                ),
                end("tool_use", SONNET, 472, 89),
            ]
        ),
        # output_tokens is cumulative: 25 is the total, not 10 + 25.
        "usage_cumulative.sse": Replay([*texts("One, ", "two"), end("max_tokens", SONNET, 20, 25)]),
        # Thinking counted apart (output_tokens_details), and a reply the context window
        # cut off: max_tokens, as the other providers' cut-offs.
        "thinking_tokens.sse": Replay(
            [*thoughts("Short plan."), *texts("Done."), end("max_tokens", SONNET, 20, 300, 280)]
        ),
        # With a server tool (web search) the input grows during the turn: message_delta's
        # input_tokens is the cumulative figure, and wins over message_start's.
        "server_tool_usage.sse": Replay(
            [*texts("Sunny, ", "24 °C."), end("end_turn", SONNET, 10682, 510)]
        ),
        # input_tokens is the whole input: uncached 12 + cache written 2048 + cache read 1024.
        "cache_usage.sse": Replay(
            [*texts("Cached."), end("end_turn", SONNET, 12 + 2048 + 1024, 7)]
        ),
    },
    one_byte=("thinking.sse",),
    leaks=("overloaded_error", "Overloaded"),
)


# -- OpenAI (and compatible servers: DeepSeek, OpenRouter, vLLM, Azure, llama-cpp) -----------

OPENAI = ProviderCase(
    OpenAIProvider,
    model="gpt-test",
    base_path="/v1",  # OPENAI_BASE_URL includes /v1
    path="/v1/chat/completions",
    headers={"authorization": "Bearer test-key", "content-type": JSON, "accept": EVENT_STREAM},
    request_body={
        "model": "model-x",
        "messages": [SYSTEM, *MERGED],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 777,  # a compatible server's (test_openai.py: OpenAI's own)
        "temperature": 0.3,
    },
    # No temperature, no reasoning_effort.
    default_body={
        "model": "gpt-test",
        "messages": HI,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 1024,
    },
    zero_temperature={"temperature": 0.0},
    # An effort level for the budget (test_openai.py has the table), and no temperature.
    thinking={"model": "model-y", "max_tokens": 8000, "reasoning_effort": "medium"},
    statuses=(401, 429, 500, 400, 503),
    stop_reasons={
        "end_turn": "end_turn",  # "stop" on the wire
        "stop_sequence": "end_turn",  # also "stop"
        "max_tokens": "max_tokens",  # "length"
        "tool_calls": "other",  # with no call made (the fake's script has none)
        "function_call": "other",
        "content_filter": "content_filter",
        "something_new": "other",
    },
    counts_thinking=True,  # completion_tokens_details.reasoning_tokens
    keepalive=True,  # the comment line ": keep-alive"
    replays={
        # No include_usage: no usage at all.
        "text_basic.sse": Replay([*BASIC_TEXT, end("end_turn", "gpt-4o-mini-2024-07-18")]),
        # The usage chunk has `"choices": []`; reasoning tokens are reported apart.
        "usage_include.sse": Replay(
            [*texts("The answer", " is 42."), end("end_turn", "o4-mini-2025-04-16", 19, 214, 192)]
        ),
        "usage_null_every_chunk.sse": Replay(
            [*texts("No ", "usage."), end("end_turn", "gpt-4.1-nano-2025-04-14")]
        ),
        # DeepSeek: reasoning_content with content null, keep-alives, usage on the finish chunk.
        "reasoning_content.sse": Replay(
            [
                *thoughts("Okay, the user says hi.", " A short greeting fits."),
                *texts("Hi", "! How can I help?"),
                end("end_turn", "deepseek-reasoner", 13, 120, 98),
            ]
        ),
        # OpenRouter: delta.reasoning (reasoning_details ignored), processing comments.
        "reasoning_openrouter.sse": Replay(
            [
                *thoughts("Count the r's: ", "s-t-r-a-w-b-e-r-r-y."),
                *texts("There are ", "three."),
                end("end_turn", "deepseek/deepseek-r1", 10, 40, 35),
            ]
        ),
        # A chunk with both: the thinking comes first.
        "reasoning_and_content.sse": Replay(
            [
                *thoughts("Two plus two", " is four."),
                *texts("4", "."),
                end("end_turn", "Qwen/Qwen3-8B", 14, 12),
            ]
        ),
        "error_mid_stream.sse": Replay(texts("Partial ", "answer"), "upstream_error"),
        "error_first.sse": Replay([], "upstream_error"),
        "incomplete.sse": Replay(texts("Cut ", "short"), "upstream_incomplete"),
        # finish_reason and usage arrived, [DONE] did not: still incomplete, no StreamEnd.
        "incomplete_after_finish.sse": Replay(texts("Almost ", "done."), "upstream_incomplete"),
        "length.sse": Replay(
            [*texts("One, two, ", "three"), end("max_tokens", "gpt-4.1-mini-2025-04-14", 20, 5, 0)]
        ),
        # Azure: a first chunk with no choices and model "" (the real model wins).
        "content_filter.sse": Replay(
            [*texts("Here is "), end("content_filter", "gpt-4o-2024-11-20")]
        ),
        # tool_calls deltas are not text; the stop reason says why the reply ended.
        "tool_calls.sse": Replay(
            [
                *texts("Let me check the weather."),
                ToolCall(
                    "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", {"location": "Paris, France"}
                ),
                end("tool_use", "gpt-4o-2024-08-06", 82, 18, 0),
            ]
        ),
        "text_crlf.sse": Replay(
            [
                *texts("Naïve ", "café — ", "ok."),
                end("end_turn", "qwen2.5-7b-instruct-q4_k_m.gguf"),
            ]
        ),
        "keepalive.sse": Replay([*texts("Still ", "here."), end("end_turn", "gpt-4.1-2025-04-14")]),
    },
    one_byte=("text_crlf.sse", "reasoning_openrouter.sse"),
    leaks=("disconnected", "Sorry", "server_error"),
)


# -- Gemini -----------------------------------------------------------------------------------

FLASH_20 = "gemini-2.0-flash"
FLASH_25 = "gemini-2.5-flash"

GEMINI = ProviderCase(
    GeminiProvider,
    model="gemini-test",
    # The key goes in a header only, never in the query.
    path="/v1beta/models/{model}:streamGenerateContent?alt=sse",
    headers={"x-goog-api-key": "test-key", "content-type": JSON, "accept": EVENT_STREAM},
    request_body={
        "contents": [
            {"role": "user", "parts": [{"text": "first\n\nsecond"}]},
            {"role": "model", "parts": [{"text": "a1\n\na2"}]},
            {"role": "user", "parts": [{"text": "now"}]},
        ],
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "generationConfig": {"maxOutputTokens": 777, "temperature": 0.3},
    },
    default_body={
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 1024},
    },
    zero_temperature={"generationConfig": {"maxOutputTokens": 1024, "temperature": 0.0}},
    # The model is in the path; Gemini takes a temperature alongside thinking.
    thinking={
        "generationConfig": {
            "maxOutputTokens": 8000,
            "temperature": 0.0,
            "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 3000},
        }
    },
    statuses=(400, 403, 429, 500, 503),  # their names: test_gemini.py
    stop_reasons={
        "end_turn": "end_turn",  # the fake sends STOP
        "max_tokens": "max_tokens",  # MAX_TOKENS
        "SAFETY": "content_filter",  # values the fake does not map are sent as they are
        "RECITATION": "content_filter",
        "PROHIBITED_CONTENT": "content_filter",
        "OTHER": "other",
        "MALFORMED_FUNCTION_CALL": "other",
    },
    counts_thinking=True,  # thoughtsTokenCount, which the fake always sends
    error_status=503,  # the fake's error is {"code": 503, "status": "UNAVAILABLE", ...}
    replays={
        # The last event's empty text part next to STOP yields nothing.
        "text_basic.sse": Replay([*BASIC_TEXT, end("end_turn", FLASH_20, 7, 12)]),
        # thoughtSignature on text parts does not make them thoughts; a part with only a
        # signature yields nothing; output counts candidates + thoughts.
        "thinking.sse": Replay(
            [
                *thoughts(
                    "**Applying Euclid**\n\n1071 = 2 \u00d7 462 + 147",
                    "\n462 = 3 \u00d7 147 + 21; 147 = 7 \u00d7 21.",
                    " So the GCD is 21.",
                ),
                *texts("The greatest common divisor ", "of 1071 and 462 is **21**."),
                end("end_turn", FLASH_25, 18, 14 + 131, 131),
            ]
        ),
        "finish_no_parts.sse": Replay(
            [*texts("Short ", "answer."), end("end_turn", FLASH_20, 5, 3)]
        ),
        "max_tokens.sse": Replay(
            [*texts("Once upon a time, ", "in a land"), end("max_tokens", FLASH_20, 11, 8)]
        ),
        "max_tokens_in_thoughts.sse": Replay(
            [
                *thoughts("**Planning the essay**\n\nFirst, the outline"),
                end("max_tokens", FLASH_25, 9, 64, 64),
            ]
        ),
        "safety.sse": Replay([*texts("Here is how "), end("content_filter", FLASH_20, 14, 3)]),
        "prompt_blocked.sse": Replay([], "upstream_refused"),
        "error_data.sse": Replay(texts("Partial answer, "), "upstream_error", 500),
        "error_tail.sse": Replay(texts("Okay, ", "so the first"), "upstream_error", 503),
        # A bare-object tail after a STOP event: the reply still failed.
        "error_tail_after_stop.sse": Replay(texts("Okay"), "upstream_error", 429),
        "incomplete.sse": Replay(texts("Cut ", "short"), "upstream_incomplete"),
        # No modelVersion: the configured model is reported.
        "no_model_version.sse": Replay(
            [*texts("No version."), end("end_turn", "gemini-test", 3, 2)]
        ),
        "model_version.sse": Replay(
            [*texts("Resolved ", "alias."), end("end_turn", "gemini-2.5-pro-preview-06-05", 4, 3)]
        ),
    },
    awkward_chunks=awkward_gemini_chunks,
    one_byte=("thinking.sse", "error_tail.sse", "text_basic.sse"),
    leaks=("overloaded", "internal error", "exhausted", "PROHIBITED"),
)


# -- Ollama -----------------------------------------------------------------------------------

OLLAMA = ProviderCase(
    OllamaProvider,
    model="llama3.2",
    keyless=True,
    path="/api/chat",
    headers={"content-type": JSON},  # and no key header at all
    request_body={
        "model": "model-x",
        "messages": [SYSTEM, *MERGED],
        "stream": True,
        "options": {"num_predict": 777, "temperature": 0.3},
        "think": False,
    },
    # No temperature; `think: false` (left out, a model that can think does).
    default_body={
        "model": "llama3.2",
        "messages": HI,
        "stream": True,
        "options": {"num_predict": 1024},
        "think": False,
    },
    zero_temperature={"options": {"num_predict": 1024, "temperature": 0.0}},
    thinking={
        "model": "model-y",
        "options": {"num_predict": 8000, "temperature": 0.0},
        "think": True,
    },
    statuses=(404, 500, 503),  # 404: an unknown model (see test_ollama.py)
    stop_reasons={
        "end_turn": "end_turn",
        "stop_sequence": "end_turn",
        "max_tokens": "max_tokens",
        "something_new": "other",
    },
    replays={
        # Raw U+2028 / U+2029 (a server that does not escape them) and Go's \u003c escapes.
        "text_basic.ndjson": Replay(
            [*BASIC_TEXT, *texts(" <b>&</b>"), end("end_turn", "llama3.2", 26, 5)]
        ),
        "thinking.ndjson": Replay(
            [
                *thoughts(
                    "The user asks for 17 \u00d7 23.",
                    "\n17 \u00d7 20 = 340, 17 \u00d7 3 = 51",
                    " → 391.",
                ),
                *texts("17 \u00d7 23 = ", "**391**"),
                end("end_turn", "qwen3:8b", 18, 47),
            ]
        ),
        "error_after_text.ndjson": Replay(texts("Partial", " answer, "), "upstream_error"),
        "error_only.ndjson": Replay([], "upstream_error"),
        "incomplete.ndjson": Replay(texts("Cut", " short"), "upstream_incomplete"),
        "length.ndjson": Replay(
            [*texts("One, ", "two, ", "three"), end("max_tokens", "llama3.2", 31, 16)]
        ),
        # An older server: no done_reason (read as a normal stop), no prompt_eval_count.
        "done_no_reason.ndjson": Replay(
            [*texts("Old ", "server."), end("end_turn", "mistral:7b", None, 3)]
        ),
    },
    awkward_chunks=awkward_ndjson_chunks,
    one_byte=("thinking.ndjson",),
    leaks=("error was encountered", "runner"),
)


CASES = (ANTHROPIC, OPENAI, GEMINI, OLLAMA)
