"""The `Script` model: what the fake streams for one generation request, and its validation.

Fields (a script pushed over HTTP is a JSON object with these keys; any other key is refused):

* ``text`` (split into word pieces) or ``tokens`` (the pieces as given): the reply.
* ``thinking`` (list of pieces) with ``thinking_mode`` ``"native"`` (the format's thinking
  deltas) or ``"inline"`` (text deltas between ``<thinking>`` and ``</thinking>``).
* ``echo``: reply ``"You said: <the last user turn's text>"`` instead.
* ``json``: reply with this JSON value, compact, in pieces of ``arg_piece`` characters (a
  structured-output answer).
* ``tool_calls``: calls the model makes after its text, in order (several: parallel calls):
  each ``{"name", "args": {...}}``, or ``{"name", "arguments": "<raw text>"}`` to send argument
  text as it is (malformed JSON, say); ``id`` and ``signature`` (Gemini's
  ``thoughtSignature``) optional. Formats that stream arguments send them in fragments of
  ``arg_piece`` characters. The stop reason becomes ``tool_use`` unless scripted otherwise.
* ``split_bytes``: every frame is written in pieces of this many bytes, each flushed on its
  own after a 2 ms pause, so a client reads events, lines and UTF-8 characters cut anywhere.
* ``ttft`` and ``interval``: seconds before the first piece and between pieces.
* ``fail``: before any text, one of `FAILS` or an HTTP status such as ``"429"`` (answered with
  ``error_body`` if given, else the format's own error JSON).
* ``fail_after`` N pieces, with ``fail_mode`` (one of `FAIL_MODES`).
* ``ping_every``: seconds between keep-alives while waiting (formats that have one).
* ``model``, ``input_tokens``, ``stop_reason``: what the reply reports.
* ``raw``: chunks (strings or bytes) sent as they are instead of a reply.

How a script plays out (the same in every format):

* Timing model: a format's start frames (if any) go out with the headers; every failure
  (``fail`` and ``fail_after``) happens at the moment the next delta would have been sent, i.e.
  after the ``ttft`` / ``interval`` wait. So with a format that has no start frames (Gemini,
  Ollama) ``fail="error_event"`` sends the error alone; use ``fail_after`` for an error after
  some pieces.
* Deltas counted by ``fail_after`` and by the usage figures are the thinking and text pieces
  (Anthropic's signature_delta is not counted). In "inline" thinking mode the ``<thinking>`` and
  ``</thinking>`` tags are separate text deltas (and count as text); native thinking pieces are
  reported as reasoning / thoughts tokens where the format has such a figure.
* ``fail_after`` larger than the number of deltas never fires; equal to it fires after the
  last delta, before the finish frames. An empty reply has no text block / pieces.
* ``no_stop`` ends the body cleanly at that point, so no finish frame at all follows: no
  ``message_delta``/``message_stop``, no ``finish_reason`` chunk or ``[DONE]``, no
  ``finishReason`` event, no ``done`` line. ``error_data`` (an error framed as an event) differs
  from ``error_event`` only for Gemini: the other formats' error events are framed already.
* ``stop_reason`` is given in Anthropic terms and mapped per format ("end_turn" -> "stop" /
  "STOP", "max_tokens" -> "length" / "MAX_TOKENS"); an unmapped value is sent as it is.
  ``model`` is what every format reports, whatever the request asked for.
* Precedence: ``raw`` > ``fail`` > ``echo`` > ``json`` > ``tokens`` > ``text``; ``raw`` honours only
  ``ttft``, ``interval`` and the format's content type (and keep-alive, if scripted).
"""

from __future__ import annotations

import json as jsonlib
import re
from dataclasses import dataclass, fields
from typing import Any

FAILS = ("error_event", "error_data", "hang", "hang_headers", "empty", "no_text", "cut", "no_stop")
FAIL_MODES = ("error_event", "error_data", "cut", "hang", "no_stop")


