"""OpenAI Chat Completions, streamed natively (`POST {base}/chat/completions`).

`OPENAI_BASE_URL` includes the version path, as in OpenAI's own SDK
(`https://api.openai.com/v1`), so any compatible server (vLLM, LiteLLM,
Ollama's `/v1`, a local gateway) is one URL away. Events are bare `data:`
JSON chunks ending with `data: [DONE]`; a stream without `[DONE]` is
incomplete. With `stream_options.include_usage`, the usage arrives in a chunk
whose `choices` is empty. Reasoning text appears only on compatible servers,
as `delta.reasoning_content` or `delta.reasoning`, possibly in a chunk with no
content. A refusal (`delta.refusal`, with a response schema) is shown as text:
it is what the model said; its stop reason is `content_filter`, as an
Anthropic refusal's. `{"error": ...}` inside the 200 stream is a failure.

Tools (README "Tools and structured output"):
- Offered as `tools: [{"type": "function", "function": {name, description,
  parameters}}]`. `tool_choice` is sent only when it is not "auto" (OpenAI's
  default when tools are offered, and some compatible servers refuse an
  explicit "auto"): "none", "required", or `{"type": "function",
  "function": {"name"}}`; with no tools offered it is not sent at all (OpenAI
  refuses a `tool_choice` without `tools`). Tools are not `strict`: strict
  tools do not hold with parallel calls, and the frontend's schemas rarely
  meet strict mode's rules.
- History: an assistant turn with calls is one message, `content` its text
  or null and `tool_calls: [{id, type: "function", function: {name,
  arguments: <JSON text>}}]`; each result is its own `{"role": "tool",
  "tool_call_id", "content"}` message, and a user text after results its
  own user message, in the order they came. Reasoning that came as
  `reasoning_content` before a turn's calls goes back with them, as that
  turn's `reasoning_content`, carried in the first call's `signature`
  (`REASONING_PREFIX`): DeepSeek and Kimi refuse (400) a later request whose
  assistant turn with calls lacks it. Reasoning that came as `reasoning`
  (Ollama, Groq) is not sent back: Groq refuses the field; OpenRouter's is, which
  streams DeepSeek's so and passes `reasoning_content` on to it. At
  DeepSeek's and Moonshot's own hosts every assistant message has it, "" where
  it is not known (`_messages`).
- DeepSeek's own API takes no `json_schema` and refuses a forced call while it
  thinks: a schema goes as JSON mode and words, a forced call with thinking
  turned off (`_body`).
- Streamed calls arrive as `delta.tool_calls[]` fragments keyed by `index`:
  the first fragment of an index has `id`, `type` and `function.name`, later
  ones only `function.arguments` pieces, joined in order; fragments of
  several indexes may interleave, text may come first. A call is whole only
  when its choice has a `finish_reason` (or, failing that, at `[DONE]`):
  the calls are yielded then, in index order, and the stop reason is
  `tool_use` (also where a server said "stop", or nothing). Lenient for
  compatible servers:
  arguments whole in one fragment (or as an object), an `id` or `name` repeated
  on every fragment (a name sent again grown, as llama.cpp's parser reads more
  of it, taken; one sent in pieces, joined), no `index` (a new `id` starts the next call), the same
  `index` reused with a new `id` (Ollama's parallel calls), no `id` at all
  (one is made up).
- Response schema: `response_format: {"type": "json_schema", "json_schema":
  {name, schema, strict}}`. A pattern OpenAI's regex engine does not hold
  goes into the description, here and in tools (`_held`). Objects that say
  nothing of other properties are closed (`_closed`), and `strict: true` is
  sent when the schema then meets strict mode's rules (`_strict_ok`); OpenAI
  refuses a strict schema that does not, so any other schema goes as it was,
  without `strict`, and the model is guided, not held, by it (the reply is
  validated at the end).
  OpenAI takes tools and a response schema in one request.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import json
import re
import string
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..config import ProviderSettings
from ..schema_bounds import UNHELD_IN_PATTERNS
from ..schema_kinds import may_be
from ..schemas import rebuilt
from ..tools import (
    NamedTool,
    ToolCall,
    ToolChoice,
    ToolSpec,
    parse_arguments,
    with_nothing_refused_at_the_top,
    without_lone_surrogates,
)
from .base import (
    CALL_BEGAN,
    WORKING,
    Event,
    HttpProvider,
    Message,
    Prompt,
    ProviderError,
    StopReason,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolResult,
    Usage,
    changed_call_id,
    conversation,
    keeps_call_id,
    normalised_stop_reason,
)
from .error_text import error_detail
from .sse_decoder import ServerSentEvent
from .sse_events import SseReader, json_object, require_event_stream, rest_of

_STOP_REASONS: dict[str, StopReason] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "content_filter",
    "model_length": "max_tokens",  # Mistral's: the context window reached
}
# Finish reasons that say the server cut the reply short (DeepSeek's, when it runs out of
# resources mid-reply; vLLM's and SGLang's when the engine aborted or failed the request):
# an incomplete reply, not one that ended.
_CUT_SHORT = frozenset({"insufficient_system_resource", "abort", "error"})

# `json_schema.name`: "a-z, A-Z, 0-9, or underscores and dashes, at most 64".
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Keywords strict mode refuses (OpenAI's Structured Outputs guide, "Supported
# schemas"), and those it leaves out of its supported list: a schema with any of
# them is sent without `strict`.
_NOT_STRICT = frozenset(
    {
        "allOf", "oneOf", "not", "if", "then", "else",
        "dependentRequired", "dependentSchemas", "dependencies",
        "patternProperties", "unevaluatedProperties", "propertyNames",
        "minProperties", "maxProperties", "minLength", "maxLength",
        "prefixItems", "unevaluatedItems", "contains", "minContains", "maxContains",
        "uniqueItems", "additionalItems", "default",
    }
)  # fmt: skip
# The string formats strict mode supports; a schema with another is sent without `strict`.
_STRICT_FORMATS = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)


def _reasoning_effort(budget: int) -> str:
    """OpenAI takes an effort level, not a token budget: the nearest level."""
    if budget <= 2048:
        return "low"
    return "medium" if budget <= 8192 else "high"


def length_field(base_url: str, model: str) -> str:
    """The field that caps a reply's length. OpenAI's reasoning models refuse
    `max_tokens` and want `max_completion_tokens`, which OpenAI's own API takes for every
    model; many compatible servers know only `max_tokens` and drop the other unread
    (Ollama's `/v1`: a reply with no cap at all). So `max_completion_tokens` to OpenAI's
    hosts and to names of its reasoning models (a gateway in front of OpenAI), and to
    Moonshot's, whose Kimi K2.6 on no longer honour `max_tokens`, else `max_tokens`."""
    url = httpx.URL(base_url)
    host = (url.host or "").lower().rstrip(".")
    # OpenAI's (regional ones too: eu.api.openai.com) and Azure OpenAI's, whichever of
    # Azure's hosts serves it (its path says: /openai/...), where a model's name is a
    # deployment's, any name at all.
    azure_openai = host.endswith(".azure.com") and "/openai" in url.path.lower()
    if host.endswith(".openai.com") or azure_openai or _at_moonshot(host):
        return "max_completion_tokens"
    return "max_completion_tokens" if reasons(model) else "max_tokens"


def reasons(model: str) -> bool:
    """Whether `model` names one of OpenAI's reasoning models (told apart by name alone:
    o1, o3-mini, o4-mini, gpt-5, gpt-5.1-codex..., after a gateway's `openai/` prefix or
    a fine-tune's `ft:`)."""
    return _REASONING_MODEL.search(model) is not None


_REASONING_MODEL = re.compile(
    r"(?:^|[/:])(?:o[1-9]|gpt-(?:[5-9]|[1-9]\d))(?:$|[-.:])", re.IGNORECASE
)


@dataclass(frozen=True)
class _Server:
    """What the server behind OPENAI_BASE_URL needs beyond OpenAI's API, told by its host
    (a model behind a gateway is not told apart)."""

    # DeepSeek's and Moonshot's (Kimi's): they refuse a request with tools whose tool
    # loop's messages lack their reasoning_content (`_messages`).
    reasoning_back: bool = False
    # The same two think unless told not to, and refuse a forced call while they do (400
    # "Thinking mode does not support this tool_choice"): at DeepSeek's the call asked for
    # goes with thinking disabled, as Anthropic's does; at Moonshot's it is asked with auto
    # (Kimi K2.x takes no `required` at all, K2.7 Code and K3 cannot stop thinking).
    thinks_unasked: bool = False
    only_thinks: bool = False
    # The field that caps a reply's length (`length_field`).
    length_field: str = "max_tokens"
    # DeepSeek's takes no json_schema (400 "This response_format type is unavailable
    # now"): JSON mode, the schema asked for in the system prompt.
    json_mode_only: bool = False
    # Mistral's refuses a field it does not know (422 extra_forbidden), stream_options
    # among them (its last chunk has the usage unasked), and a call id other than 9
    # letters and digits (400): another provider's are changed to such.
    mistral: bool = False
    # OpenRouter streams DeepSeek's reasoning as `reasoning`, and passes what comes back
    # as `reasoning_content` on to it: kept from that field too there.
    keeps_reasoning_too: bool = False
    # Groq's and Mistral's refuse a `reasoning_content` they do not know: none sent back
    # there, not even one a call carries from another server (a base URL changed).
    takes_reasoning: bool = True
    # Moonshot's Kimi K2.5 and later refuse any temperature but their own (400 "only 1 is
    # allowed for this model"): none is sent there.
    takes_temperature: bool = True
    # The effort a thinking budget goes as (None: none is sent): the budget's level, but
    # Groq's models other than gpt-oss take "none" or "default" alone, Mistral's small and
    # medium "high" or "none"; most of xAI's refuse one (a 400); Kimi K3 takes no medium.
    effort: str | None = "low"
    # Groq's refuses a response format beside tools (400 "json mode cannot be combined
    # with tool/function calling"): there the tools go, the schema does not.
    schema_with_tools: bool = True

    @classmethod
    def at(cls, base_url: str, model: str, budget: int) -> _Server:
        host = (httpx.URL(base_url).host or "").lower().rstrip(".")  # "api.deepseek.com." too
        deepseek = _at(host, "deepseek.com")
        moonshot = _at_moonshot(host)
        mistral = _at(host, "mistral.ai")
        groq = _at(host, "groq.com")
        level = _reasoning_effort(budget)
        effort: str | None = level
        if mistral:
            effort = "high"
        elif groq and "gpt-oss" not in model.lower():
            effort = "default"
        elif _at(host, "x.ai"):
            effort = _xai_effort(model, level)
        elif moonshot and level == "medium":
            effort = "high"  # Kimi K3 takes low, high or max
        return cls(
            reasoning_back=deepseek or moonshot,
            thinks_unasked=deepseek or moonshot,
            only_thinks=moonshot,
            length_field=length_field(base_url, model),
            json_mode_only=deepseek,
            mistral=mistral,
            keeps_reasoning_too=_at(host, "openrouter.ai"),
            takes_reasoning=not (mistral or groq),
            takes_temperature=not moonshot,
            effort=effort,
            schema_with_tools=not groq,
        )


class OpenAIProvider(HttpProvider):
    name = "openai"

    def __init__(self, settings: ProviderSettings, api_key: str) -> None:
        super().__init__(settings, api_key)
        self.schema_with_tools = self._server.schema_with_tools

    @functools.cached_property
    def _server(self) -> _Server:
        settings = self.settings
        return _Server.at(settings.base_url, settings.model, settings.thinking_budget)

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        server = self._server
        system = prompt.system
        if prompt.response_schema is not None and server.json_mode_only:
            system = _with_schema_asked(system, prompt.response_schema)
        messages = [{"role": "system", "content": system}] if system else []
        for message in conversation(prompt.turns):
            messages += _messages(message, server)
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": messages,
            "stream": True,
            server.length_field: self.settings.max_tokens,
        }
        if not server.mistral:
            body["stream_options"] = {"include_usage": True}
        choice = prompt.tool_choice
        if server.thinks_unasked and prompt.tools and choice not in ("auto", "none"):
            if server.only_thinks:
                choice = "auto"
            else:
                body["thinking"] = {"type": "disabled"}
        if self.settings.thinking and "thinking" not in body:
            if server.effort is not None:
                body["reasoning_effort"] = server.effort
        elif (
            self.settings.temperature is not None
            and not reasons(self.settings.model)
            and server.takes_temperature
        ):
            # those take none but their own ("Only the default (1) value is supported")
            body["temperature"] = self.settings.temperature
        if self._sends_tools(prompt):
            body["tools"] = [_tool(tool) for tool in prompt.tools]
            if choice != "auto":
                body["tool_choice"] = _tool_choice(choice)
        schema = prompt.response_schema if self.sends_schema(prompt) else None
        if schema is not None and not server.json_mode_only:
            body["response_format"] = _response_format(schema)
        elif schema is not None and may_be(schema, "object"):
            body["response_format"] = {"type": "json_object"}  # an object, JSON mode's answer
        return body

    def _request(self, prompt: Prompt) -> tuple[str, dict[str, Any], dict[str, str]]:
        headers = {"authorization": f"Bearer {self.api_key}", "accept": "text/event-stream"}
        return f"{self.settings.base_url}/chat/completions", self._body(prompt), headers

    def decoder(self, response: httpx.Response) -> _Decoder:
        require_event_stream(response)
        return _Decoder(self.settings.model, self._server.keeps_reasoning_too)


