"""Routes, bad input, CORS: every refusal is a 4xx naming the problem, with no upstream call."""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import json
import os
import resource
import socket
from typing import Any

import flask
import pytest

from assistant import server
from assistant.config import ConfigError, Settings, shown_key_name
from assistant.http import _Accepted, _after_history, _client_gone_probe
from assistant.limits import replies_in_flight
from assistant.parking import Park
from assistant.request import AssistantRequest, Turn
from assistant.saving import History
from assistant.store import Author
from assistant.tracing import RequestLog
from assistant.worker import Instead
from devtools.fake_upstream import FakeUpstream, Script

from .conftest import ask, log_lines, sse_events

EXPOSED = "X-Trace-Id, Retry-After, WWW-Authenticate"


def test_health_is_ok_with_version_and_no_io(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["version"]
    assert set(body) == {"status", "version"}
    assert response.headers["X-Trace-Id"]  # every answer carries one


@pytest.mark.parametrize(
    ("written", "origin"),
    [
        ("https://Chat.Example.com", "https://chat.example.com"),
        ("https://chat.example.com:443/", "https://chat.example.com"),
        ("HTTPS://chat.example.com", "https://chat.example.com"),
        ("https://Bücher.example", "https://xn--bcher-kva.example"),
        ("https://faß.de", "https://xn--fa-hia.de"),  # as UTS 46 writes it, not IDNA 2003's fass.de
        ("https://\u2603.net", "https://xn--n3h.net"),  # a symbol IDNA 2008 refuses; browsers not
        ("https://\u2603.fa\u00df.de", "https://xn--n3h.xn--fa-hia.de"),  # and faß beside it
        ("http://[0:0:0:0:0:0:0:1]:8080", "http://[::1]:8080"),
        ("http://0x7f.1:5173", "http://127.0.0.1:5173"),
        # A dot at an address's end, full-width digits and dots, a host's escapes: a
        # browser reads them away (a reviewer's page was refused).
        ("http://127.0.0.1.:5173", "http://127.0.0.1:5173"),
        ("http://\uff11\uff12\uff17.1:5173", "http://127.0.0.1:5173"),
        ("http://192.168.0.1\uff0e", "http://192.168.0.1"),
        ("https://%41pp.example", "https://app.example"),
    ],
)
def test_an_allowed_origin_is_read_as_a_browser_writes_one(
    client, written: str, origin: str
) -> None:
    """A browser's Origin has its scheme and host in lower case, no default port, a host
    in its IDNA form or an address in its shortest: an entry written otherwise matched
    none, and turned the frontend away silently."""
    os.environ["CORS_ORIGINS"] = f"https://other.example, {written}"
    response = client.get("/health", headers={"Origin": origin})
    assert response.headers["Access-Control-Allow-Origin"] == origin


def test_an_allowed_origin_with_a_user_is_no_other_host(client) -> None:
    """`https://app.example.com@evil.example` names the host evil.example: read as a URL,
    it would have allowed that origin, with credentials."""
    os.environ["CORS_ORIGINS"] = "https://app.example.com@evil.example"
    for origin in ("https://evil.example", "https://app.example.com"):
        response = client.get("/health", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in response.headers


def test_origins_no_browser_can_send_are_said_in_the_log(capsys, monkeypatch) -> None:
    """Taken as written, they refuse every browser: the frontend saw a network error
    and the log said nothing (a reviewer's `app.example.com`, a space-separated list,
    a wildcard, an address with a path)."""
    written = (
        "https://ok.example, app.example.com, https://a.example https://b.example, "
        "https://*.example.com, https://app.example.com/chat, https://ok.example:443/, *, "
        "https://a\ufdd0b.com, "  # a code point no IDNA reading takes (nor a browser)
        "https://a\u200cb.com, https://\u0300a.com, "  # a joiner, a combining mark first
        "http://1.2.3.4.5, http://08.1.1.1, "  # ends in a number, and no address
        "https://a%3A8080, https://a%40b.com, https://a\uff20b.com"  # escaped, full-width
    )
    monkeypatch.setenv("CORS_ORIGINS", written)
    server.warn_of_cors_origins()
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    [line] = [line for line in lines if line["message"] == "cors.origins_match_nothing"]
    assert line["origins"] == [
        "app.example.com",
        "https://a.example https://b.example",
        "https://*.example.com",
        "https://app.example.com/chat",
        "https://a\ufdd0b.com",
        "https://a\u200cb.com",
        "https://\u0300a.com",
        "http://1.2.3.4.5",
        "http://08.1.1.1",
        "https://a%3A8080",
        "https://a%40b.com",
        "https://a\uff20b.com",
    ]
    monkeypatch.setenv("CORS_ORIGINS", "https://ok.example, null")  # a sandboxed page's
    server.warn_of_cors_origins()
    assert capsys.readouterr().out == ""


def test_a_wildcard_among_origins_is_said_in_the_log(capsys, monkeypatch) -> None:
    """`https://app.example.com,*`, meant as a list, admits every origin, and the app's
    loses its credentialed echo: the log said nothing (a reviewer)."""
    monkeypatch.setenv("CORS_ORIGINS", "https://app.example.com, *")
    server.warn_of_cors_origins()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["message"] == "cors.any_origin"
    monkeypatch.setenv("CORS_ORIGINS", " ")  # set, blank: the default, maybe not meant
    server.warn_of_cors_origins()
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["message"] == "cors.any_origin" and "blank" in line["hint"]
    monkeypatch.setenv("CORS_ORIGINS", "*")  # the default: nothing to say
    server.warn_of_cors_origins()
    assert capsys.readouterr().out == ""


def test_health_answers_a_preflight(client) -> None:
    """A page whose fetch adds a header (a tracing library's traceparent) preflights its
    GET /health first."""
    os.environ["CORS_ORIGINS"] = "https://chat.example.com/"  # as copied, with a slash
    asking = {"Origin": "https://chat.example.com", "Access-Control-Request-Method": "GET",
              "Access-Control-Request-Headers": "traceparent"}  # fmt: skip
    response = client.options("/health", headers=asking)
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
    assert response.headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
    assert response.headers["Access-Control-Allow-Headers"] == "traceparent"
    assert response.headers["X-Trace-Id"]
    assert client.post("/health").headers["Allow"] == "GET, HEAD, OPTIONS"


@pytest.mark.parametrize(
    "path",
    # The last two functions-framework routes itself, before our handler.
    ["/healthz", "/vac/other", "/", "/vac/assistant", "/robots.txt", "/favicon.ico"],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unknown_paths_are_404_json(client, path: str, method: str) -> None:
    response = client.open(path, method=method, json={"user_input": "hi"})
    assert response.status_code == 404
    assert response.content_type == "application/json"
    assert response.get_json()["code"] == "not_found"
    assert response.get_json()["trace_id"] == response.headers["X-Trace-Id"]


@pytest.mark.parametrize("path", ["/nothing-here", "/robots.txt", "/favicon.ico"])
def test_a_404_is_readable_by_an_allowed_browser_origin(client, path: str) -> None:
    response = client.get(path, headers={"Origin": "https://chat.example.com"})
    assert response.status_code == 404
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Vary"] == "Origin"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_are_405_json(client, fake: FakeUpstream, method: str) -> None:
    response = client.open("/vac/assistant/abc/sse", method=method)
    assert response.status_code == 405
    assert response.get_json()["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]
    assert fake.requests == []


def test_health_refuses_post(client) -> None:
    assert client.post("/health").status_code == 405


def _refused(response, status: int, code: str, fake: FakeUpstream, mentions: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["code"] == code
    assert mentions in body["error"]
    assert body["trace_id"] == response.headers["X-Trace-Id"]
    assert fake.requests == []  # no provider was called


@pytest.mark.parametrize(
    "assistant_id",
    ["__reserved__", "a" * 129, "has.dot", "..", "sp ace", "a/b", "%2F", "ü", "a%0Ab", "%0D%0A"],
)
def test_bad_assistant_ids_are_400(client, fake: FakeUpstream, assistant_id: str) -> None:
    response = client.post(f"/vac/assistant/{assistant_id}/sse", json={"user_input": "hi"})
    _refused(response, 400, "invalid_request", fake, "assistant id")


@pytest.mark.parametrize(
    "body",
    [
        {"user_input": "hi", "chat_history": [{"role": "LEAK my bank password", "content": "a"}]},
        {"user_input": "hi", "chat_history": [{"name": 'LEAK "my" bank', "content": "a"}]},
        {"user_input": "hi", "emissaryConfig": {"toolChoice": {"name": "LEAK my bank password"}}},
        {
            "user_input": "hi",
            "emissaryConfig": {"toolConfigs": {"LEAK my bank": {"description": ""}}},
        },
        {"user_input": "hi", "LEAK my bank password": "\ud800"},  # a key in a field's path
    ],
)
def test_a_refusal_quotes_the_clients_value_to_it_but_not_to_the_log(
    client, fake: FakeUpstream, capsys: pytest.CaptureFixture[str], body: dict[str, Any]
) -> None:
    # A client may put its prompt anywhere: the log keeps the field, not the value.
    response = client.post("/vac/assistant/abc/sse", json=body)
    _refused(response, 400, "invalid_request", fake, "LEAK")
    refused = [line for line in log_lines(capsys.readouterr().out) if "LEAK" in json.dumps(line)]
    assert refused == []


def test_a_line_break_in_the_id_is_still_the_assistant_route(client) -> None:
    """A decoded %0A fell out of the route: a 404 where a GET is a 405, an OPTIONS a
    preflight."""
    assert client.get("/vac/assistant/a%0Ab").status_code == 405
    assert client.options("/vac/assistant/a%0Ab/sse").status_code == 204


def test_encoded_slash_in_id_never_reaches_a_document_id(client, fake: FakeUpstream) -> None:
    response = client.post("/vac/assistant/a%2Fb/sse", json={"user_input": "hi"})
    _refused(response, 400, "invalid_request", fake, "assistant id")


def test_an_encoded_slash_before_sse_is_part_of_the_id(client, fake: FakeUpstream) -> None:
    """Routed on the unescaped path, it was the /sse route of assistant `demo`: a JSON
    caller got a stream."""
    response = client.post("/vac/assistant/demo%2Fsse", json={"user_input": "hi"})
    _refused(response, 400, "invalid_request", fake, "assistant id")


@pytest.mark.parametrize("path", ["/vac/%61ssistant/demo/sse", "/vac/assistant/demo/%73se"])
def test_escaped_letters_are_the_letters(client, fake: FakeUpstream, path: str) -> None:
    """Only an escaped slash is not what it stands for: a first version of routing on
    the path as written made these a 404 and a 400 (RFC 3986: the same path)."""
    response = client.post(path, json={"user_input": "hi"})
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    assert sse_events(response.get_data())[-1] == "[DONE]"
    assert client.get("/%68ealth").get_json()["status"] == "ok"


@pytest.mark.parametrize(
    "path", ["//vac/assistant/abc/sse", "/%2Fhealth", "/vac/assistant%2Fabc/sse"]
)
def test_a_path_is_routed_as_written(client, fake: FakeUpstream, path: str) -> None:
    """Werkzeug's path drops leading slashes and unescapes %2F: these reached the
    routes (a reviewer's `/%2Fhealth` was a 200)."""
    method = "GET" if "health" in path else "POST"
    response = client.open(path, method=method, json={"user_input": "hi"})
    assert response.status_code == 404 and response.get_json()["code"] == "not_found"
    assert fake.requests == []


@pytest.mark.parametrize(
    "headers",
    [{"Connection": "Upgrade", "Upgrade": "websocket"}, {"Host": ".."}, {"Host": "a" * 300}],
)
def test_what_werkzeug_refuses_in_routing_is_answered_by_ours(
    client, fake: FakeUpstream, headers: dict[str, str]
) -> None:
    """A WebSocket upgrade (a browser's `new WebSocket(...)` by mistake) and a Host no
    IDNA takes were werkzeug's HTML 400 on every route, before ours: no trace id, no
    CORS, no JSON. The upgrade is not taken (a server may ignore one); Host is unused."""
    assert client.get("/health", headers=headers).get_json()["status"] == "ok"
    missing = client.get("/nowhere", headers=headers)
    assert (missing.status_code, missing.get_json()["code"]) == (404, "not_found")
    response = client.post("/vac/assistant/demo/sse", json={"user_input": "hi"}, headers=headers)
    assert response.status_code == 200 and "X-Trace-Id" in response.headers
    assert sse_events(response.get_data())[-1] == "[DONE]"


def test_a_404_names_the_path_as_written(client) -> None:
    """A first version named a client's %00 as an escaped slash (`/health%2F`)."""
    for path in ("/health%00", "/%2Fhealth"):
        assert client.get(path).get_json()["error"] == f"no route for {path}"


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        ({}, "user_input is required"),
        ({"user_input": ""}, "user_input must not be empty"),
        ({"user_input": "  \n "}, "user_input must not be empty"),
        # Nothing that shows: zero-width and format characters, fillers, selectors.
        ({"user_input": " \u200b \ufeff\u2060 "}, "user_input must not be empty"),
        (
            {"user_input": "\u2063\u200e\u00ad\u3164\u2800\ufe0f\U000e0020"},
            "user_input must not be empty",
        ),
        # Unicode's default-ignorable Khmer vowels and Mongolian selectors, and those kept
        # default-ignorable for characters to come.
        ({"user_input": "\u2065\ufff0\U000e0000\U000e0fff"}, "user_input must not be empty"),
        # Unicode's default-ignorable Khmer vowels and Mongolian selectors.
        ({"user_input": "\u17b4\u17b5\u180b\u180c\u180d\u180f"}, "user_input must not be empty"),
        ({"user_input": 42}, "user_input must be a string"),
        ({"user_input": "hi", "chat_history": "nope"}, "chat_history must be a list"),
        ({"user_input": "hi", "chat_history": [1]}, "chat_history[0] must be an object"),
        (
            {"user_input": "hi", "chat_history": [{"role": "user"}]},
            "chat_history[0] needs a content",
        ),
        ({"user_input": "hi", "chat_history": [{"content": "x"}]}, "chat_history[0] needs a role"),
        (
            {"user_input": "hi", "chat_history": [{"role": "system", "content": "x"}]},
            "chat_history[0] role",
        ),
        (
            {"user_input": "hi", "chat_history": [{"role": "user", "content": ["x"]}]},
            "chat_history[0] needs a content",
        ),
        ({"user_input": "hi", "save_to_history": "yes"}, "save_to_history must be a boolean"),
        ({"user_input": "hi", "read_from_history": 1}, "read_from_history must be a boolean"),
        ({"user_input": "hi", "history_limit": "5"}, "history_limit must be an integer"),
        ({"user_input": "hi", "history_limit": True}, "history_limit must be an integer"),
        ({"user_input": "hi", "history_limit": 0}, "history_limit must be between"),
        ({"user_input": "hi", "thread_id": "a/b"}, "thread_id must be"),
        ({"user_input": "hi", "thread_id": "__x__"}, "thread_id must be"),
        ({"user_input": "hi", "trace_id": "has space"}, "trace_id must be"),
        ({"user_input": "hi", "trace_id": 7}, "trace_id must be a string"),
        ({"user_input": "hi", "emissaryConfig": []}, "emissaryConfig must be an object"),
        (
            {"user_input": "hi", "emissaryConfig": {"initialInstructions": 3}},
            "emissaryConfig.initialInstructions",
        ),
        (
            {"user_input": "hi", "emissaryConfig": {"currentUser": "me"}},
            "emissaryConfig.currentUser",
        ),
        (
            {"user_input": "hi", "emissaryConfig": {"assistantId": 5}},
            "emissaryConfig.assistantId must be a string",
        ),
        ({"user_input": "hi", "emissaryConfig": {"tools": "x"}}, "emissaryConfig.tools"),
        (
            {"user_input": "hi", "emissaryConfig": {"save_to_history": "no"}},
            "emissaryConfig.save_to_history",
        ),
        (
            {"user_input": "hi", "save_to_history": 1, "emissaryConfig": {"save_to_history": True}},
            "save_to_history must be a boolean",
        ),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    client, fake: FakeUpstream, body: dict, mentions: str
) -> None:
    response = client.post("/vac/assistant/abc/sse", json=body)
    _refused(response, 400, "invalid_request", fake, mentions)


def test_body_that_is_not_an_object_is_400(client, fake: FakeUpstream) -> None:
    response = client.post("/vac/assistant/abc/sse", data="[1, 2]", content_type="application/json")
    _refused(response, 400, "invalid_request", fake, "JSON object")


def test_invalid_json_is_400(client, fake: FakeUpstream) -> None:
    response = client.post(
        "/vac/assistant/abc/sse", data="{not json", content_type="application/json"
    )
    _refused(response, 400, "invalid_request", fake, "not valid JSON")


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/html", "application/vnd.api+json", None],
)
def test_non_json_media_type_is_415(client, fake: FakeUpstream, content_type: str | None) -> None:
    response = client.post(
        "/vac/assistant/abc/sse", data='{"user_input": "hi"}', content_type=content_type
    )
    _refused(response, 415, "unsupported_media_type", fake, "application/json")


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_coded_body_is_a_415_naming_the_coding(client, fake: FakeUpstream, coding: str) -> None:
    body = b'{"user_input": "hi"}'
    sent = gzip.compress(body) if coding == "gzip" else body  # br: a label on plain JSON
    response = client.post(
        "/vac/assistant/abc/sse",
        data=sent,
        content_type="application/json",
        headers={"Content-Encoding": coding},
    )
    _refused(response, 415, "unsupported_media_type", fake, f"Content-Encoding '{coding}'")


@pytest.mark.parametrize(
    "body",
    [
        {"user_input": "hi", "x": {"k" * 100_000 + "\ud800": 1}},  # a key that cannot be encoded
        {"user_input": "hi", "emissaryConfig": {"toolConfigs": {"t" * 100_000: 1}}},
    ],
)
def test_a_refusal_naming_a_huge_key_keeps_to_a_bound(
    client, fake: FakeUpstream, capfd, body: dict[str, Any]
) -> None:
    """A field's path holds the client's own keys: the answer keeps to a bound (both
    ends of a path), and the log keeps the key out."""
    response = client.post("/vac/assistant/abc/sse", json=body)
    assert response.status_code == 400 and fake.requests == []
    error = response.get_json()["error"]
    assert len(error) <= 400 and ("k" * 64 in error or "t" * 64 in error)
    [refused] = [line for line in log_lines(capfd.readouterr().out) if "refused" in line["message"]]
    assert "k" * 8 not in refused["reason"] and "t" * 8 not in refused["reason"]


def test_a_refused_body_keeps_its_own_trace_id(client, fake: FakeUpstream, capfd) -> None:
    response = client.post(
        "/vac/assistant/abc/sse",
        json={"user_input": "  ", "trace_id": "frontend.trace:400"},
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    _refused(response, 400, "invalid_request", fake, "user_input")
    assert response.headers["X-Trace-Id"] == "frontend.trace:400"
    [refused] = [line for line in log_lines(capfd.readouterr().out) if "refused" in line["message"]]
    assert refused["trace_id"] == "frontend.trace:400"
    # A value the parser itself refuses, in another field, leaves the trace id standing
    # (a reviewer found a new one given for these).
    for value in ('"\\ud800"', "1e400", "NaN", "[" * 70 + "]" * 70):
        raw = f'{{"user_input": "hi", "trace_id": "frontend.trace:400", "x": {value}}}'
        response = client.post("/vac/assistant/abc/sse", data=raw, content_type="application/json")
        _refused(response, 400, "invalid_request", fake, "")
        assert response.get_json()["trace_id"] == "frontend.trace:400", value
    # A trace id that is itself malformed is not taken: the headers' is.
    response = client.post("/vac/assistant/abc/sse", json={"user_input": "hi", "trace_id": "a b"})
    _refused(response, 400, "invalid_request", fake, "trace_id")
    assert response.headers["X-Trace-Id"] != "a b"


def test_oversize_body_is_413(client, fake: FakeUpstream) -> None:
    os.environ["MAX_BODY_BYTES"] = "1000"
    body = json.dumps({"user_input": "x" * 2000})
    response = client.post("/vac/assistant/abc/sse", data=body, content_type="application/json")
    _refused(response, 413, "payload_too_large", fake, "1000 bytes")


def test_default_body_limit_is_one_mebibyte(client, fake: FakeUpstream) -> None:
    body = json.dumps({"user_input": "hi", "padding": "x" * (1024 * 1024)})
    response = client.post("/vac/assistant/abc/sse", data=body, content_type="application/json")
    _refused(response, 413, "payload_too_large", fake, "1048576 bytes")


def test_user_input_length_limit(client, fake: FakeUpstream) -> None:
    os.environ["MAX_INPUT_CHARS"] = "10"
    _refused(ask(client, "x" * 11), 400, "invalid_request", fake, "longer than 10")


def test_history_length_limit(client, fake: FakeUpstream) -> None:
    os.environ["MAX_HISTORY_MESSAGES"] = "2"
    history = [{"role": "user", "content": "x"}] * 3
    _refused(ask(client, chat_history=history), 400, "invalid_request", fake, "at most 2")


def test_unknown_fields_are_ignored(client, fake: FakeUpstream) -> None:
    response = ask(client, surprise={"nested": True}, emissaryConfig={"extra": 1, "name": "Bot"})
    assert response.status_code == 200
    assert sse_events(response.get_data())[-1] == "[DONE]"


def test_an_assistant_turn_sent_back_keeps_a_close_tag_at_a_line_start(
    client, fake: FakeUpstream
) -> None:
    """It may be the text a page showed, where the tag followed a block: read as a reply
    begun inside its thinking, all before it was taken out (a reviewer's)."""
    shown = "R1 sends:\n```\nOkay.\n</think>\nHello!\n```"
    history = [
        {"role": "user", "content": "What does R1 send?"},
        {"role": "assistant", "content": shown},
    ]
    ask(client, "And then?", chat_history=history).get_data()
    assert fake.wait_for_requests(1)[0].body["messages"][1] == {
        "role": "assistant",
        "content": shown,
    }


@pytest.mark.parametrize("value", ["<think>", "</think>", "b"])
def test_a_structured_answer_after_a_lone_close_tag_sent_back_is_its_json(
    client, fake: FakeUpstream, value: str
) -> None:
    """An R1's answer to a response schema, sent back whole: read as shown text, the tag
    in its JSON string was taken for one and the JSON cut (a reviewer's); with no open
    tag in it, it went back with its reasoning (another's)."""
    json_answer = json.dumps({"a": value})
    answer = f"x\n</think>\n{json_answer}"
    history = [{"role": "user", "content": "Fill it in."}, {"role": "assistant", "content": answer}]
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    ask(
        client, "Again.", chat_history=history, emissaryConfig={"responseSchema": schema}
    ).get_data()
    sent = fake.wait_for_requests(1)[0].body["messages"][1]
    assert sent == {"role": "assistant", "content": json_answer}


@pytest.mark.parametrize("instructions", ["", "  \n", "\u200b \u2800"])
def test_a_system_prompt_that_shows_nothing_is_not_sent(
    client, fake: FakeUpstream, instructions: str
) -> None:
    """Anthropic refuses a system of blanks: every request of such a frontend was a 400."""
    ask(client, emissaryConfig={"initialInstructions": instructions}).get_data()
    assert "system" not in fake.wait_for_requests(1)[0].body


def test_chat_history_formats_are_normalised_for_the_provider(client, fake: FakeUpstream) -> None:
    history = [
        {"role": "user", "content": "first question"},
        {"name": "AI", "content": "first answer"},
        {"name": "Human", "content": "second question"},
        {"role": None, "sender": "assistant", "content": None, "text": "second answer"},
        {"sender": "user", "text": "   "},  # empty: dropped
        {"role": "assistant", "content": "\u200b \u2800"},  # shows nothing: dropped too
    ]  # null is "not given": a union type sends the field it does not use as null
    response = ask(
        client,
        "third question",
        chat_history=history,
        emissaryConfig={"initialInstructions": "Be brief."},
    )
    assert response.status_code == 200
    response.get_data()
    sent = fake.wait_for_requests(1)[0].body
    assert sent["system"] == "Be brief."
    assert sent["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "third question"},
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HEARTBEAT_SECONDS", "soon"),
        ("AUTH_CLOCK_SKEW_SECONDS", "nan"),  # would pass every comparison: any token's times
        ("IDLE_TIMEOUT_SECONDS", "inf"),
        ("MAX_BODY_BYTES", "infinity"),
        # Past a day a timeout is a slip; past ~1e9 s the socket's and gRPC's deadlines
        # overflow: every reply a 500 internal_error, or every save failed.
        ("SEND_TIMEOUT_SECONDS", "1e10"),
        ("PERSIST_TIMEOUT_SECONDS", "1e10"),
        ("ANTHROPIC_MAX_TOKENS", "1e308"),  # sent as a 309-digit number
        ("ANTHROPIC_TEMPERATURE", "1.5"),  # Anthropic's range is 0-1: every call a 400
        ("ANTHROPIC_BASE_URL", "127.0.0.1:8080"),  # every reply upstream_protocol
        ("ASSISTANT_PROVIDERS", " , "),  # every reply no_provider
        ("ASSISTANT_PROVIDERS", "anthropic,openai,anthropic"),  # asked twice per reply
        ("FIRESTORE_COLLECTION", "a/b"),  # every save failed, or a nested path
        ("FIRESTORE_COLLECTION", "__x__"),
        ("FIRESTORE_DATABASE", "bad/db"),  # every save failed, /health said ok
        ("FIRESTORE_DATABASE", "My_DB"),
    ],
)
def test_misconfiguration_is_a_500_naming_no_secret(
    client, fake: FakeUpstream, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    os.environ[name] = value
    os.environ["GOOGLE_CLOUD_PROJECT"] = "demo-misconfigured"
    response = ask(client)
    assert response.status_code == 500
    assert response.get_json()["code"] == "config_error"
    assert fake.requests == []
    logged = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "config.invalid"
    ]
    assert logged and name in logged[0]["reason"]
    # The project is known even so: the line links to the request's trace.
    assert logged[0]["logging.googleapis.com/trace"].startswith("projects/demo-misconfigured/")


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        # Put into projects/<project>/secrets/<id>: every read failed, logged as an outage.
        ("SECRETS_PROJECT", "my proj", True),
        ("SECRETS_PROJECT", "demo-x", False),
        ("SECRETS_PROJECT", "123456", False),
        ("ANTHROPIC_KEY_NAME", "projects/other/secrets/ANTHROPIC_API_KEY", True),
        ("ANTHROPIC_KEY_NAME", "anthropic.key", True),  # an env var's name, no secret id
    ],
)
def test_a_secret_path_of_no_ids_is_a_config_error_when_secret_manager_is_read(
    client, fake: FakeUpstream, name: str, value: str, refused: bool
) -> None:
    os.environ.update({name: value})
    key = os.environ.pop("ANTHROPIC_API_KEY")
    os.environ[os.environ.get("ANTHROPIC_KEY_NAME", "ANTHROPIC_API_KEY")] = key
    # Not read (Secret Manager off): the key named so is the env var's.
    assert ask(client).status_code == 200
    fake.requests.clear()
    os.environ.update(SECRET_MANAGER="true")  # the env var still wins, but it is checked
    os.environ.setdefault("SECRETS_PROJECT", "demo-secrets")  # where it would be read
    response = ask(client)
    assert (response.status_code == 500) is refused
    if refused:
        assert response.get_json()["code"] == "config_error"
        assert fake.requests == []


def test_a_key_name_is_not_checked_as_a_secret_id_when_no_project_is_there_to_read() -> None:
    """Secret Manager on, but no project to read it in (keys.py reads none): the env var's
    name alone, refused as a secret id, kept an env-var-only deployment from starting."""
    env = {"SECRET_MANAGER": "true", "ASSISTANT_PROVIDERS": "anthropic"}
    settings = Settings.from_env({**env, "ANTHROPIC_KEY_NAME": "anthropic.key"})
    assert settings.providers["anthropic"].key_name == "anthropic.key"
    with pytest.raises(ConfigError, match="ANTHROPIC_KEY_NAME"):
        Settings.from_env({**env, "ANTHROPIC_KEY_NAME": "anthropic.key", "SECRETS_PROJECT": "p"})


PASTED_KEY = "sk-ant-api03-" + "Zq9x" * 20


@pytest.mark.parametrize(
    "pasted",
    [
        PASTED_KEY,
        f'"{PASTED_KEY}"',
        f"Bearer {PASTED_KEY}",
        PASTED_KEY.upper(),
        "AIzaSy" + "A1b2" * 3 + "\n" + "A1b2_" * 4,  # cut by a line break
        "a3f9c2e17b4d4e0f" + "a1b2" * 4,  # hex, as Azure OpenAI's keys are
    ],
)
@pytest.mark.parametrize("secret_manager", [False, True])
def test_a_key_pasted_as_its_name_is_in_no_log_line(
    client, fake: FakeUpstream, capsys: pytest.CaptureFixture[str], pasted: str,
    secret_manager: bool,
) -> None:  # fmt: skip
    """It went into log lines as a name ("no usable key (sk-ant-... unset"), and into a
    config error's; quoted or after `Bearer ` too (reviewers')."""
    os.environ["ANTHROPIC_KEY_NAME"] = pasted
    os.environ.pop("ANTHROPIC_API_KEY")
    if secret_manager:
        os.environ.update(SECRET_MANAGER="true", SECRETS_PROJECT="demo-secrets")
    response = ask(client)
    assert response.status_code in (409, 500) and fake.requests == []
    logged = capsys.readouterr().out
    assert "not shown: it may be a key" in logged  # the skip, the secret read's line or the
    # config error (a name no secret id) is there, without the key
    for piece in ("Zq9xZq9x", "ZQ9XZQ9X", "A1b2A1b2", "a1b2a1b2"):
        assert piece not in logged


def test_a_long_secret_name_that_begins_as_keys_do_is_a_name() -> None:
    # Refusing such names (a first version) broke deployments that worked (a reviewer's).
    env = {"ASSISTANT_PROVIDERS": "anthropic", "ANTHROPIC_KEY_NAME": "sk_anthropic_key_production"}
    assert Settings.from_env(env).providers["anthropic"].key_name == "sk_anthropic_key_production"


@pytest.mark.parametrize(
    "name", ["ANTHROPIC_API_KEY", "anthropic-api-key", "MY_OPENAI_KEY_2", "task-anthropic-key"]
)
def test_a_name_of_a_names_shape_is_shown(name: str) -> None:
    assert shown_key_name(name) == name


@pytest.mark.parametrize("name", ["GOOGLE_CLOUD_PROJECT", "GCP_PROJECT"])
def test_a_project_set_but_blank_is_a_config_error(
    client, fake: FakeUpstream, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """Trimmed, it named no project, and the client libraries, left to find one, read
    the variable again untrimmed: every save failed while /health said ok (a reviewer).
    Unset, the libraries find the project themselves (Cloud Run's metadata server)."""
    os.environ[name] = "   "
    response = ask(client)
    assert (response.status_code, response.get_json()["code"]) == (500, "config_error")
    assert fake.requests == []
    logged = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "config.invalid"
    ]
    assert f"{name} is set but blank" in logged[0]["reason"]  # the one set (a reviewer)
    del os.environ[name]
    fake.push(Script(tokens=["Fine."]))
    answered = ask(client)
    assert answered.status_code == 200
    assert sse_events(answered.get_data())[-1] == "[DONE]"  # read: its slot given back


@pytest.mark.parametrize("origins", ["*", "https://chat.example.com"])
def test_a_misconfiguration_answer_is_readable_by_an_allowed_browser_origin(
    client, fake: FakeUpstream, origins: str
) -> None:
    # Without CORS headers a browser shows its caller a network error, not the code.
    os.environ["CORS_ORIGINS"] = origins
    os.environ["HEARTBEAT_SECONDS"] = "soon"

    def post_from(origin: str) -> Any:
        return client.post(
            "/vac/assistant/abc/sse", json={"user_input": "Hello?"}, headers={"Origin": origin}
        )

    response = post_from("https://chat.example.com")
    assert response.status_code == 500
    assert response.get_json()["code"] == "config_error"
    assert response.headers["Access-Control-Allow-Origin"] == origins
    assert response.headers["Access-Control-Expose-Headers"] == EXPOSED
    assert response.headers["Vary"] == "Origin"
    other = post_from("https://other.example.com")
    assert other.status_code == 500
    assert other.headers.get("Access-Control-Allow-Origin") == ("*" if origins == "*" else None)
    assert fake.requests == []


@pytest.mark.parametrize("path", ["/vac/assistant/abc/sse", "/health"])
def test_a_preflight_is_answered_when_a_setting_is_wrong(client, path: str) -> None:
    # A browser sends a preflighted request only after a 2xx preflight: with a 500 here
    # the page would see a network error, never the config_error that follows.
    os.environ["HEARTBEAT_SECONDS"] = "soon"
    response = client.options(
        path,
        headers={
            "Origin": "https://chat.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        },
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Allow-Headers"] == "content-type,authorization"
    assert "OPTIONS" in response.headers["Access-Control-Allow-Methods"]
    assert response.headers["X-Trace-Id"]
    # The route and the method still come first (§9), then the setting.
    asked = client.post(path, json={"user_input": "hi"})
    assert asked.get_json()["code"] == (
        "method_not_allowed" if path == "/health" else "config_error"
    )
    elsewhere = client.options("/elsewhere", headers={"Origin": "https://chat.example.com"})
    assert elsewhere.status_code == 404


def test_preflight_with_wildcard_origins(client) -> None:
    response = client.options(
        "/vac/assistant/abc/sse",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    # It depends on the Origin (without one it has no CORS) and on the headers asked for.
    assert response.headers["Vary"] == "Origin, Access-Control-Request-Headers"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_cors_with_listed_origins_echoes_origin_with_credentials(
    client, fake: FakeUpstream
) -> None:
    os.environ["CORS_ORIGINS"] = "https://chat.example.com, https://admin.example.com"
    allowed = client.options("/vac/assistant/abc", headers={"Origin": "https://chat.example.com"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert allowed.headers["Vary"] == "Origin, Access-Control-Request-Headers"
    refused = client.options("/vac/assistant/abc", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    # The answer depends on the Origin, allowed or not: no cache may hand it to another.
    assert refused.headers["Vary"] == "Origin, Access-Control-Request-Headers"
    assert "Access-Control-Allow-Methods" not in refused.headers
    assert client.get("/health").headers["Vary"] == "Origin"
    streamed = client.post(
        "/vac/assistant/abc/sse",
        json={"user_input": "hi"},
        headers={"Origin": "https://chat.example.com"},
    )
    assert streamed.headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
    # Browser code may read the trace id, Retry-After on a 429 or 503, and why a 401.
    assert streamed.headers["Access-Control-Expose-Headers"] == EXPOSED


def test_thinking_in_an_assistant_turn_is_not_sent_back(client, fake: FakeUpstream) -> None:
    """A frontend that keeps the final `answer` as history sends its thinking back: the
    model gets the visible text, as from a history read from the store (a reviewer saw
    the old reasoning go back as text). A user's turn is sent as it is."""
    history = [
        {"role": "user", "content": "Plan? <think>mine</think>"},
        {"role": "assistant", "content": "<thinking>secret plan</thinking>The answer."},
        {"role": "assistant", "content": "<think>only thinking</think>"},  # nothing left
    ]
    ask(client, "and then?", chat_history=history).get_data()
    assert fake.wait_for_requests(1)[0].body["messages"] == [
        {"role": "user", "content": "Plan? <think>mine</think>"},
        {"role": "assistant", "content": "The answer."},
        {"role": "user", "content": "and then?"},
    ]


def test_history_opening_with_the_assistant_starts_at_the_first_user_turn(client, fake) -> None:
    history = [
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "a question"},
        {"role": "user", "content": "and another"},
        {"role": "assistant", "content": "an answer"},
    ]
    ask(client, "next", chat_history=history).get_data()
    assert fake.wait_for_requests(1)[0].body["messages"] == [
        {"role": "user", "content": "a question\n\nand another"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": "next"},
    ]


def test_preflight_allows_the_headers_the_frontend_asks_for(client) -> None:
    response = client.options(
        "/vac/assistant/abc/sse",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-frontend-trace",
        },
    )
    assert response.headers["Access-Control-Allow-Headers"] == "content-type, x-frontend-trace"
    assert "Content-Type" not in response.headers


def test_json_sent_as_text_plain_is_accepted(client, fake: FakeUpstream) -> None:
    """What a preflight-free fetch or sendBeacon sends."""
    response = client.post(
        "/vac/assistant/abc/sse",
        data='{"user_input": "hi"}',
        content_type="text/plain;charset=UTF-8",
    )
    assert response.status_code == 200
    assert sse_events(response.get_data())[-1] == "[DONE]"


@pytest.mark.parametrize(
    ("body", "mentions"),
    [
        pytest.param(b'{"a":' * 100_000, "nested more than 64 levels", id="deep-100000"),
        pytest.param(b'{"user_input": "hi", "x": ' + b"[" * 70 + b"]" * 70 + b"}",
                     "nested more than 64 levels", id="deep-70"),
        pytest.param(b'{"user_input": "hi", "n": ' + b"9" * 5000 + b"}",
                     "n is a number longer than 40 characters", id="huge-integer"),
        pytest.param(b'{"user_input": "hi", "n": 1e999}', "n is a number too large",
                     id="float-overflow"),
        pytest.param(b'{"user_input": "hi", "chat_history": [{"n": NaN}]}',
                     "chat_history[0].n is NaN", id="nan"),
        pytest.param(b'{"user_input": "hi", "x": [' + b"0," * 60_000 + b"0]}",
                     "more than 50000 values", id="too-many-values"),
        pytest.param(b'{"user_input": "\xff"}', "not UTF-8", id="not-utf8"),
    ],
)  # fmt: skip
def test_bad_json_of_any_shape_is_400(client, fake: FakeUpstream, body: bytes, mentions: str):
    response = client.post("/vac/assistant/abc/sse", data=body, content_type="application/json")
    _refused(response, 400, "invalid_request", fake, mentions)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"user_input": "hi \ud800"}, "user_input"),
        ({"user_input": "hi", "chat_history": [{"role": "user", "content": "a\udfff"}]},
         "chat_history[0].content"),
        ({"user_input": "hi", "emissaryConfig": {"initialInstructions": "\ud800"}},
         "emissaryConfig.initialInstructions"),
        ({"user_input": "hi", "emissaryConfig": {"currentUser": {"email": "a\ud800@x"}}},
         "emissaryConfig.currentUser.email"),
        ({"user_input": "hi", "emissaryConfig": {"currentUser": {"displayName": "\udc00"}}},
         "emissaryConfig.currentUser.displayName"),
        # A key that is not a name is quoted (the log then keeps it out), its escape
        # written once.
        ({"user_input": "hi", "unknown": {"\ud800": 1}}, "unknown.'\\ud800'"),
    ],
)  # fmt: skip
def test_a_lone_surrogate_is_400_naming_the_field(
    client, fake: FakeUpstream, firestore, body: dict, field: str
) -> None:
    raw = json.dumps({**body, "save_to_history": True}).encode()  # \uXXXX escapes survive
    response = client.post("/vac/assistant/abc/sse", data=raw, content_type="application/json")
    _refused(
        response, 400, "invalid_request", fake, f"{field} contains text that cannot be encoded"
    )
    assert list(firestore.collection("assistants/abc/messages").stream()) == []


def test_a_refused_assistant_id_is_logged_with_the_rule_it_broke(
    client, fake: FakeUpstream, capsys
) -> None:
    """The log leaves out what a refusal quotes; the id rule's own characters were quoted,
    and the log read "0-9, '…' or '…'" (a reviewer)."""
    client.post("/vac/assistant/__x__/sse", json={"user_input": "hi"})
    [refused] = [line for line in log_lines(capsys.readouterr().out)
                 if line["message"] == "request.refused"]  # fmt: skip
    assert "A-Z a-z 0-9 _ -" in refused["reason"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/my-secret-prompt", "Content-Encoding": ""},
        {"Content-Type": "application/json", "Content-Encoding": "my-secret-prompt text"},
    ],
    ids=["content-type", "content-encoding"],
)
def test_a_refused_header_is_named_to_its_client_and_left_out_of_the_log(
    client, fake: FakeUpstream, capsys, headers: dict[str, str]
) -> None:
    """The log leaves out what a refusal quotes: these two were not quoted, and went into
    the log as the client wrote them (a reviewer's)."""
    response = client.post("/vac/assistant/abc/sse", data=b'{"user_input": "hi"}', headers=headers)
    _refused(response, 415, "unsupported_media_type", fake, "'")
    assert "my-secret-prompt" in response.get_json()["error"]
    [refused] = [line for line in log_lines(capsys.readouterr().out)
                 if line["message"] == "request.refused"]  # fmt: skip
    assert "my-secret-prompt" not in refused["reason"] and "'…'" in refused["reason"]


def test_a_quoted_key_past_the_messages_cut_is_still_left_out_of_the_log(
    client, fake: FakeUpstream, capsys
) -> None:
    """Names before it pushed a long key's opening quote into the part of the message that
    is cut: its closing quote had no partner, and the key was logged (a reviewer's)."""
    secret = "my card is 4111 1111 1111 1111 " * 8
    key = {"a" * 64: {"b" * 64: {"c" * 64: {"d" * 64: {secret: 10**50}}}}}
    body = {"user_input": "hi", "x": key}
    response = client.post("/vac/assistant/abc/sse", json=body)
    assert response.status_code == 400
    [refused] = [line for line in log_lines(capsys.readouterr().out)
                 if line["message"] == "request.refused"]  # fmt: skip
    assert "4111" not in refused["reason"] and "longer than 40 characters" in refused["reason"]


@pytest.mark.parametrize(
    "pattern", ["SECRET-IN-PATTERN(", "(?P<SECRET IN NAME>x)"], ids=["unclosed", "group-name"]
)
def test_a_refused_pattern_is_logged_without_it(
    client, fake: FakeUpstream, capsys, pattern: str
) -> None:
    """The log leaves out what a refusal quotes: the apostrophe of "Python's" in the
    message paired with the pattern's first quote, and the pattern was logged (a
    reviewer); re's own message may quote the pattern's pieces too."""
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": pattern}}}
    body = {"user_input": "hi", "emissaryConfig": {"responseSchema": schema}}
    response = client.post("/vac/assistant/abc/sse", json=body)
    assert response.status_code == 400 and "SECRET" in response.get_json()["error"]
    log = capsys.readouterr().out
    assert '"request.refused"' in log and "SECRET" not in log
    assert fake.requests == []


SECRET_WORDS = "Look up the patient's record. Patient Jane Doe, CONFIDENTIAL-DIAGNOSIS " * 4


@pytest.mark.parametrize(
    "parameters",
    [
        # jsonschema's message quotes the value, cut short (no closing quote), and the
        # value's apostrophe pairs with the wrong quote.
        {"type": "object", "properties": {"q": {"type": "string", "description": [SECRET_WORDS]}}},
        # A property's name in the path, unquoted.
        {"type": "object", "properties": {SECRET_WORDS: {"type": 5}}},
        # A reference's place.
        {"type": "object", "properties": {SECRET_WORDS: {"$ref": "#/nowhere"}}},
    ],
    ids=["value-cut-short", "name-in-the-path", "reference-at-a-name"],
)
def test_a_refused_schema_is_logged_without_its_words(
    client, fake: FakeUpstream, capsys, parameters: dict
) -> None:
    """A tool's description or a property's name is the frontend's text, kept out of the
    log as its prompt is: the refusal's log line held it (a reviewer)."""
    tool = {"description": "d", "parameters": parameters}
    config = {"tools": ["t"], "toolConfigs": {"t": tool}}
    response = client.post(
        "/vac/assistant/abc/sse", json={"user_input": "hi", "emissaryConfig": config}
    )
    assert (
        response.status_code == 400 and "toolConfigs.t.parameters" in response.get_json()["error"]
    )
    [refused] = [line for line in log_lines(capsys.readouterr().out)
                 if line["message"] == "request.refused"]  # fmt: skip
    assert "toolConfigs.t.parameters" in refused["reason"]
    assert "CONFIDENTIAL" not in refused["reason"] and "patient" not in refused["reason"]
    assert fake.requests == []


def test_a_body_cut_off_is_refused_not_a_crash(client, fake: FakeUpstream, capsys) -> None:
    """The client left half way through its body: the server's read fails (gunicorn's
    NoMoreData, an OSError). We refuse it as a bad request (400, logged as refused, no
    stack trace). Nobody is left to read the answer, and functions-framework's own
    after-request hook then trips over the same body, so what goes out is its 500."""

    class CutBody(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError("No more data")

    environ = {"wsgi.input": CutBody(), "CONTENT_LENGTH": "100"}
    client.post(
        "/vac/assistant/abc/sse", content_type="application/json", environ_overrides=environ
    )
    log = capsys.readouterr().out
    assert '"request.refused"' in log
    assert "request body ended before it was complete" in log
    assert "request.crashed" not in log
    assert fake.requests == []


def test_the_client_gone_probe_works_past_descriptor_1024() -> None:
    # select() refuses descriptors of 1024 and above; an instance with hundreds of
    # streams has them, and a refusal must not read as "the client left".
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] <= 1100:
        pytest.skip("the descriptor limit is too low to open descriptor 1100")
    ours, client = socket.socketpair()
    high = os.dup2(ours.fileno(), 1100)
    ours.close()
    sock = socket.socket(fileno=high)
    try:
        gone = _client_gone_probe({"gunicorn.socket": sock})
        assert gone() is False  # connected, nothing sent
        client.sendall(b"x")
        assert gone() is False  # bytes waiting are not a close
        client.close()
        sock.recv(1)
        assert gone() is True  # the peer closed
    finally:
        sock.close()


def test_a_bug_as_a_reply_begins_after_its_history_read_is_a_500(capsys) -> None:
    """Once its parked history read ends, the reply begins in the response's generator:
    a bug there closed the connection without an answer (a reviewer), where `handle`
    answers any other with a 500 (and CORS) and logs it."""
    reading: concurrent.futures.Future[tuple[Turn, ...]] = concurrent.futures.Future()
    kept: list[int] = []

    class Buggy(_Accepted):
        def begin(self, history: History | None) -> flask.Response:
            raise RuntimeError("a bug")

        def keep_question(self) -> None:
            kept.append(1)

    held = replies_in_flight.count()
    slot = replies_in_flight.take(None, 100, 1000)
    log = RequestLog("t-bug")
    asked = AssistantRequest(assistant_id="a", user_input="hi", read_from_history=True)
    nobody = Author(None, None, None)
    accepted = Buggy({}, asked, nobody, slot, Settings.from_env({}), "t-bug", log, 0.0, [],
                     None, True, True, lambda: False)  # fmt: skip
    response = _after_history(reading, 1.0, accepted)
    response.headers["Access-Control-Allow-Origin"] = "*"  # as `handle` adds it
    items = iter(response.response)
    assert isinstance(next(items), Park)
    reading.set_result(())  # the read ends: the reply begins
    instead = next(items)
    assert isinstance(instead, Instead) and instead.status.startswith("500")
    assert json.loads(instead.body)["code"] == "internal_error"
    assert ("Access-Control-Allow-Origin", "*") in instead.headers
    response.close()
    assert replies_in_flight.count() == held and kept == []  # it began: no question kept here
    assert '"request.crashed"' in capsys.readouterr().out
