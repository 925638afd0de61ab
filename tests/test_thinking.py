from __future__ import annotations

import itertools
import json
import random
import re

import pytest

from assistant import thinking
from assistant.thinking import (
    ThinkingSplitter,
    ThinkingTagger,
    split_outside_json_strings,
    with_thinking_closed,
    without_thinking,
)
from assistant.tools import structured_output


def split_thinking(text: str) -> tuple[str, str]:
    """(content, thinking) for a whole text fed at once: what every chunking must equal."""
    splitter = ThinkingSplitter()
    splitter.feed(text)
    splitter.finish()
    return splitter.content, splitter.thinking


def feed_all(chunks: list[str]) -> tuple[str, str]:
    splitter = ThinkingSplitter()
    for chunk in chunks:
        splitter.feed(chunk)
    splitter.finish()
    return splitter.content, splitter.thinking


# --- whole-text behaviour ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "content", "thinking"),
    [
        pytest.param("", "", "", id="empty"),
        pytest.param("hello", "hello", "", id="plain"),
        pytest.param("<thinking>plan</thinking>Answer", "Answer", "plan", id="thinking-start"),
        pytest.param("<think>plan</think>Answer", "Answer", "plan", id="think-start"),
        pytest.param("A <thinking>x</thinking> B", "A  B", "x", id="middle-keeps-spaces"),
        pytest.param("Answer<think>later</think>", "Answer", "later", id="block-at-end"),
        pytest.param(
            "Intro <think>one</think> mid <thinking>two</thinking> outro",
            "Intro  mid  outro",
            "one\n\ntwo",
            id="several-blocks",
        ),
        pytest.param(
            "<think>a</think><think>b</think><thinking>c</thinking>X",
            "X",
            "a\n\nb\n\nc",
            id="adjacent-blocks",
        ),
        pytest.param(
            "<thinking>\n  step 1\n  step 2\n</thinking>\n\nDone.\n",
            "Done.",
            "step 1\n  step 2",
            id="strip-block-and-content-ends",
        ),
        pytest.param(
            "  lead <think>x</think>\n\n  inner  \n\n<think>y</think> trail  ",
            "lead \n\n  inner  \n\n trail",
            "x\n\ny",
            id="internal-whitespace-kept",
        ),
        pytest.param("<think></think>A<thinking>  \n </thinking>B", "AB", "", id="empty-blocks"),
        pytest.param(
            "<think> </think>A<think>real</think>B<think>\n</think>",
            "AB",
            "real",
            id="empty-blocks-dropped-between",
        ),
    ],
)
def test_split(text: str, content: str, thinking: str) -> None:
    assert split_thinking(text) == (content, thinking)


@pytest.mark.parametrize(
    ("text", "content", "thinking"),
    [
        pytest.param(
            "<thinking>a <think>b</think> c</thinking>D",
            "D",
            "a <think>b</think> c",
            id="think-inside-thinking",
        ),
        pytest.param(
            "<think>a </thinking> b</think>C",
            "C",
            "a </thinking> b",
            id="thinking-close-inside-think",
        ),
        pytest.param(
            "<thinking>a </think> b</thinking>C",
            "C",
            "a </think> b",
            id="think-close-inside-thinking",
        ),
        pytest.param(
            "<think>if a < b and <div>x</div></think>ok",
            "ok",
            "if a < b and <div>x</div>",
            id="tag-like-inside",
        ),
        pytest.param(
            "<thinking><thinking>x</thinking>y</thinking>",
            "y</thinking>",
            "<thinking>x",
            id="no-nesting",
        ),
        pytest.param(
            "<think><</think>x",
            "x",
            "<",
            id="lone-lt-inside",
        ),
    ],
)
def test_inside_block_tag_like_text_is_thinking(text: str, content: str, thinking: str) -> None:
    assert split_thinking(text) == (content, thinking)