class _Decoder:
    """Chat completion chunks -> our events (base.Decoder); `[DONE]` ends the answer."""

    def __init__(self, model: str, keeps_reasoning_too: bool = False) -> None:
        self.finished = False
        # Reasoning that goes back with the turn's calls: what came as `reasoning_content`,
        # and as `reasoning` with this (`_Server`).
        self._keeps_reasoning_too = keeps_reasoning_too
        self._sse = SseReader()
        self._model = model
        self._raw_stop: str | None = None
        self._usage = Usage()
        self._calls = _ToolCalls()
        self._called = False
        self._refused = False
        self._reasoning: list[str] | None = None  # as reasoning_content, since the last calls

    def feed(self, data: bytes, out: list[Event]) -> None:
        self._handle(self._sse.feed(data), out)

    def end(self, out: list[Event]) -> None:
        if not self.finished:
            rest_of(self._sse, lambda events: self._handle(events, out))
        if not self.finished:
            raise ProviderError("upstream_incomplete", "stream ended without [DONE]")
        self._whole_calls(out)  # a server that sent no finish_reason
        stop = normalised_stop_reason(self._raw_stop, _STOP_REASONS, self._called)
        if self._refused and stop in (None, "end_turn"):
            stop = "content_filter"  # OpenAI ends a refusal with "stop"; Anthropic says "refusal"
        out.append(StreamEnd(stop, self._usage, self._model))

    def salvage(self, out: list[Event]) -> None:
        """The calls whose arguments came whole (a JSON object), the stream having failed
        before its choice finished: a call that arrived is not lost with the reply."""
        self._hand_on(self._calls.arrived(), out)
        out.append(StreamEnd(None, self._usage, self._model))

    def _handle(self, events: list[ServerSentEvent], out: list[Event]) -> None:
        for event in events:
            if event.data.startswith("[DONE]"):  # as OpenAI's SDK reads it ("[DONE] " too)
                self.finished = True
                return
            if event.event == "error":  # llama.cpp's failure, an `error:` line (sse_decoder)
                error = _maybe_json(event.data)
                if isinstance(error, dict) and "error" in error:
                    error = error["error"]
                raise ProviderError("upstream_error", _error_type(error))
            chunk = json_object(event.data)
            if chunk.get("error") is not None:  # some servers send `"error": null` on each
                raise ProviderError("upstream_error", _error_type(chunk["error"]))
            self._model = chunk.get("model") or self._model
            if chunk.get("usage"):
                self._usage = _usage(chunk["usage"])
            for choice in chunk.get("choices") or []:
                if choice.get("index") not in (None, 0):  # the first choice (no `n` asked)
                    continue
                delta = choice.get("delta") or {}
                out += _deltas(delta)
                reasoning = delta.get("reasoning_content")
                if reasoning is None and self._keeps_reasoning_too:
                    reasoning = delta.get("reasoning")
                if isinstance(reasoning, str):
                    if self._reasoning is None:
                        self._reasoning = []
                    self._reasoning.append(reasoning)
                self._refused = self._refused or bool(delta.get("refusal"))
                if delta.get("tool_calls"):
                    began = self._calls.add(delta["tool_calls"])
                    out.append(CALL_BEGAN if began else WORKING)  # or a piece of its arguments
                if choice.get("finish_reason"):
                    if choice["finish_reason"] in _CUT_SHORT:
                        raise ProviderError("upstream_incomplete", choice["finish_reason"])
                    self._raw_stop = choice["finish_reason"]
                    self._whole_calls(out)

    def _whole_calls(self, out: list[Event]) -> None:
        self._hand_on(self._calls.whole(), out)

    def _hand_on(self, calls: list[ToolCall], out: list[Event]) -> None:
        """The calls, the reasoning before them in the first one's signature."""
        if calls and self._reasoning is not None:  # given, if empty: DeepSeek wants it so
            calls[0] = _carrying(calls[0], "".join(self._reasoning))
            self._reasoning = None
        self._called = self._called or bool(calls)
        out += calls


