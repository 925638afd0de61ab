"""AnthropicProvider over real HTTP, against devtools.fake_upstream on loopback.

Three layers:
- recorded-style streams (tests/fixtures/anthropic/*.sse, written from
  Anthropic's documented streaming format) replayed byte for byte through the
  fake's `raw` script, split at awkward places, into `AnthropicProvider.stream`;
- the fake's normal scripts: what the provider sends, status codes, thinking;
- the provider inside `assistant.chain.Chain` on the app's I/O loop, where the
  connect / first-chunk / idle timeouts live.
"""

from __future__ import annotations

import functools
import socket
from pathlib import Path

import pytest

from assistant.chain import ChainFailed, ChainSucceeded, Chunk
from assistant.config import ConfigError, ProviderSettings, Timeouts
from assistant.providers.anthropic import AnthropicProvider
from assistant.providers.base import Event, Prompt, StreamEnd, TextDelta, ThinkingDelta, Usage
from assistant.request import Turn
from devtools.fake_upstream import FakeUpstream, Script

from .provider_support import (
    anthropic_at,
    awkward_sse_chunks,
    one_byte_reads,
    run_chain,
    stream_events,
)
from .provider_support import anthropic_settings as settings_for
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
SONNET = "claude-sonnet-4-5-20250929"
# Everything an AnthropicProvider yielded, and the ProviderError it ended with (if any).
run_provider = functools.partial(stream_events, AnthropicProvider)


# -- a. recorded-style streams -----------------------------------------------------------