@pytest.mark.parametrize(
    "text",
    [
        "a < b",
        "a<b",
        "x <div>y</div>",
        "<thinkingX>",
        "<thinkX>",
        "<thinkin>",
        "<think >x</think >",
        "<THINKING>x</THINKING>",
        "<Think>x</Think>",
        "a </thinking> stray",
        "stray </think>",
        "Use `<think>` tags:\n`</think>` ends one.",
        "<thinking/>",
        "<<>>",
        "<",
        "1 <2 and 3> 2",
        "<t",
        # Shown as code (a reviewer's answer about reasoning models lost all it said
        # after the first one, saved as thinking).
        "Models wrap their reasoning in `<think>` tags: strip them.",
        "``<thinking>x</thinking>`` and `<think>`",
    ],
)
def test_outside_block_non_tags_are_content(text: str) -> None:
    assert split_thinking(text) == (text.strip(), "")
    assert split_outside_json_strings(text) == (text.strip(), "")
    assert feed_all(list(text)) == (text.strip(), "")


def test_a_turn_sent_back_is_not_read_as_begun_inside_its_thinking() -> None:
    """Its text may be what a page showed: a close tag at a line's start there followed a
    block (a reviewer's answer about R1 lost all before its fenced `</think>`)."""
    splitter = ThinkingSplitter()
    splitter.feed("<thinking>plan</thinking>R1 sends:\n```\nx\n</think>\nHi\n```")
    splitter.finish()
    shown = splitter.content
    assert shown == "R1 sends:\n```\nx\n</think>\nHi\n```"
    assert without_thinking(shown, raw=False) == shown
    assert split_outside_json_strings(shown, raw=False) == (shown, "")
    assert without_thinking("x\n</think>\nHi", raw=False) == "x\n</think>\nHi"
    assert without_thinking("x\n</think>\nHi") == "Hi"  # as the model wrote it


@pytest.mark.parametrize(
    ("text", "content", "thinking"),
    [
        # DeepSeek-R1 / Qwen3 served with no reasoning parser: `<think>` was the prompt's.
        ("Okay, the user greets me.\n</think>\n\nHello!", "Hello!", "Okay, the user greets me."),
        ("</think>\n\nHello!", "Hello!", ""),
        ("Plan.\r\n</thinking>\r\nDone <think>b</think>", "Done", "Plan.\n\nb"),
        ("Use `<think>` tags\n</think>\nHi", "Hi", "Use `<think>` tags"),
        ('Think "a\n</think>\n{"k": "</think>"}', '{"k": "</think>"}', 'Think "a'),
        ("a\n<think>x</think>\n</think>\nb", "a\n\n</think>\nb", "x"),  # a tag was read
    ],
)
def test_a_reply_that_began_inside_its_thinking(text: str, content: str, thinking: str) -> None:
    """A close tag at a line's start before any tag ends a block the reply began with
    (a reviewer's R1 reply was shown and saved whole as the answer, `</think>` and all)."""
    assert split_thinking(text) == (content, thinking)
    assert split_outside_json_strings(text) == (content, thinking)
    assert without_thinking(text) == content
    for cut in range(len(text) + 1):
        assert feed_all([text[:cut], text[cut:]]) == (content, thinking), cut


def test_a_tag_after_a_backtick_inside_a_block_still_closes_it() -> None:
    """Only an open tag is read as code: `x`</think> ends the block its code is in."""
    assert split_thinking("<think>use `x`</think>Done") == ("Done", "use `x`")
    assert split_thinking("`<think>` then <think>t</think>A") == ("`<think>` then A", "t")


@pytest.mark.parametrize(
    ("text", "content", "thinking"),
    [
        pytest.param("Answer <thinking>still going", "Answer", "still going", id="unclosed"),
        pytest.param("<think>only thoughts", "", "only thoughts", id="unclosed-only"),
        pytest.param(
            "<think>a</think>B<thinking>c </think> d",
            "B",
            "a\n\nc </think> d",
            id="unclosed-after-closed",
        ),
        pytest.param("<think>a</thi", "", "a</thi", id="partial-close-at-end"),
        pytest.param("<thinking>a</thinking", "", "a</thinking", id="almost-closed"),
        pytest.param("<thinking>", "", "", id="open-tag-only"),
        pytest.param("Answer <thin", "Answer <thin", "", id="partial-open-at-end"),
        pytest.param("Answer <thinking", "Answer <thinking", "", id="open-missing-gt"),
        pytest.param("Answer <", "Answer <", "", id="lt-at-end"),
        pytest.param("<think>x</think>y <t", "y <t", "x", id="partial-open-after-block"),
    ],
)
def test_end_of_stream(text: str, content: str, thinking: str) -> None:
    assert split_thinking(text) == (content, thinking)


