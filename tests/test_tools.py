"""Tools and structured output as the endpoint takes and reports them (README "Tools and
structured output").

What is the same for every provider: the request fields are checked before
anything is written or called, tool turns in chat_history are read, and the
reply's JSON is checked against the response schema at the end. How each
provider sends and streams them is tested in test_tool_calls.py (all four)
and test_<provider>_tools.py (each one's wire form).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import httpx
import pytest

from assistant import record, schemas
from assistant.chain import ChainReport
from assistant.config import Timeouts
from assistant.errors import RequestError
from assistant.providers import anthropic_schema, openai
from assistant.providers.base import Message, Prompt, ToolResult, conversation
from assistant.request import Turn, build_request
from assistant.tools import NamedTool, ToolCall, ToolSpec, parse_arguments, structured_output
from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .conftest import ask, sse_events
from .provider_cases import ANTHROPIC, OPENAI, ProviderCase
from .provider_support import run_chain
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

WEATHER = {
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
TOOLS = {"tools": ["weather"], "toolConfigs": {"weather": WEATHER}}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["answer", "confidence"],
}


def _request(**config: Any) -> Any:
    body = {"user_input": "hi", "emissaryConfig": config}
    return build_request("a", body, max_input_chars=1000, max_history_messages=100)


def _history(*items: dict[str, Any]) -> tuple[Turn, ...]:
    body = {"user_input": "hi", "chat_history": list(items)}
    return build_request("a", body, max_input_chars=1000, max_history_messages=100).chat_history


# -- declarations, tool choice, response schema ---------------------------------------------


def test_declared_tools_are_offered_in_order_and_undeclared_names_are_not() -> None:
    other = {"description": "", "parameters": {"type": "object"}}
    request = _request(
        tools=["weather", "search", "clock", "weather"],
        toolConfigs={"clock": other, "weather": WEATHER, "unused": other},
    )
    assert [tool.name for tool in request.tools] == ["weather", "clock"]
    assert request.tools[0].parameters == WEATHER["parameters"]
    assert request.tools[0].description == "The weather in a city"
    assert request.tool_choice == "auto"


@pytest.mark.parametrize(
    "entry",
    [{"datastore_id": "abc"}, {}, None, {"description": None, "parameters": None, "x": 1}],
)
def test_an_entry_that_declares_no_function_is_not_offered(entry: Any) -> None:
    """A VAC frontend's toolConfigs may hold a tool's own settings, not a declaration."""
    request = _request(tools=["vs", "weather"], toolConfigs={"vs": entry, "weather": WEATHER})
    assert [tool.name for tool in request.tools] == ["weather"]


def test_a_declaration_without_parameters_takes_no_arguments() -> None:
    request = _request(tools=["now"], toolConfigs={"now": {"description": "the time"}})
    assert request.tools[0].parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, "auto"),
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ({"name": "weather"}, NamedTool("weather")),
    ],
)
def test_tool_choice(choice: Any, expected: Any) -> None:
    assert _request(**TOOLS, toolChoice=choice).tool_choice == expected


def test_a_response_schema_is_kept() -> None:
    assert _request(responseSchema=ANSWER_SCHEMA).response_schema == ANSWER_SCHEMA


BAD_CONFIGS = [
    (
        {"tools": ["w"], "toolConfigs": {"w": {"parameters": {"type": "objekt"}}}},
        "emissaryConfig.toolConfigs.w.parameters is not a valid JSON Schema",
    ),
    (
        {"tools": ["w"], "toolConfigs": {"w": {"parameters": {"type": "string"}}}},
        'emissaryConfig.toolConfigs.w.parameters must describe an object ("type": "object")',
    ),
    (
        {"toolConfigs": {"w": {"parameters": {"properties": {"a": {"minLength": "x"}}}}}},
        "emissaryConfig.toolConfigs.w.parameters is not a valid JSON Schema",
    ),
    ({"toolConfigs": {"w": {"parameters": []}}}, "toolConfigs.w.parameters must be a JSON Schema"),
    ({"toolConfigs": {"w": "a tool"}}, "emissaryConfig.toolConfigs.w must be an object"),
    ({"toolConfigs": {"w": {"description": 3}}}, "toolConfigs.w.description must be a string"),
    ({"toolConfigs": {"has space": {"description": ""}}}, "a tool name must be 1-64 characters"),
    ({"toolConfigs": {"x" * 65: {"description": ""}}}, "a tool name must be 1-64 characters"),
    # Gemini refuses a function name that starts with a digit or "-"; the others take it.
    ({"toolConfigs": {"2fa_check": {"description": ""}}}, "the first a letter or _"),
    ({"toolConfigs": {"-x": {"description": ""}}}, "'-x': a tool name must be 1-64 characters"),
    ({"toolConfigs": []}, "emissaryConfig.toolConfigs must be an object"),
    ({**TOOLS, "toolChoice": {"name": "search"}}, "'search', which is not an offered tool"),
    ({"toolChoice": {"name": "weather"}}, "'weather', which is not an offered tool"),
    ({"toolChoice": "required"}, '"required" but no tool is declared'),
    ({**TOOLS, "toolChoice": "always"}, 'toolChoice must be "auto", "none", "required"'),
    ({**TOOLS, "toolChoice": {"tool": "weather"}}, "toolChoice must be"),
    ({"responseSchema": "json"}, "emissaryConfig.responseSchema must be a JSON Schema object"),
    (
        {"responseSchema": {"type": "object", "required": "answer"}},
        "emissaryConfig.responseSchema is not a valid JSON Schema",
    ),
    # A schema's references stay inside it: never fetched, never looping (assistant/schemas.py).
    (
        {"responseSchema": {"$ref": "http://127.0.0.1:9/schema.json"}},
        "emissaryConfig.responseSchema: $ref must point inside the schema (start with #), "
        "not 'http://127.0.0.1:9/schema.json'",
    ),
    (
        {"responseSchema": {"properties": {"a": {"$ref": "file:///etc/hostname"}}}},
        "$ref must point inside the schema (start with #), not 'file:///etc/hostname' "
        "(at /properties/a)",
    ),
    (
        {"toolConfigs": {"w": {"parameters": {"type": "object", "$ref": "https://x.test/a"}}}},
        "emissaryConfig.toolConfigs.w.parameters: $ref must point inside the schema",
    ),
    (
        {"responseSchema": {"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}},
        "emissaryConfig.responseSchema: its references loop without reaching a value",
    ),
    ({"responseSchema": {"$ref": "#"}}, "its references loop without reaching a value"),
    (
        {"responseSchema": {"$ref": "#/$defs/missing"}},
        "emissaryConfig.responseSchema: $ref '#/$defs/missing' points nowhere in the schema",
    ),
]


@pytest.mark.parametrize(("config", "mentions"), BAD_CONFIGS)
def test_bad_declarations_and_schemas_are_400_naming_the_field(
    client, fake: FakeUpstream, firestore, config: dict[str, Any], mentions: str
) -> None:
    response = ask(client, emissaryConfig=config, save_to_history=True)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.get_json()["code"] == "invalid_request"
    assert mentions in response.get_json()["error"]
    assert fake.requests == []  # no provider was called
    messages = firestore.collection("assistants").document("test-assistant")
    assert list(messages.collection("messages").stream()) == []  # nothing was written


def test_a_schema_error_says_where() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": "zero"}}}
    with pytest.raises(RequestError, match=r"\(at properties/n/minimum\)"):
        _request(responseSchema=schema)


def test_a_schema_of_an_older_draft_is_checked_against_its_own_draft() -> None:
    # Draft 4's boolean exclusiveMaximum is valid there, and invalid in 2020-12.
    draft4 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "type": "object",
        "properties": {"n": {"type": "number", "maximum": 5, "exclusiveMaximum": True}},
    }
    assert _request(responseSchema=draft4).response_schema == draft4
    with pytest.raises(RequestError, match="not a valid JSON Schema"):
        _request(responseSchema={k: v for k, v in draft4.items() if k != "$schema"})


# -- tool turns in chat_history -------------------------------------------------------------


def test_tool_turns_are_read_with_their_calls_and_results() -> None:
    call = {"id": "c1", "name": "weather", "args": {"city": "Oslo"}, "signature": "sig"}
    turns = _history(
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "name": "weather", "content": "4 °C"},
        {"role": "tool", "tool_call_id": "c1", "content": {"temp": 4}},
    )
    assert turns == (
        Turn("user", "Weather?"),
        Turn("assistant", "", tool_calls=(ToolCall("c1", "weather", {"city": "Oslo"}, "sig"),)),
        Turn("tool", "4 °C", tool_call_id="c1", tool_name="weather"),
        # No name: the call's; a JSON result goes on as JSON text.
        Turn("tool", '{"temp": 4}', tool_call_id="c1", tool_name="weather"),
    )


def test_a_result_without_a_name_takes_the_call_its_id_is_sent_as() -> None:
    """Two calls of one turn with one id are sent as the first (`_answered_once`): a
    result naming no tool took the last one's name, and Gemini, which pairs results
    with calls by name, was told the `weather` call's result was `time`'s."""
    calls = [
        {"id": "dup", "name": "weather", "args": {}},
        {"id": "dup", "name": "time", "args": {}},
    ]
    turns = _history(
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "dup", "content": "4 °C"},
    )
    assert turns[-1] == Turn("tool", "4 °C", tool_call_id="dup", tool_name="weather")
    assert conversation(turns)[1] == Message("assistant", (ToolCall("dup", "weather", {}),))


def test_a_result_is_named_as_the_call_its_id_answers() -> None:
    """A frontend that swapped two results' names: Gemini and Ollama, which match results
    to calls by name, got the weather call's result as time's, and the other way round."""
    calls = [
        {"id": "c1", "name": "weather", "args": {}},
        {"id": "c2", "name": "time", "args": {}},
    ]
    turns = _history(
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "name": "time", "content": "4 °C"},
        {"role": "tool", "tool_call_id": "c2", "name": "weather", "content": "noon"},
        # An id no call has: the name given is all there is.
        {"role": "tool", "tool_call_id": "c9", "name": "clock", "content": "late"},
    )
    assert [(turn.tool_call_id, turn.tool_name) for turn in turns[2:]] == [
        ("c1", "weather"),
        ("c2", "time"),
        ("c9", "clock"),
    ]


def test_a_json_answer_sent_back_is_read_as_the_store_keeps_it() -> None:
    """A structured answer sent back in chat_history gives the model the turn a history
    read gives: with a response schema, a tag inside its strings is its text (it was cut
    at the tag), a thinking block before it left out; prose, or a request without a
    schema (whose replies the store keeps so), read as ever."""
    items = [
        {"role": "user", "content": "Note?"},
        {
            "role": "assistant",
            "content": '<thinking>plan</thinking>{"note": "Wrap it in <think> tags"}',
        },
        {"role": "user", "content": "And?"},
        {"role": "assistant", "content": 'Say "<think>x</think>" please'},
    ]
    body = {"user_input": "hi", "chat_history": items, "emissaryConfig": {"responseSchema": {}}}
    turns = build_request("a", body, max_input_chars=1000, max_history_messages=100).chat_history
    assert turns[1] == Turn("assistant", '{"note": "Wrap it in <think> tags"}')
    assert turns[3] == Turn("assistant", 'Say "" please')
    assert _history(*items)[1] == Turn("assistant", '{"note": "Wrap it in')


def test_a_json_answer_with_a_tag_that_misses_the_schema_says_why() -> None:
    """Read as JSON, it is checked as JSON: the error names what the schema misses (it
    said the reply was no JSON, and the saved text was cut at the tag)."""
    schema = {"type": "object", "required": ["note", "n"]}
    answer = '{"note": "Wrap it in <think> tags"}'
    output = record.Output(content='{"note": "Wrap it in', thinking='tags"}')
    report = ChainReport()
    checked = record.with_structured_output(output, schema, report, lambda: answer)
    assert checked.content == answer and checked.thinking == ""
    assert (
        checked.structured_error is not None
        and "'n' is a required property" in checked.structured_error
    )


@pytest.mark.parametrize(
    ("schema", "read_as_json"),
    [
        ({"type": "string"}, True),
        ({"type": ["string", "null"]}, True),
        ({"type": "object"}, False),
        # However the schema says a string may be asked for (a second reviewer's).
        ({"anyOf": [{"type": "string"}, {"type": "object"}]}, True),
        ({"$ref": "#/$defs/S", "$defs": {"S": {"type": "string"}}}, True),
        ({"enum": ["yes", "no"]}, True),
        ({"enum": [1, 2]}, False),
    ],
)
def test_a_cut_reply_opening_with_a_quote_is_json_only_where_a_string_is_asked_for(
    schema: dict[str, Any], read_as_json: bool
) -> None:
    """Prose opens with a quote too: where no string is asked for, its thinking is read as
    ever (a reviewer's: the block was saved as the visible text)."""
    cut = '"Thanks," she wrote, "for the <think>they want a summary</think>Here is'
    read = record.cut_json_reading(cut, schema)
    assert (read == (cut, "")) if read_as_json else read is None


def test_an_assistant_turn_with_calls_needs_no_content() -> None:
    turns = _history({"role": "assistant", "tool_calls": [{"id": "c", "name": "now"}]})
    assert turns == (Turn("assistant", "", tool_calls=(ToolCall("c", "now", {}),)),)


@pytest.mark.parametrize(
    ("item", "mentions"),
    [
        ({"role": "tool", "content": "x"}, "chat_history[0].tool_call_id is required"),
        ({"role": "tool", "tool_call_id": "z", "content": "x"}, "chat_history[0].name is required"),
        (
            {"role": "tool", "tool_call_id": "z", "name": "get weather", "content": "x"},
            "chat_history[0].name must be 1-64 characters of A-Z a-z 0-9 _ -",
        ),
        ({"role": "assistant", "tool_calls": {}}, "chat_history[0].tool_calls must be a list"),
        ({"role": "assistant", "tool_calls": ["c"]}, "tool_calls[0] must be an object"),
        ({"role": "assistant", "tool_calls": [{"name": "w"}]}, "tool_calls[0].id is required"),
        ({"role": "assistant", "tool_calls": [{"id": "c"}]}, "tool_calls[0].name must be"),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "name": "9x"}]},
            "tool_calls[0].name must be 1-64 characters of A-Z a-z 0-9 _ -, the first a letter",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "name": "w", "args": "{}"}]},
            "tool_calls[0].args must be an object",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "name": "w", "signature": 1}]},
            "tool_calls[0].signature must be a string",
        ),
    ],
)
def test_bad_tool_turns_are_400_naming_the_field(
    client, fake: FakeUpstream, item: dict[str, Any], mentions: str
) -> None:
    response = ask(client, chat_history=[item])
    assert response.status_code == 400
    assert mentions in response.get_json()["error"]
    assert fake.requests == []


