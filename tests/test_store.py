"""Persistence against the real Firestore emulator (README "Persistence")."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from assistant import reply as reply_module
from assistant import store
from assistant.config import Settings
from assistant.parking import Park
from assistant.providers import configured_providers
from assistant.reply import Reply
from assistant.request import AssistantRequest
from assistant.saving import HISTORY_NO_USER, HISTORY_TIMEOUT
from assistant.store import AssistantMessage, Author, FirestoreStore, TraceIdKept
from assistant.tracing import RequestLog
from assistant.worker import STOP_SAVE_SECONDS, stop_end_seconds
from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import free_port, running_service

from .conftest import ask, log_lines, sse_events, stopped_before_the_kill
from .database_relay import DatabaseRelay
from .emulator import PROJECT
from .provider_cases import FIXTURES
from .raw_http import open_raw

USER = {"email": "ada@example.com", "displayName": "Ada"}
SAVE = {"save_to_history": True, "emissaryConfig": {"currentUser": USER}}


def _persist_kept(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The `persist.kept` log lines the service wrote since the last look: a WARNING, as
    a caller's reused trace id is no outage (an ERROR is for what the operator must
    act on); and no `persist.failed` line beside them."""
    lines = log_lines(capsys.readouterr().out)
    assert [line for line in lines if line["message"] == "persist.failed"] == []
    kept = [line for line in lines if line["message"] == "persist.kept"]
    assert all(line["severity"] == "WARNING" for line in kept)
    return kept


def _messages(db: Any, assistant_id: str = "test-assistant") -> dict[str, dict[str, Any]]:
    collection = db.collection("assistants").document(assistant_id).collection("messages")
    return {snapshot.id: snapshot.to_dict() for snapshot in collection.stream()}


def test_the_project_and_database_are_read_as_every_setting_is(
    client, fake: FakeUpstream, firestore
) -> None:
    """Blanks around GOOGLE_CLOUD_PROJECT or FIRESTORE_DATABASE failed every save (the
    store read them raw; logs, auth and keys used them trimmed) while the rest worked."""
    from google.cloud import firestore as firestore_client

    os.environ["FIRESTORE_DATABASE"] = " side-db "
    side = firestore_client.Client(project=PROJECT, database="side-db")
    for name in ("GOOGLE_CLOUD_PROJECT", "GCP_PROJECT"):  # the older name too (a reviewer)
        os.environ.pop("GOOGLE_CLOUD_PROJECT")
        os.environ[name] = f" {PROJECT} "
        fake.push(Script(tokens=["Saved."]))
        final = sse_events(ask(client, trace_id=f"t-{name}", **SAVE).get_data())[-2]
        assert final["metadata"]["persist_failed"] is False
        assert _messages(side)[f"t-{name}-assistant"]["content"] == "Saved."


def test_both_messages_are_saved_with_every_field(client, fake: FakeUpstream, firestore) -> None:
    fake.push(Script(thinking=["consider ", "it"], tokens=["The ", "answer."]))
    response = ask(client, "What now?", trace_id="trace-1", thread_id="thread-9", **SAVE)
    final = sse_events(response.get_data())[-2]
    assert final["metadata"]["message_ids"] == {
        "user": "trace-1-user",
        "assistant": "trace-1-assistant",
    }
    assert final["metadata"]["persist_failed"] is False

    saved = _messages(firestore)
    assert set(saved) == {"trace-1-user", "trace-1-assistant"}
    user, reply = saved["trace-1-user"], saved["trace-1-assistant"]
    assert user["role"] == "user"
    assert user["content"] == "What now?"
    # Every field a message has, on both (a checker of the collection found six missing
    # on questions): none of a reply's values on a question.
    reply_fields = ("provider", "model", "usage", "stopReason", "structuredOutput", "toolsToUse")
    assert {name: user[name] for name in reply_fields} == dict.fromkeys(reply_fields)
    assert reply["role"] == "assistant"
    assert reply["content"] == "The answer."  # no thinking in the visible text
    assert reply["thinkingContent"] == "consider it"
    assert reply["status"] == "complete"
    assert reply["provider"] == "anthropic"
    assert reply["modelVersion"] == "fake-claude"
    assert reply["usage"] == {"input_tokens": 12, "output_tokens": 4}
    assert reply["stopReason"] == "end_turn"
    assert reply["structuredOutput"] is None
    assert reply["toolsToUse"] == []
    for message in (user, reply):
        assert message["traceId"] == "trace-1"
        assert message["threadId"] == "thread-9"
        assert message["userId"] == "ada@example.com"
        assert message["userEmail"] == "ada@example.com"
        assert message["userName"] == "Ada"
        assert isinstance(message["createdAt"], datetime.datetime)  # a server timestamp
    assert user["createdAt"] <= reply["createdAt"]


def test_user_message_is_written_while_the_provider_runs(
    client, fake: FakeUpstream, firestore
) -> None:
    fake.push(Script(tokens=["late"], ttft=1.5))
    seen_at: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not seen_at:
            if "t-par-user" in _messages(firestore):
                seen_at.append(time.monotonic())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    response = ask(client, trace_id="t-par", **SAVE)  # returns with the first chunk
    first_chunk_at = time.monotonic()
    watcher.join()
    response.get_data()
    assert seen_at and seen_at[0] < first_chunk_at


def test_user_message_already_saved_is_not_written_again(client, fake, firestore) -> None:
    ask(client, trace_id="t-2", user_message_already_saved=True, **SAVE).get_data()
    assert set(_messages(firestore)) == {"t-2-assistant"}


def test_a_question_too_large_to_save_does_not_take_its_reply_with_it(
    client, fake, firestore
) -> None:
    """MAX_INPUT_CHARS raised past what a document holds: the question is refused as it
    is, and its short reply, queued behind it, was lost with it (a reviewer's); then it
    was written late, the question tried three times (another's): it is written on
    time, the question once."""
    os.environ["MAX_INPUT_CHARS"] = "1100000"
    fake.push(Script(tokens=["Short answer."]))
    final = sse_events(ask(client, "q" * 1_048_400, trace_id="t-big-q", **SAVE).get_data())[-2]
    assert final["metadata"]["persist_failed"] is True
    assert final["metadata"]["message_ids"] == {"assistant": "t-big-q-assistant"}
    saved = _messages(firestore)
    assert "t-big-q-user" not in saved
    assert saved["t-big-q-assistant"]["content"] == "Short answer."


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"save_to_history": False},
        {"save_to_history": True, "emissaryConfig": {"save_to_history": False}},
    ],
)
def test_nothing_is_written_unless_asked(client, fake, firestore, body: dict) -> None:
    final = sse_events(ask(client, trace_id="t-3", **body).get_data())[-2]
    assert final["metadata"]["message_ids"] is None
    assert _messages(firestore) == {}


def test_emissary_config_save_flag_wins(client, fake, firestore) -> None:
    body = {
        "save_to_history": False,
        "emissaryConfig": {"save_to_history": True, "currentUser": USER},
    }
    ask(client, trace_id="t-4", **body).get_data()
    assert set(_messages(firestore)) == {"t-4-user", "t-4-assistant"}


def test_a_retried_request_never_duplicates(client, fake, firestore) -> None:
    for _ in range(3):
        ask(client, "same question", trace_id="t-retry", **SAVE).get_data()
    saved = _messages(firestore)
    assert set(saved) == {"t-retry-user", "t-retry-assistant"}


def test_a_json_reply_failing_midway_everywhere_saves_what_arrived(
    client, fake: FakeUpstream, firestore
) -> None:
    """The JSON route falls through even after text; when the last provider fails too,
    the text that arrived is reported and saved `incomplete`, as on the stream (a
    reviewer found nothing saved)."""
    fake.push(Script(tokens=["half ", "an answer"], fail_after=1, fail_mode="error_event"))
    response = client.post(
        "/vac/assistant/test-assistant",
        json={"user_input": "hi", "trace_id": "t-json-half", **SAVE},
    )
    assert response.status_code == 502
    body = response.get_json()
    assert body["partial"] == "half "
    # Said as a stream's error frame says it (its body said nothing of the save).
    assert body["persist_failed"] is False
    assert body["message_ids"] == {"user": "t-json-half-user", "assistant": "t-json-half-assistant"}
    response.close()  # its slot back: the test client closes no response by itself
    saved = _messages(firestore)["t-json-half-assistant"]
    assert saved["status"] == "incomplete" and saved["content"] == "half"
    fake.push(Script(tokens=["other ", "text"], fail_after=1, fail_mode="error_event"))
    reused = client.post(  # the trace id holds another question: nothing of this is saved
        "/vac/assistant/test-assistant",
        json={"user_input": "another", "trace_id": "t-json-half", **SAVE},
    )
    assert (reused.status_code, reused.get_json()["persist_failed"]) == (502, True)
    reused.close()


def test_a_retry_replaces_the_same_users_reply(client, fake: FakeUpstream, firestore) -> None:
    fake.push(Script(tokens=["First."]))
    ask(client, "same question", trace_id="t-again", **SAVE).get_data()
    first = _messages(firestore)["t-again-assistant"]["createdAt"]
    ask(client, "a later question", trace_id="t-later", **SAVE).get_data()
    fake.push(Script(tokens=["Second."]))
    final = sse_events(ask(client, "same question", trace_id="t-again", **SAVE).get_data())[-2]
    assert final["metadata"]["persist_failed"] is False
    replaced = _messages(firestore)["t-again-assistant"]
    assert replaced["content"] == "Second."
    # Its place in the history is kept: before the later question (a reviewer's history
    # read gave the later question, then both replies).
    assert replaced["createdAt"] == first < _messages(firestore)["t-later-user"]["createdAt"]


@pytest.mark.parametrize("how", ["provider fails", "client leaves"])
def test_a_retrys_incomplete_reply_does_not_replace_a_complete_one(
    client, fake: FakeUpstream, firestore, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    fake.push(Script(tokens=["First ", "complete."]))
    ask(client, "same question", trace_id="t-kept", **SAVE).get_data()
    before = _messages(firestore)
    assert before["t-kept-assistant"]["status"] == "complete"
    if how == "provider fails":
        fake.push(Script(tokens=["Second ", "try"], fail_after=1, fail_mode="cut"))
        final = sse_events(ask(client, "same question", trace_id="t-kept", **SAVE).get_data())[-2]
        assert final["metadata"]["persist_failed"] is True
        assert final["metadata"]["message_ids"] == {"user": "t-kept-user"}
    else:
        fake.push(Script(tokens=[f"w{i} " for i in range(100)], interval=0.05))
        response = ask(client, "same question", trace_id="t-kept", **SAVE)
        frames = iter(response.response)
        next(frames)
        next(frames)
        response.close()  # the reply's save ends with the close
    assert _messages(firestore) == before
    failed = _persist_kept(capsys)
    assert [line["role"] for line in failed] == ["assistant"]
    assert "holds a complete reply" in failed[0]["reason"]


@pytest.mark.parametrize("second", ["another question", "another thread"])
@pytest.mark.parametrize(
    "answered, already_saved",
    [(True, False), (True, True), (False, True)],
    ids=["answered", "answered-frontend-saved", "unanswered-frontend-saved"],
)
def test_a_trace_id_reused_for_another_question_keeps_the_first_pair(
    client,
    fake: FakeUpstream,
    firestore,
    capsys: pytest.CaptureFixture[str],
    answered: bool,
    already_saved: bool,
    second: str,
) -> None:
    """Not a retry: the question and its reply stay together; the new pair is not saved
    (with user_message_already_saved, the reply is compared with the saved question,
    also when that question has no reply yet: a reviewer found "Answer two." filed
    under question one, whose provider had failed). The same question in another
    thread is another exchange too: its reply filed in its own thread, a reviewer's
    exchange was in neither thread's history."""
    fake.push(Script(tokens=["Answer one."]) if answered else Script(fail="500"))
    first = ask(client, "question one", trace_id="t-reused", thread_id="th-a", **SAVE)
    first.get_data()  # the reply ends (and is saved) as its stream is read
    assert first.status_code == (200 if answered else 502)
    before = _messages(firestore)
    assert ("t-reused-assistant" in before) is answered
    fake.push(Script(tokens=["Answer two."]))
    response = ask(
        client,
        "question two" if second == "another question" else "question one",
        trace_id="t-reused",
        thread_id="th-a" if second == "another question" else "th-b",
        user_message_already_saved=already_saved,
        **SAVE,
    )
    final = sse_events(response.get_data())[-2]
    assert final["answer"] == "Answer two."
    assert final["metadata"]["persist_failed"] is True
    assert final["metadata"]["message_ids"] is None
    assert _messages(firestore) == before
    failed = _persist_kept(capsys)
    assert "holds another question" in failed[0]["reason"]


def test_a_retry_in_another_thread_keeps_a_reply_to_a_question_saved_with_none(
    client, fake: FakeUpstream, firestore
) -> None:
    """The frontend saved the question with no thread (it is in any), its reply went to
    one: a retry in another replaced the reply and filed it there (a reviewer)."""
    firestore.collection("assistants").document("test-assistant").collection("messages").document(
        "t-ft-user"
    ).set({"role": "user", "content": "question", "userId": USER["email"], "traceId": "t-ft"})
    body = {"trace_id": "t-ft", "user_message_already_saved": True, **SAVE}
    fake.push(Script(tokens=["First."]))
    first = sse_events(ask(client, "question", thread_id="th-a", **body).get_data())[-2]
    assert first["metadata"]["persist_failed"] is False
    fake.push(Script(tokens=["Second."]))
    again = sse_events(ask(client, "question", thread_id="th-b", **body).get_data())[-2]
    assert again["metadata"]["persist_failed"] is True
    kept = _messages(firestore)["t-ft-assistant"]
    assert (kept["content"], kept["threadId"]) == ("First.", "th-a")
    fake.push(Script(tokens=["Third."]))  # a retry in its own thread still replaces it
    third = sse_events(ask(client, "question", thread_id="th-a", **body).get_data())[-2]
    assert third["metadata"]["persist_failed"] is False
    assert _messages(firestore)["t-ft-assistant"]["content"] == "Third."


def test_a_question_saved_with_no_thread_is_filed_in_the_thread_its_request_names(
    client, fake: FakeUpstream, firestore
) -> None:
    """The rules let a frontend leave `threadId` out: the reply went to the request's
    thread and the question to none, and that thread's history had the reply alone,
    merged with the one before it (a reviewer's)."""
    _seed(firestore, "k1-user", "user", "Q1", USER["email"], 1, thread="work")
    _seed(firestore, "k1-assistant", "assistant", "R1", USER["email"], 2, thread="work")
    firestore.collection("assistants").document("test-assistant").collection("messages").document(
        "k2-user"
    ).set(
        {
            "role": "user",
            "content": "Q2",
            "userId": USER["email"],
            "traceId": "k2",
            "createdAt": datetime.datetime(2026, 1, 1, 0, 0, 3, tzinfo=datetime.UTC),
        }
    )
    body = {"trace_id": "k2", "thread_id": "work", "user_message_already_saved": True, **SAVE}
    fake.push(Script(tokens=["R2"]))
    final = sse_events(ask(client, "Q2", **body).get_data())[-2]
    assert final["metadata"]["persist_failed"] is False
    saved = _messages(firestore)
    assert saved["k2-user"]["threadId"] == saved["k2-assistant"]["threadId"] == "work"
    fake.push(Script(tokens=["R3"]))
    ask(client, "Q3", thread_id="work", read_from_history=True, **SAVE).get_data()
    sent = fake.wait_for_requests(2)[1].body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Q1"),
        ("assistant", "R1"),
        ("user", "Q2"),
        ("assistant", "R2"),
        ("user", "Q3"),
    ]


