"""A response schema narrowed to what Anthropic's structured outputs accept.

Anthropic compiles the schema into a grammar, and refuses (400) keywords the
grammar cannot hold: numeric bounds, string lengths, most array and object
counts ("For 'integer' type, property 'minimum' is not supported"), and an
object that does not say `additionalProperties: false`. As Anthropic's own
SDK does, those bounds are moved into the `description` (the model still
reads them) and every object is closed. Nothing is lost: the reply is
checked against the frontend's full schema when it ends (tools.py).
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
        elif key in ("properties", "$defs", "definitions", "patternProperties"):
            kept[key] = {name: _narrowed(sub) for name, sub in value.items()}
        else:
            kept[key] = _narrowed(value)
    if kept.get("type") == "object" or "properties" in kept:
        kept["additionalProperties"] = False
    if moved:
        bounds = ", ".join(f"{key}: {json.dumps(value)}" for key, value in moved.items())
        description = kept.get("description")
        kept["description"] = f"{description}\n\n{{{bounds}}}" if description else f"{{{bounds}}}"
    return kept
