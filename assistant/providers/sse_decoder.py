"""The SSE spec's decoder (WHATWG HTML, "Interpreting an event stream"): bytes -> lines -> events.

Adapted from httpx-sse 0.4.3 (`httpx_sse/_decoders.py`, MIT licence, by
Florimond Manca), itself adapted from httpx's `LineDecoder`. We own it rather
than import that private module, which a patch release could change; and
two rules httpx-sse misses are kept here, where they belong:

- an event is dispatched only if it had a `data` line (the spec: "If the data
  buffer is an empty string, ... return"); httpx-sse dispatched one with data
  "" after a lone `id:` or `event:` line;
- a leading byte order mark is dropped (`LineDecoder` strips it from the
  stream's first line).

And one of our own, outside the spec: an `error:` line, which llama.cpp's
server sends for a failure mid-stream (`error: {"code": 500, ...}`, no
`data:` line), is dispatched as an event named `error` with that line's
value as its data, where the spec would drop the block unseen.

Only CR, LF and CRLF end a line, never U+2028 or the other breaks that
`str.splitlines` knows (model text can hold them); a CR that ends one read
ends its line at once, and an LF that begins the next is taken as its own
(CR + LF across reads is one line end).
Pure: no I/O, nothing of ours imported. tests/test_sse_events.py holds it to
the spec's own examples and to every awkward read boundary.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)  # not frozen: a frozen dataclass takes twice as long to make, per event
class ServerSentEvent:
    event: str = "message"  # the spec's default type, when no `event:` line named one
    data: str = ""
    id: str = ""
    retry: int | None = None


# No provider's line, or event, is near this (a 1 MB text delta, a Gemini call with
# megabytes of arguments in one event): a longer one is a body gone wrong, and would hold
# its memory.
MAX_LINE_BYTES = 16 * 1024 * 1024


class LineStart:
    """The start of a line not yet ended, kept as the pieces it came in and joined once,
    when its end comes: joined with every read, a long line cost the square of its
    length (a 52 MB line in 64 KB reads held the I/O loop, every stream on it, for 9 s).
    ValueError past MAX_LINE_BYTES (the chain takes it for a body it cannot read)."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0

    def __bool__(self) -> bool:
        return self._size > 0

    def add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_LINE_BYTES:
            raise ValueError(f"a line longer than {MAX_LINE_BYTES} bytes")
        self._pieces.append(data)

    def take(self, data: bytes = b"") -> bytes:
        """The line's start, with `data` after it; the start is then empty again."""
        if not self._pieces:
            return data
        pieces, self._pieces, self._size = self._pieces, [], 0
        return b"".join((*pieces, data))


class LineDecoder:
    """Bytes in pieces -> complete lines (without their line ends), decoded as UTF-8.

    Bytes are split before they are decoded: a line end is one byte that no
    multi-byte UTF-8 character contains, so a character split across reads is
    decoded whole, and no incremental text decoder is needed. Bytes that are
    not UTF-8 become U+FFFD, as the spec says.
    """

    def __init__(self) -> None:
        self._line = LineStart()  # the start of a line not yet ended
        self._skip_lf = False  # a CR ended the last piece: an LF first in the next is its
        self._started = False

    def decode(self, data: bytes) -> list[str]:
        if not data:  # nothing read: a CR before it may still have its LF coming
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data.startswith(b"\n"):
                data = data[1:]
        if data.endswith(b"\r"):  # a line end now: the stream may send nothing for a while
            self._skip_lf = True
        if not data:
            return []
        carriage_return = b"\r" in data
        if not carriage_return and b"\n" not in data:  # more of a line begun
            self._line.add(data)
            return []
        data = self._line.take(data)
        if carriage_return:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pieces = data.split(b"\n")
        if rest := pieces.pop():  # b"" when the data ended with a line end
            self._line.add(rest)
        lines = [piece.decode("utf-8", "replace") for piece in pieces]
        if lines and not self._started:
            self._started = True
            lines[0] = lines[0].removeprefix("\ufeff")
        return lines

    @property
    def between_lines(self) -> bool:
        """No line is begun, and the stream's first line (and its byte order mark) is past."""
        return self._started and not self._line and not self._skip_lf

    def flush(self) -> list[str]:
        """The last line, if the bytes ended without a line end."""
        if not self._line:
            return []
        line = self._line.take().decode("utf-8", "replace")
        if not self._started:
            self._started = True
            line = line.removeprefix("\ufeff")
        self._skip_lf = False
        return [line]


class EventDecoder:
    """Lines -> events: one event per blank line that follows at least one `data` line."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0  # of its data lines: bounded as one line is
        self._has_data = False
        self._last_event_id = ""  # kept across events, as the spec says
        self._retry: int | None = None
        self._error: str | None = None  # an `error:` line's value (llama.cpp's server)

    @property
    def between_events(self) -> bool:
        """No field of an event still to be dispatched has been read."""
        return not (self._event or self._has_data) and self._error is None and self._retry is None

    @property
    def last_event_id(self) -> str:
        return self._last_event_id

    def decode(self, lines: list[str]) -> list[ServerSentEvent]:
        """The events these lines complete, in order (one loop for a read's lines:
        a call per line cost more than the line's own work)."""
        events: list[ServerSentEvent] = []
        for line in lines:
            if not line:
                if self._has_data:
                    events.append(
                        ServerSentEvent(
                            self._event or "message",
                            "\n".join(self._data),
                            self._last_event_id,
                            self._retry,
                        )
                    )
                elif self._error is not None:
                    events.append(ServerSentEvent("error", self._error, self._last_event_id))
                self._event, self._data, self._has_data, self._retry = "", [], False, None
                self._data_size = 0
                self._error = None
                continue
            if line[0] == ":":
                continue  # a comment
            name, _, value = line.partition(":")
            if value[:1] == " ":
                value = value[1:]
            if name == "data":
                self._data_size += len(value) + 1  # an empty line is one more entry
                if self._data_size > MAX_LINE_BYTES:  # many lines: as much as one too long
                    raise ValueError(f"an event's data longer than {MAX_LINE_BYTES} characters")
                self._data.append(value)
                self._has_data = True
            elif name == "event":
                self._event = value
            elif name == "id" and "\0" not in value:
                self._last_event_id = value
            elif name == "retry" and value.isascii() and value.isdigit():
                self._retry = int(value)
            elif name == "error":
                self._error = value
            # Any other field, and an id with NUL or a retry that is no number, is ignored.
        return events
