"""firestore.rules, proved against the real Cloud Firestore emulator over REST.

Requests carrying an unsigned end-user JWT are judged by the rules; requests
with ``Authorization: Bearer owner`` bypass them, which is how each test seeds
its data (and the last tests show that path is not what is under test).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.emulator import PROJECT, FirestoreEmulator

ASSISTANT = "a1"
ALICE = "alice"
BOB = "bob"
OWNER = {"Authorization": "Bearer owner"}
MESSAGES = f"assistants/{ASSISTANT}/messages"


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def token(uid: str) -> str:
    """An unsigned Firebase ID token for ``uid``; the emulator accepts it as that user."""
    now = int(time.time())
    payload = {
        "sub": uid,
        "user_id": uid,
        "iat": now,
        "exp": now + 3600,
        "aud": PROJECT,
        "iss": f"https://securetoken.google.com/{PROJECT}",
        "auth_time": now,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
    }
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(payload)}."


def as_user(uid: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(uid)}"}


def fields(**values: str) -> dict[str, Any]:
    """A Firestore REST document body with string fields."""
    return {"fields": {name: {"stringValue": value} for name, value in values.items()}}


def message(user_id: str, role: str = "user", content: str = "hi") -> dict[str, Any]:
    body = fields(role=role, content=content, userId=user_id, traceId=f"trace-{user_id}")
    body["fields"]["createdAt"] = {"timestampValue": "2024-01-01T00:00:00Z"}
    return body


def plain(document: dict[str, Any]) -> dict[str, str]:
    """The string fields of a REST document, unwrapped."""
    return {
        name: value["stringValue"]
        for name, value in document["fields"].items()
        if "stringValue" in value
    }


class Rest:
    """The emulator's Firestore REST API, rooted at the default database's documents."""

    def __init__(self, host: str) -> None:
        self.base = f"http://{host}/v1/projects/{PROJECT}/databases/(default)/documents"
        self.http = httpx.Client(timeout=10)

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.get(f"{self.base}/{path}", headers=headers or {})

    def create(
        self,
        collection: str,
        doc_id: str,
        body: dict[str, Any],
        headers: dict[str, str] | None,
        server_time: bool = True,
    ) -> httpx.Response:
        """Create the document as a browser's SDK does; with `server_time`, its createdAt
        is the request's time (the SDK's serverTimestamp()) instead of the body's."""
        fields = {
            name: value
            for name, value in body["fields"].items()
            if not (server_time and name == "createdAt")
        }
        name = f"projects/{PROJECT}/databases/(default)/documents/{collection}/{doc_id}"
        write: dict[str, Any] = {
            "update": {"name": name, "fields": fields},
            "currentDocument": {"exists": False},
        }
        if server_time:
            write["updateTransforms"] = [
                {"fieldPath": "createdAt", "setToServerValue": "REQUEST_TIME"}
            ]
        return self.http.post(
            f"{self.base}:commit", json={"writes": [write]}, headers=headers or {}
        )

    def patch(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None
    ) -> httpx.Response:
        return self.http.patch(f"{self.base}/{path}", json=body, headers=headers or {})

    def delete(self, path: str, headers: dict[str, str] | None) -> httpx.Response:
        return self.http.delete(f"{self.base}/{path}", headers=headers or {})

    def run_query(
        self, parent: str, query: dict[str, Any], headers: dict[str, str] | None
    ) -> httpx.Response:
        return self.http.post(
            f"{self.base}/{parent}:runQuery",
            json={"structuredQuery": query},
            headers=headers or {},
        )

    def seed(self, path: str, body: dict[str, Any]) -> None:
        """Write a document as the owner (bypassing the rules)."""
        response = self.patch(path, body, OWNER)
        assert response.status_code == 200, response.text


def messages_query(user_id: str | None = None) -> dict[str, Any]:
    query: dict[str, Any] = {"from": [{"collectionId": "messages"}]}
    if user_id is not None:
        query["where"] = {
            "fieldFilter": {
                "field": {"fieldPath": "userId"},
                "op": "EQUAL",
                "value": {"stringValue": user_id},
            }
        }
    return query


