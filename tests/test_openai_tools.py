"""OpenAI's own side of tools and structured output (README "Tools and structured
output"), over real HTTP.

What every provider must do with tools is tested once for all four elsewhere; here
is what only the Chat Completions format does, against devtools.fake_upstream:
- recorded streams (tests/fixtures/openai/tool_*.sse, written by hand in the wire
  format of OpenAI and of compatible servers: Ollama's /v1, vLLM-style interleaving,
  ids repeated on every fragment) replayed cut at awkward places and one byte a read;
- the requests we send, field by field against OpenAI's documented shapes: `tools`,
  `tool_choice`, tool turns in the history, `response_format` with `strict` only for
  schemas strict mode takes;
- the fake's own `tool_call` frames decoded by the real provider, whole and in 3-byte
  pieces, and the 400s the fake answers where the real API refuses a request.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
from typing import Any

import httpx
import pytest

from assistant import schema_kinds
from assistant.providers import openai
from assistant.providers.base import Message, Prompt, StreamEnd, TextDelta, Usage
from assistant.providers.openai import OpenAIProvider
from assistant.request import Turn
from assistant.tools import NO_ARGUMENTS, NamedTool, ToolCall, ToolChoice, ToolSpec
from devtools.fake_upstream import FakeUpstream, Script

from .provider_cases import OPENAI as CASE
from .provider_support import (
    FAKE_MODEL,
    awkward_sse_chunks,
    one_byte_reads,
    provider_settings,
    split_at,
    stream_events,
)
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

run_provider = functools.partial(stream_events, OpenAIProvider)

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = ToolSpec("get_time", "The time now.", NO_ARGUMENTS)
HI = Prompt(system=None, turns=(Turn("user", "hi"),))
TOOLS = dataclasses.replace(HI, tools=(WEATHER, TIME))

NOT_JSON = "arguments are not valid JSON: "


def usage(prompt: int, completion: int, reasoning: int | None = 0) -> Usage:
    return Usage(prompt, completion, reasoning)


def body_for(upstream: FakeUpstream, prompt: Prompt) -> dict[str, Any]:
    """The body the provider sent for `prompt` (the fake answered it with a 200)."""
    events, error = run_provider(CASE.settings(upstream.url), prompt)
    assert error is None and isinstance(events[-1], StreamEnd)
    body = upstream.requests[-1].body
    assert body is not None
    return body


# -- recorded streams -------------------------------------------------------------------------

REPLAYS: dict[str, list[Any]] = {
    # The role chunk carries the first fragment (content null); "Zü" is cut in UTF-8 too.
    "tool_call_only.sse": [
        ToolCall(
            "call_Xq3T9mZpL2vRk8Wn4Yb7Hc1D",
            "get_weather",
            {"city": "Zürich", "unit": "celsius"},
        ),
        StreamEnd("tool_use", usage(91, 24), "gpt-4.1-2025-04-14"),
    ],
    "tool_text_then_call.sse": [
        TextDelta("I'll look"),
        TextDelta(" that up."),
        ToolCall(
            "call_pL0sNk2uVw9aRt5cYe3Hq7Jm", "search_docs", {"query": "refund policy", "limit": 3}
        ),
        StreamEnd("tool_use", usage(140, 31), "gpt-4o-2024-08-06"),
    ],
    "tool_parallel.sse": [
        ToolCall("call_aB1cD2eF3gH4iJ5kL6mN7oP8", "get_weather", {"city": "Paris"}),
        ToolCall("call_qR9sT8uV7wX6yZ5aB4cD3eF2", "get_weather", {"city": "Tokyo"}),
        StreamEnd("tool_use", usage(80, 48), "gpt-4o-2024-08-06"),
    ],
    # Index 1 starts first and fragments interleave, two in one delta: index order wins.
    "tool_interleaved.sse": [
        TextDelta("Checking both."),
        ToolCall("call_first", "get_weather", {"city": "Oslo"}),
        ToolCall("call_second", "get_time", {"zone": "Europe/Oslo"}),
        StreamEnd("tool_use", usage(60, 30, None), "Qwen/Qwen3-8B"),
    ],
    # Cut-short arguments keep the call, with args None; empty arguments are no arguments.
    "tool_malformed_args.sse": [
        ToolCall("call_nO0pQ1rS2tU3vW4xY5zA6bC7", "get_time", {}),
        ToolCall(
            "call_dE8fG9hI0jK1lM2nO3pQ4rS5",
            "get_weather",
            None,
            args_error=NOT_JSON + "Unterminated string starting at: line 1 column 10 (char 9)",
        ),
        StreamEnd("tool_use", usage(77, 20), "gpt-4o-mini-2024-07-18"),
    ],
    # Ollama's /v1: each call whole in one fragment; `content: ""` is no text.
    "tool_ollama_parallel.sse": [
        ToolCall("call_wteop8bt", "run_command", {"command": "ls"}),
        ToolCall("call_rk2xye1l", "run_command", {"command": "ls -l"}),
        StreamEnd("tool_use", Usage(), "qwen2.5-coder:7b-instruct-q8_0"),
    ],
    # An older Ollama puts every call at index 0: a new id is a new call.
    "tool_index_reused.sse": [
        ToolCall("call_6ghm1x0q", "get_weather", {"city": "Berlin"}),
        ToolCall("call_u2k9z7dd", "get_weather", {"city": "Rome"}),
        StreamEnd("tool_use", Usage(), "llama3.1:8b"),
    ],
    # id, type and name on every fragment (not joined twice); no finish_reason at all.
    "tool_id_every_fragment.sse": [
        ToolCall("D7kq2Lm9X", "search_docs", {"query": "naïve café"}),
        ToolCall("Zp4Rt8Wc1", "get_time", {}),
        StreamEnd("tool_use", Usage(), "mistral-small-latest"),
    ],
}


def arguments_cuts(data: bytes) -> list[bytes]:
    """`awkward_sse_chunks`, and cut inside the first argument fragment and its escapes."""
    cuts = set(itertools.accumulate(len(chunk) for chunk in awkward_sse_chunks(data)))
    at = data.find(b'"arguments":"{')
    if at >= 0:
        cuts |= {at + 5, at + 14, at + 15}  # inside the key, between `{` and `\`, after `\`
    return split_at(data, cuts)


def test_every_tool_fixture_has_an_expectation() -> None:
    on_disk = sorted(path.name for path in CASE.fixtures.glob("tool_*.sse"))
    assert on_disk == sorted([*REPLAYS, "tool_calls.sse"])  # that one: provider_cases.py


@pytest.mark.parametrize("name", REPLAYS)
@pytest.mark.parametrize("reads", ["awkward", "one_byte"])
def test_recorded_tool_stream(upstream: FakeUpstream, name: str, reads: str) -> None:
    data = CASE.fixture(name)
    chunks = arguments_cuts(data) if reads == "awkward" else one_byte_reads(data)
    assert b"".join(chunks) == data and len(chunks) >= 4
    upstream.push(Script(raw=chunks, interval=0.005 if reads == "awkward" else 0))
    events, error = run_provider(CASE.settings(upstream.url), TOOLS)
    assert error is None
    assert events == REPLAYS[name]


def test_a_call_is_not_yielded_before_its_choice_finishes(upstream: FakeUpstream) -> None:
    # Cut before finish_reason and [DONE]: the arguments may be half there, so no call.
    data = CASE.fixture("tool_text_then_call.sse")
    cut = data.index(b'"finish_reason":"tool_calls"')
    upstream.push(Script(raw=[data[: data.rindex(b"data: ", 0, cut)]]))
    events, error = run_provider(CASE.settings(upstream.url), TOOLS)
    assert events == [TextDelta("I'll look"), TextDelta(" that up.")]
    assert error is not None and error.code == "upstream_incomplete"


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + json.dumps({"model": "m", "choices": [choice]}).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def test_a_call_without_an_id_gets_one(upstream: FakeUpstream) -> None:
    fragment = {"index": 0, "function": {"name": "get_time", "arguments": "{}"}}
    upstream.push(Script(raw=[chunk({"tool_calls": [fragment]}), chunk({}, "tool_calls"), DONE]))
    events, error = run_provider(CASE.settings(upstream.url), TOOLS)
    assert error is None
    call, end = events
    assert isinstance(call, ToolCall) and (call.name, call.args) == ("get_time", {})
    assert call.id.startswith("call_") and len(call.id) == 29
    assert end == StreamEnd("tool_use", Usage(), "m")


@pytest.mark.parametrize(
    ("names", "whole"),
    [
        (["get_wea", "get_weather", "get_weather"], "get_weather"),
        (["get_", "weather", ""], "get_weather"),
        (["go", "_to_", "go", "al"], "go_to_goal"),  # a piece like the name's start
    ],
    ids=["sent-again-grown", "sent-in-pieces", "a-piece-like-its-start"],
)
def test_a_name_sent_over_fragments_is_read_whole(
    upstream: FakeUpstream, names: list[str], whole: str
) -> None:
    # llama.cpp sends a call's name again, whole, as its parser reads more of it; others
    # in pieces, which OpenAI's SDK joins: the frontend was asked to run `get_wea` or
    # `get_` (reviewers'). One repeated stays as it is.
    start = {"index": 0, "id": "abc", "type": "function"}
    fragments = [{**start, "function": {"name": name, "arguments": ""}} for name in names]
    fragments[-1]["function"]["arguments"] = '{"city": "Oslo"}'
    raw = [chunk({"tool_calls": [fragment]}) for fragment in fragments]
    upstream.push(Script(raw=[*raw, chunk({}, "tool_calls"), DONE]))
    events, error = run_provider(CASE.settings(upstream.url), TOOLS)
    assert error is None
    [call] = [event for event in events if isinstance(event, ToolCall)]
    assert (call.name, call.args) == (whole, {"city": "Oslo"})


def test_arguments_given_as_an_object_are_taken(upstream: FakeUpstream) -> None:
    fragment = {"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": {"a": 1}}}
    upstream.push(Script(raw=[chunk({"tool_calls": [fragment]}), chunk({}, "stop"), DONE]))
    events, error = run_provider(CASE.settings(upstream.url), TOOLS)
    assert error is None
    # A server that says "stop" after a call: the reply still stopped to use a tool.
    assert events == [ToolCall("c1", "get_weather", {"a": 1}), StreamEnd("tool_use", Usage(), "m")]


def test_arguments_that_are_json_but_not_an_object(upstream: FakeUpstream) -> None:
    fragment = {"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": "[1]"}}
    upstream.push(Script(raw=[chunk({"tool_calls": [fragment]}), chunk({}, "tool_calls"), DONE]))
    events, _ = run_provider(CASE.settings(upstream.url), TOOLS)
    assert events[0] == ToolCall(
        "c1", "get_weather", None, args_error="arguments are a JSON array, not an object"
    )


def test_a_call_with_no_name_is_reported_as_a_made_up_one(upstream: FakeUpstream) -> None:
    """As on every provider (tools.ToolCall): the call is kept, under a name that can be
    sent back, rather than the reply failing."""
    fragment = {"index": 0, "id": "c1", "function": {"arguments": "{}"}}
    upstream.push(Script(raw=[chunk({"tool_calls": [fragment]}), chunk({}, "tool_calls"), DONE]))
    events, error = run_provider(CASE.settings(upstream.url), TOOLS)
    assert error is None
    assert events[0] == ToolCall("c1", "made_up_", {})


def test_a_length_stop_after_a_call_stays_max_tokens(upstream: FakeUpstream) -> None:
    fragment = {"index": 0, "id": "c1", "function": {"name": "get_weather", "arguments": '{"ci'}}
    upstream.push(Script(raw=[chunk({"tool_calls": [fragment]}), chunk({}, "length"), DONE]))
    events, _ = run_provider(CASE.settings(upstream.url), TOOLS)
    assert isinstance(events[0], ToolCall) and events[0].args is None
    assert events[-1] == StreamEnd("max_tokens", Usage(), "m")


def test_a_refusal_is_shown_as_text(upstream: FakeUpstream) -> None:
    # With a response schema, a refusal comes in delta.refusal, not content.
    frames = [chunk({"role": "assistant", "content": None, "refusal": ""})]
    frames += [chunk({"refusal": "I'm sorry, "}), chunk({"refusal": "I can't help."})]
    upstream.push(Script(raw=[*frames, chunk({}, "stop"), DONE]))
    events, error = run_provider(CASE.settings(upstream.url), HI)
    assert error is None
    assert events[:2] == [TextDelta("I'm sorry, "), TextDelta("I can't help.")]
    # OpenAI ends it with "stop"; in our vocabulary it is what Anthropic's "refusal" is.
    assert isinstance(events[-1], StreamEnd) and events[-1].stop_reason == "content_filter"


# -- the fake's own tool_call frames ---------------------------------------------------------

SCRIPTED_CALLS = [
    {"name": "get_weather", "args": {"city": "Zürich", "days": [1, 2]}},
    {"name": "get_time", "id": "call_given"},
    {"name": "get_weather", "arguments": '{"city": oops}'},
]


@pytest.mark.parametrize(
    "split_bytes, text", [(None, "Let me see."), (None, ""), (3, "Let me see.")]
)
def test_the_fakes_tool_calls_decode(
    upstream: FakeUpstream, split_bytes: int | None, text: str
) -> None:
    upstream.push(
        Script(text=text, tool_calls=SCRIPTED_CALLS, arg_piece=9, split_bytes=split_bytes)
    )
    events, error = run_provider(CASE.settings(upstream.url), TOOLS)
    assert error is None
    *texts, first, second, third, end = events
    assert texts == ([TextDelta("Let "), TextDelta("me "), TextDelta("see.")] if text else [])
    assert isinstance(first, ToolCall) and first.id.startswith("call_") and len(first.id) == 29
    assert first == ToolCall(first.id, "get_weather", {"city": "Zürich", "days": [1, 2]})
    assert second == ToolCall("call_given", "get_time", {})
    assert isinstance(third, ToolCall)
    assert third == ToolCall(
        third.id,
        "get_weather",
        None,
        args_error=NOT_JSON + "Expecting value: line 1 column 10 (char 9)",
    )
    assert end == StreamEnd("tool_use", Usage(12, 3 if text else 0, 0), FAKE_MODEL)


def test_the_fakes_frames_have_the_real_shape(upstream: FakeUpstream) -> None:
    # What the decoder must not depend on either: only the first fragment of an index
    # has id, type and name.
    upstream.push(Script(text="", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}}]))
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = httpx.post(
        f"{upstream.url}/v1/chat/completions",
        json=body,
        headers={"authorization": "Bearer k"},
    )
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.split("\n\n")
        if line.startswith("data: {")
    ]
    fragments = [c["choices"][0]["delta"].get("tool_calls") for c in chunks if c["choices"]]
    first, *rest = [f[0] for f in fragments if f]
    assert set(first) == {"index", "id", "type", "function"}
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert first["type"] == "function" and first["index"] == 0
    assert all(
        f == {"index": 0, "function": {"arguments": f["function"]["arguments"]}} for f in rest
    )
    assert "".join(f["function"]["arguments"] for f in rest) == '{"city":"Oslo"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


# -- the request: tools and tool_choice ------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time now.",
        "parameters": {"type": "object", "properties": {}},
    },
}


@pytest.mark.parametrize(
    "choice, sent",
    [
        pytest.param("auto", None, id="auto-is-the-default-and-not-sent"),
        pytest.param("none", "none", id="none"),
        pytest.param("required", "required", id="required"),
        pytest.param(
            NamedTool("get_time"),
            {"type": "function", "function": {"name": "get_time"}},
            id="named",
        ),
    ],
)
def test_tools_and_tool_choice(upstream: FakeUpstream, choice: ToolChoice, sent: Any) -> None:
    body = body_for(upstream, dataclasses.replace(TOOLS, tool_choice=choice))
    assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]
    assert body.get("tool_choice") == sent
    assert ("tool_choice" in body) == (sent is not None)
    assert "response_format" not in body and "parallel_tool_calls" not in body


def test_no_tools_no_tool_fields(upstream: FakeUpstream) -> None:
    # OpenAI refuses a tool_choice without tools (and so does the fake).
    body = body_for(upstream, dataclasses.replace(HI, tool_choice="none"))
    assert body == CASE.default_body


# -- the request: tool turns in the history --------------------------------------------------

HISTORY = Prompt(
    system="Be brief.",
    tools=(WEATHER, TIME),
    turns=(
        Turn("user", "Weather in Paris and Tokyo?"),
        Turn(
            "assistant",
            "Checking both.",
            tool_calls=(
                ToolCall("call_1", "get_weather", {"city": "Paris"}),
                ToolCall("call_2", "get_weather", {"city": "Tökyö"}),
            ),
        ),
        Turn("tool", "18°C, sunny", tool_call_id="call_1", tool_name="get_weather"),
        Turn("tool", "24°C, rain", tool_call_id="call_2", tool_name="get_weather"),
        Turn("user", "And the time?"),
        # No text; earlier arguments that were not JSON go back as {}.
        Turn(
            "assistant",
            "",
            tool_calls=(ToolCall("call_3", "get_time", None, args_error="not JSON"),),
        ),
        Turn("tool", "12:00", tool_call_id="call_3", tool_name="get_time"),
        Turn("user", "Thanks"),
    ),
)
HISTORY_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Tokyo?"},
    {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Tökyö"}'},
            },
        ],
    },
    # Two results in a row, each its own message, then the user's text its own.
    {"role": "tool", "tool_call_id": "call_1", "content": "18°C, sunny"},
    {"role": "tool", "tool_call_id": "call_2", "content": "24°C, rain"},
    {"role": "user", "content": "And the time?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_3",
                "type": "function",
                "function": {"name": "get_time", "arguments": "{}"},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_3", "content": "12:00"},
    {"role": "user", "content": "Thanks"},
]


def test_tool_turns_in_the_history(upstream: FakeUpstream) -> None:
    body = body_for(upstream, HISTORY)  # the fake checks results follow their calls
    assert body["messages"] == HISTORY_MESSAGES
    assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_before_calls_goes_back_with_them_as_it_came(
    upstream: FakeUpstream, field: str
) -> None:
    """DeepSeek and Kimi refuse (400) a request whose assistant turn with calls lacks its
    `reasoning_content`: every tool loop's second request failed (a reviewer's). Groq
    refuses the field, and sends `reasoning`, which is not sent back."""
    fragment = {"index": 0, "id": "c1", "function": {"name": "get_time", "arguments": "{}"}}
    raw = [
        chunk({field: "I should "}),
        chunk({field: "ask the clock."}),
        chunk({"tool_calls": [fragment]}),
        chunk({}, "tool_calls"),
        DONE,
    ]
    upstream.push(Script(raw=raw))
    events, error = run_provider(CASE.settings(upstream.url), TOOLS)
    assert error is None
    [call] = [event for event in events if isinstance(event, ToolCall)]
    assert (call.signature is not None) == (field == "reasoning_content")
    turns = (
        Turn("user", "Time?"),
        Turn("assistant", "", tool_calls=(call,)),
        Turn("tool", "12:00", tool_call_id="c1", tool_name="get_time"),
    )
    assistant = body_for(upstream, Prompt(None, turns, (TIME,)))["messages"][1]
    assert assistant.get("reasoning_content") == (
        "I should ask the clock." if field == "reasoning_content" else None
    )


def test_reasoning_goes_back_with_its_turn_whichever_call_is_kept(upstream: FakeUpstream) -> None:
    """The first call carried it: left unanswered, it was dropped with it, and reordered,
    it was not looked for (a reviewer's); given empty, it goes back empty."""
    carrier = openai._carrying(ToolCall("c1", "get_time", {}), "Thinking it over.")
    for calls, answered in [((carrier, ToolCall("c2", "get_time", {})), "c2"),
                            ((ToolCall("c2", "get_time", {}), carrier), "c2")]:  # fmt: skip
        turns = (
            Turn("user", "Time?"),
            Turn("assistant", "", tool_calls=calls),
            Turn("tool", "12:00", tool_call_id=answered, tool_name="get_time"),
        )
        assistant = body_for(upstream, Prompt(None, turns, (TIME,)))["messages"][1]
        assert assistant["reasoning_content"] == "Thinking it over."
    empty = openai._carrying(ToolCall("c1", "get_time", {}), "")
    turns = (
        Turn("user", "Time?"),
        Turn("assistant", "", tool_calls=(empty,)),
        Turn("tool", "12:00", tool_call_id="c1", tool_name="get_time"),
    )
    assert (
        body_for(upstream, Prompt(None, turns, (TIME,)))["messages"][1]["reasoning_content"] == ""
    )


def test_history_with_calls_and_no_tools_offered_now(upstream: FakeUpstream) -> None:
    body = body_for(upstream, dataclasses.replace(HISTORY, tools=()))
    assert body["messages"] == HISTORY_MESSAGES
    assert "tools" not in body and "tool_choice" not in body


@pytest.mark.parametrize(
    "turns, refusal",
    [
        pytest.param(
            (
                Turn("user", "Weather?"),
                Turn("assistant", "", tool_calls=(ToolCall("call_1", "get_weather", {}),)),
                Turn("user", "Never mind."),
            ),
            "did not have response messages: call_1",
            id="a-call-never-answered",
        ),
        pytest.param(
            (
                Turn("user", "Weather?"),
                Turn("tool", "18°C", tool_call_id="call_9", tool_name="get_weather"),
                Turn("user", "So?"),
            ),
            "must be a response to a preceeding message with 'tool_calls'",
            id="a-result-of-no-call",
        ),
    ],
)
def test_the_fake_refuses_what_openai_refuses_and_we_never_send_it(
    upstream: FakeUpstream, turns: tuple[Turn, ...], refusal: str
) -> None:
    # Sent as they stand, OpenAI (and the fake) refuse these histories...
    prompt = Prompt(system=None, turns=turns)
    raw = OpenAIProvider(CASE.settings(upstream.url), CASE.key)._body(prompt)
    raw["messages"] = [
        {"role": "user", "content": "Weather?"},
        *(
            [{"role": "assistant", "content": None, "tool_calls": [_CALL_1]}]
            if "call_1" in refusal
            else [{"role": "tool", "tool_call_id": "call_9", "content": "18°C"}]
        ),
        {"role": "user", "content": turns[-1].content},
    ]
    refused = httpx.post(
        f"{upstream.url}/v1/chat/completions",
        json=raw,
        headers={"authorization": f"Bearer {CASE.key}"},
    )
    assert refused.status_code == 400 and refusal in refused.text
    # ...so the conversation is mended before any provider sees it (base.conversation).
    events, error = run_provider(CASE.settings(upstream.url), prompt)
    assert error is None and isinstance(events[-1], StreamEnd)


_CALL_1 = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": "{}"},
}


