"""Anthropic tools and structured output (README "Tools and structured output"), over
real HTTP on loopback.

What all four providers share about tools is tested with them all elsewhere; here is
what is Anthropic's own:
- recorded streams (tests/fixtures/anthropic/tool_*.sse and tool_use.sse), replayed
  through the fake's `raw` script cut at awkward places and one byte a read: `tool_use`
  blocks with `input_json_delta` fragments (pings between), parallel calls, arguments
  cut off by max_tokens, thinking blocks carried in the call's signature;
- the request, field by field as the Messages API documents it: `tools` with
  `input_schema`, `tool_choice`, `tool_use` / `tool_result` blocks in the history,
  `output_config.format`, and what extended thinking changes;
- the fake's own `tool_call` frames decoded by the provider, and the requests the fake
  refuses as the real API does.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import pytest

from assistant.chain import Chain
from assistant.config import Timeouts
from assistant.providers import anthropic as anthropic_module
from assistant.providers import anthropic_schema
from assistant.providers import anthropic_schema as anthropic_schema_module
from assistant.providers.anthropic import decode_thinking, encode_thinking
from assistant.providers.anthropic_schema import output_schema, unheld
from assistant.providers.base import Event, Prompt, StreamEnd, ThinkingDelta
from assistant.request import Turn
from assistant.tools import NamedTool, ToolCall, ToolChoice, ToolSpec, parse_arguments
from devtools.fake_upstream import FakeUpstream, Script

from .provider_cases import ANTHROPIC as CASE
from .provider_cases import SONNET, end, texts, thoughts
from .provider_support import FAKE_MODEL, awkward_sse_chunks, one_byte_reads, run_chain
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("get_time", "", {"type": "object", "properties": {}})
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
OPUS = "claude-opus-4-1-20250805"
HAIKU = "claude-haiku-4-5-20251001"


def ask(
    text: str = "Weather in Paris?",
    *history: Turn,
    tools: tuple[ToolSpec, ...] = (WEATHER, CLOCK),
    choice: ToolChoice = "auto",
    schema: dict[str, Any] | None = None,
) -> Prompt:
    turns = (*history, Turn("user", text)) if text else history
    return Prompt(None, turns, tools, choice, schema)


def sent(upstream: FakeUpstream, prompt: Prompt, **settings: Any) -> dict[str, Any]:
    """The body the provider sent for `prompt`, after checking the fake took it."""
    events, error = CASE.events(upstream.url, prompt, **settings)
    assert error is None, error.detail if error else None
    assert isinstance(events[-1], StreamEnd)
    body = upstream.requests[-1].body
    assert body is not None
    return body


def call(call_id: str, name: str, args: dict[str, Any] | None, **extra: Any) -> ToolCall:
    return ToolCall(call_id, name, args, **extra)


# -- a. recorded streams ----------------------------------------------------------------------

THINKING_BLOCKS = [
    {
        "type": "thinking",
        "thinking": "The user wants the weather in Zürich. I should call get_weather.",
        "signature": "EqQBCgIYAhIMzUv9tbFgP1bkKdXcGgyr2aYwS8+9pKxUqaNmQ3mL",
    },
    {
        "type": "redacted_thinking",
        "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpPkNRj2YfWX"
        "GmKDxH4mPnZ5sQ7vB8URj2pLmN3kwHOGWDkYvsZ",
    },
]
CUT_ARGUMENTS = '{"path": "notes.md", "text": "Once upon a ti'

REPLAYS: dict[str, list[Event]] = {
    # Pings between the fragments; "ü" and "°" inside them.
    "tool_alone.sse": [
        call("toolu_01NRLabsLyVHZPKxbKvkfSMn", "get_weather", {"city": "Zürich", "unit": "°C"}),
        end("tool_use", SONNET, 612, 54),
    ],
    "tool_use.sse": [
        *texts("Okay, let's check ", "the weather for San Francisco, CA:"),
        call("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"location": "San Francisco, CA"}),
        end("tool_use", SONNET, 472, 89),
    ],
    "tool_parallel.sse": [
        *texts("I'll check both ", "cities at once."),
        call("toolu_01CrGWLRgBp4mBVKUGcsCX6D", "get_weather", {"city": "Paris"}),
        call(
            "toolu_01Dp3vYcXN2RdJxHs8QKbEyw",
            "get_time",
            {"timezone": "Asia/Tokyo", "label": "東京"},
        ),
        end("tool_use", SONNET, 803, 121),
    ],
    # A tool without parameters (only an empty fragment), then arguments max_tokens cut.
    "tool_malformed.sse": [
        call("toolu_01Gx3ZbAqWDCEmT2kYJd7e5N", "list_files", {}),
        call(
            "toolu_01T7mQeHw4bNp9sVfKcR2uLj",
            "write_file",
            None,
            args_error=parse_arguments(CUT_ARGUMENTS)[1],
        ),
        end("max_tokens", HAIKU, 391, 32),
    ],
    # CRLF line ends; a thinking and a redacted_thinking block ride on the call.
    "tool_thinking_crlf.sse": [
        *thoughts("The user wants the weather in Zürich.", " I should call get_weather."),
        *texts("Let me look that up."),
        call(
            "toolu_01A09q90qw90lq917835lq9",
            "get_weather",
            {"city": "Zürich"},
            signature=encode_thinking(THINKING_BLOCKS),
        ),
        end("tool_use", OPUS, 690, 148),
    ],
}
SPLITS = {"awkward": awkward_sse_chunks, "one-byte": one_byte_reads}


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", REPLAYS)
def test_recorded_tool_stream(upstream: FakeUpstream, name: str, split: str) -> None:
    data = CASE.fixture(name)
    chunks = SPLITS[split](data)
    assert b"".join(chunks) == data and len(chunks) >= 4
    upstream.push(Script(raw=chunks, interval=0.01 if split == "awkward" else 0))

    events, error = CASE.events(upstream.url, ask())

    assert error is None
    assert events == REPLAYS[name]


def test_the_tool_fixtures_are_what_they_claim() -> None:
    # Guards against an editor normalising line ends.
    crlf = CASE.fixture("tool_thinking_crlf.sse")
    assert crlf.count(b"\n") == crlf.count(b"\r\n") > 10
    assert parse_arguments(CUT_ARGUMENTS)[0] is None


def test_the_thinking_signature_is_opaque_ascii_and_decodes_back() -> None:
    signature = encode_thinking(THINKING_BLOCKS)
    assert signature.startswith("anthropic:") and signature.isascii()
    assert "Zürich" not in signature
    assert decode_thinking(signature) == THINKING_BLOCKS
    # Not ours (a Gemini thoughtSignature), or damaged: nothing to send back.
    for other in (None, "", "CiQBcsjafBkRVsOq1b3Fy2Z9", "anthropic:%%%", "anthropic:e30="):
        assert decode_thinking(other) == []


def test_a_call_whose_block_never_closed_is_still_reported(upstream: FakeUpstream) -> None:
    frames = CASE.fixture("tool_alone.sse").split(b"\n\n")
    stop = frames.index(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}')
    upstream.push(Script(raw=[b"\n\n".join(frames[:stop] + frames[stop + 1 :])]))
    events, error = CASE.events(upstream.url, ask())
    assert error is None and events == REPLAYS["tool_alone.sse"]


def test_a_call_block_without_an_id_gets_one_made_up(upstream: FakeUpstream) -> None:
    """An Anthropic-compatible server's tool_use block with no id gave the call "", which
    no request can send back (a 400): the chain makes one up."""
    fixture = re.sub(rb'"id":"toolu_[A-Za-z0-9_]+",', b"", CASE.fixture("tool_alone.sse"))
    assert b'"toolu_' not in fixture
    upstream.push(Script(raw=[fixture]))
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    [call] = [item for item in run.items if isinstance(item, ToolCall)]
    assert call.id.startswith("call_") and len(call.id) > 10


# -- b. the request ---------------------------------------------------------------------------


def test_tools_are_declared_with_input_schema(upstream: FakeUpstream) -> None:
    body = sent(upstream, ask())
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
        {
            "name": "get_time",
            "input_schema": {"type": "object", "properties": {}},
        },  # no description
    ]
    assert "output_config" not in body


@pytest.mark.parametrize(
    "choice, wire",
    [
        ("auto", None),  # the API's default: not sent
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        (NamedTool("get_time"), {"type": "tool", "name": "get_time"}),
    ],
    ids=["auto", "none", "required", "named"],
)
def test_tool_choice(upstream: FakeUpstream, choice: ToolChoice, wire: Any) -> None:
    body = sent(upstream, ask(choice=choice))
    assert body.get("tool_choice") == wire
    assert len(body["tools"]) == 2


def test_no_tools_no_tool_fields(upstream: FakeUpstream) -> None:
    body = sent(upstream, ask(tools=(), choice="none"))
    assert set(body) == {"model", "max_tokens", "stream", "messages"}


def test_history_with_calls_two_results_and_a_user_text(upstream: FakeUpstream) -> None:
    history = (
        Turn("user", "Weather and time in Tokyo?"),
        Turn(
            "assistant",
            "Checking both.",
            tool_calls=(
                call("toolu_01", "get_weather", {"city": "Tokyo"}),
                call("toolu_02", "get_time", {}),
            ),
        ),
        Turn("tool", "18 °C, rain", tool_call_id="toolu_01", tool_name="get_weather"),
        Turn("tool", "09:00", tool_call_id="toolu_02", tool_name="get_time"),
    )
    body = sent(upstream, ask("And tomorrow?", *history))
    assert body["messages"] == [
        {"role": "user", "content": "Weather and time in Tokyo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Tokyo"},
                },
                {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}},
            ],
        },
        {
            # One user message: both results first, then the user's text.
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 °C, rain"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "09:00"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


def test_a_tool_loop_over_two_rounds(upstream: FakeUpstream) -> None:
    # A call with no text and malformed arguments, an empty result, a second round, and
    # the final answer: what the conversation continues from.
    history = (
        Turn("user", "Save a note."),
        Turn("assistant", "", tool_calls=(call("toolu_a", "write_file", None, args_error="x"),)),
        Turn("tool", "", tool_call_id="toolu_a", tool_name="write_file"),
        Turn("assistant", "", tool_calls=(call("toolu_b", "list_files", {}),)),
        Turn("tool", "notes.md", tool_call_id="toolu_b", tool_name="list_files"),
        Turn("assistant", "Saved as notes.md."),
    )
    body = sent(upstream, ask("Thanks!", *history))
    assert body["messages"] == [
        {"role": "user", "content": "Save a note."},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_a", "name": "write_file", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_b", "name": "list_files", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_b", "content": "notes.md"}],
        },
        {"role": "assistant", "content": "Saved as notes.md."},
        {"role": "user", "content": "Thanks!"},
    ]


def test_the_result_alone_ends_the_conversation(upstream: FakeUpstream) -> None:
    # The orchestrator sends the results back with no new text of the user's.
    history = (
        Turn("user", "Weather in Oslo?"),
        Turn("assistant", "", tool_calls=(call("toolu_o", "get_weather", {"city": "Oslo"}),)),
        Turn("tool", "-3 °C", tool_call_id="toolu_o", tool_name="get_weather"),
    )
    body = sent(upstream, ask("", *history))
    assert body["messages"][-1] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_o", "content": "-3 °C"}],
    }


@pytest.mark.parametrize("output", ["", "\n", " \r\n"])
def test_a_result_that_shows_nothing_goes_without_content(
    upstream: FakeUpstream, output: str
) -> None:
    # Anthropic refuses text of whitespace alone ("text content blocks must contain
    # non-whitespace text"): a shell tool that printed a newline was sent as it was, and
    # every later request of the conversation refused.
    history = (
        Turn("user", "Clear the cache."),
        Turn("assistant", "", tool_calls=(call("toolu_c", "clear_cache", {}),)),
        Turn("tool", output, tool_call_id="toolu_c", tool_name="clear_cache"),
    )
    body = sent(upstream, ask("Done?", *history))
    assert body["messages"][-1]["content"][0] == {"type": "tool_result", "tool_use_id": "toolu_c"}


def test_a_response_schema_is_output_config_format(upstream: FakeUpstream) -> None:
    upstream.push(Script(json={"answer": "Paris"}))
    events, error = CASE.events(upstream.url, ask(tools=(), schema=SCHEMA))
    assert error is None
    assert "".join(e.text for e in events if not isinstance(e, StreamEnd | ToolCall)) == (
        '{"answer":"Paris"}'
    )
    body = upstream.requests[-1].body
    assert body is not None
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "tools" not in body


def test_tools_and_a_response_schema_go_together(upstream: FakeUpstream) -> None:
    assert CASE.provider_class.schema_with_tools is True  # Anthropic takes both at once
    body = sent(upstream, ask(choice="required", schema=SCHEMA))
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "any"}
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}


# -- c. extended thinking with tools ----------------------------------------------------------

THINKING = {"type": "enabled", "budget_tokens": 2048}
OURS = encode_thinking(THINKING_BLOCKS[:1])
LATER = [{"type": "thinking", "thinking": "Now the clock.", "signature": "c2lnLTI="}]


def loop(*calls: ToolCall, text: str = "Looking it up.") -> tuple[Turn, ...]:
    """A tool loop to continue: the question, the assistant's calls, their results."""
    return (
        Turn("user", "Weather in Zürich?"),
        Turn("assistant", text, tool_calls=calls),
        *(Turn("tool", "ok", tool_call_id=c.id, tool_name=c.name) for c in calls),
    )


