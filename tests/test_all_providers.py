"""All four providers through the whole endpoint, each in its own wire format.

One fake upstream serves every format (each on its own path), so the chain
falls through real Anthropic, OpenAI, Gemini and Ollama streams in one request.
"""

from __future__ import annotations

import os

import pytest

from devtools.fake_upstream import FakeUpstream, Script

from .conftest import ask, sse_events

PROVIDERS = ("anthropic", "openai", "gemini", "ollama")


@pytest.fixture
def all_four(fake: FakeUpstream) -> FakeUpstream:
    os.environ.update(
        ASSISTANT_PROVIDERS=",".join(PROVIDERS),
        OPENAI_API_KEY="test-openai-key",
        OPENAI_BASE_URL=f"{fake.url}/v1",
        GEMINI_API_KEY="test-gemini-key",
        GEMINI_BASE_URL=fake.url,
        OLLAMA_BASE_URL=fake.url,
    )
    return fake


def _only(name: str) -> None:
    os.environ["ASSISTANT_PROVIDERS"] = name


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_streams_text_and_native_thinking(client, all_four, provider: str) -> None:
    _only(provider)
    all_four.push(Script(thinking=["step one ", "step two"], tokens=["The ", "answer."]))
    events = sse_events(
        ask(client, "Question?", emissaryConfig={"initialInstructions": "Be kind."}).get_data()
    )
    chunks = "".join(
        event["chunk"] for event in events if isinstance(event, dict) and "chunk" in event
    )
    final = events[-2]
    assert chunks == final["answer"] == "<thinking>step one step two</thinking>The answer."
    metadata = final["metadata"]
    assert metadata["provider"] == provider
    assert metadata["thinking_content"] == "step one step two"
    assert metadata["stop_reason"] == "end_turn"
    assert metadata["usage"]["input_tokens"] > 0
    assert metadata["usage"]["output_tokens"] > 0
    assert events[-1] == "[DONE]"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_reports_max_tokens_alike(client, all_four, provider: str) -> None:
    _only(provider)
    all_four.push(Script(tokens=["cut ", "short"], stop_reason="max_tokens"))
    assert sse_events(ask(client).get_data())[-2]["metadata"]["stop_reason"] == "max_tokens"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_mid_stream_error_is_an_error_frame(client, all_four, provider: str) -> None:
    _only(provider)
    all_four.push(Script(tokens=["half ", "way ", "there"], fail_after=2, fail_mode="error_event"))
    error = sse_events(ask(client).get_data())[-2]
    assert error["code"] == "upstream_error"
    assert error["partial"] == "half way "


@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_provider_without_its_end_marker_is_incomplete(
    client, all_four, provider: str
) -> None:
    _only(provider)
    all_four.push(Script(tokens=["no ", "end"], fail_after=2, fail_mode="no_stop"))
    error = sse_events(ask(client).get_data())[-2]
    assert error["code"] == "upstream_incomplete"
    assert error["partial"] == "no end"


def test_the_chain_falls_through_every_format_in_order(client, all_four) -> None:
    all_four.push(
        Script(fail="500"),  # anthropic
        Script(fail="error_event"),  # openai
        Script(fail="empty"),  # gemini: a body with nothing in it
        Script(tokens=["from ", "ollama"]),  # ollama
    )
    final = sse_events(ask(client).get_data())[-2]
    assert final["answer"] == "from ollama"
    assert [(a["name"], a["outcome"]) for a in final["metadata"]["attempts"]] == [
        ("anthropic", "upstream_status"),
        ("openai", "upstream_error"),
        ("gemini", "upstream_incomplete"),  # no finishReason ever came
        ("ollama", "ok"),
    ]
    assert [request.path.split("?")[0] for request in all_four.requests] == [
        "/v1/messages",
        "/v1/chat/completions",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "/api/chat",
    ]


def test_every_provider_failing_is_a_502_listing_all_four(client, all_four) -> None:
    all_four.push(Script(fail="429"), Script(fail="500"), Script(fail="503"), Script(fail="500"))
    response = ask(client)
    assert response.status_code == 502
    assert [a["name"] for a in response.get_json()["attempts"]] == list(PROVIDERS)


def test_providers_without_key_or_url_are_skipped(client, all_four) -> None:
    del os.environ["ANTHROPIC_API_KEY"]
    del os.environ["OPENAI_API_KEY"]
    del os.environ["OLLAMA_BASE_URL"]
    final = sse_events(ask(client).get_data())[-2]
    assert final["metadata"]["provider"] == "gemini"
    assert [a["name"] for a in final["metadata"]["attempts"]] == ["gemini"]


def test_the_system_prompt_reaches_every_format(client, all_four) -> None:
    all_four.push(Script(fail="500"), Script(fail="500"), Script(fail="500"))
    ask(client, "hi", emissaryConfig={"initialInstructions": "Speak like a pirate."}).get_data()
    anthropic, openai, gemini, ollama = (request.body for request in all_four.requests)
    assert anthropic["system"] == "Speak like a pirate."
    assert openai["messages"][0] == {"role": "system", "content": "Speak like a pirate."}
    assert gemini["systemInstruction"] == {"parts": [{"text": "Speak like a pirate."}]}
    assert ollama["messages"][0] == {"role": "system", "content": "Speak like a pirate."}