# -- the request: response_format ------------------------------------------------------------

STRICT_OK = {
    "title": "Weather_report",
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"t": {"type": "number"}, "note": {"type": ["string", "null"]}},
                "required": ["t", "note"],
                "additionalProperties": False,
            },
        },
        "where": {"anyOf": [{"$ref": "#/$defs/place"}, {"type": "null"}]},
    },
    "required": ["city", "days", "where"],
    "additionalProperties": False,
    "$defs": {
        "place": {
            "type": "object",
            "properties": {"lat": {"type": "number"}},
            "required": ["lat"],
            "additionalProperties": False,
        }
    },
}


def changed(schema: dict[str, Any], path: tuple[str | int, ...], **changes: Any) -> dict[str, Any]:
    """A deep copy of `schema` with `changes` made to the object at `path` (None: delete)."""
    copy = json.loads(json.dumps(schema))
    node = copy
    for key in path:
        node = node[key]
    for key, value in changes.items():
        if value is None:
            node.pop(key, None)
        else:
            node[key] = value
    return copy


OPEN = {  # what a frontend usually writes: every property required, nothing said of others
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


def _nested(depth: int) -> dict[str, Any]:
    """Objects `depth` deep, each with one required property."""
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"n": node}, "required": ["n"]}
    return node


def _with_enum(count: int) -> dict[str, Any]:
    values = {"type": "string", "enum": [f"v{i}" for i in range(count)]}
    return {"type": "object", "properties": {"v": values}, "required": ["v"]}


