"""Where a prompt's texts are echoed in an error message, however the echo changed them.

An upstream's error may quote the request it refused: whole, cut short, a
window of a long text, its whitespace collapsed or its case changed (a
server's `prompt.strip()`, `" ".join(prompt.split())`, `prompt[-300:]`, an
upper-cased message: each was logged whole when only a text's first
characters were looked for). So a text is looked for as runs of its
characters, both sides read alike (`_normalized`: lower case, each run of
whitespace one space). `Echoes` keeps every text's PIECE-character pieces,
PIECE apart, once per prompt; a reading of an error is looked through once,
a lookup per character, and each piece found is followed to its run's ends.
A run counts when it is a whole text, a text's start cut at the reading's
end, or RUN characters or more of any text (a run that long holds a piece
at whatever offset it starts).

Runs on the I/O loop for every provider failure: a few thousand lookups per
reading of a few KB, and the pieces of the prompt's texts counted once.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from typing import Any

PIECE = 8  # characters of a text looked up together; a shorter text is a word, not looked for
RUN = 20  # characters in a row of a text, anywhere in it, that count as its echo
INDEXED_CHARS = 256 * 1024  # of the texts, looked for anywhere in them (`Echoes`)
_ENTRIES_KEPT = 4  # places kept for one piece (a phrase a history repeats a thousand times)

_SPACES = re.compile(r"\s+")


class Echoes:
    """The pieces of some texts, to find their echoes in others."""

    def __init__(self, texts: list[str]) -> None:
        """`texts` the likeliest echoed first: past INDEXED_CHARS of them, a text is
        looked for by its start alone (a MB of history took 140 ms to index, on the I/O
        loop)."""
        self._texts = [_SPACES.sub(" ", _lower(text)).strip() for text in texts]
        self._pieces: dict[str, list[tuple[int, int]]] = {}
        pieces, budget = self._pieces, INDEXED_CHARS
        for index, text in enumerate(self._texts):
            last = len(text) - PIECE + 1 if budget > 0 else min(1, len(text) - PIECE + 1)
            budget -= len(text)
            for offset in range(0, last, PIECE):
                piece = text[offset : offset + PIECE]
                entries = pieces.get(piece)
                if entries is None:
                    pieces[piece] = [(index, offset)]
                elif len(entries) < _ENTRIES_KEPT:
                    entries.append((index, offset))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where in `text` the texts are echoed: (start, end) pairs, in order, apart."""
        seen, begins, ends = _normalized(text)
        runs: list[tuple[int, int]] = []
        at, last = 0, len(seen) - PIECE
        while at <= last:
            entries = self._pieces.get(seen[at : at + PIECE])
            run = None if entries is None else self._longest_run(seen, at, entries)
            if run is None:
                at += 1
                continue
            runs.append(run)
            at = run[1]
        merged: list[tuple[int, int]] = []
        for start, end in runs:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return [(begins[start], ends[end - 1]) for start, end in merged]

    def _longest_run(
        self, seen: str, at: int, entries: list[tuple[int, int]]
    ) -> tuple[int, int] | None:
        """The longest run of a text through the piece at `at`, of those that count."""
        best: tuple[int, int] | None = None
        for index, offset in entries:
            said = self._texts[index]
            start, said_start = at, offset
            while start > 0 and said_start > 0 and seen[start - 1] == said[said_start - 1]:
                start, said_start = start - 1, said_start - 1
            end, said_end = at + PIECE, offset + PIECE
            while end < len(seen) and said_end < len(said) and seen[end] == said[said_end]:
                end, said_end = end + 1, said_end + 1
            counts = (
                end - start >= RUN
                or (said_start == 0 and said_end == len(said))  # the whole text
                or (said_start == 0 and end == len(seen))  # its start, cut at the end
            )
            if counts and (best is None or end - start > best[1] - best[0]):
                best = (start, end)
        return best


def _lower(text: str) -> str:
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text  # İ is two: its case kept


def _normalized(text: str) -> tuple[str, Sequence[int], Sequence[int]]:
    """`text` read as texts are compared, and where each of its characters begins and
    ends in `text` (a run of whitespace is one space)."""
    lowered = _lower(text)
    if _IRREGULAR_SPACE.search(lowered) is None:  # single spaces only: as it is
        return lowered, range(len(text)), range(1, len(text) + 1)
    parts: list[str] = []
    begins: list[int] = []
    ends: list[int] = []
    at = 0
    for space in _IRREGULAR_SPACE.finditer(lowered):
        parts += [lowered[at : space.start()], " "]
        begins += [*range(at, space.start()), space.start()]
        ends += [*range(at + 1, space.start() + 1), space.end()]
        at = space.end()
    parts.append(lowered[at:])
    begins += range(at, len(text))
    ends += range(at + 1, len(text) + 1)
    return "".join(parts), begins, ends


# Whitespace that is not one space alone: what reading alike changes.
_IRREGULAR_SPACE = re.compile(r"\s{2,}|[^\S ]")


# The echoes of the last few prompts: a failure's error is read a few ways, and each
# provider of a chain that fails reads its own, all for one prompt.
_RECENT: list[tuple[weakref.ref[Any], Echoes]] = []
_RECENT_KEPT = 8


def echoes_of(prompt: Any, texts: Callable[[], list[str]]) -> Echoes:
    """The `Echoes` of `prompt`'s `texts()`: made once per prompt."""
    for owner, echoes in _RECENT:
        if owner() is prompt:
            return echoes
    echoes = Echoes(texts())
    _RECENT.insert(0, (weakref.ref(prompt), echoes))
    del _RECENT[_RECENT_KEPT:]
    return echoes
