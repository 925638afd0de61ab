"""The schemas a request brings: never fetched from, never looping, patterns bounded.

assistant/schemas.py. Through the endpoint (a 400 naming the field, nothing
called or written; a stream that still ends normally) in tests/test_tools.py.
"""

from __future__ import annotations

import http.server
import random
import re
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema
import jsonschema._format
import pytest
import regex
from jsonschema._utils import uniq as jsonschema_uniq

from assistant import schemas
from assistant.errors import RequestError
from assistant.request import build_request
from assistant.schema_bounds import as_python_reads, long_part, unique, written_out
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
    # An `$id` below the top turned the whole check off: the reply's check recursed until
    # rpds panicked, and the worker died with every stream on it.
    {"$ref": "#", "$defs": {"x": {"$id": "https://example.com/x"}}},
    {"oneOf": [{"if": {"contains": {"$id": "https://example.com/s"}}}], "$ref": "#"},
    {"$defs": {"x": {"$id": "https://example.com/x", "allOf": [{"$ref": "#"}]}}},
    # An `$id` under a keyword no draft reads is no base: `#/$defs/a` in it is the top's.
    {
        "$defs": {"a": {"$ref": "#/x-foo"}},
        "x-foo": {"$id": "http://other.example/", "allOf": [{"$ref": "#/$defs/a"}]},
        "$ref": "#/$defs/a",
    },
    # Draft 3's in-place keywords.
    {"$schema": "http://json-schema.org/draft-03/schema#", "extends": {"$ref": "#"}},
    {"$schema": "http://json-schema.org/draft-03/schema#", "extends": [{"$ref": "#"}]},
    {"$schema": "http://json-schema.org/draft-03/schema#", "type": [{"$ref": "#"}]},
    {"$schema": "http://json-schema.org/draft-03/schema#", "disallow": [{"$ref": "#"}]},
]


@pytest.mark.parametrize("schema", LOOPS)
def test_references_that_loop_in_place_are_400(schema: dict[str, Any]) -> None:
    with pytest.raises(RequestError, match="its references loop without reaching a value"):
        check_schema(schema, "emissaryConfig.responseSchema")


def test_a_pointer_is_read_from_the_resource_its_reference_is_in() -> None:
    """`#/...` in a part with an `$id` of its own (`id` in draft 4) points into that part,
    as jsonschema reads it: found there, and refused when it is only in the top's."""
    in_2020_12 = {
        "$defs": {
            "sub": {
                "$id": "https://example.com/sub",
                "$defs": {"a": {"type": "string"}},
                "properties": {"p": {"$ref": "#/$defs/a"}},
            }
        },
        "$ref": "#/$defs/sub",
    }
    in_draft_04 = {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "definitions": {
            "sub": {
                "id": "https://example.com/sub",
                "definitions": {"a": {"type": "string"}},
                "properties": {"p": {"$ref": "#/definitions/a"}},
            }
        },
        "$ref": "#/definitions/sub",
    }
    for schema in (in_2020_12, in_draft_04):
        check_schema(schema, "emissaryConfig.responseSchema")
        assert problem({"p": 1}, schema) == (
            "the reply does not match the schema at p: 1 is not of type 'string'"
        )
    elsewhere = {
        "$defs": {
            "sub": {"$id": "https://example.com/sub", "properties": {"p": {"$ref": "#/$defs/a"}}},
            "a": {},
        },
        "$ref": "#/$defs/sub",
    }
    with pytest.raises(RequestError, match=r"'#/\$defs/a' points nowhere in the schema"):
        check_schema(elsewhere, "emissaryConfig.responseSchema")


def test_an_id_under_a_keyword_its_draft_does_not_know_is_no_base() -> None:
    """Draft 7 has `definitions`, not `$defs`: an `$id` under `$defs` starts no resource
    there, and `#/$defs/zip` in it points into the top, as jsonschema reads it (a 400
    said it pointed nowhere)."""
    schema = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$defs": {
            "addr": {
                "$id": "http://example.com/addr",
                "type": "object",
                "properties": {"zip": {"$ref": "#/$defs/zip"}},
            },
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
        },
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/addr"}},
    }
    assert check_schema(schema, "emissaryConfig.responseSchema") is schema
    assert problem({"a": {"zip": "1234"}}, schema) == (
        "the reply does not match the schema at a/zip: '1234' does not match '^[0-9]{5}$'"
    )