@pytest.mark.parametrize(
    ("text", "content", "thinking"),
    [
        pytest.param("héllo wörld ✓ 日本語", "héllo wörld ✓ 日本語", "", id="non-ascii"),
        pytest.param("a\u2028b<think>c\u2028d</think>e", "a\u2028be", "c\u2028d", id="u2028"),
        pytest.param("\u2028x\u2028", "\u2028x\u2028", "", id="u2028-at-ends-kept"),
        pytest.param("\u00a0x\u00a0", "\u00a0x\u00a0", "", id="nbsp-at-ends-kept"),
        pytest.param("<think>\u2029思考\u2029</think>答え", "答え", "\u2029思考\u2029", id="cjk"),
        pytest.param("emoji 😀<think>🤔</think>🎉", "emoji 😀🎉", "🤔", id="emoji"),
        pytest.param("a\r\nb\x85c", "a\r\nb\x85c", "", id="line-breaks-kept"),
    ],
)
def test_non_ascii_passes_through(text: str, content: str, thinking: str) -> None:
    assert split_thinking(text) == (content, thinking)


# --- randomised comparison with a simple reference -------------------------

_OPEN_RE = re.compile(r"<think(?:ing)?>")
_WS = " \t\n\r\x0b\x0c"


def reference_split(text: str, json_strings: bool = False) -> tuple[str, str]:
    """Straightforward whole-text reference for the rules; with `json_strings`, a JSON
    string outside a block is kept whole as content (`split_outside_json_strings`)."""
    content: list[str] = []
    blocks: list[str] = []
    pos = 0
    began = _reference_began(text)
    if began is not None:  # the reply began inside its thinking
        blocks.append(text[: began.start()].strip(_WS))
        pos = began.end()
    opening = _OPEN_OR_QUOTE_RE if json_strings else _OPEN_RE
    while True:
        match = opening.search(text, pos)
        if match is None:
            content.append(text[pos:])
            break
        marked = match.start() > pos and text[match.start() - 1] == "\u200b"
        code = match.start() and text[match.start() - 1] == "`"
        if code and match.group() != '"':
            content.append(text[pos : match.end()])  # shown as code: text
            pos = match.end()
            continue
        # The tagger's mark before its own tag goes with the tag (not before a string).
        content.append(text[pos : match.start() - (marked and match.group() != '"')])
        if match.group() == '"':
            string = _JSON_STRING_RE.match(text, match.start())
            pos = len(text) if string is None else string.end()
            content.append(text[match.start() : pos])
            continue
        close = "</" + match.group()[1:]
        end = text.find(close, match.end())
        inside = text[match.end() :] if end == -1 else text[match.end() : end]
        blocks.append(inside.strip(_WS))
        if end == -1:
            break
        pos = end + len(close)
    return "".join(content).strip(_WS), "\n\n".join(b for b in blocks if b)


_OPEN_OR_QUOTE_RE = re.compile(r'<think(?:ing)?>|"')


def _reference_began(text: str) -> re.Match[str] | None:
    """The first close tag at a line's start, if no open tag before it is read as one
    (every open tag but those right after a backtick)."""
    for close in re.finditer(r"</think(?:ing)?>", text):
        if close.start() == 0 or text[close.start() - 1] == "\n":
            before = text[: close.start()]
            read = [
                tag
                for tag in _OPEN_RE.finditer(before)
                if before[tag.start() - 1 : tag.start()] != "`"
            ]
            return None if read else close
    return None


