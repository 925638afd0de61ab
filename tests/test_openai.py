"""What only OpenAIProvider does, over real HTTP against devtools.fake_upstream.

What every provider must do (fixture replays, statuses, thinking, every failure of the
fake, the chain's rules) is tested once for all four in test_all_providers.py; what
OpenAI must come to there (its recorded streams in tests/fixtures/openai/*.sse, from
OpenAI's documented Chat Completions format and compatible servers: DeepSeek's
reasoning_content, OpenRouter, vLLM, Azure, llama-cpp-python; the usage chunk with
empty choices; its headers and body) is data in provider_cases.OPENAI. Here: the
fixtures' own line ends, error frames in their several shapes, and the settings that
only OpenAI spells its own way (a reasoning effort for a thinking budget).

`OPENAI_BASE_URL` includes `/v1`, so the provider is pointed at `{fake.url}/v1`.
"""

from __future__ import annotations

import functools
import json

import pytest

from assistant.providers.base import StreamEnd, TextDelta, ThinkingDelta
from assistant.providers.openai import OpenAIProvider, length_field
from devtools.fake_upstream import FakeUpstream, Script

from .provider_cases import OPENAI as CASE
from .provider_support import stream_events
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

settings_for = CASE.settings
# Everything an OpenAIProvider yielded, and the ProviderError it ended with (if any).
run_provider = functools.partial(stream_events, OpenAIProvider)


def test_crlf_fixture_really_has_crlf_line_ends() -> None:
    # Guards against an editor or git normalising the file.
    data = CASE.fixture("text_crlf.sse")
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r") > 10
    for name in set(CASE.replays) - {"text_crlf.sse"}:
        assert b"\r" not in CASE.fixture(name), name


