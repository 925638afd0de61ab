"""Where a prompt's texts are echoed in an error message, however the echo changed them.

An upstream's error may quote the request it refused: whole, cut short, a
window of a long text, its whitespace collapsed or its case changed (a
server's `prompt.strip()`, `" ".join(prompt.split())`, `prompt[-300:]`, an
upper-cased message: each was logged whole when only a text's first
characters were looked for). So a text is looked for as runs of its
characters, both sides read alike (`_normalized`: case folded, each run of
whitespace one space). An echo counts when it is a whole text, a text's
start cut at the reading's end, or RUN characters or more of any text.

`Echoes` reads the prompt's texts once per prompt: each text's PIECE-character
pieces, PIECE apart (a run of RUN characters holds two in a row, wherever it
starts), and the short texts whole. A reading of an error is looked through
once, a lookup per character; a piece found is followed to its run's ends
only when the next piece of its text follows it too, and the places looked
at are bounded (`Work`): a body of dashes against a history's markdown
tables cost 0.5 s a failure when every piece found was followed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .per_prompt import PerPrompt

PIECE = 8  # characters of a text looked up together; a shorter text is a word, not looked for
RUN = 3 * PIECE  # characters in a row of a text, anywhere in it, that count as its echo
INDEXED_CHARS = 256 * 1024  # of the texts, looked for anywhere in them; past it, by their start
_PLACES_KEPT = 4  # places kept for one piece (a phrase a history repeats a thousand times)
_STARTS_KEPT = 16  # texts kept for one first piece: found whole, or cut at the reading's end

_LONGEST_ECHO = 4096  # characters of a reading of an error (cut to ERROR_DETAIL_CHARS)

_SPACES = re.compile(r"\s+")


def _read(text: str) -> str:
    """A text as echoes are compared with it."""
    return _SPACES.sub(" ", _fold(text)).strip()


class Echoes:
    """The texts of a prompt, read to find their echoes in other texts."""

    def __init__(self, texts: list[str]) -> None:
        # Past the budget, no more of a text than an echo may hold: it is looked for
        # by its start (a MB of calls' arguments took 150 ms to read whole).
        spent, self._texts = 0, []
        for text in texts:
            if spent < INDEXED_CHARS:
                self._texts.append(_read(text))
            else:  # cut once read: its whitespace read as one space may make it less
                self._texts.append(_read(text[: 4 * _LONGEST_ECHO])[:_LONGEST_ECHO])
            spent += len(text)
        self._places: dict[str, list[tuple[int, int]]] = {}  # piece -> (text, offset)
        self._short: dict[str, dict[int, set[str]]] = {}  # first piece -> length -> texts
        self._starts: dict[str, list[str]] = {}  # first piece -> texts
        budget = INDEXED_CHARS
        for index, text in enumerate(self._texts):
            if len(text) < PIECE:
                continue
            starts = self._starts.setdefault(text[:PIECE], [])
            if len(starts) < _STARTS_KEPT:
                starts.append(text)
            if len(text) < RUN:  # no run of RUN in it: it counts whole
                self._short.setdefault(text[:PIECE], {}).setdefault(len(text), set()).add(text)
                continue
            last = max(1, min(len(text) - PIECE + 1, budget))  # its start at the least
            budget -= last
            for offset in range(0, last, PIECE):
                places = self._places.setdefault(text[offset : offset + PIECE], [])
                if len(places) < _PLACES_KEPT:
                    places.append((index, offset))

    def spans(self, text: str, work: Work) -> list[tuple[int, int]]:
        """Where in `text` the texts are echoed: (start, end) pairs, in order, apart.
        TooCostly once `work` is spent."""
        seen, begins, ends = _normalized(text)
        work.spend(len(seen) // _CHARS_PER_PLACE)  # the scan itself, hits or none
        runs: list[tuple[int, int]] = []
        at, last = 0, len(seen) - PIECE
        places, starts = self._places, self._starts
        while at <= last:
            piece = seen[at : at + PIECE]
            if piece not in places and piece not in starts:
                at += 1  # what most characters come to: nothing begins here
                continue
            work.spend()
            found = [
                self._run_through(seen, at, piece),
                self._whole_text_at(seen, at, piece),
                self._start_cut_at(seen, at, piece),
            ]
            run = max(
                (run for run in found if run is not None),
                key=lambda run: run[1] - run[0],
                default=None,
            )
            if run is None:
                at += 1
                continue
            runs.append(run)
            # On from the last piece that may begin within it: a run of a text alike
            # ran a character into this one's own piece, and its digits were skipped.
            at = max(at + 1, run[1] - PIECE + 1)
        merged: list[tuple[int, int]] = []
        for start, end in runs:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return [(begins[start], ends[end - 1]) for start, end in merged]

    def _run_through(self, seen: str, at: int, piece: str) -> tuple[int, int] | None:
        """The longest run of RUN or more of a text through the piece at `at`."""
        best: tuple[int, int] | None = None
        for index, offset in self._places.get(piece, ()):
            said = self._texts[index]
            # A run of RUN holds this piece and the one after it or before it, in a row.
            after = seen[at + PIECE : at + 2 * PIECE] == said[offset + PIECE : offset + 2 * PIECE]
            if not after and not (
                at >= PIECE
                and offset >= PIECE
                and seen[at - PIECE : at] == said[offset - PIECE : offset]
            ):
                continue
            start = at - _alike_behind(seen, at, said, offset)
            end = at + PIECE + _alike_ahead(seen, at + PIECE, said, offset + PIECE)
            if end - start >= RUN and (best is None or end - start > best[1] - best[0]):
                best = (start, end)
        return best

    def _whole_text_at(self, seen: str, at: int, piece: str) -> tuple[int, int] | None:
        """The longest text that stands whole at `at`: every one shorter than RUN, and
        a few longer ones (texts alike but for their ends, `ACCT-100100` among five
        others, had their last characters left by a run of another)."""
        lengths = self._short.get(piece, {})
        found = [length for length, texts in lengths.items() if seen[at : at + length] in texts]
        found += (len(said) for said in self._starts.get(piece, ()) if seen.startswith(said, at))
        # Not inside a word of the error's own (a turn "continue" in "discontinued").
        found = [length for length in found if _apart(seen, at, at + length)]
        return (at, at + max(found)) if found else None

    def _start_cut_at(self, seen: str, at: int, piece: str) -> tuple[int, int] | None:
        """The rest of `seen` from `at`, when it is a text's start cut short there."""
        if len(seen) - at >= RUN:
            return None  # a run that long is found whole (`_run_through`)
        rest = seen[at:]
        cut = any(said.startswith(rest) for said in self._starts.get(piece, ()))
        return (at, len(seen)) if cut else None