@pytest.fixture
def rest(firestore_emulator: FirestoreEmulator) -> Iterator[Rest]:
    """A clean emulator holding two of Alice's messages and one of Bob's."""
    firestore_emulator.reset()
    client = Rest(firestore_emulator.host)
    client.seed(f"{MESSAGES}/alice-1", message(ALICE, content="first"))
    client.seed(f"{MESSAGES}/alice-2", message(ALICE, role="assistant", content="reply"))
    client.seed(f"{MESSAGES}/bob-1", message(BOB, content="bob's"))
    yield client
    client.http.close()


# --- reads ---------------------------------------------------------------


def test_user_reads_own_message(rest: Rest) -> None:
    response = rest.get(f"{MESSAGES}/alice-1", as_user(ALICE))
    assert response.status_code == 200, response.text
    assert plain(response.json())["content"] == "first"


def test_user_cannot_read_another_users_message(rest: Rest) -> None:
    response = rest.get(f"{MESSAGES}/bob-1", as_user(ALICE))
    assert response.status_code == 403, response.text


def test_user_reads_a_message_not_written_yet_as_missing(rest: Rest) -> None:
    """A frontend told `persist_failed` reads `{traceId}-assistant` to learn whether it
    landed late: before it does, that was a 403 (`resource` is null), which looks like a
    sign-in problem and ends a listener (a reviewer)."""
    response = rest.get(f"{MESSAGES}/trace-late-assistant", as_user(ALICE))
    assert response.status_code == 404, response.text
    assert rest.get(f"{MESSAGES}/trace-late-assistant").status_code == 403  # signed in only


# --- lists and queries ----------------------------------------------------


def test_query_filtered_on_own_user_id_returns_only_theirs(rest: Rest) -> None:
    response = rest.run_query(f"assistants/{ASSISTANT}", messages_query(ALICE), as_user(ALICE))
    assert response.status_code == 200, response.text
    documents = [entry["document"] for entry in response.json() if "document" in entry]
    names = sorted(doc["name"].rsplit("/", 1)[-1] for doc in documents)
    assert names == ["alice-1", "alice-2"]
    assert {plain(doc)["userId"] for doc in documents} == {ALICE}


def test_query_filtered_on_another_user_id_is_denied(rest: Rest) -> None:
    response = rest.run_query(f"assistants/{ASSISTANT}", messages_query(BOB), as_user(ALICE))
    assert response.status_code == 403, response.text


def test_unfiltered_query_is_denied(rest: Rest) -> None:
    response = rest.run_query(f"assistants/{ASSISTANT}", messages_query(), as_user(ALICE))
    assert response.status_code == 403, response.text


def test_unfiltered_list_is_denied(rest: Rest) -> None:
    response = rest.get(MESSAGES, as_user(ALICE))
    assert response.status_code == 403, response.text


# --- creates --------------------------------------------------------------


def test_user_creates_own_user_message(rest: Rest) -> None:
    mine = f"trace-{ALICE}-user"  # {traceId}-user, as the backend names it
    response = rest.create(MESSAGES, mine, message(ALICE), as_user(ALICE))
    assert response.status_code == 200, response.text
    stored = rest.get(f"{MESSAGES}/{mine}", OWNER)
    assert stored.status_code == 200
    assert plain(stored.json())["userId"] == ALICE


@pytest.mark.parametrize("document_id", ["new", f"trace-{ALICE}-assistant", "other-trace-user"])
def test_user_message_only_under_its_own_trace_ids_user_id(rest: Rest, document_id: str) -> None:
    """A user message under another id could take the id of a reply not saved yet."""
    response = rest.create(MESSAGES, document_id, message(ALICE), as_user(ALICE))
    assert response.status_code == 403, response.text
    assert rest.get(f"{MESSAGES}/{document_id}", OWNER).status_code == 404