# -- the reply's calls and JSON, end to end (the default provider; all four: test_tool_calls) --


def test_calls_are_reported_saved_and_not_shown_as_text(
    client, fake: FakeUpstream, firestore
) -> None:
    fake.push(Script(text="Let me check. ", tool_calls=[{"name": "weather", "args": {"a": 1}}]))
    response = ask(client, emissaryConfig=TOOLS, save_to_history=True, trace_id="t-tools")
    events = sse_events(response.get_data())
    assert [event["chunk"] for event in events[:-2]] == ["Let ", "me ", "check. "]
    metadata = events[-2]["metadata"]
    [call] = metadata["tools_to_use"]
    assert (call["name"], call["args"], call["id"].startswith("toolu_")) == (
        "weather",
        {"a": 1},
        True,
    )
    assert metadata["stop_reason"] == "tool_use"
    messages = firestore.collection("assistants").document("test-assistant").collection("messages")
    saved = messages.document("t-tools-assistant").get().to_dict()
    assert saved["toolsToUse"] == [call]
    assert saved["content"] == "Let me check."
    assert saved["stopReason"] == "tool_use"


def test_valid_json_becomes_structured_output_and_is_saved(
    client, fake: FakeUpstream, firestore
) -> None:
    value = {"answer": "Oslo", "confidence": 0.9}
    fake.push(Script(json=value, thinking=["pick a city"]))
    config = {"responseSchema": ANSWER_SCHEMA}
    response = ask(client, emissaryConfig=config, save_to_history=True, trace_id="t-json")
    events = sse_events(response.get_data())
    assert len(events) > 4  # the JSON streamed as chunks like any text
    metadata = events[-2]["metadata"]
    assert metadata["structured_output"] == value
    assert "structured_output_error" not in metadata
    assert metadata["thinking_content"] == "pick a city"  # thinking stays outside the JSON
    messages = firestore.collection("assistants").document("test-assistant").collection("messages")
    assert messages.document("t-json-assistant").get().to_dict()["structuredOutput"] == value