def _with_properties(count: int) -> dict[str, Any]:
    names = [f"p{i}" for i in range(count)]
    return {
        "type": "object",
        "properties": {n: {"type": "string"} for n in names},
        "required": names,
    }


@pytest.mark.parametrize(
    "schema, strict",
    [
        pytest.param(STRICT_OK, True, id="closed-all-required-with-defs-and-anyOf"),
        pytest.param(changed(STRICT_OK, (), required=["city"]), False, id="an-optional-property"),
        pytest.param(
            changed(STRICT_OK, (), additionalProperties=None), True, id="root-closed-by-us"
        ),
        pytest.param(
            changed(STRICT_OK, ("$defs", "place"), additionalProperties=None),
            True,
            id="a-def-closed-by-us",
        ),
        pytest.param(OPEN, True, id="all-required-nothing-said-of-others"),
        pytest.param(
            {"type": "object", "additionalProperties": {"type": "string"}}, False, id="a-map"
        ),
        pytest.param(
            changed(STRICT_OK, ("properties", "days", "items"), additionalProperties=True),
            False,
            id="a-nested-object-open",
        ),
        pytest.param(
            changed(STRICT_OK, ("$defs", "place"), required=[]), False, id="a-def-not-required"
        ),
        pytest.param(
            changed(STRICT_OK, ("properties", "city"), minLength=2),
            False,
            id="a-keyword-strict-mode-lacks",
        ),
        pytest.param(changed(STRICT_OK, (), allOf=[{"type": "object"}]), False, id="allOf"),
        pytest.param(
            changed(STRICT_OK, ("$defs", "place", "properties", "lat"), default=0),
            False,
            id="a-default-in-a-def",
        ),
        pytest.param({"anyOf": [{"type": "object"}, {"type": "string"}]}, False, id="root-anyOf"),
        pytest.param({"type": "array", "items": {"type": "string"}}, False, id="root-array"),
        # Refused by strict mode, each with a 400 ("schema must have a 'type' key", and
        # pydantic's {"$ref", "description"}); a format outside its list too.
        pytest.param(
            changed(STRICT_OK, ("properties", "city"), type=None, description="any"),
            False,
            id="an-untyped-property",
        ),
        pytest.param(
            changed(STRICT_OK, ("properties", "where", "anyOf", 0), description="the place"),
            False,
            id="a-ref-with-a-description",
        ),
        pytest.param(
            changed(STRICT_OK, ("properties", "city"), format="uri"), False, id="format-uri"
        ),
        pytest.param(
            changed(STRICT_OK, ("properties", "city"), format="date"), True, id="format-date"
        ),
        pytest.param(
            changed(STRICT_OK, ("properties", "city"), pattern="^[A-Z][a-z]+(?:-[A-Z][a-z]+)*$"),
            True,
            id="a-pattern",
        ),
        # An object's own properties beside anyOf object branches: closed, no value fits.
        pytest.param(
            changed(
                STRICT_OK,
                ("$defs", "place"),
                anyOf=[
                    {"type": "object", "properties": {"e": {"type": "string"}}, "required": ["e"]}
                ],
            ),
            False,
            id="properties-beside-anyOf",
        ),
        # Past strict mode's size limits (OpenAI refuses them with a 400).
        pytest.param(_nested(11), False, id="objects-11-deep"),
        pytest.param(_nested(10), True, id="objects-10-deep"),
        pytest.param(_with_enum(1001), False, id="1001-enum-values"),
        pytest.param(_with_properties(5001), False, id="5001-properties"),
    ],
)
def test_response_format_is_strict_only_for_schemas_strict_mode_takes(
    upstream: FakeUpstream, schema: dict[str, Any], strict: bool
) -> None:
    body = body_for(upstream, dataclasses.replace(HI, response_schema=schema))
    json_schema = body["response_format"]["json_schema"]
    assert body["response_format"]["type"] == "json_schema"
    assert json_schema.get("strict") is (True if strict else None)
    if strict:  # as given, but with every object closed
        assert json_schema["schema"] == _with_objects_closed(schema)
    else:
        assert json_schema["schema"] == schema  # as the frontend wrote it
    assert "tools" not in body