@pytest.mark.parametrize(
    "schema",
    [
        # An object's `id` under a keyword no draft reads (an OpenAPI `example`): a 500.
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "properties": {"id": {"type": "integer"}},
            "example": {"id": 123},
        },
        {"$schema": "http://json-schema.org/draft-07/schema#", "x-sample": {"$id": ["a"]}},
        # An `$id` that comes to its resource's own URI is no other resource.
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$id": "http://example.com/s.json",
            "definitions": {"i": {"type": "integer"}},
            "properties": {
                "p": {"$id": "http://example.com/s.json", "allOf": [{"$ref": "#/definitions/i"}]}
            },
        },
        {
            "$defs": {"i": {"type": "integer"}},
            "properties": {"p": {"$id": "", "$ref": "#/$defs/i"}},
        },
        {
            "$id": "http://example.com/s.json#",
            "properties": {"p": {"$id": "http://example.com/s.json"}},
        },
        # Keywords a draft does not apply (`dependencies` in 2020-12, the siblings of a
        # draft-7 `$ref`) were followed as if it did: loops where jsonschema sees none.
        {"type": "object", "dependencies": {"a": {"$ref": "#"}}},
        {
            "$schema": "http://json-schema.org/draft-07/schema#",
            "$ref": "#/definitions/a",
            "allOf": [{"$ref": "#"}],
            "definitions": {"a": {"type": "object"}},
        },
        # Draft 3's `extends` is no keyword of 2020-12's: nothing applies it, nor loops.
        {"$defs": {"base": {"extends": {"$ref": "#/$defs/base"}}}, "$ref": "#/$defs/base"},
    ],
    ids=[
        "openapi-example-id",
        "unknown-keyword-id",
        "same-uri-id",
        "empty-id",
        "same-uri-but-fragment",
        "dependencies-in-2020",
        "siblings-of-a-draft-7-ref",
        "extends-in-2020",
    ],
)
def test_what_no_draft_reads_as_a_base_or_a_loop_is_none(schema: dict[str, Any]) -> None:
    assert check_schema(schema, "emissaryConfig.responseSchema") is schema
    assert problem({"p": "s"}, schema) in (
        None,
        "the reply does not match the schema at p: 's' is not of type 'integer'",
    )


D4 = "http://json-schema.org/draft-04/schema#"


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        ({"type": "object", "$ref": "#/type"}, "'#/type' points to a value that is no schema"),
        ({"required": ["a"], "properties": {"a": {"$ref": "#/required"}}}, "no schema"),
        ({"allOf": [{}], "$ref": "#/allOf/²"}, "points nowhere"),  # isdigit, and int() refused it
        # Draft 4's metaschema leaves $ref's type open: taken, every reply's check failed.
        ({"$schema": D4, "$ref": []}, r"\$ref must be a string"),
        ({"$schema": D4, "properties": {"a": {"$ref": True}}}, r"\$ref must be a string"),
    ],
    ids=["keyword-value", "list", "superscript-index", "ref-a-list", "ref-a-boolean"],
)
def test_a_reference_to_no_schema_is_a_400(schema: dict[str, Any], why: str) -> None:
    """Accepted, `#/type` crashed every reply's check after its chunks (unsaved), and a
    superscript index crashed the request's check (a 500)."""
    with pytest.raises(RequestError, match=why):
        check_schema(schema, "emissaryConfig.responseSchema")


def test_a_schema_jsonschema_cannot_apply_is_the_replys_error_not_a_crash() -> None:
    """An embedded resource of another draft, with an id its own draft reads and no URI
    parser does: accepted by the request's check, a ValueError at the reply's."""
    schema = {
        "$id": "http://example.com/s",
        "$defs": {"a": {"$schema": "http://json-schema.org/draft-04/schema#", "id": "http://[::1"}},
        "properties": {
            "p": {"$id": "http://other/", "$ref": "#/$defs/c", "$defs": {"c": {"type": "string"}}}
        },
    }
    check_schema(schema, "emissaryConfig.responseSchema")
    assert (
        problem({"p": "x"}, schema) == "the schema could not be applied to the reply (ValueError)"
    )


def test_an_id_that_is_no_uri_is_a_400() -> None:
    """Read against its resource's base it raised ValueError (`http://[::1`): a 500 at the
    request's check, and at the reply's, where `referencing` looks it up the same way."""
    schema = {"$id": "http://example.com/s", "properties": {"p": {"$id": "http://[::1"}}}
    with pytest.raises(RequestError, match=r"an \$id \(or id\) that is no URI"):
        check_schema(schema, "emissaryConfig.responseSchema")


@pytest.mark.parametrize(
    ("schema", "value", "why"),
    [
        (
            {"type": [{"type": "string"}, "integer"], "minimum": 5},
            3,
            "the reply does not match the schema at the top level: 3 is less than the minimum of 5",
        ),
        ({"type": "foo"}, 3, "the schema names a type no draft knows: 'foo'"),
    ],
)
def test_draft_3_types_are_checked_without_a_crash(
    schema: dict[str, Any], value: Any, why: str
) -> None:
    """best_match asked jsonschema's type checker whether a schema, or a name draft 3
    takes and no draft knows, is a type: a TypeError, an UnknownType, a 500 after the
    reply's chunks."""
    schema = {"$schema": "http://json-schema.org/draft-03/schema#", **schema}
    check_schema(schema, "emissaryConfig.responseSchema")
    assert problem(value, schema) == why


def test_a_failing_branchs_deeper_error_is_not_crowded_out() -> None:
    required = [f"r{i}" for i in range(10)]
    branch = {"type": "object", "required": required, "properties": {"a": {"type": "string"}}}
    assert problem({"a": 5}, {"anyOf": [branch, {"type": "null"}]}) == (
        "the reply does not match the schema at a: 5 is not of type 'string'"
    )