@pytest.mark.parametrize(
    ("script", "why"),
    [
        (Script(json={"answer": "Oslo"}), "does not match the schema at the top level"),
        (
            Script(json={"answer": "Oslo", "confidence": "high"}),
            "does not match the schema at confidence: 'high' is not of type 'number'",
        ),
        (Script(text='{"answer": "Oslo", '), "the reply is not valid JSON"),
        (Script(text="Oslo, I think."), "the reply is not valid JSON"),
        (
            Script(text='{"answer": "Oslo", "confidence": NaN}'),
            "the reply is not valid JSON: NaN is not JSON",
        ),
        # Past Python's digit limit, json.loads raises a ValueError of its own.
        (Script(text='{"answer": "Oslo", "confidence": ' + "9" * 5000 + "}"), "not valid JSON"),
        # Python reads it as infinity: the frame would show null, Firestore infinity.
        (
            Script(text='{"answer": "Oslo", "confidence": 1e400}'),
            "the reply is not valid JSON: number out of range: 1e400",
        ),
    ],
)
def test_json_that_does_not_match_still_ends_normally_and_says_why(
    client, fake: FakeUpstream, script: Script, why: str
) -> None:
    fake.push(script)
    response = ask(client, emissaryConfig={"responseSchema": ANSWER_SCHEMA})
    final, done = sse_events(response.get_data())[-2:]
    assert done == "[DONE]" and "answer" in final and "error" not in final
    assert final["metadata"]["structured_output"] is None
    assert why in final["metadata"]["structured_output_error"]