@pytest.mark.parametrize(
    "pattern",
    [
        r"^(?!\.)(?!.*\.\.)[A-Za-z0-9_'+.-]*@[A-Za-z0-9.-]+$",  # Zod's email: lookaheads
        r"(?<=a)b",
        r"^(a)\1$",
        r"^(?P<x>a)(?P=x)$",  # a backreference by name, as Python writes it
    ],
)
def test_a_pattern_openai_does_not_hold_goes_into_the_description(
    upstream: FakeUpstream, pattern: str
) -> None:
    """ "regex lookaround is not supported" (a 400, strict or not, in tools too): every
    request offering a tool with Zod's email pattern failed on an OpenAI-only deployment."""
    email = {"type": "string", "description": "Who to write to", "pattern": pattern}
    schema = {"type": "object", "properties": {"to": email}, "required": ["to"]}
    tool = ToolSpec("send_mail", "Send a mail", schema)
    body = body_for(upstream, dataclasses.replace(HI, tools=(tool,), response_schema=schema))
    said = {
        "type": "string",
        "description": f"Who to write to\n\n{{pattern: {json.dumps(pattern)}}}",
    }
    assert body["tools"][0]["function"]["parameters"]["properties"]["to"] == said
    json_schema = body["response_format"]["json_schema"]
    assert json_schema["schema"]["properties"]["to"] == said
    assert json_schema["strict"] is True  # the rest is strict mode's