def test_a_panic_under_the_reply_check_is_a_reply_that_could_not_be_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """rpds (under `referencing`) turns a RecursionError in its own code into a
    PanicException, which derives from BaseException alone: the worker died."""

    class PanicException(BaseException):  # pyo3's, as rpds raises it
        pass

    def panics(*_: Any) -> Any:
        raise PanicException("__eq__ failed!: RecursionError")

    monkeypatch.setattr(jsonschema.exceptions, "best_match", panics)
    assert problem({}, {"type": "object"}) == (
        "the reply could not be checked: it nests too deeply, or the schema loops"
    )


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


def _twice_each_step(depth: int, applicator: str) -> dict[str, Any]:
    """References to the next definition, two at each step: 2**depth applications."""
    steps = {
        f"d{i}": {applicator: [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(depth)
    }
    return {"$defs": {**steps, f"d{depth}": {"type": "object"}}, "$ref": "#/$defs/d0"}


@pytest.mark.parametrize("applicator", ["allOf", "anyOf", "oneOf"])
def test_a_schema_that_applies_its_parts_over_and_over_stops_at_the_deadline(
    applicator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kilobyte, accepted (no loop, few objects), and 2**30 applications: about 12
    hours of the request's thread, with no ping and no way to stop it."""
    monkeypatch.setattr(schemas, "CHECK_SECONDS", 0.2)
    schema = _twice_each_step(30, applicator)
    check_schema(schema, "emissaryConfig.responseSchema")
    started = time.monotonic()
    why = problem(1, schema)  # not an object: anyOf tries every way too
    assert why == "checking the reply against the schema took more than 0.2 s"
    assert time.monotonic() - started < 2
    assert problem({"a": 1}, _twice_each_step(3, "allOf")) is None  # a few: checked


@pytest.mark.parametrize(
    ("keyword", "value"), [("unevaluatedProperties", {}), ("unevaluatedItems", [])]
)
def test_the_walks_of_unevaluated_keywords_stop_at_the_deadline(
    keyword: str, value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They follow a `$ref` and a `$dynamicRef` of each definition by calling themselves,
    applying no keyword: 1.3 KB, 30 deep, was 2**30 steps past the keyword's own clock
    (the `$ref` first in the object, as a frontend may send it)."""
    monkeypatch.setattr(schemas, "CHECK_SECONDS", 0.2)
    steps = {
        f"d{i}": {"$ref": f"#/$defs/d{i + 1}", "$dynamicRef": f"#/$defs/d{i + 1}"}
        for i in range(30)
    }
    schema = {keyword: False, "$ref": "#/$defs/d0", "$defs": {**steps, "d30": {}}}
    check_schema(schema, "emissaryConfig.responseSchema")
    started = time.monotonic()
    assert problem(value, schema) == "checking the reply against the schema took more than 0.2 s"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("draft", ["2020-12", "2019-09"])
def test_unevaluated_items_look_each_item_up_at_once(draft: str) -> None:
    """The keyword asked for each of the reply's items in the walk's list, within one
    call the deadline could not stop: a million indexes and 1,300 items took 5.7 s."""
    items = "prefixItems" if draft == "2020-12" else "items"
    schema = {
        "$schema": f"https://json-schema.org/draft/{draft}/schema",
        "type": "array",
        "unevaluatedItems": False,
        "allOf": [{"$ref": "#/$defs/p"}] * 1000,
        "$defs": {"p": {items: [True] * 1000}},
    }
    check_schema(schema, "emissaryConfig.responseSchema")
    started = time.monotonic()
    assert problem([0] * 1300, schema) is not None
    assert time.monotonic() - started < 3
    small = {**schema, "allOf": [{"$ref": "#/$defs/p"}], "$defs": {"p": {items: [True]}}}
    assert problem([0], small) is None  # what it finds, it finds as before
    assert problem([0, 1], small) == (
        "the reply does not match the schema at the top level: "
        "Unevaluated items are not allowed (1 was unexpected)"
    )


def _errors_kept(errors: Iterable[Any]) -> int:
    return sum(1 + _errors_kept(error.context) for error in errors)


_FAILING_BRANCHES = [{"type": "array", "items": {"type": "string"}}] * 20


@pytest.mark.parametrize(
    "schema",
    [
        {
            "anyOf": [{"$ref": "#/$defs/branches"}] * 20,
            "$defs": {"branches": {"anyOf": _FAILING_BRANCHES}},
        },
        {
            "oneOf": [{"$ref": "#/$defs/branches"}] * 20,
            "$defs": {"branches": {"oneOf": _FAILING_BRANCHES}},
        },
        {
            "$schema": "http://json-schema.org/draft-03/schema#",
            "type": [{**branch, "title": str(i)} for i, branch in enumerate(_FAILING_BRANCHES)],
        },
    ],
)
def test_a_failing_branch_keyword_keeps_few_errors_and_no_whole_reply(
    schema: dict[str, Any],
) -> None:
    """jsonschema kept every error of every failing branch, each message with the whole
    reply's repr in it: an anyOf over a million items took 90 MB within the check's
    second, and anyOfs whose branches refer to anyOfs multiply (here 400 x 30)."""
    check_schema(schema, "emissaryConfig.responseSchema")
    reply = [None] * 30
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = list(validator.iter_errors(reply))
    assert errors  # it still fails
    assert _errors_kept(errors) <= 1 + schemas.CONTEXT_KEPT
    messages = [error.message for error in errors[0].context]
    assert messages and all(len(message) <= schemas.MESSAGE_CHARS for message in messages)
    why = problem(reply, schema)
    assert why is not None
    assert why.startswith(
        "the reply does not match the schema at the top level: [None, None, None, None, None, "
        "None, ...] is not " + ("of type " if "type" in schema else "valid under any of ")
    )


def test_branch_keywords_still_say_what_jsonschema_says() -> None:
    number_or_null = {"anyOf": [{"type": "string"}] * 10 + [{"type": "null"}]}
    assert problem([None] * 100, {"type": "array", "items": number_or_null}) is None
    assert problem(5, {"oneOf": [{"type": "integer"}, {"minimum": 1}, {"type": "string"}]}) == (
        "the reply does not match the schema at the top level: "
        "5 is valid under each of {'minimum': 1}, {'type': 'integer'}"
    )
    assert problem("x" * 1000, {"anyOf": [{"type": "integer"}, {"type": "null"}]}) == (
        "the reply does not match the schema at the top level: 'xxxxxxxxxxxxxxxxxxxxxxxxxxx..."
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxx' is not valid under any of the given schemas"
    )


@pytest.mark.parametrize("schema", [{"$schema": {"a": 1}}, {"$schema": 5}, {"$schema": ["x"]}])
def test_a_schema_naming_its_draft_with_no_string_is_400(schema: dict[str, Any]) -> None:
    """jsonschema looks the draft up in a dict: an unhashable one was a 500."""
    with pytest.raises(RequestError, match=r"responseSchema\.\$schema must be a string"):
        check_schema(schema, "emissaryConfig.responseSchema")


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


def test_each_pattern_of_pattern_properties_is_matched_on_its_own() -> None:
    """jsonschema joins patternProperties' keys with `|` to find additional properties:
    one pattern past the bound each key is held to (1,990 keys of a 44 KB schema took
    1.46 GB), and one that reads differently (the second key's \\1 named the first's group,
    one key's (?i) applied to the others)."""
    backreferences = {"^(a)\\1$": True, "^(b)\\1$": True}
    schema = {"type": "object", "patternProperties": backreferences, "additionalProperties": False}
    assert problem({"aa": 1, "bb": 2}, schema) is None
    assert problem({"ab": 1}, schema) is not None
    flagged = {**schema, "patternProperties": {"(?i)^x$": True, "^y$": True}}
    assert problem({"X": 1}, flagged) is None
    assert problem({"Y": 1}, flagged) is not None


def test_the_metaschemas_pattern_check_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """jsonschema's `format: regex` compiled each pattern with `re`, whose compiler case-
    folds every code point of a class's range under (?i): 2 s for a 1 KB pattern, with no
    deadline. Patterns are read by Python's parser (unreadable ones are still a 400)."""

    class NoCompiling:
        error = re.error

        @staticmethod
        def compile(pattern: str) -> None:
            raise AssertionError(f"compiled {pattern[:20]!r}")

    monkeypatch.setattr(jsonschema._format, "re", NoCompiling)
    folded = "(?i)" + "[ -\uffff]" * 198 + "0000"
    schema = {"type": "object", "properties": {"p": {"type": "string", "pattern": folded}},
              "patternProperties": {"(?i)[ -\uffff]q": True}}  # fmt: skip
    assert check_schema(schema, "emissaryConfig.responseSchema") == schema
    assert problem({"p": "X" * 198 + "0000"}, schema) is None
    with pytest.raises(RequestError, match="not a valid JSON Schema"):
        schemas._check_schema({"pattern": "(?<name>x)"}, "emissaryConfig.responseSchema")


def test_a_reply_error_stays_on_one_line_whatever_its_keys() -> None:
    """The path names the reply's own keys: a line break in one broke the message's one
    line (a model's key chose the text of the next)."""
    schema = {"type": "object", "additionalProperties": {"type": "number"}}
    why = problem({"line one\nline two\r\u2028": "x"}, schema)
    assert why is not None and why.isprintable()
    assert why.startswith("the reply does not match the schema at line one\\nline two")


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
    "schema",
    [
        {"type": "object", "properties": {f"p{i}": True for i in range(2001)}},
        {"properties": {f"p{i}": {"allOf": [True] * 1000} for i in range(3)}},
    ],
)
def test_true_and_false_count_as_the_schemas_they_are(schema: dict[str, Any]) -> None:
    """Each costs the metaschema's check as much as an object: 10,000 `true`
    properties, counted as 2 objects, took 5.7 s (49,900 took 28 s)."""
    body = {"user_input": "hi", "emissaryConfig": {"responseSchema": schema}}
    with pytest.raises(RequestError, match=r"schema objects in all; at most 2000"):
        build_request("a", body, max_input_chars=100, max_history_messages=10)


def test_a_part_too_far_down_long_names_is_a_400() -> None:
    """The checks name each part by its path from the top: 29 levels of 8,500-character
    property names, 1,900 parts, in a 764 KB body took a worker to 1.4 GB."""
    name = "n" * 6000
    schema = {"properties": {name: {"properties": {name: {"type": "string"}}}}}
    body = {"user_input": "hi", "emissaryConfig": {"responseSchema": schema}}
    with pytest.raises(RequestError, match="a part whose path from the top is over 10000"):
        build_request("a", body, max_input_chars=100, max_history_messages=10)
    shallow = {"properties": {name: {"type": "string"}}}
    body = {"user_input": "hi", "emissaryConfig": {"responseSchema": shallow}}
    assert build_request("a", body, max_input_chars=100, max_history_messages=10)


def test_flags_are_no_schemas() -> None:
    """`readOnly`, `deprecated`, `uniqueItems`: 700 properties with two each were counted
    as 2,103 objects and refused."""
    flags = {"type": "array", "readOnly": False, "deprecated": False, "uniqueItems": True}
    schema = {"type": "object", "properties": {f"p{i}": dict(flags) for i in range(700)}}
    body = {"user_input": "hi", "emissaryConfig": {"responseSchema": schema}}
    assert build_request("a", body, max_input_chars=100, max_history_messages=10)


@pytest.mark.parametrize(
    "parameters, why",
    [
        # uniqueItems compares every pair of values it cannot sort: 8,000 took 13 s.
        ({"type": "object", "properties": {"a": {"type": [0, "0"] * 501}}}, "a list of 1002"),
        # Compiling a pattern is not bounded by the match deadline: 850 KB took 2.6 s.
        ({"type": "object", "properties": {"a": {"pattern": "a|" * 501}}}, "a pattern of more"),
        ({"type": "object", "patternProperties": {"b|" * 501: {}}}, "a pattern of more"),
        # Nor what `regex` writes out as it compiles: a fixed repeat in full, so these 38
        # characters asked for a trillion (a MemoryError, or the instance killed).
        (
            {"properties": {"a": {"pattern": "(?:(?:(?:a{1000}){1000}){1000}){1000}"}}},
            "a pattern whose counted repeats come to more than 1000",
        ),
        (
            {"properties": {"a": {"propertyNames": {"pattern": "(?:[ab]{100}){11}"}}}},
            "a pattern whose counted repeats",
        ),
        ({"patternProperties": {r"(\d{2}-){501}": {}}}, "a pattern whose counted repeats"),
        # JSON Schema's own syntax that Python's does not have: said so, not "repeats".
        (
            {"properties": {"a": {"pattern": r"^[\p{L} .-]{1,100}$"}}},
            r"a pattern the Python regular expressions cannot read: .* \('bad escape",
        ),
        ({"properties": {"a": {"pattern": r"(?<major>\d+)"}}}, "a pattern the Python regular"),
        # What a scan of our own misread: a comment holding "[", whitespace or a comment
        # before a count in verbose mode (where `regex` also reads "{10 0}" as a count).
        (
            {"properties": {"a": {"pattern": "(?#[)(?:(?:(?:a{100}){100}){100}){10}"}}},
            "a pattern whose counted repeats",
        ),
        (
            {"properties": {"a": {"pattern": "(?x)(?:(?:a{10 0}){10 0}){1 00}"}}},
            "a pattern in verbose mode",
        ),
        ({"properties": {"a": {"pattern": "(?ix:(?:a{100}) {100})"}}}, "a pattern in verbose mode"),
        # A class's members, which `regex` writes out one by one and Python's parser
        # reads as two (247 pairs of the same two, a thousand times: 65 MB kept).
        (
            {"properties": {"a": {"pattern": "[" + r"\w\d" * 247 + "]{1000}"}}},
            "a pattern whose counted repeats",
        ),
        # Alternatives Python's parser folds into one (or into a class), which `regex`
        # writes out one by one: 490 of them, 500 times, took 57 MB.
        (
            {"properties": {"a": {"pattern": "(?:" + "|".join(["a"] * 490) + "){500}"}}},
            "a pattern whose counted repeats",
        ),
        # A property's name is a name: one called "enum" holds a schema, patterns and all.
        (
            {"properties": {"enum": {"pattern": "(?:a{100}){100}"}}},
            "a pattern whose counted repeats",
        ),
        (
            {"$defs": {"default": {"propertyNames": {"pattern": "(?:a{100}){100}"}}}},
            "a pattern whose counted repeats",
        ),
    ],
)
def test_schema_parts_that_cost_more_than_their_size_are_a_400(parameters: Any, why: str) -> None:
    body = {
        "user_input": "hi",
        "emissaryConfig": {"toolConfigs": {"t": {"parameters": parameters}}},
    }
    with pytest.raises(RequestError, match=rf"toolConfigs\['t'\]\.parameters holds {why}"):
        build_request("a", body, max_input_chars=100, max_history_messages=10)


@pytest.mark.parametrize(
    "pattern, items",
    [
        ("abc", 3),
        ("a{1000}", 1000),
        ("(?:a{10}){10}", 100),
        # A repeat counted its least number of times, and once more for the rest of a range.
        ("(?:a{1000}){1,100}", 2000),
        ("[a{]{5}", 10),  # braces in a class are characters: two, five times
        ("[0-9a-fA-F]{64}", 192),  # a class counts its members (a range is one)
        ("^[0-9a-fA-F]{128}$", 386),  # a SHA-512 in hex, either case
        # Members Python's parser merges, which `regex` writes out one by one, charged
        # at the class's repeats: 494 written, 2 counted, a thousand times.
        ("[" + r"\w\d" * 247 + "]{1000}", 494_000),
        (r"\{5}x{,3}", 4),  # an escaped brace is a character
        ("[]a{1000}]", 8),  # "]" first in a class is one of its characters
        (r"^\d{1,3}(\.\d{1,3}){3}$", 13),
        # `regex` writes `x+` as x and x*: nested 18 deep, 91 characters came to 189 MB.
        ("(?:" * 18 + "a" + ")+" * 18, 2**18),
        ("(?:" * 18 + "a" + "){1,2}" * 18, 2**18),
        (r"^(\w+\.)+\w+$", 10),
        ("a{}{x}", 6),  # not counts: characters
        ("(?#[)(?:a{10}){10}", 100),  # a comment is nothing, whatever it holds
        ("(?:a{100}){100}+", 10000),  # possessive, atomic, lookaround: all written out
        ("(?>(?:a{100}){100})", 10000),
        ("(?=(?:a{100}){100})", 10000),
        ("(a)(?(1)(?:b{100}){100}|c)", 20002),  # each "|" an alternative, at the most repeats
        ("(unclosed", 1001),  # what Python cannot read counts as too much
        ("(?#[)a{2}-", 3),  # a "[" in a comment read as a class, to the pattern's end
        # A comment's "[" taken for a class hid the class after it (its "]" first read as
        # the end): 490 members 499 times were charged as none, 32 MB a pattern.
        ("(?#[)[]" + r"\w" * 490 + "]{499}", 2 * 499 + 489 * 499),
        (r"(?#\)[)[]" + r"\w" * 490 + "]{499}", 2 * 499 + 489 * 499),  # "\)" ends none
        ("(?:ab|ac){100}", 400),  # a prefix drawn out, "b|c" folded into a class: charged
        ("[|]{100}|b", 101),  # a "|" in a class is a character
        # Classes of the parser's own (\d outside brackets) set against those written: 248
        # of them hid a class of 248 members written out 376 times (12 MB a pattern).
        ("[" + r"\w\d" * 124 + "]{376}" + r"\d" * 248, 1000 + 246 * 376),
        ("(?:" + "|".join(["a"] * 490) + "){500}", 500 * 491),  # "a" drawn out, 490 left empty
    ],
)
def test_what_a_pattern_comes_to_written_out(pattern: str, items: int) -> None:
    assert written_out(pattern) == items


def test_a_schema_keeps_to_the_bounds_with_its_usual_patterns() -> None:
    uuid = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    email = r"[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9-]+(?:\.[a-zA-Z0-9-]+)*"
    codes = [a + b for a in "ABCDEFGHIJ" for b in "ABCDEFGHIJKLMNOPQRST"]
    schema = {
        "properties": {
            "either": {"pattern": f"^(?:{uuid}|{email})$"},  # a long class beside short ones
            "sha512": {"pattern": "^[0-9a-fA-F]{128}$"},
            "base64": {"pattern": "^[A-Za-z0-9+/]{86}==$"},
            "zip": {"pattern": "^[0-9]{5}(?:-[0-9]{4})?$"},
            "ip": {"pattern": r"^\d{1,3}(\.\d{1,3}){3}$"},
            # Two hundred alternatives outside any repeat: each written out once.
            "digest": {"pattern": "^[A-Za-z0-9._-]{1,64}:[a-fA-F0-9]{128}$"},
            "password": {"pattern": "^(?=.*[!@#$%^&*])[A-Za-z0-9!@#$%^&*()_+=-]{16,64}$"},
            "iban": {"pattern": f"^(?:{'|'.join(codes)})[0-9]{{2}}[A-Z0-9]{{11,30}}$"},
            "id": {"pattern": "^[A-Za-z0-9]{32}$"},
            "text": {"pattern": "^.{0,5000}$"},
        },
        "patternProperties": {"^x-[a-z]{1,64}$": {}},
    }
    assert long_part(schema) is None


def test_values_are_data_not_schemas() -> None:
    # A "$ref" in an example refers to nothing, a "pattern" in a constant matches nothing.
    schema = {
        "type": "object",
        "properties": {
            "ref": {
                "type": "object",
                "properties": {"$ref": {"type": "string"}},
                "examples": [{"$ref": "#/components/schemas/Pet"}],
            },
            "doc": {"const": {"$ref": "https://example.com/pet.json", "pattern": "x" * 1001}},
        },
    }
    assert long_part(schema) is None
    assert check_schema(schema, "s") is schema
    assert (
        problem({"ref": {"$ref": "y"}, "doc": schema["properties"]["doc"]["const"]}, schema) is None
    )


@pytest.mark.parametrize(
    "values, expected",
    [
        ([1, 1.0], False),
        ([True, 1], True),  # JSON Schema's equality: a boolean is no number
        ([[True], [1]], True),
        ([{"a": 1, "b": [2]}, {"b": [2.0], "a": 1}], False),  # keys in any order
        ([None, 0, False, "", [], {}], True),
        (["1", 1], True),
        ([[1, [2, {"x": None}]], [1, [2, {"x": None}]]], False),
    ],
)
def test_unique_items_compares_as_jsonschema_does(values: list[Any], expected: bool) -> None:
    assert unique(values) is expected
    assert jsonschema_uniq(values) is expected  # the pairwise check it stands in for


def test_a_draft_04_enum_of_lists_is_checked_in_one_pass() -> None:
    # draft-04's metaschema asks its enum for uniqueItems; jsonschema compared every pair
    # of values it could not sort, each whole: 1,000 lists of 48 numbers took 44 s.
    draft_04 = "http://json-schema.org/draft-04/schema#"
    values = [[0.5] * 48 + [n] for n in range(999)] + [{}]
    schema = {"$schema": draft_04, "properties": {"x": {"enum": values}}}
    assert check_schema(schema, "s") is schema
    repeated = {"$schema": draft_04, "properties": {"x": {"enum": [*values, [0.5] * 48 + [3.0]]}}}
    with pytest.raises(RequestError, match=r"\(at properties/x/enum\)"):
        check_schema(repeated, "s")


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#/default", "default": {"$ref": "#/default"}},
        {"$ref": "#/examples/0", "examples": [{"allOf": [{"$ref": "#"}]}]},
        {"$ref": "#/$defs/a/const", "$defs": {"a": {"const": {"$ref": "#/$defs/a/const"}}}},
        {"$ref": "#/enum/0", "enum": [{"not": {"$ref": "#/enum/0"}}]},
    ],
)
def test_a_reference_into_a_value_is_400(schema: dict[str, Any]) -> None:
    # Values are data to every walk of ours; applied through a $ref, jsonschema takes them
    # for schemas: these looped unseen (RecursionError at the reply's check).
    with pytest.raises(RequestError, match="points into a value"):
        check_schema(schema, "s")


def test_a_property_named_like_a_value_keyword_is_a_schema_to_refer_to() -> None:
    schema = {
        "properties": {"enum": {"type": "string"}, "copy": {"$ref": "#/properties/enum"}},
        "$defs": {"default": {"type": "integer"}},
        "items": {"$ref": "#/$defs/default"},
    }
    assert check_schema(schema, "s") is schema


@pytest.mark.parametrize(
    ("pattern", "matching", "not_matching"),
    [
        ("^ABC{e<=1}$", "ABC{e<=1}", "ABD"),  # `regex` read fuzzy matching: ABD matched
        ("^[[:digit:]]+$", ":]]", "123"),  # `regex` read a POSIX class
    ],
)
def test_a_reply_is_matched_as_json_schema_reads_the_pattern(
    pattern: str, matching: str, not_matching: str
) -> None:
    """As ECMA-262 and Python read them (the request's check), not as `regex` does:
    a reviewer's reply that broke the schema was structured_output, one that met it
    was refused."""
    schema = {"type": "string", "pattern": pattern}
    check_schema(schema, "responseSchema")
    assert problem(matching, schema) is None
    assert problem(not_matching, schema) is not None


def test_patterns_mean_to_the_matcher_what_they_mean_to_pythons_parser() -> None:
    """Random patterns of the characters the two read differently: every one Python
    reads is matched as Python matches it (961 of 7,600 differed before)."""
    rng = random.Random(7)
    alphabet = [*"ab{}[]:^-e<=,12", r"\d", r"\[", r"\{", "(", ")", "|", "?", "*", "+",
                ".", "\\\\", "[:alpha:]", "{e<=1}", "{1,2}", "(?#", "$"]  # fmt: skip
    letters = list("ab{}[]:e<=,12-^.\\ ")
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "[[": a possible nested set
        for _ in range(3000):
            pattern = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
            try:
                python = re.compile(pattern)
            except re.error:
                continue
            matcher = regex.compile(as_python_reads(pattern))
            for _ in range(10):
                text = "".join(rng.choice(letters) for _ in range(rng.randint(0, 8)))
                found, ours = python.search(text), matcher.search(text)
                assert (found and found.span()) == (ours and ours.span()), (pattern, text)
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize(
    "schema",
    [
        # "a property named $ref requires a": dependentRequired's values are names.
        {"properties": {"$ref": {}, "a": {}}, "dependentRequired": {"$ref": ["a"]}},
        {"x-openapi": {"$ref": 1}},  # data under a keyword no draft has
        {"$schema": D4, "example": {"$ref": 12}},  # OpenAPI's example, draft 4
    ],
    ids=["dependent-required", "x-keyword", "example"],
)
def test_a_ref_key_in_data_is_no_reference(schema: dict[str, Any]) -> None:
    """A first version of refusing a `$ref` that is no string refused these valid
    schemas (a reviewer): only a `$ref` where the draft applies it is one."""
    assert check_schema(schema, "responseSchema") == schema


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        ("(?(1)x)(?=(.)*)*", "conditional group"),  # 180-510 MB within one reply's check
        ("(?=(.)*)*\\1", "lookaround"),
        ("(?:a|(?=(.)*))+\\1", "lookaround"),
        ("(?:(?=(.)*)x?)*\\1", "lookaround"),
    ],
)
def test_a_pattern_regex_matches_at_an_unbounded_cost_in_memory_is_a_400(
    pattern: str, construct: str
) -> None:
    """A repeat that may match nothing around a lookaround, and a conditional group
    (ECMA-262 has none): within the check's second, `regex` took hundreds of MB."""
    why = long_part({"type": "string", "pattern": pattern})
    assert why is not None and construct in why


