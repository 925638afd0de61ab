"""docs/API.md against the code, so the reference cannot drift from what the service does.

The facts come from the code itself, never from a copy in this file: the
error codes from `assistant.errors`, the request fields from the source of
`assistant/request.py` and `assistant/tools.py`, and the metadata keys and
statuses from real requests through the app (the fake upstream on loopback,
the Firestore emulator for `message_ids`). Nothing of ours is mocked.
"""

from __future__ import annotations

import ast
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from assistant import request as request_module
from assistant.config import Settings
from assistant.errors import ERROR_CODES
from assistant.http import SSE_HEADERS
from assistant.limits import replies_in_flight
from devtools.fake_upstream import FakeUpstream, Script

from .conftest import ROOT, ask, sse_events
from .firebase_tokens import PROJECT, SigningKey, claims

DOC = ROOT / "docs" / "API.md"
TEXT = DOC.read_text(encoding="utf-8")

WEATHER_TOOL = {
    "tools": ["weather"],
    "toolConfigs": {
        "weather": {
            "description": "Current weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    },
}


def section(title: str) -> str:
    """The text under `## <title>`, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", TEXT, re.M | re.S)
    assert match, f"docs/API.md has no section '## {title}'"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every Markdown table row in `text` (header and rule rows left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return [row for row in rows if row[0] not in ("status", "key", "field", "limit")]


def first_code(cell: str) -> str | None:
    match = re.match(r"`([^`]+)`", cell)
    return match.group(1) if match else None


def error_table() -> dict[str, tuple[str, str]]:
    """code -> (status cell, whole row) from the doc's error code table."""
    table: dict[str, tuple[str, str]] = {}
    for row in table_rows(section("Error codes")):
        code = first_code(row[1])
        assert code is not None, row
        assert code not in table, f"{code} is listed twice"
        table[code] = (row[0], " | ".join(row))
    return table


def documented(name: str, text: str = TEXT) -> bool:
    return f"`{name}`" in text


# -- error codes ----------------------------------------------------------------


def test_the_error_table_lists_every_code_and_no_other() -> None:
    table = error_table()
    assert sorted(ERROR_CODES - table.keys()) == [], "codes missing from the table"
    assert sorted(table.keys() - ERROR_CODES) == [], "codes in the table the service never uses"


def _hold_slot(user: str | None) -> Callable[[], None]:
    slot = replies_in_flight.take(user, 100_000, 100_000)
    return slot.release


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _not_found(client: Any, fake: FakeUpstream) -> Any:
    return client.get("/no/such/route")


def _method_not_allowed(client: Any, fake: FakeUpstream) -> Any:
    return client.get("/vac/assistant/demo/sse")


def _invalid_request(client: Any, fake: FakeUpstream) -> Any:
    return client.post("/vac/assistant/demo/sse", json={"user_input": 3})


def _unsupported_media_type(client: Any, fake: FakeUpstream) -> Any:
    return client.post("/vac/assistant/demo/sse", data="hi", content_type="text/html")


def _payload_too_large(client: Any, fake: FakeUpstream) -> Any:
    os.environ["MAX_BODY_BYTES"] = "10"
    return ask(client, "a question longer than ten bytes")


def _no_provider(client: Any, fake: FakeUpstream) -> Any:
    del os.environ["ANTHROPIC_API_KEY"]
    return ask(client)


def _unauthenticated(client: Any, fake: FakeUpstream) -> Any:
    os.environ["AUTH_MODE"] = "firebase"
    os.environ["FIREBASE_PROJECT_ID"] = PROJECT
    return ask(client)


def _auth_unavailable(client: Any, fake: FakeUpstream) -> Any:
    os.environ["AUTH_MODE"] = "firebase"
    os.environ["FIREBASE_PROJECT_ID"] = PROJECT
    os.environ["FIREBASE_CERTS_URL"] = f"http://127.0.0.1:{_closed_port()}/certs"
    token = SigningKey("doc-key").sign(claims())
    return client.post(
        "/vac/assistant/demo/sse",
        json={"user_input": "hi"},
        headers={"Authorization": f"Bearer {token}"},
    )


def _rate_limited(client: Any, fake: FakeUpstream) -> Any:
    os.environ["MAX_STREAMS_PER_USER"] = "1"
    release = _hold_slot("doc-user@example.com")
    try:
        return ask(client, emissaryConfig={"currentUser": {"email": "doc-user@example.com"}})
    finally:
        release()


def _overloaded(client: Any, fake: FakeUpstream) -> Any:
    os.environ["MAX_STREAMS"] = "1"
    release = _hold_slot("someone-else@example.com")
    try:
        return ask(client)
    finally:
        release()


def _config_error(client: Any, fake: FakeUpstream) -> Any:
    os.environ["AUTH_MODE"] = "nobody"
    return client.get("/health")


def _providers_failed(client: Any, fake: FakeUpstream) -> Any:
    fake.push(Script(fail="503"))
    return ask(client)


def _reply_too_long(client: Any, fake: FakeUpstream) -> Any:
    os.environ["MAX_REPLY_SECONDS"] = "0.05"
    fake.push(Script(text="too late", ttft=2))
    return ask(client)


REFUSALS = {
    "not_found": _not_found,
    "method_not_allowed": _method_not_allowed,
    "invalid_request": _invalid_request,
    "unsupported_media_type": _unsupported_media_type,
    "payload_too_large": _payload_too_large,
    "no_provider": _no_provider,
    "unauthenticated": _unauthenticated,
    "auth_unavailable": _auth_unavailable,
    "rate_limited": _rate_limited,
    "overloaded": _overloaded,
    "config_error": _config_error,
    "providers_failed": _providers_failed,
    "reply_too_long": _reply_too_long,
}


@pytest.mark.parametrize("code", sorted(REFUSALS))
def test_the_status_and_retry_after_in_the_table_are_what_the_service_answers(
    client: Any, fake: FakeUpstream, code: str
) -> None:
    response = REFUSALS[code](client, fake)
    body = response.get_json()
    assert body["code"] == code, body
    assert body["trace_id"] == response.headers["X-Trace-Id"]
    status, row = error_table()[code]
    assert status == str(response.status_code), row
    retry_after = response.headers.get("Retry-After")
    if retry_after is None:
        assert "Retry-After" not in row
    else:
        assert f"Retry-After: {retry_after}" in row
        assert f"`{code}` (`{retry_after}`)" in section("Errors")


# -- metadata and frames --------------------------------------------------------


def _tool_reply(client: Any, fake: FakeUpstream, **body: Any) -> dict[str, Any]:
    """A reply with every optional part: a provider that fails first (an attempt
    with a status), native thinking, a call with a signature, a call whose
    arguments are not JSON, and a response schema the reply cannot meet."""
    os.environ["ASSISTANT_PROVIDERS"] = "anthropic,gemini"
    os.environ["GEMINI_BASE_URL"] = fake.url
    os.environ["GEMINI_API_KEY"] = "test-key"
    os.environ["GEMINI_THINKING"] = "true"
    fake.push(
        Script(fail="503"),
        Script(
            tokens=["Let me ", "look."],
            thinking=["The user wants ", "the weather."],
            tool_calls=[
                {"name": "weather", "args": {"city": "Oslo"}, "signature": "c2lnbmF0dXJl"},
                {"name": "weather", "arguments": '{"city": "Os'},
            ],
        ),
    )
    config = {**WEATHER_TOOL, "responseSchema": {"type": "object"}}
    response = ask(client, "Weather in Oslo?", emissaryConfig=config, **body)
    assert response.status_code == 200
    final = sse_events(response.get_data())[-2]
    return dict(final["metadata"])


def _keys_of_table(text: str) -> set[str]:
    return {code for row in table_rows(text) if (code := first_code(row[0]))}


def test_every_metadata_key_the_service_produces_is_documented(
    client: Any, fake: FakeUpstream
) -> None:
    metadata = _tool_reply(client, fake, read_from_history=True)  # and no user to read
    assert {"structured_output_error", "history_error"} <= set(metadata)  # the optional keys
    calls, attempts = metadata["tools_to_use"], metadata["attempts"]
    assert {"signature", "args_error"} <= {key for call in calls for key in call}
    assert any("status" in attempt for attempt in attempts)
    assert "thinking_tokens" in metadata["usage"]

    text = section("Metadata")
    # The key tables: the metadata's own, then tools_to_use entries, then attempts entries.
    tables = [
        _keys_of_table(part) for part in re.split(r"\n(?=`\w+` entries:)", text) if "|" in part
    ]
    assert tables[0] == set(metadata), "the metadata table and the service disagree"
    assert tables[1] == {key for call in calls for key in call}
    assert tables[2] == {key for attempt in attempts for key in attempt}
    nested = {*metadata["usage"], *metadata["timing"]}
    assert sorted(key for key in nested if not documented(key, text)) == []


def test_message_ids_keys_are_documented(client: Any, fake: FakeUpstream, firestore: Any) -> None:
    response = ask(client, save_to_history=True, trace_id="api-doc-1")
    metadata = sse_events(response.get_data())[-2]["metadata"]
    assert metadata["message_ids"] == {"user": "api-doc-1-user", "assistant": "api-doc-1-assistant"}
    row = next(row for row in table_rows(section("Metadata")) if row[0] == "`message_ids`")
    for role, message_id in metadata["message_ids"].items():
        assert f'"{role}": "<trace id>-{role}"' in row[2]
        assert message_id == f"api-doc-1-{role}"


def test_every_frame_and_error_body_key_is_documented(client: Any, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["a ", "b ", "c"], fail_after=2, fail_mode="cut"))
    events = sse_events(ask(client).get_data())
    frames = [event for event in events if isinstance(event, dict)]
    error_frame = frames[-1]
    assert set(error_frame) == {"error", "code", "partial", "metadata"}
    assert f"`{error_frame['code']}` | attempts, frame" in section("Error codes")

    fake.push(Script(tokens=["fine"]))
    final = sse_events(ask(client).get_data())[-2]
    fake.push(Script(fail="503"))
    refused = ask(client).get_json()

    stream = section("The stream")
    for key in {*frames[0], *final, *error_frame}:
        assert f'"{key}"' in stream, key
    assert ": ping" in stream and "data: [DONE]" in stream
    for key in refused:
        assert f'"{key}"' in section("Errors"), key


def test_the_stream_headers_are_the_documented_ones(client: Any, fake: FakeUpstream) -> None:
    response = ask(client)
    assert response.get_data().endswith(b"data: [DONE]\n\n")
    rows = {row[0].strip("`"): row[1].strip("`") for row in table_rows(section("The stream"))}
    for name, value in {**SSE_HEADERS, "Content-Type": response.headers["Content-Type"]}.items():
        assert response.headers[name] == value
        assert rows.get(name) == value, name
    assert "X-Trace-Id" in rows


# -- request fields -------------------------------------------------------------


def _field_names(path: Path) -> set[str]:
    """Every key the module reads from a request mapping: `_optional(obj, "key", ...)`,
    `_checked_id(obj, "key", ...)`, `obj.get("key")`, and `for k in ("a", "b")` lookups."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "_first_given":
                keys = node.args[1]  # a tuple of names, the first given one read
                assert isinstance(keys, ast.Tuple)
                names.update(key.value for key in keys.elts if isinstance(key, ast.Constant))
                continue
            if isinstance(func, ast.Name) and func.id in ("_optional", "_checked_id"):
                argument = node.args[1]
            elif isinstance(func, ast.Attribute) and func.attr == "get" and node.args:
                argument = node.args[0]
            else:
                continue
            if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                names.add(argument.value)
        elif isinstance(node, ast.comprehension) and isinstance(node.iter, ast.Tuple):
            names.update(
                element.value
                for element in node.iter.elts
                if isinstance(element, ast.Constant) and isinstance(element.value, str)
            )
    return names


def test_every_request_field_the_service_reads_is_documented() -> None:
    names = _field_names(ROOT / "assistant" / "request.py")
    names |= _field_names(ROOT / "assistant" / "tools.py")
    # The walk must find the fields, not nothing: a few it has to see.
    assert {"user_input", "chat_history", "currentUser", "tool_call_id", "sender"} <= names
    assert {"description", "parameters"} <= names
    text = section("Request body")
    assert sorted(name for name in names if not documented(name, text)) == []


def test_every_role_alias_is_documented() -> None:
    text = section("Request body")
    aliases = request_module._ROLE_ALIASES
    assert sorted(alias for alias in aliases if not documented(alias, text)) == []


# -- limits ---------------------------------------------------------------------


def test_the_documented_limits_are_the_defaults() -> None:
    settings = Settings.from_env({})
    text = section("Limits")
    for value in (
        settings.max_body_bytes,
        settings.max_input_chars,
        settings.max_history_messages,
        request_module.MAX_JSON_DEPTH,
        request_module.MAX_NUMBER_CHARS,
        request_module.MAX_JSON_VALUES,
        request_module.MAX_HISTORY_LIMIT,
    ):
        assert f"{value:,}" in text, value
    assert f"| `history_limit` | integer | `{request_module.DEFAULT_HISTORY_LIMIT}` |" in TEXT


def test_the_input_limit_counts_code_points_as_documented(client: Any, fake: FakeUpstream) -> None:
    os.environ["MAX_INPUT_CHARS"] = "1"
    assert len("😀".encode("utf-16-le")) // 2 == 2  # JavaScript's .length
    assert ask(client, "😀").status_code == 200
    refused = ask(client, "😀😀")
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "user_input is longer than 1 characters"
    assert "[...text].length" in section("Limits")


# -- the page itself ------------------------------------------------------------


def test_the_readme_links_the_reference_from_its_endpoints_section() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    endpoints = re.search(r"^## Endpoints\n(.*?)(?=^## )", readme, re.M | re.S)
    assert endpoints and "](docs/API.md)" in endpoints.group(1)


def test_the_page_names_nothing_outside_the_repository() -> None:
    for outside in ("CONTRACT", "../", "/work/", "shared/"):
        assert outside not in TEXT, outside
    paths = set(re.findall(r"`((?:assistant|scripts|tests|docs|devtools)/[\w./-]+)`", TEXT))
    paths |= {link for link in re.findall(r"\]\(([^)#:]+)\)", TEXT)}
    assert paths, "the page names some of the repository's files"
    assert sorted(path for path in paths if not (ROOT / path).exists()) == []


def test_every_anchor_link_has_its_heading() -> None:
    headings = re.findall(r"^#{2,3} (.+)$", TEXT, re.M)
    slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
    anchors = set(re.findall(r"\]\(#([^)]+)\)", TEXT))
    assert anchors and sorted(anchors - slugs) == []
