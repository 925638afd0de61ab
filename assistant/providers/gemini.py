"""Gemini, streamed natively (`:streamGenerateContent?alt=sse`).

Each event is a whole `GenerateContentResponse`. There is no `[DONE]`: a
stream is complete when a candidate carried a `finishReason` and the body
ended (or stayed quiet a moment after it: chain.ANSWERED_QUIET_SECONDS), and
that last event may have no `parts` at all, only the reason and `usageMetadata`.
Thought parts carry `thought: true`; that flag alone decides (a
`thoughtSignature` appears on other parts too). An error can arrive as a
`data:` event or as a bare JSON tail at EOF, outside any SSE framing; both
are failures. A prompt blocked by safety settings has no candidates and a
`promptFeedback.blockReason`.

Tools (README "Tools and structured output"). Gemini never splits a call: each `functionCall` part
arrives whole, `{name, args, id?}` with `args` already an object, often in
the same event as text parts before it and as the other calls of a parallel
reply; each call is held until the candidate's finishReason, and left out if
that says UNEXPECTED_TOOL_CALL. The `thoughtSignature` on a call's
part is the call's `signature`, sent back on that part next turn. Older models
give no `id`: we make one (`gemini-call-...`), and never send such an id back,
as the model never saw it. Gemini says STOP after calls too, so a STOP reply
that made calls ends with `tool_use`. A call the model botched arrives as no
part at all but as `finishReason: MALFORMED_FUNCTION_CALL` (stop reason
`other`). Choices in the request, each where it is made: declarations as
`parametersJsonSchema` (full JSON Schema), tool choice as
`toolConfig.functionCallingConfig`, history as `functionCall` and
`functionResponse` parts, no response schema alongside tools before Gemini 3 (with
`toolChoice: "none"` and a schema, the schema goes and the tools do not).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from ..config import ProviderSettings, gemini_3_on
from ..schemas import rebuilt
from ..tools import (
    NamedTool,
    ToolCall,
    ToolChoice,
    ToolSpec,
    arguments_value,
    model_json,
    without_lone_surrogates,
)
from .base import (
    CALL_BEGAN,
    Event,
    HttpProvider,
    Message,
    Part,
    Prompt,
    ProviderError,
    StopReason,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    ToolResult,
    Usage,
    called_in,
    conversation,
    normalised_stop_reason,
    token_count,
)
from .error_text import error_detail
from .sse_decoder import ServerSentEvent
from .sse_events import SseReader, UnframedTail, json_object, require_event_stream, rest_of

_STOP_REASONS: dict[str, StopReason] = {
    "STOP": "end_turn",
    "MAX_TOKENS": "max_tokens",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


# Our ids for calls Gemini gave none; such ids are never sent back (see `_with_id`).
_OUR_ID_PREFIX = "gemini-call-"
# What Gemini documents for a call it did not make itself (another provider's, or one
# from a model that gave no signature): Gemini 3 refuses a current-turn call whose first
# functionCall part has no signature. https://ai.google.dev/gemini-api/docs/thought-signatures
_NO_SIGNATURE = "skip_thought_signature_validator"
# Gemini's signatures are bytes, base64 in its JSON. One in any other form was not Gemini's
# (ours for Anthropic's thinking start with "anthropic:"): Gemini would refuse it, and it
# would carry another provider's thinking to Google.
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+=*")
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def _thinking_config(settings: ProviderSettings) -> dict[str, Any] | None:
    """Thinking on: shown (`includeThoughts`), with the budget, or for Gemini 3 on the
    level it takes in a budget's place (a budget there is accepted, and documented as
    worse). Off: Gemini 2.5 Flash is told a budget of 0, or it thinks anyway, unseen,
    its thoughts counted against maxOutputTokens (a reply could end with nothing shown)
    and holding the first chunk back. Pro and Gemini 3 cannot stop (0 is a 400): Gemini
    3 is told the least level they all take, "low" (Flash's default is "medium")."""
    if not settings.thinking:
        if _STOPS_AT_ZERO.search(settings.model):
            return {"thinkingBudget": 0}
        takes_a_level = not _NO_THINKING_CONFIG.search(settings.model)
        return (
            {"thinkingLevel": "low"}
            if gemini_3_on("gemini", settings.model) and takes_a_level
            else None
        )
    if gemini_3_on("gemini", settings.model):
        level = "low" if settings.thinking_budget <= 2048 else "high"  # all Gemini 3 take
        return {"includeThoughts": True, "thinkingLevel": level}
    return {"includeThoughts": True, "thinkingBudget": settings.thinking_budget}


# Gemini 2.5 Flash and Flash-Lite, previews and versions too; not -image, -tts or
# -native-audio ones, which refuse any thinkingConfig ("Thinking is not enabled").
_STOPS_AT_ZERO = re.compile(r"gemini-2\.5-flash(?:-lite)?(?:-preview(?:-\d+)+|-\d{3})?$")
# Models that refuse any thinkingConfig ("Thinking is not enabled"), Gemini 3's too.
_NO_THINKING_CONFIG = re.compile(r"-(?:image|tts|native-audio)")


class GeminiProvider(HttpProvider):
    name = "gemini"

    def __init__(self, settings: ProviderSettings, api_key: str) -> None:
        super().__init__(settings, api_key)
        # gemini-2.5 answers 400 "Function calling with a response mime type:
        # 'application/json' is unsupported"; Gemini 3 takes both in one request.
        self.schema_with_tools = gemini_3_on(self.name, self.model)

    def _refuses_key(self, status: int, body: bytes) -> bool:
        # Gemini answers a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID.
        return status == 401 or (status == 400 and b"API_KEY_INVALID" in body)

    def _body(self, prompt: Prompt) -> dict[str, Any]:
        messages = conversation(prompt.turns)
        body: dict[str, Any] = {
            "contents": [_content(m) for m in messages],
            "generationConfig": {"maxOutputTokens": self.settings.max_tokens},
        }
        if prompt.system:
            body["systemInstruction"] = {"parts": [{"text": prompt.system}]}
        offered = prompt.tools if self._sends_tools(prompt) else ()
        # Gemini 3 refuses a functionResponse naming no declared tool (a bare 400 on every
        # question after a tool loop that offers it no more, or no tools at all): the
        # tools the history called are declared too, not to be called (but not beside a
        # schema where no tools may be: before Gemini 3).
        gone = [name for name in called_in(messages) if name not in {t.name for t in offered}]
        if not offered and prompt.response_schema is not None and not self.schema_with_tools:
            gone = []
        if offered or gone:
            declared = [*map(_declaration, offered), *map(_gone_declaration, gone)]
            body["tools"] = [{"functionDeclarations": declared}]
            calling = _calling_config(prompt.tool_choice if offered else "none")
            if (
                gone
                and calling["mode"] in ("AUTO", "ANY")
                and "allowedFunctionNames" not in calling
            ):
                # Only the offered may be called (the history's, described as not to be,
                # were called under auto: a reviewer's); auto's way is VALIDATED.
                calling["allowedFunctionNames"] = [tool.name for tool in offered]
                calling["mode"] = "VALIDATED" if calling["mode"] == "AUTO" else "ANY"
            body["toolConfig"] = {"functionCallingConfig": calling}
        config = body["generationConfig"]
        if self.settings.temperature is not None:
            config["temperature"] = self.settings.temperature
        if thinking := _thinking_config(self.settings):
            config["thinkingConfig"] = thinking
        if self.sends_schema(prompt):
            # responseJsonSchema takes JSON Schema as it is; responseSchema only an OpenAPI subset.
            config["responseMimeType"] = "application/json"
            config["responseJsonSchema"] = rebuilt(prompt.response_schema, _ref_alone)
        return body

    def _request(self, prompt: Prompt) -> tuple[str, dict[str, Any], dict[str, str]]:
        headers = {"x-goog-api-key": self.api_key, "accept": "text/event-stream"}
        url = (
            f"{self.settings.base_url}/v1beta/models/{self.settings.model}"
            ":streamGenerateContent?alt=sse"
        )
        return url, self._body(prompt), headers

    def decoder(self, response: httpx.Response) -> _Decoder:
        require_event_stream(response)
        return _Decoder(self.settings.model)


class _Decoder:
    """Gemini's chunks -> our events (base.Decoder). Gemini has no end marker: the answer
    is whole when the body ends with a finishReason given; a bare JSON error may follow
    the last event, outside any SSE framing."""

    finished = False  # read to the body's end

    @property
    def answered(self) -> bool:
        """A finishReason came (base.EndsBeforeItsBody): the chain reads on, for an
        error tail, only while the body does not go quiet. A STOP counts only as Google
        sends it, once, on the last chunk, with the reply's counts (`candidatesTokenCount`
        or `thoughtsTokenCount`): relays stamp it on chunks that are not the last (on the
        empty ones while the model thinks, or on every one), and the answer was taken as
        whole, and cut, half a second after one (reviewers'). With output after a STOP,
        no STOP of this body is trusted: the body's end decides."""
        if self._raw_stop is None or self._stop_not_last:
            return False
        return self._raw_stop != "STOP" or (self._gave_output and self._counted)

    def __init__(self, model: str) -> None:
        self._unframed = UnframedTail()
        self._sse = SseReader(self._unframed)
        self._model = model
        self._raw_stop: str | None = None
        self._gave_output = False  # text, thinking or a call
        self._counted = False  # the reply's counts came with the finishReason
        self._stop_not_last = False  # output came after a finishReason
        self._usage = Usage()
        self._reply = uuid.uuid4().hex[:12]  # our call ids: unique per reply, and across replies
        self._made = 0  # calls read
        self._calls = 0  # calls handed on
        # Calls wait for the finishReason: one that says UNEXPECTED_TOOL_CALL (a call
        # with no tools enabled, or toolChoice none) may come in a later chunk than its call.
        self._held: list[ToolCall] = []

    def feed(self, data: bytes, out: list[Event]) -> None:
        self._handle(self._sse.feed(data), out)

    def salvage(self, out: list[Event]) -> None:
        """The calls held (each came whole, in one part), the last usage and model, and
        the finishReason if one came (the body's end, which makes it whole, did not)."""
        self._hand_on_held(out)
        stop = None
        if self._raw_stop is not None:
            stop = normalised_stop_reason(self._raw_stop, _STOP_REASONS, self._calls > 0)
        out.append(StreamEnd(stop, self._usage, self._model))

    def end(self, out: list[Event]) -> None:
        try:
            rest_of(self._sse, lambda events: self._handle(events, out))
        except ProviderError as exc:
            # An event the body's end cut in two after the finishReason: the answer had
            # ended (a connection dropped, or reset, just after it); a whole one was lost.
            if exc.code != "upstream_incomplete" or self._raw_stop is None:
                raise
        if self._unframed.lines:  # the lines after the last event
            _raise_if_error(_bare_json("\n".join(self._unframed.lines)))
        if self._raw_stop is None:
            raise ProviderError("upstream_incomplete", "stream ended without a finishReason")
        self._hand_on_held(out)
        stop = normalised_stop_reason(self._raw_stop, _STOP_REASONS, self._calls > 0)
        out.append(StreamEnd(stop, self._usage, self._model))

    def _handle(self, events: list[ServerSentEvent], out: list[Event]) -> None:
        for event in events:
            if self._raw_stop is not None and event.data.strip() == "[DONE]":
                continue  # OpenAI's end marker, which some relays add after the last event
            chunk = json_object(event.data)
            _raise_if_error(chunk)
            self._model = chunk.get("modelVersion") or self._model
            if chunk.get("usageMetadata"):
                self._usage = _usage(chunk["usageMetadata"])
            for candidate in chunk.get("candidates") or []:
                stopped_before = self._raw_stop is not None
                if candidate.get("finishReason"):
                    self._raw_stop = candidate["finishReason"]
                    counts = chunk.get("usageMetadata") or {}
                    self._counted = bool(
                        counts.get("candidatesTokenCount") or counts.get("thoughtsTokenCount")
                    )
                before = len(out)
                for part in (candidate.get("content") or {}).get("parts") or []:
                    call = part.get("functionCall")
                    if isinstance(call, dict):
                        self._made += 1
                        our_id = f"{_OUR_ID_PREFIX}{self._reply}-{self._made}"
                        self._held.append(_tool_call(call, part, our_id))
                        out.append(CALL_BEGAN)  # the wait for a first chunk starts over
                        self._gave_output = True
                        continue
                    text = part.get("text")
                    if isinstance(text, str) and text:
                        self._gave_output = True
                        thought = part.get("thought") is True
                        out.append(ThinkingDelta(text) if thought else TextDelta(text))
                self._stop_not_last |= stopped_before and len(out) > before
                if self._raw_stop is not None:
                    self._hand_on_held(out)

    def _hand_on_held(self, out: list[Event]) -> None:
        """The calls held, unless Gemini marked them as not allowed: those are not the
        frontend's to run (a reviewer's went to it under toolChoice none)."""
        if self._raw_stop != "UNEXPECTED_TOOL_CALL":
            self._calls += len(self._held)
            out.extend(self._held)
        self._held.clear()


# -- the request ---------------------------------------------------------------------------


def _declaration(tool: ToolSpec) -> dict[str, Any]:
    # `parameters` takes only Gemini's OpenAPI subset (no $ref, no type lists, ...);
    # `parametersJsonSchema` takes JSON Schema: the frontend's schema, a `$ref` alone.
    # https://ai.google.dev/api/caching#FunctionDeclaration
    return {
        "name": tool.name,
        "description": tool.description,
        "parametersJsonSchema": rebuilt(tool.parameters, _ref_alone),
    }


def _ref_alone(node: dict[str, Any]) -> None:
    """Gemini takes nothing but `$` keywords beside a `$ref` ("If $ref is set on a
    sub-schema, no other properties, except for those starting as a $, may be set"),
    where pydantic, say, puts a field's description: the reference goes in an `anyOf`
    of its own, the same schema in a form Gemini takes. (Beside an `anyOf` already
    there, it would take an `allOf`, which Gemini does not: sent as it is.)"""
    if "$ref" in node and "anyOf" not in node and any(not k.startswith("$") for k in node):
        node["anyOf"] = [{"$ref": node.pop("$ref")}]


def _gone_declaration(name: str) -> dict[str, Any]:
    """A tool the history called that is not offered now."""
    about = "Called earlier in this conversation; not available now: do not call it."
    return {"name": name, "description": about, "parametersJsonSchema": {"type": "object"}}


def _calling_config(choice: ToolChoice) -> dict[str, Any]:
    if isinstance(choice, NamedTool):  # must call, and only this one
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": _TOOL_MODES[choice]}


def _content(message: Message) -> dict[str, Any]:
    """One turn: text, `functionCall` parts (model) and `functionResponse` parts (user).
    A user's text goes before the results it came with: after them, Gemini 3 answered
    nothing or went on with the user's sentence, and Vertex refused the request ("ending
    with a model turn"), other projects found; text first, it answers the results."""
    if message.role == "user":
        texts = [part for part in message.parts if not isinstance(part, ToolResult)]
        results = [part for part in message.parts if isinstance(part, ToolResult)]
        return {"role": "user", "parts": [_part(part) for part in (*texts, *results)]}
    parts: list[dict[str, Any]] = []
    first_call = True  # Gemini signs a parallel reply's first call only
    for part in message.parts:
        if isinstance(part, ToolCall):
            parts.append(_call_part(part, first=first_call))
            first_call = False
        else:
            parts.append(_part(part))
    return {"role": "model", "parts": parts}


def _part(part: Part) -> dict[str, Any]:
    if isinstance(part, ToolResult):
        response: dict[str, Any] = {"name": part.name, "response": _response(part.content)}
        return _with_id(response, part.call_id, "functionResponse")
    assert isinstance(part, str)
    return {"text": part}


def _call_part(call: ToolCall, first: bool) -> dict[str, Any]:
    function = {"name": call.name, "args": dict(call.args or {})}
    part = _with_id(function, call.id, "functionCall")
    own = call.signature if call.signature and _BASE64.fullmatch(call.signature) else None
    signature = own or (_NO_SIGNATURE if first else None)
    if signature:
        part["thoughtSignature"] = signature  # on the very part it came on
    return part


def _with_id(value: dict[str, Any], call_id: str, key: str) -> dict[str, Any]:
    # v1beta documents `id` on both (https://ai.google.dev/api/caching#FunctionCall) and
    # Gemini 3 matches a response to its call by it; an id we made up would mean nothing.
    if call_id and not call_id.startswith(_OUR_ID_PREFIX):
        value["id"] = call_id
    return {key: value}


def _response(content: str) -> dict[str, Any]:
    """`functionResponse.response` must be an object: a result that is one goes as it is,
    anything else as `{"result": <the text>}`. Read as strictly as a model's JSON: an
    object with NaN, 1e400 or a 5,000-digit number in it could not go out as it came,
    so it goes as its text; a lone surrogate escape (no body can carry one) becomes U+FFFD."""
    try:
        value = model_json(content)
    except (ValueError, RecursionError):
        return {"result": content}
    return value if isinstance(value, dict) else {"result": content}


# -- the stream ----------------------------------------------------------------------------


def _tool_call(call: Mapping[str, Any], part: Mapping[str, Any], our_id: str) -> ToolCall:
    name, given_id = call.get("name"), call.get("id")
    args, error = arguments_value(call.get("args"))
    signature = part.get("thoughtSignature")
    return ToolCall(
        id=given_id if isinstance(given_id, str) and given_id else our_id,
        name=name if isinstance(name, str) else "",
        args=args,
        signature=signature if isinstance(signature, str) and signature else None,
        args_error=error,
    )


def _raise_if_error(chunk: Any) -> None:
    if isinstance(chunk, list):  # a bare tail is a JSON array of error objects
        for item in chunk:
            _raise_if_error(item)
        return
    if not isinstance(chunk, dict):
        return
    error = chunk.get("error")
    if isinstance(error, dict):
        status = error.get("code") if isinstance(error.get("code"), int) else None
        raise ProviderError("upstream_error", error_detail(error.get("status")), status=status)
    block = (chunk.get("promptFeedback") or {}).get("blockReason")
    if block and not chunk.get("candidates"):
        raise ProviderError("upstream_refused", f"prompt blocked: {block}")


def _bare_json(text: str) -> Any:
    """A JSON tail outside any SSE framing, or None if it is not JSON."""
    try:
        return without_lone_surrogates(json.loads(text), text)
    except (ValueError, RecursionError):  # not JSON, or a number past Python's digit limit
        return None


def _usage(metadata: dict[str, Any]) -> Usage:
    # candidatesTokenCount leaves thoughts out; output counts them, as the others do.
    thoughts = token_count(metadata.get("thoughtsTokenCount"))
    candidates = token_count(metadata.get("candidatesTokenCount"))
    output = (
        None if candidates is None and thoughts is None else (candidates or 0) + (thoughts or 0)
    )
    return Usage(
        input_tokens=metadata.get("promptTokenCount"),
        output_tokens=output,
        thinking_tokens=thoughts,
    )