# -- the request ----------------------------------------------------------------------------


def _tool(tool: ToolSpec) -> dict[str, Any]:
    tool = with_nothing_refused_at_the_top(tool)
    parameters = rebuilt(tool.parameters, _held)
    function = {"name": tool.name, "description": tool.description, "parameters": parameters}
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if isinstance(choice, NamedTool):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _at(host: str, domain: str) -> bool:
    return host == domain or host.endswith("." + domain)


def _at_moonshot(host: str) -> bool:
    return _at(host, "moonshot.ai") or _at(host, "moonshot.cn")


def _xai_effort(model: str, effort: str) -> str | None:
    """The effort xAI's model takes: none for those that refuse one (docs.x.ai:
    "Specifying reasoning_effort parameter will get an error response"), low or high
    for grok-3-mini, the level for the rest (grok-4.3, grok-4.20-multi-agent, 4.5 on)."""
    name = model.lower()
    if "grok-3-mini" in name:
        return "low" if effort == "low" else "high"
    return None if _XAI_NO_EFFORT.search(name) else effort


# grok-3, grok-4 (-0709, -fast, -1-fast), grok-4.20 but its multi-agent, grok-code-fast.
_XAI_NO_EFFORT = re.compile(
    r"grok-(?:3(?!-mini)|4(?:-0709|-fast|-1-fast)?(?![\d.])|4\.20(?!-multi)|code-fast)"
)


