"""A response schema narrowed to what Anthropic's structured outputs accept.

Anthropic compiles the schema into a grammar, and refuses (400) keywords the
grammar cannot hold: any keyword but a documented few (`HELD`: numeric
bounds, string lengths, most array and object counts, `contains`,
`prefixItems`, `not` are out: "For 'integer' type, property 'minimum' is not
supported"), string formats beyond a documented few, patterns with
backreferences, lookaround, word boundaries, atomic groups or possessive
quantifiers (`schema_bounds.UNHELD_IN_PATTERNS`), an `enum` or `const` that is
not strings, numbers, booleans and nulls, a `$ref` inside an `allOf`, and an
object that does not say `additionalProperties: false`. As Anthropic's own
SDK does, those are moved into the `description` (the model still reads
them) and every object is closed; an `allOf` of one `$ref` goes as an
`anyOf` (the same meaning), and the target of a `$ref` that leads through a
moved keyword is sent once under `$defs` (`_Narrowing`). Nothing is lost: the reply is
checked against the frontend's full schema when it ends (tools.py).

`oneOf`, which the grammar does not hold, goes as `anyOf` (left out beside
an `anyOf`), as Anthropic's SDK sends it (the reply is still checked against
the `oneOf`); a `$ref` into it is rewritten to match.

Some shapes are not sent at all (`unheld`; the reply is still checked, and
`structured_output_error` says why). Three cannot be closed without changing
what they mean: an object that names none of its keys (a map: no
`properties`, or `patternProperties`, or an empty `properties` said open;
with nothing said of others, an empty one is an object of no keys, sent
closed), which closed could only be `{}`,
and one that gives keys beyond its `properties` a schema of their own
(`additionalProperties` or `unevaluatedProperties` a schema, or
`patternProperties`) or requires them (`then`'s, say);
`allOf` over two or more objects (its branches, `$ref`s followed, and the
node's own `properties`), each of which closed would refuse the others'
keys; and an object's own `properties` beside `anyOf` / `oneOf` branches
that are objects (a tagged union), the same clash. And Anthropic's
structured outputs support no recursive schema (a `$ref` back to a schema it
is inside), nor references other than `$ref` pointers (by `$anchor` or
`$dynamicRef` name).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..schema_bounds import NAME_MAPS, UNHELD_IN_PATTERNS, VALUE_KEYWORDS
from ..schemas import (
    MOST_REFERENCES,
    references_problem,
    refers_within_inner_resource,
    resolve_pointer,
)

# The keywords Anthropic's grammar holds (its structured outputs' documentation; its SDK
# keeps these and moves every other one into the description): numeric bounds, string
# lengths, array and object counts, `contains`, `prefixItems`, `not`, `if`... go there.
HELD = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minItems",  # 0 or 1 only
        "enum",  # of strings, numbers, booleans and nulls only
        "const",  # the same
        "anyOf",
        "allOf",  # with no $ref in it; of one $ref alone, sent as anyOf (`_as_any_of`)
        "oneOf",  # sent as anyOf
        "$ref",
        "$defs",
        "definitions",
        "format",  # the HELD_FORMATS
        "pattern",  # with none of UNHELD_IN_PATTERNS
        "description",
        "title",
        "default",
        "$schema",
        "$comment",
    }
)

# The string formats Anthropic's grammar holds (its structured outputs' documentation, and
# its SDK's list); another is moved into the description, as its SDK moves it.
HELD_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"}
)

_LITERALS = VALUE_KEYWORDS | {"required"}  # values, not schemas


def output_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` with the bounds Anthropic refuses moved into descriptions, objects closed."""
    narrowing = _Narrowing(schema)
    narrowed = narrowing.narrowed(schema)
    assert isinstance(narrowed, dict)
    if narrowing.hoisted:
        narrowed["$defs"] = {**narrowed.get("$defs", {}), **narrowing.hoisted}
    return narrowed


