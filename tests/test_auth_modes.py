"""Auth modes and the per-user limit (README "Who may call"): the Cloud Run refusals, `iam` and
`none` taking the body's user, and replies in flight counted per user.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from assistant import limits
from assistant.config import Settings
from devtools.fake_upstream import FakeUpstream, Script

from .conftest import log_lines, sse_events
from .firebase_tokens import PROJECT, CertsServer, SigningKey, claims

ADA = {"email": "ada@example.com", "displayName": "Ada"}


def post(client: Any, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return client.post(
        "/vac/assistant/test-assistant/sse",
        json={"user_input": "Hello?", **body},
        headers=headers or {},
    )


def as_user(user: dict[str, str], **body: Any) -> dict[str, Any]:
    return {"emissaryConfig": {"currentUser": user}, **body}


# -- configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"K_SERVICE": "assistant", "AUTH_MODE": "none"}, "AUTH_MODE=none is for local runs"),
        (
            {"K_SERVICE": "assistant", "FIREBASE_AUTH_EMULATOR_HOST": "127.0.0.1:9099"},
            "FIREBASE_AUTH_EMULATOR_HOST is set on Cloud Run",
        ),
        (
            {"K_SERVICE": "assistant", "AUTH_MODE": "iam", "FIREBASE_AUTH_EMULATOR_HOST": "x:1"},
            "FIREBASE_AUTH_EMULATOR_HOST is set on Cloud Run",
        ),
        (
            {"K_SERVICE": "assistant", "AUTH_MODE": "iam", "FIRESTORE_EMULATOR_HOST": "x:1"},
            "FIRESTORE_EMULATOR_HOST is set on Cloud Run",
        ),
        # Set but blank, the client library still takes it for an emulator's address.
        (
            {"K_SERVICE": "assistant", "AUTH_MODE": "iam", "FIRESTORE_EMULATOR_HOST": ""},
            "FIRESTORE_EMULATOR_HOST is set but blank",
        ),
        ({"FIRESTORE_EMULATOR_HOST": " "}, "FIRESTORE_EMULATOR_HOST is set but blank"),
        ({"FIREBASE_CERTS_URL": "file:///etc/passwd"}, "FIREBASE_CERTS_URL must be an http"),
        # httpx could not read it: every request that needed certs was a 500, a traceback.
        ({"FIREBASE_CERTS_URL": "http://[::1/certs"}, "FIREBASE_CERTS_URL is not a URL"),
        ({"FIREBASE_CERTS_URL": "http://a..b/certs"}, "FIREBASE_CERTS_URL is not a URL"),
        ({"FIREBASE_CERTS_URL": "http://h:65536/certs"}, "FIREBASE_CERTS_URL has a port"),
        ({"AUTH_MODE": "open"}, "AUTH_MODE must be one of firebase, iam, none"),
        # None: unset (set but blank is a config error of its own: tests/test_http.py).
        ({"AUTH_MODE": "firebase", "GOOGLE_CLOUD_PROJECT": None}, "FIREBASE_PROJECT_ID"),
        ({"AUTH_CLOCK_SKEW_SECONDS": "61"}, "AUTH_CLOCK_SKEW_SECONDS must be at most 60"),
        ({"MAX_STREAMS_PER_USER": "0"}, "MAX_STREAMS_PER_USER must be at least 1"),
    ],
    ids=[
        "none-on-cloud-run",
        "emulator-on-cloud-run",
        "emulator-with-iam",
        "firestore-emulator-on-cloud-run",
        "firestore-emulator-blank-on-cloud-run",
        "firestore-emulator-blank",
        "certs-url-not-http",
        "certs-url-unreadable",
        "certs-url-empty-label",
        "certs-url-port",
        "unknown-mode",
        "firebase-without-project",
        "skew-too-large",
        "no-streams",
    ],
)
def test_unsafe_or_broken_auth_config_refuses_every_request(
    client, fake: FakeUpstream, capsys, env: dict[str, str | None], reason: str
) -> None:
    os.environ["GOOGLE_CLOUD_PROJECT"] = PROJECT
    for name, value in env.items():
        if value is None:
            del os.environ[name]
        else:
            os.environ[name] = value
    for response in (post(client, **as_user(ADA)), client.get("/health")):
        assert response.status_code == 500
        assert response.get_json()["code"] == "config_error"
        assert reason not in response.get_data(as_text=True)  # the why is for the log only
    assert fake.requests == []
    log = capsys.readouterr().out
    assert log.count('"config.invalid"') == 2
    assert reason in log
    invalid = [line for line in log_lines(log) if line["message"] == "config.invalid"]
    assert all(line["trace_id"] for line in invalid)  # the request's, like every line it writes


def test_on_cloud_run_the_default_mode_is_firebase(client, fake: FakeUpstream) -> None:
    os.environ.update({"K_SERVICE": "assistant", "GOOGLE_CLOUD_PROJECT": PROJECT})
    response = post(client, **as_user(ADA))
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"
    assert fake.requests == []


def test_locally_the_default_mode_is_none(client, fake: FakeUpstream) -> None:
    fake.push(Script(tokens=["hi"]))
    assert post(client).status_code == 200


@pytest.mark.parametrize("mode", ["iam", "none"])
def test_iam_and_none_take_the_bodys_user(client, fake: FakeUpstream, firestore, mode: str) -> None:
    os.environ["AUTH_MODE"] = mode
    response = post(client, **as_user(ADA, save_to_history=True))
    assert "answer" in sse_events(response.get_data())[-2]
    collection = firestore.collection("assistants/test-assistant/messages")
    saved = [snapshot.to_dict() for snapshot in collection.stream()]
    assert len(saved) == 2
    assert {message["userId"] for message in saved} == {"ada@example.com"}
    assert {message["userName"] for message in saved} == {"Ada"}


@pytest.mark.parametrize("blank", ["", "  ", "\u200b", " \u2060 "])
def test_a_blank_email_names_no_user_whose_history_others_read(
    client, fake: FakeUpstream, firestore, blank: str
) -> None:
    """A reviewer found "" taken as a user: one caller's saved question reached another
    caller's model through read_from_history."""
    os.environ["AUTH_MODE"] = "iam"
    fake.push(Script(tokens=["Noted."]))
    post(client, **as_user({"email": blank, "displayName": "Alice"}), save_to_history=True)
    saved = [
        s.to_dict() for s in firestore.collection("assistants/test-assistant/messages").stream()
    ]
    assert saved and {message["userId"] for message in saved} == {None}
    fake.push(Script(tokens=["Hi."]))
    bob = as_user({"email": blank, "displayName": "Bob"}, read_from_history=True)
    assert "answer" in sse_events(post(client, **bob).get_data())[-2]
    assert fake.requests[-1].body["messages"][0]["content"] == "Hello?"  # nothing of Alice's
    assert len(fake.requests[-1].body["messages"]) == 1


