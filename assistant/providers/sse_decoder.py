"""The SSE spec's decoder (WHATWG HTML, "Interpreting an event stream"): text -> lines -> events.

Adapted from httpx-sse 0.4.3 (`httpx_sse/_decoders.py`, MIT licence, by
Florimond Manca), itself adapted from httpx's `LineDecoder`. We own it rather
than import that private module, which a patch release could change; and
two rules httpx-sse misses are kept here, where they belong:

- an event is dispatched only if it had a `data` line (the spec: "If the data
  buffer is an empty string, ... return"); httpx-sse dispatched one with data
  "" after a lone `id:` or `event:` line;
- a leading byte order mark is dropped (`LineDecoder` strips it from the
  stream's first text).

Only CR, LF and CRLF end a line, never U+2028 or the other breaks that
`str.splitlines` knows (model text can hold them); a CR that ends one read
is held until the next, so CR + LF across reads is one line end.
Pure: no I/O, nothing of ours imported. tests/test_sse_events.py holds it to
the spec's own examples and to every awkward read boundary.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str = "message"  # the spec's default type, when no `event:` line named one
    data: str = ""
    id: str = ""
    retry: int | None = None


def _split_lines(text: str) -> list[str]:
    """`text` split on CRLF, CR and LF only; a final line end gives no empty last line."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return lines


class LineDecoder:
    """Text in pieces -> complete lines (without their line ends)."""

    def __init__(self) -> None:
        self._buffer: list[str] = []  # the start of a line not yet ended
        self._trailing_cr = False  # a CR ended the last piece: its LF may come next
        self._started = False

    def decode(self, text: str) -> list[str]:
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._trailing_cr:
            text, self._trailing_cr = "\r" + text, False
        if text.endswith("\r"):
            text, self._trailing_cr = text[:-1], True
        if not text:
            return []
        ended = text[-1] in "\r\n"
        lines = _split_lines(text)
        if self._buffer:
            lines[0] = "".join(self._buffer) + lines[0]
            self._buffer = []
        if not ended:
            self._buffer = [lines.pop()]
        return lines

    def flush(self) -> list[str]:
        """The last line, if the text ended without a line end (or with a lone CR)."""
        if not self._buffer and not self._trailing_cr:
            return []
        line = "".join(self._buffer)
        self._buffer, self._trailing_cr = [], False
        return [line]


class EventDecoder:
    """Lines -> events: one event per blank line that follows at least one `data` line."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._has_data = False
        self._last_event_id = ""  # kept across events, as the spec says
        self._retry: int | None = None

    def decode(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # Any other field, and an id with NUL or a retry that is no number, is ignored.
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event = None
        if self._has_data:
            event = ServerSentEvent(
                event=self._event or "message",
                data="\n".join(self._data),
                id=self._last_event_id,
                retry=self._retry,
            )
        self._event, self._data, self._has_data, self._retry = "", [], False, None
        return event
