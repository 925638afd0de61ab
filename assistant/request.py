"""The request model: one validated, normalised `AssistantRequest` from raw bytes.

Everything a provider or the store will use is checked here, before any of
them is touched, so bad input costs nothing but a 4xx. Unknown fields are
ignored; known fields with the wrong type are refused, naming the field.

Deliberate choices (see README):
- `chat_history` accepts `{role, content}`, `{name: Human|AI, content}` and
  `{sender, text}` items; roles are normalised to `user` / `assistant`.
  Items whose text is empty after stripping are dropped, not refused.
- Booleans must be JSON booleans (`"false"` is a string, not false); `null`
  means "use the default" for every optional field.
- Tool turns (README "Tools and structured output"): an assistant item may carry `tool_calls`
  (then its text may be empty), and `{"role": "tool", "tool_call_id",
  "name", "content"}` items carry a tool's result. A result's `content` may
  be any JSON value (sent on as JSON text); a missing `name` is taken from
  the call with that id earlier in the history.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import RequestError
from .schema_bounds import MOST_SCHEMA_OBJECTS, long_part, schema_objects
from .schemas import check_schema
from .thinking import without_thinking
from .tools import (
    TOOL_NAME,
    TOOL_NAME_RULE,
    ToolCall,
    ToolChoice,
    ToolSpec,
    json_reading,
    tool_choice,
    tool_specs,
)
from .tracing import TRACE_ID_PATTERN

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 500

_ROLE_ALIASES = {
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "tool": "tool",
}


@dataclass(frozen=True)
class Turn:
    role: str  # "user" | "assistant" | "tool"
    content: str
    tool_calls: tuple[ToolCall, ...] = ()  # assistant turns: the calls it made
    tool_call_id: str | None = None  # tool turns: the call this is the result of
    tool_name: str | None = None  # tool turns: the tool that was called


@dataclass(frozen=True)
class CurrentUser:
    email: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class AssistantRequest:
    assistant_id: str
    user_input: str
    chat_history: tuple[Turn, ...] = ()
    save_to_history: bool = False
    user_message_already_saved: bool = False
    read_from_history: bool = False
    history_limit: int = DEFAULT_HISTORY_LIMIT
    thread_id: str | None = None
    trace_id: str | None = None
    instructions: str | None = None
    assistant_name: str | None = None
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice = "auto"
    response_schema: Mapping[str, Any] | None = None
    user: CurrentUser = CurrentUser()


def is_valid_id(value: str) -> bool:
    """Ids become Firestore document ids: no `/`, no dots, no reserved `__x__` names."""
    return bool(ID_PATTERN.fullmatch(value)) and not (
        value.startswith("__") and value.endswith("__")
    )


def check_assistant_id(assistant_id: str) -> str:
    if not is_valid_id(assistant_id):
        raise RequestError(
            # No quotes: the log leaves out what a message quotes (`RequestError.for_log`).
            "assistant id must be 1-128 characters of A-Z a-z 0-9 _ -, and not of the form __name__"
        )
    return assistant_id


def body_trace_id(body: Mapping[str, Any]) -> str | None:
    """The body's `trace_id` if it is a well-formed one, whatever else is wrong with the body."""
    value = body.get("trace_id")
    return value if isinstance(value, str) and TRACE_ID_PATTERN.fullmatch(value) else None