def test_an_email_is_taken_without_blanks_around_it_and_within_bounds_and_a_name_too(
    client, fake: FakeUpstream, firestore
) -> None:
    os.environ["AUTH_MODE"] = "iam"
    fake.push(Script(tokens=["hi"]))
    post(client, **as_user({"email": " ada@example.com\n"}), save_to_history=True)
    saved = [
        s.to_dict() for s in firestore.collection("assistants/test-assistant/messages").stream()
    ]
    assert {message["userId"] for message in saved} == {"ada@example.com"}
    response = post(client, **as_user({"email": "a" * 321}))
    assert response.status_code == 400
    assert "emissaryConfig.currentUser.email" in response.get_json()["error"]
    response = post(client, **as_user({"email": "ada@example.com", "displayName": "A" * 1001}))
    assert response.status_code == 400  # saved on both messages: past a document's room
    assert "emissaryConfig.currentUser.displayName" in response.get_json()["error"]


def test_iam_ignores_a_bearer_token(client, fake: FakeUpstream) -> None:
    """Cloud Run IAM checked the caller's Google identity token; the service does not."""
    os.environ["AUTH_MODE"] = "iam"
    fake.push(Script(tokens=["hi"]))
    assert post(client, {"Authorization": "Bearer google-identity-token"}).status_code == 200


