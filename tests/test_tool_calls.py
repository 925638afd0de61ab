"""Tool calls and structured output on every provider: one scenario table, four wire formats.

Each scenario runs for Anthropic, OpenAI, Gemini and Ollama against the fake
upstream, which streams calls the way each real API does (test_<provider>_tools.py
holds each one's own wire details and recorded streams). Three layers: the
provider's events, the chain (a call commits the provider), and the endpoint
(the round trip call → result → answer, saved in the Firestore emulator).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest

from assistant.chain import ChainFailed, ChainSucceeded, Chunk
from assistant.config import Timeouts
from assistant.providers.base import Event, Prompt, StreamEnd, TextDelta
from assistant.request import Turn
from assistant.tools import MOST_ARGUMENT_LEVELS, ToolCall, ToolSpec
from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .conftest import ask, sse_events, strict_json
from .provider_cases import CASES, ProviderCase
from .provider_support import run_chain
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture
from .raw_http import open_raw

EACH = pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
WEATHER = ToolSpec("weather", "The weather in a city", WEATHER_PARAMETERS)
PROMPT = Prompt(system=None, turns=(Turn("user", "Weather in Oslo?"),), tools=(WEATHER,))
OSLO = {"name": "weather", "args": {"city": "Oslo", "note": "«ø» 🌧"}}
BERGEN = {"name": "weather", "args": {"city": "Bergen"}}
LONE_CITY = '{"city": "Os\\ud800lo"}'  # a lone surrogate's escape, as the model's text holds it


def _holds(value: Any, args: dict[str, Any]) -> bool:
    """Whether `args` is somewhere in a request body: as an object, or as JSON text."""
    if value == args:
        return True
    if isinstance(value, str) and value.startswith("{"):
        return json.loads(value) == args
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return any(_holds(item, args) for item in items)


def _calls(events: list[Event]) -> list[ToolCall]:
    return [event for event in events if isinstance(event, ToolCall)]


def _events(case: ProviderCase, url: str) -> list[Event]:
    events, error = case.events(url, prompt=PROMPT)
    assert error is None, error
    assert isinstance(events[-1], StreamEnd) and events[-1].stop_reason == "tool_use"
    return events


@EACH
def test_a_call_alone(upstream: FakeUpstream, case: ProviderCase) -> None:
    upstream.push(Script(tokens=[], tool_calls=[OSLO]))
    [call] = _calls(_events(case, upstream.url))
    assert (call.name, call.args, call.args_error) == ("weather", OSLO["args"], None)
    assert call.id  # the provider's id, or one made up where it gives none


@EACH
def test_text_then_two_parallel_calls_in_order(upstream: FakeUpstream, case: ProviderCase) -> None:
    upstream.push(Script(tokens=["Checking ", "both."], tool_calls=[OSLO, BERGEN]))
    events = _events(case, upstream.url)
    texts = [event for event in events if isinstance(event, TextDelta)]
    assert [event.text for event in texts] == ["Checking ", "both."]
    assert events.index(texts[-1]) < events.index(_calls(events)[0])  # text first, as streamed
    calls = _calls(events)
    assert [call.args for call in calls] == [OSLO["args"], BERGEN["args"]]
    assert len({call.id for call in calls}) == 2


@EACH
@pytest.mark.parametrize("arguments", ['{"city": "Os', "[1, 2]"])
def test_arguments_that_are_not_an_object_keep_the_call(
    upstream: FakeUpstream, case: ProviderCase, arguments: str
) -> None:
    upstream.push(Script(tokens=[], tool_calls=[{"name": "weather", "arguments": arguments}]))
    [call] = _calls(_events(case, upstream.url))
    assert call.name == "weather" and call.args is None
    assert call.args_error is not None and call.args_error.startswith("arguments are")


def _nested(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


@EACH
@pytest.mark.parametrize("levels", [MOST_ARGUMENT_LEVELS, MOST_ARGUMENT_LEVELS + 1])
def test_arguments_nested_past_the_bound_keep_the_call_without_them(
    upstream: FakeUpstream, case: ProviderCase, levels: int
) -> None:
    """Whether they came as text or parsed, arguments nest at most MOST_ARGUMENT_LEVELS
    deep (a request holds no deeper JSON, so a history could not send them back)."""
    upstream.push(Script(tokens=[], tool_calls=[{"name": "weather", "arguments": _nested(levels)}]))
    [call] = _calls(_events(case, upstream.url))
    if levels == MOST_ARGUMENT_LEVELS:
        assert call.args == json.loads(_nested(levels)) and call.args_error is None
    else:
        assert call.args is None
        assert call.args_error == f"arguments are nested more than {levels - 1} levels deep"


def test_arguments_at_the_bound_come_back_in_a_history(client, fake: FakeUpstream) -> None:
    """The bound is what a request can send back: a call's args sit 5 levels down in a
    body, which nests at most 64 (a bound of 64 gave calls no follow-up could carry)."""
    nested = {"name": "weather", "arguments": _nested(MOST_ARGUMENT_LEVELS)}
    fake.push(Script(tokens=[], tool_calls=[nested]), Script(tokens=["sunny"]))
    [call] = sse_events(ask(client, emissaryConfig=TOOL_CONFIG).get_data())[-2]["metadata"][
        "tools_to_use"
    ]
    assert call["args"] == json.loads(_nested(MOST_ARGUMENT_LEVELS))
    history = [
        {"role": "user", "content": "Hello?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "name": "weather", "content": "sunny"},
    ]
    answer = ask(client, "go on", chat_history=history, emissaryConfig=TOOL_CONFIG)
    assert answer.status_code == 200


@pytest.mark.parametrize(
    ("provider", "event"),
    [
        ("gemini", b'data: {"candidates":[{"content":{"role":"model","parts":[{"functionCall":'
                   b'{"name":"weather","args":%s}}]},"finishReason":"STOP"}]}\r\n\r\n'),
        ("ollama", b'{"message":{"role":"assistant","content":"","tool_calls":[{"function":'
                   b'{"name":"weather","arguments":%s}}]},"done":false}\n'
                   b'{"message":{"role":"assistant","content":""},"done":true}\n'),
    ],
)  # fmt: skip
def test_a_call_nested_as_deep_as_the_upstream_parser_goes_ends_its_reply(
    client, fake: FakeUpstream, only: Any, provider: str, event: bytes
) -> None:
    """Arguments that come parsed (Gemini, Ollama) 990 levels deep: orjson reads them on the
    I/O loop, and the final frame's encoder ran out of stack on them, so a finished reply
    ended with internal_error (a 500 on the JSON route). Now an args_error, as text is."""
    only(next(case for case in CASES if case.name == provider))
    fake.push(Script(raw=[event % _nested(990).encode()]))
    final = sse_events(ask(client, emissaryConfig=TOOL_CONFIG).get_data())[-2]
    [call] = final["metadata"]["tools_to_use"]
    assert call["args"] is None and call["args_error"].startswith("arguments are nested")


@EACH
def test_calls_cut_at_every_third_byte_come_out_the_same(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    script = Script(tokens=["Un ", "moment… "], tool_calls=[OSLO, BERGEN], arg_piece=2)
    upstream.push(script)
    whole = _events(case, upstream.url)
    upstream.push(Script(**{**vars(script), "split_bytes": 3}))
    split = _events(case, upstream.url)
    assert [(c.name, c.args) for c in _calls(split)] == [(c.name, c.args) for c in _calls(whole)]
    assert [e for e in split if isinstance(e, TextDelta)] == [
        e for e in whole if isinstance(e, TextDelta)
    ]


@EACH
def test_the_offered_tool_reaches_the_request(upstream: FakeUpstream, case: ProviderCase) -> None:
    # Field by field per provider in test_<provider>_tools.py; here: every one sends it.
    upstream.push(Script(tokens=["ok"]))
    _, error = case.events(upstream.url, prompt=PROMPT)
    assert error is None
    sent = json.dumps(upstream.requests[-1].body)
    assert '"weather"' in sent and '"The weather in a city"' in sent


def _sent_tool(case: ProviderCase, body: dict[str, Any]) -> tuple[Any, str]:
    """The first tool's parameters and description as `case`'s provider was sent them."""
    tool = body["tools"][0]
    if case.name == "anthropic":
        return tool["input_schema"], tool["description"]
    if case.name == "gemini":
        declaration = tool["functionDeclarations"][0]
        return declaration["parametersJsonSchema"], declaration["description"]
    return tool["function"]["parameters"], tool["function"]["description"]


@EACH
def test_a_tool_with_a_combinator_at_its_top_is_offered_to_every_provider(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """Anthropic and OpenAI refuse a whole request whose tool has anyOf, oneOf or allOf
    (OpenAI: enum, not, const too) at the top of its parameters (a reviewer's "by id or
    by name" tool made every request a 502): what allOf adds is merged in, the rest goes
    to the model as words; the others take the schema as it is."""
    parameters = {
        "type": "object",
        "properties": {"id": {"type": "string"}, "name": {"type": "string"}},
        "anyOf": [{"required": ["id"]}, {"required": ["name"]}],
        "allOf": [{"properties": {"limit": {"type": "integer"}}, "required": ["limit"]}],
    }
    find = ToolSpec("find", "Find a record", parameters)
    upstream.push(Script(tokens=[], tool_calls=[{"name": "find", "args": {"id": "7"}}]))
    events, error = case.events(upstream.url, prompt=Prompt(None, PROMPT.turns, (find,)))
    assert error is None and [call.args for call in _calls(events)] == [{"id": "7"}]
    sent, description = _sent_tool(case, upstream.requests[-1].body)
    if case.name in ("gemini", "ollama"):
        assert (sent, description) == (parameters, "Find a record")
        return
    assert sent == {
        "type": "object",
        "properties": {**parameters["properties"], "limit": {"type": "integer"}},
        "required": ["limit"],
    }
    assert description == (
        "Find a record\n\nThe arguments must also match this JSON Schema: "
        '{"anyOf":[{"required":["id"]},{"required":["name"]}]}'
    )


# A field's description beside its reference, as pydantic writes one.
PLACE = {
    "type": "object",
    "properties": {"place": {"$ref": "#/$defs/Place", "description": "where"}},
    "$defs": {"Place": {"type": "string"}},
}


@EACH
@pytest.mark.parametrize("where", ["tool", "response"])
def test_a_reference_with_a_description_beside_it_goes_to_every_provider(
    upstream: FakeUpstream, case: ProviderCase, where: str
) -> None:
    """Gemini takes only `$` keywords beside a `$ref` (a reviewer read it in Google's
    documentation; the fake refuses it as documented): the reference is wrapped in an
    anyOf of its own there, the same schema."""
    if where == "tool":
        upstream.push(Script(tokens=[], tool_calls=[{"name": "go", "args": {"place": "Oslo"}}]))
        prompt = Prompt(None, PROMPT.turns, (ToolSpec("go", "Go somewhere", PLACE),))
    else:
        upstream.push(Script(json={"place": "Oslo"}))
        prompt = Prompt(None, PROMPT.turns, response_schema=PLACE)
    events, error = case.events(upstream.url, prompt=prompt)
    assert error is None and events
    if case.name == "gemini":
        body = upstream.requests[-1].body
        sent = (
            body["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]
            if where == "tool"
            else body["generationConfig"]["responseJsonSchema"]
        )
        place = {"anyOf": [{"$ref": "#/$defs/Place"}], "description": "where"}
        assert sent == {**PLACE, "properties": {"place": place}}


# Ids Anthropic (`[a-zA-Z0-9_-]`) or OpenAI (40 characters at most) refuse: an
# OpenAI-compatible server's, a frontend's own, and one past OpenAI's length.
FOREIGN_IDS = ("functions.weather:0", "call|1", "c" * 60)


@EACH
def test_call_ids_made_elsewhere_go_back_in_a_form_each_provider_takes(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """A reviewer found `functions.weather:0` sent to Anthropic as it was: a 400 (the
    fakes refuse what the real APIs do), so every continuation of such a loop fell
    through, or was a 502 with Anthropic alone."""
    calls = tuple(ToolCall(id_, "weather", {"city": "Oslo"}) for id_ in FOREIGN_IDS)
    history = (
        Turn("user", "Weather in Oslo?"),
        Turn("assistant", "", tool_calls=calls),
        *(
            Turn("tool", f"{i} °C", tool_call_id=c.id, tool_name="weather")
            for i, c in enumerate(calls)
        ),
    )
    upstream.push(Script(tokens=["Cold."]))
    events, error = case.events(upstream.url, prompt=Prompt(None, history, (WEATHER,)))
    assert error is None, error.detail if error else None
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Cold."]


@EACH
def test_a_tool_loop_goes_on_where_this_request_offers_no_tools(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """Anthropic refuses tool_use blocks without `tools` (its fake too): a reviewer
    found such a history sent as it was."""
    made = ToolCall("toolu_01", "weather", {"city": "Oslo"})
    history = (
        Turn("user", "Weather in Oslo?"),
        Turn("assistant", "", tool_calls=(made,)),
        Turn("tool", "4 °C", tool_call_id=made.id, tool_name="weather"),
        Turn("user", "Thanks. And in words?"),
    )
    upstream.push(Script(tokens=["Chilly."]))
    events, error = case.events(upstream.url, prompt=Prompt(None, history))
    assert error is None, error.detail if error else None
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Chilly."]


@EACH
def test_results_go_back_in_the_order_of_their_calls(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """Two calls run at once, Bergen's ended first and its result came back first:
    Gemini (and older Ollama servers) get no ids with results, only their places, and
    read Bergen's 7 °C as Oslo's (a reviewer). Each provider gets them in the calls'
    order."""
    oslo, bergen = (
        ToolCall("c1", "weather", {"city": "Oslo"}),
        ToolCall("c2", "weather", BERGEN["args"]),
    )
    history = (
        Turn("user", "Oslo and Bergen?"),
        Turn("assistant", "", tool_calls=(oslo, bergen)),
        Turn("tool", "7 °C", tool_call_id="c2", tool_name="weather"),
        Turn("tool", "4 °C", tool_call_id="c1", tool_name="weather"),
    )
    upstream.push(Script(tokens=["Cold."]))
    _, error = case.events(upstream.url, prompt=Prompt(None, history, (WEATHER,)))
    assert error is None, error.detail if error else None
    sent = json.dumps(upstream.requests[-1].body, ensure_ascii=False)
    assert sent.index("Oslo") < sent.index("Bergen") < sent.index("4 °C") < sent.index("7 °C")


def _sent_call_ids(upstream: FakeUpstream, case: ProviderCase, *ids: str) -> list[str]:
    """The ids a provider sent for a turn of calls with these ids, on calls then results."""
    calls = tuple(ToolCall(id_, "weather", {"city": "Oslo"}) for id_ in ids)
    history = (
        Turn("user", "Weather in Oslo?"),
        Turn("assistant", "", tool_calls=calls),
        *(Turn("tool", "4 °C", tool_call_id=c.id, tool_name="weather") for c in calls),
    )
    upstream.push(Script(tokens=["Cold."]))
    _, error = case.events(upstream.url, prompt=Prompt(None, history, (WEATHER,)))
    assert error is None, error.detail if error else None
    body = upstream.requests[-1].body
    assert body is not None
    if case.name == "anthropic":
        blocks = [b for m in body["messages"] for b in m["content"] if isinstance(b, dict)]
        made = [b["id"] for b in blocks if b["type"] == "tool_use"]
        answered = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
    else:
        made = [c["id"] for m in body["messages"] for c in m.get("tool_calls") or []]
        answered = [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]
    assert made == answered  # each result still answers its call
    return made


ANTHROPIC_AND_OPENAI = pytest.mark.parametrize(
    "case", [c for c in CASES if c.name in ("anthropic", "openai")], ids=lambda c: c.name
)


@ANTHROPIC_AND_OPENAI
def test_a_call_id_is_changed_only_where_that_provider_would_refuse_it(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    kept = ["toolu_01A-b_9", "call_" + "a" * 35, "gemini-call-0123456789ab-1"]
    assert _sent_call_ids(upstream, case, *kept) == kept
    [compatible, long] = _sent_call_ids(upstream, case, "functions.weather:0", "c" * 41)
    if case.name == "openai":
        # OpenAI takes any characters: an OpenAI-compatible server gets its own id back
        # (a reviewer found it changed, and Kimi-style servers stop calling tools then),
        # but no more than 40 of them.
        assert compatible == "functions.weather:0"
        assert len(long) == 40 and long.startswith("c" * 29)
    else:  # Anthropic: its characters only, at any length
        assert long == "c" * 41
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", compatible)
        assert compatible.startswith("functions_weather_0_")  # still readable in a log


@ANTHROPIC_AND_OPENAI
def test_a_changed_call_id_never_equals_another_id_sent(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """A reviewer made one: an id of the very form another one is changed into."""
    refused = "c" * 41 if case.name == "openai" else "get_weather:0"
    [changed] = _sent_call_ids(upstream, case, refused)
    sent = _sent_call_ids(upstream, case, refused, changed)
    assert len(set(sent)) == 2


# -- the chain ------------------------------------------------------------------------------

TIMEOUTS = Timeouts(connect=1, first_chunk=2, idle=2)


@EACH
def test_a_call_alone_is_a_whole_reply(upstream: FakeUpstream, case: ProviderCase) -> None:
    upstream.push(Script(tokens=[], tool_calls=[OSLO]))
    run = run_chain([case.provider(upstream.url)], TIMEOUTS, prompt=PROMPT)
    assert [type(item) for item in run.items] == [ToolCall, ChainSucceeded]
    assert (run.chain.provider, run.chain.stop_reason) == (case.name, "tool_use")


@EACH
@pytest.mark.parametrize("fail_mode", ["cut", "error_event"])
def test_a_call_commits_the_provider(
    upstream: FakeUpstream, case: ProviderCase, fail_mode: str
) -> None:
    # Calls, then the stream fails: no text was shown, but calls were made, so the chain
    # does not try the next provider (the model asked for those tools), and they are
    # reported. OpenAI's calls come whole only when the choice finishes: failing before
    # that, those whose arguments came whole are kept (a reviewer found them dropped).
    upstream.push(Script(tokens=[], tool_calls=[OSLO, BERGEN], fail_after=0, fail_mode=fail_mode))
    fallback = CASES[0].provider(upstream.url, "fallback")
    run = run_chain([case.provider(upstream.url), fallback], TIMEOUTS, prompt=PROMPT)
    assert len(run.outcomes) == 1 and run.outcomes[0] in ("upstream_incomplete", "upstream_error")
    assert run.items[-1] == ChainFailed(run.errors[0], committed=True)
    assert [item.args for item in run.items[:-1] if isinstance(item, ToolCall)] == [
        OSLO["args"],
        BERGEN["args"],
    ]


@EACH
def test_a_call_then_silence_commits_the_provider(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """A whole call, then the upstream goes quiet until a deadline ends the attempt (the
    wait for a first chunk, on OpenAI, whose calls are not shown before their choice
    finishes; the idle gap on the others): the call counts, as after an error."""
    upstream.push(Script(tokens=[], tool_calls=[OSLO], fail_after=0, fail_mode="hang"))
    fallback = CASES[0].provider(upstream.url, "fallback")
    run = run_chain([case.provider(upstream.url), fallback], TIMEOUTS, prompt=PROMPT)
    assert run.outcomes == ["upstream_timeout"]
    assert run.items[-1] == ChainFailed(run.errors[0], committed=True)
    assert [item.args for item in run.items if isinstance(item, ToolCall)] == [OSLO["args"]]


def test_an_openai_call_cut_in_its_arguments_is_no_call(upstream: FakeUpstream) -> None:
    """Its arguments not whole, the call was not made: the chain falls through, as it
    does when any provider's stream is cut before its first text or call."""
    fragments = [
        {"index": 0, "id": "call_1", "function": {"name": "weather", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"city": "Os'}},
    ]
    chunks = [
        "data: "
        + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [fragment]}}]})
        + "\n\n"
        for fragment in fragments
    ]
    upstream.push(Script(raw=chunks), Script(tokens=[], tool_calls=[OSLO]))
    openai = next(case for case in CASES if case.name == "openai")
    fallback = CASES[0].provider(upstream.url, "fallback")
    run = run_chain([openai.provider(upstream.url), fallback], TIMEOUTS, prompt=PROMPT)
    assert run.outcomes == ["upstream_incomplete", "ok"]
    assert [item.args for item in run.items if isinstance(item, ToolCall)] == [OSLO["args"]]