class _Narrowing:
    """One schema's narrowing. A `$ref` that leads through a keyword moved into a
    description (OpenAPI's `components`, a `prefixItems`) would lead nowhere in what is
    sent: its target is sent once under `$defs` (`hoisted`), and every such reference
    points there, as does one whose pointer is %-escaped. Put in each reference's
    place, a reviewer's 3 KB schema of definitions each used twice grew to 32 MB and
    held a worker 27 s."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.hoisted: dict[str, Any] = {}
        self._names: dict[int, str] = {}  # a target hoisted (its id) -> its name under $defs
        self._spent = 0  # about what is written, in characters
        # A few times what came, at most: a schema that grows past it is not sent.
        self._budget = _GROWTH * len(json.dumps(root)) + _SMALL_SCHEMA

    def narrowed(self, node: Any) -> Any:
        if isinstance(node, list):
            return [self.narrowed(item) for item in node]
        if not isinstance(node, Mapping):
            return node
        self._spend(_OBJECT_CHARS)
        kept: dict[str, Any] = {}
        moved: dict[str, Any] = {}
        for key, value in node.items():
            if _unsupported(key, node):
                moved[key] = value
            elif key == "allOf" and _as_any_of(node):
                # Anthropic takes no $ref in an allOf (pydantic's way with a described
                # nested model); of one branch, an anyOf means the same.
                kept["anyOf"] = self.narrowed(value)
            elif key in _LITERALS:
                kept[key] = value  # values, not schemas
                self._spend(len(json.dumps(value)))
            elif key in NAME_MAPS and isinstance(value, Mapping):
                kept[key] = {name: self.narrowed(sub) for name, sub in value.items()}
            elif key == "$ref" and isinstance(value, str):
                kept[key] = self._reference(value)
            elif isinstance(value, str):  # a description, a title, a type
                kept[key] = value
                self._spend(len(value))
            else:
                kept[key] = self.narrowed(value)
        if _is_object(kept):
            kept["additionalProperties"] = False
        if "oneOf" in kept:  # beside an anyOf, left out as Anthropic's SDK does
            one_of = kept.pop("oneOf")
            kept.setdefault("anyOf", one_of)
        if moved:
            bounds = ", ".join(f"{key}: {json.dumps(value)}" for key, value in moved.items())
            self._spend(len(bounds))
            description = kept.get("description")
            kept["description"] = (
                f"{description}\n\n{{{bounds}}}" if description else f"{{{bounds}}}"
            )
        return kept

    def _reference(self, reference: str) -> str:
        # A %-escaped pointer (`#/$defs/Page%3CUser%3E`, as typescript-json-schema writes
        # generics) is hoisted too: a resolver that reads it as written finds nothing.
        if "%" not in reference and not _through_moved(reference, self.root):
            return _as_sent(reference, self.root) or reference  # None: `unheld` says why
        # By its target, not its spelling: one target under 199 spellings (%-escapes)
        # was sent 199 times (a reviewer's 1 MB schema: 180 MB).
        target = resolve_pointer(self.root, unquote(reference.removeprefix("#")))
        name = self._names.get(id(target))
        if name is None:
            taken = {*self._names.values(), *_defs(self.root)}
            name = next(f"moved{n}" for n in range(len(taken) + 1) if f"moved{n}" not in taken)
            self._names[id(target)] = name  # before its target: a reference back finds it
            self.hoisted[name] = self.narrowed(target)
        return f"#/$defs/{name}"

    def _spend(self, amount: int) -> None:
        """Count what is written; past the budget, the schema is not sent (`unheld`):
        targets nested in one another, each sent whole, wrote a large description once
        per level (reviewers: 162 MB, 103 MB from 1 MB; 9 MB of small objects in 0.7 s
        from 0.3 MB)."""
        self._spent += amount
        if self._spent > self._budget:
            raise _TooLarge


class _TooLarge(Exception):
    pass


_GROWTH = 4  # what narrowing may write, at most, for each character of the schema
_SMALL_SCHEMA = 64 * 1024  # and beside that, whatever the schema's size
_OBJECT_CHARS = 16  # an object's braces and its additionalProperties, about


def _as_any_of(node: Mapping[str, Any]) -> bool:
    """Whether a node's `allOf` goes as an `anyOf`: one branch, a `$ref` (Anthropic takes
    none in an allOf: pydantic's way with a described nested model), and no `anyOf` or
    `oneOf` beside it to clash with (an allOf of one branch and an anyOf of it mean the
    same)."""
    return _one_reference(node.get("allOf")) and "anyOf" not in node and "oneOf" not in node


def _one_reference(branches: Any) -> bool:
    """Whether an `allOf` is one branch, a `$ref`."""
    return (
        isinstance(branches, list)
        and len(branches) == 1
        and isinstance(branches[0], Mapping)
        and "$ref" in branches[0]
    )


def _defs(root: Mapping[str, Any]) -> Mapping[str, Any]:
    defs = root.get("$defs")
    return defs if isinstance(defs, Mapping) else {}


def _unsupported(keyword: str, node: Mapping[str, Any]) -> bool:
    """Whether Anthropic's grammar refuses `keyword` as `node` has it (it goes in the
    description)."""
    value = node[keyword]
    return (
        keyword not in HELD
        # A tuple's `items` (a list before 2020-12; beside `prefixItems`, the items past
        # them) goes with its tuple: sent alone, it applied to every item (a closed
        # tuple, `items: false`, could only be `[]`).
        or (keyword == "items" and ("prefixItems" in node or isinstance(value, list)))
        or (keyword == "minItems" and value not in (0, 1))
        or (keyword == "enum" and isinstance(value, list) and not all(map(_scalar, value)))
        or (keyword == "const" and not _scalar(value))
        or (keyword == "format" and isinstance(value, str) and value not in HELD_FORMATS)
        or (
            keyword == "pattern"
            and isinstance(value, str)
            and UNHELD_IN_PATTERNS.search(value) is not None
        )
    )


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _keywords_on_the_way(
    reference: str, root: Mapping[str, Any]
) -> Iterator[tuple[int, str, Mapping[str, Any]]]:
    """Each keyword a local `$ref`'s pointer goes through (its index among the pointer's
    parts, the keyword, the schema holding it), as far as the pointer leads; names in a
    map of schemas (`properties`...) and list indexes are no keywords."""
    node: Any = root
    names = False  # `node` maps names to schemas: its keys are no keywords
    for index, part in enumerate(reference[2:].split("/")):
        key = unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and key in node:
            if not names:
                yield index, key, node
            names = not names and key in NAME_MAPS
            node = node[key]
        elif isinstance(node, list) and key.isascii() and key.isdigit() and int(key) < len(node):
            node, names = node[int(key)], False
        else:
            return  # leads nowhere (below an `$id`, say): nothing more to follow


def _through_moved(reference: str, root: Mapping[str, Any]) -> bool:
    """Whether a local `$ref` goes through a keyword that is moved into a description."""
    return reference.startswith("#/") and any(
        _unsupported(key, holder) for _, key, holder in _keywords_on_the_way(reference, root)
    )


def _as_sent(reference: str, root: Mapping[str, Any]) -> str | None:
    """A `$ref` as it must read in what is sent: through a `oneOf` that goes as `anyOf`
    (the same branches, in order), or an `allOf` that does, the pointer says `anyOf`.
    None: it leads into a `oneOf` left out beside an `anyOf`. Any other reference is
    sent as it is."""
    if not reference.startswith("#/"):
        return reference
    parts = reference[2:].split("/")
    for index, key, holder in _keywords_on_the_way(reference, root):
        if key == "oneOf":
            if "anyOf" in holder:
                return None
            parts[index] = "anyOf"
        elif key == "allOf" and _as_any_of(holder):
            parts[index] = "anyOf"
    return "#/" + "/".join(parts)


def unheld(schema: Mapping[str, Any]) -> str | None:
    """What in `schema` a closed schema cannot hold as the frontend meant it (None:
    nothing). Closing an object that names its keys only keeps other keys out."""
    return sent_form(schema)[0]


def sent_form(schema: Mapping[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """Why `schema` is not sent to Anthropic (`unheld`'s reason; None: it is), and the
    form it is sent in (`output_schema`'s), narrowed once for both."""
    problem = references_problem(schema)
    if problem == "recursion":
        return "a recursive schema (a $ref to a schema it is inside)", None
    if problem == "an anchor":
        return (
            "a reference that is no local pointer: by $anchor or $dynamicRef name, or by URI"
            " (only $ref pointers from #/ are taken)",
            None,
        )
    if problem is not None:
        return f"more than {MOST_REFERENCES} references", None
    if "$defs" in schema and not isinstance(schema["$defs"], Mapping):
        # Data in draft 7 (no keyword there), where definitions are sent and those moved
        # are put: hoisting one crashed the request (a reviewer's).
        return "a $defs that is no map of schemas", None
    if refers_within_inner_resource(schema):
        # Pointers below it read from it (the request's check follows that), where the
        # narrowing reads every pointer from the top: a reference would lead elsewhere.
        return "a $ref below an inner $id (its pointers read from it)", None
    try:
        if (why := _unheld(schema, schema, _Walk())) is not None:
            return why, None
        return None, output_schema(schema)
    except _TooLarge:
        return "a schema too large to narrow for Anthropic (what is sent, or read)", None
    except RecursionError:  # a long chain of references, each followed
        return "a schema nested too deep once its references are followed", None


# Anthropic compiles at most this many optional properties (not in their object's
# `required`), and this many parameters with an `anyOf` or a list of types, across a
# request's strict schemas: past either, a 400 ("Schema is too complex for
# compilation"). Our tools are not sent strict: the response schema alone counts,
# each schema in it once (a definition used twice, or never, once), the top one not
# (no parameter).
MOST_OPTIONAL = 24
MOST_UNIONS = 16


def compiled_form(schema: Mapping[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """`sent_form`, and past Anthropic's compiler's limits a reason too: why `schema` is
    not sent (None: it is), and the form it is sent in."""
    why, sent = sent_form(schema)
    if sent is not None and (why := _past_limits(sent)) is not None:
        return why, None
    return why, sent


def _past_limits(sent: Mapping[str, Any]) -> str | None:
    """Which of Anthropic's limits the schema as sent goes past (None: neither)."""
    optional = unions = 0
    for node in _schemas_in(sent):
        properties = node.get("properties")
        if isinstance(properties, Mapping):
            named = set(_strings(node.get("required")))  # a draft's $defs go unchecked
            optional += sum(name not in named for name in properties)
        if node is not sent and ("anyOf" in node or isinstance(node.get("type"), list)):
            unions += 1
    if optional > MOST_OPTIONAL:
        return f"{optional} optional properties, where Anthropic compiles {MOST_OPTIONAL}"
    if unions > MOST_UNIONS:
        return (
            f"{unions} schemas below the top with an anyOf or a list of types, "
            f"where Anthropic compiles {MOST_UNIONS}"
        )
    return None


def _schemas_in(node: Any) -> Iterator[Mapping[str, Any]]:
    """`node` and every schema inside it, as sent (its values, `enum`'s say, not
    looked into)."""
    if isinstance(node, list):
        for item in node:
            yield from _schemas_in(item)
        return
    if not isinstance(node, Mapping):
        return
    yield node
    for key, value in node.items():
        if key in NAME_MAPS and isinstance(value, Mapping):
            for sub in value.values():
                yield from _schemas_in(sub)
        elif key in _SCHEMA_KEYWORDS:
            yield from _schemas_in(value)


# What holds schemas in a schema as sent (besides NAME_MAPS): every other keyword
# kept holds a value or text.
_SCHEMA_KEYWORDS = frozenset({"items", "anyOf", "allOf", "additionalProperties"})


@dataclass
class _Walk:
    """What one `unheld` has read: the hoisted targets looked at, each once (a
    reviewer's 300 KB schema, walked again per reference, held a thread 18 s), and the
    parts looked at for what objects require, at most _MOST_STEPS (past them,
    _TooLarge: the schema is not sent)."""

    hoisted: set[int] = field(default_factory=set)
    steps: int = 0

    def step(self, steps: int = 1) -> None:
        self.steps += steps
        if self.steps > _MOST_STEPS:
            raise _TooLarge


_MOST_STEPS = 100_000  # parts and names read: ~0.1-0.3 s at most, on the request's thread
# The keywords that say what of an object's keys beyond its properties: set to anything
# but false, beside `properties: {}`, a map (`unevaluatedProperties: true` too: sent
# closed as {}, a reviewer's).
_OTHER_KEYS = ("additionalProperties", "unevaluatedProperties")


def _unheld(node: Any, root: Mapping[str, Any], walk: _Walk) -> str | None:
    """What in `node`, as it is sent, a closed schema cannot hold."""
    if isinstance(node, list):
        return next((why for item in node if (why := _unheld(item, root, walk)) is not None), None)
    if not isinstance(node, Mapping):
        return None
    if _is_object(node):
        extra = node.get("additionalProperties")
        # `properties: {}` and nothing said of others: an object of no keys (pydantic's
        # model with no fields, in a union of actions), closed as it means (it was
        # refused as a map). Said open (`additionalProperties: true`), a map.
        own = node.get("properties")
        # `propertyNames` speaks of keys it does not name (a map's): closed as {}, the
        # map's data was lost unseen (a reviewer's).
        said_open = "propertyNames" in node or any(
            node.get(k) not in (None, False) for k in _OTHER_KEYS
        )
        named = bool(own) or (own == {} and not said_open)
        if not named and ("patternProperties" in node or extra is not False):
            return "an object whose keys it does not name"
        least = node.get("minProperties")
        if isinstance(least, int) and least > len(own if isinstance(own, Mapping) else ()):
            # Closed, it could never hold that many (`properties: {}, minProperties: 1`,
            # sent as {}: no answer passed the check, a reviewer's).
            return "an object that requires more keys than it names"
        # Keys beyond its properties given a schema of their own are meant (a map beside
        # named keys): closed, the model could not write them, and the reply would still
        # pass the check, the data lost unseen. (`true` only lets them be: closed is fine.)
        if "patternProperties" in node or (isinstance(extra, Mapping) and extra):
            return "an object that takes keys beyond its properties"
    branches = node.get("allOf")
    if isinstance(branches, list):
        # Each object closed refuses the others' keys: two or more can hold nothing (its
        # own `$ref`'s too: a reviewer's, sent closed).
        objects = sum(_is_object(_dereferenced(branch, root)) for branch in branches)
        referred = "$ref" in node and _is_object(_dereferenced(node, root))
        if objects + bool(node.get("properties")) + referred >= 2:
            return "allOf over objects"
        if any(isinstance(b, Mapping) and "$ref" in b for b in branches) and not _as_any_of(node):
            return "a $ref in an allOf not of one branch alone (Anthropic takes none there)"
    own = node.get("properties")
    if own and isinstance(own, Mapping):
        # A tagged union's shared keys beside its branches (or a $ref beside them):
        # closed, the object refuses a branch's other keys, and the branch the object's.
        for keyword in ("anyOf", "oneOf"):
            branches = node.get(keyword)
            if isinstance(branches, list) and any(
                _names_others(_dereferenced(branch, root), own) for branch in branches
            ):
                return f"{keyword} over objects beside the object's own properties"
        if "$ref" in node and _names_others(_dereferenced(node, root), own):
            return "a $ref to an object beside the object's own properties"
    if _is_object(node):
        later = node.get("unevaluatedProperties")
        if (isinstance(later, Mapping) and later) or _requires_others(node, root, walk):
            # Closed, a key some answers must hold could never be written (`then`'s
            # `extra` when `kind` is "b"), or one given a schema would be lost unseen.
            return "an object that requires or describes keys beyond its properties"
    elif (why := _beside_closed(node, root, walk)) is not None:
        return why
    reference = node.get("$ref")
    if isinstance(reference, str) and reference.startswith("#/") and not _as_sent(reference, root):
        return "a $ref into a oneOf beside an anyOf (only the anyOf is sent)"
    if isinstance(reference, str) and "/additionalProperties" in reference:
        return "a $ref into an additionalProperties (sent as false: objects are closed)"
    if isinstance(reference, str) and reference.startswith("#/"):
        hoisted = "%" in reference or _through_moved(reference, root)  # sent under $defs
        target = resolve_pointer(root, unquote(reference[1:])) if hoisted else None
        if target is not None and id(target) not in walk.hoisted:
            walk.hoisted.add(id(target))
            if (why := _unheld(target, root, walk)) is not None:
                return why
    for key, value in node.items():
        if key in _LITERALS or _unsupported(key, node):
            continue  # in the description: sent as words, with no shape to hold
        inner = list(value.values()) if key in NAME_MAPS and isinstance(value, Mapping) else value
        why = _unheld(inner, root, walk)
        if why is not None:
            return why
    return None


def _beside_closed(node: Mapping[str, Any], root: Mapping[str, Any], walk: _Walk) -> str | None:
    """What a node that is no object cannot hold beside the objects sent closed that its
    instance must be: all of them (`{"$ref": A, "required": ["z"]}`, `{"allOf": [A,
    {"required": ["z"]}]}`: a reviewer's, sent closed, no answer holding z passed), or
    one of them (an `anyOf` or `oneOf` of objects). What it requires is theirs to hold:
    each of those that all apply, and one alternative at least (a key only some name
    leaves the others out, as it means to; the branches are looked at on their own:
    walked as parts of this node, a union of unions was refused for its branches'
    keys). Keys beyond theirs given a schema here (`patternProperties`,
    `unevaluatedProperties` beside a `$ref`: 2020-12's way to extend one) would be lost
    unseen, as an object's are (reviewers)."""
    closed = _objects_in_place(node, root)
    # Looked for only where they are asked something of (a walk for every union of a
    # deep chain of them cost its square).
    required = _required_in_place(node, root, walk)
    takes_more = _takes_keys_beyond(node)
    asked = required or takes_more or closed
    alternatives = _alternatives(node, root, walk) if asked else []
    if not closed and not alternatives:
        return None
    if takes_more:
        return "an object that takes keys beyond its properties"
    if closed:
        allowed = set.intersection(*(set(_keys(part)) for part in closed))
        if any(set(_keys(part)) != allowed for part in alternatives):
            # A base's object and a variant's, both closed, refuse each other's keys (a
            # `$ref` beside a `oneOf` of objects: a reviewer's, sent closed).
            return "anyOf or oneOf over objects beside objects that all apply"
        apart = {id(part) for part in closed}
        if _requires_others(node, root, walk, allowed, apart, alternatives=False):
            return "an object that requires or describes keys beyond its properties"
    named = {key for part in alternatives for key in _keys(part)}
    walk.step(len(named))
    if alternatives and not named.issuperset(required):
        return "an object that requires or describes keys beyond its properties"
    return None


def _alternatives(
    node: Mapping[str, Any], root: Mapping[str, Any], walk: _Walk
) -> list[Mapping[str, Any]]:
    """The objects sent closed that `node`'s instance may be, one of them: the branches of
    its `anyOf` / `oneOf`, through `$ref`s and unions of unions, and those of a union its
    `$ref` or `allOf` leads to (one level only missed them, and refused a union of unions
    for a key only the inner one named: a reviewer's)."""
    found: list[Mapping[str, Any]] = []
    seen = {id(node)}
    # What applies in place (its $ref's target, its allOf's parts) counts if a union: an
    # object there is one it must be (`_objects_in_place`), no alternative.
    in_place = [_dereferenced(part, root) for part in _applying_in_place(node)]
    waiting = [part for part in in_place if part is not node and not _is_object(part)]
    waiting += [_dereferenced(branch, root) for branch in _branches(node)]
    while waiting:
        current = waiting.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        walk.step()
        if _is_object(current):
            found.append(current)
        else:  # a union, or an allOf around one (an allOf's parts all apply: its objects)
            inner = [*_branches(current), *_listed(current.get("allOf"))]
            waiting += [_dereferenced(branch, root) for branch in inner]
    return found


def _applying_in_place(node: Mapping[str, Any]) -> list[Any]:
    """What applies to `node`'s instance in place: `node` itself for its `$ref`, and its
    `allOf`'s parts."""
    return [*([node] if "$ref" in node else []), *_listed(node.get("allOf"))]


def _required_in_place(node: Mapping[str, Any], root: Mapping[str, Any], walk: _Walk) -> list[str]:
    """The keys `node` requires, its own and those its parts written in place require,
    however deep: its `allOf`'s (`{"anyOf": [A], "allOf": [{"required": ["z"]}]}`), and,
    as if always, its `then`'s, `else`'s and dependent maps' (`{"anyOf": [A, B], "if":
    ..., "then": {"required": ["z"]}}`, a key no alternative names), through `$ref`s and
    a part's unions of requirements (reviewers'). The objects sent (an `allOf`'s, a
    `$ref`'s) are not followed: their keys are theirs (`_objects_in_place`), and the
    node's own branches are its alternatives; but under a `then`, an `else` or a
    dependent map nothing is sent, and an object there requires as any part does
    (`"then": {"type": "object", "required": ["z"]}` was sent: a reviewer's). Each part
    read counts against `walk` (a union behind a `$ref` 199 properties use was read 199
    times: 0.85 s)."""
    names: list[str] = []
    waiting = [(node, False)]  # a part, and whether it is under what is not sent
    seen = {id(node)}
    while waiting:
        part, unsent = waiting.pop()
        walk.step()
        names += _strings(part.get("required"))
        sent = [*_listed(part.get("allOf")), *(_branches(part) if part is not node else [])]
        if "$ref" in part:
            sent.append(_dereferenced(part, root))
        conditional = [part.get("then"), part.get("else")]
        for keyword in _IN_PLACE_MAPS:
            if isinstance(value := part.get(keyword), Mapping):
                conditional += value.values()
        names += [name for names_list in conditional for name in _strings(names_list)]
        inner = [(schema, unsent) for schema in sent] + [(schema, True) for schema in conditional]
        for schema, under in inner:
            if not isinstance(schema, Mapping) or id(schema) in seen:
                continue
            if under or not _is_object(schema):  # an object sent is `_objects_in_place`'s
                seen.add(id(schema))
                waiting.append((schema, under))
    return names


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _branches(node: Mapping[str, Any]) -> list[Any]:
    """The branches of `node`'s `anyOf` and `oneOf`."""
    return [
        branch
        for keyword in ("anyOf", "oneOf")
        if isinstance(node.get(keyword), list)
        for branch in node[keyword]
    ]


def _takes_keys_beyond(node: Mapping[str, Any]) -> bool:
    """Whether `node` gives keys beyond the named ones a schema of their own (`true`
    only lets them be: closed is fine)."""
    return "patternProperties" in node or any(
        isinstance(extra := node.get(keyword), Mapping) and bool(extra)
        for keyword in ("additionalProperties", "unevaluatedProperties")
    )


def _objects_in_place(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The objects sent closed that all apply to `node`'s instance: its `$ref`'s target
    and the branches of its `allOf` (`then`, `else` and the dependent maps go into the
    description: not sent; an `anyOf`'s branches are alternatives)."""
    objects = (_dereferenced(part, root) for part in _applying_in_place(node))
    return [part for part in objects if part is not node and _is_object(part)]


def _keys(node: Mapping[str, Any]) -> list[str]:
    keys = node.get("properties")
    return [key for key in keys if isinstance(key, str)] if isinstance(keys, Mapping) else []


def _requires_others(
    node: Mapping[str, Any],
    root: Mapping[str, Any],
    walk: _Walk,
    allowed: set[str] | None = None,
    closed_apart: set[int] | None = None,
    alternatives: bool = True,
) -> bool:
    """Whether an object, closed, would refuse answers it means: a key it requires, or
    that a part applying to it in place requires or describes (a part's own beside its
    `$ref` too), is not among its `properties` (`then`'s `extra` when `kind` is "b", an
    `anyOf` of `required`s); or, given, not among `allowed`, the parts in `closed_apart`
    left to their own check (and, without `alternatives`, the branches of an `anyOf`
    or `oneOf` too). Each part looked at once per object, and no more than
    `walk` allows in all: a memo of each node's keys held a copy per level (a
    reviewer's 450 KB schema: 1.7 GB)."""
    if allowed is None:
        allowed = set(_keys(node))
    waiting: list[Mapping[str, Any]] = [node]
    seen = {id(node), *(closed_apart or ())}  # those looked at on their own
    while waiting:
        current = waiting.pop()
        named = _strings(current.get("required"))
        if current is not node and isinstance(keys := current.get("properties"), Mapping):
            named += keys
        walk.step(1 + len(named))  # each name read counts (a reviewer's lists: 60 s)
        if any(name not in allowed for name in named):
            return True
        for part in _in_place_parts(current, root, alternatives):
            if isinstance(part, list):  # dependentRequired's names
                walk.step(len(part))
                if any(name not in allowed for name in _strings(part)):
                    return True
            elif id(part) not in seen:
                seen.add(id(part))
                waiting.append(part)
    return False


# The keywords whose schemas (or, for dependentRequired, names) apply to the instance
# their object does, not to its values.
_IN_PLACE_MAPS = ("dependentSchemas", "dependencies", "dependentRequired")


def _in_place_parts(
    node: Mapping[str, Any], root: Mapping[str, Any], alternatives: bool = True
) -> Iterator[Any]:
    """The schemas that apply to `node`'s instance in place: `then`, `else`, the branches
    of `allOf` (and of `anyOf` and `oneOf`: without `alternatives`, those that are no
    objects alone, requirements on the objects beside them, as `{"$ref": Contact,
    "anyOf": [{"required": ["email"]}, ...]}`'s: a reviewer's, sent closed), the values
    of the dependent maps (lists of names among them), and its `$ref`'s target."""
    for keyword in ("then", "else"):
        if isinstance(part := node.get(keyword), Mapping):
            yield part
    for keyword in ("allOf", "anyOf", "oneOf"):
        if isinstance(branches := node.get(keyword), list):
            yield from (
                branch
                for branch in branches
                if isinstance(branch, Mapping)
                and (
                    alternatives
                    or keyword == "allOf"
                    or not _is_object(_dereferenced(branch, root))
                )
            )
    for keyword in _IN_PLACE_MAPS:
        if isinstance(value := node.get(keyword), Mapping):
            yield from (part for part in value.values() if isinstance(part, Mapping | list))
    reference = node.get("$ref")
    if isinstance(reference, str) and reference.startswith("#"):
        target = resolve_pointer(root, unquote(reference[1:]))
        if isinstance(target, Mapping):
            yield target


def _strings(value: Any) -> list[str]:
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _dereferenced(branch: Any, root: Mapping[str, Any]) -> Mapping[str, Any]:
    """`branch`, or the schema its local `$ref` leads to, through a chain of them (a
    definition that only refers to another); {} when it is neither."""
    for _ in range(_MOST_HOPS):
        if not (isinstance(branch, Mapping) and isinstance(branch.get("$ref"), str)):
            break
        target = resolve_pointer(root, unquote(branch["$ref"].removeprefix("#")))
        if target is None:
            break
        branch = target
    return branch if isinstance(branch, Mapping) else {}


# References followed in a row at most (the request's check refused chains that loop).
_MOST_HOPS = 32


def _names_others(branch: Mapping[str, Any], own: Mapping[str, Any]) -> bool:
    """Whether `branch` is an object whose keys are not the same as `own`'s (closed, the
    two would refuse each other's)."""
    keys = branch.get("properties")
    return _is_object(branch) and (not isinstance(keys, Mapping) or keys.keys() != own.keys())


def _is_object(node: Mapping[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node
