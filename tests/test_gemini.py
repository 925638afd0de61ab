"""What only GeminiProvider does, over real HTTP against devtools.fake_upstream.

What every provider must do (fixture replays, statuses, thinking, every failure of the
fake, the chain's rules) is tested once for all four in test_all_providers.py; what
Gemini must come to there (its recorded streams in tests/fixtures/gemini/*.sse, from
the documented `streamGenerateContent?alt=sse` format, with thoughtSignature parts
and in-stream errors that carry a status; its path, headers and body) is data in
provider_cases.GEMINI. Here: CRLF CRLF framing and no `[DONE]`, errors framed or as a
bare JSON tail at EOF, a blocked prompt, the strictly alternating turns, and a missing key.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from assistant.chain import ChainFailed, ChainSucceeded, Chunk
from assistant.config import ConfigError, ProviderSettings, Timeouts
from assistant.providers.base import Prompt, TextDelta
from assistant.providers.gemini import GeminiProvider
from assistant.request import Turn
from devtools.fake_upstream import FakeUpstream, Script

from .provider_cases import GEMINI as CASE
from .provider_support import anthropic_at, awkward_gemini_chunks, run_chain, stream_events
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture
from .raw_http import one_answer

settings_for = CASE.settings
# Everything a GeminiProvider yielded, and the ProviderError it ended with (if any).
run_provider = functools.partial(stream_events, GeminiProvider)


# -- a. recorded-style streams -----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASE.replays))
def test_fixture_events_are_crlf_framed(name: str) -> None:
    # Guards against an editor or git normalising the files. Only a bare JSON tail
    # (pretty-printed, outside the SSE framing) has LF-only lines, as the real API sends it.
    data = CASE.fixture(name)
    framed, _, tail = data.rpartition(b"\r\n\r\n")
    assert framed.count(b"data: ") >= 1
    assert framed.count(b"\n") == framed.count(b"\r\n") == framed.count(b"\r")
    assert data.count(b"\r\n\r\n") == data.count(b"data: ")
    assert (tail != b"") == name.startswith("error_tail")


@pytest.mark.parametrize(
    "name, code, detail",
    [
        # A blocked prompt is a refusal, not an error: asking again will not change it.
        ("prompt_blocked.sse", "upstream_refused", "PROHIBITED_CONTENT"),
        ("error_data.sse", "upstream_error", "INTERNAL"),
        ("error_tail.sse", "upstream_error", "UNAVAILABLE"),
        ("error_tail_after_stop.sse", "upstream_error", "RESOURCE_EXHAUSTED"),
    ],
)
def test_error_detail_names_the_upstream_reason(
    upstream: FakeUpstream, name: str, code: str, detail: str
) -> None:
    upstream.push(Script(raw=[CASE.fixture(name)]))
    _, error = run_provider(settings_for(upstream.url))
    assert error is not None and error.code == code
    assert detail in error.detail  # for the log only


def test_fixture_replay_in_one_piece(upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=[CASE.fixture("error_tail.sse")]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == CASE.replays["error_tail.sse"].events
    assert error is not None and error.code == "upstream_error" and error.status == 503


def test_an_error_tail_after_a_last_event_without_its_blank_line_is_still_an_error(
    upstream: FakeUpstream,
) -> None:
    # The last event is read at the body's end; the error after its fields is still the tail.
    data = CASE.fixture("error_tail_after_stop.sse").replace(b"\r\n\r\n{", b"\r\n{")
    assert data != CASE.fixture("error_tail_after_stop.sse")
    upstream.push(Script(raw=[data]))
    _, error = run_provider(settings_for(upstream.url))
    assert error is not None and (error.code, error.status) == ("upstream_error", 429)


def test_a_json_array_body_without_events_is_incomplete(upstream: FakeUpstream) -> None:
    # What the endpoint answers without alt=sse: JSON, no events. Not an error object, so
    # the tail check passes it, and with no finishReason it is not a success either.
    upstream.push(Script(raw=[b'[{"candidates": []}\n]']))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None and error.code == "upstream_incomplete"


# -- b. the request ------------------------------------------------------------------------


def test_turns_alternate_and_start_with_the_user(upstream: FakeUpstream) -> None:
    turns = (
        Turn("assistant", "greeting"),
        Turn("assistant", "another greeting"),
        Turn("user", "q1"),
        Turn("assistant", "r1"),
        Turn("user", "q2"),
        Turn("user", "q2 again"),
    )
    run_provider(settings_for(upstream.url), Prompt(system=None, turns=turns))
    body = upstream.requests[0].body
    assert body is not None
    roles = [content["role"] for content in body["contents"]]
    assert roles == ["user", "model", "user"]
    assert body["contents"][-1]["parts"] == [{"text": "q2\n\nq2 again"}]
    assert all(role in ("user", "model") for role in roles)


@pytest.mark.parametrize(
    "status, name",
    [
        (400, "INVALID_ARGUMENT"),
        (403, "PERMISSION_DENIED"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (503, "UNAVAILABLE"),
    ],
)
def test_error_status_names_the_canonical_status(
    upstream: FakeUpstream, status: int, name: str
) -> None:
    # Gemini's error bodies name a canonical status besides the code; the log keeps it.
    upstream.push(Script(fail=str(status)))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None and error.status == status
    assert name not in error.message
    assert name in error.detail  # log only


def test_missing_key_is_refused_with_403(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["never sent"]))
    events, error = run_provider(settings_for(upstream.url), key="")
    assert events == []
    assert error is not None and error.code == "upstream_status" and error.status == 403
    assert "PERMISSION_DENIED" in error.detail
    # A refused request does not use up the queued script.
    events, error = run_provider(settings_for(upstream.url))
    assert error is None and events[0] == TextDelta("never sent")


# -- c. through the chain, on the I/O loop ------------------------------------------------


def test_a_blocked_prompt_falls_through(upstream: FakeUpstream) -> None:
    upstream.push(
        Script(raw=[CASE.fixture("prompt_blocked.sse")]),
        Script(tokens=["from ", "claude"], model="claude-fallback"),
    )
    run = run_chain(
        [CASE.provider(upstream.url), anthropic_at(upstream.url)],
        Timeouts(connect=1, first_chunk=2, idle=2),
    )

    assert run.items == [Chunk("from "), Chunk("claude"), ChainSucceeded()]
    assert run.outcomes == ["upstream_refused", "ok"]
    assert [attempt.provider for attempt in run.chain.attempts] == ["gemini", "anthropic"]
    assert [attempt.status for attempt in run.chain.attempts] == [None, None]
    assert run.chain.provider == "anthropic" and run.chain.model_version == "claude-fallback"
    assert [request.path for request in upstream.requests] == [
        CASE.request_path(),
        "/v1/messages",
    ]


@pytest.mark.parametrize(
    ("after_stop", "outcome"),
    [
        ([b"\n"], "ok"),  # the body stays open, quiet, past the idle gap: the answer is whole
        # A tail begun and left so: not JSON, so no error said (as at the body's end).
        ([b"[{", b"\n"], "ok"),
        (  # an error tail a moment after the finishReason still fails the reply
            [b'[{"error": {"code": 429, "message": "x", "status": "RESOURCE_EXHAUSTED"}}]'],
            "upstream_error",
        ),
    ],
)
def test_a_body_quiet_after_its_finish_reason_ends_the_answer(
    upstream: FakeUpstream, after_stop: list[bytes], outcome: str
) -> None:
    """A finishReason is Gemini's end marker, but its body may still hold an error: read
    on only while it does not go quiet (a reviewer's proxy held the connection open, and
    a whole reply became upstream_timeout at the idle gap)."""
    answered = CASE.fixture("text_basic.sse")
    quick = outcome != "ok"
    upstream.push(Script(raw=[answered, *after_stop], interval=0.1 if quick else 3))
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.outcomes == [outcome]
    if outcome == "ok":
        assert run.items[-1] == ChainSucceeded()
        assert run.chain.stop_reason == "end_turn" and run.chain.usage.output_tokens
    else:  # the error frame's report has no stop reason: the answer did not end well
        failed = run.items[-1]
        assert isinstance(failed, ChainFailed) and failed.committed
        assert failed.report.stop_reason is None and failed.report.usage.output_tokens


def _gemini_event(text: str, finish: str | None = None) -> bytes:
    candidate: dict[str, object] = {"content": {"role": "model", "parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    return f"data: {json.dumps({'candidates': [candidate]})}\r\n\r\n".encode()


def test_a_relays_done_after_the_last_event_ends_the_answer_well(upstream: FakeUpstream) -> None:
    """Some relays add OpenAI's `data: [DONE]` after Gemini's last event: a whole answer
    then ended with an error frame, saved incomplete (a reviewer's)."""
    upstream.push(Script(raw=[_gemini_event("Whole answer.", "STOP") + b"data: [DONE]\r\n\r\n"]))
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.outcomes == ["ok"] and run.text == "Whole answer."


def test_a_relays_stop_on_empty_chunks_before_the_text_does_not_end_the_answer(
    upstream: FakeUpstream,
) -> None:
    """A relay's empty chunks while the model thinks carried finishReason STOP: half a
    second later, the answer was taken as whole, and empty (a reviewer's)."""
    empty = _gemini_event("", "STOP")
    upstream.push(Script(raw=[empty, empty, _gemini_event("Hello.", "STOP")], interval=0.8))
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=3, idle=2))
    assert run.outcomes == ["ok"] and run.text == "Hello."