_JSON_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


_PIECES = [
    "<thinking>", "</thinking>", "<think>", "</think>", "<", ">", "/", "t", "hink", "ing",
    "<thi", "</thi", "a", " ", "\n", "\u2028", "é", "<think ", "<THINK>", "`", "\u200b",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(20))
def test_random_texts_match_reference_and_any_chunking(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 25)))
        expected = reference_split(text)
        assert split_thinking(text) == expected, text
        cuts = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(1, 6)))
        chunks = [text[a:b] for a, b in itertools.pairwise([0, *cuts, len(text)])]
        assert feed_all(chunks) == expected, chunks
        assert feed_all(list(text)) == expected, text


# --- JSON strings (a structured reply) --------------------------------------------


@pytest.mark.parametrize(
    ("text", "content", "thinking"),
    [
        ('{"note": "<think>x</think>"}', '{"note": "<think>x</think>"}', ""),
        ('{"note": "Wrap it in <think> tags"}', '{"note": "Wrap it in <think> tags"}', ""),
        ('<thinking>say "hi</thinking>{"a": "<think>"}', '{"a": "<think>"}', 'say "hi'),
        ('{"a": "\\\\"}<think>t</think>', '{"a": "\\\\"}', "t"),
        ('{"a": "\\"<think>"}', '{"a": "\\"<think>"}', ""),
        ('<thi"x"', '<thi"x"', ""),
        ('x "unclosed <think>y</think>', 'x "unclosed <think>y</think>', ""),
    ],
)
def test_tags_inside_json_strings_are_text(text: str, content: str, thinking: str) -> None:
    assert split_outside_json_strings(text) == (content, thinking)


@pytest.mark.parametrize("seed", range(10))
def test_random_json_keeps_its_strings_whole_after_any_thinking(seed: int) -> None:
    """JSON of any strings (tags, quotes, backslashes among them), after a thinking
    block or not, reads back as itself; the block is the thinking."""
    rng = random.Random(seed)
    pieces = [*_PIECES, '"', "\\", '\\"', "{", "}"]
    for _ in range(200):
        strings = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(3)]
        answer = json.dumps({"a": strings[0], "b": strings[1:]}, ensure_ascii=rng.random() < 0.5)
        thinking = rng.choice(["", 'plan "a', "x <think> y"])
        text = f"<thinking>{thinking}</thinking>{answer}" if thinking else answer
        content, thought = split_outside_json_strings(text)
        assert json.loads(content) == {"a": strings[0], "b": strings[1:]}, text
        assert thought == thinking.strip(), text
        assert (content, thought) == reference_split(text, json_strings=True), text


@pytest.mark.parametrize("seed", range(5))
def test_random_texts_without_strings_read_as_the_splitter_reads_them(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 25)))
        assert split_outside_json_strings(text) == split_thinking(text), text


# --- chunking ------------------------------------------------------------------

