"""What only AnthropicProvider does, over real HTTP against devtools.fake_upstream.

What every provider must do (fixture replays, statuses, thinking, every failure of the
fake, the chain's rules) is tested once for all four in test_all_providers.py; what
Anthropic must come to there (its event table in tests/fixtures/anthropic/*.sse, with
signature_delta, pings, cumulative and cached usage; its headers and body) is data in
provider_cases.ANTHROPIC. Here: the fixtures' own line ends, and the room a thinking
budget must leave.
"""

from __future__ import annotations

import json

import pytest

from assistant.config import ConfigError, ProviderSettings, Timeouts
from assistant.providers import anthropic
from devtools.fake_upstream import FakeUpstream, Script

from .provider_cases import ANTHROPIC as CASE
from .provider_support import run_chain
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture


def test_crlf_fixture_really_has_crlf_line_ends() -> None:
    # Guards against an editor or git normalising the file.
    data = CASE.fixture("thinking.sse")
    assert data.count(b"\n") == data.count(b"\r\n") == data.count(b"\r") > 10


def test_a_thinking_budget_without_room_for_the_answer_is_a_config_error() -> None:
    env = {"ANTHROPIC_THINKING": "true", "ANTHROPIC_THINKING_BUDGET": "4096"}
    with pytest.raises(ConfigError, match=r"ANTHROPIC_MAX_TOKENS \(2000\) must be larger than"):
        ProviderSettings.from_env({**env, "ANTHROPIC_MAX_TOKENS": "2000"}, "anthropic")
    settings = ProviderSettings.from_env({**env, "ANTHROPIC_MAX_TOKENS": "5000"}, "anthropic")
    assert settings.thinking_budget == 4096
    # Claude 4.6 on think adaptively: a budget they are never sent leaves room for all.
    adaptive = {**env, "ANTHROPIC_MODEL": "claude-opus-4-7", "ANTHROPIC_MAX_TOKENS": "2000"}
    assert ProviderSettings.from_env(adaptive, "anthropic").max_tokens == 2000


def test_a_claude_4_6_thinking_budget_is_not_read() -> None:
    # None is sent to a model that thinks adaptively: a budget the check refuses made
    # every request a 500 for a setting that changes nothing.
    for budget in ("100", "lots"):
        env = {"ANTHROPIC_MODEL": "claude-sonnet-4-6", "ANTHROPIC_THINKING_BUDGET": budget}
        assert ProviderSettings.from_env(env, "anthropic").thinking_budget == 2048
    with pytest.raises(ConfigError, match="ANTHROPIC_THINKING_BUDGET"):
        env = {"ANTHROPIC_MODEL": "claude-sonnet-4-5", "ANTHROPIC_THINKING_BUDGET": "100"}
        ProviderSettings.from_env(env, "anthropic")


def test_event_names_with_blanks_around_them_are_read(upstream: FakeUpstream) -> None:
    """A proxy that left spaces after "content_block_delta": the spec keeps them in the
    name, and the text of those events was dropped, the answer ending without it."""
    data = CASE.fixture("text_basic.sse").replace(
        b"event: content_block_delta\n", b"event: content_block_delta  \n"
    )
    assert b"content_block_delta  " in data
    upstream.push(Script(raw=[data]))
    assert CASE.events(upstream.url) == (CASE.replays["text_basic.sse"].events, None)


def test_an_error_event_whose_error_is_a_string_is_an_upstream_error(
    upstream: FakeUpstream,
) -> None:
    # A proxy's form (Anthropic's is an object): `.get` on it raised AttributeError.
    upstream.push(Script(raw=[b'event: error\ndata: {"type":"error","error":"Overloaded"}\n\n']))
    events, error = CASE.events(upstream.url)
    assert events == [] and error is not None
    assert (error.code, error.detail) == ("upstream_error", "Overloaded")


@pytest.mark.parametrize(
    "usage, expected",
    [
        ({"input_tokens": 100, "cache_read_input_tokens": 20}, 120),
        ({"input_tokens": 100, "cache_creation_input_tokens": None}, 100),
        # A part that is no count makes the sum no count (it was 50, 101 and 1).
        ({"input_tokens": 100, "cache_read_input_tokens": -50}, None),
        ({"input_tokens": 100, "cache_read_input_tokens": True}, None),
        ({"input_tokens": True}, None),
        ({}, None),
    ],
)
def test_the_prompts_tokens_are_a_count_or_none(
    usage: dict[str, object], expected: int | None
) -> None:
    state = anthropic._State(model="claude")
    anthropic._count_input(usage, state)
    assert state.input_tokens == expected