@EACH
def test_a_failure_before_any_call_falls_through(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    upstream.push(Script(fail="503"), Script(tokens=[], tool_calls=[OSLO]))
    fallback = CASES[0].provider(upstream.url, "fallback")
    run = run_chain([case.provider(upstream.url), fallback], TIMEOUTS, prompt=PROMPT)
    assert run.outcomes == ["upstream_status", "ok"]
    assert isinstance(run.items[0], ToolCall) and run.chain.provider == "fallback"
    assert not any(isinstance(item, Chunk) for item in run.items)


# -- the endpoint: the round trip, saved ------------------------------------------------------

TOOL_CONFIG = {
    "tools": ["weather"],
    "toolConfigs": {
        "weather": {"description": WEATHER.description, "parameters": WEATHER_PARAMETERS}
    },
}
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


@pytest.fixture
def only(fake: FakeUpstream) -> Any:
    """Configure the endpoint for one provider, all of them at the fake."""
    os.environ.update(
        OPENAI_API_KEY="test-openai-key",
        OPENAI_BASE_URL=f"{fake.url}/v1",
        GEMINI_API_KEY="test-gemini-key",
        GEMINI_BASE_URL=fake.url,
        OLLAMA_BASE_URL=fake.url,
    )

    def use(case: ProviderCase) -> None:
        os.environ["ASSISTANT_PROVIDERS"] = case.name

    return use


@EACH
def test_the_round_trip_call_result_answer(
    client, fake: FakeUpstream, firestore, only: Any, case: ProviderCase
) -> None:
    only(case)
    signature = {"signature": "c2lnbmF0dXJl"} if case.name == "gemini" else {}
    fake.push(Script(text="One moment. ", tool_calls=[{**OSLO, **signature}]))
    first = ask(client, "Weather in Oslo?", emissaryConfig=TOOL_CONFIG, save_to_history=True)
    metadata = sse_events(first.get_data())[-2]["metadata"]
    [call] = metadata["tools_to_use"]
    assert (call["name"], call["args"], metadata["stop_reason"]) == (
        "weather",
        OSLO["args"],
        "tool_use",
    )
    assert call.get("signature") == signature.get("signature")

    # The frontend runs the tool and sends its result back with the conversation.
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "One moment. ", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "name": "weather", "content": "4 °C, rain"},
    ]
    fake.push(Script(text="It is 4 °C and raining in Oslo."))
    second = ask(
        client,
        "Thanks. And?",
        chat_history=history,
        emissaryConfig=TOOL_CONFIG,
        save_to_history=True,
        trace_id="round-trip-2",
    )
    final = sse_events(second.get_data())[-2]
    assert final["answer"] == "It is 4 °C and raining in Oslo."
    assert final["metadata"]["tools_to_use"] == []
    sent = json.dumps(fake.requests[-1].body, ensure_ascii=False)
    assert "4 °C, rain" in sent  # the tool's result, in the provider's own form
    assert _holds(fake.requests[-1].body, OSLO["args"])  # with the call it answers
    if signature:
        assert signature["signature"] in sent  # returned as the provider asked

    messages = firestore.collection("assistants").document("test-assistant").collection("messages")
    saved = messages.document("round-trip-2-assistant").get().to_dict()
    assert saved["content"] == "It is 4 °C and raining in Oslo."