@dataclass
class Script:
    """What the fake answers to one generation request (see this module's docstring)."""

    text: str = "Hello from the fake upstream."
    tokens: list[str] | None = None
    thinking: list[str] | None = None
    thinking_mode: str = "native"
    echo: bool = False
    ttft: float = 0.0
    interval: float = 0.0
    fail: str | None = None
    fail_after: int | None = None
    fail_mode: str = "error_event"
    ping_every: float | None = None
    model: str = "fake-claude"
    input_tokens: int = 12
    stop_reason: str = "end_turn"
    raw: list[bytes] | None = None
    error_body: dict[str, Any] | None = None  # with a numeric `fail`: this body, not the format's
    json: Any = None
    tool_calls: list[dict[str, Any]] | None = None
    arg_piece: int = 7
    split_bytes: int | None = None

    def __post_init__(self) -> None:
        for call in self.tool_calls or []:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError("each tool call needs a name")
            if set(call) - {"name", "args", "arguments", "id", "signature"}:
                raise ValueError(f"unknown tool call keys: {sorted(call)}")
        if self.arg_piece < 1 or (self.split_bytes is not None and self.split_bytes < 1):
            raise ValueError("arg_piece and split_bytes must be at least 1")
        if self.fail is not None and not (self.fail.isdigit() or self.fail in FAILS):
            raise ValueError(f"unknown fail {self.fail!r}")
        if self.fail_mode not in FAIL_MODES:
            raise ValueError(f"unknown fail_mode {self.fail_mode!r}")
        if self.thinking_mode not in ("native", "inline"):
            raise ValueError(f"unknown thinking_mode {self.thinking_mode!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Script:
        if not isinstance(d, dict):
            raise ValueError("a script must be a JSON object")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown script keys: {sorted(unknown)}")
        d = dict(d)
        if d.get("raw") is not None:
            d["raw"] = [c.encode() if isinstance(c, str) else bytes(c) for c in d["raw"]]
        return cls(**d)


@dataclass(frozen=True)
class FakeCall:
    """One scripted tool call, ready for a format to frame."""

    index: int
    id: str | None  # None: the format makes one up in its own style
    name: str
    arguments: str  # the argument text as the model writes it (maybe not JSON)
    pieces: list[str]  # `arguments` in fragments of `arg_piece` characters
    signature: str | None

    @property
    def args(self) -> Any:
        """The arguments as a JSON value, for formats that send them parsed (or the raw text)."""
        try:
            return jsonlib.loads(self.arguments)
        except ValueError:
            return self.arguments


def calls_of(script: Script) -> list[FakeCall]:
    calls = []
    for index, call in enumerate(script.tool_calls or []):
        arguments = call.get("arguments")
        if not isinstance(arguments, str):
            arguments = jsonlib.dumps(call.get("args") or {}, separators=(",", ":"))
        size = script.arg_piece
        pieces = [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]
        calls.append(
            FakeCall(index, call.get("id"), call["name"], arguments, pieces, call.get("signature"))
        )
    return calls


def split_words(text: str) -> list[str]:
    """'Hello from it' -> ['Hello ', 'from ', 'it']."""
    return re.findall(r"\S+\s*|\s+", text)


def last_user_text(body: dict[str, Any], key: str = "messages") -> str:
    """The text of the last user turn: a string, or the text blocks / parts of a list."""
    for msg in reversed(body.get(key) or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content", msg.get("parts"))
            if isinstance(content, str):
                return content
            return "".join(
                b.get("text", "")
                for b in content or []
                if isinstance(b, dict) and b.get("type", "text") == "text"
            )
    return ""


def pieces_of(script: Script, body: dict[str, Any], key: str) -> list[tuple[str, list[str]]]:
    """The reply as runs of ("thinking" | "text", pieces); empty runs are left out."""
    s = script
    if s.echo:
        pieces = split_words(f"You said: {last_user_text(body, key)}")
    elif s.json is not None:
        text = jsonlib.dumps(s.json, separators=(",", ":"), ensure_ascii=False)
        pieces = [text[i : i + s.arg_piece] for i in range(0, len(text), s.arg_piece)]
    else:
        pieces = s.tokens if s.tokens is not None else split_words(s.text)
    runs: list[tuple[str, list[str]]] = []
    if s.thinking and s.thinking_mode == "native":
        runs.append(("thinking", s.thinking))
    elif s.thinking:
        pieces = ["<thinking>", *s.thinking, "</thinking>", *pieces]
    if pieces:
        runs.append(("text", pieces))
    return runs
