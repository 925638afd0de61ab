"""OpenAIProvider over real HTTP, against devtools.fake_upstream on loopback.

Three layers, as in tests/test_anthropic.py:
- recorded-style streams (tests/fixtures/openai/*.sse, written from OpenAI's
  documented Chat Completions streaming format and that of compatible servers:
  DeepSeek, OpenRouter, vLLM, Azure OpenAI, llama-cpp-python) replayed byte
  for byte through the fake's `raw` script, split at awkward places, into
  `OpenAIProvider.stream`;
- the fake's normal scripts: what the provider sends, status codes, thinking,
  every failure mode;
- the provider inside `assistant.chain.Chain` on the app's I/O loop, where the
  connect / first-chunk / idle timeouts live.

`OPENAI_BASE_URL` includes `/v1`, so the provider is pointed at `{fake.url}/v1`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from assistant.chain import ChainFailed, ChainSucceeded, Chunk
from assistant.config import ProviderSettings, Timeouts
from assistant.providers.base import (
    Event,
    Prompt,
    Provider,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    Usage,
)
from assistant.providers.openai import OpenAIProvider
from assistant.request import Turn
from devtools.fake_upstream import FAIL_MODES, FAILS, FakeUpstream, Script

from .provider_support import (
    FAIL_CODES,
    FAIL_MODE_CODES,
    FAKE_MODEL,
    anthropic_at,
    awkward_sse_chunks,
    named,
    one_byte_reads,
    provider_settings,
    run_chain,
    stream_events,
)
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

FIXTURES = Path(__file__).parent / "fixtures" / "openai"


def settings_for(url: str, **changes: object) -> ProviderSettings:
    return provider_settings("openai", f"{url}/v1", "gpt-test", "OPENAI_API_KEY", **changes)


# Everything an OpenAIProvider yielded, and the ProviderError it ended with (if any).
run_provider = functools.partial(stream_events, OpenAIProvider)


# -- a. recorded-style streams -----------------------------------------------------------


REPLAYS: dict[str, tuple[list[Event], str | None]] = {
    # No include_usage: no usage at all.
    "text_basic.sse": (
        [
            TextDelta("Hello"),
            TextDelta(", café € 😀"),
            TextDelta(" line\u2028sep\u2029end."),
            StreamEnd("end_turn", Usage(), "gpt-4o-mini-2024-07-18"),
        ],
        None,
    ),
    # The usage chunk has `"choices": []`; reasoning tokens are reported apart.
    "usage_include.sse": (
        [
            TextDelta("The answer"),
            TextDelta(" is 42."),
            StreamEnd(
                "end_turn",
                Usage(input_tokens=19, output_tokens=214, thinking_tokens=192),
                "o4-mini-2025-04-16",
            ),
        ],
        None,
    ),
    "usage_null_every_chunk.sse": (
        [
            TextDelta("No "),
            TextDelta("usage."),
            StreamEnd("end_turn", Usage(), "gpt-4.1-nano-2025-04-14"),
        ],
        None,
    ),
    # DeepSeek: reasoning_content with content null, keep-alives, usage on the finish chunk.
    "reasoning_content.sse": (
        [
            ThinkingDelta("Okay, the user says hi."),
            ThinkingDelta(" A short greeting fits."),
            TextDelta("Hi"),
            TextDelta("! How can I help?"),
            StreamEnd(
                "end_turn",
                Usage(input_tokens=13, output_tokens=120, thinking_tokens=98),
                "deepseek-reasoner",
            ),
        ],
        None,
    ),
    # OpenRouter: delta.reasoning (reasoning_details ignored), processing comments.
    "reasoning_openrouter.sse": (
        [
            ThinkingDelta("Count the r's: "),
            ThinkingDelta("s-t-r-a-w-b-e-r-r-y."),
            TextDelta("There are "),
            TextDelta("three."),
            StreamEnd(
                "end_turn",
                Usage(input_tokens=10, output_tokens=40, thinking_tokens=35),
                "deepseek/deepseek-r1",
            ),
        ],
        None,
    ),
    # A chunk with both: the thinking comes first.
    "reasoning_and_content.sse": (
        [
            ThinkingDelta("Two plus two"),
            ThinkingDelta(" is four."),
            TextDelta("4"),
            TextDelta("."),
            StreamEnd("end_turn", Usage(input_tokens=14, output_tokens=12), "Qwen/Qwen3-8B"),
        ],
        None,
    ),
    "error_mid_stream.sse": ([TextDelta("Partial "), TextDelta("answer")], "upstream_error"),
    "error_first.sse": ([], "upstream_error"),
    "incomplete.sse": ([TextDelta("Cut "), TextDelta("short")], "upstream_incomplete"),
    # finish_reason and usage arrived, [DONE] did not: still incomplete, no StreamEnd.
    "incomplete_after_finish.sse": (
        [TextDelta("Almost "), TextDelta("done.")],
        "upstream_incomplete",
    ),
    "length.sse": (
        [
            TextDelta("One, two, "),
            TextDelta("three"),
            StreamEnd(
                "max_tokens",
                Usage(input_tokens=20, output_tokens=5, thinking_tokens=0),
                "gpt-4.1-mini-2025-04-14",
            ),
        ],
        None,
    ),
    # Azure: a first chunk with no choices and model "" (the real model wins).
    "content_filter.sse": (
        [TextDelta("Here is "), StreamEnd("content_filter", Usage(), "gpt-4o-2024-11-20")],
        None,
    ),
    # tool_calls deltas are not text; the stop reason says why the reply ended.
    "tool_calls.sse": (
        [
            TextDelta("Let me check the weather."),
            StreamEnd(
                "tool_use",
                Usage(input_tokens=82, output_tokens=18, thinking_tokens=0),
                "gpt-4o-2024-08-06",
            ),
        ],
        None,
    ),
    "text_crlf.sse": (
        [
            TextDelta("Naïve "),
            TextDelta("café — "),
            TextDelta("ok."),
            StreamEnd("end_turn", Usage(), "qwen2.5-7b-instruct-q4_k_m.gguf"),
        ],
        None,
    ),
    "keepalive.sse": (
        [
            TextDelta("Still "),
            TextDelta("here."),
            StreamEnd("end_turn", Usage(), "gpt-4.1-2025-04-14"),
        ],
        None,
    ),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(path.name for path in FIXTURES.glob("*.sse")) == sorted(REPLAYS)


def test_crlf_fixture_really_has_crlf_line_ends() -> None:
    # Guards against an editor or git normalising the file.
    data = (FIXTURES / "text_crlf.sse").read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r") > 10
    for name in set(REPLAYS) - {"text_crlf.sse"}:
        assert b"\r" not in (FIXTURES / name).read_bytes(), name


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_fixture_replay(upstream: FakeUpstream, name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    chunks = awkward_sse_chunks(data)
    assert b"".join(chunks) == data and len(chunks) >= 3
    upstream.push(Script(raw=chunks, interval=0.01))  # a pause so each piece is its own read

    events, error = run_provider(settings_for(upstream.url))

    expected_events, expected_code = REPLAYS[name]
    assert events == expected_events
    assert (error.code if error else None) == expected_code
    if error is not None:
        assert (
            error.message
            == {
                "upstream_error": "The model provider reported an error.",
                "upstream_incomplete": "The model provider's reply was cut off.",
            }[error.code]
        )
        assert "disconnected" not in error.message and "Sorry" not in error.message
    assert upstream.requests[0].path == "/v1/chat/completions"


@pytest.mark.parametrize("name", ["text_crlf.sse", "reasoning_openrouter.sse"])
def test_fixture_replay_one_byte_per_http_chunk(upstream: FakeUpstream, name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    upstream.push(Script(raw=one_byte_reads(data)))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == REPLAYS[name][0]


def test_error_frame_detail_is_kept_for_the_log_only(upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=[(FIXTURES / "error_first.sse").read_bytes()]))
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


def test_an_error_given_as_a_bare_string_is_still_an_error(upstream: FakeUpstream) -> None:
    # text-generation-inference's streaming error: {"error": "...", "error_type": "..."}.
    frame = b'data: {"error":"Input validation error: inputs too long","error_type":"validation"}'
    upstream.push(Script(raw=[frame + b"\n\n"]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None and error.code == "upstream_error"
    assert "validation" not in error.message


# -- b. the request, statuses and scripted streams ----------------------------------------


def test_request_body_and_headers(upstream: FakeUpstream) -> None:
    prompt = Prompt(
        system="You are terse.",
        turns=(
            Turn("assistant", "Hello! How can I help?"),  # a UI greeting: dropped
            Turn("user", "first"),
            Turn("user", "second"),
            Turn("assistant", "a1"),
            Turn("assistant", "a2"),
            Turn("user", "now"),
        ),
    )
    settings = settings_for(upstream.url, model="gpt-x", max_tokens=777, temperature=0.3)
    events, error = run_provider(settings, prompt)
    assert error is None and isinstance(events[-1], StreamEnd)

    (request,) = upstream.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "text/event-stream"
    assert request.body == {
        "model": "gpt-x",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first\n\nsecond"},
            {"role": "assistant", "content": "a1\n\na2"},
            {"role": "user", "content": "now"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 777,
        "temperature": 0.3,
    }


def test_no_system_message_and_no_optional_fields_by_default(upstream: FakeUpstream) -> None:
    run_provider(settings_for(upstream.url), Prompt(system=None, turns=(Turn("user", "hi"),)))
    body = upstream.requests[0].body
    assert body is not None
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert "temperature" not in body and "reasoning_effort" not in body
    assert "max_tokens" not in body  # deprecated in favour of max_completion_tokens
    assert body["max_completion_tokens"] == 1024


def test_temperature_zero_is_sent(upstream: FakeUpstream) -> None:
    run_provider(settings_for(upstream.url, temperature=0.0))
    body = upstream.requests[0].body
    assert body is not None and body["temperature"] == 0.0


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
    env = {
        "OPENAI_BASE_URL": f"{upstream.url}/v1/",
        "OPENAI_MODEL": "o4-mini",
        "OPENAI_MAX_TOKENS": "64000",
        "OPENAI_TEMPERATURE": "0.7",
        "OPENAI_THINKING": "true",
        "OPENAI_THINKING_BUDGET": str(budget),
    }
    settings = ProviderSettings.from_env(env, "openai")
    events, error = run_provider(settings)
    assert error is None and events

    (request,) = upstream.requests
    assert request.path == "/v1/chat/completions"  # trailing slash of the base URL dropped
    body = request.body
    assert body is not None
    assert body["reasoning_effort"] == effort
    assert body["model"] == "o4-mini" and body["max_completion_tokens"] == 64000
    assert "temperature" not in body and "thinking" not in body


@pytest.mark.parametrize("status", [401, 429, 500, 400, 503])
def test_error_status(upstream: FakeUpstream, status: int) -> None:
    upstream.push(Script(fail=str(status)))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None
    assert error.code == "upstream_status"
    assert error.status == status
    assert error.message == "The model provider refused the request."
    assert "fake upstream failure" not in error.message
    assert "fake upstream failure" in error.detail  # kept for the log only


def test_scripted_text_stream(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["Hel", "lo ", "wörld"], model="fake-gpt", input_tokens=30))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        TextDelta("Hel"),
        TextDelta("lo "),
        TextDelta("wörld"),
        StreamEnd(
            "end_turn", Usage(input_tokens=30, output_tokens=3, thinking_tokens=0), "fake-gpt"
        ),
    ]


@pytest.mark.parametrize(
    "script_stop, stop_reason",
    [
        ("end_turn", "end_turn"),  # "stop"
        ("stop_sequence", "end_turn"),  # also "stop" on the wire
        ("max_tokens", "max_tokens"),  # "length"
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "content_filter"),
        ("something_new", "other"),
    ],
)
def test_stop_reasons_are_normalised(
    upstream: FakeUpstream, script_stop: str, stop_reason: str
) -> None:
    upstream.push(Script(tokens=["x"], stop_reason=script_stop))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert isinstance(events[-1], StreamEnd) and events[-1].stop_reason == stop_reason


def test_native_thinking(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["Let me ", "think."], tokens=["Answer", "!"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        ThinkingDelta("Let me "),
        ThinkingDelta("think."),
        TextDelta("Answer"),
        TextDelta("!"),
        StreamEnd(
            "end_turn", Usage(input_tokens=12, output_tokens=4, thinking_tokens=2), FAKE_MODEL
        ),
    ]


def test_inline_thinking_passes_through_as_text(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["hmm"], thinking_mode="inline", tokens=["Answer"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        TextDelta("<thinking>"),
        TextDelta("hmm"),
        TextDelta("</thinking>"),
        TextDelta("Answer"),
        StreamEnd(
            "end_turn", Usage(input_tokens=12, output_tokens=4, thinking_tokens=0), FAKE_MODEL
        ),
    ]


# Every `fail` of the fake, before any text (the fake has sent its role chunk already,
# except for hang_headers and empty). Hangs meet the client's read timeout.
FAIL_EXPECTATIONS: dict[str, tuple[list[Event], str | None]] = {
    **{fail: ([], code) for fail, code in FAIL_CODES.items()},
    # A clean end with no deltas: the provider reports it; the chain calls it empty.
    "no_text": (
        [
            StreamEnd(
                "end_turn", Usage(input_tokens=12, output_tokens=0, thinking_tokens=0), FAKE_MODEL
            )
        ],
        None,
    ),
}


def test_every_fake_failure_has_an_expectation() -> None:
    assert sorted(FAIL_EXPECTATIONS) == sorted(FAILS)


@pytest.mark.parametrize("fail", sorted(FAIL_EXPECTATIONS))
def test_fake_failure(upstream: FakeUpstream, fail: str) -> None:
    upstream.push(Script(fail=fail))
    events, error = run_provider(settings_for(upstream.url), read_timeout=0.2)
    expected_events, expected_code = FAIL_EXPECTATIONS[fail]
    assert events == expected_events
    assert (error.code if error else None) == expected_code


TOKENS = ["a ", "b ", "c "]


def test_every_fail_mode_has_an_expectation() -> None:
    assert sorted(FAIL_MODE_CODES) == sorted(FAIL_MODES)


@pytest.mark.parametrize("fail_mode", sorted(FAIL_MODE_CODES))
@pytest.mark.parametrize("fail_after", [0, 2, 3, 4])
def test_fail_after(upstream: FakeUpstream, fail_after: int, fail_mode: str) -> None:
    upstream.push(Script(tokens=TOKENS, fail_after=fail_after, fail_mode=fail_mode))
    events, error = run_provider(settings_for(upstream.url), read_timeout=0.2)

    texts = [TextDelta(token) for token in TOKENS]
    if fail_after > len(TOKENS):  # never fires
        assert error is None
        usage = Usage(input_tokens=12, output_tokens=3, thinking_tokens=0)
        assert events == [*texts, StreamEnd("end_turn", usage, FAKE_MODEL)]
    else:  # fail_after == len(TOKENS) fires after the last delta, before the finish
        assert events == texts[:fail_after]
        assert error is not None and error.code == FAIL_MODE_CODES[fail_mode]


def test_failure_after_thinking_keeps_the_thinking(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["t1 "], tokens=["a", "b"], fail_after=1))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [ThinkingDelta("t1 ")]
    assert error is not None and error.code == "upstream_error"


# -- c. through the chain, on the I/O loop ------------------------------------------------


def provider_at(url: str, name: str = "openai") -> OpenAIProvider:
    return named(OpenAIProvider(settings_for(url), "test-key"), name)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(Script(fail="hang"), id="silent-after-role-chunk"),
        pytest.param(Script(fail="hang", ping_every=0.05), id="keep-alives-but-no-text"),
        pytest.param(Script(fail="hang_headers"), id="no-headers"),
        pytest.param(Script(tokens=["late"], ttft=3), id="first-token-too-late"),
    ],
)
def test_no_first_chunk_in_time_is_a_timeout(upstream: FakeUpstream, script: Script) -> None:
    upstream.push(script)
    run = run_chain([provider_at(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=5))

    assert run.items == [ChainFailed(None, committed=False)]
    assert run.outcomes == ["upstream_timeout"]
    assert 250 <= run.chain.attempts[0].ms < 1500
    assert run.seconds < 2
    # The upstream request was closed, not left running.
    assert upstream.requests[0].client_closed.wait(2)


def test_idle_gap_after_the_first_chunk_fails_committed(upstream: FakeUpstream) -> None:
    upstream.push(
        Script(tokens=["one ", "two ", "three "], fail_after=2, fail_mode="hang"),
        Script(tokens=["never ", "shown"]),
    )
    providers: list[Provider] = [provider_at(upstream.url), provider_at(upstream.url, "second")]
    run = run_chain(providers, Timeouts(connect=1, first_chunk=5, idle=0.3))

    assert run.items[:-1] == [Chunk("one "), Chunk("two ")]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == "upstream_timeout"
    assert run.outcomes == ["upstream_timeout"]  # committed: the second is never tried
    assert len(upstream.requests) == 1
    assert run.seconds < 2
    assert upstream.requests[0].client_closed.wait(2)


def test_error_frame_after_the_first_chunk_fails_committed(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["a ", "b "], fail_after=1), Script(tokens=["never"]))
    providers: list[Provider] = [provider_at(upstream.url), anthropic_at(upstream.url)]
    run = run_chain(providers, Timeouts(connect=1, first_chunk=2, idle=2))

    assert run.items[:-1] == [Chunk("a ")]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == "upstream_error"
    assert len(upstream.requests) == 1


def test_slow_but_live_stream_is_not_cut(upstream: FakeUpstream) -> None:
    tokens = [f"t{i} " for i in range(6)]
    upstream.push(Script(tokens=tokens, interval=0.15))
    run = run_chain([provider_at(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=0.6))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == "".join(tokens)
    assert run.outcomes == ["ok"]
    assert run.seconds >= 0.7  # well past first_chunk: only gaps between chunks count
    assert run.chain.usage == Usage(input_tokens=12, output_tokens=6, thinking_tokens=0)
    assert run.chain.stop_reason == "end_turn"
    assert run.chain.provider == "openai" and run.chain.model == FAKE_MODEL


def test_keep_alives_carry_gaps_longer_than_the_idle_timeout(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["slow ", "but ", "alive"], interval=0.35, ping_every=0.05))
    run = run_chain([provider_at(upstream.url)], Timeouts(connect=1, first_chunk=1, idle=0.2))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == "slow but alive"
    assert run.seconds >= 0.65  # gaps of 0.35 s, idle timeout 0.2 s


@pytest.mark.parametrize(
    "script, outcome, status",
    [
        pytest.param(Script(fail="500"), "upstream_status", 500, id="500"),
        pytest.param(Script(fail="429"), "upstream_status", 429, id="429"),
        pytest.param(Script(fail="401"), "upstream_status", 401, id="401"),
        pytest.param(Script(fail="error_event"), "upstream_error", None, id="error-frame"),
        pytest.param(Script(fail="empty"), "upstream_incomplete", None, id="empty-body"),
        pytest.param(Script(fail="no_text"), "upstream_empty", None, id="no-text"),
        pytest.param(Script(fail="cut"), "upstream_incomplete", None, id="cut"),
        pytest.param(Script(fail="no_stop"), "upstream_incomplete", None, id="no-done"),
        pytest.param(Script(fail="hang"), "upstream_timeout", None, id="first-chunk-timeout"),
    ],
)
def test_failure_before_the_first_chunk_falls_through(
    upstream: FakeUpstream, script: Script, outcome: str, status: int | None
) -> None:
    upstream.push(script, Script(tokens=["from ", "second"]))
    providers: list[Provider] = [provider_at(upstream.url), anthropic_at(upstream.url)]
    run = run_chain(providers, Timeouts(connect=1, first_chunk=0.4, idle=2))

    assert run.items == [Chunk("from "), Chunk("second"), ChainSucceeded()]
    assert run.outcomes == [outcome, "ok"]
    assert [attempt.status for attempt in run.chain.attempts] == [status, None]
    assert run.chain.provider == "anthropic"
    assert [request.path for request in upstream.requests] == [
        "/v1/chat/completions",
        "/v1/messages",
    ]


def test_native_thinking_is_tagged_by_the_chain(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["weigh ", "options"], tokens=["Done."]))
    run = run_chain([provider_at(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.text == "<thinking>weigh options</thinking>Done."
    assert run.items[-1] == ChainSucceeded()
    assert run.chain.usage == Usage(input_tokens=12, output_tokens=3, thinking_tokens=2)


def test_recorded_reasoning_stream_through_the_chain(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "reasoning_content.sse").read_bytes()
    upstream.push(Script(raw=awkward_sse_chunks(data), interval=0.01))
    run = run_chain([provider_at(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == (
        "<thinking>Okay, the user says hi. A short greeting fits.</thinking>Hi! How can I help?"
    )
    assert run.chain.model == "deepseek-reasoner"
    assert run.chain.usage == Usage(input_tokens=13, output_tokens=120, thinking_tokens=98)
    assert run.chain.stop_reason == "end_turn"