def test_nested_conditions_holding_such_patterns_grow_nothing(upstream: FakeUpstream) -> None:
    """A first version moved each `not` holding one into the description whole, inner
    ones first: each level's JSON written again in the next, a 765-byte schema sent as
    23 MB (a reviewer's; 27 levels ran out of memory)."""
    node: dict[str, Any] = {"type": "string"}
    for _ in range(20):
        node = {"pattern": "(?=a)a", "not": node}
    schema = {"type": "object", "properties": {"a": node}, "required": ["a"]}
    tool = ToolSpec("check", "Check", schema)
    body = body_for(upstream, dataclasses.replace(HI, tools=(tool,), response_schema=schema))
    assert len(json.dumps(body)) < 10 * len(json.dumps(schema))


def test_arrays_without_items_get_any_items_in_tools_and_schemas(upstream: FakeUpstream) -> None:
    """OpenAI refuses an array schema without `items`, strict or not ("array schema missing
    items"), where JSON Schema means "any items": `{}` says the same, and OpenAI takes it."""
    tags = {"type": "object", "properties": {"tags": {"type": "array"}}, "required": ["tags"]}
    rows = {"type": "array", "items": {"type": ["array", "null"]}}
    depends = {"rows": {"properties": {"more": {"type": "array"}}}, "cols": ["rows"]}
    nested = {"type": "object", "properties": {"rows": rows}, "dependencies": depends}
    tool = ToolSpec("tag", "Tag notes", tags)
    body = body_for(upstream, dataclasses.replace(HI, tools=(tool,), response_schema=nested))
    parameters = body["tools"][0]["function"]["parameters"]
    assert parameters["properties"]["tags"] == {"type": "array", "items": {}}
    json_schema = body["response_format"]["json_schema"]
    assert "strict" not in json_schema  # an untyped items schema is not strict mode's
    sent = json_schema["schema"]["properties"]["rows"]
    assert sent == {"type": "array", "items": {"type": ["array", "null"], "items": {}}}
    assert json_schema["schema"]["dependencies"] == {
        "rows": {"properties": {"more": {"type": "array", "items": {}}}},
        "cols": ["rows"],  # names, not a schema: as they were
    }
    assert tool.parameters["properties"]["tags"] == {"type": "array"}  # the frontend's, untouched