def test_thinking_stays_on_with_tools_offered(upstream: FakeUpstream) -> None:
    body = sent(upstream, ask(), thinking=True, temperature=0.5)
    assert body["thinking"] == THINKING and "temperature" not in body
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("model", "thinking"),
    [
        ("claude-sonnet-4-5", THINKING),
        ("claude-sonnet-4-20250514", THINKING),  # 4: a date is no minor version
        ("claude-3-7-sonnet-20250219", THINKING),
        ("claude-haiku-4-5-20251001", THINKING),
        ("a-proxys-own-name", THINKING),
        # A budget is deprecated from 4.6 and refused from Opus 4.7 on (a 400 each time);
        # from 4.7 on the thinking is left out of the stream unless asked for.
        ("claude-sonnet-4-6", {"type": "adaptive", "display": "summarized"}),
        ("claude-opus-4-7", {"type": "adaptive", "display": "summarized"}),
        ("us.anthropic.claude-opus-4-7-v1:0", {"type": "adaptive", "display": "summarized"}),
        ("claude-fable-5", {"type": "adaptive", "display": "summarized"}),
        # Its name says no version: a budget was sent, and refused (a 400 each time).
        ("claude-mythos-preview", {"type": "adaptive", "display": "summarized"}),
    ],
)
def test_newer_models_think_adaptively(
    upstream: FakeUpstream, model: str, thinking: dict[str, Any]
) -> None:
    body = sent(upstream, ask(tools=()), thinking=True, model=model)
    assert body["thinking"] == thinking


@pytest.mark.parametrize(
    ("model", "sent_temperature"),
    [
        ("claude-sonnet-4-6", 0.5),
        ("claude-opus-4-7", None),  # "`temperature` is deprecated for this model": a 400
        ("us.anthropic.claude-opus-4-7-v1:0", None),
        ("claude-fable-5", None),
        ("claude-mythos-preview", None),
        ("a-proxys-own-name", 0.5),
    ],
)
def test_claude_4_7_on_is_sent_no_temperature(
    upstream: FakeUpstream, model: str, sent_temperature: float | None
) -> None:
    body = sent(upstream, ask(tools=()), temperature=0.5, model=model)
    assert body.get("temperature") == sent_temperature


@pytest.mark.parametrize("choice", ["required", NamedTool("get_weather")], ids=str)
def test_a_forced_call_turns_thinking_off(upstream: FakeUpstream, choice: ToolChoice) -> None:
    # The API refuses forced tool use with thinking on (the fake too); the call wins.
    body = sent(upstream, ask(choice=choice), thinking=True, temperature=0.5)
    assert "thinking" not in body and body["temperature"] == 0.5
    assert body["tool_choice"]["type"] in ("any", "tool")


@pytest.mark.parametrize(
    ("model", "forced"),
    [
        ("claude-opus-5", True),
        ("claude-sonnet-5", True),
        ("claude-fable-5", True),
        ("claude-sonnet-5-5", False),
        ("claude-opus-5-5", False),
        ("claude-haiku-5-5", True),  # its guide: a forced call, answered with no thinking
        ("claude-fable-5-1", False),
        ("anthropic.claude-mythos-5-1", False),
    ],
)
@pytest.mark.parametrize("choice", ["required", NamedTool("get_weather")], ids=str)
def test_a_model_that_always_thinks_is_asked_with_thinking_and_a_call_it_takes(
    upstream: FakeUpstream, model: str, forced: bool, choice: ToolChoice
) -> None:
    """Claude 5 on think whatever a request says (Fable 5 and 5.5 on refuse being told
    not to); 5.5 on, Fable and Mythos from 5.1, refuse a forced call (a 400 on every
    such request: a reviewer's, from Anthropic's migration guides), others take one
    beside their thinking. Their thinking is asked to stream, thinking on or off."""
    body = sent(upstream, ask(choice=choice), thinking=False, temperature=0.5, model=model)
    assert {k: v for k, v in body["thinking"].items() if k != "block_binding"} == {
        "type": "adaptive",
        "display": "summarized",
    }
    assert ("tool_choice" in body) is forced and "temperature" not in body


@pytest.mark.parametrize(
    ("model", "preserves"),
    [
        ("claude-opus-5", False),
        ("claude-fable-5", False),
        ("claude-sonnet-4-6", False),
        ("claude-fable-5-1", True),
        ("claude-mythos-5-2", True),
        ("claude-opus-5-5", True),
        ("claude-sonnet-5-5", True),
        ("claude-haiku-5-5", True),
    ],
)
def test_a_model_that_preserves_thinking_may_drop_a_block_whose_conversation_changed(
    upstream: FakeUpstream, model: str, preserves: bool
) -> None:
    """Claude 5.5 on, Fable and Mythos from 5.1, check each thinking block sent back
    against what came before it (a 400 on every later question once the tools, the
    system prompt or the history changed, or a block moved before the turn's text: a
    reviewer's): such a block is dropped instead."""
    body = sent(upstream, ask(tools=()), thinking=True, model=model)
    binding = {"prefix_mismatch_behavior": "drop_block"}
    assert (body["thinking"].get("block_binding") == binding) is preserves
    beta = upstream.requests[-1].headers.get("anthropic-beta")
    assert (beta == "thinking-binding-controls-2026-08-01") is preserves


@pytest.mark.parametrize("signature", [None, "CiQBcsjafBkRVsOq1b3Fy2Z9"], ids=["none", "other"])
def test_a_model_that_always_thinks_continues_a_loop_without_thinking_to_send_back(
    upstream: FakeUpstream, signature: str | None
) -> None:
    """A forced call skips Claude 5's thinking, and another provider's calls have none:
    the loop goes on, thinking as the model always does (a reviewer's, against a fake
    that asked for a leading thinking block as Claude before 5 does)."""
    history = loop(call("toolu_g", "get_weather", {"city": "Zürich"}, signature=signature))
    body = sent(upstream, ask("", *history), model="claude-opus-5")
    assert body["thinking"] == {"type": "adaptive", "display": "summarized"}
    assert [block["type"] for block in body["messages"][1]["content"]] == ["text", "tool_use"]


