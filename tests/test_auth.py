"""Firebase ID tokens on the production path (README "Who may call"): RS256 tokens signed here,
certs served from loopback like Google's securetoken endpoint, the real
Firestore emulator to prove that a refused request writes nothing.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .conftest import log_lines, sse_events
from .firebase_tokens import (
    PROJECT,
    CertsServer,
    SigningKey,
    claims,
    hs256_with_cert_as_secret,
    nested_past_the_parsers_depth,
    unsigned,
)

KID = "key-1"
# Everything a refused request must not touch: a save, a history read.
SAVING = {"save_to_history": True, "read_from_history": True}


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey(KID)


@pytest.fixture(scope="module")
def impostor() -> SigningKey:
    """Another key that claims the same key id."""
    return SigningKey(KID)


@pytest.fixture
def certs(key: SigningKey) -> Iterator[CertsServer]:
    """A fresh certs endpoint (so a fresh cache: the service keeps one per URL), firebase mode."""
    with CertsServer(key) as server:
        os.environ["AUTH_MODE"] = "firebase"
        os.environ["FIREBASE_CERTS_URL"] = server.url
        os.environ["FIREBASE_PROJECT_ID"] = PROJECT
        yield server


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(client: Any, headers: dict[str, str], text: str = "Hello?", **body: Any) -> Any:
    return client.post(
        "/vac/assistant/test-assistant/sse", json={"user_input": text, **body}, headers=headers
    )


def _messages(db: Any) -> list[dict[str, Any]]:
    collection = db.collection("assistants").document("test-assistant").collection("messages")
    return [snapshot.to_dict() for snapshot in collection.stream()]


def test_a_valid_token_streams_and_saves_as_its_uid(
    client, fake: FakeUpstream, firestore, certs: CertsServer, key: SigningKey
) -> None:
    fake.push(Script(tokens=["Hi ", "there."]))
    body = {"save_to_history": True, "emissaryConfig": {"currentUser": {"email": "eve@evil.test"}}}
    response = post(client, bearer(key.sign(claims("uid-ada"))), **body)
    assert response.status_code == 200
    assert sse_events(response.get_data())[-2]["answer"] == "Hi there."
    saved = _messages(firestore)
    assert len(saved) == 2
    for message in saved:  # the token says who the user is; the body's currentUser does not
        assert message["userId"] == "uid-ada"
        assert message["userEmail"] == "uid-ada@example.com"
        assert message["userName"] == "User uid-ada"


def test_a_name_or_email_cut_mid_emoji_is_saved_mended(
    client, fake: FakeUpstream, firestore, certs: CertsServer, key: SigningKey
) -> None:
    """A lone surrogate in the token's name or email failed every save of the user's."""
    fake.push(Script(tokens=["Hi."]))
    token = key.sign(claims("uid-ann", name="Ann \ud83d", email="\udc00ann@example.com"))
    response = post(client, bearer(token), save_to_history=True)
    final = sse_events(response.get_data())[-2]
    assert final["metadata"]["persist_failed"] is False
    saved = _messages(firestore)
    assert len(saved) == 2
    for message in saved:
        assert (message["userName"], message["userEmail"]) == (
            "Ann \ufffd",
            "\ufffdann@example.com",
        )


def _now() -> int:
    return int(time.time())


# name -> how to make the Authorization header from (key, impostor)
BAD_CREDENTIALS: dict[str, Callable[[SigningKey, SigningKey], dict[str, str]]] = {
    "no header": lambda key, other: {},
    "empty bearer": lambda key, other: {"Authorization": "Bearer "},
    "basic scheme": lambda key, other: {"Authorization": "Basic dXNlcjpwYXNz"},
    "not a jwt": lambda key, other: bearer("not-a-token"),
    "garbage segments": lambda key, other: bearer("a.b.c"),
    "header nested past json's depth": lambda key, other: bearer(
        nested_past_the_parsers_depth("header")
    ),
    "payload nested past json's depth": lambda key, other: bearer(
        nested_past_the_parsers_depth("payload")
    ),
    "expired": lambda key, other: bearer(key.sign(claims(exp=_now() - 120, iat=_now() - 4000))),
    "wrong aud": lambda key, other: bearer(key.sign(claims(aud="another-project"))),
    "wrong iss": lambda key, other: bearer(
        key.sign(claims(iss="https://securetoken.google.com/another-project"))
    ),
    "empty sub": lambda key, other: bearer(key.sign(claims(sub=""))),
    "no sub": lambda key, other: bearer(key.sign(claims(sub=None))),
    "sub too long": lambda key, other: bearer(key.sign(claims(sub="u" * 129))),
    "sub with a lone surrogate": lambda key, other: bearer(key.sign(claims(sub="u\ud83d"))),
    "iat in the future": lambda key, other: bearer(key.sign(claims(iat=_now() + 120))),
    "auth_time in the future": lambda key, other: bearer(key.sign(claims(auth_time=_now() + 120))),
    "no auth_time": lambda key, other: bearer(key.sign(claims(auth_time=None))),
    "nbf in the future": lambda key, other: bearer(key.sign(claims(nbf=_now() + 300))),
    "nbf not a number": lambda key, other: bearer(key.sign(claims(nbf="later"))),
    "exp not a number": lambda key, other: bearer(key.sign(claims(exp="tomorrow"))),
    "exp NaN (never expires if let by)": lambda key, other: bearer(
        key.sign(claims(exp=float("nan")))
    ),
    "exp infinite": lambda key, other: bearer(key.sign(claims(exp=float("inf")))),
    "exp past any float": lambda key, other: bearer(key.sign(claims(exp=10**400))),
    "forged: other key, same kid": lambda key, other: bearer(other.sign(claims())),
    "unknown kid": lambda key, other: bearer(key.sign(claims(), kid="no-such-key")),
    "hs256 keyed with the cert": lambda key, other: bearer(
        hs256_with_cert_as_secret(key, claims())
    ),
    "alg none without the emulator": lambda key, other: bearer(unsigned(claims())),
    # The same signed bytes spelled another way (google-auth's decoder takes them): one
    # token in many spellings, each accepted.
    "signature padded": lambda key, other: bearer(key.sign(claims()) + "=="),
    "signature in base64's other alphabet": lambda key, other: bearer(
        _in_the_other_alphabet(key.sign(claims()))
    ),
    "signature's last character with spare bits set": lambda key, other: bearer(
        _with_spare_bits_set(key.sign(claims()))
    ),
    # 342 characters and 3 more: one past a whole group of four, which no bytes spell.
    "signature of a length no bytes have": lambda key, other: bearer(key.sign(claims()) + "AAA"),
}


def _with_spare_bits_set(token: str) -> str:
    """The same signature bytes, spelled with the last character's unused bits set: 256
    bytes are 342 characters, the last carrying 4 bits the decoder ignores."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    assert last % 16 == 0  # the canonical spelling: its spare bits are zero
    return token[:-1] + alphabet[last + 1]


