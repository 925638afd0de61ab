"""What checking a request's schemas may cost: bounded before any is checked.

Checking a schema (against its metaschema, when the request comes) and
applying it (to the reply, at its end) run with the interpreter's lock held:
while one runs, every stream of the instance waits. So a request whose
schemas would cost more than their size says is a 400 (request.py), found by
walks that cost no more than the schema's size:

- more than MOST_SCHEMA_OBJECTS subschemas in all (about half a millisecond
  each to check: a 1 MiB schema of 20,000 took 11 s);
- a list of more than MOST_LIST_VALUES values;
- a part whose path from the top is longer than MOST_PATH_CHARS (the checks
  name each part by it);
- a pattern longer than MOST_PATTERN_CHARS, or one whose counted repeats come
  to more than that when written out: the `regex` module, which applies
  patterns (schemas.py), writes a repeat of a fixed count out in full as it
  compiles, with no deadline, so the 38 characters
  `(?:(?:(?:a{1000}){1000}){1000}){1000}` asked for a trillion.

And `uniqueItems` (of the metaschema, over `enum` in draft-04, or of a
schema over the reply) is checked in one pass (`unique`) where jsonschema
compares every pair of values it cannot sort: 1,000 lists of 48 numbers took
44 s.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Iterator
from re import _constants, _parser  # type: ignore[attr-defined]
from typing import Any

# A frontend's tools and schema hold tens to hundreds of objects.
MOST_SCHEMA_OBJECTS = 2000
MOST_LIST_VALUES = 1000
MOST_PATTERN_CHARS = 1000
# The checks name each subschema by its path from the top (a JSON pointer): 29 levels of
# 8,500-character property names, 1,900 of them, in a 764 KB body took a worker to 1.4 GB.
MOST_PATH_CHARS = 10_000
# Keywords whose value is a value, not a schema (a "$ref" or a "pattern" in one is data);
# and those whose value maps names to subschemas (the names are not keywords: a property
# named "enum"). One list for every walk of a schema, ours and the providers'.
VALUE_KEYWORDS = frozenset({"enum", "const", "default", "examples"})
NAME_MAPS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"}
)
# What a `pattern` may not use where a provider compiles it (Anthropic's grammar, OpenAI's
# regex engine), of what the request's check (Python's `re`) takes: backreferences (by
# number, `\k<name>`, Python's `(?P=name)`), lookaround, word boundaries, atomic groups
# and possessive quantifiers (`a++`: one written short), and conditionals. One rule for
# both (two copies had drifted: a reviewer's). A pattern that uses one goes into the
# description, where the model still reads it; an escaped backslash before a digit or a
# `b`, or an escaped `+` repeated, moves one that was fine, harmlessly (the reply is
# checked against the frontend's schema all the same).
UNHELD_IN_PATTERNS = re.compile(r"\\[1-9bBk]|\(\?(?:P=|<?[=!]|>|\()|[*+?}]\+")


def schema_objects(value: Any) -> int:
    """How many subschemas (and maps of them) a schema holds, what checking it costs
    grows with; values (`enum`, `const`, `default`, `examples`) do not count. A `true`
    or `false` where a schema stands counts as the schema it is: each costs the
    metaschema's check as much as an object (10,000 `true` properties, 2 objects, took
    5.7 s); a flag (`readOnly`, `uniqueItems`) costs nothing and does not."""
    count = 0
    stack: list[tuple[Any, bool]] = [(value, True)]  # (node, whether a schema stands there)
    while stack:
        node, schema_there = stack.pop()
        if isinstance(node, list):
            stack += ((item, schema_there) for item in node)
        elif isinstance(node, bool):
            count += schema_there
        elif isinstance(node, dict):
            count += 1
            for key, child in node.items():
                if key in NAME_MAPS and isinstance(child, dict):
                    count += 1
                    stack += ((schema, True) for schema in child.values())  # whatever names
                elif key not in VALUE_KEYWORDS:
                    stack.append((child, key in SCHEMA_KEYWORDS or isinstance(child, list)))
    return count


# Keywords whose value is one schema (a list's items are schemas where a list stands:
# allOf, prefixItems).
SCHEMA_KEYWORDS = frozenset(
    {
        "additionalProperties",
        "additionalItems",
        "items",
        "contains",
        "propertyNames",
        "not",
        "if",
        "then",
        "else",
        "unevaluatedProperties",
        "unevaluatedItems",
        "extends",
    }
)


def long_part(schema: Any) -> str | None:
    """A part of a schema whose check costs more than its size says (the module's
    docstring), else None."""
    # (node, inside a value, the length of its path from the top)
    stack: list[tuple[Any, bool, int]] = [(schema, False, 0)]
    while stack:
        node, in_value, path = stack.pop()
        if path > MOST_PATH_CHARS and not in_value:
            return f"a part whose path from the top is over {MOST_PATH_CHARS} characters"
        if isinstance(node, list):
            if len(node) > MOST_LIST_VALUES:
                return f"a list of {len(node)} values (at most {MOST_LIST_VALUES})"
            stack += ((item, in_value, path + 5) for item in node)
        elif isinstance(node, dict):
            if not in_value and (pattern := _long_pattern(_patterns(node))) is not None:
                return pattern
            for key, child in node.items():
                inside = path + len(key) + 1
                if not in_value and key in NAME_MAPS and isinstance(child, dict):
                    # names, not keywords
                    stack += ((each, False, inside + len(name) + 1) for name, each in child.items())
                else:
                    stack.append((child, in_value or key in VALUE_KEYWORDS, inside))
    return None


def _patterns(node: dict[str, Any]) -> Iterable[Any]:
    yield node.get("pattern")
    if isinstance(names := node.get("patternProperties"), dict):
        yield from names


def _long_pattern(patterns: Iterable[Any]) -> str | None:
    for pattern in patterns:
        if not isinstance(pattern, str):
            continue
        if len(pattern) > MOST_PATTERN_CHARS:
            return f"a pattern of more than {MOST_PATTERN_CHARS} characters"
        if _VERBOSE.search(pattern):
            # JSON Schema's patterns (ECMA-262) have no verbose mode, and in it `regex`
            # reads `a{10 0}` as a count where Python's parser sees characters.
            return f"a pattern in verbose mode (an x flag): {pattern[:60]!r}"
        try:
            parsed = read_pattern(pattern)
        except re.error as exc:
            # The metaschema's `format: regex` reads patterns so too: JSON Schema's own
            # (ECMA-262) are mostly the same syntax; `\p{L}` and `(?<name>...)` are not.
            # Both quoted whole (re's message may hold pieces of the pattern): the log
            # leaves out what a refusal quotes, and an apostrophe of ours would unpair it.
            return (
                "a pattern the Python regular expressions cannot read: "
                f"{pattern[:60]!r} ({str(exc.msg)[:80]!r})"
            )
        except (RecursionError, OverflowError):
            parsed = None  # readable, but too deep or too large: too much to write out
        if parsed is not None and (construct := _unbounded_construct(parsed)) is not None:
            return f"a pattern with {construct}: {pattern[:60]!r}"
        if written_out(pattern, parsed) > MOST_PATTERN_CHARS:
            return (
                f"a pattern whose counted repeats come to more than {MOST_PATTERN_CHARS} "
                f"characters: {pattern[:60]!r}"
            )
    return None


def _unbounded_construct(parsed: Any) -> str | None:
    """What in a parsed pattern the `regex` module matches at a cost in memory that the
    check's deadline does not bound, and JSON Schema's patterns do not need: a
    conditional group (ECMA-262 has none), a repeat whose body holds a lookaround and
    may match nothing (which a repeat adds nothing to; `(?(1)x)(?=(.)*)*` and
    `(?:a|(?=(.)*))+\\1` took 180-510 MB within a reply's check, of two characters)."""
    for op, argument in parsed:
        if op is _constants.GROUPREF_EXISTS:
            return "a conditional group ((?(1)...))"
        if op in _REPEATS:
            _, most, body = argument
            if most > 1 and body.getwidth()[0] == 0 and _holds_a_lookaround(body):
                return "a repeat of what may match nothing around a lookaround ((?=...)*)"
        for part in _subpatterns(argument):
            if (construct := _unbounded_construct(part)) is not None:
                return construct
    return None


def _holds_a_lookaround(parsed: Any) -> bool:
    return any(
        op in (_constants.ASSERT, _constants.ASSERT_NOT)
        or any(_holds_a_lookaround(part) for part in _subpatterns(argument))
        for op, argument in parsed
    )


def read_pattern(pattern: str) -> Any:
    """`pattern` as Python's parser reads it; re.error if it cannot (RecursionError or
    OverflowError if it nests too deeply or counts too high)."""
    with warnings.catch_warnings():  # a "[[" warns, with its position: no line on stderr
        warnings.simplefilter("ignore", FutureWarning)
        return _parser.parse(pattern)


# An inline flag group that turns verbose mode on: (?x), (?ix), (?x:...), (?xi-s:...)
_VERBOSE = re.compile(r"\(\?[a-zA-Z]*x[a-zA-Z]*(?:-[a-zA-Z]*)?[:)]")
_REPEATS = frozenset({_constants.MAX_REPEAT, _constants.MIN_REPEAT, _constants.POSSESSIVE_REPEAT})


def written_out(pattern: str, parsed: Any = None) -> int:
    """About how many items `regex` makes of `pattern` as it compiles it: each repeat
    counted its least number of times (at least once), and once more when it may
    repeat more than that (`+`, `{1,3}`), nested repeats multiplied.

    Read with the standard library's parser, as the metaschema's `format: regex`
    check reads it (comments, verbose mode and classes as Python reads them), or
    `parsed` when the caller has read it already; a pattern it cannot read counts as
    too much to write out. That parser folds what
    `regex` writes out one by one: a class's repeated members (`[\\w\\d\\w\\d...]{1000}`,
    read as two members, took 65 MB), and alternatives (`(?:a|a|...)` to one, `a|b`
    to a class). What it merged (the classes' members as written, counted in the
    pattern's text as `_as_written` reads it, beyond those it kept) is charged at the
    most any class is repeated; and each `|` it folded at the most anything is.
    """
    try:
        shape = _Shape()
        total = shape.items(read_pattern(pattern) if parsed is None else parsed, 1)
    except (re.error, RecursionError, OverflowError):
        return MOST_PATTERN_CHARS + 1
    members, escapes, bars = _as_written(pattern)
    folded = max(0, bars - shape.branches)  # each branch is charged at its own repeats
    # The members of the classes as written, less the fewest the parser can have kept of
    # them: its own classes (`\\d` outside brackets, a folded `a|b`: two members at most a
    # fold) are taken out first (248 `\\d`s once hid a class of 248 members written out
    # 376 times). What it merged is charged at the most any class is repeated.
    kept = shape.class_members - escapes - 2 * folded
    merged = max(0, members - max(0, kept))
    return total + merged * shape.most_class_repeats + folded * shape.most_repeats


class _Shape:
    """A walk of a parsed pattern: its items written out, and what its classes and
    branches hold."""

    def __init__(self) -> None:
        self.class_members = 0  # as Python's parser counted them
        self.most_class_repeats = 0  # the most times a class is written out
        self.most_repeats = 1  # the most times anything is
        self.branches = 0  # the `|`s the parser kept as branches

    def items(self, pattern: Any, repeats: int) -> int:
        total = 0
        for op, argument in pattern:
            if op in _REPEATS:
                least, most, repeated = argument
                # `regex` writes the least count out, and one copy more for the rest of a
                # range (`+`, `{1,2}`): nested 18 deep, 91 characters came to 189 MB.
                copies = max(least, 1) + (1 if least >= 1 and most > least else 0)
                self.most_repeats = max(self.most_repeats, repeats * copies)
                total += copies * self.items(repeated, repeats * copies)
            elif op is _constants.IN:
                self.class_members += len(argument)
                self.most_class_repeats = max(self.most_class_repeats, repeats)
                total += max(1, len(argument))
            elif op is _constants.BRANCH:  # each alternative, though the parser emptied it
                _, alternatives = argument  # (of `a|a`, it drew the "a" out before: "a(?:|)")
                self.branches += len(alternatives) - 1
                total += sum(max(1, self.items(part, repeats)) for part in alternatives)
            else:  # a group, a lookaround: what it holds; anything else, itself
                inner = (self.items(part, repeats) for part in _subpatterns(argument))
                total += max(1, sum(inner))
        return total


def _as_written(pattern: str) -> tuple[int, int, int]:
    """How many members the classes of `pattern` have as written (a range is one; an
    escape one however long), and how many `\\d`-like escapes and `|`s are outside its
    classes: read as Python's parser reads a pattern, escapes and comments skipped (a
    `[` in a comment is no class: taken for one, it hid the class after it)."""
    members = escapes = bars = at = 0
    while at < len(pattern):
        char = pattern[at]
        if char == "\\":
            escapes += pattern[at + 1 : at + 2] in _CATEGORIES  # a class of the parser's own
            at = _after_member(pattern, at)
        elif pattern.startswith("(?#", at):
            at = _after_comment(pattern, at + 3)
        elif char == "[":
            in_class, at = _class(pattern, at + 1)
            members += in_class
        else:
            bars += char == "|"
            at += 1
    return members, escapes, bars


_CATEGORIES = frozenset("dDwWsS")


def _after_comment(pattern: str, at: int) -> int:
    """Past the `)` that ends a comment begun before `at` (an escaped one does not)."""
    while at < len(pattern):
        if pattern[at] == ")":
            return at + 1
        at += 2 if pattern[at] == "\\" else 1
    return len(pattern)


def as_python_reads(pattern: str) -> str:
    """`pattern` written so that the `regex` module reads it as Python's parser does (as
    the request checked it; and as ECMA-262, JSON Schema's own syntax, does): a `{` that
    begins no count is a character (`regex` read `ABC{e<=1}` as fuzzy matching, and a
    reply one letter off matched), and so is a `[` inside a class (`regex` read
    `[[:digit:]]` as a POSIX class)."""
    if "{" not in pattern and "[" not in pattern:
        return pattern
    out: list[str] = []
    at = 0
    while at < len(pattern):
        char = pattern[at]
        if char == "\\":
            end = _after_member(pattern, at)
        elif pattern.startswith("(?#", at):
            end = _after_comment(pattern, at + 3)
        elif char == "[":
            at = _class_as_python_reads(pattern, at + 1, out)
            continue
        elif char == "{" and not _COUNT.match(pattern, at):
            out.append("\\{")
            at += 1
            continue
        else:
            end = at + 1
        out.append(pattern[at:end])
        at = end
    return "".join(out)


def _class_as_python_reads(pattern: str, at: int, out: list[str]) -> int:
    """The class whose `[` is just before `at` onto `out`, each `[` in it escaped; where
    it ends."""
    out.append("[")
    if pattern.startswith("^", at):
        out.append("^")
        at += 1
    first = True  # a "]" first is a member
    while at < len(pattern) and (first or pattern[at] != "]"):
        first = False
        end = _after_member(pattern, at)
        out.append("\\[" if pattern[at:end] == "[" else pattern[at:end])
        at = end
    out.append(pattern[at : at + 1])  # its "]"
    return at + 1


# A count as Python's parser reads one: {m}, {m,}, {m,n}, {,n}, {,}.
_COUNT = re.compile(r"\{(?:\d+,?\d*|,\d*)\}")


def _class(pattern: str, at: int) -> tuple[int, int]:
    """The members of the class whose `[` is just before `at`, and where it ends."""
    members = 0
    if pattern.startswith("^", at):
        at += 1
    first = True  # a "]" first is a member
    while at < len(pattern) and (first or pattern[at] != "]"):
        first = False
        at = _after_member(pattern, at)
        if pattern.startswith("-", at) and not pattern.startswith("-]", at):
            at = _after_member(pattern, at + 1)  # a range: one member
        members += 1
    return members, at + 1


_ESCAPE_LENGTHS = {"x": 4, "u": 6, "U": 10}


def _after_member(pattern: str, at: int) -> int:
    if at >= len(pattern):  # a class we read as unclosed: its end
        return len(pattern)
    if pattern[at] != "\\":
        return at + 1
    kind = pattern[at + 1 : at + 2]
    if kind == "N" and pattern.startswith("{", at + 2):
        close = pattern.find("}", at + 2)
        return len(pattern) if close == -1 else close + 1
    return at + _ESCAPE_LENGTHS.get(kind, 2)


def _subpatterns(argument: Any) -> Iterator[Any]:
    if isinstance(argument, _parser.SubPattern):
        yield argument
    elif isinstance(argument, tuple | list):
        for part in argument:
            yield from _subpatterns(part)


def unique(values: Iterable[Any]) -> bool:
    """Whether no two of the JSON `values` are equal, as jsonschema compares them
    (true is not 1, 1 is 1.0, objects whatever their keys' order), in one pass."""
    seen: set[Any] = set()
    for value in values:
        key = _comparable(value)
        if key in seen:
            return False
        seen.add(key)
    return True


def _comparable(value: Any) -> Any:
    """`value` as a hashable that equals another's exactly when jsonschema's `equal` says
    the two values are (JSON nests at most MAX_JSON_DEPTH deep: this may recurse)."""
    if value is True or value is False:
        return (bool, value)
    if isinstance(value, list | tuple):
        return (list, tuple(map(_comparable, value)))
    if isinstance(value, dict):
        return (dict, frozenset((key, _comparable(item)) for key, item in value.items()))
    return value  # a string, a number (1 == 1.0, hash too) or None