def test_a_question_goes_beside_its_reply_only_for_the_replys_user(rest: Rest) -> None:
    """A reply saved before its question (the frontend saving it late): another user
    took the question's place, paired with Alice's reply, and hers was refused (a
    reviewer's, the trace id known)."""
    rest.seed(f"{MESSAGES}/trace-{ALICE}-assistant", message(ALICE, role="assistant"))
    bobs = message(BOB)
    bobs["fields"]["traceId"] = {"stringValue": f"trace-{ALICE}"}
    taken = rest.create(MESSAGES, f"trace-{ALICE}-user", bobs, as_user(BOB))
    assert taken.status_code == 403, taken.text
    mine = rest.create(MESSAGES, f"trace-{ALICE}-user", message(ALICE), as_user(ALICE))
    assert mine.status_code == 200, mine.text


def test_user_cannot_create_assistant_message(rest: Rest) -> None:
    own_id = f"trace-{ALICE}-user"  # the id is right: the role is what is refused
    response = rest.create(MESSAGES, own_id, message(ALICE, role="assistant"), as_user(ALICE))
    assert response.status_code == 403, response.text
    assert rest.get(f"{MESSAGES}/{own_id}", OWNER).status_code == 404


def test_a_user_message_is_created_with_the_servers_time(rest: Rest) -> None:
    """createdAt orders the history: one the browser chose, or none (the history query
    then never finds the message), is refused."""
    mine = f"trace-{ALICE}-user"
    response = rest.create(MESSAGES, mine, message(ALICE), as_user(ALICE), server_time=False)
    assert response.status_code == 403, response.text
    without = message(ALICE)
    del without["fields"]["createdAt"]
    response = rest.create(MESSAGES, mine, without, as_user(ALICE), server_time=False)
    assert response.status_code == 403, response.text
    assert rest.get(f"{MESSAGES}/{mine}", OWNER).status_code == 404


@pytest.mark.parametrize(
    "content", [{"integerValue": "5"}, {"mapValue": {"fields": {}}}, {"nullValue": None}]
)
def test_a_user_messages_content_is_text(rest: Rest, content: dict[str, Any]) -> None:
    mine = f"trace-{ALICE}-user"
    body = message(ALICE)
    body["fields"]["content"] = content
    response = rest.create(MESSAGES, mine, body, as_user(ALICE))
    assert response.status_code == 403, response.text


def test_a_user_message_within_the_input_limit_and_a_thread_is_taken(rest: Rest) -> None:
    # 32,000 code points as user_input counts them, each an emoji: the rules count the
    # UTF-16 units, 64,000 (a 32,001-character limit refused the frontend's own question).
    mine = f"trace-{ALICE}-user"
    body = message(ALICE, content="😀" * 32000)
    body["fields"]["threadId"] = {"stringValue": "t-1"}
    response = rest.create(MESSAGES, mine, body, as_user(ALICE))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "field, value",
    [
        # Longer than user_input may be: the history read sends it to the model (60 of
        # a megabyte each took a worker's memory from 48 to 319 MB).
        ("content", {"stringValue": "x" * 64001}),
        # Fields a user's message does not have: the service's own, or a name the
        # token did not give.
        ("status", {"stringValue": "complete"}),
        ("userEmail", {"stringValue": "ceo@corp.example"}),
        ("provider", {"stringValue": "anthropic"}),
        ("threadId", {"mapValue": {"fields": {}}}),
    ],
)
def test_a_user_message_holds_what_a_user_message_has(
    rest: Rest, field: str, value: dict[str, Any]
) -> None:
    mine = f"trace-{ALICE}-user"
    body = message(ALICE)
    body["fields"][field] = value
    response = rest.create(MESSAGES, mine, body, as_user(ALICE))
    assert response.status_code == 403, response.text
    assert rest.get(f"{MESSAGES}/{mine}", OWNER).status_code == 404