def _with_objects_closed(node: Any) -> Any:
    if isinstance(node, list):
        return [_with_objects_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _with_objects_closed(value) for key, value in node.items()}
    if "properties" in node:
        closed["properties"] = {k: _with_objects_closed(v) for k, v in node["properties"].items()}
        closed.setdefault("additionalProperties", False)
    return closed


@pytest.mark.parametrize(
    "title, name",
    [("Weather_report", "Weather_report"), ("Weather report", "response"), (None, "response")],
)
def test_response_format_name_is_the_schema_title_when_openai_takes_it(
    upstream: FakeUpstream, title: str | None, name: str
) -> None:
    schema = changed(STRICT_OK, (), title=title)
    body = body_for(upstream, dataclasses.replace(HI, response_schema=schema))
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": name, "schema": schema, "strict": True},
    }


def test_tools_and_a_response_schema_go_together(upstream: FakeUpstream) -> None:
    assert OpenAIProvider.schema_with_tools
    prompt = dataclasses.replace(TOOLS, tool_choice="required", response_schema=STRICT_OK)
    body = body_for(upstream, prompt)
    assert body["tools"] == [WEATHER_TOOL, TIME_TOOL]
    assert body["tool_choice"] == "required"
    assert body["response_format"]["json_schema"]["strict"] is True


def test_a_json_reply_streams_as_text(upstream: FakeUpstream) -> None:
    value = {"city": "Zürich", "days": [], "where": None}
    upstream.push(Script(json=value, arg_piece=11, split_bytes=3))
    prompt = dataclasses.replace(HI, response_schema=STRICT_OK)
    events, error = run_provider(CASE.settings(upstream.url), prompt)
    assert error is None
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert json.loads(text) == value
    assert events[-1] == StreamEnd("end_turn", Usage(12, len(events) - 1, 0), FAKE_MODEL)


def deepseek_body(prompt: Prompt, **changes: Any) -> dict[str, Any]:
    """The body sent to DeepSeek's own API for `prompt` (built, not sent: its host is not
    the fake's)."""
    settings = provider_settings(
        "openai", "https://api.deepseek.com/v1", "deepseek-v4-flash", "OPENAI_API_KEY", **changes
    )
    return OpenAIProvider(settings, "test-key")._body(prompt)


def test_deepseek_is_sent_reasoning_content_on_every_assistant_message() -> None:
    """DeepSeek refuses (400) a request with tools whose tool loop's messages lack their
    `reasoning_content`: the loop's answer, and calls another provider made, went
    without it, and every question after a loop failed (a reviewer's)."""
    carrier = openai._carrying(ToolCall("c1", "get_time", {}), "The clock knows.")
    turns = (
        Turn("user", "Time?"),
        Turn("assistant", "", tool_calls=(carrier,)),
        Turn("tool", "12:00", tool_call_id="c1", tool_name="get_time"),
        Turn("assistant", "It is noon."),
        Turn("user", "And in Oslo?"),
        Turn("assistant", "", tool_calls=(ToolCall("c2", "get_time", {}),)),  # Claude's
        Turn("tool", "13:00", tool_call_id="c2", tool_name="get_time"),
    )
    messages = deepseek_body(Prompt(None, turns, (TIME,)))["messages"]
    assert [m.get("reasoning_content") for m in messages if m["role"] == "assistant"] == [
        "The clock knows.",
        "",
        "",
    ]
    # Elsewhere an answer goes as it did: OpenAI refuses fields it does not know.
    answer = {"role": "assistant", "content": "It is noon."}
    assert answer in openai._messages(Message("assistant", ("It is noon.",)), openai._Server())