@EACH
def test_a_call_before_a_failure_is_reported_and_saved(
    client, fake: FakeUpstream, firestore, only: Any, case: ProviderCase
) -> None:
    only(case)
    fake.push(Script(text="One moment. ", tool_calls=[OSLO], fail_after=2))
    response = ask(client, emissaryConfig=TOOL_CONFIG, save_to_history=True, trace_id="t-call")
    error = sse_events(response.get_data())[-2]
    assert error["partial"] == "One moment. "
    assert [call["args"] for call in error["metadata"]["tools_to_use"]] == [OSLO["args"]]
    messages = firestore.collection("assistants").document("test-assistant").collection("messages")
    saved = messages.document("t-call-assistant").get().to_dict()
    assert saved["status"] == "incomplete"
    assert [call["args"] for call in saved["toolsToUse"]] == [OSLO["args"]]


@EACH
def test_a_call_whose_client_left_is_saved(
    fake: FakeUpstream, firestore, only: Any, case: ProviderCase
) -> None:
    """A client leaves after a whole call came, the upstream silent after it (its choice
    unfinished): the call is in the saved message, as the text is, on both routes
    (OpenAI's calls, handed on only when their choice ends, were lost)."""
    only(case)
    messages = firestore.collection("assistants").document("test-assistant").collection("messages")
    with running_service({"HEARTBEAT_SECONDS": "30"}) as service:
        for route in ("sse", "json"):
            fake.push(
                Script(text="One moment. ", tool_calls=[OSLO], fail_after=2, fail_mode="hang")
            )
            body = {"user_input": "hi", "emissaryConfig": TOOL_CONFIG, "save_to_history": True,
                    "trace_id": f"t-left-{route}"}  # fmt: skip
            path = "/vac/assistant/test-assistant" + ("/sse" if route == "sse" else "")
            asked = len(fake.requests)
            with open_raw(service.url, path, json.dumps(body).encode()):
                upstream = fake.wait_for_requests(asked + 1)[-1]
                time.sleep(0.5)  # the text and the call arrive; then the upstream is silent
            assert upstream.client_closed.wait(timeout=5), "upstream request left running"
            saved = None
            for _ in range(100):
                saved = messages.document(f"t-left-{route}-assistant").get().to_dict()
                if saved is not None:
                    break
                time.sleep(0.05)
            assert saved is not None and saved["status"] == "incomplete", route
            assert saved["content"] == "One moment.", route
            assert [call["args"] for call in saved["toolsToUse"]] == [OSLO["args"]], route


