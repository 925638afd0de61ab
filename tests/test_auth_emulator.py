"""The local-run path of `AUTH_MODE=firebase` against the real Firebase Auth emulator:
its users' unsigned ID tokens are accepted only with FIREBASE_AUTH_EMULATOR_HOST set.
"""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import free_port

from .auth_emulator import AuthEmulator
from .conftest import sse_events
from .emulator import PROJECT


def _sign_up(auth_emulator: AuthEmulator) -> tuple[str, str, str]:
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    uid, token = auth_emulator.sign_up(email, "a-password-1")
    return uid, token, email


def _firebase_mode(emulator_host: str | None) -> None:
    os.environ.update(
        AUTH_MODE="firebase",
        FIREBASE_PROJECT_ID=PROJECT,
        # Nothing listens here: the emulator's tokens need no certificates.
        FIREBASE_CERTS_URL=f"http://127.0.0.1:{free_port()}/certs",
    )
    if emulator_host:
        os.environ["FIREBASE_AUTH_EMULATOR_HOST"] = emulator_host


def _post(client: Any, token: str, **body: Any) -> Any:
    return client.post(
        "/vac/assistant/test-assistant/sse",
        json={"user_input": "Who am I?", **body},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_an_emulator_user_streams_and_is_saved_as_its_uid(
    client, fake: FakeUpstream, firestore, auth_emulator: AuthEmulator
) -> None:
    _firebase_mode(auth_emulator.host)
    uid, token, email = _sign_up(auth_emulator)
    fake.push(Script(tokens=["You are ", "signed in."]))
    body = {"save_to_history": True, "emissaryConfig": {"currentUser": {"email": "x@evil.test"}}}
    response = _post(client, token, **body)
    assert response.status_code == 200
    final = sse_events(response.get_data())[-2]
    assert final["answer"] == "You are signed in."

    collection = firestore.collection("assistants/test-assistant/messages")
    saved = {snapshot.id: snapshot.to_dict() for snapshot in collection.stream()}
    assert set(saved) == set(final["metadata"]["message_ids"].values())
    for message in saved.values():
        assert message["userId"] == uid
        assert message["userEmail"] == email


def test_an_emulator_token_is_refused_without_the_emulator_setting(
    client, fake: FakeUpstream, auth_emulator: AuthEmulator
) -> None:
    _firebase_mode(emulator_host=None)
    _, token, _ = _sign_up(auth_emulator)
    response = _post(client, token)
    assert response.status_code == 401
    assert response.get_json()["code"] == "unauthenticated"
    assert fake.requests == []


def test_an_emulator_token_for_another_project_is_refused(
    client, fake: FakeUpstream, auth_emulator: AuthEmulator
) -> None:
    _firebase_mode(auth_emulator.host)
    os.environ["FIREBASE_PROJECT_ID"] = "demo-another"
    _, token, _ = _sign_up(auth_emulator)
    assert _post(client, token).status_code == 401
    assert fake.requests == []


def test_an_unsigned_token_unlike_the_emulators_is_refused(
    client, fake: FakeUpstream, auth_emulator: AuthEmulator
) -> None:
    """The emulator's tokens name no key and carry no signature; one that does is not
    one of its tokens (so is not let in as one)."""
    _firebase_mode(auth_emulator.host)
    _, token, _ = _sign_up(auth_emulator)
    assert _post(client, token).status_code == 200  # as the emulator made it
    claims = token.split(".")[1]
    with_kid = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT","kid":"k"}').rstrip(b"=")
    for forged in (f"{token}c2ln", f"{with_kid.decode()}.{claims}."):
        response = _post(client, forged)
        assert response.status_code == 401, forged
        assert response.get_json()["code"] == "unauthenticated"
    assert len(fake.requests) == 1