@pytest.mark.parametrize("pattern", ["^(?:(?!ab).)*$", "(?=a)b*", "a*(?!b)", "(?:(?=x)y|z)*"])
def test_lookarounds_that_cost_nothing_are_taken(pattern: str) -> None:
    assert long_part({"type": "string", "pattern": pattern}) is None


@pytest.mark.parametrize(
    ("others", "branch", "merged"),
    [
        ({"additionalProperties": False}, {"properties": {"b": {"type": "string"}}}, False),
        ({"additionalProperties": False}, {"required": ["a"]}, True),
        ({"additionalProperties": {}}, {"properties": {"b": {"type": "string"}}}, True),
        ({"unevaluatedProperties": False}, {"properties": {"b": {"type": "string"}}}, True),
        ({"patternProperties": {"^x": {}}}, {"properties": {"b": {"type": "string"}}}, True),
    ],
    ids=["closed-new-property", "closed-required", "open", "unevaluated", "patterns"],
)
def test_an_allof_is_merged_unless_that_lets_through_what_was_refused(
    others: dict[str, Any], branch: dict[str, Any], merged: bool
) -> None:
    """Beside `additionalProperties: false`, a branch's new property merged in was let
    through where the schema refused it; a first mending kept out what merges exactly
    (required names; beside `unevaluatedProperties`, which counts the branch's
    properties, it sent a schema refusing every valid call): reviewers."""
    parameters = {"type": "object", "properties": {"a": {"type": "string"}}, **others}
    sent, kept = schemas.without_top_combinators({**parameters, "allOf": [branch]})
    assert kept == ({} if merged else {"allOf": [branch]})
    if merged:
        valid = {"a": "x", **({"b": "y"} if "properties" in branch else {})}
        jsonschema.Draft202012Validator(sent).validate(valid)
        assert sent.get("required") == branch.get("required")
    else:
        assert sent == parameters