@pytest.mark.parametrize("already_saved", [True, False])
def test_a_question_saved_with_no_thread_is_filed_whatever_the_request_says_of_it(
    client, fake: FakeUpstream, firestore, already_saved: bool
) -> None:
    """Without `user_message_already_saved` the question the frontend saved counted as
    this request's own retry, and was left out of the thread (a reviewer's)."""
    firestore.collection("assistants").document("test-assistant").collection("messages").document(
        "t1-user"
    ).set({"role": "user", "content": "Q1", "userId": USER["email"], "traceId": "t1"})
    body = {"trace_id": "t1", "thread_id": "th-a", **SAVE}
    if already_saved:
        body["user_message_already_saved"] = True
    fake.push(Script(tokens=["R1"]))
    final = sse_events(ask(client, "Q1", **body).get_data())[-2]
    assert final["metadata"]["persist_failed"] is False
    saved = _messages(firestore)
    assert saved["t1-user"]["threadId"] == saved["t1-assistant"]["threadId"] == "th-a"


def test_a_retry_refused_for_another_thread_leaves_the_question_where_it_was(
    client, fake: FakeUpstream, firestore
) -> None:
    """A question the frontend saved with no thread, answered with none: a retry in a
    thread is refused, and the question stays with its reply (it was moved to the retry's
    thread before the refusal, a reviewer's, the pair split between two threads)."""
    firestore.collection("assistants").document("test-assistant").collection("messages").document(
        "t-x-user"
    ).set({"role": "user", "content": "question", "userId": USER["email"], "traceId": "t-x"})
    body = {"trace_id": "t-x", "user_message_already_saved": True, **SAVE}
    fake.push(Script(tokens=["First."]))
    ask(client, "question", **body).get_data()
    fake.push(Script(tokens=["Second."]))
    again = sse_events(ask(client, "question", thread_id="th-b", **body).get_data())[-2]
    assert again["metadata"]["persist_failed"] is True
    saved = _messages(firestore)
    assert "threadId" not in saved["t-x-user"]
    assert (saved["t-x-assistant"]["content"], saved["t-x-assistant"]["threadId"]) == (
        "First.",
        None,
    )


def test_a_history_message_whose_content_is_not_text_reads_as_empty(
    client, fake: FakeUpstream, firestore
) -> None:
    """The rules let a user write their own messages: a map or a number as content reads
    as no text, not as a failure of every later history read (a reviewer's 502s)."""
    _seed(firestore, "q1-user", "user", "first question", USER["email"], 1)
    _seed(firestore, "q1-assistant", "assistant", "first answer", USER["email"], 2)
    _seed(firestore, "q2-user", "user", "x", USER["email"], 3)
    firestore.collection("assistants").document("test-assistant").collection("messages").document(
        "q2-user"
    ).update({"content": {"not": "text"}})
    body = {"read_from_history": True, "emissaryConfig": {"currentUser": USER}}
    response = ask(client, "new question", **body)
    assert sse_events(response.get_data())[-2]["answer"]
    sent = _sent_messages(fake)
    assert sent[:2] == [("user", "first question"), ("assistant", "first answer")]
    assert sent[-1][1].endswith("new question")


def test_a_json_reply_whose_call_was_cut_says_the_call_it_saves(
    client, fake: FakeUpstream, firestore
) -> None:
    """Every provider failed after one made a call: the 502 said its text and not its
    call, while the saved message held the call (a reviewer)."""
    fixture = (FIXTURES / "anthropic" / "tool_alone.sse").read_bytes()
    fake.push(Script(raw=[fixture[: fixture.index(b"event: message_delta")]]))
    asked = {"user_input": "hi", "trace_id": "t-json-call", **SAVE}
    response = client.post("/vac/assistant/test-assistant", json=asked)
    body = response.get_json()
    response.close()
    assert response.status_code == 502
    saved = _messages(firestore)["t-json-call-assistant"]
    assert saved["status"] == "incomplete" and len(saved["toolsToUse"]) == 1
    assert body["tools_to_use"] == saved["toolsToUse"]


@pytest.mark.parametrize(
    "route", ["/vac/assistant/test-assistant/sse", "/vac/assistant/test-assistant"]
)
def test_a_bug_before_the_save_still_saves_what_arrived(
    client, fake: FakeUpstream, firestore, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """Our own bug after the text arrived and before its save (here, in the structured
    output's check): the reply ends with internal_error and its text is saved
    `incomplete`, on both routes (a reviewer found nothing saved, and the JSON route
    answering a bare 500)."""

    def broken(*args: Any) -> Any:
        raise ValueError("a bug of ours")

    monkeypatch.setattr(reply_module.record, "with_structured_output", broken)
    fake.push(Script(tokens=["hello ", "world"]))
    response = ask(client, trace_id="t-bug", path=route, **SAVE)
    if route.endswith("/sse"):
        final = sse_events(response.get_data())[-2]
    else:
        assert response.status_code == 500
        final = response.get_json()
    response.close()
    assert final["code"] == "internal_error" and final["partial"] == "hello world"
    saved = _messages(firestore)["t-bug-assistant"]
    assert saved["content"] == "hello world" and saved["status"] == "incomplete"


@pytest.mark.parametrize(
    "big, fenced",
    [
        ({"items": ["x" * 1000] * 530}, False),  # ~530 KB of JSON: over 1 MiB twice
        ({"items": [7] * 120_000}, False),  # ~240 KB of JSON, but 8 bytes a number to Firestore
        # Written in a ```json fence: `content` is then the JSON, not the fence around it.
        ({"items": ["x" * 1000] * 530}, True),
    ],
    ids=["text", "numbers", "fenced"],
)
def test_a_structured_reply_too_large_to_keep_twice_is_saved_as_text(
    client, fake: FakeUpstream, firestore, big: dict[str, Any], fenced: bool
) -> None:
    """Its JSON is in `content` and, parsed, in `structuredOutput`: past what a document
    holds, the text alone is kept and says so (a reviewer's 531 KB answer was not saved
    at all, and another's many small numbers)."""
    schema = {"type": "object", "properties": {"items": {"type": "array"}}}
    text = json.dumps(big)
    fake.push(Script(tokens=["```json\n", text, "\n```"]) if fenced else Script(json=big))
    config = {**SAVE["emissaryConfig"], "responseSchema": schema}
    response = ask(client, trace_id="t-big", save_to_history=True, emissaryConfig=config)
    final = sse_events(response.get_data())[-2]
    assert final["metadata"]["structured_output"] == big
    assert final["metadata"]["persist_failed"] is False
    saved = _messages(firestore)["t-big-assistant"]
    assert json.loads(saved["content"]) == big
    assert saved["structuredOutput"] is None and saved["structuredOutputInContent"] is True

    # A retry that replaces it with a reply small enough to keep twice drops the flag.
    fake.push(Script(json={"items": [1]}))
    ask(client, trace_id="t-big", save_to_history=True, emissaryConfig=config).get_data()
    saved = _messages(firestore)["t-big-assistant"]
    assert saved["structuredOutput"] == {"items": [1]}
    assert "structuredOutputInContent" not in saved


@pytest.mark.parametrize(
    ("args", "structured"),
    [
        ({"city": "Oslo"}, False),
        ({"m": [[1, 2], [3, 4]]}, False),  # the calls stored as JSON text (a matrix)
        ({"city": "Oslo"}, True),  # a small structured output beside them is kept
    ],
    ids=["map", "text", "structured"],
)
def test_a_call_after_thinking_too_large_to_keep_twice_is_saved_without_its_signature(
    client, fake: FakeUpstream, firestore, args: dict[str, Any], structured: bool
) -> None:
    """Anthropic's call signature carries the reply's thinking blocks again: past what a
    document holds, the call is kept without it and says so (a reviewer's call after
    470 KB of thinking was not saved at all, its reply lost from the history; another's
    with arguments Firestore holds only as text neither, and a third lost the small
    structured output beside them)."""
    thinking = ["step " * 1000] * 100  # 500 KB of thinking, held twice with the call
    call = {"name": "weather", "args": args}
    answer = Script(thinking=thinking, tool_calls=[call])
    answer = dataclasses.replace(answer, json={"a": 1}) if structured else answer
    fake.push(dataclasses.replace(answer, tokens=[] if structured else ["Looking"]))
    weather = {"description": "The weather in a city", "parameters": {"type": "object"}}
    config = {**SAVE["emissaryConfig"], "tools": ["weather"], "toolConfigs": {"weather": weather}}
    if structured:
        config["responseSchema"] = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response = ask(client, trace_id="t-sig", save_to_history=True, emissaryConfig=config)
    final = sse_events(response.get_data())[-2]
    assert final["metadata"]["persist_failed"] is False
    sent = final["metadata"]["tools_to_use"][0]
    assert sent["signature"]  # the frame's call is whole
    saved = _messages(firestore)["t-sig-assistant"]
    assert saved["thinkingContent"] == "".join(thinking).strip()
    calls = saved["toolsToUse"]
    calls = json.loads(calls) if isinstance(calls, str) else calls
    assert calls == [{**call, "id": sent["id"]}]
    assert saved["toolSignaturesLeftOut"] is True
    if structured:
        assert saved["structuredOutput"] == {"a": 1}
        assert "structuredOutputInContent" not in saved

    # A retry that replaces it with a reply small enough to keep whole drops the flag.
    fake.push(Script(thinking=["brief"], tool_calls=[call]))
    ask(client, trace_id="t-sig", save_to_history=True, emissaryConfig=config).get_data()
    saved = _messages(firestore)["t-sig-assistant"]
    calls = saved["toolsToUse"]
    assert (json.loads(calls) if isinstance(calls, str) else calls)[0]["signature"]
    assert "toolSignaturesLeftOut" not in saved


BOB = {"save_to_history": True, "emissaryConfig": {"currentUser": {"email": "bob@example.com"}}}


@pytest.mark.parametrize("already_saved", [False, True])
def test_another_users_trace_id_is_not_written_to(
    client, fake: FakeUpstream, firestore, capsys: pytest.CaptureFixture[str], already_saved: bool
) -> None:
    """A trace id is the caller's to choose: reusing someone else's must not replace
    their messages, and the reply says its own were not saved."""
    fake.push(Script(tokens=["Ada's answer."]))
    ask(client, "Ada's question", trace_id="t-shared", **SAVE).get_data()
    before = _messages(firestore)
    capsys.readouterr()

    fake.push(Script(tokens=["Bob's answer."]))
    response = ask(
        client,
        "Bob's question",
        trace_id="t-shared",
        user_message_already_saved=already_saved,
        **BOB,
    )
    final, done = sse_events(response.get_data())[-2:]
    assert done == "[DONE]" and final["answer"] == "Bob's answer."
    assert final["metadata"]["persist_failed"] is True
    assert final["metadata"]["message_ids"] is None  # nothing of it was written
    after = _messages(firestore)
    assert after == before and after["t-shared-assistant"]["userId"] == "ada@example.com"
    failed = _persist_kept(capsys)
    assert failed and "belongs to another user" in failed[0]["reason"]


def test_a_reply_is_not_attached_to_another_users_question_nor_the_reverse(
    client, fake: FakeUpstream, firestore
) -> None:
    """Each message of a trace id is checked, not only the one written: Ada's question
    alone (her reply not saved yet), or her reply alone (she saved her question herself),
    takes the trace id for her."""
    ask(client, "Ada's question", trace_id="t-q", **SAVE).get_data()
    firestore.collection("assistants").document("test-assistant").collection("messages").document(
        "t-q-assistant"
    ).delete()
    ask(client, "Ada's other question", trace_id="t-a", user_message_already_saved=True, **SAVE)
    before = _messages(firestore)
    assert set(before) == {"t-q-user", "t-a-assistant"}
    for trace_id, already_saved in (("t-q", True), ("t-a", False)):
        response = ask(
            client, "Bob's", trace_id=trace_id, user_message_already_saved=already_saved, **BOB
        )
        metadata = sse_events(response.get_data())[-2]["metadata"]
        assert metadata["persist_failed"] is True and metadata["message_ids"] is None
    assert _messages(firestore) == before


def test_concurrent_retries_of_one_user_both_save(firestore) -> None:
    """Two of the same user's retries replacing one reply at once: the one whose
    conditional write lost reads again and writes, rather than report a failure."""
    from assistant.store import AssistantMessage, Author, FirestoreStore

    store = FirestoreStore("assistants", timeout=5)
    ada = Author("ada@example.com", "ada@example.com", "Ada")
    message = AssistantMessage("test-assistant", "t-race", None, ada, "first", "", "complete",
                               "anthropic", "m")  # fmt: skip
    store.save_assistant_message(message)
    start = threading.Barrier(3)

    def save(text: str) -> str:
        start.wait()
        return store.save_assistant_message(dataclasses.replace(message, content=text))

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        saved = list(pool.map(save, ["a", "b", "c"]))
    assert saved == ["t-race-assistant"] * 3
    assert _messages(firestore)["t-race-assistant"]["content"] in {"a", "b", "c"}


@pytest.mark.parametrize("first", ["reply", "question"])
def test_another_user_who_slips_in_after_the_check_is_never_paired_with_it(
    firestore, monkeypatch: pytest.MonkeyPatch, first: str
) -> None:
    """Bob answers a trace id whose question his frontend said it saved, Ada asks on the
    same id: each write's check saw the other's message missing, the other's write came
    in between. The later write looks again and is taken back (a reviewer left Ada's
    question paired with Bob's reply 8 times in 60, and Ada's own reply unsaved)."""
    from assistant.store import MessageTaken, UserMessage

    store = FirestoreStore("assistants", timeout=5)
    ada = Author("ada@example.com", "ada@example.com", "Ada")
    bob = Author("bob@example.com", "bob@example.com", "Bob")
    question = UserMessage("test-assistant", "t-slip", None, ada, "Ada's question")
    reply = AssistantMessage("test-assistant", "t-slip", None, bob, "Bob's reply", "",
                             "complete", "anthropic", "m", question="Bob's question")  # fmt: skip
    checked = store._check_trace

    def the_other_writes_right_after_the_check(*args: Any) -> Any:
        read = checked(*args)
        monkeypatch.setattr(store, "_check_trace", checked)  # the other's own check, as is
        if first == "reply":
            store.save_user_message(question)
        else:
            store.save_assistant_message(reply)
        return read

    monkeypatch.setattr(store, "_check_trace", the_other_writes_right_after_the_check)
    with pytest.raises(MessageTaken):
        if first == "reply":
            store.save_assistant_message(reply)
        else:
            store.save_user_message(question)
    messages = _messages(firestore)
    if first == "reply":  # Bob's reply was taken back: Ada's question stands alone
        assert set(messages) == {"t-slip-user"}
    else:  # Ada's question was taken back: Bob's reply stands alone
        assert set(messages) == {"t-slip-assistant"}


def _nested(depth: int) -> Any:
    value: Any = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"a": value}
    return value


