"""OllamaProvider over real HTTP, against devtools.fake_upstream on loopback.

Four layers:
- recorded-style streams (tests/fixtures/ollama/*.ndjson, written from Ollama's
  documented `/api/chat` streaming format) replayed byte for byte through the
  fake's `raw` script, split at awkward places, into `OllamaProvider.stream`;
- the fake's normal scripts: what the provider sends, status codes, thinking,
  every failure the fake can play;
- the provider inside `assistant.chain.Chain` on the app's I/O loop, where the
  connect / first-chunk / idle timeouts live;
- the whole endpoint: Ollama is enabled by OLLAMA_BASE_URL alone, with no key.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import pytest

from assistant.chain import ChainFailed, ChainSucceeded, Chunk
from assistant.config import ProviderSettings, Settings, Timeouts
from assistant.providers import configured_providers, with_fresh_key
from assistant.providers.base import (
    Event,
    Prompt,
    ProviderError,
    StreamEnd,
    TextDelta,
    ThinkingDelta,
    Usage,
)
from assistant.providers.ollama import OllamaProvider
from assistant.request import Turn
from devtools.fake_upstream import FAIL_MODES, FakeUpstream, Script

from .conftest import ask, sse_events
from .provider_support import (
    FAIL_CODES,
    FAIL_MODE_CODES,
    FAKE_MODEL,
    anthropic_at,
    first_multibyte,
    named,
    one_byte_reads,
    provider_settings,
    run_chain,
    split_at,
    stream_events,
)
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

FIXTURES = Path(__file__).parent / "fixtures" / "ollama"


def settings_for(url: str, **changes: object) -> ProviderSettings:
    return provider_settings("ollama", url, "llama3.2", "", **changes)


# Everything an OllamaProvider (no key) yielded, and the ProviderError it ended with (if any).
run_provider = functools.partial(stream_events, OllamaProvider, key="")


def code_of(error: ProviderError | None) -> str | None:
    return error.code if error else None


# -- a. recorded-style streams -----------------------------------------------------------


def awkward_chunks(data: bytes) -> list[bytes]:
    """The bytes cut mid-line, between `}` and its LF, inside UTF-8 characters, and mid-file."""
    cuts = {
        data.find(b'"content"') + 4,
        data.index(b"\n"),  # the first line's LF starts the second read
        data.index(b"\n") + 1,
        len(data) // 2,
        len(data) - 5,
    }
    start = first_multibyte(data)
    if start is not None:
        cuts.add(start + 1)
    if b"\xe2\x80\xa8" in data:  # U+2028, cut inside it
        cuts.add(data.index(b"\xe2\x80\xa8") + 2)
    return split_at(data, cuts)


REPLAYS: dict[str, tuple[list[Event], str | None]] = {
    # Raw U+2028 / U+2029 (a server that does not escape them) and Go's \u003c escapes.
    "text_basic.ndjson": (
        [
            TextDelta("Hello"),
            TextDelta(", café € 😀"),
            TextDelta(" line\u2028sep\u2029end."),
            TextDelta(" <b>&</b>"),
            StreamEnd("end_turn", Usage(input_tokens=26, output_tokens=5), "llama3.2"),
        ],
        None,
    ),
    "thinking.ndjson": (
        [
            ThinkingDelta("The user asks for 17 \u00d7 23."),
            ThinkingDelta("\n17 \u00d7 20 = 340, 17 \u00d7 3 = 51"),
            ThinkingDelta(" → 391."),
            TextDelta("17 \u00d7 23 = "),
            TextDelta("**391**"),
            StreamEnd("end_turn", Usage(input_tokens=18, output_tokens=47), "qwen3:8b"),
        ],
        None,
    ),
    "error_after_text.ndjson": ([TextDelta("Partial"), TextDelta(" answer, ")], "upstream_error"),
    "error_only.ndjson": ([], "upstream_error"),
    "incomplete.ndjson": ([TextDelta("Cut"), TextDelta(" short")], "upstream_incomplete"),
    "length.ndjson": (
        [
            TextDelta("One, "),
            TextDelta("two, "),
            TextDelta("three"),
            StreamEnd("max_tokens", Usage(input_tokens=31, output_tokens=16), "llama3.2"),
        ],
        None,
    ),
    # An older server: no done_reason (read as a normal stop), no prompt_eval_count.
    "done_no_reason.ndjson": (
        [
            TextDelta("Old "),
            TextDelta("server."),
            StreamEnd("end_turn", Usage(input_tokens=None, output_tokens=3), "mistral:7b"),
        ],
        None,
    ),
}


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(path.name for path in FIXTURES.glob("*.ndjson")) == sorted(REPLAYS)


def test_fixtures_keep_their_raw_bytes() -> None:
    # Guards against an editor or git normalising the files.
    basic = (FIXTURES / "text_basic.ndjson").read_bytes()
    assert "\u2028".encode() in basic and "\u2029".encode() in basic
    assert b"\\u003cb\\u003e" in basic
    for path in FIXTURES.glob("*.ndjson"):
        data = path.read_bytes()
        assert b"\r" not in data and data.endswith(b"\n"), path.name


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_fixture_replay(upstream: FakeUpstream, name: str) -> None:
    data = (FIXTURES / name).read_bytes()
    chunks = awkward_chunks(data)
    assert b"".join(chunks) == data and len(chunks) >= 4
    upstream.push(Script(raw=chunks, interval=0.01))  # a pause so each piece is its own read

    events, error = run_provider(settings_for(upstream.url))

    expected_events, expected_code = REPLAYS[name]
    assert events == expected_events
    assert code_of(error) == expected_code
    if error is not None:
        assert error.message and "error was encountered" not in error.message
        assert "runner" not in error.message


def test_the_upstream_error_text_is_kept_for_the_log_only(upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=[(FIXTURES / "error_after_text.ndjson").read_bytes()]))
    _, error = run_provider(settings_for(upstream.url))
    assert error is not None
    assert error.detail == "an error was encountered while running the model: unexpected EOF"
    assert error.message == "The model provider reported an error."


def test_fixture_replay_one_byte_per_http_chunk(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "thinking.ndjson").read_bytes()
    upstream.push(Script(raw=one_byte_reads(data)))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == REPLAYS["thinking.ndjson"][0]


def test_crlf_line_ends_and_blank_lines_are_tolerated(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "length.ndjson").read_bytes().replace(b"\n", b"\r\n\r\n")
    upstream.push(Script(raw=awkward_chunks(data), interval=0.01))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == REPLAYS["length.ndjson"][0]


def test_a_done_line_without_its_line_end_still_finishes(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "text_basic.ndjson").read_bytes().rstrip(b"\n")
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == REPLAYS["text_basic.ndjson"][0]


def test_lines_after_done_are_not_read(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "length.ndjson").read_bytes() + b"not json at all\n"
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == REPLAYS["length.ndjson"][0]


@pytest.mark.parametrize(
    "bad", [b"<html>502 Bad Gateway</html>\n", b'["not", "an", "object"]\n'], ids=["html", "array"]
)
def test_a_line_that_is_not_a_json_object_is_a_protocol_error(
    upstream: FakeUpstream, bad: bytes
) -> None:
    lines = (FIXTURES / "length.ndjson").read_bytes().splitlines(keepends=True)
    upstream.push(Script(raw=[lines[0], bad, *lines[1:]]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("One, ")]
    assert code_of(error) == "upstream_protocol"


def test_a_body_cut_in_the_middle_of_a_line_is_incomplete(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "text_basic.ndjson").read_bytes()
    cut = data.index(b"\n") + 1 + 40  # inside the second line
    upstream.push(Script(raw=[data[:cut]]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("Hello")]
    assert code_of(error) == "upstream_incomplete"


# -- b. the request, statuses and scripted streams ----------------------------------------


def test_request_body_and_headers(upstream: FakeUpstream) -> None:
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
    settings = settings_for(upstream.url, model="qwen3:8b", max_tokens=777, temperature=0.3)
    events, error = run_provider(settings, prompt)
    assert error is None and isinstance(events[-1], StreamEnd)

    (request,) = upstream.requests
    assert request.path == "/api/chat"
    assert request.headers["content-type"] == "application/json"
    assert not {"authorization", "x-api-key", "x-goog-api-key"} & set(request.headers)
    assert request.body == {
        "model": "qwen3:8b",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "first\n\nsecond"},
            {"role": "assistant", "content": "a1\n\na2"},
            {"role": "user", "content": "now"},
        ],
        "stream": True,
        "options": {"num_predict": 777, "temperature": 0.3},
    }


@pytest.mark.parametrize("system", [None, ""], ids=["none", "empty"])
def test_no_system_message_temperature_or_think_unless_set(
    upstream: FakeUpstream, system: str | None
) -> None:
    run_provider(settings_for(upstream.url), Prompt(system=system, turns=(Turn("user", "hi"),)))
    body = upstream.requests[0].body
    assert body is not None
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["options"] == {"num_predict": 1024}
    assert "think" not in body


def test_settings_from_env_thinking_and_a_zero_temperature(upstream: FakeUpstream) -> None:
    env = {
        "OLLAMA_BASE_URL": upstream.url + "/",
        "OLLAMA_MODEL": "deepseek-r1:7b",
        "OLLAMA_MAX_TOKENS": "8000",
        "OLLAMA_TEMPERATURE": "0",
        "OLLAMA_THINKING": "true",
        "OLLAMA_KEY_NAME": "SOME_KEY",  # ignored: Ollama needs no key
    }
    settings = ProviderSettings.from_env(env, "ollama")
    assert settings.key_name == ""
    events, error = run_provider(settings)
    assert error is None and events

    (request,) = upstream.requests
    assert request.path == "/api/chat"  # trailing slash of the base URL dropped
    body = request.body
    assert body is not None
    assert body["think"] is True
    assert body["model"] == "deepseek-r1:7b"
    assert body["options"] == {"num_predict": 8000, "temperature": 0.0}


@pytest.mark.parametrize("status", [404, 500, 503])
def test_error_status(upstream: FakeUpstream, status: int) -> None:
    # Ollama answers an unknown model with 404 {"error": "model 'x' not found"};
    # the fake sends the same shape.
    upstream.push(Script(fail=str(status)))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None
    assert error.code == "upstream_status"
    assert error.status == status
    assert error.message == "The model provider refused the request."
    assert "fake upstream failure" not in error.message
    assert error.detail == f'{{"error": "fake upstream failure {status}"}}'  # for the log only


def test_scripted_text_stream(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["Hel", "lo ", "wörld"], model="gemma3:4b", input_tokens=30))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        TextDelta("Hel"),
        TextDelta("lo "),
        TextDelta("wörld"),
        StreamEnd("end_turn", Usage(input_tokens=30, output_tokens=3), "gemma3:4b"),
    ]


@pytest.mark.parametrize(
    "scripted, expected",
    [("max_tokens", "max_tokens"), ("stop_sequence", "end_turn"), ("end_turn", "end_turn")],
)
def test_stop_reasons(upstream: FakeUpstream, scripted: str, expected: str) -> None:
    upstream.push(Script(tokens=["x"], stop_reason=scripted))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events[-1] == StreamEnd(expected, Usage(input_tokens=12, output_tokens=1), FAKE_MODEL)


def test_echo_sees_the_last_user_turn(upstream: FakeUpstream) -> None:
    upstream.push(Script(echo=True))
    prompt = Prompt(system="s", turns=(Turn("user", "one"), Turn("user", "two")))
    events, error = run_provider(settings_for(upstream.url), prompt)
    assert error is None
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "You said: one\n\ntwo"


def test_native_thinking(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["Let me ", "think."], tokens=["Answer", "!"], model="qwen3"))
    events, error = run_provider(settings_for(upstream.url, thinking=True))
    assert error is None
    assert events == [
        ThinkingDelta("Let me "),
        ThinkingDelta("think."),
        TextDelta("Answer"),
        TextDelta("!"),
        StreamEnd("end_turn", Usage(input_tokens=12, output_tokens=4), "qwen3"),
    ]
    assert upstream.requests[0].body is not None and upstream.requests[0].body["think"] is True


def test_inline_thinking_passes_through_as_text(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["hmm"], thinking_mode="inline", tokens=["Answer"]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        TextDelta("<thinking>"),
        TextDelta("hmm"),
        TextDelta("</thinking>"),
        TextDelta("Answer"),
        StreamEnd("end_turn", Usage(input_tokens=12, output_tokens=4), FAKE_MODEL),
    ]


# Every `fail` the fake knows, before any piece. hang / hang_headers end on the read timeout.
FAILS_BEFORE_TEXT: dict[str, tuple[list[Event], str | None]] = {
    **{fail: ([], code) for fail, code in FAIL_CODES.items()},
    # A clean end with no text: the provider reports it; the chain calls it empty.
    "no_text": ([StreamEnd("end_turn", Usage(12, 0), FAKE_MODEL)], None),
}


def test_every_fail_is_covered() -> None:
    from devtools.fake_upstream import FAILS

    assert sorted(FAILS_BEFORE_TEXT) == sorted(FAILS)


@pytest.mark.parametrize("fail", sorted(FAILS_BEFORE_TEXT))
def test_failure_before_text(upstream: FakeUpstream, fail: str) -> None:
    upstream.push(Script(fail=fail))
    events, error = run_provider(settings_for(upstream.url), read_timeout=0.2)
    expected_events, expected_code = FAILS_BEFORE_TEXT[fail]
    assert events == expected_events
    assert code_of(error) == expected_code


def test_every_fail_mode_is_covered() -> None:
    assert sorted(FAIL_MODE_CODES) == sorted(FAIL_MODES)


@pytest.mark.parametrize("fail_after", [0, 2, 3], ids=["before-any", "mid", "after-last"])
@pytest.mark.parametrize("fail_mode", sorted(FAIL_MODE_CODES))
def test_failure_after_text_keeps_the_text(
    upstream: FakeUpstream, fail_mode: str, fail_after: int
) -> None:
    tokens = ["a ", "b ", "c "]
    upstream.push(Script(tokens=tokens, fail_after=fail_after, fail_mode=fail_mode))
    events, error = run_provider(settings_for(upstream.url), read_timeout=0.2)
    assert events == [TextDelta(token) for token in tokens[:fail_after]]
    assert code_of(error) == FAIL_MODE_CODES[fail_mode]


def test_fail_after_counts_thinking_pieces(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["t1", "t2"], tokens=["a", "b"], fail_after=3))
    events, error = run_provider(settings_for(upstream.url, thinking=True))
    assert events == [ThinkingDelta("t1"), ThinkingDelta("t2"), TextDelta("a")]
    assert code_of(error) == "upstream_error"


def test_fail_after_beyond_the_reply_never_fires(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["a", "b"], fail_after=5, fail_mode="cut"))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == [
        TextDelta("a"),
        TextDelta("b"),
        StreamEnd("end_turn", Usage(12, 2), FAKE_MODEL),
    ]


# -- c. through the chain, on the I/O loop ------------------------------------------------


def ollama_at(url: str, name: str = "ollama") -> OllamaProvider:
    return named(OllamaProvider(settings_for(url), ""), name)


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(Script(fail="hang"), id="headers-then-silence"),
        pytest.param(Script(fail="hang_headers"), id="no-headers"),
        pytest.param(Script(tokens=["late"], ttft=3), id="first-piece-too-late"),
    ],
)
def test_no_first_chunk_in_time_is_a_timeout(upstream: FakeUpstream, script: Script) -> None:
    upstream.push(script)
    run = run_chain([ollama_at(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=5))

    assert run.items == [ChainFailed(None, committed=False)]
    assert run.outcomes == ["upstream_timeout"]
    assert 250 <= run.chain.attempts[0].ms < 1500
    assert run.seconds < 2
    # The upstream request was closed, not left running.
    assert upstream.requests[0].client_closed.wait(2)


def test_idle_gap_after_the_first_chunk_fails_committed(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["one ", "two ", "three "], fail_after=2, fail_mode="hang"))
    run = run_chain([ollama_at(upstream.url)], Timeouts(connect=1, first_chunk=5, idle=0.3))

    assert run.items[:-1] == [Chunk("one "), Chunk("two ")]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == "upstream_timeout"
    assert run.outcomes == ["upstream_timeout"]
    assert run.seconds < 2
    assert upstream.requests[0].client_closed.wait(2)


def test_slow_but_live_stream_is_not_cut(upstream: FakeUpstream) -> None:
    tokens = [f"t{i} " for i in range(6)]
    upstream.push(Script(tokens=tokens, ttft=0.2, interval=0.15, model="llama3.2:1b"))
    run = run_chain([ollama_at(upstream.url)], Timeouts(connect=1, first_chunk=0.3, idle=0.5))

    assert run.items[-1] == ChainSucceeded()
    assert run.text == "".join(tokens)
    assert run.outcomes == ["ok"]
    assert run.seconds >= 0.9  # well past first_chunk: only gaps between chunks count
    assert run.chain.usage == Usage(input_tokens=12, output_tokens=6)
    assert run.chain.stop_reason == "end_turn"
    assert (run.chain.provider, run.chain.model) == ("ollama", "llama3.2:1b")


def test_error_after_text_fails_committed(upstream: FakeUpstream) -> None:
    upstream.push(Script(tokens=["a ", "b "], fail_after=1))
    run = run_chain(
        [ollama_at(upstream.url), anthropic_at(upstream.url)], Timeouts(1, first_chunk=2, idle=2)
    )
    assert run.items[:-1] == [Chunk("a ")]
    failed = run.items[-1]
    assert isinstance(failed, ChainFailed) and failed.committed
    assert failed.error is not None and failed.error.code == "upstream_error"
    assert run.outcomes == ["upstream_error"]
    assert len(upstream.requests) == 1  # never retried elsewhere


@pytest.mark.parametrize(
    "script, outcome",
    [
        (Script(fail="404"), "upstream_status"),
        (Script(fail="error_event"), "upstream_error"),
        (Script(fail="no_text"), "upstream_empty"),
        (Script(fail="empty"), "upstream_incomplete"),
        (Script(fail="cut"), "upstream_incomplete"),
    ],
    ids=["404", "error-line", "no-text", "empty", "cut"],
)
def test_failure_before_text_falls_through(
    upstream: FakeUpstream, script: Script, outcome: str
) -> None:
    upstream.push(script, Script(tokens=["from ", "anthropic"], model="fake-claude"))
    run = run_chain(
        [ollama_at(upstream.url), anthropic_at(upstream.url)], Timeouts(1, first_chunk=2, idle=2)
    )
    assert run.items == [Chunk("from "), Chunk("anthropic"), ChainSucceeded()]
    assert run.outcomes == [outcome, "ok"]
    assert [request.path for request in upstream.requests] == ["/api/chat", "/v1/messages"]
    assert run.chain.provider == "anthropic"


def test_ollama_answers_when_the_first_provider_fails(upstream: FakeUpstream) -> None:
    upstream.push(Script(fail="529"), Script(tokens=["local ", "answer"]))
    run = run_chain(
        [anthropic_at(upstream.url), ollama_at(upstream.url)], Timeouts(1, first_chunk=2, idle=2)
    )
    assert run.items == [Chunk("local "), Chunk("answer"), ChainSucceeded()]
    assert run.outcomes == ["upstream_status", "ok"]
    assert (run.chain.provider, run.chain.model) == ("ollama", FAKE_MODEL)


def test_a_401_from_ollama_reads_no_key_and_falls_through(upstream: FakeUpstream) -> None:
    # Ollama behind an authenticating proxy: there is no key of ours to re-read.
    settings = Settings.from_env({"ASSISTANT_PROVIDERS": "ollama"})
    upstream.push(Script(fail="401"), Script(tokens=["second"]))
    run = run_chain(
        [ollama_at(upstream.url), ollama_at(upstream.url, "ollama-2")],
        Timeouts(1, first_chunk=2, idle=2),
        refresh_key=functools.partial(with_fresh_key, settings),
    )
    assert run.outcomes == ["upstream_status", "ok"]  # no second try of the same one
    assert [attempt.status for attempt in run.chain.attempts] == [401, None]
    assert len(upstream.requests) == 2
    assert run.text == "second"


def test_native_thinking_is_tagged_by_the_chain(upstream: FakeUpstream) -> None:
    upstream.push(Script(thinking=["weigh ", "options"], tokens=["Done."]))
    run = run_chain([ollama_at(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.text == "<thinking>weigh options</thinking>Done."
    assert run.items[-1] == ChainSucceeded()


def test_a_fixture_through_the_chain(upstream: FakeUpstream) -> None:
    data = (FIXTURES / "thinking.ndjson").read_bytes()
    upstream.push(Script(raw=awkward_chunks(data), interval=0.01))
    run = run_chain([ollama_at(upstream.url)], Timeouts(connect=1, first_chunk=2, idle=2))
    assert run.text == (
        "<thinking>The user asks for 17 \u00d7 23.\n17 \u00d7 20 = 340, 17 \u00d7 3 = 51"
        " → 391.</thinking>17 \u00d7 23 = **391**"
    )
    assert run.items[-1] == ChainSucceeded()
    assert (run.chain.model, run.chain.stop_reason) == ("qwen3:8b", "end_turn")
    assert run.chain.usage == Usage(input_tokens=18, output_tokens=47)


# -- d. configuration and the whole endpoint ----------------------------------------------


def test_configured_only_with_a_base_url_and_never_with_a_key(monkeypatch) -> None:
    def no_key_store(settings: Settings) -> Any:
        raise AssertionError("Ollama must not look for a key")

    monkeypatch.setattr("assistant.keys.key_store", no_key_store)
    env = {"ASSISTANT_PROVIDERS": "ollama", "SECRET_MANAGER": "true", "SECRETS_PROJECT": "p"}

    providers, skipped = configured_providers(Settings.from_env(env))
    assert providers == []
    assert skipped == {"ollama": "no base URL (OLLAMA_BASE_URL is not set)"}

    env["OLLAMA_BASE_URL"] = "http://127.0.0.1:11434/"
    providers, skipped = configured_providers(Settings.from_env(env))
    assert skipped == {}
    (provider,) = providers
    assert isinstance(provider, OllamaProvider)
    assert provider.api_key == ""
    assert provider.settings.base_url == "http://127.0.0.1:11434"
    assert with_fresh_key(Settings.from_env(env), provider) is None


def test_endpoint_streams_from_ollama_without_any_key(client, upstream: FakeUpstream) -> None:
    os.environ["ASSISTANT_PROVIDERS"] = "anthropic,ollama"  # anthropic has no key: skipped
    os.environ["OLLAMA_BASE_URL"] = upstream.url
    os.environ["OLLAMA_MODEL"] = "qwen3:8b"
    upstream.push(Script(thinking=["weighing ", "it"], tokens=["Here ", "it is."], model="qwen3"))

    response = ask(client, "What now?")
    assert response.status_code == 200
    events = sse_events(response.get_data())
    chunks = [event["chunk"] for event in events[:-2]]
    assert chunks == ["<thinking>weighing ", "it", "</thinking>Here ", "it is."]
    final, done = events[-2:]
    assert done == "[DONE]"
    assert final["answer"] == "<thinking>weighing it</thinking>Here it is."
    metadata = final["metadata"]
    assert metadata["provider"] == "ollama"
    assert metadata["model"] == "qwen3"
    assert metadata["usage"] == {"input_tokens": 12, "output_tokens": 4}
    assert metadata["stop_reason"] == "end_turn"
    assert [(a["name"], a["outcome"]) for a in metadata["attempts"]] == [("ollama", "ok")]

    (request,) = upstream.requests
    assert request.path == "/api/chat"
    assert not {"authorization", "x-api-key"} & set(request.headers)
    assert request.body is not None
    assert request.body["model"] == "qwen3:8b"
    assert request.body["messages"][-1] == {"role": "user", "content": "What now?"}
    assert "think" not in request.body  # OLLAMA_THINKING is off


def test_endpoint_without_ollama_base_url_has_no_provider(client, upstream: FakeUpstream) -> None:
    os.environ["ASSISTANT_PROVIDERS"] = "ollama"
    response = ask(client)
    assert response.status_code == 409
    assert response.get_json()["code"] == "no_provider"
    assert upstream.requests == []


def test_endpoint_falls_through_to_ollama(client, upstream: FakeUpstream) -> None:
    os.environ["ASSISTANT_PROVIDERS"] = "anthropic,ollama"
    os.environ["ANTHROPIC_BASE_URL"] = upstream.url
    os.environ["ANTHROPIC_API_KEY"] = "test-key"
    os.environ["OLLAMA_BASE_URL"] = upstream.url
    upstream.push(Script(fail="500"), Script(tokens=["local"]))

    final = sse_events(ask(client).get_data())[-2]
    assert final["answer"] == "local"
    assert [(a["name"], a["outcome"]) for a in final["metadata"]["attempts"]] == [
        ("anthropic", "upstream_status"),
        ("ollama", "ok"),
    ]
    assert [request.path for request in upstream.requests] == ["/v1/messages", "/api/chat"]


def test_endpoint_ollama_error_line_before_text_is_a_502(client, upstream: FakeUpstream) -> None:
    os.environ["ASSISTANT_PROVIDERS"] = "ollama"
    os.environ["OLLAMA_BASE_URL"] = upstream.url
    upstream.push(Script(fail="error_event"))
    response = ask(client)
    assert response.status_code == 502
    body = response.get_json()
    assert body["code"] == "providers_failed"
    assert [(a["name"], a["outcome"]) for a in body["attempts"]] == [("ollama", "upstream_error")]
    assert "model runner" not in response.get_data(as_text=True)