def test_thinking_blocks_go_back_first_in_the_assistant_turn(upstream: FakeUpstream) -> None:
    history = loop(call("toolu_z", "get_weather", {"city": "Zürich"}, signature=OURS))
    body = sent(upstream, ask("", *history), thinking=True)
    assert body["thinking"] == THINKING
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            THINKING_BLOCKS[0],
            {"type": "text", "text": "Looking it up."},
            {
                "type": "tool_use",
                "id": "toolu_z",
                "name": "get_weather",
                "input": {"city": "Zürich"},
            },
        ],
    }


def test_interleaved_thinking_goes_back_before_its_own_call(upstream: FakeUpstream) -> None:
    history = loop(
        call(
            "toolu_1", "get_weather", {"city": "Zürich"}, signature=encode_thinking(THINKING_BLOCKS)
        ),
        call("toolu_2", "get_time", {}, signature=encode_thinking(LATER)),
    )
    body = sent(upstream, ask("", *history), thinking=True)
    assert [block["type"] for block in body["messages"][1]["content"]] == [
        "thinking",
        "redacted_thinking",
        "text",
        "tool_use",
        "thinking",
        "tool_use",
    ]
    assert body["messages"][1]["content"][4] == LATER[0]


@pytest.mark.parametrize(
    "signature", [None, "CiQBcsjafBkRVsOq1b3Fy2Z9"], ids=["none", "another-providers"]
)
def test_a_tool_loop_without_thinking_to_send_back_is_continued_without_thinking(
    upstream: FakeUpstream, signature: str | None
) -> None:
    # The calls came from another provider, or from a turn without thinking: the API
    # refuses thinking on in that loop (the fake too), so this request goes without.
    history = loop(call("toolu_g", "get_weather", {"city": "Zürich"}, signature=signature))
    body = sent(upstream, ask("", *history), thinking=True)
    assert "thinking" not in body
    assert [block["type"] for block in body["messages"][1]["content"]] == ["text", "tool_use"]


def test_a_loops_later_rounds_keep_the_thinking_its_first_response_had(
    upstream: FakeUpstream,
) -> None:
    """Without interleaved thinking, only a loop's first response thinks: the third
    request of a two-round loop still asks for thinking and sends the first round's
    blocks back (a reviewer found both dropped: one setting per assistant turn)."""
    first = call("toolu_1", "get_weather", {"city": "Zürich"}, signature=OURS)
    second = call("toolu_2", "get_time", {})
    history = (
        *loop(first),
        Turn("assistant", "", tool_calls=(second,)),
        Turn("tool", "12:00", tool_call_id="toolu_2", tool_name="get_time"),
    )
    body = sent(upstream, ask("", *history), thinking=True)
    assert body["thinking"] == THINKING
    assert body["messages"][1]["content"][0] == THINKING_BLOCKS[0]
    assert [block["type"] for block in body["messages"][3]["content"]] == ["tool_use"]


@pytest.mark.parametrize("choice", ["required", NamedTool("get_weather")], ids=str)
def test_a_forced_call_inside_a_loop_that_thinks_keeps_the_thinking(
    upstream: FakeUpstream, choice: ToolChoice
) -> None:
    """One thinking setting per assistant turn: a reviewer found a continuation forced to
    call sent without thinking and without the loop's blocks. The API takes no forced
    call with thinking on (the fake neither), so the model chooses."""
    history = loop(call("toolu_z", "get_weather", {"city": "Zürich"}, signature=OURS))
    body = sent(upstream, ask("", *history, choice=choice), thinking=True)
    assert body["thinking"] == THINKING and "tool_choice" not in body
    assert body["messages"][1]["content"][0] == THINKING_BLOCKS[0]


@pytest.mark.parametrize("choice", ["required", NamedTool("get_weather")], ids=str)
def test_a_forced_call_inside_a_loop_without_thinking_stays_forced(
    upstream: FakeUpstream, choice: ToolChoice
) -> None:
    history = loop(call("toolu_g", "get_weather", {"city": "Zürich"}))
    body = sent(upstream, ask("", *history, choice=choice), thinking=True)
    assert "thinking" not in body and body["tool_choice"]["type"] in ("any", "tool")


def test_a_history_with_calls_and_no_tools_offered_declares_them_callable_by_none(
    upstream: FakeUpstream,
) -> None:
    history = loop(call("toolu_z", "get_weather", {"city": "Zürich"}))
    body = sent(upstream, ask("Thanks!", *history, tools=()))
    assert body["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "none"}


def test_thinking_off_sends_no_thinking_blocks(upstream: FakeUpstream) -> None:
    history = loop(call("toolu_z", "get_weather", {"city": "Zürich"}, signature=OURS))
    body = sent(upstream, ask("", *history))
    assert "thinking" not in body
    assert [block["type"] for block in body["messages"][1]["content"]] == ["text", "tool_use"]


def test_thinking_is_carried_from_one_request_to_the_next(upstream: FakeUpstream) -> None:
    # The fake's thinking ends with signature "fake-sig"; the call carries the block, and
    # the next request of the loop hands it back whole, which the fake checks.
    upstream.push(
        Script(
            thinking=["Plan: ", "ask the tool."],
            tokens=["Checking."],
            tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}}],
        )
    )
    events, error = CASE.events(upstream.url, ask("Weather in Oslo?"), thinking=True)
    assert error is None
    made = events[-2]
    assert isinstance(made, ToolCall) and made.args == {"city": "Oslo"}
    assert [e.text for e in events if isinstance(e, ThinkingDelta)] == ["Plan: ", "ask the tool."]
    block = {"type": "thinking", "thinking": "Plan: ask the tool.", "signature": "fake-sig"}
    assert decode_thinking(made.signature) == [block]

    history = (
        Turn("user", "Weather in Oslo?"),
        Turn("assistant", "Checking.", tool_calls=(made,)),
        Turn("tool", "-3 °C", tool_call_id=made.id, tool_name=made.name),
    )
    body = sent(upstream, ask("", *history), thinking=True)
    assert body["thinking"] == THINKING
    assert body["messages"][1]["content"][0] == block


def test_thinking_with_a_response_schema(upstream: FakeUpstream) -> None:
    body = sent(upstream, ask(tools=(), schema=SCHEMA), thinking=True)
    assert body["thinking"] == THINKING
    assert body["output_config"]["format"]["schema"] == SCHEMA


# -- d. the fake's own tool_call frames -------------------------------------------------------

WEATHER_CALL = {"name": "get_weather", "args": {"city": "Zürich", "note": "≈ 5 °C?"}}


@pytest.mark.parametrize("split_bytes", [None, 3], ids=["whole-frames", "3-byte-pieces"])
def test_the_fakes_calls_decoded(upstream: FakeUpstream, split_bytes: int | None) -> None:
    upstream.push(
        Script(
            tokens=["Let me ", "check."],
            tool_calls=[
                {**WEATHER_CALL, "id": "toolu_fixed"},
                {"name": "get_time"},
                {"name": "write_file", "arguments": '{"path": "a.md", "text": "cut'},
            ],
            arg_piece=4,
            split_bytes=split_bytes,
        )
    )
    events, error = CASE.events(upstream.url, ask())
    assert error is None
    *head, weather, clock, broken, finish = events
    assert head == texts("Let me ", "check.")
    assert weather == ToolCall("toolu_fixed", "get_weather", WEATHER_CALL["args"])
    assert isinstance(clock, ToolCall) and (clock.name, clock.args, clock.args_error) == (
        "get_time",
        {},
        None,
    )
    assert isinstance(broken, ToolCall) and broken.args is None
    assert broken.args_error == parse_arguments('{"path": "a.md", "text": "cut')[1]
    assert finish == end("tool_use", FAKE_MODEL, 12, 2)


def test_the_fakes_call_alone_with_made_up_ids(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=[], tool_calls=[WEATHER_CALL, WEATHER_CALL]))
    events, error = CASE.events(upstream.url, ask())
    assert error is None
    first, second, finish = events
    assert isinstance(first, ToolCall) and isinstance(second, ToolCall)
    for made in (first, second):
        assert re.fullmatch(r"toolu_01[A-Za-z0-9]{22}", made.id)
        assert (made.name, made.args, made.signature) == ("get_weather", WEATHER_CALL["args"], None)
    assert first.id != second.id
    assert finish == end("tool_use", FAKE_MODEL, 12, 0)


def test_the_fakes_tool_use_block_on_the_wire(upstream: FakeUpstream) -> None:
    upstream.push(
        Script(tokens=["Hi."], tool_calls=[{**WEATHER_CALL, "id": "toolu_w"}], arg_piece=10)
    )
    with httpx.stream(
        "POST", f"{upstream.url}/v1/messages", json=sent_body(), headers={"x-api-key": "k"}
    ) as response:
        raw = response.read().decode()
    events = [block.split("\ndata: ", 1) for block in raw.strip().split("\n\n")]
    tool_frames = [(name[len("event: ") :], data) for name, data in events if '"index":1' in data]
    arguments = json.dumps(WEATHER_CALL["args"], separators=(",", ":"))  # as the fake writes it
    pieces = [arguments[i : i + 10] for i in range(0, len(arguments), 10)]
    assert tool_frames == [
        (
            "content_block_start",
            '{"type":"content_block_start","index":1,"content_block":'
            '{"type":"tool_use","id":"toolu_w","name":"get_weather","input":{}}}',
        ),
        *(
            (
                "content_block_delta",
                '{"type":"content_block_delta","index":1,"delta":'
                f'{{"type":"input_json_delta","partial_json":{piece}}}}}',
            )
            for piece in ['""', *(json.dumps(piece, ensure_ascii=False) for piece in pieces)]
        ),
        ("content_block_stop", '{"type":"content_block_stop","index":1}'),
    ]
    assert '"stop_reason":"tool_use"' in raw