@pytest.mark.parametrize(
    "moved",
    [
        {"allOf": [{"description": "extra", "properties": {"b": {"type": "integer"}}}]},
        {"anyOf": [{"properties": {"b": {"type": "integer"}}}, {"required": ["a"]}]},
    ],
    ids=["unmerged-allOf", "anyOf"],
)
def test_unevaluated_properties_go_with_what_is_moved(moved: dict[str, Any]) -> None:
    """`unevaluatedProperties` counts the properties the moved keywords evaluate: left in
    the sent schema without them, it refused what they allowed (a reviewer's `b`); told
    in words beside them alone, it refused the object's own (another's `a`)."""
    parameters = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "unevaluatedProperties": False,
        **moved,
    }
    jsonschema.Draft202012Validator(parameters).validate({"a": "x", "b": 1})
    sent, kept = schemas.without_top_combinators(parameters)
    for schema in (sent, kept):  # what is sent, and what the model is told besides
        jsonschema.Draft202012Validator(schema).validate({"a": "x", "b": 1})
    assert kept == moved


def test_a_disallow_outside_draft_3_is_data_not_a_recursion() -> None:
    # Draft 3's `disallow` and `type` hold schemas; in a later draft `disallow` is no
    # keyword, and a `$ref` in it no recursion (a first version refused the schema).
    later = {"type": "object", "disallow": {"$ref": "#"}}
    assert schemas.references_problem(later) is None
    draft_3 = {"$schema": "http://json-schema.org/draft-03/schema#", **later}
    assert schemas.references_problem(draft_3) == "recursion"
    # Read as the request's check reads the draft: an https URI names none it knows.
    unknown = {"$schema": "https://json-schema.org/draft-03/schema#", **later}
    assert schemas.references_problem(unknown) is None
