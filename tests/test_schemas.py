"""The schemas a request brings: never fetched from, never looping, patterns bounded.

assistant/schemas.py. Through the endpoint (a 400 naming the field, nothing
called or written; a stream that still ends normally) in tests/test_tools.py.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from assistant import schemas
from assistant.errors import RequestError
from assistant.request import build_request
from assistant.schemas import check_schema, problem

BACKTRACKS = "^(a|a)+$"  # Python's re takes seconds on 30 a's and a "!"
SLOW_TEXT = "a" * 40 + "!"


@pytest.fixture
def requests_seen() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 that records every request it gets."""
    seen: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_reference_to_a_url_is_never_fetched(requests_seen: tuple[str, list[str]]) -> None:
    url, seen = requests_seen
    schema = {"properties": {"a": {"$ref": f"{url}/schema.json"}}}
    with pytest.raises(RequestError, match="must point inside the schema"):
        check_schema(schema, "emissaryConfig.responseSchema")
    # Applied anyway (as a schema the request's check could not judge would be): unresolvable.
    why = problem({"a": 1}, schema)
    assert why is not None and "a reference that points nowhere" in why
    assert seen == []


LOOPS = [
    {"$ref": "#"},
    {"allOf": [{"$ref": "#"}]},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"$defs": {"a": {"anyOf": [{"type": "null"}, {"oneOf": [{"$ref": "#/$defs/a"}]}]}}},
    {"not": {"$ref": "#"}},
    {"if": {"type": "object"}, "then": {"$ref": "#"}},
    {"dependentSchemas": {"x": {"$ref": "#"}}},
    {"$defs": {"a b": {"$ref": "#/$defs/a%20b"}}},  # a pointer in URI form
]


@pytest.mark.parametrize("schema", LOOPS)
def test_references_that_loop_in_place_are_400(schema: dict[str, Any]) -> None:
    with pytest.raises(RequestError, match="its references loop without reaching a value"):
        check_schema(schema, "emissaryConfig.responseSchema")


TREE = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "children": {"type": "array", "items": {"$ref": "#"}},
        "next": {"$ref": "#/$defs/node"},
    },
    "$defs": {"node": {"anyOf": [{"type": "null"}, {"$ref": "#"}]}},
}


def test_recursion_into_the_value_is_not_a_loop() -> None:
    assert check_schema(TREE, "emissaryConfig.responseSchema") is TREE
    nested = {"name": "a", "children": [{"name": "b", "children": [{"name": 3}]}], "next": None}
    assert problem(nested, TREE) == (
        "the reply does not match the schema at children/0/children/0/name: "
        "3 is not of type 'string'"
    )
    assert problem({"name": "a", "next": {"name": "b", "next": None}}, TREE) is None


PATTERN_KEYWORDS = [
    {"type": "string", "pattern": BACKTRACKS},
    {"patternProperties": {BACKTRACKS: {}}},
    # These two match every pattern of patternProperties themselves, before it runs.
    {"additionalProperties": False, "patternProperties": {BACKTRACKS: {}}},
    {"unevaluatedProperties": False, "patternProperties": {BACKTRACKS: {}}},
    {"propertyNames": {"pattern": BACKTRACKS}},
    {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "additionalProperties": False,
        "patternProperties": {BACKTRACKS: {}},
    },
]


@pytest.mark.parametrize("schema", PATTERN_KEYWORDS)
def test_every_keyword_that_matches_patterns_stops_at_the_deadline(
    schema: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(schemas, "CHECK_SECONDS", 0.2)
    value: Any = SLOW_TEXT if schema.get("type") == "string" else {SLOW_TEXT: 1}
    check_schema(schema, "emissaryConfig.responseSchema")
    assert problem(value, schema) == "the schema's patterns took more than 0.2 s to check the reply"


def test_other_threads_run_while_a_pattern_is_matched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's re holds the GIL while it matches: every other thread of the worker
    would wait. The matching here lets go of it."""
    monkeypatch.setattr(schemas, "CHECK_SECONDS", 0.5)
    ticks: list[float] = []
    stop = threading.Event()

    def tick() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        time.sleep(0.05)
        started = len(ticks)
        assert problem(SLOW_TEXT, {"pattern": BACKTRACKS}) is not None
        during = len(ticks) - started
    finally:
        stop.set()
        ticker.join()
    assert during >= 10  # ~50 in 0.5 s; with the GIL held it would be 0 or 1


def test_patterns_still_match_as_json_schema_says() -> None:
    schema = {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}}
    assert problem({"x-a": 1, "other": "s"}, schema) is None
    assert problem({"x-a": "s"}, schema) == (
        "the reply does not match the schema at x-a: 's' is not of type 'integer'"
    )
    assert problem("abc", {"pattern": "^a.c$"}) is None
    assert problem("abd", {"pattern": "^a.c$"}) == (
        "the reply does not match the schema at the top level: 'abd' does not match '^a.c$'"
    )


def test_a_schema_found_valid_is_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frontend sends the same tools with every request: checked once (it cost about half
    a millisecond an object, on every request)."""
    checked: list[str] = []
    real = schemas._check_schema
    monkeypatch.setattr(schemas, "_check_schema", lambda s, f: (checked.append(f), real(s, f)))
    schema = {"type": "object", "properties": {"seen": {"type": "string", "title": "once"}}}
    check_schema(schema, "first")
    check_schema(
        {"properties": {"seen": {"title": "once", "type": "string"}}, "type": "object"}, "b"
    )
    assert checked == ["first"]  # the same schema, its keys in another order
    with pytest.raises(RequestError, match="second is not a valid JSON Schema"):
        check_schema({**schema, "required": "seen"}, "second")  # another, invalid: checked


def test_schemas_too_large_to_check_are_a_400_before_any_is_checked() -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(1200)}}
    body = {
        "user_input": "hi",
        "emissaryConfig": {
            "tools": ["a"],
            "toolConfigs": {"a": {"parameters": wide}},
            "responseSchema": wide,
        },
    }
    with pytest.raises(RequestError, match=r"hold 2404 schema objects in all; at most 2000"):
        build_request("a", body, max_input_chars=100, max_history_messages=10)
    del body["emissaryConfig"]["responseSchema"]
    assert build_request("a", body, max_input_chars=100, max_history_messages=10).tools


@pytest.mark.parametrize(
    "parameters, why",
    [
        # uniqueItems compares every pair of values it cannot sort: 8,000 took 13 s.
        ({"type": "object", "properties": {"a": {"type": [0, "0"] * 501}}}, "a list of 1002"),
        # Compiling a pattern is not bounded by the match deadline: 850 KB took 2.6 s.
        ({"type": "object", "properties": {"a": {"pattern": "a|" * 501}}}, "a pattern of more"),
        ({"type": "object", "patternProperties": {"b|" * 501: {}}}, "a pattern of more"),
    ],
)
def test_schema_parts_that_cost_more_than_their_size_are_a_400(parameters: Any, why: str) -> None:
    body = {
        "user_input": "hi",
        "emissaryConfig": {"toolConfigs": {"t": {"parameters": parameters}}},
    }
    with pytest.raises(RequestError, match=rf"toolConfigs\['t'\]\.parameters holds {why}"):
        build_request("a", body, max_input_chars=100, max_history_messages=10)