@pytest.mark.parametrize(
    "pieces",
    [[], [""], ['{"city": ', '"Paris"}'], ['{"city": "Pa']],
    ids=["given-alone", "given-and-an-empty-piece", "given-and-streamed", "streamed-cut-short"],
)
def test_arguments_given_at_the_start_and_streamed_are_read_once(
    upstream: FakeUpstream, pieces: list[str]
) -> None:
    """A gateway sends a call's arguments whole at its start and streams them too: joined,
    they were two objects, the arguments lost as not JSON (a reviewer's). Streamed ones
    win, as Anthropic's SDK reads them; given alone, or streamed cut short, those."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

    block = {"type": "tool_use", "id": "toolu_g", "name": "get_weather", "input": {"city": "Paris"}}
    raw = [
        event("message_start", {"type": "message_start", "message": {"model": "m", "usage": {}}}),
        event("content_block_start",
              {"type": "content_block_start", "index": 0, "content_block": block}),
        *(
            event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                          "delta": {"type": "input_json_delta", "partial_json": p}})
            for p in pieces
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"}}),
        event("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    upstream.push(Script(raw=raw))
    events, error = CASE.events(upstream.url)
    assert error is None
    [call] = [event for event in events if isinstance(event, ToolCall)]
    assert (call.args, call.args_error) == ({"city": "Paris"}, None)


def sent_body(**changes: Any) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        **changes,
    }


# -- e. what the fake refuses, as the real API does -------------------------------------------

TOOLS = [{"name": "get_weather", "input_schema": {"type": "object"}}]
ASSISTANT_CALL = {
    "role": "assistant",
    "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}],
}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
HI = {"role": "user", "content": "hi"}


def _format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"format": {"type": "json_schema", "schema": schema}}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"tool_choice": {"type": "any"}}, "tool_choice may only be specified while providing"),
        ({"tools": [{"name": "x"}]}, "input_schema"),
        ({"tools": TOOLS, "tool_choice": {"type": "tool", "name": "nope"}}, "no tool of that"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "any"}, "thinking": THINKING},
            "Thinking may not be enabled when tool_choice forces tool use.",
        ),
        ({"output_config": {"format": {"type": "json"}}}, "output_config.format"),
        (
            {
                "messages": [
                    HI,
                    ASSISTANT_CALL,
                    {"role": "user", "content": [{"type": "text", "text": "x"}, RESULT]},
                ]
            },
            "tool_result blocks must come first",
        ),
        ({"messages": [HI, ASSISTANT_CALL, HI]}, "tool_use ids were found without tool_result"),
        (
            {
                "messages": [
                    HI,
                    {"role": "assistant", "content": "x"},
                    {"role": "user", "content": [RESULT]},
                ]
            },
            "unexpected tool_use_id",
        ),
        (
            {
                "thinking": THINKING,
                "tools": TOOLS,
                "messages": [HI, ASSISTANT_CALL, {"role": "user", "content": [RESULT]}],
            },
            "must start with a thinking block",
        ),
        (
            {"messages": [HI, ASSISTANT_CALL, {"role": "user", "content": [RESULT]}]},
            "blocks must define tools",
        ),
        (
            {"output_config": _format({"type": "integer", "minimum": 0})},
            "property 'minimum' is not supported",
        ),
        (
            {"output_config": _format({"allOf": [{"$ref": "#/$defs/P"}], "$defs": {"P": {}}})},
            "allOf with $ref is not supported",
        ),
        (
            {"output_config": _format({"enum": [{"a": 1}]})},
            "enum values must be strings",
        ),
    ],
    ids=[
        "choice-without-tools",
        "tool-without-schema",
        "unknown-named-tool",
        "forced-with-thinking",
        "bad-output-config",
        "result-not-first",
        "call-without-result",
        "result-without-call",
        "loop-without-thinking",
        "calls-without-tools",
        "schema-bound",
        "schema-all-of-ref",
        "schema-object-enum",
    ],
)
def test_the_fake_refuses_what_the_api_refuses(
    upstream: FakeUpstream, changes: dict[str, Any], message: str
) -> None:
    response = httpx.post(
        f"{upstream.url}/v1/messages", json=sent_body(**changes), headers={"x-api-key": "k"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]


def test_the_fake_takes_a_well_formed_tool_loop(upstream: FakeUpstream) -> None:
    thinking_first = {
        "role": "assistant",
        "content": [*THINKING_BLOCKS, *ASSISTANT_CALL["content"]],
    }
    for messages, extra in [
        (
            [
                HI,
                ASSISTANT_CALL,
                {"role": "user", "content": [RESULT, {"type": "text", "text": "x"}]},
            ],
            {},
        ),
        ([HI, thinking_first, {"role": "user", "content": [RESULT]}], {"thinking": THINKING}),
    ]:
        body = sent_body(messages=messages, tools=TOOLS, tool_choice={"type": "auto"}, **extra)
        with httpx.stream(
            "POST", f"{upstream.url}/v1/messages", json=body, headers={"x-api-key": "k"}
        ) as response:
            assert response.status_code == 200
            response.read()


def test_a_response_schema_is_narrowed_to_what_anthropic_accepts(upstream: FakeUpstream) -> None:
    # Anthropic refuses numeric and length bounds (400 "For 'integer' type, property
    # 'minimum' is not supported") and objects left open: the bounds move into the
    # description, every object is closed; the reply is still checked against all of it.
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "minimum": 0, "description": "Years"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 2},
            "where": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "default": {"properties": 1},
            },
            "kind": {"enum": [{"type": "object"}]},
        },
        "required": ["age"],
    }
    upstream.push(Script(json={"age": 3}))
    body = sent(upstream, ask(tools=(), schema=schema))
    assert body["output_config"]["format"]["schema"] == {
        "type": "object",
        "properties": {
            "age": {"type": "integer", "description": "Years\n\n{minimum: 0}"},
            "tags": {
                "type": "array",
                "items": {"type": "string", "description": "{maxLength: 8}"},
                "description": "{minItems: 2}",
            },
            "where": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "default": {"properties": 1},
                "additionalProperties": False,
            },
            # An enum of objects: Anthropic holds strings, numbers, booleans and nulls.
            "kind": {"description": '{enum: [{"type": "object"}]}'},
        },
        "required": ["age"],
        "additionalProperties": False,
    }
    assert schema["properties"]["age"]["minimum"] == 0  # the request's own schema is untouched


def test_keywords_anthropic_does_not_hold_go_in_the_description_and_an_all_of_ref_is_any_of(
    upstream: FakeUpstream,
) -> None:
    """Its grammar holds a few keywords (its SDK keeps those and moves the rest): a
    reviewer's `contains`, `prefixItems` and `allOf: [{$ref}]` (pydantic's described
    nested model) were sent as they were, and Anthropic answered 400 every time."""
    schema = {
        "type": "object",
        "properties": {
            "p": {"allOf": [{"$ref": "#/$defs/P"}], "description": "a p"},
            "tags": {
                "type": "array",
                "items": {"type": "string"},
                "contains": {"const": "urgent"},
                "prefixItems": [{"type": "string"}],
            },
            "n": {"type": "integer", "not": {"const": 3}},
        },
        "required": ["p"],
        "$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}}},
    }
    upstream.push(Script(json={"p": {"x": 1}}))
    sent_schema = sent(upstream, ask(tools=(), schema=schema))["output_config"]["format"]["schema"]
    assert sent_schema["properties"] == {
        "p": {"anyOf": [{"$ref": "#/$defs/P"}], "description": "a p"},  # one branch: the same
        "tags": {  # `items` beside `prefixItems` is the items past them: it goes with them
            "type": "array",
            "description": '{items: {"type": "string"}, contains: {"const": "urgent"}, '
            'prefixItems: [{"type": "string"}]}',
        },
        "n": {"type": "integer", "description": '{not: {"const": 3}}'},
    }


USER = {"type": "object", "properties": {"name": {"type": "string"}}}


@pytest.mark.parametrize(
    "schema",
    [
        {  # OpenAPI's `components`, which goes into the description
            "type": "object",
            "properties": {"user": {"$ref": "#/components/schemas/User"}},
            "components": {"schemas": {"User": USER}},
        },
        {  # into a `prefixItems`, the same
            "type": "object",
            "properties": {
                "pair": {"type": "array", "prefixItems": [USER]},
                "user": {"$ref": "#/properties/pair/prefixItems/0"},
            },
        },
    ],
    ids=["components", "prefix-items"],
)
def test_a_ref_into_a_keyword_moved_to_the_description_leads_to_its_target_under_defs(
    upstream: FakeUpstream, schema: dict[str, Any]
) -> None:
    """Left as it was, it led nowhere in what was sent (a reviewer)."""
    upstream.push(Script(json={"user": {"name": "Ada"}}))
    sent_schema = sent(upstream, ask(tools=(), schema=schema))["output_config"]["format"]["schema"]
    assert sent_schema["properties"]["user"] == {"$ref": "#/$defs/moved0"}
    assert sent_schema["$defs"]["moved0"] == {**USER, "additionalProperties": False}


@pytest.mark.parametrize(
    ("tuple_", "answer"),
    [
        # Closed: sent alone, `items: false` applied to every item, and only [] was written.
        ({"prefixItems": [{"type": "string"}, {"type": "integer"}], "items": False}, ["a", 1]),
        # A label, then numbers: `items` alone made the label a number.
        ({"prefixItems": [{"type": "string"}], "items": {"type": "number"}}, ["row", 1, 2]),
        # Draft 7's tuple: a list of schemas, no 2020-12 schema (jsonschema raised on it).
        ({"items": [{"type": "string"}, {"type": "integer"}], "additionalItems": False}, ["a", 1]),
    ],
    ids=["closed", "with-a-rest", "draft-7"],
)
def test_a_tuples_items_go_in_the_description_with_it(
    upstream: FakeUpstream, tuple_: dict[str, Any], answer: list[Any]
) -> None:
    """A reviewer: every valid answer was refused by what was sent."""
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {"t": {"type": "array", **tuple_}, "first": {"$ref": ""}},
        "required": ["t"],
    }
    first = "prefixItems" if "prefixItems" in tuple_ else "items"
    schema["properties"]["first"]["$ref"] = f"#/properties/t/{first}/0"
    if first == "items":
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    upstream.push(Script(json={"t": answer}))
    sent_schema = sent(upstream, ask(tools=(), schema=schema))["output_config"]["format"]["schema"]
    sent_tuple = sent_schema["properties"]["t"]
    assert sent_tuple.keys() == {"type", "description"} and "items" in sent_tuple["description"]
    jsonschema.validate({"t": answer}, sent_schema)  # what the model is held to takes it
    # A pointer into the tuple leads to its target, sent under $defs.
    assert sent_schema["properties"]["first"] == {"$ref": "#/$defs/moved0"}
    assert sent_schema["$defs"]["moved0"] == {"type": "string"}


def test_a_percent_escaped_ref_leads_to_its_target_under_defs(upstream: FakeUpstream) -> None:
    """As typescript-json-schema writes a generic's name: a resolver that reads the
    pointer as written finds nothing (the fake answered 400, and the request failed)."""
    schema = {
        "type": "object",
        "properties": {"page": {"$ref": "#/$defs/Page%3CUser%3E"}},
        "$defs": {"Page<User>": {"type": "string"}},
    }
    upstream.push(Script(json={"page": "p"}))
    sent_schema = sent(upstream, ask(tools=(), schema=schema))["output_config"]["format"]["schema"]
    assert sent_schema["properties"]["page"] == {"$ref": "#/$defs/moved0"}
    assert sent_schema["$defs"]["moved0"] == {"type": "string"}


def test_an_all_of_of_several_branches_with_a_ref_is_not_sent() -> None:
    """Anthropic takes no $ref in an allOf; of several branches, nothing says the same."""
    schema = {
        "type": "object",
        "properties": {"p": {"allOf": [{"$ref": "#/$defs/S"}, {"minLength": 2}]}},
        "$defs": {"S": {"type": "string"}},
    }
    why = "a $ref in an allOf not of one branch alone (Anthropic takes none there)"
    assert unheld(schema) == why
    # One branch beside a oneOf: as an anyOf, the two would clash (the oneOf was lost).
    beside = {"allOf": [{"$ref": "#/$defs/S"}], "oneOf": [{"type": "string"}, {"type": "null"}]}
    assert unheld({**schema, "properties": {"p": beside}}) == why


def test_one_target_under_several_spellings_is_sent_once() -> None:
    """By spelling, a reviewer's one target under 199 %-escaped pointers was sent 199
    times (180 MB from 1 MB)."""
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/components/User"}, "b": {"$ref": "#/components/%55ser"}},
        "components": {"User": {"type": "string"}},
    }
    sent_schema = output_schema(schema)
    assert sent_schema["properties"]["a"] == sent_schema["properties"]["b"]
    assert len(sent_schema["$defs"]) == 1


def test_a_ref_into_an_all_of_sent_as_any_of_follows_it() -> None:
    """It led to `allOf/0`, which is sent as `anyOf/0` (a reviewer)."""
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/X/allOf/0"}},
        "$defs": {"X": {"allOf": [{"$ref": "#/$defs/Y"}]}, "Y": {"type": "string"}},
    }
    assert output_schema(schema)["properties"]["a"] == {"$ref": "#/$defs/X/anyOf/0"}


def _chain(leaf: dict[str, Any], levels: int) -> dict[str, Any]:
    """A schema whose properties refer to each level of a chain of nested objects under
    a moved keyword, `leaf` at its bottom."""
    node = leaf
    for _ in range(levels):
        node = {"type": "object", "properties": {"p": node}}
    schema: dict[str, Any] = {"type": "object", "properties": {}, "components": {"A": node}}
    path = "#/components/A"
    for level in range(levels):
        schema["properties"][f"r{level}"] = {"$ref": path}
        path += "/properties/p"
    return schema


def _deep_chain() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for number in range(75):
        node: dict[str, Any] = (
            {"$ref": f"#/components/D{number + 1}"} if number < 74 else {"type": "string"}
        )
        for _ in range(24):
            node = {"anyOf": [node]}
        schemas[f"D{number}"] = node
    return {
        "type": "object",
        "properties": {"r": {"$ref": "#/components/D0"}},
        "components": schemas,
    }


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        # A description kept at a chain's bottom, written once per level (103 MB from 1 MB).
        (_chain({"type": "string", "description": "d" * 200_000}, 40), "too large to narrow"),
        # Many small objects at the bottom (9 MB in 0.7 s from 0.3 MB).
        (_chain({"type": "object", "properties": {f"s{n}": {} for n in range(400)}}, 60),
         "too large to narrow"),
        # References followed one after another, past the interpreter's depth (it raised).
        (_deep_chain(), "nested too deep"),
        # Pointers below an inner $id read from it; narrowed, from the top.
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}},
          "$defs": {"A": {"$id": "https://example.com/a", "type": "object",
                          "properties": {"b": {"$ref": "#/$defs/B"}},
                          "$defs": {"B": {"type": "integer"}}}}}, "a $ref below an inner $id"),
        # Into an additionalProperties, which closing makes false.
        ({"type": "object", "properties": {
            "x": {"type": "object", "properties": {"a": {}}, "additionalProperties": {}},
            "y": {"$ref": "#/properties/x/additionalProperties"}}}, "into an additionalProperties"),
    ],
    ids=["kept-text-per-level", "objects-per-level", "deep-chain", "inner-id", "into-closed"],
)  # fmt: skip
def test_schemas_narrowing_would_break_or_blow_up_are_not_sent(
    schema: dict[str, Any], why: str
) -> None:
    """A reviewer's schemas, each accepted by the request's checks."""
    reason = unheld(schema)
    assert reason is not None and why in reason


def test_what_objects_require_in_place_is_read_within_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A target referred to many times was walked again for each reference (a reviewer's
    300 KB schema held a thread 18 s); a memo of each node's keys then held a copy per
    level (another's 450 KB schema: 1.7 GB). Each object's parts are read once, and the
    walk is bounded: past it, the schema is not sent."""
    keys = {f"a{n}": {"type": "string"} for n in range(10)}
    node: dict[str, Any] = {
        "type": "object",
        "properties": keys,
        "anyOf": [{"required": list(keys)} for _ in range(100)],
    }
    for _ in range(9):
        node = {"type": "object", "properties": keys, "anyOf": [node]}
    references = {f"r{n}": {"$ref": "#/$defs/%43hain"} for n in range(50)}  # hoisted
    schema = {"type": "object", "properties": references, "$defs": {"Chain": node}}
    steps: list[int] = []
    walk_step = anthropic_schema._Walk.step
    monkeypatch.setattr(
        anthropic_schema._Walk,
        "step",
        lambda walk, steps_taken=1: steps.append(steps_taken) or walk_step(walk, steps_taken),
    )
    assert unheld(schema) is None
    assert len(steps) < 5_000  # each object's parts once: ~2,100 (a walk per reference before)
    monkeypatch.setattr(anthropic_schema, "_MOST_STEPS", 100)
    assert unheld(schema) == "a schema too large to narrow for Anthropic (what is sent, or read)"