@pytest.mark.parametrize(
    ("trace_id", "thread_id"),
    [
        ("x" * 129, "t-1"),
        ("a b", "t-1"),
        (f"trace-{ALICE}", "t.1"),
        (f"trace-{ALICE}", "t" * 129),
        (f"trace-{ALICE}", "__t__"),  # Firestore's reserved form, which requests may not use
        (f"trace-{ALICE}", "__"),
    ],
)
def test_a_user_messages_ids_are_those_the_service_takes(
    rest: Rest, trace_id: str, thread_id: str
) -> None:
    """A trace id or thread id no request may carry is never paired with a reply."""
    body = message(ALICE)
    body["fields"]["traceId"] = {"stringValue": trace_id}
    body["fields"]["threadId"] = {"stringValue": thread_id}
    response = rest.create(MESSAGES, f"{trace_id}-user", body, as_user(ALICE))
    assert response.status_code == 403, response.text


def test_user_cannot_create_message_as_someone_else(rest: Rest) -> None:
    response = rest.create(MESSAGES, f"trace-{BOB}-user", message(BOB), as_user(ALICE))
    assert response.status_code == 403, response.text
    assert rest.get(f"{MESSAGES}/trace-{BOB}-user", OWNER).status_code == 404


# --- messages are a record ------------------------------------------------


def test_author_cannot_update_own_message(rest: Rest) -> None:
    response = rest.patch(f"{MESSAGES}/alice-1", message(ALICE, content="edited"), as_user(ALICE))
    assert response.status_code == 403, response.text
    stored = rest.get(f"{MESSAGES}/alice-1", OWNER)
    assert plain(stored.json())["content"] == "first"


def test_author_cannot_delete_own_message(rest: Rest) -> None:
    response = rest.delete(f"{MESSAGES}/alice-1", as_user(ALICE))
    assert response.status_code == 403, response.text
    assert rest.get(f"{MESSAGES}/alice-1", OWNER).status_code == 200


# --- unauthenticated ------------------------------------------------------


def test_unauthenticated_read_is_denied(rest: Rest) -> None:
    assert rest.get(f"{MESSAGES}/alice-1").status_code == 403


def test_unauthenticated_list_is_denied(rest: Rest) -> None:
    assert rest.get(MESSAGES).status_code == 403
    query = rest.run_query(f"assistants/{ASSISTANT}", messages_query(ALICE), None)
    assert query.status_code == 403, query.text


def test_unauthenticated_create_is_denied(rest: Rest) -> None:
    response = rest.create(MESSAGES, f"trace-{ALICE}-user", message(ALICE), None)
    assert response.status_code == 403, response.text
    assert rest.get(f"{MESSAGES}/trace-{ALICE}-user", OWNER).status_code == 404


# --- everything else is closed --------------------------------------------


def test_assistant_document_itself_is_denied(rest: Rest) -> None:
    rest.seed(f"assistants/{ASSISTANT}", fields(name="helper"))
    assert rest.get(f"assistants/{ASSISTANT}", as_user(ALICE)).status_code == 403
    response = rest.patch(f"assistants/{ASSISTANT}", fields(name="mine"), as_user(ALICE))
    assert response.status_code == 403, response.text


def test_other_collections_are_denied(rest: Rest) -> None:
    rest.seed("other/x", fields(userId=ALICE))
    assert rest.get("other/x", as_user(ALICE)).status_code == 403
    response = rest.create("other", "y", fields(userId=ALICE, role="user"), as_user(ALICE))
    assert response.status_code == 403, response.text


# --- the owner bypass used for seeding --------------------------------------


def test_owner_bypass_reads_and_writes_anything(rest: Rest) -> None:
    assert rest.get(f"{MESSAGES}/bob-1", OWNER).status_code == 200
    assert rest.get(MESSAGES, OWNER).status_code == 200
    edited = rest.patch(f"{MESSAGES}/alice-1", message(ALICE, content="edited"), OWNER)
    assert edited.status_code == 200, edited.text
    assert rest.create("other", "z", fields(role="assistant"), OWNER).status_code == 200
    assert rest.delete(f"{MESSAGES}/bob-1", OWNER).status_code == 200
    assert rest.get(f"{MESSAGES}/bob-1", OWNER).status_code == 404
