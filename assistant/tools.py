"""Tools and structured output, apart from any provider's wire format (README: "Tools and
structured output").

The service offers the frontend's tools to the model and reports the calls
the model makes; it never runs a tool. Here are the shapes every provider
module maps to its own: a declared tool (`ToolSpec`), the tool choice, a
call (`ToolCall`), and the reply's JSON against the response schema when it
ends. The schemas themselves are checked and applied by schemas.py.

Deliberate choices (see README):
- Every declaration in `toolConfigs` is checked, offered or not: a bad one is
  a bug in the frontend whichever tools it offers this time.
- `parameters` must be a JSON Schema (checked against its own draft's
  metaschema, 2020-12 when `$schema` names none) describing an object, as
  every provider requires; a missing `parameters` means "no arguments".
- Tool names are 1-64 characters of A-Z a-z 0-9 _ -, the first a letter or _:
  what all four accept (Gemini's function names may not start with a digit or -).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import RequestError
from .schemas import check_schema, problem, without_top_combinators
from .thinking import split_outside_json_strings

TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
TOOL_NAME_RULE = "1-64 characters of A-Z a-z 0-9 _ -, the first a letter or _"
_NOT_IN_TOOL_NAMES = re.compile(r"[^A-Za-z0-9_-]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_IN_JSON = re.compile("\\\\u[dD][89a-fA-F]|[\ud800-\udfff]")  # escaped or not
NO_ARGUMENTS: Mapping[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolSpec:
    """One tool offered to the model."""

    name: str
    description: str
    parameters: Mapping[str, Any]  # a JSON Schema of the arguments object


@dataclass(frozen=True)
class NamedTool:
    """`toolChoice: {"name": ...}`: the model must call this tool."""

    name: str


ToolChoice = Literal["auto", "none", "required"] | NamedTool


@dataclass(frozen=True)
class ToolCall:
    """A call the model made (or, in chat_history, made earlier).

    `args` is None when the model's arguments were not a JSON object; then
    `args_error` says why. `signature` is an opaque token some providers
    (Gemini's `thoughtSignature`) need back with the call in the next turn.
    """

    id: str
    name: str
    args: Mapping[str, Any] | None
    signature: str | None = None
    args_error: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not TOOL_NAME.fullmatch(self.name):
            # Made up by the model (every name offered to it is valid): as a name every
            # provider takes, so that the call can be sent back with its result.
            object.__setattr__(self, "name", _usable_tool_name(self.name))

    def as_dict(self) -> dict[str, Any]:
        """The call as `metadata.tools_to_use` and the saved `toolsToUse` hold it."""
        entry: dict[str, Any] = {"id": self.id, "name": self.name, "args": self.args}
        if self.signature is not None:
            entry["signature"] = self.signature
        if self.args_error is not None:
            entry["args_error"] = self.args_error
        return entry

    @property
    def arguments_json(self) -> str:
        """The arguments as a JSON string, as OpenAI sends them back."""
        return json.dumps(self.args if self.args is not None else {}, ensure_ascii=False)


def _usable_tool_name(name: Any) -> str:
    """`made_up_`, then the name with other characters than A-Z a-z 0-9 _ - as `_`, 64 at
    most: never the name of a tool that was offered (a made-up "get weather" is not a
    call of "get_weather"), unless the frontend names one `made_up_...`."""
    text = name if isinstance(name, str) else ""
    return ("made_up_" + _NOT_IN_TOOL_NAMES.sub("_", text))[:64]


def model_json(text: str) -> Any:
    """JSON a model wrote, strictly: ValueError for what is not JSON, including
    what Python's parser takes and no browser does (NaN, Infinity, and a number
    too large for a double, which Python reads as infinity: 1e400), and numbers
    past Python's digit limit (a ValueError that is no JSONDecodeError).
    RecursionError for nesting too deep to parse. A lone surrogate becomes U+FFFD
    (`without_lone_surrogates`)."""
    value = json.loads(
        text, parse_constant=_not_json, parse_float=_finite_float, parse_int=_finite_int
    )
    return without_lone_surrogates(value, text)


_MAX_DOUBLE = int(sys.float_info.max)


def _finite_int(literal: str) -> int:
    number = int(literal)  # past Python's digit limit: a ValueError of its own
    if abs(number) > _MAX_DOUBLE:  # a browser reads it as Infinity, as it reads 1e400
        raise ValueError(f"number out of range: {literal[:40]}")
    return number


def _finite_float(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):  # a frame would show it as null, Firestore as infinity
        raise ValueError(f"number out of range: {literal[:40]}")
    return number


def without_lone_surrogates(value: Any, text: str | None = None) -> Any:
    """`value` (parsed JSON) with each lone UTF-16 surrogate in its strings and keys (a
    `\\ud800` escape with no partner, which orjson refuses and json takes) replaced by
    U+FFFD, as a browser's decoder would: no frame, log line or Firestore document can
    hold one. Given the `text` it was parsed from, and no surrogate escape in it, it is
    returned as it is, unwalked (the walk recurses: JSON nested a few hundred deep
    would fail in it)."""
    if text is not None and not _SURROGATE_IN_JSON.search(text):
        return value
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {
            without_lone_surrogates(key): without_lone_surrogates(item)
            for key, item in value.items()
        }
    return value


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def parse_arguments(text: str) -> tuple[Mapping[str, Any] | None, str | None]:
    """A call's streamed argument text: (args, None), or (None, why not) when it is not
    a JSON object. Empty text is no arguments (`{}`), as models send for a
    tool without parameters."""
    if not text.strip():
        return {}, None
    try:
        value = model_json(text)
    except (ValueError, RecursionError) as exc:
        return None, f"arguments are not valid JSON: {exc}"[:200]
    return _object_arguments(value)


def arguments_value(value: Any) -> tuple[Mapping[str, Any] | None, str | None]:
    """Arguments a provider sends parsed (Gemini, Ollama): an object as it is, absent as
    none, text parsed like streamed argument text, anything else an `args_error`."""
    if value is None:
        return {}, None
    if isinstance(value, str):
        return parse_arguments(value)
    return _object_arguments(value)


# Arguments nested deeper are an `args_error`. orjson reads ~1,000 levels on the I/O
# loop; the final frame's encoder, on a request thread, ran out of stack on them (a
# Gemini call 990 deep crashed a finished reply). A request nests at most 64 levels
# (`request.MAX_JSON_DEPTH`), and a call's args sit 5 down in one (chat_history, its
# turn, tool_calls, the call): deeper arguments could not come back in a history.
MOST_ARGUMENT_LEVELS = 64 - 5


def _object_arguments(value: Any) -> tuple[Mapping[str, Any] | None, str | None]:
    if not isinstance(value, dict):
        return None, f"arguments are a JSON {_json_type(value)}, not an object"
    if _nested_past(value, MOST_ARGUMENT_LEVELS):
        return None, f"arguments are nested more than {MOST_ARGUMENT_LEVELS} levels deep"
    return value, None


def _nested_past(value: Any, levels: int) -> bool:
    """Whether `value` holds objects or arrays more than `levels` deep (iteratively)."""
    pending = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > levels:
            return True
        inside = node.values() if isinstance(node, dict) else node
        pending.extend((item, depth + 1) for item in inside if isinstance(item, dict | list))
    return False


def _json_type(value: Any) -> str:
    """What JSON calls a parsed value's type (`args_error` is shown to the frontend)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return "string" if isinstance(value, str) else "array"