def test_a_json_caller_gets_the_same_metadata(client, fake: FakeUpstream) -> None:
    value = {"answer": "Oslo", "confidence": 1}
    fake.push(Script(json=value, tool_calls=[{"name": "weather", "args": {}}]))
    config = {**TOOLS, "responseSchema": ANSWER_SCHEMA}
    response = client.post(
        "/vac/assistant/test-assistant", json={"user_input": "hi", "emissaryConfig": config}
    )
    assert response.status_code == 200
    metadata = response.get_json()["metadata"]
    response.close()  # its slot back: the test client closes no response by itself
    assert metadata["structured_output"] == value
    assert [call["name"] for call in metadata["tools_to_use"]] == ["weather"]


# -- the pure functions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "args", "error"),
    [
        ('{"a": [1, 2]}', {"a": [1, 2]}, None),
        ("", {}, None),
        ("  ", {}, None),
        ('{"a": ', None, "arguments are not valid JSON"),
        ("[1]", None, "arguments are a JSON array, not an object"),
        ('"x"', None, "arguments are a JSON string, not an object"),
        # JSON's names for them, not Python's (NoneType, bool, float): shown to the frontend.
        ("null", None, "arguments are a JSON null, not an object"),
        ("true", None, "arguments are a JSON boolean, not an object"),
        ("1.5", None, "arguments are a JSON number, not an object"),
        ('{"a": NaN}', None, "arguments are not valid JSON: NaN is not JSON"),
        ('{"a": -Infinity}', None, "arguments are not valid JSON: -Infinity is not JSON"),
        ('{"a": -1e999}', None, "arguments are not valid JSON: number out of range: -1e999"),
        # The same number written out: a browser reads it as Infinity all the same.
        ('{"a": 1' + "0" * 400 + "}", None, "arguments are not valid JSON: number out of range"),
        ('{"a": ' + "9" * 300 + "}", {"a": int("9" * 300)}, None),  # within a double's range
        ('{"a": ' + "1" * 5000 + "}", None, "arguments are not valid JSON"),
    ],
)
def test_parse_arguments(text: str, args: Any, error: str | None) -> None:
    parsed, why = parse_arguments(text)
    assert parsed == args
    assert (why is None) if error is None else (why is not None and why.startswith(error))