@EACH
def test_structured_output_on_every_provider(
    client, fake: FakeUpstream, only: Any, case: ProviderCase
) -> None:
    only(case)
    fake.push(Script(json={"answer": "Oslo"}))
    response = ask(client, emissaryConfig={"responseSchema": ANSWER_SCHEMA})
    final = sse_events(response.get_data())[-2]
    assert final["metadata"]["structured_output"] == {"answer": "Oslo"}
    assert json.dumps(ANSWER_SCHEMA["properties"]) in json.dumps(fake.requests[-1].body)


NOTE_SCHEMA = {
    "type": "object",
    "properties": {"note": {"type": "string"}, "n": {"type": "integer"}},
    "required": ["note", "n"],
}


@EACH
@pytest.mark.parametrize("note", ["<think>x</think> kept", "Wrap it in <think> tags"])
def test_a_thinking_tag_inside_the_json_answer_is_its_text(
    client, fake: FakeUpstream, firestore, only: Any, case: ProviderCase, note: str
) -> None:
    """The JSON's strings are the answer's text: a value holding a tag pair lost it and
    still matched (other data, silently), one holding an open tag took the rest of the
    reply for thinking (not JSON). Saved as the model wrote it too."""
    only(case)
    fake.push(Script(json={"note": note, "n": 1}))
    config = {"responseSchema": NOTE_SCHEMA}
    response = ask(client, emissaryConfig=config, trace_id="t-tag-in-json", save_to_history=True)
    metadata = sse_events(response.get_data())[-2]["metadata"]
    assert metadata["structured_output"] == {"note": note, "n": 1}
    assert "structured_output_error" not in metadata and metadata["thinking_content"] == ""
    saved = firestore.document("assistants/test-assistant/messages/t-tag-in-json-assistant").get()
    assert saved.get("structuredOutput") == {"note": note, "n": 1}
    assert json.loads(saved.get("content")) == {"note": note, "n": 1}
    assert saved.get("thinkingContent") == ""


