"""Split a streamed model reply into visible ``content`` and ``thinking``.

The model's reasoning arrives inline as ``<thinking>...</thinking>`` or
``<think>...</think>`` blocks (native provider reasoning is wrapped the same
way before it gets here).  :class:`ThinkingSplitter` separates the two while
the reply is streamed chunk by chunk.

Deliberate choices:

* Tags are exact and lowercase: ``<thinking>`` / ``<think>`` open a block and
  only the matching close tag (``</thinking>`` resp. ``</think>``) ends it.
  ``<THINK>``, ``<think >`` or ``<thinkingX>`` are not tags.
* Inside a block, everything up to the matching close tag is thinking,
  including other tag-like text (``<think>`` inside ``<thinking>`` does not
  nest, ``</thinking>`` inside ``<think>`` does not close it).
* A reply that begins inside its thinking: a close tag at the start of a
  line, before any tag was read, ends a block that began with the reply
  (DeepSeek-R1's and Qwen3's chat templates put ``<think>`` in the prompt,
  so their reply holds only ``</think>``, served as text by an
  OpenAI-compatible server with no reasoning parser). What was read as
  content until then is that block's thinking. Within a line (``the
  </think> tag``), or once a tag was read, it is content, as below.
* Outside a block, stray closing tags and any other ``<...>`` text
  (``a < b``, ``<div>``) are ordinary content, and so is an open tag right
  after a backtick: a tag the model shows as code (``wrap it in `<think>`
  tags``) took the rest of its answer for thinking. A tag in a fenced block
  on a line of its own is still a tag: telling it needs the fences' count,
  which one stray fence would turn for the rest of the reply. A zero-width
  space right before an open tag read as one is dropped with it: it is the
  mark :class:`ThinkingTagger` puts before its own tag after a backtick (kept
  in content, it broke a code fence that closed there, and a fenced JSON
  answer). A zero-width space at a chunk's end is held back to see.
* Tags may be split across chunks at any position; the result is always
  identical to feeding the whole text at once.  Only the shortest tail that
  could still become a relevant tag is held back (outside a block: a proper
  prefix of an open tag; inside: a proper prefix of the matching close tag).
  A tail such as ``</thi`` outside a block or ``< `` is emitted immediately
  (but, before any tag was read, a prefix of a close tag at a line's start
  is held: it may end a reply that began inside its thinking, R1's way).
* An unclosed block at the end of the stream: everything after its open tag is
  thinking.  A partial tag left at the end of the stream (e.g. ``<thin``) is
  emitted on :meth:`ThinkingSplitter.finish` as literal text of whichever
  section it was in.
* Whitespace: content is kept exactly as written (``"A <thinking>x</thinking>
  B"`` gives ``"A  B"``); only the final content is stripped at its two ends,
  after :meth:`~ThinkingSplitter.finish`.  Each block's inside is stripped,
  empty blocks are dropped, and the rest are joined with ``"\\n\\n"``.
* Stripping removes ASCII whitespace only (space, ``\\t``, ``\\n``, ``\\r``,
  ``\\v``, ``\\f``), so non-ASCII characters, including U+2028 and NBSP, always
  pass through unchanged, even at the ends.  Nothing is split into lines.
* Cost: each :meth:`~ThinkingSplitter.feed` is O(len(chunk)) amortised; the
  held-back tail is at most ``len("</thinking>") - 1`` characters, and text is
  accumulated in lists that are joined lazily (and compacted) when the
  properties are read.
* Feeding after :meth:`~ThinkingSplitter.finish` raises :class:`RuntimeError`;
  ``finish()`` itself is idempotent.
"""

from __future__ import annotations

import re

__all__ = [
    "ThinkingSplitter",
    "ThinkingTagger",
    "split_outside_json_strings",
    "with_thinking_closed",
    "without_thinking",
]

# Open tag -> the only close tag that ends a block it opened.
_TAGS: dict[str, str] = {"<thinking>": "</thinking>", "<think>": "</think>"}
_MAX_OPEN_LEN = max(len(tag) for tag in _TAGS)
_CLOSES = tuple(sorted(_TAGS.values(), key=len, reverse=True))
_MAX_TAG_LEN = max(_MAX_OPEN_LEN, *map(len, _CLOSES))
# Before an open tag: ThinkingTagger's mark of its own after a backtick; dropped with it.
_MARK = "\u200b"
_MARKED_AFTER = "`" + _MARK
_ASCII_WS = " \t\n\r\x0b\x0c"


