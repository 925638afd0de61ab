"""A response schema narrowed to what Anthropic's structured outputs accept.

Anthropic compiles the schema into a grammar, and refuses (400) keywords the
grammar cannot hold: numeric bounds, string lengths, most array and object
counts ("For 'integer' type, property 'minimum' is not supported"), and an
object that does not say `additionalProperties: false`. As Anthropic's own
SDK does, those bounds are moved into the `description` (the model still
reads them) and every object is closed. Nothing is lost: the reply is
checked against the frontend's full schema when it ends (tools.py).

Two shapes cannot be closed without changing what they mean, and are not
sent at all (`unheld`; the reply is still checked, and
`structured_output_error` says why): an object whose keys the schema does
not name (a map: `additionalProperties` a schema or true, `patternProperties`,
or an object with no `properties`), which closed could only be `{}`; and
`allOf` over objects, each of which closed would refuse the others' keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

UNSUPPORTED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "multipleOf",
        "minLength",
        "maxLength",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
    }
)

_LITERALS = frozenset({"enum", "const", "default", "examples", "required"})
_NAMED = ("properties", "$defs", "definitions", "patternProperties")  # name -> schema maps


def output_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` with the bounds Anthropic refuses moved into descriptions, objects closed."""
    narrowed = _narrowed(schema)
    assert isinstance(narrowed, dict)
    return narrowed


def _narrowed(node: Any) -> Any:
    if isinstance(node, list):
        return [_narrowed(item) for item in node]
    if not isinstance(node, Mapping):
        return node
    kept: dict[str, Any] = {}
    moved: dict[str, Any] = {}
    for key, value in node.items():
        if key in UNSUPPORTED or (key == "minItems" and value not in (0, 1)):
            moved[key] = value
        elif key in _LITERALS:
            kept[key] = value  # values, not schemas
        elif key in _NAMED:
            kept[key] = {name: _narrowed(sub) for name, sub in value.items()}
        else:
            kept[key] = _narrowed(value)
    if _is_object(kept):
        kept["additionalProperties"] = False
    if moved:
        bounds = ", ".join(f"{key}: {json.dumps(value)}" for key, value in moved.items())
        description = kept.get("description")
        kept["description"] = f"{description}\n\n{{{bounds}}}" if description else f"{{{bounds}}}"
    return kept


def unheld(node: Any) -> str | None:
    """What in `node` a closed schema cannot hold as the frontend meant it (None: nothing)."""
    if isinstance(node, list):
        return next((why for item in node if (why := unheld(item)) is not None), None)
    if not isinstance(node, Mapping):
        return None
    if _is_object(node):
        extra = node.get("additionalProperties", None if "properties" in node else True)
        if "patternProperties" in node or extra not in (None, False):
            return "an object whose keys it does not name"
    branches = node.get("allOf")
    if isinstance(branches, list) and any(
        isinstance(branch, Mapping) and _is_object(branch) for branch in branches
    ):
        return "allOf over objects"
    for key, value in node.items():
        if key in _LITERALS:
            continue
        inner = list(value.values()) if key in _NAMED and isinstance(value, Mapping) else value
        why = unheld(inner)
        if why is not None:
            return why
    return None


def _is_object(node: Mapping[str, Any]) -> bool:
    kind = node.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or "properties" in node