@EACH
def test_arguments_holding_nan_still_give_json_a_browser_reads(
    client, fake: FakeUpstream, only: Any, case: ProviderCase
) -> None:
    only(case)
    fake.push(Script(tokens=[], tool_calls=[{"name": "weather", "args": {"t": float("nan")}}]))
    response = client.post(  # both routes: every frame, and the JSON answer, parsed strictly
        "/vac/assistant/test-assistant", json={"user_input": "hi", "emissaryConfig": TOOL_CONFIG}
    )
    fake.push(Script(tokens=[], tool_calls=[{"name": "weather", "args": {"t": float("nan")}}]))
    streamed = ask(client, emissaryConfig=TOOL_CONFIG)
    for call in (
        strict_json(response.get_data())["metadata"]["tools_to_use"][0],
        sse_events(streamed.get_data())[-2]["metadata"]["tools_to_use"][0],
    ):
        # Streamed argument text is parsed strictly (a call with args_error); arguments
        # that came parsed inside the event keep the call, NaN written as null.
        assert (call["args"], "args_error" in call) in ((None, True), ({"t": None}, False))
    response.close()  # the test client closes nothing: its reply's slot stayed taken


@EACH
def test_tools_and_a_schema_together(
    client, fake: FakeUpstream, only: Any, case: ProviderCase
) -> None:
    only(case)
    fake.push(Script(json={"answer": "Oslo"}))
    config = {**TOOL_CONFIG, "responseSchema": ANSWER_SCHEMA}
    response = ask(client, emissaryConfig=config)
    metadata = sse_events(response.get_data())[-2]["metadata"]
    sent = json.dumps(fake.requests[-1].body)
    assert '"weather"' in sent
    # The reply is checked either way (a tool loop's answer after the results, say).
    assert metadata["structured_output"] == {"answer": "Oslo"}
    if case.provider_class.schema_with_tools:
        assert "structured_output_error" not in metadata
        assert json.dumps(ANSWER_SCHEMA["properties"]) in sent
    else:  # and it says the provider was not held to the schema
        assert "cannot take tools and a response schema" in metadata["structured_output_error"]
        assert json.dumps(ANSWER_SCHEMA["properties"]) not in sent
    fake.push(Script(text="Oslo, I think."))
    metadata = sse_events(ask(client, emissaryConfig=config).get_data())[-2]["metadata"]
    assert metadata["structured_output"] is None
    assert "not valid JSON" in metadata["structured_output_error"]