SAMPLES = [
    "Intro <thinking>plan A</thinking> middle <think>plan B</think> end",
    "<thinking>x</thinking><think>y</think>",
    "a < b <div> </thinking> <thinkingX> <think >z",
    "<thinking>a <think>b</think> </thin c</thinking>D</think>",
    "<think>x </thinking> y</think>Z <thinking>unclosed </thin",
    "text ending in <thin",
    "<<think>>x</think>> <<thinking>",
    "é\u2028<think>日本\u2028</think>😀 <",
    "  <think>\n  s  \n</think>\n  A  <thinking></thinking>  ",
    "<thinkin<think>x</think",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_every_two_way_split_matches_single_feed(text: str) -> None:
    expected = split_thinking(text)
    for i in range(len(text) + 1):
        assert feed_all([text[:i], text[i:]]) == expected, i


@pytest.mark.parametrize("text", SAMPLES)
def test_every_three_way_split_matches_single_feed(text: str) -> None:
    expected = split_thinking(text)
    for i, j in itertools.combinations_with_replacement(range(len(text) + 1), 2):
        assert feed_all([text[:i], text[i:j], text[j:]]) == expected, (i, j)


@pytest.mark.parametrize("text", SAMPLES)
def test_char_by_char_matches_single_feed(text: str) -> None:
    assert feed_all(list(text)) == split_thinking(text)


@pytest.mark.parametrize(
    "chunks",
    [
        ["<thi", "nking>x</thinking>A"],
        ["<", "/think", "ing>"],
        ["<thinking>x<", "/think", "ing>A"],
        ["<", "t", "h", "i", "n", "k", ">", "x", "<", "/", "think", ">", "A"],
        ["A <think", "ing", ">b</", "thinking", ">", " C"],
        ["", "<think>", "", "x", "", "</think>", "", "A", ""],
    ],
)
def test_tags_split_across_chunks(chunks: list[str]) -> None:
    assert feed_all(chunks) == split_thinking("".join(chunks))


# --- hold-back: only the shortest tail that could still become a tag ----------


@pytest.mark.parametrize(
    ("chunk", "visible"),
    [
        pytest.param("abc<", "abc", id="lt"),
        pytest.param("abc<t", "abc", id="lt-t"),
        pytest.param("abc<thi", "abc", id="lt-thi"),
        pytest.param("abc<think", "abc", id="lt-think"),
        pytest.param("abc<thinki", "abc", id="lt-thinki"),
        pytest.param("abc<thinking", "abc", id="lt-thinking"),
        pytest.param("a < b", "a < b", id="lt-space"),
        pytest.param("a<b", "a<b", id="lt-b"),
        pytest.param("x<div", "x<div", id="div"),
        pytest.param("x</think", "x</think", id="close-outside"),
        pytest.param("x<thinkingX", "x<thinkingX", id="thinkingX"),
        pytest.param("x<think ", "x<think ", id="think-space"),
        pytest.param("x<<", "x<", id="double-lt"),
        pytest.param("x<thi<th", "x<thi", id="two-candidates"),
    ],
)
def test_hold_back_outside_block(chunk: str, visible: str) -> None:
    splitter = ThinkingSplitter()
    splitter.feed(chunk)
    assert splitter.content == visible
    assert splitter.thinking == ""


@pytest.mark.parametrize(
    ("chunk", "visible_thinking"),
    [
        pytest.param("<think>abc</thi", "abc", id="partial-close"),
        pytest.param("<think>abc<", "abc", id="lt"),
        pytest.param("<think>abc</", "abc", id="lt-slash"),
        pytest.param("<think>abc</think", "abc", id="close-missing-gt"),
        pytest.param("<think>abc</thinking", "abc</thinking", id="wrong-close"),
        pytest.param("<thinking>abc</think>", "abc</think>", id="short-close-in-thinking"),
        pytest.param("<thinking>abc</thinking", "abc", id="thinking-close-missing-gt"),
        pytest.param("<think>a<b", "a<b", id="lt-b"),
        pytest.param("<think>a<think", "a<think", id="open-inside"),
    ],
)
def test_hold_back_inside_block(chunk: str, visible_thinking: str) -> None:
    splitter = ThinkingSplitter()
    splitter.feed(chunk)
    assert splitter.content == ""
    assert splitter.thinking == visible_thinking


@pytest.mark.parametrize("text", SAMPLES)
def test_held_back_tail_is_bounded(text: str) -> None:
    splitter = ThinkingSplitter()
    for ch in text:
        splitter.feed(ch)
        assert len(splitter._pending) < len("</thinking>")


# --- incremental properties and lifecycle -------------------------------------


def test_properties_progress_while_streaming() -> None:
    splitter = ThinkingSplitter()
    splitter.feed("  Hello ")
    assert splitter.content == "  Hello "  # not stripped before finish()
    splitter.feed("<think> step one ")
    assert splitter.thinking == "step one"
    splitter.feed("</think> world ")
    assert splitter.content == "  Hello  world "
    splitter.feed("<thinking>two")
    assert splitter.thinking == "step one\n\ntwo"
    splitter.finish()
    assert splitter.content == "Hello  world"
    assert splitter.thinking == "step one\n\ntwo"


def test_finish_is_idempotent() -> None:
    splitter = ThinkingSplitter()
    splitter.feed("  A <thinking> x </thinking> B <thi")
    splitter.finish()
    first = (splitter.content, splitter.thinking)
    splitter.finish()
    splitter.finish()
    assert (splitter.content, splitter.thinking) == first == ("A  B <thi", "x")


def test_feed_after_finish_raises() -> None:
    splitter = ThinkingSplitter()
    splitter.finish()
    with pytest.raises(RuntimeError):
        splitter.feed("x")


def test_reading_properties_does_not_change_result() -> None:
    text = SAMPLES[0] + SAMPLES[3]
    splitter = ThinkingSplitter()
    for ch in text:
        splitter.feed(ch)
        _ = splitter.content, splitter.thinking
    splitter.finish()
    assert (splitter.content, splitter.thinking) == split_thinking(text)


def test_many_small_chunks_give_the_whole_text_result() -> None:
    # Speed is measured in bench/, not asserted here; the held-back tail test
    # above is what bounds the work per chunk.
    unit = "word < x <thi <think>reason </thi more</think> ok "
    chunks = [unit[i : i + 3] for i in range(0, len(unit), 3)] * 2_000
    assert feed_all(chunks) == split_thinking("".join(chunks))


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        ([(False, "a"), (False, "b")], "ab"),
        ([(True, "t1"), (True, "t2"), (False, "x")], "<thinking>t1t2</thinking>x"),
        (
            [(False, "a"), (True, "t"), (False, "b"), (True, "u")],
            "a<thinking>t</thinking>b<thinking>u",
        ),
    ],
)
def test_tagger_wraps_native_thinking(pieces: list[tuple[bool, str]], expected: str) -> None:
    tagger = ThinkingTagger()
    assert "".join(tagger.wrap(is_thinking, text) for is_thinking, text in pieces) == expected


