"""What kind of JSON value a schema asks for, read loosely: whether a reply may be an
object (DeepSeek's JSON mode writes one: providers/openai.py) or a string (a cut reply
that opens with a quote is JSON where one may be: record.py). One reading for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import unquote

from .schema_bounds import MOST_SCHEMA_OBJECTS
from .schemas import resolve_pointer

Kind = Literal["object", "string"]
_VALUES: dict[Kind, type] = {"object": dict, "string": str}
_MOST_LEVELS_LOOKED = 8


def may_be(schema: Any, kind: Kind) -> bool:
    """Whether the value a schema asks for may be of `kind`: yes unless the schema rules
    it out (another kind by its `type`, an enum of others, a `$ref` or an `allOf` branch
    that does, a union none of whose branches may), a few levels deep and no more than
    MOST_SCHEMA_OBJECTS parts in all (an allOf of `$ref`s to allOfs of them took
    minutes, on the I/O loop: a reviewer's). A `$ref` that leads where this cannot
    follow (an anchor, another document, an inner `$id`'s resource) rules it out: not
    known, the caller does as for another kind."""
    looked = 0

    def may(node: Any, depth: int) -> bool:
        nonlocal looked
        looked += 1
        if not isinstance(node, Mapping):
            return node is not False
        if depth > _MOST_LEVELS_LOOKED or looked > MOST_SCHEMA_OBJECTS:
            return True  # not ruled out as far as it was looked at
        named = node.get("type")
        if isinstance(named, str):
            return named == kind
        if isinstance(named, list):
            return kind in named
        if "enum" in node or "const" in node:
            listed = [*_listed(node.get("enum")), *([node["const"]] if "const" in node else [])]
            return any(isinstance(value, _VALUES[kind]) for value in listed)
        reference = node.get("$ref")
        every = _listed(node.get("allOf"))
        if isinstance(reference, str):
            target = None
            if reference == "#" or reference.startswith("#/"):
                target = resolve_pointer(schema, unquote(reference[1:]))
            if target is None:
                # Not known (an anchor's name, read as a pointer, led back to the root).
                return False
            every = [*every, target]
        if not all(may(part, depth + 1) for part in every):
            return False
        unions = [_listed(node.get(keyword)) for keyword in ("anyOf", "oneOf") if keyword in node]
        return all(any(may(part, depth + 1) for part in union) for union in unions)

    return may(schema, 0)


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
