"""Newline-delimited JSON decoding (Ollama's stream): bytes -> lines -> objects.

Lines end at LF only (CRLF tolerated): never `str.splitlines`, which also
splits on U+2028 that model text can contain when a server does not escape
it. Bytes are split before decoding, so a UTF-8 character split across reads
is decoded whole. A last line without its LF is still a line if it is whole
JSON; otherwise the body was cut inside it, which makes the stream incomplete.
A UTF-8 byte order mark before the first line is read past, as an event
stream's is.
"""

from __future__ import annotations

from typing import Any

from .base import ProviderError
from .sse_decoder import LineStart
from .sse_events import json_object

_BOM = b"\xef\xbb\xbf"


class NdjsonReader:
    """A body's bytes, read by read, -> its lines, each to be one JSON object."""

    def __init__(self) -> None:
        self._line = LineStart()  # the start of a line not yet ended
        self._at_start = True  # a byte order mark may still come

    def feed(self, data: bytes) -> list[str]:
        """The non-blank lines these bytes complete (parsed by the caller, one by one:
        the objects before a line that is not JSON are still handed on)."""
        if self._at_start:
            data = self._line.take(data)
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self._line.add(data)  # maybe a mark, cut between reads
                return []
            self._at_start = False
            data = data.removeprefix(_BOM)
        if b"\n" not in data:  # more of a line begun
            self._line.add(data)
            return []
        *lines, rest = self._line.take(data).split(b"\n")
        if rest:
            self._line.add(rest)
        return [line.decode("utf-8", "replace") for line in lines if line.strip()]

    def flush(self) -> list[dict[str, Any]]:
        """At the body's end: the last line, if it had no LF, as its object."""
        rest = self._line.take()
        if not rest.strip():
            return []
        try:
            return [json_object(rest.decode("utf-8", "replace"))]
        except ProviderError:
            # Not a whole line without its LF, but a line the body was cut in.
            raise ProviderError("upstream_incomplete", "body ended inside a line") from None