def test_native_reasoning_after_a_backtick_is_still_thinking() -> None:
    """An open tag right after a backtick is code: the tagger's own, after text that
    ends with one, was read so, and the reasoning was shown and saved as the answer (a
    reviewer's Ollama reply, and an Anthropic text block ending in code before a call)."""
    tagger = ThinkingTagger()
    pieces = [(False, "Use `x`"), (True, "secret"), (False, " then"), (True, "`more`")]
    streamed = "".join(tagger.wrap(is_thinking, text) for is_thinking, text in pieces)
    assert split_thinking(streamed + tagger.close()) == ("Use `x` then", "secret\n\n`more`")
    assert "`\u200b<thinking>secret" in streamed  # the mark, dropped with the tag
    tagger = ThinkingTagger()  # after its own close tag, none is needed
    streamed = tagger.wrap(True, "a`") + tagger.close() + tagger.wrap(True, "b")
    assert streamed == "<thinking>a`</thinking><thinking>b"


def test_the_taggers_mark_never_reaches_content_a_fence_or_structured_output() -> None:
    """Kept in content, the mark broke a code fence that closed right before reasoning
    (the rest of a Markdown answer rendered as code) and a fenced JSON answer (its
    structured output failed), a reviewer's, on all four providers."""
    tagger = ThinkingTagger()
    pieces = [(True, "plan"), (False, '```json\n{"a": 1}\n```'), (True, "check")]
    streamed = "".join(tagger.wrap(is_thinking, text) for is_thinking, text in pieces)
    streamed += tagger.close()
    assert split_thinking(streamed) == ('```json\n{"a": 1}\n```', "plan\n\ncheck")
    assert split_outside_json_strings(streamed) == ('```json\n{"a": 1}\n```', "plan\n\ncheck")
    content = split_thinking(streamed)[0]
    assert structured_output(content, {"type": "object"}) == ({"a": 1}, None)
    for cut in range(len(streamed) + 1):  # the mark held back at a chunk's end
        assert feed_all([streamed[:cut], streamed[cut:]]) == split_thinking(streamed), cut
    assert split_thinking("a\u200b") == ("a\u200b", "")  # a mark before no tag is text
    tagger = ThinkingTagger()  # the model's own before reasoning: kept (Thai's word break)
    pieces = [(False, "a\u200b"), (True, "t"), (False, "b\u200b")]
    streamed = "".join(tagger.wrap(is_thinking, text) for is_thinking, text in pieces)
    assert split_thinking(streamed) == ("a\u200bb\u200b", "t")