@pytest.mark.parametrize(
    "delta_usage",
    [
        {"input_tokens": 12, "output_tokens": 5},  # a gateway's: the cache's parts not given
        {"input_tokens": 12, "cache_read_input_tokens": None, "output_tokens": 5},
        {"output_tokens": 5},
    ],
)
def test_the_cached_part_of_a_prompt_counts_whatever_message_delta_leaves_out(
    upstream: FakeUpstream, delta_usage: dict[str, object]
) -> None:
    """message_start gave 12 tokens and 3,000 read from the cache; a message_delta giving
    input_tokens alone made the prompt 12 tokens (a reviewer's)."""
    start = {"input_tokens": 12, "cache_read_input_tokens": 3000, "output_tokens": 1}
    upstream.push(Script(raw=[_stream_with_usage(start, delta_usage)]))
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.outcomes == ["ok"]
    assert (run.chain.usage.input_tokens, run.chain.usage.output_tokens) == (3012, 5)


def test_a_thinking_block_that_shows_nothing_yet_restarts_the_wait_for_a_first_chunk(
    upstream: FakeUpstream,
) -> None:
    """A model that thinks unasked (Claude 5 on) streams its block's start, then pings,
    then only the signature: a reviewer's reply was cut as silent while it thought.
    (Pings are no progress, so here none come.)"""

    def event(data: dict[str, object]) -> bytes:
        return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()

    def block(index: int, kind: str, delta: dict[str, str]) -> list[bytes]:
        start = {"type": kind, kind: "", **({"signature": ""} if kind == "thinking" else {})}
        return [
            event({"type": "content_block_start", "index": index, "content_block": start}),
            event({"type": "content_block_delta", "index": index, "delta": delta}),
            event({"type": "content_block_stop", "index": index}),
        ]

    thinking = block(0, "thinking", {"type": "signature_delta", "signature": "EqQBCkYIBxgC"})
    upstream.push(
        Script(
            raw=[
                event({"type": "message_start", "message": {"usage": {"input_tokens": 5}}}),
                thinking[0],
                *thinking[1:],  # its end 0.8 s after its start, 1.2 s after the request
                *block(1, "text", {"type": "text_delta", "text": "42."}),
                event({"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
                event({"type": "message_stop"}),
            ],
            interval=0.4,
        )
    )
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=1, idle=2))
    assert run.outcomes == ["ok"], [error and error.detail for error in run.errors]


def test_thinking_blocks_in_a_row_stay_blocks_of_their_own(upstream: FakeUpstream) -> None:
    """A thinking block, a redacted one, another thinking block: the two texts ran together
    ("First part.Second part.") in the answer and the saved thinking (a reviewer's)."""
    start = {"type": "message_start", "message": {"model": "c", "usage": {"input_tokens": 1}}}

    def block(index: int, block: dict[str, object], delta: dict[str, object] | None) -> list:
        events: list = [
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        ]
        if delta is not None:
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        return [*events, ("content_block_stop", {"type": "content_block_stop", "index": index})]

    events = [
        ("message_start", start),
        *block(0, {"type": "thinking", "thinking": ""},
               {"type": "thinking_delta", "thinking": "First part."}),
        *block(1, {"type": "redacted_thinking", "data": "opaque"}, None),
        *block(2, {"type": "thinking", "thinking": ""},
               {"type": "thinking_delta", "thinking": "Second part."}),
        *block(3, {"type": "text", "text": ""}, {"type": "text_delta", "text": "Answer."}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    raw = b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)
    upstream.push(Script(raw=[raw]))
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.outcomes == ["ok"]
    assert run.text == ("<thinking>First part.</thinking><thinking>Second part.</thinking>Answer.")


def _stream_with_usage(start: dict[str, object], delta: dict[str, object]) -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {"model": "c", "usage": start}}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "hi"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


@pytest.mark.parametrize("name", ["error_after_text.sse"])
def test_a_reply_cut_short_has_no_output_count(upstream: FakeUpstream, name: str) -> None:
    """message_start's output_tokens is a placeholder (1): a reply that streamed text and
    was cut before message_delta reported it as what the reply cost."""
    upstream.push(Script(raw=[CASE.fixture(name)]))
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.outcomes != ["ok"] and run.text
    usage = run.chain.usage
    assert usage.input_tokens and usage.output_tokens is None