def test_names_an_object_reads_count_against_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dependentRequired's lists were read for nothing against the bound: a reviewer's
    1 MB schema took 60 s, twice per attempt."""
    monkeypatch.setattr(anthropic_schema, "_MOST_STEPS", 1_000)
    lists = {"dependentRequired": {f"k{n}": ["a"] for n in range(600)}}
    objects = {
        f"x{n}": {"type": "object", "properties": {"a": True}, "$ref": "#/$defs/D"}
        for n in range(3)
    }
    schema = {"type": "object", "properties": objects, "$defs": {"D": lists}}
    assert unheld(schema) == "a schema too large to narrow for Anthropic (what is sent, or read)"


def test_requirements_read_beside_a_union_count_against_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A union of requirement sets behind a `$ref` many properties use was read once per
    property, with no bound: 0.85 s for 15 KB (a reviewer's). The rest of the walk reads
    about 5,000 parts here; those 5,000 reads count now too."""
    monkeypatch.setattr(anthropic_schema, "_MOST_STEPS", 8_000)
    union = {"anyOf": [{"required": [f"k{n}"]} for n in range(100)]}
    properties = {f"p{n}": {"$ref": "#/$defs/U"} for n in range(50)}
    schema = {"type": "object", "properties": properties, "$defs": {"U": union}}
    assert unheld(schema) == "a schema too large to narrow for Anthropic (what is sent, or read)"


def test_a_response_schema_is_worked_out_before_the_io_loop_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its check and narrowing ran on the I/O loop, which runs every stream, twice per
    attempt: a reviewer's schema held them all for a minute. A chain prepares it on the
    request's thread, once per prompt."""
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    checked: list[object] = []
    plain = anthropic_schema_module.compiled_form
    monkeypatch.setattr(
        anthropic_module, "compiled_form", lambda schema: checked.append(schema) or plain(schema)
    )
    prompt = ask(tools=(), schema=schema)
    provider = CASE.provider_class(CASE.settings("http://127.0.0.1:9"), "")
    chain = Chain([provider], prompt, Timeouts(connect=1, first_chunk=1, idle=1), lambda item: None)
    chain.prepare()
    assert len(checked) == 1
    body = provider._body(prompt)  # as the loop asks, later
    assert provider.schema_left_out(prompt) is None and "output_config" in body
    assert len(checked) == 1