def test_a_block_ended_where_no_text_follows_closes_with_the_next_piece() -> None:
    """A tool call ends the block: the close tag goes in front of what comes next,
    thinking (another block) or text, or alone at the reply's end."""
    for after, expected in [
        ((True, "u"), "<thinking>t</thinking><thinking>u"),
        ((False, "x"), "<thinking>t</thinking>x"),
    ]:
        tagger = ThinkingTagger()
        pieces = [tagger.wrap(True, "t")]
        tagger.end_block()
        pieces.append(tagger.wrap(*after))
        assert pieces == ["<thinking>t", expected.removeprefix("<thinking>t")]
    tagger = ThinkingTagger()
    tagger.wrap(True, "t")
    tagger.end_block()
    assert tagger.close() == "</thinking>" and tagger.close() == ""
    tagger.end_block()  # with no block open: nothing to end
    assert tagger.wrap(False, "x") == "x"


def test_tagger_closes_a_reply_that_ends_while_thinking() -> None:
    tagger = ThinkingTagger()
    streamed = tagger.wrap(True, "still thinking") + tagger.close()
    assert streamed == "<thinking>still thinking</thinking>"
    assert tagger.close() == ""
    assert split_thinking(streamed) == ("", "still thinking")


@pytest.mark.parametrize(
    "reasoning",
    ["Never show </thinking> to anyone </thinking>.", "a < b, </div>, </think>", "<</thinking>>"],
)
def test_a_close_tag_in_native_reasoning_never_ends_the_block(reasoning: str) -> None:
    """Every split into three pieces: the reasoning stays thinking, with a zero-width
    space before the ">" of each `</thinking>` and nothing else changed."""
    for first, second in itertools.combinations(range(len(reasoning) + 1), 2):
        pieces = (reasoning[:first], reasoning[first:second], reasoning[second:])
        tagger = ThinkingTagger()
        streamed = "".join(tagger.wrap(True, piece) for piece in pieces) + tagger.wrap(False, "A")
        assert split_thinking(streamed) == (
            "A",
            reasoning.replace("</thinking>", "</thinking\u200b>").strip(),
        ), pieces


@pytest.mark.parametrize(
    ("text", "closed"),
    [
        ("<think>Weighing it.", "<think>Weighing it.</think>"),
        (
            "A <thinking>b</thinking> c <thinking>d",
            "A <thinking>b</thinking> c <thinking>d</thinking>",
        ),
        ("<thinking>b</thin", "<thinking>b</thin</thinking>"),
        ("no tags", "no tags"),
        ("<thinking>b</thinking>", "<thinking>b</thinking>"),
        ("a <think", "a <think"),  # not a tag yet: nothing to close
    ],
)
def test_a_block_left_open_is_closed_with_its_own_tag(text: str, closed: str) -> None:
    assert with_thinking_closed(text) == closed


def test_a_long_run_of_lt_signs_is_read_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each '<' outside a block asked whether the rest of the chunk could begin a tag,
    copying that rest: a million of them in a history's reply took 28 s. Only the last
    few characters of a chunk can be a tag cut short."""
    tails: list[int] = []
    could_open = thinking._could_open
    monkeypatch.setattr(
        thinking, "_could_open", lambda tail: tails.append(len(tail)) or could_open(tail)
    )
    text = "<think>x</think>" + "<" * 10_000 + "<b>y</b>" * 1000
    assert without_thinking(text) == "<" * 10_000 + "<b>y</b>" * 1000
    assert max(tails) < len("<thinking>")
