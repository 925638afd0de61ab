"""What every provider must do, tested once and parametrised over the four of them.

Each scenario runs for Anthropic, OpenAI, Gemini and Ollama, each in its own wire
format, against devtools.fake_upstream on loopback; what differs between them
(paths, headers, bodies, stop-reason tables, usage figures, recorded streams) is
data, in tests/provider_cases.py. Four layers:
- recorded streams (tests/fixtures/<provider>/) replayed byte for byte through the
  fake's `raw` script, split at awkward places, into the provider's `stream`;
- the fake's scripts: what the provider sends, statuses, stop reasons, thinking,
  every `fail` and every `fail_mode` after every number of pieces;
- the provider inside `assistant.chain.Chain` on the app's I/O loop, where the
  connect / first-chunk / idle timeouts and the fall-through rules live;
- the whole endpoint: one fake serves every format (each on its own path), so the
  chain falls through real Anthropic, OpenAI, Gemini and Ollama streams in one
  request.
A provider's own quirks stay in its file (test_anthropic.py, test_openai.py, ...).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import gzip
import html
import json
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from assistant import chain as chain_module
from assistant.chain import ChainFailed, ChainSucceeded, Chunk
from assistant.config import ProviderSettings, Timeouts
from assistant.providers import anthropic, echoes, error_text, openai, sse_decoder
from assistant.providers.base import (
    Event,
    Prompt,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    Usage,
    normalised_stop_reason,
    upstream_json,
)
from assistant.providers.error_text import without_prompt
from assistant.request import Turn, build_request
from assistant.thinking import ThinkingSplitter
from assistant.tools import ToolCall, ToolSpec
from devtools.fake_upstream import FAIL_MODES, FAILS, FakeUpstream, Script

from .conftest import ask, sse_events
from .provider_cases import CASES, GEMINI, OLLAMA, REQUEST_PROMPT, ProviderCase, texts, thoughts
from .provider_support import (
    FAIL_CODES,
    FAIL_MODE_CODES,
    FAKE_MODEL,
    anthropic_at,
    anthropic_event,
    one_byte_reads,
    run_chain,
    stream_events,
)
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture
from .raw_http import one_answer

# Every scenario marked with this runs once per provider.
EACH = pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)

# The fixed sentences a ProviderError shows; what the upstream said goes to `detail`.
SAFE_MESSAGES = {
    "upstream_status": "The model provider refused the request.",
    "upstream_error": "The model provider reported an error.",
    "upstream_incomplete": "The model provider's reply was cut off.",
    "upstream_refused": "The model declined to answer this request.",
}
AUTH_HEADERS = {"authorization", "x-api-key", "x-goog-api-key"}
HI_PROMPT = Prompt(system=None, turns=(Turn("user", "hi"),))


def per_case(rows: Callable[[ProviderCase], Iterable[tuple[Any, ...]]]) -> list[Any]:
    """pytest params (case, *row) for each provider's rows, with ids "<provider>-<row[0]>"."""
    return [
        pytest.param(case, *row, id=f"{case.name}-{row[0]}") for case in CASES for row in rows(case)
    ]


async def read_error_body(
    response: httpx.Response, headers: Mapping[str, str], prompt: Prompt | None = None
) -> str:
    """The start of an error body as a provider's failure says it (`HttpProvider._post`)."""
    body = await error_text.error_bytes(response)
    return error_text.error_text(body, response, headers, prompt)


def fallback(url: str) -> Any:
    """The provider a chain falls through to: an Anthropic one named "fallback"."""
    return anthropic_at(url, "fallback")


# -- a. recorded streams ------------------------------------------------------------------


@EACH
def test_every_fixture_has_an_expectation(case: ProviderCase) -> None:
    # Here, or for the tool-call streams (tool_*) in test_<provider>_tools.py.
    names = {path.name for path in case.fixtures.iterdir()}
    tools_tests = (Path(__file__).parent / f"test_{case.name}_tools.py").read_text()
    own = {name for name in names - set(case.replays) if name in tools_tests}
    assert sorted(names - own) == sorted(case.replays)
    assert all(name.startswith("tool_") for name in own)


@pytest.mark.parametrize("case, name", per_case(lambda case: ((n,) for n in case.replays)))
def test_fixture_replay(upstream: FakeUpstream, case: ProviderCase, name: str) -> None:
    data = case.fixture(name)
    chunks = case.awkward_chunks(data)
    assert b"".join(chunks) == data and len(chunks) >= 4
    upstream.push(Script(raw=chunks, interval=0.01))  # a pause so each piece is its own read

    events, error = case.events(upstream.url)

    expected = case.replays[name]
    assert events == expected.events
    assert (error.code if error else None) == expected.code
    if error is not None:
        assert error.status == expected.status
        assert error.message == SAFE_MESSAGES[error.code]
        for leak in case.leaks:
            assert leak not in error.message
    assert upstream.requests[0].path == case.request_path()


@pytest.mark.parametrize("case, name", per_case(lambda case: ((n,) for n in case.one_byte)))
def test_fixture_replay_one_byte_per_http_chunk(
    upstream: FakeUpstream, case: ProviderCase, name: str
) -> None:
    upstream.push(Script(raw=one_byte_reads(case.fixture(name))))
    events, error = case.events(upstream.url)
    assert events == case.replays[name].events
    assert (error.code if error else None) == case.replays[name].code


def successful_replays(case: ProviderCase) -> Iterable[tuple[str]]:
    return ((name,) for name, replay in case.replays.items() if replay.code is None)


@pytest.mark.parametrize("case, name", per_case(lambda case: list(successful_replays(case))[:1]))
def test_a_last_event_the_body_ends_without_a_line_end_still_counts(
    upstream: FakeUpstream, case: ProviderCase, name: str
) -> None:
    """A gateway may close a stream right after its last field (`data: [DONE]`, no blank
    line): the spec drops such an event, and a whole answer ended as an incomplete one."""
    upstream.push(Script(raw=[case.fixture(name).rstrip(b"\r\n")]))
    events, error = case.events(upstream.url)
    assert (events, error) == (case.replays[name].events, None)


@pytest.mark.parametrize("case, name", per_case(lambda case: list(successful_replays(case))[:1]))
def test_a_last_event_the_body_ends_inside_is_incomplete(
    upstream: FakeUpstream, case: ProviderCase, name: str
) -> None:
    upstream.push(Script(raw=[case.fixture(name).rstrip(b"\r\n")[:-5]]))
    _, error = case.events(upstream.url)
    assert error is not None and error.code == "upstream_incomplete"


@pytest.mark.parametrize("case, name", per_case(successful_replays))
def test_every_recorded_reply_through_the_chain(
    upstream: FakeUpstream, case: ProviderCase, name: str
) -> None:
    # The chain wraps native thinking in tags and takes the model, usage and stop reason
    # from the provider's StreamEnd.
    *deltas, end = case.replays[name].events
    assert isinstance(end, StreamEnd)
    thinking = "".join(e.text for e in deltas if isinstance(e, ThinkingDelta))
    text = "".join(e.text for e in deltas if isinstance(e, TextDelta))
    upstream.push(Script(raw=case.awkward_chunks(case.fixture(name)), interval=0.01))
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == (f"<thinking>{thinking}</thinking>" if thinking else "") + text
    # `model` is the one asked for; `model_version` the one the provider said answered.
    assert (run.chain.model, run.chain.model_version) == (case.model, end.model)
    assert run.chain.stop_reason == end.stop_reason
    assert run.chain.usage == end.usage