@EACH
def test_a_schema_with_tools_that_may_not_be_called_is_structured_on_every_provider(
    client, fake: FakeUpstream, only: Any, case: ProviderCase
) -> None:
    """toolChoice "none": a provider that takes no schema beside tools (Gemini, Ollama)
    leaves the tools out, so that the schema goes."""
    only(case)
    fake.push(Script(json={"answer": "Oslo"}))
    config = {**TOOL_CONFIG, "toolChoice": "none", "responseSchema": ANSWER_SCHEMA}
    response = ask(client, emissaryConfig=config)
    metadata = sse_events(response.get_data())[-2]["metadata"]
    assert metadata["structured_output"] == {"answer": "Oslo"}
    assert "structured_output_error" not in metadata
    assert json.dumps(ANSWER_SCHEMA["properties"]) in json.dumps(fake.requests[-1].body)


@EACH
def test_a_lone_surrogate_in_the_models_json_is_a_replacement_character(
    client, fake: FakeUpstream, firestore, only: Any, case: ProviderCase
) -> None:
    """The model writes a `\\ud800` escape inside its own JSON (a call's arguments, a
    structured reply): parsed, it would be a character no frame or document can hold.
    It becomes U+FFFD, and the reply ends and is saved as usual."""
    only(case)
    fake.push(Script(tokens=[], tool_calls=[{"name": "weather", "arguments": LONE_CITY}]))
    called = sse_events(ask(client, emissaryConfig=TOOL_CONFIG, trace_id="lone-1").get_data())
    assert called[-2]["metadata"]["tools_to_use"][0]["args"] == {"city": "Os\ufffdlo"}
    fake.push(Script(tokens=['{"answer": "Os\\ud800lo"}']))
    config = {"responseSchema": ANSWER_SCHEMA}
    answered = ask(client, emissaryConfig=config, trace_id="lone-2", save_to_history=True)
    events = sse_events(answered.get_data())
    assert events[-2]["metadata"]["structured_output"] == {"answer": "Os\ufffdlo"}
    assert events[-1] == "[DONE]"
    messages = firestore.collection("assistants").document("test-assistant").collection("messages")
    saved = messages.document("lone-2-assistant").get().to_dict()
    assert saved["structuredOutput"] == {"answer": "Os\ufffdlo"}


