"""Bounds on one reply (README "How the pieces fit"): MAX_REPLY_SECONDS cuts even a live
stream, and a
JSON caller that leaves while chunks flow is noticed within a second.
"""

from __future__ import annotations

import os
import time
from typing import Any

from devtools.fake_upstream import FakeUpstream, Script
from devtools.service import running_service

from .conftest import ask, sse_events
from .raw_http import open_raw


def pinging_forever() -> Script:
    """Some text, then only keep-alive pings: alive to the idle timeout, never finished."""
    return Script(tokens=["first ", "never"], fail_after=1, fail_mode="hang", ping_every=0.05)


def _saved(db: Any, assistant_id: str = "test-assistant") -> dict[str, dict[str, Any]]:
    collection = db.collection("assistants").document(assistant_id).collection("messages")
    return {snapshot.id: snapshot.to_dict() for snapshot in collection.stream()}


def test_a_reply_past_max_reply_seconds_ends_with_reply_too_long(
    client, fake: FakeUpstream, firestore
) -> None:
    os.environ["MAX_REPLY_SECONDS"] = "1"
    fake.push(pinging_forever())
    events = sse_events(ask(client, trace_id="long-1", save_to_history=True).get_data())
    assert events[0] == {"chunk": "first "}
    terminal = events[-2]
    assert terminal["code"] == "reply_too_long"
    assert terminal["partial"] == "first "
    assert terminal["metadata"]["attempts"][-1]["outcome"] == "reply_too_long"
    assert events[-1] == "[DONE]"
    assert fake.wait_for_requests(1)[0].client_closed.wait(5)
    assert _saved(firestore)["long-1-assistant"]["status"] == "incomplete"


def test_a_json_caller_past_max_reply_seconds_gets_504(client, fake: FakeUpstream) -> None:
    os.environ["MAX_REPLY_SECONDS"] = "1"
    fake.push(pinging_forever())
    response = ask(client, path="/vac/assistant/test-assistant")
    assert response.status_code == 504
    assert response.get_json()["code"] == "reply_too_long"
    response.close()  # the test client closes nothing: its reply's slot stayed taken


def test_reply_too_long_before_any_text_is_a_real_504(client, fake: FakeUpstream) -> None:
    os.environ["MAX_REPLY_SECONDS"] = "0.5"  # within the SSE status window (15 s)
    fake.push(Script(fail="hang"))
    response = ask(client)
    assert response.status_code == 504
    assert response.get_json()["code"] == "reply_too_long"


def test_a_json_caller_that_leaves_while_chunks_flow_stops_the_upstream(
    fake: FakeUpstream, firestore
) -> None:
    fake.push(Script(tokens=["word "] * 400, interval=0.05))  # 20 s of steady chunks
    with running_service({"THREADS": "2"}) as service:
        body = b'{"user_input": "hi", "save_to_history": true, "trace_id": "gone-1"}'
        with open_raw(service.url, "/vac/assistant/test-assistant", body):
            upstream = fake.wait_for_requests(1)[0]
            time.sleep(0.5)  # chunks are flowing to the service now
        # Well before the 20 s the upstream would run for.
        assert upstream.client_closed.wait(10), "upstream left running after the caller left"
        deadline = time.monotonic() + 10
        while "gone-1-assistant" not in _saved(firestore) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _saved(firestore)["gone-1-assistant"]["status"] == "incomplete"