def without_thinking(text: str, raw: bool = True) -> str:
    """`text` with its thinking blocks taken out, as its saved message's content is.
    `raw`: as the model wrote it, which may begin inside its thinking; not raw, a turn
    sent back may be the text shown, where a close tag is text (`ThinkingSplitter`)."""
    if "<think" not in text and not (raw and "</think" in text):
        return text
    splitter = ThinkingSplitter(raw)
    splitter.feed(text)
    splitter.finish()
    return splitter.content


def with_thinking_closed(text: str, json: bool = False) -> str:
    """`text`, with the close tag of a thinking block it leaves open: a reply cut short
    while thinking, reported whole rather than as it streamed. With `json`, a tag inside
    one of its JSON strings opens none (`split_outside_json_strings`)."""
    if "<think" not in text:
        return text
    if json:
        return text + (_outside_json_strings(text, raw=True)[2] or "")
    splitter = ThinkingSplitter()
    splitter.feed(text)
    return text + (splitter.awaited_close_tag or "")


def split_outside_json_strings(text: str, raw: bool = True) -> tuple[str, str]:
    """(content, thinking) of a whole reply as `ThinkingSplitter` gives them, except that
    a tag inside a JSON string (between its quotes, outside any thinking block) is text.
    """
    content, thinking, _ = _outside_json_strings(text, raw)
    return content, thinking


def _outside_json_strings(text: str, raw: bool) -> tuple[str, str, str | None]:
    """`split_outside_json_strings`'s (content, thinking), and the close tag of a block
    the text leaves open (None if it leaves none).

    For a reply that is JSON: a value that holds `<think>x</think>` lost it (the reply
    still matched its schema, with other data), one that holds `<think>` alone took the
    rest of the reply for thinking. Whether a tag is inside a string is told by the
    quotes before it, not by escaped ones (`\\"`), counted at C speed from tag to tag: a
    walk string by string cost 0.55 s of a 1 MB request's chat_history. Outside strings
    this reads backslashes as JSON does, where prose does not: an unpaired quote in
    prose makes the rest one string; the caller keeps this reading only where it is JSON.
    """
    content: list[str] = []
    blocks: list[str] = []
    at, in_string = 0, False
    left_open: str | None = None
    if raw and (began := _began_thinking(text)) is not None:  # began inside its thinking
        blocks.append(text[: began.start()])
        at = began.end()
    while (tag := _OPEN_TAG.search(text, at)) is not None:
        quotes = text.count('"', at, tag.start())
        if quotes:
            quotes -= len(_ESCAPED_QUOTE.findall(text, at, tag.start()))
        in_string ^= quotes % 2 == 1
        marked = tag.start() > at and text[tag.start() - 1] == _MARK
        if in_string or (not marked and _as_code(text, tag.start(), "")):  # JSON's, or code
            content.append(text[at : tag.end()])
            at = tag.end()
            continue
        content.append(text[at : tag.start() - marked])  # the mark goes with its tag
        close = "</" + tag.group()[1:]
        found = text.find(close, tag.end())
        blocks.append(text[tag.end() :] if found == -1 else text[tag.end() : found])
        if found == -1:
            left_open = close
            at = len(text)
            break
        at = found + len(close)
    content.append(text[at:])
    inside = (block.strip(_ASCII_WS) for block in blocks)
    thinking = "\n\n".join(block for block in inside if block)
    return "".join(content).strip(_ASCII_WS), thinking, left_open


_OPEN_TAG = re.compile("|".join(re.escape(tag) for tag in sorted(_TAGS, key=len, reverse=True)))
# A close tag at the start of a line (a reply's first line too).
_CLOSE_AT_LINE_START = re.compile("(?:^|(?<=\n))(?:" + "|".join(map(re.escape, _CLOSES)) + ")")


def _began_thinking(text: str) -> re.Match[str] | None:
    """The close tag that ends a block begun with the reply (module docstring): at the
    start of a line, before any open tag read as one (one shown as code is text)."""
    close = _CLOSE_AT_LINE_START.search(text)
    if close is None:
        return None
    for tag in _OPEN_TAG.finditer(text, 0, close.start()):
        if (tag.start() and text[tag.start() - 1] == _MARK) or not _as_code(text, tag.start(), ""):
            return None
    return close


# A quote after an odd run of backslashes: escaped, inside a string.
_ESCAPED_QUOTE = re.compile(r'(?<!\\)\\(?:\\\\)*"')