def test_deepseek_is_asked_for_json_in_words_not_with_a_json_schema() -> None:
    # DeepSeek takes no json_schema response_format: every request with one was a 400.
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    body = deepseek_body(dataclasses.replace(HI, system="Be brief.", response_schema=schema))
    assert body["response_format"] == {"type": "json_object"}
    system = body["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n")
    assert "in json" in system["content"] and json.dumps(schema) in system["content"]
    # An array asked for: the words alone (JSON mode writes an object, a reviewer's).
    listed = {"type": "array", "items": {"type": "string"}}
    body = deepseek_body(dataclasses.replace(HI, response_schema=listed))
    assert "response_format" not in body and json.dumps(listed) in body["messages"][0]["content"]
    # A union or a $ref of objects (pydantic's) keeps JSON mode (a first version lost it);
    # a union, an enum or a $ref of anything else goes without (a second gave it to them);
    # a schema that says nothing of the kind may be an object (a third ruled those out).
    maybe = ({"anyOf": [schema, schema]}, {"$ref": "#/$defs/N", "$defs": {"N": schema}},
             {}, {"required": ["answer"]}, {"type": ["object", "null"]})  # fmt: skip
    for objects in maybe:
        body = deepseek_body(dataclasses.replace(HI, response_schema=objects))
        assert body["response_format"] == {"type": "json_object"}, objects
    for others in (
        {"anyOf": [listed, {"type": "null"}]},
        {"enum": ["yes", "no"]},
        {"const": 3},
        {"$ref": "#/$defs/L", "$defs": {"L": listed}},
        {"allOf": [listed, {"properties": {"a": {}}}]},
        # An anchor's name, read as a pointer, led back to the root (a reviewer's); a
        # pointer this document does not hold (an inner $id's) is not known either.
        {"$ref": "#list", "$defs": {"L": {"$anchor": "list", **listed}}},
        {"$ref": "#/$defs/Missing", "$defs": {}},
    ):
        body = deepseek_body(dataclasses.replace(HI, response_schema=others))
        assert "response_format" not in body, others


def test_deepseeks_json_mode_is_worked_out_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """An allOf of $refs to allOfs of them, four levels of 40: 8 s of the I/O loop per
    request, minutes at 100 (a reviewer's). The parts looked at are bounded: past the
    bound, what is not looked at may be an object."""
    monkeypatch.setattr(schema_kinds, "MOST_SCHEMA_OBJECTS", 10)
    listed = {"type": "array", "items": {"type": "string"}}
    late = {"allOf": [*[{"description": "fine"}] * 10, listed]}  # its array past the bound
    assert deepseek_body(dataclasses.replace(HI, response_schema=late))["response_format"]
    early = {"allOf": [listed, *[{"description": "fine"}] * 10]}
    assert "response_format" not in deepseek_body(dataclasses.replace(HI, response_schema=early))


@pytest.mark.parametrize("host", ["api.deepseek.com.", "API.DeepSeek.com:443"])
def test_a_servers_host_is_told_written_any_way(host: str) -> None:
    settings = provider_settings(
        "openai", f"https://{host}/v1", "deepseek-v4-flash", "OPENAI_API_KEY"
    )
    body = OpenAIProvider(settings, "k")._body(dataclasses.replace(HI, response_schema={}))
    assert body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("thinking", [False, True])
def test_deepseek_forced_to_call_a_tool_is_told_not_to_think(thinking: bool) -> None:
    # DeepSeek thinks unless told not to and refuses a forced call while it does.
    forced = dataclasses.replace(TOOLS, tool_choice=NamedTool("get_time"))
    body = deepseek_body(forced, thinking=thinking)
    assert body["thinking"] == {"type": "disabled"} and "reasoning_effort" not in body
    assert "thinking" not in deepseek_body(TOOLS, thinking=thinking)


def test_openrouter_reasoning_goes_back_with_the_calls() -> None:
    """OpenRouter streams DeepSeek's reasoning as `reasoning` and refuses (DeepSeek's
    400) the loop's next request without it as `reasoning_content`: it was not kept (a
    reviewer's). Elsewhere `reasoning` is not sent back (Groq refuses the field)."""
    fragment = {"index": 0, "id": "c1", "function": {"name": "get_time", "arguments": "{}"}}
    stream = b"".join(
        [chunk({"reasoning": "Ask the clock."}), chunk({"tool_calls": [fragment]}),
         chunk({}, "tool_calls"), DONE]
    )  # fmt: skip
    carried = {}
    for base_url in ("https://openrouter.ai/api/v1", "https://api.groq.com/openai/v1"):
        settings = provider_settings("openai", base_url, "deepseek/deepseek-v4", "OPENAI_API_KEY")
        provider = OpenAIProvider(settings, "test-key")
        head = httpx.Response(200, headers={"content-type": "text/event-stream"})
        decoder, out = provider.decoder(head), []
        decoder.feed(stream, out)
        decoder.end(out)
        [call] = [event for event in out if isinstance(event, ToolCall)]
        turns = (
            Turn("user", "Time?"),
            Turn("assistant", "", tool_calls=(call,)),
            Turn("tool", "12:00", tool_call_id="c1", tool_name="get_time"),
        )
        sent = provider._body(Prompt(None, turns, (TIME,)))["messages"][1]
        carried[base_url] = sent.get("reasoning_content")
    assert list(carried.values()) == ["Ask the clock.", None]


def test_groq_and_mistral_are_sent_no_reasoning_a_call_carries() -> None:
    # They refuse a field they do not know: a call made while the base URL pointed at
    # DeepSeek carried its reasoning to them (a reviewer's).
    carrier = openai._carrying(ToolCall("c1", "get_time", {}), "The clock knows.")
    turns = (
        Turn("user", "Time?"),
        Turn("assistant", "", tool_calls=(carrier,)),
        Turn("tool", "12:00", tool_call_id="c1", tool_name="get_time"),
    )
    for base_url in ("https://api.mistral.ai/v1", "https://api.groq.com/openai/v1"):
        settings = provider_settings("openai", base_url, "m", "OPENAI_API_KEY")
        sent = OpenAIProvider(settings, "k")._body(Prompt(None, turns, (TIME,)))["messages"][1]
        assert "reasoning_content" not in sent