REPLAYS: dict[str, tuple[list[Event], str | None]] = {
    "text_basic.sse": (
        [
            TextDelta("Hello"),
            TextDelta(", café € 😀"),
            TextDelta(" line\u2028sep\u2029end."),
            StreamEnd("end_turn", Usage(input_tokens=25, output_tokens=15), SONNET),
        ],
        None,
    ),
    "thinking.sse": (
        [
            ThinkingDelta("I need the GCD of 1071 and 462.\n\n1071 = 2 \u00d7 462 + 147"),
            ThinkingDelta("\n462 = 3 \u00d7 147 + 21\n147 = 7 \u00d7 21 \u2192 GCD is 21."),
            TextDelta("The greatest common divisor "),
            TextDelta("of 1071 and 462 is **21**."),
            StreamEnd(
                "end_turn", Usage(input_tokens=58, output_tokens=184), "claude-opus-4-1-20250805"
            ),
        ],
        None,
    ),
    "error_overloaded.sse": ([], "upstream_error"),
    "error_after_text.sse": ([TextDelta("Partial answer, ")], "upstream_error"),
    "incomplete.sse": ([TextDelta("Cut "), TextDelta("short")], "upstream_incomplete"),
    "pings.sse": (
        [
            TextDelta("Still "),
            TextDelta("here."),
            StreamEnd("end_turn", Usage(input_tokens=9, output_tokens=3), SONNET),
        ],
        None,
    ),
    "unknown_event.sse": (
        [
            TextDelta("Known "),
            TextDelta("text."),
            StreamEnd("end_turn", Usage(input_tokens=11, output_tokens=2), SONNET),
        ],
        None,
    ),
    "tool_use.sse": (
        [
            TextDelta("Okay, let's check "),
            TextDelta("the weather for San Francisco, CA:"),
            StreamEnd("tool_use", Usage(input_tokens=472, output_tokens=89), SONNET),
        ],
        None,
    ),
    # output_tokens is cumulative: 25 is the total, not 10 + 25.
    "usage_cumulative.sse": (
        [
            TextDelta("One, "),
            TextDelta("two"),
            StreamEnd("max_tokens", Usage(input_tokens=20, output_tokens=25), SONNET),
        ],
        None,
    ),
    # input_tokens is the whole input: uncached 12 + cache written 2048 + cache read 1024.
    "cache_usage.sse": (
        [
            TextDelta("Cached."),
            StreamEnd("end_turn", Usage(input_tokens=12 + 2048 + 1024, output_tokens=7), SONNET),
        ],
        None,
    ),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(path.name for path in FIXTURES.glob("*.sse")) == sorted(REPLAYS)


def test_crlf_fixture_really_has_crlf_line_ends() -> None:
    # Guards against an editor or git normalising the file.
    data = (FIXTURES / "thinking.sse").read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r") > 10


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
        assert error.message and "overloaded_error" not in error.message


def test_fixture_replay_one_byte_per_http_chunk(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "thinking.sse").read_bytes()
    upstream.push(Script(raw=one_byte_reads(data)))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == REPLAYS["thinking.sse"][0]


# -- b. the request, statuses and scripted streams ----------------------------------------


def test_request_body_and_headers(upstream: FakeUpstream) -> None:
    prompt = Prompt(
        system="You are terse.",
        turns=(
            Turn("user", "first"),
            Turn("user", "second"),
            Turn("assistant", "a1"),
            Turn("assistant", "a2"),
            Turn("user", "now"),
        ),
    )
    settings = settings_for(upstream.url, model="claude-x", max_tokens=777, temperature=0.3)
    events, error = run_provider(settings, prompt)
    assert error is None and isinstance(events[-1], StreamEnd)

    (request,) = upstream.requests
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "test-key"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["content-type"] == "application/json"
    assert request.body == {
        "model": "claude-x",
        "max_tokens": 777,
        "stream": True,
        "system": "You are terse.",
        "temperature": 0.3,
        "messages": [
            {"role": "user", "content": "first\n\nsecond"},
            {"role": "assistant", "content": "a1\n\na2"},
            {"role": "user", "content": "now"},
        ],
    }


def test_no_system_field_without_a_system_prompt(upstream: FakeUpstream) -> None:
    run_provider(settings_for(upstream.url), Prompt(system=None, turns=(Turn("user", "hi"),)))
    body = upstream.requests[0].body
    assert body is not None
    assert "system" not in body and "temperature" not in body and "thinking" not in body


def test_thinking_setting_sends_a_budget_and_no_temperature(upstream: FakeUpstream) -> None:
    env = {
        "ANTHROPIC_BASE_URL": upstream.url + "/",
        "ANTHROPIC_MODEL": "claude-opus-4-1",
        "ANTHROPIC_MAX_TOKENS": "8000",
        "ANTHROPIC_TEMPERATURE": "0.7",
        "ANTHROPIC_THINKING": "true",
        "ANTHROPIC_THINKING_BUDGET": "3000",
    }
    settings = ProviderSettings.from_env(env, "anthropic")
    events, error = run_provider(settings)
    assert error is None and events

    body = upstream.requests[0].body
    assert body is not None
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert body["max_tokens"] == 8000 and body["model"] == "claude-opus-4-1"
    assert "temperature" not in body
    assert upstream.requests[0].path == "/v1/messages"  # trailing slash of the base URL dropped


def test_a_thinking_budget_without_room_for_the_answer_is_a_config_error() -> None:
    env = {"ANTHROPIC_THINKING": "true", "ANTHROPIC_THINKING_BUDGET": "4096"}
    with pytest.raises(ConfigError, match=r"ANTHROPIC_MAX_TOKENS \(2000\) must be larger than"):
        ProviderSettings.from_env({**env, "ANTHROPIC_MAX_TOKENS": "2000"}, "anthropic")
    settings = ProviderSettings.from_env({**env, "ANTHROPIC_MAX_TOKENS": "5000"}, "anthropic")
    assert settings.thinking_budget == 4096


@pytest.mark.parametrize("status", [429, 500, 401, 529])
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
    upstream.push(Script(tokens=["Hel", "lo ", "wörld"], model="fake-claude", input_tokens=30))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        TextDelta("Hel"),
        TextDelta("lo "),
        TextDelta("wörld"),
        StreamEnd("end_turn", Usage(input_tokens=30, output_tokens=3), "fake-claude"),
    ]


def test_empty_stream_is_incomplete(upstream: FakeUpstream) -> None:
    upstream.push(Script(fail="empty"))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None and error.code == "upstream_incomplete"


def test_stream_without_text_ends_with_no_deltas(upstream: FakeUpstream) -> None:
    # The provider reports a clean end; the chain (below) is what calls it empty.
    upstream.push(Script(fail="no_text", stop_reason="max_tokens"))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        StreamEnd("max_tokens", Usage(input_tokens=12, output_tokens=0), "fake-claude")
    ]