# Good JSON that Firestore refuses as a map, each next to the most it takes.
REFUSED = {
    "a matrix": ([[1, 2], [3, 4]], [{"row": [1, 2]}]),
    "21 levels": (_nested(21), _nested(20)),
    "a reserved key": ({"__name__": 1}, {"__name": 1}),
    "an empty key": ({"": 1}, {" ": 1}),
    "a long key": ({"k" * 1_500: 1}, {"k" * 1_000: 1}),
    "65 bits": (2**63, -(2**63)),
}


@pytest.mark.parametrize("refused, taken", REFUSED.values(), ids=REFUSED.keys())
def test_a_value_firestore_cannot_hold_is_saved_as_its_json_text(
    firestore, refused: Any, taken: Any
) -> None:
    """A model's structured output, a call's arguments, a provider's field: valid JSON
    Firestore refuses would fail the whole message, text and all. Such a value is
    saved as its JSON text instead; one it takes, as it is."""
    from assistant.store import AssistantMessage, Author, FirestoreStore

    store = FirestoreStore("assistants", timeout=5)
    ada = Author("ada@example.com", "ada@example.com", "Ada")
    call = {"id": "c1", "name": "weather", "args": {"v": refused}}
    message = AssistantMessage("test-assistant", "t-odd", None, ada, "text", "", "complete",
                               "anthropic", "m", usage={"input_tokens": refused},
                               structured_output=refused, tools_to_use=(call,))  # fmt: skip
    store.save_assistant_message(message)
    saved = _messages(firestore)["t-odd-assistant"]
    assert saved["content"] == "text"
    assert json.loads(saved["structuredOutput"]) == refused
    assert json.loads(saved["toolsToUse"]) == [call]
    assert json.loads(saved["usage"]) == {"input_tokens": refused}
    # Named, so that a string saved as it is reads apart from a value saved as its text.
    assert saved["savedAsJsonText"] == ["usage", "structuredOutput", "toolsToUse"]

    store.save_assistant_message(
        dataclasses.replace(message, structured_output=taken, usage={}, tools_to_use=())
    )
    replaced = _messages(firestore)["t-odd-assistant"]
    assert replaced["structuredOutput"] == taken and "savedAsJsonText" not in replaced


def test_a_json_text_the_size_trim_took_out_is_not_named(firestore) -> None:
    """A matrix too large to hold twice is left out (its text is the content): it was
    still named as saved as JSON text, where it is null (a reviewer's)."""
    from assistant.store import AssistantMessage, Author, FirestoreStore

    matrix = [["x" * 1000]] * 600
    text = json.dumps(matrix)
    ada = Author("ada@example.com", "ada@example.com", "Ada")
    message = AssistantMessage("test-assistant", "t-trim", None, ada, text, "", "complete",
                               "anthropic", "m", structured_output=matrix)  # fmt: skip
    FirestoreStore("assistants", timeout=5).save_assistant_message(message)
    saved = _messages(firestore)["t-trim-assistant"]
    assert saved["structuredOutput"] is None and saved["structuredOutputInContent"] is True
    assert "savedAsJsonText" not in saved


def test_legacy_json_route_saves_too(client, fake, firestore) -> None:
    response = client.post(
        "/vac/assistant/test-assistant", json={"user_input": "hi", "trace_id": "t-json", **SAVE}
    )
    assert response.get_json()["metadata"]["message_ids"]["assistant"] == "t-json-assistant"
    response.close()
    assert _messages(firestore)["t-json-assistant"]["status"] == "complete"


def test_mid_stream_failure_saves_the_partial_reply(client, fake: FakeUpstream, firestore) -> None:
    fake.push(Script(tokens=["Half ", "of ", "it"], fail_after=2, fail_mode="cut"))
    error = sse_events(ask(client, trace_id="t-5", **SAVE).get_data())[-2]
    assert error["partial"] == "Half of "
    assert error["metadata"]["message_ids"]["assistant"] == "t-5-assistant"
    reply = _messages(firestore)["t-5-assistant"]
    assert reply["status"] == "incomplete"
    assert reply["content"] == "Half of"


@pytest.mark.parametrize(
    "route", ["/vac/assistant/test-assistant/sse", "/vac/assistant/test-assistant"]
)
@pytest.mark.parametrize(
    ("sent", "schema"),
    [
        (
            ['{"note": "wrap it in <think>', ' tags", ', '"n": 1'],
            {"type": "object", "properties": {"note": {"type": "string"}}},
        ),
        # A JSON string asked for: read as prose (a second reviewer's).
        (['"Wrap the reasoning in a <think>', " tag, then", " answer"], {"type": "string"}),
    ],
    ids=["object", "string"],
)
def test_a_json_reply_cut_short_keeps_a_quoted_tag_as_its_text(
    client, fake: FakeUpstream, firestore, route: str, sent: list[str], schema: dict[str, Any]
) -> None:
    """A reply asked for JSON, cut short: a value quoting `<think>` took the rest of the
    JSON for thinking, saved apart from the text the page showed, and the JSON route's
    `partial` had a `</think>` added inside the JSON (a reviewer's)."""
    fake.push(Script(tokens=[*sent, "}"], fail_after=3, fail_mode="cut"))
    config = {**SAVE["emissaryConfig"], "responseSchema": schema}
    response = ask(client, path=route, trace_id="t-cut-json", **{**SAVE, "emissaryConfig": config})
    if route.endswith("/sse"):
        final = sse_events(response.get_data())[-2]
        assert final["metadata"]["thinking_content"] == ""
    else:
        final = response.get_json()
        response.close()
    assert final["partial"] == "".join(sent)
    reply = _messages(firestore)["t-cut-json-assistant"]
    assert (reply["status"], reply["content"], reply["thinkingContent"]) == (
        "incomplete",
        "".join(sent),
        "",
    )


def test_client_that_leaves_still_gets_its_partial_saved(
    client, fake: FakeUpstream, firestore
) -> None:
    fake.push(Script(thinking=["hmm"], tokens=[f"w{i} " for i in range(100)], interval=0.05))
    response = ask(client, trace_id="t-6", **SAVE)
    frames = iter(response.response)
    next(frames)
    next(frames)
    response.close()
    reply = _messages(firestore)["t-6-assistant"]
    assert reply["status"] == "incomplete"
    assert reply["thinkingContent"] == "hmm"
    assert reply["content"].startswith("w0")


def test_all_providers_failing_keeps_the_user_message(
    client, fake: FakeUpstream, firestore
) -> None:
    fake.push(Script(fail="500"))
    assert ask(client, trace_id="t-7", **SAVE).status_code == 502
    assert set(_messages(firestore)) == {"t-7-user"}


def test_bad_input_writes_nothing(client, fake, firestore) -> None:
    response = client.post("/vac/assistant/test-assistant/sse", json={"user_input": "", **SAVE})
    assert response.status_code == 400
    assert _messages(firestore) == {}


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A server that accepts connections and never answers: a Firestore that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for sock in held:
        sock.close()
    listener.close()


def _closed_port() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there once the probe socket closed


@pytest.mark.parametrize("database", ["unreachable", "hanging"])
def test_a_failing_database_never_breaks_the_stream(
    client, fake, firestore, black_hole, capsys, database
) -> None:
    os.environ["FIRESTORE_EMULATOR_HOST"] = (
        _closed_port() if database == "unreachable" else black_hole
    )
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "1"
    fake.push(Script(tokens=["still ", "here"]))
    events = sse_events(ask(client, trace_id=f"t-down-{database}", **SAVE).get_data())
    final = events[-2]
    assert final["answer"] == "still here"
    assert final["metadata"]["persist_failed"] is True
    assert events[-1] == "[DONE]"
    messages = {line["message"] for line in log_lines(capsys.readouterr().out)}
    assert messages & {"persist.failed", "persist.timeout"}


def test_heartbeats_go_on_while_the_reply_waits_for_the_database(
    client, fake, firestore, black_hole
) -> None:
    """The save at the end can take PERSIST_TIMEOUT_SECONDS: a ping whenever nothing was
    sent for HEARTBEAT_SECONDS meanwhile, as at any other time of the stream."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = black_hole
    os.environ.update(HEARTBEAT_SECONDS="0.3", PERSIST_TIMEOUT_SECONDS="1.5")
    fake.push(Script(tokens=["still ", "here"]))
    events = sse_events(ask(client, trace_id="t-slow-save", **SAVE).get_data())
    last_chunk = max(i for i, event in enumerate(events) if "chunk" in event)
    assert events[last_chunk + 1 : -2].count(": ping") >= 3  # 1.5 s at a ping per 0.3 s
    assert events[-2]["metadata"]["persist_failed"] is True and events[-1] == "[DONE]"


def test_the_status_window_counts_a_hanging_history_read(
    client, fake, firestore, black_hole, capsys
) -> None:
    """The status window counts from the request, a history read included: after a
    hanging database's read gives up (PERSIST_TIMEOUT_SECONDS: a slow but working one
    still gives the history), the stream opens with a ping at once rather than waiting a
    whole window more for text (a reviewer saw 5 s of silence with HEARTBEAT_SECONDS=3)."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = black_hole
    os.environ.update(HEARTBEAT_SECONDS="0.5", PERSIST_TIMEOUT_SECONDS="1")
    fake.push(Script(tokens=["no ", "history"], ttft=0.3))
    body = {"read_from_history": True, "emissaryConfig": {"currentUser": USER}}
    events = sse_events(ask(client, **body).get_data())
    assert events[0] == ": ping"
    assert events[-2]["answer"] == "no history"
    assert events[-2]["metadata"]["history_error"] == HISTORY_TIMEOUT  # the page is told
    [gave_up] = [line for line in log_lines(capsys.readouterr().out)
                 if line["message"] == "history.timeout"]  # fmt: skip
    assert gave_up["timeout_s"] == 1