def _in_the_other_alphabet(token: str) -> str:
    head, _, signature = token.rpartition(".")
    other = signature.replace("-", "+").replace("_", "/")
    # A signature with neither character (about one in 50,000) still goes padded.
    return f"{head}.{other}" if other != signature else f"{token}="


@pytest.mark.parametrize("name", list(BAD_CREDENTIALS))
def test_a_bad_token_is_401_and_touches_nothing(
    client, fake: FakeUpstream, firestore, certs, key, impostor, capsys, name: str
) -> None:
    headers = BAD_CREDENTIALS[name](key, impostor)
    response = post(client, {**headers, "Origin": "https://chat.example.com"}, **SAVING)
    assert response.status_code == 401, response.get_data(as_text=True)
    # A page can read why (an expired token: sign in again).
    assert "WWW-Authenticate" in response.headers["Access-Control-Expose-Headers"]
    body = response.get_json()
    assert body["code"] == "unauthenticated"
    assert body["trace_id"] == response.headers["X-Trace-Id"]
    # Missing or refused alike (RFC 6750 would send a bare "Bearer" for a missing one).
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert fake.requests == []
    assert _messages(firestore) == []
    # The token is in no log line and in no error body.
    token = headers.get("Authorization", "").partition(" ")[2]
    if token:
        for secret in {token, *(part for part in token.split(".") if len(part) > 8)}:
            assert secret not in response.get_data(as_text=True)
            assert secret not in "".join(capsys.readouterr())