def test_structured_output_takes_json_in_a_fence_and_says_when_empty() -> None:
    whole = '{"answer": "a", "confidence": 1}'
    # On lines of their own, or on the JSON's one line; the language in any case, or none.
    for fenced in (
        f"```json\n{whole}\n```",
        f"```JSON\n{whole}\n```",
        f"```json {whole} ```",
        f"```\n{whole}\n```",
        f"```{whole}```",
        "```json" + " " * 2000 + whole + "\n```",
    ):  # fmt: skip (a regex: 7 s)
        assert structured_output(fenced, ANSWER_SCHEMA) == ({"answer": "a", "confidence": 1}, None)
    assert structured_output("  ", ANSWER_SCHEMA) == (None, "the reply has no JSON: it is empty")


# -- calls and results pair up before any provider sees them --------------------------------


def test_unpaired_calls_and_results_are_mended_for_every_provider() -> None:
    oslo, paris = ToolCall("c1", "weather", {"city": "Oslo"}), ToolCall("c2", "weather", {})
    turns = (
        Turn("assistant", "", tool_calls=(ToolCall("c0", "weather", {}),)),  # leading: dropped
        Turn("tool", "9 °C", tool_call_id="c0", tool_name="weather"),  # so its result is text
        Turn("assistant", "Checking.", tool_calls=(oslo, paris)),
        Turn("tool", "4 °C", tool_call_id="c1", tool_name="weather"),
        Turn("assistant", "", tool_calls=(ToolCall("c3", "weather", {}),)),  # never answered
        Turn("user", "Never mind."),
    )
    assert conversation(turns) == [
        Message("user", ("Result of weather: 9 °C",)),
        Message("assistant", ("Checking.", oslo)),  # c2 had no result
        Message("user", (ToolResult("c1", "weather", "4 °C"), "Never mind.")),
    ]


def test_a_result_said_later_is_moved_up_to_its_call_and_a_repeat_is_text() -> None:
    """Anthropic and OpenAI want the results right after their call's turn: what the
    user and the assistant said while the tool ran follows them."""
    oslo = ToolCall("c1", "weather", {"city": "Oslo"})
    turns = (
        Turn("user", "Weather?"),
        Turn("assistant", "", tool_calls=(oslo,)),
        Turn("user", "also, hurry"),
        Turn("assistant", "Working on it."),
        Turn("tool", "4 °C", tool_call_id="c1", tool_name="weather"),
        Turn("tool", "5 °C", tool_call_id="c1", tool_name="weather"),  # a repeat
        Turn("tool", "0 °C", tool_call_id="c9", tool_name="weather"),  # its call comes later
        Turn("assistant", "", tool_calls=(ToolCall("c9", "weather", {}),)),  # unanswered
    )
    assert conversation(turns) == [
        Message("user", ("Weather?",)),
        Message("assistant", (oslo,)),
        Message("user", (ToolResult("c1", "weather", "4 °C"), "also, hurry")),
        Message("assistant", ("Working on it.",)),
        Message("user", ("Result of weather: 5 °C\n\nResult of weather: 0 °C",)),
    ]


