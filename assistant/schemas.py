"""The JSON Schemas a request brings: checked when it arrives, applied safely when the reply ends.

A frontend's tool declarations and response schema are input like any other
(README "Tools and structured output"), and three things in a schema could
reach past the reply it checks:

- **A `$ref` to a URL.** jsonschema's default registry fetches the http(s)
  and file URLs a schema refers to: a request could make the service read
  its files or call hosts on its network, or wait on one that never answers
  (a stream then hung after its last chunk, holding its thread and its
  user's slot). Only references inside the schema (`#...`) are accepted, a
  400 otherwise, and schemas are applied with a registry that retrieves
  nothing.
- **References that loop in place** (`{"$ref": "#"}` at the top, two
  definitions that refer to each other through `allOf`): applying one never
  moves into the instance and never ends (it crashed the reply with a
  RecursionError). A 400.
- **A `pattern` that backtracks.** jsonschema matches patterns with Python's
  `re`, which holds the GIL while it matches: one `"pattern": "^(a|a)+$"`
  against thirty characters of reply froze the whole worker (every stream,
  `/health`) for seconds. jsonschema's matching goes through the `regex`
  module instead (`_BoundedMatching`), which reads the same syntax, lets go
  of the GIL while it matches, and stops at a deadline: checking one reply
  takes at most CHECK_SECONDS of matching, after which the reply's
  `structured_output_error` says so.
- **Parts that apply over and over.** Two references to the next definition,
  thirty deep, are a kilobyte of schema and a billion applications: every
  keyword applied looks at the same deadline (`_within_the_deadline`).

What a schema costs to check before any of this runs is bounded by the
request (schema_bounds.py), and `uniqueItems` checked in one pass there.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import json
import re
import reprlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urldefrag, urljoin

import jsonschema
import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import jsonschema.exceptions
import jsonschema.validators
import referencing
import referencing.exceptions
import referencing.jsonschema
import regex

from .errors import RequestError
from .schema_bounds import (
    NAME_MAPS,
    SCHEMA_KEYWORDS,
    VALUE_KEYWORDS,
    as_python_reads,
    read_pattern,
    unique,
)

# Time a reply's check may spend matching patterns, all of them together.
CHECK_SECONDS = 1.0
# Schemas found valid, remembered by digest (a frontend sends the same tools with every
# request: checked once, not each time), the most recently used kept.
_VALID_REMEMBERED = 256
# Patterns compiled, the most recently used kept: `regex`'s own cache keeps 500, and
# each may hold up to MOST_PATTERN_CHARS written out (schema_bounds.py).
_PATTERNS_REMEMBERED = 64
# Keywords whose value is a reference; keywords whose subschemas apply to the
# same instance (a reference loop through them never moves into the instance).
_REFERENCES = ("$ref", "$dynamicRef", "$recursiveRef")
# (Each draft applies those it has a keyword function for: `_InPlace`.) `then` and
# `else` apply with `if`; draft 3's `extends` is one schema or a list, and its `type`
# and `disallow` may hold schemas.
_IN_PLACE_ONE = ("not", "if", "then", "else")
_IN_PLACE_LIST = ("allOf", "anyOf", "oneOf", "extends", "type", "disallow")
_IN_PLACE_MAP = ("dependentSchemas", "dependencies")
_APPLIED_BY = {"then": "if", "else": "if"}  # the keyword whose function applies them
# Drafts whose `$ref` makes its siblings no keywords (jsonschema applies the `$ref` alone).
_REF_ALONE = (
    jsonschema.Draft3Validator,
    jsonschema.Draft4Validator,
    jsonschema.Draft6Validator,
    jsonschema.Draft7Validator,
)
# Retrieves nothing: a reference outside the schema is unresolvable, never fetched.
_NOTHING_TO_RETRIEVE: referencing.Registry[Any] = referencing.Registry()


class PatternTimeout(Exception):
    """Matching a schema's patterns took longer than the check allows."""


class CheckTimeout(Exception):
    """Applying a schema's keywords took longer than the check allows."""


class _BoundedMatching(threading.local):
    """`re.search` as jsonschema calls it, matched by `regex` within a deadline.

    Installed as the `re` of the jsonschema modules that match patterns; they
    call nothing else of it (tests/test_schemas.py checks that patterns in
    every such keyword are bounded). Outside a check (the request's own
    schema checks against the metaschema) each match gets CHECK_SECONDS.
    """

    deadline: float | None = None

    def search(self, pattern: str, string: str) -> Any:
        left = CHECK_SECONDS if self.deadline is None else self.deadline - time.monotonic()
        if left <= 0:
            raise PatternTimeout()
        try:
            return _compiled(pattern).search(string, timeout=left, concurrent=True)
        except TimeoutError:
            raise PatternTimeout() from None


_PATTERN_MATCHERS = (jsonschema._keywords, jsonschema._legacy_keywords, jsonschema._utils)
# The walks `unevaluatedProperties` and `unevaluatedItems` make (each module's own names).
_WALKS = ("find_evaluated_item_indexes_by_schema", "find_evaluated_property_keys_by_schema")