def _join_compact(parts: list[str]) -> str:
    """Join ``parts`` and replace them by the single joined string."""
    if len(parts) == 1:
        return parts[0]
    joined = "".join(parts)
    parts[:] = [joined] if joined else []
    return joined


def _as_code(text: str, at: int, before: str) -> bool:
    """Whether the tag at `at` follows a backtick (`before` is the character before
    `text`): shown as code, not a tag."""
    return (text[at - 1] if at else before) == "`"


def _could_open(tail: str) -> bool:
    """True if ``tail`` is a proper prefix of some open tag."""
    return len(tail) < _MAX_OPEN_LEN and any(tag.startswith(tail) and tag != tail for tag in _TAGS)


def _close_at(text: str, at: int) -> str | None:
    """The close tag at `at` in `text`, if one is there."""
    return next((tag for tag in _CLOSES if text.startswith(tag, at)), None)


def _could_close(tail: str) -> bool:
    """True if ``tail`` is a proper prefix of some close tag."""
    return any(tag.startswith(tail) and tag != tail for tag in _CLOSES)


class ThinkingSplitter:
    """Incremental splitter: feed() chunks as they arrive, finish() once at the end.

    `raw`: the text as the model wrote it, which may begin inside its thinking (module
    docstring). Not raw, a close tag outside a block is always text: a frontend may
    send back the text it showed, where one at a line's start followed a block.
    """

    __slots__ = (
        "_before",
        "_block",
        "_blocks",
        "_close",
        "_content",
        "_finished",
        "_pending",
        "_tagged",
    )

    def __init__(self, raw: bool = True) -> None:
        self._content: list[str] = []
        self._blocks: list[str] = []  # finished blocks: stripped, non-empty
        self._block: list[str] = []  # inside of the block currently open
        self._close: str | None = None  # close tag awaited, None outside a block
        self._pending = ""  # held-back tail that may still become a tag
        self._before = ""  # the last character read before it (or before this chunk)
        self._tagged = not raw  # a tag was read: a close tag outside a block is content now
        self._finished = False

    def feed(self, chunk: str) -> None:
        """Process the next chunk of the stream."""
        if self._finished:
            raise RuntimeError("feed() called after finish()")
        if not chunk:
            return
        text = self._pending + chunk if self._pending else chunk
        self._pending = ""
        self._split(text)
        read = len(text) - len(self._pending)
        if read:
            self._before = text[read - 1]

    def _split(self, text: str) -> None:
        n = len(text)
        start = 0  # start of text not yet emitted
        search = 0  # where to look for the next '<' (outside a block)
        while start < n:
            close = self._close
            if close is None:
                lt = text.find("<", search)
                if lt == -1:
                    held = text.endswith(_MARK)  # it may come before a tag
                    if n - held > start:
                        self._content.append(text[start : n - held])
                    self._pending = _MARK if held else ""
                    return
                marked = lt > start and text[lt - 1] == _MARK
                # Until a tag is read, a close tag at a line's start may end a block
                # that began with the reply (module docstring).
                began = not self._tagged and (text[lt - 1] if lt else self._before) in "\n"
                for open_tag, close_tag in _TAGS.items():
                    if text.startswith(open_tag, lt) and (
                        marked or not _as_code(text, lt, self._before)
                    ):
                        if lt - marked > start:
                            self._content.append(text[start : lt - marked])
                        self._close = close_tag
                        self._block = []
                        self._tagged = True
                        start = search = lt + len(open_tag)
                        break
                else:
                    if began and text.startswith("</think", lt) and (ended := _close_at(text, lt)):
                        self._content.append(text[start:lt])
                        self._block, self._content = self._content, []
                        self._end_block()
                        self._tagged = True
                        start = search = lt + len(ended)
                        continue
                    # Only near the end can a tag be cut: sliced everywhere, each '<'
                    # copied the rest (a 1 MB run of them in a history took 28 s).
                    if n - lt < _MAX_TAG_LEN and (
                        _could_open(text[lt:]) or (began and _could_close(text[lt:]))
                    ):
                        if lt - marked > start:
                            self._content.append(text[start : lt - marked])
                        self._pending = text[lt - marked :]
                        return
                    search = lt + 1  # a literal '<': keep it in this content run
            else:
                idx = text.find(close, start)
                if idx != -1:
                    if idx > start:
                        self._block.append(text[start:idx])
                    self._end_block()
                    start = search = idx + len(close)
                    continue
                # Only the last '<' can begin a proper prefix of the close tag.
                lt = text.rfind("<", max(start, n - len(close) + 1))
                if lt != -1 and close.startswith(text[lt:]):
                    if lt > start:
                        self._block.append(text[start:lt])
                    self._pending = text[lt:]
                else:
                    self._block.append(text[start:])
                return

    def finish(self) -> None:
        """End the stream: flush any partial tag and close an open block.

        Idempotent.
        """
        if self._finished:
            return
        self._finished = True
        pending, self._pending = self._pending, ""
        if self._close is None:
            if pending:
                self._content.append(pending)
        else:
            if pending:
                self._block.append(pending)
            self._end_block()
        content = "".join(self._content).strip(_ASCII_WS)
        self._content = [content] if content else []

    @property
    def awaited_close_tag(self) -> str | None:
        """The tag that ends the block the text fed so far is in; None outside one."""
        return self._close

    @property
    def content(self) -> str:
        """Visible text so far; after finish(): leading/trailing whitespace stripped."""
        return _join_compact(self._content)

    @property
    def thinking(self) -> str:
        """Insides of the blocks so far (an open block's text included).

        Each block's inside is stripped, empty blocks are dropped, and the rest
        are joined with a blank line.
        """
        blocks = self._blocks
        if self._close is not None:
            current = _join_compact(self._block).strip(_ASCII_WS)
            if current:
                blocks = [*blocks, current]
        return "\n\n".join(blocks)

    def _end_block(self) -> None:
        inside = "".join(self._block).strip(_ASCII_WS)
        if inside:
            self._blocks.append(inside)
        self._block = []
        self._close = None