def test_a_schema_that_grows_past_what_is_sent_is_not_sent() -> None:
    """Targets nested in one another, each referred to: each hoisted whole wrote a large
    `examples` into a description once per level (a reviewer: 162 MB from 1 MB)."""
    node: dict[str, Any] = {"type": "string", "examples": ["y" * 200_000]}
    for _ in range(40):
        node = {"type": "object", "properties": {"a": node}}
    schema: dict[str, Any] = {"type": "object", "properties": {}, "components": {"A": node}}
    path = "#/components/A"
    for level in range(40):
        schema["properties"][f"r{level}"] = {"$ref": path}
        path += "/properties/a"
    assert unheld(schema) == "a schema too large to narrow for Anthropic (what is sent, or read)"


def test_definitions_used_many_times_are_sent_once() -> None:
    """Each target put in its references' place, a reviewer's 3 KB schema (definitions
    each used twice, under a moved keyword) grew to 32 MB and held a worker 27 s."""
    depth = 16  # 8 MB and seconds before
    definitions: dict[str, Any] = {
        f"d{level}": {
            "type": "object",
            "properties": {name: {"$ref": f"#/components/d{level + 1}"} for name in "ab"},
        }
        for level in range(depth)
    }
    definitions[f"d{depth}"] = {"type": "string"}
    schema = {"type": "object", "properties": {"x": {"$ref": "#/components/d0"}}}
    schema["components"] = definitions
    assert unheld(schema) is None
    sent_schema = output_schema(schema)
    assert len(sent_schema["$defs"]) == depth + 1
    assert len(json.dumps(sent_schema)) < 20 * len(json.dumps(schema))


def test_formats_and_patterns_anthropic_does_not_hold_go_in_the_description(
    upstream: FakeUpstream,
) -> None:
    """Its grammar holds a few string formats and no backreference, lookaround or word
    boundary in a pattern (its documentation; its SDK moves other formats the same way)."""
    schema = {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date-time"},
            "site": {"type": "string", "format": "uri-reference"},
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "pair": {"type": "string", "pattern": "^(a)\\1$"},
            "word": {"type": "string", "pattern": "\\bcat\\b"},
        },
    }
    upstream.push(Script(json={"zip": "12345"}))
    sent_schema = sent(upstream, ask(tools=(), schema=schema))["output_config"]["format"]["schema"]
    assert sent_schema["properties"] == {
        "when": {"type": "string", "format": "date-time"},
        "site": {"type": "string", "description": '{format: "uri-reference"}'},
        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
        "pair": {"type": "string", "description": '{pattern: "^(a)\\\\1$"}'},
        "word": {"type": "string", "description": '{pattern: "\\\\bcat\\\\b"}'},
    }


MAP = {"type": "object", "additionalProperties": {"type": "integer"}}
EXTRA = {"properties": {"extra": {"type": "string"}}, "required": ["extra"]}
CLOSED_A = {"type": "object", "properties": {"a": {"type": "integer"}}}
Z_DEFS = {"R": {"required": ["z"]}, "Z": EXTRA | {"type": "object"}}
CAT = {"type": "object", "properties": {"kind": {"const": "cat"}, "meow": {}}, "required": ["kind"]}
DOG = {"type": "object", "properties": {"kind": {"const": "dog"}, "bark": {}}, "required": ["kind"]}
OBJECTS_ALL_OF = {
    "allOf": [
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        {"properties": {"b": {"type": "integer"}}, "required": ["b"]},
    ]
}


UNION = {"$defs": {"U": {"anyOf": [CAT, DOG]}}}
BASE = {
    "$defs": {
        "Base": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        }
    }
}