def test_a_stream_a_stopping_worker_ends_gets_its_terminal_frame_whatever_the_save_wait(
    fake: FakeUpstream, firestore, black_hole: str
) -> None:
    """PERSIST_TIMEOUT_SECONDS=9 and a database that hangs: a stream ended at the stop
    waited its whole save wait, past the 7 s after which the worker lets go of what is
    still parked, and ended with no terminal frame (a reviewer)."""
    fake.push(Script(tokens=[f"{n} " for n in range(100)], interval=0.1))
    env = {"FIRESTORE_EMULATOR_HOST": black_hole, "PERSIST_TIMEOUT_SECONDS": "9"}
    url = "/vac/assistant/test-assistant/sse"
    with running_service(env) as service, httpx.stream(
        "POST", service.url + url, json={"user_input": "hi", **SAVE}, timeout=30
    ) as reply:  # fmt: skip
        lines = reply.iter_lines()
        assert next(line for line in lines if line).startswith('data: {"chunk"')
        service.process.terminate()
        frames = [line for line in lines if line.startswith("data: ")]
    assert frames[-1] == "data: [DONE]"
    final = json.loads(frames[-2].removeprefix("data: "))
    assert final["code"] == "overloaded" and final["metadata"]["persist_failed"] is True


def test_a_502_within_the_status_window_waits_for_the_database_only_as_long_as_it_lasts(
    client, fake, firestore, black_hole
) -> None:
    """Every provider failed at once with a hanging database: the 502 waited for the
    user message's write, PERSIST_TIMEOUT_SECONDS, past the status window (HEARTBEAT_
    SECONDS), nothing sent meanwhile; the window bounds the wait, the rest goes late."""
    os.environ["FIRESTORE_EMULATOR_HOST"] = black_hole
    os.environ.update(HEARTBEAT_SECONDS="1", PERSIST_TIMEOUT_SECONDS="6")
    fake.push(Script(fail="500"))
    started = time.monotonic()
    response = ask(client, trace_id="t-502-hung", **SAVE)
    took = time.monotonic() - started
    assert response.status_code == 502
    assert took < 6  # the window's second, not the database's six
    assert response.get_json()["code"] == "providers_failed"


@pytest.fixture
def paused_database(firestore_emulator: Any, firestore: Any) -> Iterator[DatabaseRelay]:
    """The service's Firestore behind a relay that holds every byte until resumed."""
    proxy = DatabaseRelay(firestore_emulator.host, paused=True)
    os.environ["FIRESTORE_EMULATOR_HOST"] = proxy.address
    yield proxy
    proxy.close()


def test_a_user_message_the_database_missed_is_written_once_it_is_back(
    client, fake: FakeUpstream, firestore, paused_database: DatabaseRelay, capsys
) -> None:
    """The database is away when the request comes (the user message's write gives up
    after PERSIST_TIMEOUT_SECONDS) and back before the reply ends: both are saved."""
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "1"
    fake.push(Script(tokens=[f"t{i} " for i in range(8)], interval=0.3))  # ~2.4 s
    back = threading.Timer(1.6, paused_database.resume)
    back.start()
    try:
        events = sse_events(ask(client, trace_id="t-outage", **SAVE).get_data())
    finally:
        back.join()
    final = events[-2]
    assert final["answer"] == "".join(f"t{i} " for i in range(8))
    assert final["metadata"]["persist_failed"] is False
    messages = _messages(firestore)
    assert set(messages) == {"t-outage-user", "t-outage-assistant"}
    assert messages["t-outage-user"]["content"] == "Hello?"
    retried = [line for line in log_lines(capsys.readouterr().out)
               if line["message"] == "persist.retry"]  # fmt: skip
    assert [line["role"] for line in retried] == ["user"]


def test_a_user_message_write_that_fails_after_the_reply_ends_is_tried_again(
    client, fake: FakeUpstream, firestore, paused_database: DatabaseRelay, capsys
) -> None:
    """The database hangs from the request on; the reply ends before the user message's
    write gives up, and the database is back before the reply's save wait is over: the
    write that failed meanwhile goes once more, and both land (a reviewer found the
    reply saved and the question lost)."""
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "3"
    fake.push(Script(tokens=[f"t{i} " for i in range(4)], interval=0.3))  # ~1.2 s
    back = threading.Timer(3.4, paused_database.resume)  # the first write gave up at ~3 s
    back.start()
    try:
        events = sse_events(ask(client, trace_id="t-late", **SAVE).get_data())
    finally:
        back.join()
    assert events[-2]["metadata"]["persist_failed"] is False
    messages = _messages(firestore)
    assert set(messages) == {"t-late-user", "t-late-assistant"}
    retried = [line for line in log_lines(capsys.readouterr().out)
               if line["message"] == "persist.retry"]  # fmt: skip
    assert [line["role"] for line in retried] == ["user"]


def test_a_reply_whose_save_wait_went_to_its_question_is_written_after_it_later(
    client, fake: FakeUpstream, firestore, paused_database: DatabaseRelay, capsys
) -> None:
    """The database hangs past the whole save wait: the reply says it was not saved, and
    once the database is back its question and then the reply are written (the reply
    after its question, never beside no question), each logged `persist.saved_late`."""
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "1"
    fake.push(Script(tokens=["a ", "b"]))
    events = sse_events(ask(client, trace_id="t-gone", **SAVE).get_data())
    assert events[-2]["metadata"]["persist_failed"] is True
    assert not events[-2]["metadata"]["message_ids"]
    paused_database.resume()
    messages = _wait_for_messages(firestore, {"t-gone-user", "t-gone-assistant"})
    assert messages["t-gone-user"]["createdAt"] < messages["t-gone-assistant"]["createdAt"]
    assert messages["t-gone-assistant"]["content"] == "a b"
    # Its line comes just after the write lands, which the read above may see first.
    out, deadline = "", time.monotonic() + 5
    while out.count('"persist.saved_late"') < 2 and time.monotonic() < deadline:
        out += capsys.readouterr().out
        time.sleep(0.05)
    late = [(line["role"], line["message_id"]) for line in log_lines(out)
            if line["message"] == "persist.saved_late"]  # fmt: skip
    assert late == [("user", "t-gone-user"), ("assistant", "t-gone-assistant")]


def test_a_reply_the_database_failed_is_tried_again_until_it_is_back(
    client, fake: FakeUpstream, firestore, paused_database: DatabaseRelay, late_writes, capsys
) -> None:
    """Away for longer than the wait and the first late attempt: the next ones, later,
    write both messages once the database is back."""
    late_writes.delays = (0.5, 0.5, 30.0)
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "0.5"
    fake.push(Script(tokens=["kept"]))
    events = sse_events(ask(client, trace_id="t-away", **SAVE).get_data())
    assert events[-2]["metadata"]["persist_failed"] is True
    time.sleep(2.0)  # the reply's writes and the first late attempt have given up
    paused_database.resume()
    messages = _wait_for_messages(firestore, {"t-away-user", "t-away-assistant"})
    assert messages["t-away-assistant"]["content"] == "kept"
    lines = log_lines(capsys.readouterr().out)
    assert any(line["message"] == "persist.late_failed" for line in lines)
    assert not any(line["message"] == "persist.lost" for line in lines)


def _wait_for_late_writes(late_writes: Any) -> None:
    deadline = time.monotonic() + 20
    while late_writes.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert late_writes.count() == 0


def test_a_late_reply_never_replaces_one_written_since(
    client, fake: FakeUpstream, firestore, paused_database: DatabaseRelay, late_writes
) -> None:
    """The first try's reply waits to be written late; the client's retry (same trace
    id, same question) is saved on time once the database is back: its reply stands,
    the late one does not write over it (a reviewer saw the first answer come back)."""
    late_writes.delays = (1.5, 30.0)
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "0.5"
    fake.push(Script(tokens=["first answer"]))
    first = sse_events(ask(client, trace_id="t-retried", **SAVE).get_data())[-2]
    assert first["metadata"]["persist_failed"] is True
    time.sleep(0.8)  # the first late attempt failed: the next is due later
    paused_database.resume()
    fake.push(Script(tokens=["second answer"]))
    second = sse_events(ask(client, trace_id="t-retried", **SAVE).get_data())[-2]
    assert second["metadata"]["persist_failed"] is False
    _wait_for_late_writes(late_writes)
    assert _messages(firestore)["t-retried-assistant"]["content"] == "second answer"


def test_a_late_reply_replaces_an_older_incomplete_one(
    client, fake: FakeUpstream, firestore, paused_database: DatabaseRelay, late_writes
) -> None:
    """A first try cut short was saved `incomplete`; the retry's complete reply could
    only be written late: it replaces the older one, as a retry's reply does (a
    reviewer saw the cut one stay, and the log say the new one was saved)."""
    paused_database.resume()
    fake.push(Script(tokens=[f"w{i} " for i in range(100)], interval=0.05))
    response = ask(client, "same question", trace_id="t-cut", **SAVE)
    frames = iter(response.response)
    next(frames)
    next(frames)
    response.close()  # the client left: saved incomplete
    assert _messages(firestore)["t-cut-assistant"]["status"] == "incomplete"
    paused_database.pause()  # away again
    late_writes.delays = (1.0, 30.0)
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "0.5"
    fake.push(Script(tokens=["complete reply"]))
    final = sse_events(ask(client, "same question", trace_id="t-cut", **SAVE).get_data())[-2]
    assert final["metadata"]["persist_failed"] is True
    paused_database.resume()
    _wait_for_late_writes(late_writes)
    saved = _messages(firestore)["t-cut-assistant"]
    assert (saved["content"], saved["status"]) == ("complete reply", "complete")


def test_of_two_replies_under_one_id_the_one_that_ended_later_stands(firestore) -> None:
    """Whichever write lands last (a first try's write still under way, or written late
    after its retry's): the reply that ended later is what the id holds; the same reply
    landing twice is saved, not "kept" (reviewers saw each of these go wrong)."""
    store = FirestoreStore("assistants", timeout=5)
    ada = Author("ada@example.com", "ada@example.com", "Ada")
    ended = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)
    first = AssistantMessage("test-assistant", "t-two", None, ada, "cut", "", "incomplete",
                             "anthropic", "m", created_at=ended)  # fmt: skip
    retry = dataclasses.replace(
        first, content="whole", status="complete", created_at=ended + datetime.timedelta(seconds=3)
    )
    store.save_assistant_message(first)
    store.save_assistant_message(retry)  # later: replaces the first try's
    assert _messages(firestore)["t-two-assistant"]["content"] == "whole"
    with pytest.raises(TraceIdKept, match="holds a newer reply"):
        store.save_assistant_message(dataclasses.replace(first, status="complete"))
    assert store.save_assistant_message(retry) == "t-two-assistant"  # its own write again
    saved = _messages(firestore)["t-two-assistant"]
    assert (saved["content"], saved["createdAt"]) == ("whole", ended)  # the first one's place


def test_a_complete_reply_stands_over_an_incomplete_one_whichever_lands_first(firestore) -> None:
    """A retry cut off after the first try's complete reply (two tabs, or the first
    try's write late): its incomplete reply ended later and its write landed first, and
    the complete one, the answer the user read, was refused as older and lost."""
    store = FirestoreStore("assistants", timeout=5)
    ada = Author("ada@example.com", "ada@example.com", "Ada")
    ended = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
    complete = AssistantMessage("test-assistant", "t-race", None, ada, "The full answer.", "",
                                "complete", "anthropic", "m", created_at=ended)  # fmt: skip
    cut = dataclasses.replace(
        complete,
        content="The fu",
        status="incomplete",
        created_at=ended + datetime.timedelta(seconds=2),
    )
    store.save_assistant_message(cut)
    assert store.save_assistant_message(complete) == "t-race-assistant"
    saved = _messages(firestore)["t-race-assistant"]
    assert saved["content"] == "The full answer."
    # Its own place, when it ended (a reviewer saw the cut one's, 3 s later: the
    # user's next question, saved meanwhile, read back before it).
    assert saved["createdAt"] == saved["answeredAt"] == ended
    with pytest.raises(TraceIdKept, match="holds a complete reply"):
        store.save_assistant_message(cut)  # written again (late): the complete one stays
    assert _messages(firestore)["t-race-assistant"]["status"] == "complete"