def check_media_type(content_type: str | None) -> None:
    """The 415 for a body that is neither JSON nor text/plain holding JSON: known from
    the head alone, so said before the body is read (a client that sent `Expect:
    100-continue` then uploads nothing)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in ("application/json", "text/plain"):
        raise RequestError(
            f"Content-Type must be application/json (or text/plain holding JSON), "
            f"got {repr(media_type) if media_type else 'none'}",  # quoted: kept out of the log
            415,
            "unsupported_media_type",
        )


def parse_body(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """Bytes (already within the size limit) to a JSON object, or the 415 / 400 saying why not.

    `text/plain` is taken as JSON too: it is what a preflight-free `fetch` or
    `sendBeacon` sends. Whatever the shape of the JSON, a bad body is a 400:
    nesting deeper than MAX_JSON_DEPTH, numbers longer than MAX_NUMBER_CHARS
    (Python would otherwise spend quadratic time on a huge integer, or give up
    with a ValueError), NaN / Infinity, and text that cannot be encoded (a
    lone UTF-16 surrogate such as "\\ud800", which no provider and no
    database would take), named by its field.
    """
    check_media_type(content_type)
    try:
        text = raw.decode("utf-8-sig")  # a leading BOM is tolerated, as JSON parsers do
    except UnicodeDecodeError as exc:
        raise RequestError(f"request body is not UTF-8: invalid byte at {exc.start}") from None
    try:
        body = json.loads(
            text, parse_int=_bounded_int, parse_float=_bounded_float, parse_constant=_no_constant
        )
    except json.JSONDecodeError as exc:
        raise RequestError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # the C parser recurses once per level, and says so in time
        raise RequestError(_TOO_DEEP) from None
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    try:
        _check_values(body)
    except RequestError as exc:  # a value of another field: the body's trace id still holds
        exc.trace_id = body_trace_id(body)
        raise
    return body


MAX_JSON_DEPTH = 64
MAX_NUMBER_CHARS = 40
MAX_JSON_VALUES = 50_000  # far above any real request; bounds the walk below
_TOO_DEEP = f"request body is nested more than {MAX_JSON_DEPTH} levels deep"


@dataclass(frozen=True)
class _Unusable:
    """A value the parser refused, left in its place: the walk after the parse names
    its field (`_check_values`)."""

    why: str


def _bounded_int(literal: str) -> int | _Unusable:
    if len(literal) > MAX_NUMBER_CHARS:
        return _Unusable(f"a number longer than {MAX_NUMBER_CHARS} characters")
    return int(literal)


def _bounded_float(literal: str) -> float | _Unusable:
    if len(literal) > MAX_NUMBER_CHARS:
        return _Unusable(f"a number longer than {MAX_NUMBER_CHARS} characters")
    value = float(literal)
    if value in (float("inf"), float("-inf")):
        return _Unusable("a number too large to represent")
    return value


def _no_constant(name: str) -> _Unusable:
    return _Unusable(f"{name}, which is not JSON")


def _check_values(body: dict[str, Any]) -> None:
    """Nesting within MAX_JSON_DEPTH, at most MAX_JSON_VALUES values, every key and
    string encodable as UTF-8.

    Iterative, so no depth can make it recurse; the message names the field.
    """
    pending: list[tuple[str, int, Any]] = [("", 0, body)]
    seen = 0
    while pending:
        path, depth, value = pending.pop()
        if isinstance(value, _Unusable):
            raise RequestError(f"{path} is {value.why}")
        if isinstance(value, str):
            if not value.isascii() and not _encodable(value):
                raise RequestError(
                    f"{path or 'a key'} contains text that cannot be encoded "
                    "(a lone UTF-16 surrogate)"
                )
        elif isinstance(value, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise RequestError(_TOO_DEEP)
            seen += len(value)
            if seen > MAX_JSON_VALUES:
                raise RequestError(f"request body has more than {MAX_JSON_VALUES} values")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str):
                    key_text = _in_a_path(key)
                    key_path = f"{path}.{key_text}" if path else key_text
                    pending.append((key_path, depth + 1, key))
                else:
                    key_path = f"{path}[{key}]"
                pending.append((key_path, depth + 1, item))


# Characters that show nothing and that str.strip() keeps (it strips whitespace only),
# beside the format characters (category Cf: zero-width space and joiners, direction
# marks, the byte order mark, tags...): Unicode's other default-ignorable ones (the
# combining grapheme joiner, the Hangul fillers, the Khmer inherent vowels, the
# Mongolian free variation selectors) and the braille blank. Input of nothing but
# these, variation selectors and whitespace is empty: a model would be asked nothing.
_BLANKS = frozenset("\u034f\u115f\u1160\u3164\uffa0\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800")


def shows_nothing(text: str) -> bool:
    """Whether `text` is blank to a reader: spaces, or characters that show nothing (a
    zero-width space, a variation selector...). One rule for what the user sent, what the
    history holds and what a provider is sent (a reviewer found three)."""
    stripped = text.strip()
    # Looked at closer only when it begins with one: most input does not, and the walk
    # stops at the first character that shows.
    return not stripped or (
        _invisible(stripped[0]) and all(char.isspace() or _invisible(char) for char in stripped)
    )


def _invisible(char: str) -> bool:
    return (
        char in _BLANKS
        or "\ufe00" <= char <= "\ufe0f"  # variation selectors
        # Tags, variation selectors and code points kept default-ignorable for later ones.
        or "\U000e0000" <= char <= "\U000e0fff"
        or "\ufff0" <= char <= "\ufff8"
        or char == "\u2065"
        or (unicodedata.category(char) == "Cf" and char not in _PRINTED_FORMAT_MARKS)
    )


# Format characters that print (Unicode's prepended concatenation marks: the Arabic number
# sign, the end of ayah ۝...): an answer of one shows something (a reviewer's).
_PRINTED_FORMAT_MARKS = frozenset(
    "\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2\U000110bd\U000110cd"
)


# A key a field's path names as it is; any other the client's own text, quoted.
_NAME_LIKE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _in_a_path(key: str) -> str:
    """`key` as a field's path writes it: as it is if it is a name, else quoted (the log
    then keeps the client's own text out: `RequestError.for_log`); encodable either way."""
    if len(key) <= 64:  # what a name can be; a longer key is never kept by the cache
        return _short_in_a_path(key)
    return repr(key)