def test_error_frame_detail_is_kept_for_the_log_only(upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=[CASE.fixture("error_first.sse")]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [] and error is not None
    assert error.detail == "server_error"
    assert "server_error" not in error.message


def test_data_that_is_not_json_is_a_protocol_error(upstream: FakeUpstream) -> None:
    upstream.push(
        Script(raw=[b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', b"data: {oops\n\n"])
    )
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("a")]
    assert error is not None and error.code == "upstream_protocol"


def test_done_with_a_trailing_space_ends_the_stream(upstream: FakeUpstream) -> None:
    # OpenAI's SDK ends a stream on data that starts with [DONE]; a gateway sent "[DONE] ".
    data = CASE.fixture("text_basic.sse").replace(b"data: [DONE]", b"data: [DONE] ")
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert (events, error) == (CASE.replays["text_basic.sse"].events, None)


def test_an_error_given_as_a_bare_string_is_still_an_error(upstream: FakeUpstream) -> None:
    # text-generation-inference's streaming error: {"error": "...", "error_type": "..."}.
    frame = b'data: {"error":"Input validation error: inputs too long","error_type":"validation"}'
    upstream.push(Script(raw=[frame + b"\n\n"]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None and error.code == "upstream_error"
    assert "validation" not in error.message


def test_content_given_as_parts_is_text_and_thinking(upstream: FakeUpstream) -> None:
    # Mistral's reasoning models stream `content` as a list of parts: it was dropped
    # (a reply of nothing else ended as upstream_empty).
    thinking = {"type": "thinking", "thinking": [{"type": "text", "text": "weighing"}]}
    frames = [
        {"choices": [{"index": 0, "delta": {"content": [thinking]}}]},
        {"choices": [{"index": 0, "delta": {"content": [{"type": "text", "text": "Yes."}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]
    body = b"".join(b"data: " + json.dumps(frame).encode() + b"\n\n" for frame in frames)
    upstream.push(Script(raw=[body + b"data: [DONE]\n\n"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events[:2] == [ThinkingDelta("weighing"), TextDelta("Yes.")]


def test_only_the_first_choice_is_the_answer(upstream: FakeUpstream) -> None:
    # We never ask for `n`; a server that gives several interleaved them into one text.
    frames = [
        {"choices": [{"index": None, "delta": {"content": "_"}}]},  # no index: the first
        {"choices": [{"index": 0, "delta": {"content": "A"}}]},
        {"choices": [{"index": 1, "delta": {"content": "B"}}]},
        {"choices": [{"index": 0, "delta": {"content": "C"}, "finish_reason": "stop"}]},
        {"choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]},
    ]
    body = b"".join(b"data: " + json.dumps(frame).encode() + b"\n\n" for frame in frames)
    upstream.push(Script(raw=[body + b"data: [DONE]\n\n"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert [event for event in events if isinstance(event, TextDelta)] == [
        TextDelta("_"),
        TextDelta("A"),
        TextDelta("C"),
    ]


def test_an_error_field_that_is_null_is_no_error(upstream: FakeUpstream) -> None:
    data = CASE.fixture("text_basic.sse").replace(b'"choices"', b'"error": null, "choices"')
    assert data.count(b'"error": null') > 2
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == CASE.replays["text_basic.sse"].events


@pytest.mark.parametrize(
    "line, detail",
    [
        (b'error: {"code": 500, "message": "full", "type": "server_error"}', "server_error"),
        (b"error: the model crashed", "error"),
    ],
)
def test_a_llama_cpp_error_line_is_an_upstream_error(
    upstream: FakeUpstream, line: bytes, detail: str
) -> None:
    # llama.cpp's server ends a failed stream with an `error:` line and no `data:` line.
    text = b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
    upstream.push(Script(raw=[text, line + b"\n\n"]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("a")]
    assert error is not None and error.code == "upstream_error"
    assert error.detail == detail


@pytest.mark.parametrize(
    ("base_url", "model", "field"),
    [
        ("https://api.openai.com/v1", "gpt-4.1-mini", "max_completion_tokens"),
        ("https://team.openai.azure.com/openai/v1", "gpt-4o", "max_completion_tokens"),
        ("https://eu.api.openai.com/v1", "ft:o4-mini:acme::x1", "max_completion_tokens"),
        (
            "https://team.cognitiveservices.azure.com/openai/v1",
            "reasoner-prod",
            "max_completion_tokens",
        ),
        ("https://team.services.ai.azure.com/openai/v1", "reasoner", "max_completion_tokens"),
        ("https://team.services.ai.azure.com/models", "Llama-3.3-70B", "max_tokens"),
        # Ollama's /v1 drops max_completion_tokens unread: a reply with no cap at all.
        ("http://127.0.0.1:11434/v1", "qwen3:8b", "max_tokens"),
        ("http://127.0.0.1:11434/v1", "gpt-oss:20b", "max_tokens"),
        ("https://gateway.example/v1", "gpt-4o", "max_tokens"),
        # Kimi K2.6 on no longer honour max_tokens: no cap at all.
        ("https://api.moonshot.ai/v1", "kimi-k3", "max_completion_tokens"),
        ("https://api.moonshot.cn/v1", "kimi-k2.6", "max_completion_tokens"),
        # OpenAI's reasoning models refuse max_tokens, behind a gateway too.
        ("https://gateway.example/v1", "o3-mini", "max_completion_tokens"),
        ("https://gateway.example/v1", "openai/gpt-5", "max_completion_tokens"),
        ("https://gateway.example/v1", "gpt-5.1-codex", "max_completion_tokens"),
        ("https://gateway.example/v1", "ft:o4-mini-2025-04-16:acme::abc", "max_completion_tokens"),
        ("https://api.openai.com.evil.example/v1", "gpt-4o", "max_tokens"),
    ],
)
def test_the_reply_length_goes_in_the_field_the_server_reads(
    upstream: FakeUpstream, base_url: str, model: str, field: str
) -> None:
    assert length_field(base_url, model) == field


@pytest.mark.parametrize(
    ("model", "field"), [("gpt-4o", "max_tokens"), ("o3-mini", "max_completion_tokens")]
)
def test_the_reply_length_is_sent_in_its_field(
    upstream: FakeUpstream, model: str, field: str
) -> None:
    # The fake is no OpenAI host: the field follows the model's name.
    assert run_provider(settings_for(upstream.url, model=model, max_tokens=321))[1] is None
    body = upstream.requests[0].body
    assert body is not None and body[field] == 321
    assert not ({"max_tokens", "max_completion_tokens"} - {field}) & set(body)  # one only


@pytest.mark.parametrize(
    ("model", "sent"),
    [("gpt-4.1-mini", 0.5), ("gpt-5", None), ("o3", None), ("ft:o4-mini:acme::x1", None)],
)
def test_openai_reasoning_models_are_sent_no_temperature(
    upstream: FakeUpstream, model: str, sent: float | None
) -> None:
    # "Unsupported value: 'temperature' does not support 0.5 with this model": a 400.
    assert run_provider(settings_for(upstream.url, model=model, temperature=0.5))[1] is None
    body = upstream.requests[0].body
    assert body is not None and body.get("temperature") == sent


@pytest.mark.parametrize(
    "budget, effort",
    [
        (1024, "low"),
        (2048, "low"),
        (2049, "medium"),
        (8192, "medium"),
        (8193, "high"),
        (32000, "high"),
    ],
)
def test_thinking_sends_an_effort_level_and_no_temperature(
    upstream: FakeUpstream, budget: int, effort: str
) -> None:
    # OpenAI takes an effort level, not a budget: the nearest one. The rest of a thinking
    # request (from the environment) is test_all_providers.py's, with OPENAI.thinking.
    settings = settings_for(upstream.url, thinking=True, thinking_budget=budget, temperature=0.7)
    events, error = run_provider(settings)
    assert error is None and events

    body = upstream.requests[0].body
    assert body is not None
    assert body["reasoning_effort"] == effort
    assert "temperature" not in body and "thinking" not in body


def _stream_of(*frames: dict[str, object]) -> bytes:
    body = b"".join(b"data: " + json.dumps(frame).encode() + b"\n\n" for frame in frames)
    return body + b"data: [DONE]\n\n"


@pytest.mark.parametrize("reason", ["insufficient_system_resource", "abort", "error"])
def test_a_reply_the_server_cut_short_is_incomplete(upstream: FakeUpstream, reason: str) -> None:
    # DeepSeek ends a reply it ran out of resources for with its own finish reason, vLLM
    # and SGLang one their engine aborted or failed, then [DONE]: it was read as a reply
    # that ended (saved complete, half of it missing).
    text = {"choices": [{"index": 0, "delta": {"content": "The first half"}}]}
    cut = {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
    upstream.push(Script(raw=[_stream_of(text, cut)]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("The first half")]
    assert error is not None and error.code == "upstream_incomplete"


@pytest.mark.parametrize(
    "usage, output",
    [
        # OpenAI: the reasoning is part of completion_tokens (total = prompt + completion).
        ({"prompt_tokens": 10, "completion_tokens": 50, "total_tokens": 60}, 50),
        # xAI: beside it (total = prompt + completion + reasoning).
        ({"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 60}, 50),
        # No total to tell by: as given.
        ({"prompt_tokens": 10, "completion_tokens": 8}, 8),
    ],
)
def test_output_tokens_count_the_thinking_however_the_server_counts_it(
    upstream: FakeUpstream, usage: dict[str, int], output: int
) -> None:
    details = {"completion_tokens_details": {"reasoning_tokens": 42}}
    upstream.push(
        Script(
            raw=[
                _stream_of(
                    {
                        "choices": [
                            {"index": 0, "delta": {"content": "Yes."}, "finish_reason": "stop"}
                        ]
                    },
                    {"choices": [], "usage": usage | details},
                )
            ]
        )
    )
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    end = events[-1]
    assert isinstance(end, StreamEnd)
    assert (end.usage.output_tokens, end.usage.thinking_tokens) == (output, 42)