@functools.lru_cache(maxsize=_PATTERNS_REMEMBERED)
def _compiled(pattern: str) -> Any:
    return regex.compile(as_python_reads(pattern), cache_pattern=False)


_matching = _BoundedMatching()
# jsonschema's private modules (pinned in requirements.txt): an upgrade that no longer
# calls these names would leave patterns unbounded, uniqueItems pairwise and the walks of
# unevaluated* without a deadline, silently.
if (
    not all(hasattr(module, "re") for module in _PATTERN_MATCHERS)
    or not hasattr(jsonschema._keywords, "uniq")
    or not all(
        hasattr(module, "find_additional_properties")
        for module in (jsonschema._utils, jsonschema._keywords)
    )
    or not all(
        hasattr(module, walk)
        for module in (jsonschema._utils, jsonschema._legacy_keywords, jsonschema._keywords)
        for walk in _WALKS
    )
):
    raise ImportError(
        "jsonschema no longer matches patterns, finds additional properties, checks "
        "uniqueItems or walks unevaluated* as pinned"
    )
for _module in _PATTERN_MATCHERS:
    _module.re = _matching  # type: ignore[attr-defined]


def _additional_properties(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> Iterator[str]:
    """jsonschema's `find_additional_properties`, each of `patternProperties`' patterns
    matched on its own. jsonschema joins them with `|` into one pattern, past the bound
    each is held to: 1,990 keys in a 44 KB schema compiled to 2 million items (1.46 GB,
    the GIL held 3 s). And joined patterns read differently: one key's `(?i)` applied
    to every other, a second key's `\\1` named the first key's group."""
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    for name in instance:
        if name not in properties and not any(_matching.search(p, name) for p in patterns):
            yield name


for _module in (jsonschema._utils, jsonschema._keywords):  # the second imported the name
    _module.find_additional_properties = _additional_properties  # type: ignore[attr-defined]


@functools.cache
def _format_checker(validator: type[Any]) -> jsonschema.FormatChecker:
    """The metaschema's format checks of `validator`'s draft, `regex` read by Python's
    parser alone. jsonschema's compiles each pattern with `re`, which case-folds every
    code point of a class's range under `(?i)`: a 1 KB pattern took 2 s, with no
    deadline (`regex` compiles patterns, at the reply's check, in milliseconds)."""
    checker = jsonschema.FormatChecker(())
    checker.checkers = {**validator.FORMAT_CHECKER.checkers, "regex": (_readable, re.error)}
    return checker


def _readable(pattern: object) -> bool:
    if isinstance(pattern, str):
        # Too deep or too large to read is not unreadable: schema_bounds says so.
        with contextlib.suppress(RecursionError, OverflowError):
            read_pattern(pattern)
    return True


# uniqueItems, in one pass (schema_bounds.unique); the only caller of jsonschema's `uniq`.
jsonschema._keywords.uniq = unique


def _within_the_deadline(step: Callable[..., Any]) -> Callable[..., Any]:
    """`step` of a check (a keyword's, or a walk's), refused once the reply's check is
    past its deadline.

    A schema's size is bounded when it comes (schema_bounds.py), not how often its
    parts apply: two references to the next definition, thirty deep, are 1 KB and
    2^30 applications (12 hours, the request thread and the user's slot held); an
    `anyOf` of a thousand schemas over each of a list's items multiplies too. Every
    keyword applied looks at the clock (a fraction of a microsecond), and so does each
    step of the walks `unevaluatedProperties` and `unevaluatedItems` make, which follow
    references without applying a keyword."""

    @functools.wraps(step)
    def within(*arguments: Any) -> Any:
        deadline = _matching.deadline
        if deadline is not None and time.monotonic() > deadline:
            raise CheckTimeout()
        return step(*arguments)

    return within


_VALIDATOR_CLASSES = (
    jsonschema.Draft3Validator,
    jsonschema.Draft4Validator,
    jsonschema.Draft6Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft202012Validator,
)


# What anyOf, oneOf and a draft-3 type keep of their failing branches' errors for the
# message: the first BRANCH_ERRORS_KEPT of each branch, their messages cut to MESSAGE_CHARS,
# while the error's context, its own errors' contexts counted in, holds fewer than
# CONTEXT_KEPT (the last one cut to fit). jsonschema keeps every error of every branch,
# and each message has the whole reply's repr in it: an anyOf over a million items took
# 90 MB within the check's second, a thousand of them over one 1.3 MB object as much, and
# anyOfs whose branches refer to anyOfs multiply.
BRANCH_ERRORS_KEPT = 100
CONTEXT_KEPT = 1_000
MESSAGE_CHARS = 300
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60
_short = _SHORT_REPR.repr


class _Context:
    """The errors a failing anyOf's (oneOf's, draft-3 type's) own error keeps."""

    def __init__(self) -> None:
        self.errors: list[Any] = []
        self.size = 0  # the errors kept, those in their contexts too

    def fails(self, validator: Any, instance: Any, subschema: Any, index: int) -> bool:
        """Whether `subschema` fails over `instance`; its first errors kept while there is
        room, their own contexts cut to fit (past it, its first error alone says it fails)."""
        errors = validator.descend(instance, subschema, schema_path=index)
        if self.size >= CONTEXT_KEPT:
            return next(errors, None) is not None
        failed = False
        for error in itertools.islice(errors, BRANCH_ERRORS_KEPT):
            failed = True
            self.size += _cut_to(error, CONTEXT_KEPT - self.size)
            self.errors.append(error)
            if self.size >= CONTEXT_KEPT:
                break
        return failed

    def error(self, message: str) -> Any:
        error = jsonschema.ValidationError(message, context=self.errors)
        error.context_size = self.size  # type: ignore[attr-defined]
        return error


def _cut_to(error: Any, room: int) -> int:
    """`error` with its context cut to what `room` errors hold, its own included; the
    errors it comes to. Its message is cut to MESSAGE_CHARS."""
    if len(error.message) > MESSAGE_CHARS:
        error.message = error.message[:MESSAGE_CHARS]
    size = 1 + getattr(error, "context_size", 0)
    if size <= room:
        return size
    kept, size = [], 1
    for inner in error.context:
        if size >= room:
            break
        size += _cut_to(inner, room - size)
        kept.append(inner)
    error.context[:] = kept
    error.context_size = size - 1
    return size


def _any_of(validator: Any, any_of: Any, instance: Any, schema: Any) -> Iterator[Any]:
    context = _Context()
    for index, subschema in enumerate(any_of):
        if not context.fails(validator, instance, subschema, index):
            return
    yield context.error(f"{_short(instance)} is not valid under any of the given schemas")


def _one_of(validator: Any, one_of: Any, instance: Any, schema: Any) -> Iterator[Any]:
    subschemas = enumerate(one_of)
    context = _Context()
    for index, subschema in subschemas:
        if not context.fails(validator, instance, subschema, index):
            first_valid = subschema
            break
    else:
        yield context.error(f"{_short(instance)} is not valid under any of the given schemas")
        return
    more_valid = [
        each for _, each in subschemas if validator.evolve(schema=each).is_valid(instance)
    ]
    if more_valid:
        valid = ", ".join(_short(each) for each in [*more_valid, first_valid])
        yield jsonschema.ValidationError(f"{_short(instance)} is valid under each of {valid}")


def _type_draft3(validator: Any, types: Any, instance: Any, schema: Any) -> Iterator[Any]:
    types = jsonschema._utils.ensure_list(types)
    context = _Context()
    for index, kind in enumerate(types):
        if validator.is_type(kind, "object"):
            if not context.fails(validator, instance, kind, index):
                return
        elif validator.is_type(instance, kind):
            return
    names = ", ".join(
        _short(kind["name"] if isinstance(kind, dict) and "name" in kind else kind)
        for kind in types
    )
    yield context.error(f"{_short(instance)} is not of type {names}")


class _Draft3Types:
    """Draft 3's types, for the relevance best_match gives an error at a schema with a
    `type`: jsonschema's own checker looks a schema among the types up by hash (a
    TypeError), and a name no draft knows (draft 3 takes any) up in vain (UnknownType):
    each a crash of the reply's check."""

    @staticmethod
    def is_type(instance: Any, kind: Any) -> bool:
        try:
            return bool(jsonschema.Draft3Validator.TYPE_CHECKER.is_type(instance, kind))
        except (TypeError, jsonschema.exceptions.UnknownType):
            return False


_DRAFT_3_TYPES = _Draft3Types()


def _with_draft_3_types(error: Any) -> Any:
    """`error`, and those in its context, with draft 3's types for best_match."""
    stack = [error]
    while stack:
        each = stack.pop()
        each._type_checker = _DRAFT_3_TYPES
        stack += each.context
    return error


for _validator_class in _VALIDATOR_CLASSES:
    _checks = _validator_class.VALIDATORS
    if "anyOf" in _checks:
        _checks.update(anyOf=_any_of, oneOf=_one_of)
jsonschema.Draft3Validator.VALIDATORS["type"] = _type_draft3
for _validator_class in _VALIDATOR_CLASSES:
    _checks = _validator_class.VALIDATORS
    _checks.update((name, _within_the_deadline(check)) for name, check in _checks.items())


class _Found(list[Any]):
    """What a walk found: a list (each walk adds its parts' to its own), looked up in a
    set made once (the keyword asks for each item of the reply: a list of a million
    indexes and 1,300 items took 5.7 s, within one keyword's call)."""

    _set: frozenset[Any] | None = None

    def __contains__(self, item: object) -> bool:
        if self._set is None:
            self._set = frozenset(self)
        return item in self._set


def _walk_within_the_deadline(walk: Callable[..., Any]) -> Callable[..., Any]:
    stepped = _within_the_deadline(walk)

    @functools.wraps(walk)
    def walked(*arguments: Any) -> _Found:
        return _Found(stepped(*arguments))

    return walked


# The walks call themselves by their module's name, and _keywords holds its own names.
for _module in (jsonschema._utils, jsonschema._legacy_keywords):
    for _walk in _WALKS:
        setattr(_module, _walk, _walk_within_the_deadline(getattr(_module, _walk)))
for _walk in _WALKS:
    setattr(jsonschema._keywords, _walk, getattr(jsonschema._utils, _walk))


class _ValidSchemas:
    """Digests of the schemas found valid lately; thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._digests: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def digest(schema: Mapping[str, Any]) -> bytes:
        text = json.dumps(schema, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def __contains__(self, digest: bytes) -> bool:
        with self._lock:
            if digest in self._digests:
                self._digests.move_to_end(digest)
                return True
            return False

    def add(self, digest: bytes) -> None:
        with self._lock:
            self._digests[digest] = None
            if len(self._digests) > self._size:
                self._digests.popitem(last=False)


_valid = _ValidSchemas(_VALID_REMEMBERED)


def check_schema(schema: Any, field: str) -> Mapping[str, Any]:
    """`schema` if it is a valid JSON Schema object we can apply, else a 400 naming `field`.

    What holds for one schema holds for every copy of it: one found valid is not
    checked again while it is among the last `_VALID_REMEMBERED` (the request's own
    bound, MOST_SCHEMA_OBJECTS, is the caller's to apply first).
    """
    if not isinstance(schema, dict):
        raise RequestError(f"{field} must be a JSON Schema object")
    if not isinstance(schema.get("$schema", ""), str):  # a dict: jsonschema's lookup raised
        raise RequestError(f"{field}.$schema must be a string (the URI of a JSON Schema draft)")
    digest = _valid.digest(schema)
    if digest in _valid:
        return schema
    _check_schema(schema, field)
    _valid.add(digest)
    return schema


def _check_schema(schema: dict[str, Any], field: str) -> None:
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        # The protocol leaves it out; every draft's class takes it.
        validator.check_schema(schema, format_checker=_format_checker(validator))  # type: ignore[call-arg]
    except jsonschema.exceptions.SchemaError as exc:
        where = _path(exc.path)
        raise _refused(
            f"{field} is not a valid JSON Schema: {exc.message[:200]}"
            + (f" (at {where})" if where else ""),
            f"{field} is not a valid JSON Schema: {exc.validator} (at {_logged(exc.path)})",
        ) from None
    except PatternTimeout:
        raise RequestError(f"{field}: checking it took too long") from None
    objects = dict(_objects(schema))
    try:
        roots = _resource_roots(objects, validator)
    except ValueError as exc:  # the reply's check would fail on it as it looked it up
        raise _refused(
            f"{field}: an $id (or id) that is no URI: {exc}", f"{field}: an $id that is no URI"
        ) from None
    if _a_ref_no_string(schema, validator):
        # Every draft applies it; those before 2019-09 leave its type to the reader: a
        # list was taken, and then no reply could be checked against the schema.
        message = f"{field}: a $ref must be a string, a URI reference"
        raise _refused(message, message)
    applies = _InPlace.of(validator)
    for where, keyword, target in _references(objects):
        at = f"(at {where or 'the top level'})"
        logged = f"{field}: {keyword} refused (at {_logged(where.split('/')[1:])})"
        if not target.startswith("#"):
            raise _refused(
                f"{field}: {keyword} must point inside the schema (start with #), "
                f"not {target[:100]!r} {at}",
                logged,
            )
        if not (target == "#" or target.startswith("#/")):
            continue  # an anchor's name
        pointer = roots[where] + unquote(target[1:])
        pointed = resolve_pointer(schema, pointer)
        if pointed is None:
            raise _refused(
                f"{field}: {keyword} {target[:100]!r} points nowhere in the schema {at}", logged
            )
        if not isinstance(pointed, dict | bool):  # `#/type`: applied, a crash
            raise _refused(
                f"{field}: {keyword} {target[:100]!r} points to a value that is no schema {at}",
                logged,
            )
        if _into_a_value(pointer):
            # Applied, it would be a schema our walks never saw (a loop through it, say).
            raise _refused(
                f"{field}: {keyword} {target[:100]!r} points into a value (enum, const, "
                f"default or examples), not a schema {at}",
                logged,
            )
    if (loop := _loop_in_place(objects, roots, applies)) is not None:
        raise _refused(
            f"{field}: its references loop without reaching a value (at {loop or 'the top level'})",
            f"{field}: its references loop (at {_logged(loop.split('/')[1:])})",
        )


def _a_ref_no_string(schema: dict[str, Any], validator: Any) -> bool:
    """Whether a `$ref` that is no string stands where the draft applies it: in the
    schemas its keywords hold, as `referencing` finds them (not under `x-` keywords, an
    OpenAPI `example` or `dependentRequired`: data, which a first version refused)."""
    specification = referencing.jsonschema.specification_with(
        validator.META_SCHEMA.get("$schema", ""), default=referencing.jsonschema.DRAFT202012
    )
    stack: list[Any] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "$ref" in node and not isinstance(node["$ref"], str):
                return True
            stack.extend(specification.subresources_of(node))
    return False


def _refused(message: str, reason: str) -> RequestError:
    """A 400 that says `message`, logged as `reason`: a schema's words (its values, the
    names of its properties) are the frontend's, as its prompt is, and a message cut
    short, or a value with an apostrophe, left them unquoted for the log to see."""
    error = RequestError(message)
    error.reason = reason
    return error


def _logged(path: Iterable[object]) -> str:
    """A path in a schema as the log shows it: keywords and names, and `…` for a part that
    is not one (a property's name may be a sentence)."""
    shown = "/".join(str(part) if _LOGGED_PART.fullmatch(str(part)) else "…" for part in path)
    return shown or "the top level"


_LOGGED_PART = re.compile(r"[A-Za-z0-9_$-]{1,64}")


def problem(value: Any, schema: Mapping[str, Any]) -> str | None:
    """Why `value` does not match `schema`, in one line; None if it does."""
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    validator = validator_class(schema, registry=_NOTHING_TO_RETRIEVE)
    _matching.deadline = time.monotonic() + CHECK_SECONDS
    try:
        errors = validator.iter_errors(value)
        if validator_class is jsonschema.Draft3Validator:
            errors = map(_with_draft_3_types, errors)
        error = jsonschema.exceptions.best_match(errors)
    except PatternTimeout:
        return f"the schema's patterns took more than {CHECK_SECONDS:g} s to check the reply"
    except CheckTimeout:
        return f"checking the reply against the schema took more than {CHECK_SECONDS:g} s"
    except jsonschema.exceptions.UnknownType as exc:  # draft 3 takes any name as a type
        return f"the schema names a type no draft knows: {exc.type!r}"[:300]
    except referencing.exceptions.Unresolvable as exc:
        return f"the schema has a reference that points nowhere: {exc}"[:300]
    except regex.error as exc:
        return f"the schema has a pattern that cannot be applied: {exc}"[:300]
    except RecursionError:  # a deep reply, or a loop the request's check could not follow
        return _TOO_DEEP
    except Exception as exc:
        # A schema jsonschema cannot apply as the request's check let it through (a part
        # under a keyword no draft reads, an embedded resource of another draft): the
        # reply's error, not a crash after its chunks (the exchange then went unsaved).
        return f"the schema could not be applied to the reply ({type(exc).__name__})"
    except BaseException as exc:
        # rpds (the maps under `referencing`) turns a RecursionError in its own code into
        # a PanicException, which derives from BaseException alone: no handler up to the
        # worker's took it, and the worker died with every stream on it.
        if type(exc).__name__ != "PanicException":
            raise
        return _TOO_DEEP
    finally:
        _matching.deadline = None
    if error is None:
        return None
    where = _path(error.absolute_path) or "the top level"
    return f"the reply does not match the schema at {where}: {error.message}"[:300]


_TOO_DEEP = "the reply could not be checked: it nests too deeply, or the schema loops"


def _path(parts: Iterable[object]) -> str:
    """A path in a message: its keys as they are, one that does not print (a line break in
    a key of the reply) escaped, so that the message stays on one line."""
    return "/".join(
        part if isinstance(part, str) and part.isprintable() else repr(part).strip("'\"")
        for part in parts
    )


def _objects(schema: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(JSON pointer, object) for every object of the schema that is a schema (not those
    inside values: `{"examples": [{"$ref": "x"}]}` refers to nothing), iteratively."""
    stack: list[tuple[str, Any]] = [("", schema)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            yield where, node
            for key, value in node.items():
                inside = f"{where}/{_escape(key)}"
                if key in NAME_MAPS and isinstance(value, dict):  # names, not keywords
                    stack.extend(
                        (f"{inside}/{_escape(name)}", item) for name, item in value.items()
                    )
                elif key not in VALUE_KEYWORDS:
                    stack.append((inside, value))
        elif isinstance(node, list):
            stack.extend((f"{where}/{index}", item) for index, item in enumerate(node))


def _references(objects: Mapping[str, Mapping[str, Any]]) -> Iterator[tuple[str, str, str]]:
    """(where, keyword, target) of every reference among `objects`."""
    for where, node in objects.items():
        for keyword in _REFERENCES:
            if isinstance(target := node.get(keyword), str):
                yield where, keyword, target


def _resource_roots(objects: Mapping[str, Mapping[str, Any]], validator: Any) -> dict[str, str]:
    """For each object's pointer, the pointer of the schema resource it is in, which its
    `#` references are relative to: the nearest object at or above it that declares a
    base of its own (`$id`, `id` in drafts 3 and 4, as its draft reads it; a fragment
    alone is a name, not a base), else the top. A check that skipped every schema with
    an `$id` below its top let `{"$ref": "#"}` loop in place: the reply's check then
    recursed until rpds, under `referencing`, turned the RecursionError into a panic no
    handler took, and the worker died with every stream on it.

    Only where `referencing` takes it as one, on the way down from its resource: under
    the draft's keywords that hold schemas (an `$id` under `x-foo`, or under `$defs` in
    draft 7, is no base there: taken as one, a valid schema was refused, a loop missed)."""
    id_of = validator.ID_OF
    specification = referencing.jsonschema.specification_with(
        validator.META_SCHEMA.get("$schema", ""), default=referencing.jsonschema.DRAFT202012
    )
    roots = {"": ""}
    bases = {"": _resolved("", _declared_base(objects[""], id_of)) or ""}  # each root's
    for pointer in sorted(objects, key=len)[1:]:  # each one's resource before what it holds
        parent = pointer.rpartition("/")[0]
        while parent not in roots:  # the top is
            parent = parent.rpartition("/")[0]
        root = roots[parent]
        node = objects[pointer]
        base = _resolved(bases[root], _declared_base(node, id_of))
        # One that comes to its resource's own URI (`""`, the top's repeated) is no other.
        if (
            base is not None
            and base != bases[root]
            and _entered(specification, objects[root], pointer[len(root) :], node)
        ):
            roots[pointer], bases[pointer] = pointer, base
        else:
            roots[pointer] = root
    return roots


_NO_BASE = _NOTHING_TO_RETRIEVE.resolver()  # a resolver at no base, to see one change


def _entered(
    specification: referencing.Specification[Any],
    resource: Any,
    pointer: str,
    node: Mapping[str, Any],
) -> bool:
    """Whether `referencing`, following `pointer` down from `resource`, takes `node` (which
    declares a base) for a resource of its own: it does under the keywords of its draft
    that hold schemas, and nowhere below any other."""
    segments: list[int | str] = []
    inside = resource
    for part in pointer[1:].split("/"):
        segment: int | str = part.replace("~1", "/").replace("~0", "~")
        if isinstance(inside, list):
            segment = int(segment)
        segments.append(segment)
        inside = inside[segment]
    subresource = specification.create_resource(node)
    return (
        specification.maybe_in_subresource(
            segments=segments, resolver=_NO_BASE, subresource=subresource
        )
        is not _NO_BASE
    )


def _resolved(base: str, declared: str | None) -> str | None:
    """`declared` read against `base`, its fragment dropped; None for none. ValueError
    for one no URI parser reads against it (`http://[::1`), as `referencing` reads it."""
    if declared is None:
        return None
    return urldefrag(urljoin(base, declared)).url


def _declared_base(node: Mapping[str, Any], id_of: Callable[[Any], Any]) -> str | None:
    """The base URI `node` declares (its `$id`, or `id` in drafts 3 and 4), or None: for
    none, a fragment alone (a name), or a value no URI (an object's `id` under a keyword
    no draft reads, an OpenAPI `example`'s, is no base: its number was a 500)."""
    try:
        declared = id_of(node)
    except (AttributeError, TypeError):
        return None
    if not isinstance(declared, str) or declared.startswith("#"):
        return None
    return declared


@dataclass(frozen=True)
class _InPlace:
    """The keywords a draft applies to the same instance, and whether its `$ref` stands
    alone. Followed for every draft alike, `dependencies` in 2020-12 and the siblings of
    a draft-7 `$ref` (which jsonschema applies not at all) made valid schemas a 400."""

    one: tuple[str, ...]
    lists: tuple[str, ...]
    maps: tuple[str, ...]
    ref_alone: bool

    @staticmethod
    def of(validator_class: Any) -> _InPlace:
        checks = validator_class.VALIDATORS
        return _InPlace(
            one=tuple(k for k in _IN_PLACE_ONE if _APPLIED_BY.get(k, k) in checks),
            lists=tuple(k for k in _IN_PLACE_LIST if k in checks),
            maps=tuple(k for k in _IN_PLACE_MAP if k in checks),
            ref_alone=validator_class in _REF_ALONE,
        )


def _loop_in_place(
    objects: Mapping[str, Mapping[str, Any]], roots: Mapping[str, str], applies: _InPlace
) -> str | None:
    """Where a chain of references and in-place subschemas comes back to itself, or None.

    `objects` are the schema's, by pointer from its top; `roots` their resources'
    (`_resource_roots`); `applies` what the draft applies in place. A loop that moves
    into the instance on the way (`properties`, `items`...) is recursion, not a loop,
    and is fine.
    """
    return _on_a_cycle(
        objects,
        lambda pointer: (p for p in _in_place(objects, roots, pointer, applies) if p in objects),
    )


Node = TypeVar("Node", str, int)  # pointers, or references by their index: never None


def _on_a_cycle(
    starts: Iterable[Node], successors: Callable[[Node], Iterable[Node]]
) -> Node | None:
    """A node on a cycle of the graph `successors` draws, reached from `starts`, found in
    one depth-first walk (iteratively: a schema may nest deeper than the stack), or None."""
    done: set[Node] = set()
    for start in starts:
        if start in done:
            continue
        on_path = {start}
        path = [(start, iter(successors(start)))]
        while path:
            node, following = path[-1]
            after = next(following, None)
            if after is None:
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif after in on_path:
                return after
            elif after not in done:
                on_path.add(after)
                path.append((after, iter(successors(after))))
    return None


def _in_place(
    objects: Mapping[str, Mapping[str, Any]],
    roots: Mapping[str, str],
    pointer: str,
    applies: _InPlace,
) -> Iterator[str]:
    """Pointers of the subschemas that may apply to the same instance as the one at
    `pointer` (the caller follows those that are objects: a boolean schema applies
    nothing further, and a pointer to nothing leads nowhere)."""
    node = objects[pointer]
    for keyword in _REFERENCES:
        target = node.get(keyword)
        if isinstance(target, str) and (target == "#" or target.startswith("#/")):
            yield roots[pointer] + unquote(target[1:])
    if applies.ref_alone and "$ref" in node:
        return
    for keyword in applies.one:
        yield f"{pointer}/{keyword}"
    for keyword in applies.lists:
        items = node.get(keyword)
        if isinstance(items, list):
            yield from (f"{pointer}/{keyword}/{index}" for index in range(len(items)))
        elif keyword == "extends":  # draft 3's: one schema, or a list
            yield f"{pointer}/{keyword}"
    for keyword in applies.maps:
        entries = node.get(keyword)
        if isinstance(entries, dict):
            yield from (f"{pointer}/{keyword}/{_escape(name)}" for name in entries)


_DEFINITIONS = frozenset({"$defs", "definitions"})
# The keywords whose subschemas apply where their schema does; under any other one a
# schema is data (OpenAPI's `components`, an `x-` extension) until a `$ref` names it, as a
# definition is (an unused recursive type among OpenAPI's components refused every
# schema built from them: a reviewer's).
_APPLIED = SCHEMA_KEYWORDS | NAME_MAPS | {"allOf", "anyOf", "oneOf", "prefixItems"}
# Draft 3's `type` and `disallow` may hold schemas (a recursion through them slipped by);
# in later drafts no schema is there (`disallow` is no keyword: data).
_DRAFT_3_APPLIED = frozenset({"type", "disallow"})


@dataclass(frozen=True)
class _Reference:
    where: str  # the pointer of the object that holds it
    target: str | None  # the pointer it names; None: an anchor, not a pointer
    defined_in: str | None  # the innermost $defs / definitions entry it is inside


def _schema_references(schema: Mapping[str, Any]) -> list[_Reference]:
    """Every reference in the schema's subschemas (none in literal values), iteratively."""
    found: list[_Reference] = []
    draft = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    draft_3 = draft is jsonschema.Draft3Validator  # as the request's check reads it
    stack: list[tuple[str, Any, str | None]] = [("", schema, None)]
    while stack:
        where, node, defined_in = stack.pop()
        if isinstance(node, list):
            stack.extend((f"{where}/{i}", item, defined_in) for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for keyword in _REFERENCES:
            target = node.get(keyword)
            if isinstance(target, str):
                pointer = target == "#" or target.startswith("#/")
                found.append(
                    _Reference(where, unquote(target[1:]) if pointer else None, defined_in)
                )
        for key, value in node.items():
            if key in VALUE_KEYWORDS:
                continue
            child = f"{where}/{_escape(key)}"
            if key in NAME_MAPS and isinstance(value, dict):
                for name, sub in value.items():
                    entry = f"{child}/{_escape(name)}"
                    stack.append((entry, sub, entry if key in _DEFINITIONS else defined_in))
            else:
                applied = key in _APPLIED or (draft_3 and key in _DRAFT_3_APPLIED)
                # Under a non-keyword, even inside a definition, a schema is data: an
                # `x-links` in a definition naming it was read as a recursion (a reviewer's).
                held = defined_in if applied else child
                stack.append((child, value, held))
    return found


def _inside(where: str, pointer: str) -> bool:
    return where == pointer or where.startswith(pointer + "/")


def _applied_within(reference: _Reference, pointer: str) -> bool:
    """Whether the reference is applied when the schema at `pointer` is: inside it, and
    not inside a definition below it (a definition applies only where it is referred to)."""
    return _inside(reference.where, pointer) and (
        reference.defined_in is None or _inside(pointer, reference.defined_in)
    )


# More references than this are not followed (a schema's references are checked per
# request, and the check grows with their square): such a schema is "too many".
MOST_REFERENCES = 200


def references_problem(schema: Mapping[str, Any]) -> str | None:
    """What in the schema's references a provider that takes only plain local `$ref`s,
    and no recursion, cannot hold: None, "recursion" (a reference, maybe through
    others, back to a schema it is inside, a tree's `children` items referring to the
    tree), "an anchor" (a reference by `$anchor` or `$dynamicRef` name), or "too many"
    (over MOST_REFERENCES). Only what the schema applies counts: a definition no
    reference reaches is never used.

    The references are a graph (one leads to another when the other is applied
    within its target): recursion is a cycle in it, found in one walk.
    """
    references = _schema_references(schema)
    if len(references) > MOST_REFERENCES:
        return "too many"
    within: dict[str, list[int]] = {}

    def applied(pointer: str) -> list[int]:
        """The references applied within the schema at `pointer` (looked up once)."""
        if pointer not in within:
            within[pointer] = [
                index for index, reference in enumerate(references)
                if _applied_within(reference, pointer)
            ]  # fmt: skip
        return within[pointer]

    def leads_to(index: int) -> list[int]:
        target = references[index].target
        assert target is not None  # anchors end the walk first
        return applied(target)

    reached: set[int] = set()
    waiting = list(applied(""))
    while waiting:
        index = waiting.pop()
        if index not in reached:
            if references[index].target is None:
                return "an anchor"
            reached.add(index)
            waiting += leads_to(index)
    return "recursion" if _on_a_cycle(reached, leads_to) is not None else None


def refers_within_inner_resource(schema: Mapping[str, Any]) -> bool:
    """Whether a reference of `schema` (one `check_schema` took) stands inside a resource
    below its top: an object that declares a base its draft reads (`$id`, or `id` in
    drafts 3 and 4), from which that reference's pointer reads. A key named `$id` in a
    value, or under a keyword its draft holds no schemas in, is none."""
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    objects = dict(_objects(schema))
    try:
        roots = _resource_roots(objects, validator)
    except ValueError:  # the request's check refused it first
        return True
    return any(roots[where] for where, _, _ in _references(objects))


def _into_a_value(pointer: str) -> bool:
    """Whether the pointer passes through a value keyword where a keyword stands (not
    as the name of a property or a definition)."""
    names = False  # the part before named a map of subschemas: this one is a name
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        if not names and key in VALUE_KEYWORDS:
            return True
        names = not names and key in NAME_MAPS
    return False


def resolve_pointer(schema: Any, pointer: str) -> Any:
    """The value at a JSON pointer (%-escapes of its URI form already decoded), or None."""
    node = schema
    for part in pointer.split("/")[1:]:
        key = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isascii() and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


# What Anthropic and OpenAI refuse at the top of a tool's parameters (Anthropic: "does not
# support oneOf, allOf, or anyOf at the top level"; OpenAI: "invalid_function_parameters",
# those and enum, not, const): the whole request fails, whether or not the tool is called.
_NOT_AT_THE_TOP = ("anyOf", "oneOf", "allOf", "not", "enum", "const")
_MERGEABLE = frozenset({"type", "properties", "required"})


def without_top_combinators(
    parameters: Mapping[str, Any],
) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """A tool's `parameters` without `_NOT_AT_THE_TOP` keywords at their top, and those of
    them it could not merge in; `parameters` itself when it has none. An `allOf` of plain
    objects (properties and required names, the usual way to add required fields) is
    merged in."""
    if not any(key in parameters for key in _NOT_AT_THE_TOP):
        return parameters, {}
    rest = dict(parameters)
    kept = {key: rest.pop(key) for key in _NOT_AT_THE_TOP if key in rest}
    properties = dict(rest.get("properties") or {})
    required = list(rest.get("required") or [])
    unmerged = []
    # Beside an `additionalProperties` that restricts the others, a branch's own new
    # properties merged in would be let through where the schema refused them.
    closed = rest.get("additionalProperties", True) not in (True, {})
    for branch in kept.pop("allOf", None) or []:
        if not _merges_into(branch, properties) or (
            closed and set(branch.get("properties", {})) - set(properties)
        ):
            unmerged.append(branch)
            continue
        properties.update(branch.get("properties", {}))
        required += [name for name in branch.get("required", []) if name not in required]
    if unmerged:
        kept["allOf"] = unmerged
    if kept:
        # It counts the properties the moved keywords evaluate: left behind without
        # them, it refused what they allowed (every valid call, beside a required one),
        # and told in words beside them alone, all of the object's own properties.
        rest.pop("unevaluatedProperties", None)
    if properties:
        rest["properties"] = properties
    if required:
        rest["required"] = required
    return rest, kept


def _merges_into(branch: Any, properties: Mapping[str, Any]) -> bool:
    """Whether an `allOf` branch is a plain object whose properties add to `properties`
    without giving one of them another schema."""
    if not isinstance(branch, Mapping) or not set(branch) <= _MERGEABLE:
        return False
    if branch.get("type", "object") != "object":
        return False
    own = branch.get("properties", {})
    names = branch.get("required", [])
    if not isinstance(own, Mapping) or not isinstance(names, list):
        return False
    return all(properties.get(name, schema) == schema for name, schema in own.items())


# Keywords whose value is a subschema, a list of them, or a map of names to them.
_SUBSCHEMAS = (
    "items", "additionalProperties", "not", "if", "then", "else", "contains",
    "propertyNames", "unevaluatedProperties", "unevaluatedItems", "additionalItems",
    "anyOf", "oneOf", "allOf", "prefixItems",
)  # fmt: skip


def rebuilt(node: Any, mend: Callable[[dict[str, Any]], None]) -> Any:
    """A copy of the schema `node`, each of its (sub)schemas mended by `mend`."""
    if isinstance(node, list):
        return [rebuilt(child, mend) for child in node]
    if not isinstance(node, Mapping):
        return node  # a boolean schema, or a value
    copy = dict(node)
    for key in _SUBSCHEMAS:
        if key in node:
            copy[key] = rebuilt(node[key], mend)
    for key in NAME_MAPS:  # (draft-07's `dependencies` may map to lists of names: as they are)
        if isinstance(node.get(key), Mapping):
            copy[key] = {name: rebuilt(child, mend) for name, child in node[key].items()}
    mend(copy)
    return copy