def tool_specs(names: list[str], configs: Mapping[str, Any]) -> tuple[ToolSpec, ...]:
    """The tools offered: each name in `names` that has a declaration, in order, once.

    An entry with neither `description` nor `parameters` (or null) declares no
    function: a VAC frontend's `toolConfigs` may hold a tool's own settings
    (`{"datastore_id": ...}`), and such a tool was offered as a function of no
    arguments, for the model to call.
    """
    declared = {
        name: _declaration(name, config)
        for name, config in configs.items()
        if config is not None
        and not (
            isinstance(config, dict)
            and config.get("description") is None
            and config.get("parameters") is None
        )
    }
    offered: dict[str, ToolSpec] = {}
    for name in names:
        if name in declared and name not in offered:
            offered[name] = declared[name]
    return tuple(offered.values())


def _declaration(name: str, config: Any) -> ToolSpec:
    if not TOOL_NAME.fullmatch(name):
        # Quoted: the log keeps the field, not the client's text (`RequestError.for_log`).
        raise RequestError(
            f"emissaryConfig.toolConfigs names {name[:64]!r}: a tool name must be " + TOOL_NAME_RULE
        )
    field = f"emissaryConfig.toolConfigs.{name}"
    if not isinstance(config, dict):
        raise RequestError(f"{field} must be an object with description and parameters")
    description = config.get("description")
    if description is not None and not isinstance(description, str):
        raise RequestError(f"{field}.description must be a string")
    parameters = config.get("parameters")
    if parameters is None:
        return ToolSpec(name, description or "", NO_ARGUMENTS)
    check_schema(parameters, f"{field}.parameters")
    if parameters.get("type") != "object":
        raise RequestError(f'{field}.parameters must describe an object ("type": "object")')
    return ToolSpec(name, description or "", parameters)