@functools.lru_cache(maxsize=1024)  # the same few keys in every body ("role", "content")
def _short_in_a_path(key: str) -> str:
    # repr() writes a lone surrogate as its escape (it is not printable), once: the
    # escape made first and quoted after showed its backslash twice.
    return key if _NAME_LIKE.fullmatch(key) else repr(key)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_KIND_NAMES = {
    bool: "a boolean",
    int: "an integer",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _optional(body: Mapping[str, Any], name: str, kind: type, label: str | None = None) -> Any:
    """`body[name]` if present and of `kind`; None when absent or null."""
    value = body.get(name)
    if value is None:
        return None
    # bool is an int in Python; a JSON true is never a valid number here.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RequestError(f"{label or name} must be {_KIND_NAMES[kind]}")
    return value


def _instructions(config: Mapping[str, Any]) -> str | None:
    """The system prompt; one that shows nothing is none (Anthropic refuses a system of
    blanks, as it refuses such a turn, which the history drops)."""
    text = _optional(config, "initialInstructions", str, "emissaryConfig.initialInstructions")
    return None if text is None or shows_nothing(text) else text


def _checked_id(
    body: Mapping[str, Any], name: str, valid: Callable[[str], object], charset: str
) -> str | None:
    value: str | None = _optional(body, name, str)
    if value is not None and not valid(value):
        raise RequestError(f"{name} must be 1-128 characters of {charset}")
    return value


def _history(items: Any, max_messages: int, structured: bool) -> tuple[Turn, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise RequestError("chat_history must be a list")
    if len(items) > max_messages:
        raise RequestError(f"chat_history has {len(items)} items; at most {max_messages} allowed")
    turns: list[Turn] = []
    call_names: dict[str, str] = {}
    for index, item in enumerate(items):
        turn = _turn(item, f"chat_history[{index}]", call_names, structured)
        # A turn's id twice is sent as its first call (base.py, `_answered_once`): its
        # name is the one a result naming none answers; a later turn's call, the latest.
        call_names.update((call.id, call.name) for call in reversed(turn.tool_calls))
        if not shows_nothing(turn.content) or turn.tool_calls or turn.role == "tool":
            turns.append(turn)
    return tuple(turns)


def _bound_schemas(configs: Mapping[str, Any], response_schema: Any) -> None:
    """A 400 for schemas too large to check (MOST_SCHEMA_OBJECTS), counted before any is."""
    schemas = {  # a tool's name quoted: the log keeps the field, not the client's text
        f"emissaryConfig.toolConfigs[{name[:64]!r}].parameters": entry.get("parameters")
        for name, entry in configs.items()
        if isinstance(entry, dict)
    }
    schemas["emissaryConfig.responseSchema"] = response_schema
    count = sum(map(schema_objects, schemas.values()))
    if count > MOST_SCHEMA_OBJECTS:
        raise RequestError(
            f"emissaryConfig: toolConfigs' parameters and responseSchema hold {count} schema "
            f"objects in all; at most {MOST_SCHEMA_OBJECTS}"
        )
    for field, schema in schemas.items():
        if (part := long_part(schema)) is not None:
            raise RequestError(f"{field} holds {part}")


def _first_given(item: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of `keys` that is there and not null (null is "not given",
    as everywhere in the body: a union type may send the field it does not use as null)."""
    return next((item[key] for key in keys if item.get(key) is not None), None)


def _turn(item: Any, label: str, call_names: Mapping[str, str], structured: bool) -> Turn:
    if not isinstance(item, dict):
        raise RequestError(f"{label} must be an object")
    who = _first_given(item, ("role", "name", "sender"))
    if not isinstance(who, str):
        raise RequestError(f"{label} needs a role (or name / sender) string")
    role = _ROLE_ALIASES.get(who.strip().lower())
    if role is None:
        raise RequestError(f"{label} role {who[:40]!r} is not user, assistant or tool")
    if role == "tool":
        return _tool_result(item, label, call_names)
    text = _first_given(item, ("content", "text"))
    calls = _tool_calls(item.get("tool_calls"), label) if role == "assistant" else ()
    if text is None and calls:
        text = ""
    if not isinstance(text, str):
        raise RequestError(f"{label} needs a content (or text) string")
    if role == "assistant":
        # A frontend that sends back the final `answer` sends its thinking too: the model
        # gets what a history read from the store gives, the visible text (with a response
        # schema, a JSON answer's read as the store keeps it: a tag in its strings is text).
        # Not raw: it may be the text the frontend showed, where a close tag is text. A JSON
        # answer after a lone `</think>` is the reply as the model wrote it (an R1's): read
        # so (read not raw, a tag in its strings was taken for one).
        read = json_reading(text, raw=False) or json_reading(text) if structured else None
        text = without_thinking(text, raw=False) if read is None else read[0]
    return Turn(role, text, tool_calls=calls)


def _tool_calls(items: Any, label: str) -> tuple[ToolCall, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise RequestError(f"{label}.tool_calls must be a list")
    calls = []
    for index, item in enumerate(items):
        where = f"{label}.tool_calls[{index}]"
        if not isinstance(item, dict):
            raise RequestError(f"{where} must be an object")
        call_id = _optional(item, "id", str, f"{where}.id")
        name = _optional(item, "name", str, f"{where}.name")
        if not call_id:
            raise RequestError(f"{where}.id is required")
        if name is None or not TOOL_NAME.fullmatch(name):
            raise RequestError(f"{where}.name must be {TOOL_NAME_RULE}")
        args = _optional(item, "args", dict, f"{where}.args") or {}
        signature = _optional(item, "signature", str, f"{where}.signature")
        calls.append(ToolCall(call_id, name, args, signature))
    return tuple(calls)


def _tool_result(item: Mapping[str, Any], label: str, call_names: Mapping[str, str]) -> Turn:
    call_id = _optional(item, "tool_call_id", str, f"{label}.tool_call_id")
    if not call_id:
        raise RequestError(f"{label}.tool_call_id is required for a tool turn")
    given = _optional(item, "name", str, f"{label}.name")
    # The call's name, when there is a call with that id: Gemini (which has no ids
    # before 3) and Ollama match a result to its call by name, and a result named
    # otherwise reached the model as another tool's (a frontend's two names swapped).
    name = call_names.get(call_id) or given
    if name is None:
        raise RequestError(f"{label}.name is required (no earlier call has id {call_id[:64]!r})")
    if not TOOL_NAME.fullmatch(name):  # a provider would refuse the request for it
        raise RequestError(f"{label}.name must be {TOOL_NAME_RULE}")
    content = _first_given(item, ("content", "text"))
    if not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)  # any JSON result, sent on as JSON
    return Turn("tool", content, tool_call_id=call_id, tool_name=name)


def _current_user(config: Mapping[str, Any]) -> CurrentUser:
    user = _optional(config, "currentUser", dict, "emissaryConfig.currentUser") or {}
    return CurrentUser(
        email=_optional(user, "email", str, "emissaryConfig.currentUser.email"),
        display_name=_optional(user, "displayName", str, "emissaryConfig.currentUser.displayName"),
    )


# The longest an address can be (RFC 3696's 64 + @ + 255); a user id is an indexed value
# in Firestore, which holds no more than 1,500 bytes of one.
MAX_EMAIL_CHARS = 320
# A display name is saved on both messages of an exchange: a long one (the body's bound
# is a MiB) could take the reply's document past what Firestore holds.
MAX_NAME_CHARS = 1_000


def body_user_id(user: CurrentUser) -> str | None:
    """The user `currentUser` names where the body says who the user is (`iam`, `none`):
    its email, without the blanks around it, its case kept (lower-casing it would make
    messages saved before under another case another user's, and Python's lower()
    would make some different addresses one: U+212A KELVIN SIGN is a k); none for an
    email that shows nothing (a reviewer found "" taken as one user, whose history
    every caller without an email read). In `firebase` mode the field is ignored, and
    so is all this."""
    email = (user.email or "").strip()
    if shows_nothing(email):
        return None
    if len(email) > MAX_EMAIL_CHARS:
        raise RequestError(
            f"emissaryConfig.currentUser.email is longer than {MAX_EMAIL_CHARS} characters"
        )
    return email


def body_user_name(user: CurrentUser) -> str | None:
    """The name `currentUser` gives, where the body says who the user is (as above)."""
    if user.display_name is not None and len(user.display_name) > MAX_NAME_CHARS:
        raise RequestError(
            f"emissaryConfig.currentUser.displayName is longer than {MAX_NAME_CHARS} characters"
        )
    return user.display_name


def build_request(
    assistant_id: str,
    body: Mapping[str, Any],
    *,
    max_input_chars: int,
    max_history_messages: int,
) -> AssistantRequest:
    """A parsed JSON body to a validated request, or a RequestError naming the field.

    `assistant_id` comes already checked (`check_assistant_id`): the route
    refuses a bad id before it reads the body.
    """
    user_input = body.get("user_input")
    if user_input is None:
        raise RequestError("user_input is required")
    if not isinstance(user_input, str):
        raise RequestError("user_input must be a string")
    if shows_nothing(user_input):
        raise RequestError("user_input must not be empty")
    if len(user_input) > max_input_chars:
        raise RequestError(f"user_input is longer than {max_input_chars} characters")

    config = _optional(body, "emissaryConfig", dict, "emissaryConfig") or {}
    # Both are checked: the emissary's flag wins, and a wrong type in either is a 400.
    top_level_save = _optional(body, "save_to_history", bool)
    save = _optional(config, "save_to_history", bool, "emissaryConfig.save_to_history")
    if save is None:
        save = top_level_save
    limit = _optional(body, "history_limit", int)
    if limit is not None and not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise RequestError(f"history_limit must be between 1 and {MAX_HISTORY_LIMIT}")
    tools = _optional(config, "tools", list, "emissaryConfig.tools") or []
    if not all(isinstance(tool, str) for tool in tools):
        raise RequestError("emissaryConfig.tools must be a list of strings")
    configs = _optional(config, "toolConfigs", dict, "emissaryConfig.toolConfigs") or {}
    _bound_schemas(configs, config.get("responseSchema"))
    offered = tool_specs(tools, configs)
    schema = config.get("responseSchema")
    if schema is not None:
        schema = check_schema(schema, "emissaryConfig.responseSchema")
    # Not used (the path names the assistant), but one of the contract's fields: checked.
    _optional(config, "assistantId", str, "emissaryConfig.assistantId")

    return AssistantRequest(
        assistant_id=assistant_id,
        user_input=user_input,
        chat_history=_history(body.get("chat_history"), max_history_messages, schema is not None),
        save_to_history=bool(save),
        user_message_already_saved=bool(_optional(body, "user_message_already_saved", bool)),
        read_from_history=bool(_optional(body, "read_from_history", bool)),
        history_limit=limit or DEFAULT_HISTORY_LIMIT,
        thread_id=_checked_id(body, "thread_id", is_valid_id, "A-Z a-z 0-9 _ -, not __name__"),
        trace_id=_checked_id(body, "trace_id", TRACE_ID_PATTERN.fullmatch, "A-Z a-z 0-9 _ . : -"),
        instructions=_instructions(config),
        assistant_name=_optional(config, "name", str, "emissaryConfig.name"),
        tools=offered,
        tool_choice=tool_choice(config.get("toolChoice"), offered),
        response_schema=schema,
        user=_current_user(config),
    )