@EACH
def test_each_call_handed_on_has_an_id_of_its_own(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """Two calls of one answer with the same id (any upstream may repeat one): the
    frontend answers calls by id and could not tell them apart, and the second was
    dropped on its way back. The second gets an id made up."""
    same = [{"name": "weather", "args": {"city": city}, "id": "call_same"}
            for city in ("Oslo", "Bergen")]  # fmt: skip
    upstream.push(Script(tool_calls=same))
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    calls = [item for item in run.items if isinstance(item, ToolCall)]
    assert [call.args for call in calls] == [{"city": "Oslo"}, {"city": "Bergen"}]
    assert len({call.id for call in calls}) == 2 and all(call.id for call in calls)


# -- b. the request, statuses and scripted streams ----------------------------------------


@EACH
def test_the_request_carries_the_prompt_and_the_settings(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    events, error = case.events(
        upstream.url, REQUEST_PROMPT, model="model-x", max_tokens=777, temperature=0.3
    )
    assert error is None and isinstance(events[-1], StreamEnd)

    (request,) = upstream.requests
    assert request.path == case.request_path("model-x")
    assert request.model == "model-x"
    assert {name: request.headers.get(name) for name in case.headers} == case.headers
    assert AUTH_HEADERS & set(request.headers) == AUTH_HEADERS & set(case.headers)
    assert request.headers["content-type"] == "application/json"
    assert request.body == case.request_body


@EACH
def test_an_integer_past_64_bits_in_a_tool_schema_is_sent_as_given(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """The body is encoded with orjson, which refuses such integers: `json` sends it."""
    huge = 10**30
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": huge}}}
    prompt = dataclasses.replace(HI_PROMPT, tools=(ToolSpec("count", "Counts.", schema),))
    events, error = case.events(upstream.url, prompt)
    assert error is None and isinstance(events[-1], StreamEnd)
    assert str(huge) in json.dumps(upstream.requests[0].body)


@EACH
@pytest.mark.parametrize("system", [None, ""], ids=["none", "empty"])
def test_no_system_prompt_and_no_optional_fields_by_default(
    upstream: FakeUpstream, case: ProviderCase, system: str | None
) -> None:
    case.events(upstream.url, dataclasses.replace(HI_PROMPT, system=system))
    assert upstream.requests[0].body == case.default_body


@EACH
def test_a_zero_temperature_is_sent(upstream: FakeUpstream, case: ProviderCase) -> None:
    case.events(upstream.url, HI_PROMPT, temperature=0.0)
    assert upstream.requests[0].body == {**case.default_body, **case.zero_temperature}


@EACH
def test_thinking_settings_from_the_environment(upstream: FakeUpstream, case: ProviderCase) -> None:
    values = {
        "BASE_URL": f"{upstream.url}{case.base_path}/",  # the trailing slash is dropped
        "MODEL": "model-y",
        "MAX_TOKENS": "8000",
        "TEMPERATURE": "0",
        "THINKING": "true",
        "THINKING_BUDGET": "3000",
    }
    env = {f"{case.name.upper()}_{name}": value for name, value in values.items()}
    settings = ProviderSettings.from_env(env, case.name)
    events, error = stream_events(case.provider_class, settings, HI_PROMPT, case.key)
    assert error is None and events

    (request,) = upstream.requests
    assert request.path == case.request_path("model-y")
    assert request.body == {**case.default_body, **case.thinking}


@EACH
def test_the_last_user_turn_reaches_the_upstream(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    upstream.push(Script(echo=True))
    prompt = Prompt(system="s", turns=(Turn("user", "one"), Turn("user", "two")))
    events, error = case.events(upstream.url, prompt)
    assert error is None
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "You said: one\n\ntwo"


@pytest.mark.parametrize("case, status", per_case(lambda case: ((s,) for s in case.statuses)))
def test_error_status(upstream: FakeUpstream, case: ProviderCase, status: int) -> None:
    upstream.push(Script(fail=str(status)))
    events, error = case.events(upstream.url)
    assert events == []
    assert error is not None
    assert error.code == "upstream_status"
    assert error.status == status
    assert error.message == SAFE_MESSAGES["upstream_status"]
    assert "fake upstream failure" not in error.message
    assert f"fake upstream failure {status}" in error.detail  # kept for the log only


@pytest.mark.parametrize("case", [case for case in CASES if case.key], ids=lambda case: case.name)
def test_an_error_body_echoing_the_key_is_logged_without_it(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    echo = {"error": {"message": f"Incorrect API key provided: {case.key}.", "type": "auth"}}
    upstream.push(Script(fail="401", error_body=echo))
    _, error = case.events(upstream.url)
    assert error is not None and error.status == 401
    assert case.key not in error.detail
    assert "Incorrect API key provided: [redacted]." in error.detail  # the rest is kept


@EACH
def test_an_error_body_echoing_the_prompt_is_logged_without_it(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """OpenAI-compatible servers (vLLM, LiteLLM...) quote the request they refuse in a
    422: the prompt stays out of the log, whole or cut short, as JSON writes it too."""
    question = 'my secret medical question, in full: ünïcode and "quotes"'
    system = "Confidential instructions: " + "x" * 3000  # cut short by our read
    prompt = Prompt(system=system, turns=(Turn("user", "Hi there"), Turn("user", question)))
    echo = {
        "detail": [{"type": "missing", "loc": ["body", "model"], "msg": "Field required"}],
        "input": {
            "messages": [
                {"role": "user", "content": "Hi there"},
                {"role": "user", "content": question},
            ],
            "system": system,
        },
    }
    upstream.push(Script(fail="422", error_body=echo))
    _, error = case.events(upstream.url, prompt)
    assert error is not None and error.status == 422
    assert "Field required" in error.detail  # the rest is kept
    for said in ("secret medical", "Confidential", "xxxxxxxx", "Hi there"):
        assert said not in error.detail
    assert "[prompt]" in error.detail


@EACH
def test_an_error_body_echoing_the_declarations_is_logged_without_their_texts(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """A gateway that refuses a tool quotes its declaration: the tool's description and
    the words in the schemas (a description may hold what the prompt does) stay out of
    the log as the prompt does; what they are built of (a format, a $ref) is what such
    a refusal names, and stays."""
    tool = ToolSpec(
        "lookup_salary",
        "Look up the salary of employee Jane Doe",
        {
            "type": "object",
            "properties": {
                "ssn": {"type": "string", "description": "SSN 123-45-6789"},
                "when": {"type": "string", "format": "date-time"},
            },
        },
    )
    note = {"type": "string", "$comment": "ask for the PIN first", "example": "Acme Corp payroll",
            "x-hint": "VIP client list"}  # fmt: skip
    schema = {"type": "object", "description": "Patient record for John Smith",
              "properties": {"kind": {"enum": ["confidential"]}, "note": note}}  # fmt: skip
    prompt = Prompt(None, (Turn("user", "Hi there"),), tools=(tool,), response_schema=schema)
    echo = {
        "error": "invalid tool definition: 'format' value 'date-time' is not supported",
        "tools": [dataclasses.asdict(tool)],
        "format": schema,
    }
    upstream.push(Script(fail="400", error_body=echo))
    _, error = case.events(upstream.url, prompt)
    assert error is not None and error.status == 400
    assert "'format' value 'date-time' is not supported" in error.detail  # the rest is kept
    for said in ("Jane Doe", "123-45-6789", "John Smith", "confidential", "the PIN",
                 "Acme Corp", "VIP client"):  # fmt: skip
        assert said not in error.detail


def test_a_prompt_in_a_python_errors_text_is_logged_without_it_too() -> None:
    """vLLM answers a 422 with the text of Python's validation error in its JSON: the
    prompt there is as repr() writes it, then escaped again as JSON."""
    question = 'Here\'s my question:\n\twhat "dose" of warfarin is safe for me?'
    error = [{"type": "missing", "loc": ("body", "model"), "input": {"content": question}}]
    body = json.dumps({"object": "error", "message": str(error)}).encode()
    prompt = Prompt(system=None, turns=(Turn("user", question),))
    detail = asyncio.run(read_error_body(httpx.Response(422, content=body), {}, prompt))
    assert "warfarin" not in detail and "my question" not in detail
    assert "[prompt]" in detail and "missing" in detail


def test_the_arguments_of_the_historys_calls_are_logged_without_them_too() -> None:
    """A call's arguments are the user's data as much as a tool's result: echoed as the
    JSON string OpenAI sends, escaped again, or as a Python dict, they stayed in the log."""
    args = {"q": "ARGMARKER long enough value", "n": 3}
    call = ToolCall("c1", "lookup", args)
    turns = (Turn("user", "look it up"), Turn("assistant", "", tool_calls=(call,)))
    prompt = Prompt(system=None, turns=turns)
    echoes = [
        json.dumps({"input": {"function": {"arguments": json.dumps(args)}}}),
        json.dumps({"message": f"messages.1.content.0.tool_use.input: {args!r} bad"}),
    ]
    for echo in echoes:
        response = httpx.Response(422, content=echo.encode())
        detail = asyncio.run(read_error_body(response, {}, prompt))
        assert "ARGMARKER" not in detail and "[prompt]" in detail, detail
    # Values too short to be texts of their own, echoed as the call's whole arguments.
    short = {"acct": "12345", "pin": "9876", "n": 4242424242}
    turns = (Turn("user", "look"), Turn("assistant", "", tool_calls=(ToolCall("c", "t", short),)))
    for echo in (f"invalid: {json.dumps(short)} rejected", f"invalid: {short!r} rejected"):
        assert without_prompt(echo, Prompt(None, turns)) == "invalid: [prompt] rejected"


def test_what_a_calls_signature_carries_back_is_logged_without_it() -> None:
    """The thinking (Anthropic) or reasoning (DeepSeek) a call carries back goes with the
    request: quoted in a refusal, it was logged (a reviewer's)."""
    said = "The user Ada Lovelace lives at 12 Analytical Engine Street"
    blocks = [{"type": "thinking", "thinking": said, "signature": "c2ln"}]
    for signature in (
        openai._carrying(ToolCall("c1", "t", {}), said).signature,
        anthropic.encode_thinking(blocks),
    ):
        call = ToolCall("c1", "t", {}, signature=signature)
        turns = (Turn("user", "hi"), Turn("assistant", "", tool_calls=(call,)))
        echo = json.dumps({"detail": [{"input": said, "msg": "bad"}]})
        assert said not in without_prompt(echo, Prompt(None, turns))
        # Its words, not its structure: the blocks' types stay (Anthropic names them).
        refusal = "Expected `thinking` or `redacted_thinking`, but found `text`"
        assert without_prompt(refusal, Prompt(None, turns)) == refusal


@pytest.mark.parametrize(
    "echo",
    [
        lambda body: "invalid request: " + body,  # the body as it was sent
        lambda body: json.dumps({"detail": "invalid request body: " + body}),  # quoted in JSON
    ],
    ids=["as-sent", "quoted"],
)
@EACH
def test_a_calls_arguments_echoed_as_the_body_sent_them_are_taken_out(
    case: ProviderCase, echo: Callable[[str], str]
) -> None:
    """The whole arguments were looked for only as JSON with ASCII escapes writes them:
    the body (orjson) and OpenAI's `arguments` keep `ü` as it is, and an echo of a call
    to a Zürich clinic kept its PIN in the log."""
    call = ToolCall("call_1", "find_clinic", {"city": "Zürich", "pin": 48213377, "tol": 1e-7})
    prompt = Prompt(None, (
        Turn("user", "find me a clinic"),
        Turn("assistant", "", tool_calls=(call,)),
        Turn("tool", "ok", tool_call_id="call_1", tool_name="find_clinic"),
        Turn("user", "thanks, and the next one?"),
    ))  # fmt: skip
    provider = case.provider_class(case.settings("http://127.0.0.1:9"), case.key)
    body = upstream_json(provider._request(prompt)[1]).decode()
    detail = asyncio.run(
        read_error_body(httpx.Response(422, content=echo(body).encode()), {}, prompt)
    )
    assert "48213377" not in detail


def test_only_the_kept_start_of_an_error_body_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first read can hold a MB: scrubbed whole against a long history's texts, it held
    the I/O loop (every stream) 6.4 s a failure; only what is kept is looked at."""
    scrubbed: list[int] = []
    scrub = error_text.without_prompt
    monkeypatch.setattr(
        error_text,
        "without_prompt",
        lambda text, prompt, *work: scrubbed.append(len(text)) or scrub(text, prompt, *work),
    )
    response = httpx.Response(400, content=b"<pre>" + b" " * 1_000_000 + b"</pre>")
    detail = asyncio.run(read_error_body(response, {}, REQUEST_PROMPT))
    assert scrubbed and max(scrubbed) <= error_text.ERROR_BODY_BYTES + 512
    assert detail == ("<pre>" + " " * 1_000_000)[: error_text.ERROR_BODY_BYTES]


def test_a_calls_arguments_echoed_with_their_keys_sorted_are_taken_out() -> None:
    """A server that reads them into a map writes them back sorted (Go's): short values
    were left in the log."""
    call = ToolCall("call_1", "pay", {"pin": "4711", "iban": "DE89"})
    prompt = Prompt(None, (Turn("user", "pay it"), Turn("assistant", "", tool_calls=(call,))))
    echo = json.dumps({"error": "bad arguments: " + json.dumps(call.args, sort_keys=True)})
    detail = asyncio.run(read_error_body(httpx.Response(422, content=echo.encode()), {}, prompt))
    assert "4711" not in detail and "DE89" not in detail


def test_an_echo_cut_inside_its_escaped_start_is_taken_out_too() -> None:
    # Escaped as JSON with ensure_ascii, the text's first 24 characters are 6 times as
    # long: an echo cut among them was left whole by a look for the escaped start.
    said = "私の口座番号は1234-5678-9012です。" * 3
    detail = '{"input":"' + json.dumps(said)[1:-1][:60]
    assert without_prompt(detail, Prompt(None, (Turn("user", said),))) == '{"input":"[prompt]'


def _go_json(text: str) -> str:
    """`text` as Go's encoding/json writes a string (Ollama's server is Go): & < > as
    \\u0026 \\u003c \\u003e."""
    escaped = json.dumps(text, ensure_ascii=False)
    return escaped.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


SECRET = 'Tom & Jerry <admin>: "my password" is hunter2, é/ü'


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(f'{{"error":{_go_json(SECRET)}}}', id="go-json"),
        pytest.param(json.dumps({"message": json.dumps({"content": SECRET})}), id="json-twice"),
        pytest.param(json.dumps(SECRET).replace("\\u00e9", "\\u00E9"), id="upper-hex"),
        pytest.param(json.dumps(SECRET).replace("/", "\\/"), id="escaped-slash"),
        # Cut by our own reading 22 characters into it (Ollama's error line is cut at 200).
        pytest.param("template error near: " + SECRET[:22], id="cut-at-the-end"),
        # A proxy's error page, and a form or a header (reviewers: logged whole).
        pytest.param(f"<pre>{html.escape(json.dumps({'content': SECRET}))}</pre>", id="html"),
        pytest.param("body=" + urllib.parse.quote_plus(SECRET), id="url-form"),
        pytest.param("ctype: x;q=" + urllib.parse.quote(SECRET), id="url-percent"),
        pytest.param(SECRET + " / " + urllib.parse.quote(SECRET), id="raw-and-url"),
    ],
)
def test_an_echo_escaped_by_any_encoder_is_taken_out(echo: str) -> None:
    """Only Python's encoders were known: Go's escapes, a body quoted in JSON twice, or a
    cut within the first 24 characters left the password in the log."""
    detail = without_prompt(echo, Prompt(None, (Turn("user", SECRET),)))
    assert "hunter2" not in detail and "Jerry" not in detail and "[prompt]" in detail


def asked(*texts: str) -> Prompt:
    """A prompt of `texts`, each a user turn."""
    return Prompt(None, tuple(Turn("user", text) for text in texts))


LONG_SAID = (
    "\n  My bank password is hunter2 and my diagnosis is diabetes.\n"
    "Next line: my doctor, Dr. Jane Roe, says the dose is 40 units a day, "
    "and my insurance number is 8841-2290-1177; please write to her for me. "
) * 3


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param("invalid input: " + LONG_SAID.strip(), id="stripped"),
        pytest.param("invalid input: " + " ".join(LONG_SAID.split()), id="whitespace-collapsed"),
        pytest.param("bad: " + LONG_SAID.replace(" ", "\r\n"), id="spaces-as-crlf"),
        pytest.param("context too long, input ends with: " + LONG_SAID[-300:], id="tail"),
        pytest.param("bad token near: " + LONG_SAID[150:450], id="window"),
        pytest.param("bad: " + LONG_SAID[9:], id="first-chars-skipped"),
        pytest.param("INVALID INPUT: " + LONG_SAID.upper(), id="upper-cased"),
    ],
)
def test_an_echo_that_does_not_begin_as_the_text_is_taken_out(echo: str) -> None:
    """Only a text's first characters were looked for: an echo stripped, with its
    whitespace changed, of its tail or a window, or upper-cased, was logged whole (a
    reviewer's, in each provider's error body and stream error)."""
    detail = without_prompt(echo, Prompt(None, (Turn("user", LONG_SAID),)))
    for said in ("hunter2", "diabetes", "jane roe", "8841-2290", "40 units"):
        assert said not in detail.lower(), detail
    assert "[prompt]" in detail


@pytest.mark.parametrize(
    ("said", "echo"),
    [
        # A dotted capital I anywhere (its lower case is two characters) left the whole
        # echo's case as it was: a capitalised echo was then no run of the prompt.
        pytest.param(
            "My SSN Is 123-45-6789, Please Help Me File My Taxes",
            "\u0130stek ge\u00e7ersiz: My SSN Is 123-45-6789, Please Help Me File My Taxes",
            id="dotted-capital-i",
        ),
        # Upper-cased, \u00df is SS: the run stopped at each.
        pytest.param(
            "Ich wohne in der Gro\u00dfe Stra\u00dfe 5, Gie\u00dfen, mein Arzt ist M\u00fcller",
            "FEHLER: ICH WOHNE IN DER GROSSE STRASSE 5, GIESSEN, MEIN ARZT IST M\u00dcLLER",
            id="sharp-s-upper-cased",
        ),
    ],
)
def test_an_echo_in_another_case_is_found_whatever_its_letters(said: str, echo: str) -> None:
    """A reviewer's."""
    detail = without_prompt(echo, Prompt(None, (Turn("user", said),)))
    assert "[prompt]" in detail
    assert all(word not in detail for word in ("6789", "STRASSE", "GIESS")), detail


def test_texts_alike_but_for_their_ends_are_each_found_whole() -> None:
    """A piece is kept for a few texts only: the oldest of six alike were found as a run
    of a newer one, their last characters left (`[prompt]0.`), or not at all (a
    reviewer's six numbers dialled in a history)."""
    accounts = Prompt(
        None, tuple(Turn("user", f"my account is ACCT-1001{n:02d}") for n in range(6))
    )
    for n in range(6):
        assert without_prompt(f"bad: my account is ACCT-1001{n:02d}.", accounts) == "bad: [prompt]."
    calls = tuple(
        Turn(
            "assistant",
            "",
            tool_calls=(ToolCall(f"c{n}", "dial", {"phone": f"+1 (555) 123-45{n}"}),),
        )
        for n in range(10, 16)
    )
    dialled = Prompt(None, (Turn("user", "call them"), *calls))
    for n in range(10, 16):
        echo = f"invalid number +1 (555) 123-45{n} for dial"
        assert without_prompt(echo, dialled) == "invalid number [prompt] for dial"


def test_a_json_quoted_text_of_many_lines_is_taken_out_whole() -> None:
    """Its long lines were scrubbed as they stood, escaped; read back, the short lines
    between them were no whole text any more (a reviewer's form: its SSN logged)."""
    form = (
        "Patient: Jane Roe\nNotes from the first visit, all confidential here\n"
        "SSN 123-45-6789\nReferred by the cardiology department last week\nDOB 1975-03-09"
    )
    body = json.dumps({"error": {"message": "invalid input", "input": form}}).encode()
    detail = asyncio.run(read_error_body(httpx.Response(422, content=body), {}, asked(form)))
    assert "6789" not in detail and "Jane" not in detail and "1975" not in detail, detail


def test_the_tail_of_a_text_among_others_alike_is_taken_out() -> None:
    """A run of a text alike ran a character into this one's own piece, which was then
    skipped: a card's digits and a PIN were logged (a reviewer)."""
    names = ["Alice", "Bobby", "Carol", "Dave_", "Erin_", "Frank"]
    texts = [
        f"Customer {name} - account status: verified, card on file ends in {4000 + n} pin "
        f"{700000 + n}"
        for n, name in enumerate(names)
    ]
    for text in texts:
        echo = json.dumps({"detail": "value too long: ..." + text[-50:]})
        detail = without_prompt(echo, asked(*texts))
        assert str(text[-6:]) not in detail and "[prompt]" in detail, detail


def test_a_turkish_text_upper_cased_is_taken_out() -> None:
    """Upper-cased, a dotless i is I, which folds to i, where the dotless i folds to
    itself: the run stopped at each (a reviewer)."""
    said = (
        "\u0130stanbul'daki m\u00fc\u015fterimiz Ay\u015fe Y\u0131lmaz, "
        "kart numaras\u0131 4111 1111"
    )
    detail = without_prompt(f'{{"error":"VALIDATION FAILED: {said.upper()}"}}', asked(said))
    assert "4111" not in detail and "LMAZ" not in detail and "[prompt]" in detail, detail


def test_a_utf8_body_cut_within_a_character_is_read_as_utf8() -> None:
    """Our cut split an `\u00ea`: the body was no UTF-8, and was logged in Windows-1252's
    letters (a reviewer's `Param\u00c3\u00a8tre`)."""
    cut = error_text.ERROR_BODY_BYTES + 512
    head = "\u00e9" * ((cut - 1) // 2) + "x" * ((cut - 1) % 2)  # a byte short of the cut
    body = (head + "\u00ea Param\u00e8tre non valide" * 20).encode()
    detail = asyncio.run(read_error_body(httpx.Response(400, content=body), {}))
    assert "\u00c3" not in detail


def test_a_large_calls_arguments_are_not_written_whole_to_be_looked_for() -> None:
    """A 900 KB argument, written seven ways, took 100 ms to index on the I/O loop: none
    of an error body's 2 KB holds it whole, and its texts are looked for apart."""
    assert error_text._whole_forms({"doc": "x" * 900_000}) == []
    assert len(error_text._whole_forms({"pin": "4711"})) == 7


def test_an_echo_found_is_kept_at_the_depth_it_was_found() -> None:
    """Read back further for nothing, a prompt's own `\\t` became a tab, and its echo
    HTML-escaped later (a WAF's page) no longer matched: its card number was logged; an
    error's own Windows path was mangled the same way (a reviewer)."""
    said = (
        'Parse this JSON for me please, it holds my data: {"name": "Alice\\tJohnson", '
        '"card": "4111\\t1111\\t1111\\t1111", "pin": "4321"}'
    )
    detail = without_prompt("<p>Blocked by WAF: " + html.escape(said) + "</p>", asked(said))
    assert "4111" not in detail and "Alice" not in detail and "4321" not in detail, detail
    question = "Summarise this meeting transcript for the board, keep names out please"
    own = "open C:\\Users\\admin\\.ollama\\models\\blobs\\sha256-8eeb52df: not found"
    detail = without_prompt(json.dumps({"error": own, "input": question}), asked(question))
    assert "[prompt]" in detail and "admin\\\\.ollama" in detail, detail


def test_a_short_text_inside_a_word_of_the_error_stays() -> None:
    """A turn "continue" made an error's "discontinued" `dis[prompt]d` (a reviewer); a
    phrase, or a text in a script with no spaces between words, is found all the same
    (a first version left a short Chinese text in a Chinese error whole)."""
    detail = without_prompt("the model has been discontinued", asked("continue"))
    assert detail == "the model has been discontinued"
    assert without_prompt("bad: continue.", asked("continue")) == "bad: [prompt]."
    said = "\u6211\u7684\u5bc6\u7801\u662f\u4e00\u4e8c\u4e09\u56db\u4e94\u516d"
    error = "\u8bf7\u6c42\u65e0\u6548\uff1a" + said + "\u5305\u542b"
    assert without_prompt(error, asked(said)) == error.replace(said, "[prompt]")
    assert without_prompt("USERmy pin is 4711ASSISTANT", asked("my pin is 4711")) == (
        "USER[prompt]ASSISTANT"
    )


def test_a_calls_short_values_echoed_whole_are_taken_out() -> None:
    """Written whole only under 1 KB, a call of many short values was echoed whole in an
    error that holds 2.5 KB, and its PIN and account logged (a reviewer)."""
    args = {"card_pin": "4711", "account": 99887766, "cvv": "123"}
    args |= {f"line_item_{n:02d}": f"sku-0{n:02d}" for n in range(45)}
    call = ToolCall("c1", "pay", args)
    prompt = Prompt(None, (Turn("user", "pay"), Turn("assistant", "", tool_calls=(call,))))
    detail = without_prompt(json.dumps({"error": "invalid arguments", "arguments": args}), prompt)
    assert "4711" not in detail and "99887766" not in detail, detail


def test_a_text_past_what_is_indexed_is_cut_once_read() -> None:
    """Cut before its whitespace was read as one space, an indented text past the
    indexed part was shorter than an error may hold, and its echo with its spaces
    collapsed was logged past the cut (a reviewer)."""
    code = "\n".join(" " * 40 + f'"k{n}": "value {n} secret-{n * 7919}",' for n in range(200))
    prompt = asked(code, "x" * echoes.INDEXED_CHARS, "the question")  # the oldest: past it
    detail = without_prompt("invalid: " + " ".join(code.split())[:2400], prompt)
    assert detail == "invalid: [prompt]", detail


def test_an_error_too_costly_to_look_through_is_not_logged() -> None:
    """A body of dashes against a history of markdown tables: a piece of the prompt at
    every place, in every reading, held the I/O loop half a second (a reviewer). Past
    what a look may cost, none of it is logged."""
    texts = ["|------------|-----------|\n" * 40] * 4 + ["x" * 30 + "-" * 19 + "y" * 30] * 4
    body = ("-" * 40 + "\\\\%2D&amp;") * 60
    detail = without_prompt(body, Prompt(None, tuple(Turn("user", text) for text in texts)))
    assert detail.startswith("[prompt] (an error of") and "-" * 8 not in detail


def test_a_key_upper_cased_beside_a_dotted_capital_i_is_redacted() -> None:
    key = "sk-ant-api03-Zq8Xw3Lk9PmN2vB7"
    body = f'{{"error": "\u0130nvalid: {key.upper()}"}}'.encode()
    detail = asyncio.run(read_error_body(httpx.Response(401, content=body), {"x-api-key": key}))
    assert "ZQ8XW3" not in detail and "[redacted]" in detail


def test_a_prompts_words_in_an_error_of_its_own_stay() -> None:
    """What the error says in its own words is kept: a few words in a row of a text
    (under `echoes.RUN` characters) are no echo."""
    prompt = Prompt(None, (Turn("user", "Please use the maximum of what the model can do"),))
    refusal = "the model 'gpt-x' does not exist; use the maximum tokens of 4096"
    assert without_prompt(refusal, prompt) == refusal


def test_the_prompt_scrub_reads_back_the_detail_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """It runs on the I/O loop for every provider failure: 1,200 texts of backslashes,
    each read back as an echo would be, held it 0.37 s, and one text of 780 KB of `\\u0041`
    270 ms; only the detail is read back, at most three times."""
    read_back: list[str] = []
    once = error_text._unescaped_once
    monkeypatch.setattr(
        error_text, "_unescaped_once", lambda text: read_back.append(text) or once(text)
    )
    texts = [f"{i:04d}" + "\\" * 236 for i in range(1200)]
    texts += [f"plain text {i}, long" for i in range(500)]
    texts.append("\\u0041" * 130_000)
    prompt = Prompt(None, tuple(Turn("user", text) for text in texts))
    detail = json.dumps({"error": {"message": "invalid body: " + json.dumps(texts[-1][:2000])}})
    # What follows the echo is kept (it was cut with it).
    assert without_prompt(detail, prompt) == '{"error": {"message": "invalid body: "[prompt]""}}'
    # At most three times, the detail and what was scrubbed of it (`_scrubbed`).
    assert len(read_back) <= 6 and all(len(text) <= len(detail) for text in read_back)


def test_a_huge_error_in_a_stream_is_cut_before_it_is_scrubbed(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemini's and OpenAI's stream errors were taken whole (up to an event's 16 MiB) and
    scrubbed on the loop before the cut: a reviewer's 8 MB error held every stream 3-4 s."""
    scrubbed: list[int] = []
    plain = chain_module.without_prompt

    def measured(text: str, prompt: Prompt) -> str:
        scrubbed.append(len(text))
        return plain(text, prompt)

    monkeypatch.setattr(chain_module, "without_prompt", measured)
    error = {"error": {"code": 500, "status": "a+b&amp;c " * 800_000}}
    upstream.push(Script(raw=[b"data: " + json.dumps(error).encode() + b"\r\n\r\n"]))
    run = run_chain([GEMINI.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert isinstance(run.items[-1], ChainFailed)
    assert scrubbed and max(scrubbed) <= error_text.ERROR_DETAIL_CHARS
    assert run.errors[0] is not None and len(run.errors[0].detail) <= error_text.ERROR_BODY_BYTES


# Each provider's error in its stream, its words a large list, not a string.
_LIST_ERRORS = {
    "anthropic": lambda words: (
        b"event: error\ndata: "
        + json.dumps({"type": "error", "error": {"type": words}}).encode()
        + b"\n\n"
    ),
    "openai": lambda words: b"data: " + json.dumps({"error": {"type": words}}).encode() + b"\n\n",
    "gemini": lambda words: (
        b"data: " + json.dumps({"error": {"code": 500, "status": words}}).encode() + b"\r\n\r\n"
    ),
    "ollama": lambda words: json.dumps({"error": words}).encode() + b"\n",
}


@EACH
def test_an_error_that_is_no_text_is_written_as_json_as_far_as_it_is_kept(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """`str()` of the whole value came before its cut: a reviewer's 10 MB list held the
    I/O loop a quarter second more than its parse. Written as JSON, as far as it is kept."""
    words = [1.5] * 200_000
    upstream.push(Script(raw=[_LIST_ERRORS[case.name](words)]))
    _, error = case.events(upstream.url)
    assert error is not None and error.code == "upstream_error"
    assert (
        error.detail.startswith("[1.5,1.5,") and len(error.detail) <= error_text.ERROR_DETAIL_CHARS
    )


SAID_WITH_PLUS = "Tom's 1+1 is 2: my password is hunter2"


@pytest.mark.parametrize(
    "echo",
    [
        # An apostrophe as an entity and spaces as %20, in one echo.
        "<p>" + html.escape(urllib.parse.quote(SAID_WITH_PLUS, safe="'+")) + "</p>",
        # %20 for spaces with the prompt's own `+` kept (a path's, encodeURI's).
        "path: " + urllib.parse.quote(SAID_WITH_PLUS, safe="'+"),
    ],
    ids=["url-then-html", "url-keeping-plus"],
)
def test_an_echo_escaped_for_a_url_and_for_html_is_taken_out(echo: str) -> None:
    """Each reading was tried alone on the detail, and `+` always read as a space: both
    echoes were logged whole (a reviewer)."""
    detail = without_prompt(echo, Prompt(None, (Turn("user", SAID_WITH_PLUS),)))
    assert "hunter2" not in detail and "[prompt]" in detail


def test_an_echo_whose_url_escape_the_cut_split_is_taken_out() -> None:
    """The detail is cut before its scrub: an echo's escape split at the end (`pin%2`)
    hid the echo's start there, and its first words were logged (a reviewer)."""
    said = "my secret pin is 4417, and the rest of what I wrote"
    echo = "refused: q=" + urllib.parse.quote(said)[:24]
    assert echo.endswith("%2")
    detail = without_prompt(echo, Prompt(None, (Turn("user", said),)))
    assert "secret" not in detail and "[prompt]" in detail


def test_a_property_named_like_a_words_keyword_keeps_its_schema_words() -> None:
    """A property named `example` or `x-...` is a schema: its format and $ref are what a
    refusal names, and stay (they were taken for the frontend's words, a reviewer)."""
    properties = {
        "x-request-id": {"type": "string", "format": "date-time"},
        "example": {"$ref": "#/$defs/AddressLine"},
    }
    parameters = {"type": "object", "properties": properties,
                  "$defs": {"AddressLine": {"type": "string"}}}  # fmt: skip
    tool = ToolSpec("lookup", "Look it up", parameters)
    prompt = Prompt(None, (Turn("user", "Hi there"),), tools=(tool,))
    refusal = "'format' value 'date-time' is not supported; no reference '#/$defs/AddressLine'"
    assert without_prompt(refusal, prompt) == refusal


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "said",
    [
        r"Copy \\fileserver\payroll\2025\salaries.xlsx; Bob earns 120000, PIN 48213377",
        r"LaTeX: a \\ b \\ c, my thesis secret 48213377",
        "Look at " + "\\" * 7 + "x, the secret 48213377",
    ],
)
def test_a_prompt_with_backslashes_is_found_at_its_own_escape_depth(said: str, depth: int) -> None:
    """The detail and the prompt were both read back three times: a prompt's own `\\\\`
    went past its echo's (a UNC path or LaTeX quoted in JSON twice stayed in the log)."""
    echo = said
    for _ in range(depth):
        echo = json.dumps({"messages": [{"role": "user", "content": echo}]})
    detail = without_prompt("invalid body: " + echo, Prompt(None, (Turn("user", said),)))
    # None of it: a first version's second look left its start (`Copy ileserverpayroll`).
    words = [word for word in re.findall(r"[A-Za-z0-9]{5,}", said) if word != "invalid"]
    assert [word for word in words if word in detail] == [], detail


def test_the_question_is_read_back_before_the_historys_texts() -> None:
    """The read-back budget went to a hundred older turns with backslashes, and the
    question's echo, an escape among its first characters, stayed in the log."""
    history = [Turn("user", f"C:\\Users\\me\\report{i}.docx is locked") for i in range(150)]
    question = "C:\\new\\tax\\returns 2023 SSN 123-45-6789 won't open"
    prompt = Prompt(None, (*history, Turn("user", question)))
    detail = json.dumps({"detail": "invalid", "input": question})
    assert "123-45-6789" not in without_prompt(detail, prompt)


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_compressed_error_body_is_not_inflated(coding: str) -> None:
    """Asked for none: 64 KB of gzip came to 64 MB, scrubbed of the prompt on the I/O loop
    (9.6 s)."""
    body = gzip.compress(b"0" * 1_000_000) if coding == "gzip" else b"\x0b\x02\x80junk"
    response = httpx.Response(422, content=body, headers={"content-encoding": coding})
    detail = asyncio.run(read_error_body(response, {}, REQUEST_PROMPT))
    assert detail == f"a {coding} body, asked for none"


def test_an_error_line_in_the_stream_is_logged_without_the_prompt(upstream: FakeUpstream) -> None:
    """What a provider says in its stream is the log's too (Ollama's error line named
    the user's text): the chain takes the prompt out of every failure's detail."""
    question = "PROMPTMARKER please summarise my medical record"
    upstream.push(Script(raw=[f'{{"error": "template error near: {question}"}}\n'.encode()]))
    provider = OLLAMA.provider(upstream.url)
    prompt = Prompt(system=None, turns=(Turn("user", question),))
    run = run_chain([provider], Timeouts(connect=1, first_chunk=2, idle=2), prompt=prompt)
    [error] = run.errors
    assert error is not None and error.code == "upstream_error"
    assert "PROMPTMARKER" not in error.detail and "[prompt]" in error.detail


GERMAN_PROMPT = (
    "Können Sie mir bitte helfen, meine geheime Diagnose für Herrn Müller zu formulieren?"
)
KEY = "sk-ant-SECRETCANARYanth0123456789abcdef"
GERMAN_REQUEST = json.dumps({"content": GERMAN_PROMPT}, ensure_ascii=False).encode()


CYRILLIC_PROMPT = (  # a Russian letter to a doctor
    "\u041f\u0440\u0438\u0432\u0435\u0442! "
    "\u041f\u043e\u043c\u043e\u0433\u0438 "
    "\u043c\u043d\u0435 "
    "\u043d\u0430\u043f\u0438\u0441\u0430\u0442\u044c "
    "\u043f\u0438\u0441\u044c\u043c\u043e "
    "\u0432\u0440\u0430\u0447\u0443 "
    "\u043e "
    "\u043c\u043e\u0451\u043c "
    "\u0434\u0438\u0430\u0433\u043d\u043e\u0437\u0435"
)
NOT_TEXT = "size"  # what is logged of a body the scrubs cannot read: its size alone


@pytest.mark.parametrize(
    ("body", "content_type", "logged"),
    [
        # A body echoed with Python's !r: its UTF-8 as \xc3\xb6 (read as two code points,
        # one non-ASCII letter near the prompt's start hid the echo).
        (f"Unprocessable body: {GERMAN_REQUEST!r}".encode(), "text/plain", "[prompt]"),
        # Single-byte charsets, labelled or not, labelled wrong: read as the bytes are.
        (f"Ungueltige Anfrage: {GERMAN_PROMPT} {KEY}".encode("latin-1"),
         "text/plain; charset=iso-8859-1", "[prompt]"),
        (f"Ungueltige Anfrage: {GERMAN_PROMPT} {KEY}".encode("latin-1"), "text/plain", "[prompt]"),
        (f"bad: {GERMAN_PROMPT} {KEY}".encode("latin-1"), "text/plain; charset=utf-8", "[prompt]"),
        (f"bad: {GERMAN_PROMPT} {KEY}".encode(), "text/plain; charset=iso-8859-1", "[prompt]"),
        (f"Error: {GERMAN_PROMPT} {KEY[:-2]}".encode(), "text/plain; charset=utf-16", "[prompt]"),
        # Wide encodings, marked, labelled, or neither (a prompt with no NUL in its
        # letters went unfound): only their size.
        (f"Error: {GERMAN_PROMPT} {KEY}".encode("utf-16"), "text/plain; charset=utf-16", NOT_TEXT),
        (f"Error: {GERMAN_PROMPT} {KEY}".encode("utf-16-be"), "text/plain", NOT_TEXT),
        (f"Error: {CYRILLIC_PROMPT} {KEY}".encode("utf-16-le"), "text/plain; charset=utf-16",
         NOT_TEXT),
        (f"Error: {GERMAN_PROMPT} {KEY}".encode("utf-32-be"), "text/plain; charset=utf-8",
         NOT_TEXT),
        # UTF-8 inside another charset's bytes: a proxy's Latin-1 page around our request
        # (read as one charset, the echo was mojibake the scrub could not see).
        ("Ung\u00fcltige Anfrage: ".encode("latin-1") + CYRILLIC_PROMPT.encode(),
         "text/html; charset=iso-8859-1", "Ung\u00fcltige Anfrage: [prompt]"),
        ("Requ\u00eate refus\u00e9e: ".encode("cp1252") + GERMAN_PROMPT.encode(), "text/plain",
         "Requ\u00eate refus\u00e9e: [prompt]"),
        # ... and inside a page in a charset its label names (read all in it: mojibake).
        ("\u041e\u0448\u0438\u0431\u043a\u0430: ".encode("cp1251") + CYRILLIC_PROMPT.encode(),
         "text/plain; charset=windows-1251", "\u041e\u0448\u0438\u0431\u043a\u0430: [prompt]"),
        (b"\xff bad: " + GERMAN_PROMPT.encode(), "text/plain; charset=big5", "bad: [prompt]"),
        # Compressed with no Content-Encoding: readable by anyone who inflates it.
        (gzip.compress(f'{{"key": "{KEY}", "content": "{GERMAN_PROMPT}"}}'.encode()),
         "application/json", NOT_TEXT),
        # The key cut short, or in two.
        (f"invalid x-api-key {KEY[:-1]} ({KEY[3:20]})".encode(), "text/plain", "[redacted]"),
        # Readable text an operator needs, kept: a Latin-1 label read as Windows-1252 (its
        # quotes were control characters), French text with a pair that looks like UTF-8.
        ("We\u2019re down for \u201cMaintenance\u201d".encode("cp1252"),
         "text/html; charset=iso-8859-1", "We\u2019re down for \u201cMaintenance\u201d"),
        # A label Python knows as no text codec (bytes.decode raised LookupError).
        ("Ung\u00fcltig: \u00e9".encode("latin-1"), "text/plain; charset=base64",
         "Ung\u00fcltig: \u00e9"),
        ("ACC\u00c8S REFUS\u00c9\u00a0: quota".encode("latin-1"), "text/plain; charset=iso-8859-1",
         "ACC\u00c8S REFUS"),
    ],
    ids=[
        "python-bytes-repr",
        "latin-1",
        "latin-1-unlabelled",
        "latin-1-labelled-utf-8",
        "utf-8-labelled-latin-1",
        "utf-8-labelled-utf-16",
        "utf-16-marked",
        "utf-16-be-unlabelled",
        "utf-16-cyrillic-labelled",
        "utf-32-labelled-utf-8",
        "utf-8-inside-latin-1",
        "utf-8-inside-windows-1252",
        "utf-8-inside-windows-1251",
        "utf-8-inside-big5",
        "gzip-unlabelled",
        "key-cut-short",
        "windows-1252-labelled-latin-1",
        "labelled-with-no-text-codec",
        "latin-1-french",
    ],
)  # fmt: skip
def test_an_error_body_in_any_encoding_is_logged_without_the_prompt_or_the_key(
    body: bytes, content_type: str, logged: str
) -> None:
    """Reviewers' misbehaving upstreams logged a German prompt whole, a Cyrillic one as
    mojibake, and the key in UTF-16 and in gzip."""
    response = httpx.Response(400, content=body, headers={"content-type": content_type})
    prompt = Prompt(system=None, turns=(Turn("user", GERMAN_PROMPT), Turn("user", CYRILLIC_PROMPT)))
    detail = asyncio.run(read_error_body(response, {"x-api-key": KEY}, prompt))
    if logged == NOT_TEXT:
        assert detail == f"a body of {len(body)} bytes, not text"
    else:
        assert "Diagnose" not in detail and "CANARYanth01" not in detail, detail
        assert logged in detail


@pytest.mark.parametrize(
    ("said", "codec"),
    [
        # Read in part as UTF-8, "всё" was other letters in the echo's first 24 (a reviewer).
        ("\u0414\u043e\u043a\u0442\u043e\u0440, \u0432\u0441\u0451 \u0431\u043e\u043b\u0438\u0442 "
         "\u0438 \u0435\u0449\u0451 \u043a\u0430\u0448\u0435\u043b\u044c", "koi8-r"),
        ("\uc548\ub155\ud558\uc138\uc694 \uc758\uc0ac \uc120\uc0dd\ub2d8, \ub2f9\ub1e8\ubcd1 "
         "\uc9c4\ub2e8\uc744 \ubc1b\uc558\uc2b5\ub2c8\ub2e4", "euc-kr"),
        # ASCII, so UTF-8 too: read as UTF-8 alone, the echo was logged in UTF-7's letters.
        ("\u0414\u043e\u043a\u0442\u043e\u0440, \u0432\u0441\u0451 \u0431\u043e\u043b\u0438\u0442 "
         "\u0441\u0438\u043b\u044c\u043d\u043e", "utf-7"),
        # No label: a pair of its letters happens to make a UTF-8 character.
        ("Mein \u201eFu\u00df\u201c schmerzt seit Tagen sehr", "cp1252"),
    ],
    ids=["koi8-r", "euc-kr", "utf-7", "windows-1252-unlabelled"],
)  # fmt: skip
def test_a_prompt_echoed_in_its_bodys_own_charset_is_taken_out(said: str, codec: str) -> None:
    label = "text/plain" if codec == "cp1252" else f"text/plain; charset={codec}"
    response = httpx.Response(
        400, content=b"Error: " + said.encode(codec), headers={"content-type": label}
    )
    detail = asyncio.run(read_error_body(response, {}, Prompt(None, (Turn("user", said),))))
    assert detail == "Error: [prompt]"


@pytest.mark.parametrize(
    "echo",
    [
        pytest.param(lambda key: '{"k":"' + key.replace("/", "\\/") + '"}', id="php-json"),
        pytest.param(lambda key: "k=" + urllib.parse.quote(key, safe=""), id="url-escaped"),
        pytest.param(lambda key: "/v1?api-key=" + urllib.parse.quote(key), id="url-path"),
        pytest.param(lambda key: "k=" + urllib.parse.quote_plus(key, safe=""), id="form"),
        pytest.param(lambda key: "KEY " + key.upper(), id="upper-cased"),
        pytest.param(lambda key: "key " + key.lower(), id="lower-cased"),
        pytest.param(lambda key: "k=" + base64.b64encode(key.encode()).decode(), id="base64"),
    ],
)
def test_a_key_as_an_echo_writes_it_is_redacted(echo: Callable[[str], str]) -> None:
    """A reviewer's upstream logged them whole: a key with `/`, `+`, `=` URL-escaped
    (its runs between escapes too short to find), upper-cased, in base64."""
    key = "vllm/Tk9+aQ2/Zr7Wm+Qx4LpN8s=="
    response = httpx.Response(401, content=echo(key).encode())
    detail = asyncio.run(read_error_body(response, {"authorization": f"Bearer {key}"}))
    assert "[redacted]" in detail
    for piece in ("Tk9", "tk9", "TK9", "Zr7W", "zr7w", "ZR7W", "dmxsbS9Uaz"):
        assert piece not in detail, detail


def test_a_text_past_what_is_indexed_is_found_by_its_start() -> None:
    """A MB of history took 140 ms to index on the I/O loop: past `INDEXED_CHARS`, a text
    is looked for as before, by its start."""
    history = [Turn("user", "x" * echoes.INDEXED_CHARS)]
    said = "an older question about my tax return, long enough"
    prompt = Prompt(None, (Turn("user", said), *history))
    assert without_prompt(f"refused: {said[:30]}", prompt) == "refused: [prompt]"


def test_a_text_past_what_is_indexed_is_read_no_further_than_an_echo_may_hold() -> None:
    """A MB of calls' arguments was read whole (folded, its spaces collapsed): 150 ms on
    the I/O loop at the first failure, for texts looked for by their start (a reviewer)."""
    read = echoes.Echoes(["x " * echoes.INDEXED_CHARS, "y " * 100_000])
    assert max(len(text) for text in read._texts[1:]) <= 4096


def test_a_logins_user_name_is_kept_in_an_error_body() -> None:
    """Only its password is a secret: taken out in pieces with it, the user name an
    operator needs was redacted (a reviewer's `user ops-gateway-user may not use...`)."""
    login = base64.b64encode(b"ops-gateway-user:Zq9vT7kLm2xx").decode()
    body = b"user ops-gateway-user may not use model llama3 (password Zq9vT7kLm2xx)"
    response = httpx.Response(403, content=body)
    detail = asyncio.run(read_error_body(response, {"authorization": f"Basic {login}"}))
    assert detail == "user ops-gateway-user may not use model llama3 (password [redacted])"
    # The login cut short in the password: what holds some of the password goes.
    response = httpx.Response(403, content=b"proxy: ops-gateway-user:Zq9vT7kL... may not")
    detail = asyncio.run(read_error_body(response, {"authorization": f"Basic {login}"}))
    assert "Zq9" not in detail and detail.startswith("proxy: ops-ga")
    # A short password is a secret all the same; a user name with none is none.
    short = base64.b64encode(b"ops-gateway-user:hunter2").decode()
    response = httpx.Response(401, content=b"user ops-gateway-user: password hunter2 rejected")
    detail = asyncio.run(read_error_body(response, {"authorization": f"Basic {short}"}))
    assert detail == "user ops-gateway-user: password [redacted] rejected"
    alone = base64.b64encode(b"ops-gateway-user:").decode()
    response = httpx.Response(403, content=b"user ops-gateway-user: may not")
    detail = asyncio.run(read_error_body(response, {"authorization": f"Basic {alone}"}))
    assert detail == "user ops-gateway-user: may not"


def test_a_key_across_the_error_bodys_cut_is_redacted_too() -> None:
    """The cut is in bytes: a body of multibyte text put a key across it, and the part
    before the cut was logged (a reviewer's probe)."""
    key = "sk-proj-" + "A" * 60
    body = "é".encode() * 1000 + f"Incorrect API key provided: {key}.".encode()  # at byte 2028
    response = httpx.Response(401, content=body)
    detail = asyncio.run(read_error_body(response, {"authorization": f"Bearer {key}"}))
    assert "sk-proj-A" not in detail and detail.endswith("[redacted].")


@EACH
def test_a_key_with_a_space_echoed_in_an_error_body_is_redacted_whole(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """A key header's value is the key, spaces and all: only an Authorization header has
    a scheme before its credentials (x-api-key's first word was taken for one, and left
    in the log)."""
    key = "sk-FIRSTHALFSECRET SECONDHALFSECRET"
    upstream.push(Script(fail="401", error_body={"error": f"invalid key {key}"}))
    provider = case.provider_class(case.settings(upstream.url), key)
    run = run_chain([provider], Timeouts(connect=1, first_chunk=2, idle=2))
    [error] = run.errors
    assert error is not None and "HALFSECRET" not in error.detail


@pytest.mark.parametrize("case", [case for case in CASES if case.name in ("anthropic", "ollama")],
                         ids=lambda case: case.name)  # fmt: skip
def test_a_key_in_a_long_error_line_of_the_stream_is_redacted_whole(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """An error in the stream whose text (a proxy's) quotes the key near where it was
    cut: cut before the scrub, the key's first characters stayed in the log."""
    key = "sk-live-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    said = "x" * 185 + " bad token " + key
    if case is OLLAMA:
        upstream.push(Script(raw=[json.dumps({"error": said}).encode() + b"\n"]))
    else:
        upstream.push(Script(raw=[anthropic_event("error", {"type": "error", "error": said})]))
    provider = case.provider_class(case.settings(upstream.url), key)
    run = run_chain([provider], Timeouts(connect=1, first_chunk=2, idle=2))
    [error] = run.errors
    assert error is not None and error.code == "upstream_error"
    assert "sk-live-A" not in error.detail and "[redacted]" in error.detail


@EACH
def test_scripted_text_stream(upstream: FakeUpstream, case: ProviderCase) -> None:
    upstream.push(Script(tokens=["Hel", "lo ", "wörld"], model="upstream-model", input_tokens=30))
    events, error = case.events(upstream.url)
    assert error is None
    assert events == [
        TextDelta("Hel"),
        TextDelta("lo "),
        TextDelta("wörld"),
        StreamEnd("end_turn", case.usage(30, 3), "upstream-model"),
    ]


@pytest.mark.parametrize(
    "case, scripted, stop_reason", per_case(lambda case: case.stop_reasons.items())
)
def test_stop_reasons_are_normalised(
    upstream: FakeUpstream, case: ProviderCase, scripted: str, stop_reason: str
) -> None:
    upstream.push(Script(tokens=["x"], stop_reason=scripted))
    events, error = case.events(upstream.url)
    assert error is None
    assert events[-1] == StreamEnd(stop_reason, case.usage(12, 1), FAKE_MODEL)


@EACH
@pytest.mark.parametrize(
    "mode, thinking, thinking_tokens",
    [
        pytest.param("native", thoughts("Let me ", "think."), 2, id="native"),
        # The tags come as text pieces of their own, and count as text.
        pytest.param(
            "inline", texts("<thinking>", "Let me ", "think.", "</thinking>"), 0, id="inline"
        ),
    ],
)
def test_thinking_native_or_inline(
    upstream: FakeUpstream,
    case: ProviderCase,
    mode: str,
    thinking: list[Event],
    thinking_tokens: int,
) -> None:
    upstream.push(
        Script(thinking=["Let me ", "think."], thinking_mode=mode, tokens=["Answer", "!"])
    )
    events, error = case.events(upstream.url)
    assert error is None
    usage = case.usage(12, len(thinking) + 2, thinking_tokens)
    assert events == [*thinking, *texts("Answer", "!"), StreamEnd("end_turn", usage, FAKE_MODEL)]


def test_every_fake_failure_has_an_expectation() -> None:
    assert sorted(FAIL_CODES) == sorted(set(FAILS) - {"no_text"})
    assert sorted(FAIL_MODE_CODES) == sorted(FAIL_MODES)


@EACH
@pytest.mark.parametrize("fail", FAILS)
def test_fake_failure_before_any_text(
    upstream: FakeUpstream, case: ProviderCase, fail: str
) -> None:
    # Before any piece (Anthropic's message_start and OpenAI's role chunk are out already,
    # except with hang_headers and empty). The hangs end on the client's read timeout.
    upstream.push(Script(fail=fail, stop_reason="max_tokens"))
    events, error = case.events(upstream.url, read_timeout=0.2)
    if fail == "no_text":
        # A clean end with no deltas: the provider reports it; the chain calls it empty.
        assert error is None
        assert events == [StreamEnd("max_tokens", case.usage(12, 0), FAKE_MODEL)]
    else:
        assert events == []
        assert error is not None and error.code == FAIL_CODES[fail]
        assert error.status == case.status_of(error.code)


@EACH
@pytest.mark.parametrize("fail_mode", FAIL_MODES)
@pytest.mark.parametrize("fail_after", [0, 2, 3, 4])
def test_fail_after(
    upstream: FakeUpstream, case: ProviderCase, fail_after: int, fail_mode: str
) -> None:
    tokens = ["a ", "b ", "c "]
    upstream.push(Script(tokens=tokens, fail_after=fail_after, fail_mode=fail_mode))
    events, error = case.events(upstream.url, read_timeout=0.2)

    texts = [TextDelta(token) for token in tokens]
    if fail_after > len(tokens):  # never fires
        assert error is None
        assert events == [*texts, StreamEnd("end_turn", case.usage(12, 3), FAKE_MODEL)]
    else:  # fail_after == len(tokens) fires after the last piece, in place of the finish
        assert events == texts[:fail_after]
        assert error is not None and error.code == FAIL_MODE_CODES[fail_mode]
        assert error.status == case.status_of(error.code)


@EACH
@pytest.mark.parametrize("fail_after", [1, 2, 3])
def test_fail_after_counts_thinking_pieces(
    upstream: FakeUpstream, case: ProviderCase, fail_after: int
) -> None:
    upstream.push(Script(thinking=["t1 ", "t2 "], tokens=["a", "b"], fail_after=fail_after))
    events, error = case.events(upstream.url)
    pieces = [ThinkingDelta("t1 "), ThinkingDelta("t2 "), TextDelta("a"), TextDelta("b")]
    assert events == pieces[:fail_after]
    assert error is not None and error.code == "upstream_error"
    assert error.status == case.error_status


# -- c. through the chain, on the I/O loop ------------------------------------------------


@EACH
@pytest.mark.parametrize(
    "script",
    [
        pytest.param(Script(fail="hang"), id="silent-after-the-headers"),
        pytest.param(Script(fail="hang", ping_every=0.05), id="keep-alives-but-no-text"),
        pytest.param(Script(fail="hang_headers"), id="no-headers"),
        pytest.param(Script(tokens=["late"], ttft=3), id="first-piece-too-late"),
    ],
)
def test_no_first_chunk_in_time_is_a_timeout(
    upstream: FakeUpstream, case: ProviderCase, script: Script
) -> None:
    upstream.push(script)
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=5))

    assert run.items == [ChainFailed(None, committed=False)]
    assert run.outcomes == ["upstream_timeout"]
    assert 250 <= run.chain.attempts[0].ms < 1500
    assert run.seconds < 2
    # The upstream request was closed, not left running.
    assert upstream.requests[0].client_closed.wait(2)


@EACH
def test_closed_port_is_unreachable(case: ProviderCase) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = run_chain([case.provider(f"http://127.0.0.1:{port}")], Timeouts(1, 1, 1))
    assert run.items == [ChainFailed(None, committed=False)]
    assert run.outcomes == ["upstream_unreachable"]


@EACH
def test_slow_but_live_stream_is_not_cut(upstream: FakeUpstream, case: ProviderCase) -> None:
    tokens = [f"t{i} " for i in range(6)]
    upstream.push(Script(tokens=tokens, interval=0.15, model="live-model"))
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=0.6))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == "".join(tokens)
    assert run.outcomes == ["ok"]
    assert run.seconds >= 0.7  # well past first_chunk: only gaps between chunks count
    assert run.chain.usage == case.usage(12, 6)
    assert run.chain.stop_reason == "end_turn"
    assert (run.chain.provider, run.chain.model_version) == (case.name, "live-model")


@pytest.mark.parametrize("case", [c for c in CASES if c.keepalive], ids=lambda case: case.name)
def test_keep_alives_carry_gaps_longer_than_the_idle_timeout(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    upstream.push(Script(tokens=["slow ", "but ", "alive"], interval=0.35, ping_every=0.05))
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=1, idle=0.2))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == "slow but alive"
    assert run.seconds >= 0.65  # gaps of 0.35 s, idle timeout 0.2 s


@EACH
@pytest.mark.parametrize("fail_mode", FAIL_MODES)
def test_a_failure_after_the_first_chunk_is_committed(
    upstream: FakeUpstream, case: ProviderCase, fail_mode: str
) -> None:
    upstream.push(
        Script(tokens=["one ", "two ", "three "], fail_after=2, fail_mode=fail_mode),
        Script(tokens=["never ", "shown"]),
    )
    idle = 0.3 if fail_mode == "hang" else 2
    run = run_chain(
        [case.provider(upstream.url), fallback(upstream.url)],
        Timeouts(connect=1, first_chunk=5, idle=idle),
    )

    code = FAIL_MODE_CODES[fail_mode]
    assert run.items[:-1] == [Chunk("one "), Chunk("two ")]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == code
    assert run.outcomes == [code]  # the user saw its text: never retried elsewhere
    assert len(upstream.requests) == 1


@EACH
@pytest.mark.parametrize("fail_mode", FAIL_MODES)
def test_a_failure_while_thinking_closes_the_thinking_block(
    upstream: FakeUpstream, case: ProviderCase, fail_mode: str
) -> None:
    """The tag is the service's own: a reply cut while the model thinks gets its
    `</thinking>` before the error frame, as one that ends while thinking does, so the
    chunks and the error's `partial` never leave a block open."""
    upstream.push(Script(thinking=["t1 ", "t2 "], tokens=["a"], fail_after=2, fail_mode=fail_mode))
    idle = 0.3 if fail_mode == "hang" else 2
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=5, idle=idle))
    assert run.items[:-1] == [Chunk("<thinking>t1 "), Chunk("t2 "), Chunk("</thinking>")]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed


@EACH
def test_a_line_past_the_bound_is_a_body_we_cannot_read(
    upstream: FakeUpstream, case: ProviderCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unbounded, a line with no end held its memory, and was joined again with each read.
    monkeypatch.setattr(sse_decoder, "MAX_LINE_BYTES", 1000)
    upstream.push(Script(raw=[b"x" * 600, b"x" * 600]))
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.outcomes == ["upstream_protocol"]
    # For the log: what was raised, and where (a bug of ours looks the same from here).
    [error] = run.errors
    assert error is not None and error.detail.startswith("ValueError: a line longer than 1000")
    assert "(at sse_decoder.py:" in error.detail


@pytest.mark.parametrize("case", [c for c in CASES if c is not OLLAMA], ids=lambda c: c.name)
def test_an_event_of_many_lines_past_the_bound_is_a_body_we_cannot_read(
    upstream: FakeUpstream, case: ProviderCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each line within the bound, and no blank line to end the event: 400 lines of a MB
    # took a worker to 1.37 GB.
    monkeypatch.setattr(sse_decoder, "MAX_LINE_BYTES", 1000)
    # Empty lines count too (300 MiB of `data:` lines were held, counted as nothing).
    for lines in ([b"data: " + b"x" * 300 + b"\n"] * 4, [b"data:\n" * 1001]):
        upstream.push(Script(raw=lines))
        run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
        assert run.outcomes == ["upstream_protocol"]
        [error] = run.errors
        assert error is not None and "an event's data longer than 1000" in error.detail


@EACH
def test_bodies_are_asked_for_as_sent(upstream: FakeUpstream, case: ProviderCase) -> None:
    """Not compressed: a gzip body was inflated whole with each read (326 KB on the wire
    held 449 MB), past the bounds the stream's decoding keeps."""
    upstream.push(Script(tokens=["hi"]))
    run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=5, idle=5))
    assert upstream.requests[0].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    ("case", "framing"),
    [(case, framing) for case in CASES for framing in ("content", "transfer")],
)
def test_a_body_compressed_all_the_same_is_a_body_we_cannot_read(
    case: ProviderCase, framing: str
) -> None:
    """Asked for none, a server that gzips anyway: inflated, 400 KB came to 419 MB. As
    a transfer coding (`gzip, chunked`) too: it was read as a cut stream (incomplete)."""
    content_type = "application/x-ndjson" if case is OLLAMA else "text/event-stream"
    body = gzip.compress(b"data: {}\n\n")
    if framing == "content":
        coding, pieces = "content-encoding: gzip\r\nconnection: close", [body]
    else:
        coding = "transfer-encoding: gzip, chunked"
        pieces = [f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"]
    head = f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\n{coding}\r\n\r\n".encode()
    with one_answer(head, pieces) as url:
        run = run_chain([case.provider(url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.outcomes == ["upstream_protocol"]
    [error] = run.errors
    assert error is not None and error.detail == "a gzip body, asked for none"


@pytest.mark.parametrize(
    ("case", "coding"), [(case, coding) for case in CASES for coding in ("none", "", "identity")]
)
def test_a_body_named_with_no_compressing_coding_is_read_as_it_comes(
    case: ProviderCase, coding: str
) -> None:
    """`Content-Encoding: none` keeps compression middleware off an SSE server's stream
    (Express, Next.js): httpx reads such a body as it comes, and so do we."""
    name = next(iter(successful_replays(case)))[0]
    body = case.fixture(name)
    content_type = "application/x-ndjson" if case is OLLAMA else "text/event-stream"
    head = (
        f"HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n"
        f"content-encoding: {coding}\r\nconnection: close\r\n\r\n"
    ).encode()
    with one_answer(head, [body]) as url:
        events, error = case.events(url)
    assert (events, error) == (case.replays[name].events, None)


@EACH
def test_a_long_line_in_many_reads_is_read_whole(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    # Its pieces joined once, at its end (each read joined them all before: quadratic).
    upstream.push(Script(tokens=["y" * 2_000_000]))
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=5, idle=5))
    assert run.text == "y" * 2_000_000


@EACH
def test_an_idle_gap_after_the_first_chunk_is_cut_in_time(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    upstream.push(Script(tokens=["one ", "two ", "three "], fail_after=2, fail_mode="hang"))
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=5, idle=0.3))
    assert run.outcomes == ["upstream_timeout"]
    assert run.seconds < 2
    assert upstream.requests[0].client_closed.wait(2)


def fall_throughs(case: ProviderCase) -> Iterable[tuple[str, str, int | None]]:
    """(the fake's fail, the attempt's outcome, its status): every failure before text."""
    for status in case.statuses:
        yield str(status), "upstream_status", status
    for fail in FAILS:
        outcome = "upstream_empty" if fail == "no_text" else FAIL_CODES[fail]
        yield fail, outcome, case.status_of(outcome)


@EACH
def test_a_refusal_with_nothing_shown_is_told_apart_and_falls_through(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """A stream that ends on the provider's content filter with no text (Anthropic
    `refusal`, OpenAI `content_filter`, Gemini `SAFETY`) is `upstream_refused`, not an
    empty reply (Ollama has no such stop: its stream is empty); the next provider is
    asked, as for any failure before text."""
    upstream.push(Script(fail="no_text", stop_reason="refusal"), Script(tokens=["fallback"]))
    run = run_chain(
        [case.provider(upstream.url), fallback(upstream.url)],
        Timeouts(connect=1, first_chunk=5, idle=5),
    )
    declines = "content_filter" in case.stop_reasons.values()
    assert run.outcomes == ["upstream_refused" if declines else "upstream_empty", "ok"]
    assert run.items[-1] == ChainSucceeded()


D3, D7 = "http://json-schema.org/draft-03/schema#", "http://json-schema.org/draft-07/schema#"
# Schemas the request's check takes (each keyword read as its own draft reads it) in
# shapes a builder written for 2020-12 did not expect: OpenAI's crashed on the first
# three on the I/O loop (the provider skipped as upstream_protocol, a 502 alone), and
# Anthropic's on the last (a reference by a digit int() reads and isdigit() allows).
ODD_SCHEMAS = {
    "draft-3-required": {
        "$schema": D3,
        "type": "object",
        "properties": {"a": {}},
        "required": True,
    },
    "draft-3-schema-type": {
        "$schema": D3,
        "type": "object",
        "properties": {"v": {"type": ["string", {}]}},
    },
    "draft-7-defs": {
        "$schema": D7,
        "type": "object",
        "$defs": {"d": {"format": ["x"], "type": 5, "required": [{}], "anyOf": 1}},
    },
    "ref-under-id": {
        "type": "object",
        "x-a": [{"type": "string"}],
        "properties": {
            "p": {
                "$id": "http://e/p",
                "x-a": {"\u00b2": {"type": "string"}},
                "$ref": "#/x-a/\u00b2",
            }
        },
    },
}


@EACH
@pytest.mark.parametrize("schema", ODD_SCHEMAS.values(), ids=ODD_SCHEMAS.keys())
@pytest.mark.parametrize("used_as", ["responseSchema", "parameters"])
def test_a_schema_the_request_takes_builds_a_request(
    case: ProviderCase, schema: dict[str, Any], used_as: str
) -> None:
    config: dict[str, Any] = {"responseSchema": schema}
    if used_as == "parameters":
        config = {"tools": ["t"], "toolConfigs": {"t": {"description": "d", "parameters": schema}}}
    body = {"user_input": "hi", "emissaryConfig": config}
    request = build_request("a", body, max_input_chars=100, max_history_messages=10)
    prompt = Prompt(
        None, (Turn("user", "hi"),), request.tools, request.tool_choice, request.response_schema
    )
    _, sent, _ = case.provider("http://127.0.0.1:9")._request(prompt)
    assert json.loads(json.dumps(sent))  # whole, and JSON


@EACH
def test_a_chain_that_fails_reports_no_failed_attempts_usage_or_stop(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    """An attempt that ended with nothing shown, then one that failed: the failed
    chain's report (the error's metadata) has no usage, stop reason or model from the
    first (it said max_tokens and 12 input tokens for a chain that answered nothing)."""
    upstream.push(Script(fail="no_text", stop_reason="max_tokens"), Script(fail="cut"))
    run = run_chain(
        [case.provider(upstream.url), fallback(upstream.url)],
        Timeouts(connect=1, first_chunk=5, idle=5),
    )
    assert run.outcomes == ["upstream_empty", "upstream_incomplete"]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and not failed.committed
    report = failed.report
    assert (report.stop_reason, report.model_version, report.usage) == (None, None, Usage())


@pytest.mark.parametrize("case, fail, outcome, status", per_case(fall_throughs))
def test_failure_before_the_first_chunk_falls_through(
    upstream: FakeUpstream, case: ProviderCase, fail: str, outcome: str, status: int | None
) -> None:
    upstream.push(Script(fail=fail), Script(tokens=["from ", "fallback"], model="fallback-model"))
    first_chunk = 0.4 if fail.startswith("hang") else 2
    run = run_chain(
        [case.provider(upstream.url), fallback(upstream.url)],
        Timeouts(connect=1, first_chunk=first_chunk, idle=2),
    )

    assert run.items == [Chunk("from "), Chunk("fallback"), ChainSucceeded()]
    assert run.outcomes == [outcome, "ok"]
    assert [attempt.provider for attempt in run.chain.attempts] == [case.name, "fallback"]
    assert [attempt.status for attempt in run.chain.attempts] == [status, None]
    assert (run.chain.provider, run.chain.model_version) == ("fallback", "fallback-model")
    paths = [request.path for request in upstream.requests]
    assert paths == [case.request_path(), "/v1/messages"]


@EACH
def test_it_answers_when_an_earlier_provider_failed(
    upstream: FakeUpstream, case: ProviderCase
) -> None:
    upstream.push(Script(fail="529"), Script(tokens=["second ", "answer"]))
    run = run_chain(
        [anthropic_at(upstream.url, "first"), case.provider(upstream.url)],
        Timeouts(1, first_chunk=2, idle=2),
    )
    assert run.items == [Chunk("second "), Chunk("answer"), ChainSucceeded()]
    assert run.outcomes == ["upstream_status", "ok"]
    assert (run.chain.provider, run.chain.model_version) == (case.name, FAKE_MODEL)
    assert upstream.requests[1].path == case.request_path()


@EACH
def test_native_thinking_is_tagged_by_the_chain(upstream: FakeUpstream, case: ProviderCase) -> None:
    upstream.push(Script(thinking=["weigh ", "options"], tokens=["Done."]))
    run = run_chain([case.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.text == "<thinking>weigh options</thinking>Done."
    assert run.items[-1] == ChainSucceeded()
    assert run.chain.usage == case.usage(12, 3, thinking_tokens=2)


# -- d. the whole endpoint ----------------------------------------------------------------

PROVIDERS = ("anthropic", "openai", "gemini", "ollama")


@pytest.fixture
def all_four(fake: FakeUpstream) -> FakeUpstream:
    os.environ.update(
        ASSISTANT_PROVIDERS=",".join(PROVIDERS),
        OPENAI_API_KEY="test-openai-key",
        OPENAI_BASE_URL=f"{fake.url}/v1",
        GEMINI_API_KEY="test-gemini-key",
        GEMINI_BASE_URL=fake.url,
        OLLAMA_BASE_URL=fake.url,
    )
    return fake


def _only(name: str) -> None:
    os.environ["ASSISTANT_PROVIDERS"] = name


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_streams_text_and_native_thinking(client, all_four, provider: str) -> None:
    _only(provider)
    all_four.push(Script(thinking=["step one ", "step two"], tokens=["The ", "answer."]))
    events = sse_events(
        ask(client, "Question?", emissaryConfig={"initialInstructions": "Be kind."}).get_data()
    )
    chunks = "".join(
        event["chunk"] for event in events if isinstance(event, dict) and "chunk" in event
    )
    final = events[-2]
    assert chunks == final["answer"] == "<thinking>step one step two</thinking>The answer."
    metadata = final["metadata"]
    assert metadata["provider"] == provider
    assert metadata["thinking_content"] == "step one step two"
    assert metadata["stop_reason"] == "end_turn"
    assert metadata["usage"]["input_tokens"] > 0
    assert metadata["usage"]["output_tokens"] > 0
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_close_tag_inside_native_thinking_stays_thinking(
    client, all_four, firestore, provider: str
) -> None:
    """Reasoning about the tags themselves: however the pieces split `</thinking>`, it
    neither ends the block for a reader of the stream nor leaks into the answer, the
    structured output or the saved message."""
    _only(provider)
    thinking = ["Never show </thinking>", " the plan <", "/thinking> or </thin", "k", "ing>."]
    all_four.push(Script(thinking=thinking, json={"answer": "ok"}))
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    response = ask(
        client, trace_id="t-tags", save_to_history=True, emissaryConfig={"responseSchema": schema}
    )
    final = sse_events(response.get_data())[-2]
    metadata = final["metadata"]
    assert metadata["structured_output"] == {"answer": "ok"}
    # A zero-width space before the ">" of each close tag: it reads the same.
    said = "Never show </thinking> the plan </thinking> or </thinking>."
    assert metadata["thinking_content"] == said.replace("</thinking>", "</thinking\u200b>")
    splitter = ThinkingSplitter()  # what a frontend's parser does with the stream
    splitter.feed(final["answer"])
    splitter.finish()
    assert splitter.content == '{"answer":"ok"}'
    saved = firestore.collection("assistants").document("test-assistant")
    reply = saved.collection("messages").document("t-tags-assistant").get().to_dict()
    assert reply["content"] == '{"answer":"ok"}'
    assert reply["thinkingContent"] == metadata["thinking_content"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_reports_max_tokens_alike(client, all_four, provider: str) -> None:
    _only(provider)
    all_four.push(Script(tokens=["cut ", "short"], stop_reason="max_tokens"))
    assert sse_events(ask(client).get_data())[-2]["metadata"]["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_mid_stream_error_is_an_error_frame(client, all_four, provider: str) -> None:
    _only(provider)
    all_four.push(Script(tokens=["half ", "way ", "there"], fail_after=2, fail_mode="error_event"))
    error = sse_events(ask(client).get_data())[-2]
    assert error["code"] == "upstream_error"
    assert error["partial"] == "half way "
    # What the upstream said of itself before failing is kept (a reviewer found it
    # dropped): the model on all four, the input tokens where the format tells them early.
    metadata = error["metadata"]
    assert metadata["model_version"] == "fake-claude"  # the fake's, not the one asked for
    if provider in ("anthropic", "gemini"):
        assert metadata["usage"]["input_tokens"] == 12


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_without_its_end_marker_is_incomplete(
    client, all_four, provider: str
) -> None:
    _only(provider)
    all_four.push(Script(tokens=["no ", "end"], fail_after=2, fail_mode="no_stop"))
    error = sse_events(ask(client).get_data())[-2]
    assert error["code"] == "upstream_incomplete"
    assert error["partial"] == "no end"


def test_the_chain_falls_through_every_format_in_order(client, all_four) -> None:
    all_four.push(
        Script(fail="500"),  # anthropic
        Script(fail="error_event"),  # openai
        Script(fail="empty"),  # gemini: a body with nothing in it
        Script(tokens=["from ", "ollama"]),  # ollama
    )
    final = sse_events(ask(client).get_data())[-2]
    assert final["answer"] == "from ollama"
    assert [(a["name"], a["outcome"]) for a in final["metadata"]["attempts"]] == [
        ("anthropic", "upstream_status"),
        ("openai", "upstream_error"),
        ("gemini", "upstream_incomplete"),  # no finishReason ever came
        ("ollama", "ok"),
    ]
    assert [request.path.split("?")[0] for request in all_four.requests] == [
        "/v1/messages",
        "/v1/chat/completions",
        "/v1beta/models/gemini-3.8-flash:streamGenerateContent",
        "/api/chat",
    ]


def test_every_provider_failing_is_a_502_listing_all_four(client, all_four) -> None:
    all_four.push(Script(fail="429"), Script(fail="500"), Script(fail="503"), Script(fail="500"))
    response = ask(client)
    assert response.status_code == 502
    assert [a["name"] for a in response.get_json()["attempts"]] == list(PROVIDERS)


def test_providers_without_key_or_url_are_skipped(client, all_four) -> None:
    del os.environ["ANTHROPIC_API_KEY"]
    del os.environ["OPENAI_API_KEY"]
    del os.environ["OLLAMA_BASE_URL"]
    final = sse_events(ask(client).get_data())[-2]
    assert final["metadata"]["provider"] == "gemini"
    assert [a["name"] for a in final["metadata"]["attempts"]] == ["gemini"]


def test_the_system_prompt_reaches_every_format(client, all_four) -> None:
    all_four.push(Script(fail="500"), Script(fail="500"), Script(fail="500"))
    ask(client, "hi", emissaryConfig={"initialInstructions": "Speak like a pirate."}).get_data()
    anthropic, openai, gemini, ollama = (request.body for request in all_four.requests)
    assert anthropic["system"] == "Speak like a pirate."
    assert openai["messages"][0] == {"role": "system", "content": "Speak like a pirate."}
    assert gemini["systemInstruction"] == {"parts": [{"text": "Speak like a pirate."}]}
    assert ollama["messages"][0] == {"role": "system", "content": "Speak like a pirate."}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_lone_surrogate_in_the_text_is_a_replacement_character(
    client, all_four, firestore, provider: str
) -> None:
    """A `\\ud800` escape in an event (orjson refuses it, json takes it): no frame, log
    line or document could hold it, so it arrives as U+FFFD, as a browser would show it,
    and the reply ends as usual."""
    _only(provider)
    all_four.push(Script(tokens=["fine ", "bad \ud800 x", " more"]))
    events = sse_events(ask(client, trace_id="t-lone", save_to_history=True).get_data())
    chunks = "".join(event["chunk"] for event in events[:-2] if "chunk" in event)
    assert chunks == events[-2]["answer"] == "fine bad \ufffd x more"
    assert events[-1] == "[DONE]"
    saved = firestore.document("assistants/test-assistant/messages/t-lone-assistant").get()
    assert saved.to_dict()["content"] == "fine bad \ufffd x more"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_odd_fields_are_left_out_not_passed_on(client, all_four, provider: str) -> None:
    """A negative token count, a model name that is a number: the reply is whole, and
    neither reaches the final frame (nor the saved message) as it came."""
    _only(provider)
    all_four.push(Script(tokens=["odd ", "fields"], model=7, input_tokens=-5))  # type: ignore
    events = sse_events(ask(client).get_data())
    metadata = events[-2]["metadata"]
    assert events[-2]["answer"] == "odd fields"
    assert metadata["usage"]["input_tokens"] is None
    assert metadata["usage"]["output_tokens"] > 0
    assert metadata["model_version"] is None
    assert metadata["stop_reason"] == "end_turn"


STOP_REASONS = [("end_turn", "end_turn"), ("new_kind", "other"), ({"k": 1}, "other"), (7, "other")]


@pytest.mark.parametrize("raw, expected", [*STOP_REASONS, (None, None)])
def test_a_stop_reason_that_is_not_a_string_is_other(raw: Any, expected: str | None) -> None:
    """Every provider's stop reason goes through this one function."""
    table: dict[str, Any] = {"end_turn": "end_turn"}
    assert normalised_stop_reason(raw, table) == expected


@pytest.mark.parametrize(
    "raw, made_calls, expected",
    [
        ("tool_use", True, "tool_use"),
        ("tool_use", False, "other"),  # a frontend that sees tool_use looks for a call
        ("end_turn", True, "tool_use"),  # Gemini and Ollama say "stop" after calls
        (None, True, "tool_use"),
        ("max_tokens", True, "max_tokens"),
    ],
)
def test_tool_use_is_the_stop_reason_of_calls_made(
    raw: str | None, made_calls: bool, expected: str
) -> None:
    table: dict[str, Any] = {
        "end_turn": "end_turn",
        "tool_use": "tool_use",
        "max_tokens": "max_tokens",
    }
    assert normalised_stop_reason(raw, table, made_calls) == expected
