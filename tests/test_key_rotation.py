"""Keys from Secret Manager through the whole endpoint: rotation on 401, outages.

Only the Secret Manager client object is replaced (there is no emulator), with
pytest-mock, by a stand-in that has the real client's spec;
the provider is the fake upstream over real HTTP.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from google.api_core import exceptions
from pytest_mock import MockerFixture

import assistant.keys
from devtools.fake_upstream import FakeUpstream, Script

from .conftest import ask, sse_events


def _use(mocker: MockerFixture, *answers: str | Exception) -> Any:
    """The process's Secret Manager client replaced by one with the real client's spec,
    answering from `answers` in turn (the last one again and again)."""
    from google.cloud.secretmanager import SecretManagerServiceClient

    pending = list(answers)

    def access_secret_version(request: dict[str, str], timeout: float, retry: Any) -> Any:
        answer = pending.pop(0) if len(pending) > 1 else pending[0]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(payload=SimpleNamespace(data=answer.encode()))

    secret_client = mocker.create_autospec(SecretManagerServiceClient, instance=True)
    secret_client.access_secret_version.side_effect = access_secret_version
    mocker.patch.object(assistant.keys, "_client", secret_client)
    return secret_client


def _names_read(secret_client: Any) -> list[str]:
    return [
        call.kwargs["request"]["name"] for call in secret_client.access_secret_version.mock_calls
    ]


@pytest.fixture
def secrets(fake: FakeUpstream, mocker: MockerFixture) -> Iterator[None]:
    """Keys from Secret Manager only: no key in the environment."""
    del os.environ["ANTHROPIC_API_KEY"]
    os.environ.update(SECRET_MANAGER="true", SECRETS_PROJECT="demo-secrets")
    mocker.patch.object(assistant.keys, "_store", None)  # a fresh cache for each test
    yield


def test_key_is_read_from_secret_manager(client, fake, secrets, mocker) -> None:
    secret_client = _use(mocker, "sm-key")
    final = sse_events(ask(client).get_data())[-2]
    assert "answer" in final
    assert fake.requests[0].headers["x-api-key"] == "sm-key"
    assert "projects/demo-secrets/secrets/ANTHROPIC_API_KEY/versions/latest" in _names_read(
        secret_client
    )


def test_a_401_reads_the_rotated_key_and_retries_once(client, fake, secrets, mocker, capfd) -> None:
    _use(mocker, "old-key", "new-key")
    fake.push(Script(fail="401"), Script(tokens=["fresh ", "answer"]))
    response = ask(client)
    final = sse_events(response.get_data())[-2]
    assert final["answer"] == "fresh answer"
    assert [r.headers["x-api-key"] for r in fake.requests] == ["old-key", "new-key"]
    assert [(a["outcome"], a.get("status")) for a in final["metadata"]["attempts"]] == [
        ("upstream_status", 401),
        ("ok", None),
    ]
    shown = response.get_data(as_text=True) + capfd.readouterr().out
    assert "old-key" not in shown and "new-key" not in shown


def test_an_unchanged_key_after_401_is_not_retried(client, fake, secrets, mocker) -> None:
    _use(mocker, "same-key")
    fake.push(Script(fail="401"))
    response = ask(client)
    assert response.status_code == 502
    assert len(fake.requests) == 1


def test_secret_manager_down_with_no_key_is_409(client, fake, secrets, mocker) -> None:
    _use(mocker, exceptions.ServiceUnavailable("unreachable"))
    response = ask(client)
    assert response.status_code == 409
    assert response.get_json()["code"] == "no_provider"
    assert fake.requests == []


def test_a_key_already_read_survives_a_secret_manager_outage(client, fake, secrets, mocker) -> None:
    os.environ["KEY_CACHE_SECONDS"] = "0"  # every request goes back to Secret Manager
    _use(mocker, "cached-key", exceptions.ServiceUnavailable("down"))
    assert "answer" in sse_events(ask(client).get_data())[-2]
    assert "answer" in sse_events(ask(client).get_data())[-2]
    assert [r.headers["x-api-key"] for r in fake.requests] == ["cached-key", "cached-key"]


def test_a_missing_secret_skips_that_provider(client, fake, secrets, mocker) -> None:
    _use(mocker, exceptions.NotFound("no such secret"))
    assert ask(client).status_code == 409


def test_an_env_var_wins_over_secret_manager(client, fake, secrets, mocker) -> None:
    secret_client = _use(mocker, "sm-key")
    os.environ["ANTHROPIC_API_KEY"] = "env-key"
    ask(client).get_data()
    assert fake.requests[0].headers["x-api-key"] == "env-key"
    assert _names_read(secret_client) == []


@pytest.mark.parametrize(
    "question",
    [
        "Hello?",
        # Quoting the error (a reviewer's): the log's scrub took its reason out, and the key
        # was not read again when the answer was judged on the scrubbed text.
        'My app logs this, why? "reason": "API_KEY_INVALID", "domain": "googleapis.com"',
    ],
)
def test_geminis_invalid_key_answer_also_rereads_the_key(
    client, fake, secrets, mocker, question: str
) -> None:
    os.environ.update(ASSISTANT_PROVIDERS="gemini", GEMINI_BASE_URL=fake.url)
    _use(mocker, "old-gemini-key", "new-gemini-key")
    invalid_key = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [{"reason": "API_KEY_INVALID", "domain": "googleapis.com"}],
        }
    }
    fake.push(Script(fail="400", error_body=invalid_key))
    final = sse_events(ask(client, question).get_data())[-2]
    assert [r.headers["x-goog-api-key"] for r in fake.requests] == [
        "old-gemini-key",
        "new-gemini-key",
    ]
    assert "answer" in final