def test_a_result_answers_the_latest_call_with_its_id_and_a_turn_names_an_id_once() -> None:
    """Some OpenAI-compatible servers reuse ids (`call_0` every turn): a result answers
    the latest unanswered call with its id; an id twice in one turn is sent once, its
    first occurrence, in order (providers refuse it twice)."""
    old, new = ToolCall("a", "search", {"q": "old"}), ToolCall("a", "search", {"q": "new"})
    signed, other = ToolCall("b", "search", {}, signature="s"), ToolCall("c", "search", {})
    turns = (
        Turn("user", "q1"),
        Turn("assistant", "", tool_calls=(old,)),  # never answered
        Turn("user", "no wait, search new instead"),
        Turn("assistant", "ok", tool_calls=(new,)),
        Turn("tool", "found", tool_call_id="a", tool_name="search"),
        Turn("assistant", "", tool_calls=(signed, other, ToolCall("b", "search", {"x": 1}))),
        Turn("tool", "B", tool_call_id="b", tool_name="search"),
        Turn("tool", "C", tool_call_id="c", tool_name="search"),
        Turn("tool", "B again", tool_call_id="b", tool_name="search"),
    )
    assert conversation(turns) == [
        Message("user", ("q1\n\nno wait, search new instead",)),
        Message("assistant", ("ok", new)),
        Message("user", (ToolResult("a", "search", "found"),)),
        Message("assistant", (signed, other)),
        Message(
            "user",
            (
                ToolResult("b", "search", "B"),
                ToolResult("c", "search", "C"),
                "Result of search: B again",
            ),
        ),
    ]


def test_an_id_an_earlier_call_had_is_a_new_one_on_the_call_and_its_result() -> None:
    """`call_0` every turn (some OpenAI-compatible servers): Anthropic refuses an id twice
    in one request, whatever turns they are in; every provider gets the ids unique."""
    first, again = (
        ToolCall("call_0", "weather", {"city": "Oslo"}),
        ToolCall("call_0", "weather", {}),
    )
    turns = (
        Turn("user", "Oslo?"),
        Turn("assistant", "", tool_calls=(first,)),
        Turn("tool", "4 °C", tool_call_id="call_0", tool_name="weather"),
        Turn("assistant", "4 °C. Paris?", tool_calls=(again,)),
        Turn("tool", "9 °C", tool_call_id="call_0", tool_name="weather"),
    )
    messages = conversation(turns)
    [renamed] = messages[3].parts[1:]
    assert isinstance(renamed, ToolCall) and renamed.id not in ("call_0", "")
    assert messages == [
        Message("user", ("Oslo?",)),
        Message("assistant", (first,)),
        Message("user", (ToolResult("call_0", "weather", "4 °C"),)),
        Message("assistant", ("4 °C. Paris?", dataclasses.replace(again, id=renamed.id))),
        Message("user", (ToolResult(renamed.id, "weather", "9 °C"),)),
    ]


@pytest.mark.parametrize("preamble", [[], ["Let me ", "check. "]], ids=["call-alone", "text-first"])
def test_a_reply_that_is_a_tool_call_has_no_json_yet(
    client, fake: FakeUpstream, preamble: list[str]
) -> None:
    calls = [{"name": "weather", "args": {"city": "Oslo"}}]
    fake.push(Script(tokens=preamble, tool_calls=calls))
    response = ask(client, emissaryConfig={**TOOLS, "responseSchema": ANSWER_SCHEMA})
    metadata = sse_events(response.get_data())[-2]["metadata"]
    assert metadata["structured_output"] is None
    assert metadata["structured_output_error"] == (
        "the reply is a tool call: the JSON answer comes after the tool results"
    )


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        ('{"user_input": "hi", "x": 1.' + "5" * 50 + "}", "x is a number longer than 40 char"),
        ('{"user_input": "hi", "x": 1e999}', "x is a number too large to represent"),
        ('{"user_input": "hi", "emissaryConfig": {"tools": ["a", 2]}}', "list of strings"),
    ],
)
def test_numbers_and_tool_names_of_the_wrong_kind_are_400(
    client, fake: FakeUpstream, raw: str, mentions: str
) -> None:
    response = client.post(
        "/vac/assistant/test-assistant/sse", data=raw, content_type="application/json"
    )
    assert response.status_code == 400 and mentions in response.get_json()["error"]
    assert fake.requests == []


def test_a_pattern_that_backtracks_is_cut_off_and_the_stream_ends_normally(
    client, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python's re would hold the GIL for seconds on this (every stream and /health
    waiting); the check stops at its deadline instead (assistant/schemas.py)."""
    monkeypatch.setattr(schemas, "CHECK_SECONDS", 0.2)
    fake.push(Script(json="a" * 40 + "!"))
    schema = {"type": "string", "pattern": "^(a|a)+$"}
    response = ask(client, emissaryConfig={"responseSchema": schema})
    final, done = sse_events(response.get_data())[-2:]
    assert done == "[DONE]" and "answer" in final and "error" not in final
    assert final["metadata"]["structured_output"] is None
    error = final["metadata"]["structured_output_error"]
    assert error == "the schema's patterns took more than 0.2 s to check the reply"


def test_a_pointer_to_nothing_below_an_id_is_a_400(client, fake: FakeUpstream) -> None:
    """Below an `$id` a pointer is read from that part, as jsonschema reads it: one to
    nothing there is refused like any other (the request's check once left it)."""
    schema = {"properties": {"a": {"$id": "urn:part", "$ref": "#/nowhere"}}}
    response = ask(client, emissaryConfig={"responseSchema": schema})
    assert response.status_code == 400
    assert "'#/nowhere' points nowhere in the schema" in response.get_json()["error"]
    assert fake.requests == []


# -- a call whose arguments stream in slowly is a live generation ---------------------------


def _anthropic_events(*events: tuple[str, dict[str, Any]]) -> list[bytes]:
    return [f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events]


PING = ("ping", {"type": "ping"})
PING_EVENT = _anthropic_events(PING)[0]


def _anthropic_slow_call(fragments: list[str]) -> list[bytes]:
    def event(name: str, data: dict[str, Any]) -> bytes:
        return _anthropic_events((name, data))[0]

    call = {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}
    message = {
        "id": "m",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
        "usage": {"input_tokens": 5, "output_tokens": 1},
    }
    return [
        event("message_start", {"type": "message_start", "message": message}),
        event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": call},
        ),
        *(
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
            for piece in fragments
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 9},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]