# -- the per-user limit ------------------------------------------------------------


@pytest.fixture
def one_each(none_in_flight: None) -> None:
    os.environ["MAX_STREAMS_PER_USER"] = "1"
    os.environ["HEARTBEAT_SECONDS"] = "0.2"  # the status window: a stream answers 200 early


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey("limit-key")


@pytest.fixture
def firebase(key: SigningKey) -> Iterator[None]:
    with CertsServer(key) as certs:
        os.environ.update(
            {
                "AUTH_MODE": "firebase",
                "FIREBASE_CERTS_URL": certs.url,
                "FIREBASE_PROJECT_ID": PROJECT,
            }
        )
        yield


def token_for(key: SigningKey, uid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key.sign(claims(uid))}"}


def hanging() -> Script:
    """A reply that shows one chunk and then stays in flight."""
    return Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang")


def assert_rate_limited(response: Any) -> None:
    assert response.status_code == 429
    assert response.get_json()["code"] == "rate_limited"
    # A second: a user's Stop then Send finds the stopped reply's slot free within one
    # of its client leaving (with 5 a browser kit said "try again in 5 s").
    assert response.headers["Retry-After"] == "1"


def test_a_users_second_reply_in_flight_is_429_and_others_are_unaffected(
    client, fake: FakeUpstream, firebase, one_each, key
) -> None:
    fake.push(hanging())
    first = post(client, token_for(key, "ada"))
    assert first.status_code == 200
    assert_rate_limited(post(client, token_for(key, "ada")))
    # The limit is checked before the body: even a bad body is a 429 here.
    assert_rate_limited(post(client, token_for(key, "ada"), user_input=""))
    assert len(fake.requests) == 1  # the refused ones called no provider

    fake.push(Script(tokens=["for bob"]))
    other = post(client, token_for(key, "bob"))
    assert other.status_code == 200
    other.get_data()

    first.close()  # ada's client goes away: her slot is free again
    fake.push(Script(tokens=["again"]))
    again = post(client, token_for(key, "ada"))
    assert again.status_code == 200
    again.get_data()


def test_the_body_cannot_change_whose_slot_it_is(
    client, fake: FakeUpstream, firebase, one_each, key
) -> None:
    fake.push(hanging())
    first = post(client, token_for(key, "ada"), **as_user({"email": "x@example.com"}))
    assert first.status_code == 200
    second = post(client, token_for(key, "ada"), **as_user({"email": "y@example.com"}))
    assert_rate_limited(second)
    first.close()


def test_a_signed_in_user_is_not_refused_for_a_current_user_the_mode_ignores(
    client, fake: FakeUpstream, firebase, key
) -> None:
    """A reviewer found the iam bound on currentUser.email refusing signed-in users."""
    fake.push(Script(tokens=["hi"]))
    response = post(client, token_for(key, "ada"), **as_user({"email": "a" * 400}))
    assert response.status_code == 200
    response.get_data()


@pytest.mark.parametrize(
    "script",
    [Script(tokens=["done"]), Script(tokens=["half"], fail_after=1, fail_mode="cut")],
    ids=["answered", "failed-mid-stream"],
)
def test_a_slot_is_freed_when_the_reply_ends(
    client, fake: FakeUpstream, firebase, one_each, key, script: Script
) -> None:
    for _ in range(3):
        fake.push(script)
        response = post(client, token_for(key, "ada"))
        assert response.status_code == 200
        assert sse_events(response.get_data())[-1] == "[DONE]"


