"""What only OllamaProvider does, over real HTTP against devtools.fake_upstream.

What every provider must do (fixture replays, statuses, thinking, every failure of the
fake, the chain's rules) is tested once for all four in test_all_providers.py; what
Ollama must come to there (its recorded streams in tests/fixtures/ollama/*.ndjson,
from the documented `/api/chat` format; its body, with no key header) is data in
provider_cases.OLLAMA. Here, what is Ollama's own:
- NDJSON: raw bytes kept, CRLF and blank lines, a last line without its line end,
  nothing read after `done`, a line that is not a JSON object, a body cut mid-line;
- `{"error": ...}` lines and error answers, logged as they came;
- no key: enabled by OLLAMA_BASE_URL alone, a 401 re-reads nothing, and the whole
  endpoint streams from it with no key set.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest

from assistant.config import ProviderSettings, Settings, Timeouts
from assistant.providers import configured_providers, with_fresh_key
from assistant.providers.base import TextDelta
from assistant.providers.ollama import OllamaProvider
from devtools.fake_upstream import FakeUpstream, Script

from .conftest import ask, sse_events
from .provider_cases import OLLAMA as CASE
from .provider_support import awkward_ndjson_chunks, run_chain, stream_events
from .provider_support import upstream_fixture as upstream_fixture  # the `upstream` fixture

settings_for = CASE.settings
# Everything an OllamaProvider (no key) yielded, and the ProviderError it ended with (if any).
run_provider = functools.partial(stream_events, OllamaProvider, key="")


# -- a. NDJSON as it comes ----------------------------------------------------------------


def test_fixtures_keep_their_raw_bytes() -> None:
    # Guards against an editor or git normalising the files.
    basic = CASE.fixture("text_basic.ndjson")
    assert "\u2028".encode() in basic and "\u2029".encode() in basic
    assert b"\\u003cb\\u003e" in basic
    for name in CASE.replays:
        data = CASE.fixture(name)
        assert b"\r" not in data and data.endswith(b"\n"), name


def test_the_upstream_error_text_is_kept_for_the_log_only(upstream: FakeUpstream) -> None:
    upstream.push(Script(raw=[CASE.fixture("error_after_text.ndjson")]))
    _, error = run_provider(settings_for(upstream.url))
    assert error is not None
    assert error.detail == "an error was encountered while running the model: unexpected EOF"
    assert error.message == "The model provider reported an error."


def test_crlf_line_ends_and_blank_lines_are_tolerated(upstream: FakeUpstream) -> None:
    data = CASE.fixture("length.ndjson").replace(b"\n", b"\r\n\r\n")
    upstream.push(Script(raw=awkward_ndjson_chunks(data), interval=0.01))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == CASE.replays["length.ndjson"].events


def test_a_done_line_without_its_line_end_still_finishes(upstream: FakeUpstream) -> None:
    data = CASE.fixture("text_basic.ndjson").rstrip(b"\n")
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == CASE.replays["text_basic.ndjson"].events


def test_an_error_field_that_is_null_is_no_error(upstream: FakeUpstream) -> None:
    data = CASE.fixture("text_basic.ndjson").replace(b'"model"', b'"error": null, "model"')
    assert data.count(b'"error": null') > 2
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == CASE.replays["text_basic.ndjson"].events


def test_lines_after_done_are_not_read(upstream: FakeUpstream) -> None:
    data = CASE.fixture("length.ndjson") + b"not json at all\n"
    upstream.push(Script(raw=[data]))
    events, error = run_provider(settings_for(upstream.url))
    assert error is None
    assert events == CASE.replays["length.ndjson"].events


@pytest.mark.parametrize(
    "bad", [b"<html>502 Bad Gateway</html>\n", b'["not", "an", "object"]\n'], ids=["html", "array"]
)
def test_a_line_that_is_not_a_json_object_is_a_protocol_error(
    upstream: FakeUpstream, bad: bytes
) -> None:
    lines = CASE.fixture("length.ndjson").splitlines(keepends=True)
    upstream.push(Script(raw=[lines[0], bad, *lines[1:]]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("One, ")]
    assert error is not None and error.code == "upstream_protocol"


def test_a_body_cut_in_the_middle_of_a_line_is_incomplete(upstream: FakeUpstream) -> None:
    data = CASE.fixture("text_basic.ndjson")
    cut = data.index(b"\n") + 1 + 40  # inside the second line
    upstream.push(Script(raw=[data[:cut]]))
    events, error = run_provider(settings_for(upstream.url))
    assert events == [TextDelta("Hello")]
    assert error is not None and error.code == "upstream_incomplete"


# -- b. the request and error answers -----------------------------------------------------


def test_settings_from_env_never_name_a_key() -> None:
    env = {"OLLAMA_BASE_URL": "http://127.0.0.1:11434/", "OLLAMA_KEY_NAME": "SOME_KEY"}
    assert ProviderSettings.from_env(env, "ollama").key_name == ""  # Ollama needs no key


@pytest.mark.parametrize(
    "status, message",
    [
        (404, "model 'llama3.2' not found"),  # what Ollama answers for an unknown model
        (500, "fake upstream failure 500"),
        (503, "fake upstream failure 503"),
    ],
)
def test_an_error_answer_is_logged_as_it_came(
    upstream: FakeUpstream, status: int, message: str
) -> None:
    # Ollama's error body is a lone {"error": "..."}: the log detail is that body, whole.
    upstream.push(Script(fail=str(status), error_body={"error": message}))
    events, error = run_provider(settings_for(upstream.url))
    assert events == []
    assert error is not None and error.code == "upstream_status" and error.status == status
    assert error.message == "The model provider refused the request."
    assert error.detail == json.dumps({"error": message})  # for the log only


# -- c. through the chain, on the I/O loop ------------------------------------------------


def test_a_401_from_ollama_reads_no_key_and_falls_through(upstream: FakeUpstream) -> None:
    # Ollama behind an authenticating proxy: there is no key of ours to re-read.
    settings = Settings.from_env({"ASSISTANT_PROVIDERS": "ollama"})
    upstream.push(Script(fail="401"), Script(tokens=["second"]))
    run = run_chain(
        [CASE.provider(upstream.url), CASE.provider(upstream.url, "ollama-2")],
        Timeouts(1, first_chunk=2, idle=2),
        refresh_key=functools.partial(with_fresh_key, settings),
    )
    assert run.outcomes == ["upstream_status", "ok"]  # no second try of the same one
    assert [attempt.status for attempt in run.chain.attempts] == [401, None]
    assert len(upstream.requests) == 2
    assert run.text == "second"


@pytest.mark.parametrize("where", ["error-body", "error-line"])
def test_a_login_in_the_base_url_is_never_in_the_log(upstream: FakeUpstream, where: str) -> None:
    """A user and password in OLLAMA_BASE_URL go as Basic auth (httpx adds the header): a
    proxy's 401 that quoted our request's headers, or an error line that did, was logged
    with them (the scrub looked only at the headers we set ourselves: a reviewer)."""
    basic = "Basic b2xsYW1hdXNlcjpPTExBTUFQQVNTV09SRDEyMw=="  # ollamauser:OLLAMAPASSWORD123
    echo = f"authorization: {basic}; password OLLAMAPASSWORD123"
    if where == "error-body":
        upstream.push(Script(fail="401", error_body={"error": echo}))
    else:
        upstream.push(Script(raw=[json.dumps({"error": echo}).encode() + b"\n"]))
    url = upstream.url.replace("http://", "http://ollamauser:OLLAMAPASSWORD123@")
    run = run_chain([CASE.provider(url)], Timeouts(1, first_chunk=2, idle=2))
    assert upstream.requests[0].headers["authorization"] == basic  # as httpx sent it
    [error] = run.errors
    assert error is not None and "[redacted]" in error.detail
    assert "OLLAMAPASSWORD123" not in error.detail and basic.split()[1] not in error.detail


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
    assert (metadata["model"], metadata["model_version"]) == ("qwen3:8b", "qwen3")
    assert metadata["usage"] == {"input_tokens": 12, "output_tokens": 4}
    assert metadata["stop_reason"] == "end_turn"
    assert [(a["name"], a["outcome"]) for a in metadata["attempts"]] == [("ollama", "ok")]

    (request,) = upstream.requests
    assert request.path == "/api/chat"
    assert not {"authorization", "x-api-key"} & set(request.headers)
    assert request.body is not None
    assert request.body["model"] == "qwen3:8b"
    assert request.body["messages"][-1] == {"role": "user", "content": "What now?"}
    # OLLAMA_THINKING is off: said so (left out, Ollama lets a model that can think think).
    assert request.body["think"] is False


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


def test_ollama_takes_no_thinking_budget_so_needs_no_room_beside_one() -> None:
    """Ollama is sent `think: true` and no budget: a small OLLAMA_MAX_TOKENS with
    thinking on is a workable setting (it was refused for a budget never sent)."""
    env = {"OLLAMA_THINKING": "true", "OLLAMA_MAX_TOKENS": "1024"}
    settings = ProviderSettings.from_env(env, "ollama")
    assert settings.thinking and settings.max_tokens == 1024


def test_an_ollama_thinking_budget_is_not_read() -> None:
    # None is sent: a value the other providers would refuse made every request a 500.
    for budget in ("100", "lots"):
        settings = ProviderSettings.from_env({"OLLAMA_THINKING_BUDGET": budget}, "ollama")
        assert settings.name == "ollama"