@pytest.mark.parametrize(
    "schema, why",
    [
        (
            {"type": "object", "properties": {"counts": MAP}},
            "an object whose keys it does not name",
        ),
        ({"type": "object", "properties": {"any": {"type": "object"}}}, "an object whose keys"),
        ({"type": ["object", "null"], "patternProperties": {"^x": {}}}, "an object whose keys"),
        ({"type": "object", "properties": {}, "additionalProperties": True}, "an object whose"),
        # Named keys, and others given a schema: closed, the others were lost unseen.
        (
            {"properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}},
            "an object that takes keys beyond its properties",
        ),
        (
            {"type": "object", "properties": {"a": {}}, "patternProperties": {"^x-": {}}},
            "an object that takes keys beyond its properties",
        ),
        ({"type": "array", "items": OBJECTS_ALL_OF}, "allOf over objects"),
        (  # the usual way to extend a base: through a $ref
            {
                "$defs": {"Base": {"type": "object", "properties": {"id": {"type": "string"}}}},
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "allOf": [{"$ref": "#/$defs/Base"}],
            },
            "allOf over objects",
        ),
        # Anthropic's structured outputs support no recursive schema.
        (
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#"}},
                },
                "required": ["name"],
            },
            "a recursive schema",
        ),
        (  # through another definition
            {
                "$defs": {
                    "Node": {"type": "object", "properties": {"kids": {"$ref": "#/$defs/Kids"}}},
                    "Kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "type": "object",
                "properties": {"root": {"$ref": "#/$defs/Node"}},
            },
            "a recursive schema",
        ),
        (  # a tagged union: the shared keys beside the branches
            {
                "type": "object",
                "properties": {"kind": {"type": "string"}},
                "required": ["kind"],
                "oneOf": [
                    {"properties": {"kind": {"const": "a"}, "a": {"type": "string"}}},
                    {"properties": {"kind": {"const": "b"}, "b": {"type": "number"}}},
                ],
            },
            "oneOf over objects beside the object's own properties",
        ),
        (  # 2020-12 keywords beside a $ref: its object's keys and the node's own
            {
                "$defs": {"base": {"type": "object", "properties": {"id": {"type": "string"}}}},
                "type": "object",
                "$ref": "#/$defs/base",
                "properties": {"name": {"type": "string"}},
            },
            "a $ref to an object beside the object's own properties",
        ),
        (  # a branch that refers to a definition that only refers to another
            {
                "$defs": {
                    "A": {"$ref": "#/$defs/B"},
                    "B": {"type": "object", "properties": {"b": {"type": "string"}}},
                },
                "type": "object",
                "properties": {"kind": {"type": "string"}},
                "anyOf": [{"$ref": "#/$defs/A"}],
            },
            "anyOf over objects beside the object's own properties",
        ),
        (  # a $ref into a oneOf that is left out beside an anyOf: it would lead nowhere
            {
                "type": "object",
                "properties": {
                    "a": {"anyOf": [{"type": "string"}], "oneOf": [{"type": "integer"}]},
                    "b": {"$ref": "#/properties/a/oneOf/0"},
                },
            },
            "a $ref into a oneOf beside an anyOf",
        ),
        (  # a key `then` requires: closed, no answer whose kind is "b" could be written
            {
                "type": "object",
                "properties": {"kind": {"enum": ["a", "b"]}},
                "required": ["kind"],
                "if": {"properties": {"kind": {"const": "b"}}},
                "then": {"properties": {"extra": {"type": "string"}}, "required": ["extra"]},
            },
            "an object that requires or describes keys beyond its properties",
        ),
        (
            {"type": "object", "properties": {"card": {}}, "dependentRequired": {"card": ["b"]}},
            "an object that requires or describes keys beyond its properties",
        ),
        (  # draft 7's usual way to write several conditions (a reviewer: sent closed)
            {
                "type": "object",
                "properties": {"kind": {"enum": ["a", "b"]}},
                "allOf": [{"if": {"properties": {"kind": {"const": "b"}}}, "then": EXTRA}],
            },
            "an object that requires or describes keys beyond its properties",
        ),
        (  # a condition's part by reference
            {
                "type": "object",
                "properties": {"kind": {}},
                "if": {"properties": {"kind": {"const": "b"}}},
                "then": {"$ref": "#/$defs/Extra"},
                "$defs": {"Extra": EXTRA},
            },
            "an object that requires or describes keys beyond its properties",
        ),
        (  # beside a $ref: what the part itself requires (a reviewer: sent closed)
            {
                "type": "object",
                "properties": {"a": {}},
                "if": {"required": ["a"]},
                "then": {"$ref": "#/$defs/B", "required": ["zzz"]},
                "$defs": {"B": {}},
            },
            "an object that requires or describes keys beyond its properties",
        ),
        (  # a definition refining another
            {
                "type": "object",
                "properties": {"a": {}},
                "anyOf": [{"$ref": "#/$defs/Strict"}],
                "$defs": {
                    "Base": {"required": ["a"]},
                    "Strict": {"$ref": "#/$defs/Base", "required": ["z"]},
                },
            },
            "an object that requires or describes keys beyond its properties",
        ),
        # A node that is no object, around objects sent closed: what it requires is
        # theirs to hold (a reviewer: sent closed, no answer holding z passed).
        (
            {"$defs": {"A": CLOSED_A}, "$ref": "#/$defs/A", "required": ["z"]},
            "an object that requires or describes keys beyond its properties",
        ),
        (
            {"allOf": [CLOSED_A, {"required": ["z"]}]},
            "an object that requires or describes keys beyond its properties",
        ),
        (
            {"allOf": [CLOSED_A], "if": {"required": ["a"]}, "then": {"required": ["z"]}},
            "an object that requires or describes keys beyond its properties",
        ),
        (  # no answer could be written at all
            {
                "type": "object",
                "properties": {"a": {}},
                "anyOf": [{"required": ["b"]}, {"required": ["c"]}],
            },
            "an object that requires or describes keys beyond its properties",
        ),
        (  # keys beyond its properties given a schema, as additionalProperties gives one
            {
                "type": "object",
                "properties": {"a": {}},
                "unevaluatedProperties": {"type": "integer"},
            },
            "an object that requires or describes keys beyond its properties",
        ),
        (  # draft 4's `id`: pointers below it read from it
            {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "type": "object",
                "properties": {"a": {"$ref": "#/definitions/A"}},
                "definitions": {
                    "B": {"type": "string"},
                    "A": {
                        "id": "http://x.example/a",
                        "type": "object",
                        "properties": {"b": {"$ref": "#/definitions/B"}},
                        "definitions": {"B": {"type": "integer"}},
                    },
                },
            },
            "a $ref below an inner $id",
        ),
        (  # said open by unevaluatedProperties, beside properties {}: a map (sent as {})
            {
                "type": "object",
                "properties": {
                    "meta": {"type": "object", "properties": {}, "unevaluatedProperties": True}
                },
            },
            "an object whose keys it does not name",
        ),
        (  # a pointer by URI, the schema's own $id: said so (it was called an anchor)
            {
                "$id": "https://example.com/reply.json",
                "type": "object",
                "properties": {"a": {"$ref": "https://example.com/reply.json#/$defs/A"}},
                "$defs": {"A": {"type": "string"}},
            },
            "or by URI",
        ),
        (  # a reference by anchor, not a pointer
            {
                "$defs": {"N": {"$anchor": "node", "type": "object", "properties": {}}},
                "type": "object",
                "properties": {"n": {"$ref": "#node"}},
            },
            "by $anchor or $dynamicRef name",
        ),
        # Keys beyond a $ref's (or a union's) objects given a schema, with no "type" said
        # (2020-12's way to extend a referenced object): lost unseen (a reviewer's).
        (
            {"$ref": "#/$defs/Base", "unevaluatedProperties": {"type": "number"}, **BASE},
            "an object that takes keys beyond its properties",
        ),
        (
            {"$ref": "#/$defs/Base", "patternProperties": {"^s_": {"type": "number"}}, **BASE},
            "an object that takes keys beyond its properties",
        ),
        (
            {"anyOf": [{"$ref": "#/$defs/Base"}], "patternProperties": {"^s_": {}}, **BASE},
            "an object that takes keys beyond its properties",
        ),
        # The same through a union its $ref, its allOf or a union of unions leads to (one
        # level only was looked at: a reviewer's).
        *(
            ({"type": "object", "properties": {"v": node}, **UNION}, why)
            for node, why in [
                ({"$ref": "#/$defs/U", "required": ["q"]}, "requires or describes"),
                ({"anyOf": [{"$ref": "#/$defs/U"}], "required": ["q"]}, "requires or describes"),
                ({"allOf": [{"$ref": "#/$defs/U"}], "required": ["q"]}, "requires or describes"),
                ({"anyOf": [{"anyOf": [CAT, DOG]}], "required": ["q"]}, "requires or describes"),
                (
                    {"anyOf": [{"allOf": [{"$ref": "#/$defs/U"}]}], "required": ["q"]},
                    "requires or describes",
                ),
                ({"anyOf": [CAT], "allOf": [{"required": ["q"]}]}, "requires or describes"),
                (
                    {"anyOf": [CAT], "allOf": [{"allOf": [{"required": ["q"]}]}]},
                    "requires or describes",
                ),
                (
                    {"$ref": "#/$defs/U", "unevaluatedProperties": {}, "patternProperties": {}},
                    "takes keys beyond",
                ),
            ]
        ),
        (  # through draft 3's `type` and `disallow`, which may hold schemas
            {
                "$schema": "http://json-schema.org/draft-03/schema#",
                "type": "object",
                "properties": {"child": {"type": [{"$ref": "#"}, "null"]}},
            },
            "a recursive schema",
        ),
        (
            {
                "$schema": "http://json-schema.org/draft-03/schema#",
                "type": "object",
                "properties": {"child": {"disallow": [{"$ref": "#"}]}},
            },
            "a recursive schema",
        ),
        (  # a draft 7 `$defs` that is no map, where a moved definition would go (a crash)
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": {"p": {"$ref": "#/definitions/A%3CB%3E"}},
                "definitions": {"A<B>": {"type": "string"}},
                "$defs": ["note"],
            },
            "a $defs that is no map of schemas",
        ),
        # Requirements beside a $ref's object that no answer could meet once it is closed:
        # in a union's branches (2020-12's "name, and email or phone"), however deep, and
        # a key a condition or a dependent map requires beside a union none of whose
        # objects names it (reviewers': sent closed, every such answer refused).
        *(
            ({**BASE, "$ref": "#/$defs/Base", **beside}, "requires or describes")
            for beside in [
                {"anyOf": [{"required": ["email"]}, {"required": ["phone"]}]},
                {"oneOf": [{"required": ["z"]}, {"required": ["y"]}]},
                {"allOf": [{"anyOf": [{"required": ["z"]}]}]},
            ]
        ),
        *(
            ({"anyOf": [CAT, DOG], "$defs": {"R": {"required": ["z"]}}, **beside}, "requires or")
            for beside in [
                {"if": {"required": ["kind"]}, "then": {"required": ["z"]}},
                {"if": {"required": ["kind"]}, "then": {"$ref": "#/$defs/R"}},
                {"if": {"required": ["kind"]}, "then": {"anyOf": [{"$ref": "#/$defs/R"}]}},
                {"dependentSchemas": {"kind": {"$ref": "#/$defs/R"}}},
                {"$ref": "#/$defs/R"},
                {"if": {"required": ["kind"]}, "else": {"required": ["z"]}},
                {"dependentRequired": {"kind": ["z"]}},
                {"dependentSchemas": {"kind": {"required": ["z"]}}},
                # Objects there require as well: nothing under them is sent (a reviewer's).
                {"if": {"required": ["kind"]}, "then": {"type": "object", "required": ["z"]}},
                {"if": {"required": ["kind"]}, "else": EXTRA},
                {"if": {"required": ["kind"]}, "then": {"$ref": "#/$defs/Z"}, "$defs": Z_DEFS},
                {"dependentSchemas": {"kind": {"type": "object", "required": ["z"]}}},
            ]
        ),
        # A $ref's object beside an allOf's: closed, each refuses the other's keys.
        (
            {**BASE, "$ref": "#/$defs/Base", "allOf": [EXTRA]},
            "allOf over objects",
        ),
        # Keys it does not name, said of by propertyNames or minProperties: closed as {},
        # no answer held them (a reviewer's).
        (
            {"type": "object", "properties": {}, "propertyNames": {"pattern": "^[a-z]+$"}},
            "an object whose keys it does not name",
        ),
        (
            {"type": "object", "properties": {}, "minProperties": 1},
            "an object that requires more keys than it names",
        ),
        (
            {"type": "object", "properties": {"a": {}}, "minProperties": 2},
            "an object that requires more keys than it names",
        ),
        # A base's object beside variants' objects (2020-12's "base plus variants"):
        # closed, each refuses the other's keys (a reviewer's).
        (
            {
                **BASE,
                "$ref": "#/$defs/Base",
                "oneOf": [
                    {"type": "object", "properties": {"kind": {"const": "a"}, "x": {}}},
                    {"type": "object", "properties": {"kind": {"const": "b"}, "y": {}}},
                ],
            },
            "anyOf or oneOf over objects beside objects that all apply",
        ),
        # A key required beside alternatives that do not name it: closed, none holds it.
        (
            {
                "anyOf": [
                    {"type": "object", "properties": {"email": {"type": "string"}}},
                    {"type": "object", "properties": {"phone": {"type": "string"}}},
                ],
                "required": ["name"],
            },
            "an object that requires or describes keys beyond its properties",
        ),
    ],
)
def test_a_schema_closing_would_change_is_not_sent(
    upstream: FakeUpstream, schema: dict[str, Any], why: str
) -> None:
    # Closed, a map could only be {} (and {} would pass the final check: its data lost
    # unnoticed), and each object of an allOf would refuse the others' keys. So the schema
    # is not sent; the reply is still checked against it (test_tool_calls.py).
    upstream.push(Script(text="fine"))
    body = sent(upstream, ask(tools=(), schema=schema))
    assert "output_config" not in body
    left_out = CASE.provider_class(CASE.settings(upstream.url), "").schema_left_out(
        ask(tools=(), schema=schema)
    )
    assert left_out is not None and why in left_out and "not sent" in left_out