def test_a_late_pair_keeps_its_place_before_the_turns_saved_since(
    client, fake: FakeUpstream, firestore, paused_database: DatabaseRelay, late_writes
) -> None:
    """Written late, a question and its reply keep the times they were meant to be
    written at: the user's next turn, saved on time meanwhile, stays after them in the
    history (a reviewer saw turn two read back before turn one)."""
    late_writes.delays = (1.5, 30.0)
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "0.5"
    fake.push(Script(tokens=["answer one"]))
    ask(client, "question one", trace_id="t-one", **SAVE).get_data()
    time.sleep(0.8)
    paused_database.resume()
    fake.push(Script(tokens=["answer two"]))
    ask(client, "question two", trace_id="t-two", **SAVE).get_data()
    _wait_for_late_writes(late_writes)
    messages = _messages(firestore)
    order = sorted(messages, key=lambda name: messages[name]["createdAt"])
    assert order == ["t-one-user", "t-one-assistant", "t-two-user", "t-two-assistant"]


def test_messages_the_database_never_took_are_logged_lost(
    client, fake: FakeUpstream, firestore, black_hole, late_writes, capsys
) -> None:
    """Each late attempt fails: after the last one the log says what was lost."""
    late_writes.delays = (0.1,)
    os.environ["FIRESTORE_EMULATOR_HOST"] = black_hole
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "0.3"
    fake.push(Script(tokens=["gone"]))
    events = sse_events(ask(client, trace_id="t-lost", **SAVE).get_data())
    assert events[-2]["metadata"]["persist_failed"] is True
    deadline = time.monotonic() + 20
    while late_writes.count() and time.monotonic() < deadline:
        time.sleep(0.1)
    lost = [line["role"] for line in log_lines(capsys.readouterr().out)
            if line["message"] == "persist.lost"]  # fmt: skip
    assert lost == ["user", "assistant"]


def _wait_for_messages(db: Any, ids: set[str], seconds: float = 20) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while not ids <= set(messages := _messages(db)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ids <= set(messages)
    return messages


def _seed(
    db: Any,
    message_id: str,
    role: str,
    content: str,
    user: str,
    seconds: int,
    thread: str | None = None,
) -> None:
    db.collection("assistants").document("test-assistant").collection("messages").document(
        message_id
    ).set(
        {
            "role": role,
            "content": content,
            "userId": user,
            "threadId": thread,
            "traceId": message_id.rsplit("-", 1)[0],
            "createdAt": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
            + datetime.timedelta(seconds=seconds),
        }
    )


@pytest.fixture
def history(firestore) -> Any:
    _seed(firestore, "old-user", "user", "very first", USER["email"], 1)
    _seed(firestore, "a-user", "user", "question one", USER["email"], 2)
    _seed(firestore, "a-assistant", "assistant", "answer one", USER["email"], 3)
    _seed(firestore, "other-user", "user", "someone else's", "bob@example.com", 4)
    _seed(firestore, "b-user", "user", "thread question", USER["email"], 5, thread="th-1")
    _seed(firestore, "b-assistant", "assistant", "thread answer", USER["email"], 6, thread="th-1")
    return firestore


def _sent_messages(fake: FakeUpstream) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in fake.wait_for_requests(1)[0].body["messages"]]


def test_read_from_history_loads_this_users_last_turns(client, fake, history) -> None:
    body = {"read_from_history": True, "history_limit": 4, "emissaryConfig": {"currentUser": USER}}
    ask(client, "new question", **body).get_data()
    assert _sent_messages(fake) == [
        ("user", "question one"),
        ("assistant", "answer one"),
        ("user", "thread question"),
        ("assistant", "thread answer"),
        ("user", "new question"),
    ]


def test_a_question_asked_again_after_it_went_unanswered_is_read_once(
    client, fake: FakeUpstream, firestore
) -> None:
    """A 502's question stays saved; the same question asked again under a new trace id
    (a UI's retry) was read with it as one turn: the model was sent "Q\n\nQ" (a
    reviewer). Another question after an unanswered one is still sent with it."""
    read = {"read_from_history": True, **SAVE}

    def last_sent() -> list[tuple[str, str]]:
        return [(m["role"], m["content"]) for m in fake.requests[-1].body["messages"]]

    fake.push(Script(fail="500"))
    assert ask(client, "Is it cold?", trace_id="t-q1", **SAVE).status_code == 502
    fake.push(Script(tokens=["Yes."]))
    ask(client, "Is it cold?", trace_id="t-q2", **read).get_data()
    assert last_sent() == [("user", "Is it cold?")]
    fake.push(Script(fail="500"))
    assert ask(client, "And windy?", trace_id="t-q3", **SAVE).status_code == 502
    fake.push(Script(tokens=["No."]))
    ask(client, "And wet?", trace_id="t-q4", **read).get_data()
    assert last_sent() == [
        ("user", "Is it cold?"),  # once
        ("assistant", "Yes."),
        ("user", "And windy?\n\nAnd wet?"),
    ]


def test_a_question_asked_again_after_a_reply_that_only_called_a_tool_is_read_once(
    client, fake: FakeUpstream, firestore
) -> None:
    """The reply between them has no text (the history holds no calls): the two were
    sent as one turn, "Q\n\nQ", as if it were not there (a reviewer's)."""
    weather = {"description": "The weather in a city", "parameters": {"type": "object"}}
    config = {**SAVE["emissaryConfig"], "tools": ["weather"], "toolConfigs": {"weather": weather}}
    save = {**SAVE, "emissaryConfig": config, "thread_id": "tt"}
    fake.push(Script(tokens=[], tool_calls=[{"name": "weather", "args": {"city": "Oslo"}}]))
    ask(client, "Weather?", trace_id="t-tc1", **save).get_data()
    assert _messages(firestore)["t-tc1-assistant"]["content"] == ""
    fake.push(Script(tokens=["Let me look."]))
    ask(client, "Weather?", trace_id="t-tc2", read_from_history=True, **save).get_data()
    sent = [(m["role"], m["content"]) for m in fake.requests[-1].body["messages"]]
    assert sent == [("user", "Weather?")]


def test_read_from_history_without_a_user_says_the_reply_has_none(client, fake, history) -> None:
    """No user (iam / none without currentUser): no history is read, and the page is
    told why, as when a read fails (it was only logged)."""
    events = sse_events(ask(client, "new question", read_from_history=True).get_data())
    assert events[-2]["metadata"]["history_error"] == HISTORY_NO_USER
    assert _sent_messages(fake) == [("user", "new question")]


def test_read_from_history_filters_by_thread(client, fake, history) -> None:
    body = {"read_from_history": True, "thread_id": "th-1", "emissaryConfig": {"currentUser": USER}}
    ask(client, "follow-up", **body).get_data()
    assert _sent_messages(fake) == [
        ("user", "thread question"),
        ("assistant", "thread answer"),
        ("user", "follow-up"),
    ]


def test_history_is_not_read_when_chat_history_is_given(client, fake, history) -> None:
    body = {
        "read_from_history": True,
        "chat_history": [{"role": "user", "content": "from the client"}],
        "emissaryConfig": {"currentUser": USER},
    }
    ask(client, "next", **body).get_data()
    assert _sent_messages(fake) == [("user", "from the client\n\nnext")]


def test_the_history_limit_counts_messages_other_than_the_requests_own(
    client, fake, history
) -> None:
    """The frontend saved this request's question itself (or it is a retry): the last
    `history_limit` messages before it still come (a reviewer got one fewer, or none)."""
    _seed(history, "c-user", "user", "asked now", USER["email"], 7)
    body = {
        "read_from_history": True,
        "history_limit": 2,
        "trace_id": "c",
        "user_message_already_saved": True,
        "emissaryConfig": {"currentUser": USER},
    }
    ask(client, "asked now", **body).get_data()
    assert _sent_messages(fake) == [
        ("user", "thread question"),
        ("assistant", "thread answer"),
        ("user", "asked now"),
    ]