@pytest.mark.parametrize(
    "fail_mode, code",
    [("error_event", "upstream_error"), ("no_stop", "upstream_incomplete")],
)
def test_failure_after_text_keeps_the_text(
    upstream: FakeUpstream, fail_mode: str, code: str
) -> None:
    upstream.push(Script(tokens=["a ", "b ", "c "], fail_after=2, fail_mode=fail_mode))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("a "), TextDelta("b ")]
    assert error is not None and error.code == code


def test_native_thinking(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["Let me ", "think."], tokens=["Answer", "!"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        ThinkingDelta("Let me "),
        ThinkingDelta("think."),
        TextDelta("Answer"),
        TextDelta("!"),
        StreamEnd("end_turn", Usage(input_tokens=12, output_tokens=4), "fake-claude"),
    ]


def test_inline_thinking_passes_through_as_text(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["hmm"], thinking_mode="inline", tokens=["Answer"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events[:-1] == [
        TextDelta("<thinking>"),
        TextDelta("hmm"),
        TextDelta("</thinking>"),
        TextDelta("Answer"),
    ]
    assert not any(isinstance(event, ThinkingDelta) for event in events)


# -- c. through the chain, on the I/O loop ------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(Script(fail="hang"), id="silent-after-message-start"),
        pytest.param(Script(fail="hang", ping_every=0.05), id="pings-but-no-text"),
        pytest.param(Script(fail="hang_headers"), id="no-headers"),
    ],
)
def test_no_first_chunk_in_time_is_a_timeout(upstream: FakeUpstream, script: Script) -> None:
    upstream.push(script)
    run = run_chain([anthropic_at(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=5))

    assert run.items == [ChainFailed(None, committed=False)]
    assert run.outcomes == ["upstream_timeout"]
    assert 250 <= run.chain.attempts[0].ms < 1500
    assert run.seconds < 2
    # The upstream request was closed, not left running.
    assert upstream.requests[0].client_closed.wait(2)


def test_slow_but_live_stream_is_not_cut(upstream: FakeUpstream) -> None:
    tokens = [f"t{i} " for i in range(10)]
    upstream.push(Script(tokens=tokens, interval=0.2))
    run = run_chain([anthropic_at(upstream.url)], Timeouts(connect=1, first_chunk=0.5, idle=1))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == "".join(tokens)
    assert run.outcomes == ["ok"]
    assert run.seconds >= 1.7  # well past first_chunk: only gaps between chunks count
    assert run.chain.usage == Usage(input_tokens=12, output_tokens=10)
    assert run.chain.stop_reason == "end_turn"


def test_closed_port_is_unreachable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = run_chain([anthropic_at(f"http://127.0.0.1:{port}")], Timeouts(1, 1, 1))
    assert run.items == [ChainFailed(None, committed=False)]
    assert run.outcomes == ["upstream_unreachable"]


def test_idle_gap_after_the_first_chunk_fails_committed(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["one ", "two ", "three "], fail_after=2, fail_mode="hang"))
    run = run_chain([anthropic_at(upstream.url)], Timeouts(connect=1, first_chunk=5, idle=0.3))

    assert run.items[:-1] == [Chunk("one "), Chunk("two ")]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == "upstream_timeout"
    assert run.outcomes == ["upstream_timeout"]
    assert run.seconds < 2
    assert upstream.requests[0].client_closed.wait(2)


def test_failure_before_text_falls_through(upstream: FakeUpstream) -> None:
    upstream.push(Script(fail="500"), Script(fail="no_text"), Script(tokens=["from ", "third"]))
    providers = [anthropic_at(upstream.url, name) for name in ("first", "second", "third")]
    run = run_chain(providers, Timeouts(connect=1, first_chunk=2, idle=2))

    assert run.items == [Chunk("from "), Chunk("third"), ChainSucceeded()]
    assert run.outcomes == ["upstream_status", "upstream_empty", "ok"]
    assert [attempt.status for attempt in run.chain.attempts] == [500, None, None]
    assert run.chain.provider == "third"


def test_native_thinking_is_tagged_by_the_chain(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["weigh ", "options"], tokens=["Done."]))
    run = run_chain([anthropic_at(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.text == "<thinking>weigh options</thinking>Done."
    assert run.items[-1] == ChainSucceeded()