def test_mistral_is_sent_no_stream_options() -> None:
    # Mistral refuses a field it does not know (422): every request was refused.
    settings = provider_settings(
        "openai", "https://api.mistral.ai/v1", "mistral-small-latest", "OPENAI_API_KEY"
    )
    body = OpenAIProvider(settings, "test-key")._body(HI)
    assert "stream_options" not in body and body["stream"] is True


def test_mistral_is_sent_call_ids_of_nine_letters_and_digits() -> None:
    # Mistral refuses any other (400 "must be a-z, A-Z, 0-9, with a length of 9"): a
    # conversation with another provider's call was refused from then on (a reviewer's).
    settings = provider_settings("openai", "https://api.mistral.ai/v1", "m", "OPENAI_API_KEY")
    turns = (
        Turn("user", "Time?"),
        Turn("assistant", "", tool_calls=(ToolCall("toolu_01A09q90qw90lq917835lq9", "get_time", {}),
                                          ToolCall("D681PevKs", "get_time", {}))),  # Mistral's
        Turn("tool", "12:00", tool_call_id="toolu_01A09q90qw90lq917835lq9", tool_name="get_time"),
        Turn("tool", "13:00", tool_call_id="D681PevKs", tool_name="get_time"),
    )  # fmt: skip
    messages = OpenAIProvider(settings, "k")._body(Prompt(None, turns, (TIME,)))["messages"]
    ids = [call["id"] for call in messages[1]["tool_calls"]]
    assert ids[1] == "D681PevKs" and ids[0].isalnum() and len(ids[0]) == 9
    assert [message["tool_call_id"] for message in messages[2:4]] == ids


@pytest.mark.parametrize("model", ["kimi-k2.5", "kimi-k2.6", "kimi-k2.7-code", "kimi-k3"])
def test_kimi_forced_to_call_a_tool_is_asked_with_auto(model: str) -> None:
    """Kimi thinks unless told not to and refuses a forced call while it does; K2.x takes
    no `required` at all, and K2.7 Code and K3 cannot stop thinking (a reviewer's, from
    Moonshot's docs: a first version sent `thinking: disabled` and the forced call)."""
    settings = provider_settings("openai", "https://api.moonshot.ai/v1", model, "OPENAI_API_KEY")
    forced = dataclasses.replace(TOOLS, tool_choice="required")
    body = OpenAIProvider(settings, "k")._body(forced)
    assert "thinking" not in body and "tool_choice" not in body


def test_mistral_is_sent_an_assistant_word_between_results_and_the_users_text() -> None:
    # Mistral refuses a user message right after tool results (400 "Unexpected role 'user'
    # after role 'tool'"): every tool loop's follow-up, which has the user's text, was.
    settings = provider_settings("openai", "https://api.mistral.ai/v1", "m", "OPENAI_API_KEY")
    turns = (
        Turn("user", "Time?"),
        Turn("assistant", "", tool_calls=(ToolCall("abcDEF123", "get_time", {}),)),
        Turn("tool", "12:00", tool_call_id="abcDEF123", tool_name="get_time"),
        Turn("user", "Thanks!"),
    )
    messages = OpenAIProvider(settings, "k")._body(Prompt(None, turns, (TIME,)))["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "user"]
    assert messages[3]["content"] and messages[4]["content"] == "Thanks!"


@pytest.mark.parametrize(
    ("base_url", "model", "effort", "temperature"),
    [
        ("https://api.groq.com/openai/v1", "qwen/qwen3-32b", "default", 0.5),  # none or default
        ("https://api.groq.com/openai/v1", "openai/gpt-oss-120b", "medium", 0.5),
        ("https://api.mistral.ai/v1", "mistral-small-latest", "high", 0.5),  # high or none
        ("https://api.moonshot.ai/v1", "kimi-k3", "high", None),  # its own temperature alone
        # xAI's refuse an effort (a 400), but grok-3-mini's (low or high) and grok-4.3's.
        ("https://api.x.ai/v1", "grok-4", None, 0.5),
        ("https://api.x.ai/v1", "grok-4.20-reasoning", None, 0.5),
        ("https://api.x.ai/v1", "grok-4-1-fast-reasoning", None, 0.5),
        ("https://api.x.ai/v1", "grok-3-mini", "high", 0.5),
        ("https://api.x.ai/v1", "grok-4.3", "medium", 0.5),
        ("https://api.x.ai/v1", "grok-4.20-multi-agent-0309", "medium", 0.5),
        ("https://api.x.ai/v1", "grok-4.5", "medium", 0.5),
    ],
)
def test_a_server_is_sent_the_effort_and_temperature_it_takes(
    base_url: str, model: str, effort: str | None, temperature: float | None
) -> None:
    """Each refused the other values, every request a 400 (reviewers')."""
    thinking = provider_settings(
        "openai", base_url, model, "OPENAI_API_KEY", thinking=True, temperature=0.5
    )
    thinking = dataclasses.replace(thinking, thinking_budget=4096)
    assert OpenAIProvider(thinking, "k")._body(HI).get("reasoning_effort") == effort
    plain = dataclasses.replace(thinking, thinking=False)
    assert OpenAIProvider(plain, "k")._body(HI).get("temperature") == temperature


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_groq_is_sent_tools_or_a_response_format_never_both(choice: ToolChoice) -> None:
    """Groq refuses a response format beside tools (400 "json mode cannot be combined
    with tool/function calling": a reviewer's, every such request failed): the tools go
    and the schema is said left out, or, none to be called, the schema alone."""
    settings = provider_settings(
        "openai", "https://api.groq.com/openai/v1", "openai/gpt-oss-120b", "OPENAI_API_KEY"
    )
    provider = OpenAIProvider(settings, "k")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    prompt = dataclasses.replace(HI, tools=(TIME,), tool_choice=choice, response_schema=schema)
    body = provider._body(prompt)
    if choice == "auto":
        assert "tools" in body and "response_format" not in body
        assert "the schema was not" in (provider.schema_left_out(prompt) or "")
    else:
        assert "tools" not in body and body["response_format"]["type"] == "json_schema"
        assert provider.schema_left_out(prompt) is None