# Inside native reasoning, before the ">" of a "</thinking>" it holds: a zero-width space.
_TAG_BREAK = "\u200b"
_CLOSE = "</thinking>"


class ThinkingTagger:
    """Wraps native reasoning deltas in ``<thinking>`` tags, so all providers look alike.

    The open tag goes in front of the first thinking piece and the close tag in
    front of the first text piece after it, so a tag never travels alone while
    the model writes; :meth:`end_block` ends a block where no text follows (a
    tool call: thinking after it is another block), its close tag in front of
    the next piece; :meth:`close` gives the close tag for a reply that ends
    while thinking (or right after such a call).

    Reasoning that itself holds ``</thinking>`` (a model thinking about these
    tags) would end the block early for every reader of the stream, ours and
    the frontend's, and show the rest of it as the answer. So a zero-width
    space goes in before the ``>`` of each one, also when the pieces split it
    (the tail of the last piece is kept to see it): it reads the same, and is
    no tag. Nothing else in the reasoning changes.
    """

    def __init__(self) -> None:
        self._open = False
        self._ended = False  # the open block ended (end_block): its close tag is due
        self._tail = ""  # the end of the reasoning so far, that a close tag may still end
        self._needs_mark = False  # what was handed on ends with a backtick or a mark

    def wrap(self, is_thinking: bool, text: str) -> str:
        tag = ""
        if self._open and (self._ended or not is_thinking):
            tag = self.close()
        if is_thinking and not self._open:
            self._open, self._tail = True, ""
            # An open tag right after a backtick is read as code (ThinkingSplitter, and
            # the JS kit): after text that ends with one, a mark keeps ours a tag (the
            # reasoning was shown and saved as the answer); the splitters drop it. And
            # after the model's own zero-width space (a word break in Thai, say), or the
            # splitters would drop that one instead.
            tag += _MARK + "<thinking>" if not tag and self._needs_mark else "<thinking>"
        piece = tag + (self._no_close_tag(text) if is_thinking else text)
        if piece:
            self._needs_mark = piece[-1] in _MARKED_AFTER
        return piece

    def end_block(self) -> None:
        self._ended = self._open

    def close(self) -> str:
        was_open, self._open, self._ended = self._open, False, False
        if was_open:
            self._needs_mark = False
        return "</thinking>" if was_open else ""

    def _no_close_tag(self, piece: str) -> str:
        seen = self._tail + piece
        if _CLOSE in seen:
            parts, start = [], len(self._tail)
            found = seen.find(_CLOSE)
            while found != -1:
                cut = found + len(_CLOSE) - 1  # its ">", always in this piece
                parts.append(seen[start:cut] + _TAG_BREAK)
                start = cut
                found = seen.find(_CLOSE, found + 1)
            piece = "".join(parts) + seen[start:]
        self._tail = (self._tail + piece)[-(len(_CLOSE) - 1) :]
        return piece