@pytest.mark.parametrize(
    "model, sent_schema",
    [
        ("claude-sonnet-4-20250514", False),  # 4: no structured outputs (a 400 each time)
        ("claude-opus-4-1-20250805", False),
        ("claude-3-5-haiku-latest", False),
        ("claude-haiku-4-5", True),
        ("claude-opus-4-7", True),
        ("claude-mythos-preview", True),  # no version said: sent
    ],
)
def test_a_claude_before_4_5_is_sent_no_response_schema(
    upstream: FakeUpstream, model: str, sent_schema: bool
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    upstream.push(Script(text="fine"))
    body = sent(upstream, ask(tools=(), schema=schema), model=model)
    assert ("output_config" in body) == sent_schema
    left_out = CASE.provider_class(CASE.settings(upstream.url, model=model), "").schema_left_out(
        ask(tools=(), schema=schema)
    )
    assert (left_out is None) == sent_schema
    assert sent_schema or "from Claude 4.5 on" in (left_out or "")


def _properties(count: int, schema: dict[str, Any]) -> dict[str, Any]:
    return {f"p{index}": schema for index in range(count)}


@pytest.mark.parametrize(
    "schema, why",
    [
        # Past Anthropic's compiler's limits (a 400, "Schema is too complex"): 24 optional
        # properties, 16 of more than one type, nested ones and $defs counted.
        ({"type": "object", "properties": _properties(25, {"type": "string"})}, "25 optional"),
        # A draft 7 schema's $defs are no keyword there: a `required` in them unchecked.
        (
            {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": _properties(25, {"$ref": "#/$defs/X"}),
                "$defs": {
                    "X": {"type": "object", "properties": {"a": {}}, "required": [["a"], {}]}
                },
            },
            "26 optional",
        ),
        (
            {
                "type": "object",
                "properties": {"a": {"$ref": "#/$defs/A"}},
                "required": ["a"],
                "$defs": {"A": {"type": "object", "properties": _properties(25, {})}},
            },
            "25 optional",
        ),
        (
            {
                "type": "object",
                "properties": _properties(17, {"type": ["string", "null"]}),
                "required": [f"p{index}" for index in range(17)],
            },
            "17 schemas below the top with an anyOf or a list of types",
        ),
        (
            {
                "type": "object",
                "properties": _properties(17, {"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                "required": [f"p{index}" for index in range(17)],
            },
            "17 schemas below the top with an anyOf or a list of types",
        ),
    ],
)
def test_a_schema_past_anthropics_limits_is_not_sent(
    upstream: FakeUpstream, schema: dict[str, Any], why: str
) -> None:
    upstream.push(Script(text="fine"))
    assert "output_config" not in sent(upstream, ask(tools=(), schema=schema))
    left_out = CASE.provider_class(CASE.settings(upstream.url), "").schema_left_out(
        ask(tools=(), schema=schema)
    )
    assert left_out is not None and why in left_out and "not sent" in left_out


def test_a_schema_at_anthropics_limits_is_sent(upstream: FakeUpstream) -> None:
    required = [f"p{index}" for index in range(16)]
    schema = {
        "type": "object",
        "properties": {
            **_properties(16, {"type": ["string", "null"]}),
            **{f"q{index}": {"type": "string"} for index in range(24)},
        },
        "required": required,
    }
    upstream.push(Script(text="fine"))
    assert "output_config" in sent(upstream, ask(tools=(), schema=schema))


@pytest.mark.parametrize(
    "schema",
    [
        # A property *named* additionalProperties, and allOf over non-objects, are no map.
        {
            "type": "object",
            "properties": {
                "additionalProperties": {"allOf": [{"type": "string"}, {"minLength": 1}]}
            },
        },
        # Closed, an object that names its keys keeps them all: only others are kept out.
        {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": True},
        # One object in an allOf refuses no other's keys.
        {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}}]},
        # A tagged union whose branches name the object's own keys: closing keeps them all.
        {
            "type": "object",
            "properties": {"kind": {"enum": ["a", "b"]}},
            "required": ["kind"],
            "oneOf": [
                {"properties": {"kind": {"const": "a"}}},
                {"properties": {"kind": {"const": "b"}}},
            ],
        },
        # Two references to one definition, neither inside it: no recursion.
        {
            "$defs": {"P": {"type": "object", "properties": {"a": {"type": "string"}}}},
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/P"}, "y": {"$ref": "#/$defs/P"}},
        },
        # Unions of unions, and a key only some alternatives name: each branch is an
        # alternative (a first version refused them for the other branches' keys).
        {
            "type": "object",
            "properties": {"pet": {"anyOf": [CAT, {"anyOf": [DOG, {"type": "null"}]}]}},
            "required": ["pet"],
        },
        {
            "$defs": {"Cat": CAT, "Dog": DOG},
            "anyOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
            "required": ["meow"],
        },
        # A key only the inner union's first object names: that alternative holds it.
        {"anyOf": [{"anyOf": [CAT, DOG]}, CLOSED_A], "required": ["meow"]},
        # An object of no keys (pydantic's model with no fields, in a union of actions): it
        # was refused as a map.
        {
            "anyOf": [
                {"type": "object", "properties": {"go": {"type": "string"}}, "required": ["go"]},
                {"type": "object", "properties": {}, "title": "Stop"},
            ]
        },
        # A recursion under an x- key inside a definition in use: data, as anywhere else
        # (it was read as applied, the schema refused as recursive: a reviewer's).
        {
            "$defs": {
                "Node": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-links": {"self": {"$ref": "#/$defs/Node"}},
                }
            },
            "type": "object",
            "properties": {"n": {"$ref": "#/$defs/Node"}},
        },
        # An unused recursive type among OpenAPI's components: data until referred to (it
        # refused every schema built from them).
        {
            "$ref": "#/components/schemas/Person",
            "components": {
                "schemas": {
                    "Person": {"type": "object", "properties": {"name": {"type": "string"}}},
                    "Comment": {
                        "type": "object",
                        "properties": {
                            "replies": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Comment"},
                            }
                        },
                    },
                }
            },
        },
        # Requirements beside a $ref's object that it names; a condition on a key an
        # alternative names.
        {**BASE, "$ref": "#/$defs/Base", "anyOf": [{"required": ["name"]}]},
        {"anyOf": [CAT, DOG], "if": {"required": ["kind"]}, "then": {"required": ["meow"]}},
        # Around objects sent closed, what it requires they all hold (a union's tag).
        {
            "$defs": {
                "Cat": {"type": "object", "properties": {"kind": {"const": "cat"}, "a": {}}},
                "Dog": {"type": "object", "properties": {"kind": {"const": "dog"}, "a": {}}},
            },
            "oneOf": [{"$ref": "#/$defs/Cat"}, {"$ref": "#/$defs/Dog"}],
            "required": ["kind"],
        },
        # A condition on its own keys: closing takes nothing from it.
        {
            "type": "object",
            "properties": {"kind": {"enum": ["a", "b"]}, "extra": {"type": "string"}},
            "if": {"properties": {"kind": {"const": "b"}}},
            "then": {"required": ["extra"]},
        },
        # The same with the condition's parts naming the object's keys (a reviewer: each
        # part was judged an object of its own, and refused).
        {
            "type": "object",
            "properties": {"country": {"type": "string"}, "state": {"type": "string"}},
            "if": {"properties": {"country": {"const": "US"}}, "required": ["country"]},
            "then": {"properties": {"state": {"minLength": 2}}, "required": ["state"]},
            "dependentSchemas": {"country": {"properties": {"country": {}}, "required": ["state"]}},
            "allOf": [{"if": {"required": ["country"]}, "then": {"required": ["state"]}}],
        },
        # A tuple goes in the description: its items' shapes are words, no map to refuse.
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": {
                "a": {"type": "array", "items": [{"type": "object", "additionalProperties": {}}]}
            },
        },
        # An `$id` in an extension's value is data, not a base (it was refused as one).
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "x-meta": {"$id": "m"}},
                "b": {"$ref": "#/$defs/B"},
            },
            "$defs": {"B": {"type": "string"}},
        },
        # A "$ref" in a value is data; a recursive definition nothing uses is never applied.
        {
            "type": "object",
            "properties": {
                "a": {"type": "string", "default": {"$ref": "#"}},
                "b": {"enum": [{"$ref": "#"}], "examples": [{"$ref": "#"}]},
            },
            "$defs": {"tree": {"type": "array", "items": {"$ref": "#/$defs/tree"}}},
        },
    ],
)
def test_a_schema_closing_keeps_whole_is_sent(
    upstream: FakeUpstream, schema: dict[str, Any]
) -> None:
    upstream.push(Script(json={"a": "x"}))
    body = sent(upstream, ask(tools=(), schema=schema))
    assert body["output_config"]["format"]["schema"] == output_schema(schema)


def test_one_of_goes_as_any_of(upstream: FakeUpstream) -> None:
    # The grammar holds anyOf, not oneOf (Anthropic's SDK sends it so); the reply is
    # still checked against the frontend's oneOf.
    shape = {"oneOf": [{"type": "string"}, {"type": "integer"}], "description": "r or w"}
    schema = {"type": "object", "properties": {"shape": shape}, "required": ["shape"]}
    upstream.push(Script(json={"shape": 2}))
    sent_schema = sent(upstream, ask(tools=(), schema=schema))["output_config"]["format"]["schema"]
    assert sent_schema["properties"]["shape"] == {
        "anyOf": [{"type": "string"}, {"type": "integer"}],
        "description": "r or w",
    }
    assert "oneOf" in schema["properties"]["shape"]  # the request's own schema is untouched


def test_one_of_beside_any_of_is_left_out(upstream: FakeUpstream) -> None:
    value = {"anyOf": [{"type": "string"}, {"type": "integer"}], "oneOf": [{"type": "integer"}]}
    schema = {"type": "object", "properties": {"v": value}, "required": ["v"]}
    upstream.push(Script(json={"v": 1}))
    sent_schema = sent(upstream, ask(tools=(), schema=schema))["output_config"]["format"]["schema"]
    assert sent_schema["properties"]["v"] == {"anyOf": [{"type": "string"}, {"type": "integer"}]}


def test_a_ref_into_a_one_of_follows_it_to_any_of(upstream: FakeUpstream) -> None:
    # Renamed, the oneOf's branches are the anyOf's, in order: a pointer through it says so
    # (one that said oneOf would lead nowhere in what is sent). A property named oneOf is
    # a name, not the keyword: it stays.
    schema = {
        "type": "object",
        "properties": {
            "a": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
            "b": {"$ref": "#/properties/a/oneOf/1"},
            "oneOf": {"type": "string"},
            "c": {"$ref": "#/properties/oneOf"},
        },
        "required": ["a", "b", "oneOf", "c"],
    }
    upstream.push(Script(json={"a": "x", "b": 1, "oneOf": "y", "c": "z"}))
    sent_schema = sent(upstream, ask(tools=(), schema=schema))["output_config"]["format"]["schema"]
    assert sent_schema["properties"]["b"] == {"$ref": "#/properties/a/anyOf/1"}
    assert sent_schema["properties"]["c"] == {"$ref": "#/properties/oneOf"}
    assert unheld(schema) is None