@EACH
@pytest.mark.parametrize(
    "made_up, reported",
    [("web.search", "made_up_web_search"), ("n" * 70, "made_up_" + "n" * 56), ("", "made_up_")],
)
def test_a_made_up_tool_name_is_reported_as_one_that_can_be_sent_back(
    client, fake: FakeUpstream, only: Any, case: ProviderCase, made_up: str, reported: str
) -> None:
    """Every offered name is a valid one, but a model can call a tool nobody offered, with
    a name no provider takes back ("web.search", one too long, none). Reported as is, the
    frontend's answer to it (a tool result saying there is no such tool) would be refused."""
    only(case)
    fake.push(Script(tokens=[], tool_calls=[{"name": made_up, "args": {"q": "x"}}]))
    events = sse_events(ask(client, emissaryConfig=TOOL_CONFIG).get_data())
    [call] = events[-2]["metadata"]["tools_to_use"]
    assert call["name"] == reported
    history = [
        {"role": "user", "content": "Search, please."},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "no such tool"},
    ]
    fake.push(Script(text="Sorry, I cannot search."))
    answer = ask(client, "And?", chat_history=history, emissaryConfig=TOOL_CONFIG)
    assert answer.status_code == 200
    assert sse_events(answer.get_data())[-2]["answer"] == "Sorry, I cannot search."
    assert reported in json.dumps(fake.requests[-1].body)