def _openai_slow_call(fragments: list[str]) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({'id': 'c', 'model': 'gpt', 'choices': [choice]})}\n\n".encode()

    start = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    return [
        chunk({"role": "assistant", "content": None, "tool_calls": [start]}),
        *(
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in fragments
        ),
        chunk({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]


# The formats that stream a call's arguments, and a call in each.
STREAMED_CALLS = pytest.mark.parametrize(
    ("case", "stream"),
    [(ANTHROPIC, _anthropic_slow_call), (OPENAI, _openai_slow_call)],
    ids=["anthropic", "openai"],
)


@STREAMED_CALLS
def test_a_call_whose_arguments_stream_in_slowly_is_not_cut(
    upstream: FakeUpstream, case: ProviderCase, stream: Any
) -> None:
    """Each piece of its arguments starts the wait for the first chunk over: the whole
    takes well past FIRST_CHUNK_TIMEOUT and is not cut."""
    raw = stream(['{"city"', ': "Os', 'lo"', "}"])
    # A piece every 0.25 s against a 0.6 s wait: at 0.15 s against 0.3 s, a loaded
    # machine's late piece (a fresh-clone run) was taken for the wait's end.
    upstream.push(Script(raw=raw, interval=0.25))
    weather = ToolSpec("weather", "", WEATHER["parameters"])
    prompt = Prompt(system=None, turns=(Turn("user", "Oslo?"),), tools=(weather,))
    run = run_chain(
        [case.provider(upstream.url)], Timeouts(connect=1, first_chunk=0.6, idle=1.2), prompt=prompt
    )
    assert run.outcomes == ["ok"]
    assert run.seconds >= 1.2  # well past first_chunk
    calls = [item for item in run.items if isinstance(item, ToolCall)]
    assert [(call.name, call.args) for call in calls] == [("weather", {"city": "Oslo"})]


def test_a_tool_the_provider_runs_is_not_cut_while_it_makes_progress(
    upstream: FakeUpstream,
) -> None:
    """Anthropic's server tools (a web search): each step of it (its start, its input,
    its result) starts the wait for the first chunk over; the pings between do not."""
    search = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}
    result = {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}
    query = {"type": "input_json_delta", "partial_json": '{"query": "weather"}'}
    raw = _anthropic_events(
        ("message_start", {"type": "message_start", "message": {"model": "claude"}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": search}),
        PING, PING,
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": query}),
        PING, PING,
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": result}),
        PING, PING,
        ("content_block_start", {"type": "content_block_start", "index": 2,
                                 "content_block": {"type": "text", "text": "Sunny."}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}),
        ("message_stop", {"type": "message_stop"}),
    )  # fmt: skip
    upstream.push(Script(raw=raw, interval=0.1))
    run = run_chain(
        [ANTHROPIC.provider(upstream.url)], Timeouts(connect=1, first_chunk=0.45, idle=0.6)
    )
    assert run.outcomes == ["ok"] and run.text == "Sunny."
    assert run.seconds >= 0.9  # the first text came well past first_chunk


@STREAMED_CALLS
def test_a_call_that_stalls_with_pings_only_falls_through(
    upstream: FakeUpstream, case: ProviderCase, stream: Any
) -> None:
    """Its start, then nothing but keep-alives: no progress within the wait for the first
    chunk, so the next provider answers (nothing of the call was shown)."""
    head = 3 if case is ANTHROPIC else 2  # (message_start,) the call's start, one piece
    started = stream(['{"ci'])[:head]
    keep_alive = b"event: ping\ndata: {}\n\n" if case is ANTHROPIC else b": keep-alive\n\n"
    upstream.push(Script(raw=[*started, *[keep_alive] * 40], interval=0.05))
    upstream.push(Script(tokens=["Fallback."]))
    providers = [case.provider(upstream.url), case.provider(upstream.url)]
    run = run_chain(providers, Timeouts(connect=1, first_chunk=0.5, idle=1))
    assert run.outcomes == ["upstream_timeout", "ok"]
    assert run.text == "Fallback." and not [i for i in run.items if isinstance(i, ToolCall)]


def test_a_reply_that_opens_with_a_call_sends_its_status_at_once(
    client, fake: FakeUpstream
) -> None:
    """The call commits the reply like a first chunk: its status (and a `: ping`, as the
    call itself is no frame) goes out then, not a heartbeat later."""
    os.environ["HEARTBEAT_SECONDS"] = "5"
    call = _anthropic_slow_call(['{"city": "Oslo"}'])
    raw = call[:4] + [PING_EVENT] * 40 + call[4:]  # the call whole, then a long wait
    fake.push(Script(raw=raw, interval=0.05))
    started = time.monotonic()
    response = ask(client, emissaryConfig=TOOLS)
    assert response.status_code == 200
    frames = iter(response.response)
    assert next(frames) == b": ping\n\n"
    assert time.monotonic() - started < 1.5  # the stream itself lasts 2.3 s
    final = sse_events(b"".join(frames))[-2]
    assert [call["name"] for call in final["metadata"]["tools_to_use"]] == ["weather"]


@pytest.mark.parametrize(
    "pattern",
    [
        r"^(a)\1$",
        r"^(?P<x>a)(?P=x)$",  # by name, as Python writes it: Anthropic was sent it
        r"^(?<x>a)\k<x>$",
        r"(?=a)a",
        r"(?<!a)b",
        r"\bcat\b",  # a word boundary: OpenAI was sent it
        r"(?>a+)b",  # an atomic group: both were
        r"^[A-Z]++-\d*+x?+y{2,3}+$",  # possessive quantifiers, the same written short
        r"(a)?(?(1)b|c)",  # a conditional: both were
    ],
)
def test_a_pattern_no_provider_compiles_goes_into_the_description_for_both(
    pattern: str,
) -> None:
    """One rule for Anthropic's grammar and OpenAI's regex engine: two copies had drifted
    apart (a reviewer's)."""
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}}
    if "(?<x>" not in pattern:  # Python's re takes no other group name syntax
        schemas.check_schema(schema, "emissaryConfig.responseSchema")
    said = {"type": "string", "description": f"{{pattern: {json.dumps(pattern)}}}"}
    assert anthropic_schema.output_schema(schema)["properties"]["a"] == said
    sent = openai._response_format(schema)["json_schema"]["schema"]
    assert sent["properties"]["a"] == said


# In the service's worker: the loop writes the frames of a step 0.3 s late, so the request
# thread takes a call queued in that step while the chunk framed before it waits unwritten
# (the race a reviewer met once in twenty replies).
_LATE_LOOP_WRITES = """
import os, sys, time
def _late():
    outbox = sys.modules["assistant.outbox"].Outbox
    flush = outbox._flush
    outbox._flush = lambda self: (time.sleep(0.3), flush(self))[1]
os.register_at_fork(after_in_child=_late)
"""


def test_a_call_after_a_chunk_the_loop_has_not_written_sends_no_ping(
    fake: FakeUpstream, tmp_path: Any
) -> None:
    """The call commits the reply with the chunk's frame, which the request thread takes
    from the loop: a `: ping` went with it, at no heartbeat's time."""
    (tmp_path / "sitecustomize.py").write_text(_LATE_LOOP_WRITES)
    call = _anthropic_slow_call(['{"city": "Oslo"}'])
    text = _anthropic_events(
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "Let me look. "}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    )  # fmt: skip
    fake.push(Script(raw=[b"".join([call[0], *text, *call[1:]])]))  # in one read
    with running_service({"PYTHONPATH": str(tmp_path), "HEARTBEAT_SECONDS": "5"}) as service:
        response = httpx.post(
            f"{service.url}/vac/assistant/test-assistant/sse",
            json={"user_input": "Weather?", "emissaryConfig": TOOLS},
        )
    assert response.status_code == 200
    assert b": ping" not in response.content
    events = sse_events(response.content)
    assert events[0] == {"chunk": "Let me look. "}
    assert [call["name"] for call in events[-2]["metadata"]["tools_to_use"]] == ["weather"]


MADE_UP_NAMES = [
    ("web.search", "made_up_web_search"),
    ("get weather", "made_up_get_weather"),  # not a call of an offered get_weather
    ("t" * 65, "made_up_" + "t" * 56),
    ("", "made_up_"),
]


@pytest.mark.parametrize("name, kept", [("weather", "weather"), *MADE_UP_NAMES])
def test_a_call_names_a_tool_every_provider_takes(name: str, kept: str) -> None:
    """What the model made up is reported as a name chat_history accepts back."""
    assert ToolCall("c1", name, {}).name == kept


def test_json_nested_hundreds_deep_is_still_read() -> None:
    """Only JSON with a surrogate escape is walked for lone ones (the walk recurses)."""
    deep = "[" * 600 + "]" * 600
    value, error = structured_output(deep, {"type": "array"})
    assert error is None and isinstance(value, list)
