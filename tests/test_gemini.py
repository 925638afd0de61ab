"""GeminiProvider over real HTTP, against devtools.fake_upstream on loopback.

Three layers, as in test_anthropic.py:
- recorded-style streams (tests/fixtures/gemini/*.sse, written from Gemini's
  documented `streamGenerateContent?alt=sse` format: CRLF CRLF between events,
  no `[DONE]`, errors framed or as a bare JSON tail at EOF) replayed byte for
  byte through the fake's `raw` script, split at awkward places;
- the fake's normal scripts: what the provider sends, status codes, thinking,
  every failure mode;
- the provider inside `assistant.chain.Chain` on the app's I/O loop, where the
  connect / first-chunk / idle timeouts live.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import pytest

from assistant.chain import ChainFailed, ChainSucceeded, Chunk
from assistant.config import ProviderSettings, Timeouts
from assistant.providers.base import Event, Prompt, StreamEnd, TextDelta, ThinkingDelta, Usage
from assistant.providers.gemini import GeminiProvider
from assistant.request import Turn
from devtools.fake_upstream import FakeUpstream, Script

from .provider_support import (
    anthropic_at,
    first_multibyte,
    named,
    one_byte_reads,
    provider_settings,
    run_chain,
    split_at,
    sse_cuts,
    stream_events,
)
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

FIXTURES = Path(__file__).parent / "fixtures" / "gemini"
FLASH_20 = "gemini-2.0-flash"
FLASH_25 = "gemini-2.5-flash"
SAFE_STATUS_MESSAGE = "The model provider refused the request."
SAFE_ERROR_MESSAGE = "The model provider reported an error."


def settings_for(url: str, **changes: object) -> ProviderSettings:
    return provider_settings("gemini", url, "gemini-test", "GEMINI_API_KEY", **changes)


# Everything a GeminiProvider yielded, and the ProviderError it ended with (if any).
run_provider = functools.partial(stream_events, GeminiProvider)


# -- a. recorded-style streams -----------------------------------------------------------


def awkward_chunks(data: bytes) -> list[bytes]:
    """The bytes cut mid-field, inside CR LF CR LF, inside a UTF-8 character, in the tail."""
    cuts = sse_cuts(data)
    separator = data.find(b"\r\n\r\n")
    if separator >= 0:
        cuts |= {separator + 1, separator + 2, separator + 3}  # CR|LF, CRLF|CRLF, CR|LF
    start = first_multibyte(data)
    if start is not None:
        cuts |= {start + 1, start + 2}
    tail = data.find(b'"error"')
    if tail >= 0:
        cuts.add(tail + 4)
    return split_at(data, cuts)


@dataclasses.dataclass(frozen=True)
class Replay:
    events: list[Event]
    code: str | None = None
    status: int | None = None  # the error's status, for in-stream errors that carry one


REPLAYS: dict[str, Replay] = {
    # The last event's empty text part next to STOP yields nothing.
    "text_basic.sse": Replay(
        [
            TextDelta("Hello"),
            TextDelta(", café € 😀"),
            TextDelta(" line\u2028sep\u2029end."),
            StreamEnd("end_turn", Usage(input_tokens=7, output_tokens=12), FLASH_20),
        ]
    ),
    # thoughtSignature on text parts does not make them thoughts; a part with only a
    # signature yields nothing; output counts candidates + thoughts.
    "thinking.sse": Replay(
        [
            ThinkingDelta("**Applying Euclid**\n\n1071 = 2 \u00d7 462 + 147"),
            ThinkingDelta("\n462 = 3 \u00d7 147 + 21; 147 = 7 \u00d7 21."),
            ThinkingDelta(" So the GCD is 21."),
            TextDelta("The greatest common divisor "),
            TextDelta("of 1071 and 462 is **21**."),
            StreamEnd(
                "end_turn",
                Usage(input_tokens=18, output_tokens=14 + 131, thinking_tokens=131),
                FLASH_25,
            ),
        ]
    ),
    "finish_no_parts.sse": Replay(
        [
            TextDelta("Short "),
            TextDelta("answer."),
            StreamEnd("end_turn", Usage(input_tokens=5, output_tokens=3), FLASH_20),
        ]
    ),
    "max_tokens.sse": Replay(
        [
            TextDelta("Once upon a time, "),
            TextDelta("in a land"),
            StreamEnd("max_tokens", Usage(input_tokens=11, output_tokens=8), FLASH_20),
        ]
    ),
    "max_tokens_in_thoughts.sse": Replay(
        [
            ThinkingDelta("**Planning the essay**\n\nFirst, the outline"),
            StreamEnd(
                "max_tokens",
                Usage(input_tokens=9, output_tokens=64, thinking_tokens=64),
                FLASH_25,
            ),
        ]
    ),
    "safety.sse": Replay(
        [
            TextDelta("Here is how "),
            StreamEnd("content_filter", Usage(input_tokens=14, output_tokens=3), FLASH_20),
        ]
    ),
    "prompt_blocked.sse": Replay([], "upstream_error"),
    "error_data.sse": Replay([TextDelta("Partial answer, ")], "upstream_error", 500),
    "error_tail.sse": Replay(
        [TextDelta("Okay, "), TextDelta("so the first")], "upstream_error", 503
    ),
    # A bare-object tail after a STOP event: the reply still failed.
    "error_tail_after_stop.sse": Replay([TextDelta("Okay")], "upstream_error", 429),
    "incomplete.sse": Replay([TextDelta("Cut "), TextDelta("short")], "upstream_incomplete"),
    # No modelVersion: the configured model is reported.
    "no_model_version.sse": Replay(
        [
            TextDelta("No version."),
            StreamEnd("end_turn", Usage(input_tokens=3, output_tokens=2), "gemini-test"),
        ]
    ),
    "model_version.sse": Replay(
        [
            TextDelta("Resolved "),
            TextDelta("alias."),
            StreamEnd(
                "end_turn",
                Usage(input_tokens=4, output_tokens=3),
                "gemini-2.5-pro-preview-06-05",
            ),
        ]
    ),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(path.name for path in FIXTURES.glob("*.sse")) == sorted(REPLAYS)


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_fixture_events_are_crlf_framed(name: str) -> None:
    # Guards against an editor or git normalising the files. Only a bare JSON tail
    # (pretty-printed, outside the SSE framing) has LF-only lines, as the real API sends it.
    data = (FIXTURES / name).read_bytes()
    framed, _, tail = data.rpartition(b"\r\n\r\n")
    assert framed.count(b"data: ") >= 1
    assert framed.count(b"\n") == framed.count(b"\r\n") == framed.count(b"\r")
    assert data.count(b"\r\n\r\n") == data.count(b"data: ")
    assert (tail != b"") == name.startswith("error_tail")


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_fixture_replay(upstream: FakeUpstream, name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    chunks = awkward_chunks(data)
    assert b"".join(chunks) == data and len(chunks) >= 4
    upstream.push(Script(raw=chunks, interval=0.01))  # a pause so each piece is its own read

    events, error = run_provider(settings_for(upstream.url))

    expected = REPLAYS[name]
    assert events == expected.events
    assert (error.code if error else None) == expected.code
    if error is not None:
        assert error.status == expected.status
        assert error.message in (SAFE_ERROR_MESSAGE, "The model provider's reply was cut off.")
        for leak in ("overloaded", "internal error", "exhausted", "PROHIBITED"):
            assert leak not in error.message


@pytest.mark.parametrize(
    "name, detail",
    [
        ("prompt_blocked.sse", "PROHIBITED_CONTENT"),
        ("error_data.sse", "INTERNAL"),
        ("error_tail.sse", "UNAVAILABLE"),
        ("error_tail_after_stop.sse", "RESOURCE_EXHAUSTED"),
    ],
)
def test_error_detail_names_the_upstream_reason(
    upstream: FakeUpstream, name: str, detail: str
) -> None:
    upstream.push(Script(raw=[(FIXTURES / name).read_bytes()]))
    _, error = run_provider(settings_for(upstream.url))
    assert error is not None and error.code == "upstream_error"
    assert detail in error.detail  # for the log only


@pytest.mark.parametrize("name", ["thinking.sse", "error_tail.sse", "text_basic.sse"])
def test_fixture_replay_one_byte_per_http_chunk(upstream: FakeUpstream, name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    upstream.push(Script(raw=one_byte_reads(data)))
    events, error = run_provider(settings_for(upstream.url))
    assert events == REPLAYS[name].events
    assert (error.code if error else None) == REPLAYS[name].code


def test_fixture_replay_in_one_piece(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "error_tail.sse").read_bytes()
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == REPLAYS["error_tail.sse"].events
    assert error is not None and error.code == "upstream_error" and error.status == 503


def test_an_unterminated_last_event_is_incomplete(upstream: FakeUpstream) -> None:
    # The spec drops an event with no blank line after it, so its finishReason never counts.
    data = (FIXTURES / "finish_no_parts.sse").read_bytes().removesuffix(b"\r\n\r\n")
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("Short "), TextDelta("answer.")]
    assert error is not None and error.code == "upstream_incomplete"


def test_a_json_array_body_without_events_is_incomplete(upstream: FakeUpstream) -> None:
    # What the endpoint answers without alt=sse: JSON, no events. Not an error object, so
    # the tail check passes it, and with no finishReason it is not a success either.
    upstream.push(Script(raw=[b'[{"candidates": []}\n]']))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None and error.code == "upstream_incomplete"


# -- b. the request, statuses and scripted streams ----------------------------------------


def test_request_path_headers_and_body(upstream: FakeUpstream) -> None:
    prompt = Prompt(
        system="You are terse.",
        turns=(
            Turn("assistant", "Hello! How can I help?"),  # a UI greeting: dropped
            Turn("user", "first"),
            Turn("user", "second"),
            Turn("assistant", "a1"),
            Turn("assistant", "a2"),
            Turn("user", "now"),
        ),
    )
    settings = settings_for(upstream.url, model="gemini-x", max_tokens=777, temperature=0.3)
    events, error = run_provider(settings, prompt)
    assert error is None and isinstance(events[-1], StreamEnd)

    (request,) = upstream.requests
    assert request.path == "/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
    assert request.model == "gemini-x"
    assert request.headers["x-goog-api-key"] == "test-key"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "text/event-stream"
    assert "key=" not in request.path  # the key goes in the header only
    assert "authorization" not in request.headers
    assert request.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "first\n\nsecond"}]},
            {"role": "model", "parts": [{"text": "a1\n\na2"}]},
            {"role": "user", "parts": [{"text": "now"}]},
        ],
        "systemInstruction": {"parts": [{"text": "You are terse."}]},
        "generationConfig": {"maxOutputTokens": 777, "temperature": 0.3},
    }


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


def test_no_optional_fields_by_default(upstream: FakeUpstream) -> None:
    run_provider(settings_for(upstream.url), Prompt(system=None, turns=(Turn("user", "hi"),)))
    body = upstream.requests[0].body
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
        "generationConfig": {"maxOutputTokens": 1024},
    }


def test_temperature_zero_is_sent(upstream: FakeUpstream) -> None:
    run_provider(settings_for(upstream.url, temperature=0.0))
    body = upstream.requests[0].body
    assert body is not None
    assert body["generationConfig"] == {"maxOutputTokens": 1024, "temperature": 0.0}


def test_thinking_setting_asks_for_thoughts_with_a_budget(upstream: FakeUpstream) -> None:
    env = {
        "GEMINI_BASE_URL": upstream.url + "/",
        "GEMINI_MODEL": "gemini-2.5-pro",
        "GEMINI_MAX_TOKENS": "8000",
        "GEMINI_TEMPERATURE": "0.7",
        "GEMINI_THINKING": "true",
        "GEMINI_THINKING_BUDGET": "3000",
    }
    settings = ProviderSettings.from_env(env, "gemini")
    events, error = run_provider(settings)
    assert error is None and events

    (request,) = upstream.requests
    # The trailing slash of the base URL is dropped.
    assert request.path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    assert request.body is not None
    assert request.body["generationConfig"] == {
        "maxOutputTokens": 8000,
        "temperature": 0.7,  # Gemini takes a temperature alongside thinking
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 3000},
    }


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
def test_error_status(upstream: FakeUpstream, status: int, name: str) -> None:
    upstream.push(Script(fail=str(status)))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None
    assert error.code == "upstream_status"
    assert error.status == status
    assert error.message == SAFE_STATUS_MESSAGE
    assert "fake upstream failure" not in error.message and name not in error.message
    assert "fake upstream failure" in error.detail and name in error.detail  # log only


def test_missing_key_is_refused_with_403(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["never sent"]))
    events, error = run_provider(settings_for(upstream.url), key="")
    assert events == []
    assert error is not None and error.code == "upstream_status" and error.status == 403
    assert "PERMISSION_DENIED" in error.detail
    # A refused request does not use up the queued script.
    events, error = run_provider(settings_for(upstream.url))
    assert error is None and events[0] == TextDelta("never sent")


def test_scripted_text_stream(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["Hel", "lo ", "wörld"], model="gemini-fake", input_tokens=30))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        TextDelta("Hel"),
        TextDelta("lo "),
        TextDelta("wörld"),
        # The fake always reports thoughtsTokenCount, 0 here.
        StreamEnd(
            "end_turn", Usage(input_tokens=30, output_tokens=3, thinking_tokens=0), "gemini-fake"
        ),
    ]


@pytest.mark.parametrize(
    "stop_reason, expected",
    [
        ("end_turn", "end_turn"),  # the fake sends STOP
        ("max_tokens", "max_tokens"),  # MAX_TOKENS
        ("SAFETY", "content_filter"),  # unmapped values are sent as they are
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "other"),
        ("MALFORMED_FUNCTION_CALL", "other"),
    ],
)
def test_finish_reasons_are_normalised(
    upstream: FakeUpstream, stop_reason: str, expected: str
) -> None:
    upstream.push(Script(tokens=["x"], stop_reason=stop_reason))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert isinstance(events[-1], StreamEnd) and events[-1].stop_reason == expected


def test_native_thinking(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["Let me ", "think."], tokens=["Answer", "!"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        ThinkingDelta("Let me "),
        ThinkingDelta("think."),
        TextDelta("Answer"),
        TextDelta("!"),
        StreamEnd(
            "end_turn", Usage(input_tokens=12, output_tokens=4, thinking_tokens=2), "fake-claude"
        ),
    ]


def test_inline_thinking_passes_through_as_text(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["hmm"], thinking_mode="inline", tokens=["Answer"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        TextDelta("<thinking>"),
        TextDelta("hmm"),
        TextDelta("</thinking>"),
        TextDelta("Answer"),
        StreamEnd(
            "end_turn", Usage(input_tokens=12, output_tokens=4, thinking_tokens=0), "fake-claude"
        ),
    ]


@pytest.mark.parametrize(
    "fail, code, status",
    [
        ("error_event", "upstream_error", 503),  # an unframed JSON tail, alone
        ("error_data", "upstream_error", 503),  # data: {"error": ...}
        ("hang", "upstream_timeout", None),  # headers, then nothing
        ("hang_headers", "upstream_timeout", None),  # not even headers
        ("empty", "upstream_incomplete", None),  # a 200 with an empty body
        ("cut", "upstream_incomplete", None),  # the connection dropped mid-body
        ("no_stop", "upstream_incomplete", None),  # a clean end with no finishReason
    ],
)
def test_fail_modes(upstream: FakeUpstream, fail: str, code: str, status: int | None) -> None:
    upstream.push(Script(fail=fail))
    started = time.monotonic()
    events, error = run_provider(settings_for(upstream.url), read_timeout=0.3)
    assert events == []
    assert error is not None and error.code == code and error.status == status
    assert time.monotonic() - started < 2


def test_fail_no_text_is_a_clean_end_with_no_deltas(upstream: FakeUpstream) -> None:
    # The provider reports a clean end; the chain (below) is what calls it empty.
    upstream.push(Script(fail="no_text", stop_reason="max_tokens"))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        StreamEnd(
            "max_tokens", Usage(input_tokens=12, output_tokens=0, thinking_tokens=0), "fake-claude"
        )
    ]


@pytest.mark.parametrize(
    "fail_mode, code, status",
    [
        ("error_event", "upstream_error", 503),
        ("error_data", "upstream_error", 503),
        ("cut", "upstream_incomplete", None),
        ("hang", "upstream_timeout", None),
        ("no_stop", "upstream_incomplete", None),
    ],
)
@pytest.mark.parametrize("fail_after", [0, 2, 3])
def test_failure_after_some_pieces_keeps_them(
    upstream: FakeUpstream, fail_after: int, fail_mode: str, code: str, status: int | None
) -> None:
    # fail_after=3 is every piece: the failure replaces the finishReason event.
    tokens = ["a ", "b ", "c "]
    upstream.push(Script(tokens=tokens, fail_after=fail_after, fail_mode=fail_mode))
    events, error = run_provider(settings_for(upstream.url), read_timeout=0.3)
    assert events == [TextDelta(token) for token in tokens[:fail_after]]
    assert error is not None and error.code == code and error.status == status


def test_failure_after_a_thought_counts_the_thought(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["hm"], tokens=["a", "b"], fail_after=2, fail_mode="error_event"))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [ThinkingDelta("hm"), TextDelta("a")]
    assert error is not None and error.code == "upstream_error"


def test_fail_after_beyond_the_reply_never_fires(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["a", "b"], fail_after=5, fail_mode="cut"))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events[:-1] == [TextDelta("a"), TextDelta("b")]
    assert isinstance(events[-1], StreamEnd) and events[-1].stop_reason == "end_turn"


# -- c. through the chain, on the I/O loop ------------------------------------------------


def gemini_at(url: str, name: str = "gemini") -> GeminiProvider:
    return named(GeminiProvider(settings_for(url), "test-key"), name)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(Script(fail="hang"), id="headers-but-no-event"),
        pytest.param(Script(fail="hang_headers"), id="no-headers"),
        pytest.param(Script(tokens=["late"], ttft=3), id="first-piece-too-late"),
    ],
)
def test_no_first_chunk_in_time_is_a_timeout(upstream: FakeUpstream, script: Script) -> None:
    upstream.push(script)
    run = run_chain([gemini_at(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=5))

    assert run.items == [ChainFailed(None, committed=False)]
    assert run.outcomes == ["upstream_timeout"]
    assert 250 <= run.chain.attempts[0].ms < 1500
    assert run.seconds < 2
    # The upstream request was closed, not left running.
    assert upstream.requests[0].client_closed.wait(2)


def test_idle_gap_after_the_first_chunk_fails_committed(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["one ", "two ", "three "], fail_after=2, fail_mode="hang"))
    fallback = anthropic_at(upstream.url)
    run = run_chain(
        [gemini_at(upstream.url), fallback], Timeouts(connect=1, first_chunk=5, idle=0.3)
    )

    assert run.items[:-1] == [Chunk("one "), Chunk("two ")]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == "upstream_timeout"
    assert run.outcomes == ["upstream_timeout"]  # never retried elsewhere
    assert len(upstream.requests) == 1
    assert run.seconds < 2
    assert upstream.requests[0].client_closed.wait(2)


def test_slow_but_live_stream_is_not_cut(upstream: FakeUpstream) -> None:
    tokens = [f"t{i} " for i in range(8)]
    upstream.push(Script(tokens=tokens, interval=0.15))
    run = run_chain([gemini_at(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=0.6))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == "".join(tokens)
    assert run.outcomes == ["ok"]
    assert run.seconds >= 1.0  # well past first_chunk: only gaps between chunks count
    assert run.chain.usage == Usage(input_tokens=12, output_tokens=8, thinking_tokens=0)
    assert run.chain.stop_reason == "end_turn"
    assert run.chain.provider == "gemini" and run.chain.model == "fake-claude"


@pytest.mark.parametrize(
    "first, outcome, status",
    [
        (Script(fail="503"), "upstream_status", 503),
        (Script(fail="429"), "upstream_status", 429),
        (Script(fail="error_event"), "upstream_error", 503),
        (Script(fail="error_data"), "upstream_error", 503),
        (Script(fail="empty"), "upstream_incomplete", None),
        (Script(fail="cut"), "upstream_incomplete", None),
        (Script(fail="no_text"), "upstream_empty", None),
        (
            Script(raw=[(FIXTURES / "prompt_blocked.sse").read_bytes()]),
            "upstream_error",
            None,
        ),
    ],
)
def test_failure_before_the_first_chunk_falls_through(
    upstream: FakeUpstream, first: Script, outcome: str, status: int | None
) -> None:
    upstream.push(first, Script(tokens=["from ", "claude"], model="claude-fallback"))
    run = run_chain(
        [gemini_at(upstream.url), anthropic_at(upstream.url)],
        Timeouts(connect=1, first_chunk=2, idle=2),
    )

    assert run.items == [Chunk("from "), Chunk("claude"), ChainSucceeded()]
    assert run.outcomes == [outcome, "ok"]
    assert [attempt.provider for attempt in run.chain.attempts] == ["gemini", "anthropic"]
    assert [attempt.status for attempt in run.chain.attempts] == [status, None]
    assert run.chain.provider == "anthropic" and run.chain.model == "claude-fallback"
    assert [request.path.split("?")[0] for request in upstream.requests] == [
        "/v1beta/models/gemini-test:streamGenerateContent",
        "/v1/messages",
    ]


def test_error_tail_after_text_fails_committed(upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=awkward_chunks((FIXTURES / "error_tail.sse").read_bytes())))
    run = run_chain(
        [gemini_at(upstream.url), anthropic_at(upstream.url)],
        Timeouts(connect=1, first_chunk=2, idle=2),
    )

    assert run.text == "Okay, so the first"
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == "upstream_error"
    assert run.outcomes == ["upstream_error"]
    assert len(upstream.requests) == 1  # the user saw Gemini's text: no retry elsewhere


def test_native_thinking_is_tagged_by_the_chain(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["weigh ", "options"], tokens=["Done."]))
    run = run_chain([gemini_at(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.text == "<thinking>weigh options</thinking>Done."
    assert run.items[-1] == ChainSucceeded()
    assert run.chain.usage == Usage(input_tokens=12, output_tokens=3, thinking_tokens=2)


def test_thinking_fixture_through_the_chain(upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=awkward_chunks((FIXTURES / "thinking.sse").read_bytes())))
    run = run_chain([gemini_at(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.text == (
        "<thinking>**Applying Euclid**\n\n1071 = 2 \u00d7 462 + 147"
        "\n462 = 3 \u00d7 147 + 21; 147 = 7 \u00d7 21. So the GCD is 21.</thinking>"
        "The greatest common divisor of 1071 and 462 is **21**."
    )
    assert run.chain.stop_reason == "end_turn" and run.chain.model == FLASH_25
    assert run.chain.usage == Usage(input_tokens=18, output_tokens=145, thinking_tokens=131)