@pytest.mark.parametrize("route", ["/vac/assistant/test-assistant/sse", "/vac/assistant/x"])
def test_a_reply_taking_its_last_write_counts_off_its_users_limit(
    client, fake: FakeUpstream, firebase, one_each, key, route: str, monkeypatch
) -> None:
    """A client that read `[DONE]` (or the JSON answer) and asked again at once was
    refused 429 now and then: the slot went back only once the server's write of it
    was over (the grace made long: a test client is no socket, and this machine slow)."""
    monkeypatch.setattr(limits, "LAST_WRITE_GRACE_SECONDS", 60)
    fake.push(Script(tokens=["done"]))
    first = client.post(route, json={"user_input": "Hello?"}, headers=token_for(key, "ada"))
    frames = iter(first.response)
    if route.endswith("/sse"):  # read up to [DONE], and no further: the write is "under way"
        while not next(frames).endswith(b"data: [DONE]\n\n"):
            pass
    fake.push(Script(tokens=["again"]))
    again = post(client, token_for(key, "ada"))
    assert again.status_code == 200
    again.get_data()
    first.close()


def test_a_slot_is_freed_when_no_provider_answers(
    client, fake: FakeUpstream, firebase, one_each, key
) -> None:
    for _ in range(2):
        fake.push(Script(fail="500"))
        assert post(client, token_for(key, "ada")).status_code == 502


def test_a_slot_is_freed_after_a_refused_body(client, fake: FakeUpstream, firebase, one_each, key):
    assert post(client, token_for(key, "ada"), user_input="").status_code == 400
    fake.push(Script(tokens=["fine"]))
    assert post(client, token_for(key, "ada")).status_code == 200


def test_iam_counts_per_body_user_and_the_anonymous_share_one_bucket(
    client, fake: FakeUpstream, one_each
) -> None:
    os.environ["AUTH_MODE"] = "iam"
    fake.push(hanging())
    held = post(client, **as_user(ADA))
    assert held.status_code == 200
    assert_rate_limited(post(client, **as_user(ADA)))

    fake.push(hanging())
    anonymous = post(client)
    assert anonymous.status_code == 200
    assert_rate_limited(post(client))
    assert_rate_limited(post(client, **as_user({"displayName": "no email"})))
    # The body was read by then: its trace id is the refusal's, as it would be the reply's.
    refused = post(client, **as_user(ADA, trace_id="frontend.trace:429"))
    assert_rate_limited(refused)
    assert refused.headers["X-Trace-Id"] == refused.get_json()["trace_id"] == "frontend.trace:429"
    held.close()
    anonymous.close()


def test_a_body_users_email_is_taken_as_written(client, fake: FakeUpstream, one_each) -> None:
    """Its case kept (README "Choices"): lower-cased, messages saved before under
    another case were another user's, and U+212A KELVIN SIGN made `\u212aate@x.com`
    Kate and read her history (a reviewer)."""
    os.environ["AUTH_MODE"] = "iam"
    fake.push(hanging())
    held = post(client, **as_user({"email": "kate@x.com"}))
    assert held.status_code == 200
    assert_rate_limited(post(client, **as_user({"email": " kate@x.com "})))
    for other in ("Kate@x.com", "\u212aate@x.com"):
        fake.push(Script(tokens=["another user"]))
        response = post(client, **as_user({"email": other}))
        assert response.status_code == 200
        response.get_data()
    held.close()


def test_past_max_streams_the_instance_answers_503_overloaded(
    client, fake: FakeUpstream, one_each
) -> None:
    os.environ.update(MAX_STREAMS="2", MAX_STREAMS_PER_USER="10")
    held = []
    for _ in range(2):
        fake.push(hanging())
        held.append(post(client))
        assert held[-1].status_code == 200
    response = post(client, **as_user(ADA))
    assert response.status_code == 503
    assert response.get_json()["code"] == "overloaded"
    assert int(response.headers["Retry-After"]) > 0
    assert len(fake.requests) == 2
    assert client.get("/health").status_code == 200
    held.pop().close()
    fake.push(Script(tokens=["room again"]))
    assert post(client, **as_user(ADA)).status_code == 200
    held.pop().close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"THREADS": "32"}, 1000),
        ({"THREADS": "2"}, 1000),
        ({"THREADS": "8", "MAX_STREAMS": "50"}, 50),
    ],
)
def test_max_streams_does_not_follow_threads(env: dict[str, str], expected: int) -> None:
    """A stream holds no thread while it streams (worker.py "parking"): THREADS is no bound."""
    assert Settings.from_env(env).max_streams == expected