def test_a_history_read_keeps_to_a_budget_of_text(
    client, fake, history, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest messages whose text fits MAX_HISTORY_CHARS come, the rest is older: 500
    of a megabyte each would have been half a gigabyte in the worker and in the request
    to the provider (a reviewer's 200 took a worker from 239 to 785 MB)."""
    monkeypatch.setattr(store, "MAX_HISTORY_CHARS", len("thread questionthread answer") + 5)
    body = {"read_from_history": True, "emissaryConfig": {"currentUser": USER}}
    ask(client, "new question", **body).get_data()
    assert _sent_messages(fake) == [
        ("user", "thread question"),
        ("assistant", "thread answer"),
        ("user", "new question"),
    ]


def test_a_question_dated_after_its_reply_comes_before_it_in_the_history(
    client, fake, history
) -> None:
    """A question the frontend saved itself is dated by the database when its write
    lands: one landing after the reply ended (a write not waited for, or queued
    offline) gave the model the reply first, and its question merged with the next."""
    _seed(history, "late-assistant", "assistant", "answer late", USER["email"], 7)
    _seed(history, "late-user", "user", "question late", USER["email"], 8)
    body = {"read_from_history": True, "history_limit": 4, "emissaryConfig": {"currentUser": USER}}
    ask(client, "new question", **body).get_data()
    assert _sent_messages(fake) == [
        ("user", "thread question"),
        ("assistant", "thread answer"),
        ("user", "question late"),
        ("assistant", "answer late"),
        ("user", "new question"),
    ]


@pytest.mark.parametrize("limit", [6, 3])
def test_two_exchanges_that_overlapped_come_back_each_reply_after_its_question(
    client, fake, firestore, limit: int
) -> None:
    """Two tabs of one thread: dated question A, question B, reply B, reply A. They came
    back merged ("1+1?\n\nsky?" then "Blue.\n\nIt is 2."), and a window cut after
    question A gave reply A as the answer to B (a reviewer's)."""
    _seed(firestore, "p0-user", "user", "Capital of France?", USER["email"], 1)
    _seed(firestore, "p0-assistant", "assistant", "Paris.", USER["email"], 2)
    _seed(firestore, "ta-user", "user", "What is 1+1?", USER["email"], 3)
    _seed(firestore, "tb-user", "user", "Colour of the sky?", USER["email"], 4)
    _seed(firestore, "tb-assistant", "assistant", "Blue.", USER["email"], 5)
    _seed(firestore, "ta-assistant", "assistant", "It is 2.", USER["email"], 6)
    body = {
        "read_from_history": True,
        "history_limit": limit,
        "emissaryConfig": {"currentUser": USER},
    }
    ask(client, "Next question", **body).get_data()
    earlier = [
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
        ("user", "What is 1+1?"),
        ("assistant", "It is 2."),
    ]
    assert _sent_messages(fake) == [
        *(earlier if limit == 6 else []),
        ("user", "Colour of the sky?"),
        ("assistant", "Blue."),
        ("user", "Next question"),
    ]


@pytest.mark.parametrize("limit", [1, 3])
def test_a_question_whose_reply_is_past_the_history_window_is_left_out(
    client, fake, firestore, limit: int
) -> None:
    """Questions dated after their replies: a window whose edge fell between a reply and
    its question kept the question alone, merged with the next question (or, the
    newest, with the one asked now: "question 3\n\nnew question")."""
    for n, seconds in ((1, 10), (2, 20), (3, 30)):
        _seed(firestore, f"p{n}-assistant", "assistant", f"answer {n}", USER["email"], seconds)
        _seed(firestore, f"p{n}-user", "user", f"question {n}", USER["email"], seconds + 1)
    body = {
        "read_from_history": True,
        "history_limit": limit,
        "emissaryConfig": {"currentUser": USER},
    }
    ask(client, "new question", **body).get_data()
    expected = [("user", "question 3"), ("assistant", "answer 3")] if limit == 3 else []
    assert _sent_messages(fake) == [*expected, ("user", "new question")]


@pytest.mark.parametrize("limit", [3, 4])
def test_a_late_question_whose_reply_is_past_the_window_goes_whatever_came_between(
    client, fake, firestore, limit: int
) -> None:
    """The question landed after the next exchange: its reply is past the window, first
    past it or not; a question with no reply in the store stays."""
    _seed(firestore, "t-assistant", "assistant", "answer t", USER["email"], 10)
    _seed(firestore, "u-user", "user", "question u", USER["email"], 11)
    _seed(firestore, "u-assistant", "assistant", "answer u", USER["email"], 12)
    _seed(firestore, "t-user", "user", "question t", USER["email"], 13)
    _seed(firestore, "v-user", "user", "question v", USER["email"], 14)  # its reply never came
    body = {
        "read_from_history": True,
        "history_limit": limit,
        "emissaryConfig": {"currentUser": USER},
    }
    ask(client, "new question", **body).get_data()
    exchange_u = [("user", "question u"), ("assistant", "answer u")] if limit == 4 else []
    assert _sent_messages(fake) == [*exchange_u, ("user", "question v\n\nnew question")]


def test_the_newest_questions_without_their_reply_are_looked_up_first(
    client, fake, firestore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the lookup's bound, the newest questions are looked up: a late question is at
    the new end of the window (the oldest were looked up, and it was kept)."""
    monkeypatch.setattr(store, "MOST_QUESTIONS_LOOKED_UP", 1)
    _seed(firestore, "t-assistant", "assistant", "answer t", USER["email"], 1)
    _seed(firestore, "o-user", "user", "question o", USER["email"], 5)  # its reply never came
    _seed(firestore, "t-user", "user", "question t", USER["email"], 13)
    body = {"read_from_history": True, "history_limit": 2, "emissaryConfig": {"currentUser": USER}}
    ask(client, "new question", **body).get_data()
    assert _sent_messages(fake) == [("user", "question o\n\nnew question")]


def test_a_history_read_with_no_time_left_for_the_lookup_keeps_its_window(
    client, fake, firestore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lookup of a question's reply gets what is left of the read's time; with none
    left, the window is kept as read (a slow database lost the whole history for it)."""
    monkeypatch.setattr(store, "LOOKUP_MARGIN_SECONDS", 1000)
    _seed(firestore, "t-assistant", "assistant", "answer t", USER["email"], 1)
    _seed(firestore, "t-user", "user", "question t", USER["email"], 13)
    body = {"read_from_history": True, "history_limit": 1, "emissaryConfig": {"currentUser": USER}}
    ask(client, "new question", **body).get_data()
    assert _sent_messages(fake) == [("user", "question t\n\nnew question")]


def test_a_history_reads_lookup_counts_its_time_from_when_it_was_asked(firestore) -> None:
    """The read's time is the asker's, who began waiting when it asked: a read begun late
    on the store's busy threads took a whole wait of its own for the lookup, past the
    asker's, and the whole history was lost (a reviewer, reading the code)."""
    _seed(firestore, "t-assistant", "assistant", "answer t", USER["email"], 1)
    _seed(firestore, "t-user", "user", "question t", USER["email"], 13)
    messages = FirestoreStore("assistants", 5)
    ask = ("test-assistant", USER["email"], None, 1, "now")
    assert messages.recent_turns(*ask) == ()  # its reply is elsewhere: the question left out
    past = time.monotonic() - 1  # asked a while ago: no time left for the lookup
    assert [turn.content for turn in messages.recent_turns(*ask, past)] == ["question t"]


def test_history_skips_the_retried_requests_own_messages(client, fake, history) -> None:
    body = {"read_from_history": True, "trace_id": "b", "emissaryConfig": {"currentUser": USER}}
    ask(client, "thread question", **body).get_data()
    assert ("user", "thread question") not in _sent_messages(fake)[:-1]


def test_a_client_that_leaves_during_a_hanging_history_read_calls_no_provider(
    fake: FakeUpstream, firestore, black_hole: str
) -> None:
    env = {"FIRESTORE_EMULATOR_HOST": black_hole, "PERSIST_TIMEOUT_SECONDS": "1.5"}
    body = {"user_input": "hi", "read_from_history": True, "emissaryConfig": {"currentUser": USER}}
    with running_service(env) as service:
        sock = open_raw(service.url, "/vac/assistant/test-assistant/sse", json.dumps(body).encode())
        time.sleep(0.5)  # the history read hangs
        sock.close()
        time.sleep(2.5)  # past the read's deadline, and the reply it would have started
        assert fake.requests == []  # a reviewer's provider was called, then cancelled
        fake.push(Script(tokens=["next"]))  # the server goes on as before
        answer = httpx.post(
            f"{service.url}/vac/assistant/test-assistant/sse", json=body, timeout=10
        )
        assert answer.status_code == 200 and "next" in answer.text


@pytest.mark.parametrize("leaving", ["mid-reply", "during-its-final-save"])
def test_replies_whose_clients_left_hold_no_thread_while_a_hanging_database_saves(
    fake: FakeUpstream, firestore, black_hole: str, leaving: str
) -> None:
    """Two streams' clients leave while the database hangs (as their text flows, or as
    their final save waits): their saves are waited for off the request threads (each
    held one for PERSIST_TIMEOUT_SECONDS, and on THREADS=2 the next request waited for
    one: as every parked stream's pings, final frames and departure checks did, a
    reviewer found)."""
    env = {"FIRESTORE_EMULATOR_HOST": black_hole, "PERSIST_TIMEOUT_SECONDS": "8",
           "THREADS": "2", "HEARTBEAT_SECONDS": "1"}  # fmt: skip
    tokens = ["a "] * 200 if leaving == "mid-reply" else ["a ", "b"]
    fake.push(*[Script(tokens=tokens, interval=0.1) for _ in range(2)])
    body = json.dumps({"user_input": "hi", **SAVE}).encode()
    with running_service(env) as service:
        leavers = [open_raw(service.url, "/vac/assistant/test-assistant/sse", body)]
        leavers.append(open_raw(service.url, "/vac/assistant/test-assistant/sse", body))
        fake.wait_for_requests(2)
        time.sleep(0.5)  # their text flows, or has ended and their saves wait
        for sock in leavers:
            sock.close()
        if leaving == "mid-reply":
            for upstream in fake.requests:
                assert upstream.client_closed.wait(5)
        time.sleep(1.5)  # they are saving now, and a ping found them gone
        fake.push(Script(tokens=["next"]))
        started = time.monotonic()
        answer = httpx.post(
            f"{service.url}/vac/assistant/test-assistant/sse", json={"user_input": "hi"}, timeout=20
        )
        took = time.monotonic() - started
    assert answer.status_code == 200 and "next" in answer.text
    assert took < 4  # not the hung saves' 8 s


def test_a_502_waiting_for_its_save_within_the_status_window_holds_no_thread(
    fake: FakeUpstream, firestore, black_hole: str
) -> None:
    """Streams whose every provider failed at once wait for their question's save
    within the status window before their 502: on THREADS=2 with a hanging database,
    three such held the threads, and the next request waited 3.6 s (a reviewer)."""
    env = {"FIRESTORE_EMULATOR_HOST": black_hole, "PERSIST_TIMEOUT_SECONDS": "4",
           "HEARTBEAT_SECONDS": "10", "THREADS": "2"}  # fmt: skip
    fake.push(*[Script(fail="500") for _ in range(3)])
    url = "/vac/assistant/test-assistant/sse"
    body = {"user_input": "hi", **SAVE}
    with running_service(env) as service, concurrent.futures.ThreadPoolExecutor(3) as pool:
        failing = [pool.submit(httpx.post, service.url + url, json=body, timeout=30)
                   for _ in range(3)]  # fmt: skip
        fake.wait_for_requests(3)
        time.sleep(0.5)  # their saves wait
        fake.push(Script(tokens=["answered"]))
        started = time.monotonic()
        plain = httpx.post(service.url + url, json={"user_input": "hi"}, timeout=30)
        took = time.monotonic() - started
        assert [answer.result().status_code for answer in failing] == [502] * 3
    assert plain.status_code == 200 and "answered" in plain.text
    assert took < 2.5  # not the saves' 4 s


@pytest.mark.parametrize("route", ["sse", "json"])
def test_every_reply_whose_client_left_is_saved_however_many_leave_at_once(
    fake: FakeUpstream, firestore, route: str
) -> None:
    """Twelve clients leave mid-reply at once: each reply's text is saved incomplete. A
    first version of saving them off the request threads saved four (those its threads
    took at once): the others were let go of before their save began, and saved
    nothing, silently (a reviewer)."""
    count = 12
    fake.push(*[Script(tokens=["a "] * 200, interval=0.05) for _ in range(count)])
    path = "/vac/assistant/test-assistant" + ("/sse" if route == "sse" else "")
    with running_service({"THREADS": "4"}) as service:
        leavers = [
            open_raw(service.url, path, json.dumps({
                "user_input": "hi", "trace_id": f"t-left-{i}", "save_to_history": True,
                "emissaryConfig": {"currentUser": {"email": f"u{i}@example.com"}},
            }).encode())
            for i in range(count)
        ]  # fmt: skip
        fake.wait_for_requests(count)
        time.sleep(0.5)  # their text flows
        for sock in leavers:
            sock.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            saved = {
                key: doc for key, doc in _messages(firestore).items() if key.endswith("-assistant")
            }
            if len(saved) == count:
                break
            time.sleep(0.2)
    assert len(saved) == count
    assert {doc["status"] for doc in saved.values()} == {"incomplete"}
    assert all(doc["content"].startswith("a a") for doc in saved.values())


def test_a_client_that_leaves_during_a_slow_history_read_keeps_its_question(
    fake: FakeUpstream, firestore, paused_database: DatabaseRelay
) -> None:
    """The history read is slow and the client leaves meanwhile: no provider is asked,
    and the question is saved all the same (a reviewer found it lost: what the user
    typed is kept whenever a client leaves, as it is mid-reply)."""
    body = {"user_input": "asked and gone", "trace_id": "t-gone-reading", "read_from_history": True,
            "emissaryConfig": {"currentUser": USER}, **SAVE}  # fmt: skip
    with running_service({"PERSIST_TIMEOUT_SECONDS": "4"}) as service:
        sock = open_raw(service.url, "/vac/assistant/test-assistant/sse", json.dumps(body).encode())
        time.sleep(0.5)  # the history read waits for the database
        sock.close()
        paused_database.resume()
        deadline = time.monotonic() + 5
        while "t-gone-reading-user" not in _messages(firestore) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _messages(firestore)["t-gone-reading-user"]["content"] == "asked and gone"
    assert "t-gone-reading-assistant" not in _messages(firestore)
    assert fake.requests == []


def test_a_client_that_leaves_during_a_hanging_history_read_is_let_go_of_within_a_second(
    fake: FakeUpstream, firestore, paused_database: DatabaseRelay, tmp_path
) -> None:
    """Its departure was noticed when the read gave up (PERSIST_TIMEOUT_SECONDS): its
    slot was held that long, and the user's next request (a page reloaded, at
    MAX_STREAMS_PER_USER=1) was refused 429 meanwhile. Now within a second; its
    question is kept once the database is back."""
    fake.push(Script(tokens=["next"]))
    body = {"user_input": "asked and gone", "trace_id": "t-gone-soon", "read_from_history": True,
            "emissaryConfig": {"currentUser": USER}, **SAVE}  # fmt: skip
    env = {"PERSIST_TIMEOUT_SECONDS": "8", "MAX_STREAMS_PER_USER": "1"}
    log = tmp_path / "service.log"
    with log.open("wb") as output, running_service(env, output=output) as service:
        sock = open_raw(service.url, "/vac/assistant/test-assistant/sse", json.dumps(body).encode())
        time.sleep(0.5)  # the history read hangs
        sock.close()
        time.sleep(1.5)  # a look for the client has come
        again = {"user_input": "again", "emissaryConfig": {"currentUser": USER}}
        answer = httpx.post(f"{service.url}/vac/assistant/test-assistant", json=again, timeout=20)
        assert answer.status_code == 200 and answer.json()["answer"] == "next"
        paused_database.resume()
        deadline = time.monotonic() + 8
        while "t-gone-soon-user" not in _messages(firestore) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _messages(firestore)["t-gone-soon-user"]["content"] == "asked and gone"
    messages = [line["message"] for line in log_lines(log.read_text())]
    assert messages.count("request.client_gone") == 1
    assert len(fake.requests) == 1  # the second request's alone


def test_a_request_whose_client_left_while_it_waited_for_a_thread_asks_no_provider(
    fake: FakeUpstream, firestore
) -> None:
    """The only thread is busy writing a large JSON answer to a client that reads nothing;
    a stream's client sends its request and leaves before the thread is free: no provider
    is asked, and its question is saved (a reply was made for nobody, and saved
    complete)."""
    fake.push(Script(tokens=["x" * 100_000] * 50))  # 5 MB
    body = {"user_input": "asked and gone", "trace_id": "t-gone-queued", **SAVE}
    env = {"THREADS": "1", "SEND_TIMEOUT_SECONDS": "3"}
    with running_service(env) as service:
        stuck = open_raw(service.url, "/vac/assistant/test-assistant", b'{"user_input": "hi"}',
                         receive_buffer=4096)  # fmt: skip
        fake.wait_for_requests(1)
        time.sleep(0.5)  # its answer is being written, and taken by nobody
        sock = open_raw(service.url, "/vac/assistant/test-assistant/sse", json.dumps(body).encode())
        time.sleep(0.2)
        sock.close()
        deadline = time.monotonic() + 10
        while "t-gone-queued-user" not in _messages(firestore) and time.monotonic() < deadline:
            time.sleep(0.1)
        stuck.close()
    assert _messages(firestore)["t-gone-queued-user"]["content"] == "asked and gone"
    assert "t-gone-queued-assistant" not in _messages(firestore)
    assert len(fake.requests) == 1  # the JSON reply's alone


def test_a_client_that_left_gives_its_thread_back_before_its_question_is_written(
    fake: FakeUpstream, firestore, paused_database: DatabaseRelay, tmp_path
) -> None:
    """The question of a client that left is written off the request's thread: with a
    hanging database, waited for, it held the thread (and the user's slot) a whole save
    wait past the history read, and the next request waited for it (THREADS=1)."""
    fake.push(Script(tokens=["next"]))
    body = {
        "user_input": "asked and gone",
        "trace_id": "t-gone-hung",
        "read_from_history": True,
        **SAVE,
    }
    env = {"THREADS": "1", "PERSIST_TIMEOUT_SECONDS": "1.5"}
    log = tmp_path / "service.log"
    with log.open("wb") as output, running_service(env, output=output) as service:
        sock = open_raw(service.url, "/vac/assistant/test-assistant/sse", json.dumps(body).encode())
        time.sleep(0.5)  # the history read hangs
        sock.close()
        answer = httpx.post(
            f"{service.url}/vac/assistant/test-assistant", json={"user_input": "hi"}, timeout=20
        )
        assert answer.status_code == 200
        time.sleep(4)  # the question's write fails, and is handed on to be written later
    lines = [(line["message"], line.get("role")) for line in log_lines(log.read_text())]
    gone = lines.index(("request.client_gone", None))
    failed = next(at for at, line in enumerate(lines)
                  if line in (("persist.failed", "user"), ("persist.timeout", "user")))  # fmt: skip
    # The next request was taken at once: the history read waited parked (round 24),
    # and the question's write holds no thread either.
    assert lines.index(("request.accepted", None)) < gone < failed
    assert ("persist.late_failed", "user") in lines[failed:]  # tried again late, still away


def test_a_client_that_left_while_queued_reads_no_history(
    fake: FakeUpstream, firestore, tmp_path
) -> None:
    """THREADS=1, held by a JSON answer its client does not read; a second request's
    client leaves while it waits for the thread. The second reads no history for nobody
    (it held the thread a whole save wait more with a hanging database, then found its
    client gone)."""
    fake.push(Script(tokens=["x" * 100_000] * 50))  # 5 MB
    reading = {"read_from_history": True, "emissaryConfig": {"currentUser": USER}}
    env = {"THREADS": "1", "SEND_TIMEOUT_SECONDS": "3"}
    log = tmp_path / "service.log"
    with log.open("wb") as output, running_service(env, output=output) as service:
        stuck = open_raw(service.url, "/vac/assistant/test-assistant", b'{"user_input": "hi"}',
                         receive_buffer=4096)  # fmt: skip
        fake.wait_for_requests(1)
        time.sleep(0.5)  # its answer is being written, and taken by nobody
        gone = open_raw(service.url, "/vac/assistant/test-assistant/sse",
                        json.dumps({"user_input": "bye", **reading}).encode())  # fmt: skip
        time.sleep(0.2)
        gone.close()
        time.sleep(4)  # the thread is free again: the second is taken, and found gone
        stuck.close()
    messages = [line["message"] for line in log_lines(log.read_text())]
    assert messages.count("request.client_gone") == 1
    assert not [message for message in messages if message.startswith("history.")]


@pytest.mark.parametrize("route", ["sse", "json"])
def test_on_the_server_a_history_read_waits_parked_and_the_reply_has_it(
    fake: FakeUpstream, history, route: str
) -> None:
    """The reply begins once its history is read, with the history, its head (and CORS)
    as any reply's."""
    fake.push(Script(tokens=["with ", "history"]))
    body = {"user_input": "new question", "read_from_history": True, "history_limit": 2,
            "emissaryConfig": {"currentUser": USER}}  # fmt: skip
    path = "/vac/assistant/test-assistant" + ("/sse" if route == "sse" else "")
    with running_service({}) as service:
        answer = httpx.post(service.url + path, json=body, headers={"Origin": "https://a.example"},
                            timeout=20)  # fmt: skip
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "*"
    if route == "sse":
        assert answer.headers["content-type"] == "text/event-stream; charset=utf-8"
        final = sse_events(answer.content)[-2]
    else:
        final = answer.json()
    assert final["answer"] == "with history" and "history_error" not in final["metadata"]
    assert _sent_messages(fake) == [
        ("user", "thread question"),
        ("assistant", "thread answer"),
        ("user", "new question"),
    ]


def test_history_reads_on_a_hanging_database_hold_no_thread(
    fake: FakeUpstream, firestore, black_hole: str
) -> None:
    """THREADS=2, and three requests read their history from a database that hangs: each
    held a thread for PERSIST_TIMEOUT_SECONDS, and the next request (any: one that reads
    no history) waited for one, as every parked stream's pings did (a reviewer). Each
    reply still comes, without its history, once the read's time is up."""
    fake.push(*[Script(tokens=["answered"])] * 4)
    env = {"FIRESTORE_EMULATOR_HOST": black_hole, "PERSIST_TIMEOUT_SECONDS": "6", "THREADS": "2"}
    reading = {
        "user_input": "hi",
        "read_from_history": True,
        "emissaryConfig": {"currentUser": USER},
    }
    url = "/vac/assistant/test-assistant/sse"
    with running_service(env) as service, concurrent.futures.ThreadPoolExecutor(3) as pool:
        readers = [pool.submit(httpx.post, service.url + url, json=reading, timeout=30)
                   for _ in range(3)]  # fmt: skip
        time.sleep(1)  # their reads hang
        started = time.monotonic()
        plain = httpx.post(service.url + url, json={"user_input": "hi"}, timeout=30)
        took = time.monotonic() - started
        assert plain.status_code == 200 and "answered" in plain.text
        assert took < 3  # not the reads' 6 s
        for reader in readers:
            answer = reader.result()
            assert answer.status_code == 200 and "answered" in answer.text


@pytest.mark.parametrize("read_ends", ["before-the-stop-ends", "after-the-stop-saves"])
def test_a_worker_stopping_during_a_history_read_asks_no_provider_and_keeps_the_question(
    fake: FakeUpstream, firestore, paused_database: DatabaseRelay, read_ends: str, tmp_path
) -> None:
    """SIGTERM while a request waits for its history read on a database that hangs. The
    read ends within the stop: a 503 overloaded, no provider asked (a reply was begun,
    a provider asked, and the stream got no answer at all: a reviewer). With a database
    back only after the parked replies' time: the question is kept all the same (it was
    dropped silently when the worker ended the request). Either way the 503 comes at
    the stop, not once the read is given up. The log says a read the stop ended was given
    up for the stop (it said a timeout, or an error), and the question is dated when it
    was asked (it was dated at the stop, after the read's wait: a reviewer)."""
    before = read_ends == "before-the-stop-ends"
    env = {"PERSIST_TIMEOUT_SECONDS": "3" if before else "9"}
    body = {"user_input": "asked at the stop", "trace_id": f"t-stop-{read_ends}",
            "read_from_history": True, "emissaryConfig": {"currentUser": USER}, **SAVE}  # fmt: skip
    url = "/vac/assistant/test-assistant/sse"
    log = tmp_path / "service.log"
    with log.open("wb") as output, running_service(env, output=output) as service, \
            concurrent.futures.ThreadPoolExecutor(1) as pool:  # fmt: skip
        asked_at = datetime.datetime.now(datetime.UTC)
        asking = pool.submit(httpx.post, service.url + url, json=body, timeout=30)
        time.sleep(1)  # its history read waits for the database
        service.process.terminate()
        stopped = time.monotonic()
        if not before:
            threading.Timer(7.5, paused_database.resume).start()  # after STOP_SAVE_SECONDS
        answer = asking.result()
        # At the stop, not once the read is given up (its question's write began late).
        assert time.monotonic() - stopped < 2.5
        assert service.process.wait(timeout=20) == 0
    assert answer.status_code == 503 and answer.json()["code"] == "overloaded"
    assert fake.requests == []
    messages = [line["message"] for line in log_lines(log.read_text())]
    # With PERSIST_TIMEOUT_SECONDS=3 the read ends by its own time, before the stop ends
    # the replies under way (`stop_end_seconds`); with 9, the stop ends it at once.
    assert ("history.timeout" if before else "history.given_up") in messages
    assert "history.failed" not in messages
    if not before:
        question = _messages(firestore)[f"t-stop-{read_ends}-user"]
        assert question["content"] == "asked at the stop"
        assert question["createdAt"] - asked_at < datetime.timedelta(seconds=0.5)


def test_history_unavailable_still_answers(client, fake, firestore, capsys) -> None:
    os.environ["FIRESTORE_EMULATOR_HOST"] = _closed_port()
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "1"
    body = {"read_from_history": True, "emissaryConfig": {"currentUser": USER}}
    final = sse_events(ask(client, "hello", **body).get_data())[-2]
    assert "answer" in final
    assert _sent_messages(fake) == [("user", "hello")]
    assert "history." in capsys.readouterr().out


def test_replies_waiting_for_the_database_hold_no_thread(fake, firestore, black_hole) -> None:
    """On the real server with THREADS=2, four replies that end together wait for a
    hanging database side by side, each with its heartbeats: a reply waiting for its
    save lets go of its thread (parking), so none waits for another's save to time out
    (one after the other, two threads would take twice PERSIST_TIMEOUT_SECONDS)."""
    fake.push(*[Script(tokens=["still ", "here"])] * 4)
    env = {"THREADS": "2", "FIRESTORE_EMULATOR_HOST": black_hole, "MAX_STREAMS_PER_USER": "10",
           "PERSIST_TIMEOUT_SECONDS": "2", "HEARTBEAT_SECONDS": "0.3"}  # fmt: skip

    def reply(service: str, n: int) -> list[Any]:
        body = {"user_input": "hi", "trace_id": f"t-parked-save-{n}", **SAVE}
        answer = httpx.post(f"{service}/vac/assistant/test-assistant/sse", json=body, timeout=20)
        return sse_events(answer.content)

    with running_service(env) as service, concurrent.futures.ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        replies = list(pool.map(lambda n: reply(service.url, n), range(4)))
        elapsed = time.monotonic() - started
    for events in replies:
        last_chunk = max(i for i, event in enumerate(events) if "chunk" in event)
        assert events[last_chunk + 1 : -2].count(": ping") >= 3
        assert events[-2]["metadata"]["persist_failed"] is True and events[-1] == "[DONE]"
    assert elapsed < 3.5  # side by side: about 2 s, not 4


def test_a_stopping_server_ends_a_long_stream_with_a_terminal_frame(fake, firestore) -> None:
    """SIGTERM while a reply streams for longer than a stop can wait (Cloud Run kills
    10 s after it): in time for its save (`stop_end_seconds`) the stream ends as every
    stream does, with a terminal frame (`overloaded`: retry elsewhere) and [DONE] (a
    reviewer found it cut with neither), its text so far saved `incomplete`, and the
    server exits before the kill."""
    fake.push(Script(tokens=[f"w{n} " for n in range(60)], interval=0.5))  # 30 s
    body = {"user_input": "hi", "trace_id": "t-stop", **SAVE}
    url = "/vac/assistant/test-assistant/sse"
    with running_service({"THREADS": "2"}) as service, httpx.stream(
        "POST", f"{service.url}{url}", json=body, timeout=20
    ) as reply:  # fmt: skip
        lines = reply.iter_lines()
        assert next(line for line in lines if line) == 'data: {"chunk":"w0 "}'
        service.process.terminate()
        stopped = time.monotonic()
        frames = [line for line in lines if line.startswith("data: ")]
        assert service.process.wait(timeout=20) == 0
        assert time.monotonic() - stopped < 10  # before Cloud Run's kill
    assert frames[-1] == "data: [DONE]"
    terminal = json.loads(frames[-2].removeprefix("data: "))
    assert terminal["code"] == "overloaded"
    assert terminal["partial"].startswith("w0 w1 w2")
    assert terminal["metadata"]["attempts"][-1]["outcome"] == "overloaded"
    saved = _messages(firestore)["t-stop-assistant"]
    assert saved["status"] == "incomplete"
    assert saved["content"] == terminal["partial"].strip()


def test_a_stopping_server_refuses_a_new_reply_before_any_work(fake, firestore) -> None:
    """SIGTERM, then a request on a connection kept alive: it called the provider and
    saved its question, then was ended with a 503 (a retry elsewhere with a new trace id
    left an unanswered question in the history). Now a 503 at once: nothing called,
    nothing written."""
    fake.push(Script(tokens=[f"w{n} " for n in range(60)], interval=0.5))  # keeps it busy
    url = "/vac/assistant/test-assistant/sse"
    with running_service({"THREADS": "4"}) as service, httpx.Client(timeout=20) as kept:
        assert kept.get(f"{service.url}/health").status_code == 200  # the connection is up
        with httpx.stream("POST", f"{service.url}{url}", json={"user_input": "hi"}) as busy:
            next(line for line in busy.iter_lines() if line)
            service.process.terminate()
            time.sleep(0.3)
            body = {"user_input": "late", "trace_id": "t-late", **SAVE}
            late = kept.post(f"{service.url}{url}", json=body)
        service.process.wait(timeout=20)
    assert late.status_code == 503 and late.headers["retry-after"] == "1"
    assert late.json()["code"] == "overloaded"
    assert len(fake.requests) == 1  # the busy stream's alone
    assert "t-late-user" not in _messages(firestore)


def test_a_stopping_server_writes_what_waits_to_be_saved_late(
    fake, firestore, paused_database: DatabaseRelay, tmp_path
) -> None:
    """A reply's messages wait to be written later (the database was away past the save
    wait and its first late attempt); on SIGTERM, with the database back, the worker
    writes them before it exits, in time for Cloud Run's kill."""
    fake.push(Script(tokens=["kept ", "on stop"]))
    env = {"FIRESTORE_EMULATOR_HOST": paused_database.address, "PERSIST_TIMEOUT_SECONDS": "0.5"}
    body = {"user_input": "hi", "trace_id": "t-stop-late", **SAVE}
    log = tmp_path / "service.log"
    with log.open("wb") as output, running_service(env, output=output) as service:
        answer = httpx.post(f"{service.url}/vac/assistant/test-assistant/sse", json=body)
        assert sse_events(answer.content)[-2]["metadata"]["persist_failed"] is True
        time.sleep(2.5)  # the first late attempt failed too: the next is 5 s away
        paused_database.resume()
        service.process.terminate()
        stopped = time.monotonic()
        assert service.process.wait(timeout=20) == 0
        assert time.monotonic() - stopped < 10
    messages = _messages(firestore)
    assert messages["t-stop-late-user"]["content"] == "hi"
    assert messages["t-stop-late-assistant"]["content"] == "kept on stop"
    late = [line["role"] for line in log_lines(log.read_text())
            if line["message"] == "persist.saved_late"]  # fmt: skip
    assert late == ["user", "assistant"]


def test_a_stuck_client_and_a_hung_database_still_end_before_the_kill(
    fake, black_hole, tmp_path
) -> None:
    """A stream whose client takes nothing was cut at the abandon (7 s), and only then
    began its save: with the database hung, the worker exited 12.3 s after SIGTERM,
    its lines about what was lost never written before Cloud Run's kill. Such a client
    is now ended with the streams (a client stuck for STUCK_SECONDS)."""
    fake.push(Script(tokens=["x" * 1000] * 20_000))
    env = {"FIRESTORE_EMULATOR_HOST": black_hole, "THREADS": "4"}
    body = b'{"user_input": "hi", "save_to_history": true, "trace_id": "t-stuck-hung"}'
    log = tmp_path / "service.log"
    url = "/vac/assistant/test-assistant/sse"
    with (
        log.open("wb") as output,
        running_service(env, output=output) as service,
        open_raw(service.url, url, body, receive_buffer=4096),
    ):
        fake.wait_for_requests(1)
        time.sleep(3)  # its writes are stuck by now
        stopped_before_the_kill(service.process)
    lost = [line for line in log_lines(log.read_text()) if line["message"] == "persist.lost"]
    assert lost  # said before the exit


def test_a_stopping_server_with_a_hung_database_exits_before_the_kill(
    fake, black_hole, tmp_path
) -> None:
    """Many replies' saves hang: on SIGTERM the worker does not wait for store calls past
    Cloud Run's kill 10 s after it (a reviewer's took 19 s: Python waits at exit for
    every write queued), and what they were for is logged."""
    fake.push(*[Script(tokens=["x"])] * 24)
    env = {"FIRESTORE_EMULATOR_HOST": black_hole, "MAX_STREAMS_PER_USER": "100"}
    log = tmp_path / "service.log"

    def reply(service: str, n: int) -> None:
        body = {"user_input": "hi", "trace_id": f"t-hung-{n}", **SAVE}
        httpx.post(f"{service}/vac/assistant/test-assistant/sse", json=body, timeout=20)

    with (
        log.open("wb") as output,
        running_service(env, output=output) as service,
        concurrent.futures.ThreadPoolExecutor(24) as pool,
    ):
        list(pool.map(lambda n: reply(service.url, n), range(24)))
        service.process.terminate()
        stopped = time.monotonic()
        assert service.process.wait(timeout=30) == 0
        assert time.monotonic() - stopped < 10
    lost = [line for line in log_lines(log.read_text()) if line["message"] == "persist.lost"]
    assert {line["trace_id"] for line in lost} == {f"t-hung-{n}" for n in range(24)}


# Started in the worker once it is forked: a thread that is no daemon and never ends, as
# one in a store call that hangs is (a thread does not survive a fork: the master has none).
_A_THREAD_THAT_NEVER_ENDS = """
import os, threading
os.register_at_fork(
    after_in_child=lambda: threading.Thread(target=threading.Event().wait, name="held").start()
)
"""


def test_a_stopping_worker_waits_for_no_thread_past_the_kill(fake, tmp_path) -> None:
    """Python's own exit waits for every thread that is no daemon: one still in a store
    call that hangs, outside the writes the worker counts, kept it past Cloud Run's kill
    (a reviewer's worker logged 55 s after the stop signal with the database hung)."""
    (tmp_path / "sitecustomize.py").write_text(_A_THREAD_THAT_NEVER_ENDS)
    with running_service({"PYTHONPATH": str(tmp_path)}) as service:
        fake.push(Script(tokens=["x"]))
        answer = httpx.post(
            f"{service.url}/vac/assistant/test-assistant/sse", json={"user_input": "hi"}
        )
        assert "answer" in sse_events(answer.content)[-2]
        service.process.terminate()
        stopped = time.monotonic()
        assert service.process.wait(timeout=40) == 0
        assert time.monotonic() - stopped < 10


def test_a_stopping_server_ends_a_long_json_reply_with_a_503(fake, firestore) -> None:
    """The legacy JSON route's reply holds its thread to its end, never parked: on
    SIGTERM it ends early all the same (it was lost at the kill), with 503 `overloaded`
    and Retry-After (retry elsewhere), its text so far reported and saved `incomplete`."""
    fake.push(Script(tokens=[f"w{n} " for n in range(60)], interval=0.5))  # 30 s
    body = {"user_input": "hi", "trace_id": "t-stop-json", **SAVE}
    url = "/vac/assistant/test-assistant"
    with (
        running_service({"THREADS": "2"}) as service,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        waiting = pool.submit(httpx.post, f"{service.url}{url}", json=body, timeout=20)
        fake.wait_for_requests(1)
        time.sleep(1.2)  # a few chunks in
        service.process.terminate()
        stopped = time.monotonic()
        answer = waiting.result()
        assert service.process.wait(timeout=20) == 0
        assert time.monotonic() - stopped < 10  # before Cloud Run's kill
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"  # as every answer of a stopping instance
    payload = answer.json()
    assert payload["code"] == "overloaded"
    assert payload["trace_id"] == "t-stop-json" == answer.headers["x-trace-id"]
    assert payload["attempts"][-1]["outcome"] == "overloaded"
    assert payload["partial"].startswith("w0 w1")
    saved = _messages(firestore)["t-stop-json-assistant"]
    assert saved["status"] == "incomplete"
    assert saved["content"] == payload["partial"].strip()


def test_streams_end_early_enough_for_a_whole_save_before_they_are_abandoned() -> None:
    """A stream ended on a stop then waits for its save: a save that hangs must still
    end before the abandon at STOP_SAVE_SECONDS, which would cut the terminal frame (a
    reviewer's hung database at the default PERSIST_TIMEOUT_SECONDS of 5 s)."""
    for persist_timeout in (0.5, 2.0, 5.0, 9.0):
        ends_at = stop_end_seconds(STOP_SAVE_SECONDS, persist_timeout)
        assert ends_at >= 0
        assert ends_at + persist_timeout + 1 <= STOP_SAVE_SECONDS or ends_at == 0


def _parked_reply_saving(trace_id: str, streaming: bool = True) -> Reply:
    """A started reply that saves to the store the environment names, in-process, and parks
    where it would wait (the worker's part is the test's)."""
    settings = Settings.from_env()
    reply = Reply(
        AssistantRequest(assistant_id="test-assistant", user_input="hi", save_to_history=True),
        trace_id=trace_id,
        settings=settings,
        providers=configured_providers(settings)[0],
        store=FirestoreStore(settings.collection, settings.persist_timeout_seconds),
        author=Author("ada@example.com", "ada@example.com", "Ada"),
        log=RequestLog(trace_id),
        streaming=streaming,
        parking=True,
    )
    reply.start()
    return reply


def _resumed(park: Park) -> None:
    """As the worker does: back when the park ends."""
    resumed = threading.Event()
    park.arm(resumed.set)
    assert resumed.wait(10)


def test_a_json_reply_parks_on_its_save_and_keeps_its_text_when_ended_while_parked(
    fake: FakeUpstream, firestore, paused_database: DatabaseRelay
) -> None:
    """A JSON reply's final save waits parked, as a stream's does (it held its thread
    PERSIST_TIMEOUT_SECONDS with a hanging database); and one the worker ends while it
    waits for its text (a stop) saves what came (its generator's end dropped the text
    before the reply was abandoned: nothing was saved)."""
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "3"
    fake.push(Script(tokens=["w0 ", "w1 ", "w2"]))
    paused_database.resume()
    saving = _parked_reply_saving("t-json-parked-save", streaming=False)
    paused_database.pause()  # the user message's write hangs: the reply's save waits for it
    answer = saving.json_steps()
    parks_while_saving = 0
    try:
        while True:
            park = next(answer)
            parks_while_saving += saving._done
            if parks_while_saving == 1:
                paused_database.resume()
            _resumed(park)
    except StopIteration as end:
        status, payload = end.value
    assert status == 200 and payload["answer"] == "w0 w1 w2" and parks_while_saving >= 1
    fake.push(Script(tokens=["v0 ", "v1 ", "never"], fail_after=2, fail_mode="hang"))
    ended = _parked_reply_saving("t-json-parked-end", streaming=False)
    waiting = ended.json_steps()
    _resumed(next(waiting))  # its text comes while it is parked
    _resumed(next(waiting))
    waiting.close()  # what the worker's end of a parked reply does
    ended.close()  # its save goes on off this thread (nobody waits for it)
    deadline = time.monotonic() + 10
    while "t-json-parked-end-assistant" not in (saved := _messages(firestore)):
        assert time.monotonic() < deadline, "not saved"
        time.sleep(0.1)
    assert saved["t-json-parked-end-assistant"]["content"] == "v0 v1"
    assert saved["t-json-parked-end-assistant"]["status"] == "incomplete"


def test_a_reply_ended_while_parked_on_its_save_still_saves(
    fake: FakeUpstream, firestore, paused_database: DatabaseRelay
) -> None:
    """The worker may end a reply that is parked waiting for its final save (its stop
    past STOP_SAVE_SECONDS, an eviction): the save goes on to its end all the same."""
    os.environ["PERSIST_TIMEOUT_SECONDS"] = "5"
    fake.push(Script(tokens=["kept"]))
    reply = _parked_reply_saving("t-ended-saving")  # its user message waits: the database is paused
    frames = reply.sse_stream()
    for frame in frames:  # as the worker would, resumed at once after each park
        if isinstance(frame, Park) and reply._done:
            break  # parked on the save
    threading.Timer(0.5, paused_database.resume).start()
    frames.close()  # what the worker's end of a parked reply does: the save goes on apart
    deadline = time.monotonic() + 10
    while "t-ended-saving-assistant" not in (saved := _messages(firestore)):
        assert time.monotonic() < deadline, "not saved"
        time.sleep(0.1)
    assert saved["t-ended-saving-assistant"]["content"] == "kept"
    assert saved["t-ended-saving-user"]["content"] == "hi"


def test_a_reply_parked_on_a_hanging_database_wakes_for_its_heartbeats_only(
    fake: FakeUpstream, firestore, black_hole: str
) -> None:
    """Parked on its final save, a reply is resumed when a heartbeat is due or the save's
    time is up, not every quarter of a second: many replies waiting on a database that
    hangs would otherwise keep the instance's threads busy for nothing."""
    os.environ.update(
        FIRESTORE_EMULATOR_HOST=black_hole, PERSIST_TIMEOUT_SECONDS="4", HEARTBEAT_SECONDS="0.8"
    )
    fake.push(Script(tokens=["still ", "here"]))
    reply = _parked_reply_saving("t-parked-beats")
    frames: list[bytes] = []
    parks_while_saving = 0
    for item in reply.sse_stream():  # as the worker does: resumed when the park ends
        if isinstance(item, Park):
            parks_while_saving += reply._done
            resumed = threading.Event()
            item.arm(resumed.set)
            assert resumed.wait(10)
        else:
            frames.append(item)
    events = sse_events(b"".join(frames))
    assert events[-2]["metadata"]["persist_failed"] is True and events[-1] == "[DONE]"
    last_chunk = max(i for i, event in enumerate(events) if "chunk" in event)
    assert events[last_chunk + 1 : -2].count(": ping") >= 4  # 4 s at a ping per 0.8 s
    # A park per ping (5) and the last, one more when the user message's write gives up
    # within the wait and goes once more, and a few for wake-ups a busy machine makes
    # early (runs under load counted one or two more): not one per 0.25 s, which is 16.
    assert parks_while_saving <= 10


def test_at_the_shortest_heartbeat_a_reply_waiting_for_its_save_does_not_spin(
    fake: FakeUpstream, firestore, black_hole: str
) -> None:
    """HEARTBEAT_SECONDS=0.01, the shortest allowed: a heartbeat is due as soon as the
    wait for the store begins, and the wait between looks is still a quarter of it at
    least, not nothing (a reply spinning sent tens of thousands of pings a second)."""
    os.environ.update(
        FIRESTORE_EMULATOR_HOST=black_hole, PERSIST_TIMEOUT_SECONDS="1", HEARTBEAT_SECONDS="0.01"
    )
    fake.push(Script(tokens=["still ", "here"]))
    reply = _parked_reply_saving("t-shortest-beat")
    pings = 0
    for item in reply.sse_stream():
        if isinstance(item, Park):
            resumed = threading.Event()
            item.arm(resumed.set)
            assert resumed.wait(10)
        elif reply._done:
            pings += item == b": ping\n\n"
    assert 0 < pings <= 1 / 0.0025 * 1.5  # the save's second, a look per 2.5 ms at most