@pytest.mark.parametrize(
    "events",
    [
        [("Hello ", False), ("there, ", False), ("world.", False)],
        [("Weighing it.", True), ("Answer.", False)],
    ],
    ids=["text", "thought-then-text"],
)
def test_a_relays_stop_on_every_chunk_does_not_cut_the_answer(
    upstream: FakeUpstream, events: list[tuple[str, bool]]
) -> None:
    """A relay that stamps STOP on every chunk (with no counts): the answer was cut half a
    second after its first chunk, and reported whole (a reviewer's)."""
    raw = []
    for text, thought in events:
        part = {"text": text, **({"thought": True} if thought else {})}
        candidate = {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP"}
        raw.append(f"data: {json.dumps({'candidates': [candidate]})}\r\n\r\n".encode())
    upstream.push(Script(raw=raw, interval=0.8))
    run = run_chain([CASE.provider(upstream.url)], Timeouts(connect=1, first_chunk=3, idle=2))
    assert run.outcomes == ["ok"]
    assert run.text.endswith(events[-1][0]) and events[0][0] in run.text


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("cut_event", [False, True], ids=["between-events", "inside-an-event"])
def test_a_connection_lost_after_the_finish_reason_ends_the_answer(
    reset: bool, cut_event: bool
) -> None:
    """A finishReason is the answer's end: the connection then closed without the chunked
    body's end, or reset, made a whole answer upstream_incomplete (a JSON caller's next
    provider asked again, billed twice); held open a moment longer, it was whole. So
    too when the cut fell inside an event after it."""
    answered = CASE.fixture("text_basic.sse")
    if cut_event:
        answered += b'data: {"usageMetadata": {"promptTokenCount": 3,'
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    chunk = f"{len(answered):x}\r\n".encode() + answered + b"\r\n"
    with one_answer(head, [chunk], then_wait=0.2, reset=reset) as url:
        run = run_chain([CASE.provider(url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.outcomes == ["ok"]
    assert run.items[-1] == ChainSucceeded()
    assert run.chain.stop_reason == "end_turn" and run.chain.usage.output_tokens


class _Filler(list[bytes]):
    """Chunks a raw server sends one by one until `stopped`; `sent` counts them."""

    sent = 0
    stopped = False

    def __iter__(self) -> Iterator[bytes]:
        for piece in super().__iter__():
            if self.stopped:
                return
            self.sent += 1
            yield piece


@pytest.mark.parametrize("filler", [b": keepalive\n\n", b"\n"], ids=["comments", "blank-lines"])
def test_bytes_after_the_finish_reason_do_not_hold_the_answer_open(filler: bytes) -> None:
    """A finishReason is the answer's end: pings or blank lines after it (a gateway's)
    each started the short wait for an error tail again, and held a whole answer until
    the body ended (a reviewer's until MAX_REPLY_SECONDS: a reply_too_long)."""
    answered = CASE.fixture("text_basic.sse")
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    pieces = _Filler(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in [answered] + [filler] * 2000)
    with one_answer(head, pieces, then_wait=0) as url:
        run = run_chain([CASE.provider(url)], Timeouts(connect=1, first_chunk=5, idle=5))
        sent_by_then, pieces.stopped = pieces.sent, True
    assert run.outcomes == ["ok"]
    assert run.items[-1] == ChainSucceeded()
    assert sent_by_then < len(pieces)  # it ended while the upstream still sent (10 s of it)


ERRORS_AFTER_THE_END = {
    "event": b'data: {"error": {"code": 500, "status": "INTERNAL"}}\n\n',
    "bare-tail": b'[{\n"error": {"code": 500, "status": "INTERNAL"}}\n]\n',
}


def _after_the_end(sent: list[bytes]) -> Any:
    """The chain's run over a Gemini body: an answer with its finishReason, then `sent`,
    each piece its own write 5 ms apart; the reply's limit is 3 s."""
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    pieces = _Filler(
        f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in [CASE.fixture("text_basic.sse"), *sent]
    )
    with one_answer(head, pieces, then_wait=0) as url:
        timeouts = Timeouts(connect=1, first_chunk=5, idle=5, reply=3)
        run = run_chain([CASE.provider(url)], timeouts)
        pieces.stopped = True
    return run


@pytest.mark.parametrize("error", ERRORS_AFTER_THE_END.values(), ids=ERRORS_AFTER_THE_END.keys())
def test_an_error_still_arriving_after_the_finish_reason_is_read_to_its_end(
    error: bytes,
) -> None:
    """The half-second wait after a finishReason is started again by what is more than
    pings: a first version's fixed deadline took an error still arriving (a byte at a
    time here, from 0.45 s to 0.75 s) for a whole answer (a reviewer's, saved complete)."""
    run = _after_the_end([b": ping\n"] * 90 + [bytes([byte]) for byte in error])
    assert run.outcomes == ["upstream_error"]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed


AFTER_THE_END_THEN_PINGS = {
    "bare-error": (ERRORS_AFTER_THE_END["bare-tail"], "upstream_error"),
    "not-an-error": (b"x\n", "ok"),
    "event-without-blank-line": (b'data: {"usageMetadata": {"promptTokenCount": 3}}\n', "ok"),
    "lone-field": (b"retry: 10\n", "ok"),
    "cr-only-pings": (b"", "ok"),
}


@pytest.mark.parametrize(
    ("first", "outcome"), AFTER_THE_END_THEN_PINGS.values(), ids=AFTER_THE_END_THEN_PINGS.keys()
)
def test_pings_after_what_follows_the_finish_reason_do_not_hold_it_open(
    first: bytes, outcome: str
) -> None:
    """Half-read or not, what follows a finishReason is judged half a second after the
    last read that was more than pings: a first mending held the answer open while
    pings came after any of these, to the reply's limit (a reviewer's)."""
    ping = b": ping\r" if not first else b": ping\n"
    run = _after_the_end(([first] if first else []) + [ping] * 1500)  # 7.5 s of pings
    assert run.outcomes == [outcome]


def test_error_tail_after_text_fails_committed(upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=awkward_gemini_chunks(CASE.fixture("error_tail.sse"))))
    run = run_chain(
        [CASE.provider(upstream.url), anthropic_at(upstream.url)],
        Timeouts(connect=1, first_chunk=2, idle=2),
    )

    assert run.text == "Okay, so the first"
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == "upstream_error"
    assert run.outcomes == ["upstream_error"]
    assert len(upstream.requests) == 1  # the user saw Gemini's text: no retry elsewhere


@pytest.mark.parametrize(
    ("model", "thinking", "budget", "sent"),
    [
        # Off: 2.5 Flash thinks anyway unless told 0, unseen, against maxOutputTokens
        # (a reply could end empty) and before its first chunk.
        ("gemini-2.5-flash", False, 2048, {"thinkingBudget": 0}),
        ("gemini-2.5-flash-lite", False, 2048, {"thinkingBudget": 0}),
        ("gemini-2.5-flash-preview-09-2025", False, 2048, {"thinkingBudget": 0}),
        ("gemini-2.5-flash-image", False, 2048, None),  # refuses any thinkingConfig
        ("gemini-2.5-pro", False, 2048, None),  # cannot stop: 0 is a 400
        # Gemini 3 cannot stop either: told the least level all take (a reviewer's: the
        # default model, 3.8 Flash, thought unseen at its default, medium).
        ("gemini-3-pro-preview", False, 2048, {"thinkingLevel": "low"}),
        ("gemini-3.8-flash", False, 2048, {"thinkingLevel": "low"}),
        ("gemini-3-pro-image", False, 2048, None),
        ("gemini-2.5-pro", True, 4096, {"includeThoughts": True, "thinkingBudget": 4096}),
        # Gemini 3 takes a level in the budget's place (a budget is accepted, and worse).
        ("gemini-3-pro-preview", True, 2048, {"includeThoughts": True, "thinkingLevel": "low"}),
        ("gemini-3-flash", True, 8192, {"includeThoughts": True, "thinkingLevel": "high"}),
    ],
)
def test_thinking_is_asked_for_as_each_model_takes_it(
    upstream: FakeUpstream, model: str, thinking: bool, budget: int, sent: dict[str, Any] | None
) -> None:
    settings = settings_for(upstream.url, model=model, thinking=thinking, thinking_budget=budget)
    assert run_provider(settings)[1] is None
    body = upstream.requests[0].body
    assert body is not None and body["generationConfig"].get("thinkingConfig") == sent


def test_a_model_named_as_googles_list_names_it_is_asked_at_its_path() -> None:
    """`models/gemini-2.5-flash`, as Google's list of models gives it, was sent to
    /v1beta/models/models/...: a 404 on every request (a reviewer's)."""
    settings = ProviderSettings.from_env({"GEMINI_MODEL": "models/gemini-3-pro-preview"}, "gemini")
    assert settings.model == "gemini-3-pro-preview"  # and so read as Gemini 3, too
    url = GeminiProvider(settings, "k")._request(Prompt(None, (Turn("user", "hi"),)))[0]
    assert url.endswith("/v1beta/models/gemini-3-pro-preview:streamGenerateContent?alt=sse")
    with pytest.raises(ConfigError, match="GEMINI_MODEL names no model"):
        ProviderSettings.from_env({"GEMINI_MODEL": "models/"}, "gemini")


def test_gemini_3_needs_no_room_beside_a_budget_it_is_not_sent() -> None:
    """It is sent a level made from the budget: a GEMINI_MAX_TOKENS under the budget was
    refused as if the budget went too (a reviewer's)."""
    env = {"GEMINI_THINKING": "true", "GEMINI_MAX_TOKENS": "1024"}
    three = ProviderSettings.from_env({**env, "GEMINI_MODEL": "gemini-3-pro-preview"}, "gemini")
    assert three.max_tokens == 1024 and three.thinking_budget == 2048
    with pytest.raises(ConfigError, match="GEMINI_MAX_TOKENS"):
        ProviderSettings.from_env({**env, "GEMINI_MODEL": "gemini-2.5-pro"}, "gemini")