def with_nothing_refused_at_the_top(tool: ToolSpec) -> ToolSpec:
    """`tool` as Anthropic and OpenAI take it (schemas.py `without_top_combinators`):
    what its parameters may not hold at their top is merged in or, if not, told to the
    model in the tool's description, as the JSON Schema the arguments must also match.
    The frontend's declaration is unchanged for every other provider."""
    parameters, kept = without_top_combinators(tool.parameters)
    if parameters is tool.parameters:
        return tool
    description = tool.description
    if kept:
        rule = json.dumps(kept, separators=(",", ":"), ensure_ascii=False)
        note = f"The arguments must also match this JSON Schema: {rule}"
        description = f"{description}\n\n{note}" if description else note
    return ToolSpec(tool.name, description, parameters)


def tool_choice(value: Any, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    """`emissaryConfig.toolChoice`, checked against the tools offered."""
    field = "emissaryConfig.toolChoice"
    if value is None or value == "auto":
        return "auto"
    if value == "none":
        return "none"
    if value == "required":
        if not tools:
            raise RequestError(f'{field} is "required" but no tool is declared')
        return "required"
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        if value["name"] not in {tool.name for tool in tools}:
            raise RequestError(
                f"{field} names {value['name'][:64]!r}, which is not an offered tool "
                "(one in emissaryConfig.tools with a declaration in toolConfigs)"
            )
        return NamedTool(value["name"])
    raise RequestError(f'{field} must be "auto", "none", "required" or {{"name": "<tool>"}}')


def structured_output(text: str, schema: Mapping[str, Any]) -> tuple[Any, str | None]:
    """The reply's visible text as JSON valid against `schema`: (value, None), or
    (None, one line saying why not)."""
    candidate = without_fence(text.strip())
    if not candidate:
        return None, "the reply has no JSON: it is empty"
    try:
        value = model_json(candidate)
    except (ValueError, RecursionError) as exc:
        return None, f"the reply is not valid JSON: {exc}"[:300]
    if (why := problem(value, schema)) is not None:
        return None, why
    return value, None


def json_reading(
    answer: str, plain: tuple[str, str] | None = None, raw: bool = True
) -> tuple[str, str] | None:
    """(content, thinking) of a whole reply, thinking tags and all, read as JSON: a tag
    inside one of its strings is its text (`split_outside_json_strings`). None when that
    content is no JSON (a fence allowed): prose is read as ever, a tag in quotes there
    being thinking; and when it is `plain`, the reading as ever (nothing to parse)."""
    if "<think" not in answer and "</think" not in answer:  # a reply begun inside has one
        return None
    content, thinking = split_outside_json_strings(answer, raw)
    if (content, thinking) == plain:
        return None
    try:
        model_json(without_fence(content.strip()))
    except (ValueError, RecursionError):
        return None
    return content, thinking


def without_fence(text: str) -> str:
    """Models asked for JSON sometimes wrap it in a ```json fence anyway (the language
    named in any case, or not at all; on lines of its own or on the JSON's one line).
    Read without a regular expression: one backtracked over a reply's blanks, the GIL
    held (2,000 spaces after the fence took 7 s)."""
    if len(text) < 6 or not (text.startswith("```") and text.endswith("```")):
        return text
    inner = text[3:-3]
    if inner[:4].lower() == "json":
        inner = inner[4:]
    return inner.strip()