def _with_schema_asked(system: str | None, schema: Mapping[str, Any]) -> str:
    """The system prompt with the reply's schema asked for in words (JSON mode also
    refuses a request whose messages never say "json")."""
    asked = "Reply in json that matches this JSON Schema: " + json.dumps(schema)
    return f"{system}\n\n{asked}" if system else asked


def _messages(message: Message, server: _Server) -> list[dict[str, Any]]:
    """One turn as OpenAI's messages: an assistant message (with its calls), or the
    user side split into a `role: tool` message per result and user messages for text.
    Where `server.reasoning_back` (DeepSeek's and Kimi's APIs) every assistant message
    has its `reasoning_content`, "" where it is not known (an answer's, another
    provider's calls'): they refuse a request with tools whose tool loop's messages lack
    it (a loop's answer too), take "" and ignore it elsewhere."""
    if message.role == "assistant":
        calls = message.calls
        turn: dict[str, Any] = {"role": "assistant", "content": message.text}
        if calls:
            turn["content"] = message.text or None
            turn["tool_calls"] = [_history_call(call, server) for call in calls]
        reasoning = _carried(calls) if server.takes_reasoning else None
        if reasoning is None and server.reasoning_back:
            reasoning = ""
        if reasoning is not None:
            turn["reasoning_content"] = reasoning
        return [turn]
    # Never empty, and no two texts in a row (base._append joins them).
    messages: list[dict[str, Any]] = []
    for part in message.parts:
        if isinstance(part, ToolResult):
            call_id = _call_id(part.call_id, server)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": part.content})
        elif isinstance(part, str):
            if server.mistral and messages and messages[-1]["role"] == "tool":
                # Mistral refuses a user message right after results (400 "Unexpected role
                # 'user' after role 'tool'"): every follow-up of a tool loop was refused.
                messages.append({"role": "assistant", "content": _BRIDGE})
            messages.append({"role": "user", "content": part})
    return messages


