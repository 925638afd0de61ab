"""Ollama's own side of tools and structured output (README "Tools and structured
output"), over real HTTP
against devtools.fake_upstream.

What all four providers share (calls through the chain into metadata, the saved
message, structured output checked at the end) is tested elsewhere; here, what is
Ollama's:
- recorded streams (tests/fixtures/ollama/tool_*.ndjson, written by hand in the
  `/api/chat` format of Ollama v0.12.10 and later: each call whole, with an `id` and
  `function.index`) replayed cut at awkward places and one byte per read: a call
  alone, text then a call, parallel calls in one line and across lines, a call in
  the `done: true` line after thinking, and arguments sent as JSON text (valid and
  malformed) as some compatible servers do;
- the same streams as older servers write them (no `id`, no `index`): ids are made,
  unique per reply and across replies;
- `arguments` absent, empty, or not an object, and a call without `function`;
- the request: `tools`, no tool choice field (required and named go as auto, none
  sends no tools), tool turns in history, `format`, and `format` dropped beside tools;
- the fake's own tool-call lines, whole and in 3-byte pieces, read by the provider.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from typing import Any

import httpx
import pytest

from assistant.config import ProviderSettings
from assistant.providers.base import Event, Prompt, StreamEnd, TextDelta, ThinkingDelta, Usage
from assistant.providers.ollama import OllamaProvider
from assistant.request import Turn
from assistant.tools import NO_ARGUMENTS, NamedTool, ToolCall, ToolChoice, ToolSpec, parse_arguments
from devtools.fake_upstream import FakeUpstream, Script

from .provider_cases import OLLAMA as CASE
from .provider_cases import Replay, end, texts, thoughts
from .provider_support import awkward_ndjson_chunks, one_byte_reads, stream_events
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

settings_for = CASE.settings
# Everything an OllamaProvider (no key) yielded, and the ProviderError it ended with (if any).
run_provider = functools.partial(stream_events, OllamaProvider, key="")

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city now",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("get_time", "The time now", NO_ARGUMENTS)
ASK = Prompt(system="Be brief.", turns=(Turn("user", "Weather in Paris?"),), tools=(WEATHER, CLOCK))
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
OUR_ID = re.compile(r"call_[0-9a-f]{8}_[0-9]+")  # what we make when Ollama gives no id
OLLAMA_ID = re.compile(r"call_[a-z0-9]{8}")  # what Ollama (and the fake) make


def call(call_id: str, name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(call_id, name, args)


def bad_call(call_id: str, name: str, text: str) -> ToolCall:
    args, error = parse_arguments(text)
    assert args is None and error is not None
    return ToolCall(call_id, name, None, args_error=error)


# What each recorded stream comes to. Ollama says "stop" after calls: the stop reason
# is tool_use.
TOOL_REPLAYS = {
    "tool_call.ndjson": Replay(
        [
            call("call_k3v9x2qa", "get_weather", {"city": "Zürich", "unit": "celsius"}),
            end("tool_use", "llama3.2", 187, 24),
        ]
    ),
    "tool_text_then_call.ndjson": Replay(
        [
            *texts("Let me check ", "the weather in São Paulo."),
            call("call_0f7hw1mz", "get_weather", {"city": "São Paulo"}),
            end("tool_use", "llama3.2", 191, 38),
        ]
    ),
    # Two calls in one line, a third in the next.
    "tool_parallel.ndjson": Replay(
        [
            call("call_a1b2c3d4", "get_temperature", {"city": "New York"}),
            call("call_e5f6g7h8", "get_conditions", {"city": "New York"}),
            call(
                "call_i9j0k1l2",
                "get_temperature",
                {"city": "London", "detail": {"hourly": True, "hours": [9, 12]}},
            ),
            end("tool_use", "qwen2.5:7b", 244, 71),
        ]
    ),
    # A model whose parser flushes at the end: the call is in the `done: true` line.
    "tool_thinking_call_at_done.ndjson": Replay(
        [
            *thoughts(
                "The user wants the time in Tokyo.", " I should call get_time → zone Asia/Tokyo."
            ),
            call("call_t0ky0q7z", "get_time", {"zone": "Asia/Tokyo"}),
            end("tool_use", "qwen3:8b", 166, 52),
        ]
    ),
    # Arguments as JSON text (a compatible server): parsed; cut short, kept with an error.
    "tool_malformed.ndjson": Replay(
        [
            *texts("Checking both."),
            call("call_s7r1ng0k", "get_weather", {"city": "Paris"}),
            bad_call("call_br0k3n4x", "get_weather", '{"city": "Ber'),
            end("tool_use", "mistral-nemo", 203, 41),
        ]
    ),
}


def replayed(upstream: FakeUpstream, chunks: list[bytes], interval: float = 0.01) -> list[Event]:
    upstream.push(Script(raw=chunks, interval=interval))
    events, error = run_provider(settings_for(upstream.url), ASK)
    assert error is None
    return events


def without_ids(events: list[Event]) -> list[Event]:
    return [dataclasses.replace(e, id="") if isinstance(e, ToolCall) else e for e in events]


def ids(events: list[Event]) -> list[str]:
    return [e.id for e in events if isinstance(e, ToolCall)]


# -- a. recorded streams ------------------------------------------------------------------


def test_every_tool_fixture_has_an_expectation() -> None:
    names = sorted(path.name for path in CASE.fixtures.glob("tool_*"))
    assert names == sorted(TOOL_REPLAYS)
    for name in names:
        data = CASE.fixture(name)
        assert b"\r" not in data and data.endswith(b"\n"), name


@pytest.mark.parametrize("name", sorted(TOOL_REPLAYS))
def test_tool_fixture_replay_cut_at_awkward_places(upstream: FakeUpstream, name: str) -> None:
    data = CASE.fixture(name)
    chunks = awkward_ndjson_chunks(data)
    assert b"".join(chunks) == data and len(chunks) >= 4
    assert replayed(upstream, chunks) == TOOL_REPLAYS[name].events


@pytest.mark.parametrize("name", sorted(TOOL_REPLAYS))
def test_tool_fixture_replay_one_byte_per_read(upstream: FakeUpstream, name: str) -> None:
    events = replayed(upstream, one_byte_reads(CASE.fixture(name)), interval=0)
    assert events == TOOL_REPLAYS[name].events


@pytest.mark.parametrize("name", sorted(TOOL_REPLAYS))
def test_older_servers_give_no_id_and_we_make_one(upstream: FakeUpstream, name: str) -> None:
    # Before v0.12.10 a call is only {"function": {"name", "arguments"}} (no id, no index).
    data = re.sub(rb'"id":"call_[a-z0-9]+",', b"", CASE.fixture(name))
    data = re.sub(rb'"index":[0-9]+,', b"", data)
    assert b'"id"' not in data and b'"index"' not in data

    first = replayed(upstream, awkward_ndjson_chunks(data))
    second = replayed(upstream, [data])

    assert without_ids(first) == without_ids(second) == without_ids(TOOL_REPLAYS[name].events)
    made = ids(first) + ids(second)
    assert made and all(OUR_ID.fullmatch(made_id) for made_id in made)
    assert len(set(made)) == len(made)  # unique in a reply, and across the two replies


# -- b. calls as any server might write them ----------------------------------------------


def line(message: dict[str, Any], **fields: Any) -> bytes:
    body = {"model": "llama3.2", "message": {"role": "assistant", "content": "", **message}}
    return (json.dumps({**body, "done": False, **fields}) + "\n").encode()


DONE = line({}, done=True, done_reason="stop", prompt_eval_count=5, eval_count=3)


@pytest.mark.parametrize(
    "arguments, args, error",
    [
        pytest.param(None, {}, None, id="absent"),
        pytest.param("", {}, None, id="empty-text"),
        pytest.param({}, {}, None, id="empty-object"),
        pytest.param('{"a": [1, "é"]}', {"a": [1, "é"]}, None, id="text"),
        pytest.param(["x"], None, "arguments are a JSON array, not an object", id="list"),
        pytest.param("[1]", None, "arguments are a JSON array, not an object", id="text-list"),
        pytest.param(7, None, "arguments are a JSON number, not an object", id="number"),
    ],
)
def test_arguments_in_any_form(
    upstream: FakeUpstream, arguments: Any, args: dict[str, Any] | None, error: str | None
) -> None:
    function = {"name": "get_time"} | ({} if arguments is None else {"arguments": arguments})
    events = replayed(upstream, [line({"tool_calls": [{"function": function}]}), DONE])
    (made,) = ids(events)
    assert events == [
        ToolCall(made, "get_time", args, args_error=error),
        end("tool_use", "llama3.2", 5, 3),
    ]


@pytest.mark.parametrize(
    "entry", [{"name": "get_time", "arguments": {}}, {"function": "get_time"}, "get_time"]
)
def test_a_call_without_a_function_object_is_a_protocol_error(
    upstream: FakeUpstream, entry: Any
) -> None:
    upstream.push(Script(raw=[line({"content": "Hi"}), line({"tool_calls": [entry]}), DONE]))
    events, error = run_provider(settings_for(upstream.url), ASK)
    assert events == [TextDelta("Hi")]
    assert error is not None and error.code == "upstream_protocol"


def test_text_and_a_call_in_one_line_keep_their_order(upstream: FakeUpstream) -> None:
    calls = [{"id": "call_x", "function": {"name": "get_time", "arguments": {}}}]
    events = replayed(
        upstream, [line({"thinking": "hm", "content": "Now:", "tool_calls": calls}), DONE]
    )
    assert events == [
        ThinkingDelta("hm"),
        TextDelta("Now:"),
        call("call_x", "get_time", {}),
        end("tool_use", "llama3.2", 5, 3),
    ]


def test_a_reply_cut_by_length_after_a_call_says_max_tokens(upstream: FakeUpstream) -> None:
    calls = [{"id": "call_x", "function": {"name": "get_time", "arguments": {}}}]
    cut = line({}, done=True, done_reason="length", eval_count=9)
    events = replayed(upstream, [line({"tool_calls": calls}), cut])
    assert events[-1] == StreamEnd("max_tokens", Usage(None, 9), "llama3.2")


def test_no_calls_no_tool_use(upstream: FakeUpstream) -> None:
    events = replayed(upstream, [line({"content": "Hi", "tool_calls": []}), DONE])
    assert events == [TextDelta("Hi"), end("end_turn", "llama3.2", 5, 3)]


# -- c. the request -----------------------------------------------------------------------


def sent(
    upstream: FakeUpstream, prompt: Prompt, settings: ProviderSettings | None = None
) -> dict[str, Any]:
    """The body the provider sent for `prompt` (the fake answers its default text)."""
    events, error = run_provider(settings or settings_for(upstream.url), prompt)
    assert error is None and isinstance(events[-1], StreamEnd)
    body = upstream.requests[-1].body
    assert body is not None
    return body


DECLARED = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time now",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]


@pytest.mark.parametrize(
    "choice", ["auto", "required", NamedTool("get_time")], ids=["auto", "required", "named"]
)
def test_tools_are_offered_and_no_choice_field_is_sent(
    upstream: FakeUpstream, choice: ToolChoice
) -> None:
    # Ollama has no tool choice: "required" and a named tool are offered as "auto".
    body = sent(upstream, dataclasses.replace(ASK, tool_choice=choice))
    assert body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        "stream": True,
        "options": {"num_predict": 1024},
        "think": False,
        "tools": DECLARED,
    }


def test_tool_choice_none_offers_no_tools(upstream: FakeUpstream) -> None:
    body = sent(upstream, dataclasses.replace(ASK, tool_choice="none"))
    assert "tools" not in body and "tool_choice" not in body
    assert body["messages"][-1] == {"role": "user", "content": "Weather in Paris?"}


def test_no_tools_no_tools_field(upstream: FakeUpstream) -> None:
    body = sent(upstream, dataclasses.replace(ASK, tools=()))
    assert "tools" not in body and "format" not in body


HISTORY = (
    Turn("user", "Weather in Paris and the time?"),
    Turn(
        "assistant",
        "Checking both.",
        tool_calls=(
            ToolCall("call_p4r1s000", "get_weather", {"city": "Paris"}),
            ToolCall("call_c10ck000", "get_time", {}),
        ),
    ),
    Turn("tool", "18°C, cloudy", tool_call_id="call_p4r1s000", tool_name="get_weather"),
    Turn("tool", '{"time": "14:05"}', tool_call_id="call_c10ck000", tool_name="get_time"),
    Turn("user", "And tomorrow?"),
    # A call with no text before it, whose arguments were not an object, and its result
    # as the last turn.
    Turn(
        "assistant",
        "",
        tool_calls=(ToolCall("call_x", "get_weather", None, args_error="not JSON"),),
    ),
    Turn("tool", "unknown city", tool_call_id="call_x", tool_name="get_weather"),
)


def test_tool_turns_in_history(upstream: FakeUpstream) -> None:
    body = sent(upstream, dataclasses.replace(ASK, turns=HISTORY))
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and the time?"},
        {
            "role": "assistant",
            "content": "Checking both.",
            "tool_calls": [
                {
                    "id": "call_p4r1s000",
                    "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}},
                },
                {
                    "id": "call_c10ck000",
                    "function": {"index": 1, "name": "get_time", "arguments": {}},
                },
            ],
        },
        # Two results in a row: a tool message each; the user's text after them, its own.
        {
            "role": "tool",
            "content": "18°C, cloudy",
            "tool_name": "get_weather",
            "tool_call_id": "call_p4r1s000",
        },
        {
            "role": "tool",
            "content": '{"time": "14:05"}',
            "tool_name": "get_time",
            "tool_call_id": "call_c10ck000",
        },
        {"role": "user", "content": "And tomorrow?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "call_x", "function": {"index": 0, "name": "get_weather", "arguments": {}}}
            ],
        },
        {
            "role": "tool",
            "content": "unknown city",
            "tool_name": "get_weather",
            "tool_call_id": "call_x",
        },
    ]


def test_a_response_schema_is_the_format(upstream: FakeUpstream) -> None:
    upstream.push(Script(json={"answer": "Paris"}, arg_piece=4))
    prompt = dataclasses.replace(ASK, tools=(), response_schema=SCHEMA)
    events, error = run_provider(settings_for(upstream.url), prompt)
    assert error is None
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == '{"answer":"Paris"}'
    body = upstream.requests[-1].body
    assert body is not None and body["format"] == SCHEMA and "tools" not in body


@pytest.mark.parametrize("thinking", [False, True])
def test_thinking_off_is_not_said_beside_a_schema(upstream: FakeUpstream, thinking: bool) -> None:
    """Ollama (up to 0.20) applies a thinking model's format after its thinking: told
    `think: false`, the schema was ignored and the reply free text (ollama#14645)."""
    prompt = dataclasses.replace(ASK, tools=(), response_schema=SCHEMA)
    body = sent(upstream, prompt, CASE.settings(upstream.url, thinking=thinking))
    assert body["format"] == SCHEMA and body.get("think") == (True if thinking else None)


@pytest.mark.parametrize("choice", ["auto", "required", NamedTool("get_weather"), "none"])
def test_a_response_schema_beside_tools_is_not_sent(
    upstream: FakeUpstream, choice: ToolChoice
) -> None:
    # `format` would hold every token to the schema, so no call could be written: the
    # tools go, the schema does not (the chain says so in structured_output_error). With
    # "none" no tool goes, so the schema does.
    assert OllamaProvider.schema_with_tools is False
    prompt = dataclasses.replace(ASK, response_schema=SCHEMA, tool_choice=choice)
    body = sent(upstream, prompt)
    assert body.get("format") == (SCHEMA if choice == "none" else None)
    assert body.get("tools") == (None if choice == "none" else DECLARED)
    assert OllamaProvider(CASE.settings(upstream.url), "").sends_schema(prompt) == (
        choice == "none"
    )


# -- d. the fake's own tool-call lines ----------------------------------------------------


@pytest.mark.parametrize("split_bytes", [None, 3], ids=["whole", "3-byte-pieces"])
def test_the_fakes_tool_calls_read_back(upstream: FakeUpstream, split_bytes: int | None) -> None:
    upstream.push(
        Script(
            tokens=["Sure, ", "checking ", "Zürich."],
            tool_calls=[
                {"name": "get_weather", "args": {"city": "Zürich", "days": [1, 2]}},
                {"name": "get_time", "id": "call_given01"},
                {"name": "get_weather", "arguments": '{"city": "Zür'},  # not JSON: sent as text
            ],
            split_bytes=split_bytes,
        )
    )
    events, error = run_provider(settings_for(upstream.url), ASK)
    assert error is None

    made, given, raw = ids(events)
    assert OLLAMA_ID.fullmatch(made) and given == "call_given01" and OLLAMA_ID.fullmatch(raw)
    assert events == [
        *texts("Sure, ", "checking ", "Zürich."),
        call(made, "get_weather", {"city": "Zürich", "days": [1, 2]}),
        call("call_given01", "get_time", {}),
        bad_call(raw, "get_weather", '{"city": "Zür'),
        StreamEnd("tool_use", Usage(12, 3), "fake-claude"),
    ]


def test_the_fakes_call_lines_are_ollamas(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=[], tool_calls=[{"name": "get_time", "args": {"zone": "UTC"}}]))
    request = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(f"{upstream.url}/api/chat", json=request, timeout=5)
    assert response.headers["content-type"] == "application/x-ndjson"

    first, last = (json.loads(text) for text in response.content.split(b"\n") if text)
    (entry,) = first["message"]["tool_calls"]
    assert OLLAMA_ID.fullmatch(entry.pop("id"))
    assert entry == {"function": {"index": 0, "name": "get_time", "arguments": {"zone": "UTC"}}}
    assert (first["message"]["content"], first["done"]) == ("", False)
    assert (last["done"], last["done_reason"]) == (True, "stop")  # "stop" after calls too