def test_a_bad_token_is_refused_before_the_body_is_looked_at(
    client, fake: FakeUpstream, certs
) -> None:
    for response in (
        client.post("/vac/assistant/test-assistant/sse", data=b"{not json", headers={}),
        client.post("/vac/assistant/__bad__/sse", data=b"x", content_type="image/png", headers={}),
        client.post("/vac/assistant/a/sse", data=b"x" * (2 * 1024 * 1024), headers={}),
    ):
        assert response.status_code == 401
        assert response.get_json()["code"] == "unauthenticated"
    assert fake.requests == []


def test_health_and_preflight_need_no_token(client, certs) -> None:
    assert client.get("/health").status_code == 200
    preflight = client.options(
        "/vac/assistant/abc/sse",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204


def test_clock_skew_tolerates_a_token_issued_a_few_seconds_ahead(
    client, fake: FakeUpstream, certs, key
) -> None:
    ahead = claims(iat=_now() + 5, auth_time=_now() + 5, nbf=_now() + 5)
    assert post(client, bearer(key.sign(ahead))).status_code == 200
    past = claims(nbf=_now() - 60)  # a token valid from a minute ago is valid
    assert post(client, bearer(key.sign(past))).status_code == 200


def test_a_fractional_clock_skew_is_ours_not_google_auths_whole_seconds(
    client, fake: FakeUpstream, certs, key
) -> None:
    """google-auth compares whole seconds (the time rounded down): given int(0.9) = 0 it
    refused, as a bad signature, a token our own check took (issued 0.4-0.85 s ahead)."""
    os.environ["AUTH_CLOCK_SKEW_SECONDS"] = "0.9"
    while not 0.15 <= time.time() % 1 <= 0.6:
        time.sleep(0.02)
    ahead = claims(iat=_now() + 1, auth_time=_now())
    assert post(client, bearer(key.sign(ahead))).status_code == 200


def test_a_token_valid_on_arrival_stays_valid_while_certs_are_fetched(
    client, fake: FakeUpstream, certs: CertsServer, key
) -> None:
    """A token within the skew when it came, the certs a slow first fetch away: google-auth
    checked its `exp` again after the wait, and refused it as a signature that does not
    verify (a reviewer's)."""
    os.environ["AUTH_CLOCK_SKEW_SECONDS"] = "2"
    certs.delay = 3.5  # past the skew google-auth was given (3 s), whatever the fraction
    token = key.sign(claims(exp=_now() - 1))
    assert post(client, bearer(token)).status_code == 200


def test_a_valid_token_passes_google_auths_checks_too(client, fake, certs, key) -> None:
    """A token with a float `exp` in range: our checks and google-auth's agree."""
    token = key.sign(claims(exp=_now() + 30.5))
    assert post(client, bearer(token)).status_code == 200


def test_certs_are_fetched_once_for_many_requests(
    client, fake: FakeUpstream, certs: CertsServer, key
) -> None:
    for index in range(8):
        fake.push(Script(tokens=["ok"]))
        response = post(client, bearer(key.sign(claims(f"user-{index}"))))
        assert response.status_code == 200
        response.get_data()
    assert certs.fetches == 1


def test_a_flood_of_unknown_key_ids_earns_one_early_refetch(
    client, fake: FakeUpstream, certs: CertsServer, key
) -> None:
    assert post(client, bearer(key.sign(claims()))).status_code == 200
    for index in range(20):
        token = key.sign(claims(), kid=f"forged-{index}")
        assert post(client, bearer(token)).status_code == 401
    assert certs.fetches == 2  # the first fetch, then one early re-fetch, then no more


def test_a_rotated_key_is_picked_up_before_max_age(
    client, fake: FakeUpstream, certs: CertsServer, key
) -> None:
    assert post(client, bearer(key.sign(claims()))).status_code == 200
    rotated = SigningKey("key-2")
    certs.certs[rotated.kid] = rotated.cert_pem
    assert post(client, bearer(rotated.sign(claims()))).status_code == 200
    assert certs.fetches == 2


@pytest.mark.parametrize("failure", ["down", "500"])
def test_certs_unreachable_with_none_cached_is_503(
    client, fake: FakeUpstream, firestore, certs: CertsServer, key, failure: str, capsys
) -> None:
    if failure == "down":
        certs.stop()
    else:
        certs.status = 500
    response = post(client, bearer(key.sign(claims())), **SAVING)
    assert response.status_code == 503
    assert response.get_json()["code"] == "auth_unavailable"
    assert "Retry-After" in response.headers
    assert fake.requests == []
    assert _messages(firestore) == []
    # Why, in the request's own line (with its trace id), not only in the certs' line.
    [refused] = [line for line in log_lines(capsys.readouterr().out)
                 if line["message"] == "request.refused"]  # fmt: skip
    assert refused["trace_id"] == response.headers["X-Trace-Id"]
    assert "token certs" in refused["reason"]


def test_a_plainly_bad_token_costs_no_certs_fetch(client, certs: CertsServer, key) -> None:
    """Expired, or for another project: refused on its claims, before any fetch."""
    post(client, bearer(key.sign(claims(exp=_now() - 600, iat=_now() - 4000))))
    post(client, bearer(key.sign(claims(aud="elsewhere"))))
    assert certs.fetches == 0


def test_history_is_the_token_users_not_the_bodys(
    client, fake: FakeUpstream, firestore, certs, key
) -> None:
    messages = firestore.collection("assistants").document("test-assistant").collection("messages")
    for message_id, user_id, content in [
        ("mine-user", "uid-ada", "my earlier question"),
        ("theirs-user", "bob@example.com", "bob's secret question"),
    ]:
        messages.document(message_id).set(
            {
                "role": "user",
                "content": content,
                "userId": user_id,
                "threadId": None,
                "traceId": message_id,
                "createdAt": datetime.datetime.now(datetime.UTC),
            }
        )
    body = {
        "read_from_history": True,
        "emissaryConfig": {"currentUser": {"email": "bob@example.com"}},
    }
    post(client, bearer(key.sign(claims("uid-ada"))), "new question", **body).get_data()
    sent = fake.wait_for_requests(1)[0].body["messages"]
    assert [m["content"] for m in sent] == ["my earlier question\n\nnew question"]


def test_the_real_server_logs_no_token(fake: FakeUpstream, key, impostor, tmp_path) -> None:
    """Whatever the server and gunicorn print, for good and bad tokens alike."""
    tokens = [
        key.sign(claims("logged-user")),
        key.sign(claims(exp=_now() - 600, iat=_now() - 4000)),
        impostor.sign(claims()),
        unsigned(claims()),
        "not.a-token",
    ]
    log_path = tmp_path / "server.log"
    with CertsServer(key) as certs, log_path.open("wb") as log:
        env = {"AUTH_MODE": "firebase", "FIREBASE_CERTS_URL": certs.url,
               "FIREBASE_PROJECT_ID": PROJECT}  # fmt: skip
        with running_service(env, output=log) as service:
            statuses = []
            for token in tokens:
                fake.push(Script(tokens=["ok"]))
                response = httpx.post(
                    f"{service.url}/vac/assistant/logs/sse",
                    json={"user_input": "hi"},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
                statuses.append(response.status_code)
                assert token not in response.text
    assert statuses == [200, 401, 401, 401, 401]
    logged = log_path.read_text()
    assert '"request.refused"' in logged  # the log was captured
    for token in tokens:
        for part in token.split("."):
            if len(part) > 8:
                assert part not in logged