# What stands between tool results and the user's text where a server takes no user
# message after results (Mistral's): said as the assistant, of the results.
_BRIDGE = "(I have the tools' results.)"


def _call_id(call_id: str, server: _Server) -> str:
    """OpenAI refuses ids over 40 characters; any other goes as it is (an
    OpenAI-compatible server's own `functions.weather:0` must come back unchanged).
    Mistral takes 9 letters and digits alone: another id goes as 9 of a digest of it, the
    same on a call and its result."""
    if server.mistral:
        if _MISTRAL_CALL_ID.fullmatch(call_id):
            return call_id
        digest = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
        return "".join(_ALPHANUMERICS[digest // 62**n % 62] for n in range(9))
    if len(call_id) <= 40 and keeps_call_id(call_id):
        return call_id
    return changed_call_id(call_id, call_id)


_MISTRAL_CALL_ID = re.compile(r"[A-Za-z0-9]{9}")
_ALPHANUMERICS = string.digits + string.ascii_letters


# A call's signature that carries its turn's reasoning: not in the base64 alphabet (Gemini
# sends back only signatures in it) nor Anthropic's prefix.
REASONING_PREFIX = "openai-reasoning:"


def _carrying(call: ToolCall, reasoning: str) -> ToolCall:
    """`call` with `reasoning` in its signature (a call of ours has none of its own)."""
    encoded = base64.b64encode(reasoning.encode()).decode("ascii")
    return dataclasses.replace(call, signature=REASONING_PREFIX + encoded)


def _carried(calls: Sequence[ToolCall]) -> str | None:
    """The reasoning a turn's calls carry back (`_carrying`: "" when it came empty), on
    whichever call it is (a frontend may reorder them); None when none does."""
    for call in calls:
        signature = call.signature or ""
        if signature.startswith(REASONING_PREFIX):
            try:
                return base64.b64decode(signature[len(REASONING_PREFIX) :], validate=True).decode()
            except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
                return None
    return None


def _history_call(call: ToolCall, server: _Server) -> dict[str, Any]:
    function = {"name": call.name, "arguments": call.arguments_json}
    return {"id": _call_id(call.id, server), "type": "function", "function": function}


def _response_format(schema: Mapping[str, Any]) -> dict[str, Any]:
    title = schema.get("title")
    name = title if isinstance(title, str) and _SCHEMA_NAME.fullmatch(title) else "response"
    held = rebuilt(schema, _held)
    closed = rebuilt(held, _close)
    json_schema: dict[str, Any] = {"name": name, "schema": held}
    if _strict_ok(closed):
        json_schema = {"name": name, "schema": closed, "strict": True}
    return {"type": "json_schema", "json_schema": json_schema}


def _held(node: dict[str, Any]) -> None:
    """`node` as OpenAI takes it, strict or not, in tools and response schemas alike.

    An array schema without `items` is refused ("array schema missing items"), where
    JSON Schema means any items: `{}` says the same. A `pattern` its regex engine does
    not hold is refused ("regex lookaround is not supported", a 400 for the whole
    request: Zod's email pattern has a lookahead): it goes into the description, where
    the model still reads it; a reply to a response schema is checked against it all
    the same (a tool's arguments are not: the frontend runs the tool)."""
    if "array" in _types(node) and "items" not in node:
        node["items"] = {}
    pattern = node.get("pattern")
    if isinstance(pattern, str) and UNHELD_IN_PATTERNS.search(pattern):
        del node["pattern"]
        said = f"{{pattern: {json.dumps(pattern)}}}"
        description = node.get("description")
        node["description"] = f"{description}\n\n{said}" if description else said


def _close(node: dict[str, Any]) -> None:
    """An object that lists its properties and says nothing of others is closed
    (`additionalProperties: false`), as strict mode wants: a reply without extra
    properties still matches the frontend's schema, which it is checked against
    at the end. An object that allows others on purpose (`true`, a schema: a
    map), an object with no properties, or an optional property cannot be mended
    the same way without changing what the model may write, so such a schema
    goes as it was (its arrays given `items`), without `strict`."""
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False


def _strict_ok(schema: Mapping[str, Any]) -> bool:
    """Whether strict mode takes `schema` as it is: an object at the root (not an
    anyOf), every object closed (`additionalProperties: false`) with all its
    properties required, every schema typed, and no keyword or format outside
    strict mode's subset."""
    return (
        _types(schema) == {"object"}
        and "anyOf" not in schema
        and _strict_node(schema)
        and _within_strict_limits(schema)
    )


def _strict_node(node: Any) -> bool:
    if not isinstance(node, dict):
        return False  # a boolean schema, or not a schema: strict mode wants typed schemas
    if "$ref" in node:
        # Refused with any keyword beside it ({"$ref", "description"}: pydantic's way).
        return node.keys() == {"$ref"}
    if _NOT_STRICT & node.keys() or not {"type", "anyOf"} & node.keys():
        return False  # "schema must have a 'type' key"
    kinds = [node["type"]] if isinstance(node.get("type"), str) else node.get("type", [])
    if not _all_names(kinds):
        return False  # draft 3's schemas among the types (or a keyword no draft checks)
    if "format" in node and not (
        isinstance(node["format"], str) and node["format"] in _STRICT_FORMATS
    ):
        return False
    properties = node.get("properties", {})
    if "object" in _types(node) or "properties" in node:
        if node.get("additionalProperties") is not False or not isinstance(properties, dict):
            return False
        if "anyOf" in node:  # its branches closed would refuse its keys, and it theirs
            return False
        required = node.get("required", [])  # draft 3's is a boolean on each property
        if not _all_names(required) or set(required) != set(properties):
            return False
    children: list[Any] = list(properties.values()) if isinstance(properties, dict) else []
    for key in ("$defs", "definitions"):
        if isinstance(node.get(key), dict):
            children += node[key].values()
    if "items" in node:
        children.append(node["items"])
    if isinstance(node.get("anyOf"), list):
        children += node["anyOf"]
    return all(_strict_node(child) for child in children)


# Strict mode's size limits ("Supported schemas"): objects nested at most 10 deep, 5,000
# properties in all, 1,000 enum values in all, 120,000 characters of property and
# definition names, enum and const values (an enum of over 250 strings, 15,000 of its own).
_STRICT_DEPTH, _STRICT_PROPERTIES, _STRICT_ENUM_VALUES, _STRICT_CHARS = 10, 5000, 1000, 120_000


def _within_strict_limits(schema: Mapping[str, Any]) -> bool:
    properties = enum_values = chars = 0
    stack: list[tuple[Any, int]] = [(schema, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        if "object" in _types(node) or "properties" in node:
            depth += 1
            if depth > _STRICT_DEPTH:
                return False
        named = node.get("properties")
        names: dict[str, Any] = named if isinstance(named, dict) else {}
        properties += len(names)
        chars += sum(len(name) for name in names)
        stack += ((child, depth) for child in names.values())
        for key in ("$defs", "definitions"):
            if isinstance(node.get(key), dict):
                chars += sum(len(name) for name in node[key])
                stack += ((child, 0) for child in node[key].values())
        listed = node.get("enum")
        values: list[Any] = listed if isinstance(listed, list) else []
        own_chars = sum(len(value) for value in values if isinstance(value, str))
        if len(values) > 250 and own_chars > 15_000:
            return False
        enum_values += len(values)
        chars += own_chars + (len(node["const"]) if isinstance(node.get("const"), str) else 0)
        branches = node.get("anyOf")  # a list where it is a keyword (not in draft 3)
        if isinstance(branches, list):
            stack += ((child, depth) for child in branches if isinstance(child, dict))
        if "items" in node:
            stack.append((node["items"], depth))
    return (
        properties <= _STRICT_PROPERTIES
        and enum_values <= _STRICT_ENUM_VALUES
        and chars <= _STRICT_CHARS
    )


def _types(node: Mapping[str, Any]) -> set[str]:
    """The type names `node` allows (draft 3's schemas among them left out)."""
    kind = node.get("type")
    return {kind} if isinstance(kind, str) else _names(kind) if isinstance(kind, list) else set()


# A schema's keywords are checked against its own draft: draft 3's `type` may hold
# schemas and its `required` is a boolean, and below a keyword its draft does not have
# (draft 7's `$defs`) anything goes. What is built from them takes what it can.


def _names(values: list[Any]) -> set[str]:
    """The strings of a list."""
    return {value for value in values if isinstance(value, str)}


def _all_names(values: Any) -> bool:
    """Whether `values` is a list of strings alone."""
    return isinstance(values, list) and all(isinstance(value, str) for value in values)


# -- the stream -----------------------------------------------------------------------------


def _deltas(delta: dict[str, Any]) -> list[Event]:
    """Reasoning before content: a chunk may carry both, and thinking comes first."""
    events: list[Event] = []
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        events.append(ThinkingDelta(reasoning))
    for key in ("content", "refusal"):
        text = delta.get(key)
        if isinstance(text, str) and text:
            events.append(TextDelta(text))
        elif isinstance(text, list):  # parts (Mistral's reasoning models)
            events += _parts(text)
    return events


def _parts(parts: list[Any]) -> list[Event]:
    """Content given as parts: `{"type": "text", "text"}` is text; `{"type": "thinking",
    "thinking": [text parts]}` (or a string) thinking; any other part is not shown."""
    events: list[Event] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(text := part.get("text"), str) and text:
            events.append(TextDelta(text))
        elif part.get("type") == "thinking":
            inner = part.get("thinking")
            pieces = [inner] if isinstance(inner, str) else inner if isinstance(inner, list) else []
            thought = "".join(
                piece if isinstance(piece, str) else str(piece.get("text") or "")
                for piece in pieces
                if isinstance(piece, str | dict)
            )
            if thought:
                events.append(ThinkingDelta(thought))
    return events


@dataclass
class _PartialCall:
    index: int
    id: str | None
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def whole(self) -> ToolCall:
        """The call; one with no name is reported as a made-up one, as on every provider
        (tools.ToolCall)."""
        args, error = parse_arguments("".join(self.arguments))
        call_id = self.id or f"call_{uuid.uuid4().hex[:24]}"
        return ToolCall(call_id, self.name, args, args_error=error)

    def has_whole_arguments(self) -> bool:
        """Its arguments are a whole JSON object (none yet may be a call cut at its name)."""
        text = "".join(self.arguments)
        return bool(text.strip()) and parse_arguments(text)[1] is None


class _ToolCalls:
    """`delta.tool_calls` fragments, joined per call until the choice finishes."""

    def __init__(self) -> None:
        self._calls: list[_PartialCall] = []  # in the order they started
        self._by_index: dict[int, _PartialCall] = {}  # the latest call at each index

    def add(self, fragments: Any) -> bool:
        """Whether a fragment began a new call."""
        calls = len(self._calls)
        for fragment in fragments if isinstance(fragments, list) else []:
            if isinstance(fragment, dict):
                self._add(fragment)
        return len(self._calls) > calls

    def whole(self) -> list[ToolCall]:
        """The calls so far, whole, in index order (and forgotten)."""
        return [call.whole() for call in self._taken()]

    def arrived(self) -> list[ToolCall]:
        """Of the calls so far, those named and with whole JSON-object arguments, in
        index order (and all forgotten): the rest were cut before their end."""
        return [call.whole() for call in self._taken() if call.name and call.has_whole_arguments()]

    def _taken(self) -> list[_PartialCall]:
        """The calls so far in index order, forgotten here."""
        calls = sorted(self._calls, key=lambda call: call.index)  # stable within an index
        self._calls, self._by_index = [], {}
        return calls

    def _add(self, fragment: dict[str, Any]) -> None:
        raw_id = fragment.get("id")
        call_id = raw_id if isinstance(raw_id, str) and raw_id else None
        raw_index = fragment.get("index")
        call = self._call(raw_index if isinstance(raw_index, int) else None, call_id)
        call.id = call.id or call_id
        function = fragment.get("function")
        if not isinstance(function, dict):
            return
        name = function.get("name")
        if isinstance(name, str) and name and name != call.name:
            # Sent again grown (llama.cpp's, whole as its parser reads more) or in pieces
            # (OpenAI's SDK joins them: `get_`, then `weather`; a reviewer's).
            call.name = name if name.startswith(call.name) else call.name + name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.arguments.append(arguments)
        elif isinstance(arguments, dict):  # already parsed, on some servers
            call.arguments.append(json.dumps(arguments, ensure_ascii=False))

    def _call(self, index: int | None, call_id: str | None) -> _PartialCall:
        """The call a fragment belongs to: the one at its index (or the last one, with
        no index), unless the fragment names another id, which starts a new call."""
        if index is None:
            current = self._calls[-1] if self._calls else None
            index = current.index + 1 if current else 0
        else:
            current = self._by_index.get(index)
        if current is not None and (call_id is None or current.id in (None, call_id)):
            return current
        call = _PartialCall(index, call_id)
        self._calls.append(call)
        self._by_index[index] = call
        return call


def _usage(usage: dict[str, Any]) -> Usage:
    details = usage.get("completion_tokens_details") or {}
    output, thinking = usage.get("completion_tokens"), details.get("reasoning_tokens")
    prompt = usage.get("prompt_tokens")
    if (
        isinstance(output, int)
        and isinstance(thinking, int)
        and thinking > 0
        and usage.get("total_tokens")
        == (prompt if isinstance(prompt, int) else 0) + output + thinking
    ):
        # OpenAI counts the reasoning in completion_tokens; xAI (and gateways in front
        # of Gemini) beside it, as their total says: output is thinking included.
        output += thinking
    return Usage(input_tokens=prompt, output_tokens=output, thinking_tokens=thinking)


def _maybe_json(text: str) -> Any:
    try:
        return without_lone_surrogates(json.loads(text), text)
    except ValueError:
        return text


def _error_type(error: Any) -> str:
    if isinstance(error, dict):
        return error_detail(error.get("type") or error.get("code"))
    return "error"