def _apart(seen: str, start: int, end: int) -> bool:
    """Whether `seen[start:end]`, a text of one word (no space in it), is no part of a
    longer word: no ASCII letter or digit runs on past either end of it. A phrase, and
    a text in a script that writes no spaces between words (Chinese, Thai), is never
    taken for part of a word (a reviewer's short Chinese text was logged whole)."""
    if " " in seen[start:end]:
        return True
    return not (
        (start and _letter(seen[start - 1]) and _letter(seen[start]))
        or (end < len(seen) and _letter(seen[end]) and _letter(seen[end - 1]))
    )


def _letter(character: str) -> bool:
    return character.isascii() and character.isalnum()


def _alike_ahead(seen: str, at: int, said: str, offset: int) -> int:
    """How many characters alike `seen` and `said` have from `at` and `offset` on:
    compared PIECE at a time, then one at a time."""
    limit, length = min(len(seen) - at, len(said) - offset), 0
    while (
        length + PIECE <= limit
        and seen[at + length : at + length + PIECE]
        == said[offset + length : offset + length + PIECE]
    ):
        length += PIECE
    while length < limit and seen[at + length] == said[offset + length]:
        length += 1
    return length


def _alike_behind(seen: str, at: int, said: str, offset: int) -> int:
    """How many characters alike `seen` and `said` have just before `at` and `offset`."""
    limit, length = min(at, offset), 0
    while (
        length + PIECE <= limit
        and seen[at - length - PIECE : at - length]
        == said[offset - length - PIECE : offset - length]
    ):
        length += PIECE
    while length < limit and seen[at - length - 1] == said[offset - length - 1]:
        length += 1
    return length


class TooCostly(Exception):
    """The look for echoes ran past its work (`Work`)."""


class Work:
    """What a look for echoes may do: places where a piece of a text stands, looked at
    (a body of dashes against a history of markdown tables is a piece at every place,
    in every reading of it). Past that, TooCostly: the caller logs no detail at all."""

    def __init__(self, places: int = 5_000) -> None:
        self.left = places

    def spend(self, places: int = 1) -> None:
        self.left -= places
        if self.left < 0:
            raise TooCostly


_CHARS_PER_PLACE = 32  # a scan's characters that cost what a place looked at does


def _normalized(text: str) -> tuple[str, Sequence[int], Sequence[int]]:
    """`text` read as texts are compared (case folded, a run of whitespace one space),
    and where each of its characters begins and ends in `text`."""
    if _IRREGULAR_SPACE.search(text) is None:
        folded = text.lower() if text.isascii() else _fold(text)
        if len(folded) == len(text):  # the common case: each character one
            return folded, range(len(text)), range(1, len(text) + 1)
    parts: list[str] = []
    begins: list[int] = []
    ends: list[int] = []
    at = 0
    for special in _SPECIAL.finditer(text):
        start = special.start()
        parts.append(text[at:start].lower())
        begins += range(at, start)
        ends += range(at + 1, start + 1)
        if special.group().isspace():
            parts.append(" ")
            begins.append(start)
            ends.append(special.end())
        else:  # letters whose case folds to more than one (ß is ss, İ is i and a dot)
            for position in range(start, special.end()):
                folded = _fold(text[position])
                parts.append(folded)
                begins += [position] * len(folded)
                ends += [position + 1] * len(folded)
        at = special.end()
    parts.append(text[at:].lower())
    begins += range(at, len(text))
    ends += range(at + 1, len(text) + 1)
    return "".join(parts), begins, ends


def _fold(text: str) -> str:
    """`text` case folded, and the dotless i as i (upper-cased, it is I, which folds to i)."""
    folded = text.casefold()
    return folded.replace("\u0131", "i") if "\u0131" in folded else folded


# Whitespace that is not one space alone: what reading alike changes.
_IRREGULAR_SPACE = re.compile(r"\s{2,}|[^\S ]")
# What is read character by character: such whitespace, and what is not ASCII (its own
# runs of whitespace read as one space too).
_SPECIAL = re.compile(r"\s{2,}|[^\S ]|[^\x00-\x7f\s]+")


_ECHOES: PerPrompt[Echoes] = PerPrompt()


def echoes_of(prompt: object, texts: Callable[[], list[str]]) -> Echoes:
    """The `Echoes` of `prompt`'s `texts()`: made once per prompt (a failure's error is
    read a few ways, and each provider of a chain that fails reads its own)."""
    return _ECHOES.get(prompt, lambda: Echoes(texts()))
